//! IPv4 headers (RFC 791).

use std::net::Ipv4Addr;

use super::{checksum, get_u16, set_u16, Field, Result, WireError};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

mod field {
    use super::Field;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

pub const HEADER_LEN: usize = 20;

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Checks version 4, IHL >= 5, and that the header and the total length fit the buffer
    /// (the buffer may be longer, e.g. Ethernet padding). Does not check the checksum.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = Packet { buffer };
        if p.version() != 4 || p.header_len() < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        let len = p.buffer.as_ref().len();
        if p.header_len() > len || (p.total_len() as usize) > len {
            return Err(WireError::Truncated);
        }
        if (p.total_len() as usize) < p.header_len() {
            return Err(WireError::Malformed);
        }
        Ok(p)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn version(&self) -> u8 {
        self.b()[field::VER_IHL] >> 4
    }
    pub fn header_len(&self) -> usize {
        ((self.b()[field::VER_IHL] & 0x0f) as usize) * 4
    }
    pub fn tos(&self) -> u8 {
        self.b()[field::TOS]
    }
    pub fn total_len(&self) -> u16 {
        get_u16(self.b(), field::LENGTH.start)
    }
    pub fn ident(&self) -> u16 {
        get_u16(self.b(), field::IDENT.start)
    }
    pub fn dont_frag(&self) -> bool {
        get_u16(self.b(), field::FLG_OFF.start) & 0x4000 != 0
    }
    pub fn more_frags(&self) -> bool {
        get_u16(self.b(), field::FLG_OFF.start) & 0x2000 != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (get_u16(self.b(), field::FLG_OFF.start) & 0x1fff) << 3
    }
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }
    pub fn checksum(&self) -> u16 {
        get_u16(self.b(), field::CHECKSUM.start)
    }
    pub fn src(&self) -> Ipv4Addr {
        let s = &self.b()[field::SRC];
        Ipv4Addr::new(s[0], s[1], s[2], s[3])
    }
    pub fn dst(&self) -> Ipv4Addr {
        let s = &self.b()[field::DST];
        Ipv4Addr::new(s[0], s[1], s[2], s[3])
    }
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(&self.b()[..self.header_len()])) == 0xffff
    }
    /// The payload as the total length says (excludes link-layer padding).
    pub fn payload(&self) -> &[u8] {
        let b = self.b();
        let end = (self.total_len() as usize).min(b.len());
        &b[self.header_len().min(end)..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_ver_ihl(&mut self, ihl_bytes: usize) {
        self.m()[field::VER_IHL] = 0x40 | ((ihl_bytes / 4) as u8 & 0x0f);
    }
    pub fn set_tos(&mut self, v: u8) {
        self.m()[field::TOS] = v
    }
    pub fn set_total_len(&mut self, v: u16) {
        set_u16(self.m(), field::LENGTH.start, v)
    }
    pub fn set_ident(&mut self, v: u16) {
        set_u16(self.m(), field::IDENT.start, v)
    }
    /// Sets DF, MF and the offset (in bytes, multiple of 8).
    pub fn set_flags_offset(&mut self, df: bool, mf: bool, offset: u16) {
        let v = (if df { 0x4000 } else { 0 })
            | (if mf { 0x2000 } else { 0 })
            | ((offset >> 3) & 0x1fff);
        set_u16(self.m(), field::FLG_OFF.start, v)
    }
    pub fn set_ttl(&mut self, v: u8) {
        self.m()[field::TTL] = v
    }
    pub fn set_protocol(&mut self, v: u8) {
        self.m()[field::PROTOCOL] = v
    }
    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.m(), field::CHECKSUM.start, v)
    }
    pub fn set_src(&mut self, v: Ipv4Addr) {
        self.m()[field::SRC].copy_from_slice(&v.octets())
    }
    pub fn set_dst(&mut self, v: Ipv4Addr) {
        self.m()[field::DST].copy_from_slice(&v.octets())
    }
    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::data(&self.b()[..hl]);
        self.set_checksum(c);
    }
    /// Decrements the TTL and updates the checksum incrementally (RFC 1624).
    pub fn decrement_ttl(&mut self) {
        let b = self.b();
        let old = get_u16(b, field::TTL);
        let ttl = self.ttl().saturating_sub(1);
        self.set_ttl(ttl);
        let new = get_u16(self.b(), field::TTL);
        let c = checksum::update(self.checksum(), old, new);
        self.set_checksum(c);
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        let end = (self.total_len() as usize).min(self.b().len());
        &mut self.m()[hl.min(end)..end]
    }
}

/// An IPv4 header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub payload_len: u16,
    pub ttl: u8,
    pub tos: u8,
    pub ident: u16,
    pub dont_frag: bool,
}

