//! PostgreSQL backend. The domain code is synchronous; it runs on a blocking thread and drives
//! tokio-postgres with `Handle::block_on`. Writers take a transaction-scoped advisory lock so
//! change-log ids commit in order; commits `NOTIFY tapestry_feed`, and every replica LISTENs
//! (plus a slow re-check) to wake its own long-polls.
//!
//! A PostgreSQL restart breaks every connection: a pool slot whose connection is gone connects
//! again when next used, and a transaction whose `BEGIN` finds its connection closed starts over
//! once on a new one. While the server is down, each call fails at once with the connection
//! error (connecting is bounded by [`CONNECT_TIMEOUT`]); nothing is retried after `BEGIN`, so a
//! write is never applied twice.
use std::collections::HashMap;
use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

use super::{Backend, Mode, Row, Tx, Val};
use crate::error::StoreError;

const POOL: usize = 4;
const LOCK_KEY: i64 = 0x7461_7065_7374; // "tapest"
const CHANNEL: &str = "tapestry_feed";
/// How long connecting may take, unless the URL sets `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sent data may go unacknowledged before a connection counts as broken (a server
/// that vanished without closing it), unless the URL sets `tcp_user_timeout`.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection and its prepared statements (one round trip per statement after the first).
struct Conn {
    client: Client,
    stmts: HashMap<String, Statement>,
}

pub struct PgBackend {
    clients: Vec<Mutex<Conn>>,
    next: AtomicUsize,
    handle: Handle,
    url: String,
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Val::N => Ok(IsNull::Yes),
            Val::I(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Val::I(i) if *ty == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            Val::I(i) if *ty == Type::TEXT || *ty == Type::VARCHAR => i.to_string().to_sql(ty, out),
            Val::I(i) => i.to_sql(ty, out),
            Val::T(s) => s.to_sql(ty, out),
        }
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

async fn connect(
    url: &str,
) -> Result<
    (
        Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    ),
    StoreError,
> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Invalid(format!("--database: not a PostgreSQL URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    config
        .connect(NoTls)
        .await
        .map_err(|e| StoreError::Db(format!("connecting to PostgreSQL: {e}")))
}

/// A new connection for a pool slot, its driver spawned on the current runtime.
async fn open_conn(url: &str) -> Result<Conn, StoreError> {
    let (client, conn) = connect(url).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(Conn {
        client,
        stmts: HashMap::new(),
    })
}

impl PgBackend {
    pub async fn connect(
        url: &str,
        version: Arc<watch::Sender<u64>>,
    ) -> Result<PgBackend, StoreError> {
        let mut clients = Vec::new();
        for _ in 0..POOL {
            clients.push(Mutex::new(open_conn(url).await?));
        }
        tokio::spawn(listen(url.to_string(), version));
        Ok(PgBackend {
            clients,
            next: AtomicUsize::new(0),
            handle: Handle::current(),
            url: url.to_string(),
        })
    }
}

/// Keeps `version` up to date with commits made by any replica.
async fn listen(url: String, version: Arc<watch::Sender<u64>>) {
    loop {
        if Arc::strong_count(&version) == 1 {
            return; // the store is gone
        }
        let (client, mut conn) = match connect(&url).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("feed listener: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let driver = tokio::spawn(async move {
            let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = stream.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => {
                        if tx.send(()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        if client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .is_err()
        {
            driver.abort();
            continue;
        }
        loop {
            let woke = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
            if let Ok(None) = woke {
                break; // connection lost
            }
            if Arc::strong_count(&version) == 1 {
                driver.abort();
                return; // store dropped
            }
            match client
                .query_one("SELECT COALESCE(MAX(version), 0)::BIGINT FROM changes", &[])
                .await
            {
                Ok(row) => {
                    let v: i64 = row.get(0);
                    let v = v as u64;
                    version.send_if_modified(|cur| {
                        if v > *cur {
                            *cur = v;
                            true
                        } else {
                            false
                        }
                    });
                }
                Err(_) => break,
            }
        }
        driver.abort();
    }
}

struct PgTx<'a> {
    client: &'a Client,
    stmts: &'a mut HashMap<String, Statement>,
    handle: &'a Handle,
    last: Option<u64>,
}

impl PgTx<'_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.handle.block_on(self.client.prepare(sql))?;
        if self.stmts.len() > 256 {
            self.stmts.clear();
        }
        self.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

impl Tx for PgTx<'_> {
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let stmt = self.statement(sql)?;
        let rows = self.handle.block_on(self.client.query(&stmt, &refs))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(r.len());
            for (i, c) in r.columns().iter().enumerate() {
                let t = c.type_();
                let v = if *t == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i)?.map_or(Val::N, Val::I)
                } else if *t == Type::INT4 {
                    r.try_get::<_, Option<i32>>(i)?
                        .map_or(Val::N, |x| Val::I(x.into()))
                } else if *t == Type::INT2 {
                    r.try_get::<_, Option<i16>>(i)?
                        .map_or(Val::N, |x| Val::I(x.into()))
                } else if *t == Type::BOOL {
                    r.try_get::<_, Option<bool>>(i)?
                        .map_or(Val::N, |x| Val::I(x.into()))
                } else {
                    r.try_get::<_, Option<String>>(i)?.map_or(Val::N, Val::T)
                };
                row.push(v);
            }
            out.push(row);
        }
        Ok(out)
    }

    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let stmt = self.statement(sql)?;
        Ok(self.handle.block_on(self.client.execute(&stmt, &refs))?)
    }

    fn note_change(&mut self, version: u64) {
        self.last = Some(self.last.map_or(version, |l| l.max(version)));
    }
}

