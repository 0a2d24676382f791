//! ICMPv4 (RFC 792): echo and the error messages whose embedded header the switch matches.

use super::{checksum, get_u16, get_u32, set_u16, set_u32, Field, Result, WireError};

pub const ECHO_REPLY: u8 = 0;
pub const DEST_UNREACHABLE: u8 = 3;
pub const ECHO_REQUEST: u8 = 8;
pub const TIME_EXCEEDED: u8 = 11;
/// Destination unreachable code: fragmentation needed and DF set.
pub const CODE_FRAG_NEEDED: u8 = 4;

mod field {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const REST: Field = 4..8;
    pub const DATA: usize = 8;
}

pub const HEADER_LEN: usize = field::DATA;

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

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn msg_type(&self) -> u8 {
        self.b()[field::TYPE]
    }
    pub fn code(&self) -> u8 {
        self.b()[field::CODE]
    }
    pub fn checksum(&self) -> u16 {
        get_u16(self.b(), field::CHECKSUM.start)
    }
    /// The 4 bytes after the checksum (echo identifier and sequence, next-hop MTU, ...).
    pub fn rest(&self) -> u32 {
        get_u32(self.b(), field::REST.start)
    }
    pub fn data(&self) -> &[u8] {
        &self.b()[field::DATA..]
    }
    /// True for the error messages that embed the offending datagram's header.
    pub fn is_error(&self) -> bool {
        matches!(self.msg_type(), DEST_UNREACHABLE | TIME_EXCEEDED)
    }
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.b())) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v
    }
    pub fn set_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v
    }
    pub fn set_rest(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::REST.start, v)
    }
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA..]
    }
    pub fn fill_checksum(&mut self) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM.start, 0);
        let c = checksum::data(self.buffer.as_ref());
        set_u16(self.buffer.as_mut(), field::CHECKSUM.start, c);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub msg_type: u8,
    pub code: u8,
    pub rest: u32,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        if !p.verify_checksum() {
            return Err(WireError::Checksum);
        }
        Ok(Repr {
            msg_type: p.msg_type(),
            code: p.code(),
            rest: p.rest(),
        })
    }

    /// Writes the header and fills the checksum over the whole buffer (data included).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_msg_type(self.msg_type);
        p.set_code(self.code);
        p.set_rest(self.rest);
        p.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn echo_bytes() {
        // echo request id 1 seq 1, no data: 0800 + 0000 + 0001 + 0001 -> 0x0802 -> !0x0802 = 0xf7fd
        let b = [0x08, 0x00, 0xf7, 0xfd, 0x00, 0x01, 0x00, 0x01];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(
            Repr::parse(&p).unwrap(),
            Repr {
                msg_type: ECHO_REQUEST,
                code: 0,
                rest: 0x0001_0001
            }
        );
        assert!(!p.is_error());
        let mut out = [0u8; 8];
        Repr::parse(&p)
            .unwrap()
            .emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, b);
        assert!(Packet::new_checked(&b[..7]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(msg_type in any::<u8>(), code in any::<u8>(), rest in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let r = Repr { msg_type, code, rest };
            let mut b = vec![0u8; 8];
            b.extend_from_slice(&data);
            r.emit(&mut Packet::new_unchecked(&mut b[..]));
            let p = Packet::new_checked(&b[..]).unwrap();
            prop_assert_eq!(Repr::parse(&p).unwrap(), r);
            prop_assert_eq!(p.data(), &data[..]);
        }
    }
}
