//! Entering L2 and coming back: the VMLAUNCH/VMRESUME trampoline, L2's
//! general registers (VM entries and exits load only RSP, RIP and RFLAGS,
//! SDM 27.3.2 and 28.5), and the exit information.

use core::fmt;

use super::fields::*;
use super::vmx::{self, rd, VmFail, VmResult};

/// L2's general-purpose registers other than RSP (which is in the VMCS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

// hv_enter(regs, launch): saves L1's callee-saved registers, writes the
// host RSP field, loads L2's registers and executes VMLAUNCH (launch != 0)
// or VMRESUME. Returns 1 (VMfailInvalid), 2 (VMfailValid) or 3 if the
// instruction falls through. A VM exit lands at hv_exit (the host RIP
// field) with RSP = host RSP: it records RSP and RFLAGS as the exit left
// them, stores L2's registers and returns 0 from hv_enter.
core::arch::global_asm!(
    r#"
    .section .text.hv_enter, "ax"
    .global hv_enter
hv_enter:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov rax, {host_rsp}
    vmwrite rax, rsp
    mov [rip + hv_host_rsp], rsp
    test rsi, rsi
    mov rax, [rdi]
    mov rbx, [rdi + 8]
    mov rcx, [rdi + 16]
    mov rdx, [rdi + 24]
    mov rsi, [rdi + 32]
    mov rbp, [rdi + 48]
    mov r8, [rdi + 56]
    mov r9, [rdi + 64]
    mov r10, [rdi + 72]
    mov r11, [rdi + 80]
    mov r12, [rdi + 88]
    mov r13, [rdi + 96]
    mov r14, [rdi + 104]
    mov r15, [rdi + 112]
    mov rdi, [rdi + 40]
    jnz 2f
    vmresume
    jmp 3f
2:  vmlaunch
3:  pushfq
    pop rax
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    mov rdx, rax
    mov eax, 3
    test edx, 0x40
    jz 4f
    mov eax, 2
4:  test edx, 1
    jz 5f
    mov eax, 1
5:  ret

    .global hv_exit
hv_exit:
    mov [rip + hv_exit_rsp], rsp
    push rax
    pushfq
    pop rax
    mov [rip + hv_exit_rflags], rax
    mov rax, [rsp + 8]
    mov [rax + 8], rbx
    mov [rax + 16], rcx
    mov [rax + 24], rdx
    mov [rax + 32], rsi
    mov [rax + 40], rdi
    mov [rax + 48], rbp
    mov [rax + 56], r8
    mov [rax + 64], r9
    mov [rax + 72], r10
    mov [rax + 80], r11
    mov [rax + 88], r12
    mov [rax + 96], r13
    mov [rax + 104], r14
    mov [rax + 112], r15
    mov rbx, rax
    pop rax
    mov [rbx], rax
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    xor eax, eax
    ret

    .section .bss.hv_enter, "aw", @nobits
    .balign 8
    .global hv_host_rsp
    .global hv_exit_rsp
    .global hv_exit_rflags
hv_host_rsp: .skip 8
hv_exit_rsp: .skip 8
hv_exit_rflags: .skip 8
"#,
    host_rsp = const HOST_RSP,
);

extern "C" {
    fn hv_enter(regs: *mut Regs, launch: u64) -> u64;
    fn hv_exit();
    static hv_host_rsp: u64;
    static hv_exit_rsp: u64;
    static hv_exit_rflags: u64;
}

/// The host RIP every VMCS gets.
pub fn host_rip() -> u64 {
    hv_exit as *const () as u64
}

/// RSP written to the host-RSP field by the last entry, RSP and RFLAGS
/// found at hv_exit after the last exit.
pub fn last_exit_host_view() -> (u64, u64, u64) {
    // SAFETY: plain reads of words only hv_enter/hv_exit write.
    unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!(hv_host_rsp)),
            core::ptr::read_volatile(core::ptr::addr_of!(hv_exit_rsp)),
            core::ptr::read_volatile(core::ptr::addr_of!(hv_exit_rflags)),
        )
    }
}

/// What a VM exit reports (SDM 28.2).
#[derive(Clone, Copy, Debug, Default)]
pub struct Exit {
    pub reason: u32,
    pub qual: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub len: u64,
    pub intr_info: u32,
    pub intr_error: u32,
    pub idt_vectoring: u32,
}

