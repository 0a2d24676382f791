//! Counters: lock-free atomics, per drop reason, per port and for the underlay.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::tables::PortId;

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why the pipeline dropped a frame. The names are stable (shown by `tapestry cell status`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = Self::ALL.len();

            pub fn as_str(&self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    UnknownPort => "unknown_port", "The frame came from a port the tables do not know.";
    Truncated => "truncated", "Shorter than an Ethernet header.";
    SpoofedMac => "spoofed_mac", "Source MAC is not the port's MAC.";
    SpoofedIp => "spoofed_ip", "Source IP is not the port's IP.";
    ArpDropped => "arp_dropped", "ARP that is not a request from the port for another address.";
    Multicast => "multicast", "Broadcast or multicast frame that is not ARP.";
    UnsupportedEthertype => "unsupported_ethertype", "Neither IPv4 nor ARP (inner frames: not IPv4).";
    MalformedIpv4 => "malformed_ipv4", "Bad version, header length or total length.";
    BadIpChecksum => "bad_ip_checksum", "IPv4 header checksum mismatch.";
    TtlExceeded => "ttl_exceeded", "TTL would reach zero.";
    ToVtep => "to_vtep", "Addressed to a VTEP address (the subnet's .0).";
    NoSuchPort => "no_such_port", "In this cell's subnet, but no port has the address.";
    NoLease => "no_lease", "Inside the overlay, but no cell holds that subnet.";
    OutsideOverlay => "outside_overlay", "Outside the overlay, and the cell has no local stack to carry it.";
    AsgNoRule => "asg_no_rule", "Egress: no rule of the container's ASGs allows the new flow (default deny); answered with ICMP port unreachable.";
    AsgDenyNetworks => "asg_deny_networks", "Egress: the destination is in the cell's deny-networks; answered with ICMP port unreachable.";
    HostUnreachable => "host_unreachable", "Egress: the host could not reach the destination (refused or unreachable); answered with a RST or ICMP unreachable.";
    StackNoFlow => "stack_no_flow", "A TCP segment outside the overlay for no flow the local stack carries; answered with a RST.";
    StackFlowsFull => "stack_flows_full", "The local stack carries its most flows; the new one was refused.";
    StackQueueFull => "stack_queue_full", "The local stack's queue or a host socket's buffer was full.";
    GatewayPortClosed => "gateway_port_closed", "To a port of 169.254.0.1/169.254.0.2 that no service listens on.";
    NotLocal => "not_local", "From the underlay, but not addressed to this cell's subnet.";
    MalformedL4 => "malformed_l4", "TCP/UDP/ICMP header truncated or invalid.";
    BadL4Checksum => "bad_l4_checksum", "TCP or UDP checksum of a frame from the underlay is wrong (and not a partial one).";
    UnknownVtep => "unknown_vtep", "VXLAN from an underlay address that holds no lease.";
    MalformedVxlan => "malformed_vxlan", "VXLAN header truncated or without the I flag.";
    WrongVni => "wrong_vni", "VXLAN network identifier is not ours.";
    WrongVtepMac => "wrong_vtep_mac", "Inner destination MAC is not this cell's VTEP MAC.";
    SpoofedRemoteIp => "spoofed_remote_ip", "Inner source IP is not in the sending cell's subnet.";
    PolicyDenied => "policy_denied", "No policy admits the new flow (default deny).";
    IngressStep => "ingress_step", "An ingress step installed with Switch::set_ingress_step refused the new flow.";
    PolicyRevoked => "policy_revoked", "The policy that admitted the flow was removed.";
    IcmpDenied => "icmp_denied", "ICMP that is not an error message (echo is not a policy protocol).";
    IcmpUnrelated => "icmp_unrelated", "ICMP error whose embedded header matches no tracked flow.";
    ProtocolDenied => "protocol_denied", "IP protocol other than TCP, UDP and ICMP.";
    Fragment => "fragment", "Non-first fragment without an admitted first fragment.";
    ConntrackFull => "conntrack_full", "Connection table full; the new flow was refused.";
    FrameTooLarge => "frame_too_large", "No room to add the encapsulation.";
    BadOffload => "bad_offload", "virtio-net header with an unsupported GSO type or inconsistent offsets.";
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Port ids below this are counted in a flat array.
const FIXED_PORTS: usize = 1024;

#[derive(Debug, Default)]
struct PortCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drop_packets: AtomicU64,
    drop_bytes: AtomicU64,
}

/// One port's counters, read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drop_packets: u64,
    pub drop_bytes: u64,
}

