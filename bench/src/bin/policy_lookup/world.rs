//! The benchmark's cell: tables with N policies and the packets of the three cases.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use tapestry_switch::pipeline::flow::{Flow, Frag};
use tapestry_switch::tables::{container_mac, Port};
use tapestry_switch::wire::{ethernet, ipv4, tcp, udp, vxlan_gbp};
use tapestry_switch::{
    CellConfig, Conntrack, Counters, PacketBuf, PolicyRule, PortConfig, PortId, Proto, RemoteCell,
    Snapshot, Switch, Tables, Verdict,
};

use super::{for_packets, ingress_decision, pipeline_packet};

/// The cell's default `--conntrack-max`.
pub(crate) const CT_CAPACITY: usize = 262_144;
const LOCAL_PORTS: usize = 250;
const REMOTE_CELLS: usize = 64;
/// Flow templates per case: one per remote container address (64 cells x 250 hosts).
pub(crate) const TEMPLATES: usize = REMOTE_CELLS * LOCAL_PORTS;
/// Source ports of admitted flows start here; denied flows use another range, so that they can
/// never match an established flow.
pub(crate) const SPORT_ALLOWED: u16 = 1024;
pub(crate) const SPORT_DENIED: u16 = 40_000;
/// Offsets in a VXLAN payload: VXLAN-GBP (8) + Ethernet (14) + IPv4 (20), then TCP/UDP.
pub(crate) const L4_OFF: usize = vxlan_gbp::HEADER_LEN + ethernet::HEADER_LEN + ipv4::HEADER_LEN;
const FRAME_MAX: usize = L4_OFF + tcp::HEADER_LEN + 16;
const WELL_KNOWN: [u16; 12] = [
    80, 443, 8080, 8443, 5432, 3306, 6379, 9090, 5672, 27017, 53, 8125,
];

/// SplitMix64: deterministic, so every run and every K builds the same tables.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % (hi - lo + 1) as u64) as u32
    }
    fn chance(&mut self, percent: u32) -> bool {
        self.range(0, 99) < percent
    }
}

/// One packet shape: the VXLAN payload for the pipeline path, and the same packet as the
/// decision sees it (destination port, source tag, flow) for the decide path. The source port
/// is filled in per lookup.
#[derive(Clone)]
pub(crate) struct Template {
    pub(crate) frame: [u8; FRAME_MAX],
    pub(crate) len: usize,
    pub(crate) underlay: SocketAddrV4,
    pub(crate) src_tag: u16,
    pub(crate) dst: Port,
    pub(crate) flow: Flow,
}

/// One cell's tables and the packets of the three cases.
pub(crate) struct World {
    pub(crate) n: usize,
    pub(crate) keys: usize,
    pub(crate) tables: Arc<Tables>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) allowed: Vec<Template>,
    pub(crate) established: Vec<Template>,
    pub(crate) denied: Vec<Template>,
    /// Holds the established flows (and is the table the denied flows miss in).
    pub(crate) est_ct: Arc<Conntrack>,
    /// Established flows: every template with this many source ports.
    pub(crate) est_sports: u16,
    /// The `now` of every packet: fixed, so no flow expires between repetitions.
    pub(crate) now: Instant,
}

fn local_ip(host: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, 1, host as u8)
}

fn remote_underlay(cell: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 1, 2 + cell as u8)
}

fn random_port_range(rng: &mut Rng) -> (u16, u16) {
    match rng.range(0, 99) {
        0..=59 => {
            let p = WELL_KNOWN[rng.range(0, WELL_KNOWN.len() as u32 - 1) as usize];
            (p, p)
        }
        60..=84 => {
            let p = rng.range(1024, 65535) as u16;
            (p, p)
        }
        _ => {
            let s = rng.range(1024, 60_000);
            (s as u16, (s + rng.range(1, 2000)) as u16)
        }
    }
}

fn random_proto(rng: &mut Rng) -> Proto {
    if rng.chance(85) {
        Proto::Tcp
    } else {
        Proto::Udp
    }
}

/// N rules in groups of 1-8 rules per (source tag, destination tag, protocol).
fn policies(n: usize, local_tags: &[u16], rng: &mut Rng) -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    let mut rules = Vec::with_capacity(n);
    let mut local = Vec::new();
    while rules.len() < n {
        let src_tag = rng.range(1, 65535) as u16;
        let is_local = rng.chance(50);
        let dst_tag = if is_local {
            local_tags[rng.range(0, local_tags.len() as u32 - 1) as usize]
        } else {
            rng.range(1, 65535) as u16
        };
        let proto = random_proto(rng);
        for _ in 0..rng.range(1, 8).min((n - rules.len()) as u32) {
            let (start, end) = random_port_range(rng);
            let r = PolicyRule {
                src_tag,
                dst_tag,
                proto,
                start,
                end,
            };
            rules.push(r);
            if is_local {
                local.push(r);
            }
        }
    }
    (rules, local)
}

