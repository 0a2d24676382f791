//! Application security groups (ASGs): which destinations outside the overlay a container may
//! reach, with Cloud Foundry's rule semantics, and the deny-networks that no ASG can open.
//!
//! The control plane stores rules as CF's text (`"protocol":"tcp"`, `"destination":
//! "10.0.0.1-10.0.0.9,192.168.0.0/16"`, `"ports":"80,443"`, ICMP `type`/`code` with -1 = any).
//! [`RuleSet::compile`] turns the rules of every group that applies to a container into a
//! decision table once, when the snapshot is built; a lookup ([`RuleSet::check`]) parses no text
//! and allocates nothing: two binary searches.
//!
//! The compiled form, per protocol plane (TCP, UDP, ICMP, any other IP protocol): the IPv4
//! space is cut at every rule's destination bounds into elementary intervals; in each interval
//! the second key (TCP/UDP port; ICMP `type << 8 | code`; the IP protocol number) is cut the same
//! way, and each piece holds the first rule (in group order, then rule order) that allows it.
//! Neighbouring pieces with the same answer are merged. Building is a sweep over the bounds
//! (sort, then a heap per interval), so disjoint destinations, the common case (lists of
//! single hosts and networks), cost O(n log n) for n (destination, port) pairs; only rules that
//! overlap in both destination and key make the table grow towards its (2n+1)^2 worst case.
//!
//! Semantics, as CF enforces them: the union of every group bound to the container's space for
//! its lifecycle plus the global groups for that lifecycle; default deny; `all` matches every
//! protocol, port, ICMP type and code; ICMP type -1 matches any type (its code is then ignored,
//! as iptables' `--icmp-type any`), code -1 any code of the type. A group with a rule the switch
//! cannot parse is skipped whole and reported ([`AsgError`]): the switch fails closed and never
//! panics on text the control plane let through.
//!
//! Before any rule: a destination inside the overlay is not an egress decision at all
//! ([`EgressVerdict::Overlay`]: ASGs never open container-to-container traffic), and a
//! destination in the deny-networks ([`DenyNetworks`]) is denied whatever the ASGs say.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{mask, FxHashMap, PortId, Prefix, TableError};

/// Which ASGs a container gets: CF binds groups separately for running apps and for staging.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    #[default]
    Running,
    Staging,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Running => "running",
            Lifecycle::Staging => "staging",
        }
    }
    /// `"running"` or `"staging"`.
    pub fn parse(s: &str) -> Option<Lifecycle> {
        match s {
            "running" => Some(Lifecycle::Running),
            "staging" => Some(Lifecycle::Staging),
            _ => None,
        }
    }
}

/// One ASG rule as the control plane stores it (CF's JSON fields, uninterpreted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleText {
    pub protocol: String,
    pub destination: String,
    pub ports: Option<String>,
    pub icmp_type: Option<i64>,
    pub code: Option<i64>,
    pub log: bool,
}

/// One ASG with its bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupText {
    pub name: String,
    pub rules: Vec<RuleText>,
    pub global_running: bool,
    pub global_staging: bool,
    pub running_spaces: Vec<String>,
    pub staging_spaces: Vec<String>,
}

impl GroupText {
    /// True if the group applies to a container of `space` in `lifecycle`: bound to that space
    /// for that lifecycle, or global for it.
    pub fn applies_to(&self, space: &str, lifecycle: Lifecycle) -> bool {
        let (global, spaces) = match lifecycle {
            Lifecycle::Running => (self.global_running, &self.running_spaces),
            Lifecycle::Staging => (self.global_staging, &self.staging_spaces),
        };
        global || (!space.is_empty() && spaces.iter().any(|s| s == space))
    }
}

/// A rule the switch cannot interpret. Its whole group is left out (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("security group {group:?}: rules[{rule}].{field}: {message}; the group is not applied")]
pub struct AsgError {
    pub group: String,
    pub rule: usize,
    pub field: &'static str,
    pub message: String,
}

/// A flow a container starts towards a destination (the first packet's view of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    Tcp {
        dst: Ipv4Addr,
        port: u16,
    },
    Udp {
        dst: Ipv4Addr,
        port: u16,
    },
    Icmp {
        dst: Ipv4Addr,
        icmp_type: u8,
        code: u8,
    },
    /// Any other IP protocol (only `all` rules match it).
    Other {
        dst: Ipv4Addr,
        protocol: u8,
    },
}

impl Flow {
    pub fn dst(&self) -> Ipv4Addr {
        match *self {
            Flow::Tcp { dst, .. }
            | Flow::Udp { dst, .. }
            | Flow::Icmp { dst, .. }
            | Flow::Other { dst, .. } => dst,
        }
    }
    /// (plane, key) of the compiled table.
    fn plane_key(&self) -> (usize, u16) {
        match *self {
            Flow::Tcp { port, .. } => (TCP, port),
            Flow::Udp { port, .. } => (UDP, port),
            Flow::Icmp {
                icmp_type, code, ..
            } => (ICMP, u16::from(icmp_type) << 8 | u16::from(code)),
            Flow::Other { protocol, .. } => (OTHER, u16::from(protocol)),
        }
    }
}

const TCP: usize = 0;
const UDP: usize = 1;
const ICMP: usize = 2;
const OTHER: usize = 3;
const PLANES: usize = 4;
const NONE: u32 = u32::MAX;

/// Which rule allowed a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleMatch<'a> {
    pub group: &'a str,
    /// Index of the rule in its group.
    pub rule: usize,
    /// The rule has `log: true`: the new connection is to be logged.
    pub log: bool,
}

/// One rule after parsing: (destination intervals, key intervals, plane set).
#[derive(Debug, Clone)]
struct ParsedRule {
    dst: Vec<(u32, u32)>,
    keys: Vec<(u16, u16)>,
    planes: [bool; PLANES],
    log: bool,
}

fn parse_ip(s: &str) -> Result<u32, String> {
    s.trim()
        .parse::<Ipv4Addr>()
        .map(u32::from)
        .map_err(|_| format!("'{}' is not an IPv4 address", s.trim()))
}

/// `a`, `a/len` or `a-b` as an inclusive interval.
fn parse_destination_part(s: &str) -> Result<(u32, u32), String> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (parse_ip(a)?, parse_ip(b)?);
        if a > b {
            return Err(format!("range '{s}' ends before it starts"));
        }
        return Ok((a, b));
    }
    if let Some((a, len)) = s.split_once('/') {
        let a = parse_ip(a)?;
        let len: u8 = match len.trim().parse() {
            Ok(l) if l <= 32 => l,
            _ => return Err(format!("'{s}' has no prefix length between 0 and 32")),
        };
        let m = mask(len);
        return Ok((a & m, (a & m) | !m));
    }
    let a = parse_ip(s)?;
    Ok((a, a))
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("'{}' is not a port between 1 and 65535", s.trim())),
    }
}

