//! `--cloud-controller`: app and space lookups and cleanup through a stand-in Cloud Controller
//! and UAA that serve the documented v3/v2 answers, checked against the requests CF's policy
//! server makes (client-credentials token, `/v3/apps?guids=`, `/v2/spaces/GUID`,
//! `/v2/spaces?q=...`, `/v2/users/GUID/spaces` with `next_url`). On SQLite and PostgreSQL.
mod cc_stand_in;
mod common;

use std::path::PathBuf;
use std::time::Duration;

use cc_stand_in::{security_group, serve, world, Cc};
use common::{policies, policy, Db, Harness};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use tapestry_policy::cc::{CcConfig, ClientCredentials};
use tapestry_policy::uaa::{KeySource, UaaConfig};

const ISSUER: &str = "https://uaa.test/oauth/token";
use cc_stand_in::SECRET;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/uaa")
        .join(name)
}

/// A UAA token for `sub` with `scope`.
fn uaa_token(sub: &str, scope: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = json!({"user_name": format!("user-{sub}"), "sub": sub, "scope": [scope],
                        "iss": ISSUER, "exp": exp});
    let k = EncodingKey::from_rsa_pem(&std::fs::read(fixture("key.pem")).unwrap()).unwrap();
    encode(&Header::new(Algorithm::RS256), &claims, &k).unwrap()
}

async fn harness(db: Db, cc: &Cc, chunk_size: usize, cleanup: Duration) -> Harness {
    harness_with(db, cc, chunk_size, cleanup, true).await
}

async fn harness_with(
    db: Db,
    cc: &Cc,
    chunk_size: usize,
    cleanup: Duration,
    client: bool,
) -> Harness {
    let url = serve(cc.clone()).await;
    Harness::new(db, |c| {
        c.cf.uaa = Some(UaaConfig {
            keys: KeySource::File(fixture("public.pem")),
            issuer: Some(ISSUER.into()),
        });
        c.cf.cc = Some(CcConfig {
            url: url.clone(),
            client: client.then(|| ClientCredentials {
                uaa_url: url.clone(),
                client_id: "network-policy".into(),
                client_secret: SECRET.into(),
            }),
            ca_certs: Vec::new(),
            chunk_size,
        });
        c.cf.cleanup_interval = cleanup;
    })
    .await
}

const P: &str = "/networking/v1/external/policies";

async fn call(
    h: &Harness,
    m: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (s, v, _) = h
        .raw(
            m,
            path,
            Some(token),
            body.map(|b| b.to_string().into_bytes()),
        )
        .await;
    (s, v)
}

