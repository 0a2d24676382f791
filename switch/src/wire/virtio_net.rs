//! `struct virtio_net_hdr` (virtio spec 5.1.6), 10 bytes, little-endian fields, as a TAP with
//! IFF_VNET_HDR prepends to every frame.

use super::{Field, Result, WireError};

pub const FLAG_NEEDS_CSUM: u8 = 1;
pub const FLAG_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

mod field {
    use super::Field;
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Field = 2..4;
    pub const GSO_SIZE: Field = 4..6;
    pub const CSUM_START: Field = 6..8;
    pub const CSUM_OFFSET: Field = 8..10;
}

pub const HEADER_LEN: usize = 10;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn set_le16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }
    pub fn hdr_len(&self) -> u16 {
        le16(self.buffer.as_ref(), field::HDR_LEN.start)
    }
    pub fn gso_size(&self) -> u16 {
        le16(self.buffer.as_ref(), field::GSO_SIZE.start)
    }
    pub fn csum_start(&self) -> u16 {
        le16(self.buffer.as_ref(), field::CSUM_START.start)
    }
    pub fn csum_offset(&self) -> u16 {
        le16(self.buffer.as_ref(), field::CSUM_OFFSET.start)
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v
    }
    pub fn set_gso_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = v
    }
    pub fn set_hdr_len(&mut self, v: u16) {
        set_le16(self.buffer.as_mut(), field::HDR_LEN.start, v)
    }
    pub fn set_gso_size(&mut self, v: u16) {
        set_le16(self.buffer.as_mut(), field::GSO_SIZE.start, v)
    }
    pub fn set_csum_start(&mut self, v: u16) {
        set_le16(self.buffer.as_mut(), field::CSUM_START.start, v)
    }
    pub fn set_csum_offset(&mut self, v: u16) {
        set_le16(self.buffer.as_mut(), field::CSUM_OFFSET.start, v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Repr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        Ok(Repr {
            flags: p.flags(),
            gso_type: p.gso_type(),
            hdr_len: p.hdr_len(),
            gso_size: p.gso_size(),
            csum_start: p.csum_start(),
            csum_offset: p.csum_offset(),
        })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_flags(self.flags);
        p.set_gso_type(self.gso_type);
        p.set_hdr_len(self.hdr_len);
        p.set_gso_size(self.gso_size);
        p.set_csum_start(self.csum_start);
        p.set_csum_offset(self.csum_offset);
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & FLAG_NEEDS_CSUM != 0
    }

    /// The GSO type without the ECN bit.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    /// Checks csum_start/csum_offset against a frame of `frame_len` bytes.
    pub fn check_csum_fields(&self, frame_len: usize) -> Result<()> {
        if self.needs_csum() && self.csum_start as usize + self.csum_offset as usize + 2 > frame_len
        {
            return Err(WireError::Malformed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tso_bytes() {
        // A TCPv4 super-frame as a TAP hands it: NEEDS_CSUM, TCPV4, hdr_len 54, gso_size 1448,
        // csum_start 34, csum_offset 16.
        let b = [0x01, 0x01, 0x36, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00];
        let r = Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(
            r,
            Repr {
                flags: FLAG_NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 54,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16
            }
        );
        let mut out = [0u8; 10];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
        assert!(Packet::new_checked(&b[..9]).is_err());
        assert!(r.check_csum_fields(52).is_ok());
        assert!(r.check_csum_fields(51).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(flags in any::<u8>(), gso_type in any::<u8>(), hdr_len in any::<u16>(), gso_size in any::<u16>(), csum_start in any::<u16>(), csum_offset in any::<u16>()) {
            let r = Repr { flags, gso_type, hdr_len, gso_size, csum_start, csum_offset };
            let mut b = [0u8; 10];
            r.emit(&mut Packet::new_unchecked(&mut b[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(), r);
        }
    }
}
