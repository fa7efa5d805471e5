//! Which CPU has each VMCS12 current. A vCPU caches its current VMCS12's
//! contents (`nested/instr.rs`) from VMPTRLD until it loads another, clears
//! it or leaves VMX operation; a VMCS12 current on two CPUs at once would
//! have two caches, each written back over the other. The SDM leaves
//! loading or clearing a VMCS that is current on another processor
//! undefined; L0 refuses it (docs/nested-vmx.md), so a VMCS12 moves between
//! CPUs only as KVM moves it: VMCLEAR on the old CPU, VMPTRLD on the new.

use alloc::collections::BTreeMap;

#[derive(Default)]
pub struct Vmcs12Owners {
    /// VMCS12 address → APIC ID of the CPU where it is current.
    owner: BTreeMap<u64, u32>,
}

impl Vmcs12Owners {
    /// The CPU other than `cpu` where `vmcs12` is current, if any.
    pub fn elsewhere(&self, vmcs12: u64, cpu: u32) -> Option<u32> {
        self.owner.get(&vmcs12).copied().filter(|&c| c != cpu)
    }

    /// `cpu`'s current VMCS12 changed from `old` to `new`.
    pub fn change(&mut self, cpu: u32, old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        if let Some(o) = old {
            if self.owner.get(&o) == Some(&cpu) {
                self.owner.remove(&o);
            }
        }
        if let Some(n) = new {
            self.owner.insert(n, cpu);
        }
    }

    pub fn len(&self) -> usize {
        self.owner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vmcs12_is_current_on_one_cpu() {
        let mut o = Vmcs12Owners::default();
        o.change(0, None, Some(0x1000));
        assert_eq!(o.elsewhere(0x1000, 0), None);
        assert_eq!(o.elsewhere(0x1000, 1), Some(0));
        // CPU 0 loads another: the first is free for CPU 1.
        o.change(0, Some(0x1000), Some(0x2000));
        assert_eq!(o.elsewhere(0x1000, 1), None);
        o.change(1, None, Some(0x1000));
        assert_eq!(o.elsewhere(0x1000, 0), Some(1));
        // Releasing what another CPU holds changes nothing.
        o.change(0, Some(0x1000), None);
        assert_eq!(o.elsewhere(0x1000, 0), Some(1));
        o.change(0, Some(0x2000), None);
        o.change(1, Some(0x1000), None);
        assert!(o.is_empty());
    }
}
