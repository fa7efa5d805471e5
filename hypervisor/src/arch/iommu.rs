//! The privileged half of DMA isolation (`crate::iommu`): the VT-d units'
//! register pages mapped uncached into L0's page tables, and the MMIO
//! accesses to them. Untested on hardware (docs/bare-metal.md).

use alloc::vec::Vec;

use boot::memmap::RangeSet;

use super::cpu;
use super::pool::PoolTables;
use crate::acpi::dmar::RemapUnit;
use crate::iommu::registers::UnitRegisters;
use crate::iommu::{self, IommuError, Isolation};
use crate::mm::paging::{self, Ia32e, MapError, PageAttr, PageSize};

/// A unit's register set, mapped by [`map_registers`].
pub struct MmioUnit {
    base: u64,
    len: u32,
}

impl MmioUnit {
    fn at(&self, offset: u32, width: u32) -> u64 {
        // The logic never names an offset beyond `len` (it checks ECAP's
        // IOTLB offset against it); a bug must not reach another device.
        assert!(
            offset + width <= self.len,
            "VT-d register {offset:#x} outside the unit"
        );
        self.base + offset as u64
    }
}

impl UnitRegisters for MmioUnit {
    fn size(&self) -> u32 {
        self.len
    }
    fn read32(&mut self, offset: u32) -> u32 {
        let a = self.at(offset, 4);
        // SAFETY: inside the unit's register set, mapped uncached by
        // map_registers; an aligned 32-bit read as the spec requires.
        unsafe { core::ptr::read_volatile(a as *const u32) }
    }
    fn write32(&mut self, offset: u32, value: u32) {
        let a = self.at(offset, 4);
        // SAFETY: as in read32; L0 owns the units (hidden from L1).
        unsafe { core::ptr::write_volatile(a as *mut u32, value) }
    }
    fn read64(&mut self, offset: u32) -> u64 {
        let a = self.at(offset, 8);
        // SAFETY: as in read32, 64-bit aligned.
        unsafe { core::ptr::read_volatile(a as *const u64) }
    }
    fn write64(&mut self, offset: u32, value: u64) {
        let a = self.at(offset, 8);
        // SAFETY: as in write32, 64-bit aligned.
        unsafe { core::ptr::write_volatile(a as *mut u64, value) }
    }
}

/// Maps each unit's register set uncached at its own address in L0's
/// page tables (before the other CPUs start: they share the tables).
fn map_registers(units: &[RemapUnit]) -> Result<Vec<MmioUnit>, MapError> {
    let mmio = PageAttr {
        writable: true,
        executable: false,
        uncached: true,
    };
    let root = cpu::read_cr3() & paging::ADDR_MASK;
    units
        .iter()
        .map(|u| {
            let r = u.registers;
            paging::map(
                &mut PoolTables,
                &Ia32e,
                root,
                r.start,
                r.start,
                r.len(),
                mmio,
                PageSize::Size4K,
            )?;
            Ok(MmioUnit {
                base: r.start,
                len: r.len() as u32,
            })
        })
        .collect()
}

/// Makes every unit keep DMA to what `dma` lists.
pub fn protect(units: &[RemapUnit], dma: &RangeSet) -> Result<Isolation, IommuError> {
    let mut mmio = map_registers(units).map_err(IommuError::MapRegisters)?;
    iommu::protect(&mut PoolTables, &mut mmio, dma, cpu::wbinvd)
}
