//! The local stack's thread: it owns the sans-IO [`Stack`], the host sockets of egress flows,
//! the net-in listeners and the ASG log. Workers hand it the IP packets their pipeline sent
//! `ToStack` (a bounded channel; a full one drops and counts, as a full NIC queue would), and it
//! writes the stack's frames to the containers' TAPs. Every decision is the stack's; this file
//! only moves bytes and opens sockets (through `tapestry_sys::hostsock`).

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::TcpListener;
use mio::{Events, Poll, Token, Waker};
use tapestry_switch::offload;
use tapestry_switch::stack::{Denial, FlowId, FlowInfo, Stack, StackConfig};
use tapestry_switch::wire::virtio_net;
use tapestry_switch::{Counters, DropReason, FxHashMap, PortId, Tables};
use tapestry_sys::port::PortDev;

use super::asg_log::AsgLog;
use super::capture::{CaptureTap, Dir};
use super::host_io::{Host, HostSock};
use super::net_in::{NetInProtocol, NetInRule};

mod listeners;

const WAKER: Token = Token(0);
/// Listener tokens: 1 + host port (TCP) or 1 + 65536 + host port (UDP).
const LISTENER_BASE: usize = 1;
pub(super) const FLOW_BASE: usize = 1 << 18;
/// Packets waiting for the stack thread at most.
const QUEUE: usize = 4096;

/// What the workers and the control side send the stack thread.
pub(crate) enum StackMsg {
    /// An IPv4 packet from a container (`udp_gso`: see [`Stack::from_port`]).
    Packet {
        port: PortId,
        buf: Vec<u8>,
        udp_gso: u16,
    },
    /// A TLS client's packet to port `port`'s 61443.
    Service {
        port: PortId,
        buf: Vec<u8>,
    },
    AddPort {
        id: PortId,
        tap: Arc<PortDev>,
    },
    RemovePort(PortId),
    SetNetIn {
        rules: Vec<NetInRule>,
        reply: Sender<Result<()>>,
    },
    Flows {
        reply: Sender<(Vec<FlowInfo>, Vec<Denial>)>,
    },
}

/// A sender to the stack thread, for workers and the control side.
#[derive(Clone)]
pub(crate) struct StackLink {
    tx: Sender<StackMsg>,
    free: Receiver<Vec<u8>>,
    waker: Arc<Waker>,
    /// The stack thread is running or busy-polling and will see the queue without a wake-up
    /// (an eventfd write saved per packet).
    awake: Arc<AtomicBool>,
}

