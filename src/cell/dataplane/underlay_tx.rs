//! The underlay send queue: datagrams for other cells are collected in a preallocated arena and
//! sent with one sendmmsg per batch. With UDP GSO, consecutive datagrams to the same cell of the
//! same size (the segments of one super-frame, or a run of small UDP frames) share one message
//! that the kernel splits (UDP_SEGMENT), so a 64 KiB super-frame costs one system call.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tapestry_switch::Counters;
use tapestry_sys::udp::{self, Transmit, MAX_BATCH, MAX_GSO_SEGMENTS};

/// Bytes of datagrams held before the queue is flushed.
const ARENA: usize = 1 << 20;
/// Largest UDP payload one GSO message may carry (IPv4 total length 65535 - 20 - 8).
const MAX_GSO_PAYLOAD: usize = 65535 - 20 - 8;
/// How often a send that found the socket buffer full is retried before the rest is dropped.
const FULL_RETRIES: u32 = 200;

/// One message: `count` datagrams of `seg` bytes (the last may be shorter) at `arena[start..]`.
#[derive(Debug, Clone, Copy)]
struct Msg {
    dst: SocketAddrV4,
    start: usize,
    len: usize,
    seg: usize,
    count: usize,
    /// A shorter datagram ended the message; nothing more may join it.
    closed: bool,
}

const EMPTY: Msg = Msg {
    dst: SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
    start: 0,
    len: 0,
    seg: 0,
    count: 0,
    closed: true,
};

pub struct UnderlayTx {
    sock: UdpSocket,
    /// UDP_SEGMENT in use; turned off for good if the kernel refuses a GSO send.
    gso: bool,
    arena: Box<[u8]>,
    used: usize,
    msgs: [Msg; MAX_BATCH],
    n: usize,
    counters: Arc<Counters>,
    warned: bool,
}

impl UnderlayTx {
    pub fn new(sock: UdpSocket, gso: bool, counters: Arc<Counters>) -> UnderlayTx {
        UnderlayTx {
            sock,
            gso,
            arena: vec![0u8; ARENA].into_boxed_slice(),
            used: 0,
            msgs: [EMPTY; MAX_BATCH],
            n: 0,
            counters,
            warned: false,
        }
    }

    /// Queues one datagram (a VXLAN payload) for `dst`; flushes first if the queue is full.
    pub fn push(&mut self, dst: SocketAddrV4, data: &[u8]) {
        let len = data.len();
        if len == 0 || len > ARENA {
            self.counters.underlay_tx_errors(1);
            return;
        }
        if self.gso && self.n > 0 {
            let m = &mut self.msgs[self.n - 1];
            let end = m.start + m.len;
            if m.dst == dst
                && !m.closed
                && len <= m.seg
                && m.count < MAX_GSO_SEGMENTS
                && m.len + len <= MAX_GSO_PAYLOAD
                && end == self.used
                && end + len <= ARENA
            {
                self.arena[end..end + len].copy_from_slice(data);
                m.len += len;
                m.count += 1;
                m.closed = len < m.seg;
                self.used += len;
                return;
            }
        }
        if self.n == MAX_BATCH || self.used + len > ARENA {
            self.flush();
        }
        let start = self.used;
        self.arena[start..start + len].copy_from_slice(data);
        self.used += len;
        self.msgs[self.n] = Msg {
            dst,
            start,
            len,
            seg: len,
            count: 1,
            closed: false,
        };
        self.n += 1;
    }

    /// Sends everything queued.
    pub fn flush(&mut self) {
        let mut i = 0;
        let mut full = 0;
        while i < self.n {
            let k = self.n - i;
            let mut tx = [Transmit {
                dst: self.msgs[i].dst,
                data: &[],
                segment_size: None,
            }; MAX_BATCH];
            for (t, m) in tx.iter_mut().zip(&self.msgs[i..self.n]) {
                *t = Transmit {
                    dst: m.dst,
                    data: &self.arena[m.start..m.start + m.len],
                    segment_size: (m.count > 1).then_some(m.seg as u16),
                };
            }
            match udp::send_batch(&self.sock, &tx[..k]) {
                Ok(0) => {
                    // Should not happen; do not spin.
                    self.drop_from(i, "sendmmsg sent nothing");
                    break;
                }
                Ok(sent) => {
                    i += sent;
                    full = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    full += 1;
                    if full > FULL_RETRIES {
                        self.drop_from(i, "underlay socket buffer stayed full");
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(20));
                }
                Err(e) if self.msgs[i].count > 1 => {
                    // The kernel refused UDP_SEGMENT (EIO: the device cannot checksum; EINVAL:
                    // a segment is larger than the path MTU...). Send this one datagram by
                    // datagram and stop using GSO.
                    if self.gso {
                        tracing::warn!("UDP GSO send failed ({e}); falling back to sendmmsg");
                        self.gso = false;
                    }
                    self.send_split(i);
                    i += 1;
                }
                Err(e) => {
                    self.warn(&e);
                    self.counters.underlay_tx_errors(self.msgs[i].count);
                    i += 1;
                }
            }
        }
        self.n = 0;
        self.used = 0;
    }

    /// Sends message `i` as separate datagrams (batches of up to 64, no GSO).
    fn send_split(&mut self, i: usize) {
        let m = self.msgs[i];
        let mut off = m.start;
        let end = m.start + m.len;
        let mut full = 0;
        while off < end {
            let mut tx = [Transmit {
                dst: m.dst,
                data: &[],
                segment_size: None,
            }; MAX_BATCH];
            let mut k = 0;
            let mut o = off;
            while o < end && k < MAX_BATCH {
                let l = m.seg.min(end - o);
                tx[k].data = &self.arena[o..o + l];
                o += l;
                k += 1;
            }
            match udp::send_batch(&self.sock, &tx[..k]) {
                Ok(0) => break,
                Ok(sent) => {
                    off += tx[..sent].iter().map(|t| t.data.len()).sum::<usize>();
                    full = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && full < FULL_RETRIES => {
                    full += 1;
                    std::thread::sleep(Duration::from_micros(20));
                }
                Err(e) => {
                    self.warn(&e);
                    self.counters.underlay_tx_errors(1);
                    off += m.seg.min(end - off);
                }
            }
        }
        if off < end {
            self.counters
                .underlay_tx_errors((end - off).div_ceil(m.seg.max(1)));
        }
    }

    fn drop_from(&mut self, i: usize, why: &str) {
        let lost: usize = self.msgs[i..self.n].iter().map(|m| m.count).sum();
        self.counters.underlay_tx_errors(lost);
        tracing::debug!("{why}: {lost} datagrams dropped");
    }

    fn warn(&mut self, e: &io::Error) {
        if !self.warned {
            tracing::warn!("sending on the underlay: {e} (counted as underlay_tx_errors; further errors are only counted)");
            self.warned = true;
        }
    }
}
