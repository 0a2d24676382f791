//! Hand-checked request bytes and reply parsing of the rtnetlink messages.
use super::*;

#[test]
fn veth_pair_request_bytes() {
    // ip link add a mtu 1450 type veth peer name b mtu 1450 netns FD(7), checked by hand:
    // 16 nlmsghdr + 16 ifinfomsg + 8 IFNAME + 8 MTU + 64 LINKINFO = 112 bytes.
    let m = veth_new(
        1,
        &Veth {
            name: "a",
            peer: "b",
            peer_netns_fd: 7,
            mtu: 1450,
        },
    );
    let u16_at = |o: usize| u16::from_ne_bytes([m[o], m[o + 1]]);
    let u32_at = |o: usize| u32::from_ne_bytes([m[o], m[o + 1], m[o + 2], m[o + 3]]);
    assert_eq!(m.len(), 112);
    assert_eq!(u32_at(0), 112);
    assert_eq!(u16_at(4), RTM_NEWLINK);
    assert_eq!(u16_at(6), 0x605, "REQUEST|ACK|EXCL|CREATE");
    assert_eq!(&m[32..40], &[6, 0, 3, 0, b'a', 0, 0, 0]);
    assert_eq!((u16_at(40), u16_at(42), u32_at(44)), (8, 4, 1450));
    // IFLA_LINKINFO (nested): INFO_KIND "veth", then INFO_DATA { VETH_INFO_PEER { ... } }.
    assert_eq!((u16_at(48), u16_at(50)), (64, 0x8012));
    assert_eq!(
        &m[52..64],
        &[9, 0, 1, 0, b'v', b'e', b't', b'h', 0, 0, 0, 0]
    );
    assert_eq!((u16_at(64), u16_at(66)), (48, 0x8002));
    assert_eq!((u16_at(68), u16_at(70)), (44, 0x8001));
    assert_eq!(&m[72..88], &[0u8; 16], "the peer's ifinfomsg");
    assert_eq!(&m[88..96], &[6, 0, 3, 0, b'b', 0, 0, 0]);
    assert_eq!((u16_at(96), u16_at(98), u32_at(100)), (8, 4, 1450));
    assert_eq!((u16_at(104), u16_at(106), u32_at(108)), (8, 28, 7));
}

#[test]
fn alignment() {
    assert_eq!(align(0), 0);
    assert_eq!(align(1), 4);
    assert_eq!(align(4), 4);
    assert_eq!(align(5), 8);
    assert_eq!(align(22), 24);
}

#[test]
fn link_set_bytes() {
    let m = link_set(
        7,
        3,
        &LinkChange {
            mac: Some([0xee, 0xee, 10, 255, 1, 2]),
            mtu: Some(1450),
            txqlen: Some(1000),
            up: Some(true),
        },
    );
    #[rustfmt::skip]
    let want: &[u8] = &[
        60, 0, 0, 0,  16, 0,  5, 0,  7, 0, 0, 0,  0, 0, 0, 0,   // nlmsghdr: len 60, NEWLINK, REQUEST|ACK, seq 7
        0, 0, 0, 0,  3, 0, 0, 0,  1, 0, 0, 0,  1, 0, 0, 0,      // ifinfomsg: index 3, flags UP, change UP
        10, 0, 1, 0,  0xee, 0xee, 10, 255, 1, 2, 0, 0,          // IFLA_ADDRESS len 10, padded to 12
        8, 0, 4, 0,  0xaa, 0x05, 0, 0,                          // IFLA_MTU 1450
        8, 0, 13, 0,  0xe8, 0x03, 0, 0,                         // IFLA_TXQLEN 1000
    ];
    assert_eq!(m, want);
}

#[test]
fn qdisc_replace_root_bytes() {
    let m = qdisc_replace_root(9, 4, "noqueue");
    #[rustfmt::skip]
    let want: &[u8] = &[
        48, 0, 0, 0,  36, 0,  0x05, 0x05,  9, 0, 0, 0,  0, 0, 0, 0, // NEWQDISC, REQUEST|ACK|REPLACE|CREATE
        0, 0, 0, 0,  4, 0, 0, 0,  0, 0, 0, 0,                       // tcmsg: family, pad, ifindex 4, handle 0
        0xff, 0xff, 0xff, 0xff,  0, 0, 0, 0,                         // parent TC_H_ROOT, info 0
        12, 0, 1, 0,  b'n', b'o', b'q', b'u', b'e', b'u', b'e', 0,   // TCA_KIND "noqueue\0"
    ];
    assert_eq!(m, want);
}

#[test]
fn qdisc_info_reads_kind_and_survives_garbage() {
    let mut payload = tcmsg(5, 0x8001_0000, TC_H_ROOT).to_vec();
    payload.extend_from_slice(&[12, 0, 1, 0, b'n', b'o', b'q', b'u', b'e', b'u', b'e', 0]);
    let r = Reply {
        ty: RTM_NEWQDISC,
        flags: 0,
        seq: 1,
        payload: &payload,
    };
    assert_eq!(qdisc_info(&r), Some((5, TC_H_ROOT, "noqueue".to_string())));
    // An attribute whose length runs past the end is refused, not read.
    let mut bad = tcmsg(5, 0, TC_H_ROOT).to_vec();
    bad.extend_from_slice(&[40, 0, 1, 0, b'x']);
    let r = Reply {
        ty: RTM_NEWQDISC,
        flags: 0,
        seq: 1,
        payload: &bad,
    };
    assert_eq!(qdisc_info(&r), None);
    for n in 0..payload.len() {
        let r = Reply {
            ty: RTM_NEWQDISC,
            flags: 0,
            seq: 1,
            payload: &payload[..n],
        };
        let _ = qdisc_info(&r);
    }
}

