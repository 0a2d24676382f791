//! The cell's local stack: where a container's flows that leave the overlay end.
//!
//! The pipeline hands the stack every IPv4 packet a container sends outside the overlay
//! ([`crate::Verdict::ToStack`]). The stack owns the gateway 169.254.0.1 (it answers pings;
//! 169.254.0.2 is the cell's DNS address), and carries everything else on ordinary host
//! sockets, as passt and slirp4netns do, instead of iptables and kernel NAT:
//!
//! - **Egress.** A container's new TCP, UDP or ICMP echo flow is checked against its
//!   application security groups ([`crate::Snapshot::egress_decision`]: deny-networks first, then
//!   the union of its groups, default deny). A denied flow gets an ICMP port unreachable at
//!   once (CF's REJECT) and is counted by reason. An admitted TCP flow is held at its SYN until
//!   the host connection (from the cell's address: CF's MASQUERADE) is up; then the SYN goes to
//!   smoltcp, which completes the handshake, and the two byte streams are spliced. A refused
//!   host connection becomes a RST to the container, an unreachable one an ICMP unreachable.
//!   UDP and ICMP echo are relayed through connected host datagram sockets. Established flows
//!   stay when the ASGs change, as in CF; new ones see the change at once.
//! - **Net-in.** The driver accepts a connection on a mapped host port and calls
//!   [`Stack::net_in_tcp`]; smoltcp connects to the container *from the client's address*, so
//!   the app sees who called (CF's DNAT), and the streams are spliced the same way.
//!
//! Sans-IO like the pipeline: packets and `now` in; frames for containers out
//! ([`Stack::poll_transmit`]); host sockets driven through the [`HostIo`] the caller implements
//! (the cell's driver with real sockets, tests with a simulated host side).

mod datagram;
mod device;
pub mod dns;
mod egress;
pub mod frame;
mod net_in;
mod resolver;
mod service;
mod tcp;
pub mod tls;
mod types;

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{HardwareAddress, IpCidr};

use crate::counters::{Counters, DropReason};
use crate::pipeline::flow::{self, Frag};
use crate::tables::asg::{self, EgressVerdict};
use crate::tables::{FxHashMap, PortId, Snapshot};
use crate::wire::{icmp, ipv4, tcp as tcpw, udp};
use device::Pipe;
pub use frame::FRAME_HEADROOM;
pub use types::{
    Admitted, Denial, FlowId, FlowInfo, HostIo, IcmpSocket, StackConfig, Transmit, DENIALS_KEPT,
};

/// The gateway every container routes through; the stack answers for it.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
/// The cell's DNS address (served by the DNS responder; until then, port unreachable).
pub const DNS: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);

/// Idle timeouts of datagram flows, as the connection tracker's.
pub const UDP_TIMEOUT: Duration = crate::tables::flow_state::UDP_REPLIED_TIMEOUT;
pub const UDP_UNREPLIED_TIMEOUT: Duration = crate::tables::flow_state::UDP_UNREPLIED_TIMEOUT;
pub const ICMP_TIMEOUT: Duration = Duration::from_secs(30);

/// (protocol, container address, container port or echo id, remote address, remote port).
type Key = (u8, Ipv4Addr, u16, Ipv4Addr, u16);

#[derive(Debug)]
enum Kind {
    Tcp(tcp::TcpFlow),
    /// Egress UDP; `replied` once the destination answered (then it idles longer).
    Udp {
        replied: bool,
    },
    /// Net-in UDP: datagrams from a client to a mapped host port, and the container's replies.
    UdpIn,
    /// A DNS query forwarded upstream, waiting for the answer.
    DnsForward {
        client: resolver::DnsClient,
        query: Vec<u8>,
    },
    /// A DNS-over-TCP connection to 169.254.0.2:53.
    DnsTcp(resolver::DnsTcp),
    /// A TLS connection to a container's 61443 (its app leg is keyed by `alt_key`).
    Tls(Box<tls::TlsFlow>),
    Icmp {
        ident: u16,
        socket: IcmpSocket,
    },
}

#[derive(Debug)]
struct Entry {
    key: Key,
    /// A second key of the same flow (the app leg of a TLS connection).
    alt_key: Option<Key>,
    port: PortId,
    kind: Kind,
    last_seen: Instant,
    rule: Option<(String, usize)>,
}

