//! An in-process container: a smoltcp interface on an in-memory Ethernet device, running a
//! small echo service (TCP and UDP) and the client side of the lab's probes.
//!
//! Like a container the cell attaches, the host has its address as a /32, everything goes to
//! the gateway's MAC (the cell installs it as a permanent neighbour, so there is no ARP): the
//! device adds and strips the Ethernet header, smoltcp sees IP packets.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpCidr, IpEndpoint};
use tapestry_switch::tables::{container_mac, gateway_mac};
use tapestry_switch::PortId;

/// The port of every host's TCP echo service.
pub const TCP_ECHO: u16 = 8080;
/// The port of every host's UDP echo service.
pub const UDP_ECHO: u16 = 8081;
const TCP_BUFFER: usize = 4096;

const ETH_HEADER: usize = 14;

/// Ethernet frames waiting to go into, or out of, the interface.
#[derive(Debug, Default)]
pub struct Wire {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    /// The Ethernet header of every frame sent: to the gateway MAC, from the host's MAC.
    header: [u8; ETH_HEADER],
}

impl Wire {
    fn new(ip: Ipv4Addr) -> Wire {
        let mut header = [0u8; ETH_HEADER];
        header[..6].copy_from_slice(&gateway_mac(ip));
        header[6..12].copy_from_slice(&container_mac(ip));
        header[12..].copy_from_slice(&0x0800u16.to_be_bytes());
        Wire {
            header,
            ..Wire::default()
        }
    }
}

pub struct RxTok(Vec<u8>);
pub struct TxTok<'a>(&'a mut Wire);

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0[ETH_HEADER..])
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; ETH_HEADER + len];
        b[..ETH_HEADER].copy_from_slice(&self.0.header);
        let r = f(&mut b[ETH_HEADER..]);
        self.0.tx.push_back(b);
        r
    }
}

impl phy::Device for Wire {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxTok, TxTok<'_>)> {
        // Only IPv4 reaches the stack (the switch sends nothing else to a port but ARP replies).
        loop {
            let f = self.rx.pop_front()?;
            if f.len() > ETH_HEADER && f[12..14] == [0x08, 0x00] {
                return Some((RxTok(f), TxTok(self)));
            }
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxTok<'_>> {
        Some(TxTok(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1500;
        let mut ck = ChecksumCapabilities::default();
        ck.ipv4 = Checksum::Both;
        caps.checksum = ck;
        caps
    }
}

/// What a probe tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// Connect to the peer's TCP echo service, send a request, read it back, close.
    Tcp,
    /// Send a datagram to the peer's UDP echo service and wait for it to come back.
    Udp,
}

/// One request/response exchange from this host to a peer.
#[derive(Debug)]
pub struct Probe {
    pub kind: ProbeKind,
    pub target: SocketAddrV4,
    /// Whether the lab's policies allow it.
    pub expect_allowed: bool,
    handle: SocketHandle,
    local_port: u16,
    request: Vec<u8>,
    received: Vec<u8>,
    sent: bool,
    last_send: Option<Instant>,
    /// When the response arrived whole (virtual or real time since the lab started).
    pub answered_at: Option<Instant>,
}

impl Probe {
    pub fn answered(&self) -> bool {
        self.answered_at.is_some()
    }
}

/// An in-process container.
pub struct Host {
    pub ip: Ipv4Addr,
    pub cell: usize,
    pub port: PortId,
    pub tag: u16,
    pub wire: Wire,
    iface: Interface,
    sockets: SocketSet<'static>,
    listeners: Vec<SocketHandle>,
    udp_echo: SocketHandle,
    pub probes: Vec<Probe>,
    next_port: u16,
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
    )
}

fn udp_socket() -> udp::Socket<'static> {
    udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
    )
}

