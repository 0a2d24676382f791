//! Root tests: TAPs with the virtio-net header, offloads (USO both ways), txqueuelen, multiqueue.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::*;
use tapestry_sys::netlink::{self, IfaceConfig};
use tapestry_sys::tap::{self, Tap, TapOptions};
use tapestry_sys::vnet::*;
use tapestry_sys::{netns, udp};

const IP: Ipv4Addr = Ipv4Addr::new(10, 255, 2, 3);
const GW: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
const MAC: [u8; 6] = [0xee, 0xee, 10, 255, 2, 3];
const GW_MAC: [u8; 6] = [0xee, 0xee, 10, 255, 2, 0];

fn configure(ns: &Netns) {
    netlink::configure_container_iface(
        &ns.path(),
        &IfaceConfig {
            name: "eth0".into(),
            mac: MAC,
            mtu: 1450,
            ip: IP,
            gateway: GW,
            gateway_mac: Some(GW_MAC),
            txqueuelen: None,
            noqueue: true,
        },
    )
    .unwrap();
}

fn vnet() -> TapOptions {
    TapOptions {
        vnet_hdr: true,
        multi_queue: false,
    }
}

#[test]
#[ignore = "needs root and /dev/net/tun (scripts/test.sh runs it as root)"]
fn vnet_header_offloads_and_txqueuelen() {
    require_root();
    let ns = Netns::new("vnet");
    let tap = Tap::open_in_netns(&ns.path(), "eth0", vnet()).unwrap();
    tap.set_nonblocking(true).unwrap();
    configure(&ns);

    assert_eq!(tap.vnet_hdr_size().unwrap(), VNET_HDR_LEN as i32);
    let off = tap.probe_offload();
    eprintln!("TAP offloads accepted: {off:#x}");
    let tso = tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6;
    assert_eq!(off & tso, tso, "{off:#x}");
    assert_ne!(off & tap::TUN_F_USO4, 0, "Linux >= 6.2 takes USO: {off:#x}");
    // Offloads without the header are refused before the kernel sees them.
    let plain = Tap::open_in_netns(&ns.path(), "plain0", TapOptions::default()).unwrap();
    assert_eq!(plain.probe_offload(), 0);
    assert!(plain
        .set_offload(tap::TUN_F_CSUM)
        .unwrap_err()
        .to_string()
        .contains("vnet_hdr"));

    tap.set_txqueuelen(10_000).unwrap();
    let link = ns.ip_json(&["link", "show", "dev", "eth0"]);
    assert!(link.contains("\"txqlen\":10000"), "{link}");

    // A ping arrives behind a 10-byte header with no GSO.
    let mut ping = ns.spawn(&["ping", "-c1", "-W1", "169.254.0.1"]);
    let f = read_until(&tap, Duration::from_secs(3), |f| {
        f.len() > VNET_HDR_LEN && is_icmp(&f[VNET_HDR_LEN..], 8, GW.octets(), Some(GW_MAC))
    });
    let _ = ping.wait();
    let f = f.expect("echo request behind a virtio-net header");
    assert_eq!(
        VnetHdr::parse(&f).unwrap().gso_type,
        VIRTIO_NET_HDR_GSO_NONE
    );

    // Writes carry the header too: an echo request with a zero header gets answered.
    let mut w = VnetHdr::default().to_bytes().to_vec();
    w.extend(echo_request(GW_MAC, MAC, GW.octets(), IP.octets(), 0x4242));
    assert_eq!(tap.write(&w).unwrap(), w.len());
    let r = read_until(&tap, Duration::from_secs(3), |f| {
        f.len() > VNET_HDR_LEN && is_icmp(&f[VNET_HDR_LEN..], 0, GW.octets(), Some(GW_MAC))
    });
    assert!(r.is_some(), "echo reply behind a header");

    // A 12-byte header (mergeable rx buffers layout) moves the frame by two.
    tap.set_vnet_hdr_size(12).unwrap();
    assert_eq!(tap.vnet_hdr_size().unwrap(), 12);
    let mut w = vec![0u8; VNET_HDR_LEN_MRG];
    w.extend(echo_request(GW_MAC, MAC, GW.octets(), IP.octets(), 0x4343));
    tap.write(&w).unwrap();
    let r = read_until(&tap, Duration::from_secs(3), |f| {
        f.len() > VNET_HDR_LEN_MRG && is_icmp(&f[VNET_HDR_LEN_MRG..], 0, GW.octets(), Some(GW_MAC))
    });
    assert!(r.is_some(), "echo reply behind a 12-byte header");
    tap.set_vnet_hdr_size(VNET_HDR_LEN as i32).unwrap();
}

