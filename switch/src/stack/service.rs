//! The glue between the pipeline's `ToService` verdicts and the TLS terminators of [`super::tls`]:
//! which containers have one, new connections to their 61443, and the app legs.

use super::*;

impl Stack {
    /// Sets (or, with `None`, removes) the TLS terminator of the container at `ip`.
    pub fn set_tls(
        &mut self,
        ip: Ipv4Addr,
        config: Option<Arc<tapestry_tls_proxy::TerminatorConfig>>,
    ) {
        match config {
            Some(c) => {
                self.tls.insert(ip, c);
            }
            None => {
                self.tls.remove(&ip);
            }
        }
    }

    /// The containers with a TLS terminator.
    pub fn tls_ips(&self) -> Vec<Ipv4Addr> {
        self.tls.keys().copied().collect()
    }

    /// A TCP segment to `port`'s 61443 that the pipeline admitted ([`crate::Verdict::ToService`]).
    pub fn to_service(
        &mut self,
        snap: &Snapshot,
        port: PortId,
        packet: &[u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        let ip = flow::check_ipv4(packet)?;
        let f = flow::parse(&ip)?;
        let packet = &packet[..ip.total_len() as usize];
        let container = snap.port(port).ok_or(DropReason::NoSuchPort)?.ip;
        if f.proto != ipv4::PROTO_TCP || f.dst != container || f.dport != tls::TLS_PORT {
            return Err(DropReason::StackNoFlow);
        }
        let key: Key = (f.proto, f.dst, f.dport, f.src, f.sport);
        if let Some(&id) = self.by_key.get(&key) {
            if let Some(e) = self.entry(id) {
                e.last_seen = now;
            }
            let mut b = self.dev.buffer();
            b.clear();
            b.extend_from_slice(packet);
            self.dev.rx.push_back(b);
            return Ok(());
        }
        let config = self.tls.get(&container).cloned();
        let is_syn = f.tcp_flags & (tcpw::SYN | tcpw::ACK | tcpw::RST) == tcpw::SYN;
        if is_syn {
            self.ingest(now);
        }
        let accepted = is_syn.then_some(config).flatten().and_then(|c| {
            let app_port = snap
                .label(port)
                .map(|l| l.app_port)
                .filter(|p| *p != 0)
                .unwrap_or(tls::DEFAULT_APP_PORT);
            tls::TlsFlow::accept(&mut self.sockets, &mut self.pool, &c, container, app_port)
        });
        let Some(t) = accepted else {
            // No credentials (yet), or not the start of a connection: a closed port.
            self.send_built(port, |b| frame::tcp_reset(b, packet));
            return Err(DropReason::StackNoFlow);
        };
        self.insert(Entry {
            key,
            alt_key: None,
            port,
            kind: Kind::Tls(Box::new(t)),
            last_seen: now,
            rule: None,
        });
        self.counters.stack_flow_opened();
        let mut b = self.dev.buffer();
        b.clear();
        b.extend_from_slice(packet);
        self.dev.rx.push_back(b);
        self.ingest(now);
        Ok(())
    }

    /// Connects the app legs of new TLS connections and moves their bytes.
    pub(super) fn tls_poll(&mut self) {
        for i in 0..self.flows.len() {
            let Some(Entry {
                kind: Kind::Tls(t),
                key,
                alt_key,
                ..
            }) = self.flows[i].as_mut()
            else {
                continue;
            };
            if !t.has_back() {
                // A free port on the gateway address for the app leg.
                let container = key.1;
                let mut local = None;
                for _ in 0..1024 {
                    self.tls_next_port = self.tls_next_port.wrapping_add(1);
                    let (a, p) = tls::app_leg_source(self.tls_next_port);
                    let k: Key = (ipv4::PROTO_TCP, container, t.back_key_port(), a, p);
                    if !self.by_key.contains_key(&k) {
                        local = Some((a, p, k));
                        break;
                    }
                }
                if let Some((a, p, k)) = local {
                    if t.connect_back(
                        &mut self.iface,
                        &mut self.sockets,
                        &mut self.pool,
                        container,
                        (a, p),
                    ) {
                        *alt_key = Some(k);
                        self.by_key.insert(k, FlowId(i as u32));
                    }
                }
            }
            t.pump(&mut self.sockets);
        }
    }
}
