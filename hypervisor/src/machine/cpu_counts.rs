//! Each CPU's exit counts where every CPU can read them: the `stats`
//! command and the shutdown report show all CPUs, not only the one that
//! serves the management line, with each CPU's last few exits. Relaxed
//! atomics, written only by their CPU.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Exits each CPU keeps for `stats`: what a CPU that seems stuck did last.
const RECENT: usize = 4;

pub struct CpuCounts {
    pub apic_id: u32,
    l1_exits: AtomicU64,
    l2_exits: AtomicU64,
    in_l2: AtomicBool,
    /// The last exits: level (bit 63) and basic reason, and the RIP.
    recent: [(AtomicU64, AtomicU64); RECENT],
}

impl CpuCounts {
    pub fn new(apic_id: u32) -> Self {
        CpuCounts {
            apic_id,
            l1_exits: AtomicU64::new(0),
            l2_exits: AtomicU64::new(0),
            in_l2: AtomicBool::new(false),
            recent: core::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
        }
    }

    /// An exit of L2 (`l2`) or L1 on this CPU, of basic reason `reason`
    /// at `rip`.
    pub fn count(&self, l2: bool, reason: u16, rip: u64) {
        let n = if l2 { &self.l2_exits } else { &self.l1_exits };
        let i = n.fetch_add(1, Ordering::Relaxed) as usize;
        let total = i + self.other(l2).load(Ordering::Relaxed) as usize;
        let slot = &self.recent[total % RECENT];
        slot.0
            .store((l2 as u64) << 63 | reason as u64, Ordering::Relaxed);
        slot.1.store(rip, Ordering::Relaxed);
        self.in_l2.store(l2, Ordering::Relaxed);
    }

    fn other(&self, l2: bool) -> &AtomicU64 {
        if l2 {
            &self.l1_exits
        } else {
            &self.l2_exits
        }
    }
}

impl fmt::Display for CpuCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CPU APIC ID {:#x}: L1 {} exits, L2 {} exits, last in {}",
            self.apic_id,
            self.l1_exits.load(Ordering::Relaxed),
            self.l2_exits.load(Ordering::Relaxed),
            if self.in_l2.load(Ordering::Relaxed) {
                "L2"
            } else {
                "L1"
            }
        )?;
        let total = self.l1_exits.load(Ordering::Relaxed) + self.l2_exits.load(Ordering::Relaxed);
        let shown = (total as usize).min(RECENT);
        if shown > 0 {
            f.write_str("; recent")?;
        }
        // Oldest first.
        for k in (0..shown).rev() {
            let slot = &self.recent[(total as usize - 1 - k) % RECENT];
            let what = slot.0.load(Ordering::Relaxed);
            write!(
                f,
                " L{} {}@{:#x}",
                1 + (what >> 63),
                crate::vmx::exit::reason_name(what as u16),
                slot.1.load(Ordering::Relaxed)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_level() {
        let c = CpuCounts::new(3);
        assert_eq!(
            c.to_string(),
            "CPU APIC ID 0x3: L1 0 exits, L2 0 exits, last in L1"
        );
        c.count(false, 10, 0x100);
        c.count(true, 48, 0x200);
        c.count(true, 1, 0x300);
        assert_eq!(
            c.to_string(),
            "CPU APIC ID 0x3: L1 1 exits, L2 2 exits, last in L2; recent L1 CPUID@0x100 L2 EPT violation@0x200 L2 external interrupt@0x300"
        );
        for rip in 0..5 {
            c.count(false, 18, rip);
        }
        assert!(c
            .to_string()
            .ends_with("recent L1 VMCALL@0x1 L1 VMCALL@0x2 L1 VMCALL@0x3 L1 VMCALL@0x4"));
    }
}
