//! Traces (`tapestry trace`): one synthetic packet through the real pipeline ([`from_port`] or
//! [`from_underlay`] over the current snapshot), each stage's decision written down with the
//! table entry, policy or ASG rule that made it, like `ovs-appctl ofproto/trace`. A trace is a
//! dry run: the connection tracker is read but never changed, nothing is counted, and the
//! fragment table is a scratch one.

use std::cell::RefCell;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use serde::Serialize;

use super::decide::Ctx;
use super::flow::{self, Flow};
use super::frag::FragTable;
use super::{ethernet_ipv4, from_port, from_underlay, Switch, Verdict};
use crate::buf::PacketBuf;
use crate::counters::DropReason;
use crate::stack::{DNS, GATEWAY};
use crate::tables::asg::{DenyReason, EgressVerdict};
use crate::tables::{PortId, Route, Snapshot};
use crate::wire::ethernet::Mac;
use crate::wire::{icmp, ipv4};

/// Where the traced packet enters the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Read from a local port.
    Port(PortId),
    /// A VXLAN-GBP datagram from this underlay address.
    Underlay(SocketAddrV4),
}

/// One stage's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub stage: &'static str,
    pub detail: String,
}

/// What a trace found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub steps: Vec<Step>,
    /// The final verdict: `to_port 3`, `to_underlay 10.0.0.2:4789`, `to_stack`, `to_service 3`
    /// or `drop`.
    pub verdict: String,
    /// The drop reason's name (as in the counters), when dropped.
    pub drop_reason: Option<&'static str>,
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "{:>3}. {:<11} {}", i + 1, s.stage, s.detail)?;
        }
        match self.drop_reason {
            Some(r) => write!(f, "verdict: drop ({r})"),
            None => write!(f, "verdict: {}", self.verdict),
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// ` (app GUID)` when the snapshot knows the tag's app, else nothing.
pub(super) fn app_text(snap: &Snapshot, tag: u16) -> String {
    match snap.app_of_tag(tag) {
        Some(app) => format!(" (app {app})"),
        None if tag == 0 => " (untagged: no policy can admit it)".into(),
        None => String::new(),
    }
}

/// The route table's answer for `dst`.
pub(super) fn route_text(snap: &Snapshot, dst: Ipv4Addr, route: &Route<'_>) -> String {
    match route {
        Route::Local => match snap.port_by_ip(dst) {
            Some(p) => {
                let who = snap
                    .label(p.id)
                    .map(|l| format!(", container {} of app {}", l.handle, l.app_id))
                    .unwrap_or_default();
                format!("{dst} is local port {} (tag {}{who})", p.id.0, p.tag)
            }
            None => format!("{dst} is in this cell's subnet, but no port has it"),
        },
        Route::Vtep => format!("{dst} is this cell's VTEP address"),
        Route::Remote(r) => format!(
            "{dst} is in remote cell {}/{} at {}",
            r.subnet.0, r.subnet.1, r.underlay
        ),
        Route::OverlayNoLease => format!("{dst} is in the overlay, but no cell holds its subnet"),
        Route::Outside => format!("{dst} is outside the overlay: to the cell's local stack"),
    }
}

impl Switch {
    /// Runs the packet in `pkt` through the pipeline as [`Switch::from_port`] or
    /// [`Switch::from_underlay`] would, without changing the connection tracker or counting
    /// anything, and says what each stage decided. Build the packet with
    /// [`super::probe::Probe::build`].
    pub fn trace(&mut self, input: Input, pkt: &mut PacketBuf, now: Instant) -> Trace {
        let snap = self.tables.load();
        let steps = RefCell::new(Vec::new());
        let mut frags = FragTable::default();
        let mut cx = Ctx {
            snap: &snap,
            ct: self.conntrack.pin(),
            counters: &self.counters,
            frags: &mut frags,
            now,
            dry: true,
            trace: Some(&steps),
            events: None,
            // An installed ingress step may keep state (a rate limit): a dry run leaves it out.
            ingress_step: None,
        };
        let r = match input {
            Input::Port(p) => from_port(&mut cx, p, pkt),
            Input::Underlay(src) => from_underlay(&mut cx, src, pkt, &mut None),
        };
        drop(cx);
        let mut steps = steps.into_inner();
        let r = match (r, input) {
            (Ok(Verdict::ToStack), Input::Port(p)) => stack_steps(&snap, p, pkt, &mut steps),
            (r, _) => r,
        };
        match r {
            Ok(v) => Trace {
                steps,
                verdict: match v {
                    Verdict::ToPort(p) => format!("to_port {}", p.0),
                    Verdict::ToUnderlay(a) => format!("to_underlay {a}"),
                    Verdict::ToStack => "to_stack".into(),
                    Verdict::ToService(p) => format!("to_service {} (TLS terminator)", p.0),
                    Verdict::Drop(r) => format!("drop {r}"),
                },
                drop_reason: None,
            },
            Err(reason) => Trace {
                steps,
                verdict: "drop".into(),
                drop_reason: Some(reason.as_str()),
            },
        }
    }
}

/// The local stack's decision for a new flow from `port`: its gateway services, or the egress
/// decision under deny-networks and the container's ASGs ([`Snapshot::egress_decision`], the
/// one the stack makes).
fn stack_steps(
    snap: &Snapshot,
    port: PortId,
    pkt: &PacketBuf,
    steps: &mut Vec<Step>,
) -> Result<Verdict, DropReason> {
    let mut note = |stage, detail: String| steps.push(Step { stage, detail });
    let ip = ethernet_ipv4(pkt.data())?;
    let f = flow::parse(&ip)?;
    if f.dst == GATEWAY || f.dst == DNS {
        note(
            "stack",
            format!(
                "{} is the cell's {} service: answered by the local stack, no ASG applies",
                f.dst,
                if f.dst == DNS { "DNS" } else { "gateway" }
            ),
        );
        return Ok(Verdict::ToStack);
    }
    if f.proto == ipv4::PROTO_ICMP {
        let m = icmp::Packet::new_checked(ip.payload()).map_err(|_| DropReason::MalformedL4)?;
        if m.msg_type() != icmp::ECHO_REQUEST {
            note(
                "stack",
                format!(
                    "ICMP type {} leaves the overlay only as echo requests",
                    m.msg_type()
                ),
            );
            return Err(DropReason::IcmpDenied);
        }
    }
    let Some(asg_flow) = crate::stack::asg_flow(&f) else {
        note(
            "asg",
            format!("IP protocol {} cannot leave the overlay", f.proto),
        );
        return Err(DropReason::ProtocolDenied);
    };
    let what = flow_text(&f);
    match snap.egress_decision(port, &asg_flow) {
        EgressVerdict::Allow(m) => {
            note(
                "asg",
                format!(
                    "new flow {what}: ASG {:?} rule {} allows it{}",
                    m.group,
                    m.rule,
                    if m.log { " (logged)" } else { "" }
                ),
            );
            Ok(Verdict::ToStack)
        }
        EgressVerdict::Deny(DenyReason::DenyNetworks) => {
            let nets: Vec<String> = snap
                .egress()
                .deny_networks()
                .networks()
                .iter()
                .filter(|n| crate::tables::contains(**n, f.dst))
                .map(|n| format!("{}/{}", n.0, n.1))
                .collect();
            note(
                "asg",
                format!(
                    "{} is in the cell's deny-networks ({}): no ASG can open it; answered with ICMP port unreachable",
                    f.dst,
                    nets.join(", ")
                ),
            );
            Err(DropReason::AsgDenyNetworks)
        }
        EgressVerdict::Deny(DenyReason::NoRule) => {
            let groups = snap
                .egress()
                .rules(port)
                .map(|r| r.groups().join(", "))
                .unwrap_or_default();
            note(
                "asg",
                format!(
                    "new flow {what}: no rule of the container's ASGs [{groups}] allows it (default deny); answered with ICMP port unreachable"
                ),
            );
            Err(DropReason::AsgNoRule)
        }
        EgressVerdict::Deny(DenyReason::UnknownPort) => {
            note("asg", format!("port {} has no ASG rule set", port.0));
            Err(DropReason::UnknownPort)
        }
        EgressVerdict::Overlay => Err(DropReason::NoLease),
    }
}

fn flow_text(f: &Flow) -> String {
    match f.proto {
        ipv4::PROTO_TCP => format!("tcp {}:{} -> {}:{}", f.src, f.sport, f.dst, f.dport),
        ipv4::PROTO_UDP => format!("udp {}:{} -> {}:{}", f.src, f.sport, f.dst, f.dport),
        ipv4::PROTO_ICMP => format!("icmp {} -> {}", f.src, f.dst),
        p => format!("protocol {p} {} -> {}", f.src, f.dst),
    }
}
