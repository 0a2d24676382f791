//! The questions the policy server asks Cloud Controller: apps and their spaces, and the spaces
//! where a user is a developer (CAPI v3 roles, or CF's v2 calls where there are none).
use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::{CcError, CloudController, ROLES_V2, ROLES_V3};

/// A space's name and org (`/v2/spaces/GUID`'s `entity`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Space {
    pub name: String,
    pub organization_guid: String,
}

#[derive(Deserialize, Default)]
pub(super) struct Href {
    #[serde(default)]
    pub(super) href: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct Guid {
    #[serde(default)]
    pub(super) guid: Option<String>,
}

#[derive(Deserialize, Default)]
struct ToOne {
    #[serde(default)]
    data: Option<Guid>,
}

#[derive(Deserialize, Default)]
pub(super) struct Pagination {
    #[serde(default)]
    pub(super) total_pages: u64,
    #[serde(default)]
    pub(super) total_results: Option<u64>,
    #[serde(default)]
    pub(super) next: Option<Href>,
}

#[derive(Deserialize, Default)]
struct AppLinks {
    #[serde(default)]
    space: Option<Href>,
}

#[derive(Deserialize, Default)]
struct SpaceRelationship {
    #[serde(default)]
    space: Option<ToOne>,
}

#[derive(Deserialize)]
struct AppResource {
    guid: String,
    /// `links.space.href` (what CF reads) and `relationships.space.data.guid`; absent in
    /// answers that only list GUIDs (as CF's own test double's).
    #[serde(default)]
    links: AppLinks,
    #[serde(default)]
    relationships: SpaceRelationship,
}

impl AppResource {
    fn space(&self) -> Option<String> {
        let from_link = self
            .links
            .space
            .as_ref()
            .and_then(|h| h.href.as_deref())
            .and_then(|h| h.trim_end_matches('/').rsplit('/').next())
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        from_link.or_else(|| {
            self.relationships
                .space
                .as_ref()
                .and_then(|r| r.data.as_ref())
                .and_then(|d| d.guid.clone())
                .filter(|s| !s.is_empty())
        })
    }
}

#[derive(Deserialize)]
struct AppsV3 {
    #[serde(default)]
    pagination: Pagination,
    resources: Vec<AppResource>,
}

#[derive(Deserialize)]
struct RoleResource {
    #[serde(default)]
    relationships: SpaceRelationship,
}

#[derive(Deserialize)]
struct RolesV3 {
    #[serde(default)]
    pagination: Pagination,
    resources: Vec<RoleResource>,
}

#[derive(Deserialize)]
struct SpaceV2 {
    entity: Space,
}

#[derive(Deserialize)]
struct Metadata {
    guid: String,
}

#[derive(Deserialize)]
struct SpaceResourceV2 {
    metadata: Metadata,
}

#[derive(Deserialize)]
struct SpacesV2 {
    #[serde(default)]
    next_url: Option<String>,
    resources: Vec<SpaceResourceV2>,
}

/// Pages a paged walk follows at most.
const MAX_PAGES: usize = 1000;

/// Space GUIDs per `/v3/roles?space_guids=` request.
const SPACES_PER_ROLES_REQUEST: usize = 50;

impl CloudController {
    /// The apps Cloud Controller knows among `apps`, asked in chunks
    /// (`/v3/apps?guids=...&per_page=N`).
    async fn apps_v3(
        &self,
        apps: &[String],
        user: Option<&str>,
    ) -> Result<Vec<AppResource>, CcError> {
        let mut out = Vec::new();
        for chunk in apps.chunks(self.config.chunk_size) {
            let per_page = chunk.len().to_string();
            let url = self.url(
                &["v3", "apps"],
                &[("guids", &chunk.join(",")), ("per_page", &per_page)],
            );
            let answer: AppsV3 = self.get(url, user).await?.ok_or_else(|| {
                CcError::Answer("/v3/apps: 404 (is --cloud-controller right?)".into())
            })?;
            if answer.pagination.total_pages > 1 {
                return Err(CcError::Answer(
                    "/v3/apps answered more than one page for per_page = the GUIDs asked".into(),
                ));
            }
            out.extend(
                answer
                    .resources
                    .into_iter()
                    .filter(|r| chunk.contains(&r.guid)),
            );
        }
        Ok(out)
    }

    /// The spaces of the apps Cloud Controller knows, among `apps` (GetAppSpaces); an app it
    /// does not know is not in the answer.
    pub async fn app_spaces(
        &self,
        apps: &[String],
        user: Option<&str>,
    ) -> Result<HashMap<String, String>, CcError> {
        let mut out = HashMap::new();
        for r in self.apps_v3(apps, user).await? {
            let space = r
                .space()
                .ok_or_else(|| CcError::Answer(format!("/v3/apps: app {} has no space", r.guid)))?;
            out.insert(r.guid, space);
        }
        Ok(out)
    }

    /// Which of `apps` exist (GetLiveAppGUIDs, chunked).
    pub async fn live_apps(&self, apps: &[String]) -> Result<HashSet<String>, CcError> {
        Ok(self
            .apps_v3(apps, None)
            .await?
            .into_iter()
            .map(|r| r.guid)
            .collect())
    }

