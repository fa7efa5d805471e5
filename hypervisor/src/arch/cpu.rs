//! Thin wrappers over privileged x86 instructions. Reads are safe where the
//! instruction cannot fault in L0's state; writes are `unsafe`.

use core::arch::asm;

/// CPUID with a subleaf.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Reads an MSR.
///
/// # Safety
/// The MSR must exist (#GP otherwise).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (hi as u64) << 32 | lo as u64
}

/// Writes an MSR.
///
/// # Safety
/// The MSR must exist and the value must be valid and safe for L0.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the write is valid.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

macro_rules! control_register {
    ($read:ident, $write:ident, $reg:literal) => {
        pub fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading a control register has no side effect at CPL 0.
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
        /// # Safety
        /// The value must be valid and keep L0's own execution intact.
        pub unsafe fn $write(v: u64) {
            // SAFETY: guaranteed by the caller.
            unsafe { asm!(concat!("mov ", $reg, ", {}"), in(reg) v, options(nostack, preserves_flags)) };
        }
    };
}

control_register!(read_cr0, write_cr0, "cr0");
control_register!(read_cr2, write_cr2, "cr2");
control_register!(read_cr3, write_cr3, "cr3");
control_register!(read_cr4, write_cr4, "cr4");

/// Reads XCR0.
pub fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: L0 only calls this when CR4.OSXSAVE is set (checked by the caller's CPUID test).
    unsafe {
        asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (hi as u64) << 32 | lo as u64
}

/// Writes an extended control register.
///
/// # Safety
/// CR4.OSXSAVE must be set and the value valid for the CPU.
pub unsafe fn xsetbv(xcr: u32, value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("xsetbv", in("ecx") xcr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack, preserves_flags))
    };
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC is allowed at CPL 0.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (hi as u64) << 32 | lo as u64
}

/// # Safety
/// Port I/O reaches hardware; the port must be one L0 owns or means to touch.
pub unsafe fn outb(port: u16, v: u8) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

/// # Safety
/// See [`outb`].
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// OUT of 1, 2 or 4 bytes.
///
/// # Safety
/// See [`outb`].
pub unsafe fn out_sized(port: u16, size: u8, v: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        match size {
            1 => {
                asm!("out dx, al", in("dx") port, in("al") v as u8, options(nomem, nostack, preserves_flags))
            }
            2 => {
                asm!("out dx, ax", in("dx") port, in("ax") v as u16, options(nomem, nostack, preserves_flags))
            }
            _ => {
                asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
            }
        }
    }
}

/// IN of 1, 2 or 4 bytes.
///
/// # Safety
/// See [`outb`].
pub unsafe fn in_sized(port: u16, size: u8) -> u32 {
    let v: u32;
    // SAFETY: guaranteed by the caller.
    unsafe {
        match size {
            1 => {
                let b: u8;
                asm!("in al, dx", in("dx") port, out("al") b, options(nomem, nostack, preserves_flags));
                v = b as u32;
            }
            2 => {
                let w: u16;
                asm!("in ax, dx", in("dx") port, out("ax") w, options(nomem, nostack, preserves_flags));
                v = w as u32;
            }
            _ => {
                asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
            }
        }
    }
    v
}

/// Writes back and invalidates all caches (L0 never drops dirty lines: a
/// guest's INVD is carried out as this).
pub fn wbinvd() {
    // SAFETY: WBINVD has no effect on program state.
    unsafe { asm!("wbinvd", options(nostack, preserves_flags)) };
}