impl StackLink {
    /// Copies an IPv4 packet for the stack (buffers are recycled through `free`).
    pub fn packet(&self, port: PortId, ip: &[u8], udp_gso: u16, counters: &Counters) {
        let mut buf = self.free.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(ip);
        match self.tx.try_send(StackMsg::Packet { port, buf, udp_gso }) {
            Ok(()) => {
                if !self.awake.load(Ordering::SeqCst) {
                    let _ = self.waker.wake();
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                counters.dropped(DropReason::StackQueueFull, Some(port), ip.len())
            }
        }
    }

    /// A TLS client's IP packet to `port`:61443, admitted by the pipeline.
    pub fn service_packet(&self, port: PortId, ip: &[u8], counters: &Counters) {
        let mut buf = self.free.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(ip);
        match self.tx.try_send(StackMsg::Service { port, buf }) {
            Ok(()) => {
                if !self.awake.load(Ordering::SeqCst) {
                    let _ = self.waker.wake();
                }
            }
            Err(_) => counters.dropped(DropReason::StackQueueFull, Some(port), ip.len()),
        }
    }

    pub fn send(&self, msg: StackMsg) {
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Asks the stack thread and waits for its answer.
    pub fn ask<T>(&self, msg: impl FnOnce(Sender<T>) -> StackMsg) -> Result<T> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(msg(reply));
        rx.recv_timeout(Duration::from_secs(10))
            .context("the local stack thread did not answer")
    }
}

/// Settings of the stack thread.
#[derive(Clone)]
pub struct StackOptions {
    /// Egress flows leave from this address (CF's MASQUERADE to the cell's IP).
    pub egress_ip: Ipv4Addr,
    /// Net-in listeners bind this address.
    pub net_in_address: Ipv4Addr,
    /// The containers' MTU.
    pub mtu: usize,
    /// Where `asg.log` is written.
    pub state_dir: PathBuf,
    /// Keep polling this long after the last work before sleeping (as the workers do).
    pub busy_poll: Duration,
    /// Upstream resolvers for names outside the internal domains.
    pub dns_upstreams: Vec<SocketAddrV4>,
    /// Instance identity credentials: the 61443 terminator of each container.
    pub credentials: Arc<crate::cell::identity::CredentialRegistry>,
}

pub(crate) fn start(
    opts: StackOptions,
    underlay: std::net::UdpSocket,
    capture: Arc<CaptureTap>,
    tables: Arc<Tables>,
    conntrack: Arc<tapestry_switch::Conntrack>,
    counters: Arc<Counters>,
) -> Result<StackLink> {
    let poll = Poll::new().context("creating the local stack's poller")?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).context("creating its waker")?);
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let (free_tx, free) = crossbeam_channel::bounded(QUEUE);
    let registry = poll
        .registry()
        .try_clone()
        .context("cloning the poller's registry")?;
    let log = AsgLog::open(&opts.state_dir.join("asg.log"))?;
    let now = Instant::now();
    let stack = Stack::new(
        StackConfig {
            mtu: opts.mtu,
            dns_upstreams: opts.dns_upstreams.clone(),
            ..StackConfig::default()
        },
        counters.clone(),
        now,
    );
    let awake = Arc::new(AtomicBool::new(true));
    let switch = tapestry_switch::Switch::new(tables.clone(), conntrack, counters.clone());
    let mut driver = Driver {
        awake: awake.clone(),
        busy_poll: opts.busy_poll,
        poll,
        rx,
        free_tx,
        stack,
        host: Host {
            registry,
            src: opts.egress_ip,
            socks: FxHashMap::default(),
            udp_listeners: BTreeMap::new(),
        },
        ports: FxHashMap::default(),
        tcp_listeners: BTreeMap::new(),
        rules: BTreeMap::new(),
        net_in_address: opts.net_in_address,
        tables,
        counters,
        scratch: vec![0u8; (64 << 10) + 256].into_boxed_slice(),
        log,
        switch,
        pkt: tapestry_switch::PacketBuf::new(),
        local: match underlay.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            _ => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        },
        underlay,
        capture,
        credentials: opts.credentials.clone(),
        tls_generation: u64::MAX,
        tls_tables_generation: u64::MAX,
        tls: std::collections::HashMap::new(),
    };
    std::thread::Builder::new()
        .name("local-stack".into())
        .spawn(move || {
            if let Err(e) = driver.run() {
                tracing::error!("the local stack stopped: {e:#}");
                std::process::exit(3);
            }
        })
        .context("spawning the local stack thread")?;
    Ok(StackLink {
        tx,
        free,
        waker,
        awake,
    })
}

struct Port {
    tap: Arc<PortDev>,
    vnet: bool,
}

struct Driver {
    awake: Arc<AtomicBool>,
    busy_poll: Duration,
    poll: Poll,
    rx: Receiver<StackMsg>,
    free_tx: Sender<Vec<u8>>,
    stack: Stack,
    host: Host,
    ports: FxHashMap<PortId, Port>,
    tcp_listeners: BTreeMap<u16, TcpListener>,
    /// (protocol, host port) -> the container address it forwards to.
    rules: BTreeMap<(NetInProtocol, u16), SocketAddrV4>,
    net_in_address: Ipv4Addr,
    tables: Arc<Tables>,
    counters: Arc<Counters>,
    scratch: Box<[u8]>,
    log: AsgLog,
    /// Frames the terminator sends to another cell go through a pipeline as the container's.
    switch: tapestry_switch::Switch,
    pkt: tapestry_switch::PacketBuf,
    underlay: std::net::UdpSocket,
    /// The underlay socket's address.
    local: SocketAddrV4,
    capture: Arc<CaptureTap>,
    credentials: Arc<crate::cell::identity::CredentialRegistry>,
    tls_generation: u64,
    tls_tables_generation: u64,
    /// The credentials each terminator was built from, and the terminator.
    tls: std::collections::HashMap<
        Ipv4Addr,
        (
            Arc<crate::cell::identity::InstanceCredentials>,
            Arc<tapestry_tls_proxy::TerminatorConfig>,
        ),
    >,
}

