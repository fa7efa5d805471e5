//! `smp-nested`: the test hypervisor on two CPUs at once. The boot CPU
//! starts the other CPU itself through its xAPIC (a start-up IPI, then
//! INIT-SIPI-SIPI if that did not start it; a real-mode trampoline below
//! 1 MiB: `crate::smp`), then each CPU, with
//! its own VMXON region, VMCS pages, EPT12 and L2 memory
//! (`crate::hv::mem`), runs the nested basics (VMCS fields round trip, the
//! VMCALL, CPUID and HLT exits of its L2) and EPT checks (a violation its
//! L1 resolves, L2's writes seen by L1), and then both L2s run at the same
//! time: each counts in a page both EPT12s map and waits until it has seen
//! the other L2's counter advance (`l2_meet`). The VMCS fields are checked
//! again after that, and the current-VMCS pointer of each CPU is its own.
//! Across CPUs (issue 15): both L2s run on one EPT12 of CPU 0's, which CPU 0
//! then changes; after each CPU's INVEPT neither L2 sees the old page
//! (`shared-ept-*`). CPU 1 tries to load and clear a VMCS current on CPU 0
//! (refused under L0; undefined natively, so skipped there), then takes it
//! over once CPU 0 cleared it, as KVM moves a vCPU (`vmcs-*`).
//! Check names carry the CPU (`cpu0-...`, `cpu1-...`); the boot CPU prints
//! the verdict once both CPUs are done.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use crate::check::Checks;
use crate::hv::ept::{violation_qual, Size, R, RWX};
use crate::hv::fields::*;
use crate::hv::l2::{self as layout, backing, Mode, TEST, UNMAPPED, WINDOW};
use crate::hv::mem::{self, pg, PAGE};
use crate::hv::vmx::VmFail;
use crate::hv::vmx::{self, rd, vmwrite};
use crate::hv::{apic, below, l0_alive, start, Below, Hv};
use crate::mb1::{Identity, Info};
use crate::{l2, smp};

/// A test both CPUs run (`smp-nested`, `smp-bench`): its name and each
/// CPU's part of it, called with the CPU's index.
pub(super) struct OnBoth {
    pub name: &'static str,
    pub part: fn(usize, &mut Checks),
}

static SMP_NESTED: OnBoth = OnBoth {
    name: "smp-nested",
    part: work,
};
/// The test the AP joins, set before it starts.
static JOB: AtomicPtr<OnBoth> = AtomicPtr::new(core::ptr::null_mut());

const CHECKS: &[&str] = &[
    "vmxon",
    "vmcs-round-trip",
    "vmcall-exit",
    "cpuid-exit",
    "hlt-exit",
    "ept-violation-resolved",
    "l2-write-seen",
    "shared-ept-first-read",
    "shared-ept-after-invept",
    "vmptrld-current-elsewhere",
    "vmclear-current-elsewhere",
    "vmclear-to-move",
    "vmcs-moved",
    "l2s-concurrent",
    "l2-counter-seen",
    "vmcs-kept",
    "current-vmcs-own",
];

/// The L2 page both EPT12s map onto the shared page (in place of the
/// CPU's own page behind it): the counters at +0 (CPU 0) and +4, the
/// "seen" flags at +8 and +12.
const MEET: u64 = layout::SPARE + PAGE;
/// How far the other L2's counter must advance while this one runs.
const MEET_STEPS: u64 = 1000;
/// The most iterations of an L2's meeting loop (about 10 instructions each).
const MEET_BOUND: u64 = 50_000_000;
/// TSC ticks a CPU waits for the other at a meeting point, and the boot
/// CPU for the AP's end (Bochs counts about one tick per instruction).
const WAIT: u64 = 3_000_000_000;
/// LAPIC-timer ticks before a halted L2 is woken if its HLT did not exit.
const WATCHDOG: u32 = 50_000_000;

