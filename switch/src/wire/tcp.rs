//! TCP headers (RFC 9293): the fields the switch needs for tracking and offloads.

use std::net::Ipv4Addr;

use super::{checksum, get_u16, get_u32, set_u16, set_u32, Field, Result, WireError};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;
pub const ECE: u8 = 0x40;
pub const CWR: u8 = 0x80;

mod field {
    use super::Field;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ: Field = 4..8;
    pub const ACK: Field = 8..12;
    pub const OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
}

pub const HEADER_LEN: usize = 20;
/// Offset of the checksum field inside the TCP header.
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Checks that the header, options included, fits the buffer.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let p = Packet { buffer };
        if p.header_len() < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if p.header_len() > p.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(p)
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
    pub fn seq(&self) -> u32 {
        get_u32(self.b(), field::SEQ.start)
    }
    pub fn ack(&self) -> u32 {
        get_u32(self.b(), field::ACK.start)
    }
    pub fn header_len(&self) -> usize {
        ((self.b()[field::OFF] >> 4) as usize) * 4
    }
    pub fn flags(&self) -> u8 {
        self.b()[field::FLAGS]
    }
    pub fn window(&self) -> u16 {
        get_u16(self.b(), field::WINDOW.start)
    }
    pub fn checksum(&self) -> u16 {
        get_u16(self.b(), field::CHECKSUM.start)
    }
    pub fn urgent(&self) -> u16 {
        get_u16(self.b(), field::URGENT.start)
    }
    pub fn options(&self) -> &[u8] {
        &self.b()[HEADER_LEN..self.header_len()]
    }
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }
    /// Verifies the checksum over the whole buffer (header + payload).
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.b();
        let ph = checksum::pseudo_header(src, dst, super::ipv4::PROTO_TCP, b.len() as u32);
        checksum::fold(checksum::combine(ph, checksum::sum(b))) == 0xffff
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
    pub fn set_seq(&mut self, v: u32) {
        set_u32(self.m(), field::SEQ.start, v)
    }
    pub fn set_ack(&mut self, v: u32) {
        set_u32(self.m(), field::ACK.start, v)
    }
    pub fn set_header_len(&mut self, v: usize) {
        self.m()[field::OFF] = ((v / 4) as u8) << 4;
    }
    pub fn set_flags(&mut self, v: u8) {
        self.m()[field::FLAGS] = v
    }
    pub fn set_window(&mut self, v: u16) {
        set_u16(self.m(), field::WINDOW.start, v)
    }
    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.m(), field::CHECKSUM.start, v)
    }
    pub fn set_urgent(&mut self, v: u16) {
        set_u16(self.m(), field::URGENT.start, v)
    }
    /// Computes the checksum over the whole buffer (header + payload).
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.b();
        let ph = checksum::pseudo_header(src, dst, super::ipv4::PROTO_TCP, b.len() as u32);
        let c = !checksum::fold(checksum::combine(ph, checksum::sum(b)));
        self.set_checksum(c);
    }
}

/// A TCP header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        Ok(Repr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq(),
            ack: p.ack(),
            flags: p.flags(),
            window: p.window(),
        })
    }

    /// Writes a 20-byte header; the checksum is left zero (see [`Packet::fill_checksum`]).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq(self.seq);
        p.set_ack(self.ack);
        p.set_header_len(HEADER_LEN);
        p.set_flags(self.flags);
        p.set_window(self.window);
        p.set_checksum(0);
        p.set_urgent(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn syn_bytes() {
        // SYN 10.0.0.1:40000 -> 10.0.0.2:8080 seq 1, window 0xffff, no options.
        let mut b = [
            0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
        ];
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        // pseudo: 0a00+0001+0a00+0002+0006+0014 = 0x141d; header: 9c40+1f90+0001+5002+ffff = 0x20BD2
        // total 0x141d+0x20bd2 = 0x21FEF -> 0x1FF1 -> !0x1FF1 = 0xE00E
        Packet::new_unchecked(&mut b[..]).fill_checksum(src, dst);
        assert_eq!(&b[16..18], &[0xe0, 0x0e]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum(src, dst));
        assert_eq!((p.src_port(), p.dst_port(), p.flags()), (40000, 8080, SYN));
        let mut bad = b;
        bad[12] = 0x60;
        assert_eq!(
            Packet::new_checked(&bad[..]).err(),
            Some(WireError::Truncated)
        );
        bad[12] = 0x40;
        assert_eq!(
            Packet::new_checked(&bad[..]).err(),
            Some(WireError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn round_trip(src_port in any::<u16>(), dst_port in any::<u16>(), seq in any::<u32>(),
                      ack in any::<u32>(), flags in any::<u8>(), window in any::<u16>()) {
            let r = Repr { src_port, dst_port, seq, ack, flags, window };
            let mut b = [0u8; 20];
            r.emit(&mut Packet::new_unchecked(&mut b[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(), r);
        }
    }
}
