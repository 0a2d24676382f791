//! Frames the local stack sends to a container: each is built in a caller-owned `Vec` as
//! [`FRAME_HEADROOM`] bytes for a virtio-net header, then Ethernet (the port's gateway MAC to
//! the container's MAC), then IPv4. [`finish`] fills the Ethernet header and says which
//! virtio-net header the frame needs (TCP checksums are left to the kernel, large TCP segments
//! to its segmentation, as for frames the switch coalesces).

use std::net::Ipv4Addr;

use crate::tables::{container_mac, gateway_mac};
use crate::wire::ethernet::{self, Frame};
use crate::wire::{checksum, icmp, ipv4, tcp, udp, virtio_net};

/// Room in front of the Ethernet header for a virtio-net header.
pub const FRAME_HEADROOM: usize = virtio_net::HEADER_LEN;
/// Where the IPv4 header starts in a frame buffer.
pub const IP_AT: usize = FRAME_HEADROOM + ethernet::HEADER_LEN;
/// TTL of packets the stack originates.
pub const TTL: u8 = 64;
/// ICMP destination unreachable codes the stack sends.
pub const CODE_NET_UNREACHABLE: u8 = 0;
pub const CODE_HOST_UNREACHABLE: u8 = 1;
pub const CODE_PORT_UNREACHABLE: u8 = 3;
/// Bytes of the offending datagram quoted in an ICMP error after its IP header (RFC 792 asks
/// for 8; Linux quotes more, which helps tools that show it).
const ICMP_QUOTE: usize = 64;

/// Fills the Ethernet header of the IPv4 packet at `buf[IP_AT..]` (addressed to a container)
/// and returns the virtio-net header it needs: for TCP, NEEDS_CSUM with the pseudo-header sum
/// in the checksum field, and GSO TCPV4 with `mss` when the packet is larger than `mtu`.
/// Other protocols must carry complete checksums already.
pub fn finish(buf: &mut [u8], mtu: usize, mss: u16) -> virtio_net::Repr {
    let (dst, proto, ihl, total) = {
        let ip = ipv4::Packet::new_unchecked(&buf[IP_AT..]);
        (
            ip.dst(),
            ip.protocol(),
            ip.header_len(),
            ip.total_len() as usize,
        )
    };
    {
        let mut eth = Frame::new_unchecked(&mut buf[FRAME_HEADROOM..]);
        eth.set_dst(container_mac(dst));
        eth.set_src(gateway_mac(dst));
        eth.set_ethertype(ethernet::ETHERTYPE_IPV4);
    }
    if proto != ipv4::PROTO_TCP || total < ihl + tcp::HEADER_LEN {
        return virtio_net::Repr::default();
    }
    let tcp_at = ethernet::HEADER_LEN + ihl;
    let (src, tcp_len) = {
        let ip = ipv4::Packet::new_unchecked(&buf[IP_AT..]);
        (ip.src(), total - ihl)
    };
    let ph = checksum::fold(checksum::pseudo_header(
        src,
        dst,
        ipv4::PROTO_TCP,
        tcp_len as u32,
    ));
    let th_len = {
        let mut t = tcp::Packet::new_unchecked(&mut buf[IP_AT + ihl..]);
        t.set_checksum(ph);
        t.header_len()
    };
    let mut hdr = virtio_net::Repr {
        flags: virtio_net::FLAG_NEEDS_CSUM,
        csum_start: tcp_at as u16,
        csum_offset: tcp::CHECKSUM_OFFSET as u16,
        ..Default::default()
    };
    let payload = tcp_len.saturating_sub(th_len);
    if total > mtu && payload > mss as usize && mss > 0 {
        hdr.gso_type = virtio_net::GSO_TCPV4;
        hdr.gso_size = mss;
        hdr.hdr_len = (tcp_at + th_len) as u16;
    }
    hdr
}

/// Starts a frame: clears `out` and writes an IPv4 header for `payload_len` bytes of
/// `protocol` from `src` to `dst`. The transport header and payload follow at
/// `IP_AT + 20`.
fn start(out: &mut Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize) {
    out.clear();
    out.resize(IP_AT + ipv4::HEADER_LEN + payload_len, 0);
    ipv4::Repr {
        src,
        dst,
        protocol,
        payload_len: payload_len as u16,
        ttl: TTL,
        tos: 0,
        ident: 0,
        dont_frag: true,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut out[IP_AT..]));
}

