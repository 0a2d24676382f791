//! Errors of the control plane library.
use thiserror::Error;

/// What went wrong in the store or in a domain rule the store enforces.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database failed (I/O, SQL, connection); the transaction was rolled back.
    #[error("database error: {0}")]
    Db(String),
    /// A source app would get more policies than the configured maximum.
    #[error("policy quota exceeded")]
    QuotaExceeded,
    /// One request would tag more new apps than allowed.
    #[error("too many new apps in one request: {count} apps have no tag yet, the maximum is {max} per request; split the request")]
    TooManyNewApps { count: usize, max: usize },
    /// All 65,535 tags are in use.
    #[error(
        "no free tag: all 65535 tags are in use; delete policies of apps that no longer need them"
    )]
    TagsExhausted,
    /// No overlay subnet is free and no expired lease can be reclaimed.
    #[error("no lease available")]
    NoLease,
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with stored state (subnet taken, name exists).
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but not acceptable.
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(d) => StoreError::Db(format!("{}: {}", d.code().code(), d.message())),
            None => StoreError::Db(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Db(format!("stored JSON is invalid: {e}"))
    }
}

/// Errors starting the control plane.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Tls(String),
}

impl ControlError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlError {
        let context = context.into();
        move |source| ControlError::Io { context, source }
    }
}

/// Errors of the HTTP clients.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server answered with an error status; `message` is its `error` text.
    #[error("{status}: {message}")]
    Status { status: u16, message: String },
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("credentials: {0}")]
    Credentials(String),
}
