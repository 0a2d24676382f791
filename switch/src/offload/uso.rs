//! USO in user space: split a UDPv4 super-datagram (virtio-net GSO_UDP_L4, what a container's
//! UDP_SEGMENT send becomes on a TAP with TUN_F_USO4) into datagrams of `gso_size` payload
//! bytes, each with its own IP length, id and checksum and UDP length and checksum, as the
//! kernel's __udp_gso_segment does.

use super::OffloadError;
use crate::wire::{ethernet, ipv4, udp, virtio_net};

/// Offsets of a checked Ethernet/IPv4/UDP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpV4Layout {
    pub ip: usize,
    pub ip_len: usize,
    /// Start of the UDP header.
    pub udp: usize,
    /// End of the IP datagram (excludes link padding).
    pub end: usize,
}

impl UdpV4Layout {
    pub fn headers_len(&self) -> usize {
        self.udp + udp::HEADER_LEN
    }

    pub fn parse(frame: &[u8]) -> Result<UdpV4Layout, OffloadError> {
        let (ip, end) = super::ipv4_carrying(frame, ipv4::PROTO_UDP, OffloadError::NotUdpV4)?;
        let ip_len = ip.header_len();
        let udp_at = ethernet::HEADER_LEN + ip_len;
        if end < udp_at + udp::HEADER_LEN || end > frame.len() {
            return Err(OffloadError::Malformed);
        }
        Ok(UdpV4Layout {
            ip: ethernet::HEADER_LEN,
            ip_len,
            udp: udp_at,
            end,
        })
    }
}

/// Splits the UDP super-datagram `frame` into `gso_size` payload chunks; each is written to
/// `scratch[p..]` after the `p` bytes already there (the caller's prefix) and emitted with it.
pub(super) fn segment(
    p: usize,
    frame: &[u8],
    hdr: &virtio_net::Repr,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let size = hdr.gso_size as usize;
    if size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    let l = UdpV4Layout::parse(frame)?;
    let h = l.headers_len();
    let payload = &frame[h..l.end];
    if scratch.len() < p + h + size.min(payload.len()) {
        return Err(OffloadError::ScratchTooSmall);
    }
    let id0 = ipv4::Packet::new_unchecked(&frame[l.ip..]).ident();
    let chunks = payload.len().div_ceil(size).max(1);
    for i in 0..chunks {
        let start = (i * size).min(payload.len());
        let chunk = &payload[start..(start + size).min(payload.len())];
        let n = h + chunk.len();
        let out = &mut scratch[p..p + n];
        out[..h].copy_from_slice(&frame[..h]);
        out[h..].copy_from_slice(chunk);
        let mut ip = ipv4::Packet::new_unchecked(&mut out[l.ip..]);
        ip.set_total_len((l.ip_len + udp::HEADER_LEN + chunk.len()) as u16);
        ip.set_ident(id0.wrapping_add(i as u16));
        ip.fill_checksum();
        let (src, dst) = (ip.src(), ip.dst());
        let mut u = udp::Packet::new_unchecked(&mut out[l.udp..]);
        u.set_len((udp::HEADER_LEN + chunk.len()) as u16);
        u.fill_checksum(src, dst);
        emit(&scratch[..p + n]);
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::segment_tcpv4;
    use crate::offload::testutil::{eth_ipv4, DST, SRC};
    use crate::wire::checksum;
    use proptest::prelude::*;

    /// What a TAP hands over for a UDP_SEGMENT send: one IPv4/UDP datagram holding the whole
    /// payload, UDP checksum field = pseudo-header sum (NEEDS_CSUM), GSO_UDP_L4.
    fn super_datagram(payload: &[u8], size: u16) -> (Vec<u8>, virtio_net::Repr) {
        let mut f = eth_ipv4(ipv4::PROTO_UDP, 8 + payload.len(), 0xfffe);
        let ulen = (8 + payload.len()) as u16;
        f[34..36].copy_from_slice(&5353u16.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f[38..40].copy_from_slice(&ulen.to_be_bytes());
        let ph = checksum::fold(checksum::pseudo_header(SRC, DST, 17, ulen as u32));
        f[40..42].copy_from_slice(&ph.to_be_bytes());
        f[42..].copy_from_slice(payload);
        let hdr = virtio_net::Repr {
            flags: virtio_net::FLAG_NEEDS_CSUM,
            gso_type: virtio_net::GSO_UDP_L4,
            hdr_len: 42,
            gso_size: size,
            csum_start: 34,
            csum_offset: 6,
        };
        (f, hdr)
    }

    fn check(segs: &[Vec<u8>], payload: &[u8], size: usize) {
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let ip = ipv4::Packet::new_checked(&s[14..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.total_len() as usize, s.len() - 14);
            assert_eq!(ip.ident(), 0xfffeu16.wrapping_add(i as u16));
            let u = udp::Packet::new_checked(ip.payload()).unwrap();
            assert_eq!(u.len() as usize, ip.payload().len());
            assert_eq!((u.src_port(), u.dst_port()), (5353, 53));
            let sum = checksum::combine(
                checksum::pseudo_header(SRC, DST, 17, u.len() as u32),
                checksum::sum(ip.payload()),
            );
            assert_eq!(checksum::fold(sum), 0xffff, "segment {i} UDP checksum");
            assert!(u.payload().len() <= size);
            joined.extend_from_slice(u.payload());
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn splits_into_gso_size_datagrams() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let (f, hdr) = super_datagram(&payload, 1200);
        let mut scratch = vec![0u8; 2000];
        let mut segs = Vec::new();
        let n = segment_tcpv4(&f, &hdr, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            segs.iter().map(|s| s.len()).collect::<Vec<_>>(),
            [1242, 1242, 642]
        );
        check(&segs, &payload, 1200);
        // Hand-checked first segment headers: IP total length 1228 = 0x04cc, UDP length 1208.
        assert_eq!(&segs[0][16..18], &[0x04, 0xcc]);
        assert_eq!(&segs[0][38..40], &1208u16.to_be_bytes());
    }

    #[test]
    fn rejects_what_it_cannot_split() {
        let (f, hdr) = super_datagram(b"abc", 0);
        let mut scratch = vec![0u8; 2000];
        assert_eq!(
            segment_tcpv4(&f, &hdr, &mut scratch, |_| {}),
            Err(OffloadError::ZeroGsoSize)
        );
        let (mut f, hdr) = super_datagram(b"abc", 100);
        f[23] = 6; // TCP, not UDP
        assert_eq!(
            segment_tcpv4(&f, &hdr, &mut scratch, |_| {}),
            Err(OffloadError::NotUdpV4)
        );
        let (f, hdr) = super_datagram(&[0u8; 500], 400);
        assert_eq!(
            segment_tcpv4(&f, &hdr, &mut scratch[..100], |_| {}),
            Err(OffloadError::ScratchTooSmall)
        );
        assert_eq!(UdpV4Layout::parse(&f[..40]), Err(OffloadError::Malformed));
    }

    proptest! {
        #[test]
        fn segments_are_valid_and_carry_the_payload(
            payload in proptest::collection::vec(any::<u8>(), 0..9000),
            size in 1u16..2000,
        ) {
            let (f, hdr) = super_datagram(&payload, size);
            let mut scratch = vec![0u8; 2100];
            let mut segs = Vec::new();
            let n = segment_tcpv4(&f, &hdr, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
            prop_assert_eq!(n, payload.len().div_ceil(size as usize).max(1));
            check(&segs, &payload, size as usize);
        }
    }
}
