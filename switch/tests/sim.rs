//! Pipeline behaviour without devices: ARP, classification, routing, VXLAN-GBP, underlay checks.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::*;
use tapestry_switch::tables::{container_mac, gateway_mac};
use tapestry_switch::wire::{arp, ethernet, ipv4, vxlan_gbp};
use tapestry_switch::{DropReason as R, PacketBuf, PortId, Verdict};
fn arp_request(from: &Ctr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    ethernet::Repr {
        dst: ethernet::BROADCAST,
        src: from.cfg.mac,
        ethertype: ethernet::ETHERTYPE_ARP,
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
    arp::Repr {
        oper: arp::OP_REQUEST,
        sha: from.cfg.mac,
        spa,
        tha: [0; 6],
        tpa,
    }
    .emit(&mut arp::Packet::new_unchecked(&mut f[14..]));
    f
}

#[test]
fn arp_answered_with_gateway_mac() {
    let mut w = world();
    let gw = Ipv4Addr::new(169, 254, 0, 1);
    let out = w.net.send(&w.a0, &arp_request(&w.a0, w.a0.ip(), gw));
    let Outcome::Delivered(0, p, f) = out else {
        panic!("{out:?}")
    };
    assert_eq!(p, w.a0.port());
    let e = ethernet::Frame::new_checked(&f[..]).unwrap();
    assert_eq!((e.dst(), e.src()), (w.a0.cfg.mac, gateway_mac(w.a0.ip())));
    let r = arp::Repr::parse(&arp::Packet::new_checked(e.payload()).unwrap()).unwrap();
    assert_eq!(
        r,
        arp::Repr {
            oper: arp::OP_REPLY,
            sha: gateway_mac(w.a0.ip()),
            spa: gw,
            tha: w.a0.cfg.mac,
            tpa: w.a0.ip()
        }
    );
    // Any other address gets the gateway MAC too.
    assert!(w
        .net
        .send(&w.a0, &arp_request(&w.a0, w.a0.ip(), w.b1.ip()))
        .delivered());
    // Its own address (duplicate address detection), a foreign sender IP: dropped.
    assert_eq!(
        w.net
            .send(&w.a0, &arp_request(&w.a0, w.a0.ip(), w.a0.ip()))
            .reason(),
        Some(R::ArpDropped)
    );
    assert_eq!(
        w.net
            .send(&w.a0, &arp_request(&w.a0, w.b0.ip(), gw))
            .reason(),
        Some(R::ArpDropped)
    );
    assert_eq!(w.net.drops(0, R::ArpDropped), 2);
}

#[test]
fn same_cell_allow_reply_and_deny() {
    let mut w = world();
    let (a0, b0) = (w.a0, w.b0);
    let out = w.net.send(&a0, &tcp_frame(&a0, b0.ip(), 40000, 8080, SYN));
    assert_eq!(
        out.clone(),
        Outcome::Delivered(0, b0.port(), out.frame().to_vec())
    );
    assert_eq!(check_delivered(out.frame(), &b0), 63);
    // Reply allowed.
    let out = w
        .net
        .send(&b0, &tcp_frame(&b0, a0.ip(), 8080, 40000, SYNACK));
    assert!(out.delivered(), "{out:?}");
    check_delivered(out.frame(), &a0);
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b0.ip(), 40000, 8080, ACK))
        .delivered());
    // One-way: B may not open a flow to A.
    assert_eq!(
        w.net
            .send(&b0, &tcp_frame(&b0, a0.ip(), 40001, 8080, SYN))
            .reason(),
        Some(R::PolicyDenied)
    );
    // Ports outside the policy.
    assert_eq!(
        w.net
            .send(&a0, &tcp_frame(&a0, b0.ip(), 40002, 9090, SYN))
            .reason(),
        Some(R::PolicyDenied)
    );
    // UDP to a TCP-only port.
    assert_eq!(
        w.net
            .send(&a0, &udp_frame(&a0, b0.ip(), 40002, 8080))
            .reason(),
        Some(R::PolicyDenied)
    );
    // No tag: never admitted.
    assert_eq!(
        w.net
            .send(&w.d0, &tcp_frame(&w.d0, b0.ip(), 40003, 8080, SYN))
            .reason(),
        Some(R::PolicyDenied)
    );
    assert_eq!(w.net.drops(0, R::PolicyDenied), 4);
}

