//! EPT01's mappings beyond its limit (MMIO space above RAM), made on
//! demand: each with the largest page the CPU offers (a 1 GiB page needs
//! no table below the PDPT), and its tables drawn from a small set that
//! never grows past [`PER_LEVEL`] tables a level.
//!
//! When a mapping needs a table the set cannot give, every mapping beyond
//! the limit is dropped and its tables become spares, and the mapping is
//! made again from them. So however many addresses L1 touches up there,
//! EPT01 holds at most `3 × PER_LEVEL` tables more than at boot.
//!
//! Another CPU may still walk a dropped table from its paging-structure
//! caches until it sees EPT01's new generation (at its next exit). That
//! is why the spares never return to L0's pool and a spare is only ever
//! reused at the level it was made for: a stale walk then reads tables of
//! the same shape, whose leaves all map MMIO beyond the limit to itself,
//! never a frame of L0 or RAM.

use alloc::vec::Vec;

use crate::mm::paging::{Format, MapError, PageSize, TableMemory, ADDR_MASK};
use crate::vmx::ept::{Ept, EptAttr, LARGE, RWX};

/// Tables of each level (PDPT, PD, PT) the mappings beyond the limit may
/// hold: 32 PDPTs map 16 TiB of MMIO space with 1 GiB pages.
pub const PER_LEVEL: usize = 32;

/// Bytes an entry of a table at `level` (1 = PT .. 4 = PML4) covers.
fn span(level: usize) -> u64 {
    1 << (12 + 9 * (level - 1))
}