    /// The spaces of the `space_developer` roles `/v3/roles` lists for `query`, all pages;
    /// `None` when Cloud Controller has no v3 roles (404).
    async fn developer_roles(
        &self,
        query: &[(&str, &str)],
        user: Option<&str>,
    ) -> Result<Option<HashSet<String>>, CcError> {
        let mut url = self.url(&["v3", "roles"], query);
        let mut out = HashSet::new();
        for _ in 0..MAX_PAGES {
            let Some(answer) = self.get::<RolesV3>(url.clone(), user).await? else {
                return Ok(None);
            };
            out.extend(answer.resources.into_iter().filter_map(|r| {
                r.relationships
                    .space
                    .and_then(|s| s.data)
                    .and_then(|d| d.guid)
            }));
            match answer.pagination.next.and_then(|n| n.href) {
                Some(next) if !next.is_empty() => url = self.next_url(&next)?,
                _ => return Ok(Some(out)),
            }
        }
        Err(CcError::Answer(format!(
            "/v3/roles: more than {MAX_PAGES} pages"
        )))
    }

    /// Whether `subject` is a developer of every space in `spaces` (PolicyGuard.CheckAccess).
    pub async fn develops_all(
        &self,
        subject: &str,
        spaces: &[String],
        user: Option<&str>,
    ) -> Result<bool, CcError> {
        if self.roles_api() != ROLES_V2 {
            let mut found = HashSet::new();
            let mut v3 = true;
            for chunk in spaces.chunks(SPACES_PER_ROLES_REQUEST) {
                let guids = chunk.join(",");
                let q = [
                    ("types", "space_developer"),
                    ("user_guids", subject),
                    ("space_guids", guids.as_str()),
                    ("per_page", "5000"),
                ];
                match self.developer_roles(&q, user).await? {
                    Some(s) => found.extend(s),
                    None => {
                        v3 = false;
                        break;
                    }
                }
            }
            if v3 {
                self.set_roles_api(ROLES_V3);
                return Ok(spaces.iter().all(|s| found.contains(s)));
            }
            self.set_roles_api(ROLES_V2);
        }
        // CF's calls: each space must exist, and have the user as a developer.
        for guid in spaces {
            let Some(space) = self.space(guid, user).await? else {
                return Ok(false);
            };
            if !self.is_developer(subject, &space, user).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The spaces where `subject` is a developer (GetSubjectSpaces).
    pub async fn subject_spaces(
        &self,
        subject: &str,
        user: Option<&str>,
    ) -> Result<HashSet<String>, CcError> {
        if self.roles_api() != ROLES_V2 {
            let q = [
                ("types", "space_developer"),
                ("user_guids", subject),
                ("per_page", "5000"),
            ];
            if let Some(s) = self.developer_roles(&q, user).await? {
                self.set_roles_api(ROLES_V3);
                return Ok(s);
            }
            self.set_roles_api(ROLES_V2);
        }
        let mut out = HashSet::new();
        let mut url = self.url(
            &["v2", "users", subject, "spaces"],
            &[("results-per-page", "100")],
        );
        for _ in 0..MAX_PAGES {
            let answer: SpacesV2 = self
                .get(url.clone(), user)
                .await?
                .ok_or_else(|| CcError::Answer(format!("/v2/users/{subject}/spaces: 404")))?;
            out.extend(answer.resources.into_iter().map(|r| r.metadata.guid));
            match answer.next_url.filter(|n| !n.is_empty()) {
                Some(next) => url = self.next_url(&next)?,
                None => return Ok(out),
            }
        }
        Err(CcError::Answer(format!(
            "/v2/users/{subject}/spaces: more than {MAX_PAGES} pages"
        )))
    }

    /// A space's name and org (GetSpace); `None` when there is no such space.
    async fn space(&self, guid: &str, user: Option<&str>) -> Result<Option<Space>, CcError> {
        Ok(self
            .get::<SpaceV2>(self.url(&["v2", "spaces", guid], &[]), user)
            .await?
            .map(|s| s.entity))
    }

    /// Whether `subject` is a developer of `space` (GetSubjectSpace).
    async fn is_developer(
        &self,
        subject: &str,
        space: &Space,
        user: Option<&str>,
    ) -> Result<bool, CcError> {
        let dev = format!("developer_guid:{subject}");
        let name = format!("name:{}", space.name);
        let org = format!("organization_guid:{}", space.organization_guid);
        let url = self.url(&["v2", "spaces"], &[("q", &dev), ("q", &name), ("q", &org)]);
        let answer: SpacesV2 = self
            .get(url, user)
            .await?
            .ok_or_else(|| CcError::Answer("/v2/spaces: 404".into()))?;
        match answer.resources.len() {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CcError::Answer("found more than one matching space".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apps_space_comes_from_its_link_or_its_relationship() {
        let a: AppResource = serde_json::from_str(
            r#"{"guid":"A","links":{"space":{"href":"https://cc/v3/spaces/S1"}}}"#,
        )
        .unwrap();
        assert_eq!(a.space().as_deref(), Some("S1"));
        let a: AppResource = serde_json::from_str(
            r#"{"guid":"A","relationships":{"space":{"data":{"guid":"S2"}}}}"#,
        )
        .unwrap();
        assert_eq!(a.space().as_deref(), Some("S2"));
        let a: AppResource = serde_json::from_str(r#"{"guid":"A"}"#).unwrap();
        assert_eq!(a.space(), None);
    }
}
