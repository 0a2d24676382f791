//! Cloud Controller lookups (`--cloud-controller`), made as CF's policy server makes them
//! (`cc_client`, `uaa_client`): a client-credentials token from UAA, then
//! - `GET /v3/apps?guids=A,B&per_page=N`: which apps exist, and their spaces (from each app's
//!   `links.space.href`), in chunks of `--cc-app-request-chunk-size`;
//! - `GET /v2/spaces/GUID`: a space's name and org (404: no such space);
//! - `GET /v2/spaces?q=developer_guid:U&q=name:N&q=organization_guid:O`: whether the user is a
//!   developer of that space;
//! - `GET /v2/users/U/spaces?results-per-page=100`, following `next_url`: the user's spaces.
//!
//! The token is kept until shortly before it expires, and fetched again once when Cloud
//! Controller answers 401.
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::error::ControlError;

/// CF's default `cc_app_request_chunk_size`.
pub const DEFAULT_CHUNK_SIZE: usize = 100;

/// How Cloud Controller and UAA's token endpoint are reached.
#[derive(Clone, Debug)]
pub struct CcConfig {
    /// Cloud Controller's base URL (`--cloud-controller`).
    pub url: String,
    /// UAA's base URL; tokens come from `POST {uaa_url}/oauth/token` (`--uaa-url`).
    pub uaa_url: String,
    /// The UAA client (`--uaa-client`, CF's `network-policy`).
    pub client_id: String,
    /// Its secret (read from `--uaa-client-secret-file`).
    pub client_secret: String,
    /// PEM CA certificates trusted for https (`--cloud-controller-ca-cert`).
    pub ca_certs: Vec<PathBuf>,
    /// Most app GUIDs per `/v3/apps` request (`--cc-app-request-chunk-size`).
    pub chunk_size: usize,
}

/// Why a lookup failed (logged; clients see CF's `check access failed` and the like).
#[derive(Debug, thiserror::Error)]
pub enum CcError {
    #[error("getting a UAA token: {0}")]
    Token(String),
    #[error("{route}: {detail}")]
    Request { route: String, detail: String },
    #[error("{route}: status {status}: {body}")]
    Status {
        route: String,
        status: StatusCode,
        body: String,
    },
    #[error("{0}")]
    Answer(String),
}

/// A space's name and org (`/v2/spaces/GUID`'s `entity`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Space {
    pub name: String,
    pub organization_guid: String,
}

#[derive(Deserialize)]
struct Href {
    #[serde(default)]
    href: Option<String>,
}

#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    total_pages: u64,
}

#[derive(Deserialize, Default)]
struct AppLinks {
    #[serde(default)]
    space: Option<Href>,
}

#[derive(Deserialize)]
struct AppResource {
    guid: String,
    /// Absent in answers that only list GUIDs (as CF's own test double's).
    #[serde(default)]
    links: AppLinks,
}

