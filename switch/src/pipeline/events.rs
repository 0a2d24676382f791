//! New-flow events for the flow log (CF's `iptables_c2c_logging`): the ingress decision reports
//! each new flow it admits or denies; the driver collects them and writes the log. Nothing here
//! does I/O, and nothing is collected while the log is off.

use std::net::Ipv4Addr;

use crate::counters::DropReason;
use crate::tables::PortId;

/// Events held by one switch between two collections; more are counted as lost.
pub const EVENTS_MAX: usize = 4096;

/// A new container-to-container flow at its destination's ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEvent {
    /// The destination port (a container of this cell).
    pub port: PortId,
    pub src_tag: u16,
    pub dst_tag: u16,
    /// IP protocol (6 TCP, 17 UDP).
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// `None`: admitted (and recorded); otherwise why it was denied.
    pub denied: Option<DropReason>,
}

impl FlowEvent {
    pub fn protocol(&self) -> &'static str {
        match self.proto {
            crate::wire::ipv4::PROTO_TCP => "tcp",
            crate::wire::ipv4::PROTO_UDP => "udp",
            _ => "other",
        }
    }
}

/// A bounded list of events: what does not fit is counted, never allocated for.
#[derive(Debug, Default)]
pub struct FlowEvents {
    events: Vec<FlowEvent>,
    lost: u64,
}

impl FlowEvents {
    pub fn push(&mut self, e: FlowEvent) {
        if self.events.len() < EVENTS_MAX {
            self.events.push(e);
        } else {
            self.lost += 1;
        }
    }

    /// Moves the events out (into `out`) and returns how many were lost since the last call.
    pub fn drain_into(&mut self, out: &mut Vec<FlowEvent>) -> u64 {
        out.append(&mut self.events);
        std::mem::take(&mut self.lost)
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.lost == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_drained() {
        let mut ev = FlowEvents::default();
        let e = FlowEvent {
            port: PortId(2),
            src_tag: 1,
            dst_tag: 2,
            proto: 6,
            src: Ipv4Addr::new(10, 0, 1, 2),
            dst: Ipv4Addr::new(10, 0, 2, 2),
            sport: 1,
            dport: 2,
            denied: None,
        };
        for _ in 0..EVENTS_MAX + 3 {
            ev.push(e);
        }
        let mut out = Vec::new();
        assert_eq!(ev.drain_into(&mut out), 3);
        assert_eq!(out.len(), EVENTS_MAX);
        assert!(ev.is_empty());
        assert_eq!(ev.drain_into(&mut out), 0);
        assert_eq!(e.protocol(), "tcp");
    }
}
