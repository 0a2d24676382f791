//! Storage: one [`Backend`] trait (SQLite or PostgreSQL) running transactions, and the domain
//! operations written once over the small [`Tx`] interface so both backends behave the same.
mod apps;
mod feed;
mod gate;
mod leases;
mod misc;
mod policies;
mod postgres;
mod schema;
pub mod silk;
mod sqlite;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ipnet::Ipv4Net;
use tokio::sync::watch;

use crate::error::StoreError;

pub use gate::Priority;
pub use leases::LeaseSettings;
pub use policies::PolicyFilter;

/// A SQL value: every column is BIGINT, TEXT or NULL.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    I(i64),
    T(String),
    N,
}

impl Val {
    pub fn i(&self) -> Result<i64, StoreError> {
        match self {
            Val::I(i) => Ok(*i),
            v => Err(StoreError::Db(format!(
                "expected an integer column, got {v:?}"
            ))),
        }
    }
    pub fn t(&self) -> Result<&str, StoreError> {
        match self {
            Val::T(s) => Ok(s),
            v => Err(StoreError::Db(format!("expected a text column, got {v:?}"))),
        }
    }
    pub fn opt_i(&self) -> Result<Option<i64>, StoreError> {
        match self {
            Val::N => Ok(None),
            v => v.i().map(Some),
        }
    }
}

impl From<&str> for Val {
    fn from(s: &str) -> Val {
        Val::T(s.to_string())
    }
}
impl From<String> for Val {
    fn from(s: String) -> Val {
        Val::T(s)
    }
}
impl From<i64> for Val {
    fn from(i: i64) -> Val {
        Val::I(i)
    }
}
impl From<Option<i64>> for Val {
    fn from(i: Option<i64>) -> Val {
        i.map_or(Val::N, Val::I)
    }
}

pub type Row = Vec<Val>;

/// One open transaction. SQL uses `$1, $2, ...` placeholders (numbered in order of first use).
pub trait Tx {
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError>;
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError>;
    /// Records that this transaction wrote change-log entry `version`.
    fn note_change(&mut self, version: u64);
}

/// Read-only or read-write transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Read,
    Write,
}

/// A database able to run a closure in one transaction. Write transactions are serialised
/// (SQLite `BEGIN IMMEDIATE`, PostgreSQL advisory transaction lock), so change-log versions
/// commit in order. Returns the highest change-log version written, if any.
pub trait Backend: Send + Sync + 'static {
    fn run(
        &self,
        mode: Mode,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), StoreError>,
    ) -> Result<Option<u64>, StoreError>;
    fn name(&self) -> &'static str;
}

/// Domain settings the store enforces.
#[derive(Clone, Debug)]
pub struct Settings {
    pub leases: LeaseSettings,
    pub max_policies_per_source: usize,
    /// Highest tag handed out (65535; lower only in tests).
    pub max_tag: u16,
    /// The most apps one policy request may tag for the first time
    /// ([`DEFAULT_MAX_NEW_APPS_PER_REQUEST`]); a request past it is a 400.
    pub max_new_apps_per_request: usize,
}

/// The default bound on new apps per policy request: keeps one request's write short.
pub const DEFAULT_MAX_NEW_APPS_PER_REQUEST: usize = 1000;

impl Settings {
    pub fn new(overlay: Ipv4Net, prefix: u8) -> Settings {
        Settings {
            leases: LeaseSettings {
                network: overlay,
                prefix,
                expiry_secs: 168 * 3600,
            },
            max_policies_per_source: 150,
            max_tag: 65535,
            max_new_apps_per_request: DEFAULT_MAX_NEW_APPS_PER_REQUEST,
        }
    }
}

