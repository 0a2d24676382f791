//! `tapestry control`: run the control plane (policy server, leases, feed), or mint tokens.
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use std::time::Duration;

use tapestry_policy::{ControlConfig, Limits, SCOPE_WRITE};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControlArgs {
    #[command(subcommand)]
    command: Option<ControlCommand>,
    /// Where the control plane keeps its database, admin.token and cell-credentials/.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// External (CF-compatible) API address.
    #[arg(long, default_value = "127.0.0.1:4002")]
    listen: SocketAddr,
    /// Internal (mutual TLS) API address for cells.
    #[arg(long, default_value = "127.0.0.1:4003")]
    internal_listen: SocketAddr,
    /// `sqlite` (default: DIR/tapestry.db) or postgres://USER@HOST:PORT/DB.
    #[arg(long)]
    database: Option<String>,
    /// The overlay network cell subnets are leased from (an RFC 1918 range).
    #[arg(long, default_value = "10.255.0.0/16")]
    overlay_network: String,
    /// Prefix length of each cell's subnet.
    #[arg(long, default_value_t = 24)]
    subnet_prefix: u8,
    /// Most policies one source app may have (network.admin is not held to it, as in CF).
    #[arg(long, default_value_t = 150)]
    max_policies_per_source: usize,
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics: API request and
    /// database transaction latency histograms.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Most apps one policy request may tag for the first time (a 400 beyond it).
    #[arg(long, default_value_t = tapestry_policy::store::DEFAULT_MAX_NEW_APPS_PER_REQUEST)]
    max_new_apps_per_request: usize,
    /// How often the policies of deleted apps are removed: seconds, or with a unit (90s, 30m, 1h).
    #[arg(long, default_value = "1h", value_parser = parse_interval)]
    cleanup_interval: std::time::Duration,
    /// Also serve the Silk controller API (silk-release semantics, same mutual TLS) here, for
    /// stock silk-daemons; CF's port is 4103.
    #[arg(long)]
    silk_listen: Option<SocketAddr>,
    /// Accept UAA-issued JWTs, verified with the JWK set at this URL (UAA's /token_keys; the
    /// issuer is then URL's UAA's /oauth/token unless --uaa-issuer says otherwise).
    #[arg(long, conflicts_with = "uaa_key_file")]
    uaa_jwks_url: Option<String>,
    /// Accept UAA-issued JWTs, verified with this PEM public key (with --uaa-issuer, or the
    /// issuer is not checked).
    #[arg(long)]
    uaa_key_file: Option<PathBuf>,
    /// The issuer (`iss`) UAA tokens must carry, e.g. https://uaa.example.com/oauth/token.
    #[arg(long)]
    uaa_issuer: Option<String>,
    /// Ask Cloud Controller which apps exist and in which spaces (/v3/apps), and where a UAA
    /// token's user is a developer (/v3/roles, or CF's v2 calls): for network.write access
    /// checks and lists, and policy cleanup. Requests carry the client-credentials token of
    /// --uaa-client (with --uaa-client-secret-file), or else the user's own token.
    #[arg(long, value_name = "URL")]
    cloud_controller: Option<String>,
    /// UAA's URL for the client-credentials token used with Cloud Controller
    /// (POST URL/oauth/token); default: from --uaa-issuer or --uaa-jwks-url.
    #[arg(long, value_name = "URL", requires = "cloud_controller")]
    uaa_url: Option<String>,
    /// The UAA client whose token asks Cloud Controller (CF's network-policy client).
    #[arg(long, default_value = "network-policy", requires = "cloud_controller")]
    uaa_client: String,
    /// A file holding that client's secret.
    #[arg(long, value_name = "FILE", requires = "cloud_controller")]
    uaa_client_secret_file: Option<PathBuf>,
    /// A PEM CA certificate trusted for an https Cloud Controller or UAA (repeat for several).
    #[arg(long, value_name = "FILE", requires = "cloud_controller")]
    cloud_controller_ca_cert: Vec<PathBuf>,
    /// Most app GUIDs in one Cloud Controller /v3/apps request (CF's cc_app_request_chunk_size).
    #[arg(long, default_value_t = tapestry_policy::cc::DEFAULT_CHUNK_SIZE, requires = "cloud_controller")]
    cc_app_request_chunk_size: usize,
    /// How often the security groups are read from Cloud Controller (/v3/security_groups, as
    /// CF's policy-server-asg-syncer), replacing the stored ones; default 60s with
    /// --cloud-controller and --uaa-client-secret-file. The external API's security group
    /// writes are then refused: Cloud Controller owns them.
    #[arg(long, value_parser = parse_interval, requires = "uaa_client_secret_file")]
    asg_sync_interval: Option<std::time::Duration>,
    /// With --cloud-controller, keep the security groups managed through Tapestry's API
    /// instead of syncing them from Cloud Controller.
    #[arg(long, conflicts_with = "asg_sync_interval")]
    no_asg_sync: bool,
    /// An origin the external API allows for CORS (repeat or comma-separate; `*`: any).
    #[arg(long = "allowed-cors-domain", value_delimiter = ',')]
    allowed_cors_domains: Vec<String>,
    /// Accept the shared cell certificate (cell-credentials/), which may act for any cell; for
    /// upgrades. Without it each cell needs its own: `tapestry control cell-credentials`.
    #[arg(long)]
    allow_shared_cell_cert: bool,
    /// External API: most connections open at once (more are closed at once).
    #[arg(long, default_value_t = Limits::external().max_connections)]
    max_connections: usize,
    /// External API: most connections open at once from one client address.
    #[arg(long, default_value_t = Limits::external().max_per_client)]
    max_connections_per_client: usize,
    /// Internal API: most connections open at once.
    #[arg(long, default_value_t = Limits::internal().max_connections)]
    internal_max_connections: usize,
    /// Internal API: most connections open at once from one client address.
    #[arg(long, default_value_t = Limits::internal().max_per_client)]
    internal_max_connections_per_client: usize,
    /// Both APIs: seconds a client has for the TLS handshake and for each request's headers
    /// (also how long a kept-alive connection may sit idle between requests).
    #[arg(long, default_value_t = Limits::external().header_timeout.as_secs())]
    header_timeout_secs: u64,
    /// Both APIs: seconds a client has for a request's body.
    #[arg(long, default_value_t = Limits::external().body_timeout.as_secs())]
    body_timeout_secs: u64,
}

