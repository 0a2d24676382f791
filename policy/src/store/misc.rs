//! Instances, internal routes, security groups and tokens.
use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use super::feed::record;
use super::{now_secs, Tx, Val};
use crate::error::StoreError;
use crate::model::{Instance, Kind, Op, Principal, Route, SecurityGroup};

const INSTANCE_COLS: &str = "cell, handle, app_id, space_id, org_id, instance_index, ip";

fn row_to_instance(r: &[Val]) -> Result<Instance, StoreError> {
    let ip = |v: &Val| -> Result<Ipv4Addr, StoreError> {
        v.t()?
            .parse()
            .map_err(|_| StoreError::Db("stored IP is invalid".into()))
    };
    Ok(Instance {
        cell: ip(&r[0])?,
        handle: r[1].t()?.into(),
        app_id: r[2].t()?.into(),
        space_id: r[3].t()?.into(),
        org_id: r[4].t()?.into(),
        instance_index: r[5].i()? as u32,
        ip: ip(&r[6])?,
    })
}

/// All instances, or those of one cell.
pub fn list_instances(
    tx: &mut dyn Tx,
    cell: Option<Ipv4Addr>,
) -> Result<Vec<Instance>, StoreError> {
    let rows = match cell {
        Some(c) => tx.query(
            &format!("SELECT {INSTANCE_COLS} FROM instances WHERE cell = $1 ORDER BY cell, handle"),
            &[c.to_string().into()],
        )?,
        None => tx.query(
            &format!("SELECT {INSTANCE_COLS} FROM instances ORDER BY cell, handle"),
            &[],
        )?,
    };
    rows.iter().map(|r| row_to_instance(r)).collect()
}

fn get_instance(
    tx: &mut dyn Tx,
    cell: Ipv4Addr,
    handle: &str,
) -> Result<Option<Instance>, StoreError> {
    let rows = tx.query(
        &format!("SELECT {INSTANCE_COLS} FROM instances WHERE cell = $1 AND handle = $2"),
        &[cell.to_string().into(), handle.into()],
    )?;
    rows.first().map(|r| row_to_instance(r)).transpose()
}

/// Creates or replaces an instance (no change recorded when identical).
pub fn put_instance(tx: &mut dyn Tx, i: &Instance) -> Result<(), StoreError> {
    if get_instance(tx, i.cell, &i.handle)?.as_ref() == Some(i) {
        return Ok(());
    }
    tx.exec(
        "DELETE FROM instances WHERE cell = $1 AND handle = $2",
        &[i.cell.to_string().into(), i.handle.as_str().into()],
    )?;
    tx.exec(
        &format!("INSERT INTO instances ({INSTANCE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
        &[
            i.cell.to_string().into(),
            i.handle.as_str().into(),
            i.app_id.as_str().into(),
            i.space_id.as_str().into(),
            i.org_id.as_str().into(),
            Val::I(i.instance_index.into()),
            i.ip.to_string().into(),
        ],
    )?;
    record(tx, Op::Put, Kind::Instance, i)?;
    super::apps::put_app(tx, &i.app_id, &i.space_id, &i.org_id)?;
    Ok(())
}

/// Removes an instance (no error when it is not there).
pub fn delete_instance(tx: &mut dyn Tx, cell: Ipv4Addr, handle: &str) -> Result<(), StoreError> {
    if let Some(old) = get_instance(tx, cell, handle)? {
        tx.exec(
            "DELETE FROM instances WHERE cell = $1 AND handle = $2",
            &[cell.to_string().into(), handle.into()],
        )?;
        record(tx, Op::Delete, Kind::Instance, &old)?;
    }
    Ok(())
}

/// Replaces the cell's whole set of instances.
pub fn sync_cell(tx: &mut dyn Tx, cell: Ipv4Addr, want: &[Instance]) -> Result<(), StoreError> {
    let wanted: HashSet<&str> = want.iter().map(|i| i.handle.as_str()).collect();
    for old in list_instances(tx, Some(cell))? {
        if !wanted.contains(old.handle.as_str()) {
            delete_instance(tx, cell, &old.handle)?;
        }
    }
    for i in want {
        put_instance(tx, i)?;
    }
    Ok(())
}

/// Spaces each app's instances run in.
pub fn app_spaces(tx: &mut dyn Tx) -> Result<BTreeMap<String, HashSet<String>>, StoreError> {
    let mut out: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for r in tx.query("SELECT DISTINCT app_id, space_id FROM instances", &[])? {
        out.entry(r[0].t()?.into())
            .or_default()
            .insert(r[1].t()?.into());
    }
    Ok(out)
}

/// Apps of the directory (running or not, but not deleted) in one of `spaces`.
pub fn apps_in_spaces(tx: &mut dyn Tx, spaces: &[String]) -> Result<HashSet<String>, StoreError> {
    let mut out = HashSet::new();
    for s in spaces {
        for r in tx.query(
            "SELECT app_id FROM apps WHERE space_id = $1 AND deleted_at IS NULL",
            &[s.as_str().into()],
        )? {
            out.insert(r[0].t()?.to_string());
        }
    }
    Ok(out)
}

pub fn list_routes(tx: &mut dyn Tx) -> Result<Vec<Route>, StoreError> {
    tx.query("SELECT host, app_id FROM routes ORDER BY host, app_id", &[])?
        .iter()
        .map(|r| {
            Ok(Route {
                host: r[0].t()?.into(),
                app_id: r[1].t()?.into(),
            })
        })
        .collect()
}

/// Maps a host to an app (idempotent).
pub fn add_route(tx: &mut dyn Tx, r: &Route) -> Result<(), StoreError> {
    let n = tx.exec(
        "INSERT INTO routes (host, app_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[r.host.as_str().into(), r.app_id.as_str().into()],
    )?;
    if n > 0 {
        record(tx, Op::Put, Kind::Route, r)?;
    }
    Ok(())
}

/// Unmaps (no error when not mapped).
pub fn delete_route(tx: &mut dyn Tx, r: &Route) -> Result<(), StoreError> {
    let n = tx.exec(
        "DELETE FROM routes WHERE host = $1 AND app_id = $2",
        &[r.host.as_str().into(), r.app_id.as_str().into()],
    )?;
    if n > 0 {
        record(tx, Op::Delete, Kind::Route, r)?;
    }
    Ok(())
}

pub fn list_security_groups(tx: &mut dyn Tx) -> Result<Vec<SecurityGroup>, StoreError> {
    tx.query("SELECT body FROM security_groups ORDER BY name", &[])?
        .iter()
        .map(|r| Ok(serde_json::from_str(r[0].t()?)?))
        .collect()
}

pub fn get_security_group(
    tx: &mut dyn Tx,
    name: &str,
) -> Result<Option<SecurityGroup>, StoreError> {
    tx.query(
        "SELECT body FROM security_groups WHERE name = $1",
        &[name.into()],
    )?
    .first()
    .map(|r| Ok(serde_json::from_str(r[0].t()?)?))
    .transpose()
}

/// Creates (`create`: fails when the name exists) or replaces `old_name` with `g`.
pub fn put_security_group(
    tx: &mut dyn Tx,
    old_name: Option<&str>,
    g: &SecurityGroup,
) -> Result<(), StoreError> {
    match old_name {
        None => {
            if get_security_group(tx, &g.name)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "security group '{}' already exists",
                    g.name
                )));
            }
        }
        Some(old) => {
            let Some(prev) = get_security_group(tx, old)? else {
                return Err(StoreError::NotFound(format!(
                    "security group '{old}' not found"
                )));
            };
            if old != g.name {
                if get_security_group(tx, &g.name)?.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "security group '{}' already exists",
                        g.name
                    )));
                }
                tx.exec("DELETE FROM security_groups WHERE name = $1", &[old.into()])?;
                record(tx, Op::Delete, Kind::SecurityGroup, &prev)?;
            } else if &prev == g {
                return Ok(());
            }
        }
    }
    tx.exec(
        "DELETE FROM security_groups WHERE name = $1",
        &[g.name.as_str().into()],
    )?;
    tx.exec(
        "INSERT INTO security_groups (name, body) VALUES ($1, $2)",
        &[g.name.as_str().into(), Val::T(serde_json::to_string(g)?)],
    )?;
    record(tx, Op::Put, Kind::SecurityGroup, g)?;
    Ok(())
}

