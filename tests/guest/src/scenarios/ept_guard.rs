//! `ept-guard`: the cloud VM reads and writes every frame L0 owns (the
//! reserved range L0's memory map shows at the top of RAM) and sees
//! exactly what L0 documents (docs/architecture.md, "Memory ownership"):
//! all ones until it writes, then one scratch page shared by every pool
//! address, holding what it last wrote anywhere there. L0 checks its code,
//! read-only data and a canary page of its data when the guest shuts down.
//! Then the cloud VM reads a word in every GiB of physical address space
//! beyond its memory map (MMIO space as far as L0 knows): L0 maps each
//! with a large page from a bounded set of tables and the guest goes on.

use crate::check::Checks;
use crate::io::cpuid;
use crate::mb1::{Identity, Info};

const PATTERN: u64 = 0x5a5a_0000_0000_0000;

pub fn run(mbi: &Info<Identity>) {
    static NAME: &str = "ept-guard";
    crate::set_current_test(&NAME);
    let mut c = Checks::new(NAME);

    // L0's pool: reserved RAM above 1 MiB, below the firmware's top area.
    let mut ranges = [(0u64, 0u64); 8];
    let mut n = 0;
    for e in mbi.memory_map() {
        if e.kind == 2 && e.base >= 0x10_0000 && e.base + e.len <= 0xf000_0000 && n < ranges.len() {
            ranges[n] = (e.base, e.base + e.len);
            n += 1;
        }
    }
    let ranges = &ranges[..n];
    let total: u64 = ranges.iter().map(|r| r.1 - r.0).sum();
    c.check(
        "l0-range-listed",
        n >= 1 && total >= 8 << 20,
        format_args!("{n} range(s), {} MiB", total >> 20),
    );

    let pages = || ranges.iter().flat_map(|&(a, b)| (a..b).step_by(4096));
    let read = |a: u64| {
        // SAFETY: identity-mapped guest-physical address in L0's range;
        // L0 backs it (with its scratch page).
        unsafe { core::ptr::read_volatile(a as *const u64) }
    };
    let write = |a: u64, v: u64| {
        // SAFETY: as `read`.
        unsafe { core::ptr::write_volatile(a as *mut u64, v) }
    };

    // Every page is read before anything is written: every byte reads as
    // absent memory (all ones), nothing of L0.
    let (mut count, mut foreign) = (0u64, 0u64);
    let mut first_foreign = None;
    for p in pages() {
        count += 1;
        for a in (p..p + 4096).step_by(8) {
            let v = read(a);
            if v != u64::MAX {
                foreign += 1;
                first_foreign.get_or_insert((a, v));
            }
        }
    }
    c.check(
        "read-all-ones",
        foreign == 0 && count > 0,
        format_args!(
            "all {count} pages read before any write, {foreign} words not all-ones{}",
            First(first_foreign)
        ),
    );

    // L0 documents one scratch page behind all its frames: a word written
    // through one pool page is what every other pool page holds at that
    // offset. (A mapping of the frames themselves reads back each page's
    // own data; a scratch page per frame, the old contents.)
    let first = pages().next().unwrap_or(0);
    let last = pages().last().unwrap_or(0);
    let middle = pages().nth((count / 2) as usize).unwrap_or(0);
    let mut misses = 0;
    for (k, (from, to)) in [
        (first, last),
        (last, middle),
        (middle, first),
        (last, first),
    ]
    .into_iter()
    .enumerate()
    {
        for off in [0u64, 8, 0x800, 0xff8] {
            let v = PATTERN | 0xc0de_0000 | (k as u64) << 12 | off;
            write(from + off, v);
            if read(to + off) != v || read(from + off) != v {
                misses += 1;
            }
        }
    }
    c.check(
        "one-scratch-page",
        misses == 0 && count > 0,
        format_args!(
            "{misses} of 16 words written through one pool page not seen through another \
             ({first:#x}, {middle:#x}, {last:#x})"
        ),
    );

    // Write every word of every page with its own address, in address
    // order; then every page reads, at each offset, the last word written
    // there anywhere: the last page's.
    for p in pages() {
        for a in (p..p + 4096).step_by(8) {
            write(a, PATTERN | a);
        }
    }
    let (mut wrong, mut own) = (0u64, 0u64);
    let mut first_wrong = None;
    for p in pages() {
        for off in (0..4096).step_by(8) {
            let v = read(p + off);
            if v != PATTERN | (last + off) {
                wrong += 1;
                first_wrong.get_or_insert((p + off, v));
                if v == PATTERN | (p + off) {
                    own += 1;
                }
            }
        }
    }
    c.check(
        "read-back-last-write",
        wrong == 0 && count > 0,
        format_args!(
            "{count} pages: {wrong} words differ from the last write at their offset \
             ({own} read back their own write){}",
            First(first_wrong)
        ),
    );

    beyond_the_map(&mut c);

    // L0 still answers.
    let [_, b, _, _] = cpuid(0x4000_0000, 0);
    c.check(
        "l0-alive",
        b == u32::from_le_bytes(*b"L0Hy"),
        format_args!("EBX {b:#x}"),
    );
    c.finish();
}

