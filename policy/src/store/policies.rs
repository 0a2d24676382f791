//! Policies and tags.
use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::feed::record;
use super::{Settings, Tx, Val};
use crate::error::StoreError;
use crate::model::{render_tag, Kind, Op, Policy, PolicyKey, Tag};

/// List filters, as CF: `id` matches source OR destination; `source_id` / `dest_id` are ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyFilter {
    pub id: Option<Vec<String>>,
    pub source_id: Option<Vec<String>>,
    pub dest_id: Option<Vec<String>>,
}

fn tag_of(tx: &mut dyn Tx, guid: &str) -> Result<Option<u16>, StoreError> {
    let rows = tx.query("SELECT tag FROM groups WHERE guid = $1", &[guid.into()])?;
    match rows.first() {
        Some(r) => Ok(Some(r[0].i()? as u16)),
        None => Ok(None),
    }
}

/// The lowest free tag, as CF numbers them, in O(log n): `free_tags` holds every free tag
/// below the highest one ever handed out, so the lowest free tag is its minimum, or one past
/// the highest tag in use when it is empty (both are index lookups).
fn allocate_tag(tx: &mut dyn Tx, max_tag: u16) -> Result<i64, StoreError> {
    let rows = tx.query("SELECT MIN(tag) FROM free_tags", &[])?;
    if let Some(t) = rows.first().map(|r| r[0].opt_i()).transpose()?.flatten() {
        tx.exec("DELETE FROM free_tags WHERE tag = $1", &[Val::I(t)])?;
        return Ok(t);
    }
    let rows = tx.query("SELECT MAX(tag) FROM groups", &[])?;
    let next = rows
        .first()
        .map(|r| r[0].opt_i())
        .transpose()?
        .flatten()
        .unwrap_or(0)
        + 1;
    if next < 1 || next > i64::from(max_tag) {
        return Err(StoreError::TagsExhausted);
    }
    Ok(next)
}

/// The app's tag, allocating the lowest free one when it has none.
fn ensure_tag(tx: &mut dyn Tx, guid: &str, max_tag: u16) -> Result<u16, StoreError> {
    if let Some(t) = tag_of(tx, guid)? {
        return Ok(t);
    }
    let next = allocate_tag(tx, max_tag)?;
    insert_group(tx, guid, "app", next)?;
    Ok(next as u16)
}

fn insert_group(tx: &mut dyn Tx, guid: &str, kind: &str, tag: i64) -> Result<Tag, StoreError> {
    tx.exec(
        "INSERT INTO groups (guid, tag, type) VALUES ($1, $2, $3)",
        &[guid.into(), Val::I(tag), kind.into()],
    )?;
    let tag = Tag {
        id: guid.into(),
        kind: kind.into(),
        tag: render_tag(tag as u16),
    };
    record(tx, Op::Put, Kind::Tag, &tag)?;
    touch_last_updated(tx)?;
    Ok(tag)
}

/// The tag of group `guid`, created (lowest free, of type `kind`) when it has none: CF's
/// internal `PUT /networking/v1/internal/tags`. An existing group keeps its type: asking for it
/// under another type is a `Conflict` (CF's 500 `database create failed`).
pub fn create_tag(
    tx: &mut dyn Tx,
    guid: &str,
    kind: &str,
    max_tag: u16,
) -> Result<Tag, StoreError> {
    let rows = tx.query(
        "SELECT tag, type FROM groups WHERE guid = $1",
        &[guid.into()],
    )?;
    if let Some(r) = rows.first() {
        let existing = r[1].t()?;
        // CF looks a group up by id and type, and its insert then fails on the unique id: a
        // group keeps the type it was created with.
        if existing != kind {
            return Err(StoreError::Conflict(format!(
                "group {guid} exists with type {existing}, not {kind}"
            )));
        }
        return Ok(Tag {
            id: guid.into(),
            kind: existing.into(),
            tag: render_tag(r[0].i()? as u16),
        });
    }
    let next = allocate_tag(tx, max_tag)?;
    insert_group(tx, guid, kind, next)
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Makes sure `policies_info` has its row (run at every start; a no-op once there).
pub(crate) fn init_last_updated(tx: &mut dyn Tx) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO policies_info (id, last_updated) VALUES (1, $1) ON CONFLICT DO NOTHING",
        &[Val::I(now_nanos())],
    )?;
    Ok(())
}

