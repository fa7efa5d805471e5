//! DMA isolation with VT-d: devices the cloud VM drives reach, by DMA,
//! exactly what EPT01 gives the cloud VM (plus the firmware's RMRR
//! regions), never L0's frames. One set of second-level tables, built by
//! the mapper that builds EPT01, serves every unit; each unit gets a root
//! and context table putting every device in that one domain.
//!
//! Everything here is pure over [`TableMemory`] and [`UnitRegisters`];
//! `arch::iommu` supplies the pool, the mapped registers and the cache
//! flush. Untested on hardware (docs/bare-metal.md).

pub mod registers;
pub mod tables;

use alloc::vec::Vec;
use core::fmt;

use boot::memmap::{CapacityExceeded, Range, RangeSet};

use crate::acpi::dmar::RemapUnit;
use crate::mm::paging::{map, MapError, PageSize, TableMemory};
use registers::{enable, Caps, UnitError, UnitRegisters};
use tables::{root_table, walk_root, AddressWidth, SecondLevel};

/// Why DMA isolation could not be set up (unit numbers follow the DMAR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuError {
    /// The DMAR puts a unit's registers in RAM: a corrupt table.
    RegistersInRam {
        unit: usize,
    },
    /// The unit supports neither 3- nor 4-level second-level tables.
    NoTableFormat {
        unit: usize,
    },
    /// A 39-bit unit, and memory to map at or above 512 GiB.
    BeyondWidth {
        unit: usize,
    },
    Map(MapError),
    /// The units' registers could not be mapped for L0.
    MapRegisters(MapError),
    TooFragmented,
    Unit {
        unit: usize,
        error: UnitError,
    },
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RegistersInRam { unit } => {
                write!(f, "the DMAR puts VT-d unit {unit}'s registers in RAM")
            }
            Self::NoTableFormat { unit } => write!(
                f,
                "VT-d unit {unit} supports neither 39- nor 48-bit second-level tables"
            ),
            Self::BeyondWidth { unit } => write!(
                f,
                "VT-d unit {unit} translates 39 bits, and memory lies above 512 GiB"
            ),
            Self::Map(e) => write!(f, "DMA tables: {e}"),
            Self::MapRegisters(e) => write!(f, "VT-d registers: {e}"),
            Self::TooFragmented => write!(f, "the DMA map has too many pieces"),
            Self::Unit { unit, error } => write!(f, "VT-d unit {unit}: {error}"),
        }
    }
}

impl From<CapacityExceeded> for IommuError {
    fn from(_: CapacityExceeded) -> Self {
        IommuError::TooFragmented
    }
}

/// Refuses units whose registers the firmware's memory map calls RAM:
/// taking them would take RAM from the cloud VM and map it as registers.
pub fn check_units(units: &[RemapUnit], ram: &RangeSet) -> Result<(), IommuError> {
    match units.iter().position(|u| ram.overlaps(u.registers)) {
        Some(unit) => Err(IommuError::RegistersInRam { unit }),
        None => Ok(()),
    }
}

/// What devices may reach: the regions EPT01 maps for the cloud VM,
/// plus the RMRR regions devices keep using for the firmware, minus L0's
/// frames. Also returns how many RMRR regions had to be cut (they overlap
/// L0: a device using them will fault rather than reach L0).
pub fn dma_map(
    l1_regions: impl Iterator<Item = Range>,
    reserved: &[Range],
    l0: &RangeSet,
) -> Result<(RangeSet, usize), IommuError> {
    let mut map = RangeSet::new();
    for r in l1_regions.chain(reserved.iter().copied()) {
        map.insert(r)?;
    }
    for r in l0.iter() {
        map.remove(r)?;
    }
    let cut = reserved.iter().filter(|&&r| l0.overlaps(r)).count();
    Ok((map, cut))
}

/// What the units now do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isolation {
    pub units: usize,
    /// The largest page the tables use (the smallest any unit allows).
    pub page: PageSize,
}