/// The AP's APIC ID the boot CPU targets (verified on the AP).
static AP_APIC_ID: AtomicU32 = AtomicU32::new(u32::MAX);
/// CPUs at the meeting points so far.
static ARRIVED: AtomicU32 = AtomicU32::new(0);
/// Set by a CPU that cannot go on: the other stops waiting for it.
static ABORT: AtomicBool = AtomicBool::new(false);
/// The AP's (failed, run) counts, published before it is done.
static AP_COUNTS: AtomicU64 = AtomicU64::new(0);
/// CPU 0's EPTP both CPUs' L2s run on (`shared_ept`).
static SHARED_EPTP: AtomicU64 = AtomicU64::new(0);
/// CPU 0's VMCS that CPU 1 tries to take, then takes (`vmcs_move`).
static MOVED_VMCS: AtomicU64 = AtomicU64::new(0);

/// The meeting points, in the order both CPUs pass them.
mod round {
    /// CPU 0 published the shared EPT12.
    pub const EPT_BUILT: u32 = 1;
    /// Both L2s read X through the first mapping.
    pub const EPT_READ: u32 = 2;
    /// CPU 0 remapped X and ran its INVEPT.
    pub const EPT_CHANGED: u32 = 3;
    /// CPU 0 has its VMCS X current.
    pub const VMCS_HELD: u32 = 4;
    /// CPU 1 is done trying to take it.
    pub const VMCS_TRIED: u32 = 5;
    /// CPU 0 cleared it.
    pub const VMCS_CLEARED: u32 = 6;
    /// Both meeting L2s start.
    pub const L2S_RUN: u32 = 7;
    /// Both are done with VMX.
    pub const END: u32 = 8;
}

pub fn run(mbi: &Info<Identity>) {
    run_on_both(&SMP_NESTED, mbi);
}

/// Starts the AP on its part of `t`, runs the boot CPU's, and prints the
/// verdict once both are done.
pub(super) fn run_on_both(t: &'static OnBoth, mbi: &Info<Identity>) {
    crate::set_current_test(&t.name);
    let mut c = Checks::new(t.name);
    let mut mine = Checks::for_cpu(t.name, 0);
    mem::fill(mem::shared(), PAGE, 0);
    JOB.store(t as *const OnBoth as *mut OnBoth, Ordering::SeqCst);
    let started = start_ap(&mut c, mbi);
    if !started {
        give_up();
    }
    (t.part)(0, &mut mine);
    c.merge(mine.counts());
    if started {
        let done = smp::wait_ap_done(WAIT);
        c.check(
            "ap-finished",
            done,
            format_args!("AP state {} (2 = done)", smp::ap_state()),
        );
        if done {
            let v = AP_COUNTS.load(Ordering::SeqCst);
            c.merge(((v >> 32) as u32, v as u32));
        }
    }
    l0_alive(&mut c);
    c.finish();
}

/// Starts the other CPU (APIC ID 1, or 0 if this one is 1) on [`ap_job`].
fn start_ap(c: &mut Checks, mbi: &Info<Identity>) -> bool {
    if let Err(why) = apic::usable() {
        c.check("ap-started", false, format_args!("{why}"));
        return false;
    }
    apic::enable();
    let bsp = smp::apic_id();
    let target = if bsp == 0 { 1 } else { 0 };
    AP_APIC_ID.store(target, Ordering::SeqCst);
    let Some(page) = smp::trampoline_page(mbi) else {
        c.check(
            "ap-started",
            false,
            format_args!("no free usable page below 1 MiB for the trampoline"),
        );
        return false;
    };
    let r = smp::start_ap(target, page, ap_job);
    c.check(
        "ap-started",
        r.is_ok(),
        format_args!(
            "boot CPU APIC ID {bsp:#x}, AP APIC ID {target:#x}, trampoline at {page:#x}: {r:?}"
        ),
    );
    r.is_ok()
}

