//! The writes to a container's port device (TAP or AF_PACKET), and the capture tap on them.

use std::sync::Arc;

use tapestry_switch::offload::PortWrite;
use tapestry_switch::wire::virtio_net;
use tapestry_switch::{Counters, FxHashMap, PortId};
use tapestry_sys::port::PortDev;

use super::capture::{CaptureTap, Dir};

/// A port as the dataplane sees it.
pub(crate) struct Port {
    pub(super) tap: Arc<PortDev>,
    /// Frames on this TAP carry the virtio-net header.
    pub(super) vnet: bool,
    /// This worker polls the TAP (it is the worker's queue).
    pub(super) read: bool,
}

/// Port ids are offsets in the cell's subnet (not attacker-chosen): FxHash, no SipHash per packet.
pub(crate) type Ports = FxHashMap<PortId, Port>;

/// Writes a plain Ethernet frame to a port (behind an empty virtio-net header if it has one).
pub(crate) fn write_plain(port: &Port, frame: &[u8], counters: &Counters) {
    write_plain_tap(&port.tap, port.vnet, frame, counters)
}

/// Writes a plain Ethernet frame to a TAP (behind an empty virtio-net header if `vnet`).
pub(crate) fn write_plain_tap(tap: &PortDev, vnet: bool, frame: &[u8], counters: &Counters) {
    const EMPTY: [u8; virtio_net::HEADER_LEN] = [0; virtio_net::HEADER_LEN];
    let r = if vnet {
        tap.write2(&EMPTY, frame)
    } else {
        tap.write(frame)
    };
    // A full TAP queue drops the frame, as a NIC would; TCP recovers.
    if r.is_err() {
        counters.port_tx_error();
    }
}

/// Performs one of the switch's writes to a port ([`offload::RxCoalescer`]); a port removed in
/// the meantime is skipped.
pub(crate) fn write_port(
    ports: &Ports,
    to: PortId,
    w: PortWrite<'_>,
    counters: &Counters,
    capture: &CaptureTap,
) {
    let Some(port) = ports.get(&to) else {
        return;
    };
    match w {
        PortWrite::Plain(frame) => {
            if capture.on() {
                capture.port(to, Dir::In, frame);
            }
            write_plain(port, frame, counters)
        }
        PortWrite::Vnet(hdr, frame) => {
            if capture.on() {
                capture.port(to, Dir::In, frame);
            }
            if port.tap.write2(&hdr, frame).is_err() {
                counters.port_tx_error();
            }
        }
    }
}