#[derive(Deserialize)]
struct AppsV3 {
    pagination: Pagination,
    resources: Vec<AppResource>,
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

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// A Cloud Controller client.
pub struct CloudController {
    config: CcConfig,
    base: Url,
    http: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
}

/// Pages a `/v2/users/U/spaces` walk follows at most (100 spaces each).
const MAX_PAGES: usize = 1000;

impl CloudController {
    pub fn new(config: CcConfig) -> Result<CloudController, ControlError> {
        let bad = |m: String| ControlError::Config(m);
        let base = Url::parse(&config.url)
            .map_err(|e| bad(format!("--cloud-controller {}: {e}", config.url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad(format!(
                "--cloud-controller {}: not an http or https URL",
                config.url
            )));
        }
        Url::parse(&config.uaa_url)
            .map_err(|e| bad(format!("--uaa-url {}: {e}", config.uaa_url)))?;
        if config.client_id.is_empty() {
            return Err(bad("--uaa-client must not be empty".into()));
        }
        if config.chunk_size == 0 {
            return Err(bad("--cc-app-request-chunk-size must be at least 1".into()));
        }
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        for path in &config.ca_certs {
            let pem = std::fs::read(path).map_err(|e| {
                bad(format!(
                    "--cloud-controller-ca-cert {}: {e}",
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                bad(format!(
                    "--cloud-controller-ca-cert {}: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(bad(format!(
                    "--cloud-controller-ca-cert {}: no PEM certificate in it",
                    path.display()
                )));
            }
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
        let https = [&config.url, &config.uaa_url]
            .iter()
            .any(|u| u.starts_with("https:"));
        if https && config.ca_certs.is_empty() {
            return Err(bad(
                "--cloud-controller or --uaa-url is https: give the CA that signed them with \
                 --cloud-controller-ca-cert"
                    .into(),
            ));
        }
        let http = http
            .build()
            .map_err(|e| bad(format!("Cloud Controller client: {e}")))?;
        Ok(CloudController {
            config,
            base,
            http,
            token: Mutex::new(None),
        })
    }

    /// A client-credentials token (UAAClient.GetToken), cached until a minute before expiry.
    async fn token(&self, fresh: bool) -> Result<String, CcError> {
        let mut slot = self.token.lock().await;
        if let Some((t, until)) = slot.as_ref() {
            if !fresh && Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let url = format!("{}/oauth/token", self.config.uaa_url.trim_end_matches('/'));
        let fail = |e: String| CcError::Token(format!("{url}: {e}"));
        let resp = self
            .http
            .post(&url)
            .basic_auth(&self.config.client_id, Some(&self.config.client_secret))
            .form(&[
                ("client_id", self.config.client_id.as_str()),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| fail(e.to_string()))?;
        if !status.is_success() {
            return Err(fail(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let t: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| fail(format!("the answer: {e}")))?;
        let life = Duration::from_secs(t.expires_in.unwrap_or(0).saturating_sub(60));
        *slot = Some((t.access_token.clone(), Instant::now() + life));
        Ok(t.access_token)
    }

    /// `GET` of a URL under the base, decoded; `None` for a 404.
    async fn get<T: DeserializeOwned>(&self, url: Url) -> Result<Option<T>, CcError> {
        let route = format!(
            "{}{}",
            url.path(),
            url.query().map(|q| format!("?{q}")).unwrap_or_default()
        );
        let mut fresh = false;
        loop {
            let token = self.token(fresh).await?;
            let resp = self
                .http
                .request(Method::GET, url.clone())
                .header("authorization", format!("bearer {token}"))
                .send()
                .await
                .map_err(|e| CcError::Request {
                    route: route.clone(),
                    detail: e.to_string(),
                })?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !fresh {
                fresh = true;
                continue;
            }
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let body = resp.bytes().await.map_err(|e| CcError::Request {
                route: route.clone(),
                detail: e.to_string(),
            })?;
            if !status.is_success() {
                return Err(CcError::Status {
                    route,
                    status,
                    body: String::from_utf8_lossy(&body).chars().take(200).collect(),
                });
            }
            return serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| CcError::Request {
                    route,
                    detail: format!("decoding the answer: {e}"),
                });
        }
    }

    /// The base URL with `segments` appended (each escaped) and `query`.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query);
        }
        u
    }

    /// The apps Cloud Controller knows among `apps`, asked in chunks
    /// (`/v3/apps?guids=...&per_page=N`).
    async fn apps_v3(&self, apps: &[String]) -> Result<Vec<AppResource>, CcError> {
        let mut out = Vec::new();
        for chunk in apps.chunks(self.config.chunk_size) {
            let per_page = chunk.len().to_string();
            let url = self.url(
                &["v3", "apps"],
                &[("guids", &chunk.join(",")), ("per_page", &per_page)],
            );
            let answer: AppsV3 = self.get(url).await?.ok_or_else(|| {
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

    /// The spaces of the apps Cloud Controller knows, among `apps` (GetAppSpaces: the last
    /// segment of each app's `links.space.href`); an app it does not know is not in the answer.
    pub async fn app_spaces(&self, apps: &[String]) -> Result<HashMap<String, String>, CcError> {
        let mut out = HashMap::new();
        for r in self.apps_v3(apps).await? {
            let space = r
                .links
                .space
                .and_then(|h| h.href)
                .as_deref()
                .and_then(|h| h.trim_end_matches('/').rsplit('/').next())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    CcError::Answer(format!("/v3/apps: app {} has no space link", r.guid))
                })?
                .to_string();
            out.insert(r.guid, space);
        }
        Ok(out)
    }

    /// Which of `apps` exist (GetLiveAppGUIDs, chunked).
    pub async fn live_apps(&self, apps: &[String]) -> Result<HashSet<String>, CcError> {
        Ok(self
            .apps_v3(apps)
            .await?
            .into_iter()
            .map(|r| r.guid)
            .collect())
    }

    /// A space's name and org (GetSpace); `None` when there is no such space.
    pub async fn space(&self, guid: &str) -> Result<Option<Space>, CcError> {
        Ok(self
            .get::<SpaceV2>(self.url(&["v2", "spaces", guid], &[]))
            .await?
            .map(|s| s.entity))
    }

    /// Whether `subject` is a developer of `space` (GetSubjectSpace).
    pub async fn is_developer(&self, subject: &str, space: &Space) -> Result<bool, CcError> {
        let dev = format!("developer_guid:{subject}");
        let name = format!("name:{}", space.name);
        let org = format!("organization_guid:{}", space.organization_guid);
        let url = self.url(&["v2", "spaces"], &[("q", &dev), ("q", &name), ("q", &org)]);
        let answer: SpacesV2 = self
            .get(url)
            .await?
            .ok_or_else(|| CcError::Answer("/v2/spaces: 404".into()))?;
        match answer.resources.len() {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CcError::Answer("found more than one matching space".into())),
        }
    }

    /// The spaces of `subject` (GetSubjectSpaces), following `next_url`.
    pub async fn subject_spaces(&self, subject: &str) -> Result<HashSet<String>, CcError> {
        let mut out = HashSet::new();
        let mut url = self.url(
            &["v2", "users", subject, "spaces"],
            &[("results-per-page", "100")],
        );
        for _ in 0..MAX_PAGES {
            let answer: SpacesV2 = self
                .get(url.clone())
                .await?
                .ok_or_else(|| CcError::Answer(format!("/v2/users/{subject}/spaces: 404")))?;
            out.extend(answer.resources.into_iter().map(|r| r.metadata.guid));
            match answer.next_url.filter(|n| !n.is_empty()) {
                Some(next) => {
                    url = self
                        .base
                        .join(&next)
                        .map_err(|e| CcError::Answer(format!("next_url {next}: {e}")))?;
                }
                None => return Ok(out),
            }
        }
        Err(CcError::Answer(format!(
            "/v2/users/{subject}/spaces: more than {MAX_PAGES} pages"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(url: &str) -> Result<CloudController, ControlError> {
        CloudController::new(CcConfig {
            url: url.into(),
            uaa_url: "http://127.0.0.1:1".into(),
            client_id: "network-policy".into(),
            client_secret: "s".into(),
            ca_certs: Vec::new(),
            chunk_size: DEFAULT_CHUNK_SIZE,
        })
    }

    #[test]
    fn urls_escape_each_segment_and_keep_a_base_path() {
        let c = cc("http://cc.example/prefix/").unwrap();
        let u = c.url(&["v2", "spaces", "a/b?c"], &[]);
        assert_eq!(u.as_str(), "http://cc.example/prefix/v2/spaces/a%2Fb%3Fc");
        let u = c.url(&["v3", "apps"], &[("guids", "a,b"), ("per_page", "2")]);
        assert_eq!(
            u.as_str(),
            "http://cc.example/prefix/v3/apps?guids=a%2Cb&per_page=2"
        );
    }

    #[test]
    fn bad_configuration_is_named() {
        let e = cc("not a url").err().unwrap().to_string();
        assert!(e.contains("--cloud-controller not a url"), "{e}");
        let e = cc("ftp://x/").err().unwrap().to_string();
        assert!(e.contains("not an http or https URL"), "{e}");
        let e = cc("https://cc.example").err().unwrap().to_string();
        assert!(e.contains("--cloud-controller-ca-cert"), "{e}");
    }
}
