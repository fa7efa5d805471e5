//! L2's APIC virtualization where L0 completes the CPU in software, over
//! the mechanisms of `posted.rs`: posted-interrupt processing for the
//! running L2, IPI virtualization (x2APIC ICR writes and xAPIC APIC-write
//! exits), TPR and self-IPI virtualization, and the evaluation of pending
//! virtual interrupts at VM entry that Bochs leaves out. Where a shadow
//! UART's interrupt goes (the vCPU's business) is in `vcpu/irq_route.rs`.

use super::caps::TERTIARY_IPI_VIRT;
use super::context::{Flow, NestedCtx, NestedHw};
use super::posted::{self, Ipi, Posted};
use super::{Level, Nested, VmcsSet};
use crate::arch::run::GuestRegs;
use crate::guest_mem::GuestMemory;
use crate::regs::RFLAGS_IF;
use crate::shadow::interrupts::PiRoute;
use crate::vmx::caps::{pin, primary, secondary};
use crate::vmx::exit::{event_type, reason, ExitInfo, InterruptionInfo};
use crate::vmx::inject::{inject_exception, reinject_interrupted_event, skip_instruction};
use crate::vmx::{Field as F, Vmcs};

const ACTIVITY_HLT: u64 = 1;
/// The x2APIC ICR.
pub const X2APIC_ICR: u32 = 0x830;
pub const X2APIC_TPR: u32 = 0x808;
pub const X2APIC_SELF_IPI: u32 = 0x83f;

impl Nested {
    /// The current VMCS12's posted-interrupt route, if it processes posted
    /// interrupts.
    pub fn pi12(&self) -> Option<PiRoute> {
        let v12 = &self.vmx.vmcs12;
        if v12.get(F::PIN_BASED_VM_EXEC_CONTROL) as u32 & pin::POSTED_INTERRUPTS == 0 {
            return None;
        }
        Some(PiRoute {
            desc: v12.get(F::POSTED_INTR_DESC_ADDR),
            nv: v12.get(F::POSTED_INTR_NV) as u8,
            vapic: v12.get(F::VIRTUAL_APIC_PAGE_ADDR),
        })
    }

    /// Whether the current VMCS12 uses IPI virtualization.
    pub fn ipiv12(&self) -> bool {
        let v12 = &self.vmx.vmcs12;
        v12.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32 & primary::ACTIVATE_TERTIARY != 0
            && v12.get(F::TERTIARY_VM_EXEC_CONTROL) & TERTIARY_IPI_VIRT != 0
    }

    /// Sets or clears L0's request for L2's interrupt window in VMCS02.
    pub fn set_window02(&mut self, v02: &mut impl Vmcs, on: bool) {
        if self.window02 == on {
            return;
        }
        self.window02 = on;
        let bit = primary::INTERRUPT_WINDOW_EXITING as u64;
        let l1_wants = self.vmx.vmcs12.get(F::CPU_BASED_VM_EXEC_CONTROL) & bit != 0;
        let p = v02.read(F::CPU_BASED_VM_EXEC_CONTROL);
        let p = if on || l1_wants { p | bit } else { p & !bit };
        self.derived.put(v02, F::CPU_BASED_VM_EXEC_CONTROL, p);
    }

