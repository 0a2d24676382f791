//! `tapestry cell --metrics-listen ADDR`: Prometheus metrics (OpenMetrics text) at `/metrics`,
//! read at each scrape from the switch's atomics (per-port packets and bytes, drops by reason,
//! per-policy hits), the connection tracker and the feed. The switch stays free of HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use tapestry_switch::PortStats;

use super::Cell;

type Labels = Vec<(String, String)>;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn counters(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

impl Cell {
    /// Every metric of the cell, as one scrape answers it.
    pub fn metrics_text(&self) -> String {
        let mut reg = Registry::default();
        let c = self.counters.snapshot();
        let snap = self.tables.load();
        let port_labels = |id: tapestry_switch::PortId| {
            let l = snap.label(id).cloned().unwrap_or_default();
            labels(&[
                ("port", id.0.to_string()),
                ("handle", l.handle),
                ("app", l.app_id),
            ])
        };
        type Get = fn(&PortStats) -> u64;
        let per_port: [(&str, &str, Get); 6] = [
            (
                "tapestry_cell_port_rx_packets",
                "Frames read from a container's port",
                |s| s.rx_packets,
            ),
            (
                "tapestry_cell_port_rx_bytes",
                "Bytes read from a container's port",
                |s| s.rx_bytes,
            ),
            (
                "tapestry_cell_port_tx_packets",
                "Frames written to a container's port",
                |s| s.tx_packets,
            ),
            (
                "tapestry_cell_port_tx_bytes",
                "Bytes written to a container's port",
                |s| s.tx_bytes,
            ),
            (
                "tapestry_cell_port_drop_packets",
                "Frames from or to a container's port that the pipeline dropped",
                |s| s.drop_packets,
            ),
            (
                "tapestry_cell_port_drop_bytes",
                "Bytes of frames from or to a container's port that the pipeline dropped",
                |s| s.drop_bytes,
            ),
        ];
        for (name, help, get) in per_port {
            let f = counters(&mut reg, name, help);
            for (id, s) in &c.ports {
                // Ports the tables no longer hold are left out.
                if snap.port(*id).is_some() {
                    f.get_or_create(&port_labels(*id)).inc_by(get(s));
                }
            }
        }
        let drops = counters(
            &mut reg,
            "tapestry_cell_drops",
            "Frames the pipeline or the local stack dropped, by reason",
        );
        for (reason, n) in &c.drops {
            drops
                .get_or_create(&labels(&[("reason", reason.to_string())]))
                .inc_by(*n);
        }
        let t = &c.totals;
        for (name, help, v) in [
            (
                "tapestry_cell_underlay_rx_packets",
                "VXLAN datagrams received",
                t.underlay_rx_packets,
            ),
            (
                "tapestry_cell_underlay_rx_bytes",
                "VXLAN payload bytes received",
                t.underlay_rx_bytes,
            ),
            (
                "tapestry_cell_underlay_tx_packets",
                "VXLAN datagrams sent",
                t.underlay_tx_packets,
            ),
            (
                "tapestry_cell_underlay_tx_bytes",
                "VXLAN payload bytes sent",
                t.underlay_tx_bytes,
            ),
            (
                "tapestry_cell_conntrack_evictions",
                "Connections removed from the full table to make room",
                t.conntrack_evictions,
            ),
            (
                "tapestry_cell_conntrack_refused",
                "New flows refused because the connection table was full",
                self.conntrack.refused(),
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(v);
            reg.register(name, help, c);
        }
        gauge(
            &mut reg,
            "tapestry_cell_conntrack_entries",
            "Connections tracked now",
            self.conntrack.len() as i64,
        );
        gauge(
            &mut reg,
            "tapestry_cell_conntrack_capacity",
            "Most connections tracked at once (--conntrack-max)",
            self.conntrack.capacity() as i64,
        );
        let hits = counters(
            &mut reg,
            "tapestry_cell_policy_hits",
            "New flows admitted at this cell's containers, by the policy (source tag, destination tag, protocol, merged port range) that admitted them",
        );
        for (h, n) in self.counters.policy_hits() {
            let app = |tag| snap.app_of_tag(tag).unwrap_or("").to_string();
            hits.get_or_create(&labels(&[
                ("source_tag", h.src_tag.to_string()),
                ("source_app", app(h.src_tag)),
                ("destination_tag", h.dst_tag.to_string()),
                ("destination_app", app(h.dst_tag)),
                ("protocol", h.protocol.to_string()),
                ("ports", format!("{}-{}", h.start, h.end)),
            ]))
            .inc_by(n);
        }
        let inner = self.lock();
        let version = inner.view.version().unwrap_or(0);
        gauge(
            &mut reg,
            "tapestry_cell_feed_version",
            "The change-feed version the cell's tables are built from",
            version as i64,
        );
        gauge(
            &mut reg,
            "tapestry_cell_feed_version_lag",
            "Feed versions the control plane announced that the cell has not applied",
            inner.control.announced_version.saturating_sub(version) as i64,
        );
        gauge(
            &mut reg,
            "tapestry_cell_control_connected",
            "1 while the last feed request reached the control plane",
            i64::from(inner.control.connected),
        );
        if let Some(t) = inner.control.last_sync {
            gauge(
                &mut reg,
                "tapestry_cell_feed_last_sync_age_seconds",
                "Seconds since the feed last answered",
                t.elapsed().as_secs() as i64,
            );
        }
        drop(inner);
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}

/// Serves `/metrics` on `addr` with `text` (on the current tokio runtime). The listener is
/// bound before this returns, so a bad address fails the start.
pub async fn serve(
    addr: SocketAddr,
    text: Arc<dyn Fn() -> String + Send + Sync>,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}: binding"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = text.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text()) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    });
    tracing::info!("metrics at http://{bound}/metrics");
    Ok(bound)
}
