//! Underlay UDP sockets: bind with buffer sizes and port reuse, UDP GSO send, UDP GRO receive,
//! recvmmsg/sendmmsg batches over caller-owned buffers, and an offload probe.

mod gso;
mod mmsg;
mod steer;

pub use gso::{
    enable_gro, gso_supported, probe_udp_offloads, recv_gro, send_gso, UdpOffloads,
    MAX_GSO_SEGMENTS,
};
pub use mmsg::{recv_batch, send_batch, RecvMeta, Transmit, MAX_BATCH};
pub use steer::{bind_workers, MAX_WORKERS};

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::{Error, Result};

/// A UDP socket bound to `addr`: nonblocking, SO_REUSEPORT if `reuse_port` (one socket per
/// worker, see [`bind_workers`]; no SO_REUSEADDR, so a second process cannot share the port), SO_RCVBUF and SO_SNDBUF of `buf_bytes` (SO_*BUFFORCE first, which
/// needs CAP_NET_ADMIN and ignores rmem_max; the plain options, capped by the kernel, otherwise).
pub fn bind(addr: SocketAddrV4, reuse_port: bool, buf_bytes: usize) -> Result<UdpSocket> {
    let e = |op: &'static str| move |err| Error::io(format!("{op} UDP {addr}"), err);
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(e("socket"))?;
    if reuse_port {
        sock.set_reuse_port(true).map_err(e("SO_REUSEPORT"))?;
    }
    if buf_bytes > 0 {
        let n = libc::c_int::try_from(buf_bytes).unwrap_or(libc::c_int::MAX);
        if setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, n).is_err() {
            sock.set_recv_buffer_size(buf_bytes)
                .map_err(e("SO_RCVBUF"))?;
        }
        if setsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, n).is_err() {
            sock.set_send_buffer_size(buf_bytes)
                .map_err(e("SO_SNDBUF"))?;
        }
    }
    sock.set_nonblocking(true).map_err(e("O_NONBLOCK"))?;
    sock.bind(&addr.into()).map_err(e("bind"))?;
    Ok(sock.into())
}

/// setsockopt with an int value.
pub(crate) fn setsockopt_int(
    sock: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: setsockopt reads one c_int from a valid pointer with the matching length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn binds_nonblocking_with_buffers() {
        let s = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), true, 4 << 20).unwrap();
        let sock = socket2::SockRef::from(&s);
        assert!(!sock.reuse_address().unwrap());
        assert!(sock.reuse_port().unwrap());
        // Linux doubles the value it stores; without privilege it is capped by rmem_max.
        assert!(sock.recv_buffer_size().unwrap() > 0);
        let mut b = [0u8; 8];
        assert_eq!(
            s.recv(&mut b).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        // Two reuse_port sockets share a port.
        let port = s.local_addr().unwrap().port();
        let s2 = bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), true, 0).unwrap();
        assert_eq!(s2.local_addr().unwrap().port(), port);
    }

    #[test]
    fn bind_error_names_address() {
        // TEST-NET-1 is not a local address: EADDRNOTAVAIL.
        let err = bind(
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 4789),
            false,
            0,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("bind UDP 192.0.2.1:4789: "),
            "{err}"
        );
    }
}
