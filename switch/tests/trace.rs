//! `tapestry trace` in the switch: synthetic packets through the real pipeline, each stage's
//! decision, and no change to the connection tracker. Plus the new-flow events of the flow log.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use tapestry_switch::pipeline::events::FlowEvent;
use tapestry_switch::pipeline::probe::Probe;
use tapestry_switch::pipeline::trace::{Input, Trace};
use tapestry_switch::wire::tcp::{ACK, SYN};
use tapestry_switch::{
    DenyNetworks, DropReason, Egress, FxHashMap, GroupText, Lifecycle, PacketBuf, PortId,
    PortLabel, Proto, RuleText, Snapshot, Switch,
};

/// Cell 0: a (tag 1), b (tag 2); cell 1: c (tag 3). Tag 1 may reach tag 2 on tcp 8080.
fn world() -> (Net, Ctr, Ctr, Ctr) {
    let mut net = Net::new(2, 1024);
    let a = net.add(0, 2, 1);
    let b = net.add(0, 3, 2);
    let c = net.add(1, 2, 3);
    net.allow(1, 2, Proto::Tcp, 8080, 8080);
    (net, a, b, c)
}

/// Cell 0's current snapshot again, with handles and app names (as the cell's view adds them)
/// and the ASGs given.
fn label(net: &Net, egress: Option<Egress>) {
    let c = &net.cells[0];
    let mut labels = FxHashMap::default();
    for (id, h) in [(2, "ctr-a"), (3, "ctr-b")] {
        labels.insert(
            PortId(id),
            PortLabel {
                handle: h.into(),
                app_id: format!("app-{h}"),
                space_id: "space".into(),
                ..Default::default()
            },
        );
    }
    let mut apps = FxHashMap::default();
    apps.insert(1, "app-ctr-a".to_string());
    apps.insert(2, "app-ctr-b".to_string());
    let mut snap = Snapshot::new(
        c.config,
        c.ports.clone(),
        net.remotes_for(0),
        net.policies.clone(),
    )
    .unwrap()
    .with_labels(labels)
    .with_apps(apps);
    if let Some(e) = egress {
        snap = snap.with_egress(e);
    }
    c.tables.store(snap);
}

/// Traces `expr` at cell 0 and checks the connection tracker is the same before and after.
fn trace(net: &mut Net, expr: &str) -> Trace {
    let c = &net.cells[0];
    let mut sw = Switch::new(c.tables.clone(), c.conntrack.clone(), c.counters.clone());
    let probe = Probe::parse(expr).unwrap();
    let mut buf = PacketBuf::new();
    let input = probe.build(&c.tables.load(), &mut buf).unwrap();
    let (ct_before, counters_before) = (c.conntrack.len(), c.counters.snapshot().totals);
    let t = sw.trace(input, &mut buf, net.now);
    assert_eq!(c.conntrack.len(), ct_before, "a trace records no flow: {t}");
    assert_eq!(
        c.counters.snapshot().totals,
        counters_before,
        "a trace counts nothing"
    );
    t
}