/// CF ports: one port, a comma list of ports, or one range `a-b`.
fn parse_ports(s: &str) -> Result<Vec<(u16, u16)>, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if let Some((a, b)) = s.split_once('-') {
        if s.contains(',') {
            return Err("use a comma list of ports or one range, not both".into());
        }
        let (a, b) = (parse_port(a)?, parse_port(b)?);
        if a > b {
            return Err(format!("range '{}' ends before it starts", s.trim()));
        }
        return Ok(vec![(a, b)]);
    }
    s.split(',')
        .map(|p| parse_port(p).map(|p| (p, p)))
        .collect()
}

fn icmp_value(v: Option<i64>) -> Result<Option<u8>, String> {
    match v {
        None => Err("required for protocol icmp (-1 means any)".into()),
        Some(-1) => Ok(None),
        Some(v) => u8::try_from(v)
            .map(Some)
            .map_err(|_| format!("{v} is not between -1 and 255")),
    }
}

fn parse_rule(r: &RuleText) -> Result<ParsedRule, (&'static str, String)> {
    let mut planes = [false; PLANES];
    match r.protocol.as_str() {
        "tcp" => planes[TCP] = true,
        "udp" => planes[UDP] = true,
        "icmp" => planes[ICMP] = true,
        "all" => planes = [true; PLANES],
        p => {
            return Err((
                "protocol",
                format!("'{p}' is not one of tcp, udp, icmp, all"),
            ))
        }
    }
    if r.destination.trim().is_empty() {
        return Err(("destination", "required".into()));
    }
    let dst = r
        .destination
        .split(',')
        .map(parse_destination_part)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| ("destination", m))?;
    let is_icmp = r.protocol == "icmp";
    if !is_icmp {
        if r.icmp_type.is_some() {
            return Err(("type", format!("not allowed for protocol {}", r.protocol)));
        }
        if r.code.is_some() {
            return Err(("code", format!("not allowed for protocol {}", r.protocol)));
        }
    }
    let keys = match r.protocol.as_str() {
        "tcp" | "udp" => match &r.ports {
            None => return Err(("ports", format!("required for protocol {}", r.protocol))),
            Some(p) => parse_ports(p).map_err(|m| ("ports", m))?,
        },
        _ if r.ports.is_some() => {
            return Err(("ports", format!("not allowed for protocol {}", r.protocol)))
        }
        "icmp" => {
            let t = icmp_value(r.icmp_type).map_err(|m| ("type", m))?;
            let c = icmp_value(r.code).map_err(|m| ("code", m))?;
            match (t, c) {
                (None, _) => vec![(0, u16::MAX)],
                (Some(t), None) => vec![(u16::from(t) << 8, u16::from(t) << 8 | 0xff)],
                (Some(t), Some(c)) => {
                    let k = u16::from(t) << 8 | u16::from(c);
                    vec![(k, k)]
                }
            }
        }
        _ => vec![(0, u16::MAX)],
    };
    Ok(ParsedRule {
        dst,
        keys,
        planes,
        log: r.log,
    })
}

/// Parses every rule of a group; the first bad one fails the group.
fn parse_group(g: &GroupText) -> Result<Vec<ParsedRule>, AsgError> {
    g.rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            parse_rule(r).map_err(|(field, message)| AsgError {
                group: g.name.clone(),
                rule: i,
                field,
                message,
            })
        })
        .collect()
}

/// One protocol plane: destination intervals, each with its key intervals and answers.
#[derive(Debug, Clone, Default)]
struct Plane {
    /// Start of each destination interval; `starts[0] == 0`, the last runs to 255.255.255.255.
    starts: Vec<u32>,
    /// Interval `i`'s pieces are `keys[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u32>,
    /// Start of each key piece; the first of an interval is 0.
    keys: Vec<u16>,
    /// The first rule allowing each piece, or [`NONE`].
    refs: Vec<u32>,
}

/// (dst_lo, dst_hi, key_lo, key_hi, rule ref)
type Item = (u32, u32, u16, u16, u32);

impl Plane {
    fn build(items: &[Item]) -> Plane {
        let mut plane = Plane {
            offsets: vec![0],
            ..Plane::default()
        };
        if items.is_empty() {
            return plane;
        }
        let mut bounds: Vec<u32> = vec![0];
        for it in items {
            bounds.push(it.0);
            if let Some(b) = it.1.checked_add(1) {
                bounds.push(b);
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        // Sweep the destination bounds, keeping the items that cover the current one.
        let mut by_lo: Vec<&Item> = items.iter().collect();
        by_lo.sort_unstable_by_key(|it| it.0);
        let mut next = 0;
        let mut active: Vec<&Item> = Vec::new();
        let mut kb: Vec<u16> = Vec::new();
        let mut heap: BinaryHeap<Reverse<(u32, u16)>> = BinaryHeap::new();
        let mut pieces: Vec<(u16, u32)> = Vec::new();
        for &b in &bounds {
            active.retain(|it| it.1 >= b);
            while next < by_lo.len() && by_lo[next].0 <= b {
                active.push(by_lo[next]);
                next += 1;
            }
            // The same sweep over the key bounds, with the lowest rule on top of a heap.
            active.sort_unstable_by_key(|it| it.2);
            kb.clear();
            kb.push(0);
            for it in &active {
                kb.push(it.2);
                if let Some(k) = it.3.checked_add(1) {
                    kb.push(k);
                }
            }
            kb.sort_unstable();
            kb.dedup();
            heap.clear();
            pieces.clear();
            let mut k_next = 0;
            for &k in &kb {
                while k_next < active.len() && active[k_next].2 <= k {
                    heap.push(Reverse((active[k_next].4, active[k_next].3)));
                    k_next += 1;
                }
                while heap.peek().is_some_and(|Reverse((_, hi))| *hi < k) {
                    heap.pop();
                }
                let r = heap.peek().map_or(NONE, |Reverse((r, _))| *r);
                if pieces.last().map(|p| p.1) != Some(r) {
                    pieces.push((k, r));
                }
            }
            // Same answer as the previous destination interval: extend it.
            if let Some(last) = plane.starts.len().checked_sub(1) {
                let (a, z) = (
                    plane.offsets[last] as usize,
                    plane.offsets[last + 1] as usize,
                );
                if z - a == pieces.len()
                    && pieces
                        .iter()
                        .zip(a..z)
                        .all(|(p, i)| plane.keys[i] == p.0 && plane.refs[i] == p.1)
                {
                    continue;
                }
            }
            plane.starts.push(b);
            plane.keys.extend(pieces.iter().map(|p| p.0));
            plane.refs.extend(pieces.iter().map(|p| p.1));
            plane.offsets.push(plane.keys.len() as u32);
        }
        plane
    }

    #[inline]
    fn lookup(&self, dst: u32, key: u16) -> u32 {
        if self.starts.is_empty() {
            return NONE;
        }
        let i = self.starts.partition_point(|&s| s <= dst) - 1;
        let (a, z) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        let j = self.keys[a..z].partition_point(|&k| k <= key) - 1;
        self.refs[a + j]
    }

    fn pieces(&self) -> usize {
        self.keys.len()
    }
}

#[derive(Debug, Clone, Copy)]
struct RuleInfo {
    group: u32,
    rule: u32,
    log: bool,
}

/// The compiled rules of every group that applies to a container.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    planes: [Plane; PLANES],
    rules: Vec<RuleInfo>,
    groups: Vec<String>,
}

impl RuleSet {
    /// Compiles `groups` (all of them, whatever their bindings) in the order given: when
    /// several rules allow a flow, the first one is reported. Groups with a rule that does not
    /// parse are left out and returned as errors.
    pub fn compile<'a>(
        groups: impl IntoIterator<Item = &'a GroupText>,
    ) -> (RuleSet, Vec<AsgError>) {
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        for g in groups {
            match parse_group(g) {
                Ok(rules) => ok.push((g.name.as_str(), rules)),
                Err(e) => errors.push(e),
            }
        }
        (Self::from_parsed(&ok), errors)
    }

