//! EPT01: the cloud VM's guest-physical space, identity-mapped except
//! L0's frames.
//!
//! An access to an unmapped address gets defined behaviour instead of a
//! crash: L0's frames are backed by one scratch page that starts out as all
//! ones (what reads of absent memory return) and holds only what L1 itself
//! writes there, so L1 never sees a byte of L0; other unmapped addresses
//! beyond the firmware map are MMIO space and mapped uncacheable, with
//! large pages from a bounded set of tables (`ept01_mmio.rs`).

use alloc::vec::Vec;

use boot::memmap::{Range, RangeSet};

use super::ept01_mmio::MmioTables;
use crate::mm::layout::MemType;
use crate::mm::paging::{map, translate, MapError, PageSize, TableMemory};
use crate::vmx::ept::{Ept, EptAttr, RWX, WRITE};

pub struct Ept01 {
    pub root: u64,
    /// The scratch page behind L0's frames.
    pub sink: u64,
    /// L0's frames: never mapped to themselves.
    pub l0: RangeSet,
    /// Everything below is mapped from the start.
    pub limit: u64,
    /// Accesses to L0's frames so far.
    pub l0_touches: u64,
    /// The local APICs' register page, mapped by a 4 KiB leaf of its own
    /// so that L0 can make it read-only (machine/ap_wait.rs).
    pub apic_page: Option<u64>,
    /// Counts the changes that take a permission away (the APIC page
    /// turning read-only, the mappings beyond the limit dropped): each CPU
    /// drops its EPT-derived translations when it sees a new count
    /// (`machine/shared.rs`, `arch/cpu_loop.rs`).
    pub generation: u64,
    /// The largest page EPT01 uses.
    max_page: PageSize,
    /// The tables of the mappings beyond the limit.
    pub mmio: MmioTables,
    /// Mappings made beyond the limit so far.
    pub mmio_maps: u64,
}

/// What an EPT violation on L1 led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// L1 touched L0's memory: now backed by the scratch page.
    L0Frame,
    /// MMIO beyond the initial map: now mapped uncacheable, by a page of
    /// `size` (`reset`: after dropping every such mapping, a new
    /// generation).
    Mmio { size: PageSize, reset: bool },
    /// Mapped already: another CPU resolved the same page since this
    /// CPU's exit.
    Resolved,
}

impl Ept01 {
    /// Builds the map from `regions` (sorted, disjoint; gaps are L0's),
    /// with `apic_page` (if in a region) mapped by a 4 KiB leaf alone.
    pub fn build<M: TableMemory>(
        mem: &mut M,
        regions: &[(Range, MemType)],
        l0: RangeSet,
        limit: u64,
        sink: u64,
        max_page: PageSize,
        apic_page: Option<u64>,
    ) -> Result<Self, MapError> {
        let root = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        let apic = apic_page.filter(|&a| regions.iter().any(|(r, _)| r.contains(a)));
        for &(r, mem_type) in regions {
            let a = EptAttr {
                perms: RWX,
                mem_type,
            };
            let parts = match apic.filter(|&p| r.contains(p)) {
                Some(p) => [
                    Range::new(r.start, p),
                    Range::new(p, p + 0x1000),
                    Range::new(p + 0x1000, r.end),
                ],
                None => [r, Range::new(r.end, r.end), Range::new(r.end, r.end)],
            };
            for part in parts.iter().filter(|p| !p.is_empty()) {
                map(
                    mem,
                    &Ept,
                    root,
                    part.start,
                    part.start,
                    part.len(),
                    a,
                    max_page,
                )?;
            }
        }
        Ok(Ept01 {
            root,
            sink,
            l0,
            limit,
            l0_touches: 0,
            apic_page: apic,
            generation: 0,
            max_page,
            mmio: MmioTables::default(),
            mmio_maps: 0,
        })
    }

    /// Lets L1 write the APIC's register page, or makes it read-only (each
    /// write then exits). The caller invalidates this CPU's EPT-derived
    /// translations; the other CPUs see the new generation.
    pub fn set_apic_writable<M: TableMemory>(&mut self, mem: &mut M, writable: bool) {
        if let Some(page) = self.apic_page {
            self.generation += 1;
            crate::mm::paging::update_leaf_4k(mem, &Ept, self.root, page, |e| {
                if writable {
                    e | WRITE
                } else {
                    e & !WRITE
                }
            });
        }
    }