    /// Before every VM entry into L2 (VMCS02 current): evaluation and
    /// delivery of a pending virtual interrupt, as SDM 27.3.2.5 and 30.2
    /// have the CPU do at VM entry. L0 does it in software because Bochs
    /// 2.7's VM entry does not evaluate pending virtual interrupts (it
    /// only does on EOI, TPR and self-IPI virtualization), so an interrupt
    /// KVM or L0 put in RVI would wait for L2's next EOI. The result is the
    /// CPU's: VISR and SVI set, VPPR raised, the vector out of VIRR and RVI,
    /// and the interrupt delivered through L2's IDT (injected as an
    /// external interrupt). When L2 cannot take it yet, L0 waits for its
    /// interrupt window.
    pub fn before_l2_entry<V: Vmcs, M: GuestMemory>(&mut self, v: &mut V, mem: &mut M) {
        const VID: u64 = secondary::VIRTUAL_INTERRUPT_DELIVERY as u64;
        const PPR: u64 = 0xa0;
        const VISR: u64 = 0x100;
        const VIRR: u64 = 0x200;
        if v.read(F::SECONDARY_VM_EXEC_CONTROL) & VID == 0 {
            return;
        }
        let status = v.read(F::GUEST_INTR_STATUS);
        let rvi = status as u8;
        let vapic = v.read(F::VIRTUAL_APIC_PAGE_ADDR);
        // PPR virtualization (SDM 30.1.3), as the CPU does at VM entry:
        // VPPR from VTPR and SVI.
        let (Ok(vtpr), svi) = (mem.read_u32(vapic + 0x80), (status >> 8) as u8) else {
            return;
        };
        let ppr = if (vtpr as u8) >> 4 >= svi >> 4 {
            vtpr & 0xff
        } else {
            (svi & 0xf0) as u32
        };
        if mem.write(vapic + PPR, &ppr.to_le_bytes()).is_err() {
            return;
        }
        // Not recognized while L1 itself waits for the window (30.2.1).
        let l1_window = self.vmx.vmcs12.get(F::CPU_BASED_VM_EXEC_CONTROL)
            & primary::INTERRUPT_WINDOW_EXITING as u64
            != 0;
        if rvi >> 4 <= (ppr as u8) >> 4 || l1_window {
            self.set_window02(v, false);
            return;
        }
        let activity = v.read(F::GUEST_ACTIVITY_STATE);
        let takes = v.read(F::GUEST_RFLAGS) & RFLAGS_IF != 0
            && v.read(F::GUEST_INTERRUPTIBILITY_INFO) & 3 == 0
            && v.read(F::VM_ENTRY_INTR_INFO_FIELD) & InterruptionInfo::VALID as u64 == 0
            && (activity == 0 || activity == ACTIVITY_HLT);
        if !takes {
            self.set_window02(v, true);
            return;
        }
        self.set_window02(v, false);
        let (word, bit) = (16 * (rvi / 32) as u64, 1u32 << (rvi % 32));
        let Ok(isr) = mem.read_u32(vapic + VISR + word) else {
            return;
        };
        // VIRR atomically, as L0 on other CPUs posts into it (posted.rs).
        let ok = mem
            .write(vapic + VISR + word, &(isr | bit).to_le_bytes())
            .is_ok()
            && mem
                .update_u64(vapic + VIRR + word, |w| w & !(bit as u64))
                .is_ok()
            && mem
                .write(vapic + PPR, &((rvi & 0xf0) as u32).to_le_bytes())
                .is_ok();
        if !ok {
            return;
        }
        let next =
            posted::highest_vector(|i| mem.read_u32(vapic + VIRR + 16 * i as u64).unwrap_or(0))
                .unwrap_or(0) as u64;
        v.write(F::GUEST_INTR_STATUS, (rvi as u64) << 8 | next);
        v.write(
            F::VM_ENTRY_INTR_INFO_FIELD,
            InterruptionInfo::new(rvi, event_type::EXTERNAL_INTERRUPT, false).0 as u64,
        );
        if activity == ACTIVITY_HLT {
            v.write(F::GUEST_ACTIVITY_STATE, 0);
        }
    }
}

