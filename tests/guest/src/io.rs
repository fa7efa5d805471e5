//! The instructions a scenario guest uses, unwrapped.

use core::arch::asm;

pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// # Safety
/// Port I/O reaches (virtual) hardware.
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

/// RDMSR; 2 bytes long (for [`crate::faults::expect_fault`]).
///
/// # Safety
/// May fault; only under `expect_fault` for MSRs that may not exist.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (hi as u64) << 32 | lo as u64
}

/// WRMSR; 2 bytes long.
///
/// # Safety
/// As [`rdmsr`].
pub unsafe fn wrmsr(msr: u32, v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    };
}

/// RDPMC of counter `ecx`; 2 bytes long.
///
/// # Safety
/// As [`rdmsr`].
pub unsafe fn rdpmc(ecx: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("rdpmc", in("ecx") ecx, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (hi as u64) << 32 | lo as u64
}

pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 at CPL 0 has no side effect.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
    v
}

/// MOV to CR4 from RAX; 3 bytes long (0f 22 e0).
///
/// # Safety
/// The value must keep the guest running (or the write must fault).
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("mov cr4, rax", in("rax") v, options(nostack)) };
}

/// The emulator's shutdown port (Bochs): the word "Shutdown" ends the run.
pub fn shutdown() -> ! {
    crate::serial::drain();
    for &b in b"Shutdown" {
        // SAFETY: port 0x8900 is the emulator's; L0 passes it on.
        unsafe { outb(0x8900, b) };
    }
    loop {
        // SAFETY: nothing left to do.
        unsafe { asm!("cli", "hlt") };
    }
}