/// Builds the tables that map `dma` identity and makes every unit
/// translate through them. `flush_caches` writes the CPU caches back to
/// memory, for units whose walks do not snoop them.
pub fn protect<M: TableMemory, U: UnitRegisters>(
    mem: &mut M,
    units: &mut [U],
    dma: &RangeSet,
    flush_caches: impl FnOnce(),
) -> Result<Isolation, IommuError> {
    let caps: Vec<Caps> = units.iter_mut().map(|u| Caps::read(u)).collect();
    let page = if caps.iter().all(Caps::pages_1g) {
        PageSize::Size1G
    } else if caps.iter().all(Caps::pages_2m) {
        PageSize::Size2M
    } else {
        PageSize::Size4K
    };
    let out_of_memory = IommuError::Map(MapError::OutOfMemory);
    let tree = mem.alloc_table().ok_or(out_of_memory)?;
    for r in dma.iter() {
        map(mem, &SecondLevel, tree, r.start, r.start, r.len(), (), page)
            .map_err(IommuError::Map)?;
    }
    let mut roots = Vec::new();
    for (unit, c) in caps.iter().enumerate() {
        let aw = match (c.four_level(), c.three_level()) {
            (true, _) => AddressWidth::Bits48,
            (false, true) => AddressWidth::Bits39,
            (false, false) => return Err(IommuError::NoTableFormat { unit }),
        };
        let walk_from = walk_root(mem, tree, aw).ok_or(IommuError::BeyondWidth { unit })?;
        roots.push(root_table(mem, walk_from, aw).ok_or(out_of_memory)?);
    }
    if !caps.iter().all(Caps::coherent) {
        flush_caches();
    }
    for (unit, (u, root)) in units.iter_mut().zip(roots).enumerate() {
        enable(u, root).map_err(|error| IommuError::Unit { unit, error })?;
    }
    Ok(Isolation {
        units: units.len(),
        page,
    })
}

#[cfg(test)]
mod tests {
    use super::registers::tests::ModelUnit;
    use super::registers::{command, UnitError};
    use super::tables::{context_entry, root_entry};
    use super::*;
    use crate::mm::paging::tests::FakeTables;
    use crate::mm::paging::{translate, ADDR_MASK};

    const POOL: Range = Range::new(0x1de0_0000, 0x1fe0_0000);
    const UNIT_REGS: Range = Range::new(0xfed9_0000, 0xfed9_1000);

    fn l0() -> RangeSet {
        let mut s = RangeSet::new();
        s.insert(POOL).unwrap();
        s.insert(UNIT_REGS).unwrap();
        s
    }

    #[test]
    fn units_with_registers_in_ram_are_refused() {
        let unit = |base| RemapUnit {
            registers: Range::new(base, base + 0x1000),
            segment: 0,
            include_pci_all: true,
        };
        let mut ram = RangeSet::new();
        ram.insert(Range::new(0, 0x8000_0000)).unwrap();
        assert_eq!(check_units(&[unit(0xfed9_0000)], &ram), Ok(()));
        assert_eq!(
            check_units(&[unit(0xfed9_0000), unit(0x7fff_f000)], &ram),
            Err(IommuError::RegistersInRam { unit: 1 })
        );
    }

    #[test]
    fn the_map_is_ept01s_plus_rmrrs_minus_l0() {
        let l1 = [Range::new(0, 0x1de0_0000), Range::new(0x1fe0_0000, 1 << 32)];
        let rmrr = [
            Range::new(0x1_2000_0000, 0x1_2010_0000),
            Range::new(0x1fd0_0000, 0x1de1_0000),
        ];
        let (m, cut) = dma_map(l1.iter().copied(), &rmrr, &l0()).unwrap();
        assert!(!m.overlaps(POOL) && !m.overlaps(UNIT_REGS));
        assert!(m.contains(0x1_2000_0000) && m.contains(0x1000) && m.contains(0xfed8_f000));
        assert_eq!(cut, 1, "the RMRR reaching into the pool is cut");
    }

    /// Where a device's DMA to `addr` goes through `unit`'s tables.
    fn dma(m: &mut FakeTables, u: &ModelUnit, bus: usize, devfn: usize, addr: u64) -> Option<u64> {
        let root = u.root_in_use.unwrap();
        let r = m.table(root)[2 * bus];
        let c = m.table(r & ADDR_MASK)[2 * devfn..2 * devfn + 2].to_vec();
        assert_eq!(c[0] & 1, 1, "present");
        assert_eq!(c[1] & 7, 2, "a 48-bit unit walks 4 levels");
        translate(m, &SecondLevel, c[0] & ADDR_MASK, addr).map(|l| l.pa)
    }