#[test]
fn port_ranges() {
    let mut w = world();
    let (a0, b1) = (w.a0, w.b1);
    for (port, ok) in [
        (6999, false),
        (7000, true),
        (7005, true),
        (7010, true),
        (7011, false),
        (8080, true),
        (8081, false),
    ] {
        let out = w
            .net
            .send(&a0, &tcp_frame(&a0, b1.ip(), 30000 + port, port, SYN));
        assert_eq!(out.delivered(), ok, "port {port}: {out:?}");
    }
}

#[test]
fn cross_cell_vxlan_gbp_and_replies() {
    let mut w = world();
    let (a0, b1, c1) = (w.a0, w.b1, w.c1);
    let out = w.net.send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, SYN));
    assert_eq!(
        out.clone(),
        Outcome::Delivered(1, b1.port(), out.frame().to_vec())
    );
    assert_eq!(
        check_delivered(out.frame(), &b1),
        62,
        "decremented at both cells"
    );
    // What went over the underlay: VXLAN-GBP with tag 1, VNI 1, Silk's inner MACs.
    let (from, to, payload) = w.net.last_underlay.clone().unwrap();
    assert_eq!((from, to), (0, SocketAddrV4::new(underlay(1), 4789)));
    assert_eq!(
        &payload[..8],
        &[0x88, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00]
    );
    let inner = ethernet::Frame::new_checked(&payload[8..]).unwrap();
    assert_eq!(inner.src(), container_mac(Ipv4Addr::new(10, 255, 1, 0)));
    assert_eq!(inner.dst(), container_mac(Ipv4Addr::new(10, 255, 2, 0)));
    // The reply comes back.
    let out = w
        .net
        .send(&b1, &tcp_frame(&b1, a0.ip(), 8080, 40000, SYNACK));
    assert_eq!(
        out.clone(),
        Outcome::Delivered(0, a0.port(), out.frame().to_vec())
    );
    assert_eq!(
        &w.net.last_underlay.as_ref().unwrap().2[..4],
        &[0x88, 0, 0, 2],
        "B's tag"
    );
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, ACK))
        .delivered());
    // B may not open flows to A; C neither.
    assert_eq!(
        w.net.send(&b1, &tcp_frame(&b1, a0.ip(), 41000, 8080, SYN)),
        Outcome::Dropped(0, R::PolicyDenied)
    );
    assert_eq!(
        w.net.send(&c1, &tcp_frame(&c1, a0.ip(), 41000, 22, SYN)),
        Outcome::Dropped(0, R::PolicyDenied)
    );
    // A -> C on TCP is not allowed (only UDP 53).
    assert_eq!(
        w.net.send(&a0, &tcp_frame(&a0, c1.ip(), 41000, 53, SYN)),
        Outcome::Dropped(1, R::PolicyDenied)
    );
    let s = w.net.cells[0].counters.snapshot();
    assert!(s.totals.underlay_tx_packets >= 2 && s.totals.underlay_rx_packets >= 2);
    assert!(s.port(a0.port()).rx_packets >= 2 && s.port(a0.port()).tx_packets >= 1);
}

#[test]
fn untagged_source_sends_no_g_bit() {
    let mut w = world();
    let (d0, b1) = (w.d0, w.b1);
    assert_eq!(
        w.net.send(&d0, &tcp_frame(&d0, b1.ip(), 40000, 8080, SYN)),
        Outcome::Dropped(1, R::PolicyDenied)
    );
    assert_eq!(
        &w.net.last_underlay.unwrap().2[..8],
        &[0x08, 0, 0, 0, 0, 0, 1, 0]
    );
}

