//! The CF-compatible policy API, on SQLite and PostgreSQL.
mod common;

use std::collections::HashSet;

use common::{policies, policy, Db, Harness};
use reqwest::Method;
use serde_json::{json, Value};

macro_rules! harness {
    ($db:expr) => {
        harness!($db, |_| {})
    };
    ($db:expr, $tweak:expr) => {
        Harness::new($db, $tweak).await
    };
}

async fn policies_crud(db: Db) {
    let h = harness!(db);
    let (s, v) = h
        .post(
            "/networking/v1/external/policies",
            policies(vec![policy("A", "B", 8080), policy("A", "C", 8080)]),
        )
        .await;
    assert_eq!((s, v), (200, json!({})));
    // Idempotent.
    let (s, _) = h
        .post(
            "/networking/v1/external/policies",
            policies(vec![policy("A", "B", 8080)]),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = h.get("/networking/v1/external/policies").await;
    assert_eq!(s, 200);
    assert_eq!(v["total_policies"], 2);
    assert_eq!(v["policies"][0], policy("A", "B", 8080));
    // Filters.
    let (_, v) = h.get("/networking/v1/external/policies?id=C").await;
    assert_eq!(v["total_policies"], 1);
    let (_, v) = h.get("/networking/v1/external/policies?id=A,Z").await;
    assert_eq!(v["total_policies"], 2);
    let (_, v) = h
        .get("/networking/v1/external/policies?source_id=A&dest_id=B")
        .await;
    assert_eq!(v["total_policies"], 1);
    let (_, v) = h.get("/networking/v1/external/policies?source_id=B").await;
    assert_eq!(v["total_policies"], 0);
    // v0 format.
    let (_, v) = h.get("/networking/v0/external/policies?dest_id=B").await;
    assert_eq!(v["policies"][0]["destination"]["port"], 8080);
    let (s, _) = h
        .post(
            "/networking/v0/external/policies",
            json!({"policies":[{"source":{"id":"D"},"destination":{"id":"E","protocol":"udp","port":53}}]}),
        )
        .await;
    assert_eq!(s, 200);
    // Tags: A=1, B=2, C=3, D=4, E=5.
    let (s, v) = h.get("/networking/v1/external/tags").await;
    assert_eq!(s, 200);
    let tags: Vec<(String, String)> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().into(),
                t["tag"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(tags[0], ("A".into(), "0001".into()));
    assert_eq!(tags.len(), 5);
    // Delete (a missing one is skipped); B's tag is freed and reused by the next new app.
    let (s, v) = h
        .post(
            "/networking/v1/external/policies/delete",
            policies(vec![policy("A", "B", 8080), policy("X", "Y", 1)]),
        )
        .await;
    assert_eq!((s, v), (200, json!({})));
    let (_, v) = h.get("/networking/v1/external/tags").await;
    assert!(!v["tags"].as_array().unwrap().iter().any(|t| t["id"] == "B"));
    h.post(
        "/networking/v1/external/policies",
        policies(vec![policy("F", "C", 1)]),
    )
    .await;
    let (_, v) = h.get("/networking/v1/external/tags").await;
    let f = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "F")
        .unwrap()
        .clone();
    assert_eq!(f["tag"], "0002");
    assert_eq!(f["type"], "app");
    h.shutdown().await;
}

async fn policy_errors(db: Db) {
    let h = harness!(db, |c| c.max_policies_per_source = 3);
    let t = h.c().admin_token.clone();
    let path = "/networking/v1/external/policies";
    // 401 with WWW-Authenticate.
    for token in [None, Some("nope")] {
        let (s, v, www) = h.raw(Method::GET, path, token, None).await;
        assert_eq!(s, 401);
        assert_eq!(www.as_deref(), Some("Bearer"));
        assert!(v["error"].is_string());
    }
    // 406.
    let (s, v, _) = h
        .raw(
            Method::GET,
            "/networking/v2/external/policies",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(
        (s, v),
        (406, json!({"error": "api version 'v2' not supported"}))
    );
    // 400: malformed JSON, validation naming the field.
    let cases: Vec<(&[u8], &str)> = vec![
        (b"{nope", "mapper: unmarshal json"),
        (br#"{"policies":[]}"#, "missing policies"),
        (br#"{"policies":[{"source":{"id":""},"destination":{"id":"B","protocol":"tcp","ports":{"start":1,"end":1}}}]}"#, "missing source id"),
        (br#"{"policies":[{"source":{"id":"A"},"destination":{"protocol":"tcp","ports":{"start":1,"end":1}}}]}"#, "missing destination id"),
        (br#"{"policies":[{"source":{"id":"A"},"destination":{"id":"B","protocol":"icmp","ports":{"start":1,"end":1}}}]}"#, "protocol"),
        (br#"{"policies":[{"source":{"id":"A"},"destination":{"id":"B","protocol":"tcp","ports":{"start":0,"end":1}}}]}"#, "missing start port"),
        (br#"{"policies":[{"source":{"id":"A"},"destination":{"id":"B","protocol":"tcp","ports":{"start":1,"end":70000}}}]}"#, "invalid end port 70000"),
        (br#"{"policies":[{"source":{"id":"A"},"destination":{"id":"B","protocol":"tcp","ports":{"start":9,"end":8}}}]}"#, "start must be less than or equal to end"),
        (br#"{"policies":[{"source":{"id":"A","tag":"0001"},"destination":{"id":"B","protocol":"tcp","ports":{"start":1,"end":1}}}]}"#, "tags may not be specified"),
    ];
    for (body, want) in cases {
        let (s, v, _) = h
            .raw(Method::POST, path, Some(&t), Some(body.to_vec()))
            .await;
        assert_eq!(s, 400, "{}", String::from_utf8_lossy(body));
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(want), "{e} should mention {want}");
    }
    // Over 10 MB: the read fails, as with CF's MaxBytesReader.
    let big = vec![b' '; 10 * 1024 * 1024 + 10];
    let (s, v, _) = h.raw(Method::POST, path, Some(&t), Some(big.clone())).await;
    assert_eq!(
        (s, v),
        (400, json!({"error": "failed reading request body"}))
    );
    let del = "/networking/v1/external/policies/delete";
    let (s, v, _) = h.raw(Method::POST, del, Some(&t), Some(big)).await;
    assert_eq!((s, v), (400, json!({"error": "invalid request body"})));
    // 403 quota (for network.write; admins are exempt, as in CF).
    for (app, handle) in [("A", "h1"), ("B", "h2")] {
        let i = tapestry_policy::model::Instance {
            cell: "10.0.0.1".parse().unwrap(),
            handle: handle.into(),
            app_id: app.into(),
            space_id: "S".into(),
            org_id: "O".into(),
            instance_index: 0,
            ip: "10.255.1.2".parse().unwrap(),
        };
        h.c()
            .store
            .call(tapestry_policy::store::Mode::Write, move |tx| {
                tapestry_policy::store::ops::put_instance(tx, &i)
            })
            .await
            .unwrap();
    }
    let w = tapestry_policy::create_token(&h.c().store, "network.write", vec!["S".into()])
        .await
        .unwrap();
    let post = |body: Value| {
        let (h, w) = (&h, w.clone());
        async move {
            let (s, v, _) = h
                .raw(
                    Method::POST,
                    path,
                    Some(&w),
                    Some(body.to_string().into_bytes()),
                )
                .await;
            (s, v)
        }
    };
    let (s, _) = post(policies(vec![
        policy("A", "B", 1),
        policy("A", "B", 2),
        policy("A", "B", 3),
    ]))
    .await;
    assert_eq!(s, 200);
    let (s, v) = post(policies(vec![policy("A", "B", 4)])).await;
    assert_eq!((s, v), (403, json!({"error": "policy quota exceeded"})));
    // Re-creating an existing one does not count against the quota.
    let (s, _) = post(policies(vec![policy("A", "B", 3)])).await;
    assert_eq!(s, 200);
    // health and root.
    // As CF: 200 and an empty body.
    let resp = h.http.get(h.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "");
    let resp = h.http.get(h.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    h.shutdown().await;
}

async fn network_write_scope(db: Db) {
    let h = harness!(db);
    let int = h.internal();
    for (handle, app, space) in [("h1", "A", "S1"), ("h2", "B", "S1"), ("h3", "C", "S2")] {
        let i = tapestry_policy::model::Instance {
            cell: "10.0.0.1".parse().unwrap(),
            handle: handle.into(),
            app_id: app.into(),
            space_id: space.into(),
            org_id: "O".into(),
            instance_index: 0,
            ip: "10.255.1.2".parse().unwrap(),
        };
        int.instance_up(&i).await.unwrap();
    }
    let token = tapestry_policy::create_token(&h.c().store, "network.write", vec!["S1".into()])
        .await
        .unwrap();
    let path = "/networking/v1/external/policies";
    let body = |v: Value| Some(v.to_string().into_bytes());
    let (s, _, _) = h
        .raw(
            Method::POST,
            path,
            Some(&token),
            body(policies(vec![policy("A", "B", 80)])),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v, _) = h
        .raw(
            Method::POST,
            path,
            Some(&token),
            body(policies(vec![policy("A", "C", 80)])),
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        v["error"],
        "one or more applications cannot be found or accessed"
    );
    let (s, _, _) = h
        .raw(
            Method::POST,
            path,
            Some(&token),
            body(policies(vec![policy("A", "UNKNOWN", 80)])),
        )
        .await;
    assert_eq!(s, 403);
    // The admin creates A->C; the write token does not see it.
    h.post(path, policies(vec![policy("A", "C", 80)])).await;
    let (s, v, _) = h.raw(Method::GET, path, Some(&token), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["total_policies"], 1);
    // Admin-only endpoints.
    let (s, v, _) = h
        .raw(
            Method::GET,
            "/networking/v1/external/tags",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, _, _) = h
        .raw(
            Method::GET,
            "/networking/v1/external/leases",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let (s, v, _) = h
        .raw(
            Method::GET,
            "/networking/v1/external/whoami",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (s, v),
        (
            403,
            json!({"error": "provided scopes [network.write] do not include allowed scopes [network.admin]"})
        )
    );
    h.shutdown().await;
}

async fn concurrent_creates(db: Db) {
    let h = harness!(db, |c| c.max_policies_per_source = 1000);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let http = h.http.clone();
        let url = h.url("/networking/v1/external/policies");
        let token = h.c().admin_token.clone();
        // Overlapping sets: apps s0..s9 -> d0..d9, each policy requested several times.
        let body = policies(vec![
            policy(&format!("s{}", i % 10), &format!("d{}", i % 7), 8080),
            policy("s0", "d0", 8080),
        ]);
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let (_, v) = h.get("/networking/v1/external/policies").await;
    let list = v["policies"].as_array().unwrap();
    let uniq: HashSet<String> = list.iter().map(|p| p.to_string()).collect();
    assert_eq!(uniq.len(), list.len(), "duplicate policies");
    // 10 sources x 7 destinations, but only pairs with i%10, i%7 for i in 0..100: all 70 pairs.
    assert_eq!(list.len(), 70);
    let (_, v) = h.get("/networking/v1/external/tags").await;
    let tags = v["tags"].as_array().unwrap();
    let ids: HashSet<&str> = tags.iter().map(|t| t["id"].as_str().unwrap()).collect();
    let nums: HashSet<&str> = tags.iter().map(|t| t["tag"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 17);
    assert_eq!(nums.len(), 17, "duplicate tags");
    h.shutdown().await;
}

async fn restart_loses_nothing(db: Db) {
    let mut h = harness!(db);
    h.post(
        "/networking/v1/external/policies",
        policies(vec![policy("A", "B", 8080)]),
    )
    .await;
    let lease = h
        .internal()
        .acquire_lease("10.0.0.7".parse().unwrap())
        .await
        .unwrap();
    h.post(
        "/networking/v1/external/routes",
        json!({"host":"b.apps.internal","app_id":"B"}),
    )
    .await;
    let token_before = h.c().admin_token.clone();
    let ca_before = std::fs::read(h.dir.path().join("cell-credentials/ca.pem")).unwrap();
    let (_, feed_before) = (
        0,
        h.internal()
            .feed("10.0.0.7".parse().unwrap(), None, Default::default())
            .await
            .unwrap(),
    );
    h.restart().await;
    assert_eq!(h.c().admin_token, token_before);
    assert_eq!(
        std::fs::read(h.dir.path().join("cell-credentials/ca.pem")).unwrap(),
        ca_before
    );
    let (_, v) = h.get("/networking/v1/external/policies").await;
    assert_eq!(v["total_policies"], 1);
    let (_, v) = h.get("/networking/v1/external/routes").await;
    assert_eq!(v["routes"].as_array().unwrap().len(), 1);
    // The old client credentials still work against the restarted server; same lease back.
    let again = h
        .internal()
        .acquire_lease("10.0.0.7".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(again.overlay_subnet, lease.overlay_subnet);
    let feed_after = h
        .internal()
        .feed(
            "10.0.0.7".parse().unwrap(),
            feed_before.version.into(),
            Default::default(),
        )
        .await
        .unwrap();
    assert!(feed_after.snapshot.is_none());
    h.shutdown().await;
}

async fn tags_exhausted(db: Db) {
    let h = harness!(db, |c| c.max_tag = 3);
    let (s, _) = h
        .post(
            "/networking/v1/external/policies",
            policies(vec![policy("A", "B", 1)]),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = h
        .post(
            "/networking/v1/external/policies",
            policies(vec![policy("A", "C", 1)]),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = h
        .post(
            "/networking/v1/external/policies",
            policies(vec![policy("D", "C", 1)]),
        )
        .await;
    assert_eq!(s, 409);
    assert!(v["error"].as_str().unwrap().contains("no free tag"), "{v}");
    // Nothing half-written: D has no tag and no policy.
    let (_, v) = h.get("/networking/v1/external/policies").await;
    assert_eq!(v["total_policies"], 2);
    let (_, v) = h.get("/networking/v1/external/tags").await;
    assert_eq!(v["tags"].as_array().unwrap().len(), 3);
    h.shutdown().await;
}

/// A list spanning many rendered chunks, streamed with its Content-Length, before and after
/// changes, through both API versions and a filter.
async fn large_list_after_changes(db: Db) {
    let h = harness!(db, |c| c.max_policies_per_source = 5000);
    let path = "/networking/v1/external/policies";
    let all: Vec<Value> = (0..2100)
        .map(|i| policy(&format!("s{}", i % 3), "D", i + 1))
        .collect();
    let (s, _) = h.post(path, policies(all.clone())).await;
    assert_eq!(s, 200);
    let (s, v) = h.get(path).await;
    assert_eq!(s, 200);
    assert_eq!(v["total_policies"], 2100);
    let before = v["policies"].as_array().unwrap().clone();
    let want: HashSet<String> = all.iter().map(Value::to_string).collect();
    let got: HashSet<String> = before.iter().map(Value::to_string).collect();
    assert_eq!(got, want);
    // Delete a run in the middle, then list again at once: the change is visible.
    let gone: Vec<Value> = all[600..1300].to_vec();
    let (s, _) = h.post(&format!("{path}/delete"), policies(gone)).await;
    assert_eq!(s, 200);
    let resp = h
        .http
        .get(h.url(path))
        .bearer_auth(&h.c().admin_token)
        .send()
        .await
        .unwrap();
    let len: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(bytes.len(), len);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["total_policies"], 1400);
    // Same order as before, without the deleted ones.
    let gone: HashSet<String> = all[600..1300].iter().map(Value::to_string).collect();
    let kept: Vec<&Value> = before
        .iter()
        .filter(|p| !gone.contains(&p.to_string()))
        .collect();
    let listed: Vec<&Value> = v["policies"].as_array().unwrap().iter().collect();
    assert_eq!(listed, kept);
    let (_, v) = h.get("/networking/v0/external/policies?source_id=s1").await;
    let ports: Vec<u64> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["destination"]["port"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (1..=2100)
        .filter(|p| p % 3 == 2 && !(601..=1300).contains(p))
        .collect();
    assert_eq!(ports, want);
    assert_eq!(v["total_policies"], want.len());
    h.shutdown().await;
}

dual!(
    large_list_after_changes,
    policies_crud,
    policy_errors,
    network_write_scope,
    concurrent_creates,
    restart_loses_nothing,
    tags_exhausted
);