#[test]
#[ignore = "needs root and /dev/net/tun (scripts/test.sh runs it as root)"]
fn uso_super_frames_both_ways() {
    require_root();
    let ns = Netns::new("uso");
    let tap = Tap::open_in_netns(&ns.path(), "eth0", vnet()).unwrap();
    tap.set_nonblocking(true).unwrap();
    configure(&ns);
    let off = tap.probe_offload();
    assert_ne!(off & tap::TUN_F_USO4, 0, "{off:#x}");

    // Container -> TAP: a 3 x 1000-byte GSO send reaches us as one super-frame.
    let container = netns::run_in_netns(&ns.path(), || {
        Ok(udp::bind(SocketAddrV4::new(IP, 7777), false, 1 << 20).unwrap())
    })
    .unwrap();
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
    udp::send_gso(&container, SocketAddrV4::new(GW, 9999), &payload, 1000).unwrap();
    let f = read_until(&tap, Duration::from_secs(3), |f| {
        f.len() > VNET_HDR_LEN + 42 && f[VNET_HDR_LEN + 23] == 17
    })
    .expect("a UDP frame on the TAP");
    let h = VnetHdr::parse(&f).unwrap();
    assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_UDP_L4, "{h:?}");
    assert_eq!(h.gso_size, 1000, "{h:?}");
    assert_eq!(
        h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_F_NEEDS_CSUM
    );
    assert_eq!((h.csum_start, h.csum_offset), (34, 6));
    assert_eq!(f.len(), VNET_HDR_LEN + 42 + 3000);
    assert_eq!(&f[VNET_HDR_LEN + 42..], &payload[..]);

    // TAP -> container: a USO super-frame is segmented by the kernel into 3 datagrams.
    let frame = udp_super_frame(GW, 9999, IP, 7777, &payload, 1000);
    assert_eq!(tap.write(&frame).unwrap(), frame.len());
    container.set_nonblocking(false).unwrap();
    container
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..3 {
        let (n, from) = container
            .recv_from(&mut buf)
            .expect("a segment in the container");
        assert_eq!(from.to_string(), "169.254.0.1:9999");
        assert_eq!(&buf[..n], &payload[i * 1000..(i + 1) * 1000]);
    }
}

