//! L1's VMX instructions, on the vCPU: carried out by nested VMX
//! (`nested/entry.rs`, `nested/instr_exit.rs`), then what they mean for
//! the machine (which CPU has which VMCS12 current; a VMCLEAR or VMXOFF
//! can end a user VM) and the `stats` counts.

use super::{Outcome as ExitOutcome, Platform, Vcpu};
use crate::machine::shared::MachineLock;
use crate::nested::instr::Outcome;
use crate::nested::VmcsSet;
use crate::vmx::exit::{reason, reason_name};

/// A VMCLEARed VMCS12 entered again within 1/20 s (50 ms) on any CPU
/// keeps its VM: KVM's VMCLEAR and VMPTRLD of a moving vCPU are
/// microseconds apart, unless another CPU holds the machine's lock
/// meanwhile (the management line's poll holds it up to a few ms).
const VMCLEAR_GRACE_DIVISOR: u64 = 20;

impl Vcpu {
    /// A VMX instruction executed by L1.
    pub(super) fn l1_vmx_instruction<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut MachineLock<'_>,
        vs: &mut S,
        p: &mut P,
        basic: u16,
    ) -> ExitOutcome {
        if basic == reason::VMLAUNCH || basic == reason::VMRESUME {
            return self.nested_entry(m, vs, p, basic == reason::VMLAUNCH);
        }
        let before = self.nested.current_vmcs12();
        let cpu = self.apic_id();
        // A VMPTRLD or VMCLEAR of a VMCS12 that is current on another CPU
        // is refused (`machine/vmcs12_owners.rs`); asked only for one that
        // is not this CPU's current VMCS12, the hot case, which takes no lock.
        let mut elsewhere = |ptr: u64| match m.vmcs12_owners.elsewhere(ptr, cpu) {
            Some(other) => {
                log::warn!(
                    "L1 {} of VMCS12 {ptr:#x} on CPU APIC ID {cpu:#x}: it is current on CPU APIC ID {other:#x}; refused",
                    reason_name(basic),
                );
                true
            }
            None => false,
        };
        let done = self
            .nested_ctx(vs, p)
            .vmx_instruction(basic, &mut elsewhere);
        let after = self.nested.current_vmcs12();
        if before != after {
            m.vmcs12_owners.change(self.apic_id(), before, after);
        }
        if let Some(enc) = done.vmcs_field {
            *self.stats.vmcs_fields.entry(enc).or_insert(0) += 1;
        }
        if done.outcome == Outcome::Succeed
            && matches!(basic, reason::VMCLEAR | reason::VMXON | reason::VMXOFF)
        {
            let cpu = self.apic_id();
            let m = &mut **m;
            // The end of a user VM (shadow/identity.rs, rule 3), unless
            // the vCPU only moves to another CPU (shadow/ending.rs); all of
            // them when the last CPU leaves VMX operation.
            let now = crate::arch::cpu::rdtsc();
            match (basic, done.cleared) {
                (reason::VMCLEAR, Some(ptr)) => m
                    .shadow
                    .vmclear(ptr, now + self.cpuid.tsc_hz / VMCLEAR_GRACE_DIVISOR),
                (reason::VMXON, _) => {
                    m.vmx_operation.insert(cpu);
                }
                (reason::VMXOFF, _) => {
                    m.vmx_operation.remove(&cpu);
                    if m.vmx_operation.is_empty() {
                        m.shadow.vmxoff();
                    }
                }
                _ => {}
            }
            m.shadow.expire(now);
            for f in m.console.notices(&mut m.shadow) {
                p.mgmt_send(&f);
            }
        }
        ExitOutcome::Resume
    }
}