/// Cell-wide totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drop_packets: u64,
    pub underlay_rx_packets: u64,
    pub underlay_rx_bytes: u64,
    pub underlay_tx_packets: u64,
    pub underlay_tx_bytes: u64,
    pub conntrack_entries: u64,
    pub conntrack_evictions: u64,
    /// Frames a port's device refused (write to the TAP failed).
    pub port_tx_errors: u64,
    /// Datagrams the underlay socket refused (sendmsg/sendmmsg failed).
    pub underlay_tx_errors: u64,
    /// Frames from the underlay whose inner TCP/UDP checksum arrived partial (a kernel VTEP's
    /// CHECKSUM_PARTIAL kept by a veth or bridge) and was completed.
    pub partial_checksums_completed: u64,
    /// Flows the local stack carries now (egress and net-in).
    pub stack_flows: u64,
    /// Flows the local stack has opened since the start.
    pub stack_flows_opened: u64,
}

/// Everything counted, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct CountersSnapshot {
    /// Every drop reason, in declaration order, with its count (zeros included).
    pub drops: Vec<(&'static str, u64)>,
    /// Ports sorted by id.
    pub ports: Vec<(PortId, PortStats)>,
    pub totals: Totals,
}

impl CountersSnapshot {
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(n, _)| *n == reason.as_str())
            .map_or(0, |(_, c)| *c)
    }

    pub fn port(&self, id: PortId) -> PortStats {
        self.ports
            .iter()
            .find(|(p, _)| *p == id)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    }
}

/// Shared counters; every method is a few relaxed atomic adds.
#[derive(Debug)]
pub struct Counters {
    drops: Vec<AtomicU64>,
    /// Ports with small ids (offsets in the cell subnet) in a flat array: no hashing per packet.
    ports_fixed: Box<[PortCounters]>,
    ports: papaya::HashMap<u32, PortCounters>,
    underlay_rx_packets: AtomicU64,
    underlay_rx_bytes: AtomicU64,
    underlay_tx_packets: AtomicU64,
    underlay_tx_bytes: AtomicU64,
    conntrack_entries: AtomicU64,
    conntrack_evictions: AtomicU64,
    port_tx_errors: AtomicU64,
    underlay_tx_errors: AtomicU64,
    partial_checksums_completed: AtomicU64,
    stack_flows: AtomicU64,
    stack_flows_opened: AtomicU64,
    /// New flows admitted, per policy (merged rule) that admitted them.
    policy_hits: papaya::HashMap<PolicyHit, AtomicU64>,
}

