//! The container-to-container flow log, like CF's `iptables_c2c_logging`: one JSON line per new
//! flow admitted or denied at a local container's ingress, in `STATE_DIR/flows.log` (and the
//! cell's log, target `flows`), rate-limited by [`RateLimitedLog`]. Switched on and off at run
//! time (`tapestry cell flow-log on|off`).
//!
//! The switch reports new flows as [`FlowEvent`]s (sans-IO); each worker collects them after a
//! batch of packets and hands them to the writer thread over a bounded channel. A full channel
//! never blocks a worker: the batch is counted as lost and the count written with the next line.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use tapestry_switch::pipeline::events::FlowEvent;
use tapestry_switch::{Snapshot, Tables};

use super::ratelog::{timestamp, RateLimitedLog, FLOWS};

/// Batches waiting for the writer at most.
const QUEUE: usize = 256;

/// Batch of events from one worker, and how many it lost before them.
type Batch = (Vec<FlowEvent>, u64);

/// What the workers and the control side hold: the switch and the queue to the writer.
#[derive(Clone)]
pub struct FlowLog {
    on: Arc<AtomicBool>,
    tx: Sender<Batch>,
    /// Events in batches the writer's queue had no room for.
    lost: Arc<AtomicU64>,
}

impl FlowLog {
    /// Opens (appends to) `path` and starts the writer thread.
    pub fn start(path: &Path, tables: Arc<Tables>, on: bool) -> Result<FlowLog> {
        let log = RateLimitedLog::open(path, FLOWS)?;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let l = lost.clone();
        std::thread::Builder::new()
            .name("flow-log".into())
            .spawn(move || write_loop(rx, log, tables, l))
            .context("spawning the flow log thread")?;
        Ok(FlowLog {
            on: Arc::new(AtomicBool::new(on)),
            tx,
            lost,
        })
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
        tracing::info!("flow log {}", if on { "on" } else { "off" });
    }

    /// Hands a worker's events to the writer without waiting.
    pub fn send(&self, events: Vec<FlowEvent>, lost: u64) {
        match self.tx.try_send((events, lost)) {
            Ok(()) => {}
            Err(TrySendError::Full((ev, l)) | TrySendError::Disconnected((ev, l))) => {
                self.lost.fetch_add(ev.len() as u64 + l, Ordering::Relaxed);
            }
        }
    }
}

fn write_loop(
    rx: Receiver<Batch>,
    mut log: RateLimitedLog,
    tables: Arc<Tables>,
    lost: Arc<AtomicU64>,
) {
    for (events, l) in rx {
        log.count_suppressed(l + lost.swap(0, Ordering::Relaxed));
        let snap = tables.load_full();
        for e in &events {
            log.write(|| line(&snap, e));
        }
    }
}

/// One log line.
pub fn line(snap: &Snapshot, e: &FlowEvent) -> serde_json::Value {
    let label = snap.label(e.port).cloned().unwrap_or_default();
    let mut v = serde_json::json!({
        "timestamp": timestamp(),
        "event": if e.denied.is_some() { "c2c_denied" } else { "c2c_allowed" },
        "verdict": if e.denied.is_some() { "denied" } else { "allowed" },
        "protocol": e.protocol(),
        "source_app": snap.app_of_tag(e.src_tag),
        "source_tag": e.src_tag,
        "source_ip": e.src.to_string(),
        "source_port": e.sport,
        "destination_app": label.app_id,
        "destination_container": label.handle,
        "destination_tag": e.dst_tag,
        "destination_ip": e.dst.to_string(),
        "destination_port": e.dport,
    });
    if let Some(r) = e.denied {
        v["reason"] = r.as_str().into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tapestry_switch::{CellConfig, DropReason, FxHashMap, PortConfig, PortId, PortLabel};

    fn snap() -> Snapshot {
        let config = CellConfig {
            underlay_ip: Ipv4Addr::new(127, 0, 0, 1),
            vtep_port: 4789,
            vni: 1,
            overlay_network: (Ipv4Addr::new(10, 255, 0, 0), 16),
            subnet: (Ipv4Addr::new(10, 255, 1, 0), 24),
        };
        let port = PortConfig {
            id: PortId(2),
            mac: [0xee, 0xee, 10, 255, 1, 2],
            ip: Ipv4Addr::new(10, 255, 1, 2),
            tag: 2,
        };
        let mut labels = FxHashMap::default();
        labels.insert(
            PortId(2),
            PortLabel {
                handle: "h-server".into(),
                app_id: "server-app".into(),
                ..PortLabel::default()
            },
        );
        let mut apps = FxHashMap::default();
        apps.insert(1, "client-app".to_string());
        apps.insert(2, "server-app".to_string());
        Snapshot::new(config, vec![port], vec![], vec![])
            .unwrap()
            .with_labels(labels)
            .with_apps(apps)
    }

    #[test]
    fn lines_carry_every_field() {
        let s = snap();
        let mut e = FlowEvent {
            port: PortId(2),
            src_tag: 1,
            dst_tag: 2,
            proto: 6,
            src: Ipv4Addr::new(10, 255, 2, 3),
            dst: Ipv4Addr::new(10, 255, 1, 2),
            sport: 40000,
            dport: 8080,
            denied: None,
        };
        let v = line(&s, &e);
        assert_eq!(v["event"], "c2c_allowed");
        assert_eq!(v["verdict"], "allowed");
        assert_eq!(v["protocol"], "tcp");
        assert_eq!(v["source_app"], "client-app");
        assert_eq!(v["source_tag"], 1);
        assert_eq!(v["source_ip"], "10.255.2.3");
        assert_eq!(v["source_port"], 40000);
        assert_eq!(v["destination_app"], "server-app");
        assert_eq!(v["destination_container"], "h-server");
        assert_eq!(v["destination_tag"], 2);
        assert_eq!(v["destination_ip"], "10.255.1.2");
        assert_eq!(v["destination_port"], 8080);
        assert!(v.get("reason").is_none());
        assert!(v["timestamp"].as_f64().unwrap() > 0.0);
        e.denied = Some(DropReason::PolicyDenied);
        e.src_tag = 9;
        e.proto = 17;
        let v = line(&s, &e);
        assert_eq!(v["event"], "c2c_denied");
        assert_eq!(v["verdict"], "denied");
        assert_eq!(v["reason"], "policy_denied");
        assert_eq!(v["protocol"], "udp");
        assert!(v["source_app"].is_null(), "tag 9 has no app: {v}");
    }
}
