//! Exception entry shared by L0 and the scenario guests: one stub per
//! vector saves the registers into an [`ExceptionFrame`] and calls the
//! image's `extern "C" fn handle_exception(&mut ExceptionFrame)`; when that
//! returns, the stub resumes at `frame.rip` (which the handler may move).

/// The registers an exception stub saves, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// The IDT of 32 interrupt gates to the stubs, with the IST index each
/// vector uses.
pub fn idt_gates(
    stubs: &[u64; 32],
    code_selector: u16,
    ist: impl Fn(usize) -> u64,
) -> [[u64; 2]; 32] {
    core::array::from_fn(|v| {
        let h = stubs[v];
        [
            (h & 0xffff)
                | (code_selector as u64) << 16
                | ist(v) << 32
                | 0x8e << 40
                | (h >> 16 & 0xffff) << 48,
            h >> 32,
        ]
    })
}

#[cfg(target_os = "none")]
extern "C" {
    static boot_exception_stubs: [u64; 32];
}

/// The IDT for this image's stubs.
#[cfg(target_os = "none")]
pub fn idt(code_selector: u16, ist: impl Fn(usize) -> u64) -> [[u64; 2]; 32] {
    // SAFETY: the table is defined below with 32 entries and never written.
    idt_gates(
        unsafe { &*core::ptr::addr_of!(boot_exception_stubs) },
        code_selector,
        ist,
    )
}

#[cfg(target_os = "none")]
// One stub per vector: push a zero error code where the CPU pushes none,
// push the vector, save the GPRs and call the image's `handle_exception`.
core::arch::global_asm!(
    r#"
    .macro EXC_NOERR n
    .section .text
boot_exc_\n:
    push 0
    push \n
    jmp boot_exc_common
    .section .rodata.exception_stubs, "a"
    .quad boot_exc_\n
    .endm

    .macro EXC_ERR n
    .section .text
boot_exc_\n:
    push \n
    jmp boot_exc_common
    .section .rodata.exception_stubs, "a"
    .quad boot_exc_\n
    .endm

    .section .rodata.exception_stubs, "a"
    .balign 8
    .global boot_exception_stubs
boot_exception_stubs:
    EXC_NOERR 0
    EXC_NOERR 1
    EXC_NOERR 2
    EXC_NOERR 3
    EXC_NOERR 4
    EXC_NOERR 5
    EXC_NOERR 6
    EXC_NOERR 7
    EXC_ERR 8
    EXC_NOERR 9
    EXC_ERR 10
    EXC_ERR 11
    EXC_ERR 12
    EXC_ERR 13
    EXC_ERR 14
    EXC_NOERR 15
    EXC_NOERR 16
    EXC_ERR 17
    EXC_NOERR 18
    EXC_NOERR 19
    EXC_NOERR 20
    EXC_ERR 21
    EXC_NOERR 22
    EXC_NOERR 23
    EXC_NOERR 24
    EXC_NOERR 25
    EXC_NOERR 26
    EXC_NOERR 27
    EXC_NOERR 28
    EXC_ERR 29
    EXC_ERR 30
    EXC_NOERR 31

    .section .text
boot_exc_common:
    push rax
    push rcx
    push rdx
    push rbx
    push rbp
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call handle_exception
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rbp
    pop rbx
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq
"#
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_encoding() {
        let mut stubs = [0u64; 32];
        stubs[14] = 0xffff_ffff_8012_3456;
        let idt = idt_gates(&stubs, 0x08, |v| if v == 8 { 1 } else { 0 });
        // Offset 15:0, selector, IST, type 0x8e (present 64-bit interrupt gate), offset 31:16, 63:32.
        assert_eq!(idt[14][0], 0x3456 | 0x08 << 16 | 0x8e << 40 | 0x8012 << 48);
        assert_eq!(idt[14][1], 0xffff_ffff);
        assert_eq!(idt[8][0] >> 32 & 7, 1);
        assert_eq!(core::mem::size_of::<ExceptionFrame>(), 22 * 8);
    }
}
