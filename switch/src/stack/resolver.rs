//! 169.254.0.2:53 in the local stack, over UDP and TCP: internal names are answered from the
//! snapshot's [`DnsTable`] ([`super::dns`]); every other query is forwarded to an upstream
//! resolver over a host UDP socket, its answer relayed, and a query that gets no answer within
//! [`FORWARD_TIMEOUT`] (or whose upstream refuses) answered SERVFAIL. The cell's DNS address is
//! its own service: the container's ASGs do not apply to it.

use std::net::SocketAddrV4;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{Socket, State};
use smoltcp::wire::IpListenEndpoint;

use super::dns::{self, Answer, Transport};
use super::*;

/// A forwarded query unanswered this long is answered SERVFAIL.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Pseudo protocol number of forwarded queries in the flow table (not a real flow).
const FORWARD_PROTO: u8 = 0xfe;
/// Bytes a DNS-over-TCP connection may hold unanswered.
const TCP_INBUF_MAX: usize = 65535 + 2;

/// Who asked a forwarded query.
#[derive(Debug, Clone, Copy)]
pub(super) enum DnsClient {
    Udp { port: PortId, src: SocketAddrV4 },
    Tcp(FlowId),
}

/// A DNS-over-TCP connection from a container.
#[derive(Debug)]
pub(super) struct DnsTcp {
    handle: SocketHandle,
    inbuf: Vec<u8>,
    /// Queries forwarded and not answered yet.
    pending: usize,
}

impl Stack {
    fn dns_seed(&mut self) -> u64 {
        self.dns_seed ^= self.dns_seed << 13;
        self.dns_seed ^= self.dns_seed >> 7;
        self.dns_seed ^= self.dns_seed << 17;
        self.dns_seed
    }

    /// A UDP query from a container to 169.254.0.2:53.
    pub(super) fn dns_udp(
        &mut self,
        snap: &Snapshot,
        port: PortId,
        ip: &ipv4::Packet<&[u8]>,
        now: Instant,
        io: &mut impl HostIo,
    ) -> Result<(), DropReason> {
        let u = udp::Packet::new_checked(ip.payload()).map_err(|_| DropReason::MalformedL4)?;
        let src = SocketAddrV4::new(ip.src(), u.src_port());
        let seed = self.dns_seed();
        let client = DnsClient::Udp { port, src };
        match dns::answer(snap.dns(), u.payload(), Transport::Udp, seed) {
            Answer::Reply(b) => self.dns_reply(client, &b),
            Answer::Forward => self.forward(client, u.payload(), now, io),
            Answer::Drop => return Err(DropReason::MalformedL4),
        }
        Ok(())
    }

    /// A TCP segment from a container to 169.254.0.2:53 that belongs to no connection yet.
    pub(super) fn dns_tcp_syn(
        &mut self,
        port: PortId,
        packet: &[u8],
        key: Key,
        now: Instant,
    ) -> Result<(), DropReason> {
        self.ingest(now);
        let h = self.pool.take(&mut self.sockets);
        let listening = self.sockets.get_mut::<Socket>(h).listen(IpListenEndpoint {
            addr: Some(DNS.into()),
            port: 53,
        });
        if listening.is_err() {
            self.pool.give(&mut self.sockets, h);
            return Err(DropReason::StackFlowsFull);
        }
        self.insert(Entry {
            key,
            alt_key: None,
            port,
            kind: Kind::DnsTcp(DnsTcp {
                handle: h,
                inbuf: Vec::new(),
                pending: 0,
            }),
            last_seen: now,
            rule: None,
        });
        let mut b = self.dev.buffer();
        b.clear();
        b.extend_from_slice(packet);
        self.dev.rx.push_back(b);
        self.ingest(now);
        Ok(())
    }

    /// Reads the queries of every DNS-over-TCP connection and answers them; closes and
    /// removes the finished connections.
    pub(super) fn dns_tcp_poll(&mut self, snap: &Snapshot, now: Instant, io: &mut impl HostIo) {
        for i in 0..self.flows.len() {
            let Some(Entry {
                kind: Kind::DnsTcp(c),
                ..
            }) = self.flows[i].as_mut()
            else {
                continue;
            };
            let s = self.sockets.get_mut::<Socket>(c.handle);
            while s.can_recv() && c.inbuf.len() < TCP_INBUF_MAX {
                let _ = s.recv(|b| {
                    let n = b.len().min(TCP_INBUF_MAX - c.inbuf.len());
                    c.inbuf.extend_from_slice(&b[..n]);
                    (n, ())
                });
            }
            let mut queries = Vec::new();
            while c.inbuf.len() >= 2 {
                let len = u16::from_be_bytes([c.inbuf[0], c.inbuf[1]]) as usize;
                if c.inbuf.len() < 2 + len {
                    break;
                }
                queries.push(c.inbuf[2..2 + len].to_vec());
                c.inbuf.drain(..2 + len);
            }
            let done = match s.state() {
                State::Closed | State::TimeWait => true,
                // The client is done asking and every answer went out.
                State::CloseWait if c.pending == 0 && queries.is_empty() => {
                    s.close();
                    false
                }
                _ => false,
            };
            let id = FlowId(i as u32);
            for q in queries {
                let seed = self.dns_seed();
                match dns::answer(snap.dns(), &q, Transport::Tcp, seed) {
                    Answer::Reply(b) => self.dns_reply(DnsClient::Tcp(id), &b),
                    Answer::Forward => {
                        if let Some(Entry {
                            kind: Kind::DnsTcp(c),
                            ..
                        }) = self.flows[i].as_mut()
                        {
                            c.pending += 1;
                        }
                        self.forward(DnsClient::Tcp(id), &q, now, io);
                    }
                    Answer::Drop => {}
                }
            }
            if done {
                self.remove(id, io, false);
            }
        }
    }

