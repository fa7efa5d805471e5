//! The MADT's processor entries (ACPI 6.5 §5.2.12): the local APIC (type 0,
//! 8-bit IDs) and local x2APIC (type 9, 32-bit IDs) structures. A CPU is
//! started when its entry is enabled; "online capable" entries are CPUs
//! the firmware may hot-add later, which L0 does not take.

use alloc::vec::Vec;

use super::{fix_checksum, u32_at, AcpiError, HEADER};

const LOCAL_APIC: u8 = 0;
const LOCAL_X2APIC: u8 = 9;
const ENABLED: u32 = 1;

/// A CPU the firmware lists as present and enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MadtCpu {
    pub apic_id: u32,
    /// ACPI processor UID (for diagnostics).
    pub uid: u32,
}

/// Marks the CPUs with these APIC IDs disabled (their entries' enabled
/// flag cleared) and fixes the checksum: the cloud VM does not wait for
/// CPUs L0 keeps. Returns how many entries changed.
pub fn disable(madt: &mut [u8], ids: &[u32]) -> usize {
    let mut o = HEADER + 8;
    let mut n = 0;
    while o + 2 <= madt.len() {
        let (kind, len) = (madt[o], madt[o + 1] as usize);
        if len < 2 || o + len > madt.len() {
            break;
        }
        let at = match kind {
            LOCAL_APIC if len >= 8 => Some((u32::from(madt[o + 3]), o + 4)),
            LOCAL_X2APIC if len >= 16 => Some((u32_at(madt, o + 4), o + 8)),
            _ => None,
        };
        if let Some((id, flags)) = at {
            if ids.contains(&id) && madt[flags] & ENABLED as u8 != 0 {
                madt[flags] &= !(ENABLED as u8);
                n += 1;
            }
        }
        o += len;
    }
    fix_checksum(madt);
    n
}

/// The enabled CPUs of a MADT, in its order, each APIC ID once (a CPU
/// listed both as local APIC and x2APIC keeps its first entry).
pub fn cpus(madt: &[u8]) -> Result<Vec<MadtCpu>, AcpiError> {
    // The header, then the local APIC address and flags.
    let mut o = HEADER + 8;
    let mut out: Vec<MadtCpu> = Vec::new();
    while o < madt.len() {
        if o + 2 > madt.len() {
            return Err(AcpiError::BadEntry { offset: o });
        }
        let (kind, len) = (madt[o], madt[o + 1] as usize);
        if len < 2 || o + len > madt.len() {
            return Err(AcpiError::BadEntry { offset: o });
        }
        let e = &madt[o..o + len];
        let cpu = match kind {
            LOCAL_APIC if len >= 8 => Some((u32::from(e[3]), u32::from(e[2]), u32_at(e, 4))),
            LOCAL_X2APIC if len >= 16 => Some((u32_at(e, 4), u32_at(e, 12), u32_at(e, 8))),
            LOCAL_APIC | LOCAL_X2APIC => return Err(AcpiError::BadEntry { offset: o }),
            _ => None,
        };
        if let Some((apic_id, uid, flags)) = cpu {
            if flags & ENABLED != 0 && !out.iter().any(|c| c.apic_id == apic_id) {
                out.push(MadtCpu { apic_id, uid });
            }
        }
        o += len;
    }
    Ok(out)
}
