//! Receive-side TCP coalescing: consecutive segments of one flow become one super-frame with a
//! virtio-net header (NEEDS_CSUM, GSO TCPV4), following wireguard-go's tun/offload_linux.go:
//! same flow and ack, adjacent sequence numbers, equal segment size except the last, flags ACK
//! or ACK|PSH with PSH only on the last, identical TCP options, equal TOS/TTL/DF, no IP options
//! or fragments, at most 65535 bytes of IP datagram.

use super::TcpV4Layout;
use crate::wire::{checksum, ipv4, tcp, virtio_net};

/// Largest IP datagram a super-frame may carry.
pub const MAX_IP_LEN: usize = 65535;

/// What [`TcpCoalescer::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Appended to (or started) the pending super-frame.
    Appended,
    /// Coalescable, but not with the pending frame: call `finish`, then push it again.
    Mismatch,
    /// Never coalescable (not TCPv4, flags, options...): finish the pending frame and send this
    /// one as it is.
    NotCoalescable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    src_dst: [u8; 8],
    ports: [u8; 4],
    ack: u32,
    tos: u8,
    ttl: u8,
    df: bool,
    tcp_len: usize,
}

/// Builds one super-frame at a time in a buffer it owns (allocated once).
pub struct TcpCoalescer {
    buf: Vec<u8>,
    len: usize,
    meta: Option<Meta>,
    next_seq: u32,
    gso_size: usize,
    count: usize,
    closed: bool,
}

impl Default for TcpCoalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TcpCoalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpCoalescer")
            .field("len", &self.len)
            .field("count", &self.count)
            .finish()
    }
}

fn meta_of(frame: &[u8], l: &TcpV4Layout) -> (Meta, u32, u8) {
    let ip = ipv4::Packet::new_unchecked(&frame[l.ip..]);
    let t = tcp::Packet::new_unchecked(&frame[l.tcp..]);
    let mut src_dst = [0u8; 8];
    src_dst[..4].copy_from_slice(&ip.src().octets());
    src_dst[4..].copy_from_slice(&ip.dst().octets());
    let mut ports = [0u8; 4];
    ports[..2].copy_from_slice(&t.src_port().to_be_bytes());
    ports[2..].copy_from_slice(&t.dst_port().to_be_bytes());
    let m = Meta {
        src_dst,
        ports,
        ack: t.ack(),
        tos: ip.tos(),
        ttl: ip.ttl(),
        df: ip.dont_frag(),
        tcp_len: l.tcp_len,
    };
    (m, t.seq(), t.flags())
}

/// The layout and coalescing key of a frame that may join a super-frame (see
/// [`TcpCoalescer::is_candidate`]).
fn candidate(frame: &[u8]) -> Option<(TcpV4Layout, Meta, u32, u8)> {
    let l = TcpV4Layout::parse(frame).ok()?;
    if l.ip_len != ipv4::HEADER_LEN || l.end > frame.len() || l.end <= l.headers_len() {
        return None;
    }
    let (meta, seq, flags) = meta_of(frame, &l);
    (flags == tcp::ACK || flags == tcp::ACK | tcp::PSH).then_some((l, meta, seq, flags))
}

