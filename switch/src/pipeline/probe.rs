//! The packet a trace sends, written as an expression:
//!
//! ```text
//! [from port HANDLE | from underlay [vtep IP[:PORT]] [tag N]]
//!     tcp|udp SRC:PORT -> DST:PORT [flags syn,ack,fin,rst,psh]
//!     icmp SRC -> DST [type N] [code N]
//!     ... [ttl N]
//! ```
//!
//! Without `from`, the packet comes from the local port that has address SRC. A TCP segment is
//! a SYN unless `flags` says otherwise; ICMP is an echo request unless `type` says otherwise.
//! [`Probe::build`] writes the frame (Ethernet from a port, VXLAN-GBP from the underlay) as
//! the switch would receive it, with valid checksums.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::trace::Input;
use crate::buf::PacketBuf;
use crate::tables::{container_mac, network, Route, Snapshot};
use crate::wire::ethernet::{self, Frame};
use crate::wire::{icmp, ipv4, tcp, udp, vxlan_gbp};

/// Why an expression is not a packet, or not one this cell can trace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, ProbeError> {
    Err(ProbeError(msg.into()))
}

/// Where the packet comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The local port with the source address.
    SourcePort,
    /// The local port of the container with this handle (its address may differ from the
    /// source: a spoofing test).
    Handle(String),
    /// Another cell, through the underlay: the sending VTEP (default: the cell that holds the
    /// source's subnet) and the Group Policy ID (the source app's tag).
    Underlay {
        vtep: Option<SocketAddrV4>,
        tag: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp { flags: u8 },
    Udp,
    Icmp { icmp_type: u8, code: u8 },
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub from: Source,
    pub l4: L4,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub ttl: u8,
}

fn number<T: std::str::FromStr>(what: &str, s: Option<&str>) -> Result<T, ProbeError> {
    match s {
        None => err(format!("{what} needs a value")),
        Some(v) => v
            .parse()
            .map_err(|_| ProbeError(format!("{what} {v:?} is not a valid number"))),
    }
}

/// `IP` or `IP:PORT`; `port` says whether a port is required (TCP, UDP) or refused (ICMP).
fn endpoint(which: &str, s: Option<&str>, port: bool) -> Result<(Ipv4Addr, u16), ProbeError> {
    let Some(s) = s else {
        return err(format!("the {which} address is missing"));
    };
    let (ip, p) = match s.rsplit_once(':') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| ProbeError(format!("{which} {ip:?} is not an IPv4 address")))?;
    match (p, port) {
        (Some(p), true) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok((ip, n)),
            _ => err(format!("{which} port {p:?} is out of range (1-65535)")),
        },
        (None, true) => err(format!("{which} {s} needs a port (IP:PORT)")),
        (Some(_), false) => err(format!("{which} {s}: icmp has no ports")),
        (None, false) => Ok((ip, 0)),
    }
}

fn tcp_flags(s: Option<&str>) -> Result<u8, ProbeError> {
    let Some(s) = s else {
        return err("flags needs a value (e.g. syn or ack,psh)");
    };
    s.split(',').try_fold(0u8, |acc, f| {
        Ok(acc
            | match f.to_ascii_lowercase().as_str() {
                "syn" => tcp::SYN,
                "ack" => tcp::ACK,
                "fin" => tcp::FIN,
                "rst" => tcp::RST,
                "psh" => tcp::PSH,
                other => {
                    return err(format!(
                        "unknown TCP flag {other:?} (syn, ack, fin, rst, psh)"
                    ))
                }
            })
    })
}

