//! UDP headers (RFC 768).

use std::net::Ipv4Addr;

use super::{checksum, get_u16, set_u16, Field, Result, WireError};

pub mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

pub const HEADER_LEN: usize = 8;

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Checks that the header fits. The length field is checked by [`Repr::parse`], since
    /// the first fragment of a datagram carries less than the length says.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn src_port(&self) -> u16 {
        get_u16(self.b(), field::SRC_PORT.start)
    }
    pub fn dst_port(&self) -> u16 {
        get_u16(self.b(), field::DST_PORT.start)
    }
    pub fn len(&self) -> u16 {
        get_u16(self.b(), field::LENGTH.start)
    }
    pub fn is_empty(&self) -> bool {
        self.len() as usize <= HEADER_LEN
    }
    pub fn checksum(&self) -> u16 {
        get_u16(self.b(), field::CHECKSUM.start)
    }
    pub fn payload(&self) -> &[u8] {
        let b = self.b();
        let end = (self.len() as usize).clamp(HEADER_LEN, b.len());
        &b[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_src_port(&mut self, v: u16) {
        set_u16(self.m(), field::SRC_PORT.start, v)
    }
    pub fn set_dst_port(&mut self, v: u16) {
        set_u16(self.m(), field::DST_PORT.start, v)
    }
    pub fn set_len(&mut self, v: u16) {
        set_u16(self.m(), field::LENGTH.start, v)
    }
    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.m(), field::CHECKSUM.start, v)
    }
    /// Computes the checksum over the whole buffer (0 is sent as 0xffff).
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.b();
        let ph = checksum::pseudo_header(src, dst, super::ipv4::PROTO_UDP, b.len() as u32);
        let c = !checksum::fold(checksum::combine(ph, checksum::sum(b)));
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload_len: u16,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        let len = p.len() as usize;
        if len < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len > p.b().len() {
            return Err(WireError::Truncated);
        }
        Ok(Repr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: (len - HEADER_LEN) as u16,
        })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len(self.payload_len.saturating_add(HEADER_LEN as u16));
        p.set_checksum(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bytes() {
        let b = [0x30, 0x39, 0x12, 0xb5, 0x00, 0x0a, 0x00, 0x00, 0xab, 0xcd];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (12345, 4789, 10));
        assert_eq!(p.payload(), &[0xab, 0xcd]);
        assert_eq!(Repr::parse(&p).unwrap().payload_len, 2);
        assert_eq!(
            Repr::parse(&Packet::new_checked(&b[..9]).unwrap()),
            Err(WireError::Truncated)
        );
        let mut bad = b;
        bad[5] = 7;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bad[..]).unwrap()),
            Err(WireError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn round_trip(src_port in any::<u16>(), dst_port in any::<u16>(), payload_len in 0u16..600) {
            let r = Repr { src_port, dst_port, payload_len };
            let mut b = vec![0u8; 8 + payload_len as usize];
            r.emit(&mut Packet::new_unchecked(&mut b[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(), r);
        }
    }
}