impl Backend for PgBackend {
    fn run(
        &self,
        mode: Mode,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), StoreError>,
    ) -> Result<Option<u64>, StoreError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let guard = (0..self.clients.len())
            .find_map(|k| {
                self.clients[(start + k) % self.clients.len()]
                    .try_lock()
                    .ok()
            })
            .unwrap_or_else(|| {
                self.clients[start % self.clients.len()]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            });
        let mut guard = guard;
        if guard.client.is_closed() {
            // The server restarted or the connection broke: reconnect this pool slot.
            *guard = self.handle.block_on(open_conn(&self.url))?;
        }
        let h = &self.handle;
        let begin = |client: &Client| {
            h.block_on(async {
                match mode {
                    Mode::Write => {
                        client.batch_execute("BEGIN").await?;
                        client
                            .execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
                            .await
                    }
                    Mode::Read => client
                        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        .await
                        .map(|_| 0),
                }
            })
        };
        let mut begun = begin(&guard.client);
        if let Err(e) = &begun {
            let shutdown = e.code().is_some_and(|c| c.code().starts_with("57P"));
            if e.is_closed() || shutdown || guard.client.is_closed() {
                // The connection died since its last use (a restart the driver had not yet
                // noticed, or the server's "terminating connection" answer, SQLSTATE 57P..):
                // nothing ran, so start over on a new one.
                *guard = h.block_on(open_conn(&self.url))?;
                begun = begin(&guard.client);
            }
        }
        let conn: &mut Conn = &mut guard;
        let client: &Client = &conn.client;
        let stmts = &mut conn.stmts;
        begun.map_err(|e| {
            let _ = h.block_on(client.batch_execute("ROLLBACK"));
            StoreError::from(e)
        })?;
        let mut tx = PgTx {
            client,
            stmts,
            handle: h,
            last: None,
        };
        let result = f(&mut tx);
        let last = tx.last;
        match result {
            Ok(()) => {
                let commit = h.block_on(async {
                    if let Some(v) = last {
                        client
                            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &v.to_string()])
                            .await?;
                    }
                    client.batch_execute("COMMIT").await
                });
                if let Err(e) = commit {
                    let _ = h.block_on(client.batch_execute("ROLLBACK"));
                    return Err(e.into());
                }
                Ok(last)
            }
            Err(e) => {
                let _ = h.block_on(client.batch_execute("ROLLBACK"));
                Err(e)
            }
        }
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}
