//! Everything that executes privileged or VMX instructions. Each `unsafe`
//! block carries a `SAFETY:` line; the rest of L0 calls these through the
//! `Vmcs` and guest-memory traits, so its logic runs on the host in tests.

#[cfg(target_os = "none")]
pub mod ap_boot;
#[cfg(target_os = "none")]
pub mod apic;
#[cfg(target_os = "none")]
pub mod bringup;
pub mod cpu;
#[cfg(target_os = "none")]
pub mod cpu_loop;
#[cfg(target_os = "none")]
pub mod fault;
#[cfg(test)]
pub mod heap_meter;
#[cfg(target_os = "none")]
pub mod image;
#[cfg(target_os = "none")]
pub mod iommu;
#[cfg(target_os = "none")]
pub mod l1_ram;
#[cfg(target_os = "none")]
pub mod loader_memory;
#[cfg(target_os = "none")]
pub mod platform;
#[cfg(target_os = "none")]
pub mod pool;
pub mod run;
#[cfg(target_os = "none")]
pub mod tables;
pub mod tsc;
pub mod uart;
pub mod vmx;
#[cfg(target_os = "none")]
pub mod zero_ram;
