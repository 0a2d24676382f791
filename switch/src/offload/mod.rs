//! Offload helpers and decisions for 64 KiB super-frames exchanged with a TAP through the
//! virtio-net header, all sans-IO (bytes in, what to write out; the driver in the `tapestry`
//! binary only performs the writes):
//! - checksum completion ([`complete_checksum`]), and inner checksums from the underlay verified
//!   or, when a kernel VTEP left them partial, completed ([`partial`]);
//! - TSO segmentation into MSS-sized TCP segments ([`tso`]), USO segmentation of UDP
//!   super-datagrams ([`uso`]);
//! - the choice among writing a frame from a port whole, segmenting it and completing its
//!   checksum ([`emit`]);
//! - receive-side TCP coalescing (the rules of wireguard-go's tun/offload_linux.go, [`gro`]) and
//!   what to write to each port for the frames from the underlay ([`rx`]).

pub mod emit;
pub mod gro;
pub mod partial;
pub mod rx;
pub mod tso;
pub mod uso;

use crate::wire::virtio_net;
use crate::wire::{checksum, ethernet, ipv4, tcp};

pub use emit::{to_port, underlay_send, UnderlaySend};
pub use gro::{Push, TcpCoalescer};
pub use partial::{verify_or_complete, L4Checksum};
pub use rx::{PortWrite, RxCoalescer};
pub use tso::{segment_tcpv4, segment_vxlan, segment_vxlan_into, segmented_len, Segments};
pub use uso::UdpV4Layout;

/// Why a frame could not be offloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("not an Ethernet/IPv4/TCP frame")]
    NotTcpV4,
    #[error("not an Ethernet/IPv4/UDP frame")]
    NotUdpV4,
    #[error("malformed headers")]
    Malformed,
    #[error("unsupported GSO type {0:#x}")]
    UnsupportedGso(u8),
    #[error("gso_size is zero")]
    ZeroGsoSize,
    #[error("csum_start/csum_offset outside the frame")]
    BadChecksumOffsets,
    #[error("scratch buffer too small for a segment")]
    ScratchTooSmall,
}

