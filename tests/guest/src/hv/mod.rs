//! The test hypervisor: a small VMX hypervisor that runs as L1 (on Bochs's
//! own VMX natively, on L0's nested VMX otherwise) and checks nested-VMX
//! semantics with its own tiny L2 payloads.
//!
//! - [`caps`]: what the capability MSRs allow; every control is fitted to them.
//! - [`vmx`]: the VMX instructions; [`vm`]: entering L2 and its exit information.
//! - [`vmcs`]: host state, guest state, controls; [`ept`]: EPT12.
//! - [`l2`]: L2's memory layout and code; [`mem`]: the static pages behind it all.

#[cfg(target_os = "none")]
pub mod apic;
pub mod caps;
#[cfg(target_os = "none")]
pub mod cpu;
pub mod ept;
pub mod fields;
#[cfg(target_os = "none")]
pub mod l2;
#[cfg(target_os = "none")]
pub mod l2x;
#[cfg(target_os = "none")]
pub mod mem;
#[cfg(target_os = "none")]
mod setup;
#[cfg(target_os = "none")]
pub mod ucall;
#[cfg(target_os = "none")]
pub mod vm;
#[cfg(target_os = "none")]
pub mod vmcs;
#[cfg(target_os = "none")]
pub mod vmx;

#[cfg(target_os = "none")]
pub use setup::*;
