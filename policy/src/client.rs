//! HTTP clients: [`InternalClient`] for cells (mutual TLS) and [`ExternalClient`] for the CLI.
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ClientError;
use crate::model::{FeedResponse, Instance, Lease, Policy, Route, SecurityGroup, Tag};

async fn send<T: DeserializeOwned>(req: RequestBuilder) -> Result<T, ClientError> {
    let resp = req.send().await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        return Err(ClientError::Status {
            status: status.as_u16(),
            message,
        });
    }
    // An empty answer (CF's `/health`) reads as JSON null.
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| ClientError::Status {
        status: status.as_u16(),
        message: format!("unexpected response body: {e}"),
    })
}

/// A cell's client of the internal API (`https://IP:4003`), authenticated with the
/// `cell-credentials` folder (ca.pem, cert.pem, key.pem).
#[derive(Clone)]
pub struct InternalClient {
    http: reqwest::Client,
    base: String,
}

impl InternalClient {
    pub fn new(base_url: &str, credentials_dir: &Path) -> Result<InternalClient, ClientError> {
        Self::build(base_url, credentials_dir, true)
    }

    /// A client that presents no certificate (the server must refuse it); for tests.
    pub fn without_identity(
        base_url: &str,
        credentials_dir: &Path,
    ) -> Result<InternalClient, ClientError> {
        Self::build(base_url, credentials_dir, false)
    }

    fn build(base_url: &str, dir: &Path, identity: bool) -> Result<InternalClient, ClientError> {
        let tls = crate::certs::client_config(dir, identity)
            .map_err(|e| ClientError::Credentials(format!("{}: {e}", dir.display())))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            // Below the server's header timeout (10 s by default, which also closes idle
            // connections): a pooled connection is dropped here before the server drops it.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        Ok(InternalClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
        })
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
    }

    /// Acquires (or gets back) this cell's subnet.
    pub async fn acquire_lease(&self, underlay_ip: Ipv4Addr) -> Result<Lease, ClientError> {
        send(
            self.req(Method::PUT, "/leases/acquire")
                .json(&json!({"underlay_ip": underlay_ip})),
        )
        .await
    }

    /// Renews a lease: 404 when it is gone, 409 when its subnet belongs to someone else.
    pub async fn renew_lease(&self, lease: &Lease) -> Result<Lease, ClientError> {
        send(self.req(Method::PUT, "/leases/renew").json(lease)).await
    }

    pub async fn release_lease(&self, underlay_ip: Ipv4Addr) -> Result<(), ClientError> {
        let _: Value = send(
            self.req(Method::PUT, "/leases/release")
                .json(&json!({"underlay_ip": underlay_ip})),
        )
        .await?;
        Ok(())
    }

    pub async fn list_leases(&self) -> Result<Vec<Lease>, ClientError> {
        #[derive(Deserialize)]
        struct L {
            leases: Vec<Lease>,
        }
        Ok(send::<L>(self.req(Method::GET, "/leases")).await?.leases)
    }

    pub async fn instance_up(&self, instance: &Instance) -> Result<(), ClientError> {
        let _: Value = send(self.req(Method::POST, "/internal/instances").json(instance)).await?;
        Ok(())
    }

    pub async fn instance_down(&self, cell: Ipv4Addr, handle: &str) -> Result<(), ClientError> {
        let _: Value = send(
            self.req(Method::POST, "/internal/instances/delete")
                .json(&json!({"cell": cell, "handle": handle})),
        )
        .await?;
        Ok(())
    }

    /// Replaces the cell's whole set of instances (after a restart).
    pub async fn sync_instances(
        &self,
        cell: Ipv4Addr,
        instances: Vec<Instance>,
    ) -> Result<(), ClientError> {
        let _: Value = send(
            self.req(Method::PUT, &format!("/internal/cells/{cell}/instances"))
                .json(&json!({ "instances": instances })),
        )
        .await?;
        Ok(())
    }

    /// Has the control plane sign a container's instance identity certificate
    /// (`POST /internal/instance_identity`); 400 names the bad field.
    pub async fn instance_identity(
        &self,
        req: &crate::identity::IdentityRequest,
    ) -> Result<crate::identity::IssuedIdentity, ClientError> {
        send(
            self.req(Method::POST, "/internal/instance_identity")
                .json(req),
        )
        .await
    }

    /// Long-polls the feed: returns at once when there are changes after `since` (or a snapshot
    /// is due), else after `wait` with no changes.
    pub async fn feed(
        &self,
        cell: Ipv4Addr,
        since: Option<u64>,
        wait: Duration,
    ) -> Result<FeedResponse, ClientError> {
        let mut url = format!("/internal/feed?cell={cell}&wait_ms={}", wait.as_millis());
        if let Some(s) = since {
            url.push_str(&format!("&since={s}"));
        }
        send(
            self.req(Method::GET, &url)
                .timeout(wait + Duration::from_secs(30)),
        )
        .await
    }
}

/// A client of the external API with a bearer token.
#[derive(Clone)]
pub struct ExternalClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

#[derive(Deserialize)]
struct PolicyList {
    policies: Vec<Policy>,
}

