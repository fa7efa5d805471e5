//! What the boot loader left in memory: the multiboot2 information and the
//! modules. L0 reads the information where it lies, copies the modules
//! into its pool, and clears all of the loader's memory before L1 gets it.

use alloc::string::String;
use alloc::vec::Vec;

use boot::memmap::Range;
use boot::multiboot2::{self, BootInfo};

use super::fault::early_fatal;
use super::pool::alloc_frames;
use crate::mm::frames::FRAME;

/// The boot information at `addr` (checked against the entry's `magic`)
/// and the range it occupies.
pub fn boot_info(magic: u32, addr: u64) -> (BootInfo<'static>, Range) {
    if let Err(e) = multiboot2::check_entry(magic, addr) {
        early_fatal(format_args!("{e}"));
    }
    // SAFETY: the loader's pointer, below 4 GiB, identity-mapped by the entry code.
    let total = unsafe { multiboot2::total_size_at(addr as *const u8) };
    // SAFETY: the structure is `total` bytes long (bounded by parse), and
    // L0 leaves it alone until it is cleared after the last read.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            addr as *const u8,
            (total as usize).min(multiboot2::MAX_TOTAL_SIZE as usize),
        )
    };
    match BootInfo::parse(bytes) {
        Ok(b) => (b, Range::new(addr, addr + total as u64)),
        Err(e) => early_fatal(format_args!("{e}")),
    }
}

/// A boot module copied into L0's pool.
pub struct PoolModule {
    pub data: &'static [u8],
    pub cmdline: String,
    /// Where the loader had put it.
    pub loaded_at: Range,
}

/// Copies every module into the pool.
pub fn copy_modules(bi: &BootInfo) -> Vec<PoolModule> {
    bi.modules()
        .map(|m| {
            let len = (m.end - m.start) as usize;
            let at = alloc_frames(len.div_ceil(FRAME as usize).max(1), "module copy");
            // SAFETY: source is the loader's module (identity-mapped, below
            // 4 GiB), destination fresh pool frames of at least `len` bytes.
            unsafe {
                core::ptr::copy_nonoverlapping(m.start as u64 as *const u8, at as *mut u8, len)
            };
            PoolModule {
                // SAFETY: just written, never freed.
                data: unsafe { core::slice::from_raw_parts(at as *const u8, len) },
                cmdline: m.cmdline.into(),
                loaded_at: Range::new(m.start as u64, m.end as u64),
            }
        })
        .collect()
}

/// Clears a module's copy (the sealing key, once read).
pub fn wipe(m: &PoolModule) {
    // SAFETY: the copy is L0's pool memory and nothing refers to it after this.
    unsafe { core::ptr::write_bytes(m.data.as_ptr() as *mut u8, 0, m.data.len()) };
}

/// The real-mode interrupt vectors and the BIOS data area: the firmware's
/// data in usable RAM, which L1's kernel may read as on bare metal (Xen
/// places its trampoline below the extended BIOS data area the BDA names,
/// or below the base memory size it records). Never the loader's.
pub const BIOS_DATA: Range = Range {
    start: 0,
    end: 0x500,
};

/// Zeroes RAM that becomes L1's (all of it, before L1 is loaded: what L0
/// used to boot and what the loader and firmware left there), byte for
/// byte as the ranges say: a page that is partly the firmware's (the
/// extended BIOS data area after the last usable byte below 640 KiB)
/// keeps its firmware part.
///
/// # Safety
/// Nothing of L0 may be in `ranges` any more (the image was relocated, the
/// boot information and modules read or copied).
pub unsafe fn clear(ranges: impl IntoIterator<Item = Range>) {
    for r in ranges {
        // SAFETY: identity-mapped RAM L0 no longer uses (the caller).
        unsafe { core::ptr::write_bytes(r.start as *mut u8, 0, r.len() as usize) };
    }
}

/// The firmware's CPU list (the MADT's enabled CPUs) through the RSDP the
/// loader passed, with the MADT itself. Only while the entry code's
/// identity map of the first 4 GiB is live (before `image::relocate`):
/// ACPI tables are not RAM L0 maps later. Tables above 4 GiB are refused
/// as unreadable.
pub fn firmware_cpus(
    rsdp: &[u8],
) -> Result<(crate::acpi::Table, Vec<crate::acpi::madt::MadtCpu>), crate::acpi::AcpiError> {
    let madt = crate::acpi::find(rsdp, &mut read_low, *b"APIC")?;
    let cpus = crate::acpi::madt::cpus(&madt.bytes)?;
    Ok((madt, cpus))
}

/// The firmware's VT-d units (the DMAR table), which L0 takes: the table
/// is renamed where it lies, so the cloud VM finds none. None without a
/// DMAR (no VT-d, or it is off in the firmware). Same window as
/// [`firmware_cpus`].
pub fn take_dmar(
    rsdp: &[u8],
) -> Result<Option<crate::acpi::dmar::Dmar>, crate::acpi::dmar::DmarError> {
    use crate::acpi::{dmar, AcpiError};
    let mut table = match crate::acpi::find(rsdp, &mut read_low, *b"DMAR") {
        Ok(t) => t,
        Err(AcpiError::Missing(_)) => return Ok(None),
        Err(e) => return Err(dmar::DmarError::Table(e)),
    };
    let parsed = dmar::parse(&table.bytes)?;
    dmar::hide(&mut table.bytes);
    write_table(&table);
    Ok(Some(parsed))
}

/// The BMC interfaces the firmware's SPMI tables name (one per table),
/// each parsed or refused. Same window as [`firmware_cpus`].
pub fn firmware_bmcs(
    rsdp: &[u8],
) -> Result<
    Vec<Result<crate::acpi::spmi::BmcInterface, crate::acpi::spmi::SpmiError>>,
    crate::acpi::AcpiError,
> {
    let tables = crate::acpi::find_all(rsdp, &mut read_low, *b"SPMI")?;
    Ok(tables
        .iter()
        .map(|t| crate::acpi::spmi::parse(&t.bytes))
        .collect())
}

/// Writes back a table L0 changed (`acpi::madt::disable`,
/// `acpi::dmar::hide`): the cloud VM reads the firmware's tables where
/// they lie. Same window as [`firmware_cpus`].
pub fn write_table(table: &crate::acpi::Table) {
    if below_4g(table.addr, table.bytes.len()).is_some() {
        // SAFETY: the table was read from there (firmware memory below
        // 4 GiB, identity-mapped by the entry code); same length.
        unsafe {
            core::ptr::copy_nonoverlapping(
                table.bytes.as_ptr(),
                table.addr as *mut u8,
                table.bytes.len(),
            )
        };
    }
}

/// Reads firmware memory below 4 GiB (false above), while the entry
/// code's identity map is live.
fn read_low(addr: u64, buf: &mut [u8]) -> bool {
    if below_4g(addr, buf.len()).is_none() {
        return false;
    }
    // SAFETY: below 4 GiB, identity-mapped by the entry code; reads only.
    unsafe { core::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
    true
}

fn below_4g(addr: u64, len: usize) -> Option<u64> {
    addr.checked_add(len as u64).filter(|&end| end <= 1 << 32)
}
