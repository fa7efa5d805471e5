//! L0's GDT, TSS and IDT (the exception entry stubs are `boot::exceptions`).
//! VMX needs a real TSS in the host state (SDM 27.2.3); the IDT catches
//! L0's own exceptions to report them, with the double fault and NMI on
//! their own stacks so a stack overflow is reported instead of
//! triple-faulting. Every CPU has its own GDT and TSS (a TSS descriptor is
//! marked busy by the CPU that loads it, and each has its own IST stacks);
//! all share the one IDT. Beside its TSS each CPU keeps its own data
//! (`PerCpu`), found from TR.

use core::mem::size_of;
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicBool, Ordering};

use super::cpu;

pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;

#[repr(C, packed(4))]
#[derive(Clone, Copy)]
struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

/// What a CPU keeps for itself, beside its TSS: the TSS is the one
/// structure each CPU locates on its own (TR), so an exception handler
/// finds its CPU's data without a lock or a table (`this_cpu`).
#[repr(C)]
pub struct PerCpu {
    tss: Tss,
    /// An NMI arrived while L0 ran on this CPU; it goes to this CPU's L1.
    pub nmi_pending: AtomicBool,
}

#[repr(C, align(16))]
struct Stack([u8; 16 * 1024]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; 16 * 1024]);
static mut NMI_STACK: Stack = Stack([0; 16 * 1024]);
const EMPTY_TSS: Tss = Tss {
    _reserved0: 0,
    rsp: [0; 3],
    _reserved1: 0,
    ist: [0; 7],
    _reserved2: 0,
    _reserved3: 0,
    iomap_base: size_of::<Tss>() as u16, // no I/O permission bitmap
};
static mut BOOT_CPU: PerCpu = PerCpu {
    tss: EMPTY_TSS,
    nmi_pending: AtomicBool::new(false),
};
static mut GDT: [u64; 5] = [0; 5];
static mut IDT: [[u64; 2]; 32] = [[0; 2]; 32];

fn stack_top(s: *mut Stack) -> u64 {
    s as u64 + size_of::<Stack>() as u64
}

/// The GDT every CPU uses: code, data, and its own TSS.
fn gdt_with(tss_base: u64) -> [u64; 5] {
    let limit = size_of::<Tss>() as u64 - 1;
    [
        0,
        0x00af_9a00_0000_ffff, // 64-bit code, present, DPL 0
        0x00cf_9200_0000_ffff, // data, present, writable
        (limit & 0xffff)
            | (tss_base & 0xff_ffff) << 16
            | 0x89 << 40
            | ((limit >> 16) & 0xf) << 48
            | (tss_base >> 24 & 0xff) << 56,
        tss_base >> 32,
    ]
}

/// Loads `gdt` (with its TSS) and the shared IDT on this CPU.
///
/// # Safety
/// `gdt` is 'static, built by `gdt_with` over a 'static TSS; the IDT is built.
unsafe fn load(gdt: &'static [u64; 5]) {
    // SAFETY: the tables are 'static and well-formed; selectors match them.
    unsafe {
        cpu::load_gdt(
            gdt.as_ptr() as u64,
            (size_of::<[u64; 5]>() - 1) as u16,
            CODE_SELECTOR,
            DATA_SELECTOR,
            TSS_SELECTOR,
        );
        cpu::load_idt(
            addr_of!(IDT) as u64,
            (size_of::<[[u64; 2]; 32]>() - 1) as u16,
        );
    }
}

static LOADED: AtomicBool = AtomicBool::new(false);

/// Builds and loads the GDT (with TSS) and the IDT, once: L0 calls it first
/// thing on the boot CPU; a second call is an L0 bug and panics.
pub fn init() {
    assert!(
        !LOADED.swap(true, Ordering::SeqCst),
        "descriptor tables loaded twice"
    );
    // SAFETY: the first and only call (above), on the boot CPU before
    // anything else runs: nothing else references these statics yet.
    let (boot, gdt, idt) = unsafe {
        (
            &mut *addr_of_mut!(BOOT_CPU),
            &mut *addr_of_mut!(GDT),
            &mut *addr_of_mut!(IDT),
        )
    };
    boot.tss.ist[0] = stack_top(addr_of_mut!(DOUBLE_FAULT_STACK));
    boot.tss.ist[1] = stack_top(addr_of_mut!(NMI_STACK));
    *gdt = gdt_with(addr_of!(BOOT_CPU) as u64);
    // NMI and double fault on their own stacks.
    *idt = boot::exceptions::idt(CODE_SELECTOR, |v| match v {
        2 => 2,
        8 => 1,
        _ => 0,
    });
    // SAFETY: all three tables were just built; they are statics.
    unsafe { load(gdt) };
}

/// This AP's GDT and TSS, with IST stacks from `ist_stacks` (two stacks
/// of `ist_size` bytes, L0-owned and identity-mapped), built on the heap
/// for good; loads them with the shared IDT.
pub fn init_ap(ist_stacks: u64, ist_size: u64) {
    assert!(
        LOADED.load(Ordering::SeqCst),
        "an AP before the boot CPU's tables"
    );
    let mut tss = EMPTY_TSS;
    tss.ist[0] = ist_stacks + ist_size;
    tss.ist[1] = ist_stacks + 2 * ist_size;
    let this: &'static PerCpu = alloc::boxed::Box::leak(alloc::boxed::Box::new(PerCpu {
        tss,
        nmi_pending: AtomicBool::new(false),
    }));
    let gdt = alloc::boxed::Box::leak(alloc::boxed::Box::new(gdt_with(
        this as *const PerCpu as u64,
    )));
    // SAFETY: the boot CPU built the IDT before starting any AP; the GDT
    // and TSS were just built and are never freed.
    unsafe { load(gdt) };
}

/// Base of this CPU's TSS, for HOST_TR_BASE: read back from its GDT.
pub fn tss_base() -> u64 {
    let i = (cpu::read_tr() >> 3) as usize;
    // SAFETY: the GDT L0 loaded on this CPU (gdt_with) is 'static and has
    // the 16-byte TSS descriptor at TR.
    let (lo, hi) = unsafe {
        let gdt = cpu::gdt_base() as *const u64;
        (gdt.add(i).read(), gdt.add(i + 1).read())
    };
    (lo >> 16 & 0xff_ffff) | (lo >> 56 & 0xff) << 24 | hi << 32
}

/// This CPU's own data (after `init` or `init_ap` ran on it).
pub fn this_cpu() -> &'static PerCpu {
    // SAFETY: every TSS L0 loads is the first field of a 'static PerCpu
    // (init, init_ap); repr(C) puts it at the PerCpu's address.
    unsafe { &*(tss_base() as *const PerCpu) }
}

pub use boot::exceptions::ExceptionFrame;
