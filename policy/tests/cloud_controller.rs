//! `--cloud-controller`: app and space lookups and cleanup through a stand-in Cloud Controller
//! and UAA that serve the documented v3/v2 answers, checked against the requests CF's policy
//! server makes (client-credentials token, `/v3/apps?guids=`, `/v2/spaces/GUID`,
//! `/v2/spaces?q=...`, `/v2/users/GUID/spaces` with `next_url`). On SQLite and PostgreSQL.
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{policies, policy, Db, Harness};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use tapestry_policy::cc::CcConfig;
use tapestry_policy::uaa::{KeySource, UaaConfig};

const ISSUER: &str = "https://uaa.test/oauth/token";
const SECRET: &str = "s3cret";

/// What the stand-in knows and what it was asked.
#[derive(Default)]
struct World {
    /// app -> space
    apps: HashMap<String, String>,
    /// space -> (name, org)
    spaces: HashMap<String, (String, String)>,
    /// user -> spaces where the user is a developer
    developers: HashMap<String, Vec<String>>,
    /// The token Cloud Controller accepts now.
    valid_token: String,
    grants: usize,
    /// Answer 503 to everything but the token endpoint.
    down: bool,
    log: Vec<String>,
}

type Cc = Arc<Mutex<World>>;

fn world() -> Cc {
    let mut w = World::default();
    for (app, space) in [("A", "S1"), ("B", "S1"), ("C", "S2"), ("D", "S3")] {
        w.apps.insert(app.into(), space.into());
    }
    for (space, name, org) in [
        ("S1", "one", "O1"),
        ("S2", "two", "O1"),
        ("S3", "three", "O2"),
    ] {
        w.spaces.insert(space.into(), (name.into(), org.into()));
    }
    w.developers
        .insert("dev-1".into(), vec!["S1".into(), "S3".into()]);
    Arc::new(Mutex::new(w))
}

fn pairs(q: &Option<String>) -> Vec<(String, String)> {
    let u = reqwest::Url::parse(&format!("http://x/?{}", q.clone().unwrap_or_default())).unwrap();
    u.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// 401 unless `bearer TOKEN` with the current token; 503 while down. Logs the request.
fn gate(
    w: &mut World,
    headers: &HeaderMap,
    line: String,
) -> Result<(), (StatusCode, &'static str)> {
    w.log.push(line);
    if w.down {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "down"));
    }
    let want = format!("bearer {}", w.valid_token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
        return Err((StatusCode::UNAUTHORIZED, "bad token"));
    }
    Ok(())
}

async fn oauth_token(State(cc): State<Cc>, headers: HeaderMap, body: String) -> Response {
    // base64("network-policy:s3cret"): HTTP basic auth, as CF's UAA client sends it.
    let basic = "Basic bmV0d29yay1wb2xpY3k6czNjcmV0";
    let form = pairs(&Some(body));
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(basic)
        && form.contains(&("grant_type".into(), "client_credentials".into()))
        && form.contains(&("client_id".into(), "network-policy".into()));
    let mut w = cc.lock().unwrap();
    w.log.push("POST /oauth/token".into());
    if !ok {
        return (StatusCode::UNAUTHORIZED, "bad client").into_response();
    }
    w.grants += 1;
    w.valid_token = format!("cc-token-{}", w.grants);
    Json(json!({"access_token": w.valid_token, "token_type": "bearer", "expires_in": 3600}))
        .into_response()
}

async fn v3_apps(State(cc): State<Cc>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let mut w = cc.lock().unwrap();
    if let Err(r) = gate(
        &mut w,
        &headers,
        format!("GET /v3/apps?{}", q.clone().unwrap_or_default()),
    ) {
        return r.into_response();
    }
    let p = pairs(&q);
    let guids: Vec<String> = p
        .iter()
        .find(|(k, _)| k == "guids")
        .map(|(_, v)| v.split(',').map(String::from).collect())
        .unwrap_or_default();
    let resources: Vec<Value> = guids
        .iter()
        .filter_map(|g| w.apps.get(g).map(|s| (g, s)))
        .map(|(g, s)| {
            json!({"guid": g, "name": format!("app-{g}"),
                   "links": {"self": {"href": format!("https://cc.test/v3/apps/{g}")},
                             "space": {"href": format!("https://cc.test/v3/spaces/{s}")}}})
        })
        .collect();
    Json(json!({
        "pagination": {"total_results": resources.len(), "total_pages": 1,
                       "first": {"href": "https://cc.test/v3/apps?page=1"},
                       "last": {"href": "https://cc.test/v3/apps?page=1"},
                       "next": null, "previous": null},
        "resources": resources
    }))
    .into_response()
}

