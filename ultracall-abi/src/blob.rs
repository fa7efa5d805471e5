//! The sealed-blob header: one definition for L0 (which seals and opens,
//! in shadow-devices) and for guest tools (which only carry blobs).
//!
//! A blob is `header (80 bytes) ‖ ciphertext (payload_len) ‖ GCM tag (16)`.
//! The whole header is the AES-256-GCM associated data, so changing any
//! header byte (VM tag, epoch, class, nonce…) makes authentication fail.
//!
//! Header layout, all integers little-endian:
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 4    | magic `"L0SB"`                                     |
//! | 4      | 2    | format version (1)                                 |
//! | 6      | 2    | device class of the payload                        |
//! | 8      | 4    | flags, reserved, 0                                 |
//! | 12     | 4    | payload (ciphertext) length                        |
//! | 16     | 8    | key id: identifies the sealing key, not secret     |
//! | 24     | 8    | epoch: per-tag migration counter (replay rule)     |
//! | 32     | 12   | GCM nonce                                          |
//! | 44     | 4    | reserved, 0                                        |
//! | 48     | 32   | VM tag, NUL-padded                                 |

use crate::call::MAX_BUFFER_LEN;
use crate::error::Error;
use crate::tag::{VmTag, MAX_TAG_LEN};

/// First bytes of every blob.
pub const BLOB_MAGIC: [u8; 4] = *b"L0SB";
/// The blob container version this crate reads and writes.
pub const BLOB_FORMAT_VERSION: u16 = 1;
/// Header length.
pub const BLOB_HEADER_LEN: usize = 80;
/// GCM nonce length.
pub const BLOB_NONCE_LEN: usize = 12;
/// GCM authentication tag length.
pub const BLOB_AUTH_TAG_LEN: usize = 16;
/// Key id length.
pub const BLOB_KEY_ID_LEN: usize = 8;
/// Bytes a blob adds to its payload.
pub const BLOB_OVERHEAD: usize = BLOB_HEADER_LEN + BLOB_AUTH_TAG_LEN;
/// Largest payload: a whole blob must fit in one ultracall buffer.
pub const MAX_BLOB_PAYLOAD_LEN: usize = MAX_BUFFER_LEN - BLOB_OVERHEAD;

/// Device class: a 16550A UART (one device's state).
pub const DEVICE_CLASS_UART16550A: u16 = 0x0001;
/// Device class: a VM's whole device set (the payload of save/restore).
pub const DEVICE_CLASS_DEVICE_SET: u16 = 0x0100;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_CLASS: usize = 6;
const OFF_FLAGS: usize = 8;
const OFF_PAYLOAD_LEN: usize = 12;
const OFF_KEY_ID: usize = 16;
const OFF_EPOCH: usize = 24;
const OFF_NONCE: usize = 32;
const OFF_RESERVED: usize = 44;
const OFF_TAG: usize = 48;