#[test]
fn udp_flows() {
    let mut w = world();
    let (a0, c1) = (w.a0, w.c1);
    assert!(w
        .net
        .send(&a0, &udp_frame(&a0, c1.ip(), 5353, 53))
        .delivered());
    assert!(w
        .net
        .send(&c1, &udp_frame(&c1, a0.ip(), 53, 5353))
        .delivered());
    assert_eq!(
        w.net.send(&c1, &udp_frame(&c1, a0.ip(), 53, 5354)).reason(),
        Some(R::PolicyDenied)
    );
    assert_eq!(
        w.net.send(&a0, &udp_frame(&a0, c1.ip(), 5353, 54)).reason(),
        Some(R::PolicyDenied)
    );
    // Replied UDP lives 180 s; the reply path closes after that.
    w.net.advance(Duration::from_secs(170));
    assert!(w
        .net
        .send(&c1, &udp_frame(&c1, a0.ip(), 53, 5353))
        .delivered());
    w.net.advance(Duration::from_secs(181));
    for c in &w.net.cells {
        c.conntrack.expire(w.net.now);
    }
    assert_eq!(
        w.net.send(&c1, &udp_frame(&c1, a0.ip(), 53, 5353)).reason(),
        Some(R::PolicyDenied)
    );
}

#[test]
fn anti_spoofing_and_classification() {
    let mut w = world();
    let (a0, b0) = (w.a0, w.b0);
    let mut f = tcp_frame(&a0, b0.ip(), 1, 8080, SYN);
    f[6..12].copy_from_slice(&b0.cfg.mac);
    assert_eq!(w.net.send(&a0, &f).reason(), Some(R::SpoofedMac));
    let l4 = tcp_bytes(b0.ip(), b0.ip(), 1, 8080, SYN, b"");
    let f = frame_with(
        a0.cfg.mac,
        gateway_mac(a0.ip()),
        &Ip::new(b0.ip(), b0.ip(), ipv4::PROTO_TCP),
        &l4,
    );
    assert_eq!(w.net.send(&a0, &f).reason(), Some(R::SpoofedIp));
    // IPv6 ethertype, broadcast IPv4, short frame, bad checksum, bad version.
    let mut f = tcp_frame(&a0, b0.ip(), 1, 8080, SYN);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(w.net.send(&a0, &f).reason(), Some(R::UnsupportedEthertype));
    let mut f = tcp_frame(&a0, b0.ip(), 1, 8080, SYN);
    f[0..6].copy_from_slice(&ethernet::BROADCAST);
    assert_eq!(w.net.send(&a0, &f).reason(), Some(R::Multicast));
    assert_eq!(w.net.send(&a0, &f[..10]).reason(), Some(R::Truncated));
    let mut f = tcp_frame(&a0, b0.ip(), 1, 8080, SYN);
    f[14 + 10] ^= 0xff;
    assert_eq!(w.net.send(&a0, &f).reason(), Some(R::BadIpChecksum));
    let mut f = tcp_frame(&a0, b0.ip(), 1, 8080, SYN);
    f[14] = 0x65;
    assert_eq!(w.net.send(&a0, &f).reason(), Some(R::MalformedIpv4));
    // Routing drops.
    let to =
        |ip: Ipv4Addr, w: &mut World| w.net.send(&a0, &tcp_frame(&a0, ip, 1, 8080, SYN)).reason();
    assert_eq!(
        to(Ipv4Addr::new(10, 255, 1, 99), &mut w),
        Some(R::NoSuchPort)
    );
    assert_eq!(to(Ipv4Addr::new(10, 255, 1, 0), &mut w), Some(R::ToVtep));
    assert_eq!(to(Ipv4Addr::new(10, 255, 9, 9), &mut w), Some(R::NoLease));
    assert_eq!(
        to(Ipv4Addr::new(8, 8, 8, 8), &mut w),
        Some(R::OutsideOverlay)
    );
    // Unknown port.
    let mut buf = PacketBuf::from_slice(&tcp_frame(&a0, b0.ip(), 1, 8080, SYN));
    let now = w.net.now;
    assert_eq!(
        w.net.cells[0].switch.from_port(PortId(77), &mut buf, now),
        Verdict::Drop(R::UnknownPort)
    );
    let s = w.net.cells[0].counters.snapshot();
    assert_eq!(s.port(a0.port()).drop_packets, 11);
}

