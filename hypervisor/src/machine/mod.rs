//! What every CPU of the host shares, as opposed to a CPU's own state
//! (`vcpu::Vcpu` with its `nested::Nested`): the cloud VM's memory map
//! (EPT01), the user VMs' shadow devices and identities with the sealing
//! key and epoch ledger, the operator's console on the management line,
//! and the shutdown watch.
//!
//! A CPU reaches it only through `shared::SharedMachine`: an exit that
//! needs it locks it for the rest of that exit (docs/architecture.md). A
//! user VM's devices have a lock of their own inside it, which a COM
//! access takes without the machine's (`vcpu/com.rs`); the order is the
//! machine, then one VM.

pub mod ap_wait;
pub mod cpu_counts;
pub mod ept01;
pub mod ept01_mmio;
pub mod shared;
pub mod shutdown;
pub mod vmcs12_owners;

use crate::console::Console;
use crate::shadow::Shadow;
use ept01::Ept01;
use shutdown::ShutdownWatch;

pub struct Machine {
    /// The cloud VM's guest-physical memory: identity, minus L0's frames.
    pub ept: Ept01,
    /// Shadow devices, VM identities, keys, interrupt edges.
    pub shadow: Shadow,
    /// The operator's sessions and command line.
    pub console: Console,
    /// The ports L0 keeps from every guest: its management UART, the BMCs.
    pub l0_ports: crate::vcpu::l0_ports::L0Ports,
    pub shutdown: ShutdownWatch,
    /// The vCPUs that wait for a SIPI (and the INITs kept from them).
    pub ap_wait: ap_wait::ApWait,
    /// Which CPU has each VMCS12 current.
    pub vmcs12_owners: vmcs12_owners::Vmcs12Owners,
    /// The CPUs (APIC IDs) where L1 is in VMX operation: its user VMs end
    /// when the last of them leaves it, not when one CPU does.
    pub vmx_operation: alloc::collections::BTreeSet<u32>,
    /// Every CPU's exit counts, in the order the CPUs came up.
    pub cpus: alloc::vec::Vec<&'static cpu_counts::CpuCounts>,
    /// The BIOS memory services L0 answers for L1, where the host has a BIOS.
    pub bios: Option<crate::vcpu::bios_memory::BiosMemory>,
}

impl Machine {
    /// A CPU that runs a vCPU: its counts, for good (L0 never frees them).
    pub fn register_cpu(&mut self, apic_id: u32) -> &'static cpu_counts::CpuCounts {
        let c: &'static _ =
            alloc::boxed::Box::leak(alloc::boxed::Box::new(cpu_counts::CpuCounts::new(apic_id)));
        self.cpus.push(c);
        c
    }
}
