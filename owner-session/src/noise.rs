//! The Noise side of owner sessions: the pattern, the resolver that gives
//! snow its randomness from the embedding program, and L0's identity.
//!
//! **Pattern: `Noise_IK_25519_ChaChaPoly_BLAKE2s`.** IK because the owner
//! already holds L0's static public key (it is what they pin), so the
//! session opens in one round trip — one line turn, which matters at
//! 115200 baud — and L0 learns the owner's static key in the first
//! message, encrypted to L0 (a relay never sees who connects). Both sides
//! are authenticated (the owner by the key the VM registered, L0 by its
//! fleet key) and the transport keys come from ephemeral DH: forward
//! secrecy. KK would need L0 to know the owner's key before the handshake,
//! but which VM (and so which keys) a session is for is said only inside
//! it. ChaChaPoly and BLAKE2s are plain integer code (L0 is soft-float and
//! must not touch the guests' vector state).

use alloc::boxed::Box;

use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

/// The protocol name both sides use.
pub const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// Bound into every handshake: a session of another protocol (or another
/// version of this one) fails at once.
pub const PROLOGUE: &[u8] = b"L0 owner console 1";

/// Fills a buffer with random bytes; false when the source failed. L0
/// passes RDSEED/RDRAND, the client the operating system's generator.
pub type Entropy = fn(&mut [u8]) -> bool;

struct EntropyRng(Entropy);

impl Random for EntropyRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        if (self.0)(dest) {
            Ok(())
        } else {
            Err(snow::Error::Rng)
        }
    }
}

/// snow's default primitives with randomness from an [`Entropy`].
struct Resolver(Entropy);

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(EntropyRng(self.0)))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn params() -> NoiseParams {
    // A constant that parses: a failure is this crate's bug.
    PATTERN.parse().expect("the owner session pattern")
}

/// A builder for either side, with its randomness.
pub fn builder(entropy: Entropy) -> snow::Builder<'static> {
    snow::Builder::with_resolver(params(), Box::new(Resolver(entropy)))
}

/// The X25519 public key of a private key.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    let mut dh = DefaultResolver
        .resolve_dh(&DHChoice::Curve25519)
        .expect("Curve25519 is built in");
    dh.set(private);
    let mut out = [0u8; 32];
    out.copy_from_slice(dh.pubkey());
    out
}

/// A fresh key pair (private, public) from `entropy`; None when it failed.
pub fn generate_keypair(entropy: Entropy) -> Option<([u8; 32], [u8; 32])> {
    let mut private = [0u8; 32];
    if !entropy(&mut private) {
        return None;
    }
    let public = public_key(&private);
    Some((private, public))
}

/// L0's static key pair: the fleet's identity owners pin.
#[derive(Clone)]
pub struct Identity {
    private: [u8; 32],
    public: [u8; 32],
}

impl Identity {
    /// From the private key.
    pub fn new(private: [u8; 32]) -> Identity {
        Identity {
            public: public_key(&private),
            private,
        }
    }

    /// The public key.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    pub(crate) fn private(&self) -> &[u8; 32] {
        &self.private
    }

    /// What owners pin: the public key in base64 (the client needs the
    /// whole key for IK anyway, so the "fingerprint" is the key itself).
    pub fn fingerprint(&self) -> alloc::string::String {
        alloc::format!("{}", ultracall_abi::OwnerKey(self.public))
    }
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Identity({})", self.fingerprint())
    }
}

/// Parses a private key file or module: 64 hex digits (whitespace around
/// them allowed) or 32 raw bytes.
pub fn parse_private_key(data: &[u8]) -> Option<[u8; 32]> {
    if data.len() == 32 {
        return data.try_into().ok();
    }
    let text = core::str::from_utf8(data).ok()?.trim();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_matches_rfc7748() {
        // RFC 7748 section 6.1, Alice.
        let private =
            parse_private_key(b"77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap();
        let public = public_key(&private);
        assert_eq!(
            public,
            parse_private_key(b"8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
                .unwrap()
        );
    }

    #[test]
    fn private_keys_parse() {
        assert_eq!(parse_private_key(&[5; 32]), Some([5; 32]));
        let hex = "00".repeat(31) + "ff\n";
        assert_eq!(parse_private_key(hex.as_bytes()).unwrap()[31], 0xff);
        assert_eq!(parse_private_key(b"short"), None);
        assert_eq!(parse_private_key(&[b'z'; 64]), None);
        assert_eq!(parse_private_key("é".repeat(32).as_bytes()), None);
    }
}
