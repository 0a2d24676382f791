//! The underlay send queue: datagrams for other cells are collected in a preallocated arena and
//! sent with one sendmmsg per batch. With UDP GSO, consecutive datagrams to the same cell of the
//! same size (the segments of one super-frame, or a run of small UDP frames) share one message
//! that the kernel splits (UDP_SEGMENT), so a 64 KiB super-frame costs one system call.

use std::io;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tapestry_switch::offload::{segment_vxlan_into, OffloadError};
use tapestry_switch::wire::virtio_net;
use tapestry_switch::Counters;
use tapestry_sys::udp::{self, Transmit, MAX_BATCH, MAX_GSO_SEGMENTS};

use super::capture::{CaptureTap, Dir};

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
    capture: Arc<CaptureTap>,
    /// The socket's address (a captured datagram's source).
    local: SocketAddrV4,
}

impl UnderlayTx {
    pub fn new(
        sock: UdpSocket,
        gso: bool,
        counters: Arc<Counters>,
        capture: Arc<CaptureTap>,
        local: SocketAddrV4,
    ) -> UnderlayTx {
        UnderlayTx {
            sock,
            gso,
            arena: vec![0u8; ARENA].into_boxed_slice(),
            used: 0,
            msgs: [EMPTY; MAX_BATCH],
            n: 0,
            counters,
            warned: false,
            capture,
            local,
        }
    }

    /// Queues one datagram (a VXLAN payload) for `dst`; flushes first if the queue is full.
    pub fn push(&mut self, dst: SocketAddrV4, data: &[u8]) {
        let len = data.len();
        if self.capture.on() {
            self.capture.underlay(Dir::Out, self.local, dst, data);
        }
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

    /// The most bytes [`UnderlayTx::push_segmented`] takes for one super-frame (half the arena,
    /// so a flush always makes room).
    pub fn room(&self) -> usize {
        ARENA / 2
    }

    /// Splits a TCP super-frame (VXLAN payload, `hdr` with GSO TCPV4) into MSS-sized datagrams
    /// written straight into the queue, as GSO messages of at most 64 segments and 64 KiB.
    /// `need`: the bytes the switch asked for (`UnderlaySend::BackToBack`), at most
    /// [`UnderlayTx::room`].
    pub fn push_segmented(
        &mut self,
        dst: SocketAddrV4,
        payload: &[u8],
        hdr: &virtio_net::Repr,
        need: usize,
    ) -> Result<(), OffloadError> {
        if need > self.room() {
            return Err(OffloadError::ScratchTooSmall);
        }
        if self.used + need > ARENA {
            self.flush();
        }
        let start = self.used;
        let segs = segment_vxlan_into(payload, hdr, &mut self.arena[start..start + need])?;
        self.used += segs.total;
        if self.capture.on() {
            for d in self.arena[start..start + segs.total].chunks(segs.seg_len.max(1)) {
                self.capture.underlay(Dir::Out, self.local, dst, d);
            }
        }
        let per_msg = if self.gso {
            (MAX_GSO_PAYLOAD / segs.seg_len.max(1)).clamp(1, MAX_GSO_SEGMENTS)
        } else {
            1
        };
        let mut at = start;
        let mut left = segs.count;
        let end = start + segs.total;
        while left > 0 {
            let k = left.min(per_msg);
            let len = if k == left {
                end - at
            } else {
                k * segs.seg_len
            };
            if self.n == MAX_BATCH {
                self.send_msgs();
            }
            self.msgs[self.n] = Msg {
                dst,
                start: at,
                len,
                seg: segs.seg_len,
                count: k,
                closed: true,
            };
            self.n += 1;
            at += len;
            left -= k;
        }
        Ok(())
    }

    /// Sends everything queued.
    pub fn flush(&mut self) {
        self.send_msgs();
        self.used = 0;
    }

    /// Sends the queued messages; their bytes stay in the arena until [`UnderlayTx::flush`].
    fn send_msgs(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pair() -> (UdpSocket, UdpSocket, SocketAddrV4) {
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        // A large receive buffer: the test reads only after everything was sent.
        let rx = udp::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), false, 8 << 20).unwrap();
        rx.set_nonblocking(false).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let std::net::SocketAddr::V4(a) = rx.local_addr().unwrap() else {
            unreachable!()
        };
        (tx, rx, a)
    }

