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
//!    when L1 leaves VMX operation on its last CPU. Its devices go with it, so the tables
//!    cannot grow without bound as VMs come and go.
//! 4. Without EPT12 (L1 shadows paging itself), the VMCS12 alone names the VM.
//!
//! Every operation is a few B-tree lookups, O(log n) in the VMs and
//! VMCS12s tracked (an exit from L2 makes at most two): no list is scanned.
//! The tables stay within [`Limits`]; a VM beyond them is refused.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cmp::Ordering;

use super::limits::{Limits, MAX_VMCS_PER_VM};

/// L0's number for a user VM (never reused while L0 runs).
pub type VmId = u64;

/// A VMCS12 or EPT root address as a map key. Host tests count its
/// comparisons: the lookup cost at scale is measured by counting, not timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Addr(u64);

impl Ord for Addr {
    fn cmp(&self, other: &Self) -> Ordering {
        #[cfg(test)]
        tests::PROBES.with(|p| p.set(p.get() + 1));
        self.0.cmp(&other.0)
    }
}

impl PartialOrd for Addr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Vm {
    eptp: Option<u64>,
    /// Its VMCS12s by when they were attached (oldest first).
    vmcs: BTreeMap<u64, u64>,
}

#[derive(Clone, Debug)]
pub struct Identities {
    limits: Limits,
    next: VmId,
    /// Attachment order of VMCS12s, for "oldest" and "most recent".
    next_seq: u64,
    vms: BTreeMap<VmId, Vm>,
    by_eptp: BTreeMap<Addr, VmId>,
    /// Each known VMCS12's VM and attachment number.
    by_vmcs: BTreeMap<Addr, (VmId, u64)>,
    /// Counts the changes to which VMCS12 or EPT root names which VM.
    changes: u64,
}

impl Default for Identities {
    fn default() -> Self {
        Identities::new(Limits::MAX)
    }
}

/// Only the root address names a guest-physical space.
pub fn root_address(eptp: u64) -> u64 {
    eptp & 0x000f_ffff_ffff_f000
}

fn root(eptp: u64) -> Addr {
    Addr(root_address(eptp))
}

impl Identities {
    pub fn new(limits: Limits) -> Self {
        Identities {
            limits,
            next: 1,
            next_seq: 0,
            vms: BTreeMap::new(),
            by_eptp: BTreeMap::new(),
            by_vmcs: BTreeMap::new(),
            changes: 0,
        }
    }

