//! Inner TCP/UDP checksums of frames from the underlay, partial ones included.
//!
//! A kernel VTEP (a Silk cell's `vxlan ... gbp` device) hands its own traffic to the underlay
//! with the inner transport checksum left to the hardware (CHECKSUM_PARTIAL): the field holds
//! only the folded pseudo-header sum, as in a virtio-net NEEDS_CSUM frame. A NIC completes it
//! before the wire, but a veth or a bridge keeps it partial up to the receiving namespace, where
//! Tapestry reads the datagram from a UDP socket without the skb's metadata. Written to a TAP as
//! it is, the container's kernel drops it (TcpInCsumErrors).
//!
//! [`verify_or_complete`] tells the cases apart with one pass over the transport bytes, the pass
//! a verification costs anyway: a checksum that verifies is left alone; one whose field is
//! congruent to the pseudo-header sum is a partial one and is completed in place (no second pass:
//! the sum just taken already contains the pseudo-header sum once, in the field); anything else
//! is a corrupted packet, to be dropped and counted. A corrupted packet whose field happens to
//! equal the pseudo-header sum (1 in 65536 for random damage) cannot be told from a partial one;
//! a kernel that trusts CHECKSUM_PARTIAL over a veth does no better.

use crate::wire::{checksum, get_u16, ipv4, set_u16, tcp, udp};

/// What [`verify_or_complete`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Checksum {
    /// The checksum verifies.
    Valid,
    /// The field held the pseudo-header sum (a partial checksum); it now holds the checksum.
    Completed,
    /// Nothing to check: a fragment, a UDP datagram sent without a checksum (0), or a protocol
    /// other than TCP and UDP.
    Unchecked,
    /// Wrong, and not a partial one: drop the packet.
    Bad,
    /// The transport header does not fit, or the UDP length disagrees with the IP length.
    Malformed,
}

/// Equal in ones'-complement arithmetic (0 and 0xffff are both zero).
fn ones_eq(a: u16, b: u16) -> bool {
    a == b || (matches!(a, 0 | 0xffff) && matches!(b, 0 | 0xffff))
}

