//! The per-packet policy and tracking decisions.
//!
//! Egress (a local port P sends): a reply on a flow admitted at P's ingress is re-checked when
//! the policy generation changed (revocation); otherwise the flow is recorded as originated by P.
//! Ingress (to a local port Q from source tag T): a reply of a flow Q originated is allowed; a
//! packet of a flow admitted earlier is allowed (re-checked after a policy change); a new flow
//! needs a policy (T, Q.tag, proto, dport) and is recorded. Default deny.

use std::cell::RefCell;
use std::time::Instant;

use super::events::{FlowEvent, FlowEvents};
use super::extension::{IngressStep, NewFlow};
use super::flow::{icmp_embedded, Flow, Frag};
use super::frag::{FragKey, FragTable};
use super::trace::Step;
use crate::counters::{Counters, DropReason, PolicyHit};
use crate::tables::conntrack::{Dir, Entry, FlowKey, Origin, Pinned, State};
use crate::tables::{Port, Proto, Snapshot};
use crate::wire::{icmp, ipv4, tcp};

/// Everything one decision needs.
pub struct Ctx<'a> {
    pub snap: &'a Snapshot,
    pub ct: Pinned<'a>,
    pub counters: &'a Counters,
    pub frags: &'a mut FragTable,
    pub now: Instant,
    /// A replaced step of the ingress decision for new flows, if any.
    pub ingress_step: Option<&'a dyn IngressStep>,
    /// A dry run (`tapestry trace`): the connection tracker is read, never changed.
    pub dry: bool,
    /// Where a trace writes each stage's decision.
    pub trace: Option<&'a RefCell<Vec<Step>>>,
    /// Where new flows admitted or denied at ingress are reported (the flow log), when on.
    pub events: Option<&'a mut FlowEvents>,
}

fn key(zone: &Port, f: &Flow) -> FlowKey {
    FlowKey {
        zone: zone.id.0,
        proto: f.proto,
        src: f.src,
        dst: f.dst,
        sport: f.sport,
        dport: f.dport,
    }
}

enum Found {
    Allowed,
    Revoked,
    Other,
    Untracked,
}

/// A flow's protocol and ports, as a trace shows them.
fn flow_text(k: &FlowKey) -> String {
    let proto = match k.proto {
        ipv4::PROTO_TCP => "tcp",
        ipv4::PROTO_UDP => "udp",
        ipv4::PROTO_ICMP => "icmp",
        _ => "ip",
    };
    format!("{proto} {}:{} -> {}:{}", k.src, k.sport, k.dst, k.dport)
}

