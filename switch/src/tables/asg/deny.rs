//! The deny-networks no ASG can open, and the egress verdict.
use super::*;

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
        if super::super::contains(overlay, dst) {
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
