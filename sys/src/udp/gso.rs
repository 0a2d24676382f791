//! UDP GSO (UDP_SEGMENT) send, UDP GRO receive, and a probe of what the kernel supports.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use super::mmsg::{parse_gro_cmsg, sockaddr_in, to_v4, Cmsg, RecvMeta};
use crate::{Error, Result};

/// The kernel's UDP_MAX_SEGMENTS: at most this many segments per GSO send.
pub const MAX_GSO_SEGMENTS: usize = 64;
pub(crate) const UDP_SEGMENT: libc::c_int = 103;
pub(crate) const UDP_GRO: libc::c_int = 104;

/// Checks a GSO send: a non-zero segment size and at most 64 segments.
pub(crate) fn check_gso(len: usize, segment_size: u16) -> io::Result<()> {
    if segment_size == 0 || len.div_ceil(segment_size as usize) > MAX_GSO_SEGMENTS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("UDP GSO: {len} bytes in segments of {segment_size} (at most {MAX_GSO_SEGMENTS} segments)"),
        ));
    }
    Ok(())
}

/// Writes a UDP_SEGMENT control message for `segment_size` into `cmsg`; returns its length.
pub(crate) fn put_segment_cmsg(cmsg: &mut Cmsg, segment_size: u16) -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
    assert!(space <= cmsg.0.len());
    cmsg.0[..space].fill(0);
    let hdr = libc::cmsghdr {
        // SAFETY: CMSG_LEN is a pure size computation.
        cmsg_len: unsafe { libc::CMSG_LEN(size_of::<u16>() as u32) } as _,
        cmsg_level: libc::SOL_UDP,
        cmsg_type: UDP_SEGMENT,
    };
    // SAFETY: `cmsg.0` is 8-byte aligned (Cmsg is repr(align(8))) and at least `space` bytes, so
    // a cmsghdr fits at its start and the u16 fits at CMSG_DATA's offset (the header size).
    unsafe {
        std::ptr::write(cmsg.0.as_mut_ptr().cast::<libc::cmsghdr>(), hdr);
        let data = cmsg.0.as_mut_ptr().add(size_of::<libc::cmsghdr>());
        std::ptr::write_unaligned(data.cast::<u16>(), segment_size);
    }
    space
}

/// Sends `buf` to `dst` as `ceil(len / segment_size)` datagrams of `segment_size` bytes (the
/// last may be shorter) with one sendmsg carrying a UDP_SEGMENT control message. At most 64
/// segments. Returns the bytes sent.
///
/// Errors: `InvalidInput` before any system call for a zero segment size or more than 64
/// segments; from the kernel, `EIO` when the outgoing device cannot checksum (fall back to
/// [`super::send_batch`] without `segment_size`) and `EINVAL` when a segment exceeds the path MTU.
pub fn send_gso(
    sock: &impl AsRawFd,
    dst: SocketAddrV4,
    buf: &[u8],
    segment_size: u16,
) -> io::Result<usize> {
    check_gso(buf.len(), segment_size)?;
    let mut addr = sockaddr_in(dst);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cmsg = Cmsg::new();
    let clen = put_segment_cmsg(&mut cmsg, segment_size);
    // SAFETY: msghdr is plain old data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = clen as _;
    // SAFETY: every pointer in `msg` (address, one iovec over `buf`, control buffer) is valid for
    // the lengths given and outlives the call; sendmsg only reads through them.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether the kernel knows UDP_SEGMENT, asked on `sock` itself (setsockopt UDP_SEGMENT 0, which
/// leaves per-send segmentation to control messages). Needs no traffic and no loopback device.
pub fn gso_supported(sock: &impl AsRawFd) -> bool {
    super::setsockopt_int(sock, libc::SOL_UDP, UDP_SEGMENT, 0).is_ok()
}

/// Turns on UDP_GRO: the kernel may hand over several datagrams of one flow as one buffer,
/// with the segment size in a control message (see [`recv_gro`] and [`super::recv_batch`]).
pub fn enable_gro(sock: &impl AsRawFd) -> Result<()> {
    super::setsockopt_int(sock, libc::SOL_UDP, UDP_GRO, 1)
        .map_err(|e| Error::io("setsockopt UDP_GRO", e))
}

/// Receives one (possibly GRO-coalesced) buffer with recvmsg. `meta.segment_size` is the size
/// of each datagram in it (the last may be shorter); the buffer should be 64 KiB to take a
/// coalesced batch whole.
pub fn recv_gro(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<RecvMeta> {
    // SAFETY: sockaddr_in and msghdr are plain old data; all-zero values are valid.
    let mut addr: libc::sockaddr_in = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = Cmsg::new();
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.0.len() as _;
    // SAFETY: every pointer in `msg` is valid for writes of the lengths given and outlives the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = n as usize;
    let gso = parse_gro_cmsg(&msg);
    Ok(RecvMeta {
        len,
        src: to_v4(&addr),
        segment_size: gso.map_or(len, |g| g as usize),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    })
}

/// What the kernel's UDP stack does, found by trying it over loopback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpOffloads {
    /// UDP_SEGMENT sends work.
    pub gso: bool,
    /// UDP_GRO is accepted and coalesced datagrams arrive with their segment size.
    pub gro: bool,
    /// The most segments one GSO send may carry (0 without GSO).
    pub max_gso_segments: usize,
}

/// Probes UDP GSO and GRO by sending a 2-segment GSO datagram between two sockets on 127.0.0.1.
/// Never fails: whatever does not work is reported as off.
pub fn probe_udp_offloads() -> UdpOffloads {
    let mut out = UdpOffloads::default();
    let Ok((tx, rx)) = loopback_pair() else {
        return out;
    };
    let gro_on = enable_gro(&rx).is_ok();
    let Ok(dst) = rx.local_addr() else { return out };
    let std::net::SocketAddr::V4(dst) = dst else {
        return out;
    };
    let payload = [0x5au8; 200];
    if send_gso(&tx, dst, &payload, 100).is_ok() {
        out.gso = true;
        out.max_gso_segments = MAX_GSO_SEGMENTS;
    }
    let _ = rx.set_read_timeout(Some(std::time::Duration::from_millis(200)));
    let mut buf = [0u8; 512];
    if let Ok(m) = recv_gro(&rx, &mut buf) {
        out.gro = gro_on && m.len == 200 && m.segment_size == 100;
    }
    tracing::debug!(?out, "UDP offload probe");
    out
}

fn loopback_pair() -> io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    let tx = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let rx = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok((tx, rx))
}
