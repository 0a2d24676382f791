//! CF's internal policy API, as the vxlan-policy-agent polls it (cf-networking-release
//! `policy-server/handlers/policies_index_internal.go`, `policies_last_updated_internal.go`,
//! `tags_create.go`, `asgs_index.go`), served on the internal (mutual TLS) listener:
//!
//! - `GET /networking/{v}/internal/policies[?id=A,B]`: `{"total_policies","policies"}` with tags;
//! - `GET /networking/{v}/internal/policies_last_updated`: an integer (Unix ns);
//! - `PUT /networking/v1/internal/tags` `{"id","type"}` -> `{"id","type","tag"}`;
//! - `GET /networking/{v}/internal/security_groups[?space_guids=S,T][&from=N][&limit=N]`:
//!   `{"next": N, "security_groups": [...]}`; `next` is 0 on the last page.
//!
//! Every answer carries CF's `Strict-Transport-Security: max-age=31536000`.
use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiResult, AppState};
use crate::model::SecurityGroup;
use crate::store::{ops, Mode, PolicyFilter};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/networking/{version}/internal/policies", get(policies))
        .route(
            "/networking/{version}/internal/policies_last_updated",
            get(last_updated),
        )
        .route("/networking/v1/internal/tags", put(create_tag))
        .route(
            "/networking/{version}/internal/security_groups",
            get(security_groups),
        )
        .route_layer(axum::middleware::map_response(hsts))
}

/// CF's `HSTSHandler` on its internal (TLS) server: `Strict-Transport-Security: max-age=31536000`
/// (one year) on every answer.
async fn hsts(mut r: axum::response::Response) -> axum::response::Response {
    r.headers_mut().insert(
        axum::http::header::STRICT_TRANSPORT_SECURITY,
        axum::http::HeaderValue::from_static("max-age=31536000"),
    );
    r
}

fn internal_error(what: &'static str) -> impl FnOnce(crate::StoreError) -> ApiError {
    move |e| {
        tracing::error!("{what}: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, what)
    }
}

/// CF splits the first `id` value on commas; present but empty matches nothing.
fn split(q: &HashMap<String, String>, key: &str) -> Option<Vec<String>> {
    q.get(key)
        .map(|v| v.split(',').map(str::to_string).collect())
}

async fn policies(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let filter = PolicyFilter {
        id: split(&q, "id"),
        ..Default::default()
    };
    let list = s
        .store
        .call(Mode::Read, move |tx| ops::list_policies(tx, &filter, true))
        .await
        .map_err(internal_error("database read failed"))?;
    Ok(Json(
        json!({ "total_policies": list.len(), "policies": list }),
    ))
}

async fn last_updated(State(s): State<AppState>) -> ApiResult<Json<i64>> {
    let v = s
        .store
        .call(Mode::Read, ops::last_updated)
        .await
        .map_err(internal_error("database read failed"))?;
    Ok(Json(v))
}

#[derive(Deserialize)]
struct TagRequest {
    #[serde(default)]
    id: String,
    #[serde(default, rename = "type")]
    kind: String,
}

async fn create_tag(
    State(s): State<AppState>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<crate::model::Tag>> {
    let b = b.map_err(|_| ApiError::bad_request("failed reading request body"))?;
    let r: TagRequest = serde_json::from_slice(&b)
        .map_err(|_| ApiError::bad_request("failed parsing request body"))?;
    if r.id.trim().is_empty() || r.kind.trim().is_empty() {
        return Err(ApiError::bad_request(
            "failed parsing request body: id and type are required",
        ));
    }
    crate::validate::app_id(&r.id)
        .map_err(|e| ApiError::bad_request(format!("invalid id: {e}")))?;
    crate::validate::app_id(&r.kind)
        .map_err(|e| ApiError::bad_request(format!("invalid type: {e}")))?;
    let max_tag = s.store.settings.max_tag;
    let tag = s
        .store
        .call(Mode::Write, move |tx| {
            ops::create_tag(tx, &r.id, &r.kind, max_tag)
        })
        .await
        .map_err(|e| match e {
            crate::StoreError::TagsExhausted => ApiError::from(e),
            e => internal_error("database create failed")(e),
        })?;
    Ok(Json(tag))
}

/// CF's ASG as the agent reads it: `rules` is the rules' JSON, as a string.
fn cf_asg(g: &SecurityGroup) -> Value {
    json!({
        "guid": g.guid.as_deref().unwrap_or(&g.name),
        "name": g.name,
        "rules": serde_json::to_string(&g.rules).unwrap_or_else(|_| "[]".into()),
        "staging_default": g.globally_enabled.staging,
        "running_default": g.globally_enabled.running,
        "staging_space_guids": g.staging_spaces,
        "running_space_guids": g.running_spaces,
    })
}

/// `from` and `limit` as CF parses them (Go's Atoi: a bad value is CF's 500).
fn int_param(
    q: &HashMap<String, String>,
    name: &'static str,
    what: &'static str,
) -> ApiResult<usize> {
    match q.get(name) {
        None => Ok(0),
        Some(v) => v
            .trim_start_matches('+')
            .parse::<i64>()
            .map(|n| n.max(0) as usize)
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, what)),
    }
}

/// Global groups and those bound to one of `space_guids`, in name order; a group's id (for
/// `from` and `next`) is its 1-based position in that order.
async fn security_groups(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let from = int_param(&q, "from", "invalid value for 'from' parameter")?;
    let limit = int_param(&q, "limit", "invalid value for 'limit' parameter")?;
    let spaces = split(&q, "space_guids").unwrap_or_default();
    let all = s
        .store
        .call(Mode::Read, ops::list_security_groups)
        .await
        .map_err(internal_error("database read failed"))?;
    let matching = all.iter().enumerate().filter(|(_, g)| {
        g.globally_enabled.running
            || g.globally_enabled.staging
            || g.running_spaces
                .iter()
                .chain(&g.staging_spaces)
                .any(|sp| spaces.contains(sp))
    });
    let mut page = Vec::new();
    let mut next = 0;
    for (i, g) in matching.filter(|(i, _)| i + 1 >= from) {
        if limit == 0 || page.len() < limit {
            page.push(cf_asg(g));
        } else {
            next = i + 1;
            break;
        }
    }
    Ok(Json(json!({ "next": next, "security_groups": page })))
}
