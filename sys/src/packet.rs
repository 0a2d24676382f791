//! AF_PACKET ports, for hosts where /dev/net/tun cannot be opened (an unprivileged user
//! namespace, a 0600 /dev/net/tun): the container gets one end of a veth pair, and the cell
//! reads and writes the other end through packet sockets. With `PACKET_VNET_HDR` every frame
//! carries the same virtio-net header as a TAP's, so checksum and segmentation offloads stay
//! (a container's 64 KiB TCP super-frame arrives whole, and the cell may write one back).
//!
//! Several dataplane workers each get their own socket in one `PACKET_FANOUT_HASH` group, so a
//! flow's frames always reach the same worker. `PACKET_IGNORE_OUTGOING` keeps the frames the
//! cell itself sends (and anything the kernel sends out of the host end) out of its reads.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::netlink::msg::{self, Veth};
use crate::netlink::Netlink;
use crate::tap::check_ifname;
use crate::{Error, Result};

const SOL_PACKET: libc::c_int = 263;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_FANOUT: libc::c_int = 18;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_FANOUT_HASH: u32 = 0;
const ETH_P_ALL: u16 = 0x0003;
/// Socket buffers asked for (SO_RCVBUFFORCE/SO_SNDBUFFORCE, else capped by rmem_max/wmem_max):
/// room for a few dozen 64 KiB super-frames, like a TAP's ring.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// One packet socket bound to the host end of a container's veth pair.
#[derive(Debug)]
pub struct PacketPort {
    fd: OwnedFd,
    name: String,
    vnet_hdr: bool,
}

impl PacketPort {
    /// Opens a packet socket on link `ifname` of the calling thread's namespace, with the
    /// virtio-net header if `vnet_hdr`, joining fanout group `fanout` (hash mode) if given.
    pub fn open(ifname: &str, vnet_hdr: bool, fanout: Option<u16>) -> Result<PacketPort> {
        check_ifname(ifname)?;
        let index = Netlink::open(None)?.ifindex(ifname)?.ok_or_else(|| {
            Error::io(
                format!("opening a packet socket on {ifname}"),
                io::Error::from_raw_os_error(libc::ENODEV),
            )
        })?;
        // Protocol 0 at creation: nothing is queued on the socket before it is bound.
        // SAFETY: plain socket(2) call with constant arguments; no pointers.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(Error::last_os(format!("socket AF_PACKET for {ifname}")));
        }
        // SAFETY: `raw` is a fresh fd returned by socket(2) that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let port = PacketPort {
            fd,
            name: ifname.to_string(),
            vnet_hdr,
        };
        if vnet_hdr {
            port.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")?;
        }
        port.setsockopt(
            SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            1,
            "PACKET_IGNORE_OUTGOING",
        )?;
        for (force, plain, what) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, "SO_RCVBUF"),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, "SO_SNDBUF"),
        ] {
            if port
                .setsockopt(libc::SOL_SOCKET, force, SOCKET_BUFFER, what)
                .is_err()
            {
                port.setsockopt(libc::SOL_SOCKET, plain, SOCKET_BUFFER, what)?;
            }
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as libc::c_ushort;
        sa.sll_protocol = ETH_P_ALL.to_be();
        sa.sll_ifindex = index;
        // SAFETY: `sa` is a valid sockaddr_ll and the length matches its size.
        let rc = unsafe {
            libc::bind(
                port.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(Error::last_os(format!("bind AF_PACKET to {ifname}")));
        }
        if let Some(group) = fanout {
            let arg = u32::from(group) | (PACKET_FANOUT_HASH << 16);
            port.setsockopt(
                SOL_PACKET,
                PACKET_FANOUT,
                arg as libc::c_int,
                "PACKET_FANOUT",
            )?;
        }
        Ok(port)
    }

    fn setsockopt(
        &self,
        level: libc::c_int,
        opt: libc::c_int,
        v: libc::c_int,
        what: &str,
    ) -> Result<()> {
        // SAFETY: setsockopt reads one c_int from a valid pointer with the matching length.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(Error::last_os(format!(
                "setsockopt {what} on the packet socket of {}",
                self.name
            )));
        }
        Ok(())
    }

    /// The host end's interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether frames carry a virtio-net header.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Sets or clears O_NONBLOCK.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<()> {
        crate::tap::set_fd_nonblocking(self.fd.as_raw_fd(), nonblocking).map_err(|e| {
            Error::io(
                format!("O_NONBLOCK on the packet socket of {}", self.name),
                e,
            )
        })
    }

    /// Makes [`PacketPort::read`] give up after `timeout` with `WouldBlock` (SO_RCVTIMEO);
    /// `None` waits for ever.
    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> Result<()> {
        let d = timeout.unwrap_or_default();
        let tv = libc::timeval {
            tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            // A zero timeval waits for ever: the smallest timeout is 1 us.
            tv_usec: match (timeout, d.subsec_micros()) {
                (Some(_), 0) if d.as_secs() == 0 => 1,
                (_, us) => us as libc::suseconds_t,
            },
        };
        // SAFETY: setsockopt reads one timeval from a valid pointer with the matching length.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(Error::last_os(format!(
                "setsockopt SO_RCVTIMEO on the packet socket of {}",
                self.name
            )));
        }
        Ok(())
    }

    /// Reads one frame (with its virtio-net header if `vnet_hdr`).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends one frame (with its virtio-net header if `vnet_hdr`) out of the host end, to the
    /// container.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends one frame given in two parts (header and frame) with one writev.
    pub fn write2(&self, head: &[u8], body: &[u8]) -> io::Result<usize> {
        crate::tap::writev2(self.fd.as_raw_fd(), head, body)
    }
}

impl AsRawFd for PacketPort {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for PacketPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Creates a veth pair: `host` in the calling thread's namespace, `peer` in the namespace at
/// `peer_netns`, both with `mtu`. Then brings `host` up with IPv6 off (the kernel must not
/// talk to the container from the host end; the cell does all the talking). Fails if either
/// name exists.
pub fn create_veth(host: &str, peer: &str, peer_netns: &Path, mtu: u32) -> Result<()> {
    check_ifname(host)?;
    check_ifname(peer)?;
    let ns = File::open(peer_netns)
        .map_err(|e| Error::io(format!("opening netns {}", peer_netns.display()), e))?;
    let mut nl = Netlink::open(None)?;
    let v = Veth {
        name: host,
        peer,
        peer_netns_fd: ns.as_raw_fd(),
        mtu,
    };
    nl.request(
        |seq| msg::veth_new(seq, &v),
        &format!(
            "RTM_NEWLINK {host} type veth peer name {peer} netns {}",
            peer_netns.display()
        ),
    )?;
    // Best effort: a kernel without IPv6 has no such file.
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6"), "1");
    crate::netlink::set_link_up(host)
}

/// Whether this process can open /dev/net/tun (TAP ports), or needs AF_PACKET ones.
pub fn tun_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .is_ok()
}