/// Stops this CPU for good: interrupts off, halt forever (NMIs return to the halt).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: halting with interrupts off only stops this CPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Reads a segment selector register.
macro_rules! selector {
    ($name:ident, $reg:literal) => {
        pub fn $name() -> u16 {
            let v: u16;
            // SAFETY: reading a segment register has no side effect.
            unsafe { asm!(concat!("mov {0:x}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}
selector!(read_cs, "cs");
selector!(read_ss, "ss");
selector!(read_ds, "ds");
selector!(read_es, "es");
selector!(read_fs, "fs");
selector!(read_gs, "gs");

pub fn read_tr() -> u16 {
    let v: u16;
    // SAFETY: STR has no side effect.
    unsafe { asm!("str {0:x}", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Base of the GDT or IDT as SGDT/SIDT store it.
#[repr(C, packed)]
struct DescriptorTablePointer {
    limit: u16,
    base: u64,
}

pub fn gdt_base() -> u64 {
    let mut p = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: SGDT writes 10 bytes to the pointer we pass.
    unsafe { asm!("sgdt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) };
    p.base
}

pub fn idt_base() -> u64 {
    let mut p = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: SIDT writes 10 bytes to the pointer we pass.
    unsafe { asm!("sidt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) };
    p.base
}

/// Loads the GDT, reloads CS/SS/DS/ES and TR.
///
/// # Safety
/// `base`/`limit` must describe a valid, 'static GDT with a 64-bit code
/// segment at `code`, a data segment at `data` and an available TSS at `tss`.
pub unsafe fn load_gdt(base: u64, limit: u16, code: u16, data: u16, tss: u16) {
    let p = DescriptorTablePointer { limit, base };
    // SAFETY: guaranteed by the caller; the far return reloads CS.
    unsafe {
        asm!(
            "lgdt [{p}]",
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ss, {data:x}",
            "mov ds, {data:x}",
            "mov es, {data:x}",
            "ltr {tss:x}",
            p = in(reg) &p,
            code = in(reg) code as u64,
            data = in(reg) data,
            tss = in(reg) tss,
            tmp = out(reg) _,
        )
    };
}

/// Loads the IDT.
///
/// # Safety
/// The table must be valid and 'static.
pub unsafe fn load_idt(base: u64, limit: u16) {
    let p = DescriptorTablePointer { limit, base };
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("lidt [{}]", in(reg) &p, options(readonly, nostack, preserves_flags)) };
}

// RDMSR/WRMSR that may #GP: L0's exception handler sees the fault at the
// `_insn` label, sets R8 = 1 and resumes at `_resume` (see
// [`msr_fixup`]). Used for MSRs a guest names (VM-entry/exit MSR lists).
core::arch::global_asm!(
    r#"
    .section .text
    .global l0_rdmsr_safe
l0_rdmsr_safe:
    mov ecx, edi
    xor r8d, r8d
    .global l0_rdmsr_insn
l0_rdmsr_insn:
    rdmsr
    .global l0_rdmsr_resume
l0_rdmsr_resume:
    shl rdx, 32
    or rax, rdx
    mov [rsi], rax
    mov eax, r8d
    ret

    .global l0_wrmsr_safe
l0_wrmsr_safe:
    mov ecx, edi
    mov eax, esi
    mov rdx, rsi
    shr rdx, 32
    xor r8d, r8d
    .global l0_wrmsr_insn
l0_wrmsr_insn:
    wrmsr
    .global l0_wrmsr_resume
l0_wrmsr_resume:
    mov eax, r8d
    ret
"#
);

extern "C" {
    fn l0_rdmsr_safe(msr: u32, out: *mut u64) -> u32;
    fn l0_wrmsr_safe(msr: u32, value: u64) -> u32;
    static l0_rdmsr_insn: u8;
    static l0_rdmsr_resume: u8;
    static l0_wrmsr_insn: u8;
    static l0_wrmsr_resume: u8;
}

/// RDMSR that returns None instead of faulting.
pub fn rdmsr_safe(msr: u32) -> Option<u64> {
    let mut v = 0;
    // SAFETY: a #GP at the RDMSR is recovered by msr_fixup; the MSR is read
    // on a guest's behalf and has no side effects on L0.
    (unsafe { l0_rdmsr_safe(msr, &mut v) } == 0).then_some(v)
}

/// WRMSR that returns false instead of faulting.
///
/// # Safety
/// The MSR must not be one L0 depends on (EFER, PAT, FS/GS base, ...).
pub unsafe fn wrmsr_safe(msr: u32, value: u64) -> bool {
    // SAFETY: guaranteed by the caller; a #GP is recovered by msr_fixup.
    unsafe { l0_wrmsr_safe(msr, value) == 0 }
}

/// For the #GP handler: where to resume if `rip` is a safe MSR access.
pub fn msr_fixup(rip: u64) -> Option<u64> {
    let at = |s: &u8| s as *const u8 as u64;
    // SAFETY: only the addresses of the labels are taken.
    unsafe {
        if rip == at(&l0_rdmsr_insn) {
            Some(at(&l0_rdmsr_resume))
        } else if rip == at(&l0_wrmsr_insn) {
            Some(at(&l0_wrmsr_resume))
        } else {
            None
        }
    }
}

/// RDSEED, if the CPU has it (CPUID.7.0:EBX[18]) and it succeeds in a few tries.
pub fn rdseed64() -> Option<u64> {
    if cpuid(7, 0)[1] & (1 << 18) == 0 {
        return None;
    }
    (0..10).find_map(|_| {
        let (v, ok): (u64, u8);
        // SAFETY: RDSEED exists (checked); CF says whether it delivered.
        unsafe {
            asm!("rdseed {}", "setc {}", out(reg) v, out(reg_byte) ok, options(nomem, nostack))
        };
        (ok != 0).then_some(v)
    })
}

/// RDRAND, if the CPU has it (CPUID.1:ECX[30]).
pub fn rdrand64() -> Option<u64> {
    if cpuid(1, 0)[2] & (1 << 30) == 0 {
        return None;
    }
    (0..10).find_map(|_| {
        let (v, ok): (u64, u8);
        // SAFETY: RDRAND exists (checked); CF says whether it delivered.
        unsafe {
            asm!("rdrand {}", "setc {}", out(reg) v, out(reg_byte) ok, options(nomem, nostack))
        };
        (ok != 0).then_some(v)
    })
}