impl Repr {
    /// Parses a checked packet: rejects options, fragments and bad checksums.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        if p.header_len() != HEADER_LEN || p.is_fragment() {
            return Err(WireError::Malformed);
        }
        if !p.verify_checksum() {
            return Err(WireError::Checksum);
        }
        Ok(Repr {
            src: p.src(),
            dst: p.dst(),
            protocol: p.protocol(),
            payload_len: p.total_len() - HEADER_LEN as u16,
            ttl: p.ttl(),
            tos: p.tos(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
        })
    }

    /// Writes the 20-byte header (with checksum) into a buffer of at least 20 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_ver_ihl(HEADER_LEN);
        p.set_tos(self.tos);
        p.set_total_len(self.payload_len.saturating_add(HEADER_LEN as u16));
        p.set_ident(self.ident);
        p.set_flags_offset(self.dont_frag, false, 0);
        p.set_ttl(self.ttl);
        p.set_protocol(self.protocol);
        p.set_src(self.src);
        p.set_dst(self.dst);
        p.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // An ICMP echo 10.255.1.2 -> 10.255.2.3, ttl 64, id 0x1c46, DF; checksum worked out by hand.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x54, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 255, 1, 2, 10,
        255, 2, 3,
    ];

    fn with_csum() -> Vec<u8> {
        let mut b = HDR.to_vec();
        b.resize(0x54, 0);
        // sum: 4500+0054+1c46+4000+4001+0aff+0102+0aff+0203 = 0xFA9E -> !0xFA9E = 0x0561
        b[10] = 0x05;
        b[11] = 0x61;
        b
    }

    #[test]
    fn hand_checked() {
        let b = with_csum();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.src(), Ipv4Addr::new(10, 255, 1, 2));
        assert_eq!(p.dst(), Ipv4Addr::new(10, 255, 2, 3));
        assert_eq!(p.ttl(), 64);
        assert!(p.dont_frag() && !p.is_fragment());
        assert_eq!(p.payload().len(), 0x54 - 20);
        let r = Repr::parse(&p).unwrap();
        let mut out = [0u8; 20];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[..], &b[..20]);
    }

    #[test]
    fn rejects() {
        let b = with_csum();
        assert_eq!(
            Packet::new_checked(&b[..19]).err(),
            Some(WireError::Truncated)
        );
        assert_eq!(
            Packet::new_checked(&b[..0x53]).err(),
            Some(WireError::Truncated)
        );
        let mut v6 = b.clone();
        v6[0] = 0x65;
        assert_eq!(
            Packet::new_checked(&v6[..]).err(),
            Some(WireError::Malformed)
        );
        let mut ihl = b.clone();
        ihl[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&ihl[..]).err(),
            Some(WireError::Malformed)
        );
        let mut short = b.clone();
        short[3] = 10;
        assert_eq!(
            Packet::new_checked(&short[..]).err(),
            Some(WireError::Malformed)
        );
        let mut bad = b.clone();
        bad[11] ^= 1;
        let p = Packet::new_checked(&bad[..]).unwrap();
        assert_eq!(Repr::parse(&p), Err(WireError::Checksum));
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut b = with_csum();
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.decrement_ttl();
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum());
    }

    proptest! {
        #[test]
        fn round_trip(src in any::<u32>(), dst in any::<u32>(), protocol in any::<u8>(),
                      payload_len in 0u16..2000, ttl in any::<u8>(), tos in any::<u8>(),
                      ident in any::<u16>(), dont_frag in any::<bool>()) {
            let r = Repr { src: src.into(), dst: dst.into(), protocol, payload_len, ttl, tos, ident, dont_frag };
            let mut b = vec![0u8; 20 + payload_len as usize];
            r.emit(&mut Packet::new_unchecked(&mut b[..]));
            let p = Packet::new_checked(&b[..]).unwrap();
            prop_assert_eq!(Repr::parse(&p).unwrap(), r);
        }

        #[test]
        fn decrement_any(ttl in 1u8..=255, ident in any::<u16>(), src in any::<u32>()) {
            let r = Repr { src: src.into(), dst: Ipv4Addr::new(1,2,3,4), protocol: 6, payload_len: 0, ttl, tos: 0, ident, dont_frag: true };
            let mut b = [0u8; 20];
            r.emit(&mut Packet::new_unchecked(&mut b[..]));
            let mut p = Packet::new_checked(&mut b[..]).unwrap();
            p.decrement_ttl();
            prop_assert!(p.verify_checksum());
        }

        #[test]
        fn arbitrary_never_panics(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&b[..]) {
                let _ = (p.payload(), p.verify_checksum(), p.frag_offset(), Repr::parse(&p));
            }
        }
    }
}
