//! Entering L2 (L1's VMLAUNCH/VMRESUME) and every exit while L2 runs:
//! handled by L0 when L1 did not ask for it, reflected to L1 otherwise.

use alloc::vec::Vec;

use super::vmx_instr::{apply, l1_mode};
use super::{Outcome, Platform, Stop, Vcpu, SHUTDOWN_PORT};
use crate::arch::run::GuestRegs;
use crate::guest_mem::GuestMemory;
use crate::machine::Machine;
use crate::nested::checks::{self, CheckCtx, EntryFailure};
use crate::nested::ept12::{self, Ept12Fault, EptAccess};
use crate::nested::instr::{err, Outcome as Instr};
use crate::nested::msr_lists::{self, Home};
use crate::nested::prepare::{self, L0Part};
use crate::nested::reflect;
use crate::nested::{ept02, Level, VmcsSet, VPID_UNTAGGED_L2};
use crate::vmx::caps::{primary, secondary};
use crate::vmx::exit::{reason, CrAccess, EptViolation, ExitInfo, InterruptionInfo, VmExit};
use crate::vmx::inject::{inject_exception, reinject_interrupted_event, skip_instruction};

use crate::regs::{CR0_PG, CR4_PAE, EFER_LMA};
use crate::vmx::{ept, Field as F, Vmcs};

const GP: u8 = 13;

const VOLATILE_MASK: [u64; crate::nested::vmcs12::WORDS] =
    crate::nested::vmcs12::slot_mask(checks::VOLATILE);

/// MSRs an L2 may touch without exiting when L1 lets it: frequent in a
/// Linux guest, switched by VMCS02 or harmless to share (none is one L0
/// emulates). (msr, write)
const PASS_THROUGH_MSRS: &[(u32, bool)] = &[
    (0xc000_0100, false), // FS_BASE: a VMCS02 guest field
    (0xc000_0100, true),
    (0xc000_0101, false), // GS_BASE: likewise
    (0xc000_0101, true),
    (0xc000_0102, false), // KERNEL_GS_BASE
    (0xc000_0102, true),
    (0xc000_0103, false), // TSC_AUX
    (0x48, false),        // SPEC_CTRL
    (0x48, true),
    (0x49, true), // PRED_CMD
];

/// The bit number of an MSR in a VMX MSR bitmap (SDM 25.6.9).
const fn msr_bit(msr: u32, write: bool) -> usize {
    (if write { 2048 * 8 } else { 0 })
        + if msr <= 0x1fff {
            msr as usize
        } else {
            1024 * 8 + (msr - 0xc000_0000) as usize
        }
}

/// The words of MSR bitmap02 that follow L1's bitmap, with the bits of
/// each that do: the x2APIC range (reads, then writes: 4 words each), then
/// the words of the pass-through MSRs.
const FROM_L1: [(u16, u64); 12] = {
    let mut t = [(0u16, 0u64); 12];
    let mut n = 0;
    while n < 8 {
        t[n] = ((msr_bit(0x800, n >= 4) / 64 + n % 4) as u16, u64::MAX);
        n += 1;
    }
    let mut i = 0;
    while i < PASS_THROUGH_MSRS.len() {
        let bit = msr_bit(PASS_THROUGH_MSRS[i].0, PASS_THROUGH_MSRS[i].1);
        let mut j = 8;
        while j < n && t[j].0 as usize != bit / 64 {
            j += 1;
        }
        if j == n {
            t[n] = ((bit / 64) as u16, 0);
            n += 1;
        }
        t[j].1 |= 1 << (bit % 64);
        i += 1;
    }
    assert!(
        n == 12,
        "prepare_bitmaps reads the pass-through words one by one"
    );
    t
};

/// Where an L2 exit goes once L0 has looked at it.
enum L2Route {
    /// L0 handled it; L2 goes on unless the outcome says otherwise.
    Handled(Outcome),
    /// L1 gets this exit (the hardware's, or one L0 synthesized).
    Reflect(ExitInfo),
}

