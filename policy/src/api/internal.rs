//! The internal API for cells (served over mutual TLS): leases, instances, the change feed and
//! instance identity certificates.
use std::net::Ipv4Addr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, json, ApiError, ApiResult, AppState, MAX_BODY};
use crate::identity::{IdentityError, IdentityRequest, IssuedIdentity};
use crate::listen::ClientCert;
use crate::model::{FeedResponse, Instance, Lease};
use crate::store::{ops, Mode};

/// Longest a feed request waits for a change.
pub const MAX_WAIT_MS: u64 = 120_000;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/leases", get(list_leases))
        .route("/leases/acquire", put(acquire))
        .route("/leases/renew", put(renew))
        .route("/leases/release", put(release))
        .route("/internal/instances", post(instance_up))
        .route("/internal/instances/delete", post(instance_down))
        .route("/internal/cells/{underlay_ip}/instances", put(sync_cell))
        .route("/internal/feed", get(feed))
        .route("/internal/instance_identity", post(instance_identity))
        .merge(super::cf_internal::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not found") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route_layer(axum::middleware::from_fn(crate::metrics::observe_internal))
        .with_state(state)
}

fn parse_ip(field: &str, s: &str) -> ApiResult<Ipv4Addr> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("{field}: '{s}' is not an IPv4 address")))
}

type Cert = Option<Extension<ClientCert>>;

/// The cell a request may act for: its certificate's IP SAN, or `None` (any cell) for the shared
/// cell certificate where the operator allows it.
fn acting_cell(s: &AppState, cert: &Cert) -> ApiResult<Option<Ipv4Addr>> {
    match cert.as_ref().map(|c| c.0.ipv4_sans.as_slice()).unwrap_or(&[]) {
        [ip] => Ok(Some(*ip)),
        [] if s.allow_shared_cell_cert => Ok(None),
        [] => Err(ApiError::forbidden(
            "this control plane does not accept the shared cell certificate: give each cell its own (tapestry control cell-credentials --underlay-ip IP), or start the control plane with --allow-shared-cell-cert",
        )),
        _ => Err(ApiError::forbidden(
            "the client certificate names several IP addresses; a cell's names its underlay IP only",
        )),
    }
}

/// Refuses a cell acting for another cell's underlay IP.
fn act_for(acting: Option<Ipv4Addr>, field: &str, ip: Ipv4Addr) -> ApiResult<()> {
    match acting {
        Some(a) if a != ip => Err(ApiError::forbidden(format!(
            "{field}: {ip} is not this cell (its certificate is for {a})"
        ))),
        _ => Ok(()),
    }
}

/// Refuses instances whose IP lies outside the acting cell's lease.
async fn in_lease(s: &AppState, acting: Option<Ipv4Addr>, instances: &[Instance]) -> ApiResult<()> {
    let ips: Vec<(&str, Ipv4Addr)> = instances
        .iter()
        .map(|i| (i.handle.as_str(), i.ip))
        .collect();
    ips_in_lease(s, acting, "registering instances", &ips).await
}

