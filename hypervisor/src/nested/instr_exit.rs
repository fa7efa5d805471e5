//! An L1 VMX instruction other than VMLAUNCH/VMRESUME, carried out on its
//! exit (VMCS01 current): L1's state read (`l1_state.rs`), the handler of
//! `instr.rs` run, and its effects — VMREAD's register, INVEPT/INVVPID's
//! flushes, VMCS shadowing switched at VMXON/VMXOFF, the shadow VMCS
//! synced — then RFLAGS and RIP as the CPU would leave them. What the
//! instruction means for the machine (a VMCLEAR can end a user VM) is the
//! vCPU's, from what this returns.

use super::context::{NestedCtx, NestedHw};
use super::instr::{Invalidate, Outcome};
use super::l1_state::{apply, l1_state};
use super::shadow_vmcs;
use super::{Level, VmcsSet};
use crate::arch::run::GuestRegs;
use crate::vmx::caps::secondary;
use crate::vmx::exit::{reason, reason_name};
use crate::vmx::{Field as F, Vmcs};

/// What an L1 VMX instruction did, for the vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstrExit {
    pub outcome: Outcome,
    /// The VMCS12 pointer a VMCLEAR cleared.
    pub cleared: Option<u64>,
    /// The field of a VMREAD/VMWRITE that exited (bit 31 set for VMWRITE).
    pub vmcs_field: Option<u32>,
}

impl<S: VmcsSet, H: NestedHw> NestedCtx<'_, S, H> {
    /// L1 executed the VMX instruction of exit reason `basic` (not
    /// VMLAUNCH/VMRESUME: `entry.rs`).
    /// `elsewhere` answers for VMPTRLD and VMCLEAR whether a VMCS12 is
    /// current on another CPU ([`crate::nested::instr::Vmx::vmptrld`]).
    pub fn vmx_instruction(
        &mut self,
        basic: u16,
        elsewhere: &mut dyn FnMut(u64) -> bool,
    ) -> InstrExit {
        // VMCS12 is about to be flushed or replaced: take L1's shadow writes
        // first. (VMREAD/VMWRITE that exit name fields the shadow does not
        // hold, so they need no sync.)
        let moves_vmcs12 = matches!(basic, reason::VMPTRLD | reason::VMCLEAR | reason::VMXOFF);
        if moves_vmcs12 {
            self.nested.sync_from_shadow(self.vs);
        }
        let v = self.vs.current();
        let s = l1_state(v, self.regs, self.host.maxphyaddr);
        let mut gpr = s.ctx.gpr;
        let x = &mut self.nested.vmx;
        let mem = self.hw.mem();
        x.cleared = None;
        // Which fields get past the shadow bitmaps (the `stats` command).
        let vmcs_field = matches!(basic, reason::VMREAD | reason::VMWRITE).then(|| {
            gpr[s.info.reg2() as usize] as u32 | u32::from(basic == reason::VMWRITE) << 31
        });
        let (o, inv) = match basic {
            reason::VMXON => (x.vmxon(&s, mem), Invalidate::None),
            reason::VMXOFF => (x.vmxoff(&s, mem), Invalidate::None),
            reason::VMPTRLD => (x.vmptrld(&s, mem, elsewhere), Invalidate::None),
            reason::VMPTRST => (x.vmptrst(&s, mem), Invalidate::None),
            reason::VMCLEAR => (x.vmclear(&s, mem, elsewhere), Invalidate::None),
            reason::VMREAD => (x.vmread(&s, mem, &mut gpr), Invalidate::None),
            reason::VMWRITE => (x.vmwrite(&s, mem, &gpr), Invalidate::None),
            reason::INVEPT => x.invept(&s, mem, &gpr),
            reason::INVVPID => x.invvpid(&s, mem, &gpr),
            _ => unreachable!("not a VMX instruction: {basic}"),
        };
        let cleared = x.cleared.take();
        if basic == reason::VMREAD && o == Outcome::Succeed {
            for (i, &g) in gpr.iter().enumerate() {
                if i == GuestRegs::RSP {
                    v.write(F::GUEST_RSP, g);
                } else {
                    self.regs.gpr[i] = g;
                }
            }
        }
        self.invalidate(inv);
        if let Outcome::FailValid(e) = o {
            log::debug!("L1 {}: VMfailValid({e})", reason_name(basic));
        }
        debug_assert_eq!(self.vs.selected(), Level::L1);
        if matches!(basic, reason::VMXON | reason::VMXOFF) && o == Outcome::Succeed {
            // Shadowing is on from VMXON to VMXOFF.
            let on = self.nested.shadowing_wanted();
            let bit = secondary::VMCS_SHADOWING as u64;
            if on {
                self.vs
                    .current()
                    .set_bits(F::SECONDARY_VM_EXEC_CONTROL, bit);
            } else {
                self.vs
                    .current()
                    .clear_bits(F::SECONDARY_VM_EXEC_CONTROL, bit);
            }
        }
        if moves_vmcs12 && o == Outcome::Succeed {
            self.nested.sync_to_shadow(self.vs, self.host.vmcs_phys[2]);
        } else if let Outcome::FailValid(_) = o {
            self.nested
                .field_to_shadow(self.vs, F::VM_INSTRUCTION_ERROR);
        } else if basic == reason::VMWRITE && o == Outcome::Succeed {
            // An exit-information field L1 wrote (IA32_VMX_MISC[29]).
            if let Some(f) = F::from_encoding(gpr[s.info.reg2() as usize] as u32 & !1) {
                if shadow_vmcs::is_shadowed(
                    f,
                    shadow_vmcs::pml_index_shadowed(&self.nested.vmx.caps),
                ) {
                    self.nested.field_to_shadow(self.vs, f);
                }
            }
        }
        apply(self.vs.current(), o, |a| self.hw.set_cr2(a));
        InstrExit {
            outcome: o,
            cleared,
            vmcs_field,
        }
    }
}
