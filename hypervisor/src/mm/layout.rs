//! Who owns which physical memory.
//!
//! L0 takes one contiguous pool at the top of RAM below 4 GiB and moves
//! itself and its modules into it; everything else that is RAM belongs to the
//! cloud VM. From the firmware map this module derives the pool, the map L1
//! is told, and the regions EPT01 maps with their memory types.

use alloc::vec::Vec;
use core::fmt;

use boot::memmap::{CapacityExceeded, Range, RangeSet};
use boot::multiboot2::{MemoryRegion, MEMORY_ACPI_RECLAIMABLE, MEMORY_AVAILABLE, MEMORY_NVS};

/// The pool is aligned so EPT01 can map around it with 2 MiB pages.
pub const POOL_ALIGN: u64 = 2 << 20;
const FOUR_GIB: u64 = 1 << 32;
const GIB: u64 = 1 << 30;

/// EPT memory types (SDM Vol. 3C 29.3.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemType {
    Uncacheable = 0,
    WriteBack = 6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// No free RAM below 4 GiB for a pool this large.
    NoRoomForPool {
        size: u64,
        largest: u64,
    },
    Capacity,
}

impl From<CapacityExceeded> for LayoutError {
    fn from(_: CapacityExceeded) -> Self {
        LayoutError::Capacity
    }
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRoomForPool { size, largest } => write!(
                f,
                "no {} MiB of free RAM below 4 GiB for L0's pool (largest free run: {} MiB); lower l0_mem= or add RAM",
                size >> 20,
                largest >> 20
            ),
            Self::Capacity => write!(f, "memory map too fragmented"),
        }
    }
}

/// The firmware map sorted into the sets L0 reasons with. An address listed
/// both as usable and as anything else counts as the other: never hand out
/// memory the firmware also claims.
pub struct FirmwareMemory {
    /// Usable RAM (type 1), page-aligned inward.
    pub ram: RangeSet,
    /// RAM holding ACPI tables/NVS: cacheable, not usable.
    pub acpi: RangeSet,
    /// Highest address any entry mentions.
    pub top: u64,
}

impl FirmwareMemory {
    pub fn new(map: impl Iterator<Item = MemoryRegion> + Clone) -> Result<Self, LayoutError> {
        let mut ram = RangeSet::new();
        let mut acpi = RangeSet::new();
        let mut top = 0;
        for r in map.clone() {
            let range = Range::new(r.base, r.base.saturating_add(r.len));
            top = top.max(range.end);
            match r.kind {
                MEMORY_AVAILABLE => ram.insert(range.shrink_to_pages())?,
                MEMORY_ACPI_RECLAIMABLE | MEMORY_NVS => acpi.insert(range.grow_to_pages())?,
                _ => {}
            }
        }
        for r in map.filter(|r| r.kind != MEMORY_AVAILABLE) {
            ram.remove(Range::new(r.base, r.base.saturating_add(r.len)).grow_to_pages())?;
        }
        Ok(FirmwareMemory { ram, acpi, top })
    }

    /// The highest `size`-byte, 2 MiB-aligned run of RAM below 4 GiB that
    /// avoids `occupied` (L0's image, boot information and modules).
    pub fn choose_pool(&self, size: u64, occupied: &RangeSet) -> Result<Range, LayoutError> {
        let mut free = self.ram.clone();
        for r in occupied.iter() {
            free.remove(r.grow_to_pages())?;
        }
        free.find_highest(size, POOL_ALIGN, FOUR_GIB)
            .ok_or_else(|| LayoutError::NoRoomForPool {
                size,
                largest: free
                    .iter()
                    .filter(|r| r.start < FOUR_GIB)
                    .map(|r| r.end.min(FOUR_GIB) - r.start)
                    .max()
                    .unwrap_or(0),
            })
    }

    /// The address range EPT01 covers: all of RAM and the 32-bit MMIO hole,
    /// in whole GiBs.
    pub fn ept_limit(&self) -> u64 {
        self.top.max(FOUR_GIB).next_multiple_of(GIB)
    }

