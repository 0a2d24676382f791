//! The local stack without devices: a container played by a second smoltcp interface, a host
//! side simulated in memory ([`SimHost`]), and the ASG tables of a real snapshot.

use std::collections::{HashMap, VecDeque};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp::{Socket as TcpSocket, SocketBuffer, State};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use super::*;
use crate::offload;
use crate::tables::asg::{DenyNetworks, Egress, GroupText, Lifecycle, RuleText};
use crate::tables::{container_mac, CellConfig, PortConfig};

const C_IP: Ipv4Addr = Ipv4Addr::new(10, 255, 1, 2);
const WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const PORT: PortId = PortId(2);

/// The host side: per flow, what the stack wrote, what the "world" will send back, and how the
/// connection ends.
#[derive(Default)]
struct SimHost {
    connects: Vec<(FlowId, SocketAddrV4)>,
    written: HashMap<FlowId, Vec<u8>>,
    to_read: HashMap<FlowId, VecDeque<u8>>,
    eof: HashMap<FlowId, bool>,
    shut: Vec<FlowId>,
    closed: Vec<(FlowId, bool)>,
    /// Accept at most this many bytes per write (back-pressure).
    write_limit: usize,
}

impl HostIo for SimHost {
    fn connect_tcp(&mut self, flow: FlowId, dst: SocketAddrV4) -> io::Result<()> {
        self.connects.push((flow, dst));
        Ok(())
    }
    fn open_udp(&mut self, flow: FlowId, dst: SocketAddrV4) -> io::Result<()> {
        self.connects.push((flow, dst));
        Ok(())
    }
    fn open_icmp(&mut self, flow: FlowId, dst: Ipv4Addr) -> io::Result<IcmpSocket> {
        self.connects.push((flow, SocketAddrV4::new(dst, 0)));
        Ok(IcmpSocket::Ping)
    }
    fn read(&mut self, flow: FlowId, buf: &mut [u8]) -> io::Result<usize> {
        let q = self.to_read.entry(flow).or_default();
        if q.is_empty() {
            return if self.eof.get(&flow).copied().unwrap_or(false) {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(q.len());
        for (i, b) in q.drain(..n).enumerate() {
            buf[i] = b;
        }
        Ok(n)
    }
    fn write(&mut self, flow: FlowId, buf: &[u8]) -> io::Result<usize> {
        let n = if self.write_limit == 0 {
            buf.len()
        } else {
            buf.len().min(self.write_limit)
        };
        self.written
            .entry(flow)
            .or_default()
            .extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn shutdown_write(&mut self, flow: FlowId) {
        self.shut.push(flow);
    }
    fn close(&mut self, flow: FlowId, abort: bool) {
        self.closed.push((flow, abort));
    }
}

/// The container's device: packets in both directions as plain IPv4.
#[derive(Default)]
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct RxT(Vec<u8>);
struct TxT<'a>(&'a mut VecDeque<Vec<u8>>);
impl phy::RxToken for RxT {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for TxT<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}
impl phy::Device for Wire {
    type RxToken<'a> = RxT;
    type TxToken<'a> = TxT<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxT, TxT<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxT(p), TxT(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxT<'_>> {
        Some(TxT(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1450;
        c
    }
}

struct World {
    snap: Snapshot,
    stack: Stack,
    host: SimHost,
    now: Instant,
    c_iface: Interface,
    c_dev: Wire,
    c_sockets: SocketSet<'static>,
    /// Every frame the stack sent the container, as IPv4.
    seen: Vec<Vec<u8>>,
}

fn rule(protocol: &str, destination: &str, ports: Option<&str>, log: bool) -> RuleText {
    RuleText {
        protocol: protocol.into(),
        destination: destination.into(),
        ports: ports.map(String::from),
        log,
        ..RuleText::default()
    }
}

fn snapshot(rules: Vec<RuleText>) -> Snapshot {
    let cfg = CellConfig {
        underlay_ip: Ipv4Addr::new(198, 18, 0, 1),
        vtep_port: 4789,
        vni: 1,
        overlay_network: (Ipv4Addr::new(10, 255, 0, 0), 16),
        subnet: (Ipv4Addr::new(10, 255, 1, 0), 24),
    };
    let group = GroupText {
        name: "web".into(),
        rules,
        running_spaces: vec!["space".into()],
        ..GroupText::default()
    };
    let egress = Egress::build(
        DenyNetworks::default(),
        &[group],
        &[(PORT, "space", Lifecycle::Running)],
    );
    let port = PortConfig {
        id: PORT,
        mac: container_mac(C_IP),
        ip: C_IP,
        tag: 1,
    };
    Snapshot::new(cfg, vec![port], vec![], vec![])
        .unwrap()
        .with_egress(egress)
}

impl World {
    fn new(rules: Vec<RuleText>) -> World {
        let now = Instant::now();
        let mut c_dev = Wire::default();
        let mut c_iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut c_dev,
            smoltcp::time::Instant::ZERO,
        );
        c_iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(C_IP.into(), 24));
        });
        let _ = c_iface.routes_mut().add_default_ipv4_route(GATEWAY);
        World {
            snap: snapshot(rules),
            stack: Stack::new(StackConfig::default(), Arc::new(Counters::new()), now),
            host: SimHost::default(),
            now,
            c_iface,
            c_dev,
            c_sockets: SocketSet::new(Vec::new()),
            seen: Vec::new(),
        }
    }