/// An ICMP destination unreachable with `code`, from `from`, about the IPv4 packet `orig`
/// (which the container sent: the error goes back to its source).
pub fn icmp_unreachable(out: &mut Vec<u8>, orig: &[u8], from: Ipv4Addr, code: u8) -> bool {
    let Ok(ip) = ipv4::Packet::new_checked(orig) else {
        return false;
    };
    let quote = &orig[..(ip.header_len() + ICMP_QUOTE).min(ip.total_len() as usize)];
    let len = icmp::HEADER_LEN + quote.len();
    start(out, from, ip.src(), ipv4::PROTO_ICMP, len);
    let l4 = &mut out[IP_AT + ipv4::HEADER_LEN..];
    l4[icmp::HEADER_LEN..].copy_from_slice(quote);
    icmp::Repr {
        msg_type: icmp::DEST_UNREACHABLE,
        code,
        rest: 0,
    }
    .emit(&mut icmp::Packet::new_unchecked(l4));
    true
}

/// The RST|ACK a closed port answers the TCP segment `orig` with (RFC 9293 3.10.7.1).
pub fn tcp_reset(out: &mut Vec<u8>, orig: &[u8]) -> bool {
    let Ok(ip) = ipv4::Packet::new_checked(orig) else {
        return false;
    };
    let Ok(t) = tcp::Packet::new_checked(ip.payload()) else {
        return false;
    };
    if t.flags() & tcp::RST != 0 {
        return false;
    }
    let mut seg_len = t.payload().len() as u32;
    if t.flags() & tcp::SYN != 0 {
        seg_len += 1;
    }
    if t.flags() & tcp::FIN != 0 {
        seg_len += 1;
    }
    let (seq, ack, flags) = if t.flags() & tcp::ACK != 0 {
        (t.ack(), 0, tcp::RST)
    } else {
        (0, t.seq().wrapping_add(seg_len), tcp::RST | tcp::ACK)
    };
    let (src, dst, sport, dport) = (ip.dst(), ip.src(), t.dst_port(), t.src_port());
    start(out, src, dst, ipv4::PROTO_TCP, tcp::HEADER_LEN);
    let mut p = tcp::Packet::new_unchecked(&mut out[IP_AT + ipv4::HEADER_LEN..]);
    p.set_src_port(sport);
    p.set_dst_port(dport);
    p.set_seq(seq);
    p.set_ack(ack);
    p.set_header_len(tcp::HEADER_LEN);
    p.set_flags(flags);
    p.set_window(0);
    p.set_urgent(0);
    p.fill_checksum(src, dst);
    true
}

/// A UDP datagram `src` -> `dst` (to a container) with `payload`.
pub fn udp_datagram(out: &mut Vec<u8>, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) {
    let len = udp::HEADER_LEN + payload.len();
    start(out, src.0, dst.0, ipv4::PROTO_UDP, len);
    let l4 = &mut out[IP_AT + ipv4::HEADER_LEN..];
    l4[udp::HEADER_LEN..].copy_from_slice(payload);
    let mut p = udp::Packet::new_unchecked(l4);
    p.set_src_port(src.1);
    p.set_dst_port(dst.1);
    p.set_len(len as u16);
    p.fill_checksum(src.0, dst.0);
}

/// An ICMP message `src` -> `dst` whose bytes (header and data) are `message`, with its
/// identifier (for echo) replaced by `ident` and the checksum recomputed.
pub fn icmp_message(out: &mut Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr, message: &[u8], ident: u16) {
    start(out, src, dst, ipv4::PROTO_ICMP, message.len());
    let l4 = &mut out[IP_AT + ipv4::HEADER_LEN..];
    l4.copy_from_slice(message);
    l4[4..6].copy_from_slice(&ident.to_be_bytes());
    icmp::Packet::new_unchecked(l4).fill_checksum();
}