/// Refuses container addresses (handle, ip) outside the acting cell's lease; `purpose` says
/// what a cell without a lease cannot do yet.
async fn ips_in_lease(
    s: &AppState,
    acting: Option<Ipv4Addr>,
    purpose: &str,
    ips: &[(&str, Ipv4Addr)],
) -> ApiResult<()> {
    let Some(a) = acting else { return Ok(()) };
    if ips.is_empty() {
        return Ok(());
    }
    let leases = s.store.call(Mode::Read, ops::list_leases).await?;
    let Some(lease) = leases.iter().find(|l| l.underlay_ip == a) else {
        return Err(ApiError::forbidden(format!(
            "cell {a} has no lease: acquire one before {purpose}"
        )));
    };
    for (handle, ip) in ips {
        if !lease.overlay_subnet.contains(ip) {
            return Err(ApiError::forbidden(format!(
                "instance {handle}: ip {ip} is outside this cell's lease {}",
                lease.overlay_subnet
            )));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct CellIp {
    #[serde(default)]
    underlay_ip: String,
}

async fn list_leases(State(s): State<AppState>, cert: Cert) -> ApiResult<Json<Value>> {
    acting_cell(&s, &cert)?;
    let leases = s.store.call(Mode::Read, ops::list_leases).await?;
    Ok(Json(json!({ "leases": leases })))
}

async fn acquire(
    State(s): State<AppState>,
    cert: Cert,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Lease>> {
    let acting = acting_cell(&s, &cert)?;
    let c: CellIp = json(&body(b)?)?;
    let ip = parse_ip("underlay_ip", &c.underlay_ip)?;
    act_for(acting, "underlay_ip", ip)?;
    let settings = s.store.settings.clone();
    Ok(Json(
        s.store
            .call(Mode::Write, move |tx| {
                ops::acquire(tx, &settings.leases, ip)
            })
            .await?,
    ))
}

async fn renew(
    State(s): State<AppState>,
    cert: Cert,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Lease>> {
    let acting = acting_cell(&s, &cert)?;
    #[derive(Deserialize)]
    struct Want {
        #[serde(default)]
        underlay_ip: String,
        #[serde(default)]
        overlay_subnet: String,
    }
    let w: Want = json(&body(b)?)?;
    let ip = parse_ip("underlay_ip", &w.underlay_ip)?;
    act_for(acting, "underlay_ip", ip)?;
    let subnet: ipnet::Ipv4Net = w.overlay_subnet.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "overlay_subnet: '{}' is not an IPv4 CIDR",
            w.overlay_subnet
        ))
    })?;
    let want = Lease {
        underlay_ip: ip,
        overlay_subnet: subnet,
        overlay_hardware_addr: crate::model::hardware_addr(&subnet),
        expires_at: None,
        kind: crate::model::LeaseKind::Tapestry,
    };
    let settings = s.store.settings.clone();
    Ok(Json(
        s.store
            .call(Mode::Write, move |tx| {
                ops::renew(tx, &settings.leases, &want)
            })
            .await?,
    ))
}

async fn release(
    State(s): State<AppState>,
    cert: Cert,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let acting = acting_cell(&s, &cert)?;
    let c: CellIp = json(&body(b)?)?;
    let ip = parse_ip("underlay_ip", &c.underlay_ip)?;
    act_for(acting, "underlay_ip", ip)?;
    s.store
        .call(Mode::Write, move |tx| ops::release(tx, ip))
        .await?;
    Ok(Json(json!({})))
}

fn check_instance(i: &Instance) -> ApiResult<()> {
    for (field, v) in [("handle", &i.handle), ("app_id", &i.app_id)] {
        if v.trim().is_empty() {
            return Err(ApiError::bad_request(format!("{field}: required")));
        }
        crate::validate::app_id(v).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))?;
    }
    Ok(())
}

fn parse_instance(b: &[u8]) -> ApiResult<Instance> {
    let i: Instance = json(b)?;
    check_instance(&i)?;
    Ok(i)
}

async fn instance_up(
    State(s): State<AppState>,
    cert: Cert,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let acting = acting_cell(&s, &cert)?;
    let i = parse_instance(&body(b)?)?;
    act_for(acting, "cell", i.cell)?;
    in_lease(&s, acting, std::slice::from_ref(&i)).await?;
    s.store
        .call(Mode::Write, move |tx| ops::put_instance(tx, &i))
        .await?;
    Ok(Json(json!({})))
}

async fn instance_down(
    State(s): State<AppState>,
    cert: Cert,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let acting = acting_cell(&s, &cert)?;
    #[derive(Deserialize)]
    struct Down {
        #[serde(default)]
        cell: String,
        #[serde(default)]
        handle: String,
    }
    let d: Down = json(&body(b)?)?;
    let cell = parse_ip("cell", &d.cell)?;
    act_for(acting, "cell", cell)?;
    if d.handle.is_empty() {
        return Err(ApiError::bad_request("handle: required"));
    }
    s.store
        .call(Mode::Write, move |tx| {
            ops::delete_instance(tx, cell, &d.handle)
        })
        .await?;
    Ok(Json(json!({})))
}