/// The store: a backend, the domain settings, and the feed version waiters watch.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    version: Arc<watch::Sender<u64>>,
    pub settings: Arc<Settings>,
    /// The queue for the writer, shared by every clone.
    gate: gate::WriteGate,
    /// The queue this handle's writes wait in ([`Store::for_cells`]).
    priority: Priority,
    /// The last write's database error, cleared by the next successful write (`/health`).
    write_error: Arc<std::sync::Mutex<Option<String>>>,
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (and migrates) the database: `sqlite` / a file path for SQLite, `postgres://...` for
    /// PostgreSQL. `data_dir` holds the default SQLite file `tapestry.db`.
    pub async fn open(
        database: Option<&str>,
        data_dir: &std::path::Path,
        settings: Settings,
    ) -> Result<Store, StoreError> {
        let (tx, _) = watch::channel(0u64);
        let version = Arc::new(tx);
        let backend: Arc<dyn Backend> = match database {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Arc::new(postgres::PgBackend::connect(url, version.clone()).await?)
            }
            Some("sqlite") | None => {
                let path = data_dir.join("tapestry.db");
                Arc::new(
                    tokio::task::spawn_blocking(move || sqlite::SqliteBackend::open(&path))
                        .await
                        .map_err(|e| StoreError::Db(e.to_string()))??,
                )
            }
            Some(other) => {
                return Err(StoreError::Invalid(format!(
                "--database '{other}' is neither 'sqlite' nor a postgres://USER@HOST:PORT/DB URL"
            )))
            }
        };
        let store = Store {
            backend,
            version,
            settings: Arc::new(settings),
            gate: Default::default(),
            priority: Priority::Normal,
            write_error: Default::default(),
        };
        store.call(Mode::Write, schema::migrate).await?;
        let v = store.call(Mode::Read, feed::current_version).await?;
        store.bump(v);
        Ok(store)
    }

    /// A store over `backend` as it is (no migrations); for tests of the layers above.
    #[cfg(test)]
    pub(crate) fn from_backend(backend: Arc<dyn Backend>, settings: Settings) -> Store {
        let (tx, _) = watch::channel(0u64);
        Store {
            backend,
            version: Arc::new(tx),
            settings: Arc::new(settings),
            gate: Default::default(),
            priority: Priority::Normal,
            write_error: Default::default(),
        }
    }

    /// Opens the SQLite database at `path` (migrated); for tests of the layers above.
    #[cfg(test)]
    pub(crate) fn sqlite_backend(path: &std::path::Path) -> Result<Arc<dyn Backend>, StoreError> {
        let b: Arc<dyn Backend> = Arc::new(sqlite::SqliteBackend::open(path)?);
        b.run(Mode::Write, &mut |tx| schema::migrate(tx))?;
        Ok(b)
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Raises the known feed version (wakes long-polls).
    pub(crate) fn bump(&self, v: u64) {
        self.version.send_if_modified(|cur| {
            if v > *cur {
                *cur = v;
                true
            } else {
                false
            }
        });
    }

    /// A receiver of the newest committed version known to this process.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The same store, whose writes go before other writes (the internal API's: cells must
    /// not wait behind a large external request).
    pub fn for_cells(&self) -> Store {
        Store {
            priority: Priority::Cell,
            ..self.clone()
        }
    }

    /// The database error of the last write, if it failed and none has succeeded since.
    pub fn write_error(&self) -> Option<String> {
        self.write_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `f` in one transaction on a blocking thread. Writes take turns through the writer
    /// queue (cells' first). If the returned future is dropped (the client went away), a write
    /// still waiting never runs, and a transaction under way stops at its next statement and
    /// rolls back.
    pub async fn call<T, F>(&self, mode: Mode, mut f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn Tx) -> Result<T, StoreError> + Send + 'static,
    {
        let permit = match mode {
            Mode::Write => Some(self.gate.acquire(self.priority).await),
            Mode::Read => None,
        };
        let abandoned = Arc::new(AtomicBool::new(false));
        let _on_drop = Abandon(abandoned.clone());
        let backend = self.backend.clone();
        let flag = abandoned.clone();
        let r = tokio::task::spawn_blocking(move || {
            // Held until the transaction has ended, even if nobody waits for it any more.
            let _permit = permit;
            let mut out = None;
            let start = std::time::Instant::now();
            let v = backend.run(mode, &mut |tx| {
                let mut tx = Abandonable {
                    inner: tx,
                    abandoned: &flag,
                };
                out = Some(f(&mut tx)?);
                Ok(())
            });
            crate::metrics::db_transaction(backend.name(), mode == Mode::Write, start.elapsed());
            Ok::<_, StoreError>((out, v?))
        })
        .await
        .map_err(|e| StoreError::Db(format!("store task failed: {e}")))
        .and_then(|r| r);
        if mode == Mode::Write {
            let mut last = self.write_error.lock().unwrap_or_else(|p| p.into_inner());
            match &r {
                Ok(_) => *last = None,
                Err(StoreError::Db(m)) => *last = Some(m.clone()),
                Err(_) => {}
            }
        }
        let (out, v) = r?;
        if let Some(v) = v {
            self.bump(v);
        }
        out.ok_or_else(|| StoreError::Db("transaction produced no result".into()))
    }

    /// A write that changes nothing but must reach the disk: `/health` runs it while the last
    /// write failed, to tell when the store is writable again.
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        self.call(Mode::Write, |tx| {
            tx.exec(
                "UPDATE schema_migrations SET applied_at = applied_at WHERE version = (SELECT MAX(version) FROM schema_migrations)",
                &[],
            )
            .map(|_| ())
        })
        .await
    }
}

/// Marks a call abandoned when its future is dropped before it finished.
struct Abandon(Arc<AtomicBool>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A transaction that stops at its next statement once its caller is gone.
struct Abandonable<'a> {
    inner: &'a mut dyn Tx,
    abandoned: &'a AtomicBool,
}

impl Abandonable<'_> {
    fn check(&self) -> Result<(), StoreError> {
        if self.abandoned.load(Ordering::Relaxed) {
            return Err(StoreError::Db(
                "the request was abandoned by its client; rolled back".into(),
            ));
        }
        Ok(())
    }
}

impl Tx for Abandonable<'_> {
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        self.check()?;
        self.inner.query(sql, params)
    }
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        self.check()?;
        self.inner.exec(sql, params)
    }
    fn note_change(&mut self, version: u64) {
        self.inner.note_change(version)
    }
}

pub use feed::{PolicyDelta, FEED_RETAIN};

/// The operations, re-exported for the API layer.
pub mod ops {
    pub use super::apps::{delete_app, get_app, policy_apps, put_app, stale_policies, App};
    pub use super::feed::{current_version, feed, policy_delta, snapshot};
    pub use super::leases::{acquire, list_leases, register_static, release, renew};
    pub use super::misc::{
        add_route, app_spaces, apps_in_spaces, delete_instance, delete_route,
        delete_security_group, get_security_group, insert_token, list_instances, list_routes,
        list_security_groups, lookup_token, put_instance, put_security_group,
        replace_security_groups, sync_cell,
    };
    pub use super::policies::{
        create_policies, create_tag, delete_policies, last_updated, list_policies, list_tags, Quota,
    };
}
