//! Pipeline policy behaviour without devices: revocation, conntrack limits, TTL, fragments,
//! ICMP, three cells.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::*;
use tapestry_switch::tables::gateway_mac;
use tapestry_switch::wire::ipv4;
use tapestry_switch::{DropReason as R, Proto};
#[test]
fn revocation_stops_an_established_flow() {
    for same_cell in [false, true] {
        let mut w = world();
        let a0 = w.a0;
        let b = if same_cell { w.b0 } else { w.b1 };
        assert!(w
            .net
            .send(&a0, &tcp_frame(&a0, b.ip(), 40000, 8080, SYN))
            .delivered());
        assert!(w
            .net
            .send(&b, &tcp_frame(&b, a0.ip(), 8080, 40000, SYNACK))
            .delivered());
        assert!(w
            .net
            .send(&a0, &tcp_frame(&a0, b.ip(), 40000, 8080, ACK))
            .delivered());
        assert!(w
            .net
            .send(&b, &tcp_frame(&b, a0.ip(), 8080, 40000, ACK))
            .delivered());
        // A policy change that keeps A->B: the flow survives the re-check.
        w.net.allow(1, 3, Proto::Tcp, 1, 2);
        assert!(w
            .net
            .send(&b, &tcp_frame(&b, a0.ip(), 8080, 40000, ACK))
            .delivered());
        assert!(w
            .net
            .send(&a0, &tcp_frame(&a0, b.ip(), 40000, 8080, ACK))
            .delivered());
        // Delete the policies: the destination's reply is dropped as revoked...
        w.net.revoke_all();
        assert_eq!(
            w.net
                .send(&b, &tcp_frame(&b, a0.ip(), 8080, 40000, ACK))
                .reason(),
            Some(R::PolicyRevoked)
        );
        // ...and the source's next segment no longer gets in.
        let out = w.net.send(&a0, &tcp_frame(&a0, b.ip(), 40000, 8080, ACK));
        assert_eq!(
            out.reason(),
            Some(R::PolicyRevoked),
            "same_cell={same_cell}"
        );
        // The destination's later segments stay dropped (the tombstone holds).
        assert_eq!(
            w.net
                .send(&b, &tcp_frame(&b, a0.ip(), 8080, 40000, ACK))
                .reason(),
            Some(R::PolicyRevoked)
        );
        assert_eq!(
            w.net
                .send(&a0, &tcp_frame(&a0, b.ip(), 40001, 8080, SYN))
                .reason(),
            Some(R::PolicyDenied)
        );
    }
    // Original-direction packets re-check too.
    let mut w = world();
    let (a0, b1) = (w.a0, w.b1);
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, SYN))
        .delivered());
    w.net.revoke_all();
    assert_eq!(
        w.net.send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, ACK)),
        Outcome::Dropped(1, R::PolicyRevoked)
    );
}

#[test]
fn conntrack_full_refuses_new_flows() {
    let mut w = world_with(2);
    let (a0, b0) = (w.a0, w.b0);
    // One established same-cell flow uses both entries (egress at a0, ingress at b0).
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b0.ip(), 40000, 8080, SYN))
        .delivered());
    assert!(w
        .net
        .send(&b0, &tcp_frame(&b0, a0.ip(), 8080, 40000, SYNACK))
        .delivered());
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b0.ip(), 40000, 8080, ACK))
        .delivered());
    assert_eq!(w.net.cells[0].conntrack.len(), 2);
    for sport in 40001..40010 {
        assert_eq!(
            w.net
                .send(&a0, &tcp_frame(&a0, b0.ip(), sport, 8080, SYN))
                .reason(),
            Some(R::ConntrackFull)
        );
    }
    assert_eq!(w.net.cells[0].conntrack.len(), 2);
    assert_eq!(w.net.drops(0, R::ConntrackFull), 9);
    // The established flow keeps working.
    assert!(w
        .net
        .send(&b0, &tcp_frame(&b0, a0.ip(), 8080, 40000, ACK))
        .delivered());
    // Half-open flows are evicted for new ones.
    let mut w = world_with(2);
    let (a0, b1) = (w.a0, w.b1);
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, SYN))
        .delivered());
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b1.ip(), 40001, 8080, SYN))
        .delivered());
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b1.ip(), 40002, 8080, SYN))
        .delivered());
    assert!(w.net.cells[0].conntrack.len() <= 2);
    assert!(
        w.net.cells[0]
            .counters
            .snapshot()
            .totals
            .conntrack_evictions
            >= 1
    );
}

