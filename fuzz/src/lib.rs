//! Shared by the fuzz targets: one cell's switch with fixed tables (a few ports, remote cells and
//! policies, as `switch/tests/common` builds them), and a checker that feeds it frames and
//! asserts the pipeline's invariants on every verdict:
//!
//! - a drop is counted exactly once (checked at the end of each input);
//! - nothing comes out of a port that it did not accept from its owner (anti-spoofing: the
//!   source MAC and IP of the port) or, from the underlay, from a known VTEP for its subnets;
//! - a frame delivered to a port is addressed to that port (its MAC, its IP, the gateway MAC as
//!   source) and has a valid IPv4 header checksum; ARP is only ever answered to the asker;
//! - a frame sent to the underlay goes to the VTEP that owns the destination subnet, carries the
//!   VNI and the source port's tag (no G bit for tag 0);
//! - **a denied flow is never forwarded**: a TCP/UDP packet reaches a port only when a policy of
//!   the tables in force allows (source tag, destination tag, protocol, port), or when it is a
//!   reply to a flow that port originated; ICMP only as an error about a flow tracked at that
//!   port; a later fragment only after its admitted first fragment; nothing else at all.
//!
//! The checker keeps its own model of the flows (originated, admitted, seen) from the verdicts, so
//! the conntrack capacity is large enough and time stands still: no entry expires or is evicted.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use tapestry_switch::pipeline::flow::{self, Frag};
use tapestry_switch::tables::{container_mac, gateway_mac};
use tapestry_switch::wire::{arp, ethernet, icmp, ipv4, tcp, virtio_net, vxlan_gbp};
use tapestry_switch::{
    CellConfig, Conntrack, Counters, PacketBuf, PolicyRule, PortConfig, PortId, Proto, RemoteCell,
    Snapshot, Switch, Tables, Verdict,
};

pub const VNI: u32 = 1;
pub const VTEP_PORT: u16 = 4789;
pub const OVERLAY: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 255, 0, 0), 16);
pub const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 255, 1, 0), 24);
pub const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

/// The local containers: (port id, host byte, tag). Port 4 has no tag.
pub const PORTS: [(u32, u8, u16); 4] = [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 0)];

/// Port ids a fuzz input can name: the four ports, then two that do not exist.
pub const PORT_CHOICES: [u32; 6] = [1, 2, 3, 4, 9, 0];

/// Remote cells: (subnet, VTEP). The last VTEP owns two subnets.
pub const REMOTES: [((Ipv4Addr, u8), Ipv4Addr); 4] = [
    (
        (Ipv4Addr::new(10, 255, 2, 0), 24),
        Ipv4Addr::new(192, 168, 0, 2),
    ),
    (
        (Ipv4Addr::new(10, 255, 3, 0), 24),
        Ipv4Addr::new(192, 168, 0, 3),
    ),
    (
        (Ipv4Addr::new(10, 255, 4, 0), 24),
        Ipv4Addr::new(192, 168, 0, 4),
    ),
    (
        (Ipv4Addr::new(10, 255, 5, 0), 24),
        Ipv4Addr::new(192, 168, 0, 4),
    ),
];

/// Underlay sources a fuzz input can name: the three VTEPs, this cell, a stranger.
pub const UNDERLAY_CHOICES: [Ipv4Addr; 5] = [
    Ipv4Addr::new(192, 168, 0, 2),
    Ipv4Addr::new(192, 168, 0, 3),
    Ipv4Addr::new(192, 168, 0, 4),
    UNDERLAY_IP,
    Ipv4Addr::new(10, 0, 0, 9),
];

fn rule(src_tag: u16, dst_tag: u16, proto: Proto, start: u16, end: u16) -> PolicyRule {
    PolicyRule {
        src_tag,
        dst_tag,
        proto,
        start,
        end,
    }
}

/// Three policy sets the pipeline target switches between (a revocation and a re-grant).
pub fn policy_set(i: usize) -> Vec<PolicyRule> {
    match i % 3 {
        0 => vec![
            rule(1, 2, Proto::Tcp, 8080, 8080),
            rule(1, 2, Proto::Tcp, 7000, 7010),
            rule(1, 3, Proto::Udp, 53, 53),
            rule(3, 2, Proto::Udp, 1, 65535),
            rule(2, 1, Proto::Tcp, 443, 443),
            rule(5, 2, Proto::Tcp, 80, 80),
            rule(6, 3, Proto::Udp, 5000, 5100),
        ],
        1 => vec![
            rule(1, 2, Proto::Tcp, 8080, 8080),
            rule(5, 2, Proto::Tcp, 80, 81),
        ],
        _ => vec![],
    }
}

