//! `nested-entry-checks`: VM entries that must fail. Each starts from a
//! VMCS that enters fine (`baseline-entry`) and breaks one thing: control
//! fields give VMfailValid 7, host state VMfailValid 8 (SDM Vol. 3C 27.1,
//! 27.2), guest state an exit with reason 33 | bit 31 and the SDM's
//! qualification (27.3, 27.8), the entry MSR-load list reason 34 | bit 31
//! with the failing entry's 1-based index (27.4). Structures at addresses
//! no memory backs enter as on the hardware, which reads them as all ones.

use crate::check::Checks;
use crate::hv::fields::*;
use crate::hv::mem::{self, pg};
use crate::hv::vm::{self, Entry};
use crate::hv::vmx::{rd, vmwrite, VmFail};
use crate::hv::{cpu, l0_alive, start, Hv};
use crate::l2;

const CHECKS: &[&str] = &[
    "vmxon",
    "baseline-entry",
    "ctl-reserved-one",
    "ctl-required-one-cleared",
    "ctl-ug-without-ept",
    "ctl-bad-eptp",
    "ctl-io-bitmap-misaligned",
    "ctl-cr3-target-count",
    "ctl-entry-intr-reserved-type",
    "ctl-save-timer-without-timer",
    "ctl-tpr-threshold-over-vtpr",
    "ctl-tpr-threshold-at-vtpr",
    "ctl-tpr-threshold-apic-accesses",
    "host-cr0-fixed0",
    "host-cr4-vmxe",
    "host-rip-noncanonical",
    "host-tr-null",
    "guest-cr0-pg-without-pe",
    "guest-rflags-bit1",
    "guest-link-pointer-misaligned",
    "guest-link-pointer-revision",
    "guest-activity-state",
    "guest-pdpte-reserved",
    "guest-pae-cr3-pdpte-reserved",
    "guest-pae-resume-pdpte-reserved",
    "entry-failure-host-state",
    "entry-msr-load-x2apic",
    "entry-msr-load-reserved",
    "addr-io-bitmap-unbacked",
    "addr-msr-bitmap-unbacked",
    "addr-virtual-apic-unbacked",
    "addr-entry-msr-load-unbacked",
    "addr-entry-msr-load-past-maxphyaddr",
];

pub fn run() {
    static NAME: &str = "nested-entry-checks";
    crate::set_current_test(&NAME);
    let mut c = Checks::new(NAME);
    if let Some(hv) = start(&mut c, CHECKS) {
        checks(&mut c, &hv);
    }
    l0_alive(&mut c);
    c.finish();
}

/// A fresh, valid VMCS A for L2 at its VMCALL, changed by `tweak`, entered.
#[allow(clippy::result_large_err)] // see Hv::vm
fn attempt(hv: &Hv, tweak: impl FnOnce(&Hv)) -> Result<Entry, crate::hv::Msg> {
    attempt_at(hv, l2!(l2_vmcall), tweak)
}

/// The same with L2 at `rip`.
#[allow(clippy::result_large_err)] // see Hv::vm
fn attempt_at(hv: &Hv, rip: u64, tweak: impl FnOnce(&Hv)) -> Result<Entry, crate::hv::Msg> {
    let mut vm = hv.vm(pg::VMCS_A, rip)?;
    tweak(hv);
    Ok(vm.enter())
}

fn vmfail(c: &mut Checks, name: &str, hv: &Hv, number: u32, tweak: impl FnOnce(&Hv)) {
    match attempt(hv, tweak) {
        Ok(e) => c.check(
            name,
            matches!(e, Entry::Fail(VmFail::Valid(n)) if n == number),
            format_args!("{e} (want VMfailValid({number}))"),
        ),
        Err(m) => c.check(
            name,
            false,
            format_args!("setting up the VMCS: {}", m.as_str()),
        ),
    }
}

fn entry_failure(
    c: &mut Checks,
    name: &str,
    hv: &Hv,
    reason: u32,
    qual: u64,
    tweak: impl FnOnce(&Hv),
) {
    let want = reason | reason::ENTRY_FAILURE;
    match attempt(hv, tweak) {
        Ok(e) => c.check(
            name,
            e.exit().is_some_and(|x| x.reason == want && x.qual == qual),
            format_args!("{e} (want reason {want:#x} qualification {qual})"),
        ),
        Err(m) => c.check(
            name,
            false,
            format_args!("setting up the VMCS: {}", m.as_str()),
        ),
    }
}

