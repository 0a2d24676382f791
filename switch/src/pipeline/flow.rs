//! What the policy and tracking steps need to know about an IPv4 packet.

use std::net::Ipv4Addr;

use crate::counters::DropReason;
use crate::wire::{icmp, ipv4, tcp, udp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment.
    None,
    /// First fragment (offset 0, more fragments): carries the transport header.
    First,
    /// A later fragment: no transport header.
    Later,
}

#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub ident: u16,
    pub frag: Frag,
}

/// Validates the IPv4 header at the start of `b` (version, lengths, checksum).
pub fn check_ipv4(b: &[u8]) -> Result<ipv4::Packet<&[u8]>, DropReason> {
    let ip = ipv4::Packet::new_checked(b).map_err(|_| DropReason::MalformedIpv4)?;
    if !ip.verify_checksum() {
        return Err(DropReason::BadIpChecksum);
    }
    Ok(ip)
}

/// Reads the transport ports and flags of a checked IPv4 packet.
pub fn parse(ip: &ipv4::Packet<&[u8]>) -> Result<Flow, DropReason> {
    let frag = if ip.frag_offset() != 0 {
        Frag::Later
    } else if ip.more_frags() {
        Frag::First
    } else {
        Frag::None
    };
    let mut f = Flow {
        proto: ip.protocol(),
        src: ip.src(),
        dst: ip.dst(),
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        ident: ip.ident(),
        frag,
    };
    if frag == Frag::Later {
        return Ok(f);
    }
    let payload = ip.payload();
    match f.proto {
        ipv4::PROTO_TCP => {
            let t = tcp::Packet::new_checked(payload).map_err(|_| DropReason::MalformedL4)?;
            f.sport = t.src_port();
            f.dport = t.dst_port();
            f.tcp_flags = t.flags();
        }
        ipv4::PROTO_UDP => {
            let u = udp::Packet::new_checked(payload).map_err(|_| DropReason::MalformedL4)?;
            f.sport = u.src_port();
            f.dport = u.dst_port();
        }
        ipv4::PROTO_ICMP => {
            icmp::Packet::new_checked(payload).map_err(|_| DropReason::MalformedL4)?;
        }
        _ => {}
    }
    Ok(f)
}

/// The flow an ICMP error message is about, from its embedded header: (proto, src, dst,
/// sport, dport) of the datagram that caused it.
pub fn icmp_embedded(data: &[u8]) -> Option<(u8, Ipv4Addr, Ipv4Addr, u16, u16)> {
    if data.len() < ipv4::HEADER_LEN || data[0] >> 4 != 4 {
        return None;
    }
    let ihl = ((data[0] & 0x0f) as usize) * 4;
    if ihl < ipv4::HEADER_LEN || data.len() < ihl + 8 {
        return None;
    }
    let p = ipv4::Packet::new_unchecked(&data[..ihl]);
    let l4 = &data[ihl..ihl + 4];
    Some((
        p.protocol(),
        p.src(),
        p.dst(),
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    ))
}
