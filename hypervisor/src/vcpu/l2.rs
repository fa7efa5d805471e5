//! The vCPU's side of nested VMX: L1's VMLAUNCH/VMRESUME handed to
//! `nested/entry.rs` (with the user VM's identity noted between the checks
//! and the entry), and the dispatcher of every exit while L2 runs, in KVM's
//! order: what L0 wants (its own handlers: EPT02 fills, a user VM's COM
//! ports, ultracalls, L0's CPUID leaf, L0's notifications and virtualized
//! IPIs), then what L1 wants (`nested/reflect.rs`), then what nobody
//! claimed, which L0 does for L2 as the CPU would have.

use super::msr::MtrrShadow;
use super::{Outcome, Platform, Stop, Vcpu, SHUTDOWN_PORT};
use crate::arch::run::GuestRegs;
use crate::machine::shared::MachineLock;
use crate::machine::Machine;
use crate::nested::apicv::{X2APIC_ICR, X2APIC_SELF_IPI, X2APIC_TPR};
use crate::nested::entry::Entry;
use crate::nested::ept02::Fill;
use crate::nested::msr_lists::{self, Home};
use crate::nested::{Flow, NestedCtx, NestedHw, VmcsSet};
use crate::shadow::interrupts::PiRoute;
use crate::vmx::caps::secondary;
use crate::vmx::exit::{EptViolation, ExitInfo, VmExit};
use crate::vmx::inject::{inject_exception, reinject_interrupted_event, skip_instruction};
use crate::vmx::Vmcs;

const GP: u8 = 13;

/// Where an L2 exit goes once L0 has looked at it.
enum L2Route {
    /// L0 handled it; L2 goes on unless the outcome says otherwise.
    Handled(Outcome),
    /// L1 gets this exit (the hardware's, or one L0 synthesized).
    Reflect(ExitInfo),
}

impl From<Flow> for Outcome {
    fn from(f: Flow) -> Self {
        match f {
            Flow::Resume => Outcome::Resume,
            Flow::VmxAbort(indicator) => Outcome::VmxAbort(indicator),
            Flow::Stop(why) => Outcome::Stop(Stop::Internal(why)),
        }
    }
}

/// The platform as nested VMX sees it, with RDMSR/WRMSR as L1 would do
/// them: L0's emulated MSRs from the vCPU's state, the rest from the CPU.
pub(super) struct L1Hw<'a, P> {
    p: &'a mut P,
    mtrr: &'a mut MtrrShadow,
    vmx_offered: bool,
}

impl<P: Platform> NestedHw for L1Hw<'_, P> {
    type Tables = P::Tables;
    type Mem = P::Mem;
    fn mem(&mut self) -> &mut P::Mem {
        self.p.mem()
    }
    fn tables(&mut self) -> &mut P::Tables {
        self.p.tables()
    }
    fn page(&mut self, phys: u64) -> &mut [u64; 512] {
        self.p.page(phys)
    }
    fn flush_vpid(&mut self, vpid: u16) {
        self.p.flush_vpid(vpid)
    }
    fn invept_all(&mut self) {
        self.p.invept_all()
    }
    fn set_cr2(&mut self, value: u64) {
        self.p.set_cr2(value)
    }
    fn send_ipi(&mut self, dest: u32, vector: u8) -> bool {
        self.p.send_ipi(dest, vector)
    }
    fn apic_eoi(&mut self) -> bool {
        self.p.apic_eoi()
    }
    fn read_l1_msr(&mut self, msr: u32) -> Option<u64> {
        if super::msr::emulated_by_l0(msr) {
            return super::msr::read(msr, self.vmx_offered, self.mtrr).ok();
        }
        self.p.read_msr(msr)
    }
    fn write_l1_msr(&mut self, msr: u32, value: u64) -> bool {
        if super::msr::emulated_by_l0(msr) {
            return super::msr::write(msr, value, self.mtrr).is_ok();
        }
        super::msr::cpu_write_allowed(msr, value, || self.p.read_msr(msr))
            && self.p.write_msr(msr, value)
    }
}

