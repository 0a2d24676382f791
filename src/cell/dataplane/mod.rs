//! The dataplane driver: one mio loop that moves frames between TAP devices, the underlay UDP
//! socket and the sans-IO switch. All decisions are the switch's (the pipeline's verdicts, and
//! `tapestry_switch::offload` for whether a frame is written whole, segmented or has its
//! checksum completed, and for receive coalescing); these files only do I/O.
//!
//! With offloads on (the default), TAPs carry the virtio-net header and hand over 64 KiB TCP
//! super-frames: same-cell ones go TAP to TAP whole, others are split into MSS-sized segments in
//! user space and sent with one sendmsg each (UDP_SEGMENT, [`underlay_tx`]); the receive side
//! uses UDP_GRO and recvmmsg, and writes inner TCP segments coalesced back into super-frames
//! ([`underlay_rx`]). `--no-offload` moves plain frames, still batched with recvmmsg/sendmmsg.
//! Every buffer is allocated when the thread starts.
//!
//! One worker thread per core (`--workers`), each with its own poller, buffers, pipeline, queue
//! of every multiqueue TAP and socket of the VTEP's SO_REUSEPORT group. The kernel keeps a flow
//! on one worker in both directions: the group's BPF program steers underlay datagrams by their
//! inner flow, and a multiqueue TAP sends a container's frames to the queue its flow was last
//! written to. Workers share the table snapshots, the connection tracker and the counters.

mod asg_log;
pub mod capture;
pub mod flow_log;
mod host_io;
pub mod net_in;
mod port_io;
mod ratelog;
pub mod stack;
mod underlay_rx;
mod underlay_tx;

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tapestry_switch::offload::{self, segment_vxlan, UnderlaySend};
use tapestry_switch::wire::virtio_net;
use tapestry_switch::{
    Conntrack, Counters, DropReason, PacketBuf, PortId, Switch, Tables, Verdict,
};
use tapestry_sys::port::PortDev;

use capture::{CaptureTap, Dir};
pub(crate) use port_io::{write_plain, write_plain_tap, write_port, Port, Ports};
use underlay_rx::UnderlayRx;
use underlay_tx::UnderlayTx;

const UDP: Token = Token(0);
const ETH_HEADER_LEN: usize = tapestry_switch::wire::ethernet::HEADER_LEN;
const WAKER: Token = Token(1);
const PORT_BASE: usize = 2;
/// Frames read from one TAP before the loop looks at other work.
const PORT_BUDGET: usize = 32;
/// recvmmsg batches read before the loop looks at other work.
const UDP_BUDGET: usize = 4;
/// Scratch for one segment: outer VXLAN header + inner headers + an MSS of payload (an MSS is
/// below the underlay MTU, at most 64 KiB).
const SCRATCH: usize = (64 << 10) + 256;

/// Changes to one worker's set of ports, sent by the control side.
enum PortCommand {
    /// The worker writes to `tap`, and reads from it too if `read` (its own queue).
    Add {
        id: PortId,
        tap: Arc<PortDev>,
        read: bool,
    },
    Remove(PortId),
}

#[derive(Clone)]
struct WorkerHandle {
    tx: Sender<PortCommand>,
    waker: Arc<Waker>,
    stats: Arc<WorkerStats>,
}

/// What one worker has moved (one writer, relaxed atomics; a cache line of its own), so an
/// operator can see how the kernel spreads flows over the workers.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerStats {
    /// Frames (or super-frames) read from the worker's TAP queues.
    port_frames: AtomicU64,
    /// Receive buffers (datagrams, or GRO batches of them) read from the worker's socket.
    underlay_buffers: AtomicU64,
}

