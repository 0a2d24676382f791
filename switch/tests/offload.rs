//! Super-frames through the pipeline: TAP to TAP whole in one cell; segmented for the underlay
//! and coalesced again at the far cell.

mod common;

use std::net::SocketAddrV4;

use common::*;
use tapestry_switch::offload::{complete_checksum, segment_vxlan, Push, TcpCoalescer};
use tapestry_switch::tables::gateway_mac;
use tapestry_switch::wire::{checksum, ethernet, ipv4, tcp, virtio_net};
use tapestry_switch::{DropReason as R, PacketBuf, Verdict};

/// A TSO super-frame from `from` as a TAP with IFF_VNET_HDR hands it over: virtio header, then
/// the frame whose TCP checksum field holds the pseudo-header sum.
fn super_frame(
    from: &Ctr,
    dst: std::net::Ipv4Addr,
    payload: &[u8],
    mss: u16,
) -> (virtio_net::Repr, Vec<u8>) {
    let l4 = tcp_bytes(from.ip(), dst, 40000, 8080, tcp::ACK | tcp::PSH, payload);
    let mut f = frame_with(
        from.cfg.mac,
        gateway_mac(from.ip()),
        &Ip::new(from.ip(), dst, ipv4::PROTO_TCP),
        &l4,
    );
    let ph = checksum::fold(checksum::pseudo_header(from.ip(), dst, 6, l4.len() as u32));
    f[50..52].copy_from_slice(&ph.to_be_bytes());
    let hdr = virtio_net::Repr {
        flags: virtio_net::FLAG_NEEDS_CSUM,
        gso_type: virtio_net::GSO_TCPV4,
        hdr_len: 54,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut out = vec![0u8; 10];
    hdr.emit(&mut virtio_net::Packet::new_unchecked(&mut out[..]));
    out.extend_from_slice(&f);
    (hdr, out)
}

fn valid_tcp(frame: &[u8]) -> bool {
    let ip = ipv4::Packet::new_checked(&frame[14..]).unwrap();
    ip.verify_checksum()
        && tcp::Packet::new_checked(ip.payload())
            .unwrap()
            .verify_checksum(ip.src(), ip.dst())
}

#[test]
fn same_cell_super_frame_goes_whole() {
    let mut w = world();
    let (a0, b0) = (w.a0, w.b0);
    let payload: Vec<u8> = (0..30000u32).map(|i| (i * 7) as u8).collect();
    let (hdr, bytes) = super_frame(&a0, b0.ip(), &payload, 1448);
    let mut buf = PacketBuf::from_slice(&bytes);
    let now = w.net.now;
    let (v, got_hdr) = w.net.cells[0]
        .switch
        .from_port_vnet(a0.port(), &mut buf, now);
    assert_eq!(v, Verdict::ToPort(b0.port()));
    assert_eq!(got_hdr, hdr);
    let out = buf.data();
    assert_eq!(&out[..10], &bytes[..10], "virtio header carried over");
    let mut frame = out[10..].to_vec();
    let e = ethernet::Frame::new_checked(&frame[..]).unwrap();
    assert_eq!((e.dst(), e.src()), (b0.cfg.mac, gateway_mac(b0.ip())));
    complete_checksum(&mut frame, &hdr).unwrap();
    assert!(valid_tcp(&frame));
    assert_eq!(&frame[54..], &payload[..]);
}

#[test]
fn cross_cell_super_frame_segmented_then_coalesced() {
    let mut w = world();
    let (a0, b1) = (w.a0, w.b1);
    let payload: Vec<u8> = (0..20000u32).map(|i| (i * 13) as u8).collect();
    let (hdr, bytes) = super_frame(&a0, b1.ip(), &payload, 1398);
    let mut buf = PacketBuf::from_slice(&bytes);
    let now = w.net.now;
    let (v, got_hdr) = w.net.cells[0]
        .switch
        .from_port_vnet(a0.port(), &mut buf, now);
    let Verdict::ToUnderlay(to) = v else {
        panic!("{v:?}")
    };
    assert_eq!(got_hdr, hdr);
    assert_eq!(to, SocketAddrV4::new(underlay(1), 4789));
    let mut datagrams = vec![];
    let mut scratch = vec![0u8; 8 + 54 + 1398];
    let n = segment_vxlan(buf.data(), &got_hdr, &mut scratch, |d| {
        datagrams.push(d.to_vec())
    })
    .unwrap();
    assert_eq!(n, payload.len().div_ceil(1398));
    assert!(datagrams
        .iter()
        .all(|d| d.len() <= 8 + 54 + 1398 && d[..4] == [0x88, 0, 0, 1]));
    // The far cell admits every segment; its driver coalesces them for b1's TAP.
    let src = SocketAddrV4::new(underlay(0), 4789);
    let mut gro = TcpCoalescer::new();
    for d in &datagrams {
        let out = w.net.inject_underlay(1, src, d);
        assert!(out.delivered(), "{out:?}");
        assert!(valid_tcp(out.frame()));
        assert_eq!(gro.push(out.frame()), Push::Appended);
    }
    let (h, f) = gro.finish().unwrap();
    assert_eq!((h.gso_type, h.gso_size), (virtio_net::GSO_TCPV4, 1398));
    let mut f = f.to_vec();
    complete_checksum(&mut f, &h).unwrap();
    assert!(valid_tcp(&f));
    assert_eq!(&f[54..], &payload[..]);
    assert_eq!(
        ethernet::Frame::new_checked(&f[..]).unwrap().dst(),
        b1.cfg.mac
    );
}

#[test]
fn bad_virtio_headers_are_dropped() {
    let mut w = world();
    let (a0, b0) = (w.a0, w.b0);
    let now = w.net.now;
    let (_, mut bytes) = super_frame(&a0, b0.ip(), &[1; 100], 50);
    bytes[1] = virtio_net::GSO_UDP_L4;
    let mut buf = PacketBuf::from_slice(&bytes);
    assert_eq!(
        w.net.cells[0]
            .switch
            .from_port_vnet(a0.port(), &mut buf, now)
            .0,
        Verdict::Drop(R::BadOffload)
    );
    let mut buf = PacketBuf::from_slice(&bytes[..5]);
    assert_eq!(
        w.net.cells[0]
            .switch
            .from_port_vnet(a0.port(), &mut buf, now)
            .0,
        Verdict::Drop(R::Truncated)
    );
    // GSO TCPV4 on a UDP frame.
    let mut udp = vec![0u8; 10];
    udp[1] = virtio_net::GSO_TCPV4;
    udp[4] = 100;
    udp.extend_from_slice(&udp_frame(&a0, b0.ip(), 1, 2));
    let mut buf = PacketBuf::from_slice(&udp);
    assert_eq!(
        w.net.cells[0]
            .switch
            .from_port_vnet(a0.port(), &mut buf, now)
            .0,
        Verdict::Drop(R::BadOffload)
    );
    assert_eq!(w.net.drops(0, R::BadOffload), 2);
}
