//! Our VXLAN-GBP encapsulation as Wireshark decodes it. Ignored (reported as skipped) by a plain
//! `cargo nextest run`; scripts/test.sh runs it where tshark is installed.

mod common;

use std::process::Command;

use common::*;
use tapestry_switch::wire::{ethernet, ipv4, udp};

/// A pcap file (Ethernet link type) with one frame per UDP payload, 192.168.0.1 -> .2:4789.
fn pcap(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![];
    out.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for p in payloads {
        let mut f = vec![0u8; 14 + 20 + 8 + p.len()];
        ethernet::Repr {
            dst: [2, 0, 0, 0, 0, 2],
            src: [2, 0, 0, 0, 0, 1],
            ethertype: ethernet::ETHERTYPE_IPV4,
        }
        .emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
        ipv4::Repr {
            src: underlay(0),
            dst: underlay(1),
            protocol: ipv4::PROTO_UDP,
            payload_len: (8 + p.len()) as u16,
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut f[14..]));
        udp::Repr {
            src_port: 50000,
            dst_port: 4789,
            payload_len: p.len() as u16,
        }
        .emit(&mut udp::Packet::new_unchecked(&mut f[34..]));
        f[42..].copy_from_slice(p);
        for v in [0u32, 0, f.len() as u32, f.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&f);
    }
    out
}

#[test]
#[ignore = "needs tshark (scripts/test.sh installs it as root and runs this test)"]
fn tshark_decodes_vxlan_gbp() {
    if let Err(e) = Command::new("tshark").arg("--version").output() {
        panic!("this test needs tshark (apt-get install tshark): running it failed: {e}");
    }
    let mut w = world();
    let (a0, d0, b1) = (w.a0, w.d0, w.b1);
    let mut payloads = vec![];
    w.net.send(&a0, &tcp_frame(&a0, b1.ip(), 40000, 8080, SYN));
    payloads.push(w.net.last_underlay.take().unwrap().2);
    w.net.send(&d0, &tcp_frame(&d0, b1.ip(), 40001, 8080, SYN));
    payloads.push(w.net.last_underlay.take().unwrap().2);
    let path = std::env::temp_dir().join(format!("tapestry-switch-{}.pcap", std::process::id()));
    std::fs::write(&path, pcap(&payloads)).unwrap();
    let out = Command::new("tshark")
        .args([
            "-r",
            path.to_str().unwrap(),
            "-d",
            "udp.port==4789,vxlan",
            "-T",
            "fields",
        ])
        .args([
            "-e",
            "vxlan.flags",
            "-e",
            "vxlan.gbp",
            "-e",
            "vxlan.vni",
            "-e",
            "eth.src",
            "-e",
            "eth.dst",
        ])
        .args([
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "tcp.dstport",
            "-E",
            "separator=|",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "tshark said: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Tagged source: G and I flags, Group Policy ID 1, VNI 1, Silk's inner MACs, inner IPs.
    let f: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(f[0], "0x8800", "{text}");
    assert_eq!(f[1], "1");
    assert_eq!(f[2], "1");
    assert!(
        f[3].contains("ee:ee:0a:ff:01:00") && f[4].contains("ee:ee:0a:ff:02:00"),
        "{text}"
    );
    assert!(
        f[5].contains("10.255.1.1") && f[6].contains("10.255.2.1"),
        "{text}"
    );
    assert_eq!(f[7], "8080");
    // Untagged source: I flag only.
    let f: Vec<&str> = lines[1].split('|').collect();
    assert_eq!(f[0], "0x0800", "{text}");
}
