//! The stack thread's net-in listeners: host ports mapped to containers (TCP accepted and
//! spliced by the stack, UDP relayed), bound and closed as the mappings change.
use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use anyhow::Result;
use mio::net::{TcpListener, UdpSocket};
use mio::{Interest, Registry, Token};
use tapestry_sys::hostsock;

use super::super::host_io::{flow_token, HostSock};
use super::super::net_in::{NetInProtocol, NetInRule};
use super::{Driver, LISTENER_BASE};

impl Driver {
    /// Net-in TCP: accepts every waiting client of `host_port`.
    pub(super) fn accept(
        &mut self,
        snap: &tapestry_switch::Snapshot,
        host_port: u16,
        now: Instant,
    ) {
        loop {
            let Some(l) = self.tcp_listeners.get(&host_port) else {
                return;
            };
            let (mut s, client) = match l.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("net-in: accepting on port {host_port}: {e}");
                    return;
                }
            };
            let (SocketAddr::V4(client), Some(&to)) =
                (client, self.rules.get(&(NetInProtocol::Tcp, host_port)))
            else {
                let _ = hostsock::reset_on_close(&s);
                continue;
            };
            let _ = s.set_nodelay(true);
            let Some(id) = self.stack.net_in_tcp(snap, client, to, now) else {
                let _ = hostsock::reset_on_close(&s);
                continue;
            };
            if let Err(e) = self.host.registry.register(
                &mut s,
                flow_token(id),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!("net-in: registering a connection: {e}");
                continue;
            }
            self.host.socks.insert(
                id,
                HostSock::Tcp {
                    s,
                    connecting: false,
                },
            );
        }
    }

    /// Net-in UDP: relays every waiting datagram to `host_port` into its container.
    pub(super) fn udp_net_in(
        &mut self,
        snap: &tapestry_switch::Snapshot,
        host_port: u16,
        now: Instant,
    ) {
        let Some(&to) = self.rules.get(&(NetInProtocol::Udp, host_port)) else {
            return;
        };
        for _ in 0..256 {
            let Some(l) = self.host.udp_listeners.get(&host_port) else {
                return;
            };
            let (n, client) = match l.recv_from(&mut self.scratch) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            let SocketAddr::V4(c4) = client else { continue };
            if let Some(id) = self.stack.net_in_udp(snap, c4, to, &self.scratch[..n], now) {
                self.host
                    .socks
                    .entry(id)
                    .or_insert(HostSock::UdpIn { host_port, client });
            }
        }
    }

    /// Makes `rules` the whole set of mappings: binds what is new first (an error leaves the
    /// mappings as they were), then closes what is gone.
    pub(super) fn set_net_in(&mut self, rules: &[NetInRule]) -> Result<()> {
        let mut new_tcp = Vec::new();
        let mut new_udp = Vec::new();
        for r in rules {
            let addr = SocketAddrV4::new(self.net_in_address, r.host_port);
            let have = match r.protocol {
                NetInProtocol::Tcp => self.tcp_listeners.contains_key(&r.host_port),
                NetInProtocol::Udp => self.host.udp_listeners.contains_key(&r.host_port),
            };
            if have {
                continue;
            }
            let bound = match r.protocol {
                NetInProtocol::Tcp => hostsock::tcp_listen(addr)
                    .map(|l| new_tcp.push((r.host_port, TcpListener::from_std(l)))),
                NetInProtocol::Udp => hostsock::udp_listen(addr)
                    .map(|l| new_udp.push((r.host_port, UdpSocket::from_std(l)))),
            };
            // On an error the listeners bound so far close as they drop: nothing changed.
            if let Err(e) = bound {
                let proto = match r.protocol {
                    NetInProtocol::Tcp => "tcp",
                    NetInProtocol::Udp => "udp",
                };
                return Err(anyhow::anyhow!(
                    "net-in: cannot listen on {addr} ({proto}) for host port {}: {e}",
                    r.host_port
                ));
            }
        }
        let registry = self.poll.registry();
        for (p, mut l) in new_tcp {
            registry.register(
                &mut l,
                Token(LISTENER_BASE + p as usize),
                Interest::READABLE,
            )?;
            self.tcp_listeners.insert(p, l);
        }
        for (p, mut l) in new_udp {
            registry.register(
                &mut l,
                Token(LISTENER_BASE + 65536 + p as usize),
                Interest::READABLE,
            )?;
            self.host.udp_listeners.insert(p, l);
        }
        self.rules = rules
            .iter()
            .map(|r| {
                (
                    (r.protocol, r.host_port),
                    SocketAddrV4::new(r.container_ip, r.container_port),
                )
            })
            .collect();
        let rules = &self.rules;
        close_unlisted(&mut self.tcp_listeners, registry, |p| {
            rules.contains_key(&(NetInProtocol::Tcp, p))
        });
        close_unlisted(&mut self.host.udp_listeners, registry, |p| {
            rules.contains_key(&(NetInProtocol::Udp, p))
        });
        Ok(())
    }
}

/// Closes the listeners whose host port `keep` no longer wants.
fn close_unlisted<S: mio::event::Source>(
    listeners: &mut BTreeMap<u16, S>,
    registry: &Registry,
    keep: impl Fn(u16) -> bool,
) {
    listeners.retain(|&p, l| {
        let k = keep(p);
        if !k {
            let _ = registry.deregister(l);
        }
        k
    });
}
