//! ARP over Ethernet for IPv4 (RFC 826).

use std::net::Ipv4Addr;

use super::ethernet::Mac;
use super::{get_u16, set_u16, Field, Result, WireError};

mod field {
    use super::Field;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    pub const SHA: Field = 8..14;
    pub const SPA: Field = 14..18;
    pub const THA: Field = 18..24;
    pub const TPA: Field = 24..28;
}

pub const PACKET_LEN: usize = 28;
pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Checks the length only; [`Repr::parse`] checks the hardware/protocol types.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < PACKET_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn htype(&self) -> u16 {
        get_u16(self.b(), field::HTYPE.start)
    }
    pub fn ptype(&self) -> u16 {
        get_u16(self.b(), field::PTYPE.start)
    }
    pub fn hlen(&self) -> u8 {
        self.b()[field::HLEN]
    }
    pub fn plen(&self) -> u8 {
        self.b()[field::PLEN]
    }
    pub fn oper(&self) -> u16 {
        get_u16(self.b(), field::OPER.start)
    }
    pub fn sha(&self) -> Mac {
        self.b()[field::SHA].try_into().unwrap_or([0; 6])
    }
    pub fn spa(&self) -> Ipv4Addr {
        let s = &self.b()[field::SPA];
        Ipv4Addr::new(s[0], s[1], s[2], s[3])
    }
    pub fn tha(&self) -> Mac {
        self.b()[field::THA].try_into().unwrap_or([0; 6])
    }
    pub fn tpa(&self) -> Ipv4Addr {
        let s = &self.b()[field::TPA];
        Ipv4Addr::new(s[0], s[1], s[2], s[3])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_htype(&mut self, v: u16) {
        set_u16(self.m(), field::HTYPE.start, v)
    }
    pub fn set_ptype(&mut self, v: u16) {
        set_u16(self.m(), field::PTYPE.start, v)
    }
    pub fn set_hlen(&mut self, v: u8) {
        self.m()[field::HLEN] = v
    }
    pub fn set_plen(&mut self, v: u8) {
        self.m()[field::PLEN] = v
    }
    pub fn set_oper(&mut self, v: u16) {
        set_u16(self.m(), field::OPER.start, v)
    }
    pub fn set_sha(&mut self, v: Mac) {
        self.m()[field::SHA].copy_from_slice(&v)
    }
    pub fn set_spa(&mut self, v: Ipv4Addr) {
        self.m()[field::SPA].copy_from_slice(&v.octets())
    }
    pub fn set_tha(&mut self, v: Mac) {
        self.m()[field::THA].copy_from_slice(&v)
    }
    pub fn set_tpa(&mut self, v: Ipv4Addr) {
        self.m()[field::TPA].copy_from_slice(&v.octets())
    }
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub oper: u16,
    pub sha: Mac,
    pub spa: Ipv4Addr,
    pub tha: Mac,
    pub tpa: Ipv4Addr,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        if p.htype() != 1 || p.ptype() != 0x0800 || p.hlen() != 6 || p.plen() != 4 {
            return Err(WireError::Malformed);
        }
        Ok(Repr {
            oper: p.oper(),
            sha: p.sha(),
            spa: p.spa(),
            tha: p.tha(),
            tpa: p.tpa(),
        })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_htype(1);
        p.set_ptype(0x0800);
        p.set_hlen(6);
        p.set_plen(4);
        p.set_oper(self.oper);
        p.set_sha(self.sha);
        p.set_spa(self.spa);
        p.set_tha(self.tha);
        p.set_tpa(self.tpa);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_bytes() {
        // who-has 169.254.0.1 tell 10.255.1.2, as a container with ee:ee:0a:ff:01:02 sends it.
        let b = [
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0xee, 0xee, 0x0a, 0xff, 0x01, 0x02,
            0x0a, 0xff, 0x01, 0x02, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0x00, 0x01,
        ];
        let r = Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(r.oper, OP_REQUEST);
        assert_eq!(r.spa, Ipv4Addr::new(10, 255, 1, 2));
        assert_eq!(r.tpa, Ipv4Addr::new(169, 254, 0, 1));
        assert_eq!(r.sha, [0xee, 0xee, 10, 255, 1, 2]);
        let mut out = [0u8; 28];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
        assert!(Packet::new_checked(&b[..27]).is_err());
        let mut bad = b;
        bad[4] = 8;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bad[..]).unwrap()),
            Err(WireError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn round_trip(oper in any::<u16>(), sha in any::<[u8;6]>(), tha in any::<[u8;6]>(), spa in any::<u32>(), tpa in any::<u32>()) {
            let r = Repr { oper, sha, spa: spa.into(), tha, tpa: tpa.into() };
            let mut b = [0u8; 28];
            r.emit(&mut Packet::new_unchecked(&mut b[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(), r);
        }
    }
}
