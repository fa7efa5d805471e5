//! Each CPU's exit counts where every CPU can read them: the `stats`
//! command and the shutdown report show all CPUs, not only the one that
//! serves the management line. Relaxed atomics, written only by their CPU.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub struct CpuCounts {
    pub apic_id: u32,
    l1_exits: AtomicU64,
    l2_exits: AtomicU64,
    in_l2: AtomicBool,
}

impl CpuCounts {
    pub fn new(apic_id: u32) -> Self {
        CpuCounts {
            apic_id,
            l1_exits: AtomicU64::new(0),
            l2_exits: AtomicU64::new(0),
            in_l2: AtomicBool::new(false),
        }
    }

    /// An exit of L2 (`l2`) or L1 on this CPU.
    pub fn count(&self, l2: bool) {
        let n = if l2 { &self.l2_exits } else { &self.l1_exits };
        n.fetch_add(1, Ordering::Relaxed);
        self.in_l2.store(l2, Ordering::Relaxed);
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
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_level() {
        let c = CpuCounts::new(3);
        c.count(false);
        c.count(true);
        c.count(true);
        assert_eq!(
            c.to_string(),
            "CPU APIC ID 0x3: L1 1 exits, L2 2 exits, last in L2"
        );
    }
}