pub fn delete_security_group(tx: &mut dyn Tx, name: &str) -> Result<(), StoreError> {
    let Some(prev) = get_security_group(tx, name)? else {
        return Err(StoreError::NotFound(format!(
            "security group '{name}' not found"
        )));
    };
    tx.exec(
        "DELETE FROM security_groups WHERE name = $1",
        &[name.into()],
    )?;
    record(tx, Op::Delete, Kind::SecurityGroup, &prev)?;
    Ok(())
}

/// Makes the stored groups exactly `groups` (CF's `SecurityGroupsStore.Replace`, for groups
/// synced from Cloud Controller): a group that differs is replaced, one that is gone deleted,
/// an equal one left alone, so that an unchanged listing writes nothing to the feed. Returns
/// how many groups were written and how many deleted.
pub fn replace_security_groups(
    tx: &mut dyn Tx,
    groups: &[SecurityGroup],
) -> Result<(usize, usize), StoreError> {
    let stored: std::collections::HashMap<String, SecurityGroup> = list_security_groups(tx)?
        .into_iter()
        .map(|g| (g.name.clone(), g))
        .collect();
    let mut written = 0;
    for g in groups {
        match stored.get(&g.name) {
            Some(prev) if prev == g => {}
            Some(_) => {
                put_security_group(tx, Some(&g.name), g)?;
                written += 1;
            }
            None => {
                put_security_group(tx, None, g)?;
                written += 1;
            }
        }
    }
    let keep: std::collections::HashSet<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let mut deleted = 0;
    for name in stored.keys().filter(|n| !keep.contains(n.as_str())) {
        delete_security_group(tx, name)?;
        deleted += 1;
    }
    Ok((written, deleted))
}

/// Stores a token by its hash (idempotent).
pub fn insert_token(tx: &mut dyn Tx, hash: &str, p: &Principal) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO tokens (hash, name, scope, spaces, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        &[
            hash.into(),
            p.name.as_str().into(),
            p.scope.as_str().into(),
            Val::T(serde_json::to_string(&p.spaces)?),
            Val::I(now_secs()),
        ],
    )?;
    Ok(())
}

pub fn lookup_token(tx: &mut dyn Tx, hash: &str) -> Result<Option<Principal>, StoreError> {
    tx.query(
        "SELECT name, scope, spaces FROM tokens WHERE hash = $1",
        &[hash.into()],
    )?
    .first()
    .map(|r| {
        Ok(Principal {
            name: r[0].t()?.into(),
            scope: r[1].t()?.into(),
            spaces: serde_json::from_str(r[2].t()?)?,
            subject: None,
            bearer: None,
        })
    })
    .transpose()
}
