//! Options of the Cloud Foundry compatible behaviour, and helpers shared by it.
use std::time::Duration;

use crate::error::ControlError;
use crate::store::DEFAULT_MAX_NEW_APPS_PER_REQUEST;

/// CF-compatible options of the control plane.
#[derive(Clone, Debug)]
pub struct CfConfig {
    /// The most apps one policy request may tag for the first time (a 400 beyond it).
    pub max_new_apps_per_request: usize,
    /// Origins given `Access-Control-Allow-Origin` (CF's `allowed_cors_domains`; `*`: any).
    pub cors_domains: Vec<String>,
    /// How often the policies of deleted apps are removed (CF's `cleanup_interval`, 1 h).
    pub cleanup_interval: Duration,
    /// Where the Silk controller API (silk-release semantics, mutual TLS) listens, if anywhere.
    pub silk_listen: Option<std::net::SocketAddr>,
    /// Accept UAA-issued JWTs (`--uaa-jwks-url` or `--uaa-key-file`, with `--uaa-issuer`).
    pub uaa: Option<crate::uaa::UaaConfig>,
    /// Ask Cloud Controller for apps and spaces (`--cloud-controller`), as CF's policy server.
    pub cc: Option<crate::cc::CcConfig>,
}

impl Default for CfConfig {
    fn default() -> CfConfig {
        CfConfig {
            max_new_apps_per_request: DEFAULT_MAX_NEW_APPS_PER_REQUEST,
            cors_domains: Vec::new(),
            cleanup_interval: Duration::from_secs(3600),
            silk_listen: None,
            uaa: None,
            cc: None,
        }
    }
}

impl CfConfig {
    pub fn check(&self) -> Result<(), ControlError> {
        if self.max_new_apps_per_request == 0 {
            return Err(ControlError::Config(
                "--max-new-apps-per-request must be at least 1".into(),
            ));
        }
        if self.cleanup_interval.is_zero() {
            return Err(ControlError::Config(
                "--cleanup-interval must be longer than 0 seconds".into(),
            ));
        }
        Ok(())
    }
}

/// A token's display name: random, so that it reveals nothing of the token.
pub fn token_name() -> String {
    format!("token-{:08x}", rand::random::<u32>())
}

/// Runs the cleanup of deleted apps' policies every `every` until `shutdown` turns true.
pub fn spawn_cleanup(
    store: crate::store::Store,
    cc: Option<std::sync::Arc<crate::cc::CloudController>>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            match crate::api::apps::run_cleanup(&store, cc.as_deref()).await {
                Ok(p) if !p.is_empty() => {
                    tracing::info!("cleanup removed {} policies of deleted apps", p.len())
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cleanup of deleted apps' policies failed: {e}"),
            }
        }
    })
}

/// Binds `--silk-listen` and serves the Silk controller API there with the internal API's
/// mutual TLS; nothing without it.
pub(crate) async fn serve_silk(
    cf: &CfConfig,
    tls: &std::sync::Arc<rustls::ServerConfig>,
    state: &crate::api::AppState,
    limits: &crate::listen::Limits,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<
    (
        Option<std::net::SocketAddr>,
        Option<tokio::task::JoinHandle<()>>,
    ),
    ControlError,
> {
    let Some(addr) = cf.silk_listen else {
        return Ok((None, None));
    };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ControlError::Config(format!("--silk-listen {addr}: {e}")))?;
    let local = l.local_addr().map_err(ControlError::io("local address"))?;
    let task = tokio::spawn(crate::listen::serve(
        l,
        Some(tls.clone()),
        crate::api::silk::router(state.clone()),
        limits.clone(),
        stop.clone(),
        "Silk controller API",
    ));
    Ok((Some(local), Some(task)))
}

/// The UAA verifier, when configured (its keys loaded, or an error naming the problem).
pub(crate) async fn uaa(cf: &CfConfig) -> Result<Option<crate::uaa::Uaa>, ControlError> {
    match &cf.uaa {
        Some(c) => Ok(Some(crate::uaa::Uaa::new(c.clone()).await?)),
        None => Ok(None),
    }
}

/// The Cloud Controller client, when `--cloud-controller` is given.
pub(crate) fn cloud_controller(
    cf: &CfConfig,
) -> Result<Option<std::sync::Arc<crate::cc::CloudController>>, ControlError> {
    cf.cc
        .clone()
        .map(|c| crate::cc::CloudController::new(c).map(std::sync::Arc::new))
        .transpose()
}