    /// The groups of `all` that apply to a container of `space` in `lifecycle`, compiled.
    pub fn for_container(
        all: &[GroupText],
        space: &str,
        lifecycle: Lifecycle,
    ) -> (RuleSet, Vec<AsgError>) {
        Self::compile(all.iter().filter(|g| g.applies_to(space, lifecycle)))
    }

    fn from_parsed(groups: &[(&str, Vec<ParsedRule>)]) -> RuleSet {
        let mut items: [Vec<Item>; PLANES] = Default::default();
        let mut rules = Vec::new();
        let mut names = Vec::new();
        for (gi, (name, parsed)) in groups.iter().enumerate() {
            names.push(name.to_string());
            for (ri, r) in parsed.iter().enumerate() {
                let id = rules.len() as u32;
                rules.push(RuleInfo {
                    group: gi as u32,
                    rule: ri as u32,
                    log: r.log,
                });
                for (p, on) in r.planes.iter().enumerate() {
                    if !on {
                        continue;
                    }
                    for &(dlo, dhi) in &r.dst {
                        for &(klo, khi) in &r.keys {
                            items[p].push((dlo, dhi, klo, khi, id));
                        }
                    }
                }
            }
        }
        RuleSet {
            planes: items.map(|i| Plane::build(&i)),
            rules,
            groups: names,
        }
    }

    /// The first rule that allows `flow`, or None (deny). No allocation, no parsing.
    #[inline]
    pub fn check(&self, flow: &Flow) -> Option<RuleMatch<'_>> {
        let (p, key) = flow.plane_key();
        let r = self.planes[p].lookup(u32::from(flow.dst()), key);
        let info = self.rules.get(r as usize)?;
        Some(RuleMatch {
            group: &self.groups[info.group as usize],
            rule: info.rule as usize,
            log: info.log,
        })
    }

    /// How many rules are in force (of groups that compiled).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
    /// The names of the groups in force, in order.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }
    /// Size of the compiled tables (pieces over all planes), for status and tests.
    pub fn table_size(&self) -> usize {
        self.planes.iter().map(Plane::pieces).sum()
    }
}

/// The cell's own gateway services, which deny-networks never covers: 169.254.0.1 (gateway)
/// and 169.254.0.2 (DNS). The local stack answers them itself.
pub const GATEWAY_SERVICES: [Ipv4Addr; 2] =
    [Ipv4Addr::new(169, 254, 0, 1), Ipv4Addr::new(169, 254, 0, 2)];

/// The default deny-networks: link-local 169.254.0.0/16 (cloud metadata at 169.254.169.254).
pub const DEFAULT_DENY_NETWORKS: [Prefix; 1] = [(Ipv4Addr::new(169, 254, 0, 0), 16)];

/// Destinations no ASG can open (CF's `deny_networks`), minus [`GATEWAY_SERVICES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyNetworks {
    networks: Vec<Prefix>,
    /// Sorted, disjoint, non-adjacent inclusive intervals.
    ranges: Vec<(u32, u32)>,
}

impl Default for DenyNetworks {
    fn default() -> Self {
        DenyNetworks::new(&DEFAULT_DENY_NETWORKS).unwrap_or(DenyNetworks {
            networks: vec![],
            ranges: vec![],
        })
    }
}

impl DenyNetworks {
    /// The given CIDRs (host bits are ignored), without the gateway services.
    pub fn new(networks: &[Prefix]) -> Result<DenyNetworks, TableError> {
        let mut iv: Vec<(u32, u32)> = Vec::new();
        for &(a, len) in networks {
            if len > 32 {
                return Err(TableError::InvalidPrefix {
                    what: "deny network",
                    prefix: len,
                });
            }
            let m = mask(len);
            iv.push((u32::from(a) & m, (u32::from(a) & m) | !m));
        }
        for g in GATEWAY_SERVICES {
            let g = u32::from(g);
            iv = iv
                .into_iter()
                .flat_map(|(lo, hi)| {
                    if g < lo || g > hi {
                        [Some((lo, hi)), None]
                    } else {
                        [(g > lo).then(|| (lo, g - 1)), (g < hi).then(|| (g + 1, hi))]
                    }
                })
                .flatten()
                .collect();
        }
        iv.sort_unstable();
        let mut ranges: Vec<(u32, u32)> = Vec::with_capacity(iv.len());
        for (lo, hi) in iv {
            match ranges.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => ranges.push((lo, hi)),
            }
        }
        Ok(DenyNetworks {
            networks: networks.to_vec(),
            ranges,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        let i = self.ranges.partition_point(|r| r.0 <= ip);
        i > 0 && ip <= self.ranges[i - 1].1
    }

    /// The networks as configured.
    pub fn networks(&self) -> &[Prefix] {
        &self.networks
    }
}

/// Why an egress flow is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The destination is in the deny-networks.
    DenyNetworks,
    /// No rule of the container's ASGs allows it (default deny).
    NoRule,
    /// The port is not attached.
    UnknownPort,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::DenyNetworks => "asg_deny_networks",
            DenyReason::NoRule => "asg_no_rule",
            DenyReason::UnknownPort => "asg_unknown_port",
        }
    }
}

