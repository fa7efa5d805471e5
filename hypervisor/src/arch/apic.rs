//! The local APIC, which L1 owns (pass-through): L0 only sends the
//! posted-interrupt notifications a VT-d device would send, and EOIs a
//! notification it consumed in L2's place (SDM 30.6). x2APIC through MSRs,
//! xAPIC through the register page L0 maps uncached at boot.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu;

pub const IA32_APIC_BASE: u32 = 0x1b;
const X2APIC_ENABLE: u64 = 1 << 10;
const APIC_ENABLE: u64 = 1 << 11;
const X2APIC_ICR: u32 = 0x830;
const X2APIC_EOI: u32 = 0x80b;
const XAPIC_ICR_LO: u64 = 0x300;
const XAPIC_ICR_HI: u64 = 0x310;
const XAPIC_EOI: u64 = 0xb0;

/// The register page L0 mapped (0: none).
static MAPPED: AtomicU64 = AtomicU64::new(0);

/// The physical address of the APIC's register page now.
pub fn base() -> u64 {
    // SAFETY: IA32_APIC_BASE exists on every CPU with an APIC (VMX implies one).
    unsafe { cpu::rdmsr(IA32_APIC_BASE) & 0x000f_ffff_ffff_f000 }
}

/// Records that L0's page tables map the register page at `pa` uncached.
pub fn set_mapped(pa: u64) {
    MAPPED.store(pa, Ordering::Relaxed);
}

/// Why an APIC operation could not be done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// L1 disabled its APIC.
    Disabled,
    /// L1 moved the register page away from where L0 mapped it.
    Moved(u64),
}

enum Mode {
    X2,
    X(u64),
}

fn mode() -> Result<Mode, ApicError> {
    // SAFETY: as in base().
    let msr = unsafe { cpu::rdmsr(IA32_APIC_BASE) };
    if msr & APIC_ENABLE == 0 {
        return Err(ApicError::Disabled);
    }
    if msr & X2APIC_ENABLE != 0 {
        return Ok(Mode::X2);
    }
    let pa = msr & 0x000f_ffff_ffff_f000;
    if MAPPED.load(Ordering::Relaxed) != pa {
        return Err(ApicError::Moved(pa));
    }
    Ok(Mode::X(pa))
}

/// Sends a fixed, physically addressed IPI. `dest` is as in a posted-
/// interrupt descriptor's NDST: the x2APIC ID, or the xAPIC ID in bits 15:8.
pub fn send_ipi(dest: u32, vector: u8) -> Result<(), ApicError> {
    match mode()? {
        // SAFETY: a write of ICR in x2APIC mode: fixed delivery, physical
        // destination; it only raises an interrupt.
        Mode::X2 => unsafe { cpu::wrmsr(X2APIC_ICR, (dest as u64) << 32 | vector as u64) },
        Mode::X(pa) => {
            let id = (dest >> 8) & 0xff;
            // SAFETY: the register page is mapped uncached at its identity
            // address (set_mapped); ICR high first, the low write sends.
            unsafe {
                core::ptr::write_volatile((pa + XAPIC_ICR_HI) as *mut u32, id << 24);
                core::ptr::write_volatile((pa + XAPIC_ICR_LO) as *mut u32, vector as u32);
            }
        }
    }
    Ok(())
}

/// Signals the end of the interrupt in service.
pub fn eoi() -> Result<(), ApicError> {
    match mode()? {
        // SAFETY: writing 0 to EOI ends the highest in-service interrupt,
        // the one L0 just acknowledged on exit.
        Mode::X2 => unsafe { cpu::wrmsr(X2APIC_EOI, 0) },
        // SAFETY: as in send_ipi.
        Mode::X(pa) => unsafe { core::ptr::write_volatile((pa + XAPIC_EOI) as *mut u32, 0) },
    }
    Ok(())
}
