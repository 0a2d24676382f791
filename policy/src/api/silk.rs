//! The Silk controller API with silk-release's semantics (`controller/handlers/`), served on
//! `--silk-listen` (CF's port 4103) with the internal API's mutual TLS, for stock silk-daemons:
//! `GET /leases`, `PUT /leases/acquire` (`single_overlay_ip` gives a /32), `PUT /leases/renew`
//! (answers `{}`; re-adds a lease the controller lacks when its subnet is free; 409
//! `renew-subnet-lease: lease mismatch` for another lease), `PUT /leases/release`. Malformed
//! JSON is 400 `unmarshal-request: ...`.
use std::net::Ipv4Addr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiResult, AppState, MAX_BODY};
use crate::model::Lease;
use crate::store::silk::RenewError;
use crate::store::{ops, silk, Mode};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/leases", get(index))
        .route("/leases/acquire", put(acquire))
        .route("/leases/renew", put(renew))
        .route("/leases/release", put(release))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not found") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Silk's lease JSON.
fn silk_lease(l: &Lease) -> Value {
    json!({
        "underlay_ip": l.underlay_ip.to_string(),
        "overlay_subnet": l.overlay_subnet.to_string(),
        "overlay_hardware_addr": l.overlay_hardware_addr,
    })
}

fn read<T: serde::de::DeserializeOwned>(b: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let b = b.map_err(|e| ApiError::bad_request(format!("read-body: {e}")))?;
    serde_json::from_slice(&b).map_err(|e| ApiError::bad_request(format!("unmarshal-request: {e}")))
}

/// Silk answers 500 for a bad address; Tapestry answers 400, with Silk's text.
fn ipv4(s: &str) -> ApiResult<Ipv4Addr> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid ipv4 address: {s}")))
}

async fn index(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let leases = s.store.call(Mode::Read, ops::list_leases).await?;
    let leases: Vec<Value> = leases.iter().map(silk_lease).collect();
    Ok(Json(json!({ "leases": leases })))
}

#[derive(Deserialize)]
struct AcquireRequest {
    #[serde(default)]
    underlay_ip: String,
    #[serde(default)]
    single_overlay_ip: bool,
}

async fn acquire(
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let r: AcquireRequest = read(b)?;
    let ip = ipv4(&r.underlay_ip)?;
    let settings = s.store.settings.leases.clone();
    let l = s
        .store
        .call(Mode::Write, move |tx| {
            if r.single_overlay_ip {
                silk::acquire_single(tx, &settings, ip)
            } else {
                ops::acquire(tx, &settings, ip)
            }
        })
        .await?;
    Ok(Json(silk_lease(&l)))
}

#[derive(Deserialize)]
struct RenewRequest {
    #[serde(default)]
    underlay_ip: String,
    #[serde(default)]
    overlay_subnet: String,
    #[serde(default)]
    overlay_hardware_addr: String,
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn renew(
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let r: RenewRequest = read(b)?;
    let refused =
        |m: String| ApiError::new(StatusCode::CONFLICT, format!("renew-subnet-lease: {m}"));
    let ip: Ipv4Addr = r
        .underlay_ip
        .parse()
        .map_err(|_| refused(format!("invalid underlay ip: {}", r.underlay_ip)))?;
    let subnet: ipnet::Ipv4Net = r
        .overlay_subnet
        .parse()
        .map_err(|_| refused(format!("invalid CIDR address: {}", r.overlay_subnet)))?;
    if !is_mac(&r.overlay_hardware_addr) {
        return Err(refused(format!(
            "address {}: invalid MAC address",
            r.overlay_hardware_addr
        )));
    }
    let settings = s.store.settings.leases.clone();
    let hw = r.overlay_hardware_addr;
    let out = s
        .store
        .call(Mode::Write, move |tx| {
            // A store error rolls the transaction back; a refusal has written nothing.
            match silk::renew(tx, &settings, ip, subnet, &hw) {
                Err(RenewError::Store(e)) => Err(e),
                other => Ok(other),
            }
        })
        .await?;
    match out {
        Ok(()) => Ok(Json(json!({}))),
        Err(RenewError::Refused(m)) => Err(refused(m)),
        Err(RenewError::Store(e)) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct ReleaseRequest {
    #[serde(default)]
    underlay_ip: String,
}

async fn release(
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let r: ReleaseRequest = read(b)?;
    let ip = ipv4(&r.underlay_ip)?;
    s.store
        .call(Mode::Write, move |tx| ops::release(tx, ip))
        .await?;
    Ok(Json(json!({})))
}