fn ap_job(cpu: usize) {
    // SAFETY: `run_on_both` stored a `&'static OnBoth` before the AP started.
    let t = unsafe { &*JOB.load(Ordering::SeqCst) };
    let mut c = Checks::for_cpu(t.name, cpu);
    let want = AP_APIC_ID.load(Ordering::SeqCst);
    let id = smp::apic_id();
    c.check(
        "apic-id",
        id == want,
        format_args!("CPUID.1:EBX[31:24] {id:#x}, start-up IPIs sent to {want:#x}"),
    );
    (t.part)(cpu, &mut c);
    let (failed, run) = c.counts();
    AP_COUNTS.store((failed as u64) << 32 | run as u64, Ordering::SeqCst);
}

/// Tells the other CPU not to wait for this one at meeting points.
pub(super) fn give_up() {
    ABORT.store(true, Ordering::SeqCst);
}

/// Waits until both CPUs arrived at meeting point `round` (1, 2, ...);
/// false if the other CPU gave up or did not come in time.
pub(super) fn meet(round: u32) -> bool {
    ARRIVED.fetch_add(1, Ordering::SeqCst);
    let ok = smp::spin_ticks(WAIT, || {
        ARRIVED.load(Ordering::SeqCst) >= 2 * round || ABORT.load(Ordering::SeqCst)
    });
    ok && !ABORT.load(Ordering::SeqCst)
}

/// This CPU's values for the round-trip fields (one of each width).
fn tagged(cpu: usize) -> [(u32, u64); 4] {
    let t = cpu as u64;
    [
        (GUEST_LDTR_SEL, 0x28 + 8 * t),
        (GUEST_SYSENTER_CS, 0x5a5a_0040 + t),
        (TSC_OFFSET, 0x1234_5678_0000_0000 | t << 16 | 0xabc),
        (GUEST_SYSENTER_ESP, 0xffff_8000_0000_1000 + 0x10 * t),
    ]
}

fn fields_hold(cpu: usize) -> (bool, crate::hv::Msg) {
    let mut m = crate::hv::Msg::new();
    let mut ok = true;
    for (f, v) in tagged(cpu) {
        let got = vmx::vmread(f);
        ok &= got == Ok(v);
        let _ = core::fmt::Write::write_fmt(&mut m, format_args!("{f:#x}={got:x?} "));
    }
    (ok, m)
}