/// What a vCPU's last entry into L2 told the machine, and the machine's
/// epoch after it did (`machine/shared.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct NotedEntry {
    vmcs12: u64,
    eptp12: Option<u64>,
    route: Option<PiRoute>,
    epoch: u64,
}

impl Vcpu {
    /// What nested VMX may touch of this vCPU, for one exit.
    pub(super) fn nested_ctx<'a, S: VmcsSet, P: Platform>(
        &'a mut self,
        vs: &'a mut S,
        p: &'a mut P,
    ) -> NestedCtx<'a, S, L1Hw<'a, P>> {
        NestedCtx {
            nested: &mut self.nested,
            regs: &mut self.regs,
            host: &self.host,
            vs,
            hw: L1Hw {
                p,
                mtrr: &mut self.mtrr,
                vmx_offered: self.cpuid.vmx,
            },
        }
    }

    /// VMLAUNCH or VMRESUME by L1 (SDM 27.1-27.3).
    pub(super) fn nested_entry<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut MachineLock<'_>,
        vs: &mut S,
        p: &mut P,
        launch: bool,
    ) -> Outcome {
        if let Err(f) = self.nested_ctx(vs, p).check_entry(launch) {
            return f.into();
        }
        let mut cx = self.nested_ctx(vs, p);
        match cx.enter_l2() {
            Entry::Entered => {}
            Entry::NotEntered(f) => return f.into(),
        }
        let Some(vmcs12) = cx.nested.current_vmcs12() else {
            return Outcome::Resume;
        };
        // A notification that is outstanding, processed.
        let route = cx.nested.pi12();
        if let Some(r) = route {
            cx.process_outstanding(r);
        }
        self.note_entry(m, vmcs12, route);
        Outcome::Resume
    }

    /// What the machine learns from an entry into L2: the VMCS12's user VM
    /// (so it is known before L1 VMCLEARs it) and where its interrupts are
    /// posted. Noted again only when it differs from this vCPU's last
    /// entry or the machine changed since: a VMRESUME of the same VMCS12
    /// takes no lock.
    fn note_entry(&mut self, m: &mut MachineLock<'_>, vmcs12: u64, route: Option<PiRoute>) {
        let entry = NotedEntry {
            vmcs12,
            eptp12: self.nested.eptp12(),
            route,
            epoch: m.epoch(),
        };
        if self.noted_entry == Some(entry) {
            return;
        }
        m.shadow.note_entry(vmcs12, entry.eptp12);
        m.shadow.set_pi_route(vmcs12, route);
        self.noted_entry = Some(NotedEntry {
            epoch: m.epoch_after(),
            ..entry
        });
    }

    /// The hardware refused to enter VMCS02 (VMfailValid/Invalid) although
    /// L0's checks passed: L1's VMLAUNCH/VMRESUME fails the same way.
    pub fn vmcs02_entry_failed<S: VmcsSet, P: Platform>(
        &mut self,
        vs: &mut S,
        p: &mut P,
        e: crate::vmx::VmxError,
    ) -> Outcome {
        let o = self.nested_ctx(vs, p).vmcs02_entry_failed(e).into();
        self.settle(vs, o)
    }

    /// Every exit while L2 runs, routed in KVM's order (nested.c): L0's own
    /// business first, whatever L1 asked; then what L1's controls claim;
    /// then what nobody claimed, which L0 carries out for L2 as the CPU
    /// would have without L1's intercept. One epilogue for what L0 handled.
    pub(super) fn l2_exit<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut MachineLock<'_>,
        vs: &mut S,
        p: &mut P,
    ) -> Outcome {
        let e = ExitInfo::read(vs.current());
        let gpr = &self.regs.gpr;
        let exit = VmExit::decode(&e, gpr[GuestRegs::RAX], gpr[GuestRegs::RCX]);
        if let VmExit::EntryFailed { qualification, .. } = exit {
            let mut cx = self.nested_ctx(vs, p);
            return cx
                .vmcs02_guest_state_rejected(e.reason, qualification)
                .into();
        }
        let route = match self.l0_wants_l2_exit(m, vs, p, exit, &e) {
            Some(route) => route,
            None if self.nested_ctx(vs, p).l1_wants(exit, &e) => L2Route::Reflect(e),
            None => self.l2_exit_unclaimed(m, vs, p, exit, &e),
        };
        match route {
            L2Route::Reflect(info) => self.nested_ctx(vs, p).reflect(&info).into(),
            L2Route::Handled(o) => self.after_l0_handled_l2_exit(m, vs, p, &e, o),
        }
    }

    /// The L2 exits that are L0's whatever L1 asked (KVM's
    /// nested_vmx_l0_wants_exit): EPT02, a user VM's serial ports, its
    /// ultracalls and L0's CPUID leaf, L0's posted-interrupt notifications
    /// and the IPIs L0 virtualizes.
    fn l0_wants_l2_exit<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut MachineLock<'_>,
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
            VmExit::Io(io) if super::com::touches_com(io.port, io.size) && m.intercept_com() => {
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
            VmExit::ExternalInterrupt { .. } => self.nested_ctx(vs, p).l2_notification(e)?.into(),
            VmExit::ApicWrite { .. } => self.nested_ctx(vs, p).l2_apic_write(e)?.into(),
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

    /// An L2 exit neither L0 nor L1 claimed: VMCS02 exits where L1's VMCS12
    /// would not have, and L0 does what the CPU would have done for L2.
    fn l2_exit_unclaimed<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut MachineLock<'_>,
        vs: &mut S,
        p: &mut P,
        exit: VmExit,
        e: &ExitInfo,
    ) -> L2Route {
        let o = match exit {
            // L0's own port, unless L1 asked for it.
            VmExit::Io(io) if io.port == SHUTDOWN_PORT => self.io(m, vs.current(), p, io),
            // The port is L2's as L1 left it.
            VmExit::Io(io) => self.l2_passthrough_io(m, vs, p, e, io),
            VmExit::Msr {
                index: X2APIC_ICR,
                write: true,
            } => match self.nested_ctx(vs, p).l2_x2apic_icr() {
                Some(f) => f.into(),
                None => self.l2_msr(vs, p, X2APIC_ICR, true),
            },
            VmExit::Msr {
                index: msr @ (X2APIC_TPR | X2APIC_SELF_IPI),
                write: true,
            } => match self.nested_ctx(vs, p).l2_x2apic_virtual_write(msr) {
                Some(f) => f.into(),
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
                self.nested.set_window02(vs.current(), false);
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
            VmExit::Other(crate::vmx::exit::reason::RDPMC) => {
                // No counters for L2 either (vcpu/perfmon.rs).
                inject_exception(vs.current(), GP, Some(0));
                Outcome::Resume
            }
            // Exception bitmap02 and the page-fault filter are L1's, so the
            // CPU exits for exceptions exactly when L1's controls ask: L1
            // gets it whatever L0's reading of them says.
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
        m: &mut MachineLock<'_>,
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
        o: Outcome,
    ) -> Outcome {
        self.nested.note_handled_in_l0();
        if self.nested.in_l2() {
            // An event whose delivery the exit interrupted is delivered now.
            reinject_interrupted_event(vs.current(), e.idt_info, e.idt_error, e.instr_len);
        }
        if o != Outcome::Resume || !self.nested.in_l2() || !m.relay_owed() {
            return o;
        }
        let irqs = &mut m.shadow.irqs;
        let ack = || {
            let vector = irqs.relay_vector.unwrap_or(0);
            irqs.relay_delivered();
            vector
        };
        match self.nested_ctx(vs, p).external_interrupt_exit(ack) {
            Some(f) => f.into(),
            None => o, // delivered when L1 runs next
        }
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
            (Some(Home::Msr), true) => {
                super::msr::cpu_write_allowed(msr, value, || p.read_msr(msr))
                    && p.write_msr(msr, value)
            }
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
        match self.nested_ctx(vs, p).fill_ept02(e, &m.ept.l0) {
            Fill::Filled(f) => L2Route::Handled(f.into()),
            Fill::Reflect { exit, unmapped } => {
                if unmapped {
                    // MMIO of L2's, perhaps its IOAPIC: L0 watches it.
                    self.watch_ioapic(m, vs, p, e);
                }
                L2Route::Reflect(exit)
            }
        }
    }
}