    /// Moves packets both ways until nothing moves.
    fn run(&mut self) {
        for _ in 0..200 {
            self.now += Duration::from_millis(1);
            let t = smoltcp::time::Instant::from_micros(
                self.now.duration_since(self.stack.epoch).as_micros() as i64,
            );
            self.c_iface.poll(t, &mut self.c_dev, &mut self.c_sockets);
            let mut moved = false;
            while let Some(p) = self.c_dev.tx.pop_front() {
                moved = true;
                let _ = self
                    .stack
                    .from_port(&self.snap, PORT, &p, 0, self.now, &mut self.host);
            }
            self.stack.poll(&self.snap, self.now, &mut self.host);
            while let Some(mut tx) = self.stack.poll_transmit() {
                moved = true;
                assert_eq!(tx.port, PORT);
                let hdr = tx.hdr;
                let mut scratch = vec![0u8; 70_000];
                let mut frames = Vec::new();
                offload::to_port(&mut tx.buf, &hdr, false, &mut scratch, |f| {
                    frames.push(f[ethernet_len()..].to_vec())
                })
                .unwrap();
                for ip in frames {
                    assert!(ip.len() <= 1450, "a segment over the container's MTU");
                    self.seen.push(ip.clone());
                    self.c_dev.rx.push_back(ip);
                }
                self.stack.recycle(tx.buf);
            }
            if !moved && self.c_dev.rx.is_empty() {
                break;
            }
        }
    }

    fn connect(&mut self, port: u16) -> smoltcp::iface::SocketHandle {
        self.connect_from(port, 40000)
    }

    fn connect_from(&mut self, port: u16, local: u16) -> smoltcp::iface::SocketHandle {
        let mut s = TcpSocket::new(
            SocketBuffer::new(vec![0u8; 256 << 10]),
            SocketBuffer::new(vec![0u8; 256 << 10]),
        );
        s.connect(
            self.c_iface.context(),
            IpEndpoint::new(WEB.into(), port),
            (IpAddress::from(C_IP), local),
        )
        .unwrap();
        self.c_sockets.add(s)
    }

    fn sock(&mut self, h: smoltcp::iface::SocketHandle) -> &mut TcpSocket<'static> {
        self.c_sockets.get_mut::<TcpSocket>(h)
    }
}

fn ethernet_len() -> usize {
    crate::wire::ethernet::HEADER_LEN
}

#[test]
fn a_denied_flow_gets_port_unreachable_and_opens_nothing() {
    let mut w = World::new(vec![rule("tcp", "203.0.113.5", Some("443"), false)]);
    let h = w.connect(80);
    w.run();
    assert!(
        w.host.connects.is_empty(),
        "denied flows open no host socket"
    );
    let icmp = w
        .seen
        .iter()
        .find(|p| p[9] == ipv4::PROTO_ICMP)
        .expect("an ICMP error");
    let ip = ipv4::Packet::new_checked(&icmp[..]).unwrap();
    assert_eq!((ip.payload()[0], ip.payload()[1]), (3, 3));
    // smoltcp ignores ICMP errors; the kernel turns this into ECONNREFUSED (tests/e2e_egress.rs).
    let _ = h;
    assert_eq!(w.stack.flow_count(), 0);
}