fn vxlan(tag: Option<u16>, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    vxlan_gbp::Repr {
        vni,
        group_policy_id: tag,
        dont_learn: false,
        policy_applied: false,
    }
    .emit(&mut vxlan_gbp::Packet::new_unchecked(&mut b[..]));
    b.extend_from_slice(inner);
    b
}

/// An inner frame as cell 1 (or a kernel Silk cell at its address) would send it to cell 0.
fn inner_from_cell1(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let l4 = tcp_bytes(src, dst, 50000, dport, SYN, b"");
    frame_with(
        container_mac(Ipv4Addr::new(10, 255, 2, 0)),
        container_mac(Ipv4Addr::new(10, 255, 1, 0)),
        &Ip::new(src, dst, ipv4::PROTO_TCP),
        &l4,
    )
}

#[test]
fn underlay_checks() {
    let mut w = world();
    let a0 = w.a0;
    let cell1 = SocketAddrV4::new(underlay(1), 4789);
    let b1ip = w.b1.ip();
    // A well-formed frame from cell 1, tagged B (2): denied (B->A has no policy); tagged A: allowed.
    let good = inner_from_cell1(b1ip, w.b0.ip(), 8080);
    assert!(w
        .net
        .inject_underlay(0, cell1, &vxlan(Some(1), 1, &good))
        .delivered());
    let good_to_a = inner_from_cell1(b1ip, a0.ip(), 8080);
    assert_eq!(
        w.net
            .inject_underlay(0, cell1, &vxlan(Some(2), 1, &good_to_a))
            .reason(),
        Some(R::PolicyDenied)
    );
    // Unknown VTEP (any source port is fine, the address is not).
    let stranger = SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, 99), 4789);
    assert_eq!(
        w.net
            .inject_underlay(0, stranger, &vxlan(Some(1), 1, &good))
            .reason(),
        Some(R::UnknownVtep)
    );
    assert_eq!(
        w.net
            .inject_underlay(0, cell1, &vxlan(Some(1), 2, &good))
            .reason(),
        Some(R::WrongVni)
    );
    let mut no_i = vxlan(Some(1), 1, &good);
    no_i[0] = 0x80;
    assert_eq!(
        w.net.inject_underlay(0, cell1, &no_i).reason(),
        Some(R::MalformedVxlan)
    );
    assert_eq!(
        w.net.inject_underlay(0, cell1, &[0x88, 0, 0]).reason(),
        Some(R::MalformedVxlan)
    );
    // Inner source outside the sending cell's subnet.
    let spoof = inner_from_cell1(Ipv4Addr::new(10, 255, 1, 50), w.b0.ip(), 8080);
    assert_eq!(
        w.net
            .inject_underlay(0, cell1, &vxlan(Some(1), 1, &spoof))
            .reason(),
        Some(R::SpoofedRemoteIp)
    );
    // Wrong inner destination MAC; not IPv4; not for this cell; to the VTEP.
    let mut wrong_mac = good.clone();
    wrong_mac[5] ^= 1;
    assert_eq!(
        w.net
            .inject_underlay(0, cell1, &vxlan(Some(1), 1, &wrong_mac))
            .reason(),
        Some(R::WrongVtepMac)
    );
    let mut arp_inner = good.clone();
    arp_inner[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(
        w.net
            .inject_underlay(0, cell1, &vxlan(Some(1), 1, &arp_inner))
            .reason(),
        Some(R::UnsupportedEthertype)
    );
    let elsewhere = inner_from_cell1(b1ip, Ipv4Addr::new(10, 255, 3, 1), 8080);
    assert_eq!(
        w.net
            .inject_underlay(0, cell1, &vxlan(Some(1), 1, &elsewhere))
            .reason(),
        Some(R::NotLocal)
    );
    let vtep = inner_from_cell1(b1ip, Ipv4Addr::new(10, 255, 1, 0), 8080);
    assert_eq!(
        w.net
            .inject_underlay(0, cell1, &vxlan(Some(1), 1, &vtep))
            .reason(),
        Some(R::ToVtep)
    );
    let missing = inner_from_cell1(b1ip, Ipv4Addr::new(10, 255, 1, 200), 8080);
    assert_eq!(
        w.net
            .inject_underlay(0, cell1, &vxlan(Some(1), 1, &missing))
            .reason(),
        Some(R::NoSuchPort)
    );
    // No G bit: tag 0, never admitted.
    assert_eq!(
        w.net
            .inject_underlay(0, cell1, &vxlan(None, 1, &good))
            .reason(),
        Some(R::PolicyDenied)
    );
    assert_eq!(w.net.drops(0, R::UnknownVtep), 1);
    assert_eq!(w.net.drops(0, R::WrongVni), 1);
}

