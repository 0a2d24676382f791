//! What to write for a (super-)frame read from a port with the virtio-net header, once the
//! pipeline has decided where it goes ([`crate::Switch::from_port_vnet`]): whole, segmented in
//! user space, or with its checksum completed. Sans-IO: [`to_port`] calls back with the buffers
//! to write; [`underlay_send`] says how the driver's send queue should take a VXLAN payload.

use super::{complete_checksum, segment_tcpv4, segmented_len, OffloadError};
use crate::wire::virtio_net;

/// A (super-)frame for a local port. `data` is what `from_port_vnet` left in the buffer (the
/// virtio-net header, then the frame), `hdr` the header it returned, `dst_vnet` whether the
/// destination TAP has IFF_VNET_HDR. Calls `write` with each buffer to write to that TAP, as it
/// is, and returns how many:
/// - a TAP with the header takes `data` whole (its kernel segments and checksums, if it must);
/// - a TAP without it takes plain frames: the checksum completed in place if the header asks
///   for it, a GSO super-frame split into segments built in `scratch` (headers + gso_size
///   bytes).
pub fn to_port(
    data: &mut [u8],
    hdr: &virtio_net::Repr,
    dst_vnet: bool,
    scratch: &mut [u8],
    mut write: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    if dst_vnet {
        write(data);
        return Ok(1);
    }
    let frame = data
        .get_mut(virtio_net::HEADER_LEN..)
        .ok_or(OffloadError::Malformed)?;
    if hdr.gso_kind() == virtio_net::GSO_NONE {
        complete_checksum(frame, hdr)?;
        write(frame);
        return Ok(1);
    }
    segment_tcpv4(frame, hdr, scratch, write)
}

/// How a VXLAN payload carrying a frame from a port with the virtio-net header goes to the
/// underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderlaySend {
    /// One datagram, as it is (no GSO, no checksum to complete).
    Whole,
    /// A TCP super-frame split by [`super::segment_vxlan_into`] into datagrams written back to
    /// back in the send queue, ready for one UDP GSO send; needs at most `room` bytes.
    BackToBack { room: usize },
    /// One datagram per segment, each built in scratch by [`super::segment_vxlan`]: a UDP
    /// super-datagram, a checksum to complete, or a TCP super-frame that needs more room than
    /// the queue offers (a tiny gso_size).
    EachSegment,
}