#[test]
fn the_syn_waits_for_the_host_then_bytes_flow_both_ways_and_close() {
    let mut w = World::new(vec![rule("tcp", "203.0.113.0/24", Some("443"), true)]);
    let h = w.connect(443);
    w.run();
    // Held at the SYN: nothing answered yet.
    assert_eq!(w.host.connects.len(), 1);
    let (flow, dst) = w.host.connects[0];
    assert_eq!(dst, SocketAddrV4::new(WEB, 443));
    assert_eq!(w.sock(h).state(), State::SynSent);
    let logged = w
        .stack
        .poll_admitted()
        .expect("a log: true rule logs the flow");
    assert_eq!(
        (logged.group.as_str(), logged.rule, logged.protocol),
        ("web", 0, "tcp")
    );
    // The host connection is up: the handshake completes.
    w.stack.host_connected(flow, Ok(()), &mut w.host);
    w.run();
    assert_eq!(w.sock(h).state(), State::Established);
    // Container -> host, 300 KB with a host that takes 1000 bytes a write.
    w.host.write_limit = 1000;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    for _ in 0..2000 {
        if sent < data.len() {
            sent += w.sock(h).send_slice(&data[sent..]).unwrap();
        }
        w.stack.host_ready(flow, false, true, &mut w.host);
        w.run();
        if w.host.written.get(&flow).map_or(0, Vec::len) == data.len() {
            break;
        }
    }
    assert_eq!(
        w.host.written[&flow], data,
        "the bytes reach the host in order"
    );
    // Host -> container: 200 KB arrive in segments no larger than the container's MSS.
    let back: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
    w.host.to_read.insert(flow, back.iter().copied().collect());
    let mut got = Vec::new();
    for _ in 0..2000 {
        w.stack.host_ready(flow, true, false, &mut w.host);
        w.run();
        let s = w.sock(h);
        while s.can_recv() {
            s.recv(|b| {
                got.extend_from_slice(b);
                (b.len(), ())
            })
            .unwrap();
        }
        if got.len() == back.len() {
            break;
        }
    }
    assert_eq!(got, back);
    // The container closes: the host side is half-closed; the host closes: all gone.
    w.sock(h).close();
    w.run();
    assert_eq!(w.host.shut, vec![flow]);
    w.host.eof.insert(flow, true);
    w.stack.host_ready(flow, true, false, &mut w.host);
    w.run();
    w.run();
    assert!(
        matches!(w.sock(h).state(), State::TimeWait | State::Closed),
        "{}",
        w.sock(h).state()
    );
    assert_eq!(w.host.closed, vec![(flow, false)], "closed gracefully");
    assert_eq!(w.stack.flow_count(), 0);
}

#[test]
fn syns_waiting_together_each_get_their_own_socket() {
    // Two connections to the same destination whose host sides come up together: each SYN must
    // land in its own flow's listening socket, or the bytes of one go to the other's host.
    let mut w = World::new(vec![rule("tcp", "203.0.113.5", Some("443"), false)]);
    // Two earlier connections leave two sockets in the pool, handed out last-in first-out:
    // the new flows' sockets are then in the reverse of the set's order.
    let (e1, e2) = (w.connect_from(443, 39001), w.connect_from(443, 39002));
    w.run();
    let early: Vec<FlowId> = w.host.connects.iter().map(|c| c.0).collect();
    for f in &early {
        w.stack.host_connected(*f, Ok(()), &mut w.host);
    }
    w.run();
    w.sock(e1).abort();
    w.sock(e2).abort();
    w.run();
    assert_eq!(w.stack.flow_count(), 0);
    w.host.connects.clear();
    let h1 = w.connect_from(443, 40001);
    let h2 = w.connect_from(443, 40002);
    w.run();
    assert_eq!(w.host.connects.len(), 2);
    let flows: Vec<FlowId> = w.host.connects.iter().map(|c| c.0).collect();
    for f in &flows {
        w.stack.host_connected(*f, Ok(()), &mut w.host);
    }
    w.run();
    assert_eq!(w.sock(h1).state(), State::Established);
    assert_eq!(w.sock(h2).state(), State::Established);
    w.sock(h1).send_slice(b"one").unwrap();
    w.sock(h2).send_slice(b"two").unwrap();
    for f in &flows {
        w.stack.host_ready(*f, false, true, &mut w.host);
    }
    w.run();
    let got: Vec<&[u8]> = flows.iter().map(|f| w.host.written[f].as_slice()).collect();
    assert_eq!(
        got,
        vec![&b"one"[..], &b"two"[..]],
        "each flow's bytes reach its own host socket"
    );
}