fn ids(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["source"]["id"].as_str().unwrap().to_string(),
                p["destination"]["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

async fn space_developer_access(db: Db) {
    let cc = world();
    let h = harness(db, &cc, 100, Duration::from_secs(3600)).await;
    let dev = uaa_token("dev-1", "network.write");
    let forbidden = (
        403,
        json!({"error": "one or more applications cannot be found or accessed"}),
    );
    // No instance ever ran: the spaces come from Cloud Controller alone.
    let (s, v) = call(
        &h,
        Method::POST,
        P,
        &dev,
        Some(policies(vec![policy("A", "B", 8080)])),
    )
    .await;
    assert_eq!((s, v), (200, json!({})));
    {
        let w = cc.lock().unwrap();
        assert_eq!(
            w.log,
            [
                "POST /oauth/token",
                "GET /v3/apps?guids=A%2CB&per_page=2",
                "GET /v2/spaces/S1",
                "GET /v2/spaces?q=developer_guid%3Adev-1&q=name%3Aone&q=organization_guid%3AO1",
            ],
            "the requests CF's policy guard makes"
        );
    }
    // Two spaces of the user's, in two orgs.
    let body = policies(vec![policy("A", "D", 9000)]);
    assert_eq!(call(&h, Method::POST, P, &dev, Some(body)).await.0, 200);
    // Another space's app, and an app Cloud Controller does not know (CF would let it through).
    for other in ["C", "NOPE"] {
        let body = policies(vec![policy("A", other, 8080)]);
        assert_eq!(
            call(&h, Method::POST, P, &dev, Some(body)).await,
            forbidden,
            "{other}"
        );
        let body = policies(vec![policy("A", other, 8080)]);
        let del = format!("{P}/delete");
        assert_eq!(
            call(&h, Method::POST, &del, &dev, Some(body)).await,
            forbidden,
            "{other}"
        );
    }
    // A user who develops nowhere.
    let nobody = uaa_token("dev-2", "network.write");
    let body = policies(vec![policy("A", "B", 8080)]);
    assert_eq!(
        call(&h, Method::POST, P, &nobody, Some(body)).await,
        forbidden
    );
    // An admin needs no lookup and may use any app.
    let admin = uaa_token("ops", "network.admin");
    let before = cc.lock().unwrap().log.len();
    let body = policies(vec![policy("C", "A", 7000), policy("C", "NOPE", 7000)]);
    assert_eq!(call(&h, Method::POST, P, &admin, Some(body)).await.0, 200);
    assert_eq!(cc.lock().unwrap().log.len(), before);
    // Lists: the developer sees the policies whose apps are both in its spaces (CF's filter).
    let (s, v) = call(&h, Method::GET, P, &dev, None).await;
    assert_eq!(s, 200);
    assert_eq!(ids(&v), [pair("A", "B"), pair("A", "D")]);
    assert_eq!(v["total_policies"], 2);
    let (_, v) = call(&h, Method::GET, &format!("{P}?id=C"), &dev, None).await;
    assert_eq!(v["total_policies"], 0);
    let (_, v) = call(&h, Method::GET, &format!("{P}?dest_id=D"), &dev, None).await;
    assert_eq!(ids(&v), [pair("A", "D")]);
    assert!(
        cc.lock()
            .unwrap()
            .log
            .iter()
            .any(|l| l.starts_with("GET /v2/users/dev-1/spaces?page=2&results-per-page=100")),
        "next_url was followed"
    );
    let (_, v) = call(&h, Method::GET, P, &nobody, None).await;
    assert_eq!(v["total_policies"], 0);
    let (_, v) = call(&h, Method::GET, P, &admin, None).await;
    assert_eq!(v["total_policies"], 4);
    // A built-in network.write token keeps its own spaces; apps' spaces come from Cloud
    // Controller.
    let s2 = tapestry_policy::create_token(&h.c().store, "network.write", vec!["S2".into()])
        .await
        .unwrap();
    let body = policies(vec![policy("C", "C", 80)]);
    assert_eq!(call(&h, Method::POST, P, &s2, Some(body)).await.0, 200);
    let body = policies(vec![policy("C", "A", 80)]);
    assert_eq!(call(&h, Method::POST, P, &s2, Some(body)).await, forbidden);
    let (_, v) = call(&h, Method::GET, P, &s2, None).await;
    assert_eq!(ids(&v), [pair("C", "C")]);
    // One client-credentials token served all of it; when Cloud Controller stops taking it,
    // a new one is fetched once.
    assert_eq!(cc.lock().unwrap().grants, 1);
    cc.lock().unwrap().valid_token = "rotated".into();
    let (s, _) = call(&h, Method::GET, P, &dev, None).await;
    assert_eq!((s, cc.lock().unwrap().grants), (200, 2));
    // Cloud Controller down: CF's 500s, and nothing is written.
    cc.lock().unwrap().down = true;
    let body = policies(vec![policy("A", "B", 1234)]);
    assert_eq!(
        call(&h, Method::POST, P, &dev, Some(body)).await,
        (500, json!({"error": "check access failed"}))
    );
    assert_eq!(
        call(&h, Method::GET, P, &dev, None).await,
        (500, json!({"error": "filter policies failed"}))
    );
    let cleanup = "/networking/v1/external/policies/cleanup";
    assert_eq!(
        call(&h, Method::POST, cleanup, &admin, None).await,
        (500, json!({"error": "policies cleanup failed"}))
    );
    cc.lock().unwrap().down = false;
    let (_, v) = call(&h, Method::GET, P, &admin, None).await;
    assert_eq!(v["total_policies"], 5);
    h.shutdown().await;
}

async fn cleanup_asks_cloud_controller(db: Db) {
    let cc = world();
    // Chunks of one app: one /v3/apps request per app, as CF with cc_app_request_chunk_size 1.
    let h = harness(db, &cc, 1, Duration::from_secs(3600)).await;
    let admin = uaa_token("ops", "network.admin");
    let body = policies(vec![
        policy("A", "B", 80),
        policy("B", "C", 80),
        policy("C", "D", 80),
        policy("C", "GONE", 80),
    ]);
    assert_eq!(call(&h, Method::POST, P, &admin, Some(body)).await.0, 200);
    // B is deleted in Cloud Controller; GONE never existed there.
    cc.lock().unwrap().apps.remove("B");
    cc.lock().unwrap().log.clear();
    let cleanup = "/networking/v0/external/policies/cleanup";
    let (s, v) = call(&h, Method::POST, cleanup, &admin, None).await;
    assert_eq!(s, 200);
    assert_eq!(v["total_policies"], 3);
    assert_eq!(ids(&v), [pair("A", "B"), pair("B", "C"), pair("C", "GONE")]);
    let asked: Vec<String> = cc
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|l| l.starts_with("GET /v3/apps"))
        .cloned()
        .collect();
    assert_eq!(asked.len(), 5, "one request per app: {asked:?}");
    assert!(
        asked.iter().all(|l| l.ends_with("&per_page=1")),
        "{asked:?}"
    );
    let (_, v) = call(&h, Method::GET, P, &admin, None).await;
    assert_eq!(ids(&v), [pair("C", "D")]);
    // The tags of the removed apps are freed.
    let (_, v) = call(
        &h,
        Method::GET,
        "/networking/v1/external/tags",
        &admin,
        None,
    )
    .await;
    let mut tagged: Vec<&str> = v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    tagged.sort();
    assert_eq!(tagged, ["C", "D"]);
    // Nothing more is stale.
    let (_, v) = call(&h, Method::POST, cleanup, &admin, None).await;
    assert_eq!(v["total_policies"], 0);
    h.shutdown().await;
}

async fn periodic_cleanup_asks_cloud_controller(db: Db) {
    let cc = world();
    let h = harness(db, &cc, 100, Duration::from_secs(1)).await;
    let admin = uaa_token("ops", "network.admin");
    let body = policies(vec![policy("A", "B", 80), policy("C", "D", 80)]);
    assert_eq!(call(&h, Method::POST, P, &admin, Some(body)).await.0, 200);
    cc.lock().unwrap().apps.remove("D");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = call(&h, Method::GET, P, &admin, None).await;
        if ids(&v) == [pair("A", "B")] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the periodic cleanup did not remove C -> D: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.shutdown().await;
}

/// A Cloud Controller with CAPI v3 roles and no v2, and no client credentials: the checks ask
/// `/v3/roles` with the user's own token.
async fn v3_roles_with_the_users_own_token(db: Db) {
    let cc = world();
    let dev = uaa_token("dev-1", "network.write");
    {
        let mut w = cc.lock().unwrap();
        w.v3_roles = true;
        w.valid_token = dev.clone();
    }
    let h = harness_with(db, &cc, 100, Duration::from_secs(3600), false).await;
    let forbidden = (
        403,
        json!({"error": "one or more applications cannot be found or accessed"}),
    );
    let (s, _) = call(
        &h,
        Method::POST,
        P,
        &dev,
        Some(policies(vec![policy("A", "B", 80)])),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        cc.lock().unwrap().log,
        [
            "GET /v3/apps?guids=A%2CB&per_page=2",
            "GET /v3/roles?types=space_developer&user_guids=dev-1&space_guids=S1&per_page=5000",
        ]
    );
    let body = policies(vec![policy("A", "D", 80)]);
    assert_eq!(call(&h, Method::POST, P, &dev, Some(body)).await.0, 200);
    let body = policies(vec![policy("A", "C", 80)]);
    assert_eq!(call(&h, Method::POST, P, &dev, Some(body)).await, forbidden);
    let nobody = uaa_token("dev-2", "network.write");
    let body = policies(vec![policy("A", "B", 81)]);
    // dev-2's token is not the one Cloud Controller takes now: its lookup fails, closed.
    assert_eq!(
        call(&h, Method::POST, P, &nobody, Some(body)).await,
        (500, json!({"error": "check access failed"}))
    );
    let admin = uaa_token("ops", "network.admin");
    let body = policies(vec![policy("C", "C", 80)]);
    assert_eq!(call(&h, Method::POST, P, &admin, Some(body)).await.0, 200);
    // The list: the user's spaces from its roles, two pages.
    let (s, v) = call(&h, Method::GET, P, &dev, None).await;
    assert_eq!(s, 200);
    assert_eq!(ids(&v), [pair("A", "B"), pair("A", "D")]);
    assert!(
        cc.lock()
            .unwrap()
            .log
            .iter()
            .any(|l| l.contains("/v3/roles?") && l.contains("page=2")),
        "the next page was followed: {:?}",
        cc.lock().unwrap().log
    );
    assert_eq!(
        cc.lock().unwrap().grants,
        0,
        "no client token was asked for"
    );
    // The periodic cleanup has no user: its requests carry no token.
    cc.lock().unwrap().anonymous = true;
    cc.lock().unwrap().apps.remove("D");
    let cleanup = "/networking/v1/external/policies/cleanup";
    let (s, v) = call(&h, Method::POST, cleanup, &admin, None).await;
    assert_eq!((s, ids(&v)), (200, vec![pair("A", "D")]));
    h.shutdown().await;
}

/// `--asg-sync-interval`: the security groups come from `/v3/security_groups` (every page),
/// replace the stored ones, and reach the cells' feed; the external API may not write them.
async fn security_groups_synced_from_cloud_controller(db: Db) {
    let cc = world();
    {
        let mut w = cc.lock().unwrap();
        w.asg_page_size = 1;
        w.security_groups = vec![
            security_group(
                "guid-public",
                "public-networks",
                json!([{"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "443"}]),
                &[],
            ),
            security_group(
                "guid-db",
                "db",
                json!([{"protocol": "tcp", "destination": "10.1.0.5", "ports": "5432"}]),
                &["S1"],
            ),
        ];
    }
    let url = serve(cc.clone()).await;
    let h = Harness::new(db, |c| {
        c.cf.cc = Some(CcConfig {
            url: url.clone(),
            client: Some(ClientCredentials {
                uaa_url: url.clone(),
                client_id: "network-policy".into(),
                client_secret: SECRET.into(),
            }),
            ca_certs: Vec::new(),
            chunk_size: 100,
        });
        c.cf.asg_sync_interval = Some(Duration::from_millis(100));
    })
    .await;
    let admin = h.admin();
    let names = || async {
        let mut v: Vec<(String, Option<String>, Vec<String>)> = admin
            .list_security_groups()
            .await
            .unwrap()
            .into_iter()
            .map(|g| {
                let ports = g.rules.iter().filter_map(|r| r.ports.clone()).collect();
                (g.name, g.guid, ports)
            })
            .collect();
        v.sort();
        v
    };
    let wait_for = |want: Vec<(&'static str, &'static str, &'static str)>| {
        let names = &names;
        async move {
            let want: Vec<(String, Option<String>, Vec<String>)> = want
                .into_iter()
                .map(|(n, g, p)| (n.into(), Some(g.into()), vec![p.into()]))
                .collect();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let got = names().await;
                if got == want {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "security groups {got:?}, want {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(vec![
        ("db", "guid-db", "5432"),
        ("public-networks", "guid-public", "443"),
    ])
    .await;
    {
        let w = cc.lock().unwrap();
        assert!(w
            .log
            .iter()
            .any(|l| l == "GET /v3/security_groups?per_page=5000&page=2"));
    }
    // The cells see them: CF's internal API shows Cloud Controller's GUIDs.
    let cell = "10.0.0.1".parse().unwrap();
    let r = h.internal().feed(cell, None, Duration::ZERO).await.unwrap();
    let snap = r.snapshot.expect("a snapshot");
    let guids: Vec<_> = snap
        .security_groups
        .iter()
        .map(|g| g.guid.clone())
        .collect();
    assert_eq!(
        guids,
        [Some("guid-db".to_string()), Some("guid-public".to_string())]
    );
    // Changed, deleted, and one Tapestry cannot enforce (left out: it allows nothing).
    {
        let mut w = cc.lock().unwrap();
        w.security_groups = vec![
            security_group(
                "guid-db",
                "db",
                json!([{"protocol": "tcp", "destination": "10.1.0.5", "ports": "5433"}]),
                &["S1"],
            ),
            security_group(
                "guid-bad",
                "bad",
                json!([{"protocol": "tcp", "destination": "10.1.0.5", "ports": "70000"}]),
                &[],
            ),
        ];
    }
    wait_for(vec![("db", "guid-db", "5433")]).await;
    // Cloud Controller owns them.
    let (s, v) = h
        .post(
            "/networking/v1/external/security_groups",
            json!({"name": "mine", "rules": []}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("Cloud Controller"),
        "{v}"
    );
    let (s, _, _) = h
        .raw(
            Method::DELETE,
            "/networking/v1/external/security_groups/db",
            Some(&h.c().admin_token),
            None,
        )
        .await;
    assert_eq!(s, 409);
    // A listing that changes while it is read, or a Cloud Controller that is down, replaces
    // nothing.
    for (unstable, down) in [(true, false), (false, true)] {
        {
            let mut w = cc.lock().unwrap();
            w.asg_unstable = unstable;
            w.down = down;
            w.security_groups.clear();
            w.log.clear();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while cc.lock().unwrap().log.len() < 6 {
            assert!(std::time::Instant::now() < deadline, "no sync rounds");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(names().await.len(), 1, "unstable {unstable}, down {down}");
    }
    {
        let mut w = cc.lock().unwrap();
        w.asg_unstable = false;
        w.down = false;
    }
    wait_for(vec![]).await;
    h.shutdown().await;
}

dual!(
    security_groups_synced_from_cloud_controller,
    v3_roles_with_the_users_own_token,
    space_developer_access,
    cleanup_asks_cloud_controller,
    periodic_cleanup_asks_cloud_controller
);

#[tokio::test]
async fn a_wrong_client_secret_is_a_500_not_an_open_door() {
    let cc = world();
    let url = serve(cc.clone()).await;
    let h = Harness::new(Db::Sqlite, |c| {
        c.cf.uaa = Some(UaaConfig {
            keys: KeySource::File(fixture("public.pem")),
            issuer: Some(ISSUER.into()),
        });
        c.cf.cc = Some(CcConfig {
            url: url.clone(),
            client: Some(ClientCredentials {
                uaa_url: url.clone(),
                client_id: "network-policy".into(),
                client_secret: "wrong".into(),
            }),
            ca_certs: Vec::new(),
            chunk_size: 100,
        });
    })
    .await;
    let dev = uaa_token("dev-1", "network.write");
    let body = policies(vec![policy("A", "B", 80)]);
    assert_eq!(
        call(&h, Method::POST, P, &dev, Some(body)).await,
        (500, json!({"error": "check access failed"}))
    );
    let (_, v) = call(&h, Method::GET, P, &uaa_token("ops", "network.admin"), None).await;
    assert_eq!(v["total_policies"], 0);
    h.shutdown().await;
}