/// UAA's issuer and base URL from `--uaa-jwks-url`, `--uaa-issuer` and `--uaa-url`: a UAA's
/// JWKS is at BASE/token_keys and its issuer is BASE/oauth/token, so each follows from the others.
fn uaa_endpoints(
    jwks_url: Option<&str>,
    issuer: Option<&str>,
    uaa_url: Option<&str>,
) -> Result<(Option<String>, Option<String>)> {
    let jwks_base = jwks_url
        .and_then(|u| u.trim_end_matches('/').strip_suffix("/token_keys"))
        .map(str::to_string);
    let issuer = match (issuer, jwks_url, &jwks_base) {
        (Some(i), _, _) => Some(i.to_string()),
        (None, Some(_), Some(base)) => Some(format!("{base}/oauth/token")),
        (None, Some(url), None) => bail!(
            "--uaa-jwks-url {url}: give the issuer tokens must carry with --uaa-issuer \
             (it can only be derived from a UAA URL ending in /token_keys)"
        ),
        (None, None, _) => None,
    };
    let base = uaa_url.map(str::to_string).or_else(|| {
        issuer
            .as_deref()
            .and_then(|i| i.trim_end_matches('/').strip_suffix("/oauth/token"))
            .map(str::to_string)
            .or(jwks_base)
    });
    Ok((issuer, base))
}

/// `3600`, `90s`, `30m`, `1h`: a positive interval.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not an interval like 3600, 90s, 30m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("'{s}': the unit must be s, m or h")),
    };
    if secs == 0 {
        return Err("the interval must be longer than 0 seconds".into());
    }
    Ok(std::time::Duration::from_secs(secs))
}

