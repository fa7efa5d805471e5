//! The ACPI tables L0 reads at boot (ACPI 6.5 chapter 5): from the RSDP the
//! loader handed over, through the XSDT (or RSDT), to the MADT, whose
//! processor entries name the host's CPUs, and the DMAR, which names its
//! DMA-remapping units. Pure parsing over a reader of
//! physical memory, so every malformed table is tried on the host.

pub mod dmar;
pub mod madt;
pub mod spmi;

use alloc::vec;
use core::fmt;

/// Why the tables could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// The RSDP is short, has the wrong signature or checksum.
    BadRsdp,
    /// Physical memory at this address could not be read.
    Unreadable(u64),
    /// A table whose checksum, signature or length is wrong.
    BadTable([u8; 4], u64),
    /// No table with this signature.
    Missing([u8; 4]),
    /// An entry of the MADT runs past the table's end or has length < 2.
    BadEntry { offset: usize },
}

fn sig(s: &[u8; 4]) -> &str {
    core::str::from_utf8(s).unwrap_or("????")
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcpiError::BadRsdp => write!(f, "the RSDP is malformed"),
            AcpiError::Unreadable(a) => write!(f, "cannot read ACPI memory at {a:#x}"),
            AcpiError::BadTable(s, a) => write!(f, "the {} table at {a:#x} is malformed", sig(s)),
            AcpiError::Missing(s) => write!(f, "no {} table", sig(s)),
            AcpiError::BadEntry { offset } => {
                write!(f, "the MADT entry at offset {offset} is malformed")
            }
        }
    }
}

/// Physical memory as ACPI parsing reads it; false where it cannot.
pub trait PhysRead {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool;
}

impl<F: FnMut(u64, &mut [u8]) -> bool> PhysRead for F {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
        self(addr, buf)
    }
}

const HEADER: usize = 36;
/// No table L0 reads is larger; a bigger length is a corrupt header.
const MAX_TABLE: usize = 1 << 20;

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)) == 0
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32_at(b, o)) | u64::from(u32_at(b, o + 4)) << 32
}

/// Reads the table at `addr` whole, checking its signature, length and checksum.
fn table(
    mem: &mut impl PhysRead,
    addr: u64,
    want: [u8; 4],
) -> Result<alloc::vec::Vec<u8>, AcpiError> {
    let mut h = [0u8; HEADER];
    mem.read(addr, &mut h)
        .then_some(())
        .ok_or(AcpiError::Unreadable(addr))?;
    let len = u32_at(&h, 4) as usize;
    if h[..4] != want || !(HEADER..=MAX_TABLE).contains(&len) {
        return Err(AcpiError::BadTable(want, addr));
    }
    let mut t = vec![0u8; len];
    mem.read(addr, &mut t)
        .then_some(())
        .ok_or(AcpiError::Unreadable(addr))?;
    if !checksum_ok(&t) {
        return Err(AcpiError::BadTable(want, addr));
    }
    Ok(t)
}

/// A table as read, and where it lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub addr: u64,
    pub bytes: alloc::vec::Vec<u8>,
}

/// Sets the checksum byte (offset 9) of a table L0 changed.
pub fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    table[9] = 0u8.wrapping_sub(sum);
}

/// Finds the table with signature `want` through the RSDP: the XSDT's
/// 64-bit pointers when the RSDP has one (revision 2), the RSDT's otherwise.
pub fn find(rsdp: &[u8], mem: &mut impl PhysRead, want: [u8; 4]) -> Result<Table, AcpiError> {
    scan(rsdp, mem, want, true)?
        .into_iter()
        .next()
        .ok_or(AcpiError::Missing(want))
}

/// Every table with signature `want` (SPMI has one per interface), in
/// the root table's order; empty when there is none.
pub fn find_all(
    rsdp: &[u8],
    mem: &mut impl PhysRead,
    want: [u8; 4],
) -> Result<alloc::vec::Vec<Table>, AcpiError> {
    scan(rsdp, mem, want, false)
}

/// The root table's entries with signature `want`, up to the first when
/// `first_only` (the entries after it are not read).
fn scan(
    rsdp: &[u8],
    mem: &mut impl PhysRead,
    want: [u8; 4],
    first_only: bool,
) -> Result<alloc::vec::Vec<Table>, AcpiError> {
    if rsdp.len() < 20 || &rsdp[..8] != b"RSD PTR " || !checksum_ok(&rsdp[..20]) {
        return Err(AcpiError::BadRsdp);
    }
    let xsdt = if rsdp[15] >= 2 && rsdp.len() >= 36 {
        let len = (u32_at(rsdp, 20) as usize).min(rsdp.len());
        if len < 36 || !checksum_ok(&rsdp[..len]) {
            return Err(AcpiError::BadRsdp);
        }
        Some(u64_at(rsdp, 24)).filter(|&a| a != 0)
    } else {
        None
    };
    let (root, width) = match xsdt {
        Some(a) => (table(mem, a, *b"XSDT")?, 8),
        None => (table(mem, u64::from(u32_at(rsdp, 16)), *b"RSDT")?, 4),
    };
    let mut found = alloc::vec::Vec::new();
    for o in (HEADER..root.len() - (root.len() - HEADER) % width).step_by(width) {
        let addr = if width == 8 {
            u64_at(&root, o)
        } else {
            u64::from(u32_at(&root, o))
        };
        let mut s = [0u8; 4];
        mem.read(addr, &mut s)
            .then_some(())
            .ok_or(AcpiError::Unreadable(addr))?;
        if s == want {
            found.push(table(mem, addr, want).map(|bytes| Table { addr, bytes })?);
            if first_only {
                break;
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
pub mod tests;
