//! VMX instructions (SDM Vol. 3C, chapter 31) with their VMfail results
//! decoded in the same asm block: CF=1 is VMfailInvalid, ZF=1 is
//! VMfailValid, whose error number is then read from the current VMCS.

#[cfg(target_os = "none")]
#[cfg(target_os = "none")]
use crate::regs::{
    CR0_CD, CR0_EM, CR0_MP, CR0_NW, CR0_TS, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE, CR4_VMXE,
};
use crate::vmx::caps::{self, VmxCaps};
use crate::vmx::{Vmcs, VmxError};
use core::arch::asm;

/// Decodes RFLAGS.CF/ZF after a VMX instruction.
fn result(cf: u8, zf: u8) -> Result<(), VmxError> {
    if cf != 0 {
        Err(VmxError::FailInvalid)
    } else if zf != 0 {
        // SAFETY: ZF=1 means there is a current VMCS holding the error number.
        Err(VmxError::FailValid(
            unsafe { vmread(0x4400) }.unwrap_or(0) as u32
        ))
    } else {
        Ok(())
    }
}

macro_rules! vmx_mem_op {
    ($(#[$m:meta])* $name:ident, $insn:literal) => {
        $(#[$m])*
        ///
        /// # Safety
        /// VMX operation rules apply: the region must be a valid, 4 KiB
        /// aligned, L0-owned frame in the state the instruction expects.
        pub unsafe fn $name(phys: u64) -> Result<(), VmxError> {
            let (cf, zf): (u8, u8);
            // SAFETY: guaranteed by the caller; the operand is a pointer to the address.
            unsafe {
                asm!(concat!($insn, " qword ptr [{}]"), "setc {}", "setz {}",
                     in(reg) &phys, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
            };
            result(cf, zf)
        }
    };
}

vmx_mem_op!(/// Enters VMX root operation with the VMXON region at `phys`.
    vmxon, "vmxon");
vmx_mem_op!(/// Clears the VMCS at `phys`: its launch state becomes "clear".
    vmclear, "vmclear");
vmx_mem_op!(/// Makes the VMCS at `phys` current.
    vmptrld, "vmptrld");

/// Leaves VMX operation.
///
/// # Safety
/// No guest may run afterwards until VMXON again.
pub unsafe fn vmxoff() -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("vmxoff", "setc {}", "setz {}", out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    result(cf, zf)
}

/// Reads a field of the current VMCS.
///
/// # Safety
/// VMX root operation must be on.
pub unsafe fn vmread(field: u32) -> Result<u64, VmxError> {
    let value: u64;
    let (cf, zf): (u8, u8);
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("vmread {v}, {f}", "setc {cf}", "setz {zf}",
             f = in(reg) field as u64, v = out(reg) value, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
             options(nostack))
    };
    // Not `result()`: a failing vmread of 0x4400 must not recurse.
    if cf != 0 {
        Err(VmxError::FailInvalid)
    } else if zf != 0 {
        Err(VmxError::FailValid(0))
    } else {
        Ok(value)
    }
}

/// Writes a field of the current VMCS.
///
/// # Safety
/// VMX root operation must be on and the value must keep L0 safe.
pub unsafe fn vmwrite(field: u32, value: u64) -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("vmwrite {f}, {v}", "setc {cf}", "setz {zf}",
             f = in(reg) field as u64, v = in(reg) value, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
             options(nostack))
    };
    result(cf, zf)
}

/// INVEPT: type 1 = single context (`eptp`), 2 = all contexts.
///
/// # Safety
/// VMX root operation must be on.
pub unsafe fn invept(kind: u64, eptp: u64) -> Result<(), VmxError> {
    let desc: [u64; 2] = [eptp, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: guaranteed by the caller; the descriptor is 16 readable bytes.
    unsafe {
        asm!("invept {k}, [{d}]", "setc {cf}", "setz {zf}",
             k = in(reg) kind, d = in(reg) &desc, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
             options(nostack))
    };
    result(cf, zf)
}

/// INVVPID: type 0 = address, 1 = single context, 2 = all contexts,
/// 3 = single context retaining globals.
///
/// # Safety
/// VMX root operation must be on.
pub unsafe fn invvpid(kind: u64, vpid: u16, addr: u64) -> Result<(), VmxError> {
    let desc: [u64; 2] = [vpid as u64, addr];
    let (cf, zf): (u8, u8);
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("invvpid {k}, [{d}]", "setc {cf}", "setz {zf}",
             k = in(reg) kind, d = in(reg) &desc, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
             options(nostack))
    };
    result(cf, zf)
}

/// The CPU's current VMCS.
pub struct CurrentVmcs {
    _private: (),
}

impl CurrentVmcs {
    /// # Safety
    /// VMX root operation must be on and a VMCS current for as long as this lives.
    pub unsafe fn new() -> Self {
        CurrentVmcs { _private: () }
    }
}

impl Vmcs for CurrentVmcs {
    fn read_raw(&self, encoding: u32) -> Result<u64, VmxError> {
        // SAFETY: a VMCS is current (constructor contract).
        unsafe { vmread(encoding) }
    }
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmxError> {
        // SAFETY: a VMCS is current; L0's writers keep host state intact.
        unsafe { vmwrite(encoding, value) }
    }
}