/// virtio-net header (USO, NEEDS_CSUM) + Ethernet + IPv4 + UDP carrying `payload` in `seg`-byte
/// segments; the UDP checksum field holds the pseudo-header sum, as for CHECKSUM_PARTIAL.
fn udp_super_frame(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
    seg: u16,
) -> Vec<u8> {
    let h = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
        hdr_len: 42,
        gso_size: seg,
        csum_start: 34,
        csum_offset: 6,
    };
    let mut f = h.to_bytes().to_vec();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let udp_len = (8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 7, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    // Pseudo-header sum, folded, not complemented.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let partial = !checksum(&pseudo);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&partial.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
#[ignore = "needs root and /dev/net/tun (scripts/test.sh runs it as root)"]
fn multiqueue_queues_share_one_device() {
    require_root();
    let ns = Netns::new("mq");
    let mq = TapOptions {
        vnet_hdr: true,
        multi_queue: true,
    };
    let q0 = Tap::open_in_netns(&ns.path(), "eth0", mq).unwrap();
    let queues: Vec<Tap> = (0..3).map(|_| q0.open_queue().unwrap()).collect();
    configure(&ns);
    let link = ns.ip_json(&["-d", "link", "show", "dev", "eth0"]);
    assert!(link.contains("multi_queue"), "{link}");
    let all: Vec<&Tap> = std::iter::once(&q0).chain(queues.iter()).collect();
    for q in &all {
        q.set_nonblocking(true).unwrap();
        assert_ne!(q.probe_offload(), 0);
    }
    // Every queue can write into the container: each echo request gets an answer on some queue.
    assert_eq!(
        echo_on_every_queue(&all, 0x5000),
        vec![0x5000, 0x5001, 0x5002, 0x5003]
    );

    // A single-queue TAP has no extra queues; dropping every queue keeps the device.
    let single = Tap::open_in_netns(&ns.path(), "single0", vnet()).unwrap();
    assert!(single
        .open_queue()
        .unwrap_err()
        .to_string()
        .contains("multi_queue"));
    drop(all);
    drop(queues);
    drop(q0);
    assert!(netlink::link_exists(&ns.path(), "eth0").unwrap());
    tap::delete_in_netns(&ns.path(), "eth0").unwrap();
    assert!(!netlink::link_exists(&ns.path(), "eth0").unwrap());
}

#[test]
#[ignore = "needs root and /dev/net/tun (scripts/test.sh runs it as root)"]
fn tso_super_frames_from_the_container() {
    require_root();
    let ns = Netns::new("tso");
    let tap = Tap::open_in_netns(&ns.path(), "eth0", vnet()).unwrap();
    tap.set_nonblocking(true).unwrap();
    configure(&ns);
    let off = tap.probe_offload();
    assert_ne!(off & tap::TUN_F_TSO4, 0, "{off:#x}");

    // The container connects to 169.254.0.1:8080 and sends 64 KiB; we play the peer on the TAP.
    let path = ns.path();
    // The client keeps its connection open until we have read the super-frame (or gave up).
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        netns::run_in_netns(&path, move || {
            use std::io::Write;
            let mut s = std::net::TcpStream::connect_timeout(
                &"169.254.0.1:8080".parse().unwrap(),
                Duration::from_secs(3),
            )
            .expect("connect through the TAP");
            // Nobody ACKs the data: never block longer than a second.
            s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
            let _ = s.write_all(&vec![0x61u8; 65536]);
            let _ = wait_done.recv_timeout(Duration::from_secs(10));
            Ok(())
        })
    });
    let l2 = VNET_HDR_LEN;
    let syn = read_until(&tap, Duration::from_secs(3), |f| {
        f.len() >= l2 + 54 && f[l2 + 23] == 6 && f[l2 + 47] & 0x02 != 0
    })
    .expect("a SYN on the TAP");
    let sport = u16::from_be_bytes([syn[l2 + 34], syn[l2 + 35]]);
    let seq = u32::from_be_bytes(syn[l2 + 38..l2 + 42].try_into().unwrap());
    let synack = tcp_frame(sport, 7000, seq.wrapping_add(1), 0x12, &[2, 4, 0x05, 0x82]);
    tap.write(&synack).unwrap();

    // With TSO on, the kernel hands over the burst as one frame larger than the MTU.
    let big = read_until(&tap, Duration::from_secs(3), |f| {
        f.len() > l2 + 54
            && f[l2 + 23] == 6
            && VnetHdr::parse(f).unwrap().gso_type != VIRTIO_NET_HDR_GSO_NONE
    })
    .expect("a TSO super-frame");
    let _ = done.send(());
    let h = VnetHdr::parse(&big).unwrap();
    eprintln!("TSO frame: {} bytes, {h:?}", big.len());
    assert_eq!(
        h.gso_type & !VIRTIO_NET_HDR_GSO_ECN,
        VIRTIO_NET_HDR_GSO_TCPV4,
        "{h:?}"
    );
    assert_eq!(
        h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_F_NEEDS_CSUM
    );
    assert_eq!((h.csum_start, h.csum_offset), (34, 16));
    assert!(h.gso_size > 0 && h.gso_size <= 1410, "{h:?}");
    assert!(
        big.len() - l2 > 1450 + 14,
        "larger than one MTU: {}",
        big.len()
    );
    drop(tap);
    let _ = client.join();
}

