//! Owner keys: the X25519 public keys with which a user VM's owner opens
//! encrypted console sessions that end in L0 (docs/console-protocol.md,
//! "Owner sessions").
//!
//! The VM registers them itself (`OWNER_KEY_ADD` from L2, key in R8..R11
//! as a tag would be, access in RSI). Users paste a key as standard base64
//! of its 32 bytes (44 characters, one `=` of padding), the form
//! `cargo xtask console --owner` writes and `wg pubkey` prints.

use core::fmt;

use crate::error::Error;

/// Bytes of an X25519 public key.
pub const OWNER_KEY_LEN: usize = 32;
/// Characters of its base64 form.
pub const OWNER_KEY_B64_LEN: usize = 44;
/// Most owner keys one VM holds (so a VM's share of L0's heap and of its
/// sealed blob is bounded: 8 × 33 bytes).
pub const MAX_OWNER_KEYS: usize = 8;

/// What a key may do in a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum KeyAccess {
    /// Read output only: no input, no BREAK.
    ReadOnly = 1,
    /// Read, type and send BREAK.
    ReadWrite = 2,
}

impl KeyAccess {
    /// Decodes RSI of `OWNER_KEY_ADD` (and the sealed form).
    pub const fn from_raw(raw: u64) -> Option<KeyAccess> {
        match raw {
            1 => Some(KeyAccess::ReadOnly),
            2 => Some(KeyAccess::ReadWrite),
            _ => None,
        }
    }

    /// The register (and sealed) value.
    pub const fn raw(self) -> u8 {
        self as u8
    }

    /// `ro` or `rw`, as the CLI takes it.
    pub const fn name(self) -> &'static str {
        match self {
            KeyAccess::ReadOnly => "ro",
            KeyAccess::ReadWrite => "rw",
        }
    }

    /// Parses `ro` / `rw`.
    pub fn parse(s: &str) -> Option<KeyAccess> {
        match s {
            "ro" => Some(KeyAccess::ReadOnly),
            "rw" => Some(KeyAccess::ReadWrite),
            _ => None,
        }
    }
}

/// An owner's X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnerKey(pub [u8; OWNER_KEY_LEN]);

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_value(c: u8) -> Option<u32> {
    B64.iter().position(|&b| b == c).map(|i| i as u32)
}

impl OwnerKey {
    /// R8..R11: bytes 0..8, 8..16, 16..24, 24..32, little-endian.
    pub fn to_regs(&self) -> [u64; 4] {
        let mut r = [0u64; 4];
        for (reg, chunk) in r.iter_mut().zip(self.0.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *reg = u64::from_le_bytes(b);
        }
        r
    }

    /// The key from R8..R11. Every 32-byte value is a usable X25519 public
    /// key except all zeros, which is refused as no key at all.
    pub fn from_regs(regs: [u64; 4]) -> Result<OwnerKey, Error> {
        let mut k = [0u8; OWNER_KEY_LEN];
        for (chunk, reg) in k.chunks_exact_mut(8).zip(regs) {
            chunk.copy_from_slice(&reg.to_le_bytes());
        }
        OwnerKey::from_bytes(k)
    }

    /// Checks a raw key (all zeros is no key).
    pub fn from_bytes(k: [u8; OWNER_KEY_LEN]) -> Result<OwnerKey, Error> {
        if k == [0; OWNER_KEY_LEN] {
            return Err(Error::OwnerKeyInvalid);
        }
        Ok(OwnerKey(k))
    }

    /// Parses standard base64 of 32 bytes (44 characters ending in `=`);
    /// surrounding whitespace is ignored.
    pub fn from_base64(s: &str) -> Result<OwnerKey, Error> {
        let s = s.trim().as_bytes();
        if s.len() != OWNER_KEY_B64_LEN || s[43] != b'=' {
            return Err(Error::OwnerKeyInvalid);
        }
        let mut out = [0u8; OWNER_KEY_LEN];
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut n = 0;
        for &c in &s[..43] {
            acc = (acc << 6) | b64_value(c).ok_or(Error::OwnerKeyInvalid)?;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out[n] = (acc >> bits) as u8;
                n += 1;
                acc &= (1 << bits) - 1;
            }
        }
        // 43 characters carry 258 bits: the last 2 must be zero (canonical).
        if n != OWNER_KEY_LEN || acc != 0 {
            return Err(Error::OwnerKeyInvalid);
        }
        OwnerKey::from_bytes(out)
    }

    /// Writes the base64 form.
    pub fn write_base64(&self, f: &mut dyn fmt::Write) -> fmt::Result {
        for chunk in self.0.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    f.write_char(B64[(v >> (18 - 6 * i) & 63) as usize] as char)?;
                } else {
                    f.write_char('=')?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for OwnerKey {
    /// The base64 form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_base64(f)
    }
}

impl fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(1);
        }
        let key = OwnerKey(k);
        let s = key.to_string();
        assert_eq!(s.len(), OWNER_KEY_B64_LEN);
        assert_eq!(OwnerKey::from_base64(&s), Ok(key));
        assert_eq!(OwnerKey::from_base64(&format!("  {s}\n")), Ok(key));
    }

    #[test]
    fn base64_matches_a_known_encoding() {
        // 32 bytes 0xff: "/////...8=" (as `base64` prints it).
        let s = OwnerKey([0xff; 32]).to_string();
        assert_eq!(s, "//////////////////////////////////////////8=");
    }

    #[test]
    fn malformed_base64_is_refused() {
        let good = OwnerKey([7; 32]).to_string();
        let mut no_pad = good.clone();
        no_pad.pop();
        let mut bad_char = good.clone().into_bytes();
        bad_char[5] = b'!';
        let bad_char = String::from_utf8(bad_char).unwrap();
        // Non-canonical: the last character's low bits are not zero.
        let mut loose = good.clone().into_bytes();
        loose[42] = if loose[42] == b'B' { b'C' } else { b'B' };
        let loose = String::from_utf8(loose).unwrap();
        for s in [
            "",
            no_pad.as_str(),
            bad_char.as_str(),
            loose.as_str(),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            assert_eq!(
                OwnerKey::from_base64(s),
                Err(Error::OwnerKeyInvalid),
                "{s:?}"
            );
        }
    }

    #[test]
    fn registers_round_trip() {
        let key = OwnerKey(*b"0123456789abcdefghijklmnopqrstuv");
        let r = key.to_regs();
        assert_eq!(r[0], u64::from_le_bytes(*b"01234567"));
        assert_eq!(OwnerKey::from_regs(r), Ok(key));
        assert_eq!(OwnerKey::from_regs([0; 4]), Err(Error::OwnerKeyInvalid));
    }

    #[test]
    fn access_names_and_values() {
        for a in [KeyAccess::ReadOnly, KeyAccess::ReadWrite] {
            assert_eq!(KeyAccess::parse(a.name()), Some(a));
            assert_eq!(KeyAccess::from_raw(u64::from(a.raw())), Some(a));
        }
        assert_eq!(KeyAccess::from_raw(0), None);
        assert_eq!(KeyAccess::from_raw(3), None);
        assert_eq!(KeyAccess::parse("wr"), None);
    }
}