impl Ctx<'_> {
    /// Writes down a stage's decision when tracing (the text is only made then).
    pub fn note(&self, stage: &'static str, detail: impl FnOnce() -> String) {
        if let Some(t) = self.trace {
            t.borrow_mut().push(Step {
                stage,
                detail: detail(),
            });
        }
    }

    /// Reports a new flow to the flow log, when it is on.
    fn event(&mut self, dst: &Port, src_tag: u16, f: &Flow, denied: Option<DropReason>) {
        if let Some(ev) = self.events.as_deref_mut() {
            ev.push(FlowEvent {
                port: dst.id,
                src_tag,
                dst_tag: dst.tag,
                proto: f.proto,
                src: f.src,
                dst: f.dst,
                sport: f.sport,
                dport: f.dport,
                denied,
            });
        }
    }

    fn record(&mut self, k: FlowKey, origin: Origin, tcp_flags: u8) -> Result<(), DropReason> {
        if self.dry {
            self.note("conntrack", || {
                format!(
                    "new flow {} would be recorded in zone {} ({}); dry run, not recorded",
                    flow_text(&k),
                    k.zone,
                    match origin {
                        Origin::Egress => "originated by the port".to_string(),
                        Origin::Ingress { src_tag } => format!("admitted for tag {src_tag}"),
                    }
                )
            });
            return Ok(());
        }
        let state = State::initial(k.proto, tcp_flags);
        match self
            .ct
            .insert(k, origin, self.snap.generation(), state, self.now)
        {
            Ok(evicted) => {
                self.counters.conntrack_evicted(evicted);
                self.counters.set_conntrack_entries(self.ct.len());
                Ok(())
            }
            Err(_) => Err(DropReason::ConntrackFull),
        }
    }

    /// Re-checks a flow admitted at ingress to `dst` for `src_tag` when the tables changed.
    fn still_allowed(
        &self,
        entry: &Entry,
        entry_tag: u16,
        src_tag: u16,
        dst: &Port,
        k: &FlowKey,
    ) -> bool {
        if !entry.is_revoked()
            && entry.generation() == self.snap.generation()
            && entry_tag == src_tag
        {
            return true;
        }
        let Some(proto) = Proto::from_ip_proto(k.proto) else {
            return false;
        };
        self.snap.policy_allows(src_tag, dst.tag, proto, k.dport)
    }

    /// Tracking for a packet leaving local port `src`.
    pub fn egress(&mut self, src: &Port, f: &Flow) -> Result<(), DropReason> {
        if f.frag == Frag::Later || Proto::from_ip_proto(f.proto).is_none() {
            return Ok(());
        }
        let k = key(src, f);
        let rev = k.reversed();
        let (ct, now, gen, dry) = (&self.ct, self.now, self.snap.generation(), self.dry);
        let found = ct.with(&rev, now, |e| match e.origin() {
            Origin::Ingress { src_tag } => {
                if self.still_allowed(e, src_tag, src_tag, src, &rev) {
                    if !dry {
                        ct.reinstate(e);
                        e.set_generation(gen);
                        ct.observe(e, Dir::Reply, f.tcp_flags, now);
                    }
                    Found::Allowed
                } else {
                    // Keep a tombstone while the port keeps answering, so its replies cannot
                    // re-open the flow as one it originated.
                    if !dry {
                        ct.revoke(e, now);
                    }
                    Found::Revoked
                }
            }
            Origin::Egress => Found::Other,
        });
        match found {
            Some(Found::Allowed) => {
                self.note("egress", || {
                    format!(
                        "reply on {} admitted at this port's ingress (conntrack)",
                        flow_text(&rev)
                    )
                });
                return Ok(());
            }
            Some(Found::Revoked) => {
                self.note("egress", || {
                    format!(
                        "reply on {}: the policy that admitted it is gone (revoked)",
                        flow_text(&rev)
                    )
                });
                return Err(DropReason::PolicyRevoked);
            }
            _ => {}
        }
        if ct
            .with(&k, now, |e| {
                if !dry {
                    ct.observe(e, Dir::Original, f.tcp_flags, now)
                }
            })
            .is_some()
        {
            self.note("egress", || {
                format!(
                    "{} is tracked, originated by port {}",
                    flow_text(&k),
                    src.id.0
                )
            });
            return Ok(());
        }
        // Any segment but a RST opens (or, after a restart, picks up) a flow from the port.
        // Replies on a revoked flow never get here: its tombstone answered above.
        if f.proto == ipv4::PROTO_TCP && f.tcp_flags & tcp::RST != 0 {
            self.note("egress", || {
                "an untracked RST passes without a record".into()
            });
            return Ok(());
        }
        self.note("egress", || {
            format!("new flow originated by port {}", src.id.0)
        });
        self.record(k, Origin::Egress, f.tcp_flags)
    }

    /// Ingress policy for a packet to local port `dst` from a source with `src_tag`.
    /// `l4` is the IP payload.
    pub fn ingress(
        &mut self,
        dst: &Port,
        src_tag: u16,
        f: &Flow,
        l4: &[u8],
    ) -> Result<(), DropReason> {
        let fk = FragKey {
            zone: dst.id.0,
            src: f.src,
            dst: f.dst,
            proto: f.proto,
            ident: f.ident,
        };
        if f.frag == Frag::Later {
            let admitted = self.frags.admitted(&fk, self.now);
            self.note("ingress", || {
                format!(
                    "later fragment (ident {}): first fragment {}",
                    f.ident,
                    if admitted { "admitted" } else { "not seen" }
                )
            });
            return if admitted {
                Ok(())
            } else {
                Err(DropReason::Fragment)
            };
        }
        match f.proto {
            ipv4::PROTO_TCP | ipv4::PROTO_UDP => self.ingress_tracked(dst, src_tag, f)?,
            ipv4::PROTO_ICMP => self.ingress_icmp(dst, l4)?,
            p => {
                self.note("ingress", || {
                    format!("IP protocol {p}: only TCP, UDP and ICMP errors are admitted")
                });
                return Err(DropReason::ProtocolDenied);
            }
        }
        if f.frag == Frag::First {
            self.frags.record(fk, self.now);
        }
        Ok(())
    }

    fn ingress_tracked(&mut self, dst: &Port, src_tag: u16, f: &Flow) -> Result<(), DropReason> {
        let k = key(dst, f);
        let (ct, now, gen, dry) = (&self.ct, self.now, self.snap.generation(), self.dry);
        // A reply on a flow `dst` originated.
        if ct
            .with(&k.reversed(), now, |e| {
                let ours = e.origin() == Origin::Egress;
                if ours && !dry {
                    ct.observe(e, Dir::Reply, f.tcp_flags, now);
                }
                ours
            })
            .unwrap_or(false)
        {
            self.note("ingress", || {
                format!(
                    "reply on {} that port {} originated (conntrack)",
                    flow_text(&k.reversed()),
                    dst.id.0
                )
            });
            return Ok(());
        }
        // A later packet of a flow admitted here before.
        let found = ct.with(&k, now, |e| match e.origin() {
            Origin::Ingress { src_tag: t } => {
                if self.still_allowed(e, t, src_tag, dst, &k) {
                    if !dry {
                        if t == src_tag {
                            ct.reinstate(e);
                            e.set_generation(gen);
                        }
                        ct.observe(e, Dir::Original, f.tcp_flags, now);
                    }
                    Found::Allowed
                } else if t != src_tag {
                    // Another tag on the same 5-tuple: deny it, leave the flow alone.
                    Found::Other
                } else {
                    if !e.is_revoked() && !dry {
                        ct.revoke(e, now);
                    }
                    Found::Revoked
                }
            }
            Origin::Egress => Found::Untracked,
        });
        match found {
            Some(Found::Allowed) => {
                self.note("ingress", || {
                    format!(
                        "{} is an established flow admitted for tag {src_tag} (conntrack)",
                        flow_text(&k)
                    )
                });
                return Ok(());
            }
            Some(Found::Revoked) => {
                self.note("ingress", || {
                    format!(
                        "{}: the policy that admitted it is gone (revoked)",
                        flow_text(&k)
                    )
                });
                return Err(DropReason::PolicyRevoked);
            }
            Some(Found::Other) => {
                self.note("ingress", || {
                    format!(
                        "{} is tracked for another source tag; tag {src_tag} is denied",
                        flow_text(&k)
                    )
                });
                return Err(DropReason::PolicyDenied);
            }
            Some(Found::Untracked) | None => {}
        }
        let proto = Proto::from_ip_proto(f.proto).ok_or(DropReason::ProtocolDenied)?;
        let proto_name = if proto == Proto::Tcp { "tcp" } else { "udp" };
        let matched = self.snap.policy_match(src_tag, dst.tag, proto, f.dport);
        let policy = if matched.is_some() {
            Ok(())
        } else {
            Err(DropReason::PolicyDenied)
        };
        let mut verdict = policy;
        if let Some(step) = self.ingress_step {
            let flow = NewFlow {
                src_tag,
                dst_tag: dst.tag,
                dst_port: dst.id,
                proto,
                src: f.src,
                dst: f.dst,
                sport: f.sport,
                dport: f.dport,
                now: self.now,
            };
            verdict = step.new_flow(&flow, policy);
        }
        if let Err(r) = verdict {
            self.note("ingress", || match matched {
                None if r == DropReason::PolicyDenied => format!(
                    "new flow: no policy lets tag {src_tag} reach tag {} on {proto_name} port {} (default deny)",
                    dst.tag, f.dport
                ),
                _ => format!(
                    "new flow: the installed ingress step refused it ({}; the policy alone would {})",
                    r.as_str(),
                    if matched.is_some() { "admit it" } else { "deny it" }
                ),
            });
            self.event(dst, src_tag, f, Some(r));
            return Err(r);
        }
        self.note("ingress", || match matched {
            Some((start, end)) => format!(
                "new flow: policy tag {src_tag} -> tag {} {proto_name} ports {start}-{end} admits port {}",
                dst.tag, f.dport
            ),
            None => format!(
                "new flow: admitted by the installed ingress step (no policy lets tag {src_tag} reach tag {} on {proto_name} port {})",
                dst.tag, f.dport
            ),
        });
        self.record(k, Origin::Ingress { src_tag }, f.tcp_flags)?;
        if let (false, Some((start, end))) = (self.dry, matched) {
            self.counters.policy_hit(PolicyHit {
                src_tag,
                dst_tag: dst.tag,
                protocol: proto_name,
                start,
                end,
            });
        }
        self.event(dst, src_tag, f, None);
        Ok(())
    }

    /// ICMP errors about a tracked flow of `dst` are admitted (related); everything else is not.
    fn ingress_icmp(&mut self, dst: &Port, l4: &[u8]) -> Result<(), DropReason> {
        let p = icmp::Packet::new_checked(l4).map_err(|_| DropReason::MalformedL4)?;
        if !p.is_error() {
            self.note("ingress", || {
                format!(
                    "ICMP type {} is not an error message: only errors about tracked flows are admitted",
                    p.msg_type()
                )
            });
            return Err(DropReason::IcmpDenied);
        }
        let Some((proto, src, edst, sport, dport)) = icmp_embedded(p.data()) else {
            return Err(DropReason::MalformedL4);
        };
        if src != dst.ip || Proto::from_ip_proto(proto).is_none() {
            return Err(DropReason::IcmpUnrelated);
        }
        let k = FlowKey {
            zone: dst.id.0,
            proto,
            src,
            dst: edst,
            sport,
            dport,
        };
        let tracked = self.ct.with(&k, self.now, |_| ()).is_some()
            || self.ct.with(&k.reversed(), self.now, |_| ()).is_some();
        self.note("ingress", || {
            format!(
                "ICMP error about {}: {}",
                flow_text(&k),
                if tracked {
                    "a tracked flow (related)"
                } else {
                    "no tracked flow"
                }
            )
        });
        if tracked {
            Ok(())
        } else {
            Err(DropReason::IcmpUnrelated)
        }
    }
}
