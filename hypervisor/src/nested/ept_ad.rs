//! EPT accessed and dirty flags (SDM Vol. 3C 29.3.5) and page-modification
//! logging (29.3.6) for L2, done by L0 in EPT12 as the processor would.
//!
//! With EPTP12 bit 6 set, every EPT12 entry a translation uses gets its
//! accessed flag, and the leaf its dirty flag on a write (the processor's
//! accesses to L2's paging structures count as writes). L0 sets them when
//! it fills EPT02 from EPT12 (ept02.rs), each with a `lock cmpxchg` on
//! L1's memory, and grants write permission in EPT02 only once the leaf is
//! dirty, so the first write after L1 cleared the flag (and ran INVEPT,
//! which drops EPT02) comes back to L0. EPTP02 has A/D flags on then, so
//! the CPU's walks of L2's page tables reach L0 as writes too.
//!
//! With "enable PML", a dirty flag L0 sets from 0 to 1 appends the page's
//! L2-physical address to L1's log at the PML index and decrements the
//! index; an index beyond 511 is a page-modification-log-full exit instead,
//! before any flag is set.

use super::ept12::Leaf12;
use crate::guest_mem::GuestMemory;

/// EPT entry bit 8: the entry was used by a translation.
pub const ACCESSED: u64 = 1 << 8;
/// EPT leaf bit 9: the page was written.
pub const DIRTY: u64 = 1 << 9;
/// Entries of a page-modification log (one 4 KiB page of addresses).
pub const PML_ENTRIES: u16 = 512;

/// L1's page-modification log as VMCS12 describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pml {
    /// PML address: a 4 KiB page of L1's (checked at entry).
    pub address: u64,
    /// Guest PML index: the next entry to fill, counting down.
    pub index: u16,
}

/// What marking a translation came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marked {
    /// The flags the access needs are set; whether the leaf is dirty
    /// (EPT02 may then allow writes).
    Done { dirty: bool },
    /// A flag was due and the PML index is out of range: the access does
    /// not happen, L1 gets a log-full exit, no flag was set.
    LogFull,
    /// An entry changed since the walk (L1 or another CPU): nothing is
    /// known about the translation; L2 retries the access.
    Changed,
}

