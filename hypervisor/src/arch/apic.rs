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
    /// An APIC ID above 254 cannot be named in xAPIC mode.
    NeedsX2apic(u32),
    /// The register page is not in use: the APIC is in x2APIC mode.
    NotXapic,
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
        Mode::X(pa) => xapic_send(pa, (dest >> 8) & 0xff, vector as u32),
    }
    Ok(())
}

/// An IPI through the xAPIC's ICR, as L0's own: L1 shares this ICR, and
/// an exit can come between its write of the high word (the destination)
/// and of the low word (which sends), so L0 puts L1's high word back
/// after sending. Waits (boundedly) for the APIC to take the IPI before
/// and after.
fn xapic_send(pa: u64, apic_id: u32, low: u32) {
    let (hi, lo) = (
        (pa + XAPIC_ICR_HI) as *mut u32,
        (pa + XAPIC_ICR_LO) as *mut u32,
    );
    let idle = || {
        for _ in 0..1_000_000 {
            // SAFETY: a read of the ICR on the mapped register page.
            if unsafe { core::ptr::read_volatile(lo) } & ICR_DELIVERY_PENDING == 0 {
                return;
            }
            core::hint::spin_loop();
        }
    };
    // SAFETY: the register page is mapped uncached at its identity address
    // (set_mapped); ICR high first, the low write sends, then L1's high
    // word is restored: the IPI goes only where L0 means it to.
    unsafe {
        let l1_hi = core::ptr::read_volatile(hi);
        idle();
        core::ptr::write_volatile(hi, apic_id << 24);
        core::ptr::write_volatile(lo, low);
        idle();
        core::ptr::write_volatile(hi, l1_hi);
    }
}

/// INIT (level assert) to the CPU with APIC ID `apic_id`: it stops and
/// waits for a start-up IPI.
pub fn send_init(apic_id: u32) -> Result<(), ApicError> {
    send_physical(apic_id, ICR_INIT)
}

/// A start-up IPI: the CPU with APIC ID `apic_id`, waiting after INIT,
/// starts in real mode at `vector << 12`.
pub fn send_startup(apic_id: u32, vector: u8) -> Result<(), ApicError> {
    send_physical(apic_id, ICR_STARTUP | vector as u32)
}

const ICR_INIT: u32 = 0x4500;
const ICR_STARTUP: u32 = 0x4600;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;

/// An IPI to one CPU by physical APIC ID, low ICR word `low`; in xAPIC
/// mode waits (boundedly) until the APIC took it.
fn send_physical(apic_id: u32, low: u32) -> Result<(), ApicError> {
    match mode()? {
        // SAFETY: an ICR write in x2APIC mode; it only signals another CPU.
        Mode::X2 => unsafe { cpu::wrmsr(X2APIC_ICR, (apic_id as u64) << 32 | low as u64) },
        Mode::X(_) if apic_id > 0xfe => return Err(ApicError::NeedsX2apic(apic_id)),
        Mode::X(pa) => xapic_send(pa, apic_id, low),
    }
    Ok(())
}

/// Reads a register of the xAPIC page (this CPU's APIC) at `offset`.
pub fn xapic_read(offset: u64) -> Result<u32, ApicError> {
    match mode()? {
        Mode::X2 => Err(ApicError::NotXapic),
        // SAFETY: the register page is mapped uncached (set_mapped); the
        // offset is inside it (masked).
        Mode::X(pa) => {
            Ok(unsafe { core::ptr::read_volatile((pa + (offset & 0xff0)) as *const u32) })
        }
    }
}

/// Writes a register of the xAPIC page on L1's behalf (what L1 would have
/// written itself: machine/ap_wait.rs).
pub fn xapic_write(offset: u64, value: u32) -> Result<(), ApicError> {
    match mode()? {
        Mode::X2 => Err(ApicError::NotXapic),
        // SAFETY: as xapic_read; the write is L1's own, to its own APIC.
        Mode::X(pa) => {
            unsafe { core::ptr::write_volatile((pa + (offset & 0xff0)) as *mut u32, value) };
            Ok(())
        }
    }
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

/// L1's local APIC registers that say why interrupts may not arrive: TPR,
/// PPR, the highest vectors in service and requested, the timer (LVT,
/// initial and current count, TSC deadline). For diagnostics only.
pub fn state() -> Result<alloc::string::String, ApicError> {
    let m = mode()?;
    let reg = |off: u64| -> u64 {
        match m {
            // SAFETY: reads of x2APIC registers (MSR 0x800 + offset/16).
            Mode::X2 => unsafe { cpu::rdmsr(0x800 + (off >> 4) as u32) },
            // SAFETY: the register page is mapped uncached (set_mapped).
            Mode::X(pa) => unsafe { core::ptr::read_volatile((pa + off) as *const u32) as u64 },
        }
    };
    let top =
        |base: u64| crate::nested::posted::highest_vector(|i| reg(base + 16 * i as u64) as u32);
    // SAFETY: IA32_TSC_DEADLINE exists where the APIC timer offers it;
    // Bochs's Skylake model has it.
    let deadline = unsafe { cpu::rdmsr(0x6e0) };
    Ok(alloc::format!(
        "{} tpr={:#x} ppr={:#x} isr-top={:x?} irr-top={:x?} lvt-timer={:#x} init={:#x} cur={:#x} deadline={deadline:#x} tsc={:#x}",
        if matches!(m, Mode::X2) { "x2apic" } else { "xapic" },
        reg(0x80),
        reg(0xa0),
        top(0x100),
        top(0x200),
        reg(0x320),
        reg(0x380),
        reg(0x390),
        cpu::rdtsc()
    ))
}
