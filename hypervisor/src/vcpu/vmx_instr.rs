//! L1's VMX instructions, on the vCPU: the handlers of `nested/instr.rs`
//! over L1's state (`nested/l1_state.rs`), with what they mean for the
//! machine (a VMCLEAR or VMXOFF can end a user VM), the shadow VMCS, the
//! EPT02/VPID caches and the `stats` counts.

use super::{Outcome as ExitOutcome, Platform, Vcpu};
use crate::arch::run::GuestRegs;
use crate::machine::Machine;
use crate::nested::instr::{Invalidate, Outcome};
use crate::nested::l1_state::{apply, l1_state};
use crate::nested::{Level, VmcsSet};
use crate::vmx::exit::reason;
use crate::vmx::{Field as F, Vmcs};

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
        // VMCS12 is about to be flushed or replaced: take L1's shadow writes
        // first. (VMREAD/VMWRITE that exit name fields the shadow does not
        // hold, so they need no sync.)
        let moves_vmcs12 = matches!(basic, reason::VMPTRLD | reason::VMCLEAR | reason::VMXOFF);
        if moves_vmcs12 {
            self.nested.sync_from_shadow(vs);
        }
        let v = vs.current();
        let s = l1_state(v, &self.regs, self.host.maxphyaddr);
        let mut gpr = s.ctx.gpr;
        let x = &mut self.nested.vmx;
        let mem = p.mem();
        x.cleared = None;
        if matches!(basic, reason::VMREAD | reason::VMWRITE) {
            // Which fields get past the shadow bitmaps (the `stats` command).
            let enc =
                gpr[s.info.reg2() as usize] as u32 | u32::from(basic == reason::VMWRITE) << 31;
            *self.stats.vmcs_fields.entry(enc).or_insert(0) += 1;
        }
        let (o, inv) = match basic {
            reason::VMXON => (x.vmxon(&s, mem), Invalidate::None),
            reason::VMXOFF => (x.vmxoff(&s, mem), Invalidate::None),
            reason::VMPTRLD => (x.vmptrld(&s, mem), Invalidate::None),
            reason::VMPTRST => (x.vmptrst(&s, mem), Invalidate::None),
            reason::VMCLEAR => (x.vmclear(&s, mem), Invalidate::None),
            reason::VMREAD => (x.vmread(&s, mem, &mut gpr), Invalidate::None),
            reason::VMWRITE => (x.vmwrite(&s, mem, &gpr), Invalidate::None),
            reason::INVEPT => x.invept(&s, mem, &gpr),
            reason::INVVPID => x.invvpid(&s, mem, &gpr),
            _ => unreachable!("not a VMX instruction: {basic}"),
        };
        if o == Outcome::Succeed {
            // The end of a user VM (shadow/identity.rs, rule 3).
            match (basic, x.cleared.take()) {
                (reason::VMCLEAR, Some(ptr)) => m.shadow.vmclear(ptr),
                (reason::VMXOFF, _) => m.shadow.vmxoff(),
                _ => {}
            }
            for f in m.console.notices(&mut m.shadow) {
                p.mgmt_send(&f);
            }
        }
        if basic == reason::VMREAD && o == Outcome::Succeed {
            for (i, &g) in gpr.iter().enumerate() {
                if i == GuestRegs::RSP {
                    v.write(F::GUEST_RSP, g);
                } else {
                    self.regs.gpr[i] = g;
                }
            }
        }
        self.nested_ctx(vs, p).invalidate(inv);
        if let Outcome::FailValid(e) = o {
            log::debug!(
                "L1 {}: VMfailValid({e})",
                crate::vmx::exit::reason_name(basic)
            );
        }
        debug_assert_eq!(vs.selected(), Level::L1);
        if matches!(basic, reason::VMXON | reason::VMXOFF) && o == Outcome::Succeed {
            // Shadowing is on from VMXON to VMXOFF.
            let on = self.nested.shadowing_wanted();
            let bit = crate::vmx::caps::secondary::VMCS_SHADOWING as u64;
            if on {
                vs.current().set_bits(F::SECONDARY_VM_EXEC_CONTROL, bit);
            } else {
                vs.current().clear_bits(F::SECONDARY_VM_EXEC_CONTROL, bit);
            }
        }
        if moves_vmcs12 && o == Outcome::Succeed {
            self.nested.sync_to_shadow(vs, self.host.vmcs_phys[2]);
        } else if let Outcome::FailValid(_) = o {
            self.nested.field_to_shadow(vs, F::VM_INSTRUCTION_ERROR);
        } else if basic == reason::VMWRITE && o == Outcome::Succeed {
            // An exit-information field L1 wrote (IA32_VMX_MISC[29]).
            if let Some(f) =
                crate::vmx::Field::from_encoding(gpr[s.info.reg2() as usize] as u32 & !1)
            {
                if crate::nested::shadow_vmcs::is_shadowed(f) {
                    self.nested.field_to_shadow(vs, f);
                }
            }
        }
        apply(vs.current(), o, |a| p.set_cr2(a));
        ExitOutcome::Resume
    }
}
