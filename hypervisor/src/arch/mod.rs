//! Everything that executes privileged or VMX instructions. Each `unsafe`
//! block carries a `SAFETY:` line; the rest of L0 calls these through the
//! `Vmcs` and guest-memory traits, so its logic runs on the host in tests.

#[cfg(target_os = "none")]
pub mod apic;
pub mod cpu;
pub mod run;
#[cfg(target_os = "none")]
pub mod tables;
pub mod tsc;
pub mod vmx;