/// Completes a NEEDS_CSUM frame's checksum: the field at `csum_start + csum_offset` holds the
/// pseudo-header sum (as a TAP hands it); the checksum covers `frame[csum_start..]`.
/// Frames without NEEDS_CSUM are left alone.
pub fn complete_checksum(frame: &mut [u8], hdr: &virtio_net::Repr) -> Result<(), OffloadError> {
    if !hdr.needs_csum() {
        return Ok(());
    }
    hdr.check_csum_fields(frame.len())
        .map_err(|_| OffloadError::BadChecksumOffsets)?;
    let start = hdr.csum_start as usize;
    let at = start + hdr.csum_offset as usize;
    let c = !checksum::fold(checksum::sum(&frame[start..]));
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Offsets of a checked Ethernet/IPv4/TCP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpV4Layout {
    /// Start of the IP header (14).
    pub ip: usize,
    pub ip_len: usize,
    /// Start of the TCP header.
    pub tcp: usize,
    pub tcp_len: usize,
    /// End of the IP datagram (excludes link padding).
    pub end: usize,
}

impl TcpV4Layout {
    pub fn headers_len(&self) -> usize {
        self.tcp + self.tcp_len
    }

    pub fn parse(frame: &[u8]) -> Result<TcpV4Layout, OffloadError> {
        let (ip, end) = ipv4_carrying(frame, ipv4::PROTO_TCP, OffloadError::NotTcpV4)?;
        let ip_len = ip.header_len();
        let t = tcp::Packet::new_checked(ip.payload()).map_err(|_| OffloadError::Malformed)?;
        Ok(TcpV4Layout {
            ip: ethernet::HEADER_LEN,
            ip_len,
            tcp: ethernet::HEADER_LEN + ip_len,
            tcp_len: t.header_len(),
            end,
        })
    }
}

/// The IPv4 packet in an Ethernet frame, if it is an unfragmented `proto` packet (`wrong`
/// otherwise), and where the IP datagram ends in the frame (link padding excluded).
fn ipv4_carrying(
    frame: &[u8],
    proto: u8,
    wrong: OffloadError,
) -> Result<(ipv4::Packet<&[u8]>, usize), OffloadError> {
    let eth = ethernet::Frame::new_checked(frame).map_err(|_| wrong)?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return Err(wrong);
    }
    let ip = ipv4::Packet::new_checked(&frame[ethernet::HEADER_LEN..])
        .map_err(|_| OffloadError::Malformed)?;
    if ip.protocol() != proto || ip.is_fragment() {
        return Err(wrong);
    }
    let end = ethernet::HEADER_LEN + ip.total_len() as usize;
    Ok((ip, end))
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::net::Ipv4Addr;

    use crate::wire::{ethernet, ipv4, tcp};

    /// The virtio-net header a TAP puts on a TCPv4 super-frame (Ethernet + IPv4 + TCP without
    /// options, checksum left to complete): NEEDS_CSUM, GSO_TCPV4, segments of `mss`.
    pub fn tso_hdr(mss: u16) -> crate::wire::virtio_net::Repr {
        use crate::wire::virtio_net;
        virtio_net::Repr {
            flags: virtio_net::FLAG_NEEDS_CSUM,
            gso_type: virtio_net::GSO_TCPV4,
            hdr_len: 54,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    pub const SRC: Ipv4Addr = Ipv4Addr::new(10, 255, 1, 1);
    pub const DST: Ipv4Addr = Ipv4Addr::new(10, 255, 2, 1);

    /// Ethernet and IPv4 headers (SRC -> DST, `proto`, id `ident`) before `l4_len` zero bytes.
    pub fn eth_ipv4(proto: u8, l4_len: usize, ident: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + l4_len];
        ethernet::Repr {
            dst: [0xee; 6],
            src: [0xaa; 6],
            ethertype: ethernet::ETHERTYPE_IPV4,
        }
        .emit(&mut ethernet::Frame::new_unchecked(&mut f[..]));
        ipv4::Repr {
            src: SRC,
            dst: DST,
            protocol: proto,
            payload_len: l4_len as u16,
            ttl: 64,
            tos: 0,
            ident,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut f[14..]));
        f
    }

    /// An Ethernet/IPv4/TCP frame with valid checksums.
    pub fn tcp_frame(seq: u32, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        let thl = 20 + options.len();
        let mut f = eth_ipv4(ipv4::PROTO_TCP, thl + payload.len(), 100);
        let mut t = tcp::Packet::new_unchecked(&mut f[34..]);
        tcp::Repr {
            src_port: 40000,
            dst_port: 8080,
            seq,
            ack: 77,
            flags,
            window: 512,
        }
        .emit(&mut t);
        t.set_header_len(thl);
        f[54..54 + options.len()].copy_from_slice(options);
        f[34 + thl..].copy_from_slice(payload);
        tcp::Packet::new_unchecked(&mut f[34..]).fill_checksum(SRC, DST);
        f
    }

    pub fn checksums_ok(f: &[u8]) -> bool {
        let ip = ipv4::Packet::new_checked(&f[14..]).unwrap();
        ip.verify_checksum()
            && tcp::Packet::new_checked(ip.payload())
                .unwrap()
                .verify_checksum(ip.src(), ip.dst())
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::wire::checksum;

    #[test]
    fn completes_partial_checksum() {
        let mut f = tcp_frame(1, tcp::ACK, &[], b"some payload");
        assert!(checksums_ok(&f));
        let good = f.clone();
        // What a TAP hands over: the field holds the folded pseudo-header sum.
        let tcp_len = (f.len() - 34) as u32;
        let ph = checksum::fold(checksum::pseudo_header(SRC, DST, 6, tcp_len));
        f[50..52].copy_from_slice(&ph.to_be_bytes());
        let hdr = virtio_net::Repr {
            flags: virtio_net::FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        complete_checksum(&mut f, &hdr).unwrap();
        assert_eq!(f, good);
        let bad = virtio_net::Repr {
            csum_start: 60000,
            ..hdr
        };
        assert_eq!(
            complete_checksum(&mut f, &bad),
            Err(OffloadError::BadChecksumOffsets)
        );
    }

    #[test]
    fn layout() {
        let f = tcp_frame(1, tcp::ACK, &[1, 1, 1, 1], b"x");
        let l = TcpV4Layout::parse(&f).unwrap();
        assert_eq!((l.ip, l.tcp, l.tcp_len, l.end), (14, 34, 24, f.len()));
        assert_eq!(TcpV4Layout::parse(&f[..40]), Err(OffloadError::Malformed));
    }
}