/// virtio-net header (none) + Ethernet + IPv4 + TCP from 169.254.0.1:8080 to the container.
fn tcp_frame(dport: u16, seq: u32, ack: u32, flags: u8, options: &[u8]) -> Vec<u8> {
    let mut f = VnetHdr::default().to_bytes().to_vec();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let tcp_len = 20 + options.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 9, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&GW.octets());
    ip.extend_from_slice(&IP.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&8080u16.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.push(((tcp_len / 4) as u8) << 4);
    tcp.push(flags);
    tcp.extend_from_slice(&65535u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    tcp.extend_from_slice(options);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&GW.octets());
    pseudo.extend_from_slice(&IP.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let c = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&tcp);
    f
}

/// Writes an echo request to the container on each queue (ids `first`, `first + 1`, ...) and
/// returns the ids of the answers read back on any queue within 3 s, sorted. The queues must be
/// non-blocking.
fn echo_on_every_queue(queues: &[&Tap], first: u16) -> Vec<u16> {
    for (i, q) in queues.iter().enumerate() {
        let mut w = VnetHdr::default().to_bytes().to_vec();
        w.extend(echo_request(
            GW_MAC,
            MAC,
            GW.octets(),
            IP.octets(),
            first + i as u16,
        ));
        q.write(&w).unwrap();
    }
    let mut ids = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; 65536];
    while ids.len() < queues.len() && std::time::Instant::now() < deadline {
        for q in queues {
            if let Ok(n) = q.read(&mut buf) {
                let f = &buf[VNET_HDR_LEN..n];
                if is_icmp(f, 0, GW.octets(), Some(GW_MAC)) {
                    ids.push(u16::from_be_bytes([f[38], f[39]]));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    ids.sort();
    ids
}

/// `tc qdisc show dev DEV` inside the namespace.
fn qdiscs(ns: &Netns, dev: &str) -> String {
    let out = std::process::Command::new("tc")
        .args(["-n", &ns.name, "qdisc", "show", "dev", dev])
        .output()
        .expect("running tc");
    assert!(out.status.success(), "tc qdisc show dev {dev}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root and /dev/net/tun (scripts/test.sh runs it as root)"]
fn multiqueue_tap_from_an_older_version_loses_its_queue_rings() {
    require_root();
    let ns = Netns::new("oldmq");
    let mq = TapOptions {
        vnet_hdr: true,
        multi_queue: true,
    };
    // As older versions left it: a persistent multiqueue TAP brought up with the kernel's
    // default root (mq, one pfifo_fast per transmit queue) and txqueuelen 10000.
    let q0 = Tap::open_in_netns(&ns.path(), "eth0", mq).unwrap();
    q0.set_txqueuelen(10_000).unwrap();
    let st = std::process::Command::new("ip")
        .args(["-n", &ns.name, "link", "set", "eth0", "up"])
        .status()
        .unwrap();
    assert!(st.success());
    let before = qdiscs(&ns, "eth0");
    assert!(
        before.contains("qdisc mq") && before.contains("pfifo_fast"),
        "{before}"
    );
    assert_eq!(
        netlink::root_qdisc(&ns.path(), "eth0").unwrap().as_deref(),
        Some("mq")
    );
    drop(q0);

    // Re-opened and configured by this version: the root is replaced while the device is up.
    let q0 = Tap::open_in_netns(&ns.path(), "eth0", mq).unwrap();
    let q1 = q0.open_queue().unwrap();
    configure(&ns);
    let after = qdiscs(&ns, "eth0");
    assert!(
        after.contains("qdisc noqueue") && !after.contains("pfifo_fast"),
        "{after}"
    );
    assert_eq!(
        netlink::root_qdisc(&ns.path(), "eth0").unwrap().as_deref(),
        Some("noqueue")
    );
    // Configuring again (every cell restart does) keeps it so.
    configure(&ns);
    assert!(qdiscs(&ns, "eth0").contains("qdisc noqueue"));

    // And the device still carries frames: an echo request written on either queue is answered.
    for q in [&q0, &q1] {
        q.set_nonblocking(true).unwrap();
    }
    assert_eq!(
        echo_on_every_queue(&[&q0, &q1], 0x6000),
        vec![0x6000, 0x6001]
    );
}