fn w(field: u32, v: u64) {
    let _ = vmwrite(field, v);
}

fn checks(c: &mut Checks, hv: &Hv) {
    let caps = hv.caps;
    match attempt(hv, |_| {}) {
        Ok(e) => c.check("baseline-entry", e.is(reason::VMCALL), format_args!("{e}")),
        Err(m) => c.check("baseline-entry", false, format_args!("{}", m.as_str())),
    }

    // --- VM-execution, exit and entry control fields (SDM 27.2.1) ---
    // Reserved settings: a control bit whose allowed-1 setting is 0.
    match caps.pin.first_reserved_one() {
        Some(bit) => vmfail(
            c,
            "ctl-reserved-one",
            hv,
            err::ENTRY_INVALID_CONTROLS,
            |_| w(PIN_CONTROLS, rd(PIN_CONTROLS) | bit as u64),
        ),
        None => c.skip(
            "ctl-reserved-one",
            format_args!("every pin-based control may be 1"),
        ),
    }
    let required = [
        (PIN_CONTROLS, caps.pin),
        (PROC_CONTROLS, caps.proc),
        (EXIT_CONTROLS, caps.exit),
        (ENTRY_CONTROLS, caps.entry),
    ]
    .into_iter()
    .find_map(|(f, ctl)| ctl.first_required_one().map(|b| (f, b)));
    match required {
        Some((field, bit)) => vmfail(
            c,
            "ctl-required-one-cleared",
            hv,
            err::ENTRY_INVALID_CONTROLS,
            |_| w(field, rd(field) & !(bit as u64)),
        ),
        None => c.skip(
            "ctl-required-one-cleared",
            format_args!("no control must be 1"),
        ),
    }
    // "If the unrestricted guest control is 1, the enable EPT control must be 1."
    if caps.unrestricted_guest() {
        vmfail(
            c,
            "ctl-ug-without-ept",
            hv,
            err::ENTRY_INVALID_CONTROLS,
            |hv| {
                hv.ctl(PROC2_CONTROLS, proc2::UNRESTRICTED_GUEST, 0);
                w(PROC2_CONTROLS, rd(PROC2_CONTROLS) & !(proc2::EPT as u64));
            },
        );
    } else {
        c.skip(
            "ctl-ug-without-ept",
            format_args!("unrestricted guest not offered"),
        );
    }
    // The EPTP memory type must be one IA32_VMX_EPT_VPID_CAP lists (UC, WB).
    if hv.mode.ept() {
        vmfail(c, "ctl-bad-eptp", hv, err::ENTRY_INVALID_CONTROLS, |hv| {
            w(EPT_POINTER, hv.eptp() & !7 | 7)
        });
    } else {
        c.skip("ctl-bad-eptp", format_args!("EPT not offered"));
    }
    // I/O-bitmap addresses must be 4 KiB aligned.
    if caps.proc.can_set(proc::USE_IO_BITMAPS) {
        vmfail(
            c,
            "ctl-io-bitmap-misaligned",
            hv,
            err::ENTRY_INVALID_CONTROLS,
            |hv| {
                hv.ctl(PROC_CONTROLS, proc::USE_IO_BITMAPS, 0);
                w(IO_BITMAP_A, mem::page(pg::IO_A) | 0x10);
                w(IO_BITMAP_B, mem::page(pg::IO_B));
            },
        );
    } else {
        c.skip(
            "ctl-io-bitmap-misaligned",
            format_args!("I/O bitmaps not offered"),
        );
    }
    // The CR3-target count may not exceed IA32_VMX_MISC[24:16].
    vmfail(
        c,
        "ctl-cr3-target-count",
        hv,
        err::ENTRY_INVALID_CONTROLS,
        |hv| w(CR3_TARGET_COUNT, hv.caps.cr3_targets() as u64 + 1),
    );
    // Event injection: interruption type 1 is reserved (27.2.1.3).
    vmfail(
        c,
        "ctl-entry-intr-reserved-type",
        hv,
        err::ENTRY_INVALID_CONTROLS,
        |_| w(ENTRY_INTR_INFO, (intr::VALID | 1 << 8 | 0x20) as u64),
    );
    // "Save VMX-preemption timer value" needs the timer active (27.2.1.2).
    if caps.exit.can_set(exit::SAVE_PREEMPTION_TIMER) && caps.pin.can_clear(pin::PREEMPTION_TIMER) {
        vmfail(
            c,
            "ctl-save-timer-without-timer",
            hv,
            err::ENTRY_INVALID_CONTROLS,
            |hv| {
                hv.ctl(PIN_CONTROLS, 0, pin::PREEMPTION_TIMER);
                w(
                    EXIT_CONTROLS,
                    rd(EXIT_CONTROLS) | exit::SAVE_PREEMPTION_TIMER as u64,
                );
            },
        );
    } else {
        c.skip(
            "ctl-save-timer-without-timer",
            format_args!("saving the preemption timer not offered"),
        );
    }

    tpr_threshold(c, hv);

    // --- Host-state area (SDM 27.2.2, 27.2.3): VMfailValid 8 ---
    if caps.cr0_fixed0 & (1 << 5) != 0 {
        vmfail(c, "host-cr0-fixed0", hv, err::ENTRY_INVALID_HOST, |_| {
            w(HOST_CR0, rd(HOST_CR0) & !(1 << 5))
        });
    } else {
        c.skip(
            "host-cr0-fixed0",
            format_args!("CR0.NE is not a FIXED0 bit here"),
        );
    }
    vmfail(c, "host-cr4-vmxe", hv, err::ENTRY_INVALID_HOST, |_| {
        w(HOST_CR4, rd(HOST_CR4) & !(1 << 13))
    });
    vmfail(
        c,
        "host-rip-noncanonical",
        hv,
        err::ENTRY_INVALID_HOST,
        |_| w(HOST_RIP, 0x0000_8000_0000_0000),
    );
    vmfail(c, "host-tr-null", hv, err::ENTRY_INVALID_HOST, |_| {
        w(HOST_TR_SEL, 0)
    });

    // --- Guest-state area (SDM 27.3.1): exit reason 33 | bit 31 ---
    // "If CR0.PG is 1, CR0.PE must be 1" (also with unrestricted guest).
    entry_failure(
        c,
        "guest-cr0-pg-without-pe",
        hv,
        reason::INVALID_GUEST_STATE,
        0,
        |_| w(GUEST_CR0, rd(GUEST_CR0) & !1 | 1 << 31),
    );
    // RFLAGS bit 1 is reserved and must be 1 (27.3.1.4).
    entry_failure(
        c,
        "guest-rflags-bit1",
        hv,
        reason::INVALID_GUEST_STATE,
        0,
        |_| w(GUEST_RFLAGS, 0),
    );
    // A VMCS link pointer other than all ones must be 4 KiB aligned and
    // point at a region with the revision identifier (27.3.1.5):
    // qualification 4 (27.8).
    entry_failure(
        c,
        "guest-link-pointer-misaligned",
        hv,
        reason::INVALID_GUEST_STATE,
        4,
        |_| w(VMCS_LINK_POINTER, mem::page(pg::VMCS_X) | 0x100),
    );
    entry_failure(
        c,
        "guest-link-pointer-revision",
        hv,
        reason::INVALID_GUEST_STATE,
        4,
        |_| {
            mem::zero_page(mem::page(pg::VMCS_X));
            w(VMCS_LINK_POINTER, mem::page(pg::VMCS_X));
        },
    );
    // The activity state must be 0-3 (27.3.1.5).
    entry_failure(
        c,
        "guest-activity-state",
        hv,
        reason::INVALID_GUEST_STATE,
        0,
        |_| w(GUEST_ACTIVITY_STATE, 4),
    );
    // PAE paging with EPT: the PDPTEs come from the VMCS and a present one
    // with reserved bits fails the entry, qualification 2 (27.3.1.6, 27.8).
    if hv.mode.ept() {
        entry_failure(
            c,
            "guest-pdpte-reserved",
            hv,
            reason::INVALID_GUEST_STATE,
            2,
            |_| {
                w(GUEST_CR0, rd(GUEST_CR0) | 1 | 1 << 31);
                w(GUEST_CR4, rd(GUEST_CR4) | 1 << 5);
                w(GUEST_CR3, crate::hv::l2::PD);
                w(GUEST_PDPTE0, crate::hv::l2::PT_LOW | 1 | 1 << 5);
                w(GUEST_PDPTE1, 0);
                w(GUEST_PDPTE2, 0);
                w(GUEST_PDPTE3, 0);
            },
        );
    } else {
        c.skip(
            "guest-pdpte-reserved",
            format_args!("EPT not offered (PDPTEs then come from guest memory)"),
        );
    }

    pae_without_ept(c, hv);
    entry_failure_state(c, hv);
    msr_load(c, hv);
    unbacked(c, hv);
}