impl WorkerStats {
    fn add_port_frame(&self) {
        self.port_frames.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_underlay_buffers(&self, n: usize) {
        self.underlay_buffers.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl WorkerHandle {
    fn send(&self, cmd: PortCommand) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// Handle the control side keeps to add and remove ports.
#[derive(Clone)]
pub struct DataplaneHandle {
    workers: Vec<WorkerHandle>,
    stack: stack::StackLink,
    capture: Arc<CaptureTap>,
}

impl DataplaneHandle {
    /// The capture tap every worker and the local stack copy frames to (`tapestry capture`).
    pub fn capture(&self) -> &Arc<CaptureTap> {
        &self.capture
    }

    /// The number of worker threads (and TAP queues wanted per port).
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Per worker: frames read from TAP queues and buffers read from the underlay socket.
    pub fn worker_stats(&self) -> Vec<(u64, u64)> {
        self.workers
            .iter()
            .map(|w| {
                (
                    w.stats.port_frames.load(Ordering::Relaxed),
                    w.stats.underlay_buffers.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Adds (or replaces) a port. `queues` are the TAP's queues: worker `i` reads and writes
    /// queue `i`; workers beyond the last queue (a TAP that could not be opened multiqueue) only
    /// write, to queue 0.
    pub fn add_port(&self, id: PortId, queues: &[Arc<PortDev>]) {
        let Some(first) = queues.first() else {
            return;
        };
        for (i, w) in self.workers.iter().enumerate() {
            let (tap, read) = match queues.get(i) {
                Some(q) => (q.clone(), true),
                None => (first.clone(), false),
            };
            w.send(PortCommand::Add { id, tap, read });
        }
        self.stack.send(stack::StackMsg::AddPort {
            id,
            tap: first.clone(),
        });
    }

    pub fn remove_port(&self, id: PortId) {
        for w in &self.workers {
            w.send(PortCommand::Remove(id));
        }
        self.stack.send(stack::StackMsg::RemovePort(id));
    }

    /// The flows the local stack carries now (egress and net-in) and its latest ASG denials.
    pub fn stack_flows(
        &self,
    ) -> Result<(
        Vec<tapestry_switch::stack::FlowInfo>,
        Vec<tapestry_switch::stack::Denial>,
    )> {
        self.stack.ask(|reply| stack::StackMsg::Flows { reply })
    }

    /// Makes `rules` the cell's whole set of net-in mappings: listeners for new host ports are
    /// bound before this returns (an error names the port that could not be bound, and the
    /// mappings in force stay as they were), those of mappings no longer listed are closed.
    pub fn set_net_in(&self, rules: &[net_in::NetInRule]) -> Result<()> {
        let rules = rules.to_vec();
        self.stack
            .ask(|reply| stack::StackMsg::SetNetIn { rules, reply })?
    }
}

/// How the dataplane runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Use UDP GSO/GRO on the underlay (if the kernel has them) and TCP coalescing towards ports
    /// with the virtio-net header.
    pub offload: bool,
    /// Keep polling this long after the last packet before sleeping in epoll.
    pub busy_poll: Duration,
    /// Nice value for the dataplane thread (0: unchanged).
    pub nice: i32,
}

/// Starts one dataplane worker per socket of the VTEP's group (see
/// `tapestry_sys::udp::bind_workers`).
pub fn start(
    socks: Vec<UdpSocket>,
    opts: Options,
    stack_opts: stack::StackOptions,
    tables: Arc<Tables>,
    conntrack: Arc<Conntrack>,
    counters: Arc<Counters>,
    flow_log: flow_log::FlowLog,
) -> Result<DataplaneHandle> {
    let offload = opts.offload;
    let underlay = socks
        .first()
        .context("no underlay socket")?
        .try_clone()
        .context("duplicating the underlay socket for the local stack")?;
    let capture = Arc::new(CaptureTap::default());
    let local = match underlay.local_addr() {
        Ok(std::net::SocketAddr::V4(a)) => a,
        _ => std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
    };
    let stack = stack::start(
        stack_opts,
        underlay,
        capture.clone(),
        tables.clone(),
        conntrack.clone(),
        counters.clone(),
    )?;
    if !offload {
        tracing::info!("offloads off (--no-offload): plain frames, batched system calls");
    }
    let n = socks.len();
    let mut workers = Vec::with_capacity(n);
    for (index, udp) in socks.into_iter().enumerate() {
        let poll = Poll::new().context("creating the dataplane poller")?;
        let waker =
            Arc::new(Waker::new(poll.registry(), WAKER).context("creating the dataplane waker")?);
        let (tx, rx) = crossbeam_channel::unbounded();
        udp.set_nonblocking(true)?;
        let gso = offload && tapestry_sys::udp::gso_supported(&udp);
        let gro = offload && tapestry_sys::udp::enable_gro(&udp).is_ok();
        if offload && index == 0 {
            tracing::info!(
                gso,
                gro,
                workers = n,
                "underlay UDP offloads (UDP_SEGMENT, UDP_GRO)"
            );
        }
        let send_sock = udp.try_clone().context("duplicating the underlay socket")?;
        let switch = Switch::new(tables.clone(), conntrack.clone(), counters.clone());
        let txq = UnderlayTx::new(send_sock, gso, counters.clone(), capture.clone(), local);
        let stats = Arc::new(WorkerStats::default());
        let rxq = UnderlayRx::new(
            udp,
            offload,
            counters.clone(),
            stats.clone(),
            capture.clone(),
            local,
        );
        let dp = Dataplane {
            poll,
            index,
            stats: stats.clone(),
            ports: Ports::default(),
            switch,
            conntrack: conntrack.clone(),
            counters: counters.clone(),
            rx,
            buf: PacketBuf::new(),
            scratch: vec![0u8; SCRATCH].into_boxed_slice(),
            txq,
            rxq,
            again: Vec::with_capacity(1024),
            again_work: Vec::with_capacity(1024),
            udp_again: false,
            busy_poll: opts.busy_poll,
            stack: stack.clone(),
            flow_log: flow_log.clone(),
            flow_log_on: false,
            flow_events: Vec::new(),
            capture: capture.clone(),
        };
        spawn_worker(dp, opts.nice)?;
        workers.push(WorkerHandle { tx, waker, stats });
    }
    Ok(DataplaneHandle {
        workers,
        stack,
        capture,
    })
}

fn spawn_worker(mut dp: Dataplane, nice: i32) -> Result<()> {
    let index = dp.index;
    std::thread::Builder::new()
        .name(format!("dataplane-{index}"))
        .spawn(move || {
            if nice != 0 {
                match tapestry_sys::sched::set_thread_nice(nice) {
                    Ok(()) => tracing::info!(nice, "dataplane thread priority"),
                    Err(e) => tracing::warn!("{e}; the dataplane keeps the normal priority"),
                }
            }
            if let Err(e) = dp.run() {
                tracing::error!("dataplane worker {index} stopped: {e:#}");
                std::process::exit(3);
            }
        })
        .context("spawning a dataplane thread")?;
    Ok(())
}

struct Dataplane {
    poll: Poll,
    /// Worker 0 also expires connections.
    index: usize,
    stats: Arc<WorkerStats>,
    ports: Ports,
    switch: Switch,
    conntrack: Arc<Conntrack>,
    counters: Arc<Counters>,
    rx: Receiver<PortCommand>,
    buf: PacketBuf,
    scratch: Box<[u8]>,
    txq: UnderlayTx,
    rxq: UnderlayRx,
    /// Ports whose budget ran out before they were empty (edge-triggered: come back to them).
    again: Vec<PortId>,
    again_work: Vec<PortId>,
    udp_again: bool,
    busy_poll: Duration,
    stack: stack::StackLink,
    flow_log: flow_log::FlowLog,
    /// Whether this worker's switch reports new flows now.
    flow_log_on: bool,
    flow_events: Vec<tapestry_switch::pipeline::events::FlowEvent>,
    capture: Arc<CaptureTap>,
}

impl Dataplane {
    /// Follows the flow log's switch (before each round of packets, so a flow that wakes the
    /// worker is seen with the switch in force).
    fn follow_flow_log(&mut self) {
        let on = self.flow_log.is_on();
        if on != self.flow_log_on {
            self.switch.set_flow_log(on);
            self.flow_log_on = on;
        }
    }

    /// Hands what the switch reported to the flow log's writer.
    fn collect_flow_events(&mut self) {
        if !self.flow_log_on {
            return;
        }
        let lost = self.switch.take_flow_events(&mut self.flow_events);
        if !self.flow_events.is_empty() || lost > 0 {
            self.flow_log
                .send(std::mem::take(&mut self.flow_events), lost);
        }
    }

    fn run(&mut self) -> Result<()> {
        let fd = self.rxq.socket().as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), UDP, Interest::READABLE)?;
        let mut events = Events::with_capacity(256);
        let mut last_sweep = Instant::now();
        let mut last_busy = Instant::now();
        loop {
            let pending = !self.again.is_empty() || self.udp_again;
            let spinning = !pending && last_busy.elapsed() < self.busy_poll;
            let timeout = if pending || spinning {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("polling"),
            }
            if events.is_empty() && !pending {
                if spinning {
                    // Let whatever else wants this CPU (the containers' own processes) run.
                    std::thread::yield_now();
                    continue;
                }
            } else {
                last_busy = Instant::now();
            }
            self.follow_flow_log();
            for ev in events.iter() {
                match ev.token() {
                    UDP => self.udp_again = true,
                    WAKER => self.apply_commands()?,
                    Token(t) => self.drain_port(PortId((t - PORT_BASE) as u32)),
                }
            }
            std::mem::swap(&mut self.again, &mut self.again_work);
            let mut work = std::mem::take(&mut self.again_work);
            for id in work.drain(..) {
                self.drain_port(id);
            }
            self.again_work = work;
            if self.udp_again {
                self.udp_again =
                    self.rxq
                        .drain(&mut self.switch, &self.ports, &self.stack, UDP_BUDGET);
            }
            self.txq.flush();
            self.collect_flow_events();
            let now = Instant::now();
            if self.index == 0 && now.duration_since(last_sweep) >= Duration::from_secs(1) {
                self.conntrack.expire(now);
                self.counters.set_conntrack_entries(self.conntrack.len());
                last_sweep = now;
            }
        }
    }

    fn apply_commands(&mut self) -> Result<()> {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                PortCommand::Add { id, tap, read } => {
                    self.remove_port(id);
                    tap.set_nonblocking(true)?;
                    if read {
                        let fd = tap.as_raw_fd();
                        self.poll.registry().register(
                            &mut SourceFd(&fd),
                            Token(PORT_BASE + id.0 as usize),
                            Interest::READABLE,
                        )?;
                    }
                    let vnet = tap.vnet_hdr();
                    self.ports.insert(id, Port { tap, vnet, read });
                    if read {
                        // Frames may have queued before registration; edge-triggered polling
                        // would not report them.
                        self.drain_port(id);
                    }
                }
                PortCommand::Remove(id) => self.remove_port(id),
            }
        }
        Ok(())
    }

    fn remove_port(&mut self, id: PortId) {
        if let Some(old) = self.ports.remove(&id) {
            if old.read {
                let fd = old.tap.as_raw_fd();
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
        }
        self.again.retain(|&p| p != id);
    }

    fn drain_port(&mut self, id: PortId) {
        for _ in 0..PORT_BUDGET {
            let Some(port) = self.ports.get(&id) else {
                return;
            };
            let vnet = port.vnet;
            let n = match port.tap.read(self.buf.read_space()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("reading port {}: {e}", id.0);
                    return;
                }
            };
            self.buf.set_len(n);
            self.stats.add_port_frame();
            if self.capture.on() {
                let d = self.buf.data();
                let frame = if vnet {
                    d.get(virtio_net::HEADER_LEN..).unwrap_or_default()
                } else {
                    d
                };
                self.capture.port(id, Dir::Out, frame);
            }
            let now = Instant::now();
            if vnet {
                let (v, hdr) = self.switch.from_port_vnet(id, &mut self.buf, now);
                self.emit_vnet(id, v, hdr);
            } else {
                match self.switch.from_port(id, &mut self.buf, now) {
                    Verdict::ToPort(to) => {
                        if let Some(p) = self.ports.get(&to) {
                            if self.capture.on() {
                                self.capture.port(to, Dir::In, self.buf.data());
                            }
                            write_plain(p, self.buf.data(), &self.counters);
                        }
                    }
                    Verdict::ToUnderlay(dst) => self.txq.push(dst, self.buf.data()),
                    Verdict::ToStack => self.hand_to_stack(id, virtio_net::Repr::default()),
                    Verdict::ToService(to) => {
                        if let Some(ip) = self.buf.data().get(ETH_HEADER_LEN..) {
                            self.stack.service_packet(to, ip, &self.counters);
                        }
                    }
                    Verdict::Drop(_) => {}
                }
            }
        }
        if !self.again.contains(&id) {
            self.again.push(id);
        }
    }

    /// Hands the IP packet in the buffer (an Ethernet frame) to the local stack.
    fn hand_to_stack(&mut self, from: PortId, hdr: virtio_net::Repr) {
        let Some(ip) = self.buf.data().get(ETH_HEADER_LEN..) else {
            return;
        };
        let udp_gso = if hdr.gso_kind() == virtio_net::GSO_UDP_L4 {
            hdr.gso_size
        } else {
            0
        };
        self.stack.packet(from, ip, udp_gso, &self.counters);
    }

    /// Sends what `from_port_vnet` left in the buffer, as the switch's offload decisions say.
    fn emit_vnet(&mut self, from: PortId, v: Verdict, hdr: virtio_net::Repr) {
        let r = match v {
            Verdict::ToStack => {
                self.hand_to_stack(from, hdr);
                Ok(())
            }
            Verdict::ToService(to) => {
                // A TLS client's segment (61443): whole, the stack does not check checksums.
                if let Some(ip) = self.buf.data().get(ETH_HEADER_LEN..) {
                    self.stack.service_packet(to, ip, &self.counters);
                }
                Ok(())
            }
            Verdict::ToPort(to) => {
                let Some(p) = self.ports.get(&to) else {
                    return;
                };
                if self.capture.on() {
                    let d = self.buf.data();
                    let frame = d.get(virtio_net::HEADER_LEN..).unwrap_or_default();
                    self.capture.port(to, Dir::In, frame);
                }
                let counters = &self.counters;
                offload::to_port(self.buf.data_mut(), &hdr, p.vnet, &mut self.scratch, |b| {
                    if p.tap.write(b).is_err() {
                        counters.port_tx_error();
                    }
                })
                .map(drop)
            }
            Verdict::ToUnderlay(dst) => {
                let payload = self.buf.data();
                match offload::underlay_send(payload, &hdr, self.txq.room()) {
                    UnderlaySend::Whole => {
                        self.txq.push(dst, payload);
                        Ok(())
                    }
                    UnderlaySend::BackToBack { room } => {
                        self.txq.push_segmented(dst, payload, &hdr, room)
                    }
                    UnderlaySend::EachSegment => {
                        let txq = &mut self.txq;
                        segment_vxlan(payload, &hdr, &mut self.scratch, |seg| txq.push(dst, seg))
                            .map(drop)
                    }
                }
            }
            Verdict::Drop(_) => Ok(()),
        };
        if r.is_err() {
            self.counters
                .dropped(DropReason::BadOffload, Some(from), self.buf.len());
        }
    }
}
