//! ABI versioning.
//!
//! The version is `major.minor`, packed as `major << 16 | minor` wherever it
//! travels (CPUID leaf 0x4000_0001 EAX, RDX of every call and answer).
//!
//! Rule: a caller and L0 agree iff their **majors are equal**. A minor bump
//! only *adds* operations or appends fields to records that carry their own
//! lengths (see [`crate::list`]); a caller that needs an operation introduced
//! in minor `m` checks `l0.minor >= m` ([`crate::Op::since_minor`]) and
//! otherwise L0 answers [`crate::Status::UnknownOp`]. A different major is
//! refused with [`crate::Status::BadVersion`] for every operation except
//! `Ping`, which always answers so that any client can learn L0's version.

use core::fmt;

/// An ABI version `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbiVersion {
    /// Incompatible changes bump this.
    pub major: u16,
    /// Compatible additions bump this.
    pub minor: u16,
}

/// The version this crate implements (both sides compile it in).
pub const ABI_VERSION: AbiVersion = AbiVersion { major: 1, minor: 4 };

impl AbiVersion {
    /// Packs as `major << 16 | minor`.
    pub const fn to_raw(self) -> u32 {
        (self.major as u32) << 16 | self.minor as u32
    }

    /// Unpacks `major << 16 | minor`.
    pub const fn from_raw(raw: u32) -> Self {
        AbiVersion {
            major: (raw >> 16) as u16,
            minor: raw as u16,
        }
    }

    /// Decodes a version passed in a 64-bit register: the upper 32 bits must
    /// be zero, otherwise the value is not a version at all.
    pub const fn from_reg(reg: u64) -> Option<Self> {
        if reg >> 32 != 0 {
            return None;
        }
        Some(Self::from_raw(reg as u32))
    }

    /// True when a caller speaking `self` may talk to an L0 speaking `l0`.
    pub const fn compatible_with(self, l0: AbiVersion) -> bool {
        self.major == l0.major
    }
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip() {
        let v = AbiVersion {
            major: 0x1234,
            minor: 0xfedc,
        };
        assert_eq!(v.to_raw(), 0x1234_fedc);
        assert_eq!(AbiVersion::from_raw(v.to_raw()), v);
    }

    #[test]
    fn register_form_rejects_upper_bits() {
        assert_eq!(
            AbiVersion::from_reg(0x0001_0002),
            Some(AbiVersion { major: 1, minor: 2 })
        );
        assert_eq!(AbiVersion::from_reg(1 << 32 | 0x0001_0000), None);
    }

    #[test]
    fn compatibility_is_same_major() {
        let l0 = AbiVersion { major: 1, minor: 4 };
        assert!(AbiVersion { major: 1, minor: 0 }.compatible_with(l0));
        assert!(AbiVersion { major: 1, minor: 9 }.compatible_with(l0));
        assert!(!AbiVersion { major: 2, minor: 0 }.compatible_with(l0));
        assert!(!AbiVersion { major: 0, minor: 3 }.compatible_with(l0));
    }

    #[test]
    fn display() {
        assert_eq!(ABI_VERSION.to_string(), "1.4");
    }
}