fn template(i: usize, src_tag: u16, dst: &Port, proto: Proto, dport: u16, flags: u8) -> Template {
    let (cell, host) = (i % REMOTE_CELLS, 1 + i / REMOTE_CELLS);
    let src = Ipv4Addr::new(10, 255, 2 + cell as u8, host as u8);
    let l4_len = match proto {
        Proto::Tcp => tcp::HEADER_LEN,
        Proto::Udp => udp::HEADER_LEN,
    } + 16;
    let mut frame = [0u8; FRAME_MAX];
    vxlan_gbp::Repr {
        vni: 1,
        group_policy_id: Some(src_tag),
        dont_learn: false,
        policy_applied: false,
    }
    .emit(&mut vxlan_gbp::Packet::new_unchecked(&mut frame[..]));
    ethernet::Repr {
        dst: container_mac(Ipv4Addr::new(10, 255, 1, 0)),
        src: container_mac(Ipv4Addr::new(10, 255, 2 + cell as u8, 0)),
        ethertype: ethernet::ETHERTYPE_IPV4,
    }
    .emit(&mut ethernet::Frame::new_unchecked(
        &mut frame[vxlan_gbp::HEADER_LEN..],
    ));
    ipv4::Repr {
        src,
        dst: dst.ip,
        protocol: proto.ip_proto(),
        payload_len: l4_len as u16,
        ttl: 64,
        tos: 0,
        ident: i as u16,
        dont_frag: true,
    }
    .emit(&mut ipv4::Packet::new_unchecked(
        &mut frame[vxlan_gbp::HEADER_LEN + ethernet::HEADER_LEN..],
    ));
    let l4 = &mut frame[L4_OFF..L4_OFF + l4_len];
    match proto {
        Proto::Tcp => tcp::Repr {
            src_port: SPORT_ALLOWED,
            dst_port: dport,
            seq: 1,
            ack: 0,
            flags,
            window: 65535,
        }
        .emit(&mut tcp::Packet::new_unchecked(l4)),
        Proto::Udp => udp::Repr {
            src_port: SPORT_ALLOWED,
            dst_port: dport,
            payload_len: 16,
        }
        .emit(&mut udp::Packet::new_unchecked(l4)),
    }
    Template {
        frame,
        len: L4_OFF + l4_len,
        underlay: SocketAddrV4::new(remote_underlay(cell), 4789),
        src_tag,
        dst: *dst,
        flow: Flow {
            proto: proto.ip_proto(),
            src,
            dst: dst.ip,
            sport: SPORT_ALLOWED,
            dport,
            tcp_flags: if proto == Proto::Tcp { flags } else { 0 },
            ident: i as u16,
            frag: Frag::None,
        },
    }
}

