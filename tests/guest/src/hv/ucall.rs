//! Ultracalls from L1 (docs/ultracall-abi.md): `vmcall` with the magic in
//! RAX from 64-bit code. [`raw`] loads every general register from a
//! [`Gprs`] and stores every register back after the call, so a caller
//! can check what L0 changed; [`call`] is the everyday form.

use ultracall_abi::{Op, Status, VmTag, ABI_VERSION, ULTRACALL_MAGIC};

/// All general registers but RSP, in this order, and RFLAGS before and
/// after the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gprs {
    pub r: [u64; 15],
    pub rflags_before: u64,
    pub rflags_after: u64,
}

pub const RAX: usize = 0;
pub const RBX: usize = 1;
pub const RCX: usize = 2;
pub const RDX: usize = 3;
pub const RSI: usize = 4;
pub const RDI: usize = 5;
pub const RBP: usize = 6;
pub const R8: usize = 7;
pub const R15: usize = 14;
pub const NAMES: [&str; 15] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
    "r15",
];

// l1_ucall(g: *mut Gprs): saves the callee-saved registers, loads every
// register from *g (RDI last), records RFLAGS, executes VMCALL, records
// RFLAGS again and stores every register into *g.
core::arch::global_asm!(
    r#"
    .section .text.l1_ucall, "ax"
    .global l1_ucall
l1_ucall:
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rdi
    mov rax, [rdi + 0]
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
    pushfq
    vmcall
    pushfq
    push rdi
    mov rdi, [rsp + 24]
    mov [rdi + 0], rax
    mov [rdi + 8], rbx
    mov [rdi + 16], rcx
    mov [rdi + 24], rdx
    mov [rdi + 32], rsi
    mov [rdi + 48], rbp
    mov [rdi + 56], r8
    mov [rdi + 64], r9
    mov [rdi + 72], r10
    mov [rdi + 80], r11
    mov [rdi + 88], r12
    mov [rdi + 96], r13
    mov [rdi + 104], r14
    mov [rdi + 112], r15
    pop rax
    mov [rdi + 40], rax
    pop rax
    mov [rdi + 128], rax
    pop rax
    mov [rdi + 120], rax
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret
"#
);

extern "C" {
    fn l1_ucall(g: *mut Gprs);
}

/// Issues the ultracall held in `g`; `g` then holds every register after it.
pub fn raw(g: &mut Gprs) {
    // SAFETY: L1 runs under L0 (or the caller expects the #UD a bare CPU
    // raises, which the fault handler reports). L0 writes only RAX, RCX,
    // RDX, RSI (RDI for TakeIrqs) and the named buffer, which the caller
    // owns; l1_ucall restores the callee-saved registers itself.
    unsafe { l1_ucall(g) }
}

/// What L0 answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Out {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
}

impl Out {
    pub fn is(&self, s: Status) -> bool {
        self.rax == s.raw()
    }
}

/// The registers of a well-formed call in this ABI version.
pub fn regs(op: u64, va: u64, len: u64, tag: Option<&VmTag>) -> Gprs {
    let t = tag.map(|t| t.to_regs()).unwrap_or([0; 4]);
    let mut g = Gprs::default();
    g.r[RAX] = ULTRACALL_MAGIC;
    g.r[RCX] = op;
    g.r[RDX] = ABI_VERSION.to_raw() as u64;
    g.r[RSI] = va;
    g.r[RDI] = len;
    g.r[R8..R8 + 4].copy_from_slice(&t);
    g
}

fn out(g: &Gprs) -> Out {
    Out {
        rax: g.r[RAX],
        rcx: g.r[RCX],
        rdx: g.r[RDX],
        rsi: g.r[RSI],
        rdi: g.r[RDI],
    }
}

/// An ultracall with the usual registers.
pub fn call(op: Op, va: u64, len: u64, tag: Option<&VmTag>) -> Out {
    let mut g = regs(op.raw(), va, len, tag);
    raw(&mut g);
    out(&g)
}

/// An ultracall with RDX (the caller's version) as given.
pub fn call_version(op: Op, version: u64, tag: Option<&VmTag>) -> Out {
    let mut g = regs(op.raw(), 0, 0, tag);
    g.r[RDX] = version;
    raw(&mut g);
    out(&g)
}

/// An ultracall with raw tag registers (to pass an invalid tag).
pub fn call_tag_regs(op: Op, va: u64, len: u64, tag: [u64; 4]) -> Out {
    let mut g = regs(op.raw(), va, len, None);
    g.r[R8..R8 + 4].copy_from_slice(&tag);
    raw(&mut g);
    out(&g)
}

pub fn tag(name: &str) -> VmTag {
    VmTag::new(name.as_bytes()).expect("a valid tag")
}

pub fn ping() -> Out {
    call(Op::Ping, 0, 0, None)
}

pub fn save(t: &VmTag, va: u64, len: u64) -> Out {
    call(Op::SaveDevices, va, len, Some(t))
}

pub fn restore(t: &VmTag, va: u64, len: u64) -> Out {
    call(Op::RestoreDevices, va, len, Some(t))
}

pub fn list(va: u64, len: u64) -> Out {
    call(Op::ListVms, va, len, None)
}

pub fn set_irq_relay(vector: u64) -> Out {
    call(Op::SetIrqRelay, vector, 0, None)
}

pub fn take_irqs() -> Out {
    call(Op::TakeIrqs, 0, 0, None)
}

/// A status for a CHECK line: its name in lower case (the upper-case
/// names of some failure statuses would read as a failure marker), or
/// the number when it is none.
pub struct St(pub u64);

impl core::fmt::Display for St {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match Status::from_raw(self.0) {
            Some(s) => {
                for c in s.name().chars() {
                    core::fmt::Write::write_char(f, c.to_ascii_lowercase())?;
                }
                Ok(())
            }
            None => write!(f, "status {:#x}", self.0),
        }
    }
}
