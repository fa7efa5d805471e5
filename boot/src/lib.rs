//! Boot: the multiboot entry shared by L0 and the scenario guests, the boot
//! information L0 receives from GRUB, command lines, physical range
//! arithmetic, and the loaders that prepare the cloud VM (L1).
//!
//! Everything but [`entry`] is plain Rust, tested on the host.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(any(test, feature = "loader"))]
extern crate alloc;

pub mod ap_trampoline;
pub mod cmdline;
pub mod elf;
#[cfg(target_os = "none")]
pub mod entry;
pub mod exceptions;
#[cfg(any(test, feature = "loader"))]
pub mod loader;
pub mod memmap;
pub mod multiboot2;