impl<S: VmcsSet, H: NestedHw> NestedCtx<'_, S, H> {
    /// At a nested VM entry, VMCS02 current, with this VMCS12's route:
    /// a notification that is outstanding is processed, as the CPU would
    /// had it arrived just now.
    pub fn process_outstanding(&mut self, r: PiRoute) {
        if posted::outstanding(self.hw.mem(), r.desc) {
            self.process_into_l2(r);
        }
    }

    /// Posted-interrupt processing for the running L2 (VMCS02 current):
    /// PIR into VIRR, RVI raised. A halted L2 that takes interrupts wakes
    /// (L1 does not intercept its HLT, e.g. QEMU's `-overcommit cpu-pm=on`).
    fn process_into_l2(&mut self, r: PiRoute) {
        match posted::process(self.hw.mem(), r.desc, r.vapic) {
            Ok(Some(vector)) => {
                let v02 = self.vs.current();
                let status = v02.read(F::GUEST_INTR_STATUS);
                v02.write(F::GUEST_INTR_STATUS, posted::raise_rvi(status, vector));
                if v02.read(F::GUEST_ACTIVITY_STATE) == ACTIVITY_HLT
                    && v02.read(F::GUEST_RFLAGS) & RFLAGS_IF != 0
                {
                    v02.write(F::GUEST_ACTIVITY_STATE, 0);
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!(
                "posted interrupts of VMCS12: {e} (descriptor {:#x}, virtual APIC {:#x})",
                r.desc,
                r.vapic
            ),
        }
    }

    /// An external-interrupt exit from L2 with VMCS12's notification
    /// vector: the CPU would have processed the posting without exiting
    /// (SDM 30.6), so L0 does, and L2 goes on.
    pub fn l2_notification(&mut self, e: &ExitInfo) -> Option<Flow> {
        let r = self.nested.pi12()?;
        let info = InterruptionInfo(e.intr_info);
        if e.basic() != reason::EXTERNAL_INTERRUPT || !info.valid() || info.vector() != r.nv {
            return None;
        }
        // Acknowledged on exit; the CPU would EOI the notification itself.
        self.hw.apic_eoi();
        self.process_into_l2(r);
        reinject_interrupted_event(self.vs.current(), e.idt_info, e.idt_error, e.instr_len);
        Some(Flow::Resume)
    }

    /// Posts `vector` in the descriptor at `desc` and notifies like the
    /// CPU (IPI virtualization) or a VT-d device: straight into L2 when the
    /// descriptor is the running L2's, else the notification vector to L1.
    pub fn post(&mut self, desc: u64, vector: u8) {
        match posted::post(self.hw.mem(), desc, vector) {
            Ok(Posted::Queued) => {}
            Ok(Posted::Notify { nv, ndst }) => {
                let running = self.nested.in_l2 && self.vs.selected() == Level::L2;
                match self
                    .nested
                    .pi12()
                    .filter(|r| running && r.desc == desc && r.nv == nv)
                {
                    Some(r) => self.process_into_l2(r),
                    None => {
                        self.hw.send_ipi(ndst, nv);
                    }
                }
            }
            Err(e) => log::warn!("posting vector {vector:#x}: descriptor {desc:#x}: {e}"),
        }
    }

    /// L2's write of its x2APIC ICR when VMCS12 virtualizes IPIs: what the
    /// CPU does with IPI virtualization (SDM 30.1.6, 30.5). Returns None
    /// when L0 does not emulate it (L1 then gets the exit as before).
    pub fn l2_x2apic_icr(&mut self) -> Option<Flow> {
        if !self.nested.ipiv12()
            || self.nested.vmx.vmcs12.secondary_controls() & secondary::VIRTUALIZE_X2APIC == 0
        {
            return None;
        }
        let vapic = self.nested.vmx.vmcs12.get(F::VIRTUAL_APIC_PAGE_ADDR);
        let icr = (self.regs.gpr[GuestRegs::RDX] & 0xffff_ffff) << 32
            | (self.regs.gpr[GuestRegs::RAX] & 0xffff_ffff);
        let mem = self.hw.mem();
        if mem
            .write(vapic + posted::ICR_LO, &(icr as u32).to_le_bytes())
            .is_err()
            || mem
                .write(vapic + posted::ICR_HI, &((icr >> 32) as u32).to_le_bytes())
                .is_err()
        {
            return None;
        }
        // WRMSR is virtualized like a trap: it completes, then the rest.
        skip_instruction(self.vs.current());
        Some(self.virtualize_ipi(icr, true))
    }

    /// L2's write of its x2APIC TPR or SELF IPI register with virtual-
    /// interrupt delivery (SDM 30.5): the virtual-APIC page updated as the
    /// CPU would (VTPR; or the vector requested in VIRR and RVI), the
    /// evaluation of pending virtual interrupts left to `before_l2_entry`.
    pub fn l2_x2apic_virtual_write(&mut self, msr: u32) -> Option<Flow> {
        let vapic = self.nested.vmx.vmcs12.get(F::VIRTUAL_APIC_PAGE_ADDR);
        let value = self.regs.gpr[GuestRegs::RAX] & 0xffff_ffff;
        if self.regs.gpr[GuestRegs::RDX] & 0xffff_ffff != 0 || value > 0xff {
            // Reserved bits: the CPU's virtualization raises #GP(0) in L2.
            inject_exception(self.vs.current(), 13, Some(0));
            return Some(Flow::Resume);
        }
        let mem = self.hw.mem();
        match msr {
            X2APIC_TPR => mem
                .write(vapic + 0x80, &(value as u32).to_le_bytes())
                .ok()?,
            _ => {
                let vector = value as u8;
                posted::set_virr(mem, vapic, vector).ok()?;
                let v02 = self.vs.current();
                let status = v02.read(F::GUEST_INTR_STATUS);
                v02.write(F::GUEST_INTR_STATUS, posted::raise_rvi(status, vector));
            }
        }
        skip_instruction(self.vs.current());
        Some(Flow::Resume)
    }

    /// An APIC-write exit from L2 (xAPIC, APIC-register virtualization):
    /// a write of ICR low is IPI-virtualized when VMCS12 asks for it.
    pub fn l2_apic_write(&mut self, e: &ExitInfo) -> Option<Flow> {
        if !self.nested.ipiv12() || e.qualification & 0xfff != posted::ICR_LO {
            return None;
        }
        let vapic = self.nested.vmx.vmcs12.get(F::VIRTUAL_APIC_PAGE_ADDR);
        let mem = self.hw.mem();
        let (lo, hi) = (
            mem.read_u64(vapic + posted::ICR_LO).ok()?,
            mem.read_u64(vapic + posted::ICR_HI).ok()?,
        );
        let icr = (hi & 0xffff_ffff) << 32 | (lo & 0xffff_ffff);
        Some(self.virtualize_ipi(icr, false))
    }

    fn virtualize_ipi(&mut self, icr: u64, x2apic: bool) -> Flow {
        let v12 = &self.nested.vmx.vmcs12;
        let (table, last) = (
            v12.get(F::PID_POINTER_TABLE),
            v12.get(F::LAST_PID_POINTER_INDEX) as u16,
        );
        let vapic = v12.get(F::VIRTUAL_APIC_PAGE_ADDR);
        match posted::ipi(self.hw.mem(), icr, x2apic, table, last) {
            Ipi::Post { desc, vector } => {
                self.post(desc, vector);
                Flow::Resume
            }
            Ipi::SelfIpi { vector } => {
                if posted::set_virr(self.hw.mem(), vapic, vector).is_ok() {
                    let v02 = self.vs.current();
                    let status = v02.read(F::GUEST_INTR_STATUS);
                    v02.write(F::GUEST_INTR_STATUS, posted::raise_rvi(status, vector));
                }
                Flow::Resume
            }
            Ipi::ApicWriteExit => {
                // Trap-like: RIP is already past the write.
                let e = ExitInfo {
                    reason: reason::APIC_WRITE as u32,
                    qualification: posted::ICR_LO,
                    ..Default::default()
                };
                self.reflect(&e)
            }
        }
    }
}
