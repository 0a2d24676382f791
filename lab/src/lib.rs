//! Tapestry's lab: N cells and M containers in one process, unprivileged, for dataplane
//! research and for tests.
//!
//! Each cell is the real switch ([`tapestry_switch::Switch`] with its own tables, connection
//! tracker and counters). Containers are in-process hosts ([`host::Host`]: smoltcp, a TCP
//! and UDP echo service, and request/response probes). The underlay carries the switch's
//! VXLAN-GBP datagrams over loopback UDP sockets, or in memory with a virtual clock so runs
//! are deterministic.
//!
//! Apps, tags and policies: container `i` is app `i` (tag `i + 1`). Each app may reach the
//! next one (`i -> i + 1`, ring order) on TCP 8080 and UDP 8081. [`Lab::run`] makes every
//! container probe its allowed peer over TCP and UDP, and the app after that (no policy) over
//! TCP, and reports what reached and what was held.
//!
//! A researcher replaces a step of the ingress decision with [`Lab::set_ingress_step`] (see
//! `examples/per_tag_limit.rs` in the repository).

pub mod host;
pub mod underlay;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Instant as StdInstant;

use anyhow::{bail, Result};
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use tapestry_switch::pipeline::extension::IngressStep;
use tapestry_switch::tables::container_mac;
use tapestry_switch::{
    CellConfig, Conntrack, Counters, DropReason, PacketBuf, PolicyRule, PortConfig, PortId, Proto,
    RemoteCell, Snapshot, Switch, Tables, Verdict,
};

use host::{Host, ProbeKind, TCP_ECHO, UDP_ECHO};
use underlay::Underlay;
pub use underlay::UnderlayKind;

/// The overlay the lab's cells share (as Cloud Foundry's default).
pub const OVERLAY: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 255, 0, 0), 16);
/// The virtual time one round (one hop: host to switch to underlay to switch to host) takes on
/// the memory underlay, in microseconds.
pub const MEMORY_HOP_US: u64 = 50;
/// Most containers on one cell (a /24 without its network and broadcast addresses).
pub const MAX_PER_CELL: usize = 253;

/// What to build.
#[derive(Debug, Clone)]
pub struct LabConfig {
    pub cells: usize,
    pub containers: usize,
    pub underlay: UnderlayKind,
    /// Seeds the hosts' TCP sequence numbers and ports (memory underlay runs repeat exactly).
    pub seed: u64,
    /// TCP probes each container makes to its allowed peer (new flows).
    pub flows_per_container: usize,
    /// How long a probe may take before it counts as held (virtual time on the memory
    /// underlay). Denied probes are judged after this.
    pub deadline: std::time::Duration,
    /// Connection-tracking capacity of each cell.
    pub conntrack_max: usize,
}

impl LabConfig {
    pub fn new(cells: usize, containers: usize, underlay: UnderlayKind) -> LabConfig {
        LabConfig {
            cells,
            containers,
            underlay,
            seed: 1,
            flows_per_container: 1,
            deadline: std::time::Duration::from_secs(3),
            conntrack_max: 65_536,
        }
    }
}

struct LabCell {
    switch: Switch,
    tables: Arc<Tables>,
    counters: Arc<Counters>,
    conntrack: Arc<Conntrack>,
    config: CellConfig,
    ports: Vec<PortConfig>,
    /// Host index by port id (the host's last address byte).
    hosts: Vec<Option<usize>>,
}

/// The outcome of [`Lab::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub cells: usize,
    pub containers: usize,
    pub policies: usize,
    /// Allowed probes (TCP and UDP) made, and how many were answered.
    pub allowed: usize,
    pub allowed_answered: usize,
    /// Probes no policy allows, and how many were answered anyway (must be 0).
    pub denied: usize,
    pub denied_answered: usize,
    /// From the start until the last allowed probe was answered (lab time: virtual on the
    /// memory underlay).
    pub ready_after: std::time::Duration,
    /// Frames the switches handled (from ports and from the underlay).
    pub frames: u64,
    /// Datagrams the underlay carried.
    pub datagrams: u64,
    /// Drops by reason, summed over cells (only reasons that happened).
    pub drops: Vec<(DropReason, u64)>,
}

