//! L1's VMLAUNCH/VMRESUME (SDM 27.1-27.3), in KVM's order: the checks of
//! the instruction, the controls and the host state (VMfail), the guest
//! state (an entry-failure exit to L1), then VMCS02 built from VMCS12
//! (`prepare.rs`) with EPT02, VPID02 and the bitmaps, and the VM-entry
//! MSR-load list. The vCPU learns which VM L2 is between the two halves.

use super::checks::{self, CheckCtx, EntryFailure};
use super::context::{Flow, NestedCtx, NestedHw};
use super::ept12::EPTP_ACCESSED_DIRTY;
use super::instr::{err, Outcome as Instr};
use super::l1_state::{apply, l1_mode};
use super::prepare::{self, L0Part};
use super::vmcs12::{slot_mask, WORDS};
use super::{Level, VmcsSet, VPID_UNTAGGED_L2};
use crate::guest_mem::GuestMemory;
use crate::regs::EFER_LMA;
use crate::vmx::caps::{primary, secondary};
use crate::vmx::exit::reason;
use crate::vmx::{ept, Field as F, Vmcs, VmxError};

const VOLATILE_MASK: [u64; WORDS] = slot_mask(checks::VOLATILE);
const PDPTES: [F; 4] = [
    F::GUEST_PDPTE0,
    F::GUEST_PDPTE1,
    F::GUEST_PDPTE2,
    F::GUEST_PDPTE3,
];

/// How an entry into L2 ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// L2 runs next (VMCS02 current).
    Entered,
    /// L1 goes on (its instruction failed, or it got an entry-failure
    /// exit), or L0 stops.
    NotEntered(Flow),
}