    /// The regions EPT01 maps identity, in address order: RAM and ACPI
    /// memory write-back, everything else (MMIO, firmware) uncacheable,
    /// and nothing of `l0` (L0's frames stay unmapped).
    pub fn ept_regions(&self, l0: &RangeSet) -> Result<Vec<(Range, MemType)>, LayoutError> {
        let mut wb = self.ram.clone();
        for r in self.acpi.iter() {
            wb.insert(r)?;
        }
        let mut uc = RangeSet::new();
        uc.insert(Range::new(0, self.ept_limit()))?;
        for r in wb.iter() {
            uc.remove(r)?;
        }
        for r in l0.iter() {
            wb.remove(r)?;
            uc.remove(r)?;
        }
        let mut out: Vec<(Range, MemType)> = wb
            .iter()
            .map(|r| (r, MemType::WriteBack))
            .chain(uc.iter().map(|r| (r, MemType::Uncacheable)))
            .collect();
        out.sort_by_key(|(r, _)| r.start);
        Ok(out)
    }
}

/// `ranges` cut into pieces of at most `size` bytes, in order (work that
/// several CPUs share a piece at a time).
pub fn chunks(ranges: impl Iterator<Item = Range>, size: u64) -> Vec<Range> {
    let mut out = Vec::new();
    for r in ranges {
        let mut start = r.start;
        while start < r.end {
            let end = start.saturating_add(size).min(r.end);
            out.push(Range::new(start, end));
            start = end;
        }
    }
    out
}

/// The memory map L1 is told: the firmware's, with L0's pool cut out of
/// whatever it was and listed as reserved (type 2).
pub fn l1_memory_map(map: impl Iterator<Item = MemoryRegion>, pool: Range) -> Vec<MemoryRegion> {
    reserve(&map.collect::<Vec<_>>(), pool)
}