async fn v2_space(State(cc): State<Cc>, headers: HeaderMap, Path(guid): Path<String>) -> Response {
    let mut w = cc.lock().unwrap();
    if let Err(r) = gate(&mut w, &headers, format!("GET /v2/spaces/{guid}")) {
        return r.into_response();
    }
    match w.spaces.get(&guid) {
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"code": 40004, "description": format!("The app space could not be found: {guid}"), "error_code": "CF-SpaceNotFound"})),
        )
            .into_response(),
        Some((name, org)) => Json(json!({
            "metadata": {"guid": guid, "url": format!("/v2/spaces/{guid}")},
            "entity": {"name": name, "organization_guid": org}
        }))
        .into_response(),
    }
}

fn space_resource(guid: &str, w: &World) -> Value {
    let (name, org) = &w.spaces[guid];
    json!({"metadata": {"guid": guid}, "entity": {"name": name, "organization_guid": org}})
}

async fn v2_spaces(State(cc): State<Cc>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let mut w = cc.lock().unwrap();
    if let Err(r) = gate(
        &mut w,
        &headers,
        format!("GET /v2/spaces?{}", q.clone().unwrap_or_default()),
    ) {
        return r.into_response();
    }
    let mut dev = None;
    let mut name = None;
    let mut org = None;
    for (k, v) in pairs(&q) {
        assert_eq!(k, "q");
        let (field, value) = v.split_once(':').unwrap();
        match field {
            "developer_guid" => dev = Some(value.to_string()),
            "name" => name = Some(value.to_string()),
            "organization_guid" => org = Some(value.to_string()),
            other => panic!("unexpected filter {other}"),
        }
    }
    let mine = w.developers.get(&dev.unwrap()).cloned().unwrap_or_default();
    let found: Vec<Value> = mine
        .iter()
        .filter(|s| {
            let (n, o) = &w.spaces[*s];
            Some(n) == name.as_ref() && Some(o) == org.as_ref()
        })
        .map(|s| space_resource(s, &w))
        .collect();
    Json(
        json!({"total_results": found.len(), "total_pages": 1, "prev_url": null,
                "next_url": null, "resources": found}),
    )
    .into_response()
}

/// One space per page, so that `next_url` is followed.
async fn v2_user_spaces(
    State(cc): State<Cc>,
    headers: HeaderMap,
    Path(user): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let mut w = cc.lock().unwrap();
    let line = format!(
        "GET /v2/users/{user}/spaces?{}",
        q.clone().unwrap_or_default()
    );
    if let Err(r) = gate(&mut w, &headers, line) {
        return r.into_response();
    }
    let p = pairs(&q);
    assert!(
        p.contains(&("results-per-page".into(), "100".into())),
        "{p:?}"
    );
    let page: usize = p
        .iter()
        .find(|(k, _)| k == "page")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(1);
    let mine = w.developers.get(&user).cloned().unwrap_or_default();
    let resources: Vec<Value> = mine
        .get(page - 1)
        .map(|s| vec![space_resource(s, &w)])
        .unwrap_or_default();
    let next = (page < mine.len()).then(|| {
        format!(
            "/v2/users/{user}/spaces?page={}&results-per-page=100",
            page + 1
        )
    });
    Json(
        json!({"total_results": mine.len(), "total_pages": mine.len(),
                "prev_url": null, "next_url": next, "resources": resources}),
    )
    .into_response()
}

/// Serves the stand-in; returns its base URL.
async fn serve(cc: Cc) -> String {
    let app = Router::new()
        .route("/oauth/token", post(oauth_token))
        .route("/v3/apps", get(v3_apps))
        .route("/v2/spaces", get(v2_spaces))
        .route("/v2/spaces/{guid}", get(v2_space))
        .route("/v2/users/{user}/spaces", get(v2_user_spaces))
        .with_state(cc);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

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
    let url = serve(cc.clone()).await;
    Harness::new(db, |c| {
        c.cf.uaa = Some(UaaConfig {
            keys: KeySource::File(fixture("public.pem")),
            issuer: ISSUER.into(),
        });
        c.cf.cc = Some(CcConfig {
            url: url.clone(),
            uaa_url: url.clone(),
            client_id: "network-policy".into(),
            client_secret: SECRET.into(),
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

dual!(
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
            issuer: ISSUER.into(),
        });
        c.cf.cc = Some(CcConfig {
            url: url.clone(),
            uaa_url: url.clone(),
            client_id: "network-policy".into(),
            client_secret: "wrong".into(),
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
