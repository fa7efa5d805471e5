//! The ultracall ABI shared by L0 and the guest tools: one source of truth.
//!
//! An *ultracall* is a `vmcall` executed by a guest (L1 or L2) with
//! [`call::ULTRACALL_MAGIC`] in RAX. L0 intercepts it, checks who called, and
//! answers in registers. This crate defines, as types and constants:
//!
//! - [`cpuid`]: how a guest detects L0 (CPUID leaves 0x4000_0000/0x4000_0001);
//! - [`version`]: the ABI version and the compatibility rule;
//! - [`call`]: operation numbers, the register convention, limits, who may call what;
//! - [`status`]: the status codes L0 returns in RAX;
//! - [`tag`]: the VM tag (name) and its charset;
//! - [`owner_key`]: the owners' console keys a VM registers;
//! - [`blob`]: the sealed-blob header layout (shadow-devices seals, this crate defines);
//! - [`list`]: the versioned little-endian format of the `list` answer.
//!
//! The core is `no_std` without `alloc` so that L0 and bare-metal test guests
//! can use it. The `std` feature adds the Linux guest client ([`client`]), the
//! CLI logic ([`cli`]) and the `ultracall` binary.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(missing_docs, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod blob;
pub mod call;
pub mod cpuid;
pub mod error;
pub mod list;
pub mod owner_key;
pub mod status;
pub mod tag;
pub mod version;

#[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
pub mod cli;
#[cfg(all(feature = "std", target_os = "linux", target_arch = "x86_64"))]
pub mod client;

pub use blob::{BlobHeader, DEVICE_CLASS_DEVICE_SET, DEVICE_CLASS_UART16550A};
pub use call::{
    CallerLevel, InRegs, Op, OutRegs, RelayMessage, Request, Response, MAX_BUFFER_LEN,
    MAX_RELAY_MESSAGE, ULTRACALL_MAGIC,
};
pub use error::Error;
pub use owner_key::{KeyAccess, OwnerKey, MAX_OWNER_KEYS};
pub use status::Status;
pub use tag::{VmTag, MAX_TAG_LEN};
pub use version::{AbiVersion, ABI_VERSION};