fn detail(t: &Trace, stage: &str) -> String {
    t.steps
        .iter()
        .filter(|s| s.stage == stage)
        .map(|s| s.detail.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
fn allowed_same_cell_names_the_policy_and_records_nothing() {
    let (mut net, a, b, _) = world();
    label(&net, None);
    let t = trace(
        &mut net,
        &format!("tcp {}:40000 -> {}:8080", a.ip(), b.ip()),
    );
    assert_eq!(t.verdict, format!("to_port {}", b.port().0), "{t}");
    assert_eq!(t.drop_reason, None);
    assert!(
        detail(&t, "in_port").contains("tag 1 (app app-ctr-a)"),
        "{t}"
    );
    assert!(
        detail(&t, "anti_spoof").contains("MAC and IP are the port's"),
        "{t}"
    );
    assert!(
        detail(&t, "route").contains("local port 3 (tag 2, container ctr-b of app app-ctr-b)"),
        "{t}"
    );
    assert!(
        detail(&t, "ingress")
            .contains("policy tag 1 -> tag 2 tcp ports 8080-8080 admits port 8080"),
        "{t}"
    );
    assert!(
        detail(&t, "conntrack").contains("dry run, not recorded"),
        "{t}"
    );
    assert_eq!(net.cells[0].conntrack.len(), 0);
    // The packet the trace built is a real one: sent, it is admitted and recorded.
    let out = net.send(&a, &tcp_frame(&a, b.ip(), 40000, 8080, SYN));
    assert!(out.delivered(), "{out:?}");
    assert_eq!(net.cells[0].conntrack.len(), 2);
    // Now the same 5-tuple is an established flow, and the reply a reply.
    let t = trace(
        &mut net,
        &format!("tcp {}:40000 -> {}:8080 flags ack", a.ip(), b.ip()),
    );
    assert!(
        detail(&t, "ingress").contains("established flow admitted for tag 1"),
        "{t}"
    );
    let t = trace(
        &mut net,
        &format!("tcp {}:8080 -> {}:40000 flags syn,ack", b.ip(), a.ip()),
    );
    assert_eq!(t.verdict, format!("to_port {}", a.port().0), "{t}");
    assert!(detail(&t, "ingress").contains("reply on tcp"), "{t}");
    assert!(
        detail(&t, "egress").contains("admitted at this port's ingress"),
        "{t}"
    );
}

#[test]
fn denied_and_unrouted_say_why() {
    let (mut net, a, b, _) = world();
    let t = trace(
        &mut net,
        &format!("tcp {}:40000 -> {}:9090", a.ip(), b.ip()),
    );
    assert_eq!(t.drop_reason, Some("policy_denied"), "{t}");
    assert!(
        detail(&t, "ingress")
            .contains("no policy lets tag 1 reach tag 2 on tcp port 9090 (default deny)"),
        "{t}"
    );
    let t = trace(
        &mut net,
        &format!("udp {}:40000 -> {}:8080", b.ip(), a.ip()),
    );
    assert_eq!(t.drop_reason, Some("policy_denied"), "{t}");
    // Nobody holds 10.255.99.0/24; nobody has .77 in cell 0's subnet.
    let t = trace(&mut net, &format!("tcp {}:1 -> 10.255.99.1:80", a.ip()));
    assert_eq!(t.drop_reason, Some("no_lease"), "{t}");
    assert!(
        detail(&t, "route").contains("no cell holds its subnet"),
        "{t}"
    );
    let t = trace(&mut net, &format!("tcp {}:1 -> 10.255.1.77:80", a.ip()));
    assert_eq!(t.drop_reason, Some("no_such_port"), "{t}");
    assert!(detail(&t, "route").contains("no port has it"), "{t}");
    // ICMP echo between containers is not a policy protocol.
    let t = trace(&mut net, &format!("icmp {} -> {}", a.ip(), b.ip()));
    assert_eq!(t.drop_reason, Some("icmp_denied"), "{t}");
    assert_eq!(net.cells[0].conntrack.len(), 0);
}

#[test]
fn to_another_cell_shows_the_encapsulation() {
    let (mut net, a, _, c) = world();
    let t = trace(&mut net, &format!("udp {}:5000 -> {}:53", a.ip(), c.ip()));
    assert_eq!(
        t.verdict,
        format!("to_underlay {}", SocketAddrV4::new(underlay(1), 4789)),
        "{t}"
    );
    assert!(
        detail(&t, "route").contains("remote cell 10.255.2.0/24"),
        "{t}"
    );
    assert!(
        detail(&t, "egress").contains("new flow originated by port 2"),
        "{t}"
    );
    assert!(detail(&t, "encap").contains("group policy ID 1"), "{t}");
}

#[test]
fn from_the_underlay_spoofed_and_unknown_vtep() {
    let (mut net, a, b, c) = world();
    label(&net, None);
    let t = trace(
        &mut net,
        &format!("from underlay tag 3 tcp {}:5000 -> {}:8080", c.ip(), b.ip()),
    );
    assert_eq!(t.drop_reason, Some("policy_denied"), "{t}");
    assert!(
        detail(&t, "underlay").contains("from VTEP 192.168.0.2:4789"),
        "{t}"
    );
    assert!(detail(&t, "decap").contains("group policy ID 3"), "{t}");
    net.allow(3, 2, Proto::Tcp, 8000, 8100);
    let t = trace(
        &mut net,
        &format!("from underlay tag 3 tcp {}:5000 -> {}:8080", c.ip(), b.ip()),
    );
    assert_eq!(t.verdict, format!("to_port {}", b.port().0), "{t}");
    assert!(
        detail(&t, "ingress").contains("policy tag 3 -> tag 2 tcp ports 8000-8100"),
        "{t}"
    );
    // An underlay address that holds no lease.
    let t = trace(
        &mut net,
        &format!(
            "from underlay vtep 192.0.2.9 tag 3 tcp {}:5000 -> {}:8080",
            c.ip(),
            b.ip()
        ),
    );
    assert_eq!(t.drop_reason, Some("unknown_vtep"), "{t}");
    assert!(
        detail(&t, "underlay").contains("192.0.2.9 holds no lease"),
        "{t}"
    );
    // Cell 1 claiming a source in cell 0's subnet.
    let t = trace(
        &mut net,
        &format!(
            "from underlay vtep 192.168.0.2 tag 3 tcp 10.255.3.9:5000 -> {}:8080",
            b.ip()
        ),
    );
    assert_eq!(t.drop_reason, Some("spoofed_remote_ip"), "{t}");
    // A local container using another's address.
    label(&net, None);
    let t = trace(
        &mut net,
        &format!("from port ctr-a tcp {}:1 -> {}:8080", b.ip(), a.ip()),
    );
    assert_eq!(t.drop_reason, Some("spoofed_ip"), "{t}");
    assert!(
        detail(&t, "anti_spoof").contains(&format!(
            "source IP {} is not the port's {}",
            b.ip(),
            a.ip()
        )),
        "{t}"
    );
    assert_eq!(net.cells[0].conntrack.len(), 0);
}

#[test]
fn leaving_the_overlay_shows_the_asg_decision() {
    let (mut net, a, b, _) = world();
    let group = GroupText {
        name: "dns".into(),
        rules: vec![RuleText {
            protocol: "udp".into(),
            destination: "198.18.0.0/24".into(),
            ports: Some("53".into()),
            ..Default::default()
        }],
        global_running: true,
        ..Default::default()
    };
    let deny = DenyNetworks::new(&[(Ipv4Addr::new(169, 254, 0, 0), 16)]).unwrap();
    let ports = [
        (a.port(), "space", Lifecycle::Running),
        (b.port(), "space", Lifecycle::Running),
    ];
    label(&net, Some(Egress::build(deny, &[group], &ports)));
    let t = trace(&mut net, &format!("udp {}:5000 -> 198.18.0.1:53", a.ip()));
    assert_eq!(t.verdict, "to_stack", "{t}");
    assert!(
        detail(&t, "asg").contains("ASG \"dns\" rule 0 allows it"),
        "{t}"
    );
    let t = trace(&mut net, &format!("tcp {}:5000 -> 198.18.0.1:443", a.ip()));
    assert_eq!(t.drop_reason, Some("asg_no_rule"), "{t}");
    assert!(
        detail(&t, "asg").contains("no rule of the container's ASGs [dns] allows it"),
        "{t}"
    );
    let t = trace(
        &mut net,
        &format!("udp {}:5000 -> 169.254.169.254:53", a.ip()),
    );
    assert_eq!(t.drop_reason, Some("asg_deny_networks"), "{t}");
    assert!(
        detail(&t, "asg").contains("deny-networks (169.254.0.0/16)"),
        "{t}"
    );
    let t = trace(&mut net, &format!("udp {}:5000 -> 169.254.0.2:53", a.ip()));
    assert_eq!(t.verdict, "to_stack", "{t}");
    assert!(detail(&t, "stack").contains("DNS service"), "{t}");
}

#[test]
fn probes_the_cell_cannot_send_are_refused() {
    let (net, _, _, _) = world();
    let snap = net.cells[0].tables.load();
    let mut buf = PacketBuf::new();
    let e = Probe::parse("tcp 10.255.1.99:1 -> 10.255.1.2:2")
        .unwrap()
        .build(&snap, &mut buf);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("10.255.1.99 is not a container on this cell"));
    let e = Probe::parse("from underlay tcp 10.255.77.1:1 -> 10.255.1.2:2")
        .unwrap()
        .build(&snap, &mut buf);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("no remote cell holds source 10.255.77.1"));
    let e = Probe::parse("from port nobody tcp 10.255.1.2:1 -> 10.255.1.3:2")
        .unwrap()
        .build(&snap, &mut buf);
    assert!(e
        .unwrap_err()
        .to_string()
        .contains("no container with handle \"nobody\""));
    let input = Probe::parse("from underlay tag 3 udp 10.255.2.2:1 -> 10.255.1.2:2")
        .unwrap()
        .build(&snap, &mut buf)
        .unwrap();
    assert_eq!(input, Input::Underlay(SocketAddrV4::new(underlay(1), 4789)));
}