#[test]
fn a_refused_host_connection_resets_the_container() {
    let mut w = World::new(vec![rule("tcp", "203.0.113.5", Some("443"), false)]);
    let h = w.connect(443);
    w.run();
    let (flow, _) = w.host.connects[0];
    w.stack.host_connected(
        flow,
        Err(io::ErrorKind::ConnectionRefused.into()),
        &mut w.host,
    );
    w.run();
    assert_eq!(
        w.sock(h).state(),
        State::Closed,
        "the RST closed the container's socket"
    );
    assert_eq!(w.stack.flow_count(), 0);
    assert_eq!(w.host.closed, vec![(flow, true)]);
}

#[test]
fn an_unreachable_host_gives_icmp_host_unreachable() {
    let mut w = World::new(vec![rule("tcp", "203.0.113.5", Some("443"), false)]);
    let _h = w.connect(443);
    w.run();
    let (flow, _) = w.host.connects[0];
    w.stack.host_connected(
        flow,
        Err(io::ErrorKind::HostUnreachable.into()),
        &mut w.host,
    );
    w.run();
    let icmp = w
        .seen
        .iter()
        .find(|p| p[9] == ipv4::PROTO_ICMP)
        .expect("an ICMP error");
    let ip = ipv4::Packet::new_checked(&icmp[..]).unwrap();
    assert_eq!((ip.payload()[0], ip.payload()[1]), (3, 1));
}

#[test]
fn net_in_connects_from_the_clients_address() {
    let mut w = World::new(vec![]);
    let mut l = TcpSocket::new(
        SocketBuffer::new(vec![0u8; 65536]),
        SocketBuffer::new(vec![0u8; 65536]),
    );
    l.listen(8080).unwrap();
    let lh = w.c_sockets.add(l);
    let client = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 51000);
    let flow = w
        .stack
        .net_in_tcp(&w.snap, client, SocketAddrV4::new(C_IP, 8080), w.now)
        .unwrap();
    w.run();
    let s = w.sock(lh);
    assert_eq!(s.state(), State::Established);
    assert_eq!(
        s.remote_endpoint(),
        Some(IpEndpoint::new(Ipv4Addr::new(192, 0, 2, 7).into(), 51000)),
        "the app sees the client's address"
    );
    w.host
        .to_read
        .insert(flow, b"GET /".iter().copied().collect());
    w.stack.host_ready(flow, true, true, &mut w.host);
    w.run();
    let mut got = Vec::new();
    w.sock(lh)
        .recv(|b| {
            got.extend_from_slice(b);
            (b.len(), ())
        })
        .unwrap();
    assert_eq!(got, b"GET /");
    // A port nobody attached: refused.
    assert!(w
        .stack
        .net_in_tcp(
            &w.snap,
            client,
            SocketAddrV4::new(Ipv4Addr::new(10, 255, 1, 9), 80),
            w.now
        )
        .is_none());
}

#[test]
fn udp_is_relayed_and_replies_come_back_with_the_original_addresses() {
    let mut w = World::new(vec![rule("udp", "203.0.113.5", Some("53"), false)]);
    let mut q = Vec::new();
    frame::udp_datagram(&mut q, (C_IP, 5353), (WEB, 53), b"query");
    w.stack
        .from_port(&w.snap, PORT, &q[frame::IP_AT..], 0, w.now, &mut w.host)
        .unwrap();
    let (flow, dst) = w.host.connects[0];
    assert_eq!(dst, SocketAddrV4::new(WEB, 53));
    assert_eq!(w.host.written[&flow], b"query");
    // The reply.
    w.host
        .to_read
        .insert(flow, b"answer".iter().copied().collect());
    w.stack.host_ready(flow, true, false, &mut w.host);
    let t = w.stack.poll_transmit().unwrap();
    let ip = ipv4::Packet::new_checked(&t.buf[frame::IP_AT..]).unwrap();
    assert_eq!((ip.src(), ip.dst()), (WEB, C_IP));
    let u = udp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((u.src_port(), u.dst_port()), (53, 5353));
    assert_eq!(u.payload(), b"answer");
    // Another port: denied, counted by the caller.
    let mut q2 = Vec::new();
    frame::udp_datagram(&mut q2, (C_IP, 5353), (WEB, 54), b"x");
    assert_eq!(
        w.stack
            .from_port(&w.snap, PORT, &q2[frame::IP_AT..], 0, w.now, &mut w.host),
        Err(DropReason::AsgNoRule)
    );
    // Idle mappings expire.
    w.stack.poll(
        &w.snap,
        w.now + UDP_TIMEOUT + Duration::from_secs(2),
        &mut w.host,
    );
    assert_eq!(w.stack.flow_count(), 0);
}

