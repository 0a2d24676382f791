//! TSO in user space: split a TCPv4 super-frame into MSS-sized segments, fixing IP ids, lengths,
//! sequence numbers, flags and checksums. UDP super-datagrams (GSO_UDP_L4) go to [`super::uso`].

use super::{OffloadError, TcpV4Layout};
use crate::wire::{ipv4, tcp, virtio_net};

/// Splits `frame` (Ethernet/IPv4/TCP, or IPv4/UDP with GSO_UDP_L4; no virtio header) as `hdr`
/// describes. Each segment is
/// built in `scratch` (at least headers + gso_size bytes) and handed to `emit`. Frames without
/// GSO are passed through once, with their checksum completed if NEEDS_CSUM is set.
/// Returns the number of segments.
pub fn segment_tcpv4(
    frame: &[u8],
    hdr: &virtio_net::Repr,
    scratch: &mut [u8],
    emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    segment_with_prefix(&[], frame, hdr, scratch, emit)
}

/// [`segment_tcpv4`] for a VXLAN payload as the pipeline leaves it for the underlay (the 8-byte
/// VXLAN-GBP header, then the inner super-frame): each emitted datagram is the same VXLAN header
/// followed by one inner segment. `scratch` needs 8 more bytes.
pub fn segment_vxlan(
    payload: &[u8],
    hdr: &virtio_net::Repr,
    scratch: &mut [u8],
    emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let n = crate::wire::vxlan_gbp::HEADER_LEN;
    if payload.len() < n {
        return Err(OffloadError::Malformed);
    }
    let (vx, frame) = payload.split_at(n);
    segment_with_prefix(vx, frame, hdr, scratch, emit)
}

fn segment_with_prefix(
    prefix: &[u8],
    frame: &[u8],
    hdr: &virtio_net::Repr,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let p = prefix.len();
    if scratch.len() < p {
        return Err(OffloadError::ScratchTooSmall);
    }
    scratch[..p].copy_from_slice(prefix);
    match hdr.gso_kind() {
        virtio_net::GSO_NONE => {
            let n = frame.len();
            let out = scratch
                .get_mut(p..p + n)
                .ok_or(OffloadError::ScratchTooSmall)?;
            out.copy_from_slice(frame);
            super::complete_checksum(out, hdr)?;
            emit(&scratch[..p + n]);
            return Ok(1);
        }
        virtio_net::GSO_TCPV4 => {}
        virtio_net::GSO_UDP_L4 => return super::uso::segment(p, frame, hdr, scratch, emit),
        other => return Err(OffloadError::UnsupportedGso(other)),
    }
    let mss = hdr.gso_size as usize;
    if mss == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    let l = TcpV4Layout::parse(frame)?;
    let h = l.headers_len();
    if l.end < h || l.end > frame.len() {
        return Err(OffloadError::Malformed);
    }
    if scratch.len() < p + h + mss.min(l.end - h) {
        return Err(OffloadError::ScratchTooSmall);
    }
    let payload = &frame[h..l.end];
    let (id0, seq0, flags) = {
        let ip = ipv4::Packet::new_unchecked(&frame[l.ip..]);
        let t = tcp::Packet::new_unchecked(&frame[l.tcp..]);
        (ip.ident(), t.seq(), t.flags())
    };
    let chunks = payload.len().div_ceil(mss).max(1);
    for i in 0..chunks {
        let start = i * mss;
        let chunk = &payload[start.min(payload.len())..(start + mss).min(payload.len())];
        let n = h + chunk.len();
        build_segment(
            &mut scratch[p..p + n],
            frame,
            &l,
            chunk,
            (id0, seq0.wrapping_add(start as u32), flags),
            i,
            chunks,
        );
        emit(&scratch[..p + n]);
    }
    Ok(chunks)
}

/// Writes segment `i` of `chunks` (headers of `frame`, then `chunk`) into `out` and fixes its
/// IP length, id (`id0 + i`) and checksum, sequence number (`seq`, already offset), flags and
/// TCP checksum.
fn build_segment(
    out: &mut [u8],
    frame: &[u8],
    l: &TcpV4Layout,
    chunk: &[u8],
    (id0, seq, flags): (u16, u32, u8),
    i: usize,
    chunks: usize,
) {
    let h = l.headers_len();
    out[..h].copy_from_slice(&frame[..h]);
    out[h..h + chunk.len()].copy_from_slice(chunk);
    let last = i + 1 == chunks;
    let mut ip = ipv4::Packet::new_unchecked(&mut out[l.ip..]);
    ip.set_total_len((l.ip_len + l.tcp_len + chunk.len()) as u16);
    ip.set_ident(id0.wrapping_add(i as u16));
    ip.fill_checksum();
    let (src, dst) = (ip.src(), ip.dst());
    let mut t = tcp::Packet::new_unchecked(&mut out[l.tcp..l.tcp + l.tcp_len + chunk.len()]);
    t.set_seq(seq);
    let mut f = flags;
    if !last {
        f &= !(tcp::FIN | tcp::PSH);
    }
    if i > 0 {
        f &= !tcp::CWR;
    }
    t.set_flags(f);
    t.fill_checksum(src, dst);
}

