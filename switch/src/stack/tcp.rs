//! One spliced TCP flow: a smoltcp socket facing the container and a host stream facing the
//! world, with bytes moved between them as each side has room (back-pressure both ways: the
//! stack reads from the host only into free send buffer, and takes from smoltcp only what the
//! host accepts, so the windows close instead of memory growing).
//!
//! Egress flows are held at the container's SYN until the host connection is up; net-in flows
//! start with smoltcp connecting to the container from the client's address.
//!
//! The container's MSS is kept and smoltcp is told a large one instead, so it sends segments of
//! up to 64 KiB that the kernel (or [`crate::offload`]) splits at the container's MSS: one
//! write per 64 KiB rather than one per 1.4 KB.

use std::io;
use std::net::SocketAddrV4;
use std::time::Duration;

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};

use super::device::{Pipe, MTU};
use super::{FlowId, HostIo};
use crate::wire::{ipv4, tcp};

/// The MSS smoltcp is told the container has: its own largest (device MTU - 40).
const BIG_MSS: u16 = (MTU - 40) as u16;
/// RFC 9293's default when a SYN carries no MSS option.
const DEFAULT_MSS: u16 = 536;
/// Unacknowledged data this long aborts the connection (the container is gone).
const RETRANSMIT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub struct TcpFlow {
    pub handle: Option<SocketHandle>,
    /// The container's latest SYN, while the host connection is being made.
    syn: Vec<u8>,
    pub net_in: bool,
    /// The MSS the container announced.
    pub container_mss: u16,
    pub host_readable: bool,
    pub host_writable: bool,
    host_eof: bool,
    shut_wr: bool,
    failed: bool,
}

/// Closed sockets kept for the next flows, their buffers already allocated: a new connection
/// would otherwise allocate and zero two buffers (1 MiB by default), which costs more than the
/// rest of its handshake.
#[derive(Debug)]
pub struct SocketPool {
    spare: Vec<SocketHandle>,
    buffer: usize,
}

/// Spare sockets kept at most (closed sockets stay in smoltcp's set, which every packet walks).
const SPARE_MAX: usize = 64;

impl SocketPool {
    pub fn new(buffer: usize) -> SocketPool {
        SocketPool {
            spare: Vec::new(),
            buffer,
        }
    }

    /// A closed socket with this pool's buffers.
    pub(super) fn take(&mut self, sockets: &mut SocketSet<'static>) -> SocketHandle {
        if let Some(h) = self.spare.pop() {
            return h;
        }
        let mut s = Socket::new(
            SocketBuffer::new(vec![0u8; self.buffer]),
            SocketBuffer::new(vec![0u8; self.buffer]),
        );
        s.set_nagle_enabled(false);
        s.set_ack_delay(None);
        s.set_timeout(Some(RETRANSMIT_TIMEOUT.into()));
        sockets.add(s)
    }

    /// Takes back a socket that is closed (or in TIME-WAIT, which a new `listen`/`connect`
    /// resets), or removes it from the set.
    pub(super) fn give(&mut self, sockets: &mut SocketSet<'static>, h: SocketHandle) {
        if !sockets.get::<Socket>(h).is_open() && self.spare.len() < SPARE_MAX {
            self.spare.push(h);
        } else {
            sockets.remove(h);
        }
    }
}

impl TcpFlow {
    fn new(net_in: bool) -> TcpFlow {
        TcpFlow {
            handle: None,
            syn: Vec::new(),
            net_in,
            container_mss: DEFAULT_MSS,
            host_readable: true,
            host_writable: true,
            host_eof: false,
            shut_wr: false,
            failed: false,
        }
    }

    /// An egress flow waiting for its host connection, holding `syn`.
    pub fn connecting(syn: &[u8]) -> TcpFlow {
        let mut t = TcpFlow::new(false);
        t.syn = syn.to_vec();
        t
    }

    /// A net-in flow: smoltcp connects to `container` from `client`.
    pub fn net_in(
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        pool: &mut SocketPool,
        client: SocketAddrV4,
        container: SocketAddrV4,
    ) -> Option<TcpFlow> {
        let h = pool.take(sockets);
        let remote = IpEndpoint::new((*container.ip()).into(), container.port());
        let local = IpListenEndpoint {
            addr: Some((*client.ip()).into()),
            port: client.port(),
        };
        if sockets
            .get_mut::<Socket>(h)
            .connect(iface.context(), remote, local)
            .is_err()
        {
            pool.give(sockets, h);
            return None;
        }
        let mut t = TcpFlow::new(true);
        t.handle = Some(h);
        Some(t)
    }

    /// A retransmitted SYN replaces the held one.
    pub fn hold_syn(&mut self, packet: &[u8]) {
        if syn_flags(packet) == Some(tcp::SYN) {
            self.syn.clear();
            self.syn.extend_from_slice(packet);
        }
    }

    pub fn held_syn(&self) -> &[u8] {
        &self.syn
    }

