//! Which user VM (L2) an exit belongs to.
//!
//! L0 cannot see the guest hypervisor's idea of a VM; it sees VMCS12s and
//! the EPT pointers in them. The rules (docs/shadow-devices.md):
//!
//! 1. A VM is named by its EPT12 root: every vCPU of one VM runs on the
//!    same guest-physical space, so the same EPTP.
//! 2. A known VMCS12 entered with a new EPTP whose root no other VM uses is
//!    the same VM whose EPT root was replaced (KVM does that on memslot
//!    changes); if another VM uses that root, the VMCS12 now serves that VM.
//! 3. A VM ends when L1 VMCLEARs the last VMCS12 L0 has seen it run with
//!    (KVM clears a vCPU's VMCS when it frees the vCPU; a VMCLEAR that
//!    only moves the vCPU to another CPU is voided first, ending.rs), or
//!    when L1 leaves VMX operation. Its devices go with it, so the tables cannot grow
//!    without bound as VMs come and go.
//! 4. Without EPT12 (L1 shadows paging itself), the VMCS12 alone names the VM.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// L0's number for a user VM (never reused while L0 runs).
pub type VmId = u64;

/// Bounds that keep a misbehaving L1 from exhausting L0's heap.
pub const MAX_VMS: usize = 64;
pub const MAX_VMCS_PER_VM: usize = 16;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Vm {
    eptp: Option<u64>,
    vmcs: Vec<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Identities {
    next: VmId,
    vms: BTreeMap<VmId, Vm>,
    by_eptp: BTreeMap<u64, VmId>,
    by_vmcs: BTreeMap<u64, VmId>,
}

/// Only the root address names a guest-physical space.
pub fn root(eptp: u64) -> u64 {
    eptp & 0x000f_ffff_ffff_f000
}

impl Identities {
    pub fn new() -> Self {
        Identities {
            next: 1,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.vms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vms.is_empty()
    }

    /// The VM of an exit from L2 running on `vmcs` with `eptp` (None when
    /// L1 does not use EPT); a new one if unseen. None when the VM limit is
    /// reached (the caller treats the VM as having no devices).
    pub fn identify(&mut self, vmcs: u64, eptp: Option<u64>) -> Option<VmId> {
        if let Some(id) = self.lookup(vmcs, eptp) {
            return Some(id);
        }
        if self.vms.len() >= MAX_VMS {
            return None;
        }
        let id = self.next;
        self.next += 1;
        self.vms.insert(
            id,
            Vm {
                eptp: eptp.map(root),
                vmcs: Vec::new(),
            },
        );
        if let Some(e) = eptp {
            self.by_eptp.insert(root(e), id);
        }
        self.attach_vmcs(id, vmcs);
        Some(id)
    }

    /// Keeps the associations current at every nested entry, creating no VM:
    /// so every VMCS12 of a known VM is known before its VMCLEAR.
    pub fn note_entry(&mut self, vmcs: u64, eptp: Option<u64>) {
        self.lookup(vmcs, eptp);
    }

    /// Applies rules 1, 2 and 4 for a known VMCS12 or EPTP.
    fn lookup(&mut self, vmcs: u64, eptp: Option<u64>) -> Option<VmId> {
        let by_eptp = eptp.and_then(|e| self.by_eptp.get(&root(e)).copied());
        match (self.by_vmcs.get(&vmcs).copied(), by_eptp) {
            (Some(v), Some(e)) if v == e => Some(v),
            (Some(_), Some(e)) => {
                // The VMCS12 now runs another VM's space.
                self.detach_vmcs(vmcs);
                self.attach_vmcs(e, vmcs);
                Some(e)
            }
            (Some(v), None) => {
                if let Some(e) = eptp {
                    // The same VM with a replaced EPT root.
                    let vm = self.vms.get_mut(&v)?;
                    if let Some(old) = vm.eptp.replace(root(e)) {
                        self.by_eptp.remove(&old);
                    }
                    self.by_eptp.insert(root(e), v);
                }
                Some(v)
            }
            (None, Some(e)) => {
                self.attach_vmcs(e, vmcs);
                Some(e)
            }
            (None, None) => None,
        }
    }

    fn attach_vmcs(&mut self, id: VmId, vmcs: u64) {
        if let Some(vm) = self.vms.get_mut(&id) {
            if vm.vmcs.len() == MAX_VMCS_PER_VM {
                let oldest = vm.vmcs.remove(0);
                self.by_vmcs.remove(&oldest);
            }
            vm.vmcs.push(vmcs);
            self.by_vmcs.insert(vmcs, id);
        }
    }

    fn detach_vmcs(&mut self, vmcs: u64) -> Option<VmId> {
        let id = self.by_vmcs.remove(&vmcs)?;
        let vm = self.vms.get_mut(&id)?;
        vm.vmcs.retain(|&v| v != vmcs);
        Some(id)
    }

    /// L1 VMCLEARed `vmcs`: returns the VM that thereby ended (rule 3).
    pub fn vmclear(&mut self, vmcs: u64) -> Option<VmId> {
        let id = self.detach_vmcs(vmcs)?;
        if self.vms.get(&id).is_some_and(|vm| vm.vmcs.is_empty()) {
            self.drop_vm(id);
            return Some(id);
        }
        None
    }

    /// L1 left VMX operation: every VM ends.
    pub fn clear_all(&mut self) -> Vec<VmId> {
        let ids = self.vms.keys().copied().collect();
        self.vms.clear();
        self.by_eptp.clear();
        self.by_vmcs.clear();
        ids
    }

    fn drop_vm(&mut self, id: VmId) {
        if let Some(vm) = self.vms.remove(&id) {
            if let Some(e) = vm.eptp {
                self.by_eptp.remove(&e);
            }
            for v in vm.vmcs {
                self.by_vmcs.remove(&v);
            }
        }
    }

    /// The EPT12 root of the VM `vmcs` belongs to (`Some(None)`: a VM
    /// without EPT12); None when no VM has it.
    pub fn root_of_vmcs(&self, vmcs: u64) -> Option<Option<u64>> {
        let id = self.by_vmcs.get(&vmcs)?;
        Some(self.vms.get(id)?.eptp)
    }

    /// Every VMCS12 of the VM, the last one attached first.
    pub fn vmcs_of_vm(&self, id: VmId) -> impl Iterator<Item = u64> + '_ {
        self.vms
            .get(&id)
            .into_iter()
            .flat_map(|vm| vm.vmcs.iter().rev().copied())
    }

    /// A VMCS pointer L1 uses for this VM (the most recent), for L1's relay.
    pub fn vmcs_of(&self, id: VmId) -> Option<u64> {
        self.vms.get(&id).and_then(|vm| vm.vmcs.last().copied())
    }

    pub fn contains(&self, id: VmId) -> bool {
        self.vms.contains_key(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 0x10_0000;
    const B: u64 = 0x20_0000;
    const EA: u64 = 0x50_0000 | 0x1e;
    const EB: u64 = 0x60_0000 | 0x1e;

    #[test]
    fn new_vms_by_eptp_and_vcpus_share() {
        let mut ids = Identities::new();
        let a = ids.identify(A, Some(EA)).unwrap();
        let b = ids.identify(B, Some(EB)).unwrap();
        assert_ne!(a, b);
        assert_eq!(ids.identify(A, Some(EA)), Some(a));
        // A second vCPU of VM a: another VMCS12, the same EPT root.
        assert_eq!(ids.identify(0x30_0000, Some(EA & !0x3f)), Some(a));
        assert_eq!(ids.vmcs_of(a), Some(0x30_0000));
    }

    #[test]
    fn replaced_ept_root_keeps_the_vm() {
        let mut ids = Identities::new();
        let a = ids.identify(A, Some(EA)).unwrap();
        let new_root = 0x70_0000 | 0x1e;
        assert_eq!(ids.identify(A, Some(new_root)), Some(a));
        // The old root no longer names it: a new VM could get that page.
        let c = ids.identify(0x40_0000, Some(EA)).unwrap();
        assert_ne!(c, a);
    }

    #[test]
    fn a_vmcs_reused_for_another_vm_follows_the_eptp() {
        let mut ids = Identities::new();
        let a = ids.identify(A, Some(EA)).unwrap();
        let b = ids.identify(B, Some(EB)).unwrap();
        assert_eq!(ids.identify(A, Some(EB)), Some(b));
        // a lost its only VMCS to b; VMCLEAR of B's VMCSs ends b only.
        assert_eq!(ids.vmclear(A), None, "b still has B");
        assert_eq!(ids.vmclear(B), Some(b));
        assert!(ids.contains(a) && !ids.contains(b));
    }

    #[test]
    fn vmclear_of_the_last_vmcs_ends_the_vm() {
        let mut ids = Identities::new();
        let a = ids.identify(A, Some(EA)).unwrap();
        ids.note_entry(0x31_0000, Some(EA));
        assert_eq!(ids.vmclear(A), None, "another vCPU remains");
        assert_eq!(ids.vmclear(0x31_0000), Some(a));
        assert!(ids.is_empty());
        assert_eq!(ids.vmclear(A), None, "unknown VMCS");
        // Entries never create VMs.
        ids.note_entry(A, Some(EA));
        assert!(ids.is_empty());
    }

    #[test]
    fn churn_does_not_leak() {
        let mut ids = Identities::new();
        for i in 0..1000u64 {
            let vmcs = 0x100_0000 + (i % 7) * 0x1000;
            let eptp = 0x200_0000 + (i % 5) * 0x1000;
            ids.identify(vmcs, Some(eptp)).unwrap();
            ids.vmclear(vmcs);
        }
        assert!(ids.is_empty());
        assert!(ids.by_eptp.is_empty() && ids.by_vmcs.is_empty());
    }

    #[test]
    fn limits() {
        let mut ids = Identities::new();
        for i in 0..MAX_VMS as u64 {
            assert!(ids
                .identify(i * 0x1000, Some(0x1000_0000 + i * 0x1000))
                .is_some());
        }
        assert_eq!(ids.identify(0xfff_f000, Some(0x2000_0000)), None);
        let a = ids.identify(0, Some(0x1000_0000)).unwrap();
        for i in 0..2 * MAX_VMCS_PER_VM as u64 {
            ids.note_entry(0x5000_0000 + i * 0x1000, Some(0x1000_0000));
        }
        assert_eq!(ids.vms[&a].vmcs.len(), MAX_VMCS_PER_VM);
        assert_eq!(ids.by_vmcs.len(), MAX_VMS - 1 + MAX_VMCS_PER_VM);
    }

    #[test]
    fn without_ept_the_vmcs_names_the_vm() {
        let mut ids = Identities::new();
        let a = ids.identify(A, None).unwrap();
        assert_eq!(ids.identify(A, None), Some(a));
        assert_ne!(ids.identify(B, None), Some(a));
        assert_eq!(ids.clear_all().len(), 2);
    }
}