#[test]
fn ttl() {
    let mut w = world();
    let (a0, b0, b1) = (w.a0, w.b0, w.b1);
    let mk = |ttl: u8, dst: Ipv4Addr| {
        let l4 = tcp_bytes(a0.ip(), dst, 1, 8080, SYN, b"");
        frame_with(
            a0.cfg.mac,
            gateway_mac(a0.ip()),
            &Ip {
                ttl,
                ..Ip::new(a0.ip(), dst, ipv4::PROTO_TCP)
            },
            &l4,
        )
    };
    assert_eq!(
        w.net.send(&a0, &mk(1, b0.ip())).reason(),
        Some(R::TtlExceeded)
    );
    assert_eq!(
        check_delivered(w.net.send(&a0, &mk(2, b0.ip())).frame(), &b0),
        1
    );
    // Across cells TTL 2 reaches 1 at the first cell, then the second drops it.
    assert_eq!(
        w.net.send(&a0, &mk(2, b1.ip())),
        Outcome::Dropped(1, R::TtlExceeded)
    );
}

#[test]
fn fragments() {
    let mut w = world();
    let (a0, c1) = (w.a0, w.c1);
    let l4 = udp_bytes(a0.ip(), c1.ip(), 5353, 53, &[7u8; 64]);
    let first = Ip {
        mf: true,
        ident: 77,
        ..Ip::new(a0.ip(), c1.ip(), ipv4::PROTO_UDP)
    };
    let later = Ip {
        mf: false,
        offset: 72,
        ident: 77,
        ..Ip::new(a0.ip(), c1.ip(), ipv4::PROTO_UDP)
    };
    let mac = (a0.cfg.mac, gateway_mac(a0.ip()));
    // A later fragment with no admitted first fragment: dropped.
    assert_eq!(
        w.net
            .send(&a0, &frame_with(mac.0, mac.1, &later, &[1u8; 40]))
            .reason(),
        Some(R::Fragment)
    );
    assert!(w
        .net
        .send(&a0, &frame_with(mac.0, mac.1, &first, &l4))
        .delivered());
    assert!(w
        .net
        .send(&a0, &frame_with(mac.0, mac.1, &later, &[1u8; 40]))
        .delivered());
    let other = Ip { ident: 78, ..later };
    assert_eq!(
        w.net
            .send(&a0, &frame_with(mac.0, mac.1, &other, &[1u8; 40]))
            .reason(),
        Some(R::Fragment)
    );
    // The first fragment of a denied flow admits nothing.
    let denied = Ip {
        mf: true,
        ident: 79,
        ..Ip::new(a0.ip(), c1.ip(), ipv4::PROTO_UDP)
    };
    let l4 = udp_bytes(a0.ip(), c1.ip(), 5353, 54, &[7u8; 64]);
    assert_eq!(
        w.net
            .send(&a0, &frame_with(mac.0, mac.1, &denied, &l4))
            .reason(),
        Some(R::PolicyDenied)
    );
    let later = Ip { ident: 79, ..later };
    assert_eq!(
        w.net
            .send(&a0, &frame_with(mac.0, mac.1, &later, &[1u8; 40]))
            .reason(),
        Some(R::Fragment)
    );
    w.net.advance(Duration::from_secs(31));
    let later = Ip { ident: 77, ..later };
    assert_eq!(
        w.net
            .send(&a0, &frame_with(mac.0, mac.1, &later, &[1u8; 40]))
            .reason(),
        Some(R::Fragment)
    );
}

