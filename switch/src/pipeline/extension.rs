//! A replaceable step of the ingress decision, for dataplane research: code outside the
//! switch sees each new flow the policy decided at its destination port and may overrule the
//! decision (a per-source-tag rate limit, a port-scan detector, an allow-list experiment),
//! without changing the switch's source. Installed per worker with
//! [`crate::Switch::set_ingress_step`]; absent, it costs one branch per new flow.
//!
//! The step only runs for the first packet of a new TCP or UDP flow at its destination (a
//! flow the policy admitted there, or would deny). Replies and later packets of a tracked
//! flow never reach it. A flow it drops is counted as [`DropReason::IngressStep`] and leaves no
//! connection-tracking entry.

use std::net::Ipv4Addr;
use std::time::Instant;

use crate::counters::DropReason;
use crate::tables::{PortId, Proto};

/// The new flow an [`IngressStep`] decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewFlow {
    /// The Group Policy ID of the source (its app's tag).
    pub src_tag: u16,
    /// The destination port's tag.
    pub dst_tag: u16,
    /// The destination port on this cell.
    pub dst_port: PortId,
    pub proto: Proto,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// The packet's time, as the driver passed it (a virtual clock in the lab).
    pub now: Instant,
}

/// One step of the ingress decision for new flows.
pub trait IngressStep: Send + Sync + std::fmt::Debug {
    /// `policy` is the switch's own decision (`Ok` when a policy admits the flow,
    /// `Err(PolicyDenied)` otherwise). Return the decision to apply: the same, a denial with
    /// [`DropReason::IngressStep`], or an admission the policy did not give.
    fn new_flow(&self, flow: &NewFlow, policy: Result<(), DropReason>) -> Result<(), DropReason>;
}
