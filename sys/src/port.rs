//! A container's port as the dataplane sees it: a TAP queue or a packet socket on a veth's
//! host end. Both read and write whole frames, with the same virtio-net header when asked.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::packet::PacketPort;
use crate::tap::Tap;
use crate::Result;

/// How a cell gives containers their interface (`tapestry cell --port-kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// A TAP device in the container's namespace (/dev/net/tun).
    Tap,
    /// A veth pair, its host end read through AF_PACKET.
    Packet,
}

impl PortKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Tap => "tap",
            PortKind::Packet => "packet",
        }
    }

    /// TAP where /dev/net/tun can be opened, packet otherwise.
    pub fn detect() -> PortKind {
        if crate::packet::tun_available() {
            PortKind::Tap
        } else {
            PortKind::Packet
        }
    }
}

impl std::fmt::Display for PortKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PortKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<PortKind, String> {
        match s {
            "tap" => Ok(PortKind::Tap),
            "packet" => Ok(PortKind::Packet),
            other => Err(format!("port kind {other:?} is not one of tap, packet")),
        }
    }
}

/// One queue of a container's port.
#[derive(Debug)]
pub enum PortDev {
    Tap(Tap),
    Packet(PacketPort),
}

impl PortDev {
    pub fn kind(&self) -> PortKind {
        match self {
            PortDev::Tap(_) => PortKind::Tap,
            PortDev::Packet(_) => PortKind::Packet,
        }
    }

    /// The device's name (the TAP in the container's namespace, or the veth's host end).
    pub fn name(&self) -> &str {
        match self {
            PortDev::Tap(t) => t.name(),
            PortDev::Packet(p) => p.name(),
        }
    }

    /// Whether every frame read or written starts with a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        match self {
            PortDev::Tap(t) => t.options().vnet_hdr,
            PortDev::Packet(p) => p.vnet_hdr(),
        }
    }

    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<()> {
        match self {
            PortDev::Tap(t) => t.set_nonblocking(nonblocking),
            PortDev::Packet(p) => p.set_nonblocking(nonblocking),
        }
    }

    /// Reads one frame from the container.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PortDev::Tap(t) => t.read(buf),
            PortDev::Packet(p) => p.read(buf),
        }
    }

    /// Writes one frame to the container.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PortDev::Tap(t) => t.write(buf),
            PortDev::Packet(p) => p.write(buf),
        }
    }

    /// Writes one frame given as header and body.
    pub fn write2(&self, head: &[u8], body: &[u8]) -> io::Result<usize> {
        match self {
            PortDev::Tap(t) => t.write2(head, body),
            PortDev::Packet(p) => p.write2(head, body),
        }
    }
}

impl AsRawFd for PortDev {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            PortDev::Tap(t) => t.as_raw_fd(),
            PortDev::Packet(p) => p.as_raw_fd(),
        }
    }
}

impl From<Tap> for PortDev {
    fn from(t: Tap) -> PortDev {
        PortDev::Tap(t)
    }
}

impl From<PacketPort> for PortDev {
    fn from(p: PacketPort) -> PortDev {
        PortDev::Packet(p)
    }
}
