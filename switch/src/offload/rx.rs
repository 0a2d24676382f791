//! Receive-side coalescing towards ports: what to write to each port's TAP for the frames the
//! pipeline delivers from the underlay. Consecutive segments of a TCP flow to a port whose TAP
//! has the virtio-net header become one super-frame ([`TcpCoalescer`], one per port being
//! built, a fixed number of slots); everything else is written as it is, after whatever is
//! pending for its port, so a port sees its frames in the order they arrived.
//!
//! Sans-IO: [`RxCoalescer::push`] and [`RxCoalescer::flush`] call back with [`PortWrite`]s; the
//! driver writes them to the TAPs. The slots' buffers are allocated once, in [`RxCoalescer::new`].

use super::gro::{Push, TcpCoalescer};
use crate::tables::PortId;
use crate::wire::virtio_net;

/// One write to a port's TAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortWrite<'a> {
    /// A frame as it is (behind an empty virtio-net header if the TAP has IFF_VNET_HDR).
    Plain(&'a [u8]),
    /// This virtio-net header, then the frame (only for a TAP with IFF_VNET_HDR).
    Vnet([u8; virtio_net::HEADER_LEN], &'a [u8]),
}

struct Slot {
    port: Option<PortId>,
    c: TcpCoalescer,
}

/// Coalescing state of one worker's underlay receive path.
pub struct RxCoalescer {
    slots: Vec<Slot>,
    next_evict: usize,
}

impl std::fmt::Debug for RxCoalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxCoalescer")
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// Finishes a slot's super-frame, if any, and hands it to `write`.
fn flush_slot(slot: &mut Slot, write: &mut impl FnMut(PortId, PortWrite<'_>)) {
    let Some(p) = slot.port.take() else {
        return;
    };
    if let Some((hdr, frame)) = slot.c.finish() {
        let mut h = [0u8; virtio_net::HEADER_LEN];
        hdr.emit(&mut virtio_net::Packet::new_unchecked(&mut h[..]));
        write(p, PortWrite::Vnet(h, frame));
    }
}

impl RxCoalescer {
    /// Up to `slots` super-frames built at once (one per destination port); 0 turns coalescing
    /// off (every frame is written as it is).
    pub fn new(slots: usize) -> RxCoalescer {
        RxCoalescer {
            slots: (0..slots)
                .map(|_| Slot {
                    port: None,
                    c: TcpCoalescer::new(),
                })
                .collect(),
            next_evict: 0,
        }
    }

    /// A frame the pipeline delivered to `port` (its inner checksums verified or completed, as
    /// `Switch::from_underlay` does). `vnet`: the port's TAP has the virtio-net header. Calls
    /// `write` for each frame due now, in order: a pending super-frame the frame cannot join
    /// (this port's, or another port's evicted from its slot), then the frame itself unless it
    /// was kept to be coalesced.
    pub fn push(
        &mut self,
        port: PortId,
        vnet: bool,
        frame: &[u8],
        mut write: impl FnMut(PortId, PortWrite<'_>),
    ) {
        if !vnet || self.slots.is_empty() {
            write(port, PortWrite::Plain(frame));
            return;
        }
        let existing = self.slots.iter().position(|s| s.port == Some(port));
        if !TcpCoalescer::is_candidate(frame) {
            // Keep the order of the port's frames: what is pending goes first.
            if let Some(i) = existing {
                flush_slot(&mut self.slots[i], &mut write);
            }
            write(port, PortWrite::Plain(frame));
            return;
        }
        let i = match existing {
            Some(i) => i,
            None => {
                let i = match self.slots.iter().position(|s| s.port.is_none()) {
                    Some(i) => i,
                    None => {
                        let i = self.next_evict % self.slots.len();
                        self.next_evict = (i + 1) % self.slots.len();
                        flush_slot(&mut self.slots[i], &mut write);
                        i
                    }
                };
                self.slots[i].port = Some(port);
                i
            }
        };
        match self.slots[i].c.push(frame) {
            Push::Appended => {}
            Push::Mismatch => {
                flush_slot(&mut self.slots[i], &mut write);
                self.slots[i].port = Some(port);
                if self.slots[i].c.push(frame) != Push::Appended {
                    self.slots[i].port = None;
                    write(port, PortWrite::Plain(frame));
                }
            }
            Push::NotCoalescable => {
                flush_slot(&mut self.slots[i], &mut write);
                write(port, PortWrite::Plain(frame));
            }
        }
    }

    /// Writes out every pending super-frame (at the end of each receive batch).
    pub fn flush(&mut self, mut write: impl FnMut(PortId, PortWrite<'_>)) {
        for s in &mut self.slots {
            flush_slot(s, &mut write);
        }
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| s.port.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{complete_checksum, segment_tcpv4};
    use super::*;
    use crate::wire::{ipv4, tcp};
    use proptest::prelude::*;

    const MSS: u16 = 1000;

    /// The segments a sender's TSO makes of `payload` (from `seq`, IP id `ident`, with
    /// `flags`, source port `sport`): what arrives from the underlay.
    fn segments(
        sport: u16,
        (seq, ident): (u32, u16),
        flags: u8,
        payload: &[u8],
        mss: u16,
    ) -> Vec<Vec<u8>> {
        let mut f = tcp_frame(seq, flags, &[], payload);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        let mut ip = ipv4::Packet::new_unchecked(&mut f[14..]);
        ip.set_ident(ident);
        ip.fill_checksum();
        tcp::Packet::new_unchecked(&mut f[34..]).fill_checksum(SRC, DST);
        let mut scratch = vec![0u8; 54 + mss as usize];
        let mut out = vec![];
        segment_tcpv4(&f, &tso_hdr(mss), &mut scratch, |s| out.push(s.to_vec())).unwrap();
        out
    }

    /// What a TAP reader sees of the writes: each written frame, super-frames split again by
    /// the TSO code with their header (the reference: they must give back the segments).
    fn resegment(w: PortWrite<'_>) -> Vec<Vec<u8>> {
        match w {
            PortWrite::Plain(f) => vec![f.to_vec()],
            PortWrite::Vnet(h, f) => {
                let hdr =
                    virtio_net::Repr::parse(&virtio_net::Packet::new_checked(&h[..]).unwrap())
                        .unwrap();
                if hdr.gso_kind() == virtio_net::GSO_NONE {
                    let mut f = f.to_vec();
                    complete_checksum(&mut f, &hdr).unwrap();
                    return vec![f];
                }
                // Completing the super-frame's checksum must give a valid frame too.
                let mut whole = f.to_vec();
                complete_checksum(&mut whole, &hdr).unwrap();
                assert!(checksums_ok(&whole));
                let mut scratch = vec![0u8; 54 + hdr.gso_size as usize];
                let mut out = vec![];
                segment_tcpv4(f, &hdr, &mut scratch, |s| out.push(s.to_vec())).unwrap();
                out
            }
        }
    }

    #[test]
    fn a_run_becomes_one_super_frame() {
        let payload: Vec<u8> = (0..5500u32).map(|i| (i * 13) as u8).collect();
        let segs = segments(40000, (1, 100), tcp::ACK | tcp::PSH, &payload, MSS);
        assert_eq!(segs.len(), 6);
        let mut rx = RxCoalescer::new(4);
        let mut writes: Vec<(PortId, Vec<Vec<u8>>, bool)> = vec![];
        for s in &segs {
            rx.push(PortId(3), true, s, |p, w| {
                writes.push((p, resegment(w), matches!(w, PortWrite::Vnet(..))))
            });
        }
        assert!(writes.is_empty(), "all pending");
        assert!(!rx.is_empty());
        rx.flush(|p, w| writes.push((p, resegment(w), matches!(w, PortWrite::Vnet(..)))));
        assert!(rx.is_empty());
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].0, PortId(3));
        assert!(writes[0].2);
        assert_eq!(writes[0].1, segs);
    }

    #[test]
    fn plain_ports_and_off_write_everything_as_it_is() {
        let segs = segments(40000, (1, 100), tcp::ACK, &[7u8; 3000], MSS);
        for (slots, vnet) in [(0, true), (4, false)] {
            let mut rx = RxCoalescer::new(slots);
            let mut got = vec![];
            for s in &segs {
                rx.push(PortId(1), vnet, s, |_, w| {
                    assert!(matches!(w, PortWrite::Plain(_)));
                    got.extend(resegment(w));
                });
            }
            rx.flush(|_, _| panic!("nothing pending"));
            assert_eq!(got, segs);
        }
    }

    #[test]
    fn a_non_candidate_flushes_its_port_first() {
        let segs = segments(40000, (1, 100), tcp::ACK, &[1u8; 2000], MSS);
        let fin = tcp_frame(2001, tcp::ACK | tcp::FIN, &[], b"");
        let mut rx = RxCoalescer::new(2);
        let mut order = vec![];
        for f in segs.iter().chain([&fin]) {
            rx.push(PortId(1), true, f, |_, w| order.extend(resegment(w)));
        }
        let mut want = segs.clone();
        want.push(fin);
        assert_eq!(order, want);
        assert!(rx.is_empty());
    }

    /// Frames for the property test: a TSO run (without or with PSH), a pure ACK, a SYN or a
    /// UDP datagram; TCP from `sport` at `at` (sequence number, IP id).
    fn frames_of(kind: u8, sport: u16, at: (u32, u16), len: usize) -> Vec<Vec<u8>> {
        let payload: Vec<u8> = (0..len).map(|i| (i as u32 * 31 + at.0) as u8).collect();
        match kind {
            0 => segments(sport, at, tcp::ACK, &payload, MSS),
            1 => segments(sport, at, tcp::ACK | tcp::PSH, &payload, MSS),
            2 => vec![tcp_frame(at.0, tcp::ACK, &[], b"")],
            3 => vec![tcp_frame(at.0, tcp::SYN, &[], b"")],
            _ => {
                let mut f = eth_ipv4(ipv4::PROTO_UDP, 8 + len.min(500), 5);
                f[38..40].copy_from_slice(&((8 + len.min(500)) as u16).to_be_bytes());
                vec![f]
            }
        }
    }

    proptest! {
        /// The reference: per port, what a TAP reader gets (super-frames split again by the TSO
        /// code) is exactly the frames pushed for that port, in order, whatever the interleaving
        /// of ports and flows, the number of slots and which ports take the header.
        #[test]
        fn resegmented_writes_equal_the_input_per_port(
            bursts in proptest::collection::vec(
                (0u32..6, 0u8..5, 1u16..4, prop_oneof![0usize..6000, (1usize..4).prop_map(|k| k * MSS as usize)], any::<bool>()),
                1..24,
            ),
            slots in 0usize..4,
            vnet_mask in any::<u8>(),
        ) {
            let mut rx = RxCoalescer::new(slots);
            let mut want: std::collections::HashMap<PortId, Vec<Vec<u8>>> = Default::default();
            let mut got: std::collections::HashMap<PortId, Vec<Vec<u8>>> = Default::default();
            // Per flow: the next sequence number and IP id. A burst either continues its flow
            // or leaves a one-byte gap.
            let mut flows: std::collections::HashMap<u16, (u32, u16)> = Default::default();
            for (port, kind, flow, len, gap) in bursts {
                let port = PortId(port);
                let vnet = vnet_mask & (1 << port.0) != 0;
                let len = if kind <= 1 { len.max(1) } else { len };
                let sport = 40000 + flow;
                let at = flows.entry(sport).or_insert((1, 100));
                if gap {
                    at.0 = at.0.wrapping_add(1);
                }
                let frames = frames_of(kind, sport, *at, len);
                if kind <= 1 {
                    at.0 = at.0.wrapping_add(len as u32);
                    at.1 = at.1.wrapping_add(frames.len() as u16);
                }
                for f in frames {
                    want.entry(port).or_default().push(f.clone());
                    rx.push(port, vnet, &f, |p, w| {
                        if !vnet || slots == 0 {
                            assert!(matches!(w, PortWrite::Plain(_)));
                        }
                        got.entry(p).or_default().extend(resegment(w));
                    });
                }
            }
            rx.flush(|p, w| got.entry(p).or_default().extend(resegment(w)));
            prop_assert!(rx.is_empty());
            prop_assert_eq!(got, want);
        }
    }
}
