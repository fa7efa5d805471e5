//! The cloud VM's CPUs that wait for a start-up IPI, the INITs L0 keeps
//! from them, and the INIT and start-up IPIs L0 refuses because they could
//! reach a CPU that L0 does not hold.
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
//!
//! A CPU in VMX operation ignores INIT and start-up IPIs (held in VMX root,
//! or a vCPU in non-root where they exit to L0). A CPU L0 left out (it
//! failed to start or lacks what L0 needs) or never knew of (no ACPI
//! tables) does not: an INIT and start-up IPI would run L1's code there
//! outside VMX, with the whole machine in reach. On such a host L0
//! guards for good: it sees every ICR write and refuses INIT and start-up
//! IPIs unless addressed physically, without shorthand, to a vCPU of the
//! cloud VM.

use alloc::collections::BTreeSet;

/// The interrupt command register: offsets in the xAPIC page, the x2APIC MSR.
pub const XAPIC_ICR_LO: u64 = 0x300;
pub const XAPIC_ICR_HI: u64 = 0x310;
pub const X2APIC_ICR: u32 = 0x830;

const DELIVERY_MODE: u32 = 7 << 8;
const DELIVERY_INIT: u32 = 5 << 8;
const DELIVERY_STARTUP: u32 = 6 << 8;
const DESTINATION_LOGICAL: u32 = 1 << 11;
const SHORTHAND: u32 = 3 << 18;

/// What becomes of an ICR write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcrWrite {
    /// To the local APIC as written.
    Send,
    /// An INIT for a vCPU that waits for its SIPI: not sent.
    KeepInit(u32),
    /// An INIT or start-up IPI that could reach a CPU L0 does not hold:
    /// not sent.
    Refuse,
}

/// The APIC IDs of the vCPUs that wait for a SIPI, and of all vCPUs when
/// L0 guards CPUs it does not hold.
#[derive(Debug, Default)]
pub struct ApWait {
    waiting: BTreeSet<u32>,
    /// The cloud VM's vCPUs, when some CPU of the host is not L0's.
    guarded: Option<BTreeSet<u32>>,
    /// INIT and start-up IPIs refused so far.
    refused: u64,
}

impl ApWait {
    /// `apic_id` waits; true if L0 starts watching now.
    pub fn wait(&mut self, apic_id: u32) -> bool {
        let was = self.watching();
        self.waiting.insert(apic_id);
        !was
    }

    /// `apic_id` was started; true if L0 stops watching now.
    pub fn started(&mut self, apic_id: u32) -> bool {
        self.waiting.remove(&apic_id) && !self.watching()
    }

    /// Some CPU of the host is outside L0's hold: from now on only INIT and
    /// start-up IPIs to `vcpus` go out. True if L0 starts watching now.
    pub fn guard(&mut self, vcpus: BTreeSet<u32>) -> bool {
        let was = self.watching();
        self.guarded = Some(vcpus);
        !was
    }

    /// Logs a refused IPI: the first, then at each power of two (L1
    /// decides how often this happens).
    fn note_refused(&mut self, low: u32, dest: u32) {
        self.refused += 1;
        if self.refused.is_power_of_two() {
            log::warn!(
                "refused an INIT or start-up IPI of the cloud VM (ICR {low:#x}, destination {dest:#x}): it could reach a CPU L0 does not hold ({} so far)",
                self.refused
            );
        }
    }

    pub fn guarding(&self) -> bool {
        self.guarded.is_some()
    }

    /// Whether L1's ICR writes exit.
    pub fn watching(&self) -> bool {
        !self.waiting.is_empty() || self.guarded.is_some()
    }

    /// The fate of an ICR write: `low` the command, `dest` the physical
    /// destination APIC ID. Only a physically addressed INIT without
    /// shorthand is kept, and only for a waiting vCPU; a broadcast or
    /// logical INIT goes out (it reaches running CPUs too) unless L0
    /// guards: then an INIT or start-up IPI goes out only to one vCPU by
    /// its APIC ID (a broadcast ID, 0xff or 0xffffffff, is none); a
    /// refusal is counted and logged here.
    pub fn icr_write(&mut self, low: u32, dest: u32) -> IcrWrite {
        let mode = low & DELIVERY_MODE;
        let init = mode == DELIVERY_INIT;
        let physical = low & (DESTINATION_LOGICAL | SHORTHAND) == 0;
        if init && physical && self.waiting.contains(&dest) {
            return IcrWrite::KeepInit(dest);
        }
        let starts = init || mode == DELIVERY_STARTUP;
        match &self.guarded {
            Some(vcpus) if starts && !(physical && vcpus.contains(&dest)) => {
                self.note_refused(low, dest);
                IcrWrite::Refuse
            }
            _ => IcrWrite::Send,
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
        assert!(!w.watching());
        assert!(!w.started(7));
    }

    #[test]
    fn a_guard_refuses_starts_that_could_reach_cpus_l0_does_not_hold() {
        let mut w = ApWait::default();
        assert!(w.wait(1));
        assert!(!w.guard([0, 1].into()), "watching already");
        assert_eq!(w.icr_write(0xc500, 1), IcrWrite::KeepInit(1));
        assert!(!w.started(1), "the guard keeps L0 watching");
        assert!(w.watching() && w.guarding());
        // INIT and SIPI to a vCPU by its ID: out.
        assert_eq!(w.icr_write(0xc500, 1), IcrWrite::Send);
        assert_eq!(w.icr_write(0x0600 | 0x9a, 1), IcrWrite::Send);
        // To the CPU L0 left out (2), broadcast (0xff, 0xffffffff, the
        // shorthands) or logical: refused, INIT and SIPI alike.
        for (low, dest) in [
            (0xc500, 2),
            (0x0600 | 0x9a, 2),
            (0xc500, 0xff),
            (0x0600 | 0x9a, 0xffff_ffff),
            (0xc500 | 3 << 18, 0),
            (0x0600 | 2 << 18, 0),
            (0xc500 | 1 << 11, 1),
            (0x0600 | 1 << 11, 1),
        ] {
            assert_eq!(
                w.icr_write(low, dest),
                IcrWrite::Refuse,
                "{low:#x} to {dest:#x}"
            );
        }
        // Every other IPI goes out, whatever its destination.
        assert_eq!(w.icr_write(0x00fd | 3 << 18, 0), IcrWrite::Send);
        assert_eq!(w.icr_write(0x0400, 2), IcrWrite::Send, "an NMI");
        // Guarding from the start: watching begins with the guard.
        assert!(ApWait::default().guard([0].into()));
    }
}
