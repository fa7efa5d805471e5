//! EPT02 = EPT12 ∘ EPT01, built lazily: one shadow table per EPTP12 in a
//! small LRU cache, filled with 4 KiB leaves on L2's EPT violations, dropped
//! whole on INVEPT. L1 must INVEPT after changing EPT12 (SDM 29.4.3.1), so
//! EPT12 need not be write-protected.

use alloc::vec::Vec;

use crate::mm::paging::{MapError, TableMemory, ADDR_MASK};
use crate::vmx::ept::{LARGE, RWX};

/// How many EPT12 roots keep a shadow at once (Xen keeps 10, XMHF a few).
pub const CAPACITY: usize = 8;

struct Entry {
    /// EPT12 root address (EPTP12 bits 51:12).
    root12: u64,
    root02: u64,
    last_use: u64,
}

#[derive(Default)]
pub struct Ept02Cache {
    entries: Vec<Entry>,
    clock: u64,
}

/// Frees a table and everything below it.
fn free_tree<M: TableMemory>(mem: &mut M, table: u64, level: usize) {
    if level > 1 {
        for i in 0..512 {
            let e = mem.table(table)[i];
            if e & RWX != 0 && e & LARGE == 0 {
                free_tree(mem, e & ADDR_MASK, level - 1);
            }
        }
    }
    mem.free_table(table);
}

impl Ept02Cache {
    /// The shadow root for `eptp12`, created (evicting the least recently
    /// used one if full) when absent. Returns (root, whether one was evicted).
    pub fn root_for<M: TableMemory>(
        &mut self,
        mem: &mut M,
        eptp12: u64,
    ) -> Result<(u64, bool), MapError> {
        self.clock += 1;
        let root12 = eptp12 & ADDR_MASK;
        if let Some(e) = self.entries.iter_mut().find(|e| e.root12 == root12) {
            e.last_use = self.clock;
            return Ok((e.root02, false));
        }
        let mut evicted = false;
        if self.entries.len() == CAPACITY {
            let (i, _) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_use)
                .unwrap();
            let old = self.entries.swap_remove(i);
            free_tree(mem, old.root02, 4);
            evicted = true;
        }
        let root02 = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        self.entries.push(Entry {
            root12,
            root02,
            last_use: self.clock,
        });
        Ok((root02, evicted))
    }

    /// Drops the shadow of one EPTP12 (INVEPT single-context) or all.
    /// Returns whether anything was dropped (the caller then flushes the
    /// hardware's cached translations).
    pub fn invalidate<M: TableMemory>(&mut self, mem: &mut M, eptp12: Option<u64>) -> bool {
        let before = self.entries.len();
        let mut kept = Vec::new();
        for e in self.entries.drain(..) {
            if eptp12.is_none_or(|p| p & ADDR_MASK == e.root12) {
                free_tree(mem, e.root02, 4);
            } else {
                kept.push(e);
            }
        }
        self.entries = kept;
        self.entries.len() != before
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Sets the 4 KiB leaf for `gpa2` in the shadow rooted at `root02`,
/// creating tables as needed and replacing an older leaf (permissions may
/// have grown since it was filled).
pub fn set_leaf<M: TableMemory>(
    mem: &mut M,
    root02: u64,
    gpa2: u64,
    leaf: u64,
) -> Result<(), MapError> {
    let mut table = root02;
    for level in (2..=4).rev() {
        let i = ((gpa2 >> (12 + 9 * (level - 1))) & 0x1ff) as usize;
        let e = mem.table(table)[i];
        table = if e & RWX == 0 {
            let next = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
            mem.table(table)[i] = next | RWX;
            next
        } else {
            e & ADDR_MASK
        };
    }
    mem.table(table)[((gpa2 >> 12) & 0x1ff) as usize] = leaf;
    Ok(())
}

/// The EPT02 leaf for a page: EPT12's permissions and memory type, made
/// uncacheable where EPT01 maps uncacheable memory (MMIO).
pub fn leaf(hpa: u64, perms12: u64, mem_type12: u8, ignore_pat: bool, uncached01: bool) -> u64 {
    let mt = if uncached01 { 0 } else { mem_type12 as u64 };
    (hpa & ADDR_MASK) | (perms12 & RWX) | mt << 3 | if ignore_pat { 1 << 6 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::paging::tests::FakeTables;
    use crate::mm::paging::translate;
    use crate::vmx::ept::Ept;

    #[test]
    fn cache_reuses_evicts_and_invalidates() {
        let mut m = FakeTables::default();
        let mut c = Ept02Cache::default();
        let (a, _) = c.root_for(&mut m, 0x1000 | 0x1e).unwrap();
        assert_eq!(
            c.root_for(&mut m, 0x1000 | 0x18).unwrap(),
            (a, false),
            "same EPT12 root"
        );
        set_leaf(&mut m, a, 0x5000, 0x9000 | 7 | 6 << 3).unwrap();
        let tables_with_a = m.tables.len();
        assert_eq!(tables_with_a, 4);
        for i in 0..CAPACITY as u64 - 1 {
            c.root_for(&mut m, 0x10_0000 + i * 0x1000).unwrap();
        }
        assert_eq!(c.len(), CAPACITY);
        // Touch `a` so it is not the LRU one; the next new root evicts another.
        c.root_for(&mut m, 0x1000).unwrap();
        let (_, evicted) = c.root_for(&mut m, 0x90_0000).unwrap();
        assert!(evicted);
        assert!(m.tables.contains_key(&a));
        assert!(c.invalidate(&mut m, Some(0x1000 | 0x1e)));
        assert!(!m.tables.contains_key(&a), "its tables are freed");
        assert!(!c.invalidate(&mut m, Some(0x1000)));
        assert!(c.invalidate(&mut m, None));
        assert!(c.is_empty());
        assert!(m.tables.is_empty());
    }

    #[test]
    fn leaves_are_replaced() {
        let mut m = FakeTables::default();
        let root = m.alloc_table().unwrap();
        set_leaf(&mut m, root, 0x20_3000, leaf(0x7000, 1, 6, false, false)).unwrap();
        assert_eq!(
            translate(&mut m, &Ept, root, 0x20_3010).unwrap().entry,
            0x7000 | 1 | 6 << 3
        );
        set_leaf(&mut m, root, 0x20_3000, leaf(0x7000, 3, 6, true, false)).unwrap();
        assert_eq!(
            translate(&mut m, &Ept, root, 0x20_3010).unwrap().entry,
            0x7000 | 3 | 6 << 3 | 1 << 6
        );
        assert_eq!(leaf(0xfee0_0000, 3, 6, false, true), 0xfee0_0000 | 3);
    }
}