#[test]
fn link_del_bytes() {
    let m = link_del(1, "eth0");
    #[rustfmt::skip]
    let want: &[u8] = &[
        44, 0, 0, 0,  17, 0,  5, 0,  1, 0, 0, 0,  0, 0, 0, 0,
        0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
        9, 0, 3, 0,  b'e', b't', b'h', b'0', 0, 0, 0, 0,        // IFLA_IFNAME "eth0\0", len 9, padded
    ];
    assert_eq!(m, want);
}

#[test]
fn addr_add_bytes() {
    let m = addr_add(2, 5, Ipv4Addr::new(10, 255, 1, 2), 32);
    #[rustfmt::skip]
    let want: &[u8] = &[
        40, 0, 0, 0,  20, 0,  0x05, 0x05,  2, 0, 0, 0,  0, 0, 0, 0,   // REQUEST|ACK|CREATE|REPLACE = 0x505
        2, 32, 0x80, 0,  5, 0, 0, 0,                                  // AF_INET /32 PERMANENT universe idx 5
        8, 0, 2, 0,  10, 255, 1, 2,                                   // IFA_LOCAL
        8, 0, 1, 0,  10, 255, 1, 2,                                   // IFA_ADDRESS
    ];
    assert_eq!(m, want);
}

#[test]
fn route_bytes() {
    let gw = Ipv4Addr::new(169, 254, 0, 1);
    let link = route_add(
        3,
        &Route {
            dst: gw,
            dst_len: 32,
            gateway: None,
            oif: 5,
            scope: RT_SCOPE_LINK,
            onlink: false,
        },
    );
    #[rustfmt::skip]
    let want: &[u8] = &[
        44, 0, 0, 0,  24, 0,  0x05, 0x05,  3, 0, 0, 0,  0, 0, 0, 0,
        2, 32, 0, 0,  254, 3, 253, 1,  0, 0, 0, 0,                   // rtmsg: main, boot, link, unicast
        8, 0, 1, 0,  169, 254, 0, 1,                                 // RTA_DST
        8, 0, 4, 0,  5, 0, 0, 0,                                     // RTA_OIF
    ];
    assert_eq!(link, want);
    let default = route_add(
        4,
        &Route {
            dst: Ipv4Addr::UNSPECIFIED,
            dst_len: 0,
            gateway: Some(gw),
            oif: 5,
            scope: RT_SCOPE_UNIVERSE,
            onlink: true,
        },
    );
    #[rustfmt::skip]
    let want: &[u8] = &[
        44, 0, 0, 0,  24, 0,  0x05, 0x05,  4, 0, 0, 0,  0, 0, 0, 0,
        2, 0, 0, 0,  254, 3, 0, 1,  4, 0, 0, 0,                      // flags RTNH_F_ONLINK
        8, 0, 5, 0,  169, 254, 0, 1,                                 // RTA_GATEWAY
        8, 0, 4, 0,  5, 0, 0, 0,
    ];
    assert_eq!(default, want);
}

#[test]
fn neigh_bytes() {
    let m = neigh_add(
        9,
        5,
        Ipv4Addr::new(169, 254, 0, 1),
        [0xee, 0xee, 0, 0, 0, 1],
    );
    #[rustfmt::skip]
    let want: &[u8] = &[
        48, 0, 0, 0,  28, 0,  0x05, 0x05,  9, 0, 0, 0,  0, 0, 0, 0,
        2, 0, 0, 0,  5, 0, 0, 0,  0x80, 0, 0, 0,                     // ndmsg: AF_INET idx 5 PERMANENT
        8, 0, 1, 0,  169, 254, 0, 1,                                 // NDA_DST
        10, 0, 2, 0,  0xee, 0xee, 0, 0, 0, 1, 0, 0,                  // NDA_LLADDR, padded
    ];
    assert_eq!(m, want);
}

#[test]
fn parses_ack_error_with_ext_message() {
    #[rustfmt::skip]
    let buf: &[u8] = &[
        44, 0, 0, 0,  2, 0,  0x00, 0x03,  7, 0, 0, 0,  0, 0, 0, 0,    // NLMSG_ERROR, CAPPED|ACK_TLVS
        0xef, 0xff, 0xff, 0xff,                                       // -17 EEXIST
        60, 0, 0, 0,  16, 0,  5, 0,  7, 0, 0, 0,  0, 0, 0, 0,         // original header (capped)
        8, 0, 1, 0,  b'b', b'a', b'd', 0,                             // NLMSGERR_ATTR_MSG "bad"
    ];
    let r: Vec<_> = replies(buf).collect();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].seq, 7);
    assert_eq!(parse_error(&r[0]), Some((-17, Some("bad".into()))));
}

#[test]
fn truncated_replies_stop() {
    assert_eq!(replies(&[1, 2, 3]).count(), 0);
    let mut m = link_del(1, "x");
    m[0] = 200; // claims more than there is
    assert_eq!(replies(&m).count(), 0);
}
