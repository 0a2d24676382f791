//! The external API, compatible with Cloud Foundry's policy server, plus ASGs, internal routes
//! and leases.
use std::collections::HashMap;
use std::net::Ipv4Addr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    authenticate, body, json, require_admin, require_write, ApiError, ApiResult, AppState, MAX_BODY,
};
use crate::model::{Policy, Principal, Route, SecurityGroup};
use crate::store::{ops, Mode, PolicyFilter};
use crate::validate;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/networking", get(root))
        .route("/health", get(health))
        .route(
            "/networking/{version}/external/policies",
            get(list_policies).post(create_policies),
        )
        .route(
            "/networking/{version}/external/policies/delete",
            post(delete_policies),
        )
        .route("/networking/{version}/external/tags", get(tags))
        .route("/networking/{version}/external/whoami", get(whoami))
        .route(
            "/networking/{version}/external/security_groups",
            get(list_asgs).post(create_asg),
        )
        .route(
            "/networking/{version}/external/security_groups/{name}",
            get(get_asg).put(update_asg).delete(delete_asg),
        )
        .route(
            "/networking/{version}/external/routes",
            get(list_routes).post(add_route),
        )
        .route(
            "/networking/{version}/external/routes/delete",
            post(delete_route),
        )
        .route(
            "/networking/{version}/external/leases",
            get(list_leases).post(add_lease),
        )
        .merge(super::apps::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route_layer(axum::middleware::from_fn(crate::metrics::observe_external))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::cf_headers::layer,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not found")
}

/// `true` for v0. 406 for anything but v0 / v1.
pub(crate) fn version(v: &str) -> ApiResult<bool> {
    match v {
        "v0" => Ok(true),
        "v1" => Ok(false),
        other => Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!("api version '{other}' not supported"),
        )),
    }
}

fn ok() -> Json<Value> {
    Json(json!({}))
}

async fn root(State(s): State<AppState>) -> String {
    format!("Network policy server, up for {:?}\n", s.started.elapsed())
}

/// As CF's: 200 with an empty body; 500 `check database failed` when the database cannot be
/// read. Tapestry adds 503 while writes fail (a full disk, a read-only database): the last write
/// failed and a write that changes nothing fails too.
async fn health(State(s): State<AppState>) -> Response {
    if let Some(e) = s.store.write_error() {
        if let Err(probe) = s.store.probe_write().await {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the store is not writable: {probe} (last failed write: {e})"),
            )
            .into_response();
        }
    }
    match s.store.call(Mode::Read, ops::current_version).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => {
            tracing::error!("health: check database failed: {e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "check database failed")
                .into_response()
        }
    }
}

fn ids(q: &HashMap<String, String>, key: &str) -> Option<Vec<String>> {
    q.get(key).map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
}

/// Served from the in-memory index, brought to the committed version in the list's own read
/// transaction (see [`super::policy_index`]).
async fn list_policies(
    State(s): State<AppState>,
    Path(v): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let v0 = version(&v)?;
    let p = authenticate(&s, &headers).await?;
    require_write(&p)?;
    // As CF: `id` (even empty) takes precedence over `source_id` / `dest_id`.
    let filter = match ids(&q, "id") {
        Some(id) => PolicyFilter {
            id: Some(id),
            ..Default::default()
        },
        None => PolicyFilter {
            id: None,
            source_id: ids(&q, "source_id"),
            dest_id: ids(&q, "dest_id"),
        },
    };
    let access = super::access::list_access(&s, &p, &filter).await?;
    Ok(s.lists
        .list(&s.store, filter, access, v0)
        .await?
        .into_response())
}

/// CF's order: version (406), token (401) and scope (403), body (400: `read_error` past 10 MB,
/// as Go's MaxBytesReader fails the read), validation (400), app access (403).
async fn policies_input(
    s: &AppState,
    v: &str,
    headers: &HeaderMap,
    b: Result<Bytes, BytesRejection>,
    read_error: &str,
) -> ApiResult<(Principal, Vec<Policy>)> {
    let v0 = version(v)?;
    let p = authenticate(s, headers).await?;
    require_write(&p)?;
    let b = b.map_err(|_| ApiError::bad_request(read_error))?;
    let policies = validate::parse_policies(&b, v0).map_err(ApiError::bad_request)?;
    let apps = policies
        .iter()
        .flat_map(|p| [p.source.id.clone(), p.destination.id.clone()])
        .collect();
    super::access::check_apps(s, &p, apps).await?;
    Ok((p, policies))
}

