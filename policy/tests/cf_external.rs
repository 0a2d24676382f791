//! The external API against cf-networking-release's policy server: exact texts and check order
//! (handlers/, api/ and api/api_v0/ validators, integration/ tests), on SQLite and PostgreSQL.
mod common;

use common::{policies, policy, Db, Harness};
use reqwest::Method;
use serde_json::{json, Value};
use tapestry_policy::model::Instance;
use tapestry_policy::store::{ops, Mode};

const P1: &str = "/networking/v1/external/policies";

async fn raw_auth(h: &Harness, method: Method, path: &str, auth: Option<&str>) -> (u16, Value) {
    let mut r = h.http.request(method, h.url(path));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    (
        s,
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null),
    )
}

async fn send(h: &Harness, method: Method, path: &str, token: &str, body: Value) -> (u16, Value) {
    let (s, v, _) = h
        .raw(
            method,
            path,
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await;
    (s, v)
}

/// Puts an app in a space, as a cell registering an instance does.
async fn place(h: &Harness, app: &str, space: &str, handle: &str) {
    let i = Instance {
        cell: "10.0.0.1".parse().unwrap(),
        handle: handle.into(),
        app_id: app.into(),
        space_id: space.into(),
        org_id: "O".into(),
        instance_index: 0,
        ip: "10.255.1.2".parse().unwrap(),
    };
    h.c()
        .store
        .call(Mode::Write, move |tx| ops::put_instance(tx, &i))
        .await
        .unwrap();
}

async fn tags(h: &Harness) -> Vec<(String, String)> {
    let (_, v) = h.get("/networking/v1/external/tags").await;
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().into(),
                t["tag"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn pair(a: &str, t: &str) -> (String, String) {
    (a.into(), t.into())
}

async fn auth_texts_and_order(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let admin = h.c().admin_token.clone();
    // The version is checked first, before the token.
    assert_eq!(
        raw_auth(&h, Method::GET, "/networking/v3/external/policies", None).await,
        (406, json!({"error": "api version 'v3' not supported"}))
    );
    assert_eq!(
        raw_auth(&h, Method::GET, P1, None).await,
        (401, json!({"error": "missing authorization header"}))
    );
    for bad in ["Bearer nope", "nope", "", "Bearer "] {
        assert_eq!(
            raw_auth(&h, Method::GET, P1, Some(bad)).await,
            (401, json!({"error": "failed to verify token with uaa"})),
            "{bad:?}"
        );
    }
    // The Bearer prefix is optional, as in CF.
    for ok in [
        admin.clone(),
        format!("Bearer {admin}"),
        format!("bearer {admin}"),
    ] {
        let (s, v) = raw_auth(&h, Method::GET, P1, Some(&ok)).await;
        assert_eq!((s, v["total_policies"].clone()), (200, json!(0)));
    }
    let write = tapestry_policy::create_token(&h.c().store, "network.write", vec!["S".into()])
        .await
        .unwrap();
    // Token names reveal nothing of the token.
    let (s, v) = raw_auth(
        &h,
        Method::GET,
        "/networking/v1/external/whoami",
        Some(&admin),
    )
    .await;
    assert_eq!(s, 200);
    let subject = v["subject"].as_str().unwrap().to_string();
    assert_eq!(v, json!({ "subject": subject }));
    let admin2 = tapestry_policy::create_token(&h.c().store, "network.admin", vec![])
        .await
        .unwrap();
    let (_, v) = raw_auth(
        &h,
        Method::GET,
        "/networking/v0/external/whoami",
        Some(&admin2),
    )
    .await;
    let name = v["subject"].as_str().unwrap();
    assert!(
        !name.contains(&admin2[..8]) && !name.contains(&admin2[..4]),
        "{name}"
    );
    let scope_err = json!({"error": "provided scopes [network.write] do not include allowed scopes [network.admin]"});
    for path in ["whoami", "tags"] {
        let (s, v, _) = h
            .raw(
                Method::GET,
                &format!("/networking/v1/external/{path}"),
                Some(&write),
                None,
            )
            .await;
        assert_eq!((s, v), (403, scope_err.clone()), "{path}");
    }
    let (s, v) = send(
        &h,
        Method::POST,
        "/networking/v1/external/policies/cleanup",
        &write,
        json!({}),
    )
    .await;
    assert_eq!((s, v), (403, scope_err));
    h.shutdown().await;
}

async fn validation_texts_and_order(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let t = h.c().admin_token.clone();
    let pre = "mapper: validate policies: ";
    let cases = [
        (P1, json!({"policies": []}), "missing policies"),
        (P1, json!({"policies": [{"source": {}, "destination": {"protocol": "icmp"}}]}), "missing source id"),
        (P1, json!({"policies": [{"source": {"id": "a"}, "destination": {"protocol": "icmp"}}]}), "missing destination id"),
        (P1, json!({"policies": [{"source": {"id": "a"}, "destination": {"id": "b", "protocol": "icmp"}}]}), "invalid destination protocol, specify either udp or tcp"),
        (P1, json!({"policies": [{"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 8080}}}]}), "invalid port range 8080-0, start must be less than or equal to end"),
        (P1, json!({"policies": [{"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp", "ports": {"start": -1, "end": 5}}}]}), "invalid start port -1, must be in range 1-65535"),
        (P1, json!({"policies": [{"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp"}}]}), "missing start port"),
        (P1, json!({"policies": [{"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 1, "end": 65536}}}]}), "invalid end port 65536, must be in range 1-65535"),
        (P1, json!({"policies": [{"source": {"id": "a", "tag": "01"}, "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 1, "end": 1}}}]}), "tags may not be specified"),
        ("/networking/v0/external/policies", json!({"policies": [{"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp"}}]}), "missing port"),
        ("/networking/v0/external/policies", json!({"policies": [{"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp", "port": -2}}]}), "invalid port -2, must be in range 1-65535"),
        // Tapestry's id checks, after CF's.
        (P1, json!({"policies": [{"source": {"id": "a\u{0}"}, "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 1, "end": 1}}}]}), "invalid source id: character 2 is U+0000, which is not printable (control, format and separator characters are refused)"),
        (P1, json!({"policies": [{"source": {"id": "a"}, "destination": {"id": "\u{200B}b", "protocol": "tcp", "ports": {"start": 1, "end": 1}}}]}), "invalid destination id: character 1 is U+200B, which is not printable (control, format and separator characters are refused)"),
    ];
    for (path, body, want) in cases {
        let (s, v) = send(&h, Method::POST, path, &t, body.clone()).await;
        assert_eq!(
            (s, v),
            (400, json!({ "error": format!("{pre}{want}") })),
            "{body}"
        );
        // Delete validates the same way.
        let del = format!("{path}/delete");
        let (s, v) = send(&h, Method::POST, &del, &t, body.clone()).await;
        assert_eq!(
            (s, v),
            (400, json!({ "error": format!("{pre}{want}") })),
            "{body}"
        );
    }
    // 255 characters of three bytes each are within the limit; 256 are not.
    let long = "字".repeat(255);
    let (s, _) = send(
        &h,
        Method::POST,
        P1,
        &t,
        policies(vec![policy(&long, "b", 1)]),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = send(
        &h,
        Method::POST,
        P1,
        &t,
        policies(vec![policy(&format!("{long}x"), "b", 1)]),
    )
    .await;
    assert_eq!(
        (s, v),
        (
            400,
            json!({"error": format!("{pre}invalid source id: must be at most 255 characters (Unicode scalar values), it has 256")})
        )
    );
    h.shutdown().await;
}

async fn v0_ranges_and_id_precedence(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let range = json!({"source": {"id": "A"}, "destination": {"id": "B", "protocol": "tcp", "ports": {"start": 8080, "end": 8090}}});
    let (s, _) = h
        .post(
            P1,
            policies(vec![
                range.clone(),
                policy("A", "C", 80),
                policy("C", "D", 81),
            ]),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = h.get(P1).await;
    assert_eq!(v["total_policies"], 3);
    // v0 leaves the range out and does not count it, filtered or not.
    for q in ["", "?id=A", "?source_id=A"] {
        let (_, v) = h.get(&format!("/networking/v0/external/policies{q}")).await;
        let want = if q.is_empty() { 2 } else { 1 };
        assert_eq!(v["total_policies"], want, "{q}: {v}");
        assert_eq!(v["policies"].as_array().unwrap().len(), want, "{q}");
        assert_eq!(
            v["policies"][0]["destination"],
            json!({"id": "C", "protocol": "tcp", "port": 80})
        );
    }
    // `id` wins over source_id / dest_id, as in CF.
    let (_, v) = h.get(&format!("{P1}?id=D&source_id=A&dest_id=B")).await;
    assert_eq!(v["policies"], json!([policy("C", "D", 81)]));
    let (_, v) = h.get(&format!("{P1}?source_id=A&dest_id=B")).await;
    assert_eq!(v["policies"], json!([range]));
    h.shutdown().await;
}

async fn tags_in_request_order(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let (s, _) = h
        .post(
            P1,
            policies(vec![
                policy("Z", "Y", 1),
                policy("X", "Z", 2),
                policy("W", "W", 3),
            ]),
        )
        .await;
    assert_eq!(s, 200);
    let want = vec![
        pair("Z", "0001"),
        pair("Y", "0002"),
        pair("X", "0003"),
        pair("W", "0004"),
    ];
    assert_eq!(tags(&h).await, want);
    // Freed tags are reused lowest first, then numbering continues after the highest.
    h.post(
        &format!("{P1}/delete"),
        policies(vec![policy("X", "Z", 2), policy("Z", "Y", 1)]),
    )
    .await;
    assert_eq!(tags(&h).await, vec![pair("W", "0004")]);
    h.post(
        P1,
        policies(vec![
            policy("V", "U", 1),
            policy("T", "S", 1),
            policy("R", "W", 1),
        ]),
    )
    .await;
    let want = vec![
        pair("V", "0001"),
        pair("U", "0002"),
        pair("T", "0003"),
        pair("W", "0004"),
        pair("S", "0005"),
        pair("R", "0006"),
    ];
    assert_eq!(tags(&h).await, want);
    // The same holds after a restart (the free list is stored).
    let mut h = h;
    h.post(&format!("{P1}/delete"), policies(vec![policy("T", "S", 1)]))
        .await;
    h.restart().await;
    h.post(P1, policies(vec![policy("Q", "P", 1), policy("O", "Q", 1)]))
        .await;
    let t = tags(&h).await;
    for (app, tag) in [("Q", "0003"), ("P", "0005"), ("O", "0007")] {
        assert!(t.contains(&pair(app, tag)), "{app} {tag}: {t:?}");
    }
    h.shutdown().await;
}

async fn quota_and_request_bounds(db: Db) {
    let h = Harness::new(db, |c| {
        c.max_policies_per_source = 2;
        c.cf.max_new_apps_per_request = 3;
    })
    .await;
    let admin = h.c().admin_token.clone();
    place(&h, "A", "S", "h1").await;
    place(&h, "B", "S", "h2").await;
    let write = tapestry_policy::create_token(&h.c().store, "network.write", vec!["S".into()])
        .await
        .unwrap();
    let three = policies(vec![
        policy("A", "B", 1),
        policy("A", "B", 2),
        policy("A", "B", 3),
    ]);
    assert_eq!(
        send(&h, Method::POST, P1, &write, three.clone()).await,
        (403, json!({"error": "policy quota exceeded"}))
    );
    // Admins are not held to the quota.
    assert_eq!(
        send(&h, Method::POST, P1, &admin, three).await,
        (200, json!({}))
    );
    // Access is checked before the quota.
    assert_eq!(
        send(
            &h,
            Method::POST,
            P1,
            &write,
            policies(vec![policy("A", "Unknown", 9)])
        )
        .await,
        (
            403,
            json!({"error": "one or more applications cannot be found or accessed"})
        )
    );
    // At most 3 new apps per request; nothing of a refused request is stored.
    let four = policies(vec![policy("N1", "N2", 1), policy("N3", "N4", 1)]);
    assert_eq!(
        send(&h, Method::POST, P1, &admin, four).await,
        (
            400,
            json!({"error": "too many new apps in one request: 4 apps have no tag yet, the maximum is 3 per request; split the request"})
        )
    );
    let (_, v) = h.get(&format!("{P1}?id=N1,N2,N3,N4")).await;
    assert_eq!(v["total_policies"], 0);
    assert_eq!(tags(&h).await.len(), 2);
    // Apps with tags already do not count.
    assert_eq!(
        send(
            &h,
            Method::POST,
            P1,
            &admin,
            policies(vec![policy("A", "N1", 1), policy("N2", "N3", 1)])
        )
        .await,
        (200, json!({}))
    );
    h.shutdown().await;
}

async fn headers_and_cors(db: Db) {
    let h = Harness::new(db, |c| {
        c.cf.cors_domains = vec!["https://ui.example".into()]
    })
    .await;
    let t = h.c().admin_token.clone();
    let check = |r: &reqwest::Response| {
        let hd = r.headers();
        assert_eq!(hd["x-content-type-options"], "nosniff");
        assert_eq!(hd["x-xss-protection"], "1; mode=block");
        assert_eq!(hd["x-frame-options"], "deny");
        assert_eq!(hd["content-security-policy"], "frame-ancestors 'none'");
    };
    for (path, auth) in [
        (P1, true),
        (P1, false),
        ("/", false),
        ("/networking/v1/external/nope", true),
    ] {
        let mut r = h.http.get(h.url(path));
        if auth {
            r = r.bearer_auth(&t);
        }
        let r = r.send().await.unwrap();
        check(&r);
        assert!(r.headers().get("access-control-allow-origin").is_none());
    }
    let r = h
        .http
        .request(Method::OPTIONS, h.url(P1))
        .header("origin", "https://ui.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    check(&r);
    let hd = r.headers();
    assert_eq!(hd["access-control-allow-methods"], "POST,GET,OPTIONS");
    assert_eq!(hd["access-control-allow-headers"], "authorization");
    assert_eq!(hd["access-control-allow-origin"], "https://ui.example");
    let r = h
        .http
        .request(Method::OPTIONS, h.url("/networking/v1/external/tags"))
        .header("origin", "https://other.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-methods"], "GET,OPTIONS");
    assert!(r.headers().get("access-control-allow-origin").is_none());
    h.shutdown().await;
}

async fn app_directory_delete_and_cleanup(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let admin = h.c().admin_token.clone();
    place(&h, "A", "S", "h1").await;
    place(&h, "B", "S", "h2").await;
    let write = tapestry_policy::create_token(&h.c().store, "network.write", vec!["S".into()])
        .await
        .unwrap();
    // A stopped app stays in its space.
    h.c()
        .store
        .call(Mode::Write, |tx| {
            ops::delete_instance(tx, "10.0.0.1".parse().unwrap(), "h1")
        })
        .await
        .unwrap();
    assert_eq!(
        send(
            &h,
            Method::POST,
            P1,
            &write,
            policies(vec![policy("A", "B", 80)])
        )
        .await,
        (200, json!({}))
    );
    let (s, v, _) = h.raw(Method::GET, P1, Some(&write), None).await;
    assert_eq!((s, v["total_policies"].clone()), (200, json!(1)));
    h.post(
        P1,
        policies(vec![policy("C", "A", 81), policy("C", "D", 82)]),
    )
    .await;
    // Deleting A removes its policies (returned as CF's cleanup does) and frees its tag.
    let app_a = "/networking/v1/external/apps/A";
    let (s, v, _) = h.raw(Method::DELETE, app_a, Some(&write), None).await;
    assert_eq!(s, 403, "{v}");
    let (s, v, _) = h.raw(Method::DELETE, app_a, Some(&admin), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"total_policies": 2, "policies": [policy("A", "B", 80), policy("C", "A", 81)]})
    );
    assert!(!tags(&h).await.iter().any(|(a, _)| a == "A" || a == "B"));
    // The space developer has lost access to the deleted app.
    assert_eq!(
        send(
            &h,
            Method::POST,
            P1,
            &write,
            policies(vec![policy("A", "B", 80)])
        )
        .await,
        (
            403,
            json!({"error": "one or more applications cannot be found or accessed"})
        )
    );
    let (s, v, _) = h
        .raw(
            Method::DELETE,
            "/networking/v1/external/apps/never",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((s, v), (404, json!({"error": "app 'never' not found"})));
    // Cleanup removes policies that name a deleted app, on v1 and v0 (both answer in v1 form).
    for v in ["v1", "v0"] {
        h.post(P1, policies(vec![policy("E", "A", 90)])).await;
        let (s, got) = send(
            &h,
            Method::POST,
            &format!("/networking/{v}/external/policies/cleanup"),
            &admin,
            json!({}),
        )
        .await;
        assert_eq!(
            (s, got),
            (
                200,
                json!({"total_policies": 1, "policies": [policy("E", "A", 90)]})
            )
        );
    }
    let (s, got) = send(
        &h,
        Method::POST,
        "/networking/v1/external/policies/cleanup",
        &admin,
        json!({}),
    )
    .await;
    assert_eq!(
        (s, got),
        (200, json!({"total_policies": 0, "policies": []}))
    );
    let (_, v) = h.get(P1).await;
    assert_eq!(v["policies"], json!([policy("C", "D", 82)]));
    // A new instance of the app brings it back.
    place(&h, "A", "S", "h3").await;
    assert_eq!(
        send(
            &h,
            Method::POST,
            P1,
            &write,
            policies(vec![policy("A", "B", 80)])
        )
        .await,
        (200, json!({}))
    );
    h.shutdown().await;
}

async fn periodic_cleanup(db: Db) {
    let h = Harness::new(db, |c| {
        c.cf.cleanup_interval = std::time::Duration::from_millis(100)
    })
    .await;
    h.post(P1, policies(vec![policy("A", "B", 1), policy("C", "D", 1)]))
        .await;
    let (s, _, _) = h
        .raw(
            Method::DELETE,
            "/networking/v1/external/apps/A",
            Some(&h.c().admin_token),
            None,
        )
        .await;
    assert_eq!(s, 200);
    h.post(P1, policies(vec![policy("E", "A", 1)])).await;
    // The periodic run removes E -> A and frees E's and A's tags (polled, no timing assumed).
    for _ in 0..600 {
        let (_, v) = h.get(P1).await;
        if v["total_policies"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, v) = h.get(P1).await;
    assert_eq!(v["policies"], json!([policy("C", "D", 1)]));
    assert_eq!(tags(&h).await, vec![pair("C", "0003"), pair("D", "0004")]);
    h.shutdown().await;
}

dual!(
    auth_texts_and_order,
    validation_texts_and_order,
    v0_ranges_and_id_precedence,
    tags_in_request_order,
    quota_and_request_bounds,
    headers_and_cors,
    app_directory_delete_and_cleanup,
    periodic_cleanup,
);
