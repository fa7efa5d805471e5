//! Sealing device state with AES-256-GCM.
//!
//! A blob is `header ‖ ciphertext ‖ tag` with the header of
//! [`ultracall_abi::blob`] as associated data: the VM tag, epoch, device
//! class, key id and nonce are all authenticated, so a blob made for one
//! tag or epoch never opens as another.
//!
//! **Key.** 32 bytes provisioned to L0 at boot. [`SealKey`] also derives a
//! public *key id* (8 bytes of `AES-256_K(KEY_ID_BLOCK)`, a classic key
//! check value) so a blob sealed under another key is reported as
//! [`Error::WrongKey`] instead of looking tampered. The check block ends in
//! four zero bytes; GCM with 96-bit nonces only ever encrypts blocks whose
//! last four bytes are a counter ≥ 1 (and `H = AES_K(0¹²⁸)`), so the key
//! id is never a keystream block or the hash key.
//!
//! **Nonces** must never repeat under one key, and the key is shared by a
//! whole fleet. L0 has no OS RNG, so the caller passes a [`NonceSource`];
//! [`CounterNonce`] builds each nonce as `counter (4 bytes LE) ‖ 8 fresh
//! random bytes`: within one L0 boot the counter alone guarantees
//! uniqueness even if the random source is weak; across boots and hosts,
//! 64 random bits per nonce keep collisions negligible. After 2³² nonces
//! the source refuses ([`Error::NonceExhausted`]) rather than wrap.
//!
//! **Opening** checks, in order: header format and exact length (without
//! the key), key id, authentication, then — on authenticated data only —
//! device class, VM tag and the epoch ledger. So `AuthFailed` means
//! "altered", `WrongTag` means "an authentic blob of another VM", and
//! `Replayed` means "an authentic blob already used".