/// Sets the accessed flags of the entries `leaf`'s walk used and, for a
/// write, the dirty flag of the leaf, logging a newly dirty page of
/// `gpa2` in `pml` (its index updated).
pub fn mark<M: GuestMemory>(
    mem: &mut M,
    leaf: &Leaf12,
    gpa2: u64,
    write: bool,
    pml: Option<&mut Pml>,
) -> Marked {
    let used = &leaf.used[..leaf.depth];
    let (_, leaf_value) = used[leaf.depth - 1];
    let newly_dirty = write && leaf_value & DIRTY == 0;
    let due = newly_dirty || used.iter().any(|&(_, v)| v & ACCESSED == 0);
    if !due {
        return Marked::Done {
            dirty: leaf_value & DIRTY != 0,
        };
    }
    if pml.as_ref().is_some_and(|p| p.index >= PML_ENTRIES) {
        return Marked::LogFull;
    }
    for (i, &(at, v)) in used.iter().enumerate() {
        let flags = if i + 1 == used.len() && write {
            ACCESSED | DIRTY
        } else {
            ACCESSED
        };
        if v & flags == flags {
            continue;
        }
        match mem.compare_exchange_u64(at, v, v | flags) {
            Ok(Ok(_)) => {}
            _ => return Marked::Changed,
        }
    }
    if newly_dirty {
        if let Some(p) = pml {
            // A log page with no L1 RAM behind it drops the write, as
            // such memory does (the index still moves).
            let _ = mem.write(
                p.address + 8 * u64::from(p.index),
                &(gpa2 & !0xfff).to_le_bytes(),
            );
            p.index = p.index.wrapping_sub(1);
        }
    }
    Marked::Done {
        dirty: write || leaf_value & DIRTY != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_mem::fake::VecMemory;
    use crate::nested::ept12::{tests::caps, walk, EptAccess};

    const EPTP: u64 = 0x1000 | 6 | 3 << 3 | 1 << 6;
    /// Where the PML page is in the test memory.
    const LOG: u64 = 0x80_0000;

    /// EPT12 of ept12::tests (L2 0x0 -> 4 KiB leaf at 0x4000, L2 0x20_0000
    /// -> read-only 2 MiB leaf at 0x3008), walked for `gpa2`.
    fn walked(m: &VecMemory, gpa2: u64, access: u64) -> Leaf12 {
        walk(m, EPTP, gpa2, EptAccess(access), &caps(), 39).unwrap()
    }

    fn entries(m: &VecMemory, at: &[u64]) -> Vec<u64> {
        at.iter()
            .map(|&a| m.read_u64(a).unwrap() & (ACCESSED | DIRTY))
            .collect()
    }

    /// The 4 KiB walk's entries: PML4E, PDPTE, PDE, PTE.
    const WALK_4K: [u64; 4] = [0x1000, 0x2000, 0x3000, 0x4000];

    #[test]
    fn a_read_sets_accessed_on_every_level_a_write_dirty_on_the_leaf() {
        let mut m = crate::nested::ept12::tests::ept12();
        let l = walked(&m, 0x123, 1);
        assert_eq!(l.depth, 4);
        assert_eq!(
            mark(&mut m, &l, 0x123, false, None),
            Marked::Done { dirty: false }
        );
        assert_eq!(entries(&m, &WALK_4K), [ACCESSED; 4]);
        let l = walked(&m, 0x123, 2);
        assert_eq!(
            mark(&mut m, &l, 0x123, true, None),
            Marked::Done { dirty: true }
        );
        assert_eq!(
            entries(&m, &WALK_4K),
            [ACCESSED, ACCESSED, ACCESSED, ACCESSED | DIRTY]
        );
        // Nothing due: nothing written, the leaf reported dirty.
        let l = walked(&m, 0x123, 1);
        assert_eq!(
            mark(&mut m, &l, 0x123, false, None),
            Marked::Done { dirty: true }
        );
        // A large leaf is the walk's last entry (depth 3).
        let l = walked(&m, 0x2f_0010, 1);
        assert_eq!(l.depth, 3);
        mark(&mut m, &l, 0x2f_0010, false, None);
        assert_eq!(m.read_u64(0x3008).unwrap() & ACCESSED, ACCESSED);
    }

    /// The log takes the 4 KiB-aligned address of each page made dirty,
    /// at the index, counting down from 511 through 0 to 0xffff; with the
    /// index out of range (512 up to 0xffff) a due flag is a log-full
    /// event and nothing is set; with no flag due the index is not looked
    /// at.
    #[test]
    fn the_log_fills_downwards_and_is_full_outside_0_to_511() {
        for (index, logged_at) in [(511u16, Some(511u64)), (1, Some(1)), (0, Some(0))] {
            let mut m = crate::nested::ept12::tests::ept12();
            let mut p = Pml {
                address: LOG,
                index,
            };
            let l = walked(&m, 0xabc, 2);
            assert_eq!(
                mark(&mut m, &l, 0xabc, true, Some(&mut p)),
                Marked::Done { dirty: true }
            );
            let at = LOG + 8 * logged_at.unwrap();
            assert_eq!(m.read_u64(at).unwrap(), 0, "L2 page 0, offset dropped");
            assert_eq!(p.index, index.wrapping_sub(1), "from {index}");
        }
        for index in [512u16, 513, 0x8000, 0xffff] {
            let mut m = crate::nested::ept12::tests::ept12();
            let mut p = Pml {
                address: LOG,
                index,
            };
            let l = walked(&m, 0x10, 2);
            assert_eq!(
                mark(&mut m, &l, 0x10, true, Some(&mut p)),
                Marked::LogFull,
                "{index}"
            );
            assert_eq!(entries(&m, &WALK_4K), [0; 4], "no flag set at {index}");
            assert_eq!(p.index, index);
            // A read with its accessed flags due is refused the same way.
            let l = walked(&m, 0x10, 1);
            assert_eq!(mark(&mut m, &l, 0x10, false, Some(&mut p)), Marked::LogFull);
        }
        // Flags already set: no event, however full the log.
        let mut m = crate::nested::ept12::tests::ept12();
        let l = walked(&m, 0x10, 2);
        mark(&mut m, &l, 0x10, true, None);
        let mut p = Pml {
            address: LOG,
            index: 0xffff,
        };
        let l = walked(&m, 0x10, 2);
        assert_eq!(
            mark(&mut m, &l, 0x10, true, Some(&mut p)),
            Marked::Done { dirty: true }
        );
    }

    /// Only a dirty flag going from 0 to 1 is logged: not a read that
    /// sets accessed flags, not a write to a page already dirty.
    #[test]
    fn only_newly_dirty_pages_are_logged() {
        let mut m = crate::nested::ept12::tests::ept12();
        let mut p = Pml {
            address: LOG,
            index: 511,
        };
        m.write(LOG + 8 * 511, &u64::MAX.to_le_bytes()).unwrap();
        let l = walked(&m, 0x10, 1);
        mark(&mut m, &l, 0x10, false, Some(&mut p));
        assert_eq!(p.index, 511, "a read is not logged");
        let l = walked(&m, 0x10, 2);
        mark(&mut m, &l, 0x10, true, Some(&mut p));
        assert_eq!((p.index, m.read_u64(LOG + 8 * 511).unwrap()), (510, 0));
        let l = walked(&m, 0x10, 2);
        mark(&mut m, &l, 0x10, true, Some(&mut p));
        assert_eq!(p.index, 510, "already dirty");
    }

    /// An entry that changed after the walk is left as it is now.
    #[test]
    fn a_changed_entry_is_not_overwritten() {
        let mut m = crate::nested::ept12::tests::ept12();
        let l = walked(&m, 0x10, 2);
        // L1 (or another CPU's walk) rewrites the PTE in between.
        m.write(0x4000, &(0x11_0000u64 | 7 | 6 << 3).to_le_bytes())
            .unwrap();
        let mut p = Pml {
            address: LOG,
            index: 7,
        };
        assert_eq!(mark(&mut m, &l, 0x10, true, Some(&mut p)), Marked::Changed);
        assert_eq!(m.read_u64(0x4000).unwrap(), 0x11_0000 | 7 | 6 << 3);
        assert_eq!(p.index, 7, "nothing logged");
    }

    /// A log page with no L1 RAM behind it: the write is dropped, the
    /// index moves, L0 goes on.
    #[test]
    fn a_log_outside_l1_ram_drops_the_write() {
        let mut m = crate::nested::ept12::tests::ept12();
        let mut p = Pml {
            address: 1 << 38,
            index: 3,
        };
        let l = walked(&m, 0x10, 2);
        assert_eq!(
            mark(&mut m, &l, 0x10, true, Some(&mut p)),
            Marked::Done { dirty: true }
        );
        assert_eq!(p.index, 2);
    }
}
