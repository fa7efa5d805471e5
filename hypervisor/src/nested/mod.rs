//! Nested VMX: L0 emulates VMX for L1 so that a guest hypervisor in the
//! cloud VM runs its own VMs (L2). One file per concern, after KVM's
//! families: capability MSRs (`caps.rs`), the software VMCS12
//! (`vmcs12.rs`), L1's state and instruction operands (`l1_state.rs`,
//! `operand.rs`), the VMX instructions (`instr.rs`, carried out on their
//! exit by `instr_exit.rs`), VM entry (`entry.rs`:
//! the checks of `checks.rs`, VMCS02 by `prepare.rs` over the field list
//! of `guest_state.rs`, the bitmaps of `bitmaps.rs`), the MSR load/store
//! lists (`msr_lists.rs`), exit routing and reflection (`reflect.rs`, and
//! `vmexit.rs` for the whole exit to L1), EPT12 walking and the EPT02 cache
//! (`ept12.rs`, `ept02.rs`), the shadow VMCS (`shadow_vmcs.rs`) and L2's
//! APIC virtualization (`apicv.rs`, `posted.rs`).
//!
//! Nothing here sees the vCPU: code that runs on an exit gets a
//! [`NestedCtx`] (`context.rs`), which borrows this CPU's [`Nested`], L1's
//! registers, L0's [`HostVmx`] setup, the VMCS set and a [`NestedHw`].

pub mod apicv;
pub mod bitmaps;
pub mod caps;
pub mod checks;
pub mod context;
pub mod entry;
pub mod ept02;
pub mod ept12;
pub mod ept_ad;
pub mod guest_state;
pub mod instr;
pub mod instr_exit;
pub mod l1_state;
pub mod msr_lists;
pub mod operand;
pub mod posted;
pub mod prepare;
pub mod reflect;
pub mod shadow_vmcs;
pub mod vmcs12;
pub mod vmexit;

#[cfg(test)]
pub mod testutil;

pub use context::{Flow, HostVmx, NestedCtx, NestedHw};
use ept02::Ept02Cache;
use instr::VmxState;

/// Which VMCS is current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// VMCS01: L1 runs.
    L1,
    /// VMCS02: L2 runs.
    L2,
    /// The shadow VMCS behind L1's VMREAD/VMWRITE (never run).
    Shadow,
}

/// The two VMCSs of the vCPU; only the current one can be accessed.
pub trait VmcsSet {
    type V: crate::vmx::Vmcs;
    fn current(&mut self) -> &mut Self::V;
    /// Makes `which` current (VMPTRLD).
    fn select(&mut self, which: Level);
    fn selected(&self) -> Level;
}

/// L1's VPIDs for L2 mapped to L0's, which must not collide with L1's own.
pub struct VpidMap {
    map: [(u16, u16); VPID_SLOTS],
    used: usize,
    next_victim: usize,
}

const VPID_SLOTS: usize = 16;
/// L1 runs with VPID 1; L2s without a VPID of their own use this one.
pub const VPID_UNTAGGED_L2: u16 = 2;
const FIRST_VPID02: u16 = 3;

impl Default for VpidMap {
    fn default() -> Self {
        VpidMap {
            map: [(0, 0); VPID_SLOTS],
            used: 0,
            next_victim: 0,
        }
    }
}

impl VpidMap {
    /// VPID02 for `vpid12`, and whether it was taken from another VPID12
    /// (its translations must then be flushed before use).
    pub fn get(&mut self, vpid12: u16) -> (u16, bool) {
        if let Some(&(_, v02)) = self.map[..self.used].iter().find(|(v12, _)| *v12 == vpid12) {
            return (v02, false);
        }
        if self.used < VPID_SLOTS {
            let v02 = FIRST_VPID02 + self.used as u16;
            self.map[self.used] = (vpid12, v02);
            self.used += 1;
            return (v02, false);
        }
        let slot = self.next_victim;
        self.next_victim = (self.next_victim + 1) % VPID_SLOTS;
        let v02 = self.map[slot].1;
        self.map[slot] = (vpid12, v02);
        (v02, true)
    }

