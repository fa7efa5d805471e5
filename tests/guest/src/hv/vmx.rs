//! The VMX instructions (SDM Vol. 3C ch. 31), one small wrapper each.
//!
//! Every wrapper decodes RFLAGS as SDM 31.2 defines it: CF=1 is
//! VMfailInvalid (no current VMCS to hold an error number), ZF=1 is
//! VMfailValid (the number is in the VM-instruction error field), neither
//! is VMsucceed. Operands sit in fixed registers so each instruction has a
//! known length: the `LEN_*` constants let [`guarded`] step over an
//! instruction that faults (#UD outside VMX operation, for instance).

use core::arch::asm;

use super::fields::VM_INSTRUCTION_ERROR;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    /// VMfailInvalid: CF set.
    Invalid,
    /// VMfailValid: ZF set, with the VM-instruction error number.
    Valid(u32),
}

pub type VmResult = Result<(), VmFail>;

// Encoded lengths with the operand registers used below (checked against
// the disassembly of the image; all without REX prefixes).
pub const LEN_VMXON: u64 = 4; // f3 0f c7 30
pub const LEN_VMXOFF: u64 = 3; // 0f 01 c4
pub const LEN_VMPTRLD: u64 = 3; // 0f c7 30
pub const LEN_VMPTRST: u64 = 3; // 0f c7 38
pub const LEN_VMCLEAR: u64 = 4; // 66 0f c7 30
pub const LEN_VMREAD: u64 = 3; // 0f 78 c1
pub const LEN_VMWRITE: u64 = 3; // 0f 79 c1
pub const LEN_INVEPT: u64 = 5; // 66 0f 38 80 01
pub const LEN_INVVPID: u64 = 5; // 66 0f 38 81 01

const CF: u64 = 1;
const ZF: u64 = 1 << 6;

fn decode(rflags: u64) -> VmResult {
    if rflags & CF != 0 {
        Err(VmFail::Invalid)
    } else if rflags & ZF != 0 {
        // A current VMCS exists (that is what VMfailValid means): its
        // error field says why.
        Err(VmFail::Valid(
            vmread(VM_INSTRUCTION_ERROR).unwrap_or(u64::MAX) as u32,
        ))
    } else {
        Ok(())
    }
}

/// Runs one VMX instruction of `len` bytes that may fault; `Err(vector)`
/// if it did.
///
/// The wrappers clear CF and ZF (`test rsp, rsp`) before the instruction,
/// so a skipped instruction decodes as success and never reaches the
/// VMREAD of the error field (which would fault again).
pub fn guarded<T>(len: u64, f: impl FnOnce() -> T) -> Result<T, u8> {
    let mut out = None;
    match crate::faults::expect_fault(len, || out = Some(f())) {
        Some(v) => Err(v),
        None => out.ok_or(0xff),
    }
}

/// VMXON with the region at `pa`.
///
/// # Safety
/// `pa` must be a page the caller owns (or an address chosen to fail).
pub unsafe fn vmxon(pa: u64) -> VmResult {
    let f: u64;
    // SAFETY: guaranteed by the caller; the operand is read from our stack.
    unsafe {
        asm!("test rsp, rsp", "vmxon qword ptr [rax]", "pushfq", "pop {f}", in("rax") &pa, f = out(reg) f)
    };
    decode(f)
}

/// VMXOFF.
///
/// # Safety
/// Leaves VMX operation: no VMX instruction works afterwards.
pub unsafe fn vmxoff() -> VmResult {
    let f: u64;
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("test rsp, rsp", "vmxoff", "pushfq", "pop {f}", f = out(reg) f) };
    decode(f)
}

/// VMPTRLD `pa`.
///
/// # Safety
/// `pa` must be a VMCS page the caller owns (or an address chosen to fail).
pub unsafe fn vmptrld(pa: u64) -> VmResult {
    let f: u64;
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("test rsp, rsp", "vmptrld qword ptr [rax]", "pushfq", "pop {f}", in("rax") &pa, f = out(reg) f)
    };
    decode(f)
}

/// VMCLEAR `pa`.
///
/// # Safety
/// As [`vmptrld`]; the processor may write the page.
pub unsafe fn vmclear(pa: u64) -> VmResult {
    let f: u64;
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("test rsp, rsp", "vmclear qword ptr [rax]", "pushfq", "pop {f}", in("rax") &pa, f = out(reg) f)
    };
    decode(f)
}

/// VMPTRST: the current-VMCS pointer (all ones when there is none).
pub fn vmptrst() -> u64 {
    let mut v: u64 = 0;
    // SAFETY: stores 8 bytes into `v`; #UD outside VMX operation is the
    // caller's to expect (see [`guarded`]).
    unsafe { asm!("vmptrst qword ptr [rax]", in("rax") &mut v, options(nostack)) };
    v
}

/// VMREAD of `field` from the current VMCS.
pub fn vmread(field: u32) -> Result<u64, VmFail> {
    let (v, f): (u64, u64);
    // SAFETY: VMREAD only reads the current VMCS.
    unsafe {
        asm!("test rsp, rsp", "vmread rcx, rax", "pushfq", "pop {f}", in("rax") field as u64, out("rcx") v, f = out(reg) f)
    };
    decode(f).map(|_| v)
}

/// VMREAD with a full 64-bit encoding operand (to test bits 63:32).
pub fn vmread_raw(field: u64) -> Result<u64, VmFail> {
    let (v, f): (u64, u64);
    // SAFETY: as [`vmread`].
    unsafe {
        asm!("test rsp, rsp", "vmread rcx, rax", "pushfq", "pop {f}", in("rax") field, out("rcx") v, f = out(reg) f)
    };
    decode(f).map(|_| v)
}

/// VMWRITE of `value` to `field` of the current VMCS.
pub fn vmwrite(field: u32, value: u64) -> VmResult {
    let f: u64;
    // SAFETY: VMWRITE only changes the current VMCS, whose memory the
    // caller handed to the processor with VMPTRLD.
    unsafe {
        asm!("test rsp, rsp", "vmwrite rax, rcx", "pushfq", "pop {f}", in("rax") field as u64, in("rcx") value, f = out(reg) f)
    };
    decode(f)
}

/// INVEPT of `kind` for `eptp`.
pub fn invept(kind: u64, eptp: u64) -> VmResult {
    let desc: [u64; 2] = [eptp, 0];
    let f: u64;
    // SAFETY: invalidates cached EPT translations only.
    unsafe {
        asm!("test rsp, rsp", "invept rax, xmmword ptr [rcx]", "pushfq", "pop {f}", in("rax") kind, in("rcx") &desc, f = out(reg) f)
    };
    decode(f)
}

/// INVVPID of `kind` for `vpid` (and `addr` for type 0).
pub fn invvpid(kind: u64, vpid: u16, addr: u64) -> VmResult {
    let desc: [u64; 2] = [vpid as u64, addr];
    let f: u64;
    // SAFETY: invalidates cached linear translations only.
    unsafe {
        asm!("test rsp, rsp", "invvpid rax, xmmword ptr [rcx]", "pushfq", "pop {f}", in("rax") kind, in("rcx") &desc, f = out(reg) f)
    };
    decode(f)
}

/// VMREAD that folds a failure into an impossible value, for exit
/// information a check then compares.
pub fn rd(field: u32) -> u64 {
    vmread(field).unwrap_or(0xdead_dead_dead_dead)
}
