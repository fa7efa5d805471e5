//! L0's GDT, TSS and IDT (the exception entry stubs are `boot::exceptions`). VMX needs a real TSS in the host state (SDM
//! 27.2.3); the IDT catches L0's own exceptions to report them, with the
//! double fault and NMI on their own stacks so a stack overflow is reported
//! instead of triple-faulting.

use core::mem::size_of;
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicBool, Ordering};

use super::cpu;

pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;

#[repr(C, packed(4))]
struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
struct Stack([u8; 16 * 1024]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; 16 * 1024]);
static mut NMI_STACK: Stack = Stack([0; 16 * 1024]);
static mut TSS: Tss = Tss {
    _reserved0: 0,
    rsp: [0; 3],
    _reserved1: 0,
    ist: [0; 7],
    _reserved2: 0,
    _reserved3: 0,
    iomap_base: size_of::<Tss>() as u16, // no I/O permission bitmap
};
static mut GDT: [u64; 5] = [0; 5];
static mut IDT: [[u64; 2]; 32] = [[0; 2]; 32];

fn stack_top(s: *mut Stack) -> u64 {
    s as u64 + size_of::<Stack>() as u64
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
    let (tss, gdt, idt) = unsafe {
        (
            &mut *addr_of_mut!(TSS),
            &mut *addr_of_mut!(GDT),
            &mut *addr_of_mut!(IDT),
        )
    };
    tss.ist[0] = stack_top(addr_of_mut!(DOUBLE_FAULT_STACK));
    tss.ist[1] = stack_top(addr_of_mut!(NMI_STACK));
    let tss_base = tss_base();
    let limit = size_of::<Tss>() as u64 - 1;
    *gdt = [
        0,
        0x00af_9a00_0000_ffff, // 64-bit code, present, DPL 0
        0x00cf_9200_0000_ffff, // data, present, writable
        (limit & 0xffff)
            | (tss_base & 0xff_ffff) << 16
            | 0x89 << 40
            | ((limit >> 16) & 0xf) << 48
            | (tss_base >> 24 & 0xff) << 56,
        tss_base >> 32,
    ];
    // NMI and double fault on their own stacks.
    *idt = boot::exceptions::idt(CODE_SELECTOR, |v| match v {
        2 => 2,
        8 => 1,
        _ => 0,
    });
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
            idt.as_ptr() as u64,
            (size_of::<[[u64; 2]; 32]>() - 1) as u16,
        );
    }
}

/// Base of the TSS, for HOST_TR_BASE.
pub fn tss_base() -> u64 {
    addr_of!(TSS) as u64
}

pub use boot::exceptions::ExceptionFrame;