    pub fn lookup(&self, vpid12: u16) -> Option<u16> {
        self.map[..self.used]
            .iter()
            .find(|(v12, _)| *v12 == vpid12)
            .map(|&(_, v02)| v02)
    }

    /// Every VPID02 in use, for an all-context flush.
    pub fn all(&self) -> impl Iterator<Item = u16> + '_ {
        self.map[..self.used]
            .iter()
            .map(|&(_, v02)| v02)
            .chain([VPID_UNTAGGED_L2])
    }
}

/// Pool pages behind VMCS02's bitmaps, and its stand-in virtual-APIC page.
///
/// VMCS02 never merges L1's bitmaps wholesale (12 KiB at every entry):
/// when L1 uses I/O bitmaps or unconditional I/O exiting, every L2 port
/// access exits and L0 either reflects it (L1's bitmap bit is read then) or
/// carries it out for L2; MSRs likewise, except a short list of frequent
/// ones that pass through when L1 lets them (KVM does the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vmcs02Pages {
    /// Two pages of all ones.
    pub io_all: u64,
    /// Two pages: the ports L0 itself needs from L2 (when L1 passes all through).
    pub io_l0: u64,
    /// All ones, but for the pass-through MSRs L1 allows.
    pub msr02: u64,
    /// VMCS02's virtual-APIC page when VMCS12's is not L1's RAM: all
    /// ones again at every entry, as unbacked memory reads.
    pub vapic_unbacked: u64,
}

/// See `Nested::before_run`.
#[derive(Clone, Copy, Debug, Default)]
struct BeforeRun {
    vmcs02_launched: bool,
    l1_entry: bool,
}

/// L1's nested-VMX state beyond the VMX instructions.
pub struct Nested {
    /// L1's VMX operation as its instructions see it (VMXON, VMCS12).
    pub(crate) vmx: VmxState,
    ept02: Ept02Cache,
    vpids: VpidMap,
    in_l2: bool,
    vmcs02_launched: bool,
    pages: Vmcs02Pages,
    /// Exits from L2 that L0 handled itself / reflected to L1.
    handled_in_l0: u64,
    reflected: u64,
    /// L1's CR3 when it entered L2, to see whether its host state changes it.
    l1_cr3_at_entry: u64,
    /// VMCS12's launch state before L1's last VMLAUNCH/VMRESUME.
    entry_was_launched: bool,
    /// L1's entry has not reached the hardware yet.
    l1_entry_pending: bool,
    /// Before the last hardware entry into VMCS02: its launch state, and
    /// whether that entry was L1's (an entry that fails leaves both as
    /// they were, SDM 27.8).
    before_run: BeforeRun,
    /// The PDPTEs the entry in progress loads from L2's CR3 (PAE without
    /// EPT12), as the checks read them.
    cr3_pdptes: Option<[u64; 4]>,
    /// VMCS02's PDPTE fields hold PDPTEs read from CR3, not VMCS12's.
    pdptes02_from_cr3: bool,
    /// The VMCS12 whose guest state VMCS02 holds.
    vmcs02_holds: Option<u64>,
    /// What VMCS02 holds of the fields L0 derives.
    derived: prepare::Derived,
    /// L0 asked VMCS02 for L2's interrupt window (apicv.rs).
    window02: bool,
    /// L1's mode (IA-32e) when a VMCS12 last passed the full checks.
    checked_l1_long: Option<bool>,
    /// Whether VMCS01 uses VMCS shadowing for L1's VMREAD/VMWRITE, and
    /// whether its link pointer currently names the shadow VMCS.
    shadowing: bool,
    shadow_linked: bool,
    /// The VMCS12 the shadow VMCS mirrors, and what it holds.
    shadow_holds: Option<u64>,
    shadow_cache: shadow_vmcs::ShadowCache,
    /// The user VM L2 is, once looked up in this stay in L2.
    l2_vm: Option<u64>,
    /// L1's state comes from VMCS12's host area and has not been entered
    /// yet: the CPU refusing it is a VMX abort for L1 (vmexit.rs).
    l1_from_host_area: bool,
}