impl Probe {
    /// Parses an expression; the error names the word that is wrong.
    pub fn parse(expr: &str) -> Result<Probe, ProbeError> {
        let spaced = expr.replace("->", " -> ");
        let mut w = spaced.split_whitespace().peekable();
        let mut from = Source::SourcePort;
        if w.peek() == Some(&"from") {
            w.next();
            match w.next() {
                Some("port") => match w.next() {
                    Some(h) => from = Source::Handle(h.to_string()),
                    None => return err("from port needs a container handle"),
                },
                Some("underlay") => {
                    let (mut vtep, mut tag) = (None, 0u16);
                    loop {
                        match w.peek().copied() {
                            Some("vtep") => {
                                w.next();
                                let v = w.next().unwrap_or("");
                                vtep = Some(match v.parse::<SocketAddrV4>() {
                                    Ok(a) => a,
                                    Err(_) => match v.parse::<Ipv4Addr>() {
                                        Ok(ip) => SocketAddrV4::new(ip, 4789),
                                        Err(_) => {
                                            return err(format!(
                                                "vtep {v:?} is not an IPv4 address (IP or IP:PORT)"
                                            ))
                                        }
                                    },
                                });
                            }
                            Some("tag") => {
                                w.next();
                                tag = number("tag", w.next())?;
                            }
                            _ => break,
                        }
                    }
                    from = Source::Underlay { vtep, tag };
                }
                other => {
                    return err(format!(
                        "from {}: expected 'from port HANDLE' or 'from underlay [vtep IP] [tag N]'",
                        other.unwrap_or("(nothing)")
                    ))
                }
            }
        }
        let proto = w.next().unwrap_or("");
        let ports = match proto {
            "tcp" | "udp" => true,
            "icmp" => false,
            "" => return err("the protocol is missing (tcp, udp or icmp)"),
            p => return err(format!("unknown protocol {p:?} (tcp, udp or icmp)")),
        };
        let (src, sport) = endpoint("source", w.next(), ports)?;
        match w.next() {
            Some("->") => {}
            other => {
                return err(format!(
                    "expected '->' between source and destination, found {:?}",
                    other.unwrap_or("(nothing)")
                ))
            }
        }
        let (dst, dport) = endpoint("destination", w.next(), ports)?;
        let mut l4 = match proto {
            "tcp" => L4::Tcp { flags: tcp::SYN },
            "udp" => L4::Udp,
            _ => L4::Icmp {
                icmp_type: icmp::ECHO_REQUEST,
                code: 0,
            },
        };
        let mut ttl = 64;
        while let Some(word) = w.next() {
            match (word, &mut l4) {
                ("flags", L4::Tcp { flags }) => *flags = tcp_flags(w.next())?,
                ("type", L4::Icmp { icmp_type, .. }) => *icmp_type = number("type", w.next())?,
                ("code", L4::Icmp { code, .. }) => *code = number("code", w.next())?,
                ("ttl", _) => ttl = number("ttl", w.next())?,
                (other, _) => {
                    return err(format!(
                        "unexpected {other:?} after the destination (tcp: flags F,..; icmp: type N, code N; any: ttl N)"
                    ))
                }
            }
        }
        Ok(Probe {
            from,
            l4,
            src,
            sport,
            dst,
            dport,
            ttl,
        })
    }

    /// The packet's own line: `tcp 10.255.1.2:40000 -> 10.255.2.3:8080 [syn]`.
    pub fn describe(&self) -> String {
        match self.l4 {
            L4::Tcp { flags } => {
                let names: Vec<&str> = [
                    (tcp::SYN, "syn"),
                    (tcp::ACK, "ack"),
                    (tcp::FIN, "fin"),
                    (tcp::RST, "rst"),
                    (tcp::PSH, "psh"),
                ]
                .iter()
                .filter(|(b, _)| flags & b != 0)
                .map(|(_, n)| *n)
                .collect();
                format!(
                    "tcp {}:{} -> {}:{} [{}]",
                    self.src,
                    self.sport,
                    self.dst,
                    self.dport,
                    names.join(",")
                )
            }
            L4::Udp => format!(
                "udp {}:{} -> {}:{}",
                self.src, self.sport, self.dst, self.dport
            ),
            L4::Icmp { icmp_type, code } => {
                format!(
                    "icmp {} -> {} type {icmp_type} code {code}",
                    self.src, self.dst
                )
            }
        }
    }

