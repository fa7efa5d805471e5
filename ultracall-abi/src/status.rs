//! Status codes: what L0 returns in RAX after an ultracall.
//!
//! Numbers are part of the ABI and never reused. Every failure leaves the
//! caller's buffer contents unspecified but L0's state unchanged (a failed
//! save does not freeze, a failed restore does not consume the epoch).

use core::fmt;

macro_rules! statuses {
    ($( $(#[$doc:meta])* $name:ident = $val:literal, $text:literal, $desc:literal; )*) => {
        /// An ultracall's status (RAX on return).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u64)]
        pub enum Status {
            $( $(#[$doc])* $name = $val, )*
        }

        impl Status {
            /// Every status, in numeric order.
            pub const ALL: &'static [Status] = &[$(Status::$name),*];

            /// Decodes RAX; `None` for a number that is not a status.
            pub const fn from_raw(raw: u64) -> Option<Status> {
                match raw {
                    $( $val => Some(Status::$name), )*
                    _ => None,
                }
            }

            /// The stable upper-case name (used by the CLI and the docs).
            pub const fn name(self) -> &'static str {
                match self { $( Status::$name => $text, )* }
            }

            /// One-line meaning.
            pub const fn description(self) -> &'static str {
                match self { $( Status::$name => $desc, )* }
            }
        }
    };
}

statuses! {
    /// Success.
    Ok = 0, "OK", "success";
    /// RCX is not an operation this L0 knows.
    UnknownOp = 1, "UNKNOWN_OP", "unknown operation number";
    /// The caller's ABI major (RDX) differs from L0's; RDX on return holds L0's version.
    BadVersion = 2, "BAD_VERSION", "caller's ABI major version differs from L0's";
    /// The operation is not allowed from the caller's level (L1/L2).
    NotPermitted = 3, "NOT_PERMITTED", "operation not permitted from this level";
    /// The buffer is not mapped, not canonical, or not ordinary guest RAM.
    BufferFault = 4, "BUFFER_FAULT", "buffer not mapped, non-canonical or not RAM";
    /// L0 must write the buffer but a page of it is read-only.
    BufferNotWritable = 5, "BUFFER_NOT_WRITABLE", "buffer is not writable";
    /// The buffer is too short; RCX on return holds the size needed.
    BufferTooSmall = 6, "BUFFER_TOO_SMALL", "buffer too small (RCX holds the size needed)";
    /// The length exceeds [`crate::MAX_BUFFER_LEN`].
    BufferTooLarge = 7, "BUFFER_TOO_LARGE", "buffer longer than the ABI maximum";
    /// No VM currently holds this tag.
    UnknownTag = 8, "UNKNOWN_TAG", "no VM holds this tag";
    /// Another VM already holds this tag.
    TagInUse = 9, "TAG_IN_USE", "tag is held by another VM";
    /// The calling VM already registered a different tag (tags are set once).
    TagAlreadySet = 10, "TAG_ALREADY_SET", "this VM already registered a different tag";
    /// The tag in R8..R11 breaks the charset/length rule.
    TagInvalid = 11, "TAG_INVALID", "tag violates the charset or length rule";
    /// The VM's devices were saved and are frozen; they cannot be saved again.
    DeviceFrozen = 12, "DEVICE_FROZEN", "devices were saved and are frozen";
    /// The VM has no shadow device, or not the devices the blob describes.
    NoDevice = 13, "NO_DEVICE", "no matching shadow device";
    /// The blob is not a well-formed sealed blob (magic, version, class, lengths).
    BlobMalformed = 14, "BLOB_MALFORMED", "blob is malformed or truncated";
    /// The blob was sealed under another key (another fleet or a rotated key).
    BlobWrongKey = 15, "BLOB_WRONG_KEY", "blob was sealed under a different key";
    /// Authentication failed: the blob was altered.
    BlobAuthFailed = 16, "BLOB_AUTH_FAILED", "blob failed authentication (tampered)";
    /// The blob was sealed for another VM tag.
    BlobWrongTag = 17, "BLOB_WRONG_TAG", "blob was sealed for another VM tag";
    /// The blob's epoch is not newer than the last one this L0 accepted or issued for the tag.
    BlobReplayed = 18, "BLOB_REPLAYED", "blob epoch already used (replay)";
    /// The blob is authentic but its device state is not acceptable to this L0.
    StateRejected = 19, "STATE_REJECTED", "authentic blob with unacceptable device state";
    /// L0 hit an internal limit or error; nothing changed.
    Internal = 20, "INTERNAL", "internal error in L0";
    /// L0 was booted without a sealing key, so it cannot save or restore (since 1.1).
    NoKey = 21, "NO_KEY", "L0 has no sealing key";
    /// A register argument is out of range, e.g. a relay vector below 32 (since 1.1).
    InvalidArgument = 22, "INVALID_ARGUMENT", "argument out of range";
    /// The VM's owner keys are set: more only through an owner session (since 1.3).
    OwnerKeysSet = 23, "OWNER_KEYS_SET", "this VM already has owner keys";
    /// The owner key is all zeros (since 1.3).
    OwnerKeyInvalid = 24, "OWNER_KEY_INVALID", "owner key is not a usable X25519 public key";
}

impl Status {
    /// The raw RAX value.
    pub const fn raw(self) -> u64 {
        self as u64
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip_for_every_status() {
        for (i, &s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.raw(), i as u64, "statuses are dense and ordered");
            assert_eq!(Status::from_raw(s.raw()), Some(s));
        }
    }

    #[test]
    fn unknown_numbers_are_not_statuses() {
        assert_eq!(Status::from_raw(Status::ALL.len() as u64), None);
        assert_eq!(Status::from_raw(u64::MAX), None);
        // KVM's -KVM_ENOSYS as seen in RAX.
        assert_eq!(Status::from_raw((-1000i64) as u64), None);
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in Status::ALL.iter().enumerate() {
            for b in &Status::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
    }
}
