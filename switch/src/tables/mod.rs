//! The switch's tables: an immutable, indexed [`Snapshot`] of ports, routes, policies and the
//! compiled ASGs ([`asg`]) that the control side builds and swaps in ([`Tables`]), and the
//! shared connection tracker.

pub mod asg;
pub mod conntrack;
pub mod flow_state;
pub mod policy;
pub mod ports;
pub mod routes;

use std::hash::{BuildHasherDefault, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::wire::ethernet::Mac;
pub use policy::PolicyTable;
pub use ports::Port;
pub use routes::{Route, RouteTable};

/// A switch port (one container interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u32);

/// An IPv4 prefix as `(address, prefix length)`.
pub type Prefix = (Ipv4Addr, u8);

/// This cell's place in the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellConfig {
    pub underlay_ip: Ipv4Addr,
    /// UDP port of the VTEP (4789).
    pub vtep_port: u16,
    /// VXLAN network identifier (1, as Silk).
    pub vni: u32,
    /// The whole overlay, e.g. 10.255.0.0/16.
    pub overlay_network: Prefix,
    /// This cell's lease, e.g. 10.255.7.0/24; its `.0` is the VTEP address.
    pub subnet: Prefix,
}

impl CellConfig {
    /// The VTEP IP: the base address of the cell's subnet.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        network(self.subnet)
    }
}

/// A container attached to the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortConfig {
    pub id: PortId,
    /// `ee:ee:<ip bytes>`.
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// The app's GBP tag; 0 = the app has no tag.
    pub tag: u16,
}

/// Another cell of the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteCell {
    pub subnet: Prefix,
    pub underlay: SocketAddrV4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn ip_proto(self) -> u8 {
        match self {
            Proto::Tcp => crate::wire::ipv4::PROTO_TCP,
            Proto::Udp => crate::wire::ipv4::PROTO_UDP,
        }
    }

    pub fn from_ip_proto(p: u8) -> Option<Proto> {
        match p {
            crate::wire::ipv4::PROTO_TCP => Some(Proto::Tcp),
            crate::wire::ipv4::PROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// "Apps tagged `src_tag` may reach apps tagged `dst_tag` on `proto` ports `start..=end`."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyRule {
    pub src_tag: u16,
    pub dst_tag: u16,
    pub proto: Proto,
    pub start: u16,
    pub end: u16,
}

/// Why a snapshot could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("{what}: prefix length {prefix} is not in 0..=32")]
    InvalidPrefix { what: &'static str, prefix: u8 },
    #[error("vni {0} does not fit in 24 bits")]
    InvalidVni(u32),
    #[error("cell subnet {}/{} is not inside the overlay network {}/{}", .subnet.0, .subnet.1, .overlay.0, .overlay.1)]
    SubnetOutsideOverlay { subnet: Prefix, overlay: Prefix },
    #[error("port {port}: ip {ip} is not inside the cell subnet")]
    PortOutsideSubnet { port: u32, ip: Ipv4Addr },
    #[error("port {port}: ip {ip} is the VTEP or broadcast address of the cell subnet")]
    PortReservedIp { port: u32, ip: Ipv4Addr },
    #[error("port id {0} appears twice")]
    DuplicatePortId(u32),
    #[error("ip {0} is assigned to two ports")]
    DuplicatePortIp(Ipv4Addr),
    #[error("remote cell {}/{}: subnet must be inside the overlay and not overlap this cell's subnet", .0.0, .0.1)]
    InvalidRemoteSubnet(Prefix),
    #[error("remote cell subnet {}/{} appears twice", .0.0, .0.1)]
    DuplicateRemote(Prefix),
    #[error("policy {src_tag:04x}->{dst_tag:04x}: port range {start}-{end} is invalid (need 1 <= start <= end)")]
    InvalidPortRange {
        src_tag: u16,
        dst_tag: u16,
        start: u16,
        end: u16,
    },
}

/// Netmask for a prefix length (`prefix <= 32`).
pub fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix.min(32) as u32)
    }
}

/// The network address of a prefix.
pub fn network(p: Prefix) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(p.0) & mask(p.1))
}

/// True if `ip` is inside `p`.
pub fn contains(p: Prefix, ip: Ipv4Addr) -> bool {
    (u32::from(ip) ^ u32::from(p.0)) & mask(p.1) == 0
}

/// `ee:ee:<ip bytes>`: container and VTEP MACs, as Silk assigns them.
pub fn container_mac(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    [0xee, 0xee, o[0], o[1], o[2], o[3]]
}

