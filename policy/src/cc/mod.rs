//! Cloud Controller lookups (`--cloud-controller`), made as CF's policy server makes them
//! (`cc_client`, `uaa_client`, `handlers/policy_guard.go`, `policy_filter.go`,
//! `cleaner/policy_cleaner.go`):
//! - `GET /v3/apps?guids=A,B&per_page=N`: which apps exist, and their spaces, in chunks of
//!   `--cc-app-request-chunk-size`;
//! - whether a user is a developer of a space, and the spaces where a user is a developer:
//!   `GET /v3/roles?types=space_developer&user_guids=U[&space_guids=...]` (CAPI v3), or, where
//!   Cloud Controller has no v3 roles (a 404), CF's v2 calls: `GET /v2/spaces/GUID` and
//!   `GET /v2/spaces?q=developer_guid:U&q=name:N&q=organization_guid:O`, and
//!   `GET /v2/users/U/spaces?results-per-page=100` following `next_url`.
//!
//! Requests carry a client-credentials token from UAA (`--uaa-client-secret-file`, as CF's
//! `network-policy` client), kept until a minute before it expires and fetched again once when
//! Cloud Controller answers 401. Without client credentials, a request made for a user carries
//! that user's own UAA token, and one made for nobody (the periodic cleanup) none.
mod asgs;
mod lookups;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::error::ControlError;

pub use lookups::Space;

/// CF's default `cc_app_request_chunk_size`.
pub const DEFAULT_CHUNK_SIZE: usize = 100;

/// A UAA client whose client-credentials token asks Cloud Controller.
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    /// UAA's base URL; tokens come from `POST {uaa_url}/oauth/token` (`--uaa-url`).
    pub uaa_url: String,
    /// The client (`--uaa-client`, CF's `network-policy`).
    pub client_id: String,
    /// Its secret (read from `--uaa-client-secret-file`).
    pub client_secret: String,
}

/// How Cloud Controller is reached.
#[derive(Clone, Debug)]
pub struct CcConfig {
    /// Cloud Controller's base URL (`--cloud-controller`).
    pub url: String,
    /// The client whose token the requests carry; without, a user's own token.
    pub client: Option<ClientCredentials>,
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

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Which API answers role questions: not known yet, CAPI v3 roles, or CF's v2 calls.
pub(crate) const ROLES_UNKNOWN: u8 = 0;
const ROLES_V3: u8 = 1;
const ROLES_V2: u8 = 2;

/// A Cloud Controller client.
pub struct CloudController {
    config: CcConfig,
    base: Url,
    http: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
    roles_api: AtomicU8,
}

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
        let mut https = base.scheme() == "https";
        if let Some(c) = &config.client {
            let u =
                Url::parse(&c.uaa_url).map_err(|e| bad(format!("--uaa-url {}: {e}", c.uaa_url)))?;
            https |= u.scheme() == "https";
            if c.client_id.is_empty() {
                return Err(bad("--uaa-client must not be empty".into()));
            }
        }
        if config.chunk_size == 0 {
            return Err(bad("--cc-app-request-chunk-size must be at least 1".into()));
        }
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        for path in &config.ca_certs {
            let named = |e: String| {
                bad(format!(
                    "--cloud-controller-ca-cert {}: {e}",
                    path.display()
                ))
            };
            let pem = std::fs::read(path).map_err(|e| named(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| named(e.to_string()))?;
            if certs.is_empty() {
                return Err(named("no PEM certificate in it".into()));
            }
            for c in certs {
                http = http.add_root_certificate(c);
            }
        }
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
            roles_api: AtomicU8::new(ROLES_UNKNOWN),
        })
    }

    /// The client-credentials token (UAAClient.GetToken), cached until a minute before expiry.
    async fn client_token(&self, c: &ClientCredentials, fresh: bool) -> Result<String, CcError> {
        let mut slot = self.token.lock().await;
        if let Some((t, until)) = slot.as_ref() {
            if !fresh && Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let url = format!("{}/oauth/token", c.uaa_url.trim_end_matches('/'));
        let fail = |e: String| CcError::Token(format!("{url}: {e}"));
        let resp = self
            .http
            .post(&url)
            .basic_auth(&c.client_id, Some(&c.client_secret))
            .form(&[
                ("client_id", c.client_id.as_str()),
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

    /// `GET` of `url`, decoded; `None` for a 404. `user`: the token of the user the request is
    /// made for, used when there are no client credentials.
    async fn get<T: DeserializeOwned>(
        &self,
        url: Url,
        user: Option<&str>,
    ) -> Result<Option<T>, CcError> {
        let route = format!(
            "{}{}",
            url.path(),
            url.query().map(|q| format!("?{q}")).unwrap_or_default()
        );
        let mut fresh = false;
        loop {
            let token = match &self.config.client {
                Some(c) => Some(self.client_token(c, fresh).await?),
                None => user.map(str::to_string),
            };
            let mut req = self.http.request(Method::GET, url.clone());
            if let Some(t) = token {
                req = req.header("authorization", format!("bearer {t}"));
            }
            let resp = req.send().await.map_err(|e| CcError::Request {
                route: route.clone(),
                detail: e.to_string(),
            })?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !fresh && self.config.client.is_some() {
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

    /// A `next` link of a paged answer, resolved against the base URL.
    fn next_url(&self, next: &str) -> Result<Url, CcError> {
        self.base
            .join(next)
            .map_err(|e| CcError::Answer(format!("next page {next}: {e}")))
    }

    fn roles_api(&self) -> u8 {
        self.roles_api.load(Ordering::Relaxed)
    }

    fn set_roles_api(&self, api: u8) {
        self.roles_api.store(api, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(url: &str) -> Result<CloudController, ControlError> {
        CloudController::new(CcConfig {
            url: url.into(),
            client: None,
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
