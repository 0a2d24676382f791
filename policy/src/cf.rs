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
    /// Read the security groups from Cloud Controller this often (`--asg-sync-interval`, CF's
    /// `policy-server-asg-syncer`); they then replace the stored ones, and the external API's
    /// security group writes are refused. Needs `cc` with client credentials.
    pub asg_sync_interval: Option<Duration>,
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
            asg_sync_interval: None,
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
        if let Some(every) = self.asg_sync_interval {
            if every.is_zero() {
                return Err(ControlError::Config(
                    "--asg-sync-interval must be longer than 0 seconds".into(),
                ));
            }
            if self.cc.as_ref().is_none_or(|c| c.client.is_none()) {
                return Err(ControlError::Config(
                    "--asg-sync-interval needs --cloud-controller with a UAA client (--uaa-client-secret-file)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Whether security groups come from Cloud Controller.
    pub fn asgs_from_cloud_controller(&self) -> bool {
        self.asg_sync_interval.is_some()
    }
}

/// A token's display name: random, so that it reveals nothing of the token.
pub fn token_name() -> String {
    format!("token-{:08x}", rand::random::<u32>())
}

/// Runs `round` every `every` (first at once when `now`) until `shutdown` turns true.
fn spawn_every<F, Fut>(
    every: Duration,
    now: bool,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut round: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !now {
            tick.tick().await;
        }
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            round().await;
        }
    })
}

/// Runs the cleanup of deleted apps' policies every `every` until `shutdown` turns true.
pub fn spawn_cleanup(
    store: crate::store::Store,
    cc: Option<std::sync::Arc<crate::cc::CloudController>>,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    spawn_every(every, false, shutdown, move || {
        let (store, cc) = (store.clone(), cc.clone());
        async move {
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

/// Replaces the stored security groups with Cloud Controller's once.
pub async fn sync_security_groups(
    store: &crate::store::Store,
    cc: &crate::cc::CloudController,
) -> Result<(usize, usize), String> {
    let groups = cc.security_groups().await.map_err(|e| e.to_string())?;
    let mut valid = Vec::with_capacity(groups.len());
    for g in groups {
        // A group Tapestry cannot enforce is left out, so it allows nothing (fails closed).
        match crate::validate::security_group(&g) {
            Ok(()) => valid.push(g),
            Err(e) => tracing::warn!(
                "security group '{}' from Cloud Controller left out: {e}",
                g.name
            ),
        }
    }
    store
        .call(crate::store::Mode::Write, move |tx| {
            crate::store::ops::replace_security_groups(tx, &valid)
        })
        .await
        .map_err(|e| format!("storing them: {e}"))
}

/// Syncs the security groups from Cloud Controller now and then every `every` until
/// `shutdown` turns true (CF's `policy-server-asg-syncer`; a failed round is logged and the
/// stored groups stay as they were).
pub fn spawn_asg_sync(
    store: crate::store::Store,
    cc: std::sync::Arc<crate::cc::CloudController>,
    every: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    spawn_every(every, true, shutdown, move || {
        let (store, cc) = (store.clone(), cc.clone());
        async move {
            match sync_security_groups(&store, &cc).await {
                Ok((0, 0)) => {}
                Ok((w, d)) => tracing::info!(
                    "security groups from Cloud Controller: {w} written, {d} deleted"
                ),
                Err(e) => tracing::warn!("syncing security groups from Cloud Controller: {e}"),
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
