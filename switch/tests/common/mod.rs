//! An in-memory overlay: several cells (each a `Switch` with its own tables) wired by a loop
//! that carries `ToUnderlay` verdicts to the cell at that address. Plus frame builders.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapestry_switch::tables::{container_mac, gateway_mac};
use tapestry_switch::wire::{ethernet, icmp, ipv4, tcp, udp};
use tapestry_switch::{
    CellConfig, Conntrack, Counters, DropReason, PacketBuf, PolicyRule, PortConfig, PortId, Proto,
    RemoteCell, Snapshot, Switch, Tables, Verdict,
};

pub const OVERLAY: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 255, 0, 0), 16);

pub fn underlay(cell: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, cell as u8 + 1)
}

pub fn subnet(cell: usize) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 255, cell as u8 + 1, 0), 24)
}

pub fn ip(cell: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, cell as u8 + 1, host)
}

/// A container: cell index, port and config.
#[derive(Debug, Clone, Copy)]
pub struct Ctr {
    pub cell: usize,
    pub cfg: PortConfig,
}

impl Ctr {
    pub fn ip(&self) -> Ipv4Addr {
        self.cfg.ip
    }
    pub fn port(&self) -> PortId {
        self.cfg.id
    }
}

pub struct Cell {
    pub config: CellConfig,
    pub switch: Switch,
    pub tables: Arc<Tables>,
    pub conntrack: Arc<Conntrack>,
    pub counters: Arc<Counters>,
    pub ports: Vec<PortConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered to a port: (cell, port, frame).
    Delivered(usize, PortId, Vec<u8>),
    /// Dropped at a cell.
    Dropped(usize, DropReason),
    /// Admitted to a port's TLS terminator (61443): (cell, port).
    Serviced(usize, PortId),
}

impl Outcome {
    pub fn delivered(&self) -> bool {
        matches!(self, Outcome::Delivered(..))
    }
    pub fn frame(&self) -> &[u8] {
        match self {
            Outcome::Delivered(_, _, f) => f,
            Outcome::Dropped(..) | Outcome::Serviced(..) => &[],
        }
    }
    pub fn reason(&self) -> Option<DropReason> {
        match self {
            Outcome::Dropped(_, r) => Some(*r),
            _ => None,
        }
    }
}

pub struct Net {
    pub cells: Vec<Cell>,
    pub policies: Vec<PolicyRule>,
    pub now: Instant,
    /// The last VXLAN payload sent on the underlay: (from cell, to, bytes).
    pub last_underlay: Option<(usize, SocketAddrV4, Vec<u8>)>,
}

impl Net {
    /// `n` cells; each cell's conntrack holds `ct_capacity` entries.
    pub fn new(n: usize, ct_capacity: usize) -> Net {
        let cells = (0..n)
            .map(|i| {
                let config = CellConfig {
                    underlay_ip: underlay(i),
                    vtep_port: 4789,
                    vni: 1,
                    overlay_network: OVERLAY,
                    subnet: subnet(i),
                };
                let tables = Arc::new(Tables::new(
                    Snapshot::new(config, vec![], vec![], vec![]).unwrap(),
                ));
                let conntrack = Arc::new(Conntrack::new(ct_capacity));
                let counters = Arc::new(Counters::new());
                Cell {
                    config,
                    switch: Switch::new(tables.clone(), conntrack.clone(), counters.clone()),
                    tables,
                    conntrack,
                    counters,
                    ports: vec![],
                }
            })
            .collect();
        let mut net = Net {
            cells,
            policies: vec![],
            now: Instant::now(),
            last_underlay: None,
        };
        net.publish();
        net
    }

    pub fn remotes_for(&self, i: usize) -> Vec<RemoteCell> {
        (0..self.cells.len())
            .filter(|&j| j != i)
            .map(|j| RemoteCell {
                subnet: subnet(j),
                underlay: SocketAddrV4::new(underlay(j), 4789),
            })
            .collect()
    }

    /// Rebuilds and stores every cell's snapshot.
    pub fn publish(&mut self) {
        for i in 0..self.cells.len() {
            let remotes = self.remotes_for(i);
            let c = &self.cells[i];
            let snap =
                Snapshot::new(c.config, c.ports.clone(), remotes, self.policies.clone()).unwrap();
            c.tables.store(snap);
        }
    }