/// Everything one CPU checks; `cpu` is this CPU's index.
fn work(cpu: usize, c: &mut Checks) {
    let other = 1 - cpu;
    let Some(mut hv) = start(c, CHECKS) else {
        give_up();
        return;
    };
    if !hv.mode.ept() {
        c.fail_all(&CHECKS[1..], format_args!("needs EPT (mode {:?})", hv.mode));
        give_up();
        return;
    }
    // The meeting L2 on VMCS B: its EPT12 maps MEET onto the shared page.
    let e = hv.new_ept(&[(MEET, mem::shared())]);
    let mut meet_vm = match hv.vm(pg::VMCS_B, l2!(l2_meet)) {
        Ok(vm) => vm,
        Err(m) => {
            c.fail_all(&CHECKS[1..], format_args!("setting up VMCS B: {m}"));
            give_up();
            return;
        }
    };
    let _ = vmwrite(EPT_POINTER, e.eptp(false));
    let wrote = tagged(cpu).iter().all(|&(f, v)| vmwrite(f, v).is_ok());
    let (held, m) = fields_hold(cpu);
    c.check(
        "vmcs-round-trip",
        wrote && held,
        format_args!("VMCS B at {:#x}: {m}", meet_vm.vmcs),
    );

    basics(cpu, c, &hv);
    ept(cpu, c, &mut hv);
    shared_ept(cpu, c, &mut hv);
    vmcs_move(cpu, c, &hv);

    // Both L2s at once.
    let _ = meet_vm.load();
    let r = &mut meet_vm.regs;
    r.rsi = MEET + 4 * cpu as u64;
    r.rdi = MEET + 4 * other as u64;
    r.rbx = MEET + 8 + 4 * cpu as u64;
    r.rbp = MEET + 8 + 4 * other as u64;
    r.rcx = MEET_STEPS;
    r.rdx = MEET_BOUND;
    if !meet(round::L2S_RUN) {
        for n in ["l2s-concurrent", "l2-counter-seen"] {
            c.check(n, false, format_args!("the other CPU never came"));
        }
        return;
    }
    let t0 = crate::hv::cpu::rdtsc();
    let x = meet_vm.enter();
    let ticks = crate::hv::cpu::rdtsc() - t0;
    let sh = mem::shared();
    let (own, theirs) = (
        mem::rd32(sh + 4 * cpu as u64),
        mem::rd32(sh + 4 * other as u64),
    );
    let (seen_me, seen_other) = (
        mem::rd32(sh + 8 + 4 * cpu as u64),
        mem::rd32(sh + 8 + 4 * other as u64),
    );
    let left = meet_vm.regs.rdx as u32;
    let start_other = meet_vm.regs.rax as u32;
    let at_vmcall = x
        .exit()
        .is_some_and(|x| x.is(reason::VMCALL) && x.rip == l2!(l2_meet_vmcall));
    c.check(
        "l2s-concurrent",
        at_vmcall && left != 0 && seen_me == 1 && seen_other == 1,
        format_args!(
            "{x} after {ticks} ticks; {left} iterations left; the other L2's counter went from {start_other} to {theirs}, flags {seen_me}/{seen_other}"
        ),
    );
    // Iterations run = the bound less what is left, plus the last one
    // (which ends before counting down).
    let ran = (MEET_BOUND as u32).wrapping_sub(left).wrapping_add(1);
    c.check(
        "l2-counter-seen",
        at_vmcall && own == ran,
        format_args!("L2 counted {own} in the shared page, ran {ran} iterations"),
    );
    let (held, m) = fields_hold(cpu);
    c.check("vmcs-kept", held, format_args!("after both L2s ran: {m}"));
    let cur = vmx::vmptrst();
    c.check(
        "current-vmcs-own",
        cur == meet_vm.vmcs,
        format_args!("VMPTRST {cur:#x}, this CPU's VMCS B {:#x}", meet_vm.vmcs),
    );
    // Both CPUs leave VMX operation only after the other's L2 is done.
    let _ = meet(round::END);
}

/// The VMCALL, CPUID and HLT exits of an L2 on this CPU (VMCS A).
fn basics(cpu: usize, c: &mut Checks, hv: &Hv) {
    if let Some(mut vm) = hv.fresh(c, "vmcall-exit", l2!(l2_vmcall)) {
        let e = vm.enter();
        let ok = e
            .exit()
            .is_some_and(|x| x.is(reason::VMCALL) && x.len == 3 && x.rip == l2!(l2_vmcall));
        c.check("vmcall-exit", ok, format_args!("{e}"));
    }
    if let Some(mut vm) = hv.fresh(c, "cpuid-exit", l2!(l2_cpuid)) {
        vm.regs.rax = 0;
        let e = vm.enter();
        let first = e
            .exit()
            .copied()
            .filter(|x| x.is(reason::CPUID) && x.len == 2 && x.rip == l2!(l2_cpuid));
        let ok = match first {
            Some(x) => {
                vm.regs.rax = 0xc0ff_ee00 | cpu as u64;
                vm.regs.rbx = 0x0bad_ca00 | cpu as u64;
                let n = vm.skip_and_enter(&x);
                n.is(reason::VMCALL)
                    && vm.regs.rsi as u32 == 0xc0ff_ee00 | cpu as u32
                    && vm.regs.rdi as u32 == 0x0bad_ca00 | cpu as u32
            }
            None => false,
        };
        c.check(
            "cpuid-exit",
            ok,
            format_args!("{e}; L2 saw eax {:#x} ebx {:#x}", vm.regs.rsi, vm.regs.rdi),
        );
    }
    if let Some(mut vm) = hv.fresh(c, "hlt-exit", l2!(l2_hlt)) {
        if !hv.ctl(PROC_CONTROLS, proc::HLT_EXITING, 0) {
            return c.skip("hlt-exit", format_args!("HLT exiting cannot be set"));
        }
        // Should the HLT not exit, the LAPIC timer ends the halt (exit 1).
        let _ = vmwrite(GUEST_RFLAGS, 0x202);
        let _watchdog = apic::Watchdog::arm(WATCHDOG);
        let e = vm.enter();
        let first = e
            .exit()
            .copied()
            .filter(|x| x.is(reason::HLT) && x.len == 1 && x.rip == l2!(l2_hlt));
        let second = first.map(|x| vm.skip_and_enter(&x));
        c.check(
            "hlt-exit",
            first.is_some() && second.is_some_and(|s| s.is(reason::VMCALL)),
            format_args!("{e}"),
        );
    }
}

