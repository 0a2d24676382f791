//! Host sockets of the cell's local stack: the ordinary sockets that carry a container's
//! egress flows from the cell's own address (as passt and slirp4netns do), and the listeners
//! of net-in port mappings. Everything is non-blocking and needs no privilege, except the raw
//! ICMP socket that [`icmp_echo`] falls back to where `net.ipv4.ping_group_range` does not
//! cover the cell's group.
//!
//! These return `io::Error` as the kernel gave it: the local stack turns its kind into what the
//! container hears (ECONNREFUSED a RST, EHOSTUNREACH an ICMP unreachable).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};

pub use socket2::Socket;
use socket2::{Domain, Protocol, Type};

/// Starts a TCP connection from `src` (port chosen by the kernel) to `dst`. The connection is
/// in progress when this returns: it is up when the socket turns writable with no error
/// (`take_error`).
pub fn tcp_connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    if !src.is_unspecified() {
        s.bind(&SocketAddrV4::new(src, 0).into())?;
    }
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

/// A UDP socket on `src` connected to `dst`: it receives only `dst`'s replies, and an ICMP
/// error for a datagram it sent comes back as the error of a later call.
pub fn udp_connected(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddrV4::new(src, 0).into())?;
    s.connect(&dst.into())?;
    Ok(s.into())
}

/// How an ICMP echo socket was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// `SOCK_DGRAM, IPPROTO_ICMP`: unprivileged; the kernel sets the echo identifier and hands
    /// over only the replies to it, without the IP header.
    Ping,
    /// `SOCK_RAW, IPPROTO_ICMP`: needs CAP_NET_RAW; every ICMP message the host receives,
    /// IP header first.
    Raw,
}

/// An ICMP socket connected to `dst` for echo: a ping socket where `ping_group_range` allows
/// it, a raw socket otherwise.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> io::Result<(Socket, IcmpKind)> {
    let (s, kind) = match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
        Ok(s) => (s, IcmpKind::Ping),
        Err(ping) => match Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) {
            Ok(s) => (s, IcmpKind::Raw),
            // The ping socket's error says why (EACCES: ping_group_range).
            Err(_) => return Err(ping),
        },
    };
    s.set_nonblocking(true)?;
    if !src.is_unspecified() {
        s.bind(&SocketAddrV4::new(src, 0).into())?;
    }
    s.connect(&SocketAddrV4::new(dst, 0).into())?;
    Ok((s, kind))
}

/// A listening TCP socket for a net-in mapping (SO_REUSEADDR, so a restarted cell binds again
/// while old connections linger in TIME_WAIT).
pub fn tcp_listen(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A UDP socket bound to `addr` for a net-in mapping.
pub fn udp_listen(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Closes a stream with a RST instead of a FIN (SO_LINGER 0), as a reset flow must.
pub fn reset_on_close(s: &impl std::os::fd::AsFd) -> io::Result<()> {
    socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn tcp_connect_from_loopback_completes_and_carries_bytes() {
        let l = tcp_listen(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let SocketAddr::V4(at) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let mut c = tcp_connect_from(Ipv4Addr::LOCALHOST, at).unwrap();
        l.set_nonblocking(false).unwrap();
        let (mut a, _) = l.accept().unwrap();
        c.set_nonblocking(false).unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        a.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
    }

    #[test]
    fn refused_connection_shows_in_take_error() {
        // Find a closed port: bind, note it, close.
        let port = tcp_listen(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = tcp_connect_from(
            Ipv4Addr::LOCALHOST,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        );
        let err = match c {
            Err(e) => e,
            Ok(c) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                c.take_error().unwrap().expect("a refused connection")
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    use std::net::SocketAddr;
}