impl TcpCoalescer {
    pub fn new() -> TcpCoalescer {
        TcpCoalescer {
            buf: vec![0u8; 14 + MAX_IP_LEN],
            len: 0,
            meta: None,
            next_seq: 0,
            gso_size: 0,
            count: 0,
            closed: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Segments in the pending super-frame.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether `frame` could ever join a super-frame: IPv4 without options or fragmentation,
    /// TCP with a payload and flags ACK or ACK|PSH. Checksums are not looked at.
    pub fn is_candidate(frame: &[u8]) -> bool {
        candidate(frame).is_some()
    }

    /// Offers a frame (Ethernet/IPv4/TCP). Its checksums must have been verified (or completed)
    /// by the caller: the super-frame gets a partial checksum that its receiver trusts, so a
    /// corrupted segment merged into it would go unnoticed.
    pub fn push(&mut self, frame: &[u8]) -> Push {
        let Some((l, meta, seq, flags)) = candidate(frame) else {
            return Push::NotCoalescable;
        };
        let h = l.headers_len();
        let payload = &frame[h..l.end];
        if self.count == 0 {
            self.buf[..l.end].copy_from_slice(&frame[..l.end]);
            self.len = l.end;
            self.meta = Some(meta);
            self.next_seq = seq.wrapping_add(payload.len() as u32);
            self.gso_size = payload.len();
            self.count = 1;
            self.closed = flags & tcp::PSH != 0;
            return Push::Appended;
        }
        let same_opts = self.meta == Some(meta) && frame[l.tcp + 20..h] == self.buf[l.tcp + 20..h];
        if !same_opts
            || self.closed
            || seq != self.next_seq
            || payload.len() > self.gso_size
            || self.len + payload.len() - 14 > MAX_IP_LEN
        {
            return Push::Mismatch;
        }
        self.buf[self.len..self.len + payload.len()].copy_from_slice(payload);
        self.len += payload.len();
        self.next_seq = seq.wrapping_add(payload.len() as u32);
        self.count += 1;
        // A short segment or PSH ends the super-frame.
        self.closed = payload.len() < self.gso_size || flags & tcp::PSH != 0;
        if flags & tcp::PSH != 0 {
            let tcp_at = 14 + ipv4::HEADER_LEN;
            let mut t = tcp::Packet::new_unchecked(&mut self.buf[tcp_at..self.len]);
            t.set_flags(tcp::ACK | tcp::PSH);
        }
        Push::Appended
    }

    /// Completes the pending frame and returns it with its virtio-net header, leaving the
    /// coalescer empty. A single segment is returned unchanged with an empty header; more get
    /// fixed lengths, a new IP checksum and the TCP pseudo-header sum (NEEDS_CSUM, GSO TCPV4).
    pub fn finish(&mut self) -> Option<(virtio_net::Repr, &[u8])> {
        if self.count == 0 {
            return None;
        }
        let count = std::mem::take(&mut self.count);
        let meta = self.meta.take()?;
        let frame = &mut self.buf[..self.len];
        if count == 1 {
            return Some((virtio_net::Repr::default(), frame));
        }
        let ip_at = 14;
        let tcp_at = ip_at + ipv4::HEADER_LEN;
        let tcp_total = self.len - tcp_at;
        let (src, dst) = {
            let mut ip = ipv4::Packet::new_unchecked(&mut frame[ip_at..]);
            ip.set_total_len((self.len - ip_at) as u16);
            ip.fill_checksum();
            (ip.src(), ip.dst())
        };
        let ph = checksum::fold(checksum::pseudo_header(
            src,
            dst,
            ipv4::PROTO_TCP,
            tcp_total as u32,
        ));
        tcp::Packet::new_unchecked(&mut frame[tcp_at..]).set_checksum(ph);
        let hdr = virtio_net::Repr {
            flags: virtio_net::FLAG_NEEDS_CSUM,
            gso_type: virtio_net::GSO_TCPV4,
            hdr_len: (tcp_at + meta.tcp_len) as u16,
            gso_size: self.gso_size as u16,
            csum_start: tcp_at as u16,
            csum_offset: tcp::CHECKSUM_OFFSET as u16,
        };
        Some((hdr, frame))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{complete_checksum, segment_tcpv4};
    use super::*;
    use proptest::prelude::*;

    fn seg(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        tcp_frame(seq, flags, &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2], payload)
    }

    #[test]
    fn coalesces_a_run() {
        let mut c = TcpCoalescer::new();
        assert_eq!(c.push(&seg(1, tcp::ACK, &[1; 100])), Push::Appended);
        assert_eq!(c.push(&seg(101, tcp::ACK, &[2; 100])), Push::Appended);
        assert_eq!(
            c.push(&seg(201, tcp::ACK | tcp::PSH, &[3; 50])),
            Push::Appended
        );
        // After PSH nothing more joins.
        assert_eq!(c.push(&seg(251, tcp::ACK, &[4; 100])), Push::Mismatch);
        let (hdr, f) = c.finish().unwrap();
        assert_eq!(
            (
                hdr.gso_type,
                hdr.gso_size,
                hdr.hdr_len,
                hdr.csum_start,
                hdr.csum_offset
            ),
            (1, 100, 66, 34, 16)
        );
        let mut f = f.to_vec();
        complete_checksum(&mut f, &hdr).unwrap();
        assert!(checksums_ok(&f));
        assert_eq!(f.len(), 66 + 250);
        assert_eq!(f[33 + 13 + 1], tcp::ACK | tcp::PSH);
        assert!(c.is_empty() && c.finish().is_none());
    }

    #[test]
    fn refuses_what_the_rules_refuse() {
        let mut c = TcpCoalescer::new();
        assert_eq!(c.push(&seg(1, tcp::SYN, &[1; 10])), Push::NotCoalescable);
        assert_eq!(
            c.push(&seg(1, tcp::ACK | tcp::FIN, &[1; 10])),
            Push::NotCoalescable
        );
        assert_eq!(c.push(&seg(1, tcp::ACK, &[])), Push::NotCoalescable);
        assert_eq!(c.push(&seg(1, tcp::ACK, &[1; 100])), Push::Appended);
        assert_eq!(
            c.push(&seg(500, tcp::ACK, &[1; 100])),
            Push::Mismatch,
            "gap"
        );
        assert_eq!(
            c.push(&seg(101, tcp::ACK, &[1; 101])),
            Push::Mismatch,
            "bigger"
        );
        let other_opts = tcp_frame(
            101,
            tcp::ACK,
            &[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 2],
            &[1; 100],
        );
        assert_eq!(c.push(&other_opts), Push::Mismatch, "options differ");
        assert_eq!(c.push(&seg(101, tcp::ACK, &[1; 60])), Push::Appended);
        assert_eq!(
            c.push(&seg(161, tcp::ACK, &[1; 60])),
            Push::Mismatch,
            "after a short one"
        );
        // A single segment comes back unchanged.
        let mut c = TcpCoalescer::new();
        let one = seg(1, tcp::ACK, &[9; 10]);
        c.push(&one);
        let (hdr, f) = c.finish().unwrap();
        assert_eq!((hdr, f), (virtio_net::Repr::default(), &one[..]));
    }

    proptest! {
        #[test]
        fn segment_then_coalesce_is_identity(payload in proptest::collection::vec(any::<u8>(), 1..20000), mss in 200u16..1500, psh in any::<bool>()) {
            let flags = if psh { tcp::ACK | tcp::PSH } else { tcp::ACK };
            let orig = tcp_frame(7, flags, &[], &payload);
            let mut scratch = vec![0u8; 54 + mss as usize];
            let mut c = TcpCoalescer::new();
            let mut outs: Vec<(virtio_net::Repr, Vec<u8>)> = vec![];
            segment_tcpv4(&orig, &tso_hdr(mss), &mut scratch, |s| {
                if c.push(s) == Push::Mismatch {
                    let (h, f) = c.finish().unwrap();
                    outs.push((h, f.to_vec()));
                    assert_eq!(c.push(s), Push::Appended);
                }
            }).unwrap();
            if let Some((h, f)) = c.finish() { outs.push((h, f.to_vec())); }
            prop_assert_eq!(outs.len(), 1);
            let (h, mut f) = outs.pop().unwrap();
            complete_checksum(&mut f, &h).unwrap();
            prop_assert!(checksums_ok(&f));
            prop_assert_eq!(&f[54..], &payload[..]);
            let t = tcp::Packet::new_checked(&f[34..]).unwrap();
            prop_assert_eq!(t.seq(), 7);
            prop_assert_eq!(t.flags(), flags);
            if payload.len() > mss as usize {
                prop_assert_eq!(h.gso_size, mss);
            }
        }
    }
}