/// The answer for a container's flow to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressVerdict<'a> {
    /// An ASG rule allows it.
    Allow(RuleMatch<'a>),
    Deny(DenyReason),
    /// The destination is inside the overlay: container-to-container traffic, governed by
    /// policies alone. ASGs never open it.
    Overlay,
}

/// The ASG side of a snapshot: deny-networks and each port's compiled rule set (ports of the
/// same space and lifecycle share one).
#[derive(Debug, Clone, Default)]
pub struct Egress {
    deny: DenyNetworks,
    sets: Vec<(String, Lifecycle, Arc<RuleSet>)>,
    by_port: FxHashMap<PortId, u32>,
    errors: Vec<AsgError>,
}

impl Egress {
    /// Compiles, once per (space, lifecycle) that `ports` use, the groups that apply to it.
    /// Groups with a rule that does not parse are left out everywhere and listed in
    /// [`Egress::errors`].
    pub fn build(
        deny: DenyNetworks,
        groups: &[GroupText],
        ports: &[(PortId, &str, Lifecycle)],
    ) -> Egress {
        let mut parsed: Vec<(&GroupText, Vec<ParsedRule>)> = Vec::new();
        let mut errors = Vec::new();
        for g in groups {
            match parse_group(g) {
                Ok(p) => parsed.push((g, p)),
                Err(e) => errors.push(e),
            }
        }
        let mut index: BTreeMap<(&str, Lifecycle), u32> = BTreeMap::new();
        let mut sets = Vec::new();
        let mut by_port = FxHashMap::default();
        for &(port, space, lc) in ports {
            let i = *index.entry((space, lc)).or_insert_with(|| {
                let these: Vec<(&str, Vec<ParsedRule>)> = parsed
                    .iter()
                    .filter(|(g, _)| g.applies_to(space, lc))
                    .map(|(g, p)| (g.name.as_str(), p.clone()))
                    .collect();
                sets.push((
                    space.to_string(),
                    lc,
                    Arc::new(RuleSet::from_parsed(&these)),
                ));
                (sets.len() - 1) as u32
            });
            by_port.insert(port, i);
        }
        Egress {
            deny,
            sets,
            by_port,
            errors,
        }
    }

    /// Only deny-networks, no rules for any port (everything outside is denied).
    pub fn deny_only(deny: DenyNetworks) -> Egress {
        Egress {
            deny,
            ..Egress::default()
        }
    }

    pub fn deny_networks(&self) -> &DenyNetworks {
        &self.deny
    }
    /// The port's rule set (None: not attached when the snapshot was built).
    pub fn rules(&self, port: PortId) -> Option<&RuleSet> {
        self.by_port
            .get(&port)
            .map(|&i| self.sets[i as usize].2.as_ref())
    }
    /// Every compiled (space, lifecycle) rule set.
    pub fn rule_sets(&self) -> impl Iterator<Item = (&str, Lifecycle, &RuleSet)> {
        self.sets
            .iter()
            .map(|(s, l, r)| (s.as_str(), *l, r.as_ref()))
    }
    /// Groups left out because a rule did not parse.
    pub fn errors(&self) -> &[AsgError] {
        &self.errors
    }