/// A kernel VTEP's own traffic over a veth: the inner TCP checksum field holds only the
/// pseudo-header sum (CHECKSUM_PARTIAL). The switch completes it before delivery and counts it;
/// a checksum that is wrong in any other way is dropped and counted, before any connection state.
#[test]
fn partial_inner_checksums_completed_corrupted_dropped() {
    use tapestry_switch::wire::{checksum, tcp};
    let mut w = world();
    let cell1 = SocketAddrV4::new(underlay(1), 4789);
    let (src, dst) = (w.b1.ip(), w.b0.ip());
    let good = inner_from_cell1(src, dst, 8080);
    let tcp_len = (good.len() - 34) as u32;
    let mut partial = good.clone();
    let ph = checksum::fold(checksum::pseudo_header(src, dst, 6, tcp_len));
    partial[50..52].copy_from_slice(&ph.to_be_bytes());
    assert_ne!(partial, good);

    let out = w
        .net
        .inject_underlay(0, cell1, &vxlan(Some(1), 1, &partial));
    let Outcome::Delivered(0, _, f) = out else {
        panic!("{out:?}")
    };
    let ip = ipv4::Packet::new_checked(&f[14..]).unwrap();
    let t = tcp::Packet::new_checked(ip.payload()).unwrap();
    assert!(t.verify_checksum(ip.src(), ip.dst()), "completed");
    assert_eq!(
        &f[34..],
        &good[34..],
        "the sender's TCP segment, byte for byte"
    );
    let s = w.net.cells[0].counters.snapshot();
    assert_eq!(s.totals.partial_checksums_completed, 1);

    // A complete checksum is not touched or counted.
    assert!(w
        .net
        .inject_underlay(0, cell1, &vxlan(Some(1), 1, &good))
        .delivered());
    let entries = w.net.cells[0].conntrack.len();
    // Corrupted on the way (a flipped bit in the window), from a new source port.
    let mut bad = inner_from_cell1(src, dst, 8080);
    bad[34..36].copy_from_slice(&50001u16.to_be_bytes());
    tcp::Packet::new_unchecked(&mut bad[34..]).fill_checksum(src, dst);
    bad[48] ^= 0x04;
    assert_eq!(
        w.net
            .inject_underlay(0, cell1, &vxlan(Some(1), 1, &bad))
            .reason(),
        Some(R::BadL4Checksum)
    );
    assert_eq!(w.net.drops(0, R::BadL4Checksum), 1);
    assert_eq!(w.net.cells[0].conntrack.len(), entries, "no state for it");
    let s = w.net.cells[0].counters.snapshot();
    assert_eq!(s.totals.partial_checksums_completed, 1);
}