/// The first offending word, if any: ` (first at 0x...: 0x...)`.
struct First(Option<(u64, u64)>);

impl core::fmt::Display for First {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self.0 {
            Some((a, v)) => write!(f, " (first at {a:#x}: {v:#x})"),
            None => Ok(()),
        }
    }
}

/// Page tables for guest-physical addresses from 512 GiB up (PML4[1..]).
#[repr(C, align(4096))]
struct HighPdpts([[u64; 512]; HIGH_PDPTS]);
const HIGH_PDPTS: usize = 3;
static mut HIGH: HighPdpts = HighPdpts([[0; 512]; HIGH_PDPTS]);

/// Reads one word in every GiB from 4 GiB to the top of the physical
/// address space (at most 2 TiB: Bochs has 40 address bits), each through
/// a 1 GiB page of this guest's own (uncacheable), each in a GiB L0 has
/// never mapped.
fn beyond_the_map(c: &mut Checks) {
    const NAME: &str = "beyond-the-map-read";
    let bits = cpuid(0x8000_0008, 0)[0] & 0xff;
    let gib_pages = cpuid(0x8000_0001, 0)[3] & 1 << 26 != 0;
    if !gib_pages {
        c.skip(
            NAME,
            format_args!("no 1 GiB pages for this guest's own paging"),
        );
        return;
    }
    let top = (1u64 << bits).min((HIGH_PDPTS as u64 + 1) << 39);
    // PML4[0]'s PDPT (the boot code's, identity for the first 4 GiB) gets
    // 1 GiB pages above; PML4[1..] get this guest's own PDPTs.
    let pml4: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { core::arch::asm!("mov {}, cr3", out(reg) pml4) };
    let pml4 = (pml4 & !0xfff) as *mut u64;
    const LEAF: u64 = 1 | 2 | 1 << 3 | 1 << 4 | 1 << 7; // P RW PWT PCD PS
    let mut gibs = 0u64;
    for gib in 4..top >> 30 {
        let (i4, i3) = ((gib >> 9) as usize, (gib & 511) as usize);
        // SAFETY: the boot code's PML4 and PDPT are identity-mapped and
        // this guest's alone; HIGH is a static only this function uses,
        // and the entries written map addresses nothing else uses.
        unsafe {
            let pdpt = if i4 == 0 {
                (*pml4 & 0x000f_ffff_ffff_f000) as *mut u64
            } else {
                let t = core::ptr::addr_of_mut!(HIGH.0[i4 - 1]) as *mut u64;
                *pml4.add(i4) = t as u64 | 3;
                t
            };
            *pdpt.add(i3) = gib << 30 | LEAF;
        }
        gibs += 1;
    }
    // SAFETY: reloading CR3 flushes this guest's TLB; the mappings it uses
    // for its own code and data are unchanged.
    unsafe { core::arch::asm!("mov rax, cr3", "mov cr3, rax", out("rax") _) };
    let mut read = 0u64;
    let mut last = 0u64;
    for gib in 4..top >> 30 {
        // A different page in each GiB.
        let a = gib << 30 | (gib % 256) << 12;
        // SAFETY: mapped just above; beyond the memory map, so no RAM.
        last = unsafe { core::ptr::read_volatile(a as *const u64) };
        read += 1;
    }
    c.check(
        NAME,
        read == gibs && gibs > 0,
        format_args!(
            "{read} GiB read from 4 GiB to {} GiB ({bits} address bits; the last read {last:#x})",
            top >> 30
        ),
    );
}
