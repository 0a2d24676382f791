//! The ASG side of the cell's switch tables: the security groups from the feed view, compiled
//! per (space, lifecycle) of the containers attached here, with the cell's deny-networks.

use tapestry_policy::model::SecurityGroup;
use tapestry_switch::{DenyNetworks, Egress, GroupText, PortId, RuleText};

use super::state::{port_id_for, Containers};
use super::CellConfig;

/// A stored group in the switch's terms (its rule text is compiled, not trusted).
pub fn group_text(g: &SecurityGroup) -> GroupText {
    GroupText {
        name: g.name.clone(),
        rules: g
            .rules
            .iter()
            .map(|r| RuleText {
                protocol: r.protocol.clone(),
                destination: r.destination.clone(),
                ports: r.ports.clone(),
                icmp_type: r.icmp_type,
                code: r.code,
                log: r.log,
            })
            .collect(),
        global_running: g.globally_enabled.running,
        global_staging: g.globally_enabled.staging,
        running_spaces: g.running_spaces.clone(),
        staging_spaces: g.staging_spaces.clone(),
    }
}

/// Compiles the groups for every attached container. Groups the switch cannot parse are left
/// out (fail closed) and logged.
pub fn build<'a>(
    config: &CellConfig,
    groups: impl Iterator<Item = &'a SecurityGroup>,
    containers: &Containers,
) -> anyhow::Result<Egress> {
    let prefixes: Vec<_> = config
        .deny_networks
        .iter()
        .map(|n| (n.network(), n.prefix_len()))
        .collect();
    let deny = DenyNetworks::new(&prefixes).map_err(|e| anyhow::anyhow!("--deny-networks: {e}"))?;
    // By name, so "the first rule that allows" is stable.
    let mut groups: Vec<GroupText> = groups.map(group_text).collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let base = config.subnet.network();
    let ports: Vec<(PortId, &str, tapestry_switch::Lifecycle)> = containers
        .containers
        .values()
        .filter(|c| config.subnet.contains(&c.ip))
        .map(|c| {
            (
                PortId(port_id_for(base, c.ip)),
                c.space_id.as_str(),
                c.lifecycle,
            )
        })
        .collect();
    let egress = Egress::build(deny, &groups, &ports);
    for e in egress.errors() {
        tracing::warn!("{e}");
    }
    Ok(egress)
}