/// The local stack of one cell.
pub struct Stack {
    config: StackConfig,
    counters: Arc<Counters>,
    epoch: Instant,
    iface: Interface,
    sockets: SocketSet<'static>,
    pool: tcp::SocketPool,
    dev: Pipe,
    flows: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_key: FxHashMap<Key, FlowId>,
    out: VecDeque<Transmit>,
    admitted: VecDeque<Admitted>,
    denials: VecDeque<Denial>,
    scratch: Vec<u8>,
    last_sweep: Instant,
    /// The `now` of the latest call that had one (for host events, which come without).
    last_poll: Instant,
    dns_seed: u64,
    dns_next: usize,
    dns_seq: u16,
    /// The TLS terminator of each container with instance credentials.
    tls: FxHashMap<Ipv4Addr, Arc<tapestry_tls_proxy::TerminatorConfig>>,
    /// Counts TLS connections' app legs (see [`tls::app_leg_source`]).
    tls_next_port: u32,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("flows", &self.by_key.len())
            .finish()
    }
}

/// Log lines waiting to be written at most; more are dropped (the driver rate-limits).
const ADMITTED_MAX: usize = 4096;

impl Stack {
    pub fn new(config: StackConfig, counters: Arc<Counters>, now: Instant) -> Stack {
        let tcp_buffer = config.tcp_buffer;
        let mut dev = Pipe::default();
        let mut cfg = Config::new(HardwareAddress::Ip);
        // smoltcp draws initial sequence numbers from this: a seed of its own per process.
        cfg.random_seed = random_seed();
        let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(GATEWAY.into(), 32));
        });
        // Every address is ours: the stack stands in for the whole world outside the overlay
        // (any_ip with a default route through our own address).
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY);
        Stack {
            config,
            counters,
            epoch: now,
            iface,
            sockets: SocketSet::new(Vec::new()),
            pool: tcp::SocketPool::new(tcp_buffer),
            dev,
            flows: Vec::new(),
            free: Vec::new(),
            by_key: FxHashMap::default(),
            out: VecDeque::new(),
            admitted: VecDeque::new(),
            denials: VecDeque::new(),
            scratch: vec![0u8; 65536],
            last_sweep: now,
            last_poll: now,
            dns_seed: random_seed() | 1,
            dns_next: 0,
            dns_seq: 0,
            tls: FxHashMap::default(),
            tls_next_port: 0,
        }
    }

    /// Hands smoltcp every queued packet now. Called before a listening socket is made for a
    /// new connection, and again with its SYN queued: smoltcp gives a SYN to the first listening
    /// socket of the endpoint, so two SYNs waiting together could each land in the other flow's
    /// socket.
    fn ingest(&mut self, now: Instant) {
        let t = self.smol_now(now);
        while !self.dev.rx.is_empty() {
            let _ = self
                .iface
                .poll_ingress_single(t, &mut self.dev, &mut self.sockets);
        }
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.epoch).as_micros() as i64
        )
    }

    /// Flows carried now.
    pub fn flow_count(&self) -> usize {
        self.by_key.len()
    }

    /// Every flow, for status.
    pub fn flows(&self) -> Vec<FlowInfo> {
        self.flows
            .iter()
            .flatten()
            .map(|e| {
                let (protocol, state, direction) = match &e.kind {
                    Kind::Tcp(t) => (
                        "tcp",
                        t.state_name(&self.sockets),
                        if t.net_in { "net-in" } else { "egress" },
                    ),
                    Kind::Udp { .. } => ("udp", "open", "egress"),
                    Kind::UdpIn => ("udp", "open", "net-in"),
                    Kind::DnsForward { .. } => ("udp", "forwarded", "dns"),
                    Kind::DnsTcp(_) => ("tcp", "open", "dns"),
                    Kind::Tls(t) => ("tcp", t.state_name(&self.sockets), "tls"),
                    Kind::Icmp { .. } => ("icmp", "open", "egress"),
                };
                FlowInfo {
                    port: e.port,
                    protocol,
                    container: SocketAddrV4::new(e.key.1, e.key.2),
                    remote: SocketAddrV4::new(e.key.3, e.key.4),
                    direction,
                    state,
                    rule: e.rule.clone(),
                }
            })
            .collect()
    }

    /// The latest denials, oldest first.
    pub fn denials(&self) -> Vec<Denial> {
        self.denials.iter().cloned().collect()
    }

    /// The next frame for a container.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next flow admitted by a logging rule.
    pub fn poll_admitted(&mut self) -> Option<Admitted> {
        self.admitted.pop_front()
    }

    /// Takes back a buffer of a [`Transmit`].
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.dev.recycle(buf);
    }

    fn insert(&mut self, e: Entry) -> FlowId {
        let id = match self.free.pop() {
            Some(i) => i,
            None => {
                self.flows.push(None);
                (self.flows.len() - 1) as u32
            }
        };
        self.by_key.insert(e.key, FlowId(id));
        self.flows[id as usize] = Some(e);
        self.counters.set_stack_flows(self.by_key.len());
        FlowId(id)
    }

    fn remove(&mut self, id: FlowId, io: &mut impl HostIo, abort: bool) {
        let Some(e) = self.flows.get_mut(id.0 as usize).and_then(Option::take) else {
            return;
        };
        self.by_key.remove(&e.key);
        if let Some(k) = e.alt_key {
            self.by_key.remove(&k);
        }
        match &e.kind {
            Kind::Tcp(t) => t.release(&mut self.sockets, &mut self.pool),
            Kind::DnsTcp(c) => self.pool.give(&mut self.sockets, Stack::dns_tcp_handle(c)),
            Kind::Tls(t) => t.release(&mut self.sockets, &mut self.pool),
            _ => {}
        }
        io.close(id, abort);
        self.free.push(id.0);
        self.counters.set_stack_flows(self.by_key.len());
    }

    fn entry(&mut self, id: FlowId) -> Option<&mut Entry> {
        self.flows.get_mut(id.0 as usize).and_then(Option::as_mut)
    }

    /// Queues a frame built by `build` into a pooled buffer for `port`.
    fn send_built(&mut self, port: PortId, build: impl FnOnce(&mut Vec<u8>) -> bool) {
        let mut b = self.dev.buffer();
        if build(&mut b) {
            let hdr = frame::finish(&mut b, self.config.mtu, 0);
            self.out.push_back(Transmit {
                port,
                hdr,
                buf: b,
                via_pipeline: false,
            });
        } else {
            self.dev.recycle(b);
        }
    }

    fn reject(&mut self, port: PortId, packet: &[u8], from: Ipv4Addr, code: u8) {
        self.send_built(port, |b| frame::icmp_unreachable(b, packet, from, code));
    }

    /// The outcome of [`HostIo::connect_tcp`].
    pub fn host_connected(&mut self, id: FlowId, result: io::Result<()>, io: &mut impl HostIo) {
        let Some(e) = self.flows.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return;
        };
        let port = e.port;
        let Kind::Tcp(t) = &mut e.kind else {
            return;
        };
        if t.handle.is_some() {
            return;
        }
        match result {
            Ok(()) => {
                let now = self.last_poll;
                self.ingest(now);
                let Some(Entry {
                    kind: Kind::Tcp(t), ..
                }) = self.flows.get_mut(id.0 as usize).and_then(Option::as_mut)
                else {
                    return;
                };
                if let Some(syn) = t.accept(&mut self.sockets, &mut self.pool, &mut self.dev) {
                    self.dev.rx.push_back(syn);
                    self.ingest(now);
                }
            }
            Err(err) => {
                let syn = t.held_syn().to_vec();
                self.host_failed(port, &syn, &err);
                self.remove(id, io, true);
            }
        }
    }

    /// A host socket became readable and/or writable (edge-triggered readiness).
    pub fn host_ready(&mut self, id: FlowId, readable: bool, writable: bool, io: &mut impl HostIo) {
        let Some(e) = self.entry(id) else {
            return;
        };
        match &mut e.kind {
            Kind::Tcp(t) => {
                t.host_readable |= readable;
                t.host_writable |= writable;
            }
            Kind::Udp { .. } | Kind::Icmp { .. } if readable => self.datagrams_from_host(id, io),
            Kind::DnsForward { .. } if readable => {
                let mut scratch = std::mem::take(&mut self.scratch);
                match io.read(id, &mut scratch) {
                    Ok(n) => self.forward_answer(id, &scratch[..n], io),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => self.forward_failed(id, io),
                }
                self.scratch = scratch;
            }
            _ => {}
        }
    }

    /// Runs the TCP/IP stack: processes the queued packets, moves bytes between smoltcp and the
    /// host sockets, sends what is due, and expires idle flows.
    pub fn poll(&mut self, snap: &Snapshot, now: Instant, io: &mut impl HostIo) {
        self.last_poll = now;
        let t = self.smol_now(now);
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        self.splice(io);
        self.dns_tcp_poll(snap, now, io);
        self.tls_poll();
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        self.reap(io);
        while let Some(mut b) = self.dev.tx.pop_front() {
            let (src, dst) = {
                let ip = ipv4::Packet::new_unchecked(&b[frame::IP_AT..]);
                (ip.src(), ip.dst())
            };
            let Some(p) = snap.port_by_ip(dst) else {
                // The terminator answering a TLS client on another cell: the frame leaves as
                // if the container sent it (the pipeline encapsulates it with its tag).
                if let Some(from) = snap.port_by_ip(src) {
                    let hdr = frame::finish(&mut b, self.config.mtu, 0);
                    self.out.push_back(Transmit {
                        port: from.id,
                        hdr,
                        buf: b,
                        via_pipeline: true,
                    });
                } else {
                    self.dev.recycle(b);
                }
                continue;
            };
            let mss = self
                .by_key
                .get(&tcp_key_of(&b))
                .and_then(|id| self.flows[id.0 as usize].as_ref())
                .and_then(|e| match &e.kind {
                    Kind::Tcp(t) => Some(t.container_mss),
                    _ => None,
                })
                .unwrap_or(536);
            let hdr = frame::finish(&mut b, self.config.mtu, mss);
            self.out.push_back(Transmit {
                port: p.id,
                hdr,
                buf: b,
                via_pipeline: false,
            });
        }
        if now.saturating_duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.sweep(snap, now, io);
            self.last_sweep = now;
        }
    }

    /// When [`Stack::poll`] wants to run again at the latest.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        let t = self.smol_now(now);
        self.iface
            .poll_delay(t, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    fn splice(&mut self, io: &mut impl HostIo) {
        for i in 0..self.flows.len() {
            let Some(Entry {
                kind: Kind::Tcp(t), ..
            }) = self.flows[i].as_mut()
            else {
                continue;
            };
            t.splice(FlowId(i as u32), &mut self.sockets, io);
        }
    }

    /// Removes the TCP flows whose both sides are done.
    fn reap(&mut self, io: &mut impl HostIo) {
        for i in 0..self.flows.len() {
            let done = match self.flows[i].as_ref() {
                Some(Entry {
                    kind: Kind::Tcp(t), ..
                }) => t.finished(&self.sockets),
                Some(Entry {
                    kind: Kind::Tls(t), ..
                }) => t.finished(&self.sockets).then_some(false),
                _ => None,
            };
            if let Some(abort) = done {
                self.remove(FlowId(i as u32), io, abort);
            }
        }
    }

    /// Expires idle datagram flows and the flows of ports that are gone.
    fn sweep(&mut self, snap: &Snapshot, now: Instant, io: &mut impl HostIo) {
        for i in 0..self.flows.len() {
            let Some(e) = self.flows[i].as_mut() else {
                continue;
            };
            let idle = now.saturating_duration_since(e.last_seen);
            let gone = snap.port(e.port).is_none();
            let expire = match &mut e.kind {
                Kind::DnsForward { .. } => {
                    if idle >= resolver::FORWARD_TIMEOUT {
                        self.forward_failed(FlowId(i as u32), io);
                    }
                    continue;
                }
                Kind::Tls(t) => {
                    if gone {
                        t.abort(&mut self.sockets);
                    }
                    false
                }
                Kind::DnsTcp(c) => {
                    if gone {
                        self.sockets
                            .get_mut::<smoltcp::socket::tcp::Socket>(Stack::dns_tcp_handle(c))
                            .abort();
                    }
                    false
                }
                Kind::Udp { replied: false } => idle >= UDP_UNREPLIED_TIMEOUT,
                Kind::Udp { replied: true } | Kind::UdpIn => idle >= UDP_TIMEOUT,
                Kind::Icmp { .. } => idle >= ICMP_TIMEOUT,
                Kind::Tcp(t) => {
                    if gone {
                        t.abort(&mut self.sockets);
                    }
                    false
                }
            };
            if expire || (gone && !matches!(e.kind, Kind::Tcp(_) | Kind::DnsTcp(_) | Kind::Tls(_)))
            {
                self.remove(FlowId(i as u32), io, false);
            }
        }
    }
}

