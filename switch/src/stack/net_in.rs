//! Net-in: connections and datagrams a client sent to a mapped host port, carried into the
//! container from the client's own address (CF's DNAT, without the kernel).

use super::*;

impl Stack {
    /// Net-in: a client connected to a mapped host port; connect to `container` from the
    /// client's address. `None` when the container is not attached here or the 4-tuple is
    /// taken (the driver closes the client's connection).
    pub fn net_in_tcp(
        &mut self,
        snap: &Snapshot,
        client: SocketAddrV4,
        container: SocketAddrV4,
        now: Instant,
    ) -> Option<FlowId> {
        let port = snap.port_by_ip(*container.ip())?.id;
        let key: Key = (
            ipv4::PROTO_TCP,
            *container.ip(),
            container.port(),
            *client.ip(),
            client.port(),
        );
        if self.by_key.contains_key(&key) || self.by_key.len() >= self.config.max_flows {
            return None;
        }
        let t = tcp::TcpFlow::net_in(
            &mut self.iface,
            &mut self.sockets,
            &mut self.pool,
            client,
            container,
        )?;
        let id = self.insert(Entry {
            key,
            alt_key: None,
            port,
            kind: Kind::Tcp(t),
            last_seen: now,
            rule: None,
        });
        self.counters.stack_flow_opened();
        Some(id)
    }

    /// Net-in UDP: a datagram from `client` to a mapped host port, for `container`. Returns the
    /// flow, new or existing (the driver sends the container's replies to `client` from the
    /// mapped port), or `None` when the container is not attached here.
    pub fn net_in_udp(
        &mut self,
        snap: &Snapshot,
        client: SocketAddrV4,
        container: SocketAddrV4,
        payload: &[u8],
        now: Instant,
    ) -> Option<FlowId> {
        let port = snap.port_by_ip(*container.ip())?.id;
        let key: Key = (
            ipv4::PROTO_UDP,
            *container.ip(),
            container.port(),
            *client.ip(),
            client.port(),
        );
        let id = match self.by_key.get(&key) {
            Some(&id) => {
                let e = self.entry(id)?;
                if !matches!(e.kind, Kind::UdpIn) {
                    return None;
                }
                e.last_seen = now;
                id
            }
            None if self.by_key.len() < self.config.max_flows => {
                self.counters.stack_flow_opened();
                self.insert(Entry {
                    key,
                    alt_key: None,
                    port,
                    kind: Kind::UdpIn,
                    last_seen: now,
                    rule: None,
                })
            }
            None => return None,
        };
        let max = frame::MAX_IP_PAYLOAD - udp::HEADER_LEN;
        let payload = &payload[..payload.len().min(max)];
        self.send_built(port, |b| {
            frame::udp_datagram(
                b,
                (*client.ip(), client.port()),
                (*container.ip(), container.port()),
                payload,
            );
            true
        });
        Some(id)
    }
}
