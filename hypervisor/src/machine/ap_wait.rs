//! The cloud VM's CPUs that wait for a start-up IPI, and the INITs L0
//! keeps from them.
//!
//! An INIT that reaches a CPU waiting in the wait-for-SIPI state is blocked
//! and held (SDM Vol. 3C 26.2): it exits as soon as the SIPI has started
//! the vCPU, before its first instruction, where on bare metal the SIPI
//! came after it and began a fresh CPU. (Bochs 2.7 goes further: it keeps
//! the INIT pending after its exit, so that vCPU never runs again.) Such
//! an INIT changes nothing — a waiting vCPU is already in the state after
//! INIT — so while any vCPU waits, L0 sees L1's interrupt-command writes
//! (xAPIC: its register page read-only in EPT01; x2APIC: the ICR's WRMSR in
//! the MSR bitmap) and keeps from the wire the INITs aimed only at
//! waiting vCPUs; every other write goes to the local APIC unchanged.

use alloc::collections::BTreeSet;

/// The interrupt command register: offsets in the xAPIC page, the x2APIC MSR.
pub const XAPIC_ICR_LO: u64 = 0x300;
pub const XAPIC_ICR_HI: u64 = 0x310;
pub const X2APIC_ICR: u32 = 0x830;

const DELIVERY_MODE: u32 = 7 << 8;
const DELIVERY_INIT: u32 = 5 << 8;
const DESTINATION_LOGICAL: u32 = 1 << 11;
const SHORTHAND: u32 = 3 << 18;

/// What becomes of an ICR write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcrWrite {
    /// To the local APIC as written.
    Send,
    /// An INIT for a vCPU that waits for its SIPI: not sent.
    KeepInit(u32),
}

/// The APIC IDs of the vCPUs that wait for a SIPI.
#[derive(Debug, Default)]
pub struct ApWait {
    waiting: BTreeSet<u32>,
}

impl ApWait {
    /// `apic_id` waits; true if it is the first (L0 starts watching).
    pub fn wait(&mut self, apic_id: u32) -> bool {
        self.waiting.insert(apic_id) && self.waiting.len() == 1
    }

    /// `apic_id` was started; true if none waits any more (L0 stops).
    pub fn started(&mut self, apic_id: u32) -> bool {
        self.waiting.remove(&apic_id) && self.waiting.is_empty()
    }

    pub fn any(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The fate of an ICR write: `low` the command, `dest` the physical
    /// destination APIC ID. Only a physically addressed INIT without
    /// shorthand is kept, and only for a waiting vCPU; a broadcast or
    /// logical INIT goes out (it reaches running CPUs too).
    pub fn icr_write(&self, low: u32, dest: u32) -> IcrWrite {
        let init = low & DELIVERY_MODE == DELIVERY_INIT;
        let physical = low & (DESTINATION_LOGICAL | SHORTHAND) == 0;
        if init && physical && self.waiting.contains(&dest) {
            IcrWrite::KeepInit(dest)
        } else {
            IcrWrite::Send
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inits_for_waiting_vcpus_are_kept_everything_else_sent() {
        let mut w = ApWait::default();
        assert!(w.wait(1));
        assert!(!w.wait(2), "already watching");
        // Linux's INIT assert (level, assert) and de-assert, physical.
        assert_eq!(w.icr_write(0xc500, 1), IcrWrite::KeepInit(1));
        assert_eq!(w.icr_write(0x8500, 2), IcrWrite::KeepInit(2));
        // The SIPI, fixed IPIs, an INIT to a running CPU, a broadcast or
        // logical INIT: on the wire.
        assert_eq!(w.icr_write(0x0600 | 0x9a, 1), IcrWrite::Send);
        assert_eq!(w.icr_write(0x00fd, 1), IcrWrite::Send);
        assert_eq!(w.icr_write(0xc500, 0), IcrWrite::Send);
        assert_eq!(w.icr_write(0xc500 | 3 << 18, 1), IcrWrite::Send);
        assert_eq!(w.icr_write(0xc500 | 1 << 11, 1), IcrWrite::Send);
        assert!(!w.started(1));
        assert_eq!(w.icr_write(0xc500, 1), IcrWrite::Send);
        assert!(w.started(2), "the last one: L0 stops watching");
        assert!(!w.any());
        assert!(!w.started(7));
    }
}
