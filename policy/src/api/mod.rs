//! HTTP APIs: the external CF-compatible API and the internal (mutual TLS) API for cells.
pub mod access;
pub mod apps;
pub mod cf_headers;
pub mod cf_internal;
pub mod external;
pub mod internal;
pub mod policy_index;
pub mod silk;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::model::Principal;
use crate::store::{ops, Mode, Store};

/// Request bodies above this are refused with 413 (as CF).
pub const MAX_BODY: usize = 10 * 1024 * 1024;

pub(crate) type FeedSlot = Arc<tokio::sync::OnceCell<crate::model::FeedResponse>>;

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    tokens: Arc<Mutex<HashMap<String, Principal>>>,
    /// The in-memory policy index the external list is served from.
    pub lists: policy_index::PolicyLists,
    /// Feed answers by `since`, shared by the cells that wake on the same commit.
    pub(crate) feed_cache: Arc<Mutex<HashMap<u64, FeedSlot>>>,
    started: std::time::Instant,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Signs instance identity certificates (`POST /internal/instance_identity`).
    pub identity: Option<Arc<crate::identity::InstanceCa>>,
    /// Origins answered with `Access-Control-Allow-Origin` (`*`: any), as CF's
    /// `allowed_cors_domains`.
    pub cors_domains: Arc<Vec<String>>,
    /// Verifies UAA-issued JWTs, when configured (the built-in tokens work as well).
    pub uaa: Option<crate::uaa::Uaa>,
    /// The internal API accepts the shared cell certificate (no IP SAN), acting for any cell
    /// (`--allow-shared-cell-cert`, for upgrades).
    pub allow_shared_cell_cert: bool,
    /// Apps and spaces come from Cloud Controller, when `--cloud-controller` is given.
    pub cc: Option<Arc<crate::cc::CloudController>>,
    /// Security groups are synced from Cloud Controller (`--asg-sync-interval`): the external
    /// API's writes of them are refused.
    pub asgs_from_cc: bool,
}

impl AppState {
    pub fn new(store: Store, shutdown: tokio::sync::watch::Receiver<bool>) -> AppState {
        AppState {
            store,
            tokens: Default::default(),
            lists: Default::default(),
            feed_cache: Default::default(),
            started: std::time::Instant::now(),
            shutdown,
            identity: None,
            cors_domains: Default::default(),
            uaa: None,
            allow_shared_cell_cert: false,
            cc: None,
            asgs_from_cc: false,
        }
    }

    /// Accepts UAA-issued JWTs too.
    pub fn with_uaa(mut self, uaa: Option<crate::uaa::Uaa>) -> AppState {
        self.uaa = uaa;
        self
    }

    /// Asks Cloud Controller for apps and spaces.
    pub fn with_asgs_from_cloud_controller(mut self, yes: bool) -> AppState {
        self.asgs_from_cc = yes;
        self
    }

    pub fn with_cloud_controller(
        mut self,
        cc: Option<Arc<crate::cc::CloudController>>,
    ) -> AppState {
        self.cc = cc;
        self
    }

    /// Answers CORS requests from these origins.
    pub fn with_cors_domains(mut self, domains: Vec<String>) -> AppState {
        self.cors_domains = Arc::new(domains);
        self
    }

    /// Serves instance identity requests with `ca`.
    pub fn with_identity(mut self, ca: Arc<crate::identity::InstanceCa>) -> AppState {
        self.identity = Some(ca);
        self
    }
}

/// An error answer: `{"error": message}` with `status`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        if self.status == StatusCode::UNAUTHORIZED {
            (self.status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match &e {
            StoreError::QuotaExceeded => StatusCode::FORBIDDEN,
            StoreError::TagsExhausted | StoreError::NoLease | StoreError::Conflict(_) => {
                StatusCode::CONFLICT
            }
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Invalid(_) | StoreError::TooManyNewApps { .. } => StatusCode::BAD_REQUEST,
            StoreError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        ApiError::new(status, e.to_string())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The body, or 413 past [`MAX_BODY`].
pub fn body(b: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large: the limit is 10 MB",
            )
        } else {
            ApiError::bad_request(format!("reading the request body: {r}"))
        }
    })
}

/// Parses JSON, 400 naming the problem otherwise.
pub fn json<T: DeserializeOwned>(b: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// The SHA-256 (hex) under which a token is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The principal of the request's token, or 401, as CF's auth middleware: the token is the
/// `Authorization` header with a `Bearer ` (or `bearer `) prefix removed, when it has one.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized("missing authorization header"));
    };
    let failed = || unauthorized("failed to verify token with uaa");
    let value = value.to_str().map_err(|_| failed())?;
    let token = value.strip_prefix("Bearer ").unwrap_or(value);
    let token = token.strip_prefix("bearer ").unwrap_or(token);
    if token.is_empty() {
        return Err(failed());
    }
    if let Some(uaa) = &state.uaa {
        if crate::uaa::looks_like_jwt(token) {
            return uaa.verify(token).await.map_err(|e| {
                tracing::info!("refused a UAA token: {e}");
                failed()
            });
        }
    }
    let hash = token_hash(token);
    if let Some(p) = state
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&hash)
    {
        return Ok(p.clone());
    }
    let h = hash.clone();
    let found = state
        .store
        .call(Mode::Read, move |tx| ops::lookup_token(tx, &h))
        .await?;
    let Some(p) = found else {
        return Err(failed());
    };
    state
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(hash, p.clone());
    Ok(p)
}

/// CF's scope error: Go's rendering of the two scope lists.
fn scope_error(p: &Principal, allowed: &str) -> ApiError {
    ApiError::forbidden(format!(
        "provided scopes [{}] do not include allowed scopes [{allowed}]",
        p.scope
    ))
}

/// 403 unless admin.
pub fn require_admin(p: &Principal) -> ApiResult<()> {
    if p.is_admin() {
        Ok(())
    } else {
        Err(scope_error(p, crate::SCOPE_ADMIN))
    }
}

/// 403 unless admin or network.write.
pub fn require_write(p: &Principal) -> ApiResult<()> {
    if p.is_admin() || p.scope == crate::SCOPE_WRITE {
        Ok(())
    } else {
        Err(scope_error(
            p,
            &format!("{} {}", crate::SCOPE_ADMIN, crate::SCOPE_WRITE),
        ))
    }
}