    /// Moves on whenever a VMCS12 or an EPT root comes to name another VM
    /// or none (a VM created, ended, a VMCS12 attached or detached, a root
    /// replaced): what was found by them at one count holds while it stays.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// New bounds; what is tracked beyond them stays until it ends.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn len(&self) -> usize {
        self.vms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vms.is_empty()
    }

    /// VMCS12s tracked, of all VMs.
    pub fn vmcs_count(&self) -> usize {
        self.by_vmcs.len()
    }

    /// Whether a new VM fits the bounds (it brings one VMCS12).
    pub fn has_room(&self) -> bool {
        self.vms.len() < self.limits.vms && self.by_vmcs.len() < self.limits.vmcs
    }

    /// The VM of an exit from L2 running on `vmcs` with `eptp` (None when
    /// L1 does not use EPT); a new one if unseen. None when the bounds are
    /// reached (the caller treats the VM as having no devices); then
    /// nothing changed.
    pub fn identify(&mut self, vmcs: u64, eptp: Option<u64>) -> Option<VmId> {
        self.lookup(vmcs, eptp).or_else(|| self.create(vmcs, eptp))
    }

    /// A new VM for a VMCS12 and EPT root no VM has; None beyond the bounds.
    pub fn create(&mut self, vmcs: u64, eptp: Option<u64>) -> Option<VmId> {
        if !self.has_room() {
            return None;
        }
        let id = self.next;
        self.next += 1;
        self.changes += 1;
        self.vms.insert(
            id,
            Vm {
                eptp: eptp.map(|e| root(e).0),
                vmcs: BTreeMap::new(),
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

    /// Applies rules 1, 2 and 4 for a known VMCS12 or EPTP; None if neither
    /// is known.
    pub fn lookup(&mut self, vmcs: u64, eptp: Option<u64>) -> Option<VmId> {
        let by_eptp = eptp.and_then(|e| self.by_eptp.get(&root(e)).copied());
        match (self.by_vmcs.get(&Addr(vmcs)).map(|&(v, _)| v), by_eptp) {
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
                    if let Some(old) = vm.eptp.replace(root(e).0) {
                        self.by_eptp.remove(&Addr(old));
                    }
                    self.by_eptp.insert(root(e), v);
                    self.changes += 1;
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

    /// Makes `vmcs` one of VM `id`'s. A VM at its own cap, or all VMs at
    /// the total one, trades its oldest VMCS12 for it (the VM stays known
    /// by its EPT root); a VM with none at the total cap stays without.
    fn attach_vmcs(&mut self, id: VmId, vmcs: u64) {
        let total_full = self.by_vmcs.len() >= self.limits.vmcs;
        let Some(vm) = self.vms.get_mut(&id) else {
            return;
        };
        if vm.vmcs.len() >= MAX_VMCS_PER_VM || total_full {
            let Some((_, oldest)) = vm.vmcs.pop_first() else {
                return;
            };
            self.by_vmcs.remove(&Addr(oldest));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        vm.vmcs.insert(seq, vmcs);
        self.by_vmcs.insert(Addr(vmcs), (id, seq));
        self.changes += 1;
    }

    fn detach_vmcs(&mut self, vmcs: u64) -> Option<VmId> {
        let (id, seq) = self.by_vmcs.remove(&Addr(vmcs))?;
        self.changes += 1;
        self.vms.get_mut(&id)?.vmcs.remove(&seq);
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
        self.changes += 1;
        self.vms.clear();
        self.by_eptp.clear();
        self.by_vmcs.clear();
        ids
    }

    fn drop_vm(&mut self, id: VmId) {
        if let Some(vm) = self.vms.remove(&id) {
            self.changes += 1;
            if let Some(e) = vm.eptp {
                self.by_eptp.remove(&Addr(e));
            }
            for v in vm.vmcs.values() {
                self.by_vmcs.remove(&Addr(*v));
            }
        }
    }

    /// The EPT12 root of the VM `vmcs` belongs to (`Some(None)`: a VM
    /// without EPT12); None when no VM has it.
    pub fn root_of_vmcs(&self, vmcs: u64) -> Option<Option<u64>> {
        let &(id, _) = self.by_vmcs.get(&Addr(vmcs))?;
        Some(self.vms.get(&id)?.eptp)
    }

    /// The VM `vmcs` serves, if L0 knows it.
    pub fn vm_of_vmcs(&self, vmcs: u64) -> Option<VmId> {
        self.by_vmcs.get(&Addr(vmcs)).map(|&(id, _)| id)
    }

    /// Every VMCS12 of the VM, the last one attached first.
    pub fn vmcs_of_vm(&self, id: VmId) -> impl Iterator<Item = u64> + '_ {
        self.vms
            .get(&id)
            .into_iter()
            .flat_map(|vm| vm.vmcs.values().rev().copied())
    }

    /// A VMCS pointer L1 uses for this VM (the most recent), for L1's relay.
    pub fn vmcs_of(&self, id: VmId) -> Option<u64> {
        self.vms
            .get(&id)
            .and_then(|vm| vm.vmcs.last_key_value().map(|(_, &v)| v))
    }

    pub fn contains(&self, id: VmId) -> bool {
        self.vms.contains_key(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::limits::MAX_VMS;
    use std::cell::Cell;

    thread_local! {
        /// Address-key comparisons made by this thread's tables.
        pub(super) static PROBES: Cell<u64> = const { Cell::new(0) };
    }

    /// The comparisons `f` makes.
    fn probes<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let before = PROBES.with(Cell::get);
        let r = f();
        (r, PROBES.with(Cell::get) - before)
    }

    const A: u64 = 0x10_0000;
    const B: u64 = 0x20_0000;
    const EA: u64 = 0x50_0000 | 0x1e;
    const EB: u64 = 0x60_0000 | 0x1e;

    #[test]
    fn new_vms_by_eptp_and_vcpus_share() {
        let mut ids = Identities::default();
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
        let mut ids = Identities::default();
        let a = ids.identify(A, Some(EA)).unwrap();
        let new_root = 0x70_0000 | 0x1e;
        assert_eq!(ids.identify(A, Some(new_root)), Some(a));
        // The old root no longer names it: a new VM could get that page.
        let c = ids.identify(0x40_0000, Some(EA)).unwrap();
        assert_ne!(c, a);
    }

    /// The count a CPU keeps a VM's cell by moves on with every change of
    /// what a VMCS12 or EPT root names, and only then: a known VM's lookups
    /// (every exit's) leave it.
    #[test]
    fn changes_count_what_may_name_another_vm() {
        let mut ids = Identities::default();
        let mut last = ids.changes();
        let mut moved = |ids: &Identities| {
            let m = ids.changes() != last;
            last = ids.changes();
            m
        };
        let a = ids.identify(A, Some(EA)).unwrap();
        assert!(moved(&ids), "a VM created");
        assert_eq!(ids.identify(A, Some(EA)), Some(a));
        ids.note_entry(A, Some(EA));
        assert_eq!(ids.root_of_vmcs(A), Some(Some(EA & !0xfff)));
        assert!(!moved(&ids), "lookups of a known VM");
        ids.identify(0x30_0000, Some(EA)).unwrap();
        assert!(moved(&ids), "a VMCS12 attached");
        ids.identify(A, Some(0x70_001e)).unwrap();
        assert!(moved(&ids), "an EPT root replaced");
        let b = ids.identify(B, Some(EB)).unwrap();
        assert!(moved(&ids));
        assert_eq!(ids.identify(A, Some(EB)), Some(b));
        assert!(moved(&ids), "a VMCS12 moved to another VM");
        assert_eq!(ids.vmclear(0x30_0000), Some(a));
        assert!(moved(&ids), "a VM ended");
        assert_eq!(ids.vmclear(0x99_0000), None);
        assert!(!moved(&ids), "an unknown VMCLEAR");
        ids.clear_all();
        assert!(moved(&ids), "VMXOFF");
    }

    #[test]
    fn a_vmcs_reused_for_another_vm_follows_the_eptp() {
        let mut ids = Identities::default();
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
        let mut ids = Identities::default();
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
        let mut ids = Identities::default();
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
    fn a_vm_at_its_cap_trades_its_oldest_vmcs() {
        let mut ids = Identities::default();
        let a = ids.identify(0, Some(0x1000_0000)).unwrap();
        let vmcs = |i: u64| 0x5000_0000 + i * 0x1000;
        for i in 0..2 * MAX_VMCS_PER_VM as u64 {
            ids.note_entry(vmcs(i), Some(0x1000_0000));
        }
        assert_eq!(ids.vms[&a].vmcs.len(), MAX_VMCS_PER_VM);
        assert_eq!(ids.vmcs_count(), MAX_VMCS_PER_VM);
        assert_eq!(ids.vmcs_of(a), Some(vmcs(2 * MAX_VMCS_PER_VM as u64 - 1)));
        // The oldest went: its VMCLEAR is of an unknown VMCS; the newest
        // are the VM's, and clearing them all ends it.
        assert_eq!(ids.vmclear(vmcs(0)), None);
        for i in MAX_VMCS_PER_VM as u64..2 * MAX_VMCS_PER_VM as u64 - 1 {
            assert_eq!(ids.vmclear(vmcs(i)), None);
        }
        assert_eq!(ids.vmclear(vmcs(2 * MAX_VMCS_PER_VM as u64 - 1)), Some(a));
        assert!(ids.by_vmcs.is_empty() && ids.by_eptp.is_empty());
    }

    #[test]
    fn the_bounds_refuse_new_vms_and_change_nothing() {
        let limits = Limits { vms: 3, vmcs: 4 };
        let mut ids = Identities::new(limits);
        for i in 0..3u64 {
            ids.identify(i * 0x1000, Some(0x1000_0000 + i * 0x1000))
                .unwrap();
        }
        let before = (
            ids.vms.clone(),
            ids.by_eptp.clone(),
            ids.by_vmcs.clone(),
            ids.next,
        );
        assert_eq!(ids.identify(0xf000, Some(0x2000_0000)), None, "VM bound");
        assert_eq!(ids.identify(0xf000, None), None, "VM bound without EPT");
        assert_eq!(
            (
                ids.vms.clone(),
                ids.by_eptp.clone(),
                ids.by_vmcs.clone(),
                ids.next
            ),
            before
        );
        // The fourth VMCS12 joins VM 1; a fifth is a trade, not growth.
        ids.note_entry(0xa000, Some(0x1000_0000));
        ids.note_entry(0xb000, Some(0x1000_0000));
        assert_eq!(ids.vmcs_count(), 4);
        assert_eq!(
            ids.vms[&1].vmcs.values().copied().collect::<Vec<_>>(),
            [0xa000, 0xb000]
        );
        // A freed VM slot with the VMCS12s full: still no VM without one.
        let mut ids = Identities::new(Limits { vms: 2, vmcs: 1 });
        ids.identify(A, Some(EA)).unwrap();
        assert_eq!(ids.identify(B, Some(EB)), None, "no VMCS12 left for it");
        assert_eq!(ids.len(), 1);
    }

    /// 1024 VMs with 256 VMCS12s each (262 144 VMCS12s, beyond L0's total
    /// bound: the structure is measured at the full product) against 16
    /// VMs of 16 (256, a thousandth): an exit's lookup, a new vCPU's entry
    /// and a VMCLEAR grow by the B-tree's few more levels, where a list
    /// scanned per exit would grow a thousandfold.
    #[test]
    fn lookups_stay_logarithmic_at_1024_vms_of_256_vmcs12s() {
        let vmcs = |vm: u64, cpu: u64| 0x1_0000_0000 + (vm * 256 + cpu) * 0x1000;
        let eptp = |vm: u64| (0x4000_0000 + vm * 0x1000) | 0x1e;
        let fill = |vms: u64, per_vm: u64| {
            let mut ids = Identities::new(Limits {
                vms: vms as usize,
                vmcs: (vms * per_vm) as usize,
            });
            for vm in 0..vms {
                for cpu in 0..per_vm {
                    ids.identify(vmcs(vm, cpu), Some(eptp(vm))).unwrap();
                }
            }
            ids
        };
        // The most comparisons of each operation, on VMs and vCPUs spread
        // over the table.
        let worst = |ids: &mut Identities, vms: u64, per_vm: u64| {
            let mut w = [0u64; 3];
            for vm in (0..vms).step_by((vms / 16) as usize) {
                for cpu in [0, per_vm / 2, per_vm - 1] {
                    let (id, exit) = probes(|| ids.identify(vmcs(vm, cpu), Some(eptp(vm))));
                    assert_eq!(id, Some(vm + 1));
                    let (_, clear) = probes(|| ids.vmclear(vmcs(vm, cpu)));
                    let (_, entry) = probes(|| ids.note_entry(vmcs(vm, cpu), Some(eptp(vm))));
                    w = [w[0].max(exit), w[1].max(entry), w[2].max(clear)];
                }
            }
            w
        };
        let mut big = fill(MAX_VMS as u64, MAX_VMCS_PER_VM as u64);
        assert_eq!((big.len(), big.vmcs_count()), (1024, 262_144));
        let at_scale = worst(&mut big, 1024, 256);
        let mut small = fill(16, 16);
        let at_256 = worst(&mut small, 16, 16);
        eprintln!(
            "key comparisons [exit, entry, VMCLEAR]: 256 VMCS12s {at_256:?}, 262144 VMCS12s {at_scale:?}"
        );
        for (op, (&n, &s)) in at_scale.iter().zip(&at_256).enumerate() {
            assert!(
                n <= 4 * s && n <= 100,
                "operation {op}: {n} comparisons, {s} at 256"
            );
        }
    }

    #[test]
    fn without_ept_the_vmcs_names_the_vm() {
        let mut ids = Identities::default();
        let a = ids.identify(A, None).unwrap();
        assert_eq!(ids.identify(A, None), Some(a));
        assert_ne!(ids.identify(B, None), Some(a));
        assert_eq!(ids.clear_all().len(), 2);
    }
}
