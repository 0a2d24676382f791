//! The dataplane driver: one mio loop that moves frames between TAP devices, the underlay UDP
//! socket and the sans-IO switch pipeline. All decisions are the pipeline's; this file only does
//! I/O, so it holds no policy logic.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tapestry_switch::{Conntrack, Counters, PacketBuf, PortId, Switch, Tables, Verdict};
use tapestry_sys::tap::Tap;

const UDP: Token = Token(0);
const WAKER: Token = Token(1);
const PORT_BASE: usize = 2;

/// Changes to the set of ports, sent by the control side.
pub enum PortCommand {
    Add(PortId, Arc<Tap>),
    Remove(PortId),
}

/// Handle the control side keeps to add and remove ports.
#[derive(Clone)]
pub struct DataplaneHandle {
    tx: Sender<PortCommand>,
    waker: Arc<Waker>,
}

impl DataplaneHandle {
    pub fn send(&self, cmd: PortCommand) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// Starts the dataplane thread.
pub fn start(
    udp: UdpSocket,
    tables: Arc<Tables>,
    conntrack: Arc<Conntrack>,
    counters: Arc<Counters>,
) -> Result<DataplaneHandle> {
    let poll = Poll::new().context("creating the dataplane poller")?;
    let waker =
        Arc::new(Waker::new(poll.registry(), WAKER).context("creating the dataplane waker")?);
    let (tx, rx) = crossbeam_channel::unbounded();
    udp.set_nonblocking(true)?;
    let switch = Switch::new(tables, conntrack.clone(), counters);
    std::thread::Builder::new()
        .name("dataplane".into())
        .spawn(move || {
            let mut dp = Dataplane {
                poll,
                udp,
                ports: HashMap::new(),
                switch,
                conntrack,
                rx,
                buf: PacketBuf::new(),
            };
            if let Err(e) = dp.run() {
                tracing::error!("dataplane stopped: {e:#}");
                std::process::exit(3);
            }
        })
        .context("spawning the dataplane thread")?;
    Ok(DataplaneHandle { tx, waker })
}

struct Dataplane {
    poll: Poll,
    udp: UdpSocket,
    ports: HashMap<PortId, Arc<Tap>>,
    switch: Switch,
    conntrack: Arc<Conntrack>,
    rx: Receiver<PortCommand>,
    buf: PacketBuf,
}

impl Dataplane {
    fn run(&mut self) -> Result<()> {
        let fd = self.udp.as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), UDP, Interest::READABLE)?;
        let mut events = Events::with_capacity(256);
        let mut last_sweep = Instant::now();
        loop {
            match self.poll.poll(&mut events, Some(Duration::from_secs(1))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("polling"),
            }
            for ev in events.iter() {
                match ev.token() {
                    UDP => self.drain_underlay(),
                    WAKER => self.apply_commands()?,
                    Token(t) => {
                        let id = PortId((t - PORT_BASE) as u32);
                        self.drain_port(id);
                    }
                }
            }
            let now = Instant::now();
            if now.duration_since(last_sweep) >= Duration::from_secs(1) {
                self.conntrack.expire(now);
                last_sweep = now;
            }
        }
    }

    fn apply_commands(&mut self) -> Result<()> {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                PortCommand::Add(id, tap) => {
                    if let Some(old) = self.ports.remove(&id) {
                        let fd = old.as_raw_fd();
                        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    }
                    tap.set_nonblocking(true)?;
                    let fd = tap.as_raw_fd();
                    self.poll.registry().register(
                        &mut SourceFd(&fd),
                        Token(PORT_BASE + id.0 as usize),
                        Interest::READABLE,
                    )?;
                    self.ports.insert(id, tap);
                    // Frames may have queued before registration; edge-triggered polling would
                    // not report them.
                    self.drain_port(id);
                }
                PortCommand::Remove(id) => {
                    if let Some(old) = self.ports.remove(&id) {
                        let fd = old.as_raw_fd();
                        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    }
                }
            }
        }
        Ok(())
    }

    fn drain_port(&mut self, id: PortId) {
        loop {
            let Some(tap) = self.ports.get(&id) else {
                return;
            };
            let n = match tap.read(self.buf.read_space()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("reading port {}: {e}", id.0);
                    return;
                }
            };
            self.buf.set_len(n);
            let verdict = self.switch.from_port(id, &mut self.buf, Instant::now());
            self.emit(verdict);
        }
    }

    fn drain_underlay(&mut self) {
        loop {
            let (n, from) = match self.udp.recv_from(self.buf.read_space()) {
                Ok(v) => v,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("reading the underlay socket: {e}");
                    return;
                }
            };
            let SocketAddr::V4(from) = from else { continue };
            self.buf.set_len(n);
            let verdict = self
                .switch
                .from_underlay(from, &mut self.buf, Instant::now());
            self.emit(verdict);
        }
    }

    fn emit(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::ToPort(to) => {
                if let Some(tap) = self.ports.get(&to) {
                    // A full TAP queue drops the frame, as a NIC would; TCP recovers.
                    let _ = tap.write(self.buf.data());
                }
            }
            Verdict::ToUnderlay(dst) => {
                let _ = self.udp.send_to(self.buf.data(), dst);
            }
            Verdict::Drop(_) => {}
        }
    }
}
