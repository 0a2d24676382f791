//! Packets from containers to destinations outside the overlay: new flows (ASG check, host
//! socket), packets of existing flows, and the gateway's own services.
use super::*;

impl Stack {
    /// An IPv4 packet a container on `port` sent outside the overlay (the pipeline has checked
    /// its Ethernet and IP headers and its source address). `udp_gso` is the segment size of a
    /// UDP super-datagram (USO from a TAP with the virtio-net header), 0 for none: its payload
    /// goes out as datagrams of that size.
    pub fn from_port(
        &mut self,
        snap: &Snapshot,
        port: PortId,
        packet: &[u8],
        udp_gso: u16,
        now: Instant,
        io: &mut impl HostIo,
    ) -> Result<(), DropReason> {
        let ip = flow::check_ipv4(packet)?;
        let f = flow::parse(&ip)?;
        if f.frag != Frag::None {
            // Containers discover the path MTU (DF is set by default); fragments are rare
            // and not reassembled here.
            return Err(DropReason::Fragment);
        }
        let packet = &packet[..ip.total_len() as usize];
        if f.dst == DNS && f.dport == 53 && f.proto == ipv4::PROTO_UDP {
            return self.dns_udp(snap, port, &ip, now, io);
        }
        if f.dst == DNS && f.dport == 53 && f.proto == ipv4::PROTO_TCP {
            let key: Key = (f.proto, f.src, f.sport, f.dst, f.dport);
            if let Some(&id) = self.by_key.get(&key) {
                return self.existing(id, packet, udp_gso, now, io);
            }
            if f.tcp_flags & (tcpw::SYN | tcpw::ACK | tcpw::RST) == tcpw::SYN {
                return self.dns_tcp_syn(port, packet, key, now);
            }
        }
        if f.dst == GATEWAY || f.dst == DNS {
            return self.gateway_service(port, &ip, packet);
        }
        let key_port = match f.proto {
            ipv4::PROTO_ICMP => {
                let m =
                    icmp::Packet::new_checked(ip.payload()).map_err(|_| DropReason::MalformedL4)?;
                if m.msg_type() != icmp::ECHO_REQUEST {
                    // Errors about a net-in flow, and anything else, end here.
                    return Err(DropReason::IcmpDenied);
                }
                (m.rest() >> 16) as u16
            }
            _ => f.sport,
        };
        let key: Key = (f.proto, f.src, key_port, f.dst, f.dport);
        if let Some(&id) = self.by_key.get(&key) {
            return self.existing(id, packet, udp_gso, now, io);
        }
        match f.proto {
            ipv4::PROTO_TCP if f.tcp_flags & (tcpw::SYN | tcpw::ACK | tcpw::RST) != tcpw::SYN => {
                // Not the start of a flow the stack knows: a closed port's answer.
                self.send_built(port, |b| frame::tcp_reset(b, packet));
                return Err(DropReason::StackNoFlow);
            }
            ipv4::PROTO_TCP | ipv4::PROTO_UDP | ipv4::PROTO_ICMP => {}
            _ => {
                self.reject(port, packet, GATEWAY, frame::CODE_PORT_UNREACHABLE);
                return Err(DropReason::ProtocolDenied);
            }
        }
        let asg_flow = asg_flow(&f).ok_or(DropReason::ProtocolDenied)?;
        let rule = match snap.egress_decision(port, &asg_flow) {
            EgressVerdict::Allow(m) => (m.group.to_string(), m.rule, m.log),
            EgressVerdict::Deny(reason) => {
                self.reject(port, packet, GATEWAY, frame::CODE_PORT_UNREACHABLE);
                let r = match reason {
                    asg::DenyReason::DenyNetworks => DropReason::AsgDenyNetworks,
                    asg::DenyReason::NoRule => DropReason::AsgNoRule,
                    asg::DenyReason::UnknownPort => DropReason::UnknownPort,
                };
                if self.denials.len() == DENIALS_KEPT {
                    self.denials.pop_front();
                }
                self.denials.push_back(Denial {
                    port,
                    protocol: protocol_name(f.proto),
                    container: SocketAddrV4::new(f.src, key_port),
                    remote: SocketAddrV4::new(f.dst, f.dport),
                    reason: r.as_str(),
                    at: now,
                });
                return Err(r);
            }
            EgressVerdict::Overlay => return Err(DropReason::NoLease),
        };
        if self.by_key.len() >= self.config.max_flows {
            self.reject(port, packet, GATEWAY, frame::CODE_HOST_UNREACHABLE);
            return Err(DropReason::StackFlowsFull);
        }
        let protocol = protocol_name(f.proto);
        if rule.2 && self.admitted.len() < ADMITTED_MAX {
            self.admitted.push_back(Admitted {
                port,
                src: SocketAddrV4::new(f.src, key_port),
                dst: SocketAddrV4::new(f.dst, f.dport),
                protocol,
                group: rule.0.clone(),
                rule: rule.1,
            });
        }
        let kind = match f.proto {
            ipv4::PROTO_TCP => Kind::Tcp(tcp::TcpFlow::connecting(packet)),
            ipv4::PROTO_UDP => Kind::Udp { replied: false },
            _ => Kind::Icmp {
                ident: key_port,
                socket: IcmpSocket::Ping,
            },
        };
        let id = self.insert(Entry {
            key,
            alt_key: None,
            port,
            kind,
            last_seen: now,
            rule: Some((rule.0, rule.1)),
        });
        self.counters.stack_flow_opened();
        let opened = match f.proto {
            ipv4::PROTO_TCP => io.connect_tcp(id, SocketAddrV4::new(f.dst, f.dport)),
            ipv4::PROTO_UDP => io.open_udp(id, SocketAddrV4::new(f.dst, f.dport)),
            _ => io.open_icmp(id, f.dst).map(|s| {
                if let Some(Entry {
                    kind: Kind::Icmp { socket, .. },
                    ..
                }) = self.entry(id)
                {
                    *socket = s;
                }
            }),
        };
        if let Err(e) = opened {
            self.host_failed(port, packet, &e);
            self.remove(id, io, true);
            return Err(DropReason::HostUnreachable);
        }
        if f.proto != ipv4::PROTO_TCP {
            return self.existing(id, packet, udp_gso, now, io);
        }
        Ok(())
    }