/// "Use TPR shadow" without "virtualize APIC accesses" and "virtual-
/// interrupt delivery": TPR threshold[3:0] may not exceed VTPR[7:4], read
/// from the virtual-APIC page at entry (SDM 27.2.1.1).
fn tpr_threshold(c: &mut Checks, hv: &Hv) {
    let names = [
        "ctl-tpr-threshold-over-vtpr",
        "ctl-tpr-threshold-at-vtpr",
        "ctl-tpr-threshold-apic-accesses",
    ];
    if !hv.caps.proc.can_set(proc::USE_TPR_SHADOW) {
        for n in names {
            c.skip(n, format_args!("TPR shadow not offered"));
        }
        return;
    }
    let vapic = mem::page(pg::VMCS_X);
    let tpr_shadow = |threshold: u64| {
        move |hv: &Hv| {
            mem::zero_page(vapic);
            mem::wr32(vapic + 0x80, 0xe0); // VTPR class 0xe
            hv.ctl(PROC_CONTROLS, proc::USE_TPR_SHADOW, 0);
            w(VIRTUAL_APIC_ADDR, vapic);
            w(TPR_THRESHOLD, threshold);
        }
    };
    vmfail(
        c,
        names[0],
        hv,
        err::ENTRY_INVALID_CONTROLS,
        tpr_shadow(0xf),
    );
    let enters =
        |c: &mut Checks, name: &str, want: u32, tweak: &dyn Fn(&Hv)| match attempt(hv, tweak) {
            Ok(e) => c.check(name, e.is(want), format_args!("{e} (want reason {want})")),
            Err(m) => c.check(name, false, format_args!("{}", m.as_str())),
        };
    enters(c, names[1], reason::VMCALL, &tpr_shadow(0xe));
    // With "virtualize APIC accesses" the rule does not apply: the entry
    // succeeds and, VTPR being below the threshold, a TPR-below-threshold
    // exit follows at once (27.7.7).
    if hv.can(PROC2_CONTROLS, proc2::VIRTUALIZE_APIC_ACCESSES) {
        enters(c, names[2], reason::TPR_BELOW_THRESHOLD, &|hv| {
            tpr_shadow(0xf)(hv);
            hv.ctl(PROC2_CONTROLS, proc2::VIRTUALIZE_APIC_ACCESSES, 0);
            w(APIC_ACCESS_ADDR, mem::page(pg::X_FIRST + 3));
        });
    } else {
        c.skip(
            names[2],
            format_args!("virtualize APIC accesses not offered"),
        );
    }
}