    /// Writes the packet into `buf` as the switch receives it from its input, which is
    /// returned. Errors when the cell has no port or remote cell to send it from.
    pub fn build(&self, snap: &Snapshot, buf: &mut PacketBuf) -> Result<Input, ProbeError> {
        let l4_len = match self.l4 {
            L4::Tcp { .. } => tcp::HEADER_LEN,
            L4::Udp => udp::HEADER_LEN,
            L4::Icmp { .. } => 8,
        };
        let frame_len = ethernet::HEADER_LEN + ipv4::HEADER_LEN + l4_len;
        let (input, src_mac, dst_mac, outer) = match &self.from {
            Source::SourcePort | Source::Handle(_) => {
                let port = match &self.from {
                    Source::Handle(h) => snap
                        .ports()
                        .find(|p| snap.label(p.id).is_some_and(|l| &l.handle == h))
                        .ok_or_else(|| {
                            ProbeError(format!("no container with handle {h:?} on this cell"))
                        })?,
                    _ => snap.port_by_ip(self.src).ok_or_else(|| {
                        ProbeError(format!(
                            "source {} is not a container on this cell: write 'from underlay tag N ...' \
                             for a packet from another cell, or 'from port HANDLE'",
                            self.src
                        ))
                    })?,
                };
                (Input::Port(port.id), port.mac, port.gateway_mac, None)
            }
            Source::Underlay { vtep, tag } => {
                let (vtep, subnet_mac) = match (vtep, snap.route(self.src)) {
                    (Some(v), Route::Remote(r)) => (*v, container_mac(network(r.subnet))),
                    (Some(v), _) => (*v, container_mac(self.src)),
                    (None, Route::Remote(r)) => (r.underlay, container_mac(network(r.subnet))),
                    (None, _) => {
                        return err(format!(
                            "no remote cell holds source {}: name the sender with 'from underlay vtep IP ...'",
                            self.src
                        ))
                    }
                };
                let gbp = vxlan_gbp::Repr {
                    vni: snap.config().vni,
                    group_policy_id: (*tag != 0).then_some(*tag),
                    dont_learn: false,
                    policy_applied: false,
                };
                (
                    Input::Underlay(vtep),
                    subnet_mac,
                    snap.vtep_mac(),
                    Some(gbp),
                )
            }
        };
        let at = if outer.is_some() {
            vxlan_gbp::HEADER_LEN
        } else {
            0
        };
        let space = buf.read_space();
        let b = &mut space[..at + frame_len];
        b.fill(0);
        if let Some(gbp) = outer {
            gbp.emit(&mut vxlan_gbp::Packet::new_unchecked(&mut b[..at]));
        }
        let mut eth = Frame::new_unchecked(&mut b[at..]);
        eth.set_dst(dst_mac);
        eth.set_src(src_mac);
        eth.set_ethertype(ethernet::ETHERTYPE_IPV4);
        let ip_at = at + ethernet::HEADER_LEN;
        let l4_at = ip_at + ipv4::HEADER_LEN;
        let proto = match self.l4 {
            L4::Tcp { .. } => ipv4::PROTO_TCP,
            L4::Udp => ipv4::PROTO_UDP,
            L4::Icmp { .. } => ipv4::PROTO_ICMP,
        };
        ipv4::Repr {
            src: self.src,
            dst: self.dst,
            protocol: proto,
            payload_len: l4_len as u16,
            ttl: self.ttl,
            tos: 0,
            ident: 1,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut b[ip_at..l4_at]));
        let l4 = &mut b[l4_at..];
        match self.l4 {
            L4::Tcp { flags } => {
                let mut t = tcp::Packet::new_unchecked(l4);
                t.set_src_port(self.sport);
                t.set_dst_port(self.dport);
                t.set_seq(1);
                t.set_ack(if flags & tcp::ACK != 0 { 1 } else { 0 });
                t.set_header_len(tcp::HEADER_LEN);
                t.set_flags(flags);
                t.set_window(65535);
                t.fill_checksum(self.src, self.dst);
            }
            L4::Udp => {
                let mut u = udp::Packet::new_unchecked(l4);
                u.set_src_port(self.sport);
                u.set_dst_port(self.dport);
                u.set_len(udp::HEADER_LEN as u16);
                u.fill_checksum(self.src, self.dst);
            }
            L4::Icmp { icmp_type, code } => {
                let mut m = icmp::Packet::new_unchecked(l4);
                m.set_msg_type(icmp_type);
                m.set_code(code);
                m.set_rest(0x0001_0001);
                m.fill_checksum();
            }
        }
        buf.set_len(at + frame_len);
        Ok(input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_parse() {
        let p = Probe::parse("tcp 10.255.1.2:40000 -> 10.255.2.3:8080").unwrap();
        assert_eq!(p.from, Source::SourcePort);
        assert_eq!(p.l4, L4::Tcp { flags: tcp::SYN });
        assert_eq!((p.sport, p.dport, p.ttl), (40000, 8080, 64));
        assert_eq!(
            p.describe(),
            "tcp 10.255.1.2:40000 -> 10.255.2.3:8080 [syn]"
        );
        let p =
            Probe::parse("from underlay tag 7 udp 10.255.2.3:5000->10.255.1.2:53 ttl 9").unwrap();
        assert_eq!(p.from, Source::Underlay { vtep: None, tag: 7 });
        assert_eq!((p.l4, p.ttl), (L4::Udp, 9));
        let p = Probe::parse(
            "from underlay vtep 127.0.0.9 tag 3 tcp 1.2.3.4:1 -> 10.0.0.1:2 flags ack,psh",
        )
        .unwrap();
        assert_eq!(
            p.from,
            Source::Underlay {
                vtep: Some("127.0.0.9:4789".parse().unwrap()),
                tag: 3
            }
        );
        assert_eq!(
            p.l4,
            L4::Tcp {
                flags: tcp::ACK | tcp::PSH
            }
        );
        let p = Probe::parse("from port c-1 icmp 10.255.1.9 -> 8.8.8.8 type 0").unwrap();
        assert_eq!(p.from, Source::Handle("c-1".into()));
        assert_eq!(
            p.l4,
            L4::Icmp {
                icmp_type: 0,
                code: 0
            }
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (bad, why) in [
            ("", "protocol is missing"),
            ("sctp 1.2.3.4:1 -> 1.2.3.5:2", "unknown protocol \"sctp\""),
            ("tcp 1.2.3.4 -> 1.2.3.5:2", "source 1.2.3.4 needs a port"),
            (
                "tcp 1.2.3.4:1 -> 1.2.3.5:0",
                "destination port \"0\" is out of range",
            ),
            (
                "tcp 1.2.3.4:1 -> 1.2.3.5:99999",
                "destination port \"99999\"",
            ),
            (
                "tcp 1.2.3:1 -> 1.2.3.5:2",
                "source \"1.2.3\" is not an IPv4 address",
            ),
            ("tcp 1.2.3.4:1 1.2.3.5:2", "expected '->'"),
            ("tcp 1.2.3.4:1 ->", "destination address is missing"),
            ("icmp 1.2.3.4:1 -> 1.2.3.5", "icmp has no ports"),
            (
                "tcp 1.2.3.4:1 -> 1.2.3.5:2 flags syn,urg",
                "unknown TCP flag \"urg\"",
            ),
            ("tcp 1.2.3.4:1 -> 1.2.3.5:2 type 3", "unexpected \"type\""),
            (
                "from underlay tag x tcp 1.2.3.4:1 -> 1.2.3.5:2",
                "tag \"x\" is not a valid number",
            ),
            (
                "from underlay tag 70000 tcp 1.2.3.4:1 -> 1.2.3.5:2",
                "tag \"70000\"",
            ),
            (
                "from underlay vtep nowhere tcp 1.2.3.4:1 -> 1.2.3.5:2",
                "vtep \"nowhere\"",
            ),
            ("from cell tcp 1.2.3.4:1 -> 1.2.3.5:2", "from cell"),
            ("from port", "needs a container handle"),
            ("udp 1.2.3.4:1 -> 1.2.3.5:2 ttl", "ttl needs a value"),
        ] {
            let e = Probe::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
