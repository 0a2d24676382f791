//! The underlay receive side: recvmmsg into preallocated 64 KiB buffers (with UDP_GRO, each may
//! hold many datagrams of one size), every datagram through the switch where it was received (no
//! copy), and consecutive inner TCP segments of a flow coalesced per destination port into one
//! super-frame written to the TAP with a virtio-net header (NEEDS_CSUM, GSO TCPV4). Coalescers
//! are flushed at the end of each batch.

use std::io;
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Instant;

use tapestry_switch::offload::{Push, TcpCoalescer, TcpV4Layout};
use tapestry_switch::wire::{ipv4, tcp, virtio_net};
use tapestry_switch::{Counters, DropReason, PacketBuf, PortId, Switch, Verdict};
use tapestry_sys::udp::{self, RecvMeta, MAX_BATCH};

use super::{write_plain, Ports, WorkerStats};

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

struct Slot {
    port: Option<PortId>,
    c: TcpCoalescer,
}

pub struct UnderlayRx {
    sock: UdpSocket,
    bufs: Vec<RxBuf>,
    meta: [RecvMeta; RX_BATCH],
    slots: Vec<Slot>,
    next_evict: usize,
    /// Coalesce inner TCP segments for ports with the virtio-net header.
    coalesce: bool,
    counters: Arc<Counters>,
    stats: Arc<WorkerStats>,
    warned: bool,
}

impl UnderlayRx {
    pub fn new(
        sock: UdpSocket,
        coalesce: bool,
        counters: Arc<Counters>,
        stats: Arc<WorkerStats>,
    ) -> UnderlayRx {
        let slots = if coalesce { SLOTS } else { 0 };
        UnderlayRx {
            sock,
            bufs: (0..RX_BATCH).map(|_| RxBuf(PacketBuf::new())).collect(),
            meta: [RecvMeta::default(); RX_BATCH],
            slots: (0..slots)
                .map(|_| Slot {
                    port: None,
                    c: TcpCoalescer::new(),
                })
                .collect(),
            next_evict: 0,
            coalesce,
            counters,
            stats,
            warned: false,
        }
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Receives up to `batches` recvmmsg batches and forwards them. Returns true if there may be
    /// more to read (the budget ran out before the socket was empty).
    pub fn drain(&mut self, sw: &mut Switch, ports: &Ports, batches: usize) -> bool {
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
                    if let Verdict::ToPort(p) = sw.from_underlay(m.src, pkt, now) {
                        deliver(
                            &mut self.slots,
                            &mut self.next_evict,
                            self.coalesce,
                            p,
                            pkt,
                            ports,
                            &self.counters,
                        );
                    }
                }
            }
            flush_all(&mut self.slots, ports, &self.counters);
            if got < RX_BATCH {
                return false;
            }
        }
        true
    }
}

/// A TCP segment that may join a super-frame: IPv4 without options, ACK or ACK|PSH, a payload,
/// and a correct checksum (coalescing replaces it with a partial one the receiver trusts, so a
/// corrupted segment must not be merged).
fn coalescable(frame: &[u8]) -> bool {
    let Ok(l) = TcpV4Layout::parse(frame) else {
        return false;
    };
    if l.ip_len != ipv4::HEADER_LEN || l.end > frame.len() || l.end <= l.headers_len() {
        return false;
    }
    let Ok(ip) = ipv4::Packet::new_checked(&frame[l.ip..l.end]) else {
        return false;
    };
    let Ok(t) = tcp::Packet::new_checked(ip.payload()) else {
        return false;
    };
    let f = t.flags();
    (f == tcp::ACK || f == tcp::ACK | tcp::PSH) && t.verify_checksum(ip.src(), ip.dst())
}

fn flush_slot(slot: &mut Slot, ports: &Ports, counters: &Counters) {
    let Some(p) = slot.port.take() else {
        return;
    };
    let Some((hdr, frame)) = slot.c.finish() else {
        return;
    };
    let Some(port) = ports.get(&p) else {
        return;
    };
    let mut h = [0u8; virtio_net::HEADER_LEN];
    hdr.emit(&mut virtio_net::Packet::new_unchecked(&mut h[..]));
    if port.tap.write2(&h, frame).is_err() {
        counters.port_tx_error();
    }
}

fn flush_all(slots: &mut [Slot], ports: &Ports, counters: &Counters) {
    for s in slots {
        flush_slot(s, ports, counters);
    }
}

fn deliver(
    slots: &mut [Slot],
    next_evict: &mut usize,
    coalesce: bool,
    p: PortId,
    pkt: &PacketBuf,
    ports: &Ports,
    counters: &Counters,
) {
    let Some(port) = ports.get(&p) else {
        return;
    };
    let frame = pkt.data();
    if !coalesce || !port.vnet || slots.is_empty() {
        write_plain(port, frame, counters);
        return;
    }
    let existing = slots.iter().position(|s| s.port == Some(p));
    if !coalescable(frame) {
        // Keep the order of the port's frames: what is pending goes first.
        if let Some(i) = existing {
            flush_slot(&mut slots[i], ports, counters);
        }
        write_plain(port, frame, counters);
        return;
    }
    let i = match existing {
        Some(i) => i,
        None => {
            let i = match slots.iter().position(|s| s.port.is_none()) {
                Some(i) => i,
                None => {
                    let i = *next_evict % slots.len();
                    *next_evict = (i + 1) % slots.len();
                    flush_slot(&mut slots[i], ports, counters);
                    i
                }
            };
            slots[i].port = Some(p);
            i
        }
    };
    match slots[i].c.push(frame) {
        Push::Appended => {}
        Push::Mismatch => {
            flush_slot(&mut slots[i], ports, counters);
            slots[i].port = Some(p);
            if slots[i].c.push(frame) != Push::Appended {
                slots[i].port = None;
                write_plain(port, frame, counters);
            }
        }
        Push::NotCoalescable => {
            flush_slot(&mut slots[i], ports, counters);
            write_plain(port, frame, counters);
        }
    }
}
