//! Shadow devices that L0 runs for user VMs.
//!
//! L0 traps a user VM's serial ports and answers them from these models
//! instead of letting the guest hypervisor (L1) see the bytes. The crate is
//! `no_std` + `alloc`, performs no I/O, and is tested on the host.
//!
//! - [`uart16550`]: the 16550A model with its console rings and state format;
//! - [`device`]: the [`ShadowDevice`] trait any device class implements,
//!   and the operator-side [`Console`];
//! - [`registry`]: device sets keyed by L0's VM identity, VM tags, and the
//!   two-phase save / all-or-nothing restore flows;
//! - [`mod@seal`]: AES-256-GCM sealing with the header of
//!   [`ultracall_abi::blob`] as associated data;
//! - [`epoch`]: the per-tag epoch ledger behind "a blob restores once".
//!
//! Nothing here panics on guest or blob input: every length and index is
//! checked, and failures are values of the one [`Error`] type.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs, unsafe_op_in_unsafe_fn, unsafe_code)]

extern crate alloc;

pub mod device;
pub mod epoch;
pub mod error;
#[cfg(target_arch = "x86_64")]
pub mod gcm_ni;
pub mod histories;
pub mod mgmt;
pub mod owner_keys;
pub mod registry;
pub mod seal;
pub mod uart16550;
mod wire;

pub use device::{Console, PortRange, ShadowDevice, Traffic};
pub use epoch::EpochLedger;
pub use error::Error;
pub use registry::{
    pc_uarts, DeviceFactory, PreparedSave, Registry, Restored, Saved, VmCell, VmDevices, VmGuard,
};
pub use seal::{open, seal, CounterNonce, NonceSource, Opened, RandomSource, SealKey, KEY_LEN};
pub use uart16550::{ComPort, Uart16550, UartState, INPUT_CAPACITY, OUTPUT_CAPACITY};

/// The state-format error type named in the device contract; the crate has
/// one error type, this is it.
pub type StateError = Error;
