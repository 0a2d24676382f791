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

mod deny;
mod parse;
mod plane;

pub use deny::*;
use parse::{parse_group, ParsedRule};
use plane::{Item, Plane};

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

#[cfg(test)]
mod tests;
