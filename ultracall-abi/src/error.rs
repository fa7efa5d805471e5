//! The crate's one error type.
//!
//! Decoders (tags, blob headers, the list format) and the guest client share
//! it. It is `Copy` and carries no heap data so that L0 and `no_std` guests can
//! use it; the [`fmt::Display`] text is what the CLI prints.

use core::fmt;

use crate::status::Status;
use crate::version::AbiVersion;

/// Everything that can go wrong in this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A VM tag was empty, longer than [`crate::MAX_TAG_LEN`] bytes, started
    /// with a non-alphanumeric byte, held a byte outside `[A-Za-z0-9._-]`, or
    /// (in padded form) had non-NUL bytes after the first NUL.
    TagInvalid,
    /// An owner key was not base64 of 32 bytes, or was all zeros.
    OwnerKeyInvalid,
    /// The output buffer is too small; `needed` bytes would fit.
    BufferTooSmall {
        /// Bytes the complete encoding needs.
        needed: usize,
    },
    /// Input ended before a complete structure.
    Truncated,
    /// The magic bytes are not those of the expected structure.
    BadMagic,
    /// A format version this code does not read.
    UnsupportedVersion {
        /// The version found in the input.
        found: u16,
    },
    /// A field is out of range or inconsistent; names the field.
    Malformed(&'static str),
    /// CPUID.1:ECX bit 31 is clear: not running under any hypervisor.
    NoHypervisor,
    /// A hypervisor is present but it is not L0; its 12-byte CPUID signature.
    OtherHypervisor {
        /// EBX, ECX, EDX of leaf 0x4000_0000 as bytes.
        signature: [u8; 12],
    },
    /// L0's signature was seen, but on a CPU that is not Intel's: L0 runs
    /// on VMX only, and there `vmcall` would fault, so nothing is issued.
    NotIntel {
        /// The vendor string of CPUID leaf 0.
        vendor: [u8; 12],
    },
    /// L0's ABI major differs from ours.
    VersionMismatch {
        /// What this client speaks.
        ours: AbiVersion,
        /// What L0 reported.
        l0: AbiVersion,
    },
    /// L0 refused the call with this status.
    Status(Status),
    /// The vmcall returned a RAX that is not one of our status codes.
    UnknownStatus(u64),
    /// An operating-system call failed (client only).
    Os {
        /// The libc function.
        call: &'static str,
        /// Its errno.
        errno: i32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::TagInvalid => f.write_str(
                "invalid VM tag: 1 to 32 bytes of [A-Za-z0-9._-], starting with a letter or digit",
            ),
            Error::OwnerKeyInvalid => f.write_str(
                "invalid owner key: base64 of a 32-byte X25519 public key (44 characters)",
            ),
            Error::BufferTooSmall { needed } => {
                write!(f, "buffer too small: {needed} bytes needed")
            }
            Error::Truncated => f.write_str("input ends before a complete structure"),
            Error::BadMagic => f.write_str("bad magic bytes"),
            Error::UnsupportedVersion { found } => write!(f, "unsupported format version {found}"),
            Error::Malformed(field) => write!(f, "malformed field: {field}"),
            Error::NoHypervisor => f.write_str("not running under L0: no hypervisor present"),
            Error::OtherHypervisor { signature } => {
                f.write_str("not running under L0: hypervisor signature ")?;
                quoted(f, &signature)
            }
            Error::NotIntel { vendor } => {
                f.write_str("not running under L0: L0's signature on a CPU of vendor ")?;
                quoted(f, &vendor)?;
                f.write_str(", but L0 runs only on Intel VMX")
            }
            Error::VersionMismatch { ours, l0 } => {
                write!(
                    f,
                    "ABI version mismatch: this tool speaks {ours}, L0 speaks {l0}"
                )
            }
            Error::Status(s) => write!(f, "L0 refused: {} ({})", s.name(), s.description()),
            Error::UnknownStatus(raw) => write!(f, "vmcall returned unknown status {raw:#x}"),
            Error::Os { call, errno } => write!(f, "{call} failed (errno {errno})"),
        }
    }
}

/// Twelve CPUID bytes in quotes, non-printable ones escaped.
fn quoted(f: &mut fmt::Formatter<'_>, bytes: &[u8; 12]) -> fmt::Result {
    f.write_str("\"")?;
    for &b in bytes {
        if b.is_ascii_graphic() || b == b' ' {
            write!(f, "{}", b as char)?;
        } else {
            write!(f, "\\x{b:02x}")?;
        }
    }
    f.write_str("\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_hypervisor_signature_is_escaped() {
        let e = Error::OtherHypervisor {
            signature: *b"KVMKVMKVM\0\0\0",
        };
        assert_eq!(
            e.to_string(),
            "not running under L0: hypervisor signature \"KVMKVMKVM\\x00\\x00\\x00\""
        );
    }

    #[test]
    fn not_intel_names_the_vendor() {
        let e = Error::NotIntel {
            vendor: *b"AuthenticAMD",
        };
        assert_eq!(
            e.to_string(),
            "not running under L0: L0's signature on a CPU of vendor \"AuthenticAMD\", but L0 runs only on Intel VMX"
        );
    }

    #[test]
    fn status_error_names_the_status() {
        let e = Error::Status(Status::BlobReplayed);
        assert!(e.to_string().starts_with("L0 refused: BLOB_REPLAYED"));
    }
}