async fn create_policies(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let (p, policies) = policies_input(&s, &v, &headers, b, "failed reading request body").await?;
    let settings = s.store.settings.clone();
    // Admins are not held to the quota (CF's quota guard).
    let quota = if p.is_admin() {
        ops::Quota::Exempt
    } else {
        ops::Quota::Enforce
    };
    s.store
        .call(Mode::Write, move |tx| {
            ops::create_policies(tx, &settings, &policies, quota)
        })
        .await?;
    Ok(ok())
}

async fn delete_policies(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let (_, policies) = policies_input(&s, &v, &headers, b, "invalid request body").await?;
    s.store
        .call(Mode::Write, move |tx| ops::delete_policies(tx, &policies))
        .await?;
    Ok(ok())
}

async fn tags(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    version(&v)?;
    let p = authenticate(&s, &headers).await?;
    require_admin(&p)?;
    let tags = s.store.call(Mode::Read, ops::list_tags).await?;
    Ok(Json(json!({ "tags": tags })))
}

async fn whoami(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    version(&v)?;
    let p = authenticate(&s, &headers).await?;
    require_admin(&p)?;
    Ok(Json(json!({ "subject": p.name })))
}

async fn list_asgs(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    version(&v)?;
    require_write(&authenticate(&s, &headers).await?)?;
    let groups = s.store.call(Mode::Read, ops::list_security_groups).await?;
    Ok(Json(json!({ "security_groups": groups })))
}

/// Refuses a security group write while the groups are synced from Cloud Controller.
fn asgs_writable(s: &AppState) -> ApiResult<()> {
    if s.asgs_from_cc {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "security groups are synced from Cloud Controller (--asg-sync-interval): change them there",
        ));
    }
    Ok(())
}

/// The body of `POST .../security_groups`, parsed and validated.
pub fn parse_asg(b: &[u8]) -> ApiResult<SecurityGroup> {
    let g: SecurityGroup = json(b)?;
    validate::security_group(&g).map_err(ApiError::bad_request)?;
    Ok(g)
}

/// The body of `PUT .../security_groups/{name}`: the name may be omitted in the body; it
/// defaults to the one in the path.
pub fn parse_asg_update(b: &[u8], name: &str) -> ApiResult<SecurityGroup> {
    let mut raw: Value = json(b)?;
    if let Some(o) = raw.as_object_mut() {
        o.entry("name")
            .or_insert_with(|| Value::String(name.to_string()));
    }
    parse_asg(&serde_json::to_vec(&raw).unwrap_or_default())
}

