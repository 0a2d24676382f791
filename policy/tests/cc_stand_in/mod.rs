//! A stand-in Cloud Controller and UAA token endpoint for the `--cloud-controller` tests: the
//! documented answers of `/v3/apps`, `/v3/roles` (when `v3_roles`), CF's v2 space calls (when
//! not), and `POST /oauth/token` for the `network-policy` client; it logs every request.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

pub const SECRET: &str = "s3cret";

/// What the stand-in knows and what it was asked.
#[derive(Default)]
pub struct World {
    /// app -> space
    pub apps: HashMap<String, String>,
    /// space -> (name, org)
    pub spaces: HashMap<String, (String, String)>,
    /// user -> spaces where the user is a developer
    pub developers: HashMap<String, Vec<String>>,
    /// The token Cloud Controller accepts now.
    pub valid_token: String,
    /// Also accept requests without a token (as a stand-in that checks nothing would).
    pub anonymous: bool,
    pub grants: usize,
    /// Answer 503 to everything but the token endpoint.
    pub down: bool,
    /// Serve `/v3/roles` and not the v2 space calls (a Cloud Controller without v2).
    pub v3_roles: bool,
    /// `/v3/security_groups` resources, as CAPI v3 documents them.
    pub security_groups: Vec<Value>,
    /// Groups per page of `/v3/security_groups` (0: the `per_page` asked for).
    pub asg_page_size: usize,
    /// Announce one group more than listed in `total_results` (a listing changing meanwhile).
    pub asg_unstable: bool,
    /// This stand-in's base URL (for absolute `next` links).
    pub base: String,
    pub log: Vec<String>,
}

pub type Cc = Arc<Mutex<World>>;

pub fn world() -> Cc {
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
    let got = headers.get("authorization").and_then(|v| v.to_str().ok());
    if got != Some(want.as_str()) && !(w.anonymous && got.is_none()) {
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

async fn v3_security_groups(
    State(cc): State<Cc>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let mut w = cc.lock().unwrap();
    if let Err(r) = gate(
        &mut w,
        &headers,
        format!("GET /v3/security_groups?{}", q.clone().unwrap_or_default()),
    ) {
        return r.into_response();
    }
    let p = pairs(&q);
    let num = |k: &str, d: usize| {
        p.iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(d)
    };
    let size = match w.asg_page_size {
        0 => num("per_page", 50),
        n => n,
    };
    let page = num("page", 1).max(1);
    let total = w.security_groups.len();
    let pages = total.div_ceil(size).max(1);
    let resources: Vec<Value> = w
        .security_groups
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .cloned()
        .collect();
    let link = |n: usize| json!({"href": format!("{}/v3/security_groups?page={n}&per_page={size}", w.base)});
    Json(json!({
        "pagination": {"total_results": total + usize::from(w.asg_unstable), "total_pages": pages,
                       "first": link(1), "last": link(pages),
                       "next": if page < pages { link(page + 1) } else { Value::Null },
                       "previous": if page > 1 { link(page - 1) } else { Value::Null }},
        "resources": resources
    }))
    .into_response()
}

/// A `/v3/security_groups` resource as CAPI v3 documents it.
pub fn security_group(guid: &str, name: &str, rules: Value, running_spaces: &[&str]) -> Value {
    let data = |s: &[&str]| -> Vec<Value> { s.iter().map(|g| json!({"guid": g})).collect() };
    json!({
        "guid": guid,
        "created_at": "2020-02-20T17:42:08Z",
        "updated_at": "2020-02-20T17:42:08Z",
        "name": name,
        "globally_enabled": {"running": running_spaces.is_empty(), "staging": false},
        "rules": rules,
        "relationships": {
            "staging_spaces": {"data": []},
            "running_spaces": {"data": data(running_spaces)}
        },
        "links": {"self": {"href": format!("https://cc.test/v3/security_groups/{guid}")}}
    })
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

/// `space_developer` roles filtered by `user_guids` and `space_guids`, one per page (so that
/// `pagination.next` is followed).
async fn v3_roles(State(cc): State<Cc>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let mut w = cc.lock().unwrap();
    let line = format!("GET /v3/roles?{}", q.clone().unwrap_or_default());
    if let Err(r) = gate(&mut w, &headers, line) {
        return r.into_response();
    }
    let p = pairs(&q);
    let get = |k: &str| p.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    let list = |k: &str| get(k).map(|v| v.split(',').map(String::from).collect::<Vec<_>>());
    assert_eq!(get("types").as_deref(), Some("space_developer"), "{p:?}");
    let users = list("user_guids").unwrap_or_default();
    let spaces = list("space_guids");
    let mut roles: Vec<(String, String)> = Vec::new();
    for u in &users {
        for s in w.developers.get(u).cloned().unwrap_or_default() {
            if spaces.as_ref().is_none_or(|f| f.contains(&s)) {
                roles.push((u.clone(), s));
            }
        }
    }
    let page: usize = get("page").map(|v| v.parse().unwrap()).unwrap_or(1);
    let resources: Vec<Value> = roles
        .get(page - 1)
        .map(|(u, s)| {
            vec![
                json!({"guid": format!("role-{u}-{s}"), "type": "space_developer",
                        "relationships": {"user": {"data": {"guid": u}},
                                          "space": {"data": {"guid": s}},
                                          "organization": {"data": null}}}),
            ]
        })
        .unwrap_or_default();
    let next = (page < roles.len()).then(|| {
        let mut rest: Vec<(String, String)> =
            p.iter().filter(|(k, _)| k != "page").cloned().collect();
        rest.push(("page".into(), (page + 1).to_string()));
        let u = reqwest::Url::parse_with_params(&format!("{}/v3/roles", w.base), &rest).unwrap();
        json!({"href": u.as_str()})
    });
    Json(
        json!({"pagination": {"total_results": roles.len(), "total_pages": roles.len().max(1),
                               "next": next, "previous": null},
                "resources": resources}),
    )
    .into_response()
}

/// Serves the stand-in; returns its base URL.
pub async fn serve(cc: Cc) -> String {
    let app = Router::new()
        .route("/oauth/token", post(oauth_token))
        .route("/v3/apps", get(v3_apps))
        .route("/v3/security_groups", get(v3_security_groups));
    let app = if cc.lock().unwrap().v3_roles {
        app.route("/v3/roles", get(v3_roles))
    } else {
        app.route("/v2/spaces", get(v2_spaces))
            .route("/v2/spaces/{guid}", get(v2_space))
            .route("/v2/users/{user}/spaces", get(v2_user_spaces))
    };
    let app = app
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(cc.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    cc.lock().unwrap().base = format!("http://{addr}");
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}
