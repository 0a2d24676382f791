//! The capture filter: a small subset of tcpdump's language, parsed here and evaluated by the
//! cell's capture tap on each frame's IPv4 packet (the inner one on the underlay).
//!
//! ```text
//! filter := term ("and" term)*
//! term   := ["not"] primitive
//! primitive := ["src" | "dst"] "host" IPV4 | ["src" | "dst"] "port" N | "tcp" | "udp" | "icmp"
//! ```
//! An empty filter matches every frame; a non-empty one matches only IPv4 packets.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Which address or port of a packet a primitive looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Src,
    Dst,
    Either,
}

/// One test on a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Primitive {
    Host(Side, Ipv4Addr),
    Port(Side, u16),
    /// An IP protocol number (tcp 6, udp 17, icmp 1).
    Proto(u8),
}

/// A parsed filter: every term must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// (negated, primitive)
    terms: Vec<(bool, Primitive)>,
}

/// What was wrong with a filter: the word and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    pub word: String,
    pub why: &'static str,
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.word.is_empty() {
            write!(f, "filter: {}", self.why)
        } else {
            write!(f, "filter: {:?}: {}", self.word, self.why)
        }
    }
}

impl std::error::Error for FilterError {}

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

impl Filter {
    /// Parses `s` (words separated by white space).
    pub fn parse(s: &str) -> Result<Filter, FilterError> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let mut terms = Vec::new();
        let mut i = 0;
        let err = |word: &str, why| FilterError {
            word: word.to_string(),
            why,
        };
        while i < words.len() {
            if !terms.is_empty() {
                if words[i] != "and" {
                    return Err(err(
                        words[i],
                        "expected \"and\" between terms (only \"and\" is supported)",
                    ));
                }
                i += 1;
                if i == words.len() {
                    return Err(err("and", "is not followed by a term"));
                }
            }
            let mut negated = false;
            if words[i] == "not" {
                negated = true;
                i += 1;
            }
            let Some(&w) = words.get(i) else {
                return Err(err("not", "is not followed by a term"));
            };
            let side = match w {
                "src" => Some(Side::Src),
                "dst" => Some(Side::Dst),
                _ => None,
            };
            if side.is_some() {
                i += 1;
            }
            let Some(&kw) = words.get(i) else {
                return Err(err(w, "must be followed by \"host IP\" or \"port N\""));
            };
            let value = |i: usize| words.get(i + 1).copied();
            let prim = match kw {
                "host" => {
                    let v = value(i).ok_or_else(|| err("host", "needs an IPv4 address"))?;
                    let ip = v
                        .parse::<Ipv4Addr>()
                        .map_err(|_| err(v, "is not an IPv4 address (host IP)"))?;
                    i += 1;
                    Primitive::Host(side.unwrap_or(Side::Either), ip)
                }
                "port" => {
                    let v = value(i).ok_or_else(|| err("port", "needs a port number"))?;
                    let p = v
                        .parse::<u16>()
                        .map_err(|_| err(v, "is not a port number (0-65535)"))?;
                    i += 1;
                    Primitive::Port(side.unwrap_or(Side::Either), p)
                }
                "tcp" | "udp" | "icmp" if side.is_some() => {
                    return Err(err(
                        kw,
                        "cannot follow src/dst (use \"src host IP\" or \"src port N\")",
                    ))
                }
                "tcp" => Primitive::Proto(PROTO_TCP),
                "udp" => Primitive::Proto(PROTO_UDP),
                "icmp" => Primitive::Proto(PROTO_ICMP),
                _ => {
                    return Err(err(
                        kw,
                        "is not understood (known: [src|dst] host IP, [src|dst] port N, tcp, \
                         udp, icmp, not, and)",
                    ))
                }
            };
            terms.push((negated, prim));
            i += 1;
        }
        Ok(Filter { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether the IPv4 packet `ip` (from its header on; anything else when the frame is not
    /// IPv4) matches. Short or malformed packets match only an empty filter.
    pub fn matches_ipv4(&self, ip: Option<&[u8]>) -> bool {
        if self.terms.is_empty() {
            return true;
        }
        let Some(h) = ip.and_then(Fields::parse) else {
            return false;
        };
        self.terms.iter().all(|(neg, p)| neg ^ h.test(p))
    }

    /// Whether the Ethernet frame `frame` matches.
    pub fn matches_ethernet(&self, frame: &[u8]) -> bool {
        if self.terms.is_empty() {
            return true;
        }
        self.matches_ipv4(ipv4_of_ethernet(frame))
    }
}

/// The IPv4 packet inside an Ethernet frame, if it carries one.
pub fn ipv4_of_ethernet(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    Some(&frame[14..])
}

/// What a filter looks at in an IPv4 packet.
struct Fields {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ports: Option<(u16, u16)>,
}

impl Fields {
    fn parse(ip: &[u8]) -> Option<Fields> {
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let proto = ip[9];
        let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
        let ports = match (proto, ip.get(ihl..ihl + 4)) {
            (PROTO_TCP | PROTO_UDP, Some(l4)) if ihl >= 20 && first_fragment => Some((
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )),
            _ => None,
        };
        Some(Fields {
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            proto,
            ports,
        })
    }

    fn test(&self, p: &Primitive) -> bool {
        match *p {
            Primitive::Host(side, a) => match side {
                Side::Src => self.src == a,
                Side::Dst => self.dst == a,
                Side::Either => self.src == a || self.dst == a,
            },
            Primitive::Port(side, n) => match (side, self.ports) {
                (_, None) => false,
                (Side::Src, Some((s, _))) => s == n,
                (Side::Dst, Some((_, d))) => d == n,
                (Side::Either, Some((s, d))) => s == n || d == n,
            },
            Primitive::Proto(p) => self.proto == p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header (20 bytes) and 4 bytes of ports.
    fn packet(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 24, 0, 0, 0x40, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn parses_the_grammar() {
        let f = Filter::parse("src host 10.0.0.1 and dst port 80 and tcp and not icmp").unwrap();
        assert_eq!(
            f.terms,
            vec![
                (
                    false,
                    Primitive::Host(Side::Src, Ipv4Addr::new(10, 0, 0, 1))
                ),
                (false, Primitive::Port(Side::Dst, 80)),
                (false, Primitive::Proto(6)),
                (true, Primitive::Proto(1)),
            ]
        );
        assert_eq!(
            Filter::parse(" host  10.0.0.2 ").unwrap().terms,
            vec![(
                false,
                Primitive::Host(Side::Either, Ipv4Addr::new(10, 0, 0, 2))
            )]
        );
        assert!(Filter::parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_filters_name_the_bad_word() {
        for (bad, word) in [
            ("hots 10.0.0.1", "hots"),
            ("host 10.0.0.300", "10.0.0.300"),
            ("host", "host"),
            ("port 70000", "70000"),
            ("port x", "x"),
            ("tcp or udp", "or"),
            ("tcp and", "and"),
            ("src tcp", "tcp"),
            ("src", "src"),
            ("not", "not"),
            ("udp udp", "udp"),
        ] {
            let e = Filter::parse(bad).unwrap_err();
            assert_eq!(e.word, word, "{bad}: {e}");
            assert!(e.to_string().contains(&format!("{word:?}")), "{e}");
        }
    }

    #[test]
    fn matches_fields_and_sides() {
        let p = packet([10, 0, 0, 1], [10, 0, 0, 2], 6, 40000, 8080);
        let m = |f: &str| Filter::parse(f).unwrap().matches_ipv4(Some(&p));
        assert!(m("host 10.0.0.1") && m("host 10.0.0.2"));
        assert!(m("src host 10.0.0.1") && !m("dst host 10.0.0.1"));
        assert!(m("dst host 10.0.0.2") && !m("src host 10.0.0.2"));
        assert!(m("port 8080") && m("port 40000") && m("dst port 8080") && !m("src port 8080"));
        assert!(m("tcp") && !m("udp") && !m("icmp") && m("not udp"));
        assert!(m("tcp and host 10.0.0.1 and port 8080"));
        assert!(!m("tcp and host 10.0.0.3"));
        assert!(!m("not host 10.0.0.1"));
        // ICMP has no ports.
        let icmp = packet([10, 0, 0, 1], [10, 0, 0, 2], 1, 8 << 8, 0);
        let f = Filter::parse("port 2048").unwrap();
        assert!(!f.matches_ipv4(Some(&icmp)));
        // Not IPv4, or short: only the empty filter matches.
        assert!(!Filter::parse("not tcp").unwrap().matches_ipv4(None));
        assert!(!Filter::parse("tcp").unwrap().matches_ipv4(Some(&p[..19])));
        assert!(Filter::default().matches_ipv4(None));
        // Through Ethernet.
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&p);
        assert!(Filter::parse("dst port 8080")
            .unwrap()
            .matches_ethernet(&frame));
        frame[12] = 0x86;
        assert!(!Filter::parse("dst port 8080")
            .unwrap()
            .matches_ethernet(&frame));
    }
}