fn index(gpa: u64, level: usize) -> usize {
    ((gpa >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

#[derive(Default)]
pub struct MmioTables {
    /// Tables made from the pool, by level - 1 (never returned to it).
    made: [usize; 3],
    /// Unlinked, zeroed tables by level - 1.
    spare: [Vec<u64>; 3],
    /// Times every mapping beyond the limit was dropped to make room.
    pub resets: u64,
}

/// What mapping one page beyond the limit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// The page size used.
    pub size: PageSize,
    /// Every mapping beyond the limit was dropped first: EPT-derived
    /// translations must be flushed on every CPU.
    pub reset: bool,
}

impl MmioTables {
    /// Maps the page of `size` around `gpa` (which is at or beyond
    /// `limit`, a multiple of 1 GiB, and unmapped) to itself, uncacheable.
    pub fn map<M: TableMemory>(
        &mut self,
        mem: &mut M,
        root: u64,
        limit: u64,
        gpa: u64,
        size: PageSize,
    ) -> Result<Mapped, MapError> {
        debug_assert!(gpa >= limit && limit.is_multiple_of(span(3)));
        let block = gpa & !(size.bytes() - 1);
        let reset = match self.try_map(mem, root, block, size) {
            Ok(()) => false,
            Err(MapError::OutOfMemory) => {
                self.drop_all(mem, root, limit);
                self.try_map(mem, root, block, size)?;
                true
            }
            Err(e) => return Err(e),
        };
        Ok(Mapped { size, reset })
    }

    /// Maps `block` if every table it needs is there (taking no table
    /// unless all are).
    fn try_map<M: TableMemory>(
        &mut self,
        mem: &mut M,
        root: u64,
        block: u64,
        size: PageSize,
    ) -> Result<(), MapError> {
        // Which levels lack their table on the way, first.
        let mut table = Some(root);
        let mut lacking = [false; 3];
        for level in (size.level() + 1..=4).rev() {
            match table {
                Some(t) => {
                    let e = mem.table(t)[index(block, level)];
                    if e & RWX == 0 {
                        lacking[level - 2] = true;
                        table = None;
                    } else if level <= 3 && e & LARGE != 0 {
                        return Err(MapError::AlreadyMapped(block));
                    } else {
                        table = Some(e & ADDR_MASK);
                    }
                }
                None => lacking[level - 2] = true,
            }
        }
        for (l, &lack) in lacking.iter().enumerate() {
            if lack && self.spare[l].is_empty() && self.made[l] == PER_LEVEL {
                return Err(MapError::OutOfMemory);
            }
        }
        let mut table = root;
        for level in (size.level() + 1..=4).rev() {
            let i = index(block, level);
            let e = mem.table(table)[i];
            table = if e & RWX == 0 {
                let next = self.take(mem, level - 1)?;
                mem.table(table)[i] = Ept.table_entry(next);
                next
            } else {
                e & ADDR_MASK
            };
        }
        let attr = EptAttr {
            perms: RWX,
            mem_type: crate::mm::layout::MemType::Uncacheable,
        };
        mem.table(table)[index(block, size.level())] = Ept.leaf(block, size, attr);
        Ok(())
    }

    /// A zeroed table for `level`: a spare, or a new one from the pool.
    fn take<M: TableMemory>(&mut self, mem: &mut M, level: usize) -> Result<u64, MapError> {
        if let Some(t) = self.spare[level - 1].pop() {
            return Ok(t);
        }
        let t = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        self.made[level - 1] += 1;
        Ok(t)
    }

    /// Drops every mapping at or beyond `limit`; their tables become spares.
    fn drop_all<M: TableMemory>(&mut self, mem: &mut M, root: u64, limit: u64) {
        self.resets += 1;
        self.drop_above(mem, root, 4, 0, limit);
    }

    fn drop_above<M: TableMemory>(
        &mut self,
        mem: &mut M,
        table: u64,
        level: usize,
        base: u64,
        limit: u64,
    ) {
        for i in 0..512 {
            let start = base + i as u64 * span(level);
            let e = mem.table(table)[i];
            let child = (e & RWX != 0 && level > 1 && (level == 4 || e & LARGE == 0))
                .then_some(e & ADDR_MASK);
            if start >= limit {
                if let Some(c) = child {
                    self.retire(mem, c, level - 1);
                }
                mem.table(table)[i] = 0;
            } else if start + span(level) > limit {
                if let Some(c) = child {
                    self.drop_above(mem, c, level - 1, start, limit);
                }
            }
        }
    }

    /// Makes the table at `level` and everything below it spares.
    fn retire<M: TableMemory>(&mut self, mem: &mut M, table: u64, level: usize) {
        for i in 0..512 {
            let e = mem.table(table)[i];
            if level > 1 && e & RWX != 0 && e & LARGE == 0 {
                self.retire(mem, e & ADDR_MASK, level - 1);
            }
            mem.table(table)[i] = 0;
        }
        self.spare[level - 1].push(table);
    }

    /// Tables made for mappings beyond the limit (PT, PD, PDPT).
    pub fn made(&self) -> [usize; 3] {
        self.made
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::mm::layout::MemType;
    use crate::mm::paging::tests::FakeTables;
    use crate::mm::paging::{map, translate};

    /// A table of one level is never reused at another, so a stale walk
    /// on another CPU reads tables of the shape it expects; the tables L0
    /// made at boot (the PDPT below the limit) are never taken.
    #[test]
    fn spares_keep_their_level_and_boot_tables_stay() {
        let mut m = FakeTables::default();
        let root = m.new_root();
        let wb = EptAttr {
            perms: RWX,
            mem_type: MemType::WriteBack,
        };
        map(&mut m, &Ept, root, 0, 0, 4 << 30, wb, PageSize::Size2M).unwrap();
        let boot: Vec<u64> = m.tables.keys().copied().collect();
        let limit = 4 << 30;
        let mut t = MmioTables::default();
        let mut level_of = BTreeMap::new();
        let mut gpa = limit + 0x5000;
        let mut resets = 0;
        while gpa < 1 << 47 {
            let r = t.map(&mut m, root, limit, gpa, PageSize::Size4K).unwrap();
            resets += r.reset as u64;
            // Record the level of every table on the way.
            let mut table = root;
            for level in (1..=3).rev() {
                table = m.table(table)[index(gpa, level + 1)] & ADDR_MASK;
                if !boot.contains(&table) {
                    assert_eq!(*level_of.entry(table).or_insert(level), level, "{table:#x}");
                }
            }
            let l = translate(&mut m, &Ept, root, gpa).unwrap();
            assert_eq!((l.pa, l.size, l.entry & 0x38), (gpa, PageSize::Size4K, 0));
            gpa += (515 << 30) + (3 << 21) + (5 << 12);
        }
        assert!(resets > 1 && t.resets == resets);
        assert!(t.made().iter().all(|&n| n <= PER_LEVEL));
        assert_eq!(translate(&mut m, &Ept, root, 0x1000).unwrap().pa, 0x1000);
        for b in boot {
            assert!(t.spare.iter().all(|s| !s.contains(&b)));
        }
    }

    /// Inside a 512 GiB region L0 mapped at boot, the mapping beyond the
    /// limit goes into L0's PDPT and a reset clears only those entries.
    #[test]
    fn a_reset_clears_only_what_is_beyond_the_limit() {
        let mut m = FakeTables::default();
        let root = m.new_root();
        let wb = EptAttr {
            perms: RWX,
            mem_type: MemType::WriteBack,
        };
        map(&mut m, &Ept, root, 0, 0, 4 << 30, wb, PageSize::Size1G).unwrap();
        let mut t = MmioTables::default();
        t.map(&mut m, root, 4 << 30, 5 << 30, PageSize::Size1G)
            .unwrap();
        assert!(translate(&mut m, &Ept, root, 5 << 30).is_some());
        t.drop_all(&mut m, root, 4 << 30);
        assert!(translate(&mut m, &Ept, root, 5 << 30).is_none());
        assert_eq!(translate(&mut m, &Ept, root, 3 << 30).unwrap().pa, 3 << 30);
    }
}
