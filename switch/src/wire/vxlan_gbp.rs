//! VXLAN (RFC 7348) with the Group Based Policy extension (draft-smith-vxlan-group-policy-04).
//!
//! ```text
//!  0                   1                   2                   3
//! |G|R|R|R|I|R|R|R|R|D|R|R|A|R|R|R|        Group Policy ID        |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

use super::{get_u16, get_u32, set_u16, Field, Result, WireError};

/// Byte 0: G (a Group Policy ID is present).
pub const FLAG_G: u8 = 0x80;
/// Byte 0: I (the VNI is valid).
pub const FLAG_I: u8 = 0x08;
/// Byte 1: D (don't learn).
pub const FLAG_D: u8 = 0x40;
/// Byte 1: A (policy already applied).
pub const FLAG_A: u8 = 0x08;

mod field {
    use super::Field;
    pub const FLAGS: usize = 0;
    pub const GBP_FLAGS: usize = 1;
    pub const GPID: Field = 2..4;
    pub const VNI: Field = 4..7;
    pub const RESERVED: usize = 7;
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

    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet { buffer })
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    pub fn flags(&self) -> u8 {
        self.b()[field::FLAGS]
    }
    pub fn gbp_flags(&self) -> u8 {
        self.b()[field::GBP_FLAGS]
    }
    pub fn has_gbp(&self) -> bool {
        self.flags() & FLAG_G != 0
    }
    pub fn has_vni(&self) -> bool {
        self.flags() & FLAG_I != 0
    }
    pub fn dont_learn(&self) -> bool {
        self.gbp_flags() & FLAG_D != 0
    }
    pub fn policy_applied(&self) -> bool {
        self.gbp_flags() & FLAG_A != 0
    }
    pub fn group_policy_id(&self) -> u16 {
        get_u16(self.b(), field::GPID.start)
    }
    pub fn vni(&self) -> u32 {
        get_u32(self.b(), field::VNI.start) >> 8
    }
    pub fn reserved(&self) -> u8 {
        self.b()[field::RESERVED]
    }
    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.b()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v
    }
    pub fn set_gbp_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::GBP_FLAGS] = v
    }
    pub fn set_group_policy_id(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::GPID.start, v)
    }
    pub fn set_vni(&mut self, vni: u32) {
        let b = (vni & 0x00ff_ffff).to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..4]);
    }
    pub fn set_reserved(&mut self, v: u8) {
        self.buffer.as_mut()[field::RESERVED] = v
    }
}

/// A VXLAN-GBP header. `group_policy_id` is `Some` exactly when the G bit is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub vni: u32,
    pub group_policy_id: Option<u16>,
    pub dont_learn: bool,
    pub policy_applied: bool,
}

impl Repr {
    /// Requires the I flag (a VNI is present).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        if !p.has_vni() {
            return Err(WireError::Malformed);
        }
        Ok(Repr {
            vni: p.vni(),
            group_policy_id: p.has_gbp().then(|| p.group_policy_id()),
            dont_learn: p.has_gbp() && p.dont_learn(),
            policy_applied: p.has_gbp() && p.policy_applied(),
        })
    }

    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        let g = self.group_policy_id.is_some();
        p.set_flags(FLAG_I | if g { FLAG_G } else { 0 });
        let mut gf = 0;
        if g && self.dont_learn {
            gf |= FLAG_D;
        }
        if g && self.policy_applied {
            gf |= FLAG_A;
        }
        p.set_gbp_flags(gf);
        p.set_group_policy_id(self.group_policy_id.unwrap_or(0));
        p.set_vni(self.vni);
        p.set_reserved(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gbp_bytes() {
        // As tshark prints it: flags 0x8800, gbp 42, vni 1.
        let b = [0x88, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x01, 0x00, 0xee];
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.has_gbp() && p.has_vni());
        assert_eq!(p.group_policy_id(), 42);
        assert_eq!(p.vni(), 1);
        assert_eq!(p.payload(), &[0xee]);
        let r = Repr::parse(&p).unwrap();
        assert_eq!(
            r,
            Repr {
                vni: 1,
                group_policy_id: Some(42),
                dont_learn: false,
                policy_applied: false
            }
        );
        let mut out = [0u8; 8];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, b[..8]);
    }

    #[test]
    fn flags_and_vni_bytes() {
        // G, I; D and A; tag 0xabcd; VNI 0x123456.
        let b = [0x88, 0x48, 0xab, 0xcd, 0x12, 0x34, 0x56, 0x00];
        let r = Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(
            r,
            Repr {
                vni: 0x123456,
                group_policy_id: Some(0xabcd),
                dont_learn: true,
                policy_applied: true
            }
        );
        // Plain RFC 7348 (no G): the policy id bytes are ignored.
        let plain = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00];
        let r = Repr::parse(&Packet::new_checked(&plain[..]).unwrap()).unwrap();
        assert_eq!(r.group_policy_id, None);
        let mut out = [0xffu8; 8];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, plain);
        // No I flag: rejected; short: rejected.
        let no_i = [0x80, 0, 0, 1, 0, 0, 1, 0];
        assert_eq!(
            Repr::parse(&Packet::new_checked(&no_i[..]).unwrap()),
            Err(WireError::Malformed)
        );
        assert_eq!(
            Packet::new_checked(&b[..7]).err(),
            Some(WireError::Truncated)
        );
    }

    proptest! {
        #[test]
        fn round_trip(vni in 0u32..(1 << 24), gpid in proptest::option::of(any::<u16>()), d in any::<bool>(), a in any::<bool>()) {
            let r = Repr { vni, group_policy_id: gpid, dont_learn: d && gpid.is_some(), policy_applied: a && gpid.is_some() };
            let mut b = [0u8; 8];
            r.emit(&mut Packet::new_unchecked(&mut b[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(), r);
        }
    }
}