    /// Sends an answer to whoever asked.
    fn dns_reply(&mut self, client: DnsClient, answer: &[u8]) {
        match client {
            DnsClient::Udp { port, src } => self.send_built(port, |b| {
                frame::udp_datagram(b, (DNS, 53), (*src.ip(), src.port()), answer);
                true
            }),
            DnsClient::Tcp(id) => {
                let Some(Entry {
                    kind: Kind::DnsTcp(c),
                    ..
                }) = self.flows.get_mut(id.0 as usize).and_then(Option::as_mut)
                else {
                    return;
                };
                let s = self.sockets.get_mut::<Socket>(c.handle);
                let len = (answer.len() as u16).to_be_bytes();
                // Answers are small next to the send buffer; one that does not fit whole ends
                // the connection rather than corrupting its framing.
                if s.send_capacity() - s.send_queue() < answer.len() + 2 {
                    s.abort();
                    return;
                }
                let _ = s.send_slice(&len);
                let _ = s.send_slice(answer);
            }
        }
    }

    /// Forwards a query upstream (round robin over the upstreams).
    fn forward(&mut self, client: DnsClient, query: &[u8], now: Instant, io: &mut impl HostIo) {
        let ups = &self.config.dns_upstreams;
        if ups.is_empty() {
            return self.servfail(client, query);
        }
        let upstream = ups[self.dns_next % ups.len()];
        self.dns_next = self.dns_next.wrapping_add(1);
        self.dns_seq = self.dns_seq.wrapping_add(1);
        let (port, cip, cport) = match client {
            DnsClient::Udp { port, src } => (port, *src.ip(), src.port()),
            DnsClient::Tcp(id) => match self.flows.get(id.0 as usize).and_then(Option::as_ref) {
                Some(e) => (e.port, e.key.1, e.key.2),
                None => return,
            },
        };
        let key: Key = (FORWARD_PROTO, cip, cport, *upstream.ip(), self.dns_seq);
        if self.by_key.contains_key(&key) || self.by_key.len() >= self.config.max_flows {
            return self.servfail(client, query);
        }
        let id = self.insert(Entry {
            key,
            alt_key: None,
            port,
            kind: Kind::DnsForward {
                client,
                query: query.to_vec(),
            },
            last_seen: now,
            rule: None,
        });
        let sent = io.open_udp(id, upstream).and_then(|()| io.write(id, query));
        if sent.is_err() {
            self.forward_failed(id, io);
        }
    }

    fn servfail(&mut self, client: DnsClient, query: &[u8]) {
        if let Some(b) = dns::servfail(query) {
            self.dns_reply(client, &b);
        }
        self.forward_done(client);
    }

    /// A forwarded query that failed: SERVFAIL to its client, and the flow removed.
    pub(super) fn forward_failed(&mut self, id: FlowId, io: &mut impl HostIo) {
        let Some(Entry {
            kind: Kind::DnsForward { client, query },
            ..
        }) = self.flows.get(id.0 as usize).and_then(Option::as_ref)
        else {
            return;
        };
        let (client, query) = (*client, query.clone());
        self.remove(id, io, false);
        self.servfail(client, &query);
    }

    /// The upstream's answer to a forwarded query: relayed if it matches, then the flow ends.
    pub(super) fn forward_answer(&mut self, id: FlowId, answer: &[u8], io: &mut impl HostIo) {
        let Some(Entry {
            kind: Kind::DnsForward { client, query },
            ..
        }) = self.flows.get(id.0 as usize).and_then(Option::as_ref)
        else {
            return;
        };
        if answer.get(..2) != query.get(..2) {
            return; // not the answer to our query (a late or forged datagram)
        }
        let client = *client;
        self.remove(id, io, false);
        self.dns_reply(client, answer);
        self.forward_done(client);
    }

    fn forward_done(&mut self, client: DnsClient) {
        if let DnsClient::Tcp(id) = client {
            if let Some(Entry {
                kind: Kind::DnsTcp(c),
                ..
            }) = self.flows.get_mut(id.0 as usize).and_then(Option::as_mut)
            {
                c.pending = c.pending.saturating_sub(1);
            }
        }
    }

    /// The handle of a DNS-over-TCP connection (for release).
    pub(super) fn dns_tcp_handle(c: &DnsTcp) -> SocketHandle {
        c.handle
    }
}