    fn received(rx: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut out = vec![];
        let mut b = vec![0u8; 70000];
        for _ in 0..n {
            let k = rx.recv(&mut b).unwrap();
            out.push(b[..k].to_vec());
        }
        out
    }

    /// Datagrams come out one by one, in order and intact, with GSO grouping or without.
    #[test]
    fn batches_and_gso_groups_preserve_datagrams() {
        for gso in [true, false] {
            let (tx, rx, dst) = pair();
            let gso = gso && udp::gso_supported(&tx);
            let counters = Arc::new(Counters::new());
            let mut q = UnderlayTx::new(tx, gso, counters.clone(), Default::default(), dst);
            let mut want = vec![];
            // A run of equal datagrams, a shorter one that ends the group, then odd sizes.
            for i in 0..150u32 {
                let len = match i {
                    0..=99 => 1000,
                    100 => 300,
                    _ => 100 + (i as usize * 37) % 1200,
                };
                let d: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
                q.push(dst, &d);
                want.push(d);
            }
            q.flush();
            assert_eq!(received(&rx, want.len()), want, "gso {gso}");
            assert_eq!(counters.snapshot().totals.underlay_tx_errors, 0);
        }
    }

    #[test]
    fn super_frame_is_split_into_valid_segments() {
        use tapestry_switch::wire::{ethernet, ipv4, tcp};
        let (tx, rx, dst) = pair();
        let gso = udp::gso_supported(&tx);
        let mut q = UnderlayTx::new(tx, gso, Arc::new(Counters::new()), Default::default(), dst);
        // VXLAN header + Ethernet/IPv4/TCP super-frame with 20000 bytes of payload.
        let payload: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        let mut f = vec![0x88, 0, 0, 7, 0, 0, 1, 0];
        let mut frame = vec![0u8; 54 + payload.len()];
        ethernet::Repr {
            dst: [0xee; 6],
            src: [0xaa; 6],
            ethertype: ethernet::ETHERTYPE_IPV4,
        }
        .emit(&mut ethernet::Frame::new_unchecked(&mut frame[..]));
        let (s, d) = (Ipv4Addr::new(10, 255, 1, 2), Ipv4Addr::new(10, 255, 2, 2));
        ipv4::Repr {
            src: s,
            dst: d,
            protocol: ipv4::PROTO_TCP,
            payload_len: (20 + payload.len()) as u16,
            ttl: 64,
            tos: 0,
            ident: 1,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut frame[14..]));
        tcp::Repr {
            src_port: 1,
            dst_port: 2,
            seq: 5,
            ack: 6,
            flags: tcp::ACK | tcp::PSH,
            window: 100,
        }
        .emit(&mut tcp::Packet::new_unchecked(&mut frame[34..]));
        frame[54..].copy_from_slice(&payload);
        f.extend_from_slice(&frame);
        let hdr = virtio_net::Repr {
            flags: virtio_net::FLAG_NEEDS_CSUM,
            gso_type: virtio_net::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1398,
            csum_start: 34,
            csum_offset: 16,
        };
        let need = tapestry_switch::offload::segmented_len(&f, &hdr);
        assert_eq!(
            q.push_segmented(dst, &f, &hdr, q.room() + 1),
            Err(OffloadError::ScratchTooSmall)
        );
        assert_eq!(q.push_segmented(dst, &f, &hdr, need), Ok(()));
        q.flush();
        let segs = received(&rx, 20000usize.div_ceil(1398));
        let mut got = vec![];
        for s in &segs {
            let ip = ipv4::Packet::new_checked(&s[8 + 14..]).unwrap();
            let t = tcp::Packet::new_checked(ip.payload()).unwrap();
            assert!(t.verify_checksum(ip.src(), ip.dst()));
            got.extend_from_slice(t.payload());
        }
        assert_eq!(got, payload);
    }
}