/// `map` with `cut` taken out of whatever covered it and listed as
/// reserved (type 2), sorted by base.
pub fn reserve(map: &[MemoryRegion], cut: Range) -> Vec<MemoryRegion> {
    let mut out = Vec::new();
    for r in map {
        let whole = Range::new(r.base, r.base.saturating_add(r.len));
        for piece in [
            Range::new(whole.start, whole.end.min(cut.start)),
            Range::new(whole.start.max(cut.end), whole.end),
        ] {
            if !piece.is_empty() {
                out.push(MemoryRegion {
                    base: piece.start,
                    len: piece.len(),
                    kind: r.kind,
                });
            }
        }
    }
    out.push(MemoryRegion {
        base: cut.start,
        len: cut.len(),
        kind: 2,
    });
    out.sort_by_key(|r| r.base);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_each_range_exactly_in_order() {
        let rs = [
            Range::new(0x500, 0x9ec00),
            Range::new(0x10_0000, 0x10_0000 + (5 << 20) + 7),
        ];
        let c = chunks(rs.into_iter(), 2 << 20);
        assert_eq!(c[0], Range::new(0x500, 0x9ec00));
        assert_eq!(c[1], Range::new(0x10_0000, 0x30_0000));
        assert_eq!(c.last(), Some(&Range::new(0x50_0000, 0x60_0007)));
        assert_eq!(c.len(), 1 + 3);
        assert_eq!(
            c.iter().map(|r| r.len()).sum::<u64>(),
            rs.iter().map(|r| r.len()).sum()
        );
        assert!(chunks(core::iter::empty(), 1 << 20).is_empty());
        let top = Range::new(u64::MAX - 10, u64::MAX);
        assert_eq!(
            chunks([top].into_iter(), 4),
            [
                Range::new(u64::MAX - 10, u64::MAX - 6),
                Range::new(u64::MAX - 6, u64::MAX - 2),
                Range::new(u64::MAX - 2, u64::MAX)
            ]
        );
    }

    fn bochs() -> Vec<MemoryRegion> {
        vec![
            MemoryRegion {
                base: 0,
                len: 0x9f000,
                kind: 1,
            },
            MemoryRegion {
                base: 0x9f000,
                len: 0x1000,
                kind: 2,
            },
            MemoryRegion {
                base: 0xe8000,
                len: 0x18000,
                kind: 2,
            },
            MemoryRegion {
                base: 0x10_0000,
                len: 0x1fef_0000,
                kind: 1,
            },
            MemoryRegion {
                base: 0x1fff_0000,
                len: 0x1_0000,
                kind: 3,
            },
            MemoryRegion {
                base: 0xfffc_0000,
                len: 0x4_0000,
                kind: 2,
            },
        ]
    }

    fn set(rs: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::new();
        for &(a, b) in rs {
            s.insert(Range::new(a, b)).unwrap();
        }
        s
    }

    #[test]
    fn pool_goes_to_the_top_below_4g_avoiding_occupied() {
        let fw = FirmwareMemory::new(bochs().into_iter()).unwrap();
        let occupied = set(&[(0x10_0000, 0x30_0000)]);
        let pool = fw.choose_pool(32 << 20, &occupied).unwrap();
        assert_eq!(pool, Range::new(0x1de0_0000, 0x1fe0_0000));
        // Modules right under the top push it down.
        let occupied = set(&[(0x1f00_0000, 0x1fff_0000)]);
        let pool = fw.choose_pool(32 << 20, &occupied).unwrap();
        assert_eq!(pool.end, 0x1f00_0000);
        let e = fw.choose_pool(1 << 30, &RangeSet::new()).unwrap_err();
        assert!(
            matches!(e, LayoutError::NoRoomForPool { size, largest } if size == 1 << 30 && largest == 0x1fef_0000)
        );
    }

    #[test]
    fn conflicting_entries_are_not_ram() {
        let mut m = bochs();
        m.push(MemoryRegion {
            base: 0x800_0000,
            len: 0x1000,
            kind: 2,
        });
        let fw = FirmwareMemory::new(m.into_iter()).unwrap();
        assert!(!fw.ram.contains(0x800_0000));
        assert!(fw.ram.contains(0x7ff_f000));
        assert!(fw.ram.contains(0x800_1000));
    }

    #[test]
    fn ept_regions_cover_everything_but_l0() {
        let fw = FirmwareMemory::new(bochs().into_iter()).unwrap();
        let pool = Range::new(0x1de0_0000, 0x1fe0_0000);
        let mut l0 = RangeSet::new();
        l0.insert(pool).unwrap();
        let regions = fw.ept_regions(&l0).unwrap();
        assert_eq!(fw.ept_limit(), 1 << 32);
        // Sorted, disjoint, and with the pool as the only gap.
        let mut covered = RangeSet::new();
        for w in regions.windows(2) {
            assert!(w[0].0.end <= w[1].0.start);
        }
        for (r, _) in &regions {
            covered.insert(*r).unwrap();
        }
        let mut expect = set(&[(0, 1 << 32)]);
        expect.remove(pool).unwrap();
        assert_eq!(
            covered.iter().collect::<Vec<_>>(),
            expect.iter().collect::<Vec<_>>()
        );
        let kind_at = |a: u64| regions.iter().find(|(r, _)| r.contains(a)).map(|x| x.1);
        assert_eq!(kind_at(0x1000), Some(MemType::WriteBack));
        assert_eq!(kind_at(0x9f000), Some(MemType::Uncacheable));
        assert_eq!(kind_at(0xb8000), Some(MemType::Uncacheable));
        assert_eq!(kind_at(0x1fff_8000), Some(MemType::WriteBack)); // ACPI tables
        assert_eq!(kind_at(0xfee0_0000), Some(MemType::Uncacheable)); // LAPIC
        assert_eq!(kind_at(0x1df0_0000), None);
    }

    #[test]
    fn l1_map_lists_the_pool_as_reserved() {
        let pool = Range::new(0x1de0_0000, 0x1fe0_0000);
        let m = l1_memory_map(bochs().into_iter(), pool);
        assert!(m.windows(2).all(|w| w[0].base + w[0].len <= w[1].base));
        assert!(m.contains(&MemoryRegion {
            base: 0x10_0000,
            len: 0x1de0_0000 - 0x10_0000,
            kind: 1
        }));
        assert!(m.contains(&MemoryRegion {
            base: 0x1de0_0000,
            len: 0x200_0000,
            kind: 2
        }));
        assert!(m.contains(&MemoryRegion {
            base: 0x1fe0_0000,
            len: 0x1fff_0000 - 0x1fe0_0000,
            kind: 1
        }));
        let usable: u64 = m.iter().filter(|r| r.kind == 1).map(|r| r.len).sum();
        assert_eq!(usable, 0x9f000 + 0x1fef_0000 - 0x200_0000);
    }
}