#[test]
fn icmp_echo_denied_errors_related() {
    let mut w = world();
    let (a0, b0, b1) = (w.a0, w.b0, w.b1);
    let echo = icmp_bytes(8, 0, b"ping");
    let f = frame_with(
        a0.cfg.mac,
        gateway_mac(a0.ip()),
        &Ip::new(a0.ip(), b0.ip(), ipv4::PROTO_ICMP),
        &echo,
    );
    assert_eq!(w.net.send(&a0, &f).reason(), Some(R::IcmpDenied));
    let f = frame_with(
        a0.cfg.mac,
        gateway_mac(a0.ip()),
        &Ip::new(a0.ip(), b1.ip(), ipv4::PROTO_ICMP),
        &echo,
    );
    assert_eq!(w.net.send(&a0, &f), Outcome::Dropped(1, R::IcmpDenied));
    // a0 opens a flow to b1; b1 answers with an ICMP error about it: related, admitted.
    let syn = tcp_frame(&a0, b1.ip(), 40000, 8080, SYN);
    assert!(w.net.send(&a0, &syn).delivered());
    let embedded = &syn[14..14 + 28];
    for (t, c) in [(3u8, 3u8), (3, 4), (11, 0)] {
        let err = icmp_bytes(t, c, embedded);
        let f = frame_with(
            b1.cfg.mac,
            gateway_mac(b1.ip()),
            &Ip::new(b1.ip(), a0.ip(), ipv4::PROTO_ICMP),
            &err,
        );
        assert!(w.net.send(&b1, &f).delivered(), "type {t} code {c}");
    }
    // An error about a flow nobody opened: dropped.
    let other = tcp_frame(&a0, b1.ip(), 40001, 9999, SYN);
    let err = icmp_bytes(3, 3, &other[14..14 + 28]);
    let f = frame_with(
        b1.cfg.mac,
        gateway_mac(b1.ip()),
        &Ip::new(b1.ip(), a0.ip(), ipv4::PROTO_ICMP),
        &err,
    );
    assert_eq!(w.net.send(&b1, &f), Outcome::Dropped(0, R::IcmpUnrelated));
    // Other IP protocols (GRE) are denied.
    let f = frame_with(
        a0.cfg.mac,
        gateway_mac(a0.ip()),
        &Ip::new(a0.ip(), b0.ip(), 47),
        &[0u8; 8],
    );
    assert_eq!(w.net.send(&a0, &f).reason(), Some(R::ProtocolDenied));
}

#[test]
fn three_cells() {
    let mut net = Net::new(3, 1024);
    let a = net.add(0, 1, 1);
    let b = net.add(1, 1, 2);
    let c = net.add(2, 1, 3);
    net.allow(1, 2, Proto::Tcp, 80, 80);
    net.allow(2, 3, Proto::Udp, 1000, 2000);
    assert_eq!(
        net.send(&a, &tcp_frame(&a, b.ip(), 1234, 80, SYN)).clone(),
        Outcome::Delivered(
            1,
            b.port(),
            net.send(&a, &tcp_frame(&a, b.ip(), 1234, 80, SYN))
                .frame()
                .to_vec()
        )
    );
    assert!(net.send(&b, &udp_frame(&b, c.ip(), 999, 1500)).delivered());
    assert_eq!(
        net.send(&a, &udp_frame(&a, c.ip(), 999, 1500)),
        Outcome::Dropped(2, R::PolicyDenied)
    );
    assert_eq!(
        net.send(&c, &tcp_frame(&c, a.ip(), 1, 80, SYN)),
        Outcome::Dropped(0, R::PolicyDenied)
    );
    assert_eq!(
        net.last_underlay.unwrap().1,
        SocketAddrV4::new(underlay(0), 4789)
    );
}

