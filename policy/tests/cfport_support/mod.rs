//! What the `cf_port_*` tests share: raw requests as CF's `helpers.MakeAndDoRequest` makes them,
//! CF's test tokens as UAA JWTs, and a port of CF's Cloud Controller test doubles
//! (`integration/helpers/configurable_mock_cc_server.go` and `helpers.MockCCServer`) together
//! with the stand-in UAA token endpoint (`helpers.MockUAAServer`'s `/oauth/token`) that hands out
//! `valid-token`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use tapestry_policy::cc::{CcConfig, ClientCredentials};
use tapestry_policy::uaa::{KeySource, UaaConfig};

use crate::common::{Db, Harness};

pub const ISSUER: &str = "https://uaa.test/oauth/token";

/// An answer: status, headers, body as JSON (Null when it is not JSON) and as text.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    /// All values of a header (Go's `resp.Header[name]`).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }
}

/// A request with exactly these headers (no default token) and body.
pub async fn request(
    h: &Harness,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Answer {
    let mut r = h.http.request(method, h.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.body(b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    Answer {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// CF's `helpers.MakeAndDoRequest`: `Authorization: Bearer <admin>` unless the extra headers
/// give one. The harness's built-in admin token plays CF's `valid-token` (`network.admin`).
pub async fn make_and_do(
    h: &Harness,
    method: Method,
    path: &str,
    extra: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let bearer = format!("Bearer {}", h.c().admin_token);
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if !extra
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        headers.push(("Authorization", &bearer));
    }
    request(
        h,
        method,
        path,
        &headers,
        body.map(|b| b.as_bytes().to_vec()),
    )
    .await
}

/// Gomega's `MatchJSON`.
pub fn json_of(s: &str) -> Value {
    serde_json::from_str(s).expect("test JSON")
}

/// A policies answer with its policies in a canonical order: Gomega's `ConsistOf` /
/// `MatchUnorderedJSON` on the list, equality on the rest.
pub fn unordered(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(list) = v.get_mut("policies").and_then(Value::as_array_mut) {
        list.sort_by_key(|p| p.to_string());
    }
    if let Some(list) = v.get_mut("security_groups").and_then(Value::as_array_mut) {
        list.sort_by_key(|p| p.to_string());
    }
    v
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/uaa")
        .join(name)
}

/// CF's mock UAA answers `/check_token` for four opaque tokens; Tapestry verifies UAA JWTs
/// instead, so each is the JWT with the same claims, signed by the test key.
pub fn cf_token(name: &str) -> String {
    let (scope, user_name): (Vec<&str>, Option<&str>) = match name {
        "valid-token" => (vec!["network.admin"], Some("some-user")),
        "valid-client-token" => (vec!["network.admin"], None),
        "space-dev-with-network-write-token" => (vec!["network.write"], Some("some-user")),
        "space-dev-token" => (vec![], Some("some-user")),
        other => panic!("CF's mock UAA has no token {other}"),
    };
    let sub = if name == "valid-client-token" {
        "some-client-id"
    } else {
        "some-user-or-client-id"
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut claims = json!({"scope": scope, "sub": sub, "iss": ISSUER, "exp": exp});
    if let Some(u) = user_name {
        claims["user_name"] = json!(u);
    }
    let k = EncodingKey::from_rsa_pem(&std::fs::read(fixture("key.pem")).unwrap()).unwrap();
    encode(&Header::new(Algorithm::RS256), &claims, &k).unwrap()
}

/// What the Cloud Controller double knows and what it was asked.
#[derive(Default)]
pub struct MockCc {
    /// app GUID -> its space (`links.space.href`, as `cc_client/fixtures/apps_v3.go`), or
    /// `None` for a GUID-only resource (as `ConfigurableMockCCServer.AddApp`).
    pub apps: BTreeMap<String, Option<String>>,
    /// space GUID -> (name, org GUID), as `fixtures.Space1` / `Space2`.
    pub spaces: BTreeMap<String, (String, String)>,
    /// user -> spaces where the user is a developer (`/v2/spaces?q=...`,
    /// `/v2/users/USER/spaces`, as `fixtures.SubjectSpace(s)`).
    pub developer: BTreeMap<String, Vec<String>>,
    pub log: Vec<String>,
}

pub type Cc = Arc<Mutex<MockCc>>;

fn authorized(headers: &HeaderMap) -> bool {
    // CF's doubles compare the header verbatim: `bearer valid-token`.
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("bearer valid-token")
}

fn cc_list(resources: Vec<Value>) -> Value {
    // configurable_mock_cc_server.go's buildCCResponse.
    json!({"pagination": {"total_results": resources.len(), "total_pages": 1},
           "resources": resources})
}

async fn any_v3(
    State(cc): State<Cc>,
    Path(what): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let mut w = cc.lock().unwrap();
    w.log
        .push(format!("GET /v3/{what}?{}", q.clone().unwrap_or_default()));
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // Like CF's doubles, every app it knows, whatever the query asks.
    let resources: Vec<Value> = match what.as_str() {
        "apps" => w
            .apps
            .iter()
            .map(|(guid, space)| match space {
                None => json!({"guid": guid}),
                Some(s) => json!({"guid": guid, "links": {"space": {
                    "href": format!("https://api.example.org/v2/spaces/{s}")}}}),
            })
            .collect(),
        "spaces" => w.spaces.keys().map(|g| json!({"guid": g})).collect(),
        // A real Cloud Controller answers 404 for what it does not serve (CF's double only
        // serves the v2 role calls, so /v3/roles is 404 and Tapestry falls back to them).
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    Json(cc_list(resources)).into_response()
}

async fn v2_space(State(cc): State<Cc>, Path(guid): Path<String>, headers: HeaderMap) -> Response {
    let mut w = cc.lock().unwrap();
    w.log.push(format!("GET /v2/spaces/{guid}"));
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match w.spaces.get(&guid) {
        Some((name, org)) => {
            Json(json!({"entity": {"name": name, "organization_guid": org}})).into_response()
        }
        None => StatusCode::IM_A_TEAPOT.into_response(),
    }
}

fn space_v2(guid: &str, name: &str, org: &str) -> Value {
    json!({"metadata": {"guid": guid, "url": format!("/v2/spaces/{guid}")},
           "entity": {"name": name, "organization_guid": org}})
}

fn spaces_v2(resources: Vec<Value>) -> Value {
    json!({"total_results": resources.len(), "total_pages": 1, "prev_url": null,
           "next_url": null, "resources": resources})
}

async fn v2_spaces(State(cc): State<Cc>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let mut w = cc.lock().unwrap();
    let q = q.unwrap_or_default();
    w.log.push(format!("GET /v2/spaces?{q}"));
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let pairs: Vec<String> = reqwest::Url::parse(&format!("http://x/?{q}"))
        .unwrap()
        .query_pairs()
        .map(|(_, v)| v.into_owned())
        .collect();
    let field = |f: &str| {
        pairs
            .iter()
            .find_map(|p| p.strip_prefix(&format!("{f}:")).map(str::to_string))
            .unwrap_or_default()
    };
    let (dev, name, org) = (
        field("developer_guid"),
        field("name"),
        field("organization_guid"),
    );
    let found: Vec<Value> = w
        .developer
        .get(&dev)
        .into_iter()
        .flatten()
        .filter(|s| w.spaces.get(*s) == Some(&(name.clone(), org.clone())))
        .map(|s| space_v2(s, &name, &org))
        .collect();
    Json(spaces_v2(found)).into_response()
}

async fn v2_user_spaces(
    State(cc): State<Cc>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut w = cc.lock().unwrap();
    w.log.push(format!("GET /v2/users/{user}/spaces"));
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let found: Vec<Value> = w
        .developer
        .get(&user)
        .into_iter()
        .flatten()
        .map(|s| {
            let (n, o) = &w.spaces[s];
            space_v2(s, n, o)
        })
        .collect();
    Json(spaces_v2(found)).into_response()
}

/// helpers.MockUAAServer's `/oauth/token`: `valid-token` for the client `test:test`.
async fn oauth_token(State(cc): State<Cc>, headers: HeaderMap) -> Response {
    cc.lock().unwrap().log.push("POST /oauth/token".into());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Basic dGVzdDp0ZXN0") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(json!({"access_token": "valid-token", "token_type": "bearer",
                "refresh_token": "valid-token-r", "expires_in": 43199,
                "scope": "scim.userids openid cloud_controller.read password.write cloud_controller.write",
                "jti": "9796365e7c364f41a9d2436aef6b8351"}))
    .into_response()
}

/// Serves the doubles (Cloud Controller and UAA's token endpoint on one address).
pub async fn serve(cc: Cc) -> String {
    let app = Router::new()
        .route("/oauth/token", post(oauth_token))
        .route("/v3/{what}", get(any_v3))
        .route("/v2/spaces", get(v2_spaces))
        .route("/v2/spaces/{guid}", get(v2_space))
        .route("/v2/users/{user}/spaces", get(v2_user_spaces))
        .fallback(|| async { StatusCode::IM_A_TEAPOT })
        .with_state(cc);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

/// A control plane configured as CF's `helpers.DefaultTestConfigWithCCServer`: UAA tokens, Cloud
/// Controller at the double with the client `test`/`test`, `max_policies` 2,
/// `cc_app_request_chunk_size` 100, `cleanup_interval` 60 (CF counts it in minutes: 1 h);
/// `tweak` adjusts it.
pub async fn cf_harness(
    db: Db,
    cc: &Cc,
    tweak: impl FnOnce(&mut tapestry_policy::ControlConfig),
) -> Harness {
    let url = serve(cc.clone()).await;
    Harness::new(db, |c| {
        c.cf.uaa = Some(UaaConfig {
            keys: KeySource::File(fixture("public.pem")),
            issuer: Some(ISSUER.into()),
        });
        c.cf.cc = Some(CcConfig {
            url: url.clone(),
            client: Some(ClientCredentials {
                uaa_url: url.clone(),
                client_id: "test".into(),
                client_secret: "test".into(),
            }),
            ca_certs: Vec::new(),
            chunk_size: 100,
        });
        c.max_policies_per_source = 2;
        c.cf.cleanup_interval = Duration::from_secs(3600);
        tweak(c);
    })
    .await
}

/// An HTTP client with the cell credentials, as CF's tests use `helpers.DefaultTLSConfig()`
/// against the internal API; `path` on the internal listener.
pub async fn internal(h: &Harness, method: Method, path: &str, body: Option<&str>) -> Answer {
    let tls = tapestry_policy::certs::client_config(&h.c().credentials_dir, true).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let mut r = http.request(method, format!("https://{}{path}", h.c().internal_addr));
    if let Some(b) = body {
        r = r.body(b.to_string());
    }
    let resp = r.send().await.expect("internal request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    Answer {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}
