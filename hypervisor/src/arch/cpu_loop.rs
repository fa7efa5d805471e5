//! One CPU's loop: enter the guest, handle its exit, again.

use alloc::string::String;

use super::cpu;
use super::fault::{deliver_pending_nmi, fatal};
use super::platform::{Hardware, HwVmcsSet};
use crate::logger;
use crate::machine::shared::SharedMachine;
use crate::nested::VmcsSet;
use crate::vcpu::{report, Outcome, Platform, Vcpu};
use crate::vmx::{Field as F, Vmcs};

/// Runs a vCPU of the cloud VM on this CPU for good: before each entry the
/// pending events, then VMLAUNCH/VMRESUME of L1 or L2, then the exit's
/// handler with its cost accounted; a stop is fatal with the guest state
/// in the report. The machine-wide part is locked by the exits that need
/// it, for the rest of that exit. One CPU (`Vcpu::serves_console`) owns
/// the management line and the relay interrupt into L1; an NMI that arrives
/// while L0 runs goes to this CPU's L1.
pub fn run(vcpu: &mut Vcpu, machine: &SharedMachine, hw: &mut Hardware) -> ! {
    let serves_console = vcpu.serves_console();
    // SAFETY: VMCS01 is current; from here on only HwVmcsSet switches.
    let mut vs = unsafe { HwVmcsSet::new(vcpu.vmcs_phys()) };
    let mut last_poll = cpu::rdtsc();
    let nmi_pending = &super::tables::this_cpu().nmi_pending;
    let mut ept01_seen = machine.ept01_generation();
    loop {
        // Another CPU took a permission away in EPT01 (the request is the
        // generation; the preemption timer bounds how long it waits).
        let g = machine.ept01_generation();
        if g != ept01_seen {
            ept01_seen = g;
            hw.invept_all();
        }
        let in_l2 = vcpu.in_l2();
        if !in_l2 {
            deliver_pending_nmi(nmi_pending, vs.current());
            if serves_console {
                vcpu.before_l1_entry(&mut machine.lock(), vs.current());
            }
        } else {
            vcpu.before_l2_entry(vs.current(), &mut hw.mem);
        }
        let launched = vcpu.launched(in_l2);
        // SAFETY: the current VMCS is complete: host state brings us back to l0_vmx_exit.
        let outcome = match unsafe { super::run::run(vcpu.regs_mut(), launched) } {
            Ok(()) => {
                vcpu.note_launched(in_l2);
                vcpu.fix_saved_state(vs.current());
                // Cost accounting per exit reason (the shutdown report shows it).
                let basic = vs.current().read(F::VM_EXIT_REASON) as usize & 0xffff;
                let rip = vs.current().read(F::GUEST_RIP);
                let t0 = cpu::rdtsc();
                let o = vcpu.handle_exit(&mut machine.lock(), &mut vs, hw);
                vcpu.account_exit(in_l2, basic, rip, cpu::rdtsc().wrapping_sub(t0));
                logger::pump();
                // Exits too frequent for the preemption timer to fire still
                // let L0 serve the management line.
                let now = cpu::rdtsc();
                if serves_console && now.wrapping_sub(last_poll) > vcpu.poll_ticks() {
                    last_poll = now;
                    vcpu.poll_console(&mut machine.lock(), &mut vs, hw);
                }
                o
            }
            Err(e) if in_l2 => vcpu.vmcs02_entry_failed(&mut vs, hw, e),
            Err(e) => {
                let mut s = String::new();
                let _ = report::guest_state(&mut s, vs.current(), vcpu.regs());
                fatal(format_args!(
                    "VM entry to the cloud VM failed on CPU APIC ID {:#x}: {e}\n{s}",
                    crate::cpus::apic_id(cpu::cpuid)
                ));
            }
        };
        if let Outcome::Stop(stop) = outcome {
            let mut s = String::new();
            let _ = report::guest_state(&mut s, vs.current(), vcpu.regs());
            let (l1, l2) = vcpu.exit_stats();
            fatal(format_args!(
                "{stop} ({} on CPU APIC ID {:#x})\n{s}  L1: {l1}\n  L2: {l2}",
                if vcpu.in_l2() { "in L2" } else { "in L1" },
                crate::cpus::apic_id(cpu::cpuid),
            ));
        }
    }
}
