//! The change log: every write records its changes in the same transaction.
use serde::Serialize;

use super::{leases, misc, policies, Tx, Val};
use crate::error::StoreError;
use crate::model::{Change, FeedResponse, Kind, Op, Policy, Snapshot};

/// How many changes are kept for resuming subscribers.
pub const FEED_RETAIN: u64 = 10_000;
/// Most changes in one feed response.
const MAX_CHANGES: i64 = 5_000;

/// Appends a change, returns its version.
pub(crate) fn record<T: Serialize>(
    tx: &mut dyn Tx,
    op: Op,
    kind: Kind,
    value: &T,
) -> Result<u64, StoreError> {
    let json = serde_json::to_string(value)?;
    let rows = tx.query(
        "INSERT INTO changes (op, kind, value) VALUES ($1, $2, $3) RETURNING version",
        &[op.as_str().into(), kind.as_str().into(), Val::T(json)],
    )?;
    let v = rows
        .first()
        .map(|r| r[0].i())
        .transpose()?
        .ok_or_else(|| StoreError::Db("change log insert returned no version".into()))?
        as u64;
    if v & 127 == 0 && v > FEED_RETAIN {
        tx.exec(
            "DELETE FROM changes WHERE version <= $1",
            &[Val::I((v - FEED_RETAIN) as i64)],
        )?;
    }
    tx.note_change(v);
    Ok(v)
}

/// The newest committed version (0 when nothing was ever written).
pub fn current_version(tx: &mut dyn Tx) -> Result<u64, StoreError> {
    let rows = tx.query("SELECT COALESCE(MAX(version), 0) FROM changes", &[])?;
    Ok(rows.first().map(|r| r[0].i()).transpose()?.unwrap_or(0) as u64)
}

/// Everything a cell needs.
pub fn snapshot(tx: &mut dyn Tx) -> Result<Snapshot, StoreError> {
    Ok(Snapshot {
        leases: leases::list_leases(tx)?,
        tags: policies::list_tags(tx)?,
        policies: policies::list_policies(tx, &Default::default(), true)?,
        instances: misc::list_instances(tx, None)?,
        routes: misc::list_routes(tx)?,
        security_groups: misc::list_security_groups(tx)?,
    })
}

/// Changes after `since`, or a full snapshot when `since` is absent, older than the retained
/// log, or newer than this database's version (a different or reset database).
pub fn feed(tx: &mut dyn Tx, since: Option<u64>) -> Result<FeedResponse, StoreError> {
    let current = current_version(tx)?;
    let oldest = {
        let rows = tx.query("SELECT MIN(version) FROM changes", &[])?;
        rows.first()
            .map(|r| r[0].opt_i())
            .transpose()?
            .flatten()
            .map(|v| v as u64)
    };
    let resumable = match since {
        None => false,
        Some(s) if s > current => false,
        Some(s) if s == current => true,
        Some(s) => oldest.is_some_and(|o| s + 1 >= o),
    };
    if !resumable {
        return Ok(FeedResponse {
            version: current,
            snapshot: Some(snapshot(tx)?),
            changes: vec![],
        });
    }
    let since = since.unwrap_or(current);
    let rows = tx.query(
        "SELECT version, op, kind, value FROM changes WHERE version > $1 ORDER BY version LIMIT $2",
        &[Val::I(since as i64), Val::I(MAX_CHANGES)],
    )?;
    let mut changes = Vec::with_capacity(rows.len());
    for r in rows {
        let op =
            Op::parse(r[1].t()?).ok_or_else(|| StoreError::Db("bad op in change log".into()))?;
        let kind = Kind::parse(r[2].t()?)
            .ok_or_else(|| StoreError::Db("bad kind in change log".into()))?;
        changes.push(Change {
            version: r[0].i()? as u64,
            op,
            kind,
            value: serde_json::from_str(r[3].t()?)?,
        });
    }
    let version = changes.last().map_or(since, |c| c.version);
    Ok(FeedResponse {
        version,
        snapshot: None,
        changes,
    })
}

/// What a policy index at some version must do to reach the committed version.
#[derive(Debug)]
pub enum PolicyDelta {
    /// Already at `version`.
    Current,
    /// Apply these policy changes (in version order) to reach `version`.
    Changes {
        version: u64,
        changes: Vec<(Op, Policy)>,
    },
    /// Replace everything with `policies` (creation order) at `version`: there was no index
    /// yet, the log no longer holds every change since it, or the database is a different one.
    Full { version: u64, policies: Vec<Policy> },
}

/// The policy changes committed after `since` (`None`: nothing loaded yet), read in one
/// transaction with the version they lead to, from the same change log the feed serves.
pub fn policy_delta(tx: &mut dyn Tx, since: Option<u64>) -> Result<PolicyDelta, StoreError> {
    // One round trip for both ends of the log.
    let rows = tx.query(
        "SELECT COALESCE(MAX(version), 0), MIN(version) FROM changes",
        &[],
    )?;
    let (current, oldest) = match rows.first() {
        Some(r) => (r[0].i()? as u64, r[1].opt_i()?.map(|o| o as u64)),
        None => (0, None),
    };
    let resumable = match since {
        None => false,
        Some(s) if s == current => return Ok(PolicyDelta::Current),
        Some(s) if s > current => false,
        Some(s) => oldest.is_some_and(|o| s + 1 >= o),
    };
    if !resumable {
        return Ok(PolicyDelta::Full {
            version: current,
            policies: policies::list_policies(tx, &Default::default(), false)?,
        });
    }
    let rows = tx.query(
        "SELECT op, value FROM changes WHERE version > $1 AND kind = 'policy' ORDER BY version",
        &[Val::I(since.unwrap_or(current) as i64)],
    )?;
    let mut changes = Vec::with_capacity(rows.len());
    for r in rows {
        let op =
            Op::parse(r[0].t()?).ok_or_else(|| StoreError::Db("bad op in change log".into()))?;
        let mut p: Policy = serde_json::from_str(r[1].t()?)?;
        p.source.tag = None;
        p.destination.tag = None;
        changes.push((op, p));
    }
    Ok(PolicyDelta::Changes {
        version: current,
        changes,
    })
}