    /// The host connection is up: a socket listens on the destination and gets the SYN
    /// (returned, to be queued for smoltcp).
    pub fn accept(
        &mut self,
        sockets: &mut SocketSet<'static>,
        pool: &mut SocketPool,
        dev: &mut Pipe,
    ) -> Option<Vec<u8>> {
        let ip = ipv4::Packet::new_checked(&self.syn[..]).ok()?;
        let t = tcp::Packet::new_checked(ip.payload()).ok()?;
        let h = pool.take(sockets);
        let listening = sockets.get_mut::<Socket>(h).listen(IpListenEndpoint {
            addr: Some(ip.dst().into()),
            port: t.dst_port(),
        });
        if listening.is_err() {
            pool.give(sockets, h);
            return None;
        }
        self.handle = Some(h);
        let mut b = dev.buffer();
        b.clear();
        b.extend_from_slice(&self.syn);
        self.syn = Vec::new();
        self.note_segment(&mut b);
        Some(b)
    }

    /// Looks at a segment from the container before smoltcp does: a SYN's MSS is kept and
    /// replaced by [`BIG_MSS`].
    pub fn note_segment(&mut self, packet: &mut [u8]) {
        if syn_flags(packet).is_none_or(|f| f & tcp::SYN == 0) {
            return;
        }
        let ihl = ipv4::Packet::new_unchecked(&packet[..]).header_len();
        let seg = &mut packet[ihl..];
        let hl = tcp::Packet::new_unchecked(&seg[..])
            .header_len()
            .min(seg.len());
        let opts = &mut seg[tcp::HEADER_LEN.min(hl)..hl];
        let mut i = 0;
        while i < opts.len() {
            match opts[i] {
                0 => break,
                1 => i += 1,
                kind => {
                    let Some(&len) = opts.get(i + 1) else { break };
                    let len = len as usize;
                    if len < 2 || i + len > opts.len() {
                        break;
                    }
                    if kind == 2 && len == 4 {
                        let mss = u16::from_be_bytes([opts[i + 2], opts[i + 3]]);
                        self.container_mss = mss.max(64);
                        opts[i + 2..i + 4].copy_from_slice(&BIG_MSS.to_be_bytes());
                    }
                    i += len;
                }
            }
        }
    }

    /// Moves bytes both ways as far as both sides take them.
    pub fn splice(&mut self, id: FlowId, sockets: &mut SocketSet<'static>, io: &mut impl HostIo) {
        let Some(h) = self.handle else {
            return;
        };
        if self.failed {
            return;
        }
        let s = sockets.get_mut::<Socket>(h);
        // Container -> host.
        while self.host_writable && s.can_recv() {
            match s.recv(|buf| match io.write(id, buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            }) {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.host_writable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => return self.fail(s),
                Err(_) => break,
            }
        }
        if !self.shut_wr
            && s.recv_queue() == 0
            && matches!(
                s.state(),
                State::CloseWait | State::LastAck | State::Closing | State::TimeWait
            )
        {
            io.shutdown_write(id);
            self.shut_wr = true;
        }
        // Host -> container.
        while self.host_readable && !self.host_eof && s.can_send() {
            match s.send(|buf| match io.read(id, buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            }) {
                Ok(Ok(0)) => {
                    self.host_eof = true;
                    s.close();
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => self.host_readable = false,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => return self.fail(s),
                Err(_) => break,
            }
        }
    }

    fn fail(&mut self, s: &mut Socket) {
        self.failed = true;
        s.abort();
    }

    /// Whether the flow is over: `Some(abort)` once smoltcp's side is closed (`abort`: the host
    /// side is to be reset rather than closed).
    pub fn finished(&self, sockets: &SocketSet<'static>) -> Option<bool> {
        let h = self.handle?;
        let s = sockets.get::<Socket>(h);
        match s.state() {
            State::Closed => Some(self.failed || !(self.host_eof && self.shut_wr)),
            State::TimeWait => Some(false),
            _ => None,
        }
    }

    /// Resets the container's side (its port is gone).
    pub fn abort(&mut self, sockets: &mut SocketSet<'static>) {
        if let Some(h) = self.handle {
            self.failed = true;
            sockets.get_mut::<Socket>(h).abort();
        }
    }

    pub fn release(&self, sockets: &mut SocketSet<'static>, pool: &mut SocketPool) {
        if let Some(h) = self.handle {
            pool.give(sockets, h);
        }
    }

    pub fn state_name(&self, sockets: &SocketSet<'static>) -> &'static str {
        let Some(h) = self.handle else {
            return "connecting";
        };
        match sockets.get::<Socket>(h).state() {
            State::Closed => "closed",
            State::Listen => "listen",
            State::SynSent => "syn_sent",
            State::SynReceived => "syn_received",
            State::Established => "established",
            State::FinWait1 => "fin_wait_1",
            State::FinWait2 => "fin_wait_2",
            State::CloseWait => "close_wait",
            State::Closing => "closing",
            State::LastAck => "last_ack",
            State::TimeWait => "time_wait",
        }
    }
}

/// The TCP flags of an IPv4/TCP packet, if it is one.
fn syn_flags(packet: &[u8]) -> Option<u8> {
    let ip = ipv4::Packet::new_checked(packet).ok()?;
    if ip.protocol() != ipv4::PROTO_TCP {
        return None;
    }
    tcp::Packet::new_checked(ip.payload())
        .ok()
        .map(|t| t.flags())
}
