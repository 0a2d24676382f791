//! `tapestry policy|asg|route|lease`: command-line clients of the control plane's external API.
//!
//! Every command takes `--api URL` (or `TAPESTRY_API`, default `http://127.0.0.1:4002`) and
//! `--token-file F` (or the token itself in `TAPESTRY_TOKEN`), prints a table by default and JSON
//! with `--json`, and exits non-zero with the server's error when a request fails.
mod app;
mod asg;
mod policy;
mod route;
mod table;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tapestry_policy::client::ExternalClient;
use tapestry_policy::error::ClientError;

pub use app::{run_app, AppArgs};
pub use asg::{run_asg, AsgArgs};
pub use policy::{run_policy, PolicyArgs};
pub use route::{run_lease, run_route, LeaseArgs, RouteArgs};

/// Where the API is and who we are; shared by every client command.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of the external API.
    #[arg(
        long,
        env = "TAPESTRY_API",
        default_value = "http://127.0.0.1:4002",
        global = true
    )]
    api: String,
    /// File holding the bearer token (e.g. the control plane's DATA_DIR/admin.token).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl ApiArgs {
    fn token(&self) -> Result<String> {
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading --token-file {}", f.display()))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                bail!("--token-file {} is empty", f.display());
            }
            return Ok(t);
        }
        match std::env::var("TAPESTRY_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            _ => bail!(
                "no token: pass --token-file FILE (e.g. DATA_DIR/admin.token) or set TAPESTRY_TOKEN"
            ),
        }
    }

    /// Runs `f` with a client on a small single-threaded runtime.
    fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(ExternalClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        if !(self.api.starts_with("http://") || self.api.starts_with("https://")) {
            bail!("--api {:?} is not an http:// or https:// URL", self.api);
        }
        let client =
            ExternalClient::new(&self.api, &self.token()?).context("building the HTTP client")?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client runtime")?;
        rt.block_on(f(client)).map_err(|e| match e {
            ClientError::Status { status, message } => {
                anyhow::anyhow!(
                    "the control plane at {} answered {status}: {message}",
                    self.api
                )
            }
            other => anyhow::anyhow!("{}: {other}", self.api),
        })
    }

    /// Prints `value` as pretty JSON.
    fn print_json<T: serde::Serialize>(&self, value: &T) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved characters stay).
pub fn percent_encode(s: &str) -> String {
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

/// Parses `8080` or `8080-8090`.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let one = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("invalid port {p:?}: ports are 1-65535")),
            Ok(n) => Ok(n),
        }
    };
    let (start, end) = match s.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let p = one(s)?;
            (p, p)
        }
    };
    if start > end {
        return Err(format!("invalid port range {s:?}: start is above end"));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("8080"), Ok((8080, 8080)));
        assert_eq!(parse_port_range("8080-8090"), Ok((8080, 8090)));
        assert!(parse_port_range("0").unwrap_err().contains("1-65535"));
        assert!(parse_port_range("70000").is_err());
        assert!(parse_port_range("9-8")
            .unwrap_err()
            .contains("start is above end"));
        assert!(parse_port_range("a-b").is_err());
    }
}