/// Turns the current VMCS's L2 into a PAE-paging guest without EPT whose
/// tables (in the spare slot pages) map L2's layout to its L1 pages; the
/// PDPT's address, for CR3.
fn pae_tables(hv: &Hv) -> u64 {
    let (pdpt, pd, pt) = (
        mem::page(pg::X_FIRST),
        mem::page(pg::X_FIRST + 1),
        mem::page(pg::X_FIRST + 2),
    );
    for p in [pdpt, pd, pt] {
        mem::zero_page(p);
    }
    mem::wr64(pdpt, pd | 1);
    mem::wr64(pd, pt | 3);
    for a in crate::hv::l2::LAYOUT {
        mem::wr64(pt + 8 * (a >> 12), crate::hv::l2::backing(a) | 3);
    }
    hv.ctl(PROC2_CONTROLS, 0, proc2::EPT | proc2::UNRESTRICTED_GUEST);
    w(GUEST_CR0, rd(GUEST_CR0) | 1 | 1 << 31);
    w(GUEST_CR4, rd(GUEST_CR4) | 1 << 5);
    w(GUEST_CR3, pdpt);
    pdpt
}

/// PAE paging without EPT: the PDPTEs come from CR3 at every entry, and
/// a present one with reserved bits fails it with reason 33, qualification
/// 2 (SDM 27.3.1.6, 27.8) -- also at a VMRESUME after L1 changed only the
/// memory; a failed VMRESUME leaves the VMCS launched, so the next works.
fn pae_without_ept(c: &mut Checks, hv: &Hv) {
    let bad = 1u64 << 5; // PDPTE bit 5 is reserved
    entry_failure(
        c,
        "guest-pae-cr3-pdpte-reserved",
        hv,
        reason::INVALID_GUEST_STATE,
        2,
        |hv| {
            let pdpt = pae_tables(hv);
            mem::wr64(pdpt + 16, mem::page(pg::X_FIRST + 1) | 1 | bad);
        },
    );
    let name = "guest-pae-resume-pdpte-reserved";
    let mut vm = match hv.vm(pg::VMCS_A, l2!(l2_vmcall)) {
        Ok(vm) => vm,
        Err(m) => return c.check(name, false, format_args!("{}", m.as_str())),
    };
    let pdpt = pae_tables(hv);
    let first = vm.enter();
    mem::wr64(pdpt, mem::rd64(pdpt) | bad);
    let resume = vm.enter();
    let still_launched = vm.launched;
    mem::wr64(pdpt, mem::rd64(pdpt) & !bad);
    let again = vm.enter();
    let want = reason::INVALID_GUEST_STATE | reason::ENTRY_FAILURE;
    c.check(
        name,
        first.is(reason::VMCALL)
            && resume
                .exit()
                .is_some_and(|x| x.reason == want && x.qual == 2)
            && still_launched
            && again.is(reason::VMCALL),
        format_args!(
            "VMLAUNCH {first}; VMRESUME with bit 5 in PDPTE0 {resume}; fixed VMRESUME {again}"
        ),
    );
}

