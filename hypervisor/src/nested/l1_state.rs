//! L1 as a VMX instruction finds it (VMCS01 current): its mode, operands'
//! segments and paging for the instruction handlers of `instr.rs`, and an
//! instruction's outcome applied as the CPU would (RFLAGS, RIP, exceptions).

use super::instr::{self, L1State, Outcome};
use super::operand::{GuestCtx, InstrInfo, Segment};
use crate::arch::run::GuestRegs;
use crate::guest_mem::walk::PagingRegs;
use crate::regs::{AR_L, EFER_LMA};
use crate::vmx::fields::GUEST_SEGMENTS;
use crate::vmx::guest_cr::{paging_regs, read_cr_state};
use crate::vmx::inject::{inject_exception, skip_instruction};
use crate::vmx::{Field as F, Vmcs};

/// L1's state for a VMX instruction that just exited (VMCS01 current).
pub fn l1_state(v: &impl Vmcs, regs: &GuestRegs, maxphyaddr: u8) -> L1State {
    let cr = read_cr_state(v);
    let mut gpr = regs.gpr;
    gpr[GuestRegs::RSP] = v.read(F::GUEST_RSP);
    let segs = core::array::from_fn(|i| {
        let s = &GUEST_SEGMENTS[i];
        Segment {
            base: v.read(s.base),
            limit: v.read(s.limit) as u32,
            ar: v.read(s.ar) as u32,
        }
    });
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

/// Applies an instruction outcome to L1 (VMCS01 current); a #PF's address
/// goes to `set_cr2`.
pub fn apply(v: &mut impl Vmcs, o: Outcome, set_cr2: impl FnOnce(u64)) {
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
            set_cr2(address);
            inject_exception(v, 14, Some(error_code));
        }
    }
}
