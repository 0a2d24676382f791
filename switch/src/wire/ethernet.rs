//! Ethernet II frames.

use super::{get_u16, set_u16, Field, Result, WireError};

pub type Mac = [u8; 6];
pub const BROADCAST: Mac = [0xff; 6];

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;

mod field {
    use super::Field;
    pub const DST: Field = 0..6;
    pub const SRC: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: usize = 14;
}

pub const HEADER_LEN: usize = field::PAYLOAD;

/// True for broadcast and multicast (group) addresses.
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Frame { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst(&self) -> Mac {
        self.buffer.as_ref()[field::DST]
            .try_into()
            .unwrap_or([0; 6])
    }

    pub fn src(&self) -> Mac {
        self.buffer.as_ref()[field::SRC]
            .try_into()
            .unwrap_or([0; 6])
    }

    pub fn ethertype(&self) -> u16 {
        let b = self.buffer.as_ref();
        get_u16(b, field::ETHERTYPE.start)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst(&mut self, mac: Mac) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac);
    }

    pub fn set_src(&mut self, mac: Mac) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac);
    }

    pub fn set_ethertype(&mut self, t: u16) {
        set_u16(self.buffer.as_mut(), field::ETHERTYPE.start, t);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The header of an Ethernet II frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub dst: Mac,
    pub src: Mac,
    pub ethertype: u16,
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(f: &Frame<T>) -> Result<Repr> {
        Ok(Repr {
            dst: f.dst(),
            src: f.src(),
            ethertype: f.ethertype(),
        })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, f: &mut Frame<T>) {
        f.set_dst(self.dst);
        f.set_src(self.src);
        f.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bytes() {
        let b = [
            0xee, 0xee, 10, 255, 1, 2, 0xaa, 0xaa, 10, 255, 1, 3, 0x08, 0x00, 0x45,
        ];
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.dst(), [0xee, 0xee, 10, 255, 1, 2]);
        assert_eq!(f.src(), [0xaa, 0xaa, 10, 255, 1, 3]);
        assert_eq!(f.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(f.payload(), &[0x45]);
        assert_eq!(
            Frame::new_checked(&b[..13]).err(),
            Some(WireError::Truncated)
        );
        assert!(is_group(&BROADCAST) && !is_group(&f.dst()));
    }

    proptest! {
        #[test]
        fn round_trip(dst in any::<[u8; 6]>(), src in any::<[u8; 6]>(), t in any::<u16>()) {
            let r = Repr { dst, src, ethertype: t };
            let mut b = [0u8; 14];
            r.emit(&mut Frame::new_unchecked(&mut b[..]));
            prop_assert_eq!(Repr::parse(&Frame::new_checked(&b[..]).unwrap()).unwrap(), r);
        }
    }
}