/// A guest-state failure is a VM exit as far as L1 is concerned: host
/// state loaded (RSP = host RSP, RFLAGS = 2), and the VMCS stays clear
/// (SDM 27.8: the launch state changes only on success), so VMRESUME fails
/// with error 5 and a corrected VMLAUNCH succeeds.
fn entry_failure_state(c: &mut Checks, hv: &Hv) {
    let mut vm = match hv.vm(pg::VMCS_A, l2!(l2_vmcall)) {
        Ok(vm) => vm,
        Err(m) => {
            return c.check(
                "entry-failure-host-state",
                false,
                format_args!("{}", m.as_str()),
            )
        }
    };
    w(GUEST_RFLAGS, 0);
    let e = vm.enter();
    let (host_rsp, exit_rsp, exit_rflags) = vm::last_exit_host_view();
    let launched_flag = vm.launched;
    vm.launched = true;
    let resume = vm.enter();
    w(GUEST_RFLAGS, 2);
    vm.launched = false;
    let relaunch = vm.enter();
    let ok = e.is(reason::INVALID_GUEST_STATE | reason::ENTRY_FAILURE)
        && exit_rsp == host_rsp
        && exit_rflags == 2
        && !launched_flag
        && matches!(
            resume,
            Entry::Fail(VmFail::Valid(err::VMRESUME_NONLAUNCHED))
        )
        && relaunch.is(reason::VMCALL);
    c.check(
        "entry-failure-host-state",
        ok,
        format_args!("{e}, RSP {exit_rsp:#x} (host {host_rsp:#x}), RFLAGS {exit_rflags:#x}; VMRESUME {resume}; fixed VMLAUNCH {relaunch}"),
    );
}

