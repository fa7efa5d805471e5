//! A VM exit from L2 to L1 carried out by L0 (KVM's nested_vmx_vmexit):
//! L2's state into VMCS12 with the exit information (`reflect.rs`), the
//! VM-exit MSR-store list, then L1's host state from VMCS12 with the
//! VM-exit MSR-load list; a VM-entry failure exit takes the second half
//! only. What L1 cannot get is a VMX abort (SDM 28.7): L1's logical
//! processor shuts down with the reason in VMCS12, and L0 goes on.

use super::context::{Flow, NestedCtx, NestedHw};
use super::reflect;
use super::{Level, VmcsSet};
use crate::guest_mem::GuestMemory;
use crate::regs::{CR0_PG, CR4_PAE, EFER_LMA};
use crate::vmx::caps::{exit, pin, secondary};
use crate::vmx::exit::{event_type, reason, ExitInfo, InterruptionInfo};
use crate::vmx::guest_cr::check_pdptes;
use crate::vmx::{Field as F, Vmcs};

impl<S: VmcsSet, H: NestedHw> NestedCtx<'_, S, H> {
    /// Reflects the exit `e` to L1: L2's state into VMCS12, L1's loaded.
    pub fn reflect(&mut self, e: &ExitInfo) -> Flow {
        self.nested.reflected += 1;
        reflect::sync_vmcs12(
            self.vs.current(),
            &mut self.nested.vmx.vmcs12,
            e,
            &self.host.policy,
        );
        // The VM-exit MSR-store list: L2's values (SDM 28.4).
        let v12 = &self.nested.vmx.vmcs12;
        let (count, addr) = (
            v12.get(F::VM_EXIT_MSR_STORE_COUNT),
            v12.get(F::VM_EXIT_MSR_STORE_ADDR),
        );
        if count > 0 {
            if let Err(why) = self.store_msr_list(addr, count) {
                return self.vmx_abort(abort::SAVING_GUEST_MSRS, why);
            }
        }
        self.vs.select(Level::L1);
        self.load_l1_host()
    }

    /// An external interrupt for L1 arrived while L2 runs (L0's relay of
    /// the shadow devices): if L1 takes external interrupts while L2 runs,
    /// L1 gets that exit now, as a device interrupt for L1 would cause (SDM
    /// 26.2, 28.2.2); None if L1 takes it when it runs next. `ack` is called
    /// for the vector when L1 acknowledges interrupts on exit.
    pub fn external_interrupt_exit(&mut self, ack: impl FnOnce() -> u8) -> Option<Flow> {
        let v12 = &self.nested.vmx.vmcs12;
        if v12.get(F::PIN_BASED_VM_EXEC_CONTROL) as u32 & pin::EXTERNAL_INTERRUPT_EXITING == 0 {
            return None;
        }
        // A pending event injection must not be lost: it is still in
        // VMCS02's entry field; the exit reports it as IDT-vectoring info.
        let v = self.vs.current();
        let pending_event = v.read(F::VM_ENTRY_INTR_INFO_FIELD) as u32;
        let mut e = ExitInfo {
            reason: reason::EXTERNAL_INTERRUPT as u32,
            ..Default::default()
        };
        if pending_event & InterruptionInfo::VALID != 0 {
            e.idt_info = pending_event;
            e.idt_error = v.read(F::VM_ENTRY_EXCEPTION_ERROR_CODE) as u32;
            e.instr_len = v.read(F::VM_ENTRY_INSTRUCTION_LEN) as u32;
            v.write(F::VM_ENTRY_INTR_INFO_FIELD, 0);
        }
        if v12.get(F::VM_EXIT_CONTROLS) as u32 & exit::ACK_INTERRUPT_ON_EXIT != 0 {
            // Acknowledged on exit: the vector travels in the exit information.
            e.intr_info = InterruptionInfo::new(ack(), event_type::EXTERNAL_INTERRUPT, false).0;
        }
        Some(self.reflect(&e))
    }

    /// A VM-entry failure exit to L1 (SDM 27.8): exit reason with bit 31,
    /// qualification, and L1's host state; L2 never ran. VMCS01 current.
    pub fn entry_failure_exit(&mut self, basic: u32, qualification: u64) -> Flow {
        let v12 = &mut self.nested.vmx.vmcs12;
        v12.set(F::VM_EXIT_REASON, (basic | 1 << 31) as u64);
        v12.set(F::EXIT_QUALIFICATION, qualification);
        self.load_l1_host()
    }

    /// L1's state from VMCS12's host area, with the exit MSR-load list.
    fn load_l1_host(&mut self) -> Flow {
        debug_assert_eq!(self.vs.selected(), Level::L1);
        self.nested.in_l2 = false;
        self.nested.l1_from_host_area = true;
        let cr = reflect::load_host_state(
            &self.nested.vmx.vmcs12,
            self.vs.current(),
            &self.host.policy,
        );
        if cr.cr0 & CR0_PG != 0 && cr.cr4 & CR4_PAE != 0 && cr.efer & EFER_LMA == 0 {
            let mut raw = [0u8; 32];
            if self.hw.mem().read(cr.cr3 & 0xffff_ffe0, &mut raw).is_err() {
                return self.vmx_abort(abort::HOST_PDPTES, "PDPTEs of the host CR3 are not L1 RAM");
            }
            let pdptes: [u64; 4] = core::array::from_fn(|i| {
                u64::from_le_bytes(raw[8 * i..8 * i + 8].try_into().unwrap())
            });
            if check_pdptes(&pdptes, self.host.maxphyaddr).is_err() {
                return self.vmx_abort(
                    abort::HOST_PDPTES,
                    "a PDPTE of the host CR3 sets reserved bits",
                );
            }
            for (f, e) in [
                F::GUEST_PDPTE0,
                F::GUEST_PDPTE1,
                F::GUEST_PDPTE2,
                F::GUEST_PDPTE3,
            ]
            .into_iter()
            .zip(pdptes)
            {
                self.vs.current().write(f, e);
            }
        }
        let v12 = &self.nested.vmx.vmcs12;
        let (count, addr) = (
            v12.get(F::VM_EXIT_MSR_LOAD_COUNT),
            v12.get(F::VM_EXIT_MSR_LOAD_ADDR),
        );
        if count > 0 && self.load_msr_list(addr, count).is_err() {
            return self.vmx_abort(abort::LOADING_HOST_MSRS, "the VM-exit MSR-load list failed");
        }
        // L1 reads the exit through the shadow VMCS.
        self.nested.sync_to_shadow(self.vs, self.host.vmcs_phys[2]);
        // Without a VPID for L2, exits flush L1's translations (SDM 28.5.5);
        // a new CR3 from the host state is a new address space for L1 too.
        let vpid = self.host.vpid;
        if vpid != 0
            && (self.nested.vmx.vmcs12.secondary_controls() & secondary::ENABLE_VPID == 0
                || cr.cr3 != self.nested.l1_cr3_at_entry)
        {
            self.hw.flush_vpid(vpid);
        }
        Flow::Resume
    }
}