impl ExternalClient {
    pub fn new(base_url: &str, token: &str) -> Result<ExternalClient, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(ExternalClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
        })
    }

    /// Any request: `path` is below the base URL; returns the JSON answer or the server's error.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(60));
        if let Some(b) = body {
            r = r.json(b);
        }
        send(r).await
    }

    pub async fn list_policies(&self) -> Result<Vec<Policy>, ClientError> {
        let v = self
            .request(Method::GET, "/networking/v1/external/policies", None)
            .await?;
        Ok(serde_json::from_value::<PolicyList>(v)
            .map_err(bad)?
            .policies)
    }

    pub async fn create_policies(&self, policies: &[Policy]) -> Result<(), ClientError> {
        let body = json!({ "policies": policies });
        self.request(
            Method::POST,
            "/networking/v1/external/policies",
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    pub async fn delete_policies(&self, policies: &[Policy]) -> Result<(), ClientError> {
        let body = json!({ "policies": policies });
        self.request(
            Method::POST,
            "/networking/v1/external/policies/delete",
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    /// Deletes an app: its policies (returned) and internal routes go at once, and policies
    /// naming it later are removed by cleanup.
    pub async fn delete_app(&self, app_id: &str) -> Result<Vec<Policy>, ClientError> {
        let path = format!(
            "/networking/v1/external/apps/{}",
            percent_encode_segment(app_id)
        );
        let v = self.request(Method::DELETE, &path, None).await?;
        Ok(serde_json::from_value::<PolicyList>(v)
            .map_err(bad)?
            .policies)
    }

    /// Removes the policies of deleted apps now (as the periodic cleanup does); returns them.
    pub async fn cleanup_policies(&self) -> Result<Vec<Policy>, ClientError> {
        let v = self
            .request(
                Method::POST,
                "/networking/v1/external/policies/cleanup",
                None,
            )
            .await?;
        Ok(serde_json::from_value::<PolicyList>(v)
            .map_err(bad)?
            .policies)
    }

    pub async fn list_tags(&self) -> Result<Vec<Tag>, ClientError> {
        let v = self
            .request(Method::GET, "/networking/v1/external/tags", None)
            .await?;
        serde_json::from_value(v.get("tags").cloned().unwrap_or_default()).map_err(bad)
    }

    pub async fn list_security_groups(&self) -> Result<Vec<SecurityGroup>, ClientError> {
        let v = self
            .request(Method::GET, "/networking/v1/external/security_groups", None)
            .await?;
        serde_json::from_value(v.get("security_groups").cloned().unwrap_or_default()).map_err(bad)
    }

    pub async fn create_security_group(&self, g: &SecurityGroup) -> Result<(), ClientError> {
        let body = serde_json::to_value(g).map_err(bad)?;
        self.request(
            Method::POST,
            "/networking/v1/external/security_groups",
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    pub async fn update_security_group(
        &self,
        name: &str,
        g: &SecurityGroup,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_value(g).map_err(bad)?;
        let path = format!("/networking/v1/external/security_groups/{}", encode(name));
        self.request(Method::PUT, &path, Some(&body))
            .await
            .map(|_| ())
    }

    pub async fn delete_security_group(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/networking/v1/external/security_groups/{}", encode(name));
        self.request(Method::DELETE, &path, None).await.map(|_| ())
    }

    pub async fn list_routes(&self) -> Result<Vec<Route>, ClientError> {
        let v = self
            .request(Method::GET, "/networking/v1/external/routes", None)
            .await?;
        serde_json::from_value(v.get("routes").cloned().unwrap_or_default()).map_err(bad)
    }

    pub async fn add_route(&self, host: &str, app_id: &str) -> Result<(), ClientError> {
        let body = json!({"host": host, "app_id": app_id});
        self.request(Method::POST, "/networking/v1/external/routes", Some(&body))
            .await
            .map(|_| ())
    }

    pub async fn delete_route(&self, host: &str, app_id: &str) -> Result<(), ClientError> {
        let body = json!({"host": host, "app_id": app_id});
        self.request(
            Method::POST,
            "/networking/v1/external/routes/delete",
            Some(&body),
        )
        .await
        .map(|_| ())
    }

    pub async fn list_leases(&self) -> Result<Vec<Lease>, ClientError> {
        let v = self
            .request(Method::GET, "/networking/v1/external/leases", None)
            .await?;
        serde_json::from_value(v.get("leases").cloned().unwrap_or_default()).map_err(bad)
    }

    pub async fn add_static_lease(
        &self,
        underlay_ip: Ipv4Addr,
        subnet: ipnet::Ipv4Net,
    ) -> Result<Lease, ClientError> {
        let body = json!({"underlay_ip": underlay_ip, "overlay_subnet": subnet});
        let v = self
            .request(Method::POST, "/networking/v1/external/leases", Some(&body))
            .await?;
        serde_json::from_value(v).map_err(bad)
    }
}

fn bad(e: serde_json::Error) -> ClientError {
    ClientError::Status {
        status: 200,
        message: format!("unexpected response body: {e}"),
    }
}

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Percent-encodes everything but unreserved characters, for one path segment.
pub fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
