//! The stack's interface types: the flow ids and host sockets the driver provides ([`HostIo`]),
//! what the stack hands back (frames, admitted and denied flows, flow listings), and its
//! settings.
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use crate::tables::PortId;
use crate::wire::virtio_net;

/// One flow of the stack, as the driver names its host socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u32);

/// How the host carries ICMP echo: an unprivileged ping socket (the kernel picks the echo
/// identifier and filters replies) or a raw socket (every ICMP message of the host arrives,
/// with its IP header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpSocket {
    Ping,
    Raw,
}

/// The host side of the stack: sockets the driver opens and moves bytes through. Every call is
/// non-blocking; `WouldBlock` means "later" (the driver reports readiness with
/// [`super::Stack::host_ready`]).
pub trait HostIo {
    /// Starts a TCP connection from the cell's address to `dst`; its outcome is reported with
    /// [`super::Stack::host_connected`].
    fn connect_tcp(&mut self, flow: FlowId, dst: SocketAddrV4) -> io::Result<()>;
    /// Opens a UDP socket on the cell's address, connected to `dst`.
    fn open_udp(&mut self, flow: FlowId, dst: SocketAddrV4) -> io::Result<()>;
    /// Opens an ICMP socket for echo to `dst`.
    fn open_icmp(&mut self, flow: FlowId, dst: Ipv4Addr) -> io::Result<IcmpSocket>;
    /// Reads from a stream or receives one datagram.
    fn read(&mut self, flow: FlowId, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes to a stream or sends one datagram.
    fn write(&mut self, flow: FlowId, buf: &[u8]) -> io::Result<usize>;
    /// Half-closes a stream (FIN to the host peer).
    fn shutdown_write(&mut self, flow: FlowId);
    /// Closes the socket; `abort` resets a stream instead of closing it gracefully.
    fn close(&mut self, flow: FlowId, abort: bool);
}

/// A frame for a container: write `buf[FRAME_HEADROOM..]` to `port`, or, for a port with the
/// virtio-net header, `hdr` emitted into `buf[..FRAME_HEADROOM]` followed by the frame (see
/// [`crate::offload::to_port`], which does either). Hand `buf` back with [`super::Stack::recycle`].
#[derive(Debug)]
pub struct Transmit {
    pub port: PortId,
    pub hdr: virtio_net::Repr,
    pub buf: Vec<u8>,
    /// The frame is not for `port` but from it, to another cell: run it through the pipeline
    /// as a frame `port` sent (the TLS terminator speaks as the container).
    pub via_pipeline: bool,
}

/// A flow admitted by an ASG rule with `log: true` (CF's ASG logging).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub port: PortId,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// "tcp", "udp" or "icmp".
    pub protocol: &'static str,
    pub group: String,
    pub rule: usize,
}

/// A new flow the ASGs refused, kept for `tapestry cell status` (the last [`DENIALS_KEPT`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub port: PortId,
    pub protocol: &'static str,
    pub container: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// `asg_no_rule` or `asg_deny_networks`.
    pub reason: &'static str,
    pub at: Instant,
}

/// Denials kept for status.
pub const DENIALS_KEPT: usize = 64;

/// What the stack carries now, for `tapestry cell status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowInfo {
    pub port: PortId,
    pub protocol: &'static str,
    pub container: SocketAddrV4,
    pub remote: SocketAddrV4,
    /// What the flow is: "egress", "net-in", "dns" (to 169.254.0.2, or forwarded for it) or
    /// "tls" (a connection to the container's 61443).
    pub direction: &'static str,
    pub state: &'static str,
    /// The ASG group and rule index that admitted an egress flow.
    pub rule: Option<(String, usize)>,
}

/// Settings of the local stack.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The containers' MTU (underlay MTU minus the encapsulation).
    pub mtu: usize,
    /// Most flows at once; a new one beyond is refused like a denied one (and counted).
    pub max_flows: usize,
    /// smoltcp's receive and send buffer per TCP flow, each.
    pub tcp_buffer: usize,
    /// Where queries for names outside the internal domains go (none: SERVFAIL).
    pub dns_upstreams: Vec<SocketAddrV4>,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            mtu: 1450,
            max_flows: 65_536,
            tcp_buffer: 512 << 10,
            dns_upstreams: Vec::new(),
        }
    }
}
