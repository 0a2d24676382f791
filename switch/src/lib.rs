//! Tapestry cell switch: a sans-IO VXLAN-GBP pipeline with default-deny policy and connection
//! tracking. No devices, sockets or clocks: the caller passes frames and `now`.
#![forbid(unsafe_code)]

pub mod buf;
pub mod wire;

pub use buf::PacketBuf;
pub mod tables;

pub use tables::conntrack::Conntrack;
pub use tables::{
    CellConfig, PolicyRule, PortConfig, PortId, Proto, RemoteCell, Snapshot, TableError, Tables,
};
pub mod counters;
pub mod offload;
pub mod pipeline;

pub use counters::{Counters, CountersSnapshot, DropReason, PortStats, Totals};
pub use pipeline::{Switch, Verdict};
