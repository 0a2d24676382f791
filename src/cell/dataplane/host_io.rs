//! The host sockets behind the local stack's egress and net-in flows: the [`HostIo`] the
//! sans-IO [`tapestry_switch::stack::Stack`] drives (sockets opened through
//! `tapestry_sys::hostsock`, registered with the stack thread's mio registry).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use mio::net::{TcpStream, UdpSocket};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use tapestry_switch::stack::{FlowId, HostIo, IcmpSocket};
use tapestry_switch::FxHashMap;
use tapestry_sys::hostsock;

use super::stack::FLOW_BASE;

pub(super) enum HostSock {
    Tcp {
        s: TcpStream,
        connecting: bool,
    },
    Udp(UdpSocket),
    Icmp(hostsock::Socket),
    /// Net-in UDP: replies go to `client` from the listener of `host_port`.
    UdpIn {
        host_port: u16,
        client: SocketAddr,
    },
}

/// The host sockets of the stack's flows.
pub(super) struct Host {
    pub(super) registry: Registry,
    pub(super) src: Ipv4Addr,
    pub(super) socks: FxHashMap<FlowId, HostSock>,
    pub(super) udp_listeners: BTreeMap<u16, UdpSocket>,
}

pub(super) fn flow_token(id: FlowId) -> Token {
    Token(FLOW_BASE + id.0 as usize)
}

impl Host {
    pub(super) fn add(
        &mut self,
        id: FlowId,
        mut sock: HostSock,
        interest: Interest,
    ) -> io::Result<()> {
        let t = flow_token(id);
        match &mut sock {
            HostSock::Tcp { s, .. } => self.registry.register(s, t, interest)?,
            HostSock::Udp(s) => self.registry.register(s, t, interest)?,
            HostSock::Icmp(s) => {
                self.registry
                    .register(&mut SourceFd(&s.as_raw_fd()), t, interest)?
            }
            HostSock::UdpIn { .. } => {}
        }
        self.socks.insert(id, sock);
        Ok(())
    }
}

impl HostIo for Host {
    fn connect_tcp(&mut self, flow: FlowId, dst: SocketAddrV4) -> io::Result<()> {
        let s = TcpStream::from_std(hostsock::tcp_connect_from(self.src, dst)?);
        self.add(
            flow,
            HostSock::Tcp {
                s,
                connecting: true,
            },
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn open_udp(&mut self, flow: FlowId, dst: SocketAddrV4) -> io::Result<()> {
        let s = UdpSocket::from_std(hostsock::udp_connected(self.src, dst)?);
        self.add(flow, HostSock::Udp(s), Interest::READABLE)
    }

    fn open_icmp(&mut self, flow: FlowId, dst: Ipv4Addr) -> io::Result<IcmpSocket> {
        let (s, kind) = hostsock::icmp_echo(self.src, dst)?;
        self.add(flow, HostSock::Icmp(s), Interest::READABLE)?;
        Ok(match kind {
            hostsock::IcmpKind::Ping => IcmpSocket::Ping,
            hostsock::IcmpKind::Raw => IcmpSocket::Raw,
        })
    }

    fn read(&mut self, flow: FlowId, buf: &mut [u8]) -> io::Result<usize> {
        match self.socks.get_mut(&flow) {
            Some(HostSock::Tcp { s, .. }) => s.read(buf),
            Some(HostSock::Udp(s)) => s.recv(buf),
            Some(HostSock::Icmp(s)) => (&*s).read(buf),
            Some(HostSock::UdpIn { .. }) | None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn write(&mut self, flow: FlowId, buf: &[u8]) -> io::Result<usize> {
        match self.socks.get_mut(&flow) {
            Some(HostSock::Tcp { s, .. }) => s.write(buf),
            Some(HostSock::Udp(s)) => s.send(buf),
            Some(HostSock::Icmp(s)) => s.send(buf),
            Some(HostSock::UdpIn { host_port, client }) => {
                match self.udp_listeners.get(host_port) {
                    Some(l) => l.send_to(buf, *client),
                    None => Err(io::ErrorKind::NotConnected.into()),
                }
            }
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn shutdown_write(&mut self, flow: FlowId) {
        if let Some(HostSock::Tcp { s, .. }) = self.socks.get(&flow) {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    }

    fn close(&mut self, flow: FlowId, abort: bool) {
        match self.socks.remove(&flow) {
            Some(HostSock::Tcp { mut s, .. }) => {
                if abort {
                    let _ = hostsock::reset_on_close(&s);
                }
                let _ = self.registry.deregister(&mut s);
            }
            Some(HostSock::Udp(mut s)) => {
                let _ = self.registry.deregister(&mut s);
            }
            Some(HostSock::Icmp(s)) => {
                let _ = self.registry.deregister(&mut SourceFd(&s.as_raw_fd()));
            }
            Some(HostSock::UdpIn { .. }) | None => {}
        }
    }
}
