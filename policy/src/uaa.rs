//! UAA-issued JWTs (RS256), as CF's policy server accepts them: the signature (a key from
//! `--uaa-key-file` or the JWKS at `--uaa-jwks-url`, e.g. UAA's `/token_keys`), the issuer
//! (`--uaa-issuer`) and the expiry are checked with `jsonwebtoken`; the scopes
//! `network.admin` / `network.write` decide what the token may do.
use std::path::PathBuf;
use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

use crate::error::ControlError;
use crate::model::Principal;

/// Where the verification keys come from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// A PEM public key (UAA's `jwt.token.verification-key`).
    File(PathBuf),
    /// A JWK set URL (UAA's `/token_keys`), fetched at start and again for an unknown `kid`.
    Jwks(String),
}

/// UAA settings: the key source and the issuer tokens must name.
#[derive(Clone, Debug)]
pub struct UaaConfig {
    pub keys: KeySource,
    /// The `iss` tokens must carry, e.g. `https://uaa.example.com/oauth/token` (`None`: any;
    /// the signature alone decides).
    pub issuer: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    scope: Vec<String>,
    #[serde(default)]
    user_name: Option<String>,
    #[serde(default)]
    sub: Option<String>,
}

/// Verification keys, each with its `kid` (none for a key file).
type Keys = Vec<(Option<String>, DecodingKey)>;

/// A verifier of UAA tokens.
#[derive(Clone)]
pub struct Uaa {
    config: UaaConfig,
    keys: Arc<RwLock<Keys>>,
    http: reqwest::Client,
}

/// Why a token was refused (logged; the client sees CF's `failed to verify token with uaa`).
#[derive(Debug, thiserror::Error)]
pub enum UaaError {
    #[error("not a valid token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    #[error("no verification key{}", .0.as_deref().map(|k| format!(" with kid '{k}'")).unwrap_or_default())]
    NoKey(Option<String>),
    #[error("fetching the JWKS: {0}")]
    Fetch(String),
}

impl Uaa {
    /// Loads the keys (reads the file or fetches the JWKS); fails if there are none.
    pub async fn new(config: UaaConfig) -> Result<Uaa, ControlError> {
        let uaa = Uaa {
            config,
            keys: Default::default(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|e| ControlError::Config(format!("UAA client: {e}")))?,
        };
        uaa.reload()
            .await
            .map_err(|e| ControlError::Config(format!("UAA keys: {e}")))?;
        Ok(uaa)
    }

    async fn reload(&self) -> Result<(), UaaError> {
        let keys = match &self.config.keys {
            KeySource::File(p) => {
                let pem = std::fs::read(p)
                    .map_err(|e| UaaError::Fetch(format!("{}: {e}", p.display())))?;
                vec![(None, DecodingKey::from_rsa_pem(&pem)?)]
            }
            KeySource::Jwks(url) => {
                let set: JwkSet = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| UaaError::Fetch(e.to_string()))?
                    .json()
                    .await
                    .map_err(|e| UaaError::Fetch(e.to_string()))?;
                let mut keys = Vec::new();
                for k in &set.keys {
                    if let Ok(d) = DecodingKey::from_jwk(k) {
                        keys.push((k.common.key_id.clone(), d));
                    }
                }
                keys
            }
        };
        if keys.is_empty() {
            return Err(UaaError::NoKey(None));
        }
        *self.keys.write().await = keys;
        Ok(())
    }

    /// The principal of a valid token: admin with `network.admin`, writer with `network.write`
    /// (no spaces: those come from Cloud Controller, by `sub`), else the scopes as given.
    pub async fn verify(&self, token: &str) -> Result<Principal, UaaError> {
        let header = jsonwebtoken::decode_header(token)?;
        let mut validation = Validation::new(Algorithm::RS256);
        if let Some(issuer) = &self.config.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation.validate_aud = false;
        let kid = header.kid.clone();
        for attempt in 0..2 {
            let key = {
                let keys = self.keys.read().await;
                keys.iter()
                    .find(|(k, _)| kid.is_none() || k.is_none() || *k == kid)
                    .map(|(_, d)| d.clone())
            };
            match key {
                Some(key) => {
                    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)?;
                    let mut p = principal(data.claims);
                    p.bearer = Some(token.to_string());
                    return Ok(p);
                }
                None if attempt == 0 && matches!(self.config.keys, KeySource::Jwks(_)) => {
                    // A rotated key: fetch the set again, once.
                    self.reload().await?;
                }
                None => break,
            }
        }
        Err(UaaError::NoKey(kid))
    }
}

/// Whether a bearer token is a JWT (three base64url parts) rather than a built-in token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

fn principal(c: Claims) -> Principal {
    let scope = if c.scope.iter().any(|s| s == crate::SCOPE_ADMIN) {
        crate::SCOPE_ADMIN.to_string()
    } else if c.scope.iter().any(|s| s == crate::SCOPE_WRITE) {
        crate::SCOPE_WRITE.to_string()
    } else {
        c.scope.join(" ")
    };
    Principal {
        name: c.user_name.or(c.sub.clone()).unwrap_or_default(),
        scope,
        spaces: Vec::new(),
        subject: c.sub,
        bearer: None,
    }
}
