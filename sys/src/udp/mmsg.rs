//! recvmmsg / sendmmsg over caller-owned buffers, with GRO segment sizes and GSO per message.
//! Headers, iovecs, addresses and control buffers live on the stack: no allocation per call.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use super::gso::{check_gso, put_segment_cmsg, UDP_GRO};

/// The most messages one [`recv_batch`] or [`send_batch`] call handles.
pub const MAX_BATCH: usize = 64;

/// A control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct Cmsg(pub [u8; 32]);

impl Cmsg {
    pub(crate) fn new() -> Cmsg {
        Cmsg([0; 32])
    }
}

/// What one received buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes in the buffer.
    pub len: usize,
    /// Sender.
    pub src: SocketAddrV4,
    /// Size of each datagram in the buffer (GRO); the last may be shorter. Equal to `len`
    /// when the kernel did not coalesce.
    pub segment_size: usize,
    /// The datagram did not fit the buffer and was cut (MSG_TRUNC).
    pub truncated: bool,
}

impl Default for RecvMeta {
    fn default() -> Self {
        RecvMeta {
            len: 0,
            src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            segment_size: 0,
            truncated: false,
        }
    }
}

/// One message for [`send_batch`].
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    pub dst: SocketAddrV4,
    pub data: &'a [u8],
    /// If set, `data` is sent as datagrams of this size with UDP_SEGMENT (at most 64).
    pub segment_size: Option<u16>,
}

pub(crate) fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
    sa
}

pub(crate) fn to_v4(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes()),
        u16::from_be(sa.sin_port),
    )
}

/// The UDP_GRO segment size from a received message's control data, if there is one.
pub(crate) fn parse_gro_cmsg(msg: &libc::msghdr) -> Option<u16> {
    // SAFETY: `msg` was filled by recvmsg/recvmmsg: msg_control points to our buffer and
    // msg_controllen is what the kernel wrote, so the CMSG_* walk stays inside it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return u16::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// Receives up to `min(bufs.len(), meta.len(), 64)` buffers with one recvmmsg into the caller's
/// buffers; fills `meta[i]` for each and returns how many. With UDP_GRO on, each buffer may hold
/// several datagrams (see [`RecvMeta::segment_size`]). A nonblocking socket with nothing to read
/// gives `WouldBlock`.
pub fn recv_batch<B: AsMut<[u8]>>(
    sock: &impl AsRawFd,
    bufs: &mut [B],
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let n = bufs.len().min(meta.len()).min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: these are plain old data arrays (raw pointers and integers); all-zero is valid.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut addrs: [libc::sockaddr_in; MAX_BATCH] = unsafe { zeroed() };
    let mut cmsgs = [Cmsg::new(); MAX_BATCH];
    for i in 0..n {
        let b = bufs[i].as_mut();
        iovs[i] = libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
        h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = cmsgs[i].0.as_mut_ptr().cast();
        h.msg_controllen = cmsgs[i].0.len() as _;
    }
    // SAFETY: the first `n` headers point at live, exclusively borrowed buffers, addresses and
    // control areas of the lengths given; all outlive the call. No timeout pointer.
    let got = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as _,
            0,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = got as usize;
    for i in 0..got {
        let len = hdrs[i].msg_len as usize;
        let gso = parse_gro_cmsg(&hdrs[i].msg_hdr);
        meta[i] = RecvMeta {
            len,
            src: to_v4(&addrs[i]),
            segment_size: gso.map_or(len, |g| g as usize),
            truncated: hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    Ok(got)
}

/// Sends up to 64 messages with one sendmmsg; a message with `segment_size` goes out as several
/// datagrams (UDP_SEGMENT). Returns how many messages the kernel took (a partial count means
/// the socket buffer filled; retry the rest).
pub fn send_batch(sock: &impl AsRawFd, msgs: &[Transmit<'_>]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: plain old data arrays; all-zero is valid.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { zeroed() };
    // SAFETY: as above.
    let mut addrs: [libc::sockaddr_in; MAX_BATCH] = unsafe { zeroed() };
    let mut cmsgs = [Cmsg::new(); MAX_BATCH];
    for (i, m) in msgs[..n].iter().enumerate() {
        addrs[i] = sockaddr_in(m.dst);
        iovs[i] = libc::iovec {
            iov_base: m.data.as_ptr() as *mut libc::c_void,
            iov_len: m.data.len(),
        };
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
        h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        if let Some(seg) = m.segment_size {
            check_gso(m.data.len(), seg)?;
            let clen = put_segment_cmsg(&mut cmsgs[i], seg);
            h.msg_control = cmsgs[i].0.as_mut_ptr().cast();
            h.msg_controllen = clen as _;
        }
    }
    // SAFETY: the first `n` headers point at live addresses, iovecs over the callers' slices
    // (only read by sendmmsg) and control areas, all outliving the call.
    let sent = unsafe { libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr(), n as _, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}
