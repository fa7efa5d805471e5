//! L1's own processor state: control registers, segment state, the GDT
//! with a TSS (VM exits need a host TR, SDM 26.2.3), the 8259 PICs.

use core::arch::asm;
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicBool, Ordering};

pub use crate::io::{rdmsr, wrmsr};

pub const CODE_SEL: u16 = 0x08;
pub const DATA_SEL: u16 = 0x10;
pub const TSS_SEL: u16 = 0x18;

pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_SYSENTER_ESP: u32 = 0x175;
pub const IA32_SYSENTER_EIP: u32 = 0x176;
pub const IA32_PAT: u32 = 0x277;
pub const IA32_EFER: u32 = 0xc000_0080;
pub const IA32_FS_BASE: u32 = 0xc000_0100;
pub const IA32_GS_BASE: u32 = 0xc000_0101;
pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;

macro_rules! cr {
    ($get:ident, $set:ident, $reg:literal) => {
        pub fn $get() -> u64 {
            let v: u64;
            // SAFETY: reading a control register at CPL 0 has no side effect.
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
        /// # Safety
        /// The value must keep L1 running.
        pub unsafe fn $set(v: u64) {
            // SAFETY: guaranteed by the caller.
            unsafe { asm!(concat!("mov ", $reg, ", {}"), in(reg) v, options(nostack, preserves_flags)) };
        }
    };
}
cr!(cr0, set_cr0, "cr0");
cr!(cr2, set_cr2, "cr2");
cr!(cr3, set_cr3, "cr3");
cr!(cr4, set_cr4, "cr4");

pub fn dr7() -> u64 {
    let v: u64;
    // SAFETY: reading DR7 at CPL 0 has no side effect.
    unsafe { asm!("mov {}, dr7", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn rflags() -> u64 {
    let v: u64;
    // SAFETY: reads RFLAGS through the stack.
    unsafe { asm!("pushfq", "pop {}", out(reg) v, options(nomem, preserves_flags)) };
    v
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC at CPL 0. LFENCE keeps it from running ahead.
    unsafe { asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (hi as u64) << 32 | lo as u64
}

macro_rules! sel {
    ($name:ident, $reg:literal) => {
        pub fn $name() -> u16 {
            let v: u16;
            // SAFETY: reading a segment selector has no side effect.
            unsafe { asm!(concat!("mov {:x}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}
sel!(cs, "cs");
sel!(ss, "ss");
sel!(ds, "ds");
sel!(es, "es");
sel!(fs, "fs");
sel!(gs, "gs");

/// The task register's selector.
pub fn tr() -> u16 {
    let v: u16;
    // SAFETY: STR has no side effect.
    unsafe { asm!("str {:x}", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Loads FS with `sel` (0 or [`DATA_SEL`]).
///
/// # Safety
/// Nothing in this guest uses FS; the selector must be null or valid.
pub unsafe fn set_fs(sel: u16) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("mov fs, {:x}", in(reg) sel, options(nomem, nostack, preserves_flags)) };
}

#[repr(C, packed)]
#[derive(Default)]
struct DescPtr {
    limit: u16,
    base: u64,
}

/// (limit, base) of the GDTR.
pub fn sgdt() -> (u16, u64) {
    let mut p = DescPtr::default();
    // SAFETY: SGDT stores 10 bytes into `p`.
    unsafe { asm!("sgdt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) };
    (p.limit, p.base)
}

/// (limit, base) of the IDTR.
pub fn sidt() -> (u16, u64) {
    let mut p = DescPtr::default();
    // SAFETY: SIDT stores 10 bytes into `p`.
    unsafe { asm!("sidt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) };
    (p.limit, p.base)
}

/// The segment limit of `sel` as LSL reads it from the GDT.
pub fn lsl(sel: u16) -> Option<u32> {
    let (v, ok): (u32, u8);
    // SAFETY: LSL only reads the descriptor table.
    unsafe {
        asm!("lsl {:e}, {:e}", "setz {}", out(reg) v, in(reg) sel as u32, out(reg_byte) ok, options(nostack))
    };
    (ok != 0).then_some(v)
}

#[repr(C, align(16))]
struct Gdt([u64; 6]);
#[repr(C, align(16))]
struct Tss([u8; 104]);

use crate::smp::{cpu, MAX_CPUS};

// One GDT and TSS per CPU: LTR marks its TSS descriptor busy, and each
// CPU's VM exits load its own TR.
static mut GDT: [Gdt; MAX_CPUS] = [const { Gdt([0; 6]) }; MAX_CPUS];
static mut TSS: [Tss; MAX_CPUS] = [const { Tss([0; 104]) }; MAX_CPUS];
static INSTALLED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// This CPU's TSS.
pub fn tss_base() -> u64 {
    addr_of!(TSS) as u64 + (cpu() * core::mem::size_of::<Tss>()) as u64
}

/// Replaces the boot GDT with one that also has a 64-bit TSS and loads TR:
/// VM exits load the host TR, and its selector may not be null (SDM
/// 26.2.3). The code and data descriptors are the boot ones (0x08, 0x10).
pub fn install_gdt() {
    let me = cpu();
    if INSTALLED[me].swap(true, Ordering::SeqCst) {
        return;
    }
    let tss = tss_base();
    let lo = 0x67 | (tss & 0xff_ffff) << 16 | 0x89 << 40 | (tss >> 24 & 0xff) << 56;
    // SAFETY: this CPU's GDT and TSS, written once, before they are
    // loaded. The far return reloads CS with the same code descriptor.
    unsafe {
        let gdt = &mut (*addr_of_mut!(GDT))[me];
        gdt.0 = [
            0,
            0x00af_9a00_0000_ffff,
            0x00cf_9200_0000_ffff,
            lo,
            tss >> 32,
            0,
        ];
        (*addr_of_mut!(TSS))[me].0[102] = 104; // I/O map base: no bitmap
        let p = DescPtr {
            limit: 6 * 8 - 1,
            base: gdt.0.as_ptr() as u64,
        };
        asm!(
            "lgdt [{p}]",
            "push {cs}",
            "lea {t}, [rip + 2f]",
            "push {t}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tr:x}",
            p = in(reg) &p,
            cs = const CODE_SEL as u64,
            t = out(reg) _,
            ds = in(reg) DATA_SEL,
            tr = in(reg) TSS_SEL,
        );
    }
}

/// Masks both 8259 PICs: nothing but the checks' own sources (the LAPIC
/// timer) may interrupt while L2 runs with external-interrupt exiting.
pub fn mask_pic() {
    // SAFETY: the PICs are L1's (passed through by L0, Bochs's natively).
    unsafe {
        crate::io::outb(0x21, 0xff);
        crate::io::outb(0xa1, 0xff);
    }
}

/// CPUID.80000008H:EAX[7:0], or 36 when the leaf is absent.
pub fn maxphyaddr() -> u32 {
    let [max, ..] = crate::io::cpuid(0x8000_0000, 0);
    if max >= 0x8000_0008 {
        crate::io::cpuid(0x8000_0008, 0)[0] & 0xff
    } else {
        36
    }
}