    /// Resolves a violation at `gpa`. The caller knows the entry was not
    /// present: every mapping EPT01 makes allows everything.
    pub fn resolve<M: TableMemory>(
        &mut self,
        mem: &mut M,
        gpa: u64,
    ) -> Result<Violation, MapError> {
        let page = gpa & !0xfff;
        if translate(mem, &Ept, self.root, page).is_some() {
            return Ok(Violation::Resolved);
        }
        if self.l0.contains(page) || page < self.limit {
            // Below the limit only L0's frames are unmapped.
            self.l0_touches += 1;
            let a = EptAttr {
                perms: RWX,
                mem_type: MemType::WriteBack,
            };
            map(
                mem,
                &Ept,
                self.root,
                page,
                self.sink,
                0x1000,
                a,
                PageSize::Size4K,
            )?;
            Ok(Violation::L0Frame)
        } else {
            // The largest page that holds none of L0's frames (a VT-d
            // unit's registers may lie beyond the map).
            let size = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K]
                .into_iter()
                .filter(|&s| s <= self.max_page)
                .find(|s| {
                    let block = page & !(s.bytes() - 1);
                    !self.l0.overlaps(Range::new(block, block + s.bytes()))
                })
                .unwrap_or(PageSize::Size4K);
            let m = self.mmio.map(mem, self.root, self.limit, page, size)?;
            self.mmio_maps += 1;
            if m.reset {
                self.generation += 1;
            }
            Ok(Violation::Mmio {
                size: m.size,
                reset: m.reset,
            })
        }
    }
}