/// What `tapestry cell status` shows of a port's ASGs.
pub fn port_status(egress: &Egress, port: PortId) -> serde_json::Value {
    match egress.rules(port) {
        Some(set) => serde_json::json!({
            "rules": set.rule_count(),
            "groups": set.groups(),
        }),
        None => serde_json::json!({ "rules": 0, "groups": [] }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::state::ContainerRecord;
    use std::net::Ipv4Addr;
    use tapestry_policy::model::{GloballyEnabled, Rule};
    use tapestry_switch::{DenyReason, EgressVerdict, Flow, Lifecycle};

    fn config(deny: &str) -> CellConfig {
        CellConfig {
            deny_networks: crate::cell::parse_deny_networks(deny).unwrap(),
            ..CellConfig::with_defaults(
                Ipv4Addr::new(192, 168, 0, 1),
                "10.255.1.0/24".parse().unwrap(),
            )
        }
    }

    fn container(handle: &str, host: u8, space: &str, lifecycle: Lifecycle) -> ContainerRecord {
        ContainerRecord {
            handle: handle.into(),
            app_id: format!("app-{handle}"),
            space_id: space.into(),
            org_id: "o".into(),
            instance_index: 0,
            ip: Ipv4Addr::new(10, 255, 1, host),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            lifecycle,
            network: None,
            port_mappings: vec![],
            app_port: None,
            tls_client_auth: false,
        }
    }

    fn rule(protocol: &str, destination: &str, ports: Option<&str>) -> Rule {
        Rule {
            protocol: protocol.into(),
            destination: destination.into(),
            ports: ports.map(String::from),
            icmp_type: None,
            code: None,
            log: false,
            description: None,
        }
    }

    fn groups() -> Vec<SecurityGroup> {
        vec![
            SecurityGroup {
                name: "public".into(),
                guid: None,
                rules: vec![rule("all", "0.0.0.0/0", None)],
                globally_enabled: GloballyEnabled {
                    running: true,
                    staging: false,
                },
                running_spaces: vec![],
                staging_spaces: vec![],
            },
            SecurityGroup {
                name: "db".into(),
                guid: None,
                rules: vec![
                    rule("tcp", "172.16.0.0/12", Some("5432")),
                    rule("tcp", "172.16.0.9", Some("6379")),
                ],
                globally_enabled: GloballyEnabled::default(),
                running_spaces: vec!["s1".into()],
                staging_spaces: vec![],
            },
            SecurityGroup {
                name: "broken".into(),
                guid: None,
                rules: vec![rule("tcp", "8.8.8.8", Some("65536"))],
                globally_enabled: GloballyEnabled {
                    running: true,
                    staging: true,
                },
                running_spaces: vec![],
                staging_spaces: vec![],
            },
        ]
    }

    #[test]
    fn per_space_and_lifecycle_sets_with_deny_networks() {
        let mut cs = Containers::default();
        for c in [
            container("run-s1", 2, "s1", Lifecycle::Running),
            container("stage-s1", 3, "s1", Lifecycle::Staging),
            container("run-s2", 4, "s2", Lifecycle::Running),
        ] {
            cs.containers.insert(c.handle.clone(), c);
        }
        let cfg = config("169.254.0.0/16,203.0.113.0/24");
        let g = groups();
        let e = build(&cfg, g.iter(), &cs).unwrap();
        assert_eq!(e.errors().len(), 1);
        assert_eq!(e.errors()[0].group, "broken");
        let count = |p: u32| port_status(&e, PortId(p))["rules"].as_u64().unwrap();
        assert_eq!((count(2), count(3), count(4)), (3, 0, 1));
        assert_eq!(
            port_status(&e, PortId(2))["groups"],
            serde_json::json!(["db", "public"])
        );
        assert_eq!(count(99), 0);
        let overlay = (Ipv4Addr::new(10, 255, 0, 0), 16);
        let f = Flow::Tcp {
            dst: Ipv4Addr::new(203, 0, 113, 7),
            port: 443,
        };
        assert_eq!(
            e.decide(overlay, PortId(2), &f),
            EgressVerdict::Deny(DenyReason::DenyNetworks)
        );
        let f = Flow::Tcp {
            dst: Ipv4Addr::new(172, 16, 0, 9),
            port: 6379,
        };
        assert!(
            matches!(e.decide(overlay, PortId(2), &f), EgressVerdict::Allow(m) if m.group == "db" && m.rule == 1)
        );
        assert!(
            matches!(e.decide(overlay, PortId(4), &f), EgressVerdict::Allow(m) if m.group == "public")
        );
        assert_eq!(
            e.decide(overlay, PortId(3), &f),
            EgressVerdict::Deny(DenyReason::NoRule)
        );
        // No deny-networks at all: metadata is reachable where an ASG opens it.
        let e = build(&config(""), g.iter(), &cs).unwrap();
        let md = Flow::Tcp {
            dst: Ipv4Addr::new(169, 254, 169, 254),
            port: 80,
        };
        assert!(matches!(
            e.decide(overlay, PortId(2), &md),
            EgressVerdict::Allow(_)
        ));
    }

    #[test]
    fn the_published_snapshot_carries_the_feed_asgs() {
        use tapestry_policy::feed::View;
        use tapestry_policy::model::{FeedResponse, Snapshot};
        let dir = tempfile::tempdir().unwrap();
        let state = crate::cell::state::StateDir::open(dir.path()).unwrap();
        let mut view = View::new();
        view.apply(FeedResponse {
            version: 7,
            snapshot: Some(Snapshot {
                security_groups: groups(),
                ..Snapshot::default()
            }),
            changes: vec![],
        });
        state.store("view.json", &view).unwrap();
        let cv = crate::cell::view::CellView::load(&state).unwrap();
        let mut cs = Containers::default();
        let c = container("run-s1", 2, "s1", Lifecycle::Running);
        cs.containers.insert(c.handle.clone(), c);
        let c = container("stage-s1", 3, "s1", Lifecycle::Staging);
        cs.containers.insert(c.handle.clone(), c);
        let snap = crate::cell::view::build_snapshot(&config("169.254.0.0/16"), &cv, &cs).unwrap();
        assert_eq!(snap.egress().rules(PortId(2)).unwrap().rule_count(), 3);
        assert_eq!(snap.egress().rules(PortId(3)).unwrap().rule_count(), 0);
        assert_eq!(snap.egress().errors().len(), 1);
        let f = Flow::Udp {
            dst: Ipv4Addr::new(9, 9, 9, 9),
            port: 53,
        };
        assert!(
            matches!(snap.egress_decision(PortId(2), &f), EgressVerdict::Allow(m) if m.group == "public")
        );
        assert_eq!(
            snap.egress_decision(PortId(3), &f),
            EgressVerdict::Deny(DenyReason::NoRule)
        );
        let md = Flow::Tcp {
            dst: Ipv4Addr::new(169, 254, 169, 254),
            port: 80,
        };
        assert_eq!(
            snap.egress_decision(PortId(2), &md),
            EgressVerdict::Deny(DenyReason::DenyNetworks)
        );
    }
}