impl Driver {
    fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(256);
        let mut last_busy = Instant::now();
        loop {
            let now = Instant::now();
            let spinning = now.duration_since(last_busy) < self.busy_poll;
            let mut timeout = if spinning {
                Duration::ZERO
            } else {
                self.stack
                    .poll_delay(now)
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1))
            };
            if !timeout.is_zero() {
                // Workers wake us from here on; what they queued before that, we see now.
                self.awake.store(false, Ordering::SeqCst);
                if !self.rx.is_empty() {
                    timeout = Duration::ZERO;
                }
            }
            let r = self.poll.poll(&mut events, Some(timeout));
            self.awake.store(true, Ordering::SeqCst);
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("polling the local stack"),
            }
            if !events.is_empty() || !self.rx.is_empty() {
                last_busy = Instant::now();
            } else if spinning {
                std::thread::yield_now();
            }
            let snap = self.tables.load_full();
            let now = Instant::now();
            if self.credentials.generation() != self.tls_generation
                || snap.generation() != self.tls_tables_generation
            {
                self.sync_tls(&snap);
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    Token(t) if t >= FLOW_BASE => {
                        let id = FlowId((t - FLOW_BASE) as u32);
                        self.flow_event(id, ev);
                    }
                    Token(t) if t >= LISTENER_BASE + 65536 => {
                        self.udp_net_in(&snap, (t - LISTENER_BASE - 65536) as u16, now)
                    }
                    Token(t) => self.accept(&snap, (t - LISTENER_BASE) as u16, now),
                }
            }
            // Control messages and packets; bounded, so host sockets get their turn.
            for _ in 0..QUEUE {
                let Ok(msg) = self.rx.try_recv() else { break };
                self.message(&snap, msg, now);
            }
            self.stack.poll(&snap, now, &mut self.host);
            self.transmit();
            while let Some(a) = self.stack.poll_admitted() {
                self.log.admitted(&snap, &a);
            }
        }
    }

    fn message(&mut self, snap: &tapestry_switch::Snapshot, msg: StackMsg, now: Instant) {
        match msg {
            StackMsg::Packet { port, buf, udp_gso } => {
                if let Err(r) = self
                    .stack
                    .from_port(snap, port, &buf, udp_gso, now, &mut self.host)
                {
                    self.counters.dropped(r, Some(port), buf.len());
                }
                let _ = self.free_tx.try_send(buf);
            }
            StackMsg::Service { port, buf } => {
                if let Err(r) = self.stack.to_service(snap, port, &buf, now) {
                    self.counters.dropped(r, Some(port), buf.len());
                }
                let _ = self.free_tx.try_send(buf);
            }
            StackMsg::AddPort { id, tap } => {
                let vnet = tap.vnet_hdr();
                self.ports.insert(id, Port { tap, vnet });
            }
            StackMsg::RemovePort(id) => {
                self.ports.remove(&id);
            }
            StackMsg::SetNetIn { rules, reply } => {
                let _ = reply.send(self.set_net_in(&rules));
            }
            StackMsg::Flows { reply } => {
                let _ = reply.send((self.stack.flows(), self.stack.denials()));
            }
        }
    }

    fn flow_event(&mut self, id: FlowId, ev: &mio::event::Event) {
        let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
        let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
        if let Some(HostSock::Tcp { s, connecting }) = self.host.socks.get_mut(&id) {
            if *connecting {
                let result = match s.take_error() {
                    Ok(Some(e)) | Err(e) => Err(e),
                    Ok(None) => match s.peer_addr() {
                        Ok(_) => Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotConnected && !ev.is_error() => {
                            return; // still in progress
                        }
                        Err(e) => Err(e),
                    },
                };
                *connecting = false;
                let ok = result.is_ok();
                self.stack.host_connected(id, result, &mut self.host);
                if !ok {
                    return;
                }
            }
        }
        self.stack
            .host_ready(id, readable, writable, &mut self.host);
    }

    /// Builds, reloads or drops the 61443 terminators after the credentials changed.
    fn sync_tls(&mut self, snap: &tapestry_switch::Snapshot) {
        self.tls_generation = self.credentials.generation();
        self.tls_tables_generation = snap.generation();
        let current = self.credentials.snapshot();
        self.tls.retain(|ip, _| current.contains_key(ip));
        for ip in self.stack.tls_ips() {
            if !current.contains_key(&ip) {
                self.stack.set_tls(ip, None);
            }
        }
        for (ip, cred) in current.iter() {
            let client_auth = snap
                .port_by_ip(*ip)
                .and_then(|p| snap.label(p.id))
                .is_some_and(|l| l.tls_client_auth);
            let same_options = |cfg: &tapestry_tls_proxy::TerminatorConfig| {
                cfg.options().require_client_cert == client_auth
            };
            if self
                .tls
                .get(ip)
                .is_some_and(|(c, cfg)| Arc::ptr_eq(c, cred) && same_options(cfg))
            {
                continue;
            }
            let creds = match cred.tls_credentials() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("TLS on {ip}:61443: the instance credentials do not load: {e}");
                    continue;
                }
            };
            let config = match self.tls.get(ip).filter(|(_, cfg)| same_options(cfg)) {
                // Renewal: new handshakes use the new certificate, open sessions keep theirs.
                Some((_, cfg)) => match cfg.reload(&creds) {
                    Ok(()) => cfg.clone(),
                    Err(e) => {
                        tracing::warn!("TLS on {ip}:61443: reloading the credentials: {e}");
                        continue;
                    }
                },
                None => match tapestry_tls_proxy::TerminatorConfig::new(
                    &creds,
                    tapestry_tls_proxy::TerminatorOptions {
                        alpn: vec![b"http/1.1".to_vec()],
                        require_client_cert: client_auth,
                        ..Default::default()
                    },
                ) {
                    Ok(c) => Arc::new(c),
                    Err(e) => {
                        tracing::warn!("TLS on {ip}:61443: {e}");
                        continue;
                    }
                },
            };
            self.stack.set_tls(*ip, Some(config.clone()));
            self.tls.insert(*ip, (cred.clone(), config));
        }
    }

    /// Sends a frame the terminator speaks as container `port` to another cell: through the
    /// pipeline (routing, the container's tag, encapsulation), then the underlay.
    fn via_pipeline(&mut self, port: PortId, hdr: &virtio_net::Repr, buf: &mut [u8]) {
        let frame = &mut buf[virtio_net::HEADER_LEN..];
        if offload::complete_checksum(frame, hdr).is_err()
            || frame.len() > self.pkt.read_space().len()
        {
            return;
        }
        let Some(p) = self.tables.load().port(port).copied() else {
            return;
        };
        {
            let mut eth = tapestry_switch::wire::ethernet::Frame::new_unchecked(&mut frame[..]);
            eth.set_src(p.mac);
            eth.set_dst(p.gateway_mac);
        }
        self.pkt.read_space()[..frame.len()].copy_from_slice(frame);
        self.pkt.set_len(frame.len());
        match self.switch.from_port(port, &mut self.pkt, Instant::now()) {
            tapestry_switch::Verdict::ToUnderlay(to) => {
                if self.capture.on() {
                    self.capture
                        .underlay(Dir::Out, self.local, to, self.pkt.data());
                }
                if self.underlay.send_to(self.pkt.data(), to).is_err() {
                    self.counters.port_tx_error();
                }
            }
            tapestry_switch::Verdict::ToPort(to) => {
                if let Some(q) = self.ports.get(&to) {
                    if self.capture.on() {
                        self.capture.port(to, Dir::In, self.pkt.data());
                    }
                    super::write_plain_tap(&q.tap, q.vnet, self.pkt.data(), &self.counters);
                }
            }
            _ => {}
        }
    }

    /// Writes the stack's frames to the containers' TAPs.
    fn transmit(&mut self) {
        while let Some(mut t) = self.stack.poll_transmit() {
            if t.via_pipeline {
                let hdr = t.hdr;
                self.via_pipeline(t.port, &hdr, &mut t.buf);
                self.stack.recycle(t.buf);
                continue;
            }
            if let Some(p) = self.ports.get(&t.port) {
                t.hdr.emit(&mut virtio_net::Packet::new_unchecked(
                    &mut t.buf[..virtio_net::HEADER_LEN],
                ));
                let len = t.buf.len() - virtio_net::HEADER_LEN;
                if self.capture.on() {
                    self.capture
                        .port(t.port, Dir::In, &t.buf[virtio_net::HEADER_LEN..]);
                }
                let counters = &self.counters;
                let r = offload::to_port(&mut t.buf, &t.hdr, p.vnet, &mut self.scratch, |b| {
                    if p.tap.write(b).is_err() {
                        counters.port_tx_error();
                    }
                });
                match r {
                    Ok(_) => self.counters.port_tx(t.port, len),
                    Err(_) => self
                        .counters
                        .dropped(DropReason::BadOffload, Some(t.port), len),
                }
            }
            self.stack.recycle(t.buf);
        }
    }
}