/// The VM-entry MSR-load list (SDM 27.4): an x2APIC MSR (0x800-0x8ff) or
/// an entry with reserved bits 63:32 set fails the entry with reason 34 |
/// bit 31 and the 1-based index of that entry as qualification.
fn msr_load(c: &mut Checks, hv: &Hv) {
    let list = mem::page(pg::MSR_LISTS);
    // SAFETY: KERNEL_GS_BASE is unused by this guest; restored below.
    let saved = unsafe { cpu::rdmsr(cpu::IA32_KERNEL_GS_BASE) };
    for (name, second) in [
        ("entry-msr-load-x2apic", 0x808u64),
        (
            "entry-msr-load-reserved",
            1 << 32 | cpu::IA32_SYSENTER_CS as u64,
        ),
    ] {
        mem::zero_page(list);
        mem::wr64(list, cpu::IA32_KERNEL_GS_BASE as u64);
        mem::wr64(list + 8, 0x1000);
        mem::wr64(list + 16, second);
        mem::wr64(list + 24, 0);
        entry_failure(c, name, hv, reason::MSR_LOADING, 2, |_| {
            w(ENTRY_MSR_LOAD_ADDR, list);
            w(ENTRY_MSR_LOAD_COUNT, 2);
        });
    }
    // SAFETY: as above.
    unsafe { cpu::wrmsr(cpu::IA32_KERNEL_GS_BASE, saved) };
}

/// Structures at addresses no memory backs, just below MAXPHYADDR: the
/// SDM asks only for alignment and the end below MAXPHYADDR (27.2.1), and
/// the processor reads such memory as all ones: every port and MSR
/// exits, VTPR is class 0xf, a list entry has its reserved bits set.
fn unbacked(c: &mut Checks, hv: &Hv) {
    let top = 1u64 << hv.caps.maxphyaddr;
    let nowhere = |i: u64| top - (i + 1) * 0x10_0000;
    let exits =
        |c: &mut Checks, name: &str, rip: u64, want: u32, tweak: &dyn Fn(&Hv)| match attempt_at(
            hv, rip, tweak,
        ) {
            Ok(e) => c.check(name, e.is(want), format_args!("{e} (want reason {want})")),
            Err(m) => c.check(name, false, format_args!("{}", m.as_str())),
        };
    // L2 reads port 0xe0, bit 0xe0 of I/O bitmap A.
    exits(
        c,
        "addr-io-bitmap-unbacked",
        l2!(l2_in_imm),
        reason::IO,
        &|hv| {
            hv.ctl(PROC_CONTROLS, proc::USE_IO_BITMAPS, 0);
            w(IO_BITMAP_A, nowhere(0));
            w(IO_BITMAP_B, mem::page(pg::IO_B));
        },
    );
    // L2 reads MSR 0 (ECX = 0).
    exits(
        c,
        "addr-msr-bitmap-unbacked",
        l2!(l2_rdmsr),
        reason::RDMSR,
        &|hv| {
            hv.ctl(PROC_CONTROLS, proc::USE_MSR_BITMAPS, 0);
            w(MSR_BITMAP, nowhere(1));
        },
    );
    if hv.caps.proc.can_set(proc::USE_TPR_SHADOW) {
        exits(
            c,
            "addr-virtual-apic-unbacked",
            l2!(l2_vmcall),
            reason::VMCALL,
            &|hv| {
                hv.ctl(PROC_CONTROLS, proc::USE_TPR_SHADOW, 0);
                w(VIRTUAL_APIC_ADDR, nowhere(2));
                w(TPR_THRESHOLD, 0xf);
            },
        );
    } else {
        c.skip(
            "addr-virtual-apic-unbacked",
            format_args!("TPR shadow not offered"),
        );
    }
    entry_failure(
        c,
        "addr-entry-msr-load-unbacked",
        hv,
        reason::MSR_LOADING,
        1,
        |_| {
            w(ENTRY_MSR_LOAD_ADDR, nowhere(3));
            w(ENTRY_MSR_LOAD_COUNT, 1);
        },
    );
    // Its first entry below MAXPHYADDR, its second not.
    vmfail(
        c,
        "addr-entry-msr-load-past-maxphyaddr",
        hv,
        err::ENTRY_INVALID_CONTROLS,
        |_| {
            w(ENTRY_MSR_LOAD_ADDR, top - 16);
            w(ENTRY_MSR_LOAD_COUNT, 2);
        },
    );
}