#[test]
fn deny_networks_beat_a_wide_open_group_and_the_gateway_answers_ping() {
    let mut w = World::new(vec![rule("all", "0.0.0.0-255.255.255.255", None, false)]);
    let mut q = Vec::new();
    frame::udp_datagram(
        &mut q,
        (C_IP, 5353),
        (Ipv4Addr::new(169, 254, 169, 254), 80),
        b"x",
    );
    assert_eq!(
        w.stack
            .from_port(&w.snap, PORT, &q[frame::IP_AT..], 0, w.now, &mut w.host),
        Err(DropReason::AsgDenyNetworks)
    );
    let mut echo = Vec::new();
    frame::icmp_message(
        &mut echo,
        C_IP,
        GATEWAY,
        &[8, 0, 0, 0, 0, 7, 0, 1, b'h', b'i'],
        7,
    );
    w.stack
        .from_port(&w.snap, PORT, &echo[frame::IP_AT..], 0, w.now, &mut w.host)
        .unwrap();
    let _unreachable = w.stack.poll_transmit().unwrap();
    let reply = w.stack.poll_transmit().unwrap();
    let ip = ipv4::Packet::new_checked(&reply.buf[frame::IP_AT..]).unwrap();
    assert_eq!((ip.src(), ip.dst()), (GATEWAY, C_IP));
    let m = icmp::Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(m.msg_type(), icmp::ECHO_REPLY);
    assert!(m.verify_checksum());
    assert_eq!(m.data(), b"hi");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

    /// Whatever a container sends (here: arbitrary bytes after a valid IPv4 header start, under a
    /// wide-open group), the stack neither panics nor sends anything but well-formed frames to
    /// the container's port.
    #[test]
    fn arbitrary_packets_never_panic(
        proto in proptest::sample::select(vec![1u8, 6, 17, 47]),
        dst in proptest::sample::select(vec![WEB, GATEWAY, DNS, Ipv4Addr::new(169, 254, 169, 254)]),
        l4 in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        gso in proptest::prelude::any::<u16>(),
        connected in proptest::prelude::any::<bool>(),
    ) {
        let mut w = World::new(vec![rule("all", "0.0.0.0-255.255.255.255", None, false)]);
        let mut p = vec![0u8; 20 + l4.len()];
        ipv4::Repr { src: C_IP, dst, protocol: proto, payload_len: l4.len() as u16, ttl: 64, tos: 0, ident: 0, dont_frag: true }
            .emit(&mut ipv4::Packet::new_unchecked(&mut p[..]));
        p[20..].copy_from_slice(&l4);
        for _ in 0..2 {
            let _ = w.stack.from_port(&w.snap, PORT, &p, gso, w.now, &mut w.host);
            if connected {
                let flows: Vec<FlowId> = w.host.connects.iter().map(|c| c.0).collect();
                for f in flows {
                    w.stack.host_connected(f, Ok(()), &mut w.host);
                    w.stack.host_ready(f, true, true, &mut w.host);
                }
            }
            w.stack.poll(&w.snap, w.now, &mut w.host);
            while let Some(t) = w.stack.poll_transmit() {
                proptest::prop_assert_eq!(t.port, PORT);
                let ip = ipv4::Packet::new_checked(&t.buf[frame::IP_AT..]).unwrap();
                proptest::prop_assert_eq!(ip.dst(), C_IP);
                proptest::prop_assert!(ip.verify_checksum());
            }
        }
    }
}
