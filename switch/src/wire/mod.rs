//! Wire formats as byte views, in smoltcp's style: `Packet<T: AsRef<[u8]>>` over a buffer, a
//! `mod field` of byte ranges, `new_checked` for untrusted input (after which no accessor
//! panics) and a `Repr` with `parse`/`emit` where a structured form is useful.

pub mod arp;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;
pub mod virtio_net;
pub mod vxlan_gbp;

/// Why a header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("buffer too short for the header")]
    Truncated,
    #[error("header field has an unsupported or invalid value")]
    Malformed,
    #[error("checksum mismatch")]
    Checksum,
}

pub type Result<T> = core::result::Result<T, WireError>;

pub(crate) type Field = core::ops::Range<usize>;

pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(crate) fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Internet checksum helpers (RFC 1071, RFC 1624).
pub mod checksum {
    use std::net::Ipv4Addr;

    /// Ones-complement sum of `data`, folded to 16 bits (in a u32, ready for [`combine`]) but not
    /// inverted.
    ///
    /// Eight bytes at a time: the ones-complement sum does not depend on byte order (RFC 1071
    /// section 2(B)), so native-endian 32-bit halves are added, the total folded to 16 bits and
    /// turned into network order once at the end.
    pub fn sum(data: &[u8]) -> u32 {
        let mut acc: u64 = 0;
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            let v = u64::from_ne_bytes(b);
            acc += (v & 0xffff_ffff) + (v >> 32);
        }
        let mut pairs = words.remainder().chunks_exact(2);
        for c in &mut pairs {
            acc += u16::from_ne_bytes([c[0], c[1]]) as u64;
        }
        if let [last] = pairs.remainder() {
            acc += u16::from_ne_bytes([*last, 0]) as u64;
        }
        u16::from_be(fold(fold64(acc))) as u32
    }

    fn fold64(mut acc: u64) -> u32 {
        while acc > 0xffff_ffff {
            acc = (acc & 0xffff_ffff) + (acc >> 32);
        }
        acc as u32
    }

    /// Folds a 32-bit sum to 16 bits (not inverted).
    pub fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// Adds two partial sums.
    pub fn combine(a: u32, b: u32) -> u32 {
        fold64(a as u64 + b as u64)
    }

    /// The checksum of `data`: `!fold(sum(data))`.
    pub fn data(data: &[u8]) -> u16 {
        !fold(sum(data))
    }

    /// Sum of the IPv4 pseudo-header for a transport checksum.
    pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u32) -> u32 {
        let s = src.octets();
        let d = dst.octets();
        let mut acc: u32 = 0;
        acc += u16::from_be_bytes([s[0], s[1]]) as u32 + u16::from_be_bytes([s[2], s[3]]) as u32;
        acc += u16::from_be_bytes([d[0], d[1]]) as u32 + u16::from_be_bytes([d[2], d[3]]) as u32;
        acc += proto as u32;
        acc += len;
        acc
    }

    /// Incremental update (RFC 1624 eqn. 3): the checksum after a 16-bit word changes.
    pub fn update(old_csum: u16, old_word: u16, new_word: u16) -> u16 {
        let acc = (!old_csum as u32) + (!old_word as u32) + new_word as u32;
        !fold(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::checksum;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum::fold(checksum::sum(&d)), 0xddf2);
        assert_eq!(checksum::data(&d), !0xddf2);
    }

    /// The straightforward big-endian 16-bit sum.
    fn sum_ref(data: &[u8]) -> u32 {
        let mut acc: u64 = 0;
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            acc += u16::from_be_bytes([c[0], c[1]]) as u64;
        }
        if let [last] = chunks.remainder() {
            acc += (*last as u64) << 8;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u32
    }

    proptest::proptest! {
        #[test]
        fn fast_sum_matches_reference(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), skip in 0usize..8) {
            let d = &data[skip.min(data.len())..];
            proptest::prop_assert_eq!(checksum::fold(checksum::sum(d)) as u32, sum_ref(d));
        }
    }

    #[test]
    fn fast_sum_edges() {
        for d in [
            &[][..],
            &[0xff][..],
            &[0xff; 7][..],
            &[0xff; 8][..],
            &[0xff; 65535][..],
            &[0; 9][..],
        ] {
            assert_eq!(
                checksum::fold(checksum::sum(d)) as u32,
                sum_ref(d),
                "{}",
                d.len()
            );
        }
    }

    #[test]
    fn incremental_matches_full() {
        let mut d = [
            0x45u8, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 0x40, 0x01, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let c = checksum::data(&d);
        d[10..12].copy_from_slice(&c.to_be_bytes());
        let old = u16::from_be_bytes([d[8], d[9]]);
        d[8] -= 1;
        let new = u16::from_be_bytes([d[8], d[9]]);
        let c2 = checksum::update(c, old, new);
        d[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(c2, checksum::data(&d));
    }
}