impl Exit {
    pub fn read() -> Exit {
        Exit {
            reason: rd(EXIT_REASON) as u32,
            qual: rd(EXIT_QUALIFICATION),
            rip: rd(GUEST_RIP),
            rsp: rd(GUEST_RSP),
            rflags: rd(GUEST_RFLAGS),
            len: rd(EXIT_INSTR_LEN),
            intr_info: rd(EXIT_INTR_INFO) as u32,
            intr_error: rd(EXIT_INTR_ERROR) as u32,
            idt_vectoring: rd(IDT_VECTORING_INFO) as u32,
        }
    }
    /// The basic exit reason (bits 15:0).
    pub fn basic(&self) -> u32 {
        self.reason & 0xffff
    }
    /// A successful entry followed by an exit for `reason`.
    pub fn is(&self, reason: u32) -> bool {
        self.reason == reason
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "exit reason {:#x} qual {:#x} rip {:#x} len {}",
            self.reason, self.qual, self.rip, self.len
        )?;
        if self.intr_info & intr::VALID != 0 {
            write!(
                f,
                " intr-info {:#x} error {:#x}",
                self.intr_info, self.intr_error
            )?;
        }
        Ok(())
    }
}

/// The outcome of one VM entry attempt.
#[derive(Clone, Copy, Debug)]
pub enum Entry {
    Exit(Exit),
    Fail(VmFail),
}

impl Entry {
    pub fn exit(&self) -> Option<&Exit> {
        match self {
            Entry::Exit(e) => Some(e),
            Entry::Fail(_) => None,
        }
    }
    /// An exit for `reason`.
    pub fn is(&self, reason: u32) -> bool {
        self.exit().is_some_and(|e| e.is(reason))
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Entry::Exit(e) => e.fmt(f),
            Entry::Fail(VmFail::Invalid) => write!(f, "entry VMfailInvalid"),
            Entry::Fail(VmFail::Valid(n)) => write!(f, "entry VMfailValid({n})"),
        }
    }
}

/// One L2: its VMCS, its registers, whether its VMCS is launched.
pub struct Vm {
    pub vmcs: u64,
    pub regs: Regs,
    pub launched: bool,
}

impl Vm {
    pub fn new(vmcs: u64) -> Vm {
        Vm {
            vmcs,
            regs: Regs::default(),
            launched: false,
        }
    }

    /// Makes this VM's VMCS current.
    pub fn load(&self) -> VmResult {
        // SAFETY: `vmcs` is one of the pool's VMCS pages, initialized by
        // the caller with VMCLEAR and the revision identifier.
        unsafe { vmx::vmptrld(self.vmcs) }
    }

    /// VMLAUNCH (first time) or VMRESUME into L2 until the next exit.
    /// The VMCS must be current.
    pub fn enter(&mut self) -> Entry {
        // SAFETY: the current VMCS's host state is L1's (see vmcs.rs):
        // host RIP = hv_exit, host RSP written by hv_enter; L2 runs in
        // memory L1 set aside for it.
        let r = unsafe { hv_enter(&mut self.regs, !self.launched as u64) };
        match r {
            0 => {
                let e = Exit::read();
                // A VM-entry failure (bit 31) leaves the VMCS clear (SDM 27.8).
                if e.reason & reason::ENTRY_FAILURE == 0 {
                    self.launched = true;
                }
                Entry::Exit(e)
            }
            1 => Entry::Fail(VmFail::Invalid),
            2 => Entry::Fail(VmFail::Valid(rd(VM_INSTRUCTION_ERROR) as u32)),
            _ => Entry::Fail(VmFail::Valid(u32::MAX)),
        }
    }

    /// VM entry without reading any exit information (for measurements):
    /// `Ok` once L2 has exited again.
    pub fn enter_raw(&mut self) -> VmResult {
        // SAFETY: as in `enter`.
        match unsafe { hv_enter(&mut self.regs, !self.launched as u64) } {
            0 => {
                self.launched = true;
                Ok(())
            }
            1 => Err(VmFail::Invalid),
            _ => Err(VmFail::Valid(rd(VM_INSTRUCTION_ERROR) as u32)),
        }
    }

    /// Advances L2's RIP past the instruction that exited (exit
    /// instruction length, SDM 28.2.5) and enters again.
    pub fn skip_and_enter(&mut self, exit: &Exit) -> Entry {
        let _ = vmx::vmwrite(GUEST_RIP, exit.rip + exit.len);
        self.enter()
    }

    /// Sets L2's RIP in the current VMCS (for the next entry).
    pub fn at(&mut self, rip: u64) -> &mut Vm {
        let _ = vmx::vmwrite(GUEST_RIP, rip);
        self
    }

    /// Sets RIP and enters.
    pub fn enter_at(&mut self, rip: u64) -> Entry {
        let _ = vmx::vmwrite(GUEST_RIP, rip);
        self.enter()
    }
}
