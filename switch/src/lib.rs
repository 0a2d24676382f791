//! Tapestry cell switch: a sans-IO VXLAN-GBP pipeline with default-deny policy and connection
//! tracking. No devices, sockets or clocks: the caller passes frames and `now`.
//!
//! A driver owns the devices and, per worker thread, one [`Switch`] and one [`PacketBuf`]:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::time::Instant;
//! # use tapestry_switch::*;
//! # fn demo(snapshot: Snapshot, read_tap: impl Fn(&mut [u8]) -> usize) {
//! let tables = Arc::new(Tables::new(snapshot)); // control side: tables.store(new_snapshot)
//! let conntrack = Arc::new(Conntrack::new(1 << 20)); // call conntrack.expire(now) every second
//! let counters = Arc::new(Counters::new());
//! let mut sw = Switch::new(tables, conntrack, counters);
//! let mut buf = PacketBuf::new();
//! let n = read_tap(buf.read_space());
//! buf.set_len(n);
//! match sw.from_port(PortId(1), &mut buf, Instant::now()) {
//!     Verdict::ToPort(p) => { /* write buf.data() to port p */ }
//!     Verdict::ToUnderlay(addr) => { /* send buf.data() over UDP to addr */ }
//!     Verdict::Drop(reason) => { /* already counted: reason.as_str() */ }
//! }
//! # }
//! ```
//!
//! Modules: [`wire`] (byte views of every header), [`tables`] (snapshot of ports, routes,
//! policies and ASGs with [`Snapshot::egress_decision`]; connection tracking), [`pipeline`] (the per-packet decisions), [`counters`],
//! [`offload`] (checksums, partial ones from a kernel VTEP included; TSO/USO segmentation; TCP
//! coalescing; what to write for virtio-net super-frames).
//!
//! No unsafe code: `[workspace.lints]` forbids it in every crate but tapestry-sys.

pub mod buf;
pub mod counters;
pub mod offload;
pub mod pipeline;
pub mod stack;
pub mod tables;
pub mod wire;

pub use buf::PacketBuf;
pub use counters::{Counters, CountersSnapshot, DropReason, PolicyHit, PortStats, Totals};
pub use pipeline::{Switch, Verdict};
pub use tables::asg::{
    DenyNetworks, DenyReason, Egress, EgressVerdict, Flow, GroupText, Lifecycle, RuleMatch,
    RuleSet, RuleText,
};
pub use tables::conntrack::Conntrack;
pub use tables::{
    CellConfig, FxHashMap, PolicyRule, PortConfig, PortId, PortLabel, Proto, RemoteCell, Snapshot,
    TableError, Tables,
};