    pub fn add(&mut self, cell: usize, host: u8, tag: u16) -> Ctr {
        let ip = ip(cell, host);
        let cfg = PortConfig {
            id: PortId(host as u32),
            mac: container_mac(ip),
            ip,
            tag,
        };
        self.cells[cell].ports.push(cfg);
        self.publish();
        Ctr { cell, cfg }
    }

    pub fn allow(&mut self, src_tag: u16, dst_tag: u16, proto: Proto, start: u16, end: u16) {
        self.policies.push(PolicyRule {
            src_tag,
            dst_tag,
            proto,
            start,
            end,
        });
        self.publish();
    }

    pub fn revoke_all(&mut self) {
        self.policies.clear();
        self.publish();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// A frame from a container's port, followed through the overlay.
    pub fn send(&mut self, from: &Ctr, frame: &[u8]) -> Outcome {
        let mut buf = PacketBuf::from_slice(frame);
        let now = self.now;
        let v = self.cells[from.cell]
            .switch
            .from_port(from.port(), &mut buf, now);
        if v == Verdict::ToStack {
            // This world has no local stack: it counts what it cannot carry, as a driver
            // without one would (see switch/src/stack/tests.rs for the stack).
            let r = DropReason::OutsideOverlay;
            self.cells[from.cell]
                .counters
                .dropped(r, Some(from.port()), frame.len());
            return Outcome::Dropped(from.cell, r);
        }
        self.follow(from.cell, v, &mut buf)
    }

    /// A VXLAN payload arriving at `cell` from `src`.
    pub fn inject_underlay(&mut self, cell: usize, src: SocketAddrV4, payload: &[u8]) -> Outcome {
        let mut buf = PacketBuf::from_slice(payload);
        let now = self.now;
        let v = self.cells[cell].switch.from_underlay(src, &mut buf, now);
        self.follow(cell, v, &mut buf)
    }

    fn follow(&mut self, cell: usize, v: Verdict, buf: &mut PacketBuf) -> Outcome {
        match v {
            Verdict::ToPort(p) => Outcome::Delivered(cell, p, buf.data().to_vec()),
            Verdict::Drop(r) => Outcome::Dropped(cell, r),
            Verdict::ToStack => unreachable!("only a frame from a port goes to the local stack"),
            // This world has no TLS terminator: a 61443 segment admitted by policy ends here.
            Verdict::ToService(p) => Outcome::Serviced(cell, p),
            Verdict::ToUnderlay(to) => {
                self.last_underlay = Some((cell, to, buf.data().to_vec()));
                let dst = self
                    .cells
                    .iter()
                    .position(|c| c.config.underlay_ip == *to.ip())
                    .expect("no cell at that underlay address");
                let src = SocketAddrV4::new(self.cells[cell].config.underlay_ip, 4789);
                let now = self.now;
                let v = self.cells[dst].switch.from_underlay(src, buf, now);
                self.follow(dst, v, buf)
            }
        }
    }

    /// A cell process restart: the connection table is lost, ports and tables are rebuilt.
    pub fn restart(&mut self, cell: usize, ct_capacity: usize) {
        let c = &mut self.cells[cell];
        c.conntrack = Arc::new(Conntrack::new(ct_capacity));
        c.switch = Switch::new(c.tables.clone(), c.conntrack.clone(), c.counters.clone());
    }

    pub fn drops(&self, cell: usize, r: DropReason) -> u64 {
        self.cells[cell].counters.snapshot().drop_count(r)
    }
}

// ---- frame builders ----

pub struct Ip {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub ident: u16,
    pub mf: bool,
    pub offset: u16,
}

impl Ip {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ip {
        Ip {
            src,
            dst,
            proto,
            ttl: 64,
            ident: 0x1234,
            mf: false,
            offset: 0,
        }
    }
}

/// Ethernet from `from` (its MAC) to its gateway MAC, with the IP header and `l4` bytes.
pub fn frame_with(src_mac: [u8; 6], dst_mac: [u8; 6], ip: &Ip, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + l4.len()];
    let e = ethernet::Repr {
        dst: dst_mac,
        src: src_mac,
        ethertype: ethernet::ETHERTYPE_IPV4,
    };
    e.emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
    {
        let mut p = ipv4::Packet::new_unchecked(&mut f[14..]);
        p.set_ver_ihl(20);
        p.set_tos(0);
        p.set_total_len((20 + l4.len()) as u16);
        p.set_ident(ip.ident);
        p.set_flags_offset(false, ip.mf, ip.offset);
        p.set_ttl(ip.ttl);
        p.set_protocol(ip.proto);
        p.set_src(ip.src);
        p.set_dst(ip.dst);
        p.fill_checksum();
    }
    f[34..].copy_from_slice(l4);
    f
}