impl Host {
    /// A host at `ip` on `cell`'s port `port`, whose TCP echo service serves `listeners`
    /// connections at once (a SYN beyond them is answered with a RST, as by a full backlog).
    pub fn new(
        ip: Ipv4Addr,
        cell: usize,
        port: PortId,
        tag: u16,
        seed: u64,
        listeners: usize,
    ) -> Host {
        let mut wire = Wire::new(ip);
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = seed;
        let mut iface = Interface::new(cfg, &mut wire, Instant::ZERO);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(ip.into(), 32));
        });
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(169, 254, 0, 1));
        let mut sockets = SocketSet::new(vec![]);
        let listeners = (0..listeners.max(1))
            .map(|_| {
                let mut s = tcp_socket();
                let _ = s.listen(TCP_ECHO);
                sockets.add(s)
            })
            .collect();
        let mut u = udp_socket();
        let _ = u.bind(UDP_ECHO);
        let udp_echo = sockets.add(u);
        Host {
            ip,
            cell,
            port,
            tag,
            wire,
            iface,
            sockets,
            listeners,
            udp_echo,
            probes: vec![],
            next_port: 49152,
        }
    }

    /// Adds a probe to `target` (started at the next poll).
    pub fn probe(&mut self, kind: ProbeKind, target: SocketAddrV4, expect_allowed: bool) {
        let local_port = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(49152);
        let handle = match kind {
            ProbeKind::Tcp => self.sockets.add(tcp_socket()),
            ProbeKind::Udp => {
                let mut u = udp_socket();
                let _ = u.bind(local_port);
                self.sockets.add(u)
            }
        };
        let request = format!("tapestry-lab {} -> {target} #{local_port}", self.ip).into_bytes();
        self.probes.push(Probe {
            kind,
            target,
            expect_allowed,
            handle,
            local_port,
            request,
            received: vec![],
            sent: false,
            last_send: None,
            answered_at: None,
        });
    }

    /// Runs the interface and the apps once; returns whether anything happened.
    pub fn poll(&mut self, now: Instant) -> bool {
        let mut busy = self.iface.poll(now, &mut self.wire, &mut self.sockets)
            != smoltcp::iface::PollResult::None;
        busy |= self.serve();
        busy |= self.run_probes(now);
        busy |= self.iface.poll(now, &mut self.wire, &mut self.sockets)
            != smoltcp::iface::PollResult::None;
        busy
    }

    /// When the interface next needs a poll without new frames (retransmissions).
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.iface.poll_delay(now, &self.sockets)
    }

    fn serve(&mut self) -> bool {
        let mut busy = false;
        let mut buf = [0u8; TCP_BUFFER];
        for &h in &self.listeners {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if s.can_recv() && s.can_send() {
                let room = s.send_capacity() - s.send_queue();
                if let Ok(n) = s.recv_slice(&mut buf[..room.min(TCP_BUFFER)]) {
                    let _ = s.send_slice(&buf[..n]);
                    busy |= n > 0;
                }
            }
            if s.state() == tcp::State::CloseWait && s.send_queue() == 0 {
                s.close();
                busy = true;
            }
            if !s.is_open() {
                let _ = s.listen(TCP_ECHO);
            }
        }
        let u = self.sockets.get_mut::<udp::Socket>(self.udp_echo);
        while let Ok((n, meta)) = u.recv_slice(&mut buf) {
            let _ = u.send_slice(&buf[..n], meta.endpoint);
            busy = true;
        }
        busy
    }

    fn run_probes(&mut self, now: Instant) -> bool {
        let mut busy = false;
        let cx = self.iface.context();
        for p in &mut self.probes {
            if p.answered_at.is_some() {
                continue;
            }
            let ep = IpEndpoint::new((*p.target.ip()).into(), p.target.port());
            match p.kind {
                ProbeKind::Tcp => {
                    let s = self.sockets.get_mut::<tcp::Socket>(p.handle);
                    if !p.sent && s.state() == tcp::State::Closed && p.last_send.is_none() {
                        let _ = s.connect(cx, ep, p.local_port);
                        p.last_send = Some(now);
                        busy = true;
                    }
                    if !p.sent && s.may_send() {
                        let _ = s.send_slice(&p.request);
                        p.sent = true;
                        busy = true;
                    }
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.recv_slice(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        p.received.extend_from_slice(&buf[..n]);
                        busy = true;
                    }
                    if p.sent && p.received == p.request {
                        s.close();
                        p.answered_at = Some(now);
                        busy = true;
                    }
                }
                ProbeKind::Udp => {
                    let u = self.sockets.get_mut::<udp::Socket>(p.handle);
                    // A datagram may be lost (ARP pending, a full queue): resend every 200 ms.
                    let due = p
                        .last_send
                        .is_none_or(|t| now >= t + Duration::from_millis(200));
                    if due && u.can_send() {
                        let _ = u.send_slice(&p.request, ep);
                        p.sent = true;
                        p.last_send = Some(now);
                        busy = true;
                    }
                    let mut buf = [0u8; 256];
                    while let Ok((n, from)) = u.recv_slice(&mut buf) {
                        if from.endpoint == ep && buf[..n] == p.request[..] {
                            p.answered_at = Some(now);
                        }
                        busy = true;
                    }
                }
            }
        }
        busy
    }
}
