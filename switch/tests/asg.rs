//! Egress decisions through the switch's published snapshot: what the local stack will ask for
//! a container's flow to a destination outside the overlay.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tapestry_switch::{
    CellConfig, DenyNetworks, DenyReason, Egress, EgressVerdict, Flow, GroupText, Lifecycle,
    PortConfig, PortId, RuleText, Snapshot, Tables,
};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn cfg() -> CellConfig {
    CellConfig {
        underlay_ip: ip("192.168.0.1"),
        vtep_port: 4789,
        vni: 1,
        overlay_network: (ip("10.255.0.0"), 16),
        subnet: (ip("10.255.1.0"), 24),
    }
}

fn port(n: u8) -> PortConfig {
    let ip = Ipv4Addr::new(10, 255, 1, n);
    PortConfig {
        id: PortId(n as u32),
        mac: tapestry_switch::tables::container_mac(ip),
        ip,
        tag: n as u16,
    }
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

fn snapshot(groups: &[GroupText], deny: DenyNetworks) -> Snapshot {
    let ports = vec![port(2), port(3), port(4)];
    let egress = Egress::build(
        deny,
        groups,
        &[
            (PortId(2), "space-a", Lifecycle::Running),
            (PortId(3), "space-a", Lifecycle::Staging),
            (PortId(4), "space-b", Lifecycle::Running),
        ],
    );
    Snapshot::new(cfg(), ports, vec![], vec![])
        .unwrap()
        .with_egress(egress)
}

fn tcp(dst: &str, port: u16) -> Flow {
    Flow::Tcp { dst: ip(dst), port }
}

#[test]
fn a_snapshot_without_egress_denies_everything_outside() {
    let s = Snapshot::new(cfg(), vec![port(2)], vec![], vec![]).unwrap();
    assert_eq!(
        s.egress_decision(PortId(2), &tcp("8.8.8.8", 443)),
        EgressVerdict::Deny(DenyReason::UnknownPort)
    );
    assert_eq!(
        s.egress_decision(PortId(2), &tcp("169.254.169.254", 80)),
        EgressVerdict::Deny(DenyReason::DenyNetworks)
    );
    assert_eq!(
        s.egress_decision(PortId(2), &tcp("10.255.1.3", 80)),
        EgressVerdict::Overlay
    );
}

#[test]
fn space_lifecycle_and_global_groups_through_the_snapshot() {
    let mut db = GroupText {
        name: "db".into(),
        rules: vec![rule("tcp", "172.16.0.0/12", Some("5432"), true)],
        running_spaces: vec!["space-a".into()],
        ..GroupText::default()
    };
    let mut dns = GroupText {
        name: "dns".into(),
        rules: vec![rule("udp", "0.0.0.0/0", Some("53"), false)],
        global_running: true,
        global_staging: true,
        ..GroupText::default()
    };
    let mut build = GroupText {
        name: "build".into(),
        rules: vec![rule("tcp", "0.0.0.0-9.255.255.255", Some("443"), false)],
        staging_spaces: vec!["space-a".into()],
        ..GroupText::default()
    };
    let tables = Tables::new(snapshot(
        &[build.clone(), db.clone(), dns.clone()],
        DenyNetworks::default(),
    ));
    let s = tables.load_full();
    let pg = tcp("172.20.1.1", 5432);
    let dns_q = Flow::Udp {
        dst: ip("1.1.1.1"),
        port: 53,
    };
    match s.egress_decision(PortId(2), &pg) {
        EgressVerdict::Allow(m) => assert_eq!((m.group, m.rule, m.log), ("db", 0, true)),
        v => panic!("{v:?}"),
    }
    assert_eq!(
        s.egress_decision(PortId(3), &pg),
        EgressVerdict::Deny(DenyReason::NoRule),
        "db is bound for running only"
    );
    assert_eq!(
        s.egress_decision(PortId(4), &pg),
        EgressVerdict::Deny(DenyReason::NoRule),
        "db is bound to space-a only"
    );
    for p in [2, 3, 4] {
        assert!(matches!(
            s.egress_decision(PortId(p), &dns_q),
            EgressVerdict::Allow(m) if m.group == "dns"
        ));
    }
    assert!(matches!(
        s.egress_decision(PortId(3), &tcp("9.1.1.1", 443)),
        EgressVerdict::Allow(m) if m.group == "build"
    ));
    assert_eq!(
        s.egress_decision(PortId(2), &tcp("9.1.1.1", 443)),
        EgressVerdict::Deny(DenyReason::NoRule)
    );
    assert_eq!(s.egress().rules(PortId(2)).unwrap().rule_count(), 2);
    assert_eq!(s.egress().rules(PortId(3)).unwrap().rule_count(), 2);
    assert_eq!(s.egress().rules(PortId(4)).unwrap().rule_count(), 1);

    // Unbinding and rebinding: a new snapshot, swapped in, decides differently at once.
    db.running_spaces.clear();
    dns.global_staging = false;
    build.staging_spaces.push("space-b".into());
    tables.store(snapshot(&[build, db, dns], DenyNetworks::default()));
    let s2 = tables.load_full();
    assert_eq!(
        s2.egress_decision(PortId(2), &pg),
        EgressVerdict::Deny(DenyReason::NoRule)
    );
    assert_eq!(
        s2.egress_decision(PortId(3), &dns_q),
        EgressVerdict::Deny(DenyReason::NoRule)
    );
    // The old snapshot a reader may still hold is unchanged.
    assert!(matches!(
        s.egress_decision(PortId(2), &pg),
        EgressVerdict::Allow(_)
    ));
    assert!(Arc::strong_count(&s) >= 1);
}

#[test]
fn deny_networks_beat_a_wide_open_asg_which_never_opens_the_overlay() {
    let open = GroupText {
        name: "open".into(),
        rules: vec![rule("all", "0.0.0.0/0", None, false)],
        global_running: true,
        ..GroupText::default()
    };
    let deny = DenyNetworks::new(&[(ip("169.254.0.0"), 16), (ip("100.64.0.0"), 10)]).unwrap();
    let s = snapshot(&[open], deny);
    for dst in ["10.255.1.3", "10.255.200.9", "10.255.0.0", "10.255.255.255"] {
        assert_eq!(
            s.egress_decision(PortId(2), &tcp(dst, 8080)),
            EgressVerdict::Overlay,
            "{dst}"
        );
    }
    for dst in ["169.254.169.254", "100.64.0.1", "100.127.255.255"] {
        assert_eq!(
            s.egress_decision(PortId(2), &tcp(dst, 80)),
            EgressVerdict::Deny(DenyReason::DenyNetworks),
            "{dst}"
        );
    }
    for dst in ["169.254.0.2", "100.128.0.0", "10.254.255.255", "8.8.8.8"] {
        assert!(
            matches!(
                s.egress_decision(PortId(2), &tcp(dst, 80)),
                EgressVerdict::Allow(_)
            ),
            "{dst}"
        );
    }
}

#[test]
fn a_group_with_bad_text_is_reported_and_not_applied() {
    let bad = GroupText {
        name: "bad".into(),
        rules: vec![
            rule("tcp", "8.8.8.8", Some("443"), false),
            rule("tcp", "8.8.8.8", Some("http"), false),
        ],
        global_running: true,
        ..GroupText::default()
    };
    let s = snapshot(&[bad], DenyNetworks::default());
    let errors = s.egress().errors();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].rule, errors[0].field), (1, "ports"));
    assert_eq!(
        s.egress_decision(PortId(2), &tcp("8.8.8.8", 443)),
        EgressVerdict::Deny(DenyReason::NoRule)
    );
}
