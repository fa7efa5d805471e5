//! Loaders that prepare the cloud VM (L1) to start.
//!
//! A loader turns an image and its modules into a [`LoadPlan`]: the bytes to
//! put at which guest-physical addresses and the CPU state to start in. It
//! never touches memory itself, so every placement rule is tested on the
//! host; L0 carries the plan out through its guest-memory layer.

use alloc::borrow::Cow;
use alloc::vec::Vec;
use core::fmt;

use crate::elf::ElfError;
use crate::memmap::{CapacityExceeded, Range, RangeSet};
use crate::multiboot2::{MemoryRegion, MEMORY_AVAILABLE};

pub mod linux;
pub mod multiboot;

/// A module handed on to L1, with the command line GRUB gave it (its
/// leading `l1.module` word removed).
#[derive(Clone, Copy, Debug)]
pub struct ModuleImage<'a> {
    pub data: &'a [u8],
    pub cmdline: &'a str,
}

/// One write into L1's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write<'a> {
    Bytes { gpa: u64, data: Cow<'a, [u8]> },
    Zero { gpa: u64, len: u64 },
}

impl Write<'_> {
    /// The guest-physical range the write covers.
    pub fn range(&self) -> Range {
        match self {
            Write::Bytes { gpa, data } => Range::new(*gpa, gpa + data.len() as u64),
            Write::Zero { gpa, len } => Range::new(*gpa, gpa + len),
        }
    }
}

/// The CPU state L1 starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Multiboot (v1) machine state (specification 3.2): 32-bit protected
    /// mode, paging off, flat 4 GiB code and data segments, interrupts off,
    /// EAX = 0x2badb002, EBX = the information structure.
    Multiboot { eip: u32, ebx: u32 },
    /// Linux 64-bit boot protocol state (boot.rst, "64-bit Boot Protocol"):
    /// long mode with paging through `cr3` (identity over the kernel, zero
    /// page and command line), a GDT at `gdt_base` with __BOOT_CS 0x10 and
    /// __BOOT_DS 0x18, interrupts off, RSI = the zero page.
    Linux {
        rip: u64,
        rsi: u64,
        rsp: u64,
        cr3: u64,
        gdt_base: u64,
        gdt_limit: u16,
    },
}

/// Everything needed to start L1.
#[derive(Clone, Debug)]
pub struct LoadPlan<'a> {
    pub writes: Vec<Write<'a>>,
    pub entry: Entry,
}

/// Why L1 could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// No multiboot header with a valid checksum in the first 8 KiB.
    NoMultibootHeader,
    /// The header requires a feature (flag bit) this loader does not give.
    UnsupportedFlags(u32),
    /// The a.out-kludge address fields are inconsistent.
    BadAddressFields,
    Elf(ElfError),
    /// A kernel segment lies outside the RAM L1 may use.
    SegmentNotRam(Range),
    /// Nowhere to put this many bytes in L1's RAM below 4 GiB.
    NoRoom {
        what: &'static str,
        size: u64,
    },
    /// The memory map is too fragmented.
    Capacity,
}

impl From<ElfError> for LoadError {
    fn from(e: ElfError) -> Self {
        LoadError::Elf(e)
    }
}

impl From<CapacityExceeded> for LoadError {
    fn from(_: CapacityExceeded) -> Self {
        LoadError::Capacity
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoMultibootHeader => write!(
                f,
                "no multiboot header (magic 0x1badb002 with a valid checksum) in the first 8 KiB"
            ),
            Self::UnsupportedFlags(bits) => write!(
                f,
                "multiboot header requires flag bits {bits:#x} that L0 does not support"
            ),
            Self::BadAddressFields => write!(
                f,
                "multiboot header address fields are inconsistent with the image"
            ),
            Self::Elf(e) => write!(f, "{e}"),
            Self::SegmentNotRam(r) => write!(
                f,
                "kernel segment {r} is not RAM that L1 may use (L0 owns it, or it is not RAM)"
            ),
            Self::NoRoom { what, size } => write!(
                f,
                "no room for {what} ({size} bytes) in L1's RAM below 4 GiB"
            ),
            Self::Capacity => write!(f, "memory map too fragmented"),
        }
    }
}

/// The usable RAM of a memory map, page-aligned inward.
pub fn usable_ram(map: &[MemoryRegion]) -> Result<RangeSet, CapacityExceeded> {
    let mut ram = RangeSet::new();
    for r in map.iter().filter(|r| r.kind == MEMORY_AVAILABLE) {
        ram.insert(Range::new(r.base, r.base.saturating_add(r.len)).shrink_to_pages())?;
    }
    Ok(ram)
}