/// What [`segment_vxlan_into`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    /// Datagrams written.
    pub count: usize,
    /// Length of each datagram but the last (which may be shorter).
    pub seg_len: usize,
    /// Bytes written (all datagrams, back to back).
    pub total: usize,
}

/// Bytes [`segment_vxlan_into`] needs for `payload` split as `hdr` says (an upper bound; at
/// most one extra header's worth).
pub fn segmented_len(payload: &[u8], hdr: &virtio_net::Repr) -> usize {
    // VXLAN + Ethernet + IPv4 and TCP headers of at most 60 bytes each.
    const MAX_HEADERS: usize = 8 + 14 + 60 + 60;
    let mss = hdr.gso_size.max(1) as usize;
    payload.len() + payload.len().div_ceil(mss) * MAX_HEADERS
}

/// [`segment_vxlan`], writing the datagrams back to back into `out` instead of calling back, so
/// a driver can hand them to one UDP GSO send without another copy. `hdr` must have GSO TCPV4.
pub fn segment_vxlan_into(
    payload: &[u8],
    hdr: &virtio_net::Repr,
    out: &mut [u8],
) -> Result<Segments, OffloadError> {
    let p = crate::wire::vxlan_gbp::HEADER_LEN;
    if payload.len() < p {
        return Err(OffloadError::Malformed);
    }
    match hdr.gso_kind() {
        virtio_net::GSO_TCPV4 => {}
        other => return Err(OffloadError::UnsupportedGso(other)),
    }
    let (vx, frame) = payload.split_at(p);
    let mss = hdr.gso_size as usize;
    if mss == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    let l = TcpV4Layout::parse(frame)?;
    let h = l.headers_len();
    if l.end < h || l.end > frame.len() {
        return Err(OffloadError::Malformed);
    }
    let data = &frame[h..l.end];
    let chunks = data.len().div_ceil(mss).max(1);
    let total = chunks * (p + h) + data.len();
    if out.len() < total {
        return Err(OffloadError::ScratchTooSmall);
    }
    let ids = {
        let ip = ipv4::Packet::new_unchecked(&frame[l.ip..]);
        let t = tcp::Packet::new_unchecked(&frame[l.tcp..]);
        (ip.ident(), t.seq(), t.flags())
    };
    let mut at = 0;
    for i in 0..chunks {
        let start = i * mss;
        let chunk = &data[start.min(data.len())..(start + mss).min(data.len())];
        let n = p + h + chunk.len();
        let seg = &mut out[at..at + n];
        seg[..p].copy_from_slice(vx);
        build_segment(
            &mut seg[p..],
            frame,
            &l,
            chunk,
            (ids.0, ids.1.wrapping_add(start as u32), ids.2),
            i,
            chunks,
        );
        at += n;
    }
    Ok(Segments {
        count: chunks,
        seg_len: p + h + mss.min(data.len()),
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::wire::checksum;
    use proptest::prelude::*;

    /// A super-frame as a TAP hands it: the TCP checksum field holds the pseudo-header sum.
    fn super_frame(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = tcp_frame(1000, flags, &[], payload);
        let ph = checksum::fold(checksum::pseudo_header(SRC, DST, 6, (f.len() - 34) as u32));
        f[50..52].copy_from_slice(&ph.to_be_bytes());
        f
    }

    #[test]
    fn splits_with_fixed_headers() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let f = super_frame(&payload, tcp::ACK | tcp::PSH | tcp::FIN);
        let mut scratch = vec![0u8; 2000];
        let mut segs: Vec<Vec<u8>> = vec![];
        let n = segment_tcpv4(&f, &tso_hdr(1448), &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(n, 3);
        let mut got = vec![];
        for (i, s) in segs.iter().enumerate() {
            assert!(checksums_ok(s), "segment {i}");
            let ip = ipv4::Packet::new_checked(&s[14..]).unwrap();
            assert_eq!(ip.ident(), 100 + i as u16);
            let t = tcp::Packet::new_checked(ip.payload()).unwrap();
            assert_eq!(t.seq(), 1000 + 1448 * i as u32);
            let last = i == 2;
            assert_eq!(t.flags() & (tcp::PSH | tcp::FIN) != 0, last);
            got.extend_from_slice(t.payload());
        }
        assert_eq!(segs[0].len(), 54 + 1448);
        assert_eq!(segs[2].len(), 54 + 3000 - 2 * 1448);
        assert_eq!(got, payload);
    }

    #[test]
    fn vxlan_prefix_on_every_segment() {
        let payload = vec![5u8; 2500];
        let f = super_frame(&payload, tcp::ACK);
        let mut vx = vec![0x88, 0, 0, 7, 0, 0, 1, 0];
        vx.extend_from_slice(&f);
        let mut scratch = vec![0u8; 8 + 54 + 1000];
        let mut segs = vec![];
        assert_eq!(
            segment_vxlan(&vx, &tso_hdr(1000), &mut scratch, |s| segs.push(s.to_vec())),
            Ok(3)
        );
        for s in &segs {
            assert_eq!(&s[..8], &vx[..8]);
            assert!(checksums_ok(&s[8..]));
        }
        assert_eq!(segs.iter().map(|s| s.len() - 8 - 54).sum::<usize>(), 2500);
        assert_eq!(
            segment_vxlan(&vx[..4], &tso_hdr(1000), &mut scratch, |_| ()),
            Err(OffloadError::Malformed)
        );
    }

    #[test]
    fn errors() {
        let f = super_frame(b"abc", tcp::ACK);
        let mut s = vec![0u8; 100];
        assert_eq!(
            segment_tcpv4(&f, &tso_hdr(0), &mut s, |_| ()),
            Err(OffloadError::ZeroGsoSize)
        );
        // A TCP frame announced as a UDP super-datagram.
        let udp = virtio_net::Repr {
            gso_type: virtio_net::GSO_UDP_L4,
            ..tso_hdr(10)
        };
        assert_eq!(
            segment_tcpv4(&f, &udp, &mut s, |_| ()),
            Err(OffloadError::NotUdpV4)
        );
        let ufo = virtio_net::Repr {
            gso_type: virtio_net::GSO_UDP,
            ..tso_hdr(10)
        };
        assert_eq!(
            segment_tcpv4(&f, &ufo, &mut s, |_| ()),
            Err(OffloadError::UnsupportedGso(3))
        );
        assert_eq!(
            segment_tcpv4(&f, &tso_hdr(10), &mut s[..20], |_| ()),
            Err(OffloadError::ScratchTooSmall)
        );
        // No GSO: the checksum is completed and the frame passed once.
        let none = virtio_net::Repr {
            gso_type: 0,
            ..tso_hdr(0)
        };
        let mut out = vec![];
        assert_eq!(
            segment_tcpv4(&f, &none, &mut s, |x| out = x.to_vec()),
            Ok(1)
        );
        assert!(checksums_ok(&out));
    }

    #[test]
    fn into_matches_callback_version() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let f = super_frame(&payload, tcp::ACK | tcp::PSH);
        let mut vx = vec![0x88, 0, 0, 7, 0, 0, 1, 0];
        vx.extend_from_slice(&f);
        let hdr = tso_hdr(1398);
        let mut scratch = vec![0u8; 8 + 54 + 1398];
        let mut want = vec![];
        let n = segment_vxlan(&vx, &hdr, &mut scratch, |s| want.extend_from_slice(s)).unwrap();
        let mut out = vec![0u8; segmented_len(&vx, &hdr)];
        let got = segment_vxlan_into(&vx, &hdr, &mut out).unwrap();
        assert_eq!(got.count, n);
        assert_eq!(got.seg_len, 8 + 54 + 1398);
        assert_eq!(&out[..got.total], &want[..]);
        assert_eq!(
            segment_vxlan_into(&vx, &hdr, &mut out[..got.total - 1]),
            Err(OffloadError::ScratchTooSmall)
        );
        let none = virtio_net::Repr::default();
        assert_eq!(
            segment_vxlan_into(&vx, &none, &mut out),
            Err(OffloadError::UnsupportedGso(0))
        );
    }

    proptest! {
        #[test]
        fn segments_are_valid_and_carry_the_payload(payload in proptest::collection::vec(any::<u8>(), 1..9000), mss in 1u16..2000) {
            let f = super_frame(&payload, tcp::ACK | tcp::PSH);
            let mut scratch = vec![0u8; 54 + mss as usize];
            let mut got = vec![];
            let mut count = 0;
            segment_tcpv4(&f, &tso_hdr(mss), &mut scratch, |s| {
                assert!(checksums_ok(s));
                assert!(s.len() <= 54 + mss as usize);
                got.extend_from_slice(&s[54..]);
                count += 1;
            }).unwrap();
            prop_assert_eq!(count, payload.len().div_ceil(mss as usize));
            prop_assert_eq!(got, payload);
        }
    }
}