use aes_gcm::aead::AeadInPlace;
use aes_gcm::aes::cipher::{BlockEncrypt, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use alloc::vec::Vec;
use core::fmt;

use ultracall_abi::blob::{
    BlobHeader, BLOB_AUTH_TAG_LEN, BLOB_FORMAT_VERSION, BLOB_HEADER_LEN, BLOB_KEY_ID_LEN,
    BLOB_NONCE_LEN, MAX_BLOB_PAYLOAD_LEN,
};
use ultracall_abi::VmTag;

use crate::epoch::EpochLedger;
use crate::error::Error;

/// Sealing key length.
pub const KEY_LEN: usize = 32;

/// The block encrypted to derive the key id (last four bytes zero, see
/// the module docs).
const KEY_ID_BLOCK: [u8; 16] = *b"L0-seal-keyid\0\0\0";

/// An AES-256-GCM sealing key and its public id.
#[derive(Clone)]
pub struct SealKey {
    cipher: Aes256Gcm,
    /// The same key for the CPU's AES and carry-less multiply, when the
    /// caller asked for it and the CPU has them (same blobs, ~20x fewer
    /// instructions).
    #[cfg(target_arch = "x86_64")]
    ni: Option<crate::gcm_ni::NiGcm>,
    key_id: [u8; BLOB_KEY_ID_LEN],
}

impl SealKey {
    /// Prepares a key provisioned to L0.
    pub fn new(key: &[u8; KEY_LEN]) -> SealKey {
        let mut block = KEY_ID_BLOCK.into();
        Aes256::new(key.into()).encrypt_block(&mut block);
        let mut key_id = [0u8; BLOB_KEY_ID_LEN];
        key_id.copy_from_slice(&block[..BLOB_KEY_ID_LEN]);
        SealKey {
            cipher: Aes256Gcm::new(key.into()),
            #[cfg(target_arch = "x86_64")]
            ni: None,
            key_id,
        }
    }

    /// As [`SealKey::new`], sealing and opening with AES-NI and PCLMULQDQ
    /// if the CPU has them ([`SealKey::accelerated`] says whether).
    ///
    /// # Safety
    /// SSE must be enabled (CR4.OSFXSR = 1). The code saves and restores
    /// the vector registers it uses, so a hypervisor may call it with a
    /// guest's vector state live.
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    pub unsafe fn new_accelerated(key: &[u8; KEY_LEN]) -> SealKey {
        let mut k = SealKey::new(key);
        if crate::gcm_ni::cpu_supports() {
            // SAFETY: the instructions exist; SSE is on (the caller).
            k.ni = Some(unsafe { crate::gcm_ni::NiGcm::new(key) });
        }
        k
    }

    /// Whether this key seals with the CPU's AES instructions.
    pub fn accelerated(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.ni.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// The public key id written into every blob.
    pub fn key_id(&self) -> [u8; BLOB_KEY_ID_LEN] {
        self.key_id
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "SealKey {{ key_id: {:02x?} }}", self.key_id)
    }
}

/// Supplies nonces that never repeat under one key.
pub trait NonceSource {
    /// The next nonce.
    fn next_nonce(&mut self) -> Result<[u8; BLOB_NONCE_LEN], Error>;
}

/// Random bytes from the caller (L0: RDSEED/RDRAND mixed with the TSC).
pub trait RandomSource {
    /// Fills `buf`; false if no randomness was available.
    fn fill(&mut self, buf: &mut [u8]) -> bool;
}

impl<F: FnMut(&mut [u8]) -> bool> RandomSource for F {
    fn fill(&mut self, buf: &mut [u8]) -> bool {
        self(buf)
    }
}

/// `counter ‖ random` nonces (see the module docs).
#[derive(Debug)]
pub struct CounterNonce<R> {
    next: Option<u32>,
    random: R,
}

impl<R: RandomSource> CounterNonce<R> {
    /// Starts at counter 0.
    pub fn new(random: R) -> CounterNonce<R> {
        CounterNonce {
            next: Some(0),
            random,
        }
    }
}

impl<R: RandomSource> NonceSource for CounterNonce<R> {
    fn next_nonce(&mut self) -> Result<[u8; BLOB_NONCE_LEN], Error> {
        let counter = self.next.ok_or(Error::NonceExhausted)?;
        let mut nonce = [0u8; BLOB_NONCE_LEN];
        if !self.random.fill(&mut nonce[4..]) {
            return Err(Error::RandomUnavailable);
        }
        nonce[..4].copy_from_slice(&counter.to_le_bytes());
        self.next = counter.checked_add(1);
        Ok(nonce)
    }
}

/// Seals `plaintext` of `device_class` for `tag` at `epoch`.
pub fn seal(
    key: &SealKey,
    device_class: u16,
    tag: &VmTag,
    epoch: u64,
    plaintext: &[u8],
    nonces: &mut dyn NonceSource,
) -> Result<Vec<u8>, Error> {
    if plaintext.len() > MAX_BLOB_PAYLOAD_LEN {
        return Err(Error::PayloadTooLarge);
    }
    let payload_len = u32::try_from(plaintext.len()).map_err(|_| Error::PayloadTooLarge)?;
    let nonce = nonces.next_nonce()?;
    let header = BlobHeader {
        format_version: BLOB_FORMAT_VERSION,
        device_class,
        payload_len,
        key_id: key.key_id,
        epoch,
        nonce,
        vm_tag: *tag,
    };
    let aad = header.encode();
    let mut blob = Vec::with_capacity(header.sealed_len());
    blob.extend_from_slice(&aad);
    blob.extend_from_slice(plaintext);
    #[cfg(target_arch = "x86_64")]
    if let Some(ni) = &key.ni {
        let auth = ni.encrypt(&nonce, &aad, &mut blob[BLOB_HEADER_LEN..]);
        blob.extend_from_slice(&auth);
        return Ok(blob);
    }
    let auth = key
        .cipher
        .encrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &aad,
            &mut blob[BLOB_HEADER_LEN..],
        )
        .map_err(|_| Error::PayloadTooLarge)?;
    blob.extend_from_slice(&auth);
    Ok(blob)
}