    #[test]
    fn every_unit_translates_all_but_l0() {
        let mut m = FakeTables::default();
        let l1 = [Range::new(0, 0x1de0_0000), Range::new(0x1fe0_0000, 1 << 32)];
        let (map, _) = dma_map(l1.iter().copied(), &[], &l0()).unwrap();
        let mut units = [ModelUnit::new(), ModelUnit::new()];
        units[1].ecap &= !1; // not coherent
        units[1].cap &= !(1 << 35); // no 1 GiB pages
        let mut flushed = false;
        let done = protect(&mut m, &mut units, &map, || flushed = true).unwrap();
        assert_eq!(
            done,
            Isolation {
                units: 2,
                page: PageSize::Size2M
            }
        );
        assert!(
            flushed,
            "a unit that does not snoop sees the tables in memory"
        );
        for u in &units {
            assert_ne!(u.gsts & command::TRANSLATION_ENABLE, 0);
            for (bus, devfn) in [(0, 0), (0, 0x10), (3, 0xff), (255, 7)] {
                assert_eq!(dma(&mut m, u, bus, devfn, 0x1234), Some(0x1234));
                assert_eq!(dma(&mut m, u, bus, devfn, POOL.start), None, "L0's pool");
                assert_eq!(dma(&mut m, u, bus, devfn, POOL.end - 8), None);
                assert_eq!(dma(&mut m, u, bus, devfn, UNIT_REGS.start + 0x18), None);
                assert_eq!(dma(&mut m, u, bus, devfn, POOL.end), Some(POOL.end));
            }
        }
    }

    #[test]
    fn a_39_bit_unit_shares_the_tree_below_512_gib() {
        let mut m = FakeTables::default();
        let mut map = RangeSet::new();
        map.insert(Range::new(0, 1 << 32)).unwrap();
        let mut units = [ModelUnit::new()];
        units[0].cap &= !(0b100 << 8); // SAGAW: 39 bits only
        protect(&mut m, &mut units, &map, || {}).unwrap();
        let root = units[0].root_in_use.unwrap();
        let context = m.table(root)[0] & ADDR_MASK;
        assert_eq!(m.table(root)[..2], root_entry(context));
        let c = [m.table(context)[0], m.table(context)[1]];
        assert_eq!(c[1] & 7, 1, "AW 39 bits");
        let level3 = c[0] & ADDR_MASK;
        assert_eq!(c, context_entry(level3, AddressWidth::Bits39));
        assert_eq!(m.table(level3)[3], 0xc000_0083, "the 4th GiB, identity");

        map.insert(Range::new(1 << 40, (1 << 40) + 0x1000)).unwrap();
        let mut m = FakeTables::default();
        let mut units = [ModelUnit::new()];
        units[0].cap &= !(0b100 << 8);
        assert_eq!(
            protect(&mut m, &mut units, &map, || {}),
            Err(IommuError::BeyondWidth { unit: 0 })
        );
        assert_eq!(units[0].writes, [], "nothing programmed");
    }

    #[test]
    fn failures_name_the_unit_and_leave_it_off() {
        let mut map = RangeSet::new();
        map.insert(Range::new(0, 1 << 30)).unwrap();
        let mut units = [ModelUnit::new(), ModelUnit::new()];
        units[1].cap &= !(0b110 << 8);
        let r = protect(&mut FakeTables::default(), &mut units, &map, || {});
        assert_eq!(r, Err(IommuError::NoTableFormat { unit: 1 }));
        assert!(
            units.iter().all(|u| u.writes.is_empty()),
            "checked before any is programmed"
        );

        let mut units = [ModelUnit::new(), ModelUnit::new()];
        units[1].stuck = command::TRANSLATION_ENABLE;
        let r = protect(&mut FakeTables::default(), &mut units, &map, || {});
        assert_eq!(
            r,
            Err(IommuError::Unit {
                unit: 1,
                error: UnitError::Timeout("enabling translation")
            })
        );
        assert!(r.unwrap_err().to_string().contains("VT-d unit 1"));
        let mut m = FakeTables::default();
        m.limit = Some(3);
        assert_eq!(
            protect(&mut m, &mut [ModelUnit::new()], &map, || {}),
            Err(IommuError::Map(MapError::OutOfMemory))
        );
    }
}
