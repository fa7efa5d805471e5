//! What nested-VMX code may touch, and nothing more: a [`NestedCtx`]
//! borrows L1's nested state, its general-purpose registers, L0's own VMX
//! setup for this CPU (read-only), the VMCS set and a [`NestedHw`] for the
//! few hardware operations. The vCPU (`vcpu/`) builds one per exit that
//! needs nested VMX; everything else of the vCPU and the machine (shadow
//! devices, identities, the console) stays out of reach.

use super::{Nested, VmcsSet};
use crate::arch::run::GuestRegs;
use crate::guest_mem::GuestMemory;
use crate::mm::paging::TableMemory;
use crate::vmx::caps::VmxCaps;
use crate::vmx::guest_cr::CrPolicy;

/// L0's VMX setup of this CPU that nested VMX reads to build VMCS02 and
/// to come back to L1; fixed at bring-up.
#[derive(Clone, Copy, Debug)]
pub struct HostVmx {
    /// The CPU's VMX capabilities (for fitting VMCS02's controls).
    pub caps: VmxCaps,
    /// L0's policy for L1's control registers (VMCS01's masks).
    pub policy: CrPolicy,
    /// EPT01, which VMCS02 uses when L1 does not enable EPT.
    pub eptp01: u64,
    /// L0's MSR bitmap for L1 (a pool page).
    pub msr_bitmap01: u64,
    /// VMCS01, VMCS02 and shadow-VMCS regions.
    pub vmcs_phys: [u64; 3],
    /// L1's VPID, 0 if VPIDs are not used.
    pub vpid: u16,
    pub maxphyaddr: u8,
    /// VMX-preemption timer value that brings L0 back to serve the
    /// management line while a guest runs without exits (None: no timer).
    pub l0_timer: Option<u64>,
}

/// The hardware operations nested VMX needs, and RDMSR/WRMSR as L1 would
/// do them (the MSR load and store lists).
pub trait NestedHw {
    type Tables: TableMemory;
    type Mem: GuestMemory;
    /// L1's memory.
    fn mem(&mut self) -> &mut Self::Mem;
    /// L0's page tables (EPT02).
    fn tables(&mut self) -> &mut Self::Tables;
    /// A page of L0's pool (bitmaps), by physical address.
    fn page(&mut self, phys: u64) -> &mut [u64; 512];
    /// Drops the TLB entries tagged with `vpid`.
    fn flush_vpid(&mut self, vpid: u16);
    /// Drops every EPT-derived translation (INVEPT all-context).
    fn invept_all(&mut self);
    /// CR2 for a #PF L0 injects.
    fn set_cr2(&mut self, value: u64);
    /// A fixed IPI through L1's local APIC; false if it cannot take it.
    fn send_ipi(&mut self, dest: u32, vector: u8) -> bool;
    /// EOI to L1's local APIC for an interrupt L0 consumed.
    fn apic_eoi(&mut self) -> bool;
    /// RDMSR on L1's behalf: L0's emulated MSRs as L1 sees them, else the
    /// CPU's; None if it refuses (#GP). The VMX capability MSRs are
    /// answered by nested VMX itself.
    fn read_l1_msr(&mut self, msr: u32) -> Option<u64>;
    /// WRMSR on L1's behalf, likewise; false if refused.
    fn write_l1_msr(&mut self, msr: u32, value: u64) -> bool;
}

/// How a nested operation leaves the vCPU.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// The guest (L1 or L2, whichever is current now) goes on.
    Resume,
    /// A VMX abort of L1's logical processor (SDM 28.7), with its
    /// indicator (`vmexit::abort`) already in VMCS12 and VMCS01 current:
    /// the vCPU shuts down for good; L0 and the other vCPUs go on.
    VmxAbort(u32),
    /// L0 cannot carry out what the CPU would (no memory).
    Stop(&'static str),
}

/// One exit's worth of access to nested VMX (see the module comment).
pub struct NestedCtx<'a, S: VmcsSet, H: NestedHw> {
    pub nested: &'a mut Nested,
    pub regs: &'a mut GuestRegs,
    pub host: &'a HostVmx,
    pub vs: &'a mut S,
    pub hw: H,
}