/// 64 random bits from the standard library's per-process hash keys (no RNG dependency).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The ASG view of a new flow the stack carries (TCP, UDP, or an ICMP echo request); `None`
/// for other protocols. Shared with `tapestry trace`, so a trace asks what the stack asks.
pub(crate) fn asg_flow(f: &flow::Flow) -> Option<asg::Flow> {
    Some(match f.proto {
        ipv4::PROTO_TCP => asg::Flow::Tcp {
            dst: f.dst,
            port: f.dport,
        },
        ipv4::PROTO_UDP => asg::Flow::Udp {
            dst: f.dst,
            port: f.dport,
        },
        ipv4::PROTO_ICMP => asg::Flow::Icmp {
            dst: f.dst,
            icmp_type: icmp::ECHO_REQUEST,
            code: 0,
        },
        _ => return None,
    })
}

fn protocol_name(proto: u8) -> &'static str {
    match proto {
        ipv4::PROTO_TCP => "tcp",
        ipv4::PROTO_UDP => "udp",
        _ => "icmp",
    }
}

/// The flow key of a TCP packet the stack sends to a container (at `IP_AT`).
fn tcp_key_of(b: &[u8]) -> Key {
    let ip = ipv4::Packet::new_unchecked(&b[frame::IP_AT..]);
    let l4 = &b[frame::IP_AT + ip.header_len()..];
    if ip.protocol() != ipv4::PROTO_TCP || l4.len() < 4 {
        return (0, Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::UNSPECIFIED, 0);
    }
    let t = tcpw::Packet::new_unchecked(l4);
    (
        ipv4::PROTO_TCP,
        ip.dst(),
        t.dst_port(),
        ip.src(),
        t.src_port(),
    )
}

#[cfg(test)]
mod tests;