/// The linear address at which L2 reaches L2-physical `gpa`: the same when
/// L2 does not page; through window page 2 when it does.
fn linear_for(hv: &Hv, gpa: u64) -> u64 {
    if hv.mode == Mode::Unpaged {
        gpa
    } else {
        layout::set_window(hv.mode, 2, Some(gpa & !(PAGE - 1)));
        WINDOW + 2 * PAGE + (gpa & (PAGE - 1))
    }
}

/// EPT12 on this CPU: L2 reads a page EPT12 does not map (exit 48), L1
/// maps it onto a page of its own with this CPU's data, INVEPT, resumes,
/// and L2 reads that data; L2's write lands in L1's page behind it.
fn ept(cpu: usize, c: &mut Checks, hv: &mut Hv) {
    let gpa = UNMAPPED + 0x24;
    let planted = 0x600d_0024 | (cpu as u32) << 12;
    let backing_page = backing(TEST + 6 * PAGE);
    let mut e = hv.new_ept(&[]);
    if let Some(mut vm) = hv.fresh(c, "ept-violation-resolved", l2!(l2_read)) {
        let _ = vmwrite(EPT_POINTER, e.eptp(false));
        let gla = linear_for(hv, gpa);
        vm.regs.rsi = gla;
        mem::wr32(backing_page + 0x24, planted);
        let first = vm.enter();
        let x = first.exit().copied().unwrap_or_default();
        let want = violation_qual(R, 0, true, true);
        let gpa_seen = rd(GUEST_PHYSICAL_ADDRESS);
        let violation = x.is(reason::EPT_VIOLATION)
            && x.qual & 0x1fff == want
            && gpa_seen == gpa
            && x.rip == l2!(l2_read);
        e.map(&mut hv.tables, UNMAPPED, backing_page, Size::K4, RWX);
        let inv = if hv.caps.invept() {
            hv.invept(e.eptp(false))
        } else {
            Ok(())
        };
        let second = vm.enter();
        let read = vm.regs.rax as u32;
        c.check(
            "ept-violation-resolved",
            violation && inv.is_ok() && second.is(reason::VMCALL) && read == planted,
            format_args!(
                "{first}, guest-physical {gpa_seen:#x} (want qualification {want:#x}, {gpa:#x}); INVEPT {inv:?}; {second}, L2 read {read:#x} (want {planted:#x})"
            ),
        );
    }
    if let Some(mut vm) = hv.fresh(c, "l2-write-seen", l2!(l2_write)) {
        let _ = vmwrite(EPT_POINTER, e.eptp(false));
        let a = TEST + 0x40;
        let v = 0x5eed_0000 | (cpu as u32) << 8 | 0x40;
        mem::wr32(backing(a), 0);
        vm.regs.rsi = linear_for(hv, a);
        vm.regs.rdi = v as u64;
        let x = vm.enter();
        let got = mem::rd32(backing(a));
        c.check(
            "l2-write-seen",
            x.is(reason::VMCALL) && got == v,
            format_args!(
                "{x}; L1 reads {got:#x} at L1 {:#x} (want {v:#x})",
                backing(a)
            ),
        );
    }
}