async fn sync_cell(
    State(s): State<AppState>,
    Path(ip): Path<String>,
    cert: Cert,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let acting = acting_cell(&s, &cert)?;
    #[derive(Deserialize)]
    struct Set {
        instances: Vec<Instance>,
    }
    let cell = parse_ip("underlay_ip", &ip)?;
    act_for(acting, "underlay_ip", cell)?;
    let set: Set = json(&body(b)?)?;
    for (n, i) in set.instances.iter().enumerate() {
        check_instance(i)
            .map_err(|e| ApiError::bad_request(format!("instances[{n}].{}", e.message)))?;
        if i.cell != cell {
            return Err(ApiError::bad_request(format!(
                "instances[{n}].cell: {} is not the cell in the path ({cell})",
                i.cell
            )));
        }
    }
    in_lease(&s, acting, &set.instances).await?;
    s.store
        .call(Mode::Write, move |tx| {
            ops::sync_cell(tx, cell, &set.instances)
        })
        .await?;
    Ok(Json(json!({})))
}

/// Signs a container's instance identity certificate from its cell's CSR; the DNS SANs get the
/// app's internal routes. A cell with its own certificate gets them only for addresses in its
/// lease.
async fn instance_identity(
    State(s): State<AppState>,
    cert: Cert,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<IssuedIdentity>> {
    let acting = acting_cell(&s, &cert)?;
    let req: IdentityRequest = json(&body(b)?)?;
    let identity_err = |e: IdentityError| match e {
        IdentityError::Invalid { .. } => ApiError::bad_request(e.to_string()),
        IdentityError::Signing(_) => {
            tracing::error!("{e}");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    };
    let ip = crate::identity::check_request(&req).map_err(identity_err)?;
    ips_in_lease(
        &s,
        acting,
        "asking for instance identities",
        &[(req.handle.as_str(), ip)],
    )
    .await?;
    let Some(ca) = s.identity.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this control plane has no instance identity CA",
        ));
    };
    let app = req.app_id.clone();
    let routes: Vec<String> = s
        .store
        .call(Mode::Read, ops::list_routes)
        .await?
        .into_iter()
        .filter(|r| r.app_id == app)
        .map(|r| r.host)
        .collect();
    ca.issue(&req, &routes, std::time::SystemTime::now())
        .map(Json)
        .map_err(identity_err)
}

#[derive(Deserialize)]
struct FeedQuery {
    #[serde(default)]
    #[allow(dead_code)]
    cell: Option<String>,
    since: Option<u64>,
    wait_ms: Option<u64>,
}

/// Long-poll: answers as soon as the version passes `since`, or after `wait_ms` unchanged.
async fn feed(
    State(s): State<AppState>,
    cert: Cert,
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<FeedResponse>> {
    acting_cell(&s, &cert)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(30_000).min(MAX_WAIT_MS));
    let mut rx = s.store.subscribe();
    let mut shutdown = s.shutdown.clone();
    if let Some(since) = q.since {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let cur = *rx.borrow_and_update();
            if cur != since {
                break; // newer (changes) or older (a different database: snapshot)
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.changed() => break,
            }
        }
    }
    let Some(since) = q.since else {
        return Ok(Json(
            s.store.call(Mode::Read, |tx| ops::feed(tx, None)).await?,
        ));
    };
    // Cells woken by the same commit ask for the same `since`: one database read serves them.
    let known = *rx.borrow();
    let slot = {
        let mut cache = s.feed_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 256 {
            cache.clear();
        }
        cache.entry(since).or_default().clone()
    };
    let store = s.store.clone();
    let r = slot
        .get_or_try_init(|| async move {
            store
                .call(Mode::Read, move |tx| ops::feed(tx, Some(since)))
                .await
        })
        .await?
        .clone();
    // Reuse only answers that carry changes and are as new as what this process knows.
    if r.snapshot.is_none() && !r.changes.is_empty() && r.version >= known {
        return Ok(Json(r));
    }
    s.feed_cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&since);
    Ok(Json(
        s.store
            .call(Mode::Read, move |tx| ops::feed(tx, Some(since)))
            .await?,
    ))
}