/// Notes a change of policies or tags: now in Unix nanoseconds, as CF, and always later than
/// the value before (so a poller comparing values sees every change).
fn touch_last_updated(tx: &mut dyn Tx) -> Result<(), StoreError> {
    let prev = last_updated(tx)?;
    tx.exec(
        "UPDATE policies_info SET last_updated = $1 WHERE id = 1",
        &[Val::I(now_nanos().max(prev + 1))],
    )?;
    Ok(())
}

/// When policies or tags last changed (Unix nanoseconds): CF's `policies_last_updated`.
pub fn last_updated(tx: &mut dyn Tx) -> Result<i64, StoreError> {
    let rows = tx.query("SELECT last_updated FROM policies_info WHERE id = 1", &[])?;
    Ok(rows.first().map(|r| r[0].i()).transpose()?.unwrap_or(0))
}

/// Frees the app's tag when no policy mentions it any more.
fn release_tag_if_unused(tx: &mut dyn Tx, guid: &str) -> Result<(), StoreError> {
    let used = tx.query(
        "SELECT 1 FROM policies WHERE source_id = $1 OR dest_id = $1 LIMIT 1",
        &[guid.into()],
    )?;
    if !used.is_empty() {
        return Ok(());
    }
    if let Some(t) = tag_of(tx, guid)? {
        touch_last_updated(tx)?;
        tx.exec("DELETE FROM groups WHERE guid = $1", &[guid.into()])?;
        tx.exec(
            "INSERT INTO free_tags (tag) VALUES ($1)",
            &[Val::I(t.into())],
        )?;
        let tag = Tag {
            id: guid.into(),
            kind: "app".into(),
            tag: render_tag(t),
        };
        record(tx, Op::Delete, Kind::Tag, &tag)?;
    }
    Ok(())
}

fn exists(tx: &mut dyn Tx, k: &PolicyKey) -> Result<bool, StoreError> {
    Ok(!tx
        .query(
            "SELECT 1 FROM policies WHERE source_id = $1 AND dest_id = $2 AND protocol = $3 AND start_port = $4 AND end_port = $5",
            &key_params(k),
        )?
        .is_empty())
}

fn key_params(k: &PolicyKey) -> [Val; 5] {
    [
        k.0.as_str().into(),
        k.1.as_str().into(),
        k.2.as_str().into(),
        Val::I(k.3.into()),
        Val::I(k.4.into()),
    ]
}

/// Who asks for a write: admins are not held to the per-source quota (as CF's quota guard).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    Enforce,
    Exempt,
}

/// Creates the policies not yet present (idempotent), allocating tags in request order (each
/// policy's source, then its destination, as CF); enforces the quota and the bound on new
/// apps per request ([`Settings::max_new_apps_per_request`]).
pub fn create_policies(
    tx: &mut dyn Tx,
    s: &Settings,
    ps: &[Policy],
    quota: Quota,
) -> Result<(), StoreError> {
    let mut seen = HashSet::new();
    let mut new = Vec::new();
    for k in ps.iter().map(Policy::key) {
        if seen.contains(&k) {
            continue;
        }
        if !exists(tx, &k)? {
            new.push(k.clone());
        }
        seen.insert(k);
    }
    if quota == Quota::Enforce {
        let mut per_source: BTreeMap<&str, usize> = BTreeMap::new();
        for k in &new {
            *per_source.entry(k.0.as_str()).or_default() += 1;
        }
        for (src, n) in per_source {
            let rows = tx.query(
                "SELECT COUNT(*) FROM policies WHERE source_id = $1",
                &[src.into()],
            )?;
            let have = rows.first().map(|r| r[0].i()).transpose()?.unwrap_or(0) as usize;
            if have + n > s.max_policies_per_source {
                return Err(StoreError::QuotaExceeded);
            }
        }
    }
    let mut untagged = HashSet::new();
    for k in &new {
        for app in [&k.0, &k.1] {
            if !untagged.contains(app.as_str()) && tag_of(tx, app)?.is_none() {
                untagged.insert(app.as_str());
            }
        }
    }
    if untagged.len() > s.max_new_apps_per_request {
        return Err(StoreError::TooManyNewApps {
            count: untagged.len(),
            max: s.max_new_apps_per_request,
        });
    }
    for k in new {
        let st = ensure_tag(tx, &k.0, s.max_tag)?;
        let dt = ensure_tag(tx, &k.1, s.max_tag)?;
        tx.exec(
            "INSERT INTO policies (source_id, dest_id, protocol, start_port, end_port) VALUES ($1, $2, $3, $4, $5)",
            &key_params(&k),
        )?;
        touch_last_updated(tx)?;
        let mut p = Policy::new(&k.0, &k.1, &k.2, k.3, k.4);
        p.source.tag = Some(render_tag(st));
        p.destination.tag = Some(render_tag(dt));
        record(tx, Op::Put, Kind::Policy, &p)?;
    }
    Ok(())
}