/// `aa:aa:<ip bytes>`: the gateway MAC a port sees (answers its ARP, sources its frames).
pub fn gateway_mac(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    [0xaa, 0xaa, o[0], o[1], o[2], o[3]]
}

/// A small, fast hasher for keys that come from the control plane (FxHash).
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64)
    }
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64)
    }
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64)
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i)
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64)
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxHashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;

/// An immutable, indexed view of everything the pipeline needs.
#[derive(Debug)]
pub struct Snapshot {
    config: CellConfig,
    generation: u64,
    vtep_mac: Mac,
    ports: ports::PortTable,
    routes: RouteTable,
    policy: PolicyTable,
    egress: asg::Egress,
    labels: FxHashMap<PortId, PortLabel>,
    /// App ids by tag, for traces and flow logs (the switch decides nothing by them).
    apps: FxHashMap<u16, String>,
    dns: crate::stack::dns::DnsTable,
}

/// Who a port belongs to, for logs (the switch decides nothing by it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortLabel {
    pub handle: String,
    pub app_id: String,
    pub space_id: String,
    /// The app's port behind the TLS terminator on 61443 (0: the default, 8080).
    pub app_port: u16,
    /// 61443 requires a client certificate from the instance identity CA.
    pub tls_client_auth: bool,
}

impl Snapshot {
    pub fn new(
        config: CellConfig,
        ports: Vec<PortConfig>,
        remotes: Vec<RemoteCell>,
        policies: Vec<PolicyRule>,
    ) -> Result<Snapshot, TableError> {
        if config.overlay_network.1 > 32 {
            return Err(TableError::InvalidPrefix {
                what: "overlay network",
                prefix: config.overlay_network.1,
            });
        }
        if config.subnet.1 > 32 {
            return Err(TableError::InvalidPrefix {
                what: "cell subnet",
                prefix: config.subnet.1,
            });
        }
        if config.vni >= 1 << 24 {
            return Err(TableError::InvalidVni(config.vni));
        }
        if config.subnet.1 < config.overlay_network.1
            || !contains(config.overlay_network, config.subnet.0)
        {
            return Err(TableError::SubnetOutsideOverlay {
                subnet: config.subnet,
                overlay: config.overlay_network,
            });
        }
        let ports = ports::PortTable::new(&config, ports)?;
        let routes = RouteTable::new(&config, remotes)?;
        let policy = PolicyTable::new(&policies)?;
        Ok(Snapshot {
            vtep_mac: container_mac(config.vtep_ip()),
            config,
            generation: 0,
            ports,
            routes,
            policy,
            egress: asg::Egress::deny_only(asg::DenyNetworks::default()),
            labels: FxHashMap::default(),
            apps: FxHashMap::default(),
            dns: Default::default(),
        })
    }

    /// The same snapshot with these ASG rule sets and deny-networks (without: the default
    /// deny-networks and no rules, so every egress flow is denied).
    pub fn with_egress(mut self, egress: asg::Egress) -> Snapshot {
        self.egress = egress;
        self
    }

    /// The ASG side: deny-networks and each port's compiled rules.
    /// The same snapshot with who each port belongs to.
    pub fn with_labels(mut self, labels: FxHashMap<PortId, PortLabel>) -> Snapshot {
        self.labels = labels;
        self
    }

    /// The same snapshot with the app id of each tag (for traces and flow logs).
    pub fn with_apps(mut self, apps: FxHashMap<u16, String>) -> Snapshot {
        self.apps = apps;
        self
    }

    /// The app a tag stands for, if the snapshot knows it.
    pub fn app_of_tag(&self, tag: u16) -> Option<&str> {
        self.apps.get(&tag).map(String::as_str)
    }

    /// The same snapshot with the internal DNS names the cell answers.
    pub fn with_dns(mut self, dns: crate::stack::dns::DnsTable) -> Snapshot {
        self.dns = dns;
        self
    }

    pub fn dns(&self) -> &crate::stack::dns::DnsTable {
        &self.dns
    }

    pub fn label(&self, port: PortId) -> Option<&PortLabel> {
        self.labels.get(&port)
    }

    pub fn egress(&self) -> &asg::Egress {
        &self.egress
    }

