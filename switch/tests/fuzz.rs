//! Arbitrary and mutated bytes into both entry points: never a panic, every drop counted.

mod common;

use std::net::SocketAddrV4;

use common::*;
use proptest::prelude::*;
use tapestry_switch::{PacketBuf, Proto, Verdict};

fn world() -> (Net, Ctr, Ctr, Ctr) {
    let mut net = Net::new(2, 64);
    let a = net.add(0, 1, 1);
    let b = net.add(0, 2, 2);
    let c = net.add(1, 1, 2);
    net.allow(1, 2, Proto::Tcp, 1, 65535);
    net.allow(1, 2, Proto::Udp, 1, 65535);
    (net, a, b, c)
}

fn check(net: &Net, cell: usize, before: u64, v: Verdict) {
    let after = net.cells[cell].counters.snapshot().totals.drop_packets;
    if let Verdict::Drop(_) = v {
        assert_eq!(after, before + 1, "drop counted");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200), port in 0u32..4, known in any::<bool>()) {
        let (mut net, ..) = world();
        let now = net.now;
        let before = net.cells[0].counters.snapshot().totals.drop_packets;
        let mut buf = PacketBuf::from_slice(&bytes);
        let v = net.cells[0].switch.from_port(tapestry_switch::PortId(port), &mut buf, now);
        check(&net, 0, before, v);
        let src = if known { SocketAddrV4::new(underlay(1), 4789) } else { SocketAddrV4::new(underlay(5), 1) };
        let before = net.cells[0].counters.snapshot().totals.drop_packets;
        let mut buf = PacketBuf::from_slice(&bytes);
        let v = net.cells[0].switch.from_underlay(src, &mut buf, now);
        check(&net, 0, before, v);
    }

    #[test]
    fn mutated_frames(kind in 0u8..4, edits in proptest::collection::vec((0usize..80, any::<u8>()), 1..6), cut in 0usize..90) {
        let (mut net, a, b, c) = world();
        let mut f = match kind {
            0 => tcp_frame(&a, b.ip(), 1000, 80, 0x02),
            1 => udp_frame(&a, c.ip(), 1000, 53),
            2 => icmp_frame(&a, &b),
            _ => tcp_frame(&a, c.ip(), 1000, 80, 0x10),
        };
        for (i, v) in edits {
            if let Some(x) = f.get_mut(i) { *x = v; }
        }
        f.truncate(f.len().saturating_sub(cut));
        let before = net.cells[0].counters.snapshot().totals.drop_packets;
        let mut buf = PacketBuf::from_slice(&f);
        let now = net.now;
        let v = net.cells[0].switch.from_port(a.port(), &mut buf, now);
        check(&net, 0, before, v);
        // The same bytes as an inner frame from cell 1.
        let mut vx = vec![0x88, 0, 0, 1, 0, 0, 1, 0];
        vx.extend_from_slice(&f);
        let _ = net.inject_underlay(0, SocketAddrV4::new(underlay(1), 4789), &vx);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A container's TAP with the virtio-net header hands over anything: a header with any flags,
    /// GSO type, sizes and checksum offsets, before a real or mangled frame. The switch and the
    /// offload code the dataplane runs on its verdict (segmenting for the underlay or a plain
    /// port, coalescing) never panic, and a drop is counted.
    #[test]
    fn arbitrary_virtio_headers(
        flags in prop_oneof![Just(0u8), Just(1), any::<u8>()],
        gso_type in prop_oneof![Just(0u8), Just(1), Just(5), Just(0x81), any::<u8>()],
        gso_size in prop_oneof![1u16..1500, any::<u16>()],
        csum in prop_oneof![Just((34u16, 16u16)), Just((34, 6)), (any::<u16>(), any::<u16>())],
        hdr_len in any::<u16>(),
        kind in 0u8..4,
        size in 0usize..4000,
        edits in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
        cut in 0usize..60,
    ) {
        use tapestry_switch::offload::{
            segment_vxlan, segment_vxlan_into, to_port, underlay_send, RxCoalescer, UnderlaySend,
        };
        use tapestry_switch::wire::virtio_net;
        let (mut net, a, b, c) = world();
        let payload = vec![0x5a; size];
        let mut f = match kind {
            0 => frame_with(a.cfg.mac, tapestry_switch::tables::gateway_mac(a.ip()),
                &Ip::new(a.ip(), b.ip(), 6), &tcp_bytes(a.ip(), b.ip(), 1000, 80, 0x18, &payload)),
            1 => frame_with(a.cfg.mac, tapestry_switch::tables::gateway_mac(a.ip()),
                &Ip::new(a.ip(), c.ip(), 17), &udp_bytes(a.ip(), c.ip(), 1000, 53, &payload)),
            2 => tcp_frame(&a, c.ip(), 1000, 80, 0x02),
            _ => tcp_frame(&a, b.ip(), 1000, 80, 0x10),
        };
        for (i, v) in edits {
            if let Some(x) = f.get_mut(i) { *x = v; }
        }
        f.truncate(f.len().saturating_sub(cut));
        let mut bytes = vec![0u8; virtio_net::HEADER_LEN];
        virtio_net::Repr { flags, gso_type, hdr_len, gso_size, csum_start: csum.0, csum_offset: csum.1 }
            .emit(&mut virtio_net::Packet::new_unchecked(&mut bytes[..]));
        bytes.extend_from_slice(&f);
        let now = net.now;
        let before = net.cells[0].counters.snapshot().totals.drop_packets;
        let mut buf = PacketBuf::from_slice(&bytes);
        let (v, h) = net.cells[0].switch.from_port_vnet(a.port(), &mut buf, now);
        check(&net, 0, before, v);
        let mut scratch = vec![0u8; 70_000];
        // What the dataplane does with the verdict: the switch's offload decisions.
        match v {
            Verdict::ToUnderlay(_) => match underlay_send(buf.data(), &h, 1 << 19) {
                UnderlaySend::Whole => {}
                UnderlaySend::BackToBack { room } => {
                    let mut out = vec![0u8; room];
                    let _ = segment_vxlan_into(buf.data(), &h, &mut out);
                }
                UnderlaySend::EachSegment => {
                    let _ = segment_vxlan(buf.data(), &h, &mut scratch, |_| {});
                }
            },
            Verdict::ToPort(p) => {
                // To a TAP with the header (whole), and to one without (segmented), the
                // segments then coalesced as the receive side would.
                let mut data = buf.data().to_vec();
                let _ = to_port(&mut data, &h, true, &mut scratch, |_| {});
                let mut rx = RxCoalescer::new(2);
                let _ = to_port(&mut data, &h, false, &mut scratch, |seg| {
                    rx.push(p, true, seg, |_, _| {})
                });
                rx.flush(|_, _| {});
            }
            // The local stack has its own property test (switch/src/stack/tests.rs).
            Verdict::ToStack | Verdict::ToService(_) | Verdict::Drop(_) => {}
        }
    }
}

fn icmp_frame(a: &Ctr, b: &Ctr) -> Vec<u8> {
    let syn = tcp_frame(a, b.ip(), 1, 2, 0x02);
    let err = icmp_bytes(3, 3, &syn[14..14 + 28]);
    frame_with(
        a.cfg.mac,
        tapestry_switch::tables::gateway_mac(a.ip()),
        &Ip::new(a.ip(), b.ip(), 1),
        &err,
    )
}
