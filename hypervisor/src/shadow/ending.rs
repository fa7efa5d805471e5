//! VMCLEARs whose meaning L0 learns a moment later. KVM moves a vCPU
//! between CPUs with a VMCLEAR on the old CPU and a VMPTRLD and VMLAUNCH
//! on the new one, microseconds apart; it frees a vCPU with a VMCLEAR
//! alone. So a VMCLEAR is carried out for the VM's identity (which can end
//! the VM, shadow/identity.rs rule 3) only when its VMCS12 is not entered
//! again with the same EPT12 root before a deadline; entered with another
//! root, the page was reused for another VM and the clear is carried out
//! at once.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// What the next entry with a VMCS12 whose VMCLEAR is pending means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reentry {
    /// No VMCLEAR of it is pending.
    NotPending,
    /// The same VM's vCPU, moved: the VMCLEAR is void.
    Moved,
    /// Another VM's: the VMCLEAR is carried out first.
    Reused,
}

#[derive(Default)]
pub struct Endings {
    /// VMCS12 → (its EPT12 root when cleared, deadline in TSC ticks).
    pending: BTreeMap<u64, (Option<u64>, u64)>,
}

impl Endings {
    /// L1 VMCLEARed `vmcs12`, last entered with EPT12 root `root`.
    pub fn defer(&mut self, vmcs12: u64, root: Option<u64>, deadline: u64) {
        self.pending.insert(vmcs12, (root, deadline));
    }

    /// `vmcs12` is entered with EPT12 root `root`; it is no longer pending.
    pub fn reentry(&mut self, vmcs12: u64, root: Option<u64>) -> Reentry {
        match self.pending.remove(&vmcs12) {
            None => Reentry::NotPending,
            Some((r, _)) if r == root => Reentry::Moved,
            Some(_) => Reentry::Reused,
        }
    }

    /// The VMCLEARs whose deadline has passed at `now`, taken.
    pub fn due(&mut self, now: u64) -> Vec<u64> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, &(_, deadline))| now >= deadline)
            .map(|(&v, _)| v)
            .collect();
        for v in &due {
            self.pending.remove(v);
        }
        due
    }

    pub fn is_pending(&self, vmcs12: u64) -> bool {
        self.pending.contains_key(&vmcs12)
    }

    /// L1 left VMX operation: nothing is pending any more.
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_voids_the_clear_a_reuse_does_not() {
        let mut e = Endings::default();
        e.defer(0x1000, Some(0x50_0000), 100);
        e.defer(0x2000, Some(0x60_0000), 100);
        e.defer(0x3000, None, 200);
        assert_eq!(e.reentry(0x1000, Some(0x50_0000)), Reentry::Moved);
        assert_eq!(e.reentry(0x2000, Some(0x70_0000)), Reentry::Reused);
        assert_eq!(e.reentry(0x2000, Some(0x70_0000)), Reentry::NotPending);
        assert_eq!(e.due(199), Vec::<u64>::new());
        assert!(e.is_pending(0x3000));
        assert_eq!(e.due(200), vec![0x3000]);
        assert!(!e.is_pending(0x3000));
    }
}