async fn create_asg(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SecurityGroup>> {
    version(&v)?;
    require_admin(&authenticate(&s, &headers).await?)?;
    asgs_writable(&s)?;
    let g = parse_asg(&body(b)?)?;
    let stored = g.clone();
    s.store
        .call(Mode::Write, move |tx| {
            ops::put_security_group(tx, None, &stored)
        })
        .await?;
    Ok(Json(g))
}

async fn get_asg(
    State(s): State<AppState>,
    Path((v, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<SecurityGroup>> {
    version(&v)?;
    require_write(&authenticate(&s, &headers).await?)?;
    let n = name.clone();
    match s
        .store
        .call(Mode::Read, move |tx| ops::get_security_group(tx, &n))
        .await?
    {
        Some(g) => Ok(Json(g)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("security group '{name}' not found"),
        )),
    }
}

async fn update_asg(
    State(s): State<AppState>,
    Path((v, name)): Path<(String, String)>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<SecurityGroup>> {
    version(&v)?;
    require_admin(&authenticate(&s, &headers).await?)?;
    asgs_writable(&s)?;
    let g = parse_asg_update(&body(b)?, &name)?;
    let stored = g.clone();
    s.store
        .call(Mode::Write, move |tx| {
            ops::put_security_group(tx, Some(&name), &stored)
        })
        .await?;
    Ok(Json(g))
}

async fn delete_asg(
    State(s): State<AppState>,
    Path((v, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    version(&v)?;
    require_admin(&authenticate(&s, &headers).await?)?;
    asgs_writable(&s)?;
    s.store
        .call(Mode::Write, move |tx| ops::delete_security_group(tx, &name))
        .await?;
    Ok(ok())
}

#[derive(Deserialize)]
struct RouteBody {
    #[serde(default)]
    host: String,
    #[serde(default)]
    app_id: String,
}

/// The body of `POST .../routes` and `.../routes/delete`, parsed and validated.
pub fn parse_route(b: &[u8]) -> ApiResult<Route> {
    let rb: RouteBody = json(b)?;
    validate::route(&rb.host, &rb.app_id).map_err(ApiError::bad_request)
}

async fn list_routes(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    version(&v)?;
    let p = authenticate(&s, &headers).await?;
    require_write(&p)?;
    let mut routes = s.store.call(Mode::Read, ops::list_routes).await?;
    let apps = routes.iter().map(|r| r.app_id.clone());
    if let Some(allowed) = super::access::visible(&s, &p, apps, "filter routes failed").await? {
        routes.retain(|r| allowed.contains(&r.app_id));
    }
    Ok(Json(json!({ "routes": routes })))
}

async fn route_input(
    s: &AppState,
    v: &str,
    headers: &HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Route> {
    version(v)?;
    let p = authenticate(s, headers).await?;
    require_write(&p)?;
    let r = parse_route(&body(b)?)?;
    super::access::check_apps(s, &p, vec![r.app_id.clone()]).await?;
    Ok(r)
}

async fn add_route(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let r = route_input(&s, &v, &headers, b).await?;
    // A host is owned by the spaces of the apps mapped to it: a network.write token may map a
    // host no app has, or whose apps are all in its spaces.
    let p = authenticate(&s, &headers).await?;
    let routes = s.store.call(Mode::Read, ops::list_routes).await?;
    let owners: Vec<String> = routes
        .into_iter()
        .filter(|x| x.host == r.host)
        .map(|x| x.app_id)
        .collect();
    let allowed = super::access::visible(&s, &p, owners.clone(), "check access failed").await?;
    if let Some(allowed) = allowed {
        if owners.iter().any(|o| !allowed.contains(o)) {
            return Err(ApiError::forbidden(format!(
                "route host {} is mapped to apps of another space",
                r.host
            )));
        }
    }
    s.store
        .call(Mode::Write, move |tx| ops::add_route(tx, &r))
        .await?;
    Ok(ok())
}

async fn delete_route(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let r = route_input(&s, &v, &headers, b).await?;
    s.store
        .call(Mode::Write, move |tx| ops::delete_route(tx, &r))
        .await?;
    Ok(ok())
}

async fn list_leases(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    version(&v)?;
    require_admin(&authenticate(&s, &headers).await?)?;
    let leases = s.store.call(Mode::Read, ops::list_leases).await?;
    Ok(Json(json!({ "leases": leases })))
}

#[derive(Deserialize)]
struct StaticLease {
    #[serde(default)]
    underlay_ip: String,
    #[serde(default)]
    overlay_subnet: String,
}

/// The body of `POST .../leases`: the underlay IP and the overlay subnet of a static lease.
pub fn parse_static_lease(b: &[u8]) -> ApiResult<(Ipv4Addr, ipnet::Ipv4Net)> {
    let sl: StaticLease = json(b)?;
    let ip: Ipv4Addr = sl.underlay_ip.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "underlay_ip: '{}' is not an IPv4 address",
            sl.underlay_ip
        ))
    })?;
    let subnet: ipnet::Ipv4Net = sl.overlay_subnet.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "overlay_subnet: '{}' is not an IPv4 CIDR",
            sl.overlay_subnet
        ))
    })?;
    Ok((ip, subnet))
}

async fn add_lease(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    version(&v)?;
    require_admin(&authenticate(&s, &headers).await?)?;
    let (ip, subnet) = parse_static_lease(&body(b)?)?;
    let settings = s.store.settings.clone();
    let l = s
        .store
        .call(Mode::Write, move |tx| {
            ops::register_static(tx, &settings.leases, ip, subnet)
        })
        .await?;
    Ok(Json(serde_json::to_value(l).unwrap_or_default()))
}