/// VMX-abort indicators (SDM 28.7).
pub mod abort {
    /// Saving guest MSRs (the VM-exit MSR-store list) failed.
    pub const SAVING_GUEST_MSRS: u32 = 1;
    /// The host PDPTEs failed their checks.
    pub const HOST_PDPTES: u32 = 2;
    /// The VMCS was corrupted so that the exit cannot complete (L0: the
    /// state VMCS12's host area gave L1 was refused by the CPU).
    pub const VMCS_CORRUPTED: u32 = 3;
    /// Loading host MSRs (the VM-exit MSR-load list) failed.
    pub const LOADING_HOST_MSRS: u32 = 4;
}

impl<S: VmcsSet, H: NestedHw> NestedCtx<'_, S, H> {
    /// SDM 28.7: a VMX abort of L1's logical processor. The indicator goes
    /// into VMCS12's abort field (the cache and L1's memory) and VMCS01 is
    /// made current; the vCPU (`Flow::VmxAbort`) then shuts down. Only that
    /// vCPU stops: L0, the machine and the other vCPUs go on.
    pub fn vmx_abort(&mut self, indicator: u32, why: &'static str) -> Flow {
        log::error!("VMX abort {indicator} of the cloud VM's vCPU: {why}; that vCPU is shut down (SDM 28.7)");
        let vmx = &mut self.nested.vmx;
        vmx.vmcs12.abort = indicator;
        if let Some(p) = vmx.current {
            // The pointer was checked to be L1 RAM when it was loaded.
            let _ = self.hw.mem().write(p + 4, &indicator.to_le_bytes());
        }
        self.nested.in_l2 = false;
        // What L1 runs now is L0's shutdown state, not VMCS12's host area.
        self.nested.l1_from_host_area = false;
        self.vs.select(Level::L1);
        Flow::VmxAbort(indicator)
    }
}
