//! `vmx-abort` (under L0, on 2 CPUs): a VMX abort is the SDM's for L1's
//! vCPU alone (SDM 28.7), never L0's stop. The AP runs an L2 whose VMCS
//! names an x2APIC register, which cannot be stored, in its VM-exit
//! MSR-store list; L2's VMCALL exits and the exit aborts: the AP never
//! returns from its VM entry, its VMCS region holds abort indicator 1, and
//! the boot CPU, L0 and the management line go on.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::check::Checks;
use crate::hv::fields::*;
use crate::hv::vmx::vmwrite;
use crate::hv::{apic, l0_alive, start};
use crate::mb1::{Identity, Info};
use crate::{l2, smp};

static NAME: &str = "vmx-abort";
/// The AP's VMCS, once it is about to enter L2.
static VMCS: AtomicU64 = AtomicU64::new(0);
/// The AP came back from its entry (it must not).
static RETURNED: AtomicBool = AtomicBool::new(false);
/// TSC ticks the boot CPU waits for each step of the AP.
const WAIT: u64 = 3_000_000_000;

/// The VM-exit MSR-store list: one entry, IA32_X2APIC_TPR (0x808).
#[repr(C, align(4096))]
struct Page([u64; 512]);
static mut STORE_LIST: Page = Page([0; 512]);

pub fn run(mbi: &Info<Identity>) {
    crate::set_current_test(&NAME);
    let mut c = Checks::new(NAME);
    if let Err(why) = apic::usable() {
        c.check("ap-started", false, format_args!("{why}"));
        c.finish();
        return;
    }
    apic::enable();
    let target = if smp::apic_id() == 0 { 1 } else { 0 };
    let started = match smp::trampoline_page(mbi) {
        Some(page) => smp::start_ap(target, page, ap_job),
        None => Err("no free usable page below 1 MiB for the trampoline"),
    };
    c.check("ap-started", started.is_ok(), format_args!("{started:?}"));
    if started.is_ok() {
        let entering = smp::spin_ticks(WAIT, || VMCS.load(Ordering::SeqCst) != 0);
        let vmcs = VMCS.load(Ordering::SeqCst);
        let indicator = || {
            // SAFETY: the AP's VMCS region, identity-mapped L1 RAM; the
            // abort indicator is its second dword (SDM 25.2).
            unsafe { core::ptr::read_volatile((vmcs + 4) as *const u32) }
        };
        let aborted = entering && smp::spin_ticks(WAIT, || indicator() != 0);
        c.check(
            "abort-indicator",
            aborted && indicator() == 1,
            format_args!(
                "AP entered L2: {entering}; VMCS {vmcs:#x} abort indicator {}",
                if entering { indicator() } else { 0 }
            ),
        );
        // The AP stays shut down: it never returns from that entry.
        smp::spin_ticks(100_000_000, || RETURNED.load(Ordering::SeqCst));
        c.check(
            "vcpu-shut-down",
            aborted && !RETURNED.load(Ordering::SeqCst) && smp::ap_state() == smp::AP_RUNNING,
            format_args!(
                "returned {}, AP state {}",
                RETURNED.load(Ordering::SeqCst),
                smp::ap_state()
            ),
        );
    }
    l0_alive(&mut c);
    c.finish();
}

fn ap_job(cpu: usize) {
    let mut c = Checks::for_cpu(NAME, cpu);
    let Some(hv) = start(&mut c, &["vmxon", "l2-ready"]) else {
        return;
    };
    let Some(mut vm) = hv.fresh(&mut c, "l2-ready", l2!(l2_vmcall)) else {
        return;
    };
    let list = core::ptr::addr_of_mut!(STORE_LIST) as u64;
    // SAFETY: this CPU's own static page, identity-mapped; index 0x808,
    // reserved bits 0, data filled in by the exit.
    unsafe { core::ptr::write_volatile(list as *mut u64, 0x808) };
    let w = vmwrite(EXIT_MSR_STORE_ADDR, list).and(vmwrite(EXIT_MSR_STORE_COUNT, 1));
    c.check("l2-ready", w.is_ok(), format_args!("{w:?}"));
    VMCS.store(vm.vmcs, Ordering::SeqCst);
    let _ = vm.enter();
    RETURNED.store(true, Ordering::SeqCst);
}