impl<S: VmcsSet, H: NestedHw> NestedCtx<'_, S, H> {
    /// The checks of VMLAUNCH (`launch`) or VMRESUME, VMCS01 current: Ok
    /// if the entry happens, else how L1 goes on (RFLAGS and RIP as the
    /// CPU would set them, or an entry-failure exit already delivered).
    pub fn check_entry(&mut self, launch: bool) -> Result<(), Flow> {
        let v = self.vs.current();
        let s = l1_mode(v);
        let x = &mut self.nested.vmx;
        if let Err(o) = x.common_checks(&s) {
            apply(v, o, |a| self.hw.set_cr2(a));
            return Err(Flow::Resume);
        }
        if x.current.is_none() {
            apply(v, Instr::FailInvalid, |a| self.hw.set_cr2(a));
            return Err(Flow::Resume);
        }
        // What L1 wrote through the shadow VMCS counts from here.
        self.nested.sync_from_shadow(self.vs);
        let v = self.vs.current();
        let x = &mut self.nested.vmx;
        let fail = if v.read(F::GUEST_INTERRUPTIBILITY_INFO) & 2 != 0 {
            Some(err::ENTRY_BLOCKED_BY_MOV_SS)
        } else if launch && x.vmcs12.launched {
            Some(err::VMLAUNCH_NONCLEAR)
        } else if !launch && !x.vmcs12.launched {
            Some(err::VMRESUME_NONLAUNCHED)
        } else {
            None
        };
        if let Some(e) = fail {
            let o = x.fail_with(e);
            return Err(self.vmfail(o));
        }
        let l1_long = s.paging.efer & EFER_LMA != 0;
        let result = {
            let mem = self.hw.mem();
            let is_ram = |a: u64, len: u64| mem.is_ram(a, len);
            let rev = |a: u64| mem.read_u32(a).ok();
            let read_u64 = |a: u64| mem.read_u64(a).unwrap_or(u64::MAX);
            let ctx = CheckCtx {
                caps: &x.caps,
                maxphyaddr: self.host.maxphyaddr,
                l1_long_mode: l1_long,
                is_l1_ram: &is_ram,
                read_revision: &rev,
                read_u64: &read_u64,
            };
            // A VMRESUME of the VMCS12 VMCS02 holds, which passed every
            // check at its last entry and since changed only in what an
            // exit handler changes, needs only the checks of those fields.
            let light = !launch
                && self.nested.vmcs02_holds == x.current
                && self.nested.checked_l1_long == Some(l1_long)
                && x.vmcs12.dirty_only_in(&VOLATILE_MASK);
            if light {
                checks::check_light(&x.vmcs12, &ctx)
            } else {
                checks::check_controls(&x.vmcs12, &ctx)
                    .and_then(|_| checks::check_host_state(&x.vmcs12, &ctx))
                    .and_then(|_| checks::check_guest_state(&x.vmcs12, &ctx))
            }
            .and_then(|_| checks::check_cr3_pdptes(&x.vmcs12, &ctx))
        };
        match result {
            Ok(pdptes) => self.nested.cr3_pdptes = pdptes,
            Err(EntryFailure::Fail { error, check }) => {
                log::info!("L1 VM entry fails with error {error}: {check}");
                let o = x.fail_with(error);
                return Err(self.vmfail(o));
            }
            Err(EntryFailure::GuestState {
                qualification,
                check,
            }) => {
                log::info!(
                    "L1 VM entry fails on guest state (qualification {qualification}): {check}"
                );
                return Err(
                    self.entry_failure_exit(reason::INVALID_GUEST_STATE as u32, qualification)
                );
            }
        }
        self.nested.checked_l1_long = Some(l1_long);
        Ok(())
    }

    /// The entry happens: VMCS02 built from VMCS12 and made current, the
    /// VM-entry MSR-load list applied (its failure is an entry-failure
    /// exit to L1, VMCS01 current again).
    pub fn enter_l2(&mut self) -> Entry {
        let s12 = self.nested.vmx.vmcs12.secondary_controls();
        let v12 = &self.nested.vmx.vmcs12;
        let eptp02 = if s12 & secondary::ENABLE_EPT != 0 {
            match self
                .nested
                .ept02
                .root_for(self.hw.tables(), v12.get(F::EPT_POINTER))
            {
                Ok((root, evicted)) => {
                    if evicted {
                        self.hw.invept_all();
                    }
                    // With EPT12's A/D flags, the CPU's walks of L2's
                    // page tables reach L0 as writes (ept_ad.rs).
                    ept::eptp(root, v12.get(F::EPT_POINTER) & EPTP_ACCESSED_DIRTY != 0)
                }
                Err(_) => return Entry::NotEntered(Flow::Stop("out of memory for EPT02 tables")),
            }
        } else {
            self.host.eptp01
        };
        let vpid02 = if s12 & secondary::ENABLE_VPID != 0 {
            let (v02, stolen) = self
                .nested
                .vpids
                .get(v12.get(F::VIRTUAL_PROCESSOR_ID) as u16);
            if stolen {
                self.hw.flush_vpid(v02);
            }
            v02
        } else {
            // Without a VPID of its own, L2's translations do not survive
            // a transition (SDM 28.5.5, 26.3.2.5).
            self.hw.flush_vpid(VPID_UNTAGGED_L2);
            VPID_UNTAGGED_L2
        };
        let (io_a, msr_bitmap) = self.prepare_bitmaps();
        let virtual_apic = self.virtual_apic02();
        let v01 = self.vs.current();
        let l1_efer = v01.read(F::GUEST_IA32_EFER);
        let l1_pat = v01.read(F::GUEST_IA32_PAT);
        let l1_debugctl = v01.read(F::GUEST_IA32_DEBUGCTL);
        let l1_dr7 = v01.read(F::GUEST_DR7);
        self.nested.l1_cr3_at_entry = v01.read(F::GUEST_CR3);
        let host = self.host;
        let l0 = L0Part {
            caps: &host.caps,
            cr_policy: &host.policy,
            eptp: eptp02,
            vpid: if host.vpid != 0 { vpid02 } else { 0 },
            io_bitmap_a: io_a,
            io_bitmap_b: io_a + 4096,
            msr_bitmap,
            virtual_apic,
            l1_efer,
            l1_pat,
            l1_debugctl,
            l1_dr7,
            l0_timer: host.l0_timer,
            // A new entry re-evaluates L2's virtual interrupts from scratch.
            window: false,
        };
        let n = &mut *self.nested;
        n.window02 = false;
        self.vs.select(Level::L2);
        let vmcs12_ptr = n.vmx.current;
        if n.vmcs02_holds != vmcs12_ptr {
            // VMCS02 holds another VMCS12's state (or none).
            n.vmx.vmcs12.make_dirty();
        }
        if n.vmcs02_holds.is_none() {
            n.derived = prepare::Derived::default();
        }
        prepare::write_vmcs02(self.vs.current(), &n.vmx.vmcs12, &l0, &mut n.derived);
        n.vmx.vmcs12.clean();
        // VMCS02 has EPT, so the CPU takes the PDPTEs from it: those the
        // checks read from CR3, or VMCS12's own again once they are not.
        let pdptes = match n.cr3_pdptes {
            Some(p) => Some(p),
            None if n.pdptes02_from_cr3 => Some(PDPTES.map(|f| n.vmx.vmcs12.get(f))),
            None => None,
        };
        if let Some(p) = pdptes {
            for (f, e) in PDPTES.into_iter().zip(p) {
                self.vs.current().write(f, e);
            }
        }
        n.pdptes02_from_cr3 = n.cr3_pdptes.is_some();
        n.vmcs02_holds = vmcs12_ptr;

        // The VM-entry MSR-load list (SDM 27.4).
        let v12 = &self.nested.vmx.vmcs12;
        let (count, addr) = (
            v12.get(F::VM_ENTRY_MSR_LOAD_COUNT),
            v12.get(F::VM_ENTRY_MSR_LOAD_ADDR),
        );
        if count > 0 {
            if let Err(index) = self.load_msr_list(addr, count) {
                self.vs.select(Level::L1);
                return Entry::NotEntered(
                    self.entry_failure_exit(reason::MSR_LOADING as u32, index),
                );
            }
        }
        let n = &mut *self.nested;
        n.l2_vm = None;
        n.entry_was_launched = n.vmx.vmcs12.launched;
        n.l1_entry_pending = true;
        n.vmx.vmcs12.launched = true;
        n.in_l2 = true;
        Entry::Entered
    }

    /// VMCS02's virtual-APIC page: VMCS12's if it is L1's RAM; otherwise
    /// L0's stand-in, all ones again, as the processor reads memory that
    /// nothing backs (its writes there last until the next entry, where
    /// the hardware would drop them). Never an address of L0's own.
    fn virtual_apic02(&mut self) -> u64 {
        let v12 = &self.nested.vmx.vmcs12;
        let vapic = v12.get(F::VIRTUAL_APIC_PAGE_ADDR);
        if self.hw.mem().is_ram(vapic, 4096) {
            return vapic;
        }
        let stand_in = self.nested.pages.vapic_unbacked;
        if v12.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32 & primary::USE_TPR_SHADOW != 0 {
            self.hw.page(stand_in).fill(u64::MAX);
        }
        stand_in
    }

    /// The hardware refused VMCS02's guest state (an entry-failure exit)
    /// although L0's checks passed: L1 gets the failure its VMCS12 earned.
    /// Launch states stay as they were before the failed entry (SDM 27.8:
    /// only a successful VMLAUNCH changes one): VMCS02's, and VMCS12's if
    /// the entry was L1's (not L0's resume of a running L2).
    pub fn vmcs02_guest_state_rejected(&mut self, raw: u32, qualification: u64) -> Flow {
        log::warn!(
            "hardware rejected VMCS02 (exit reason {raw:#x}, qualification {qualification:#x}) although it passed L0's checks"
        );
        let n = &mut *self.nested;
        n.vmcs02_launched = n.before_run.vmcs02_launched;
        if n.before_run.l1_entry {
            n.vmx.vmcs12.launched = n.entry_was_launched;
        }
        self.vs.select(Level::L1);
        self.entry_failure_exit(raw & 0xffff, qualification)
    }

    /// The hardware refused to enter VMCS02 (VMfailValid/Invalid) although
    /// L0's checks passed: L1's VMLAUNCH/VMRESUME fails the same way.
    pub fn vmcs02_entry_failed(&mut self, e: VmxError) -> Flow {
        log::warn!("hardware VM entry into VMCS02 failed ({e}) although it passed L0's checks");
        let n = &mut *self.nested;
        n.in_l2 = false;
        if core::mem::take(&mut n.l1_entry_pending) {
            n.vmx.vmcs12.launched = n.entry_was_launched;
        }
        self.vs.select(Level::L1);
        let error = match e {
            VmxError::FailValid(n) => n,
            VmxError::FailInvalid => err::ENTRY_INVALID_CONTROL,
        };
        let o = self.nested.vmx.fail_with(error);
        self.vmfail(o)
    }

    /// L1's VMLAUNCH/VMRESUME fails with `o` (VMCS01 current): the error
    /// number reaches the shadow VMCS, RFLAGS and RIP as the CPU sets them.
    fn vmfail(&mut self, o: Instr) -> Flow {
        self.nested
            .field_to_shadow(self.vs, F::VM_INSTRUCTION_ERROR);
        apply(self.vs.current(), o, |a| self.hw.set_cr2(a));
        Flow::Resume
    }
}