    /// The decision for `port`'s `flow`, given the overlay network. Order: overlay, then
    /// deny-networks, then the port's ASGs (default deny).
    pub fn decide(&self, overlay: Prefix, port: PortId, flow: &Flow) -> EgressVerdict<'_> {
        let dst = flow.dst();
        if super::contains(overlay, dst) {
            return EgressVerdict::Overlay;
        }
        if self.deny.contains(dst) {
            return EgressVerdict::Deny(DenyReason::DenyNetworks);
        }
        let Some(set) = self.rules(port) else {
            return EgressVerdict::Deny(DenyReason::UnknownPort);
        };
        match set.check(flow) {
            Some(m) => EgressVerdict::Allow(m),
            None => EgressVerdict::Deny(DenyReason::NoRule),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn rule(protocol: &str, destination: &str, ports: Option<&str>) -> RuleText {
        RuleText {
            protocol: protocol.into(),
            destination: destination.into(),
            ports: ports.map(String::from),
            ..RuleText::default()
        }
    }
    fn icmp(destination: &str, t: i64, c: i64) -> RuleText {
        RuleText {
            protocol: "icmp".into(),
            destination: destination.into(),
            icmp_type: Some(t),
            code: Some(c),
            ..RuleText::default()
        }
    }
    fn group(name: &str, rules: Vec<RuleText>) -> GroupText {
        GroupText {
            name: name.into(),
            rules,
            ..GroupText::default()
        }
    }
    fn set(rules: Vec<RuleText>) -> RuleSet {
        let (s, e) = RuleSet::compile(&[group("g", rules)]);
        assert!(e.is_empty(), "{e:?}");
        s
    }
    fn tcp(dst: &str, port: u16) -> Flow {
        Flow::Tcp { dst: ip(dst), port }
    }
    fn udp(dst: &str, port: u16) -> Flow {
        Flow::Udp { dst: ip(dst), port }
    }
    fn ping(dst: &str, icmp_type: u8, code: u8) -> Flow {
        Flow::Icmp {
            dst: ip(dst),
            icmp_type,
            code,
        }
    }
    fn allowed(s: &RuleSet, f: Flow) -> Option<usize> {
        s.check(&f).map(|m| m.rule)
    }

    #[test]
    fn single_ip_and_port() {
        let s = set(vec![rule("tcp", "10.0.0.5", Some("443"))]);
        assert_eq!(allowed(&s, tcp("10.0.0.5", 443)), Some(0));
        assert_eq!(allowed(&s, tcp("10.0.0.5", 444)), None);
        assert_eq!(allowed(&s, tcp("10.0.0.4", 443)), None);
        assert_eq!(allowed(&s, tcp("10.0.0.6", 443)), None);
        assert_eq!(
            allowed(&s, udp("10.0.0.5", 443)),
            None,
            "tcp rule, udp flow"
        );
        assert_eq!(allowed(&s, ping("10.0.0.5", 8, 0)), None);
    }

    #[test]
    fn cidr_with_host_bits_is_the_network() {
        let s = set(vec![rule("udp", "192.168.7.9/24", Some("53"))]);
        assert_eq!(allowed(&s, udp("192.168.7.0", 53)), Some(0));
        assert_eq!(allowed(&s, udp("192.168.7.255", 53)), Some(0));
        assert_eq!(allowed(&s, udp("192.168.8.0", 53)), None);
        assert_eq!(allowed(&s, udp("192.168.6.255", 53)), None);
        let all = set(vec![rule("tcp", "0.0.0.0/0", Some("1-65535"))]);
        assert_eq!(allowed(&all, tcp("255.255.255.255", 65535)), Some(0));
        assert_eq!(allowed(&all, tcp("0.0.0.0", 1)), Some(0));
        let host = set(vec![rule("tcp", "8.8.8.8/32", Some("80"))]);
        assert_eq!(allowed(&host, tcp("8.8.8.8", 80)), Some(0));
        assert_eq!(allowed(&host, tcp("8.8.8.9", 80)), None);
    }

    #[test]
    fn ip_range_is_inclusive() {
        let s = set(vec![rule("tcp", "10.0.0.10-10.0.1.2", Some("80"))]);
        assert_eq!(allowed(&s, tcp("10.0.0.9", 80)), None);
        assert_eq!(allowed(&s, tcp("10.0.0.10", 80)), Some(0));
        assert_eq!(allowed(&s, tcp("10.0.0.255", 80)), Some(0));
        assert_eq!(allowed(&s, tcp("10.0.1.2", 80)), Some(0));
        assert_eq!(allowed(&s, tcp("10.0.1.3", 80)), None);
    }

    #[test]
    fn destination_list_mixes_forms() {
        let s = set(vec![rule(
            "tcp",
            "1.1.1.1, 10.0.0.0/8,172.16.0.1-172.16.0.3",
            Some("22"),
        )]);
        for d in ["1.1.1.1", "10.200.3.4", "172.16.0.1", "172.16.0.3"] {
            assert_eq!(allowed(&s, tcp(d, 22)), Some(0), "{d}");
        }
        for d in ["1.1.1.2", "11.0.0.0", "172.16.0.4", "172.16.0.0"] {
            assert_eq!(allowed(&s, tcp(d, 22)), None, "{d}");
        }
    }

    #[test]
    fn port_list_and_range() {
        let list = set(vec![rule("tcp", "0.0.0.0/0", Some("80, 443,8080"))]);
        for (p, want) in [
            (80, true),
            (443, true),
            (8080, true),
            (81, false),
            (8079, false),
        ] {
            assert_eq!(allowed(&list, tcp("9.9.9.9", p)).is_some(), want, "{p}");
        }
        let range = set(vec![rule("udp", "0.0.0.0/0", Some("1000-1010"))]);
        for (p, want) in [
            (999, false),
            (1000, true),
            (1005, true),
            (1010, true),
            (1011, false),
        ] {
            assert_eq!(allowed(&range, udp("9.9.9.9", p)).is_some(), want, "{p}");
        }
    }

    #[test]
    fn icmp_type_and_code_with_any() {
        let exact = set(vec![icmp("0.0.0.0/0", 8, 0)]);
        assert_eq!(allowed(&exact, ping("1.2.3.4", 8, 0)), Some(0));
        assert_eq!(allowed(&exact, ping("1.2.3.4", 8, 1)), None);
        assert_eq!(allowed(&exact, ping("1.2.3.4", 0, 0)), None);
        let any_code = set(vec![icmp("0.0.0.0/0", 3, -1)]);
        assert_eq!(allowed(&any_code, ping("1.2.3.4", 3, 0)), Some(0));
        assert_eq!(allowed(&any_code, ping("1.2.3.4", 3, 255)), Some(0));
        assert_eq!(allowed(&any_code, ping("1.2.3.4", 4, 0)), None);
        assert_eq!(allowed(&any_code, ping("1.2.3.4", 2, 255)), None);
        // Type -1 is any type; the code is then ignored (iptables `--icmp-type any`).
        let any = set(vec![icmp("0.0.0.0/0", -1, 5)]);
        assert_eq!(allowed(&any, ping("1.2.3.4", 0, 0)), Some(0));
        assert_eq!(allowed(&any, ping("1.2.3.4", 255, 255)), Some(0));
        assert_eq!(
            allowed(&any, tcp("1.2.3.4", 80)),
            None,
            "icmp rule, tcp flow"
        );
    }

    #[test]
    fn all_matches_every_protocol_and_port() {
        let s = set(vec![rule("all", "10.1.0.0/16", None)]);
        assert_eq!(allowed(&s, tcp("10.1.2.3", 1)), Some(0));
        assert_eq!(allowed(&s, udp("10.1.2.3", 65535)), Some(0));
        assert_eq!(allowed(&s, ping("10.1.2.3", 13, 7)), Some(0));
        let gre = Flow::Other {
            dst: ip("10.1.2.3"),
            protocol: 47,
        };
        assert!(s.check(&gre).is_some());
        assert_eq!(allowed(&s, tcp("10.2.0.0", 80)), None);
        // Only `all` matches other protocols.
        let t = set(vec![rule("tcp", "0.0.0.0/0", Some("1-65535"))]);
        assert!(t.check(&gre).is_none());
    }

    #[test]
    fn union_of_groups_reports_the_first_rule_and_its_log_flag() {
        let mut logged = rule("tcp", "10.0.0.0/8", Some("443"));
        logged.log = true;
        let (s, e) = RuleSet::compile(&[
            group("a-web", vec![rule("tcp", "10.0.0.1", Some("80"))]),
            group("b-wide", vec![rule("udp", "0.0.0.0/0", Some("53")), logged]),
        ]);
        assert!(e.is_empty());
        assert_eq!(s.rule_count(), 3);
        assert_eq!(s.groups(), ["a-web", "b-wide"]);
        let m = s.check(&tcp("10.9.9.9", 443)).unwrap();
        assert_eq!((m.group, m.rule, m.log), ("b-wide", 1, true));
        let m = s.check(&tcp("10.0.0.1", 80)).unwrap();
        assert_eq!((m.group, m.rule, m.log), ("a-web", 0, false));
        let m = s.check(&udp("8.8.8.8", 53)).unwrap();
        assert_eq!((m.group, m.rule), ("b-wide", 0));
        assert!(s.check(&tcp("10.0.0.1", 81)).is_none(), "default deny");
        // Overlapping rules: the earlier one is reported.
        let s = set(vec![
            rule("tcp", "10.0.0.0/24", Some("1-100")),
            rule("all", "10.0.0.0/8", None),
        ]);
        assert_eq!(allowed(&s, tcp("10.0.0.7", 50)), Some(0));
        assert_eq!(allowed(&s, tcp("10.0.0.7", 101)), Some(1));
        assert_eq!(allowed(&s, tcp("10.0.1.7", 50)), Some(1));
    }

    #[test]
    fn many_disjoint_destinations_stay_small() {
        // 2,000 hosts in one comma list, 2,000 rules of one host each, and a wide DNS rule.
        let hosts: Vec<String> = (0..2000u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i * 3).to_string())
            .collect();
        let mut rules = vec![rule("tcp", &hosts.join(","), Some("443"))];
        rules.extend(hosts.iter().map(|h| rule("tcp", h, Some("5432"))));
        rules.push(rule("udp", "0.0.0.0/0", Some("53")));
        let s = set(rules);
        assert!(s.table_size() < 20_000, "{}", s.table_size());
        let h = |i: u32| Ipv4Addr::from(0x0a00_0000 + i * 3).to_string();
        assert_eq!(allowed(&s, tcp(&h(1234), 443)), Some(0));
        assert_eq!(allowed(&s, tcp(&h(1234), 5432)), Some(1235));
        assert_eq!(allowed(&s, tcp("10.0.0.1", 443)), None);
        assert_eq!(allowed(&s, udp(&h(7), 53)), Some(2001));
    }

