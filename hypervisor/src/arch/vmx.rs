//! VMX instructions (SDM Vol. 3C, chapter 31) with their VMfail results
//! decoded in the same asm block: CF=1 is VMfailInvalid, ZF=1 is
//! VMfailValid, whose error number is then read from the current VMCS.

use core::arch::asm;

use crate::vmx::{Vmcs, VmxError};

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
