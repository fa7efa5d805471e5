//! The crate's one error type.
//!
//! `Copy`, no heap data, a hand-written [`fmt::Display`]. Every variant maps
//! to one ultracall status ([`Error::status`]) so L0 never has to invent
//! one. Whatever returns an error has left the device, the registry and the
//! epoch ledger exactly as they were.

use core::fmt;

use ultracall_abi::Status;

/// Everything that can go wrong in shadow-devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    // ---- device state format ----
    /// The state ends before a complete record.
    StateTruncated,
    /// Bytes follow the end of the state.
    StateTrailingBytes,
    /// A state format version this code does not read.
    StateVersion {
        /// Version found.
        found: u16,
    },
    /// A field is out of range, has reserved bits set, or contradicts another
    /// field; names the field.
    StateField(&'static str),
    /// The device-set state does not match this VM's devices (class, port, count).
    DeviceMismatch,

    // ---- sealed blobs ----
    /// The blob is shorter than its header, or than the header announces.
    BlobTruncated,
    /// The blob's header is not well-formed; names what.
    BlobMalformed(&'static str),
    /// The blob's format version is not one this code opens.
    BlobVersion {
        /// Version found.
        found: u16,
    },
    /// The blob holds another device class than expected.
    BlobClass {
        /// Class found.
        found: u16,
    },
    /// The blob was sealed under another key (its key id differs).
    WrongKey,
    /// The blob was sealed for another VM tag.
    WrongTag,
    /// Authentication failed: header or ciphertext altered.
    AuthFailed,
    /// The blob's epoch is not newer than what this L0 accepted or issued.
    Replayed {
        /// The blob's epoch.
        epoch: u64,
        /// The highest epoch known for the tag.
        high: u64,
    },
    /// The plaintext is larger than a blob may carry.
    PayloadTooLarge,
    /// The nonce counter is exhausted: rotate the key.
    NonceExhausted,
    /// The caller's random source failed.
    RandomUnavailable,
    /// The tag's epoch counter is exhausted.
    EpochExhausted,

    // ---- registry ----
    /// No VM with that identity.
    UnknownVm,
    /// No VM holds that tag.
    UnknownTag,
    /// Another VM holds that tag.
    TagInUse,
    /// This VM already holds a different tag.
    TagAlreadySet,
    /// The VM's devices are frozen (saved); they cannot be saved again.
    Frozen,
    /// A prepared save no longer matches the registry or ledger.
    StaleSave,
    /// L0 was booted without a sealing key: it cannot save or restore.
    NoKey,
    /// The output buffer is too small; `needed` bytes would fit.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
}

impl Error {
    /// The ultracall status L0 returns for this error.
    pub fn status(self) -> Status {
        match self {
            Error::StateTruncated
            | Error::StateTrailingBytes
            | Error::StateVersion { .. }
            | Error::StateField(_) => Status::StateRejected,
            Error::DeviceMismatch => Status::NoDevice,
            Error::BlobTruncated
            | Error::BlobMalformed(_)
            | Error::BlobVersion { .. }
            | Error::BlobClass { .. }
            | Error::PayloadTooLarge => Status::BlobMalformed,
            Error::WrongKey => Status::BlobWrongKey,
            Error::WrongTag => Status::BlobWrongTag,
            Error::AuthFailed => Status::BlobAuthFailed,
            Error::Replayed { .. } => Status::BlobReplayed,
            Error::NonceExhausted
            | Error::RandomUnavailable
            | Error::EpochExhausted
            | Error::UnknownVm
            | Error::StaleSave => Status::Internal,
            Error::UnknownTag => Status::UnknownTag,
            Error::TagInUse => Status::TagInUse,
            Error::TagAlreadySet => Status::TagAlreadySet,
            Error::Frozen => Status::DeviceFrozen,
            Error::BufferTooSmall { .. } => Status::BufferTooSmall,
            Error::NoKey => Status::NoKey,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::StateTruncated => f.write_str("device state truncated"),
            Error::StateTrailingBytes => f.write_str("bytes after the end of the device state"),
            Error::StateVersion { found } => write!(f, "unsupported device state version {found}"),
            Error::StateField(field) => write!(f, "invalid device state field: {field}"),
            Error::DeviceMismatch => f.write_str("device state does not match this VM's devices"),
            Error::BlobTruncated => f.write_str("sealed blob truncated"),
            Error::BlobMalformed(what) => write!(f, "malformed sealed blob: {what}"),
            Error::BlobVersion { found } => write!(f, "unsupported sealed blob version {found}"),
            Error::BlobClass { found } => write!(f, "sealed blob holds device class {found:#06x}"),
            Error::WrongKey => f.write_str("sealed blob was sealed under a different key"),
            Error::WrongTag => f.write_str("sealed blob belongs to another VM tag"),
            Error::AuthFailed => f.write_str("sealed blob failed authentication"),
            Error::Replayed { epoch, high } => {
                write!(f, "sealed blob replayed: epoch {epoch}, already at {high}")
            }
            Error::PayloadTooLarge => f.write_str("state too large for a sealed blob"),
            Error::NonceExhausted => f.write_str("nonce counter exhausted; rotate the key"),
            Error::RandomUnavailable => f.write_str("random source failed"),
            Error::NoKey => f.write_str("L0 has no sealing key (boot it with a key module)"),
            Error::EpochExhausted => f.write_str("epoch counter exhausted for this tag"),
            Error::UnknownVm => f.write_str("unknown VM"),
            Error::UnknownTag => f.write_str("no VM holds this tag"),
            Error::TagInUse => f.write_str("tag held by another VM"),
            Error::TagAlreadySet => f.write_str("VM already holds a different tag"),
            Error::Frozen => f.write_str("devices are frozen (already saved)"),
            Error::StaleSave => f.write_str("prepared save no longer matches"),
            Error::BufferTooSmall { needed } => {
                write!(f, "buffer too small: {needed} bytes needed")
            }
        }
    }
}
