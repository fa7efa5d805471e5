//! L1's local APIC (xAPIC MMIO at its architectural base, identity-mapped
//! in L1): a one-shot timer as an interrupt source L1 controls.

use crate::io::cpuid;

use super::cpu;

const IA32_APIC_BASE: u32 = 0x1b;
pub const BASE: u64 = 0xfee0_0000;
const EOI: u64 = 0xb0;
const SVR: u64 = 0xf0;
const ISR: u64 = 0x100;
const IRR: u64 = 0x200;
const LVT_TIMER: u64 = 0x320;
const INITIAL_COUNT: u64 = 0x380;
const DIVIDE: u64 = 0x3e0;

fn read(off: u64) -> u32 {
    // SAFETY: the xAPIC page is identity-mapped and checked usable by
    // `usable()` before any register is touched.
    unsafe { core::ptr::read_volatile((BASE + off) as *const u32) }
}

fn write(off: u64, v: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((BASE + off) as *mut u32, v) }
}

/// Whether the xAPIC can be used here, or why not.
pub fn usable() -> Result<(), &'static str> {
    if cpuid(1, 0)[3] & (1 << 9) == 0 {
        return Err("no local APIC (CPUID.1:EDX[9] clear)");
    }
    let mut base = 0;
    // SAFETY: reading IA32_APIC_BASE; a fault is caught and reported.
    if crate::faults::expect_fault(2, || base = unsafe { cpu::rdmsr(IA32_APIC_BASE) }).is_some() {
        return Err("IA32_APIC_BASE faults");
    }
    if base & (1 << 10) != 0 {
        return Err("the local APIC is in x2APIC mode");
    }
    if base & (1 << 11) == 0 {
        return Err("the local APIC is globally disabled");
    }
    if base & 0xf_ffff_f000 != BASE {
        return Err("the local APIC is not at 0xfee00000");
    }
    Ok(())
}

/// Software-enables the APIC (spurious vector 0xff).
pub fn enable() {
    write(SVR, read(SVR) | 0x1ff);
}

/// Arms the timer: one shot after `count` ticks (divide by 1), `vector`.
pub fn oneshot(vector: u8, count: u32) {
    write(DIVIDE, 0xb);
    write(LVT_TIMER, vector as u32);
    write(INITIAL_COUNT, count);
}

/// Stops and masks the timer.
pub fn stop() {
    write(INITIAL_COUNT, 0);
    write(LVT_TIMER, 1 << 16);
}

pub fn eoi() {
    write(EOI, 0);
}

/// Whether `vector` is pending in the IRR.
pub fn pending(vector: u8) -> bool {
    read(IRR + 0x10 * (vector as u64 / 32)) & (1 << (vector % 32)) != 0
}

/// Whether `vector` is in service (delivered by the APIC, not yet EOIed).
pub fn in_service(vector: u8) -> bool {
    read(ISR + 0x10 * (vector as u64 / 32)) & (1 << (vector % 32)) != 0
}

/// A one-shot LAPIC timer that ends an L2 halt the check expected to end
/// otherwise (an HLT exit, the preemption timer): with external-interrupt
/// exiting it turns a hang into an exit with reason 1. Dropping it stops
/// the timer and lets L1 take an interrupt left pending.
pub struct Watchdog(bool);

impl Watchdog {
    /// Arms it for `count` timer ticks, if the LAPIC can be used.
    pub fn arm(count: u32) -> Watchdog {
        if usable().is_err() {
            return Watchdog(false);
        }
        enable();
        oneshot(crate::faults::TIMER_VECTOR, count);
        Watchdog(true)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.0 {
            stop();
            if pending(crate::faults::TIMER_VECTOR) {
                // SAFETY: L1's IDT has the timer vector (it counts and EOIs);
                // one instruction window.
                unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
            }
        }
    }
}