impl Report {
    /// Every allowed probe answered, no denied one.
    pub fn ok(&self) -> bool {
        self.allowed_answered == self.allowed && self.denied_answered == 0
    }
}

pub struct Lab {
    cfg: LabConfig,
    cells: Vec<LabCell>,
    hosts: Vec<Host>,
    underlay: Underlay,
    policies: Vec<PolicyRule>,
    /// Lab time: virtual (memory) or since `started` (loopback).
    now: SmolInstant,
    started: StdInstant,
    frames: u64,
    datagrams: u64,
    /// Wall-clock time when the last allowed probe was answered.
    ready_wall: Option<StdInstant>,
}

fn subnet(cell: usize) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 255, cell as u8 + 1, 0), 24)
}

impl Lab {
    /// Builds the cells, the containers and the ring of policies, and publishes every cell's
    /// tables once.
    pub fn new(cfg: LabConfig) -> Result<Lab> {
        if cfg.cells == 0 || cfg.cells > 254 {
            bail!(
                "--cells {} must be 1 to 254 (one /24 of 10.255.0.0/16 each)",
                cfg.cells
            );
        }
        if cfg.containers < 3 {
            bail!(
                "--containers {} must be at least 3 (each probes two other apps)",
                cfg.containers
            );
        }
        if cfg.containers > cfg.cells * MAX_PER_CELL {
            bail!(
                "--containers {} does not fit on {} cells ({} at most per cell)",
                cfg.containers,
                cfg.cells,
                MAX_PER_CELL
            );
        }
        if cfg.containers >= u16::MAX as usize {
            bail!(
                "--containers {} exceeds the 16-bit tag space",
                cfg.containers
            );
        }
        let underlay = Underlay::new(cfg.underlay, cfg.cells, 4789)?;
        let mut cells: Vec<LabCell> = (0..cfg.cells)
            .map(|i| {
                let a = underlay.addr(i);
                let config = CellConfig {
                    underlay_ip: *a.ip(),
                    vtep_port: a.port(),
                    vni: 1,
                    overlay_network: OVERLAY,
                    subnet: subnet(i),
                };
                let tables = Arc::new(Tables::new(
                    Snapshot::new(config, vec![], vec![], vec![]).expect("an empty snapshot"),
                ));
                let conntrack = Arc::new(Conntrack::new(cfg.conntrack_max));
                let counters = Arc::new(Counters::new());
                LabCell {
                    switch: Switch::new(tables.clone(), conntrack.clone(), counters.clone()),
                    tables,
                    counters,
                    conntrack,
                    config,
                    ports: vec![],
                    hosts: vec![None; 256],
                }
            })
            .collect();
        let mut hosts = Vec::with_capacity(cfg.containers);
        for i in 0..cfg.containers {
            let cell = i % cfg.cells;
            let n = (i / cfg.cells) as u8 + 1;
            let (net, _) = subnet(cell);
            let ip = Ipv4Addr::from(u32::from(net) + u32::from(n));
            let tag = i as u16 + 1;
            let port = PortId(u32::from(n));
            cells[cell].ports.push(PortConfig {
                id: port,
                mac: container_mac(ip),
                ip,
                tag,
            });
            cells[cell].hosts[n as usize] = Some(i);
            let seed = cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64 + 1);
            // Room for every connection its allowed client opens, and the denied one.
            let listeners = cfg.flows_per_container + 2;
            hosts.push(Host::new(ip, cell, port, tag, seed, listeners));
        }
        let m = cfg.containers;
        let mut policies = Vec::with_capacity(2 * m);
        for i in 0..m {
            let (src, dst) = (hosts[i].tag, hosts[(i + 1) % m].tag);
            for (proto, port) in [(Proto::Tcp, TCP_ECHO), (Proto::Udp, UDP_ECHO)] {
                policies.push(PolicyRule {
                    src_tag: src,
                    dst_tag: dst,
                    proto,
                    start: port,
                    end: port,
                });
            }
        }
        let mut lab = Lab {
            cfg,
            cells,
            hosts,
            underlay,
            policies,
            now: SmolInstant::ZERO,
            started: StdInstant::now(),
            frames: 0,
            datagrams: 0,
            ready_wall: None,
        };
        lab.publish()?;
        Ok(lab)
    }

    /// Rebuilds and stores every cell's tables (ports, the other cells, policies).
    pub fn publish(&mut self) -> Result<()> {
        let remotes: Vec<RemoteCell> = (0..self.cells.len())
            .map(|j| RemoteCell {
                subnet: subnet(j),
                underlay: self.underlay.addr(j),
            })
            .collect();
        for (i, c) in self.cells.iter().enumerate() {
            let others = remotes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, r)| *r)
                .collect();
            let snap = Snapshot::new(c.config, c.ports.clone(), others, self.policies.clone())
                .map_err(|e| anyhow::anyhow!("building the tables of cell {i}: {e}"))?;
            c.tables.store(snap);
        }
        Ok(())
    }

    /// Replaces the ingress decision's step for new flows on every cell.
    pub fn set_ingress_step(&mut self, step: Option<Arc<dyn IngressStep>>) {
        for c in &mut self.cells {
            c.switch.set_ingress_step(step.clone());
        }
    }

    pub fn policies(&self) -> &[PolicyRule] {
        &self.policies
    }

    fn std_now(&self) -> StdInstant {
        self.started + std::time::Duration::from_micros(self.now.total_micros() as u64)
    }

    /// Real time on loopback; on the memory underlay every round is one hop and advances the
    /// virtual clock by [`MEMORY_HOP_US`].
    fn tick(&mut self) {
        match self.cfg.underlay {
            UnderlayKind::Loopback => {
                self.now = SmolInstant::from_micros(self.started.elapsed().as_micros() as i64)
            }
            UnderlayKind::Memory => self.now += SmolDuration::from_micros(MEMORY_HOP_US),
        }
    }

    /// One round: every host runs, their frames go through their cell's switch, and every
    /// datagram waiting on the underlay is taken in. Returns whether anything moved.
    fn round(&mut self) -> bool {
        self.tick();
        let now = self.now;
        let mut moved = false;
        for h in 0..self.hosts.len() {
            moved |= self.hosts[h].poll(now);
            while let Some(frame) = self.hosts[h].wire.tx.pop_front() {
                moved = true;
                let (cell, port) = (self.hosts[h].cell, self.hosts[h].port);
                let mut buf = PacketBuf::from_slice(&frame);
                let t = self.std_now();
                let v = self.cells[cell].switch.from_port(port, &mut buf, t);
                self.frames += 1;
                self.follow(cell, v, &buf, Some(port), frame.len());
            }
        }
        let mut dgram = Vec::new();
        for cell in 0..self.cells.len() {
            while let Some(src) = self.underlay.recv(cell, &mut dgram) {
                moved = true;
                let mut buf = PacketBuf::from_slice(&dgram);
                let t = self.std_now();
                let v = self.cells[cell].switch.from_underlay(src, &mut buf, t);
                self.frames += 1;
                self.follow(cell, v, &buf, None, dgram.len());
            }
        }
        moved
    }

    fn follow(
        &mut self,
        cell: usize,
        v: Verdict,
        buf: &PacketBuf,
        from: Option<PortId>,
        len: usize,
    ) {
        match v {
            Verdict::ToPort(p) => {
                if let Some(Some(h)) = self.cells[cell].hosts.get(p.0 as usize) {
                    self.hosts[*h].wire.rx.push_back(buf.data().to_vec());
                }
            }
            Verdict::ToUnderlay(to) => {
                self.datagrams += 1;
                self.underlay.send(cell, to, buf.data());
            }
            // The lab has no local stack and no TLS terminator: count it as a driver without
            // them would.
            Verdict::ToStack | Verdict::ToService(_) => {
                self.cells[cell]
                    .counters
                    .dropped(DropReason::OutsideOverlay, from, len);
            }
            Verdict::Drop(_) => {}
        }
    }

    /// Adds the probes (each container: `flows_per_container` TCP and one UDP to its allowed
    /// peer, one TCP to the app after it, which no policy allows), runs until every allowed
    /// probe is answered and the deadline has passed for the denied ones, and reports.
    pub fn run(&mut self) -> Report {
        let m = self.hosts.len();
        for i in 0..m {
            let peer = self.hosts[(i + 1) % m].ip;
            let stranger = self.hosts[(i + 2) % m].ip;
            for _ in 0..self.cfg.flows_per_container {
                self.hosts[i].probe(ProbeKind::Tcp, SocketAddrV4::new(peer, TCP_ECHO), true);
            }
            self.hosts[i].probe(ProbeKind::Udp, SocketAddrV4::new(peer, UDP_ECHO), true);
            self.hosts[i].probe(ProbeKind::Tcp, SocketAddrV4::new(stranger, TCP_ECHO), false);
        }
        let start = self.now;
        let deadline = start + SmolDuration::from_micros(self.cfg.deadline.as_micros() as u64);
        let mut ready_at = None;
        loop {
            let moved = self.round();
            if ready_at.is_none() && self.all_allowed_answered() {
                ready_at = Some(self.now);
                self.ready_wall = Some(StdInstant::now());
            }
            if self.now >= deadline && (ready_at.is_some() || !moved) {
                break;
            }
            if !moved {
                self.idle(deadline);
            }
        }
        let ready_after = ready_at.unwrap_or(self.now) - start;
        self.report(std::time::Duration::from_micros(ready_after.total_micros()))
    }

    /// Nothing moved: on the memory underlay jump the virtual clock to the next timer (a
    /// retransmission) or the deadline; on loopback wait a little for the kernel.
    fn idle(&mut self, deadline: SmolInstant) {
        match self.cfg.underlay {
            UnderlayKind::Memory => {
                let now = self.now;
                let next = self
                    .hosts
                    .iter_mut()
                    .filter_map(|h| h.poll_delay(now))
                    .min()
                    .map(|d| now + d.max(SmolDuration::from_micros(100)))
                    .unwrap_or(deadline);
                self.now = next.min(deadline).max(now + SmolDuration::from_micros(100));
            }
            UnderlayKind::Loopback => std::thread::sleep(std::time::Duration::from_micros(200)),
        }
    }

    fn all_allowed_answered(&self) -> bool {
        self.hosts
            .iter()
            .all(|h| h.probes.iter().all(|p| !p.expect_allowed || p.answered()))
    }

    fn report(&self, ready_after: std::time::Duration) -> Report {
        let (mut allowed, mut allowed_answered, mut denied, mut denied_answered) = (0, 0, 0, 0);
        for p in self.hosts.iter().flat_map(|h| &h.probes) {
            if p.expect_allowed {
                allowed += 1;
                allowed_answered += usize::from(p.answered());
            } else {
                denied += 1;
                denied_answered += usize::from(p.answered());
            }
        }
        let mut drops: Vec<(DropReason, u64)> = DropReason::ALL
            .iter()
            .map(|r| {
                let n = self
                    .cells
                    .iter()
                    .map(|c| c.counters.snapshot().drop_count(*r))
                    .sum();
                (*r, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        drops.sort_by_key(|(r, _)| r.as_str());
        Report {
            cells: self.cells.len(),
            containers: self.hosts.len(),
            policies: self.policies.len(),
            allowed,
            allowed_answered,
            denied,
            denied_answered,
            ready_after,
            frames: self.frames,
            datagrams: self.datagrams + self.underlay.lost(),
            drops,
        }
    }

    /// Wall-clock time at which every allowed probe had been answered (None: not all were).
    pub fn ready_wall(&self) -> Option<StdInstant> {
        self.ready_wall
    }

    /// Connection-tracking entries over all cells.
    pub fn conntrack_entries(&self) -> usize {
        self.cells.iter().map(|c| c.conntrack.len()).sum()
    }
}