#[test]
fn new_flows_are_reported_only_while_the_flow_log_is_on() {
    let (mut net, a, b, _) = world();
    let mut events: Vec<FlowEvent> = Vec::new();
    // Off: nothing collected.
    net.send(&a, &tcp_frame(&a, b.ip(), 40000, 8080, SYN));
    assert_eq!(net.cells[0].switch.take_flow_events(&mut events), 0);
    assert!(events.is_empty());
    net.cells[0].switch.set_flow_log(true);
    assert!(net
        .send(&a, &tcp_frame(&a, b.ip(), 40001, 8080, SYN))
        .delivered());
    // A later packet of the same flow, and the reply, are not new flows.
    net.send(&a, &tcp_frame(&a, b.ip(), 40001, 8080, ACK));
    net.send(&b, &tcp_frame(&b, a.ip(), 8080, 40001, SYN | ACK));
    assert_eq!(
        net.send(&a, &tcp_frame(&a, b.ip(), 40002, 9090, SYN))
            .reason(),
        Some(DropReason::PolicyDenied)
    );
    assert_eq!(net.cells[0].switch.take_flow_events(&mut events), 0);
    let base = FlowEvent {
        port: b.port(),
        src_tag: 1,
        dst_tag: 2,
        proto: 6,
        src: a.ip(),
        dst: b.ip(),
        sport: 40001,
        dport: 8080,
        denied: None,
    };
    assert_eq!(
        events,
        vec![
            base,
            FlowEvent {
                sport: 40002,
                dport: 9090,
                denied: Some(DropReason::PolicyDenied),
                ..base
            }
        ]
    );
    events.clear();
    net.cells[0].switch.set_flow_log(false);
    net.send(&a, &tcp_frame(&a, b.ip(), 40003, 8080, SYN));
    net.cells[0].switch.take_flow_events(&mut events);
    assert!(events.is_empty());
}
