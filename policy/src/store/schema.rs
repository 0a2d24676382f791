//! Versioned migrations, applied in one write transaction at start.
use super::{now_secs, Tx, Val};
use crate::error::StoreError;

/// (version, statements). `{serial}` becomes the backend's auto-increment primary key.
const MIGRATIONS: &[(i64, &[&str])] = &[(
    1,
    &[
        "CREATE TABLE groups (guid TEXT PRIMARY KEY, tag BIGINT NOT NULL UNIQUE, type TEXT NOT NULL)",
        "CREATE TABLE policies (id {serial}, source_id TEXT NOT NULL, dest_id TEXT NOT NULL, protocol TEXT NOT NULL, start_port BIGINT NOT NULL, end_port BIGINT NOT NULL, UNIQUE (source_id, dest_id, protocol, start_port, end_port))",
        "CREATE INDEX policies_dest ON policies (dest_id)",
        "CREATE TABLE leases (underlay_ip TEXT PRIMARY KEY, subnet TEXT NOT NULL UNIQUE, expires_at BIGINT, kind TEXT NOT NULL)",
        "CREATE TABLE instances (cell TEXT NOT NULL, handle TEXT NOT NULL, app_id TEXT NOT NULL, space_id TEXT NOT NULL, org_id TEXT NOT NULL, instance_index BIGINT NOT NULL, ip TEXT NOT NULL, PRIMARY KEY (cell, handle))",
        "CREATE INDEX instances_app ON instances (app_id)",
        "CREATE INDEX instances_space ON instances (space_id)",
        "CREATE TABLE routes (host TEXT NOT NULL, app_id TEXT NOT NULL, PRIMARY KEY (host, app_id))",
        "CREATE TABLE security_groups (name TEXT PRIMARY KEY, body TEXT NOT NULL)",
        "CREATE TABLE tokens (hash TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL, spaces TEXT NOT NULL, created_at BIGINT NOT NULL)",
        "CREATE TABLE changes (version {serial}, op TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL)",
    ],
),
(
    2,
    &[
        // Every free tag below the highest one handed out (see policies::allocate_tag).
        "CREATE TABLE free_tags (tag BIGINT PRIMARY KEY)",
        "WITH RECURSIVE seq(n) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT n + 1 FROM seq \
         WHERE n < (SELECT COALESCE(MAX(tag), 0) FROM groups)) \
         INSERT INTO free_tags (tag) SELECT n FROM seq \
         WHERE n <= (SELECT COALESCE(MAX(tag), 0) FROM groups) AND n NOT IN (SELECT tag FROM groups)",
        // The app directory: app -> space and org, kept after the app's instances stop;
        // `deleted_at` marks an app deleted (its policies are stale, see apps::cleanup).
        "CREATE TABLE apps (app_id TEXT PRIMARY KEY, space_id TEXT NOT NULL, org_id TEXT NOT NULL, deleted_at BIGINT)",
        "CREATE INDEX apps_space ON apps (space_id)",
        // When policies or tags last changed (Unix ns), for CF's policies_last_updated.
        "CREATE TABLE policies_info (id BIGINT PRIMARY KEY, last_updated BIGINT NOT NULL)",
        "INSERT INTO apps (app_id, space_id, org_id) SELECT app_id, MIN(space_id), MIN(org_id) FROM instances GROUP BY app_id",
    ],
)];

pub(crate) fn serial(postgres: bool) -> &'static str {
    if postgres {
        "BIGSERIAL PRIMARY KEY"
    } else {
        "INTEGER PRIMARY KEY AUTOINCREMENT"
    }
}

/// Applies the migrations not yet applied. Runs inside a (serialised) write transaction.
pub fn migrate(tx: &mut dyn Tx) -> Result<(), StoreError> {
    tx.exec(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        &[],
    )?;
    // Detect the dialect: PostgreSQL has pg_catalog.
    let postgres = tx.query("SELECT version()", &[]).is_ok();
    let applied = tx.query(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        &[],
    )?;
    let current = applied
        .first()
        .and_then(|r| r.first())
        .map(|v| v.i())
        .transpose()?
        .unwrap_or(0);
    for (version, stmts) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        for s in *stmts {
            tx.exec(&s.replace("{serial}", serial(postgres)), &[])?;
        }
        tx.exec(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[Val::I(*version), Val::I(now_secs())],
        )?;
    }
    super::policies::init_last_updated(tx)?;
    Ok(())
}
