//! App deletion and the cleanup of stale policies (CF's `POST .../policies/cleanup`).
use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{authenticate, require_admin, ApiResult, AppState};
use crate::model::Policy;
use crate::store::{ops, Mode};

/// The routes, merged into the external router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/networking/{version}/external/policies/cleanup",
            post(cleanup),
        )
        .route(
            "/networking/{version}/external/apps/{app}",
            delete(delete_app),
        )
}

/// `{"total_policies": N, "policies": [...]}` in v1's form (CF answers cleanup so on v0 too).
fn removed(policies: Vec<Policy>) -> Json<Value> {
    Json(json!({ "total_policies": policies.len(), "policies": policies }))
}

/// Why a cleanup failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    #[error("get app guids from Cloud-Controller failed: {0}")]
    CloudController(#[from] crate::cc::CcError),
}

/// Removes the policies of deleted apps (and frees their tags); returns them. With Cloud
/// Controller, also those of apps it no longer knows (CF's policy cleaner: the policies' apps
/// asked in chunks of `--cc-app-request-chunk-size`).
pub async fn run_cleanup(
    s: &crate::store::Store,
    cc: Option<&crate::cc::CloudController>,
) -> Result<Vec<Policy>, CleanupError> {
    let gone = match cc {
        None => None,
        Some(cc) => {
            let apps: Vec<String> = s.call(Mode::Read, ops::policy_apps).await?;
            let live = cc.live_apps(&apps).await?;
            Some(
                apps.into_iter()
                    .filter(|a| !live.contains(a))
                    .collect::<HashSet<String>>(),
            )
        }
    };
    Ok(s.call(Mode::Write, move |tx| {
        ops::stale_policies(tx, gone.as_ref())
    })
    .await?)
}

async fn cleanup(
    State(s): State<AppState>,
    Path(v): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    super::external::version(&v)?;
    require_admin(&authenticate(&s, &headers).await?)?;
    let policies = run_cleanup(&s.store, s.cc.as_deref()).await.map_err(|e| {
        tracing::error!("cleanup: {e}");
        super::ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "policies cleanup failed",
        )
    })?;
    Ok(removed(policies))
}

/// Marks the app deleted and removes its policies and internal routes; returns the policies.
async fn delete_app(
    State(s): State<AppState>,
    Path((v, app)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    super::external::version(&v)?;
    require_admin(&authenticate(&s, &headers).await?)?;
    let policies = s
        .store
        .call(Mode::Write, move |tx| ops::delete_app(tx, &app))
        .await?;
    Ok(removed(policies))
}
