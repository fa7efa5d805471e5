//! L1's VMX instructions, on the vCPU: operands from VMCS01 and L1's page
//! tables, outcomes applied as the CPU would (RFLAGS, RIP, exceptions).

use super::{Outcome as ExitOutcome, Platform, Vcpu};
use crate::arch::run::GuestRegs;
use crate::guest_mem::walk::PagingRegs;
use crate::machine::Machine;
use crate::nested::instr::{self, Invalidate, L1State, Outcome};
use crate::nested::operand::{GuestCtx, InstrInfo, Segment};
use crate::nested::{Level, VmcsSet};
use crate::regs::{AR_L, EFER_LMA};
use crate::vmx::exit::reason;
use crate::vmx::guest_cr::{paging_regs, read_cr_state};
use crate::vmx::inject::{inject_exception, skip_instruction};
use crate::vmx::{Field as F, Vmcs};

/// L1's state for a VMX instruction that just exited (VMCS01 current).
pub fn l1_state(v: &impl Vmcs, regs: &GuestRegs, maxphyaddr: u8) -> L1State {
    let cr = read_cr_state(v);
    let mut gpr = regs.gpr;
    gpr[GuestRegs::RSP] = v.read(F::GUEST_RSP);
    let seg = |b, l, a| Segment {
        base: v.read(b),
        limit: v.read(l) as u32,
        ar: v.read(a) as u32,
    };
    let segs = [
        seg(F::GUEST_ES_BASE, F::GUEST_ES_LIMIT, F::GUEST_ES_AR_BYTES),
        seg(F::GUEST_CS_BASE, F::GUEST_CS_LIMIT, F::GUEST_CS_AR_BYTES),
        seg(F::GUEST_SS_BASE, F::GUEST_SS_LIMIT, F::GUEST_SS_AR_BYTES),
        seg(F::GUEST_DS_BASE, F::GUEST_DS_LIMIT, F::GUEST_DS_AR_BYTES),
        seg(F::GUEST_FS_BASE, F::GUEST_FS_LIMIT, F::GUEST_FS_AR_BYTES),
        seg(F::GUEST_GS_BASE, F::GUEST_GS_LIMIT, F::GUEST_GS_AR_BYTES),
    ];
    let long_mode = cr.efer & EFER_LMA != 0 && v.read(F::GUEST_CS_AR_BYTES) & AR_L != 0;
    L1State {
        ctx: GuestCtx {
            gpr,
            segs,
            long_mode,
            la57: cr.cr4 & (1 << 12) != 0,
        },
        paging: paging_regs(v, maxphyaddr),
        cr0: cr.cr0,
        cr4: cr.cr4,
        rflags: v.read(F::GUEST_RFLAGS),
        cpl: ((v.read(F::GUEST_SS_AR_BYTES) >> 5) & 3) as u8,
        info: InstrInfo(v.read(F::VMX_INSTRUCTION_INFO) as u32),
        qualification: v.read(F::EXIT_QUALIFICATION),
    }
}

/// What the checks common to VMX instructions need, for VMLAUNCH and
/// VMRESUME, which have no operands (cheaper than [`l1_state`]).
pub fn l1_mode(v: &impl Vmcs) -> L1State {
    let cr = read_cr_state(v);
    let long_mode = cr.efer & EFER_LMA != 0 && v.read(F::GUEST_CS_AR_BYTES) & AR_L != 0;
    L1State {
        ctx: GuestCtx {
            long_mode,
            ..Default::default()
        },
        paging: PagingRegs {
            cr0: cr.cr0,
            cr3: cr.cr3,
            cr4: cr.cr4,
            efer: cr.efer,
            pdptes: [0; 4],
            maxphyaddr: 0,
        },
        cr0: cr.cr0,
        cr4: cr.cr4,
        rflags: v.read(F::GUEST_RFLAGS),
        cpl: ((v.read(F::GUEST_SS_AR_BYTES) >> 5) & 3) as u8,
        info: InstrInfo(0),
        qualification: 0,
    }
}

/// Applies an instruction outcome to L1 (VMCS01 current).
pub fn apply<P: Platform>(v: &mut impl Vmcs, p: &mut P, o: Outcome) {
    match o {
        Outcome::Succeed | Outcome::FailInvalid | Outcome::FailValid(_) => {
            let rf = instr::rflags_after(v.read(F::GUEST_RFLAGS), o);
            v.write(F::GUEST_RFLAGS, rf);
            skip_instruction(v);
        }
        Outcome::Fault(f) => {
            let code = matches!(f.vector, 12 | 13).then_some(f.error_code);
            inject_exception(v, f.vector, code);
        }
        Outcome::PageFault {
            address,
            error_code,
        } => {
            p.set_cr2(address);
            inject_exception(v, 14, Some(error_code));
        }
    }
}