/// Verifies the TCP or UDP checksum of the IPv4 packet at the start of `ip` (it may be followed
/// by link padding), completing it in place if it is partial. Any bytes are safe to pass.
pub fn verify_or_complete(ip: &mut [u8]) -> L4Checksum {
    let Ok(p) = ipv4::Packet::new_checked(&ip[..]) else {
        return L4Checksum::Malformed;
    };
    if p.is_fragment() {
        return L4Checksum::Unchecked;
    }
    let (proto, src, dst) = (p.protocol(), p.src(), p.dst());
    let hl = p.header_len();
    let end = p.total_len() as usize;
    let l4_len = end - hl;
    let (l4_end, field_at) = match proto {
        ipv4::PROTO_TCP => {
            if l4_len < tcp::HEADER_LEN {
                return L4Checksum::Malformed;
            }
            (end, hl + tcp::CHECKSUM_OFFSET)
        }
        ipv4::PROTO_UDP => {
            if l4_len < udp::HEADER_LEN {
                return L4Checksum::Malformed;
            }
            let ulen = get_u16(ip, hl + udp::field::LENGTH.start) as usize;
            if ulen < udp::HEADER_LEN || ulen > l4_len {
                return L4Checksum::Malformed;
            }
            let at = hl + udp::field::CHECKSUM.start;
            if get_u16(ip, at) == 0 {
                return L4Checksum::Unchecked;
            }
            (hl + ulen, at)
        }
        _ => return L4Checksum::Unchecked,
    };
    let l4 = &ip[hl..l4_end];
    let ph = checksum::pseudo_header(src, dst, proto, l4.len() as u32);
    let s = checksum::sum(l4);
    if checksum::fold(checksum::combine(ph, s)) == 0xffff {
        return L4Checksum::Valid;
    }
    let field = get_u16(ip, field_at);
    if !ones_eq(field, checksum::fold(ph)) {
        return L4Checksum::Bad;
    }
    // s = (sum of the bytes with a zero field) + field, and field = the pseudo-header sum: s is
    // already the whole sum the checksum covers.
    let mut c = !checksum::fold(s);
    if proto == ipv4::PROTO_UDP && c == 0 {
        // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
        c = 0xffff;
    }
    set_u16(ip, field_at, c);
    L4Checksum::Completed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testutil::{eth_ipv4, tcp_frame, DST, SRC};
    use proptest::prelude::*;

    /// An IPv4/UDP packet (no Ethernet header) with a valid checksum.
    fn udp_packet(payload: &[u8]) -> Vec<u8> {
        let mut f = eth_ipv4(ipv4::PROTO_UDP, 8 + payload.len(), 1);
        udp::Repr {
            src_port: 5353,
            dst_port: 53,
            payload_len: payload.len() as u16,
        }
        .emit(&mut udp::Packet::new_unchecked(&mut f[34..]));
        f[42..].copy_from_slice(payload);
        udp::Packet::new_unchecked(&mut f[34..]).fill_checksum(SRC, DST);
        f.split_off(14)
    }

    fn tcp_packet(payload: &[u8]) -> Vec<u8> {
        tcp_frame(9, tcp::ACK | tcp::PSH, &[1, 1, 1, 1], payload).split_off(14)
    }

    /// What a sender with CHECKSUM_PARTIAL puts in the field: the folded pseudo-header sum.
    fn make_partial(ip: &mut [u8]) -> u16 {
        let p = ipv4::Packet::new_checked(&ip[..]).unwrap();
        let (proto, hl, len) = (p.protocol(), p.header_len(), p.total_len() as usize);
        let ph = checksum::fold(checksum::pseudo_header(SRC, DST, proto, (len - hl) as u32));
        let at = hl + if proto == ipv4::PROTO_TCP { 16 } else { 6 };
        let good = get_u16(ip, at);
        set_u16(ip, at, ph);
        good
    }

    #[test]
    fn valid_is_left_alone() {
        for mut p in [tcp_packet(b"hello"), udp_packet(b"hello")] {
            let before = p.clone();
            assert_eq!(verify_or_complete(&mut p), L4Checksum::Valid);
            assert_eq!(p, before);
        }
    }

    #[test]
    fn partial_is_completed_to_the_real_checksum() {
        for good in [tcp_packet(b"partial payload"), udp_packet(b"odd")] {
            let mut p = good.clone();
            make_partial(&mut p);
            assert_ne!(p, good);
            assert_eq!(verify_or_complete(&mut p), L4Checksum::Completed);
            assert_eq!(p, good);
        }
    }

    #[test]
    fn corrupted_is_bad() {
        let mut p = tcp_packet(b"some payload");
        p[45] ^= 0x40;
        assert_eq!(verify_or_complete(&mut p), L4Checksum::Bad);
        let mut p = udp_packet(b"x");
        p[26] ^= 1;
        assert_eq!(verify_or_complete(&mut p), L4Checksum::Bad);
        // The limit: data damaged after a partial checksum was written cannot be noticed (the
        // sender never computed a checksum); it is completed over the damaged bytes.
        let mut p = tcp_packet(b"some payload");
        make_partial(&mut p);
        p[45] ^= 0x40;
        assert_eq!(verify_or_complete(&mut p), L4Checksum::Completed);
    }

    #[test]
    fn what_is_not_checked() {
        // UDP without a checksum.
        let mut p = udp_packet(b"abc");
        set_u16(&mut p, 26, 0);
        assert_eq!(verify_or_complete(&mut p), L4Checksum::Unchecked);
        // A fragment.
        let mut p = tcp_packet(b"abc");
        p[6] |= 0x20;
        assert_eq!(verify_or_complete(&mut p), L4Checksum::Unchecked);
        // ICMP.
        let mut p = eth_ipv4(ipv4::PROTO_ICMP, 8, 1).split_off(14);
        assert_eq!(verify_or_complete(&mut p), L4Checksum::Unchecked);
        // UDP length beyond the IP payload, a truncated TCP header, not IPv4 at all.
        let mut p = udp_packet(b"abc");
        set_u16(&mut p, 24, 100);
        assert_eq!(verify_or_complete(&mut p), L4Checksum::Malformed);
        let mut p = eth_ipv4(ipv4::PROTO_TCP, 10, 1).split_off(14);
        assert_eq!(verify_or_complete(&mut p), L4Checksum::Malformed);
        assert_eq!(verify_or_complete(&mut [0u8; 3]), L4Checksum::Malformed);
    }

    #[test]
    fn udp_zero_result_is_sent_as_ones() {
        // Find a payload whose checksum computes to zero, make it partial, complete it.
        let mut found = false;
        for a in 0..=u16::MAX {
            let mut p = udp_packet(&a.to_be_bytes());
            // fill_checksum already maps 0 to 0xffff; a computed 0 shows as 0xffff here.
            if get_u16(&p, 26) != 0xffff {
                continue;
            }
            make_partial(&mut p);
            assert_eq!(verify_or_complete(&mut p), L4Checksum::Completed);
            assert_eq!(get_u16(&p, 26), 0xffff);
            found = true;
            break;
        }
        assert!(found);
    }

    proptest! {
        /// Partial -> completed gives back exactly the checksummed packet; a change to any one
        /// byte of a valid packet's transport part is caught (Bad) unless it made the field look
        /// partial, and then the packet is completed to something that verifies.
        #[test]
        fn complete_and_detect(payload in proptest::collection::vec(any::<u8>(), 0..3000),
                               udp in any::<bool>(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let good = if udp { udp_packet(&payload) } else { tcp_packet(&payload) };
            let mut p = good.clone();
            make_partial(&mut p);
            prop_assert_eq!(verify_or_complete(&mut p), L4Checksum::Completed);
            prop_assert_eq!(&p, &good);

            let mut bad = good.clone();
            let i = 20 + at.index(bad.len() - 20);
            bad[i] ^= flip;
            let r = verify_or_complete(&mut bad);
            match r {
                L4Checksum::Bad | L4Checksum::Malformed | L4Checksum::Unchecked => {}
                L4Checksum::Completed => {
                    // Only when the damage made the field equal the pseudo-header sum.
                    prop_assert_eq!(verify_or_complete(&mut bad), L4Checksum::Valid);
                }
                // A smaller UDP length covers fewer bytes: a shorter datagram that may verify.
                L4Checksum::Valid if udp && (24..26).contains(&i) => {}
                L4Checksum::Valid => prop_assert!(false, "a flipped byte at {} verified", i),
            }
        }
    }
}