impl World {
    pub(crate) fn build(n: usize, seed: u64, est_sports: u16) -> Result<World> {
        let mut rng = Rng(seed ^ n as u64);
        let mut local_tags: Vec<u16> = Vec::new();
        while local_tags.len() < LOCAL_PORTS {
            let t = rng.range(1, 65535) as u16;
            if !local_tags.contains(&t) {
                local_tags.push(t);
            }
        }
        let ports: Vec<PortConfig> = (1..=LOCAL_PORTS)
            .map(|h| PortConfig {
                id: PortId(h as u32),
                mac: container_mac(local_ip(h)),
                ip: local_ip(h),
                tag: local_tags[h - 1],
            })
            .collect();
        let remotes: Vec<RemoteCell> = (0..REMOTE_CELLS)
            .map(|c| RemoteCell {
                subnet: (Ipv4Addr::new(10, 255, 2 + c as u8, 0), 24),
                underlay: SocketAddrV4::new(remote_underlay(c), 4789),
            })
            .collect();
        let config = CellConfig {
            underlay_ip: Ipv4Addr::new(192, 168, 1, 1),
            vtep_port: 4789,
            vni: 1,
            overlay_network: (Ipv4Addr::new(10, 255, 0, 0), 16),
            subnet: (Ipv4Addr::new(10, 255, 1, 0), 24),
        };
        let (rules, local) = policies(n, &local_tags, &mut rng);
        let keys = {
            let mut k: Vec<(u16, u16, Proto)> = rules
                .iter()
                .map(|r| (r.src_tag, r.dst_tag, r.proto))
                .collect();
            k.sort_unstable();
            k.dedup();
            k.len()
        };
        ensure!(
            !local.is_empty(),
            "N={n} is too small: no policy names a local port"
        );
        let snap = Snapshot::new(config, ports, remotes, rules).context("building the tables")?;
        let by_tag: HashMap<u16, Port> = snap.ports().map(|p| (p.tag, *p)).collect();
        let port_of = |tag: u16| by_tag[&tag];
        let mut allowed = Vec::with_capacity(TEMPLATES);
        let mut established = Vec::with_capacity(TEMPLATES);
        let mut denied = Vec::with_capacity(TEMPLATES);
        for i in 0..TEMPLATES {
            let r = local[rng.range(0, local.len() as u32 - 1) as usize];
            let dport = rng.range(r.start as u32, r.end as u32) as u16;
            let dst = port_of(r.dst_tag);
            allowed.push(template(i, r.src_tag, &dst, r.proto, dport, tcp::SYN));
            established.push(template(i, r.src_tag, &dst, r.proto, dport, tcp::ACK));
        }
        while denied.len() < TEMPLATES {
            let (src_tag, dst, proto, dport) = if rng.chance(50) {
                // The key exists; the port is not in its ranges.
                let r = local[rng.range(0, local.len() as u32 - 1) as usize];
                (r.src_tag, port_of(r.dst_tag), r.proto, rng.range(1, 65535))
            } else {
                let tag = local_tags[rng.range(0, LOCAL_PORTS as u32 - 1) as usize];
                let (s, _) = random_port_range(&mut rng);
                let src_tag = rng.range(1, 65535) as u16;
                (src_tag, port_of(tag), random_proto(&mut rng), s as u32)
            };
            if !snap.policy_allows(src_tag, dst.tag, proto, dport as u16) {
                let i = denied.len();
                denied.push(template(i, src_tag, &dst, proto, dport as u16, tcp::SYN));
            }
        }
        let w = World {
            n,
            keys,
            tables: Arc::new(Tables::new(snap)),
            counters: Arc::new(Counters::new()),
            allowed,
            established,
            denied,
            est_ct: Arc::new(Conntrack::new(CT_CAPACITY)),
            est_sports,
            now: Instant::now(),
        };
        w.check()?;
        // Admit the established flows through the real pipeline, then one pass of ACKs.
        let mut sw = w.switch(&w.est_ct);
        let mut buf = PacketBuf::new();
        let now = w.now;
        let flows = TEMPLATES * est_sports as usize;
        let mut admit = |t: &Template, sport| {
            matches!(
                pipeline_packet(&mut sw, &mut buf, t, sport, now),
                Verdict::ToPort(_)
            )
        };
        let admitted = for_packets(&w.allowed, flows, SPORT_ALLOWED, 0, &mut admit);
        ensure!(admitted == flows && w.est_ct.len() == flows, "prefill");
        let hits = for_packets(&w.established, flows, SPORT_ALLOWED, est_sports, admit);
        ensure!(hits == flows, "established warm-up");
        Ok(w)
    }

    pub(crate) fn switch(&self, ct: &Arc<Conntrack>) -> Switch {
        Switch::new(self.tables.clone(), ct.clone(), self.counters.clone())
    }

    /// The decide path and the real pipeline agree on a sample of every case.
    fn check(&self) -> Result<()> {
        let now = self.now;
        let (ct_a, ct_b) = (
            Arc::new(Conntrack::new(4096)),
            Arc::new(Conntrack::new(4096)),
        );
        let mut sw_a = self.switch(&ct_a);
        let mut sw = self.switch(&ct_b);
        let mut buf = PacketBuf::new();
        let sets = [
            (&self.allowed, true),
            (&self.established, true),
            (&self.denied, false),
        ];
        for (set, expect) in sets {
            for t in set.iter().step_by(set.len() / 500) {
                let d = ingress_decision(&mut sw_a, t, t.flow.sport, now);
                let v = pipeline_packet(&mut sw, &mut buf, t, t.flow.sport, now);
                let p = match v {
                    Verdict::ToPort(id) if id == t.dst.id => Ok(()),
                    Verdict::Drop(r) => Err(r),
                    other => bail!("unexpected verdict {other:?}"),
                };
                ensure!(d == p, "decide {d:?} but pipeline {p:?} for {:?}", t.flow);
                ensure!(d.is_ok() == expect, "expected allowed={expect}, got {d:?}");
            }
        }
        ensure!(
            ct_a.len() == ct_b.len(),
            "both paths tracked the same flows"
        );
        Ok(())
    }
}