    /// Whether `port` may start `flow` to a destination outside the overlay: overlay
    /// destinations are [`asg::EgressVerdict::Overlay`] (never an ASG decision), then
    /// deny-networks, then the port's ASGs. No allocation.
    pub fn egress_decision(&self, port: PortId, flow: &asg::Flow) -> asg::EgressVerdict<'_> {
        self.egress.decide(self.config.overlay_network, port, flow)
    }

    pub fn config(&self) -> &CellConfig {
        &self.config
    }
    /// Bumped by [`Tables`] on every store; used to re-check flows admitted under older policy.
    pub fn generation(&self) -> u64 {
        self.generation
    }
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.config.vtep_ip()
    }
    pub fn vtep_mac(&self) -> Mac {
        self.vtep_mac
    }
    pub fn port(&self, id: PortId) -> Option<&Port> {
        self.ports.by_id(id)
    }
    pub fn port_by_ip(&self, ip: Ipv4Addr) -> Option<&Port> {
        self.ports.by_ip(ip)
    }
    pub fn ports(&self) -> impl Iterator<Item = &Port> {
        self.ports.iter()
    }
    pub fn route(&self, dst: Ipv4Addr) -> Route<'_> {
        self.routes.lookup(&self.config, dst)
    }
    /// The remote cells whose underlay address is `ip`.
    pub fn remotes_at(&self, ip: Ipv4Addr) -> &[RemoteCell] {
        self.routes.by_underlay(ip)
    }
    pub fn policy_allows(&self, src_tag: u16, dst_tag: u16, proto: Proto, port: u16) -> bool {
        self.policy.allows(src_tag, dst_tag, proto, port)
    }
    /// The merged port range of the policies that admit (`src_tag`, `dst_tag`, `proto`,
    /// `port`), if any.
    pub fn policy_match(
        &self,
        src_tag: u16,
        dst_tag: u16,
        proto: Proto,
        port: u16,
    ) -> Option<(u16, u16)> {
        self.policy.matching(src_tag, dst_tag, proto, port)
    }
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }
    pub fn remote_count(&self) -> usize {
        self.routes.len()
    }
    pub fn policy_count(&self) -> usize {
        self.policy.len()
    }
}

/// The current snapshot, swapped atomically; readers never wait.
#[derive(Debug)]
pub struct Tables {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
}

impl Tables {
    pub fn new(mut snapshot: Snapshot) -> Tables {
        snapshot.generation = 1;
        Tables {
            current: ArcSwap::from_pointee(snapshot),
            generation: AtomicU64::new(1),
        }
    }

    /// Publishes a new snapshot with the next generation number.
    pub fn store(&self, mut snapshot: Snapshot) {
        snapshot.generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.current.store(Arc::new(snapshot));
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CellConfig {
        CellConfig {
            underlay_ip: Ipv4Addr::new(192, 168, 0, 1),
            vtep_port: 4789,
            vni: 1,
            overlay_network: (Ipv4Addr::new(10, 255, 0, 0), 16),
            subnet: (Ipv4Addr::new(10, 255, 1, 0), 24),
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(mask(0), 0);
        assert_eq!(mask(24), 0xffff_ff00);
        assert_eq!(mask(32), u32::MAX);
        assert!(contains(
            (Ipv4Addr::new(10, 255, 1, 0), 24),
            Ipv4Addr::new(10, 255, 1, 77)
        ));
        assert!(!contains(
            (Ipv4Addr::new(10, 255, 1, 0), 24),
            Ipv4Addr::new(10, 255, 2, 1)
        ));
        assert_eq!(cfg().vtep_ip(), Ipv4Addr::new(10, 255, 1, 0));
        assert_eq!(
            container_mac(Ipv4Addr::new(10, 255, 1, 2)),
            [0xee, 0xee, 10, 255, 1, 2]
        );
        assert_eq!(
            gateway_mac(Ipv4Addr::new(10, 255, 1, 2)),
            [0xaa, 0xaa, 10, 255, 1, 2]
        );
    }

    #[test]
    fn validation() {
        let mut c = cfg();
        c.subnet = (Ipv4Addr::new(10, 1, 0, 0), 24);
        assert!(matches!(
            Snapshot::new(c, vec![], vec![], vec![]),
            Err(TableError::SubnetOutsideOverlay { .. })
        ));
        let mut c = cfg();
        c.vni = 1 << 24;
        assert!(matches!(
            Snapshot::new(c, vec![], vec![], vec![]),
            Err(TableError::InvalidVni(_))
        ));
        let mut c = cfg();
        c.subnet.1 = 33;
        assert!(matches!(
            Snapshot::new(c, vec![], vec![], vec![]),
            Err(TableError::InvalidPrefix { .. })
        ));
    }

    #[test]
    fn generations() {
        let t = Tables::new(Snapshot::new(cfg(), vec![], vec![], vec![]).unwrap());
        assert_eq!(t.load().generation(), 1);
        t.store(Snapshot::new(cfg(), vec![], vec![], vec![]).unwrap());
        assert_eq!(t.load().generation(), 2);
        assert_eq!(t.generation(), 2);
    }
}
