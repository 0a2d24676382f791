//! The underlay receive side: recvmmsg into preallocated 64 KiB buffers (with UDP_GRO, each may
//! hold many datagrams of one size), every datagram through the switch where it was received (no
//! copy), then the switch's receive coalescing ([`RxCoalescer`]: consecutive inner TCP segments
//! of a flow become one super-frame per destination port, written to the TAP with a virtio-net
//! header) decides what to write; this file only reads the socket and performs the writes.
//! Pending super-frames are written at the end of each batch.

const ETH_LEN: usize = tapestry_switch::wire::ethernet::HEADER_LEN;

use std::io;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Instant;

use tapestry_switch::offload::RxCoalescer;
use tapestry_switch::{Counters, DropReason, PacketBuf, Switch, Verdict};
use tapestry_sys::udp::{self, RecvMeta, MAX_BATCH};

use super::capture::{CaptureTap, Dir};
use super::{write_port, Ports, WorkerStats};

/// Size of each receive buffer: a whole GRO batch (at most 64 KiB of UDP payload).
const RX_BUF: usize = tapestry_switch::buf::MAX_FRAME;
/// Receive buffers, i.e. messages per recvmmsg.
const RX_BATCH: usize = MAX_BATCH;
/// Super-frames being built at once (one per destination port).
const SLOTS: usize = 8;

/// A receive buffer: the switch works on each datagram where recvmmsg put it.
struct RxBuf(PacketBuf);

impl AsMut<[u8]> for RxBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.read_space()
    }
}

pub struct UnderlayRx {
    sock: UdpSocket,
    bufs: Vec<RxBuf>,
    meta: [RecvMeta; RX_BATCH],
    /// Coalesces inner TCP segments for ports with the virtio-net header (no slots: off).
    rx: RxCoalescer,
    counters: Arc<Counters>,
    stats: Arc<WorkerStats>,
    warned: bool,
    capture: Arc<CaptureTap>,
    /// This socket's address (a captured datagram's destination).
    local: std::net::SocketAddrV4,
}

impl UnderlayRx {
    pub fn new(
        sock: UdpSocket,
        coalesce: bool,
        counters: Arc<Counters>,
        stats: Arc<WorkerStats>,
        capture: Arc<CaptureTap>,
        local: std::net::SocketAddrV4,
    ) -> UnderlayRx {
        let slots = if coalesce { SLOTS } else { 0 };
        UnderlayRx {
            sock,
            bufs: (0..RX_BATCH).map(|_| RxBuf(PacketBuf::new())).collect(),
            meta: [RecvMeta::default(); RX_BATCH],
            rx: RxCoalescer::new(slots),
            counters,
            stats,
            warned: false,
            capture,
            local,
        }
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Receives up to `batches` recvmmsg batches and forwards them. Returns true if there may be
    /// more to read (the budget ran out before the socket was empty).
    pub fn drain(
        &mut self,
        sw: &mut Switch,
        ports: &Ports,
        stack: &super::stack::StackLink,
        batches: usize,
    ) -> bool {
        for _ in 0..batches {
            let got = match udp::recv_batch(&self.sock, &mut self.bufs, &mut self.meta) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if !self.warned {
                        tracing::warn!("reading the underlay socket: {e}");
                        self.warned = true;
                    }
                    return false;
                }
            };
            self.stats.add_underlay_buffers(got);
            let now = Instant::now();
            for i in 0..got {
                let m = self.meta[i];
                if m.truncated || m.len > RX_BUF {
                    self.counters.underlay_rx(m.len);
                    self.counters
                        .dropped(DropReason::FrameTooLarge, None, m.len);
                    continue;
                }
                if m.len == 0 {
                    self.counters.underlay_rx(0);
                    self.counters.dropped(DropReason::MalformedVxlan, None, 0);
                    continue;
                }
                let seg = if m.segment_size == 0 {
                    m.len
                } else {
                    m.segment_size
                };
                let seg = seg.max(1);
                let pkt = &mut self.bufs[i].0;
                for off in (0..m.len).step_by(seg) {
                    pkt.select(off, seg.min(m.len - off));
                    if self.capture.on() {
                        self.capture
                            .underlay(Dir::In, m.src, self.local, pkt.data());
                    }
                    match sw.from_underlay(m.src, pkt, now) {
                        Verdict::ToPort(p) => {
                            let Some(port) = ports.get(&p) else {
                                continue;
                            };
                            let (counters, capture) = (&self.counters, &self.capture);
                            self.rx.push(p, port.vnet, pkt.data(), |to, w| {
                                write_port(ports, to, w, counters, capture)
                            });
                        }
                        // TLS on 61443, admitted by policy: the local stack terminates it.
                        Verdict::ToService(p) => {
                            if let Some(ip) = pkt.data().get(ETH_LEN..) {
                                stack.service_packet(p, ip, &self.counters);
                            }
                        }
                        _ => {}
                    }
                }
            }
            let (counters, capture) = (&self.counters, &self.capture);
            self.rx
                .flush(|to, w| write_port(ports, to, w, counters, capture));
            if got < RX_BATCH {
                return false;
            }
        }
        true
    }
}
