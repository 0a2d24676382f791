//! SQLite backend (WAL, one writer connection, a few reader connections). `synchronous=FULL`:
//! every commit is synced to disk before it is answered, so a 200 survives a power loss.
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::{Backend, Mode, Row, Tx, Val};
use crate::error::StoreError;

pub struct SqliteBackend {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open(path)
        .map_err(|e| StoreError::Db(format!("opening {}: {e}", path.display())))?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

impl SqliteBackend {
    pub fn open(path: &Path) -> Result<SqliteBackend, StoreError> {
        let writer = Mutex::new(open_conn(path)?);
        let readers = (0..3)
            .map(|_| open_conn(path).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(SqliteBackend {
            writer,
            readers,
            next: AtomicUsize::new(0),
        })
    }
}

struct SqliteTx<'a> {
    conn: &'a Connection,
    last: Option<u64>,
}

/// `$1` -> `?1` (SQLite's numbered parameter).
fn dialect(sql: &str) -> String {
    sql.replace('$', "?")
}

fn bind(v: &Val) -> rusqlite::types::Value {
    match v {
        Val::I(i) => rusqlite::types::Value::Integer(*i),
        Val::T(s) => rusqlite::types::Value::Text(s.clone()),
        Val::N => rusqlite::types::Value::Null,
    }
}

impl Tx for SqliteTx<'_> {
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&dialect(sql))?;
        let n = stmt.column_count();
        let params: Vec<_> = params.iter().map(bind).collect();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get_ref(i)? {
                    ValueRef::Null => Val::N,
                    ValueRef::Integer(i) => Val::I(i),
                    ValueRef::Real(f) => Val::I(f as i64),
                    ValueRef::Text(t) => Val::T(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Val::T(String::from_utf8_lossy(b).into_owned()),
                });
            }
            out.push(row);
        }
        Ok(out)
    }

    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached(&dialect(sql))?;
        let params: Vec<_> = params.iter().map(bind).collect();
        Ok(stmt.execute(rusqlite::params_from_iter(params))? as u64)
    }

    fn note_change(&mut self, version: u64) {
        self.last = Some(self.last.map_or(version, |l| l.max(version)));
    }
}

impl Backend for SqliteBackend {
    fn run(
        &self,
        mode: Mode,
        f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), StoreError>,
    ) -> Result<Option<u64>, StoreError> {
        let guard = match mode {
            Mode::Write => self.writer.lock(),
            Mode::Read => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.readers.len();
                self.readers[i].lock()
            }
        }
        .unwrap_or_else(|p| p.into_inner());
        let conn: &Connection = &guard;
        conn.execute_batch(if mode == Mode::Write {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN"
        })?;
        let mut tx = SqliteTx { conn, last: None };
        match f(&mut tx) {
            Ok(()) => {
                if let Err(e) = conn.execute_batch("COMMIT") {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(e.into());
                }
                Ok(tx.last)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }
}
