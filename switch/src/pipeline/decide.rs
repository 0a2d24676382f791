//! The per-packet policy and tracking decisions.
//!
//! Egress (a local port P sends): a reply on a flow admitted at P's ingress is re-checked when
//! the policy generation changed (revocation); otherwise the flow is recorded as originated by P.
//! Ingress (to a local port Q from source tag T): a reply of a flow Q originated is allowed; a
//! packet of a flow admitted earlier is allowed (re-checked after a policy change); a new flow
//! needs a policy (T, Q.tag, proto, dport) and is recorded. Default deny.

use std::time::Instant;

use super::extension::{IngressStep, NewFlow};
use super::flow::{icmp_embedded, Flow, Frag};
use super::frag::{FragKey, FragTable};
use crate::counters::{Counters, DropReason};
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

impl Ctx<'_> {
    fn record(&mut self, k: FlowKey, origin: Origin, tcp_flags: u8) -> Result<(), DropReason> {
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
        let (ct, now, gen) = (&self.ct, self.now, self.snap.generation());
        let found = ct.with(&rev, now, |e| match e.origin() {
            Origin::Ingress { src_tag } => {
                if self.still_allowed(e, src_tag, src_tag, src, &rev) {
                    ct.reinstate(e);
                    e.set_generation(gen);
                    ct.observe(e, Dir::Reply, f.tcp_flags, now);
                    Found::Allowed
                } else {
                    // Keep a tombstone while the port keeps answering, so its replies cannot
                    // re-open the flow as one it originated.
                    ct.revoke(e, now);
                    Found::Revoked
                }
            }
            Origin::Egress => Found::Other,
        });
        match found {
            Some(Found::Allowed) => return Ok(()),
            Some(Found::Revoked) => return Err(DropReason::PolicyRevoked),
            _ => {}
        }
        if ct
            .with(&k, now, |e| ct.observe(e, Dir::Original, f.tcp_flags, now))
            .is_some()
        {
            return Ok(());
        }
        // Any segment but a RST opens (or, after a restart, picks up) a flow from the port.
        // Replies on a revoked flow never get here: its tombstone answered above.
        if f.proto == ipv4::PROTO_TCP && f.tcp_flags & tcp::RST != 0 {
            return Ok(());
        }
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
            return if self.frags.admitted(&fk, self.now) {
                Ok(())
            } else {
                Err(DropReason::Fragment)
            };
        }
        match f.proto {
            ipv4::PROTO_TCP | ipv4::PROTO_UDP => self.ingress_tracked(dst, src_tag, f)?,
            ipv4::PROTO_ICMP => self.ingress_icmp(dst, l4)?,
            _ => return Err(DropReason::ProtocolDenied),
        }
        if f.frag == Frag::First {
            self.frags.record(fk, self.now);
        }
        Ok(())
    }

    fn ingress_tracked(&mut self, dst: &Port, src_tag: u16, f: &Flow) -> Result<(), DropReason> {
        let k = key(dst, f);
        let (ct, now, gen) = (&self.ct, self.now, self.snap.generation());
        // A reply on a flow `dst` originated.
        if ct
            .with(&k.reversed(), now, |e| {
                let ours = e.origin() == Origin::Egress;
                if ours {
                    ct.observe(e, Dir::Reply, f.tcp_flags, now);
                }
                ours
            })
            .unwrap_or(false)
        {
            return Ok(());
        }
        // A later packet of a flow admitted here before.
        let found = ct.with(&k, now, |e| match e.origin() {
            Origin::Ingress { src_tag: t } => {
                if self.still_allowed(e, t, src_tag, dst, &k) {
                    if t == src_tag {
                        ct.reinstate(e);
                        e.set_generation(gen);
                    }
                    ct.observe(e, Dir::Original, f.tcp_flags, now);
                    Found::Allowed
                } else if t != src_tag {
                    // Another tag on the same 5-tuple: deny it, leave the flow alone.
                    Found::Other
                } else {
                    if !e.is_revoked() {
                        ct.revoke(e, now);
                    }
                    Found::Revoked
                }
            }
            Origin::Egress => Found::Untracked,
        });
        match found {
            Some(Found::Allowed) => return Ok(()),
            Some(Found::Revoked) => return Err(DropReason::PolicyRevoked),
            Some(Found::Other) => return Err(DropReason::PolicyDenied),
            Some(Found::Untracked) | None => {}
        }
        let proto = Proto::from_ip_proto(f.proto).ok_or(DropReason::ProtocolDenied)?;
        let mut verdict = if self.snap.policy_allows(src_tag, dst.tag, proto, f.dport) {
            Ok(())
        } else {
            Err(DropReason::PolicyDenied)
        };
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
                now,
            };
            verdict = step.new_flow(&flow, verdict);
        }
        verdict?;
        self.record(k, Origin::Ingress { src_tag }, f.tcp_flags)
    }

    /// ICMP errors about a tracked flow of `dst` are admitted (related); everything else is not.
    fn ingress_icmp(&mut self, dst: &Port, l4: &[u8]) -> Result<(), DropReason> {
        let p = icmp::Packet::new_checked(l4).map_err(|_| DropReason::MalformedL4)?;
        if !p.is_error() {
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
        if tracked {
            Ok(())
        } else {
            Err(DropReason::IcmpUnrelated)
        }
    }
}