    #[test]
    fn empty_set_denies() {
        let (s, e) = RuleSet::compile(&[]);
        assert!(e.is_empty());
        assert!(s.check(&tcp("1.1.1.1", 80)).is_none());
        assert_eq!(s.rule_count(), 0);
    }

    #[test]
    fn bad_rule_text_skips_the_group_and_names_the_field() {
        let cases: Vec<(RuleText, &str)> = vec![
            (rule("TCP", "1.1.1.1", Some("80")), "protocol"),
            (rule("sctp", "1.1.1.1", Some("80")), "protocol"),
            (rule("tcp", "", Some("80")), "destination"),
            (rule("tcp", "1.1.1.300", Some("80")), "destination"),
            (rule("tcp", "1.1.1.0/33", Some("80")), "destination"),
            (rule("tcp", "1.1.1.9-1.1.1.1", Some("80")), "destination"),
            (rule("tcp", "1.1.1.1,", Some("80")), "destination"),
            (rule("tcp", "1.1.1.1", None), "ports"),
            (rule("udp", "1.1.1.1", Some("0")), "ports"),
            (rule("udp", "1.1.1.1", Some("65536")), "ports"),
            (rule("udp", "1.1.1.1", Some("90-80")), "ports"),
            (rule("udp", "1.1.1.1", Some("80,90-99")), "ports"),
            (rule("udp", "1.1.1.1", Some("")), "ports"),
            (rule("udp", "1.1.1.1", Some("http")), "ports"),
            (rule("all", "1.1.1.1", Some("80")), "ports"),
            (icmp("1.1.1.1", 256, 0), "type"),
            (icmp("1.1.1.1", -2, 0), "type"),
            (icmp("1.1.1.1", 8, 300), "code"),
            (
                RuleText {
                    icmp_type: None,
                    ..icmp("1.1.1.1", 0, 0)
                },
                "type",
            ),
            (
                RuleText {
                    icmp_type: Some(8),
                    ..rule("tcp", "1.1.1.1", Some("80"))
                },
                "type",
            ),
        ];
        for (bad, field) in cases {
            let good = group("good", vec![rule("tcp", "1.1.1.1", Some("80"))]);
            let broken = group(
                "broken",
                vec![rule("udp", "2.2.2.2", Some("53")), bad.clone()],
            );
            let (s, errors) = RuleSet::compile(&[broken, good]);
            assert_eq!(errors.len(), 1, "{bad:?}");
            let e = &errors[0];
            assert_eq!(
                (e.group.as_str(), e.rule, e.field),
                ("broken", 1, field),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains(&format!("rules[1].{field}")), "{e}");
            // The whole group is out (its good rule too), the other group stays.
            assert!(s.check(&udp("2.2.2.2", 53)).is_none(), "{bad:?}");
            assert_eq!(s.check(&tcp("1.1.1.1", 80)).unwrap().group, "good");
            assert_eq!(s.groups(), ["good"]);
        }
    }

    #[test]
    fn bindings_by_space_lifecycle_and_global() {
        let mut running = group("running-s1", vec![rule("tcp", "1.0.0.1", Some("1"))]);
        running.running_spaces = vec!["s1".into()];
        let mut staging = group("staging-s1", vec![rule("tcp", "1.0.0.2", Some("1"))]);
        staging.staging_spaces = vec!["s1".into()];
        let mut global_run = group("global-run", vec![rule("tcp", "1.0.0.3", Some("1"))]);
        global_run.global_running = true;
        let mut global_stage = group("global-stage", vec![rule("tcp", "1.0.0.4", Some("1"))]);
        global_stage.global_staging = true;
        let unbound = group("unbound", vec![rule("tcp", "1.0.0.5", Some("1"))]);
        let all = vec![running, staging, global_run, global_stage, unbound];
        let names = |space: &str, lc| {
            let (s, _) = RuleSet::for_container(&all, space, lc);
            s.groups().to_vec()
        };
        assert_eq!(
            names("s1", Lifecycle::Running),
            ["running-s1", "global-run"]
        );
        assert_eq!(
            names("s1", Lifecycle::Staging),
            ["staging-s1", "global-stage"]
        );
        assert_eq!(names("s2", Lifecycle::Running), ["global-run"]);
        assert_eq!(names("", Lifecycle::Staging), ["global-stage"]);
    }

    #[test]
    fn deny_networks_default_and_gateway_exception() {
        let d = DenyNetworks::default();
        assert!(d.contains(ip("169.254.169.254")));
        assert!(d.contains(ip("169.254.0.0")));
        assert!(d.contains(ip("169.254.0.3")));
        assert!(d.contains(ip("169.254.255.255")));
        assert!(!d.contains(ip("169.254.0.1")));
        assert!(!d.contains(ip("169.254.0.2")));
        assert!(!d.contains(ip("169.253.255.255")));
        assert!(!d.contains(ip("169.255.0.0")));
        assert!(!d.contains(ip("8.8.8.8")));
        let d = DenyNetworks::new(&[
            (ip("10.0.0.7"), 8),
            (ip("11.0.0.0"), 8),
            (ip("0.0.0.0"), 32),
        ])
        .unwrap();
        assert!(d.contains(ip("10.255.255.255")) && d.contains(ip("11.0.0.0")));
        assert!(d.contains(ip("0.0.0.0")) && !d.contains(ip("0.0.0.1")));
        assert!(!d.contains(ip("12.0.0.0")) && !d.contains(ip("169.254.169.254")));
        assert_eq!(d.networks().len(), 3);
        // Even an explicit 0.0.0.0/0 leaves the gateway services alone.
        let d = DenyNetworks::new(&[(ip("0.0.0.0"), 0)]).unwrap();
        assert!(!d.contains(ip("169.254.0.1")) && d.contains(ip("169.254.0.3")));
        assert!(d.contains(ip("0.0.0.0")) && d.contains(ip("255.255.255.255")));
        assert!(DenyNetworks::new(&[(ip("10.0.0.0"), 33)]).is_err());
        assert!(!DenyNetworks::new(&[])
            .unwrap()
            .contains(ip("169.254.169.254")));
    }