/// A policy as the ingress decision matched it: (source tag, destination tag, protocol, and
/// the merged port range that covered the port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PolicyHit {
    pub src_tag: u16,
    pub dst_tag: u16,
    /// "tcp" or "udp".
    pub protocol: &'static str,
    pub start: u16,
    pub end: u16,
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            drops: (0..DropReason::COUNT).map(|_| AtomicU64::new(0)).collect(),
            ports_fixed: (0..FIXED_PORTS).map(|_| PortCounters::default()).collect(),
            ports: papaya::HashMap::new(),
            underlay_rx_packets: AtomicU64::new(0),
            underlay_rx_bytes: AtomicU64::new(0),
            underlay_tx_packets: AtomicU64::new(0),
            underlay_tx_bytes: AtomicU64::new(0),
            conntrack_entries: AtomicU64::new(0),
            conntrack_evictions: AtomicU64::new(0),
            port_tx_errors: AtomicU64::new(0),
            underlay_tx_errors: AtomicU64::new(0),
            partial_checksums_completed: AtomicU64::new(0),
            stack_flows: AtomicU64::new(0),
            stack_flows_opened: AtomicU64::new(0),
            policy_hits: papaya::HashMap::new(),
        }
    }

    /// A new flow admitted by `policy` (only new flows: a few per connection, never per packet).
    pub fn policy_hit(&self, policy: PolicyHit) {
        self.policy_hits
            .pin()
            .get_or_insert_with(policy, || AtomicU64::new(0))
            .fetch_add(1, Relaxed);
    }

    /// New flows admitted per policy since the start, sorted.
    pub fn policy_hits(&self) -> Vec<(PolicyHit, u64)> {
        let mut v: Vec<(PolicyHit, u64)> = self
            .policy_hits
            .pin()
            .iter()
            .map(|(k, c)| (*k, c.load(Relaxed)))
            .collect();
        v.sort();
        v
    }

    fn with_port(&self, id: PortId, f: impl FnOnce(&PortCounters)) {
        if let Some(p) = self.ports_fixed.get(id.0 as usize) {
            return f(p);
        }
        let m = self.ports.pin();
        f(m.get_or_insert_with(id.0, PortCounters::default))
    }

    pub fn port_rx(&self, id: PortId, bytes: usize) {
        self.with_port(id, |p| {
            p.rx_packets.fetch_add(1, Relaxed);
            p.rx_bytes.fetch_add(bytes as u64, Relaxed);
        })
    }

    pub fn port_tx(&self, id: PortId, bytes: usize) {
        self.with_port(id, |p| {
            p.tx_packets.fetch_add(1, Relaxed);
            p.tx_bytes.fetch_add(bytes as u64, Relaxed);
        })
    }

    /// Counts a drop by reason, and against `port` if given.
    pub fn dropped(&self, reason: DropReason, port: Option<PortId>, bytes: usize) {
        if let Some(c) = self.drops.get(reason as usize) {
            c.fetch_add(1, Relaxed);
        }
        if let Some(id) = port {
            self.with_port(id, |p| {
                p.drop_packets.fetch_add(1, Relaxed);
                p.drop_bytes.fetch_add(bytes as u64, Relaxed);
            })
        }
    }

    pub fn underlay_rx(&self, bytes: usize) {
        self.underlay_rx_packets.fetch_add(1, Relaxed);
        self.underlay_rx_bytes.fetch_add(bytes as u64, Relaxed);
    }

    pub fn underlay_tx(&self, bytes: usize) {
        self.underlay_tx_packets.fetch_add(1, Relaxed);
        self.underlay_tx_bytes.fetch_add(bytes as u64, Relaxed);
    }

    pub fn set_stack_flows(&self, n: usize) {
        self.stack_flows.store(n as u64, Relaxed);
    }

    pub fn stack_flow_opened(&self) {
        self.stack_flows_opened.fetch_add(1, Relaxed);
    }

    pub fn set_conntrack_entries(&self, n: usize) {
        self.conntrack_entries.store(n as u64, Relaxed);
    }

    /// A frame the pipeline sent to a port could not be written to its device.
    pub fn port_tx_error(&self) {
        self.port_tx_errors.fetch_add(1, Relaxed);
    }

    /// `n` datagrams could not be sent on the underlay.
    pub fn underlay_tx_errors(&self, n: usize) {
        self.underlay_tx_errors.fetch_add(n as u64, Relaxed);
    }

    /// A partial inner checksum from the underlay was completed.
    pub fn partial_checksum_completed(&self) {
        self.partial_checksums_completed.fetch_add(1, Relaxed);
    }

    pub fn conntrack_evicted(&self, n: usize) {
        if n > 0 {
            self.conntrack_evictions.fetch_add(n as u64, Relaxed);
        }
    }

    /// Forgets a removed port's counters.
    pub fn remove_port(&self, id: PortId) {
        if let Some(p) = self.ports_fixed.get(id.0 as usize) {
            for c in [
                &p.rx_packets,
                &p.rx_bytes,
                &p.tx_packets,
                &p.tx_bytes,
                &p.drop_packets,
                &p.drop_bytes,
            ] {
                c.store(0, Relaxed);
            }
        }
        self.ports.pin().remove(&id.0);
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        let drops: Vec<(&'static str, u64)> = DropReason::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    self.drops.get(*r as usize).map_or(0, |c| c.load(Relaxed)),
                )
            })
            .collect();
        let read = |p: &PortCounters| PortStats {
            rx_packets: p.rx_packets.load(Relaxed),
            rx_bytes: p.rx_bytes.load(Relaxed),
            tx_packets: p.tx_packets.load(Relaxed),
            tx_bytes: p.tx_bytes.load(Relaxed),
            drop_packets: p.drop_packets.load(Relaxed),
            drop_bytes: p.drop_bytes.load(Relaxed),
        };
        let mut ports: Vec<(PortId, PortStats)> = self
            .ports_fixed
            .iter()
            .enumerate()
            .map(|(i, p)| (PortId(i as u32), read(p)))
            .filter(|(_, s)| *s != PortStats::default())
            .collect();
        ports.extend(
            self.ports
                .pin()
                .iter()
                .map(|(id, p)| (PortId(*id), read(p))),
        );
        ports.sort_by_key(|(id, _)| *id);
        let mut totals = Totals {
            drop_packets: drops.iter().map(|(_, c)| c).sum(),
            underlay_rx_packets: self.underlay_rx_packets.load(Relaxed),
            underlay_rx_bytes: self.underlay_rx_bytes.load(Relaxed),
            underlay_tx_packets: self.underlay_tx_packets.load(Relaxed),
            underlay_tx_bytes: self.underlay_tx_bytes.load(Relaxed),
            conntrack_entries: self.conntrack_entries.load(Relaxed),
            conntrack_evictions: self.conntrack_evictions.load(Relaxed),
            port_tx_errors: self.port_tx_errors.load(Relaxed),
            underlay_tx_errors: self.underlay_tx_errors.load(Relaxed),
            partial_checksums_completed: self.partial_checksums_completed.load(Relaxed),
            stack_flows: self.stack_flows.load(Relaxed),
            stack_flows_opened: self.stack_flows_opened.load(Relaxed),
            ..Totals::default()
        };
        for (_, s) in &ports {
            totals.rx_packets += s.rx_packets;
            totals.rx_bytes += s.rx_bytes;
            totals.tx_packets += s.tx_packets;
            totals.tx_bytes += s.tx_bytes;
        }
        CountersSnapshot {
            drops,
            ports,
            totals,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert!(names.iter().all(|n| n
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn counts() {
        let c = Counters::new();
        c.port_rx(PortId(3), 100);
        c.port_tx(PortId(3), 50);
        c.dropped(DropReason::SpoofedIp, Some(PortId(3)), 100);
        c.dropped(DropReason::UnknownVtep, None, 10);
        c.underlay_rx(10);
        c.port_rx(PortId(5000), 7);
        let s = c.snapshot();
        assert_eq!(s.port(PortId(5000)).rx_bytes, 7);
        assert_eq!(s.ports.len(), 2);
        c.remove_port(PortId(5000));
        c.remove_port(PortId(77));
        assert_eq!(s.drop_count(DropReason::SpoofedIp), 1);
        assert_eq!(s.drop_count(DropReason::UnknownVtep), 1);
        assert_eq!(
            s.port(PortId(3)),
            PortStats {
                rx_packets: 1,
                rx_bytes: 100,
                tx_packets: 1,
                tx_bytes: 50,
                drop_packets: 1,
                drop_bytes: 100
            }
        );
        assert_eq!(s.totals.drop_packets, 2);
        assert_eq!(s.totals.underlay_rx_bytes, 10);
        assert_eq!(s.drops.len(), DropReason::COUNT);
    }
}
