//! `ept-guard`: the cloud VM reads and writes every frame L0 owns (the
//! reserved range L0's memory map shows at the top of RAM) and never sees
//! L0's data; L0 checks its own integrity when the guest shuts down.

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
    let half = pages().count() / 2;
    // The first half is read before anything is written: every byte reads
    // as absent memory (all ones), nothing of L0. The second half is
    // written first, below.
    let mut foreign = 0u64;
    let mut count = 0u64;
    for p in pages().take(half) {
        count += 1;
        for i in 0..512 {
            // SAFETY: identity-mapped guest-physical address; L0 backs it.
            let v = unsafe { core::ptr::read_volatile((p + 8 * i) as *const u64) };
            if v != u64::MAX {
                foreign += 1;
            }
        }
    }
    c.check(
        "read-all-ones",
        foreign == 0 && count > 0,
        format_args!("{count} pages read first, {foreign} words not all-ones"),
    );

    // Write every word of every frame (the second half for the first time),
    // then read: only what we wrote comes back.
    for p in pages() {
        for i in 0..512 {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile((p + 8 * i) as *mut u64, PATTERN | p) };
        }
    }
    let mut not_ours = 0u64;
    for p in pages() {
        for i in 0..512 {
            // SAFETY: as above.
            let v = unsafe { core::ptr::read_volatile((p + 8 * i) as *const u64) };
            let page = v ^ PATTERN;
            let ours = v & PATTERN == PATTERN
                && page.is_multiple_of(4096)
                && ranges.iter().any(|r| (r.0..r.1).contains(&page));
            if !ours {
                not_ours += 1;
            }
        }
    }
    c.check(
        "read-back-only-own-data",
        not_ours == 0,
        format_args!("{not_ours} words not written by this guest"),
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