/// A decoded blob header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobHeader {
    /// Container format version.
    pub format_version: u16,
    /// Class of the sealed payload.
    pub device_class: u16,
    /// Ciphertext length (the GCM tag follows it).
    pub payload_len: u32,
    /// Identifies the key (a check value, see shadow-devices' sealing).
    pub key_id: [u8; BLOB_KEY_ID_LEN],
    /// Migration epoch of this blob for its tag.
    pub epoch: u64,
    /// GCM nonce.
    pub nonce: [u8; BLOB_NONCE_LEN],
    /// The VM the blob belongs to.
    pub vm_tag: VmTag,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl BlobHeader {
    /// Encodes the 80 header bytes.
    pub fn encode(&self) -> [u8; BLOB_HEADER_LEN] {
        let mut h = [0u8; BLOB_HEADER_LEN];
        h[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&BLOB_MAGIC);
        h[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&self.format_version.to_le_bytes());
        h[OFF_CLASS..OFF_CLASS + 2].copy_from_slice(&self.device_class.to_le_bytes());
        h[OFF_PAYLOAD_LEN..OFF_PAYLOAD_LEN + 4].copy_from_slice(&self.payload_len.to_le_bytes());
        h[OFF_KEY_ID..OFF_KEY_ID + BLOB_KEY_ID_LEN].copy_from_slice(&self.key_id);
        h[OFF_EPOCH..OFF_EPOCH + 8].copy_from_slice(&self.epoch.to_le_bytes());
        h[OFF_NONCE..OFF_NONCE + BLOB_NONCE_LEN].copy_from_slice(&self.nonce);
        h[OFF_TAG..OFF_TAG + MAX_TAG_LEN].copy_from_slice(self.vm_tag.padded());
        h
    }

    /// Decodes and checks a header at the start of `blob` (the rest of the
    /// blob is not looked at). Checks, in order: length, magic, version,
    /// reserved fields, payload length limit, tag validity.
    pub fn decode(blob: &[u8]) -> Result<BlobHeader, Error> {
        let h = blob.get(..BLOB_HEADER_LEN).ok_or(Error::Truncated)?;
        if h[OFF_MAGIC..OFF_MAGIC + 4] != BLOB_MAGIC {
            return Err(Error::BadMagic);
        }
        let format_version = le_u16(h, OFF_VERSION);
        if format_version != BLOB_FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: format_version,
            });
        }
        if le_u32(h, OFF_FLAGS) != 0 || le_u32(h, OFF_RESERVED) != 0 {
            return Err(Error::Malformed("blob header reserved field"));
        }
        let payload_len = le_u32(h, OFF_PAYLOAD_LEN);
        if payload_len as usize > MAX_BLOB_PAYLOAD_LEN {
            return Err(Error::Malformed("blob payload length"));
        }
        let mut key_id = [0u8; BLOB_KEY_ID_LEN];
        key_id.copy_from_slice(&h[OFF_KEY_ID..OFF_KEY_ID + BLOB_KEY_ID_LEN]);
        let mut epoch = [0u8; 8];
        epoch.copy_from_slice(&h[OFF_EPOCH..OFF_EPOCH + 8]);
        let mut nonce = [0u8; BLOB_NONCE_LEN];
        nonce.copy_from_slice(&h[OFF_NONCE..OFF_NONCE + BLOB_NONCE_LEN]);
        let mut tag = [0u8; MAX_TAG_LEN];
        tag.copy_from_slice(&h[OFF_TAG..OFF_TAG + MAX_TAG_LEN]);
        let vm_tag = VmTag::from_padded(&tag).map_err(|_| Error::Malformed("blob VM tag"))?;
        Ok(BlobHeader {
            format_version,
            device_class: le_u16(h, OFF_CLASS),
            payload_len,
            key_id,
            epoch: u64::from_le_bytes(epoch),
            nonce,
            vm_tag,
        })
    }

    /// Total blob length this header announces.
    pub fn sealed_len(&self) -> usize {
        // payload_len ≤ u32::MAX, so this cannot overflow a 64-bit usize;
        // saturate anyway to stay panic-free on any target.
        BLOB_OVERHEAD.saturating_add(self.payload_len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BlobHeader {
        BlobHeader {
            format_version: BLOB_FORMAT_VERSION,
            device_class: DEVICE_CLASS_DEVICE_SET,
            payload_len: 1234,
            key_id: *b"KEYID_01",
            epoch: 0x0102_0304_0506_0708,
            nonce: *b"nonce_12byte",
            vm_tag: VmTag::new(b"web-1").unwrap(),
        }
    }

    #[test]
    fn round_trip() {
        let h = header();
        assert_eq!(BlobHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn layout_is_little_endian_at_documented_offsets() {
        let b = header().encode();
        assert_eq!(&b[0..4], b"L0SB");
        assert_eq!(&b[4..6], &[1, 0]);
        assert_eq!(&b[6..8], &[0x00, 0x01]);
        assert_eq!(&b[12..16], &1234u32.to_le_bytes());
        assert_eq!(&b[16..24], b"KEYID_01");
        assert_eq!(&b[24..32], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[32..44], b"nonce_12byte");
        assert_eq!(&b[48..53], b"web-1");
        assert!(b[53..80].iter().all(|&x| x == 0));
        assert_eq!(header().sealed_len(), 80 + 1234 + 16);
    }

    #[test]
    fn short_input_is_truncated() {
        assert_eq!(
            BlobHeader::decode(&header().encode()[..79]),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn bad_magic() {
        let mut b = header().encode();
        b[0] = b'X';
        assert_eq!(BlobHeader::decode(&b), Err(Error::BadMagic));
    }

    #[test]
    fn other_version() {
        let mut b = header().encode();
        b[4] = 2;
        assert_eq!(
            BlobHeader::decode(&b),
            Err(Error::UnsupportedVersion { found: 2 })
        );
    }

    #[test]
    fn reserved_fields_must_be_zero() {
        for at in [8, 11, 44, 47] {
            let mut b = header().encode();
            b[at] = 1;
            assert!(
                matches!(BlobHeader::decode(&b), Err(Error::Malformed(_))),
                "offset {at}"
            );
        }
    }

    #[test]
    fn payload_limit() {
        let mut h = header();
        h.payload_len = MAX_BLOB_PAYLOAD_LEN as u32;
        assert!(BlobHeader::decode(&h.encode()).is_ok());
        h.payload_len += 1;
        assert!(matches!(
            BlobHeader::decode(&h.encode()),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn invalid_tag_bytes() {
        let mut b = header().encode();
        b[49] = b' ';
        assert!(matches!(BlobHeader::decode(&b), Err(Error::Malformed(_))));
    }
}
