//! L0's own image: where the linker put its sections, its checksum (what no
//! guest may change), and the move into the pool under L0's own page
//! tables.

use core::sync::atomic::{AtomicU64, Ordering};

use boot::memmap::Range;

use super::cpu;
use super::fault::fatal;
use super::pool::{alloc_frames, PoolTables};
use crate::mm::frames::FRAME;
use crate::mm::layout::FirmwareMemory;
use crate::mm::paging::{self, Ia32e, PageAttr, PageSize, TableMemory};
use crate::regs::{CR0_WP, EFER_NXE, IA32_EFER};

/// Where the image is linked in the top 2 GiB.
pub const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;

extern "C" {
    static __l0_boot_start: u8;
    static __l0_image_start: u8;
    static __l0_text_end: u8;
    static __l0_rodata_end: u8;
    static __l0_stack_guard: u8;
    static __l0_image_end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

/// The physical start of the boot code (below the image proper).
pub fn boot_start() -> u64 {
    // SAFETY: a linker symbol; only its address is taken.
    sym(unsafe { &__l0_boot_start })
}

/// The image's physical range as the loader placed it.
pub fn loaded_range() -> Range {
    // SAFETY: linker symbols; only their addresses are taken.
    let (start, end) = unsafe { (sym(&__l0_image_start), sym(&__l0_image_end)) };
    Range::new(start - KERNEL_VMA, end - KERNEL_VMA)
}

/// The unmapped page below the stack.
pub fn stack_guard() -> u64 {
    // SAFETY: a linker symbol; only its address is taken.
    sym(unsafe { &__l0_stack_guard })
}

/// FNV-1a over L0's code and read-only data: what no one may change.
pub fn checksum() -> u64 {
    // SAFETY: linker symbols; only their addresses are taken.
    let (start, end) = (
        sym(unsafe { &__l0_image_start }),
        sym(unsafe { &__l0_rodata_end }),
    );
    // SAFETY: the range is L0's mapped, immutable image.
    let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// A page of L0's writable data (`.data`, in the pool with the rest of
/// the image) that L0 never writes after the link: a witness that nothing
/// from outside wrote L0's data while L1 ran. Atomics put it in `.data`
/// (a plain immutable static would land in the checksummed `.rodata`).
#[repr(C, align(4096))]
struct Canary([AtomicU64; 512]);

static DATA_CANARY: Canary = Canary(canary_words());

/// Word `i` of the canary: distinct per word, neither all ones (the
/// scratch page's first contents) nor anything a guest would write.
const fn canary_word(i: usize) -> u64 {
    (0x4c30_da7a_0000_0000 | i as u64).wrapping_mul(0x100_0000_01b3) ^ 0xcbf2_9ce4_8422_2325
}

const fn canary_words() -> [AtomicU64; 512] {
    let mut w = [const { AtomicU64::new(0) }; 512];
    let mut i = 0;
    while i < 512 {
        w[i] = AtomicU64::new(canary_word(i));
        i += 1;
    }
    w
}

/// Whether L0's data canary still holds what the link put there.
pub fn data_intact() -> bool {
    DATA_CANARY
        .0
        .iter()
        .enumerate()
        .all(|(i, w)| w.load(Ordering::Relaxed) == canary_word(i))
}

/// Builds L0's own page tables — RAM identity-mapped non-executable, the
/// image in the top 2 GiB with per-section rights and a stack guard — then
/// copies the image into the pool and switches to them in one step.
pub fn relocate(fw: &FirmwareMemory, image: Range, gib_pages: bool) {
    let mut t = PoolTables;
    let root = t
        .alloc_table()
        .unwrap_or_else(|| fatal(format_args!("page tables: pool exhausted")));
    let max = if gib_pages {
        PageSize::Size1G
    } else {
        PageSize::Size2M
    };
    let rw = PageAttr {
        writable: true,
        executable: false,
        uncached: false,
    };
    for r in fw.ram.iter() {
        paging::map(&mut t, &Ia32e, root, r.start, r.start, r.len(), rw, max)
            .unwrap_or_else(|e| fatal(format_args!("identity map: {e}")));
    }
    // The local APIC's register page, for posted-interrupt notifications.
    let apic = crate::arch::apic::base();
    if !fw.ram.contains(apic) {
        let mmio = PageAttr {
            writable: true,
            executable: false,
            uncached: true,
        };
        paging::map(
            &mut t,
            &Ia32e,
            root,
            apic,
            apic,
            FRAME,
            mmio,
            PageSize::Size4K,
        )
        .unwrap_or_else(|e| fatal(format_args!("APIC map: {e}")));
        crate::arch::apic::set_mapped(apic);
    }
    let pages = (image.len() / FRAME) as usize;
    let dest = alloc_frames(pages, "image copy");
    let va = |s: &u8| sym(s);
    // SAFETY: linker symbols; only their addresses are taken.
    let (start, text_end, ro_end, guard, end) = unsafe {
        (
            va(&__l0_image_start),
            va(&__l0_text_end),
            va(&__l0_rodata_end),
            va(&__l0_stack_guard),
            va(&__l0_image_end),
        )
    };
    let sections = [
        (
            start,
            text_end,
            PageAttr {
                writable: false,
                executable: true,
                uncached: false,
            },
        ),
        (
            text_end,
            ro_end,
            PageAttr {
                writable: false,
                executable: false,
                uncached: false,
            },
        ),
        (ro_end, guard, rw),
        (guard + FRAME, end, rw),
    ];
    for (a, b, attr) in sections {
        paging::map(
            &mut t,
            &Ia32e,
            root,
            a,
            dest + (a - start),
            b - a,
            attr,
            PageSize::Size4K,
        )
        .unwrap_or_else(|e| fatal(format_args!("image map: {e}")));
    }
    // SAFETY: NX is supported (checked); WP makes read-only pages binding in ring 0.
    unsafe {
        cpu::wrmsr(IA32_EFER, cpu::rdmsr(IA32_EFER) | EFER_NXE);
        cpu::write_cr0(cpu::read_cr0() | CR0_WP);
    }
    // SAFETY: the new tables map the image at the same virtual addresses,
    // backed by `dest`; the copy and the switch happen in one asm block
    // that touches no memory in between, so the copied stack is current.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            "mov cr3, {root}",
            root = in(reg) root,
            inout("rcx") image.len() => _,
            inout("rsi") start => _,
            inout("rdi") dest => _,
            options(nostack)
        );
    }
}