    #[test]
    fn egress_decision_order() {
        let mut open = group("open", vec![rule("all", "0.0.0.0/0", None)]);
        open.global_running = true;
        let overlay = (ip("10.255.0.0"), 16);
        let e = Egress::build(
            DenyNetworks::default(),
            &[open],
            &[
                (PortId(1), "s", Lifecycle::Running),
                (PortId(2), "s", Lifecycle::Staging),
                (PortId(3), "t", Lifecycle::Running),
            ],
        );
        assert_eq!(e.rule_sets().count(), 3);
        assert!(Arc::ptr_eq(&e.sets[0].2, &e.sets[0].2));
        assert_eq!(
            e.decide(overlay, PortId(1), &tcp("10.255.3.4", 80)),
            EgressVerdict::Overlay,
            "a wide-open ASG does not open the overlay"
        );
        assert_eq!(
            e.decide(overlay, PortId(1), &tcp("169.254.169.254", 80)),
            EgressVerdict::Deny(DenyReason::DenyNetworks)
        );
        assert!(matches!(
            e.decide(overlay, PortId(1), &tcp("169.254.0.2", 53)),
            EgressVerdict::Allow(_)
        ));
        assert!(matches!(
            e.decide(overlay, PortId(1), &tcp("8.8.8.8", 443)),
            EgressVerdict::Allow(RuleMatch {
                group: "open",
                rule: 0,
                log: false
            })
        ));
        assert_eq!(
            e.decide(overlay, PortId(2), &tcp("8.8.8.8", 443)),
            EgressVerdict::Deny(DenyReason::NoRule),
            "the group is global for running only"
        );
        assert_eq!(
            e.decide(overlay, PortId(9), &tcp("8.8.8.8", 443)),
            EgressVerdict::Deny(DenyReason::UnknownPort)
        );
    }

    #[test]
    fn ports_of_one_space_and_lifecycle_share_a_set() {
        let e = Egress::build(
            DenyNetworks::default(),
            &[],
            &[
                (PortId(1), "s", Lifecycle::Running),
                (PortId(2), "s", Lifecycle::Running),
            ],
        );
        assert_eq!(e.rule_sets().count(), 1);
        assert!(std::ptr::eq(
            e.rules(PortId(1)).unwrap(),
            e.rules(PortId(2)).unwrap()
        ));
    }

    // ---- The reference model: CF's rule text evaluated directly, one flow at a time. ----

    fn ref_ip(s: &str) -> Option<u32> {
        s.trim().parse::<Ipv4Addr>().ok().map(u32::from)
    }

    /// Does one destination element cover `dst`? None: the element is not valid text.
    fn ref_dest_part(part: &str, dst: u32) -> Option<bool> {
        let part = part.trim();
        if part.contains('-') {
            let (a, b) = part.split_once('-')?;
            let (a, b) = (ref_ip(a)?, ref_ip(b)?);
            if a > b {
                return None;
            }
            Some(a <= dst && dst <= b)
        } else if part.contains('/') {
            let (a, len) = part.split_once('/')?;
            let a = ref_ip(a)?;
            let len: u32 = len.trim().parse().ok()?;
            if len > 32 {
                return None;
            }
            // The top `len` bits agree.
            Some(len == 0 || (a ^ dst) >> (32 - len) == 0)
        } else {
            Some(ref_ip(part)? == dst)
        }
    }

    fn ref_port(s: &str) -> Option<u32> {
        let n: u32 = s.trim().parse().ok()?;
        (1..=65535).contains(&n).then_some(n)
    }

    fn ref_ports(s: &str, port: u16) -> Option<bool> {
        let port = u32::from(port);
        if s.trim().is_empty() || (s.contains(',') && s.contains('-')) {
            return None;
        }
        if s.contains('-') {
            let (a, b) = s.split_once('-')?;
            let (a, b) = (ref_port(a)?, ref_port(b)?);
            if a > b {
                return None;
            }
            return Some(a <= port && port <= b);
        }
        let mut hit = false;
        for p in s.split(',') {
            hit |= ref_port(p)? == port;
        }
        Some(hit)
    }

    /// Does `r` allow `flow`? None: the rule is not valid text.
    fn ref_rule(r: &RuleText, flow: &Flow) -> Option<bool> {
        let dst = u32::from(flow.dst());
        if r.destination.trim().is_empty() {
            return None;
        }
        let mut dst_hit = false;
        for part in r.destination.split(',') {
            dst_hit |= ref_dest_part(part, dst)?;
        }
        let icmp_field_ok = |v: Option<i64>| matches!(v, Some(-1..=255));
        let proto_hit = match r.protocol.as_str() {
            "tcp" | "udp" => {
                if r.icmp_type.is_some() || r.code.is_some() {
                    return None;
                }
                let port = match (r.protocol.as_str(), flow) {
                    ("tcp", Flow::Tcp { port, .. }) | ("udp", Flow::Udp { port, .. }) => {
                        Some(*port)
                    }
                    _ => None,
                };
                let ports_ok = ref_ports(r.ports.as_deref()?, port.unwrap_or(1))?;
                port.is_some() && ports_ok
            }
            "icmp" => {
                if r.ports.is_some() || !icmp_field_ok(r.icmp_type) || !icmp_field_ok(r.code) {
                    return None;
                }
                match flow {
                    Flow::Icmp {
                        icmp_type, code, ..
                    } => {
                        let (t, c) = (r.icmp_type.unwrap(), r.code.unwrap());
                        t == -1
                            || (t == i64::from(*icmp_type) && (c == -1 || c == i64::from(*code)))
                    }
                    _ => false,
                }
            }
            "all" => {
                if r.ports.is_some() || r.icmp_type.is_some() || r.code.is_some() {
                    return None;
                }
                true
            }
            _ => return None,
        };
        Some(dst_hit && proto_hit)
    }