/// Enters VMX root operation on this CPU, once (CR4.VMXE says whether it
/// already is: a second call is refused): IA32_FEATURE_CONTROL as firmware should have left it, CR0/CR4
/// fixed for VMX as the CPU's capability MSRs say (with SSE, and XSAVE when
/// the CPU has it), then VMXON on a fresh frame of L0's pool.
#[cfg(target_os = "none")]
pub fn enable(xsave: bool) -> Result<(), &'static str> {
    let c = &read_caps().ok_or("VMX: not offered by this CPU")?;
    if super::cpu::read_cr4() & CR4_VMXE != 0 {
        return Err("VMX: already on on this CPU");
    }
    let region = super::pool::alloc_frames(1, "VMXON region");
    // SAFETY: CPUID reported VMX, so IA32_FEATURE_CONTROL exists.
    let fc = unsafe { super::cpu::rdmsr(caps::IA32_FEATURE_CONTROL) };
    if fc & caps::FEATURE_CONTROL_LOCKED != 0 {
        if fc & caps::FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0 {
            return Err("VMX is disabled by the firmware (IA32_FEATURE_CONTROL locked without VMX): enable VT-x in the BIOS setup");
        }
    } else {
        // SAFETY: unlocked: enabling VMX and locking is what firmware would do.
        unsafe {
            super::cpu::wrmsr(
                caps::IA32_FEATURE_CONTROL,
                fc | caps::FEATURE_CONTROL_LOCKED | caps::FEATURE_CONTROL_VMX_OUTSIDE_SMX,
            )
        };
    }
    // SSE on (FXSAVE/FXRSTOR and SIMD exceptions known): L0's sealing code
    // uses AES-NI, saving and restoring the guest's vector registers itself.
    let mut cr4 = super::cpu::read_cr4() | CR4_VMXE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    if xsave {
        // L0 executes the guest's XSETBV for it.
        cr4 |= CR4_OSXSAVE;
    }
    // Caching on (CD, NW clear): the firmware may leave them set (Bochs's
    // BIOS and GRUB keep the reset value's), and VM entry does not load
    // them (SDM Vol. 3C 27.3.2.1), so L1 would start with caching off
    // although the CR0 L0 gives it says on; Xen read NW back, set
    // without its asking, and faulted clearing CD.
    // SAFETY: the fixed bits are what VMX operation requires; NE, PE, PG
    // and VMXE are compatible with how L0 runs; CD and NW only select how
    // the CPU caches memory.
    unsafe {
        super::cpu::write_cr0(
            c.fix_cr0(super::cpu::read_cr0() & !(CR0_EM | CR0_TS | CR0_CD | CR0_NW) | CR0_MP),
        );
        super::cpu::write_cr4(c.fix_cr4(cr4));
    }
    // SAFETY: a fresh, zeroed pool frame (identity-mapped), L0's alone.
    unsafe { (region as *mut u32).write(c.revision()) };
    // SAFETY: CR0/CR4 fixed, feature control on, region aligned with the revision.
    unsafe { vmxon(region) }.map_err(|_| "VMXON failed")
}

/// The VMX capability MSRs, the TRUE_* variants where IA32_VMX_BASIC[55]
/// says they exist; None if CPUID does not report VMX (the MSRs would #GP).
pub fn read_caps() -> Option<VmxCaps> {
    const CPUID1_ECX_VMX: u32 = 1 << 5;
    if super::cpu::cpuid(1, 0)[2] & CPUID1_ECX_VMX == 0 {
        return None;
    }
    // SAFETY: VMX present (above); the secondary and EPT MSRs are only
    // read when the primary controls allow them.
    unsafe {
        let basic = super::cpu::rdmsr(caps::IA32_VMX_BASIC);
        let t = basic & caps::basic::TRUE_CONTROLS != 0;
        let primary = super::cpu::rdmsr(if t {
            caps::IA32_VMX_TRUE_PROCBASED_CTLS
        } else {
            caps::IA32_VMX_PROCBASED_CTLS
        });
        let has_secondary = (primary >> 32) as u32 & caps::primary::ACTIVATE_SECONDARY != 0;
        let secondary = if has_secondary {
            super::cpu::rdmsr(caps::IA32_VMX_PROCBASED_CTLS2)
        } else {
            0
        };
        let has_ept_vpid = (secondary >> 32) as u32
            & (caps::secondary::ENABLE_EPT | caps::secondary::ENABLE_VPID)
            != 0;
        Some(VmxCaps {
            basic,
            pin: super::cpu::rdmsr(if t {
                caps::IA32_VMX_TRUE_PINBASED_CTLS
            } else {
                caps::IA32_VMX_PINBASED_CTLS
            }),
            primary,
            secondary,
            exit: super::cpu::rdmsr(if t {
                caps::IA32_VMX_TRUE_EXIT_CTLS
            } else {
                caps::IA32_VMX_EXIT_CTLS
            }),
            entry: super::cpu::rdmsr(if t {
                caps::IA32_VMX_TRUE_ENTRY_CTLS
            } else {
                caps::IA32_VMX_ENTRY_CTLS
            }),
            misc: super::cpu::rdmsr(caps::IA32_VMX_MISC),
            cr0_fixed0: super::cpu::rdmsr(caps::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: super::cpu::rdmsr(caps::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: super::cpu::rdmsr(caps::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: super::cpu::rdmsr(caps::IA32_VMX_CR4_FIXED1),
            ept_vpid: if has_ept_vpid {
                super::cpu::rdmsr(caps::IA32_VMX_EPT_VPID_CAP)
            } else {
                0
            },
        })
    }
}
