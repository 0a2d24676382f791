//! The cell's copy of the control plane's state (the feed view), persisted so a restarted cell
//! enforces what it last knew even when the control plane is unreachable, and the translation
//! of that view plus the attached containers into the switch's tables.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result};
use tapestry_policy::feed::View;
use tapestry_policy::model::{parse_tag, FeedResponse};
use tapestry_switch::{PolicyRule, PortConfig, PortId, Proto, RemoteCell, Snapshot};

use super::attach::container_mac;
use super::state::{port_id_for, Containers, StateDir};
use super::CellConfig;

const VIEW_FILE: &str = "view.json";

pub struct CellView {
    pub(super) view: View,
    tags: HashMap<String, u16>,
}

impl CellView {
    pub fn load(state: &StateDir) -> Result<CellView> {
        let view: View = state.load(VIEW_FILE)?.unwrap_or_default();
        Ok(Self::from_view(view))
    }

    /// The cell's view of a feed view (its app tags indexed), without persisting anything.
    pub fn from_view(view: View) -> CellView {
        let tags = view
            .tags()
            .filter_map(|t| parse_tag(&t.tag).map(|n| (t.id.clone(), n)))
            .collect();
        CellView { view, tags }
    }

    /// Applies a feed response and persists the result before it is enforced.
    pub fn apply(&mut self, resp: FeedResponse, state: &StateDir) -> Result<bool> {
        let before = self.view.version();
        let had_changes = resp.snapshot.is_some() || !resp.changes.is_empty();
        let mut next = self.view.clone();
        next.apply(resp);
        if !had_changes && next.version() == before {
            return Ok(false);
        }
        state
            .store(VIEW_FILE, &next)
            .context("persisting the feed view")?;
        *self = Self::from_view(next);
        Ok(true)
    }

    pub fn version(&self) -> Option<u64> {
        self.view.version()
    }

    pub fn tag_of(&self, app: &str) -> Option<u16> {
        self.tags.get(app).copied()
    }

    /// Every tagged app, by tag (for traces and the flow log).
    pub fn apps_by_tag(&self) -> tapestry_switch::FxHashMap<u16, String> {
        self.tags.iter().map(|(app, &t)| (t, app.clone())).collect()
    }
}

fn subnet_tuple(n: &ipnet::Ipv4Net) -> (Ipv4Addr, u8) {
    (n.network(), n.prefix_len())
}

/// The switch tables for this cell: its ports (with their apps' tags), every other cell's
/// subnet, and the policies whose destination is an app with an instance here.
pub fn build_snapshot(
    config: &CellConfig,
    view: &CellView,
    containers: &Containers,
) -> Result<Snapshot> {
    let base = config.subnet.network();
    let ports: Vec<PortConfig> = containers
        .containers
        .values()
        .filter(|c| config.subnet.contains(&c.ip))
        .map(|c| PortConfig {
            id: PortId(port_id_for(base, c.ip)),
            mac: container_mac(c.ip),
            ip: c.ip,
            tag: view.tag_of(&c.app_id).unwrap_or(0),
        })
        .collect();
    let remotes: Vec<RemoteCell> = view
        .view
        .leases()
        .filter(|l| l.underlay_ip != config.underlay_ip && l.overlay_subnet != config.subnet)
        .map(|l| RemoteCell {
            subnet: subnet_tuple(&l.overlay_subnet),
            underlay: SocketAddrV4::new(l.underlay_ip, config.vtep_port),
        })
        .collect();
    let local_apps: HashSet<&str> = containers
        .containers
        .values()
        .map(|c| c.app_id.as_str())
        .collect();
    let policies: Vec<PolicyRule> = view
        .view
        .policies()
        .filter(|p| local_apps.contains(p.destination.id.as_str()))
        .filter_map(|p| {
            let proto = match p.destination.protocol.as_str() {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                _ => return None,
            };
            Some(PolicyRule {
                src_tag: view.tag_of(&p.source.id)?,
                dst_tag: view.tag_of(&p.destination.id)?,
                proto,
                start: p.destination.ports.start,
                end: p.destination.ports.end,
            })
        })
        .collect();
    let cfg = tapestry_switch::CellConfig {
        underlay_ip: config.underlay_ip,
        vtep_port: config.vtep_port,
        vni: 1,
        overlay_network: subnet_tuple(&config.overlay_network),
        subnet: subnet_tuple(&config.subnet),
    };
    let egress = super::egress::build(config, view.view.asgs(), containers)?;
    let labels = containers
        .containers
        .values()
        .filter(|c| config.subnet.contains(&c.ip))
        .map(|c| {
            (
                PortId(port_id_for(base, c.ip)),
                tapestry_switch::PortLabel {
                    handle: c.handle.clone(),
                    app_id: c.app_id.clone(),
                    space_id: c.space_id.clone(),
                    app_port: c.app_port.unwrap_or(0),
                    tls_client_auth: c.tls_client_auth,
                },
            )
        })
        .collect();
    Snapshot::new(cfg, ports, remotes, policies)
        .map(|s| {
            s.with_egress(egress)
                .with_labels(labels)
                .with_apps(view.apps_by_tag())
                .with_dns(super::dns::table(view, &config.internal_domains))
        })
        .map_err(|e| anyhow::anyhow!("building the switch tables: {e}"))
}
