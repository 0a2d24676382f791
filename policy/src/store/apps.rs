//! The app directory (app -> space and org) and the removal of deleted apps' policies.
//!
//! Entries are learnt from instances and kept after the instances stop, so that space
//! developers keep access to stopped apps. An app is gone once deleted explicitly
//! (`DELETE .../external/apps/APP`); its policies are then stale, and cleanup removes them.
use serde::Serialize;

use super::{now_secs, Tx, Val};
use crate::error::StoreError;
use crate::model::Policy;

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct App {
    pub app_id: String,
    pub space_id: String,
    pub org_id: String,
    /// Unix seconds of the deletion, for a deleted app.
    pub deleted_at: Option<i64>,
}

pub fn get_app(tx: &mut dyn Tx, app_id: &str) -> Result<Option<App>, StoreError> {
    tx.query(
        "SELECT app_id, space_id, org_id, deleted_at FROM apps WHERE app_id = $1",
        &[app_id.into()],
    )?
    .first()
    .map(|r| {
        Ok(App {
            app_id: r[0].t()?.into(),
            space_id: r[1].t()?.into(),
            org_id: r[2].t()?.into(),
            deleted_at: r[3].opt_i()?,
        })
    })
    .transpose()
}

/// Records (or revives) an app in its space and org.
pub fn put_app(tx: &mut dyn Tx, app_id: &str, space: &str, org: &str) -> Result<(), StoreError> {
    let want = App {
        app_id: app_id.into(),
        space_id: space.into(),
        org_id: org.into(),
        deleted_at: None,
    };
    if get_app(tx, app_id)?.as_ref() == Some(&want) {
        return Ok(());
    }
    tx.exec("DELETE FROM apps WHERE app_id = $1", &[app_id.into()])?;
    tx.exec(
        "INSERT INTO apps (app_id, space_id, org_id, deleted_at) VALUES ($1, $2, $3, NULL)",
        &[app_id.into(), space.into(), org.into()],
    )?;
    Ok(())
}

/// Marks the app deleted and removes its policies (freeing tags no longer used) and its
/// internal routes. Returns the removed policies; `NotFound` when the directory and the
/// policies do not know the app.
pub fn delete_app(tx: &mut dyn Tx, app_id: &str) -> Result<Vec<Policy>, StoreError> {
    let known = get_app(tx, app_id)?;
    let has_policies = !tx
        .query(
            "SELECT 1 FROM policies WHERE source_id = $1 OR dest_id = $1 LIMIT 1",
            &[app_id.into()],
        )?
        .is_empty();
    match known {
        Some(a) if a.deleted_at.is_some() && !has_policies => return Ok(Vec::new()),
        None if !has_policies => {
            return Err(StoreError::NotFound(format!("app '{app_id}' not found")))
        }
        Some(_) => {
            tx.exec(
                "UPDATE apps SET deleted_at = $1 WHERE app_id = $2",
                &[Val::I(now_secs()), app_id.into()],
            )?;
        }
        None => {
            tx.exec(
                "INSERT INTO apps (app_id, space_id, org_id, deleted_at) VALUES ($1, '', '', $2)",
                &[app_id.into(), Val::I(now_secs())],
            )?;
        }
    }
    let routes: Vec<_> = super::misc::list_routes(tx)?
        .into_iter()
        .filter(|r| r.app_id == app_id)
        .collect();
    for r in &routes {
        super::misc::delete_route(tx, r)?;
    }
    remove(tx, "p.source_id = $1 OR p.dest_id = $1", &[app_id.into()])
}

/// Removes the policies matching `cond` (on `policies p`); returns them, in creation order.
fn remove(tx: &mut dyn Tx, cond: &str, params: &[Val]) -> Result<Vec<Policy>, StoreError> {
    let rows = tx.query(
        &format!(
            "SELECT p.source_id, p.dest_id, p.protocol, p.start_port, p.end_port FROM policies p \
             WHERE {cond} ORDER BY p.id"
        ),
        params,
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let port = |v: &Val| -> Result<u16, StoreError> {
            u16::try_from(v.i()?).map_err(|_| StoreError::Db("stored port out of range".into()))
        };
        out.push(Policy::new(
            r[0].t()?,
            r[1].t()?,
            r[2].t()?,
            port(&r[3])?,
            port(&r[4])?,
        ));
    }
    super::policies::delete_policies(tx, &out)?;
    Ok(out)
}

/// Removes the stale policies: those with a source or destination app that was deleted, or
/// that is in `gone` (apps Cloud Controller no longer knows). Returns them.
pub fn stale_policies(
    tx: &mut dyn Tx,
    gone: Option<&std::collections::HashSet<String>>,
) -> Result<Vec<Policy>, StoreError> {
    let mut out = remove(
        tx,
        "EXISTS (SELECT 1 FROM apps a WHERE a.deleted_at IS NOT NULL \
         AND (a.app_id = p.source_id OR a.app_id = p.dest_id))",
        &[],
    )?;
    let mut gone: Vec<&String> = gone.into_iter().flatten().collect();
    gone.sort();
    for app in gone {
        out.extend(remove(
            tx,
            "p.source_id = $1 OR p.dest_id = $1",
            &[app.as_str().into()],
        )?);
    }
    Ok(out)
}

/// The apps named by policies, as sources or destinations, sorted.
pub fn policy_apps(tx: &mut dyn Tx) -> Result<Vec<String>, StoreError> {
    tx.query(
        "SELECT source_id FROM policies UNION SELECT dest_id FROM policies ORDER BY 1",
        &[],
    )?
    .iter()
    .map(|r| Ok(r[0].t()?.to_string()))
    .collect()
}