/// The L2 page both CPUs' L2s read in `shared_ept`: inside the low 4 MiB
/// that L2's own page tables map one to one, so the same L2 address works
/// whether L2 pages or not.
const X: u64 = TEST + 5 * PAGE;

/// Runs `l2_read` of X on `eptp` in a fresh VMCS A: what L2 read (if it
/// reached its VMCALL) and how the run went.
fn read_x(c: &mut Checks, hv: &Hv, check: &str, eptp: u64) -> (Option<u32>, crate::hv::Msg) {
    let Some(mut vm) = hv.fresh(c, check, l2!(l2_read)) else {
        return (None, crate::msg!("no VMCS"));
    };
    let _ = vmwrite(EPT_POINTER, eptp);
    vm.regs.rsi = X;
    let e = vm.enter();
    let read = e.is(reason::VMCALL).then_some(vm.regs.rax as u32);
    (read, crate::msg!("{e}, L2 read {:#x}", vm.regs.rax as u32))
}

/// One EPT12 on both CPUs (issue 15 item 3): CPU 0 maps X onto its page
/// A, both L2s read A's value there (so each CPU may cache the
/// translation), CPU 0 remaps X onto page B and runs INVEPT, then CPU 1
/// runs INVEPT as KVM's remote TLB flush would; both L2s must now read
/// B's value. Both CPUs pass every meeting point, whatever failed.
fn shared_ept(cpu: usize, c: &mut Checks, hv: &mut Hv) {
    const IN_A: u32 = 0xa0a0_0a0a;
    const IN_B: u32 = 0xb0b0_0b0b;
    // CPU 0's pages (only CPU 0 writes them).
    let (a, b) = (backing(TEST + 6 * PAGE), backing(TEST + 7 * PAGE));
    let mut built = None;
    if cpu == 0 {
        mem::wr32(a, IN_A);
        mem::wr32(b, IN_B);
        let e = hv.new_ept(&[(X, a)]);
        SHARED_EPTP.store(e.eptp(false), Ordering::SeqCst);
        built = Some(e);
    }
    let met = meet(round::EPT_BUILT);
    let eptp = SHARED_EPTP.load(Ordering::SeqCst);
    let first = if met {
        read_x(c, hv, "shared-ept-first-read", eptp)
    } else {
        (None, crate::msg!("the other CPU never came"))
    };
    c.check(
        "shared-ept-first-read",
        first.0 == Some(IN_A),
        format_args!(
            "EPTP {eptp:#x} (CPU 0's), X {X:#x}: {} (want A's {IN_A:#x})",
            first.1
        ),
    );
    let mut inv = Ok(());
    if meet(round::EPT_READ) {
        if let Some(e) = built.as_mut() {
            e.map(&mut hv.tables, X, b, Size::K4, RWX);
            inv = hv.invept(eptp);
        }
    }
    // Each CPU invalidates its own cached translations (SDM 30.3).
    let met = meet(round::EPT_CHANGED);
    if met && cpu != 0 {
        inv = hv.invept(eptp);
    }
    let second = if met {
        read_x(c, hv, "shared-ept-after-invept", eptp)
    } else {
        (None, crate::msg!("the other CPU never came"))
    };
    c.check(
        "shared-ept-after-invept",
        inv.is_ok() && second.0 == Some(IN_B),
        format_args!(
            "after CPU 0 remapped X onto B and this CPU's INVEPT ({inv:?}): {} (want B's {IN_B:#x}, never A's {IN_A:#x})",
            second.1
        ),
    );
}

