//! Nested VMX: L0 emulates VMX for L1 so that a guest hypervisor in the
//! cloud VM runs its own VMs (L2). One file per concern, after KVM's
//! families: capability MSRs, the software VMCS12, instruction operands,
//! the VMX instructions, VM-entry checks, VMCS02 preparation, exit routing
//! and reflection, EPT12 walking and the EPT02 cache.

pub mod caps;
pub mod checks;
pub mod ept02;
pub mod ept12;
pub mod instr;
pub mod operand;
pub mod vmcs12;
#[cfg(test)]
pub mod testutil;