impl Nested {
    pub fn new(
        caps: caps::NestedCaps,
        maxphyaddr: u8,
        pages: Vmcs02Pages,
        shadowing: bool,
    ) -> Self {
        Nested {
            vmx: VmxState::new(caps, maxphyaddr),
            ept02: Ept02Cache::default(),
            vpids: VpidMap::default(),
            in_l2: false,
            vmcs02_launched: false,
            pages,
            handled_in_l0: 0,
            reflected: 0,
            l1_cr3_at_entry: 0,
            entry_was_launched: false,
            l1_entry_pending: false,
            before_run: BeforeRun::default(),
            cr3_pdptes: None,
            pdptes02_from_cr3: false,
            vmcs02_holds: None,
            derived: prepare::Derived::default(),
            window02: false,
            checked_l1_long: None,
            shadowing,
            shadow_linked: false,
            shadow_holds: None,
            shadow_cache: shadow_vmcs::ShadowCache::default(),
            l2_vm: None,
            l1_from_host_area: false,
        }
    }

    /// Whether the entry into L1 that just exited (or failed) was the
    /// first with the state VMCS12's host area gave; asking clears it.
    pub fn take_l1_from_host_area(&mut self) -> bool {
        core::mem::take(&mut self.l1_from_host_area)
    }

    /// Caps the EPT02 tables this CPU keeps (`ept02.rs`); before L1's
    /// first nested entry, while the cache is empty.
    pub fn cap_ept02(&mut self, tables: usize) {
        assert!(self.ept02.is_empty(), "EPT02 capped after use");
        self.ept02 = Ept02Cache::new(tables);
    }

    /// EPT02 tables held on this CPU, the cap, and the reclaims so far.
    pub fn ept02_tables(&self) -> (usize, usize, u64) {
        let (held, cap) = self.ept02.tables();
        (held, cap, self.ept02.reclaims())
    }
}

impl Nested {
    /// Whether L2 runs (VMCS02 is the VMCS to enter next).
    pub fn in_l2(&self) -> bool {
        self.in_l2
    }

    /// Whether VMCS02 has been launched (VMRESUME enters it).
    pub fn vmcs02_launched(&self) -> bool {
        self.vmcs02_launched
    }

    /// VMCS02 was entered (also when the entry failed on its guest state:
    /// the exit handler then undoes this with `before_run`).
    pub fn note_vmcs02_launched(&mut self) {
        self.before_run = BeforeRun {
            vmcs02_launched: self.vmcs02_launched,
            l1_entry: self.l1_entry_pending,
        };
        self.vmcs02_launched = true;
        self.l1_entry_pending = false;
    }

    /// An exit of L2 that L0 handled itself.
    pub fn note_handled_in_l0(&mut self) {
        self.handled_in_l0 += 1;
    }

    /// Exits of L2 that L0 handled itself, and that it reflected to L1.
    pub fn exit_counts(&self) -> (u64, u64) {
        (self.handled_in_l0, self.reflected)
    }

    /// The user VM L2 is, if looked up since the entry into L2.
    pub fn cached_l2_vm(&self) -> Option<u64> {
        self.l2_vm.filter(|_| self.in_l2)
    }

    /// Remembers which user VM L2 is until the next exit to L1.
    pub fn cache_l2_vm(&mut self, vm: Option<u64>) {
        self.l2_vm = vm;
    }

    /// Whether VMCS01 should shadow L1's VMREAD/VMWRITE now: L0 uses VMCS
    /// shadowing and L1 is in VMX operation (outside it they must #UD,
    /// which only an exit to L0 gives).
    pub fn shadowing_wanted(&self) -> bool {
        self.shadowing && self.vmx.vmxon.is_some()
    }

    #[cfg(test)]
    pub fn set_shadowing(&mut self, on: bool) {
        self.shadowing = on;
    }

    /// The current VMCS12 (L1's VMPTRLD), if any.
    pub fn current_vmcs12(&self) -> Option<u64> {
        self.vmx.current
    }

    /// The current VMCS12's EPTP, if it enables EPT.
    pub fn eptp12(&self) -> Option<u64> {
        let v12 = &self.vmx.vmcs12;
        (v12.secondary_controls() & crate::vmx::caps::secondary::ENABLE_EPT != 0)
            .then(|| v12.get(crate::vmx::Field::EPT_POINTER))
    }
}