    /// The first (group, rule) allowing `flow`; groups with any invalid rule do not count.
    fn reference(groups: &[GroupText], flow: &Flow) -> Option<(String, usize, bool)> {
        let mut first = None;
        for g in groups {
            let mut hit = None;
            let mut valid = true;
            for (i, r) in g.rules.iter().enumerate() {
                match ref_rule(r, flow) {
                    None => valid = false,
                    Some(true) if hit.is_none() => hit = Some((g.name.clone(), i, r.log)),
                    Some(_) => {}
                }
            }
            if valid && first.is_none() {
                first = hit;
            }
        }
        first
    }

    fn arb_addr() -> impl Strategy<Value = String> {
        // A small space so that rules and flows meet, with the edges of the address space.
        prop_oneof![
            (0u8..3, 0u8..6).prop_map(|(c, d)| format!("10.0.{c}.{d}")),
            Just("0.0.0.0".to_string()),
            Just("255.255.255.255".to_string()),
            Just("10.0.0.255".to_string()),
        ]
    }

    fn arb_dest_part() -> impl Strategy<Value = String> {
        prop_oneof![
            arb_addr(),
            (arb_addr(), prop_oneof![Just(0u8), 22u8..33]).prop_map(|(a, l)| format!("{a}/{l}")),
            (arb_addr(), arb_addr()).prop_map(|(a, b)| format!("{a}-{b}")),
            (arb_addr(), arb_addr()).prop_map(|(a, b)| format!(" {a} - {b} ")),
        ]
    }

    fn arb_port() -> impl Strategy<Value = u32> {
        prop_oneof![1u32..8, Just(65535u32), Just(0u32)]
    }

    fn arb_ports() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(arb_port(), 1..4).prop_map(|v| v
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")),
            (arb_port(), arb_port()).prop_map(|(a, b)| format!("{a}-{b}")),
        ]
    }

    fn arb_icmp() -> impl Strategy<Value = i64> {
        prop_oneof![Just(-1i64), 0i64..4, Just(8i64), Just(255i64)]
    }

    fn arb_rule() -> impl Strategy<Value = RuleText> {
        let dest = proptest::collection::vec(arb_dest_part(), 1..4).prop_map(|v| v.join(","));
        (
            prop_oneof![
                4 => Just("tcp"),
                4 => Just("udp"),
                4 => Just("icmp"),
                4 => Just("all"),
                1 => Just("Tcp")
            ],
            dest,
            proptest::option::of(arb_ports()),
            proptest::option::of(arb_icmp()),
            proptest::option::of(arb_icmp()),
            any::<bool>(),
            proptest::bool::weighted(0.9),
        )
            .prop_map(|(p, destination, ports, t, c, log, wellformed)| {
                // Mostly well-formed rules for their protocol, sometimes not.
                let mut r = RuleText {
                    protocol: p.into(),
                    destination,
                    ports,
                    icmp_type: t,
                    code: c,
                    log,
                };
                if wellformed {
                    match p {
                        "tcp" | "udp" => {
                            r.icmp_type = None;
                            r.code = None;
                            r.ports.get_or_insert_with(|| "1".into());
                        }
                        "icmp" => {
                            r.ports = None;
                            r.icmp_type.get_or_insert(-1);
                            r.code.get_or_insert(-1);
                        }
                        _ => {
                            r.ports = None;
                            r.icmp_type = None;
                            r.code = None;
                        }
                    }
                }
                r
            })
    }

    fn arb_flow() -> impl Strategy<Value = Flow> {
        let dst = || arb_addr().prop_map(|a| a.parse::<Ipv4Addr>().unwrap());
        prop_oneof![
            (dst(), prop_oneof![0u16..9, Just(65535u16)])
                .prop_map(|(dst, port)| Flow::Tcp { dst, port }),
            (dst(), prop_oneof![0u16..9, Just(65535u16)])
                .prop_map(|(dst, port)| Flow::Udp { dst, port }),
            (
                dst(),
                prop_oneof![0u8..4, Just(8u8), Just(255u8)],
                prop_oneof![0u8..4, Just(255u8)]
            )
                .prop_map(|(dst, icmp_type, code)| Flow::Icmp {
                    dst,
                    icmp_type,
                    code
                }),
            (dst(), prop_oneof![Just(47u8), Just(132u8)])
                .prop_map(|(dst, protocol)| Flow::Other { dst, protocol }),
        ]
    }

    proptest! {
        /// Any text in any field compiles or is reported; it never panics.
        #[test]
        fn arbitrary_text_never_panics(
            protocol in "(tcp|udp|icmp|all|[a-z]{0,5})",
            destination in "[0-9./, -]{0,40}",
            ports in proptest::option::of("[0-9, -]{0,20}"),
            t in proptest::option::of(any::<i64>()),
            c in proptest::option::of(-2i64..300),
            flow in arb_flow(),
        ) {
            let r = RuleText { protocol, destination, ports, icmp_type: t, code: c, log: false };
            let g = group("g", vec![r.clone()]);
            let (set, errors) = RuleSet::compile(std::slice::from_ref(&g));
            let valid = ref_rule(&r, &flow).is_some();
            prop_assert_eq!(errors.is_empty(), valid, "{:?} {:?}", r, errors);
            let got = set.check(&flow).map(|m| (m.group.to_string(), m.rule, m.log));
            prop_assert_eq!(got, reference(&[g], &flow));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn compiled_matches_the_reference(
            groups in proptest::collection::vec(proptest::collection::vec(arb_rule(), 0..6), 0..4),
            flows in proptest::collection::vec(arb_flow(), 1..48),
        ) {
            let groups: Vec<GroupText> = groups
                .into_iter()
                .enumerate()
                .map(|(i, rules)| group(&format!("g{i}"), rules))
                .collect();
            let (set, errors) = RuleSet::compile(&groups);
            // Exactly the groups with an invalid rule are reported.
            let invalid: Vec<&str> = groups
                .iter()
                .filter(|g| g.rules.iter().any(|r| ref_rule(r, &Flow::Other { dst: Ipv4Addr::UNSPECIFIED, protocol: 0 }).is_none()))
                .map(|g| g.name.as_str())
                .collect();
            let reported: Vec<&str> = errors.iter().map(|e| e.group.as_str()).collect();
            prop_assert_eq!(reported, invalid);
            for f in &flows {
                let got = set.check(f).map(|m| (m.group.to_string(), m.rule, m.log));
                prop_assert_eq!(got, reference(&groups, f), "flow {:?}", f);
            }
        }
    }
}
