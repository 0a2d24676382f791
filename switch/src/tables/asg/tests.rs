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
            (PortId(4), "s", Lifecycle::Running),
        ],
    );
    // One compiled set per (space, lifecycle), shared by the ports that have it.
    assert_eq!(e.rule_sets().count(), 3);
    assert!(std::ptr::eq(
        e.rules(PortId(1)).unwrap(),
        e.rules(PortId(4)).unwrap()
    ));
    assert!(!std::ptr::eq(
        e.rules(PortId(1)).unwrap(),
        e.rules(PortId(3)).unwrap()
    ));
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
                ("tcp", Flow::Tcp { port, .. }) | ("udp", Flow::Udp { port, .. }) => Some(*port),
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
                    t == -1 || (t == i64::from(*icmp_type) && (c == -1 || c == i64::from(*code)))
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
