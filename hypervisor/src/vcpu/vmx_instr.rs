//! L1's VMX instructions, on the vCPU: carried out by nested VMX
//! (`nested/entry.rs`, `nested/instr_exit.rs`), then what they mean for
//! the machine (a VMCLEAR or VMXOFF can end a user VM) and the `stats`
//! counts.

use super::{Outcome as ExitOutcome, Platform, Vcpu};
use crate::machine::Machine;
use crate::nested::instr::Outcome;
use crate::nested::VmcsSet;
use crate::vmx::exit::reason;

impl Vcpu {
    /// A VMX instruction executed by L1.
    pub(super) fn l1_vmx_instruction<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
        basic: u16,
    ) -> ExitOutcome {
        if basic == reason::VMLAUNCH || basic == reason::VMRESUME {
            return self.nested_entry(m, vs, p, basic == reason::VMLAUNCH);
        }
        let done = self.nested_ctx(vs, p).vmx_instruction(basic);
        if let Some(enc) = done.vmcs_field {
            *self.stats.vmcs_fields.entry(enc).or_insert(0) += 1;
        }
        if done.outcome == Outcome::Succeed {
            // The end of a user VM (shadow/identity.rs, rule 3).
            match (basic, done.cleared) {
                (reason::VMCLEAR, Some(ptr)) => m.shadow.vmclear(ptr),
                (reason::VMXOFF, _) => m.shadow.vmxoff(),
                _ => {}
            }
            for f in m.console.notices(&mut m.shadow) {
                p.mgmt_send(&f);
            }
        }
        ExitOutcome::Resume
    }
}
