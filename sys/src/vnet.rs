//! The virtio-net header that prefixes every frame on a TAP opened with `vnet_hdr`
//! (`struct virtio_net_hdr`, 10 bytes; 12 with TUNSETVNETHDRSZ 12). Fields are in the host's
//! byte order (little-endian on the machines we run on; tun's default without TUNSETVNETBE).
//!
//! The switch has its own byte view of this header for the hot path; this is the reference
//! used by the device code and its tests.

/// Size of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;
/// Size of `struct virtio_net_hdr_mrg_rxbuf` (adds num_buffers).
pub const VNET_HDR_LEN_MRG: usize = 12;

/// flags: the checksum at csum_start + csum_offset still has to be computed.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// flags: the checksum is already known good.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;

/// gso_type: not a GSO frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// gso_type: IPv4 TCP (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// gso_type: UDP fragmentation (UFO).
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// gso_type: IPv6 TCP (TSO).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// gso_type: UDP segmentation (USO), IPv4 or IPv6.
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// gso_type bit: TCP with ECN.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// The fields of a virtio-net header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Bytes of headers (Ethernet + IP + L4) in a GSO frame.
    pub hdr_len: u16,
    /// Payload bytes per segment in a GSO frame.
    pub gso_size: u16,
    /// Where checksumming starts, from the Ethernet header (34 for IPv4 without options).
    pub csum_start: u16,
    /// Where the checksum goes, from csum_start (TCP 16, UDP 6).
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads the first 10 bytes; None if `b` is shorter.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the 10 bytes into the start of `b` (panics if `b` is shorter than 10).
    pub fn emit(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }

    /// The bytes of this header.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        self.emit(&mut b);
        b
    }
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn tcp4_tso_bytes() {
        let h = VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1398,
            csum_start: 34,
            csum_offset: 16,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 1, 54, 0, 0x76, 0x05, 34, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }
}