#[derive(clap::Subcommand, Debug)]
enum ControlCommand {
    /// Issue one cell's client certificate (IP SAN = its underlay IP; the internal API lets it act
    /// only for that IP) into --out: ca.pem, cert.pem, key.pem, for `tapestry cell --credentials`.
    CellCredentials {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        underlay_ip: std::net::Ipv4Addr,
        #[arg(long)]
        out: PathBuf,
    },
    /// Manage bearer tokens of the external API.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
enum TokenCommand {
    /// Mint a token, store its hash and print it (works while the control plane runs).
    Create {
        #[arg(long)]
        data_dir: PathBuf,
        /// network.write (limited to --space) or network.admin.
        #[arg(long, default_value = SCOPE_WRITE)]
        scope: String,
        /// A space the token may act in (repeat, or comma-separate).
        #[arg(long = "space", value_delimiter = ',')]
        spaces: Vec<String>,
        /// As for the control plane: sqlite (default) or postgres://...
        #[arg(long)]
        database: Option<String>,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("control")
        .build()
        .context("starting the runtime")
}

pub fn run(args: ControlArgs) -> Result<()> {
    if let Some(ControlCommand::CellCredentials {
        data_dir,
        underlay_ip,
        out,
    }) = &args.command
    {
        tapestry_policy::issue_cell_credentials(&ControlConfig::new(data_dir), *underlay_ip, out)
            .with_context(|| format!("issuing the credentials of cell {underlay_ip}"))?;
        println!("{}", out.display());
        return Ok(());
    }
    if let Some(ControlCommand::Token {
        command:
            TokenCommand::Create {
                data_dir,
                scope,
                spaces,
                database,
            },
    }) = args.command
    {
        let mut config = ControlConfig::new(data_dir);
        config.database = database;
        let spaces: Vec<String> = spaces
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let token = runtime()?.block_on(async move {
            let store = tapestry_policy::open_store(&config).await?;
            tapestry_policy::create_token(&store, &scope, spaces).await
        })?;
        println!("{token}");
        return Ok(());
    }
    let Some(data_dir) = args.data_dir else {
        bail!("tapestry control needs --data-dir DIR (where the database, admin.token and cell-credentials live)");
    };
    let overlay_network = args.overlay_network.parse().map_err(|_| {
        anyhow::anyhow!(
            "--overlay-network '{}' is not an IPv4 network in CIDR form (e.g. 10.255.0.0/16)",
            args.overlay_network
        )
    })?;
    let mut config = ControlConfig::new(data_dir);
    config.listen = args.listen;
    config.internal_listen = args.internal_listen;
    config.database = args.database;
    config.overlay_network = overlay_network;
    config.subnet_prefix = args.subnet_prefix;
    config.max_policies_per_source = args.max_policies_per_source;
    config.cf.max_new_apps_per_request = args.max_new_apps_per_request;
    config.cf.cleanup_interval = args.cleanup_interval;
    config.cf.cors_domains = args.allowed_cors_domains;
    config.cf.silk_listen = args.silk_listen;
    let (issuer, uaa_base) = uaa_endpoints(
        args.uaa_jwks_url.as_deref(),
        args.uaa_issuer.as_deref(),
        args.uaa_url.as_deref(),
    )?;
    let keys = match (args.uaa_jwks_url, args.uaa_key_file) {
        (Some(url), _) => Some(tapestry_policy::uaa::KeySource::Jwks(url)),
        (None, Some(f)) => Some(tapestry_policy::uaa::KeySource::File(f)),
        (None, None) => None,
    };
    if let Some(url) = args.cloud_controller {
        let client = match args.uaa_client_secret_file {
            None => None,
            Some(secret_file) => {
                let Some(uaa_url) = uaa_base else {
                    bail!(
                        "--uaa-client-secret-file needs UAA's URL for the client-credentials \
                         token: give --uaa-url (or --uaa-issuer / --uaa-jwks-url)"
                    );
                };
                let secret = std::fs::read_to_string(&secret_file)
                    .with_context(|| format!("--uaa-client-secret-file {}", secret_file.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if secret.is_empty() {
                    bail!(
                        "--uaa-client-secret-file {}: the file is empty",
                        secret_file.display()
                    );
                }
                Some(tapestry_policy::cc::ClientCredentials {
                    uaa_url,
                    client_id: args.uaa_client,
                    client_secret: secret,
                })
            }
        };
        if client.is_some() && !args.no_asg_sync {
            config.cf.asg_sync_interval =
                Some(args.asg_sync_interval.unwrap_or(Duration::from_secs(60)));
        }
        config.cf.cc = Some(tapestry_policy::cc::CcConfig {
            url,
            client,
            ca_certs: args.cloud_controller_ca_cert,
            chunk_size: args.cc_app_request_chunk_size,
        });
    }
    config.cf.uaa = match keys {
        Some(keys) => {
            if issuer.is_none() {
                tracing::warn!(
                    "--uaa-key-file without --uaa-issuer: UAA tokens' issuer is not checked"
                );
            }
            Some(tapestry_policy::uaa::UaaConfig { keys, issuer })
        }
        None if issuer.is_some() => {
            bail!("--uaa-issuer needs --uaa-jwks-url or --uaa-key-file")
        }
        None => None,
    };
    config.allow_shared_cell_cert = args.allow_shared_cell_cert;
    let secs = Duration::from_secs;
    config.external_limits = Limits {
        max_connections: args.max_connections,
        max_per_client: args.max_connections_per_client,
        header_timeout: secs(args.header_timeout_secs),
        body_timeout: secs(args.body_timeout_secs),
    };
    config.internal_limits = Limits {
        max_connections: args.internal_max_connections,
        max_per_client: args.internal_max_connections_per_client,
        header_timeout: secs(args.header_timeout_secs),
        body_timeout: secs(args.body_timeout_secs),
    };
    config.check()?;
    // Every connection the limits allow needs a file descriptor (the usual soft limit, 1024,
    // is below them): raise the soft limit to the hard one and say if the limits do not fit.
    match tapestry_sys::process::raise_nofile_limit() {
        Ok(n) => {
            let need = (config.external_limits.max_connections
                + config.internal_limits.max_connections) as u64
                + 256;
            if n < need {
                tracing::warn!(
                    "the open-files limit ({n}) is below what the connection limits allow ({need}); lower --max-connections / --internal-max-connections or raise the hard limit (ulimit -Hn)"
                );
            }
        }
        Err(e) => tracing::warn!("raising the open-files limit: {e}"),
    }
    let metrics_listen = args.metrics_listen;
    runtime()?.block_on(async move {
        let running = tapestry_policy::start(config.clone()).await.context("starting the control plane")?;
        if let Some(addr) = metrics_listen {
            crate::cell::metrics::serve(addr, std::sync::Arc::new(tapestry_policy::metrics::render))
                .await?;
        }
        eprintln!(
            "tapestry control: external API http://{} (admin token in {}), internal API https://{} (cell credentials in {})",
            running.external_addr,
            config.data_dir.join("admin.token").display(),
            running.internal_addr,
            running.credentials_dir.display()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        running.shutdown().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uaa_issuer_and_base_follow_from_each_other() {
        let some = |s: &str| Some(s.to_string());
        let u = "https://uaa.sys.example";
        let jwks = format!("{u}/token_keys");
        let iss = format!("{u}/oauth/token");
        assert_eq!(
            uaa_endpoints(Some(&jwks), None, None).unwrap(),
            (some(&iss), some(u))
        );
        assert_eq!(
            uaa_endpoints(None, Some(&iss), None).unwrap(),
            (some(&iss), some(u))
        );
        assert_eq!(
            uaa_endpoints(
                Some(&jwks),
                Some("https://other/oauth/token"),
                Some("http://x")
            )
            .unwrap(),
            (some("https://other/oauth/token"), some("http://x"))
        );
        assert_eq!(uaa_endpoints(None, None, None).unwrap(), (None, None));
        let e = uaa_endpoints(Some("https://keys.example/jwks"), None, None).unwrap_err();
        assert!(e.to_string().contains("--uaa-issuer"), "{e}");
    }
}