    /// What the container hears when the host could not reach the destination.
    pub(super) fn host_failed(&mut self, port: PortId, packet: &[u8], e: &io::Error) {
        let is_tcp = packet.get(9) == Some(&ipv4::PROTO_TCP);
        let dst = ipv4::Packet::new_unchecked(packet).dst();
        match e.kind() {
            io::ErrorKind::ConnectionRefused if is_tcp => {
                self.send_built(port, |b| frame::tcp_reset(b, packet))
            }
            io::ErrorKind::ConnectionRefused => {
                self.reject(port, packet, dst, frame::CODE_PORT_UNREACHABLE)
            }
            io::ErrorKind::NetworkUnreachable => {
                self.reject(port, packet, GATEWAY, frame::CODE_NET_UNREACHABLE)
            }
            _ => self.reject(port, packet, GATEWAY, frame::CODE_HOST_UNREACHABLE),
        }
    }

    /// A packet of a flow the stack carries.
    pub(super) fn existing(
        &mut self,
        id: FlowId,
        packet: &[u8],
        udp_gso: u16,
        now: Instant,
        io: &mut impl HostIo,
    ) -> Result<(), DropReason> {
        let Some(e) = self.flows.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return Err(DropReason::StackNoFlow);
        };
        e.last_seen = now;
        let port = e.port;
        let ip = ipv4::Packet::new_unchecked(packet);
        let hl = ip.header_len();
        match &mut e.kind {
            Kind::DnsTcp(_) => {
                let mut b = self.dev.buffer();
                b.clear();
                b.extend_from_slice(packet);
                self.dev.rx.push_back(b);
                Ok(())
            }
            Kind::DnsForward { .. } => Err(DropReason::StackNoFlow),
            Kind::Tls(_) => {
                let mut b = self.dev.buffer();
                b.clear();
                b.extend_from_slice(packet);
                self.dev.rx.push_back(b);
                Ok(())
            }
            Kind::Tcp(t) => {
                if t.handle.is_none() {
                    t.hold_syn(packet);
                    return Ok(());
                }
                let mut b = self.dev.buffer();
                b.clear();
                b.extend_from_slice(packet);
                t.note_segment(&mut b);
                self.dev.rx.push_back(b);
                Ok(())
            }
            Kind::Udp { .. } | Kind::UdpIn => {
                let datagram = udp::Packet::new_unchecked(&packet[hl..]);
                let payload = datagram.payload();
                let size = if udp_gso == 0 {
                    payload.len().max(1)
                } else {
                    udp_gso as usize
                };
                for chunk in payload
                    .chunks(size)
                    .chain(payload.is_empty().then_some(&[][..]))
                {
                    match io.write(id, chunk) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Err(DropReason::StackQueueFull)
                        }
                        Err(e) => {
                            self.host_failed(port, packet, &e);
                            return Err(DropReason::HostUnreachable);
                        }
                    }
                }
                Ok(())
            }
            Kind::Icmp { .. } => match io.write(id, &packet[hl..]) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(DropReason::StackQueueFull),
                Err(e) => {
                    self.host_failed(port, packet, &e);
                    Err(DropReason::HostUnreachable)
                }
            },
        }
    }

    /// 169.254.0.1 answers echo; its and 169.254.0.2's ports are closed (DNS is served by the
    /// DNS responder when there is one).
    pub(super) fn gateway_service(
        &mut self,
        port: PortId,
        ip: &ipv4::Packet<&[u8]>,
        packet: &[u8],
    ) -> Result<(), DropReason> {
        match ip.protocol() {
            ipv4::PROTO_ICMP => {
                let m =
                    icmp::Packet::new_checked(ip.payload()).map_err(|_| DropReason::MalformedL4)?;
                if m.msg_type() != icmp::ECHO_REQUEST {
                    return Err(DropReason::IcmpDenied);
                }
                let mut reply = ip.payload().to_vec();
                reply[0] = icmp::ECHO_REPLY;
                let ident = (m.rest() >> 16) as u16;
                let (src, dst) = (ip.dst(), ip.src());
                self.send_built(port, |b| {
                    frame::icmp_message(b, src, dst, &reply, ident);
                    true
                });
                Ok(())
            }
            ipv4::PROTO_TCP => {
                self.send_built(port, |b| frame::tcp_reset(b, packet));
                Err(DropReason::GatewayPortClosed)
            }
            _ => {
                let dst = ip.dst();
                self.reject(port, packet, dst, frame::CODE_PORT_UNREACHABLE);
                Err(DropReason::GatewayPortClosed)
            }
        }
    }
}
