//! `ept-guard`: the cloud VM reads and writes every frame L0 owns (the
//! reserved range L0's memory map shows at the top of RAM) and sees
//! exactly what L0 documents (docs/architecture.md, "Memory ownership"):
//! all ones until it writes, then one scratch page shared by every pool
//! address, holding what it last wrote anywhere there. L0 checks its code,
//! read-only data and a canary page of its data when the guest shuts down.

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