/// Chooses how to send `payload` (from `from_port_vnet` with a `ToUnderlay` verdict, `hdr` the
/// header it returned), given the most bytes the send queue can take back to back.
pub fn underlay_send(payload: &[u8], hdr: &virtio_net::Repr, queue_room: usize) -> UnderlaySend {
    match hdr.gso_kind() {
        virtio_net::GSO_NONE if !hdr.needs_csum() => UnderlaySend::Whole,
        virtio_net::GSO_TCPV4 => {
            let room = segmented_len(payload, hdr);
            if room <= queue_room {
                UnderlaySend::BackToBack { room }
            } else {
                UnderlaySend::EachSegment
            }
        }
        _ => UnderlaySend::EachSegment,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{segment_vxlan, segment_vxlan_into};
    use super::*;
    use crate::wire::{checksum, tcp};
    use proptest::prelude::*;

    /// The header and frame as a TAP hands them over: NEEDS_CSUM, the TCP checksum field
    /// holding the pseudo-header sum.
    fn from_tap(payload: &[u8], hdr: &virtio_net::Repr) -> Vec<u8> {
        let mut f = tcp_frame(1, tcp::ACK | tcp::PSH, &[], payload);
        let ph = checksum::fold(checksum::pseudo_header(SRC, DST, 6, (f.len() - 34) as u32));
        f[50..52].copy_from_slice(&ph.to_be_bytes());
        let mut data = vec![0u8; virtio_net::HEADER_LEN];
        hdr.emit(&mut virtio_net::Packet::new_unchecked(&mut data[..]));
        data.extend_from_slice(&f);
        data
    }

    #[test]
    fn a_tap_with_the_header_takes_it_whole() {
        let hdr = tso_hdr(1000);
        let mut data = from_tap(&[3u8; 5000], &hdr);
        let orig = data.clone();
        let mut writes = vec![];
        let n = to_port(&mut data, &hdr, true, &mut [], |b| writes.push(b.to_vec())).unwrap();
        assert_eq!((n, writes), (1, vec![orig]));
    }

    #[test]
    fn a_plain_tap_gets_completed_or_segmented_frames() {
        // No GSO, NEEDS_CSUM: one frame, checksum completed.
        let none = virtio_net::Repr {
            gso_type: virtio_net::GSO_NONE,
            gso_size: 0,
            ..tso_hdr(0)
        };
        let mut data = from_tap(b"small", &none);
        let mut writes = vec![];
        to_port(&mut data, &none, false, &mut [], |b| {
            writes.push(b.to_vec())
        })
        .unwrap();
        assert_eq!(writes.len(), 1);
        assert!(checksums_ok(&writes[0]));
        assert_eq!(&writes[0][54..], b"small");
        // TSO: MSS-sized valid segments carrying the payload.
        let payload: Vec<u8> = (0..4500u32).map(|i| i as u8).collect();
        let hdr = tso_hdr(1000);
        let mut data = from_tap(&payload, &hdr);
        let mut scratch = vec![0u8; 54 + 1000];
        let mut got = vec![];
        let n = to_port(&mut data, &hdr, false, &mut scratch, |s| {
            assert!(checksums_ok(s));
            got.extend_from_slice(&s[54..]);
        })
        .unwrap();
        assert_eq!((n, &got), (5, &payload));
        // Offsets outside the frame, a scratch too small: errors, nothing written.
        let bad = virtio_net::Repr {
            csum_start: 9000,
            ..none
        };
        let mut data = from_tap(b"x", &bad);
        assert_eq!(
            to_port(&mut data, &bad, false, &mut [], |_| panic!()),
            Err(OffloadError::BadChecksumOffsets)
        );
        let mut data = from_tap(&payload, &hdr);
        assert_eq!(
            to_port(&mut data, &hdr, false, &mut scratch[..100], |_| panic!()),
            Err(OffloadError::ScratchTooSmall)
        );
    }

    #[test]
    fn underlay_choices() {
        let plain = virtio_net::Repr::default();
        assert_eq!(underlay_send(&[0; 100], &plain, 0), UnderlaySend::Whole);
        let csum = virtio_net::Repr {
            gso_type: virtio_net::GSO_NONE,
            gso_size: 0,
            ..tso_hdr(0)
        };
        assert_eq!(
            underlay_send(&[0; 100], &csum, 1 << 20),
            UnderlaySend::EachSegment
        );
        let uso = virtio_net::Repr {
            gso_type: virtio_net::GSO_UDP_L4,
            ..tso_hdr(1000)
        };
        assert_eq!(
            underlay_send(&[0; 100], &uso, 1 << 20),
            UnderlaySend::EachSegment
        );
        let tso = tso_hdr(1000);
        let payload = vec![0u8; 30_000];
        let room = segmented_len(&payload, &tso);
        assert_eq!(
            underlay_send(&payload, &tso, room),
            UnderlaySend::BackToBack { room }
        );
        assert_eq!(
            underlay_send(&payload, &tso, room - 1),
            UnderlaySend::EachSegment
        );
    }

    proptest! {
        /// Whatever the choice, the datagrams are the same: back to back in the room it asked
        /// for, or one by one.
        #[test]
        fn back_to_back_fits_and_equals_each_segment(
            len in 1usize..20_000, mss in 1u16..2000, queue_room in 0usize..200_000,
        ) {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let hdr = tso_hdr(mss);
            let data = from_tap(&payload, &hdr);
            let mut vx = vec![0x88, 0, 0, 1, 0, 0, 1, 0];
            vx.extend_from_slice(&data[virtio_net::HEADER_LEN..]);
            let mut scratch = vec![0u8; 8 + 54 + mss as usize];
            let mut each = vec![];
            segment_vxlan(&vx, &hdr, &mut scratch, |s| each.extend_from_slice(s)).unwrap();
            match underlay_send(&vx, &hdr, queue_room) {
                UnderlaySend::BackToBack { room } => {
                    prop_assert!(room <= queue_room);
                    let mut out = vec![0u8; room];
                    let segs = segment_vxlan_into(&vx, &hdr, &mut out).unwrap();
                    prop_assert_eq!(&out[..segs.total], &each[..]);
                }
                UnderlaySend::EachSegment => prop_assert!(segmented_len(&vx, &hdr) > queue_room),
                UnderlaySend::Whole => prop_assert!(false, "a TSO frame sent whole"),
            }
        }
    }
}
