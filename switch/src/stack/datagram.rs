//! Replies to a container's UDP and ICMP echo flows, as the host sockets received them.

use super::*;

impl Stack {
    /// Relays what a datagram socket received to the container.
    pub(super) fn datagrams_from_host(&mut self, id: FlowId, io: &mut impl HostIo) {
        let mut scratch = std::mem::take(&mut self.scratch);
        for _ in 0..64 {
            let n = match io.read(id, &mut scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // An ICMP error the host got for an earlier datagram (connected socket).
                    if let Some(ent) = self.entry(id) {
                        let (key, port) = (ent.key, ent.port);
                        let mut q = Vec::new();
                        frame::udp_datagram(&mut q, (key.1, key.2), (key.3, key.4), &[]);
                        let quoted = q[frame::IP_AT..].to_vec();
                        self.host_failed(port, &quoted, &e);
                    }
                    break;
                }
            };
            let Some(ent) = self.flows.get_mut(id.0 as usize).and_then(Option::as_mut) else {
                break;
            };
            if let Kind::Udp { replied } = &mut ent.kind {
                *replied = true;
            }
            ent.last_seen = self.last_poll;
            let (key, port) = (ent.key, ent.port);
            let msg = &scratch[..n];
            match ent.kind {
                Kind::Udp { .. } => self.send_built(port, |b| {
                    frame::udp_datagram(b, (key.3, key.4), (key.1, key.2), msg);
                    true
                }),
                Kind::Icmp { ident, socket } => {
                    let msg = match socket {
                        IcmpSocket::Ping => Some(msg),
                        IcmpSocket::Raw => raw_echo_reply(msg, key.3, ident),
                    };
                    let Some(msg) =
                        msg.filter(|m| m.len() >= icmp::HEADER_LEN && m[0] == icmp::ECHO_REPLY)
                    else {
                        continue;
                    };
                    self.send_built(port, |b| {
                        frame::icmp_message(b, key.3, key.1, msg, ident);
                        true
                    })
                }
                Kind::Tcp(_)
                | Kind::UdpIn
                | Kind::DnsForward { .. }
                | Kind::DnsTcp(_)
                | Kind::Tls(_) => break,
            }
        }
        self.scratch = scratch;
    }
}

/// The ICMP echo reply in what a raw socket received (IP header first), if it comes from
/// `from` and carries `ident`.
fn raw_echo_reply(packet: &[u8], from: Ipv4Addr, ident: u16) -> Option<&[u8]> {
    let ip = ipv4::Packet::new_checked(packet).ok()?;
    if ip.src() != from || ip.protocol() != ipv4::PROTO_ICMP {
        return None;
    }
    let m = packet.get(ip.header_len()..ip.total_len() as usize)?;
    (m.len() >= icmp::HEADER_LEN
        && m[0] == icmp::ECHO_REPLY
        && u16::from_be_bytes([m[4], m[5]]) == ident)
        .then_some(m)
}
