//! L0: the cloud hypervisor. It owns the machine in VMX root operation and
//! runs one cloud VM (L1) under EPT.
//!
//! Everything outside `arch` and `start` is plain Rust over the `Vmcs`,
//! `GuestMemory`, `TableMemory` and `Platform` traits, tested on the host.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod acpi;
pub mod arch;
pub mod config;
pub mod console;
pub mod cpus;
pub mod guest_mem;
pub mod iommu;
pub mod l1_plan;
pub mod log_limit;
pub mod logger;
pub mod machine;
pub mod mm;
pub mod nested;
pub mod output_cost;
pub mod owner;
pub mod regs;
pub mod shadow;
#[cfg(target_os = "none")]
pub mod start;
pub mod vcpu;
pub mod vmx;