#[test]
fn destination_tag_change_rechecks_admitted_flows() {
    let mut w = world();
    let (a0, b1) = (w.a0, w.b1);
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, SYN))
        .delivered());
    // b1's app is re-tagged (3): A->3 has no TCP policy, so the flow stops.
    w.net.cells[1].ports[0].tag = 3;
    w.net.publish();
    assert_eq!(
        w.net.send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, ACK)),
        Outcome::Dropped(1, R::PolicyRevoked)
    );
}

#[test]
fn purged_port_leaves_no_flows_for_the_next_container() {
    let mut w = world();
    let (a0, b1) = (w.a0, w.b1);
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, SYN))
        .delivered());
    assert!(w
        .net
        .send(&b1, &tcp_frame(&b1, a0.ip(), 8080, 40000, SYNACK))
        .delivered());
    // a0 goes away; its zone is purged; the next container with its IP gets no replies.
    let purged = w.net.cells[0].conntrack.purge_zone(a0.port().0);
    assert_eq!(purged, 1);
    assert_eq!(
        w.net.send(&b1, &tcp_frame(&b1, a0.ip(), 8080, 40000, ACK)),
        Outcome::Dropped(0, R::PolicyDenied)
    );
}

#[test]
fn revoked_udp_flow_stays_closed_while_the_server_keeps_talking() {
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
    w.net.revoke_all();
    // The server keeps answering: every answer is dropped and none re-opens the flow as the
    // server's own, so the client's packets stay out too.
    for _ in 0..5 {
        assert_eq!(
            w.net.send(&c1, &udp_frame(&c1, a0.ip(), 53, 5353)),
            Outcome::Dropped(1, R::PolicyRevoked)
        );
        w.net.advance(Duration::from_secs(20));
        assert_eq!(
            w.net.send(&a0, &udp_frame(&a0, c1.ip(), 5353, 53)).reason(),
            Some(R::PolicyRevoked)
        );
    }
    // The policy comes back: the flow resumes.
    w.net.allow(1, 3, Proto::Udp, 53, 53);
    assert!(w
        .net
        .send(&a0, &udp_frame(&a0, c1.ip(), 5353, 53))
        .delivered());
    assert!(w
        .net
        .send(&c1, &udp_frame(&c1, a0.ip(), 53, 5353))
        .delivered());
    // Revoked again and left alone: once the tombstone expires the flow is simply unknown.
    w.net.revoke_all();
    assert_eq!(
        w.net.send(&a0, &udp_frame(&a0, c1.ip(), 5353, 53)).reason(),
        Some(R::PolicyRevoked)
    );
    w.net.advance(Duration::from_secs(31));
    assert_eq!(
        w.net.send(&a0, &udp_frame(&a0, c1.ip(), 5353, 53)).reason(),
        Some(R::PolicyDenied)
    );
}

#[test]
fn flows_resume_after_a_cell_restart() {
    let mut w = world();
    let (a0, b1) = (w.a0, w.b1);
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, SYN))
        .delivered());
    assert!(w
        .net
        .send(&b1, &tcp_frame(&b1, a0.ip(), 8080, 40000, SYNACK))
        .delivered());
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, ACK))
        .delivered());
    // Both cells restart and forget their flows. The client's next segment is picked up
    // mid-stream on both sides (egress at cell 0, policy at cell 1), and replies flow again.
    w.net.restart(0, 1024);
    w.net.restart(1, 1024);
    assert_eq!(
        w.net
            .send(&b1, &tcp_frame(&b1, a0.ip(), 8080, 40000, ACK))
            .reason(),
        Some(R::PolicyDenied)
    );
    assert!(w
        .net
        .send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, ACK))
        .delivered());
    assert!(w
        .net
        .send(&b1, &tcp_frame(&b1, a0.ip(), 8080, 40000, ACK))
        .delivered());
    // A RST from a port records nothing.
    assert!(w
        .net
        .send(
            &b1,
            &tcp_frame(&b1, a0.ip(), 9999, 1, tapestry_switch::wire::tcp::RST)
        )
        .reason()
        .is_some());
}