impl Vcpu {
    /// VMLAUNCH or VMRESUME by L1 (SDM 27.1-27.3).
    pub(super) fn nested_entry<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
        launch: bool,
    ) -> Outcome {
        let v = vs.current();
        let s = l1_mode(v);
        let x = &mut self.nested.vmx;
        if let Err(o) = x.common_checks(&s) {
            apply(v, p, o);
            return Outcome::Resume;
        }
        if x.current.is_none() {
            apply(v, p, Instr::FailInvalid);
            return Outcome::Resume;
        }
        // What L1 wrote through the shadow VMCS counts from here.
        self.sync_from_shadow(vs);
        let v = vs.current();
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
            self.field_to_shadow(vs, F::VM_INSTRUCTION_ERROR);
            apply(vs.current(), p, o);
            return Outcome::Resume;
        }
        let l1_long = s.paging.efer & (1 << 10) != 0;
        let result = {
            let mem = p.mem();
            let is_ram = |a: u64, len: u64| mem.is_ram(a, len);
            let rev = |a: u64| {
                let mut b = [0u8; 4];
                mem.read(a, &mut b).ok().map(|_| u32::from_le_bytes(b))
            };
            let ctx = CheckCtx {
                caps: &x.caps,
                maxphyaddr: self.maxphyaddr,
                l1_long_mode: l1_long,
                is_l1_ram: &is_ram,
                read_revision: &rev,
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
        };
        match result {
            Ok(()) => {}
            Err(EntryFailure::Fail { error, check }) => {
                log::info!("L1 VM entry fails with error {error}: {check}");
                let o = x.fail_with(error);
                self.field_to_shadow(vs, F::VM_INSTRUCTION_ERROR);
                apply(vs.current(), p, o);
                return Outcome::Resume;
            }
            Err(EntryFailure::GuestState {
                qualification,
                check,
            }) => {
                log::info!(
                    "L1 VM entry fails on guest state (qualification {qualification}): {check}"
                );
                return self.entry_failure_exit(
                    vs,
                    p,
                    reason::INVALID_GUEST_STATE as u32,
                    qualification,
                );
            }
        }

        self.nested.checked_l1_long = Some(l1_long);
        // The entry happens: build VMCS02.
        let s12 = self.nested.vmx.vmcs12.secondary_controls();
        let v12 = &self.nested.vmx.vmcs12;
        let eptp02 = if s12 & secondary::ENABLE_EPT != 0 {
            match self
                .nested
                .ept02
                .root_for(p.tables(), v12.get(F::EPT_POINTER))
            {
                Ok((root, evicted)) => {
                    if evicted {
                        p.invept_all();
                    }
                    ept::eptp(root, false)
                }
                Err(_) => return Outcome::Stop(Stop::Internal("out of memory for EPT02 tables")),
            }
        } else {
            self.eptp01
        };
        let vpid02 = if s12 & secondary::ENABLE_VPID != 0 {
            let (v02, stolen) = self
                .nested
                .vpids
                .get(v12.get(F::VIRTUAL_PROCESSOR_ID) as u16);
            if stolen {
                p.flush_vpid(v02);
            }
            v02
        } else {
            // Without a VPID of its own, L2's translations do not survive
            // a transition (SDM 28.5.5, 26.3.2.5).
            p.flush_vpid(VPID_UNTAGGED_L2);
            VPID_UNTAGGED_L2
        };
        let (io_a, msr_bitmap) = self.prepare_bitmaps(p);
        if let Some(vmcs12) = self.nested.vmx.current {
            let eptp12 = self.eptp12();
            m.shadow.ids.note_entry(vmcs12, eptp12);
        }
        let v01 = vs.current();
        let l1_efer = v01.read(F::GUEST_IA32_EFER);
        let l1_pat = v01.read(F::GUEST_IA32_PAT);
        let l1_debugctl = v01.read(F::GUEST_IA32_DEBUGCTL);
        let l1_dr7 = v01.read(F::GUEST_DR7);
        self.nested.l1_cr3_at_entry = v01.read(F::GUEST_CR3);
        let l0 = L0Part {
            caps: &self.host_caps,
            cr_policy: &self.policy,
            eptp: eptp02,
            vpid: if self.vpid != 0 { vpid02 } else { 0 },
            io_bitmap_a: io_a,
            io_bitmap_b: io_a + 4096,
            msr_bitmap,
            l1_efer,
            l1_pat,
            l1_debugctl,
            l1_dr7,
            l0_timer: self.l0_timer,
            // A new entry re-evaluates L2's virtual interrupts from scratch.
            window: false,
        };
        self.nested.window02 = false;
        vs.select(Level::L2);
        let vmcs12_ptr = self.nested.vmx.current;
        if self.nested.vmcs02_holds != vmcs12_ptr {
            // VMCS02 holds another VMCS12's state (or none).
            self.nested.vmx.vmcs12.make_dirty();
        }
        if self.nested.vmcs02_holds.is_none() {
            self.nested.derived = prepare::Derived::default();
        }
        prepare::write_vmcs02(
            vs.current(),
            &self.nested.vmx.vmcs12,
            &l0,
            &mut self.nested.derived,
        );
        self.nested.vmx.vmcs12.clean();
        self.nested.vmcs02_holds = vmcs12_ptr;

        // The VM-entry MSR-load list (SDM 27.4).
        let v12 = &self.nested.vmx.vmcs12;
        let (count, addr) = (
            v12.get(F::VM_ENTRY_MSR_LOAD_COUNT),
            v12.get(F::VM_ENTRY_MSR_LOAD_ADDR),
        );
        if count > 0 {
            if let Err(index) = self.load_msr_list(vs, p, addr, count) {
                vs.select(Level::L1);
                return self.entry_failure_exit(vs, p, reason::MSR_LOADING as u32, index);
            }
        }
        self.nested.l2_vm = None;
        self.nested.entry_was_launched = self.nested.vmx.vmcs12.launched;
        self.nested.vmx.vmcs12.launched = true;
        self.nested.in_l2 = true;
        self.apicv_at_entry(m, vs, p);
        Outcome::Resume
    }

    /// The hardware refused to enter VMCS02 (VMfailValid/Invalid) although
    /// L0's checks passed: L1's VMLAUNCH/VMRESUME fails the same way.
    pub fn vmcs02_entry_failed<S: VmcsSet, P: Platform>(
        &mut self,
        vs: &mut S,
        p: &mut P,
        e: crate::vmx::VmxError,
    ) -> Outcome {
        log::warn!("hardware VM entry into VMCS02 failed ({e}) after L0's checks passed");
        self.nested.in_l2 = false;
        self.nested.vmx.vmcs12.launched = self.nested.entry_was_launched;
        vs.select(Level::L1);
        let error = match e {
            crate::vmx::VmxError::FailValid(n) => n,
            crate::vmx::VmxError::FailInvalid => err::ENTRY_INVALID_CONTROL,
        };
        let o = self.nested.vmx.fail_with(error);
        self.field_to_shadow(vs, F::VM_INSTRUCTION_ERROR);
        apply(vs.current(), p, o);
        Outcome::Resume
    }

    /// VMCS02's I/O and MSR bitmaps (see `Vmcs02Pages`).
    fn prepare_bitmaps<P: Platform>(&mut self, p: &mut P) -> (u64, u64) {
        let v12 = &self.nested.vmx.vmcs12;
        let pages = self.nested.pages;
        let p12 = v12.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32;
        let io = if p12 & (primary::USE_IO_BITMAPS | primary::UNCONDITIONAL_IO_EXITING) != 0 {
            pages.io_all
        } else {
            pages.io_l0
        };
        // The x2APIC range follows L1's bitmap as is: with "virtualize
        // x2APIC mode" the hardware virtualizes what L1 does not intercept;
        // so do the pass-through MSRs. Everything else stays L0's.
        let mut l1 = [u64::MAX; FROM_L1.len()];
        if p12 & primary::USE_MSR_BITMAPS != 0 {
            let b = v12.get(F::MSR_BITMAP);
            let mem = p.mem();
            // The x2APIC words, 4 in a row in each half, then one each.
            for (k, chunk) in [(0, 4), (4, 4), (8, 1), (9, 1), (10, 1), (11, 1)] {
                let mut bytes = [0xffu8; 32];
                let bytes = &mut bytes[..8 * chunk];
                if mem.read(b + 8 * FROM_L1[k].0 as u64, bytes).is_err() {
                    bytes.fill(0xff); // not L1 RAM any more: exit
                }
                for (i, c) in bytes.chunks_exact(8).enumerate() {
                    l1[k + i] = u64::from_le_bytes(c.try_into().unwrap());
                }
            }
        }
        let page = p.page(pages.msr02);
        for (&(w, mask), v) in FROM_L1.iter().zip(l1) {
            let w = w as usize;
            page[w] = page[w] & !mask | v & mask;
        }
        let mut force = |msr: u32| {
            let bit = 2048 * 8 + msr as usize;
            page[bit / 64] |= 1 << (bit % 64);
        };
        if self.ipiv12()
            && self.nested.vmx.vmcs12.secondary_controls() & secondary::VIRTUALIZE_X2APIC != 0
        {
            // L0 does IPI virtualization: ICR writes must reach it.
            force(super::apicv::X2APIC_ICR);
        }
        if self.nested.vmx.vmcs12.secondary_controls()
            & (secondary::VIRTUALIZE_X2APIC | secondary::VIRTUAL_INTERRUPT_DELIVERY)
            == secondary::VIRTUALIZE_X2APIC | secondary::VIRTUAL_INTERRUPT_DELIVERY
        {
            // TPR and self-IPI virtualization evaluate pending virtual
            // interrupts, which Bochs may then deliver with IF = 0 (see
            // prepare.rs on EOIs): L0 virtualizes these writes itself.
            force(super::apicv::X2APIC_TPR);
            force(super::apicv::X2APIC_SELF_IPI);
        }
        (io, pages.msr02)
    }

    /// Applies a VM-entry (or VM-exit) MSR-load list to the current VMCS
    /// and the CPU; Err(1-based index) names the entry that failed.
    fn load_msr_list<S: VmcsSet, P: Platform>(
        &mut self,
        vs: &mut S,
        p: &mut P,
        addr: u64,
        count: u64,
    ) -> Result<(), u64> {
        let list = msr_lists::read_list(p.mem(), addr, count).ok_or(1u64)?;
        for (i, e) in list.iter().enumerate() {
            let bad = (i + 1) as u64;
            match msr_lists::loadable(e) {
                Some(Home::Vmcs(f)) => vs.current().write(f, e.data),
                Some(Home::Msr) => {
                    if !self.write_msr_for_guest(p, e.index, e.data) {
                        return Err(bad);
                    }
                }
                None => return Err(bad),
            }
        }
        Ok(())
    }

    /// WRMSR on the guest's behalf: L0's emulated MSRs, else the CPU's.
    fn write_msr_for_guest<P: Platform>(&mut self, p: &mut P, msr: u32, value: u64) -> bool {
        if super::msr::emulated_by_l0(msr) {
            return super::msr::write(msr, value, &mut self.mtrr).is_ok();
        }
        p.write_msr(msr, value)
    }

    fn read_msr_for_guest<P: Platform>(&mut self, p: &mut P, msr: u32) -> Option<u64> {
        if super::msr::emulated_by_l0(msr) {
            return self.read_l0_msr(msr).ok();
        }
        p.read_msr(msr)
    }

    /// A VM-entry failure exit to L1 (SDM 27.8): exit reason with bit 31,
    /// qualification, and L1's host state; L2 never ran.
    fn entry_failure_exit<S: VmcsSet, P: Platform>(
        &mut self,
        vs: &mut S,
        p: &mut P,
        basic: u32,
        qualification: u64,
    ) -> Outcome {
        let v12 = &mut self.nested.vmx.vmcs12;
        v12.set(F::VM_EXIT_REASON, (basic | 1 << 31) as u64);
        v12.set(F::EXIT_QUALIFICATION, qualification);
        self.load_l1_host(vs, p)
    }

    /// L1's state from VMCS12's host area, with the exit MSR-load list.
    fn load_l1_host<S: VmcsSet, P: Platform>(&mut self, vs: &mut S, p: &mut P) -> Outcome {
        debug_assert_eq!(vs.selected(), Level::L1);
        self.nested.in_l2 = false;
        let cr = reflect::load_host_state(&self.nested.vmx.vmcs12, vs.current(), &self.policy);
        if cr.cr0 & CR0_PG != 0 && cr.cr4 & CR4_PAE != 0 && cr.efer & EFER_LMA == 0 {
            let mut raw = [0u8; 32];
            if p.mem().read(cr.cr3 & 0xffff_ffe0, &mut raw).is_err() {
                return self.vmx_abort("PDPTEs of the host CR3 are not L1 RAM");
            }
            for (i, f) in [
                F::GUEST_PDPTE0,
                F::GUEST_PDPTE1,
                F::GUEST_PDPTE2,
                F::GUEST_PDPTE3,
            ]
            .into_iter()
            .enumerate()
            {
                vs.current().write(
                    f,
                    u64::from_le_bytes(raw[8 * i..8 * i + 8].try_into().unwrap()),
                );
            }
        }
        let v12 = &self.nested.vmx.vmcs12;
        let (count, addr) = (
            v12.get(F::VM_EXIT_MSR_LOAD_COUNT),
            v12.get(F::VM_EXIT_MSR_LOAD_ADDR),
        );
        if count > 0 && self.load_msr_list(vs, p, addr, count).is_err() {
            return self.vmx_abort("the VM-exit MSR-load list failed");
        }
        // L1 reads the exit through the shadow VMCS.
        self.sync_to_shadow(vs);
        // Without a VPID for L2, exits flush L1's translations (SDM 28.5.5);
        // a new CR3 from the host state is a new address space for L1 too.
        if self.vpid != 0
            && (self.nested.vmx.vmcs12.secondary_controls() & secondary::ENABLE_VPID == 0
                || cr.cr3 != self.nested.l1_cr3_at_entry)
        {
            p.flush_vpid(self.vpid);
        }
        Outcome::Resume
    }

    /// SDM 28.7: a VMX abort shuts the logical processor (L1) down.
    fn vmx_abort(&mut self, why: &'static str) -> Outcome {
        log::error!("VMX abort of the cloud VM: {why}");
        Outcome::Stop(Stop::Internal(
            "VMX abort: the cloud VM's VM exit could not load its host state",
        ))
    }

    /// Reflects the exit `e` to L1: L2's state into VMCS12, L1's loaded.
    pub(super) fn reflect<S: VmcsSet, P: Platform>(
        &mut self,
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
    ) -> Outcome {
        self.nested.reflected += 1;
        reflect::sync_vmcs12(vs.current(), &mut self.nested.vmx.vmcs12, e, &self.policy);
        // The VM-exit MSR-store list: L2's values (SDM 28.4).
        let v12 = &self.nested.vmx.vmcs12;
        let (count, addr) = (
            v12.get(F::VM_EXIT_MSR_STORE_COUNT),
            v12.get(F::VM_EXIT_MSR_STORE_ADDR),
        );
        if count > 0 {
            let Some(list) = msr_lists::read_list(p.mem(), addr, count) else {
                return self.vmx_abort("the VM-exit MSR-store list is not L1 RAM");
            };
            let mut values = Vec::with_capacity(list.len());
            for e in &list {
                let value = match msr_lists::home(e.index, false) {
                    Some(_) if e.reserved != 0 => None,
                    Some(Home::Vmcs(f)) => Some(vs.current().read(f)),
                    Some(Home::Msr) => self.read_msr_for_guest(p, e.index),
                    None => None,
                };
                match value {
                    Some(v) => values.push(v),
                    None => {
                        return self.vmx_abort(
                            "the VM-exit MSR-store list names an MSR that cannot be stored",
                        )
                    }
                }
            }
            for (i, v) in values.into_iter().enumerate() {
                if p.mem()
                    .write(addr + 16 * i as u64 + 8, &v.to_le_bytes())
                    .is_err()
                {
                    return self.vmx_abort("the VM-exit MSR-store list is not L1 RAM");
                }
            }
        }
        vs.select(Level::L1);
        self.load_l1_host(vs, p)
    }

    /// Every exit while L2 runs, routed in KVM's order (nested.c): L0's own
    /// business first, whatever L1 asked; then what L1's controls claim;
    /// then what nobody claimed, which L0 carries out for L2 as the CPU
    /// would have without L1's intercept. One epilogue for what L0 handled.
    pub(super) fn l2_exit<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
    ) -> Outcome {
        let e = ExitInfo::read(vs.current());
        let gpr = &self.regs.gpr;
        let exit = VmExit::decode(&e, gpr[GuestRegs::RAX], gpr[GuestRegs::RCX]);
        if let VmExit::EntryFailed {
            reason,
            qualification,
        } = exit
        {
            // The hardware refused VMCS02's guest state although L0's checks
            // passed: L1 sees the failure its VMCS12 earned.
            log::warn!(
                "hardware rejected VMCS02 (exit reason {:#x}, qualification {qualification:#x}) that passed L0's checks",
                e.reason
            );
            self.nested.vmx.vmcs12.launched = false;
            vs.select(Level::L1);
            return self.entry_failure_exit(vs, p, reason as u32, qualification);
        }
        let route = match self.l0_wants_l2_exit(m, vs, p, exit, &e) {
            Some(route) => route,
            None if self.l1_wants_l2_exit(vs, p, exit, &e) => L2Route::Reflect(e),
            None => self.l2_exit_unclaimed(m, vs, p, exit, &e),
        };
        match route {
            L2Route::Reflect(info) => self.reflect(vs, p, &info),
            L2Route::Handled(o) => self.after_l0_handled_l2_exit(m, vs, p, &e, o),
        }
    }

    /// The L2 exits that are L0's whatever L1 asked (KVM's
    /// nested_vmx_l0_wants_exit): EPT02, a user VM's serial ports, its
    /// ultracalls and L0's CPUID leaf, L0's posted-interrupt notifications
    /// and the IPIs L0 virtualizes.
    fn l0_wants_l2_exit<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
        exit: VmExit,
        e: &ExitInfo,
    ) -> Option<L2Route> {
        let handled = match exit {
            VmExit::EptViolation { access, gpa } => {
                return Some(self.l2_ept_violation(m, vs, p, e, access, gpa));
            }
            VmExit::EptMisconfig { .. } => {
                Outcome::Stop(Stop::Internal("EPT misconfiguration in EPT02 (an L0 bug)"))
            }
            VmExit::Io(io)
                if m.shadow.intercept_com && super::com::touches_com(io.port, io.size) =>
            {
                self.l2_com_io(m, vs, p, e, io)
            }
            VmExit::Cpuid { leaf } if ultracall_abi::cpuid::l0_answers_for_user_vms(leaf) => {
                // A user VM finds L0 with CPUID alone, whatever the guest
                // hypervisor (docs/ultracall-abi.md §1).
                self.cpuid(vs.current(), p);
                Outcome::Resume
            }
            VmExit::Vmcall if self.is_ultracall() => {
                self.ultracall(m, vs, p, ultracall_abi::CallerLevel::L2);
                Outcome::Resume
            }
            VmExit::ExternalInterrupt { .. } => self.l2_notification(vs, p, e)?,
            VmExit::ApicWrite { .. } => self.l2_apic_write(vs, p, e)?,
            VmExit::TripleFault => {
                // L2 resets: the IOAPIC it programmed is gone with it. L1
                // still gets the exit.
                if let Some(vm) = self.current_l2_vm(m) {
                    m.shadow.ioapic_reset(vm);
                }
                return None;
            }
            _ => return None,
        };
        Some(L2Route::Handled(handled))
    }

    /// Whether L1's controls, bitmaps and masks claim this exit (KVM's
    /// nested_vmx_l1_wants_exit).
    fn l1_wants_l2_exit<S: VmcsSet, P: Platform>(
        &self,
        vs: &mut S,
        p: &mut P,
        exit: VmExit,
        e: &ExitInfo,
    ) -> bool {
        let v12 = &self.nested.vmx.vmcs12;
        match exit {
            VmExit::Io(io) => reflect::l1_wants_io(v12, p.mem(), &io),
            VmExit::Msr { index, write } => reflect::l1_wants_msr(v12, p.mem(), index, write),
            VmExit::VirtualizedEoi { vector } => {
                // VMCS02 makes every EOI exit (prepare.rs); L1 gets those
                // its EOI-exit bitmap names.
                let bitmap = [
                    F::EOI_EXIT_BITMAP0,
                    F::EOI_EXIT_BITMAP1,
                    F::EOI_EXIT_BITMAP2,
                    F::EOI_EXIT_BITMAP3,
                ][vector as usize / 64];
                v12.get(bitmap) & 1 << (vector % 64) != 0
            }
            VmExit::Cr(access) => {
                let value = match access {
                    CrAccess::MovToCr { gpr, .. } if gpr as usize == GuestRegs::RSP => {
                        vs.current().read(F::GUEST_RSP)
                    }
                    CrAccess::MovToCr { gpr, .. } => self.regs.gpr[gpr as usize],
                    _ => 0,
                };
                reflect::l1_wants_cr(v12, access, value)
            }
            VmExit::Exception { info, error_code } => {
                reflect::l1_wants_exception(v12, info, error_code)
            }
            _ => reflect::l1_wants_by_controls(v12, e.basic()),
        }
    }

    /// An L2 exit neither L0 nor L1 claimed: VMCS02 exits where L1's VMCS12
    /// would not have, and L0 does what the CPU would have done for L2.
    fn l2_exit_unclaimed<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
        exit: VmExit,
        e: &ExitInfo,
    ) -> L2Route {
        use super::apicv::{X2APIC_ICR, X2APIC_SELF_IPI, X2APIC_TPR};
        let o = match exit {
            // L0's own port, unless L1 asked for it.
            VmExit::Io(io) if io.port == SHUTDOWN_PORT => self.io(m, vs.current(), p, io),
            // The port is L2's as L1 left it.
            VmExit::Io(io) => self.l2_passthrough_io(m, vs, p, e, io),
            VmExit::Msr {
                index: X2APIC_ICR,
                write: true,
            } => match self.l2_x2apic_icr(vs, p) {
                Some(o) => o,
                None => self.l2_msr(vs, p, X2APIC_ICR, true),
            },
            VmExit::Msr {
                index: msr @ (X2APIC_TPR | X2APIC_SELF_IPI),
                write: true,
            } => match self.l2_x2apic_virtual_write(vs, p, msr) {
                Some(o) => o,
                None => self.l2_msr(vs, p, msr, true),
            },
            // L0's emulated MSRs, as for L1.
            VmExit::Msr { index, write } => self.l2_msr(vs, p, index, write),
            VmExit::PreemptionTimer => {
                // L0's own timer: serve the management line, L2 goes on.
                self.poll_console(m, vs, p);
                Outcome::Resume
            }
            VmExit::InterruptWindow => {
                // L0's own window: the virtual interrupt it waited to
                // deliver goes in at the next entry (before_l2_entry).
                self.set_window02(vs.current(), false);
                Outcome::Resume
            }
            // The EOI itself is done (SDM 30.1.4); the evaluation it
            // skipped is before_l2_entry's.
            VmExit::VirtualizedEoi { .. } => Outcome::Resume,
            VmExit::Cr(_) => {
                // Only a bit VMX fixes to 1 that L1 does not mask can make
                // this exit: L2 tried to clear it, as hardware would refuse
                // with #GP.
                inject_exception(vs.current(), GP, Some(0));
                Outcome::Resume
            }
            VmExit::Exception { .. } => {
                // Exception bitmap02 is L1's: L1 always wants these.
                Outcome::Stop(Stop::Internal("an L2 exception exit L1 did not ask for"))
            }
            _ => {
                let basic = e.basic();
                log::warn!(
                    "L2 exit {} ({}) that L1 did not ask for: reflected anyway",
                    basic,
                    crate::vmx::exit::reason_name(basic)
                );
                return L2Route::Reflect(*e);
            }
        };
        L2Route::Handled(o)
    }

    /// After L0 handled an L2 exit itself: the interrupted event goes back
    /// in, and if a relay interrupt is owed and
    /// L1 takes external interrupts while L2 runs, L1 gets that exit now,
    /// as a device interrupt for L1 would cause (SDM 26.2, 28.2.2).
    fn after_l0_handled_l2_exit<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
        o: Outcome,
    ) -> Outcome {
        use crate::vmx::caps::{exit, pin};
        self.nested.handled_in_l0 += 1;
        if self.nested.in_l2 {
            // An event whose delivery the exit interrupted is delivered now.
            reinject_interrupted_event(vs.current(), e.idt_info, e.idt_error, e.instr_len);
        }
        if o != Outcome::Resume || !self.nested.in_l2 || !m.shadow.irqs.irq_pending() {
            return o;
        }
        let v12 = &self.nested.vmx.vmcs12;
        if v12.get(F::PIN_BASED_VM_EXEC_CONTROL) as u32 & pin::EXTERNAL_INTERRUPT_EXITING == 0 {
            return o; // delivered when L1 runs next
        }
        // A pending event injection must not be lost: it is still in
        // VMCS02's entry field; the exit reports it as IDT-vectoring info.
        let v = vs.current();
        let pending_event = v.read(F::VM_ENTRY_INTR_INFO_FIELD) as u32;
        let mut e = ExitInfo {
            reason: reason::EXTERNAL_INTERRUPT as u32,
            ..Default::default()
        };
        if pending_event & (1 << 31) != 0 {
            e.idt_info = pending_event;
            e.idt_error = v.read(F::VM_ENTRY_EXCEPTION_ERROR_CODE) as u32;
            e.instr_len = v.read(F::VM_ENTRY_INSTRUCTION_LEN) as u32;
            v.write(F::VM_ENTRY_INTR_INFO_FIELD, 0);
        }
        if v12.get(F::VM_EXIT_CONTROLS) as u32 & exit::ACK_INTERRUPT_ON_EXIT != 0 {
            // Acknowledged on exit: the vector travels in the exit information.
            let vector = m.shadow.irqs.relay_vector.unwrap_or(0);
            e.intr_info = InterruptionInfo::new(
                vector,
                crate::vmx::exit::event_type::EXTERNAL_INTERRUPT,
                false,
            )
            .0;
            m.shadow.irqs.relay_delivered();
        }
        self.reflect(vs, p, &e)
    }

    /// RDMSR/WRMSR of L2 that L1 let through: L0's emulated MSRs as L1
    /// sees them, VMCS02's guest fields for MSRs it switches, else the CPU.
    fn l2_msr<S: VmcsSet, P: Platform>(
        &mut self,
        vs: &mut S,
        p: &mut P,
        msr: u32,
        write: bool,
    ) -> Outcome {
        if super::msr::emulated_by_l0(msr) {
            if write {
                self.wrmsr(vs.current(), msr)
            } else {
                self.rdmsr(vs.current(), msr)
            }
            return Outcome::Resume;
        }
        let value = (self.regs.gpr[GuestRegs::RDX] & 0xffff_ffff) << 32
            | (self.regs.gpr[GuestRegs::RAX] & 0xffff_ffff);
        let ok = match (msr_lists::home(msr, false), write) {
            (Some(Home::Vmcs(f)), true) => {
                vs.current().write(f, value);
                true
            }
            (Some(Home::Vmcs(f)), false) => {
                let v = vs.current().read(f);
                self.regs.gpr[GuestRegs::RAX] = v & 0xffff_ffff;
                self.regs.gpr[GuestRegs::RDX] = v >> 32;
                true
            }
            (Some(Home::Msr), true) => p.write_msr(msr, value),
            (Some(Home::Msr), false) => match p.read_msr(msr) {
                Some(v) => {
                    self.regs.gpr[GuestRegs::RAX] = v & 0xffff_ffff;
                    self.regs.gpr[GuestRegs::RDX] = v >> 32;
                    true
                }
                None => false,
            },
            // x2APIC, SMM and microcode MSRs: L1 owns the real ones; L2 may
            // only reach them through L1.
            (None, _) => false,
        };
        if ok {
            skip_instruction(vs.current());
        } else {
            inject_exception(vs.current(), GP, Some(0));
        }
        Outcome::Resume
    }

    /// An EPT violation while L2 runs: fill EPT02 from EPT12, or reflect.
    fn l2_ept_violation<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
        violation: EptViolation,
        gpa: u64,
    ) -> L2Route {
        if self.nested.vmx.vmcs12.secondary_controls() & secondary::ENABLE_EPT == 0 {
            // EPT02 is EPT01: L2 touched what L1 itself cannot.
            return L2Route::Handled(self.ept_violation(m, vs.current(), p, violation, gpa));
        }
        let eptp12 = self.nested.vmx.vmcs12.get(F::EPT_POINTER);
        let access = EptAccess(e.qualification & 7);
        let walk = ept12::walk(
            p.mem(),
            eptp12,
            e.guest_physical,
            access,
            &self.nested.vmx.caps,
            self.maxphyaddr,
        );
        match walk {
            Ok(leaf) => {
                let page1 = leaf.gpa & !0xfff;
                if m.ept.l0.contains(page1) {
                    // Never map L0's frames, whatever EPT12 says.
                    log::warn!("EPT12 maps L2 {:#x} to {page1:#x}, which is not L1's: reflected as a misconfiguration", e.guest_physical);
                    let m = ExitInfo {
                        reason: reason::EPT_MISCONFIG as u32,
                        qualification: 0,
                        ..*e
                    };
                    return L2Route::Reflect(m);
                }
                let uncached = !p.mem().is_ram(page1, 4096);
                let root02 = vs.current().read(F::EPT_POINTER) & crate::mm::paging::ADDR_MASK;
                let entry =
                    ept02::leaf(page1, leaf.perms, leaf.mem_type, leaf.ignore_pat, uncached);
                L2Route::Handled(
                    match ept02::set_leaf(p.tables(), root02, e.guest_physical & !0xfff, entry) {
                        Ok(()) => Outcome::Resume,
                        Err(_) => Outcome::Stop(Stop::Internal("out of memory for EPT02 tables")),
                    },
                )
            }
            Err(Ept12Fault::Violation { allowed }) => {
                self.watch_ioapic(m, vs, p, e);
                let q = (e.qualification & !0x38) | allowed << 3;
                L2Route::Reflect(ExitInfo {
                    qualification: q,
                    ..*e
                })
            }
            Err(Ept12Fault::Misconfig | Ept12Fault::TableNotRam) => {
                // KVM marks MMIO pages with misconfigured entries.
                self.watch_ioapic(m, vs, p, e);
                L2Route::Reflect(ExitInfo {
                    reason: reason::EPT_MISCONFIG as u32,
                    qualification: 0,
                    ..*e
                })
            }
        }
    }
}