pub fn tcp_bytes(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = vec![0u8; 20 + payload.len()];
    tcp::Repr {
        src_port: sport,
        dst_port: dport,
        seq: 1000,
        ack: 0,
        flags,
        window: 65535,
    }
    .emit(&mut tcp::Packet::new_unchecked(&mut b[..]));
    b[20..].copy_from_slice(payload);
    tcp::Packet::new_unchecked(&mut b[..]).fill_checksum(src, dst);
    b
}

pub fn udp_bytes(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 8 + payload.len()];
    udp::Repr {
        src_port: sport,
        dst_port: dport,
        payload_len: payload.len() as u16,
    }
    .emit(&mut udp::Packet::new_unchecked(&mut b[..]));
    b[8..].copy_from_slice(payload);
    udp::Packet::new_unchecked(&mut b[..]).fill_checksum(src, dst);
    b
}

pub fn icmp_bytes(msg_type: u8, code: u8, data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 8 + data.len()];
    b[8..].copy_from_slice(data);
    icmp::Repr {
        msg_type,
        code,
        rest: 0,
    }
    .emit(&mut icmp::Packet::new_unchecked(&mut b[..]));
    b
}

pub fn tcp_frame(from: &Ctr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let l4 = tcp_bytes(from.ip(), dst, sport, dport, flags, b"hello");
    frame_with(
        from.cfg.mac,
        gateway_mac(from.ip()),
        &Ip::new(from.ip(), dst, ipv4::PROTO_TCP),
        &l4,
    )
}

pub fn udp_frame(from: &Ctr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let l4 = udp_bytes(from.ip(), dst, sport, dport, b"query");
    frame_with(
        from.cfg.mac,
        gateway_mac(from.ip()),
        &Ip::new(from.ip(), dst, ipv4::PROTO_UDP),
        &l4,
    )
}

/// Checks a delivered frame is well-formed IPv4 with valid checksums; returns the IP TTL.
pub fn check_delivered(frame: &[u8], to: &Ctr) -> u8 {
    let e = ethernet::Frame::new_checked(frame).unwrap();
    assert_eq!(e.dst(), to.cfg.mac, "dst MAC is the container's");
    assert_eq!(
        e.src(),
        gateway_mac(to.ip()),
        "src MAC is the container's gateway MAC"
    );
    let ip = ipv4::Packet::new_checked(e.payload()).unwrap();
    assert!(
        ip.verify_checksum(),
        "IP checksum valid after TTL decrement"
    );
    assert_eq!(ip.dst(), to.ip());
    ip.ttl()
}

// ---- the standard two-cell world used by the simulation tests ----

pub const SYN: u8 = tcp::SYN;
pub const SYNACK: u8 = tcp::SYN | tcp::ACK;
pub const ACK: u8 = tcp::ACK;
/// Cells 0 and 1; app A (tag 1), B (tag 2), C (tag 3), D (no tag).
/// a0, b0, d0 on cell 0; b1, c1 on cell 1. Policies: A->B tcp 8080 and 7000-7010, A->C udp 53.
pub struct World {
    pub net: Net,
    pub a0: Ctr,
    pub b0: Ctr,
    pub d0: Ctr,
    pub b1: Ctr,
    pub c1: Ctr,
}

pub fn world() -> World {
    world_with(1 << 16)
}

pub fn world_with(ct: usize) -> World {
    let mut net = Net::new(2, ct);
    let a0 = net.add(0, 1, 1);
    let b0 = net.add(0, 2, 2);
    let d0 = net.add(0, 3, 0);
    let b1 = net.add(1, 1, 2);
    let c1 = net.add(1, 2, 3);
    net.allow(1, 2, Proto::Tcp, 8080, 8080);
    net.allow(1, 2, Proto::Tcp, 7000, 7010);
    net.allow(1, 3, Proto::Udp, 53, 53);
    World {
        net,
        a0,
        b0,
        d0,
        b1,
        c1,
    }
}