fn decrypt(
    key: &SealKey,
    nonce: &[u8; BLOB_NONCE_LEN],
    aad: &[u8],
    buf: &mut [u8],
    auth: &[u8],
) -> Result<(), ()> {
    #[cfg(target_arch = "x86_64")]
    if let (Some(ni), Ok(auth)) = (&key.ni, auth.try_into()) {
        return ni.decrypt(nonce, aad, buf, auth).map_err(|_| ());
    }
    key.cipher
        .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, buf, Tag::from_slice(auth))
        .map_err(|_| ())
}

/// An opened blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Its (now authenticated) header.
    pub header: BlobHeader,
    /// The decrypted payload.
    pub plaintext: Vec<u8>,
}

fn header_error(e: ultracall_abi::Error) -> Error {
    match e {
        ultracall_abi::Error::Truncated => Error::BlobTruncated,
        ultracall_abi::Error::BadMagic => Error::BlobMalformed("magic"),
        ultracall_abi::Error::UnsupportedVersion { found } => Error::BlobVersion { found },
        ultracall_abi::Error::Malformed(what) => Error::BlobMalformed(what),
        _ => Error::BlobMalformed("header"),
    }
}

/// Opens a blob expected to hold `expected_class` for `expected_tag`,
/// checking the epoch against `ledger` (read-only: the caller records the
/// restore once the state is applied).
pub fn open(
    key: &SealKey,
    expected_class: u16,
    expected_tag: &VmTag,
    ledger: &EpochLedger,
    blob: &[u8],
) -> Result<Opened, Error> {
    let header = BlobHeader::decode(blob).map_err(header_error)?;
    let total = header.sealed_len();
    if blob.len() < total {
        return Err(Error::BlobTruncated);
    }
    if blob.len() > total {
        return Err(Error::BlobMalformed("bytes after the authentication tag"));
    }
    if header.key_id != key.key_id {
        return Err(Error::WrongKey);
    }
    let (aad, rest) = blob.split_at(BLOB_HEADER_LEN);
    let (ciphertext, auth) = rest.split_at(rest.len() - BLOB_AUTH_TAG_LEN);
    let mut plaintext = ciphertext.to_vec();
    decrypt(key, &header.nonce, aad, &mut plaintext, auth).map_err(|_| Error::AuthFailed)?;
    if header.device_class != expected_class {
        return Err(Error::BlobClass {
            found: header.device_class,
        });
    }
    if header.vm_tag != *expected_tag {
        return Err(Error::WrongTag);
    }
    ledger.check_restore(&header.vm_tag, header.epoch)?;
    Ok(Opened { header, plaintext })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ultracall_abi::blob::BLOB_OVERHEAD;

    const CLASS: u16 = ultracall_abi::DEVICE_CLASS_DEVICE_SET;

    fn key() -> SealKey {
        SealKey::new(&[7u8; 32])
    }
    fn tag() -> VmTag {
        VmTag::new(b"web-1").unwrap()
    }
    fn nonces() -> CounterNonce<impl RandomSource> {
        let mut x = 0x1234_5678_9abc_def0u64;
        CounterNonce::new(move |buf: &mut [u8]| {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            true
        })
    }
    fn blob() -> Vec<u8> {
        seal(
            &key(),
            CLASS,
            &tag(),
            3,
            b"device state bytes",
            &mut nonces(),
        )
        .unwrap()
    }

    #[test]
    fn seal_open_round_trip() {
        let b = blob();
        assert_eq!(b.len(), BLOB_OVERHEAD + 18);
        let o = open(&key(), CLASS, &tag(), &EpochLedger::new(), &b).unwrap();
        assert_eq!(o.plaintext, b"device state bytes");
        assert_eq!(o.header.epoch, 3);
        assert_eq!(o.header.vm_tag, tag());
    }

    #[test]
    fn accelerated_and_software_keys_make_the_same_blobs() {
        #[allow(unsafe_code)]
        // SAFETY: the host OS enables SSE.
        let fast = unsafe { SealKey::new_accelerated(&[7u8; 32]) };
        // Which path runs depends on this CPU; both must make the same blob.
        assert_eq!(fast.accelerated(), crate::gcm_ni::cpu_supports());
        assert!(!key().accelerated());
        eprintln!(
            "seal: accelerated path {}",
            if fast.accelerated() {
                "run"
            } else {
                "absent on this CPU: software on both sides"
            }
        );
        let (a, b) = (
            seal(
                &fast,
                CLASS,
                &tag(),
                3,
                b"device state bytes",
                &mut nonces(),
            )
            .unwrap(),
            seal(
                &key(),
                CLASS,
                &tag(),
                3,
                b"device state bytes",
                &mut nonces(),
            )
            .unwrap(),
        );
        assert_eq!(a, b, "same nonces: same blob");
        assert_eq!(
            open(&key(), CLASS, &tag(), &EpochLedger::new(), &a)
                .unwrap()
                .plaintext,
            b"device state bytes"
        );
        assert_eq!(
            open(&fast, CLASS, &tag(), &EpochLedger::new(), &b)
                .unwrap()
                .plaintext,
            b"device state bytes"
        );
        let mut bad = a.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            open(&fast, CLASS, &tag(), &EpochLedger::new(), &bad),
            Err(Error::AuthFailed)
        );
    }

    #[test]
    fn ciphertext_hides_the_plaintext() {
        let b = blob();
        assert!(!b.windows(6).any(|w| w == b"device"));
    }

    #[test]
    fn key_id_depends_on_the_key_only() {
        assert_eq!(key().key_id(), SealKey::new(&[7u8; 32]).key_id());
        assert_ne!(key().key_id(), SealKey::new(&[8u8; 32]).key_id());
        assert!(!format!("{:?}", key()).contains("07, 07, 07, 07, 07, 07, 07, 07, 07"));
    }

    #[test]
    fn wrong_key() {
        let e = open(
            &SealKey::new(&[8u8; 32]),
            CLASS,
            &tag(),
            &EpochLedger::new(),
            &blob(),
        );
        assert_eq!(e, Err(Error::WrongKey));
    }

    #[test]
    fn flipped_bit_in_authenticated_data_or_ciphertext_fails_auth() {
        let good = blob();
        // epoch, nonce, ciphertext, GCM tag
        for at in [
            24,
            31,
            32,
            43,
            BLOB_HEADER_LEN,
            good.len() - 17,
            good.len() - 16,
            good.len() - 1,
        ] {
            let mut b = good.clone();
            b[at] ^= 0x01;
            assert_eq!(
                open(&key(), CLASS, &tag(), &EpochLedger::new(), &b),
                Err(Error::AuthFailed),
                "byte {at}"
            );
        }
    }

    #[test]
    fn tampered_tag_or_class_field_fails_auth_not_wrong_tag() {
        let good = blob();
        let mut b = good.clone();
        b[48] = b'x'; // "xeb-1": valid charset, other tag
        assert_eq!(
            open(
                &key(),
                CLASS,
                &VmTag::new(b"xeb-1").unwrap(),
                &EpochLedger::new(),
                &b
            ),
            Err(Error::AuthFailed)
        );
        let mut b = good;
        b[6] ^= 1;
        assert_eq!(
            open(&key(), CLASS, &tag(), &EpochLedger::new(), &b),
            Err(Error::AuthFailed)
        );
    }

    #[test]
    fn truncation() {
        let good = blob();
        for cut in [0, 10, BLOB_HEADER_LEN - 1, BLOB_HEADER_LEN, good.len() - 1] {
            assert_eq!(
                open(&key(), CLASS, &tag(), &EpochLedger::new(), &good[..cut]),
                Err(Error::BlobTruncated),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn trailing_bytes() {
        let mut b = blob();
        b.push(0);
        assert!(matches!(
            open(&key(), CLASS, &tag(), &EpochLedger::new(), &b),
            Err(Error::BlobMalformed(_))
        ));
    }

    #[test]
    fn bad_magic_and_version() {
        let mut b = blob();
        b[0] = 0;
        assert_eq!(
            open(&key(), CLASS, &tag(), &EpochLedger::new(), &b),
            Err(Error::BlobMalformed("magic"))
        );
        let mut b = blob();
        b[4] = 9;
        assert_eq!(
            open(&key(), CLASS, &tag(), &EpochLedger::new(), &b),
            Err(Error::BlobVersion { found: 9 })
        );
    }

    #[test]
    fn authentic_blob_of_another_tag_is_wrong_tag() {
        let other = VmTag::new(b"db-2").unwrap();
        assert_eq!(
            open(&key(), CLASS, &other, &EpochLedger::new(), &blob()),
            Err(Error::WrongTag)
        );
    }

    #[test]
    fn authentic_blob_of_another_class() {
        let b = seal(&key(), 0x0001, &tag(), 1, b"x", &mut nonces()).unwrap();
        assert_eq!(
            open(&key(), CLASS, &tag(), &EpochLedger::new(), &b),
            Err(Error::BlobClass { found: 1 })
        );
    }

    #[test]
    fn replayed_epoch() {
        let mut ledger = EpochLedger::new();
        ledger.record_restore(&tag(), 3);
        assert_eq!(
            open(&key(), CLASS, &tag(), &ledger, &blob()),
            Err(Error::Replayed { epoch: 3, high: 3 })
        );
    }

    #[test]
    fn nonces_are_counter_then_random_and_never_repeat() {
        let mut n = nonces();
        let a = n.next_nonce().unwrap();
        let b = n.next_nonce().unwrap();
        assert_eq!(&a[..4], &0u32.to_le_bytes());
        assert_eq!(&b[..4], &1u32.to_le_bytes());
        assert_ne!(a[4..], b[4..]);
        // Even a constant random source cannot repeat a nonce in one boot.
        let mut c = CounterNonce::new(|buf: &mut [u8]| {
            buf.fill(0);
            true
        });
        let x = c.next_nonce().unwrap();
        let y = c.next_nonce().unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn nonce_counter_exhaustion_is_an_error() {
        let mut n = CounterNonce {
            next: Some(u32::MAX),
            random: |_: &mut [u8]| true,
        };
        assert!(n.next_nonce().is_ok());
        assert_eq!(n.next_nonce(), Err(Error::NonceExhausted));
    }

    #[test]
    fn failing_random_source_is_an_error() {
        let mut n = CounterNonce::new(|_: &mut [u8]| false);
        assert_eq!(n.next_nonce(), Err(Error::RandomUnavailable));
        assert_eq!(
            seal(&key(), CLASS, &tag(), 1, b"x", &mut n),
            Err(Error::RandomUnavailable)
        );
    }

    #[test]
    fn oversized_payload_is_refused() {
        let big = vec![0u8; MAX_BLOB_PAYLOAD_LEN + 1];
        assert_eq!(
            seal(&key(), CLASS, &tag(), 1, &big, &mut nonces()),
            Err(Error::PayloadTooLarge)
        );
    }

    #[test]
    fn two_seals_of_the_same_state_differ() {
        let mut n = nonces();
        let a = seal(&key(), CLASS, &tag(), 1, b"same", &mut n).unwrap();
        let b = seal(&key(), CLASS, &tag(), 1, b"same", &mut n).unwrap();
        assert_ne!(a, b);
    }
}
