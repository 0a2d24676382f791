//! Which apps a token may write policies for and see, as CF's policy guard and policy filter
//! decide it: network.admin may use every app; a network.write token only apps in its spaces.
//!
//! An app's space comes from the app directory, or with `--cloud-controller` from Cloud
//! Controller. A token's spaces are its own (built-in tokens) or, for a UAA token with Cloud
//! Controller, the spaces where its user is a developer.
use std::collections::{HashMap, HashSet};

use axum::http::StatusCode;

use super::{ApiError, ApiResult, AppState};
use crate::cc::{CcError, CloudController};
use crate::model::Principal;
use crate::store::{ops, Mode, PolicyFilter};

/// CF's answer when an app is not the token's to use.
pub const CANNOT_ACCESS: &str = "one or more applications cannot be found or accessed";

/// Which policies a list shows.
pub enum ListAccess {
    /// Every policy (network.admin).
    All,
    /// Those whose apps are all in these spaces (looked up in the app directory).
    Spaces(Vec<String>),
    /// Those whose apps are all in this set.
    Apps(HashSet<String>),
}

fn failed(what: &'static str) -> impl Fn(CcError) -> ApiError {
    move |e| {
        tracing::error!("{what}: Cloud Controller: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, what)
    }
}

fn unique(apps: impl IntoIterator<Item = String>) -> Vec<String> {
    let set: HashSet<String> = apps.into_iter().collect();
    let mut v: Vec<String> = set.into_iter().collect();
    v.sort();
    v
}

/// 403 unless `p` may write policies between `apps` (CF's PolicyGuard.CheckAccess; 500 `check
/// access failed` when Cloud Controller cannot tell). Unlike CF, an app Cloud Controller does not
/// know is refused.
pub async fn check_apps(s: &AppState, p: &Principal, apps: Vec<String>) -> ApiResult<()> {
    if p.is_admin() {
        return Ok(());
    }
    let apps = unique(apps);
    let ok = match &s.cc {
        None => {
            let spaces = p.spaces.clone();
            let mine = s
                .store
                .call(Mode::Read, move |tx| ops::apps_in_spaces(tx, &spaces))
                .await?;
            apps.iter().all(|a| mine.contains(a))
        }
        Some(cc) => cc_may_write(cc, p, &apps)
            .await
            .map_err(failed("check access failed"))?,
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::forbidden(CANNOT_ACCESS))
    }
}

async fn cc_may_write(
    cc: &CloudController,
    p: &Principal,
    apps: &[String],
) -> Result<bool, CcError> {
    let user = p.bearer.as_deref();
    let spaces = cc.app_spaces(apps, user).await?;
    if apps.iter().any(|a| !spaces.contains_key(a)) {
        return Ok(false);
    }
    let wanted = unique(spaces.into_values());
    match &p.subject {
        // As CF: the user must be a developer of each space.
        Some(subject) => cc.develops_all(subject, &wanted, user).await,
        None => Ok(wanted.iter().all(|w| p.spaces.contains(w))),
    }
}

/// Which policies `p` may see among those matching `filter` (CF's PolicyFilter; 500 `filter
/// policies failed` when Cloud Controller cannot tell).
pub async fn list_access(
    s: &AppState,
    p: &Principal,
    filter: &PolicyFilter,
) -> ApiResult<ListAccess> {
    if p.is_admin() {
        return Ok(ListAccess::All);
    }
    if s.cc.is_none() {
        return Ok(ListAccess::Spaces(p.spaces.clone()));
    }
    let apps = s.lists.apps(&s.store, filter.clone()).await?;
    Ok(match visible(s, p, apps, "filter policies failed").await? {
        Some(v) => ListAccess::Apps(v),
        None => ListAccess::All,
    })
}

/// Those of `candidates` that are in `p`'s spaces (`None`: all, for network.admin); `what`
/// names the failure when Cloud Controller cannot tell (500).
pub async fn visible(
    s: &AppState,
    p: &Principal,
    candidates: impl IntoIterator<Item = String>,
    what: &'static str,
) -> ApiResult<Option<HashSet<String>>> {
    if p.is_admin() {
        return Ok(None);
    }
    let apps = unique(candidates);
    let Some(cc) = &s.cc else {
        let spaces = p.spaces.clone();
        let mine = s
            .store
            .call(Mode::Read, move |tx| ops::apps_in_spaces(tx, &spaces))
            .await?;
        return Ok(Some(
            apps.into_iter().filter(|a| mine.contains(a)).collect(),
        ));
    };
    let found = async {
        let user = p.bearer.as_deref();
        let app_spaces: HashMap<String, String> = cc.app_spaces(&apps, user).await?;
        let mine: HashSet<String> = match &p.subject {
            Some(subject) => cc.subject_spaces(subject, user).await?,
            None => p.spaces.iter().cloned().collect(),
        };
        Ok::<_, CcError>(
            app_spaces
                .into_iter()
                .filter(|(_, space)| mine.contains(space))
                .map(|(app, _)| app)
                .collect(),
        )
    }
    .await
    .map_err(failed(what))?;
    Ok(Some(found))
}