/// The payload length of the largest IPv4 datagram.
pub const MAX_IP_PAYLOAD: usize = 65535 - ipv4::HEADER_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip_of(out: &[u8]) -> ipv4::Packet<&[u8]> {
        ipv4::Packet::new_checked(&out[IP_AT..]).unwrap()
    }

    /// A SYN 10.255.1.2:40000 -> 203.0.113.5:443, seq 0x01020304, no options.
    fn syn() -> Vec<u8> {
        let mut v = vec![0u8; 40];
        ipv4::Repr {
            src: Ipv4Addr::new(10, 255, 1, 2),
            dst: Ipv4Addr::new(203, 0, 113, 5),
            protocol: ipv4::PROTO_TCP,
            payload_len: 20,
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut v[..]));
        let mut t = tcp::Packet::new_unchecked(&mut v[20..]);
        t.set_src_port(40000);
        t.set_dst_port(443);
        t.set_seq(0x0102_0304);
        t.set_header_len(20);
        t.set_flags(tcp::SYN);
        t.set_window(64240);
        t.fill_checksum(Ipv4Addr::new(10, 255, 1, 2), Ipv4Addr::new(203, 0, 113, 5));
        v
    }

    #[test]
    fn reset_answers_a_syn_with_rst_ack_of_seq_plus_one() {
        let mut out = Vec::new();
        assert!(tcp_reset(&mut out, &syn()));
        let ip = ip_of(&out);
        assert_eq!(ip.src(), Ipv4Addr::new(203, 0, 113, 5));
        assert_eq!(ip.dst(), Ipv4Addr::new(10, 255, 1, 2));
        assert!(ip.verify_checksum());
        let t = tcp::Packet::new_checked(ip.payload()).unwrap();
        // Hand-checked: ports swapped, ack = 0x01020304 + 1, flags RST|ACK = 0x14.
        assert_eq!(&ip.payload()[..4], &[0x01, 0xbb, 0x9c, 0x40]);
        assert_eq!(&ip.payload()[8..12], &[0x01, 0x02, 0x03, 0x05]);
        assert_eq!(ip.payload()[13], 0x14);
        assert!(t.verify_checksum(ip.src(), ip.dst()));
    }

    #[test]
    fn no_reset_for_a_reset() {
        let mut s = syn();
        s[33] = tcp::RST;
        assert!(!tcp_reset(&mut Vec::new(), &s));
    }

    #[test]
    fn unreachable_quotes_the_header_and_goes_back_to_the_sender() {
        let mut out = Vec::new();
        let orig = syn();
        assert!(icmp_unreachable(
            &mut out,
            &orig,
            Ipv4Addr::new(169, 254, 0, 1),
            CODE_PORT_UNREACHABLE
        ));
        let ip = ip_of(&out);
        assert_eq!(ip.dst(), Ipv4Addr::new(10, 255, 1, 2));
        assert_eq!(ip.protocol(), ipv4::PROTO_ICMP);
        let m = icmp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((m.msg_type(), m.code()), (3, 3));
        assert!(m.verify_checksum());
        assert_eq!(m.data(), &orig[..]);
        assert_eq!(
            crate::pipeline::flow::icmp_embedded(m.data()),
            Some((
                ipv4::PROTO_TCP,
                Ipv4Addr::new(10, 255, 1, 2),
                Ipv4Addr::new(203, 0, 113, 5),
                40000,
                443
            ))
        );
    }

    #[test]
    fn finish_sets_macs_and_a_partial_checksum_and_gso_only_when_large() {
        let mut out = Vec::new();
        udp_datagram(
            &mut out,
            (Ipv4Addr::new(203, 0, 113, 5), 53),
            (Ipv4Addr::new(10, 255, 1, 2), 5353),
            b"hello",
        );
        let hdr = finish(&mut out, 1450, 1410);
        assert_eq!(hdr, virtio_net::Repr::default());
        let eth = Frame::new_checked(&out[FRAME_HEADROOM..]).unwrap();
        assert_eq!(eth.dst(), [0xee, 0xee, 10, 255, 1, 2]);
        assert_eq!(eth.src(), [0xaa, 0xaa, 10, 255, 1, 2]);
        let ip = ip_of(&out);
        let u = udp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(u.payload(), b"hello");

        // A 3000-byte TCP segment to a port with MTU 1450 gets GSO with the container's MSS.
        let mut big = vec![0u8; IP_AT + 20 + 20 + 3000];
        ipv4::Repr {
            src: Ipv4Addr::new(203, 0, 113, 5),
            dst: Ipv4Addr::new(10, 255, 1, 2),
            protocol: ipv4::PROTO_TCP,
            payload_len: 3020,
            ttl: 64,
            tos: 0,
            ident: 0,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut big[IP_AT..]));
        tcp::Packet::new_unchecked(&mut big[IP_AT + 20..]).set_header_len(20);
        let hdr = finish(&mut big, 1450, 1410);
        assert!(hdr.needs_csum());
        assert_eq!(hdr.gso_kind(), virtio_net::GSO_TCPV4);
        assert_eq!((hdr.gso_size, hdr.hdr_len, hdr.csum_start), (1410, 54, 34));
        let small = finish(&mut big[..IP_AT + 40 + 100].to_vec(), 1450, 1410);
        assert_eq!(small.gso_kind(), virtio_net::GSO_NONE);
    }
}