/// The regions of `[0, limit)` left out of `regions`: what EPT01 leaves
/// unmapped at first.
pub fn unmapped(regions: &[(Range, MemType)], limit: u64) -> Vec<Range> {
    let mut out = Vec::new();
    let mut at = 0;
    for (r, _) in regions {
        if r.start > at {
            out.push(Range::new(at, r.start));
        }
        at = at.max(r.end);
    }
    if at < limit {
        out.push(Range::new(at, limit));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::paging::tests::FakeTables;

    fn setup() -> (FakeTables, Ept01) {
        let mut m = FakeTables::default();
        let pool = Range::new(0x1de0_0000, 0x1fe0_0000);
        let regions = [
            (Range::new(0, 0x1de0_0000), MemType::WriteBack),
            (Range::new(0x1fe0_0000, 0x2000_0000), MemType::WriteBack),
            (Range::new(0x2000_0000, 1 << 32), MemType::Uncacheable),
        ];
        let mut l0 = RangeSet::new();
        l0.insert(pool).unwrap();
        assert_eq!(unmapped(&regions, 1 << 32), vec![pool]);
        let e = Ept01::build(
            &mut m,
            &regions,
            l0,
            1 << 32,
            0x1de0_5000,
            PageSize::Size1G,
            Some(0xfee0_0000),
        )
        .unwrap();
        (m, e)
    }

    #[test]
    fn the_apic_page_alone_can_turn_read_only() {
        let (mut m, mut e) = setup();
        let apic = translate(&mut m, &Ept, e.root, 0xfee0_0300).unwrap();
        assert_eq!(
            (apic.size, apic.pa, apic.entry & RWX),
            (PageSize::Size4K, 0xfee0_0300, RWX)
        );
        // Its neighbours are still mapped, identity and UC.
        for gpa in [0xfedf_f000u64, 0xfee0_1000, 0x2000_0000, 0xffff_f000] {
            let l = translate(&mut m, &Ept, e.root, gpa).unwrap();
            assert_eq!((l.pa, l.entry & 0x38), (gpa, 0));
        }
        e.set_apic_writable(&mut m, false);
        let l = translate(&mut m, &Ept, e.root, 0xfee0_0000).unwrap();
        assert_eq!(l.entry & RWX, RWX & !WRITE);
        assert_eq!(
            translate(&mut m, &Ept, e.root, 0xfee0_1000).unwrap().entry & RWX,
            RWX
        );
        e.set_apic_writable(&mut m, true);
        assert_eq!(
            translate(&mut m, &Ept, e.root, 0xfee0_0000).unwrap().entry & RWX,
            RWX
        );
    }

    #[test]
    fn identity_except_l0() {
        let (mut m, e) = setup();
        assert_eq!(
            translate(&mut m, &Ept, e.root, 0x1234_5678).unwrap().pa,
            0x1234_5678
        );
        assert_eq!(
            translate(&mut m, &Ept, e.root, 0xfee0_0000).unwrap().entry & 0x38,
            0,
            "MMIO is UC"
        );
        assert!(translate(&mut m, &Ept, e.root, 0x1de0_0000).is_none());
        assert!(translate(&mut m, &Ept, e.root, 0x1fdf_f000).is_none());
        assert!(translate(&mut m, &Ept, e.root, 0x1 << 32).is_none());
    }

    #[test]
    fn l0_frames_resolve_to_the_sink_never_to_themselves() {
        let (mut m, mut e) = setup();
        assert_eq!(e.resolve(&mut m, 0x1de0_0123), Ok(Violation::L0Frame));
        assert_eq!(e.resolve(&mut m, 0x1f00_0000), Ok(Violation::L0Frame));
        for gpa in [0x1de0_0000u64, 0x1f00_0000] {
            let l = translate(&mut m, &Ept, e.root, gpa).unwrap();
            assert_eq!(l.pa, 0x1de0_5000);
        }
        assert_eq!(e.l0_touches, 2);
        // Two CPUs' exits for one page: the second finds it resolved.
        assert_eq!(e.resolve(&mut m, 0x1f00_0008), Ok(Violation::Resolved));
        assert_eq!(e.l0_touches, 2);
        // Still unmapped elsewhere in the pool.
        assert!(translate(&mut m, &Ept, e.root, 0x1e00_0000).is_none());
    }

    #[test]
    fn high_mmio_resolves_identity_uncached_with_the_largest_page() {
        let (mut m, mut e) = setup();
        let tables = m.tables.len();
        assert_eq!(
            e.resolve(&mut m, 0xfd_0000_0010),
            Ok(Violation::Mmio {
                size: PageSize::Size1G,
                reset: false
            })
        );
        let l = translate(&mut m, &Ept, e.root, 0xfd_0000_0010).unwrap();
        assert_eq!(
            (l.pa, l.entry & 0x38, l.size),
            (0xfd_0000_0010, 0, PageSize::Size1G)
        );
        assert_eq!(
            m.tables.len(),
            tables + 1,
            "a PDPT for the second 512 GiB, nothing below"
        );
        assert_eq!(
            e.resolve(&mut m, 0xfd_3fff_f000),
            Ok(Violation::Resolved),
            "the same GiB"
        );
    }

    /// L0's frames beyond the map (a VT-d unit's registers) stay out of
    /// the large pages around them.
    #[test]
    fn large_mmio_pages_leave_l0_frames_out() {
        let (mut m, mut e) = setup();
        let unit = (5 << 30) + 0x30_1000;
        e.l0.insert(Range::new(unit, unit + 0x1000)).unwrap();
        assert_eq!(e.resolve(&mut m, unit + 8), Ok(Violation::L0Frame));
        assert_eq!(
            translate(&mut m, &Ept, e.root, unit).unwrap().pa,
            0x1de0_5000
        );
        for (gpa, size) in [
            (unit - 0x1000, PageSize::Size4K),
            (5 << 30, PageSize::Size2M),
            (6 << 30, PageSize::Size1G),
        ] {
            assert_eq!(
                e.resolve(&mut m, gpa),
                Ok(Violation::Mmio { size, reset: false }),
                "{gpa:#x}"
            );
            assert_eq!(translate(&mut m, &Ept, e.root, gpa).unwrap().pa, gpa);
        }
        assert_eq!(
            translate(&mut m, &Ept, e.root, unit).unwrap().pa,
            0x1de0_5000
        );
    }

    /// L1 touching one page in each 512 GiB up to 128 TiB, with 1 GiB pages
    /// and with 2 MiB or 4 KiB ones: EPT01 never holds more than
    /// 3 × PER_LEVEL tables beyond its boot tables, every touch is mapped
    /// identity and uncacheable, and RAM and L0's frames stay as they were.
    #[test]
    fn high_touches_cannot_exhaust_ept01_tables() {
        use super::super::ept01_mmio::PER_LEVEL;
        for max in [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K] {
            let (mut m, mut e) = setup();
            e.max_page = max;
            let boot = m.tables.len();
            let mut resets = 0;
            let mut gpa = 1u64 << 32;
            while gpa < 1 << 47 {
                let v = e.resolve(&mut m, gpa + 0x1234).unwrap();
                let Violation::Mmio { size, reset } = v else {
                    panic!("{v:?} at {gpa:#x}");
                };
                assert_eq!(size, max);
                let g = e.generation;
                if reset {
                    resets += 1;
                    assert_eq!(g, resets, "a reset is a new generation");
                }
                let l = translate(&mut m, &Ept, e.root, gpa + 0x1234).unwrap();
                assert_eq!((l.pa, l.entry & 0x38), (gpa + 0x1234, 0));
                assert!(m.tables.len() <= boot + 3 * PER_LEVEL, "{max:?}");
                gpa += 513 << 30;
            }
            assert!(resets > 0, "{max:?}");
            assert_eq!(e.mmio.resets, resets);
            assert_eq!(
                translate(&mut m, &Ept, e.root, 0x1234_5678).unwrap().pa,
                0x1234_5678
            );
            assert!(translate(&mut m, &Ept, e.root, 0x1de0_0000).is_none());
            assert_eq!(e.resolve(&mut m, 0x1f00_0000), Ok(Violation::L0Frame));
            assert_eq!(
                translate(&mut m, &Ept, e.root, 0x1f00_0000).unwrap().pa,
                0x1de0_5000
            );
        }
    }
}
