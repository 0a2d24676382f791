//! The cell's side of the control plane: the lease, the change feed and instance reports.
//! Nothing here can open the dataplane: when the control plane is unreachable the cell keeps the
//! tables it has (never fails open) and resynchronises when it returns.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tapestry_policy::client::InternalClient;
use tapestry_policy::model::{Instance, Lease};

use super::state::StateDir;
use super::Cell;

const LEASE_FILE: &str = "lease.json";
/// Long-poll wait per feed request.
const FEED_WAIT: Duration = Duration::from_secs(25);

/// The lease a cell runs with.
pub struct CellLease {
    pub lease: Lease,
    pub subnet: ipnet::Ipv4Net,
}

/// How the connection to the control plane is doing, for `tapestry cell status`.
#[derive(Default)]
pub struct ControlStatus {
    pub connected: bool,
    pub last_error: Option<String>,
    pub last_sync: Option<Instant>,
    pub feed_updates: u64,
    /// The newest feed version the control plane announced (what the cell should be at).
    pub announced_version: u64,
}

impl ControlStatus {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "state": if self.connected { "connected" } else { "disconnected" },
            "last_error": self.last_error,
            "last_sync_ms_ago": self.last_sync.map(|t| t.elapsed().as_millis() as u64),
            "feed_updates": self.feed_updates,
        })
    }
}

pub fn connect(control: &str, credentials: &Path) -> Result<InternalClient> {
    if !control.starts_with("https://") {
        bail!("--control {control}: the internal API is mutual TLS, use https://HOST:PORT");
    }
    InternalClient::new(control, credentials)
        .with_context(|| format!("setting up the mutual-TLS client for {control}"))
}

/// Acquires this cell's lease. If the control plane cannot be reached, a lease persisted by an
/// earlier run for the same underlay IP is used so the cell keeps working; without one it keeps
/// trying.
pub async fn obtain_lease(
    client: &InternalClient,
    state: &StateDir,
    underlay_ip: Ipv4Addr,
) -> Result<CellLease> {
    let saved: Option<Lease> = state.load(LEASE_FILE)?;
    let saved = saved.filter(|l| l.underlay_ip == underlay_ip);
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match client.acquire_lease(underlay_ip).await {
            Ok(lease) => {
                if let Some(old) = &saved {
                    if old.overlay_subnet != lease.overlay_subnet {
                        tracing::warn!(old = %old.overlay_subnet, new = %lease.overlay_subnet,
                            "the control plane gave this cell a different subnet than before");
                    }
                }
                state.store(LEASE_FILE, &lease)?;
                let subnet = lease.overlay_subnet;
                return Ok(CellLease { lease, subnet });
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if msg.contains("no lease available") {
                    bail!("the control plane has no subnet left for this cell: {msg}");
                }
                if let Some(old) = &saved {
                    if start.elapsed() > Duration::from_secs(3) {
                        tracing::warn!(
                            "control plane unreachable ({msg}); running with the saved lease {}",
                            old.overlay_subnet
                        );
                        return Ok(CellLease {
                            lease: old.clone(),
                            subnet: old.overlay_subnet,
                        });
                    }
                }
                tracing::warn!("acquiring a lease: {msg}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Cell {
    /// The instances to report: one per attachment, under
    /// [`super::state::Containers::instance_handle`].
    fn instances(&self) -> Vec<Instance> {
        let inner = self.lock();
        inner
            .containers
            .containers
            .values()
            .map(|c| Instance {
                cell: self.config.underlay_ip,
                handle: inner.containers.instance_handle(c),
                app_id: c.app_id.clone(),
                space_id: c.space_id.clone(),
                org_id: c.org_id.clone(),
                instance_index: c.instance_index,
                ip: c.ip,
            })
            .collect()
    }

    fn set_control(&self, result: Result<(), String>) {
        let mut inner = self.lock();
        match result {
            Ok(()) => {
                inner.control.connected = true;
                inner.control.last_error = None;
                inner.control.last_sync = Some(Instant::now());
            }
            Err(e) => {
                inner.control.connected = false;
                inner.control.last_error = Some(e);
            }
        }
    }
}

/// Runs forever: the feed loop, instance reports and lease renewal.
pub async fn run(cell: Arc<Cell>, client: InternalClient, lease: CellLease) -> Result<()> {
    let client = Arc::new(client);
    tokio::spawn(report_instances(cell.clone(), client.clone()));
    tokio::spawn(renew_lease(cell.clone(), client.clone(), lease.lease));
    tokio::spawn(super::identity::run(cell.clone()));
    follow_feed(cell, client).await
}

async fn follow_feed(cell: Arc<Cell>, client: Arc<InternalClient>) -> Result<()> {
    let mut delay = Duration::from_millis(50);
    let mut was_down = false;
    loop {
        let since = cell.lock().view.version();
        match client.feed(cell.config.underlay_ip, since, FEED_WAIT).await {
            Ok(resp) => {
                delay = Duration::from_millis(50);
                if was_down {
                    // Reconnected: the control plane may have lost our instances.
                    cell.instances_dirty.notify_one();
                    was_down = false;
                }
                let mut inner = cell.lock();
                inner.control.announced_version = inner.control.announced_version.max(resp.version);
                let applied = inner.view.apply(resp, &cell.state);
                match applied {
                    Ok(true) => {
                        inner.control.feed_updates += 1;
                        if let Err(e) = cell.publish(&inner) {
                            tracing::error!("publishing tables: {e:#}");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!("applying the feed: {e:#}"),
                }
                drop(inner);
                cell.set_control(Ok(()));
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if !was_down {
                    tracing::warn!("feed: {msg}; keeping the last known tables and retrying");
                }
                was_down = true;
                cell.set_control(Err(msg));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Sends this cell's whole instance set whenever it changed or the control plane came back.
async fn report_instances(cell: Arc<Cell>, client: Arc<InternalClient>) {
    loop {
        cell.instances_dirty.notified().await;
        let mut delay = Duration::from_millis(50);
        loop {
            let set = cell.instances();
            match client.sync_instances(cell.config.underlay_ip, set).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!("reporting instances: {e:#}; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

async fn renew_lease(cell: Arc<Cell>, client: Arc<InternalClient>, mut lease: Lease) {
    loop {
        // Renew at a third of the remaining lifetime, at least every hour.
        let wait = lease
            .expires_at
            .map(|t| ((t - now_secs()).max(30) / 3) as u64)
            .unwrap_or(3600)
            .min(3600);
        tokio::time::sleep(Duration::from_secs(wait)).await;
        match client.renew_lease(&lease).await {
            Ok(l) if l.overlay_subnet == cell.config.subnet => {
                let _ = cell.state.store(LEASE_FILE, &l);
                lease = l;
            }
            Ok(l) => {
                tracing::error!(got = %l.overlay_subnet, "lease renewal returned a different subnet")
            }
            Err(e) => tracing::warn!("renewing the lease: {e:#}"),
        }
    }
}