pub fn port_ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, 1, host)
}

fn contains(p: (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = if p.1 == 0 {
        0
    } else {
        u32::MAX << (32 - p.1 as u32)
    };
    (u32::from(p.0) ^ u32::from(ip)) & mask == 0
}

fn network(p: (Ipv4Addr, u8)) -> Ipv4Addr {
    let mask = if p.1 == 0 {
        0
    } else {
        u32::MAX << (32 - p.1 as u32)
    };
    Ipv4Addr::from(u32::from(p.0) & mask)
}

/// (proto, src, dst, sport, dport)
type Tuple = (u8, Ipv4Addr, Ipv4Addr, u16, u16);

fn rev(t: Tuple) -> Tuple {
    (t.0, t.2, t.1, t.4, t.3)
}

#[derive(Clone, Copy)]
struct Local {
    id: u32,
    ip: Ipv4Addr,
    tag: u16,
}

fn local_by_id(id: u32) -> Option<Local> {
    PORTS
        .iter()
        .find(|p| p.0 == id)
        .map(|&(id, host, tag)| Local {
            id,
            ip: port_ip(host),
            tag,
        })
}

fn local_by_ip(ip: Ipv4Addr) -> Option<Local> {
    PORTS
        .iter()
        .map(|p| p.0)
        .filter_map(local_by_id)
        .find(|p| p.ip == ip)
}

/// A host side for the local stack that takes every connection and datagram and never
/// answers.
pub struct NullHost;

impl tapestry_switch::stack::HostIo for NullHost {
    fn connect_tcp(&mut self, _: tapestry_switch::stack::FlowId, _: SocketAddrV4) -> std::io::Result<()> {
        Ok(())
    }
    fn open_udp(&mut self, _: tapestry_switch::stack::FlowId, _: SocketAddrV4) -> std::io::Result<()> {
        Ok(())
    }
    fn open_icmp(
        &mut self,
        _: tapestry_switch::stack::FlowId,
        _: Ipv4Addr,
    ) -> std::io::Result<tapestry_switch::stack::IcmpSocket> {
        Ok(tapestry_switch::stack::IcmpSocket::Ping)
    }
    fn read(&mut self, _: tapestry_switch::stack::FlowId, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
    fn write(&mut self, _: tapestry_switch::stack::FlowId, b: &[u8]) -> std::io::Result<usize> {
        Ok(b.len())
    }
    fn shutdown_write(&mut self, _: tapestry_switch::stack::FlowId) {}
    fn close(&mut self, _: tapestry_switch::stack::FlowId, _: bool) {}
}

fn new_stack(counters: &Arc<Counters>) -> tapestry_switch::stack::Stack {
    tapestry_switch::stack::Stack::new(Default::default(), counters.clone(), Instant::now())
}

/// The switch under test and the checker's model of what it may forward.
pub struct Harness {
    pub switch: Switch,
    pub stack: tapestry_switch::stack::Stack,
    pub tables: Arc<Tables>,
    pub counters: Arc<Counters>,
    pub now: Instant,
    buf: Option<PacketBuf>,
    scratch: Vec<u8>,
    policies: Vec<PolicyRule>,
    /// (zone, flow) a port originated.
    origin: HashSet<(u32, Tuple)>,
    /// (zone, flow) admitted at a port's ingress.
    admitted: HashSet<(u32, Tuple)>,
    /// (zone, flow) the switch may have tracked (any TCP/UDP packet it looked at).
    seen: HashSet<(u32, Tuple)>,
    /// (zone, src, dst, proto, ident) of first fragments delivered.
    frags: HashSet<(u32, Ipv4Addr, Ipv4Addr, u8, u16)>,
    /// The drop total at the last reset, and the drops verdicts reported since.
    drops_base: u64,
    drops_seen: u64,
    /// Print every verdict (`TAPESTRY_FUZZ_VERBOSE=1`), to check what a corpus exercises.
    verbose: bool,
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Harness {
    pub fn new() -> Harness {
        let policies = policy_set(0);
        let tables = Arc::new(Tables::new(snapshot(policies.clone())));
        // Larger than the number of frames one input can hold: nothing is ever evicted.
        let conntrack = Arc::new(Conntrack::new(4096));
        let counters = Arc::new(Counters::new());
        Harness {
            switch: Switch::new(tables.clone(), conntrack, counters.clone()),
            stack: new_stack(&counters),
            tables,
            counters,
            now: Instant::now(),
            buf: Some(PacketBuf::new()),
            scratch: vec![0u8; 70_000],
            policies,
            origin: HashSet::new(),
            admitted: HashSet::new(),
            seen: HashSet::new(),
            frags: HashSet::new(),
            drops_base: 0,
            drops_seen: 0,
            verbose: std::env::var_os("TAPESTRY_FUZZ_VERBOSE").is_some(),
        }
    }

    /// Starts over for the next input: an empty connection table (of `ct_capacity` entries) and
    /// fragment table, the first policy set, an empty model. Keeps the buffers.
    pub fn reset(&mut self, ct_capacity: usize) {
        if self.policies != policy_set(0) {
            self.policies = policy_set(0);
            self.tables.store(snapshot(self.policies.clone()));
        }
        self.switch = Switch::new(
            self.tables.clone(),
            Arc::new(Conntrack::new(ct_capacity)),
            self.counters.clone(),
        );
        self.stack = new_stack(&self.counters);
        self.origin.clear();
        self.admitted.clear();
        self.seen.clear();
        self.frags.clear();
        self.drops_base = self.drops();
        self.drops_seen = 0;
    }

    /// Ends an input: every drop verdict since the reset was counted exactly once. (Checked per
    /// input rather than per packet: reading the counters walks every port's.)
    pub fn finish(&self) {
        assert_eq!(
            self.drops(),
            self.drops_base + self.drops_seen,
            "each drop is counted exactly once"
        );
    }

    /// Replaces the policies (the control plane's revocation or grant).
    pub fn set_policies(&mut self, i: usize) {
        self.policies = policy_set(i);
        self.tables.store(snapshot(self.policies.clone()));
        if self.verbose {
            eprintln!("policies: set {}", i % 3);
        }
    }

    fn allows(&self, src_tag: u16, dst_tag: u16, proto: u8, dport: u16) -> bool {
        let Some(proto) = Proto::from_ip_proto(proto) else {
            return false;
        };
        self.policies.iter().any(|r| {
            r.src_tag == src_tag
                && r.dst_tag == dst_tag
                && r.proto == proto
                && (r.start..=r.end).contains(&dport)
        })
    }

    fn drops(&self) -> u64 {
        self.counters.snapshot().totals.drop_packets
    }

    /// Runs the local stack on a frame the pipeline sent it, against a host that accepts every
    /// connection and never answers, and checks every frame the stack sends back.
    fn to_stack(&mut self, port: u32, frame: &[u8]) {
        let snap = self.tables.load_full();
        let ip = frame.get(ethernet::HEADER_LEN..).unwrap_or(&[]);
        let _ = self
            .stack
            .from_port(&snap, PortId(port), ip, 0, self.now, &mut NullHost);
        self.stack.poll(&snap, self.now, &mut NullHost);
        while let Some(t) = self.stack.poll_transmit() {
            let f = &t.buf[tapestry_switch::stack::FRAME_HEADROOM..];
            let e = ethernet::Frame::new_checked(f).expect("a stack frame has an Ethernet header");
            let p = ipv4::Packet::new_checked(e.payload()).expect("a stack frame carries IPv4");
            assert!(p.verify_checksum(), "stack IPv4 checksum");
            assert_eq!(snap.port_by_ip(p.dst()).map(|q| q.id), Some(t.port), "to the right port");
            self.stack.recycle(t.buf);
        }
    }

    /// A plain Ethernet frame from port `PORT_CHOICES[sel]`.
    pub fn from_port(&mut self, sel: u8, frame: &[u8]) -> Verdict {
        let id = PORT_CHOICES[sel as usize % PORT_CHOICES.len()];
        let mut buf = self.buf.take().unwrap_or_default();
        load(&mut buf, frame);
        let v = self.switch.from_port(PortId(id), &mut buf, self.now);
        self.check_drop(v);
        self.check_from_port(id, frame, v, buf.data());
        self.buf = Some(buf);
        v
    }

    /// A frame with the virtio-net header from port `PORT_CHOICES[sel]`; also runs the offload
    /// code the driver runs on the verdict (segmentation, coalescing).
    pub fn from_port_vnet(&mut self, sel: u8, bytes: &[u8]) -> Verdict {
        use tapestry_switch::offload::{segment_tcpv4, segment_vxlan, TcpCoalescer};
        let id = PORT_CHOICES[sel as usize % PORT_CHOICES.len()];
        let mut buf = self.buf.take().unwrap_or_default();
        let mut scratch = std::mem::take(&mut self.scratch);
        load(&mut buf, bytes);
        let (v, h) = self.switch.from_port_vnet(PortId(id), &mut buf, self.now);
        self.check_drop(v);
        let frame = bytes.get(virtio_net::HEADER_LEN..).unwrap_or(&[]);
        match v {
            Verdict::ToPort(_) => {
                let out = buf.data();
                assert!(
                    out.len() >= virtio_net::HEADER_LEN,
                    "header kept for the TAP"
                );
                let parsed = virtio_net::Packet::new_checked(out)
                    .and_then(|p| virtio_net::Repr::parse(&p))
                    .expect("the emitted virtio-net header parses");
                assert_eq!(parsed, h, "the header written is the one returned");
                self.check_from_port(id, frame, v, &out[virtio_net::HEADER_LEN..]);
                let mut co = TcpCoalescer::new();
                let _ = segment_tcpv4(&out[virtio_net::HEADER_LEN..], &h, &mut scratch, |s| {
                    let _ = co.push(s);
                });
                let _ = co.finish();
            }
            Verdict::ToUnderlay(_) => {
                self.check_from_port(id, frame, v, buf.data());
                let _ = segment_vxlan(buf.data(), &h, &mut scratch, |_| {});
            }
            Verdict::ToStack | Verdict::ToService(_) => self.check_from_port(id, frame, v, buf.data()),
            Verdict::Drop(_) => {}
        }
        self.buf = Some(buf);
        self.scratch = scratch;
        v
    }

    /// A UDP payload from the underlay source `UNDERLAY_CHOICES[sel]`.
    pub fn from_underlay(&mut self, sel: u8, payload: &[u8]) -> Verdict {
        let ip = UNDERLAY_CHOICES[sel as usize % UNDERLAY_CHOICES.len()];
        let src = SocketAddrV4::new(ip, if sel & 0x80 != 0 { 50000 } else { VTEP_PORT });
        let mut buf = self.buf.take().unwrap_or_default();
        load(&mut buf, payload);
        let v = self.switch.from_underlay(src, &mut buf, self.now);
        if self.verbose {
            eprintln!("underlay from {src}: {v:?}");
        }
        self.check_drop(v);
        // What the switch may have tracked, whatever the verdict.
        let inner = payload.get(vxlan_gbp::HEADER_LEN..).unwrap_or(&[]);
        if let Some((_, f)) = parse_frame(inner) {
            if let Some(q) = local_by_ip(f.dst) {
                self.seen.insert((q.id, tuple(&f)));
            }
        }
        match v {
            Verdict::Drop(_) => {}
            Verdict::ToStack => panic!("from the underlay to the local stack"),
            Verdict::ToUnderlay(to) => panic!("from the underlay back to the underlay ({to})"),
            Verdict::ToService(PortId(q)) => {
                let vx = vxlan_gbp::Packet::new_checked(payload).expect("VXLAN header");
                let repr = vxlan_gbp::Repr::parse(&vx).expect("VXLAN header parses");
                let (_, f) = parse_frame(inner).expect("inner IPv4");
                self.serviced(q, repr.group_policy_id.unwrap_or(0), &f);
            }
            Verdict::ToPort(PortId(q)) => {
                let remotes: Vec<_> = REMOTES.iter().filter(|r| r.1 == ip).collect();
                assert!(!remotes.is_empty(), "accepted from unknown VTEP {ip}");
                let vx = vxlan_gbp::Packet::new_checked(payload).expect("VXLAN header");
                let repr = vxlan_gbp::Repr::parse(&vx).expect("VXLAN header parses");
                assert_eq!(repr.vni, VNI, "wrong VNI accepted");
                let eth = ethernet::Frame::new_checked(inner).expect("inner frame");
                assert_eq!(
                    eth.dst(),
                    container_mac(network(SUBNET)),
                    "to this cell's VTEP MAC"
                );
                let (_, f) = parse_frame(inner).expect("inner IPv4");
                assert!(
                    remotes.iter().any(|r| contains(r.0, f.src)),
                    "inner source {} not in a subnet of VTEP {ip}",
                    f.src
                );
                let tag = repr.group_policy_id.unwrap_or(0);
                self.delivered(q, tag, &f, inner, buf.data());
            }
        }
        self.buf = Some(buf);
        v
    }

    fn check_drop(&mut self, v: Verdict) {
        if let Verdict::Drop(_) = v {
            self.drops_seen += 1;
        }
    }

    fn check_from_port(&mut self, id: u32, frame: &[u8], v: Verdict, out: &[u8]) {
        if self.verbose {
            eprintln!("port {id}: {v:?}");
        }
        let parsed = parse_frame(frame);
        if let Some((_, f)) = &parsed {
            self.seen.insert((id, tuple(f)));
            if let Some(q) = local_by_ip(f.dst) {
                self.seen.insert((q.id, tuple(f)));
            }
        }
        if let Verdict::Drop(_) = v {
            return;
        }
        let p = local_by_id(id).unwrap_or_else(|| panic!("forwarded from unknown port {id}"));
        let eth = ethernet::Frame::new_checked(frame).expect("accepted a frame without Ethernet");
        assert_eq!(
            eth.src(),
            container_mac(p.ip),
            "spoofed source MAC accepted"
        );
        if eth.ethertype() == ethernet::ETHERTYPE_ARP {
            assert_eq!(
                v,
                Verdict::ToPort(PortId(id)),
                "ARP answered to the asker only"
            );
            let o = ethernet::Frame::new_checked(out).expect("ARP reply frame");
            assert_eq!(o.dst(), container_mac(p.ip));
            assert_eq!(o.src(), gateway_mac(p.ip));
            let a = arp::Packet::new_checked(&out[ethernet::HEADER_LEN..]).expect("ARP reply");
            let r = arp::Repr::parse(&a).expect("ARP reply parses");
            assert_eq!(r.oper, arp::OP_REPLY);
            assert_eq!(r.sha, gateway_mac(p.ip));
            assert_eq!(r.tpa, p.ip);
            assert_ne!(r.spa, p.ip, "a port's own address is never answered");
            return;
        }
        let (_, f) = parsed.expect("forwarded a frame that is not IPv4");
        assert_eq!(f.src, p.ip, "spoofed source IP accepted");
        match v {
            Verdict::ToPort(PortId(q)) => {
                self.delivered(q, p.tag, &f, frame, out);
            }
            Verdict::ToService(PortId(q)) => {
                self.serviced(q, p.tag, &f);
                return;
            }
            Verdict::ToUnderlay(to) => {
                let remote = REMOTES
                    .iter()
                    .find(|r| contains(r.0, f.dst))
                    .unwrap_or_else(|| panic!("{} is not in a remote subnet", f.dst));
                assert_eq!(to, SocketAddrV4::new(remote.1, VTEP_PORT), "wrong VTEP");
                let vx = vxlan_gbp::Packet::new_checked(out).expect("VXLAN header");
                let repr = vxlan_gbp::Repr::parse(&vx).expect("VXLAN header parses");
                assert_eq!(repr.vni, VNI);
                assert_eq!(
                    repr.group_policy_id,
                    (p.tag != 0).then_some(p.tag),
                    "the source tag"
                );
                let inner = &out[vxlan_gbp::HEADER_LEN..];
                let e = ethernet::Frame::new_checked(inner).expect("inner frame");
                assert_eq!(e.dst(), container_mac(network(remote.0)), "remote VTEP MAC");
                assert_eq!(e.src(), container_mac(network(SUBNET)), "our VTEP MAC");
                let ip = ipv4::Packet::new_checked(e.payload()).expect("inner IPv4");
                assert!(ip.verify_checksum(), "inner IPv4 checksum");
            }
            Verdict::ToStack => {
                assert!(!contains(OVERLAY, f.dst), "overlay traffic to the local stack");
                self.to_stack(id, out);
                return;
            }
            Verdict::Drop(_) => unreachable!(),
        }
        self.egress(id, &f);
    }

    /// The model's egress tracking for a forwarded packet from port `p`.
    fn egress(&mut self, p: u32, f: &flow::Flow) {
        if f.frag == Frag::Later || Proto::from_ip_proto(f.proto).is_none() {
            return;
        }
        let t = tuple(f);
        if self.admitted.contains(&(p, rev(t)))
            || self.admitted.contains(&(p, t))
            || self.origin.contains(&(p, t))
            || (f.proto == ipv4::PROTO_TCP && f.tcp_flags & tcp::RST != 0)
        {
            return;
        }
        self.origin.insert((p, t));
    }

    /// Checks a delivery of `input` (Ethernet/IPv4 as received) to port `q` as `out`.
    /// A segment handed to port `q`'s TLS terminator (61443): admitted by policy like a
    /// delivery, never anything but TCP to that port's address.
    fn serviced(&mut self, q: u32, src_tag: u16, f: &flow::Flow) {
        let port = local_by_id(q).unwrap_or_else(|| panic!("serviced for unknown port {q}"));
        assert_eq!(f.dst, port.ip, "to the port that owns the address");
        assert_eq!((f.proto, f.dport), (ipv4::PROTO_TCP, 61443), "only TCP 61443 is serviced");
        let t = tuple(f);
        let reply = self.origin.contains(&(q, rev(t)));
        assert!(
            reply || self.admitted.contains(&(q, t)) || self.allows(src_tag, port.tag, f.proto, f.dport),
            "DENIED FLOW SERVICED: tag {src_tag} -> port {q} (tag {}) {t:?}",
            port.tag
        );
        if !reply {
            self.admitted.insert((q, t));
        }
    }

    fn delivered(&mut self, q: u32, src_tag: u16, f: &flow::Flow, input: &[u8], out: &[u8]) {
        let port = local_by_id(q).unwrap_or_else(|| panic!("delivered to unknown port {q}"));
        assert_eq!(
            f.dst, port.ip,
            "delivered to the port that owns the address"
        );
        let e = ethernet::Frame::new_checked(out).expect("delivered frame");
        assert_eq!(e.dst(), container_mac(port.ip), "to the port's MAC");
        assert_eq!(e.src(), gateway_mac(port.ip), "from the port's gateway MAC");
        let ip = ipv4::Packet::new_checked(e.payload()).expect("delivered IPv4");
        assert!(
            ip.verify_checksum(),
            "IPv4 checksum valid after the TTL decrement"
        );
        let in_ip = ipv4::Packet::new_checked(&input[ethernet::HEADER_LEN..]).expect("IPv4");
        assert_eq!(
            u16::from(ip.ttl()) + 1,
            u16::from(in_ip.ttl()),
            "TTL decremented once"
        );
        let t = tuple(f);
        let fk = (q, f.src, f.dst, f.proto, f.ident);
        if f.frag == Frag::Later {
            assert!(
                self.frags.contains(&fk),
                "a later fragment without its first fragment reached port {q}: {t:?}"
            );
            return;
        }
        match f.proto {
            ipv4::PROTO_TCP | ipv4::PROTO_UDP => {
                let reply = self.origin.contains(&(q, rev(t)));
                assert!(
                    reply || self.allows(src_tag, port.tag, f.proto, f.dport),
                    "DENIED FLOW FORWARDED: tag {src_tag} -> port {q} (tag {}) {t:?} under {:?}",
                    port.tag,
                    self.policies
                );
                if !reply {
                    self.admitted.insert((q, t));
                }
            }
            ipv4::PROTO_ICMP => {
                let p = icmp::Packet::new_checked(in_ip.payload()).expect("ICMP");
                assert!(p.is_error(), "only ICMP errors are admitted");
                let (proto, src, dst, sport, dport) =
                    flow::icmp_embedded(p.data()).expect("an ICMP error about a datagram");
                assert_eq!(src, port.ip, "an ICMP error about the port's own datagram");
                let k = (proto, src, dst, sport, dport);
                assert!(
                    self.seen.contains(&(q, k)) || self.seen.contains(&(q, rev(k))),
                    "ICMP error about an untracked flow reached port {q}: {k:?}"
                );
            }
            other => panic!("protocol {other} reached port {q}"),
        }
        if f.frag == Frag::First {
            self.frags.insert(fk);
        }
    }
}

/// Copies `bytes` into `buf` as a driver's read would (at most the buffer's capacity).
fn load(buf: &mut PacketBuf, bytes: &[u8]) {
    let space = buf.read_space();
    let n = bytes.len().min(space.len());
    space[..n].copy_from_slice(&bytes[..n]);
    buf.set_len(n);
}

fn tuple(f: &flow::Flow) -> Tuple {
    (f.proto, f.src, f.dst, f.sport, f.dport)
}

/// The flow of an Ethernet/IPv4 frame whose header checks, as the switch reads it.
fn parse_frame(frame: &[u8]) -> Option<(ipv4::Packet<&[u8]>, flow::Flow)> {
    let eth = ethernet::Frame::new_checked(frame).ok()?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return None;
    }
    let ip = flow::check_ipv4(&frame[ethernet::HEADER_LEN..]).ok()?;
    let f = flow::parse(&ip).ok()?;
    Some((ip, f))
}

/// This cell's tables with `policies`.
pub fn snapshot(policies: Vec<PolicyRule>) -> Snapshot {
    let config = CellConfig {
        underlay_ip: UNDERLAY_IP,
        vtep_port: VTEP_PORT,
        vni: VNI,
        overlay_network: OVERLAY,
        subnet: SUBNET,
    };
    let ports = PORTS
        .iter()
        .map(|&(id, host, tag)| PortConfig {
            id: PortId(id),
            mac: container_mac(port_ip(host)),
            ip: port_ip(host),
            tag,
        })
        .collect();
    let remotes = REMOTES
        .iter()
        .map(|&(subnet, vtep)| RemoteCell {
            subnet,
            underlay: SocketAddrV4::new(vtep, VTEP_PORT),
        })
        .collect();
    Snapshot::new(config, ports, remotes, policies).expect("the fuzz tables are valid")
}

/// Recomputes the IPv4 header checksum of the IPv4 packet at `b[off..]`, if there is one, so a
/// mutated frame is not simply dropped for its checksum.
pub fn fix_ipv4_checksum(b: &mut [u8], off: usize) {
    let Some(ip) = b.get_mut(off..) else {
        return;
    };
    if let Ok(mut p) = ipv4::Packet::new_checked(ip) {
        p.fill_checksum();
    }
}

/// A cell's configuration, containers and feed view, for the feed target.
pub mod cell {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use tapestry::cell::state::{ContainerRecord, Containers};
    use tapestry::cell::CellConfig;
    use tapestry_policy::feed::View;
    use tapestry_policy::model::FeedResponse;

    /// The feed snapshot the seeded view starts from (also a seed of the feed corpus).
    pub const SEED_FEED: &str = include_str!("seed_feed.json");

    pub fn config() -> CellConfig {
        CellConfig {
            offload: false,
            ..CellConfig::with_defaults(
                Ipv4Addr::new(192, 168, 0, 1),
                "10.255.1.0/24".parse().unwrap(),
            )
        }
    }

    /// Two attached containers (apps a and b) and one outside the cell's subnet.
    pub fn containers() -> Containers {
        let record = |handle: &str, app: &str, ip: [u8; 4]| ContainerRecord {
            handle: handle.into(),
            app_id: app.into(),
            space_id: "s1".into(),
            org_id: "o1".into(),
            instance_index: 0,
            ip: Ipv4Addr::from(ip),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            lifecycle: Default::default(),
            network: None,
            app_port: None,
            tls_client_auth: false,
            port_mappings: vec![],
        };
        let mut containers = BTreeMap::new();
        for r in [
            record("h-a", "app-a", [10, 255, 1, 2]),
            record("h-b", "app-b", [10, 255, 1, 3]),
            record("h-x", "app-c", [10, 255, 7, 3]),
        ] {
            containers.insert(r.handle.clone(), r);
        }
        Containers { containers }
    }

    /// A view that has received [`SEED_FEED`].
    pub fn seeded_view() -> View {
        let resp: FeedResponse = serde_json::from_str(SEED_FEED).expect("the seed feed parses");
        let mut v = View::new();
        v.apply(resp);
        v
    }
}