/// Deletes the given policies (missing ones are skipped) and frees tags no longer used.
pub fn delete_policies(tx: &mut dyn Tx, ps: &[Policy]) -> Result<(), StoreError> {
    let keys: BTreeSet<PolicyKey> = ps.iter().map(Policy::key).collect();
    let mut apps = BTreeSet::new();
    for k in keys {
        let n = tx.exec(
            "DELETE FROM policies WHERE source_id = $1 AND dest_id = $2 AND protocol = $3 AND start_port = $4 AND end_port = $5",
            &key_params(&k),
        )?;
        if n == 0 {
            continue;
        }
        touch_last_updated(tx)?;
        let mut p = Policy::new(&k.0, &k.1, &k.2, k.3, k.4);
        p.source.tag = tag_of(tx, &k.0)?.map(render_tag);
        p.destination.tag = tag_of(tx, &k.1)?.map(render_tag);
        record(tx, Op::Delete, Kind::Policy, &p)?;
        apps.insert(k.0);
        apps.insert(k.1);
    }
    for a in apps {
        release_tag_if_unused(tx, &a)?;
    }
    Ok(())
}

fn in_list(col: &str, n: usize, first: usize) -> String {
    let ph: Vec<String> = (0..n).map(|i| format!("${}", first + i)).collect();
    format!("{col} IN ({})", ph.join(", "))
}

/// Lists policies with their tags, in creation order.
/// `with_tags: false` leaves the tags out (the external API does not show them).
pub fn list_policies(
    tx: &mut dyn Tx,
    f: &PolicyFilter,
    with_tags: bool,
) -> Result<Vec<Policy>, StoreError> {
    let mut sql = String::from(if with_tags {
        "SELECT p.source_id, p.dest_id, p.protocol, p.start_port, p.end_port, gs.tag, gd.tag \
         FROM policies p LEFT JOIN groups gs ON gs.guid = p.source_id \
         LEFT JOIN groups gd ON gd.guid = p.dest_id"
    } else {
        "SELECT p.source_id, p.dest_id, p.protocol, p.start_port, p.end_port FROM policies p"
    });
    let mut conds = Vec::new();
    let mut params: Vec<Val> = Vec::new();
    if let Some(ids) = &f.id {
        let a = in_list("p.source_id", ids.len(), params.len() + 1);
        params.extend(ids.iter().map(|s| Val::from(s.as_str())));
        let b = in_list("p.dest_id", ids.len(), params.len() + 1);
        params.extend(ids.iter().map(|s| Val::from(s.as_str())));
        conds.push(format!("({a} OR {b})"));
    }
    if let Some(ids) = &f.source_id {
        conds.push(in_list("p.source_id", ids.len(), params.len() + 1));
        params.extend(ids.iter().map(|s| Val::from(s.as_str())));
    }
    if let Some(ids) = &f.dest_id {
        conds.push(in_list("p.dest_id", ids.len(), params.len() + 1));
        params.extend(ids.iter().map(|s| Val::from(s.as_str())));
    }
    for ids in [&f.id, &f.source_id, &f.dest_id].into_iter().flatten() {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
    }
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    sql.push_str(" ORDER BY p.id");
    let rows = tx.query(&sql, &params)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let port = |v: &Val| -> Result<u16, StoreError> {
            u16::try_from(v.i()?).map_err(|_| StoreError::Db("stored port out of range".into()))
        };
        let mut p = Policy::new(r[0].t()?, r[1].t()?, r[2].t()?, port(&r[3])?, port(&r[4])?);
        if with_tags {
            p.source.tag = r[5].opt_i()?.map(|t| render_tag(t as u16));
            p.destination.tag = r[6].opt_i()?.map(|t| render_tag(t as u16));
        }
        out.push(p);
    }
    Ok(out)
}

/// All allocated tags, lowest first.
pub fn list_tags(tx: &mut dyn Tx) -> Result<Vec<Tag>, StoreError> {
    let rows = tx.query("SELECT guid, type, tag FROM groups ORDER BY tag", &[])?;
    rows.iter()
        .map(|r| {
            Ok(Tag {
                id: r[0].t()?.into(),
                kind: r[1].t()?.into(),
                tag: render_tag(r[2].i()? as u16),
            })
        })
        .collect()
}
