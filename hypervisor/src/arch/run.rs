//! Entering a guest and coming back: VMLAUNCH/VMRESUME with the guest's
//! general-purpose registers, and the VM-exit entry point (HOST_RIP).
//!
//! RSP, RIP and RFLAGS live in the VMCS; the other 15 GPRs in [`GuestRegs`].
//! L0 never uses SSE/AVX (soft-float target), so vector state is the
//! guest's throughout and needs no switching; neither do CR2 and DR0-DR6,
//! which L0 never changes.

use crate::vmx::VmxError;

/// Guest GPRs, indexed by their x86 register numbers (0 = RAX ... 15 = R15),
/// the numbering exit qualifications use. Slot 4 (RSP) is unused: RSP is in
/// the VMCS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    pub gpr: [u64; 16],
}

impl GuestRegs {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
}

core::arch::global_asm!(
    r#"
    .section .text
    .global l0_vmx_run
l0_vmx_run:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdi                    # regs pointer: [HOST_RSP] on exit
    mov rax, 0x6c14             # HOST_RSP
    vmwrite rax, rsp
    jbe 3f
    test rsi, rsi
    mov rax, [rdi + 0]
    mov rcx, [rdi + 8]
    mov rdx, [rdi + 16]
    mov rbx, [rdi + 24]
    mov rbp, [rdi + 40]
    mov rsi, [rdi + 48]
    mov r8,  [rdi + 64]
    mov r9,  [rdi + 72]
    mov r10, [rdi + 80]
    mov r11, [rdi + 88]
    mov r12, [rdi + 96]
    mov r13, [rdi + 104]
    mov r14, [rdi + 112]
    mov r15, [rdi + 120]
    mov rdi, [rdi + 56]
    jnz 2f
    vmlaunch
    jmp 3f
2:  vmresume
3:  # VMfail: 1 = VMfailInvalid (CF), 2 = VMfailValid (ZF).
    mov eax, 2
    mov ecx, 1
    cmovc eax, ecx
    add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret

    .global l0_vmx_exit
l0_vmx_exit:
    push rdi
    mov rdi, [rsp + 8]
    mov [rdi + 0], rax
    mov [rdi + 8], rcx
    mov [rdi + 16], rdx
    mov [rdi + 24], rbx
    mov [rdi + 40], rbp
    mov [rdi + 48], rsi
    mov [rdi + 64], r8
    mov [rdi + 72], r9
    mov [rdi + 80], r10
    mov [rdi + 88], r11
    mov [rdi + 96], r12
    mov [rdi + 104], r13
    mov [rdi + 112], r14
    mov [rdi + 120], r15
    pop rax
    mov [rdi + 56], rax
    add rsp, 8
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    xor eax, eax
    ret
"#
);

extern "C" {
    fn l0_vmx_run(regs: *mut GuestRegs, launched: u64) -> u64;
    fn l0_vmx_exit();
}

/// The address to put in HOST_RIP.
pub fn exit_entry_point() -> u64 {
    l0_vmx_exit as *const () as u64
}

/// Runs the guest of the current VMCS until its next VM exit.
///
/// # Safety
/// A fully set-up VMCS must be current, with HOST_RIP = [`exit_entry_point`]
/// and host state that brings L0 back intact.
pub unsafe fn run(regs: &mut GuestRegs, launched: bool) -> Result<(), VmxError> {
    // SAFETY: guaranteed by the caller.
    match unsafe { l0_vmx_run(regs, launched as u64) } {
        0 => Ok(()),
        1 => Err(VmxError::FailInvalid),
        // SAFETY: VMfailValid leaves a current VMCS.
        _ => Err(VmxError::FailValid(
            unsafe { super::vmx::vmread(0x4400) }.unwrap_or(0) as u32,
        )),
    }
}