/// One VMCS on two CPUs: CPU 0 makes its VMCS X current and writes a
/// field; CPU 1's VMPTRLD and VMCLEAR of X are refused under L0 (error 9
/// and 2; CPU 1's current VMCS stays its own); natively the SDM leaves
/// them undefined, so they are skipped. Then CPU 0 clears X and CPU 1
/// loads it and reads the field, as KVM moves a vCPU; CPU 1 clears X
/// again, so no CPU is left holding it.
fn vmcs_move(cpu: usize, c: &mut Checks, hv: &Hv) {
    const FIELD: u32 = GUEST_SYSENTER_ESP;
    const VALUE: u64 = 0xffff_8000_0c0f_fee0;
    if cpu == 0 {
        let x = mem::page(pg::VMCS_X);
        let r = crate::hv::vmcs::init_region(&hv.caps, x)
            // SAFETY: this CPU's spare VMCS page, just initialized.
            .and_then(|_| unsafe { vmx::vmptrld(x) })
            .and_then(|_| vmwrite(FIELD, VALUE));
        // X published only once it is current here.
        if r.is_ok() {
            MOVED_VMCS.store(x, Ordering::SeqCst);
        }
    }
    let met = meet(round::VMCS_HELD);
    let x = MOVED_VMCS.load(Ordering::SeqCst);
    if cpu != 0 {
        let own = vmx::vmptrst();
        let ready = met && x != 0;
        if !ready {
            for n in ["vmptrld-current-elsewhere", "vmclear-current-elsewhere"] {
                c.check(
                    n,
                    false,
                    format_args!("CPU 0 has no VMCS current for us ({x:#x})"),
                );
            }
        } else if below() != Below::L0 {
            for n in ["vmptrld-current-elsewhere", "vmclear-current-elsewhere"] {
                c.skip(
                    n,
                    format_args!(
                        "running natively: the SDM leaves a VMCS current on two CPUs undefined"
                    ),
                );
            }
        } else {
            // SAFETY: X is CPU 0's VMCS page; L0 must refuse to use it here.
            let r = unsafe { vmx::vmptrld(x) };
            let now = vmx::vmptrst();
            c.check(
                "vmptrld-current-elsewhere",
                r == Err(VmFail::Valid(9)) && now == own,
                format_args!("VMPTRLD {x:#x} (current on CPU 0): {r:?} (want VMfailValid 9); VMPTRST {now:#x} (was {own:#x})"),
            );
            // SAFETY: as above.
            let r = unsafe { vmx::vmclear(x) };
            let now = vmx::vmptrst();
            c.check(
                "vmclear-current-elsewhere",
                r == Err(VmFail::Valid(2)) && now == own,
                format_args!("VMCLEAR {x:#x} (current on CPU 0): {r:?} (want VMfailValid 2); VMPTRST {now:#x} (was {own:#x})"),
            );
        }
    }
    let met = meet(round::VMCS_TRIED);
    if cpu == 0 {
        // SAFETY: this CPU's own VMCS page.
        let r = if x != 0 {
            unsafe { vmx::vmclear(x) }
        } else {
            Err(VmFail::Invalid)
        };
        c.check(
            "vmclear-to-move",
            met && r.is_ok(),
            format_args!("VMCLEAR of its VMCS X {x:#x}: {r:?}"),
        );
    }
    let met = meet(round::VMCS_CLEARED);
    if cpu != 0 {
        let (loaded, got, cleared) = if met && x != 0 {
            // SAFETY: CPU 0 cleared X and no longer uses it.
            let l = unsafe { vmx::vmptrld(x) };
            let g = vmx::vmread(FIELD);
            // SAFETY: as above; leaves X clear and current nowhere.
            (l, g, unsafe { vmx::vmclear(x) })
        } else {
            (
                Err(VmFail::Invalid),
                Err(VmFail::Invalid),
                Err(VmFail::Invalid),
            )
        };
        c.check(
            "vmcs-moved",
            loaded.is_ok() && got == Ok(VALUE) && cleared.is_ok(),
            format_args!("VMPTRLD {x:#x} after CPU 0's VMCLEAR: {loaded:?}; VMREAD {FIELD:#x} {got:x?} (CPU 0 wrote {VALUE:#x}); VMCLEAR {cleared:?}"),
        );
    }
}
