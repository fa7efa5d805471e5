//! VM tags: the names that identify user VMs across hosts.
//!
//! A tag is 1..=[`MAX_TAG_LEN`] bytes of `[A-Za-z0-9._-]`, first byte a letter
//! or digit (so it never looks like a CLI option or a relative path). The
//! charset keeps tags printable on the operator console and in the list
//! output without escaping. On the wire (registers R8..R11, blob header, list
//! records) a tag is 32 bytes, NUL-padded; every byte after the first NUL
//! must be NUL, so each tag has exactly one encoding.
//!
//! Invariant: a [`VmTag`] value is always valid; it can only be built
//! through the checking constructors.

use core::fmt;

use crate::error::Error;

/// Longest tag in bytes.
pub const MAX_TAG_LEN: usize = 32;

/// A validated VM tag, stored NUL-padded.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmTag {
    bytes: [u8; MAX_TAG_LEN],
}

const fn tag_byte_ok(b: u8, first: bool) -> bool {
    b.is_ascii_alphanumeric() || (!first && matches!(b, b'.' | b'_' | b'-'))
}

impl VmTag {
    /// Checks and builds a tag from its bytes (no padding).
    pub fn new(name: &[u8]) -> Result<VmTag, Error> {
        if name.is_empty() || name.len() > MAX_TAG_LEN {
            return Err(Error::TagInvalid);
        }
        let mut bytes = [0u8; MAX_TAG_LEN];
        for (i, &b) in name.iter().enumerate() {
            if !tag_byte_ok(b, i == 0) {
                return Err(Error::TagInvalid);
            }
            bytes[i] = b;
        }
        Ok(VmTag { bytes })
    }

    /// Checks and builds a tag from its 32-byte NUL-padded wire form.
    pub fn from_padded(padded: &[u8; MAX_TAG_LEN]) -> Result<VmTag, Error> {
        let len = padded.iter().position(|&b| b == 0).unwrap_or(MAX_TAG_LEN);
        if padded[len..].iter().any(|&b| b != 0) {
            return Err(Error::TagInvalid);
        }
        VmTag::new(&padded[..len])
    }

    /// Decodes R8, R9, R10, R11 (bytes 0..8, 8..16, 16..24, 24..32, each
    /// register little-endian).
    pub fn from_regs(regs: [u64; 4]) -> Result<VmTag, Error> {
        let mut padded = [0u8; MAX_TAG_LEN];
        for (chunk, reg) in padded.chunks_exact_mut(8).zip(regs) {
            chunk.copy_from_slice(&reg.to_le_bytes());
        }
        VmTag::from_padded(&padded)
    }

    /// Encodes for R8, R9, R10, R11.
    pub fn to_regs(&self) -> [u64; 4] {
        let mut regs = [0u64; 4];
        for (reg, chunk) in regs.iter_mut().zip(self.bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *reg = u64::from_le_bytes(b);
        }
        regs
    }

    /// The 32-byte NUL-padded wire form.
    pub fn padded(&self) -> &[u8; MAX_TAG_LEN] {
        &self.bytes
    }

    /// Length in bytes (1..=32).
    pub fn len(&self) -> usize {
        self.bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(MAX_TAG_LEN)
    }

    /// Always false: a tag has at least one byte. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The tag's bytes without padding.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len()]
    }

    /// The tag as text (always ASCII by construction).
    pub fn as_str(&self) -> &str {
        // The charset is ASCII, so this cannot fail; fall back to "" rather
        // than panic should the invariant ever be broken.
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl fmt::Display for VmTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for VmTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VmTag({:?})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_charset() {
        let t = VmTag::new(b"web-01.prod_A").unwrap();
        assert_eq!(t.as_str(), "web-01.prod_A");
        assert_eq!(t.len(), 13);
        assert!(VmTag::new(&[b'a'; 32]).is_ok());
    }

    #[test]
    fn rejects_empty_and_too_long() {
        assert_eq!(VmTag::new(b""), Err(Error::TagInvalid));
        assert_eq!(VmTag::new(&[b'a'; 33]), Err(Error::TagInvalid));
    }

    #[test]
    fn rejects_bad_bytes_and_bad_first_byte() {
        for bad in [
            &b"a b"[..],
            b"a/b",
            b"a\0b",
            b"\xffab",
            b"-ab",
            b".ab",
            b"_ab",
            b"a:b",
        ] {
            assert_eq!(VmTag::new(bad), Err(Error::TagInvalid), "{bad:?}");
        }
    }

    #[test]
    fn padded_form_must_be_canonical() {
        let mut p = [0u8; 32];
        p[..3].copy_from_slice(b"abc");
        assert_eq!(VmTag::from_padded(&p).unwrap().as_str(), "abc");
        p[10] = b'x';
        assert_eq!(VmTag::from_padded(&p), Err(Error::TagInvalid));
        assert_eq!(VmTag::from_padded(&[0u8; 32]), Err(Error::TagInvalid));
    }

    #[test]
    fn register_round_trip() {
        let t = VmTag::new(b"abcdefghijklmnopqrstuvwxyz012345").unwrap();
        let regs = t.to_regs();
        assert_eq!(regs[0], u64::from_le_bytes(*b"abcdefgh"));
        assert_eq!(regs[3], u64::from_le_bytes(*b"yz012345"));
        assert_eq!(VmTag::from_regs(regs), Ok(t));
        let short = VmTag::new(b"vm1").unwrap();
        assert_eq!(
            short.to_regs(),
            [u64::from_le_bytes(*b"vm1\0\0\0\0\0"), 0, 0, 0]
        );
        assert_eq!(VmTag::from_regs(short.to_regs()), Ok(short));
    }

    #[test]
    fn register_form_rejects_garbage_after_nul() {
        assert_eq!(
            VmTag::from_regs([u64::from_le_bytes(*b"vm1\0\0\0\0\0"), 0, 1, 0]),
            Err(Error::TagInvalid)
        );
    }
}