impl Vcpu {
    /// L1's direct VMWRITEs (through the shadow VMCS) into VMCS12, before
    /// L0 uses or moves VMCS12. VMCS01 is current before and after.
    pub(super) fn sync_from_shadow<S: VmcsSet>(&mut self, vs: &mut S) {
        if self.nested.shadow_linked {
            vs.select(Level::Shadow);
            crate::nested::shadow_vmcs::from_shadow(
                vs.current(),
                &mut self.nested.vmx.vmcs12,
                &mut self.nested.shadow_cache,
            );
            vs.select(Level::L1);
        }
    }

    /// VMCS12 into the shadow VMCS (or the link cut when L1 has no current
    /// VMCS), after L0 changed VMCS12. VMCS01 is current before and after.
    pub(super) fn sync_to_shadow<S: VmcsSet>(&mut self, vs: &mut S) {
        if !self.nested.shadowing {
            return;
        }
        let linked = self.nested.vmx.current.is_some();
        if linked {
            if self.nested.shadow_holds != self.nested.vmx.current {
                // The shadow holds another VMCS12's values.
                self.nested.shadow_cache = Default::default();
                self.nested.shadow_holds = self.nested.vmx.current;
            }
            vs.select(Level::Shadow);
            crate::nested::shadow_vmcs::to_shadow(
                &self.nested.vmx.vmcs12,
                vs.current(),
                &mut self.nested.shadow_cache,
            );
            vs.select(Level::L1);
        }
        if linked != self.nested.shadow_linked {
            let link = if linked { self.vmcs_phys[2] } else { u64::MAX };
            vs.current().write(F::VMCS_LINK_POINTER, link);
            self.nested.shadow_linked = linked;
        }
    }

    /// One field of VMCS12 into the shadow VMCS, if it is linked.
    pub(super) fn field_to_shadow<S: VmcsSet>(&mut self, vs: &mut S, f: F) {
        if self.nested.shadow_linked {
            vs.select(Level::Shadow);
            crate::nested::shadow_vmcs::field_to_shadow(
                &self.nested.vmx.vmcs12,
                vs.current(),
                f,
                &mut self.nested.shadow_cache,
            );
            vs.select(Level::L1);
        }
    }

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
            self.sync_from_shadow(vs);
        }
        let v = vs.current();
        let s = l1_state(v, &self.regs, self.maxphyaddr);
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
        match inv {
            Invalidate::None => {}
            Invalidate::Ept(which) => {
                if self.nested.ept02.invalidate(p.tables(), which) {
                    p.invept_all();
                }
            }
            Invalidate::Vpid(Some(v12)) => {
                if let Some(v02) = self.nested.vpids.lookup(v12) {
                    p.flush_vpid(v02);
                }
            }
            Invalidate::Vpid(None) => {
                for v02 in self.nested.vpids.all() {
                    p.flush_vpid(v02);
                }
            }
        }
        if let Outcome::FailValid(e) = o {
            log::debug!(
                "L1 {}: VMfailValid({e})",
                crate::vmx::exit::reason_name(basic)
            );
        }
        debug_assert_eq!(vs.selected(), Level::L1);
        if matches!(basic, reason::VMXON | reason::VMXOFF) && o == Outcome::Succeed {
            // Outside VMX operation L1's VMREAD/VMWRITE must #UD, which only
            // an exit to L0 can give: shadowing is on from VMXON to VMXOFF.
            let on = self.nested.shadowing && self.nested.vmx.vmxon.is_some();
            let bit = crate::vmx::caps::secondary::VMCS_SHADOWING as u64;
            if on {
                vs.current().set_bits(F::SECONDARY_VM_EXEC_CONTROL, bit);
            } else {
                vs.current().clear_bits(F::SECONDARY_VM_EXEC_CONTROL, bit);
            }
        }
        if moves_vmcs12 && o == Outcome::Succeed {
            self.sync_to_shadow(vs);
        } else if let Outcome::FailValid(_) = o {
            self.field_to_shadow(vs, F::VM_INSTRUCTION_ERROR);
        } else if basic == reason::VMWRITE && o == Outcome::Succeed {
            // An exit-information field L1 wrote (IA32_VMX_MISC[29]).
            if let Some(f) =
                crate::vmx::Field::from_encoding(gpr[s.info.reg2() as usize] as u32 & !1)
            {
                if crate::nested::shadow_vmcs::is_shadowed(f) {
                    self.field_to_shadow(vs, f);
                }
            }
        }
        apply(vs.current(), p, o);
        ExitOutcome::Resume
    }
}
