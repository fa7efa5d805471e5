//! `nested-basic`: the test hypervisor's core round trip. L2 runs, exits for
//! CPUID/HLT/RDTSC/VMX instructions/its own VMCALL, L1 emulates and resumes;
//! the exit information and L2's state in VMCS12 are what L2 left, L1's
//! host state is what the VMCS said; MSR lists, TSC offsetting and the
//! preemption timer work. SDM Vol. 3C chapters 25-28.

use crate::check::Checks;
use crate::hv::fields::*;
use crate::hv::mem::{self, pg};
use crate::hv::vm::Regs;
use crate::hv::vmx::{rd, vmwrite};
use crate::hv::{apic, below, cpu, l0_alive, start, Below, Hv};
use crate::l2;

/// LAPIC-timer ticks before a halted L2 is woken if nothing else does
/// (about half a second of Bochs time).
const WATCHDOG: u32 = 50_000_000;

const CHECKS: &[&str] = &[
    "vmxon",
    "l2-runs",
    "cpuid-exit",
    "cpuid-l0-leaf",
    "hlt-exit",
    "hlt-no-exit-timer",
    "preemption-timer",
    "rdtsc-exit",
    "tsc-offset",
    "l2-vmx-insns-exit",
    "exit-state-l2",
    "host-state-restored",
    "msr-load-store-lists",
];

pub fn run() {
    static NAME: &str = "nested-basic";
    crate::set_current_test(&NAME);
    let mut c = Checks::new(NAME);
    if let Some(mut hv) = start(&mut c, CHECKS) {
        l2_runs(&mut c, &hv);
        cpuid_exit(&mut c, &hv);
        cpuid_l0_leaf(&mut c, &hv);
        hlt_exit(&mut c, &hv);
        hlt_no_exit_timer(&mut c, &hv);
        preemption_timer(&mut c, &hv);
        rdtsc(&mut c, &hv);
        l2_vmx_insns(&mut c, &hv);
        exit_state(&mut c, &hv);
        host_state(&mut c, &mut hv);
        msr_lists(&mut c, &hv);
    }
    l0_alive(&mut c);
    c.finish();
}

/// A fresh VMCS A for an L2 starting at `rip`; a failure fails `check`.
fn fresh(c: &mut Checks, hv: &Hv, check: &str, rip: u64) -> Option<crate::hv::vm::Vm> {
    match hv.vm(pg::VMCS_A, rip) {
        Ok(vm) => Some(vm),
        Err(m) => {
            c.check(
                check,
                false,
                format_args!("setting up the VMCS: {}", m.as_str()),
            );
            None
        }
    }
}

/// L2 gets L1's registers on entry and L1 gets L2's on exit (only RSP,
/// RIP, RFLAGS are in the VMCS, SDM 25.4.1; the rest is the hypervisor's
/// job, and under L0 L0's): L2 inverts seven registers and VMCALLs, which
/// exits unconditionally (SDM 26.1.2) with instruction length 3.
fn l2_runs(c: &mut Checks, hv: &Hv) {
    let Some(mut vm) = fresh(c, hv, "l2-runs", l2!(l2_regs)) else {
        return;
    };
    let input = Regs {
        rax: 0x1111_1111,
        rbx: 0x2222_2222,
        rcx: 0x3333_3333,
        rdx: 0x4444_4444,
        rsi: 0x5555_5555,
        rdi: 0x6666_6666,
        rbp: 0x7777_7777,
        ..Regs::default()
    };
    vm.regs = input;
    let e = vm.enter();
    let r = vm.regs;
    let lo = |v: u64| v as u32;
    let inverted = [
        (r.rax, input.rax),
        (r.rbx, input.rbx),
        (r.rcx, input.rcx),
        (r.rdx, input.rdx),
        (r.rsi, input.rsi),
        (r.rdi, input.rdi),
        (r.rbp, input.rbp),
    ]
    .iter()
    .all(|&(out, inp)| lo(out) == !lo(inp));
    let ok = e.is(reason::VMCALL)
        && e.exit()
            .is_some_and(|x| x.len == 3 && x.rip == l2!(l2_regs) + 14)
        && inverted;
    c.check(
        "l2-runs",
        ok,
        format_args!("{e}, eax {:#x} ebp {:#x}", r.rax, r.rbp),
    );
}

/// CPUID always exits (SDM 26.1.2): reason 10, length 2, RIP at the
/// instruction; L1 supplies the results and skips it; L2 sees them.
fn cpuid_exit(c: &mut Checks, hv: &Hv) {
    let Some(mut vm) = fresh(c, hv, "cpuid-exit", l2!(l2_cpuid)) else {
        return;
    };
    vm.regs.rax = 0x4000_0000;
    let e = vm.enter();
    let Some(x) = e
        .exit()
        .copied()
        .filter(|x| x.is(reason::CPUID) && x.len == 2 && x.rip == l2!(l2_cpuid))
    else {
        return c.check("cpuid-exit", false, format_args!("first exit: {e}"));
    };
    let leaf = vm.regs.rax;
    vm.regs.rax = 0xc0ff_ee00;
    vm.regs.rbx = 0x0bad_cafe;
    let e = vm.skip_and_enter(&x);
    let ok = leaf == 0x4000_0000
        && e.is(reason::VMCALL)
        && vm.regs.rsi == 0xc0ff_ee00
        && vm.regs.rdi == 0x0bad_cafe;
    c.check(
        "cpuid-exit",
        ok,
        format_args!(
            "{x}, leaf {leaf:#x}; then {e}, L2 saw eax {:#x} ebx {:#x}",
            vm.regs.rsi, vm.regs.rdi
        ),
    );
}

/// L0's announcement leaf (docs/ultracall-abi.md §1): under L0, L0 answers
/// it for L2 itself, so L1 sees no CPUID exit, only L2's VMCALL after it,
/// and L2 holds the version and "L0Hy"; natively it exits to L1 like any
/// other leaf.
fn cpuid_l0_leaf(c: &mut Checks, hv: &Hv) {
    use ultracall_abi::cpuid::{HV_SIGNATURE_EBX, L0_LEAF};
    let Some(mut vm) = fresh(c, hv, "cpuid-l0-leaf", l2!(l2_cpuid)) else {
        return;
    };
    vm.regs.rax = L0_LEAF as u64;
    let e = vm.enter();
    let (eax, ebx) = (vm.regs.rsi as u32, vm.regs.rdi as u32);
    let ok = match below() {
        Below::L0 => {
            e.is(reason::VMCALL)
                && eax == ultracall_abi::ABI_VERSION.to_raw()
                && ebx == HV_SIGNATURE_EBX
        }
        _ => e.is(reason::CPUID),
    };
    c.check(
        "cpuid-l0-leaf",
        ok,
        format_args!("below {:?}: {e}, L2 saw eax {eax:#x} ebx {ebx:#x}", below()),
    );
}

/// HLT exiting (SDM 26.1.3): reason 12, length 1.
fn hlt_exit(c: &mut Checks, hv: &Hv) {
    let Some(mut vm) = fresh(c, hv, "hlt-exit", l2!(l2_hlt)) else {
        return;
    };
    if !hv.ctl(PROC_CONTROLS, proc::HLT_EXITING, 0) {
        return c.skip("hlt-exit", format_args!("HLT exiting cannot be set"));
    }
    // Should the HLT not exit, the LAPIC timer ends the halt (exit 1).
    // L2 gets IF = 1: Bochs keeps interrupts masked for an L2 entered with
    // IF = 0 (see nested-exits), and a halt with them masked never ends.
    let _ = vmwrite(GUEST_RFLAGS, 0x202);
    let _watchdog = apic::Watchdog::arm(WATCHDOG);
    let e = vm.enter();
    let first = e
        .exit()
        .copied()
        .filter(|x| x.is(reason::HLT) && x.len == 1 && x.rip == l2!(l2_hlt));
    let second = first.map(|x| vm.skip_and_enter(&x));
    let ok = first.is_some() && second.is_some_and(|s| s.is(reason::VMCALL));
    c.check("hlt-exit", ok, format_args!("{e}"));
}

/// Without HLT exiting L2 halts (activity state HLT); the preemption timer
/// keeps counting in HLT and its exit saves activity state 1 with RIP past
/// the HLT (SDM 26.5.1, 28.3.4). Resuming in the active state continues.
fn hlt_no_exit_timer(c: &mut Checks, hv: &Hv) {
    if !hv.caps.preemption_timer() || !hv.caps.activity_hlt() {
        return c.skip(
            "hlt-no-exit-timer",
            format_args!("no preemption timer or no HLT activity state"),
        );
    }
    if !hv.caps.proc.can_clear(proc::HLT_EXITING) {
        return c.skip(
            "hlt-no-exit-timer",
            format_args!("HLT exiting cannot be cleared"),
        );
    }
    let Some(mut vm) = fresh(c, hv, "hlt-no-exit-timer", l2!(l2_hlt)) else {
        return;
    };
    hv.ctl(PROC_CONTROLS, 0, proc::HLT_EXITING);
    hv.ctl(PIN_CONTROLS, pin::PREEMPTION_TIMER, 0);
    let _ = vmwrite(PREEMPTION_TIMER_VALUE, 2000);
    let _ = vmwrite(GUEST_RFLAGS, 0x202);
    let watchdog = apic::Watchdog::arm(WATCHDOG);
    let e = vm.enter();
    drop(watchdog);
    let activity = rd(GUEST_ACTIVITY_STATE);
    let first = e
        .exit()
        .copied()
        .filter(|x| x.is(reason::PREEMPTION_TIMER) && x.rip == l2!(l2_hlt) + 1);
    let _ = vmwrite(GUEST_ACTIVITY_STATE, 0);
    hv.ctl(PIN_CONTROLS, 0, pin::PREEMPTION_TIMER);
    let second = first.map(|_| vm.enter());
    let ok = first.is_some() && activity == 1 && second.is_some_and(|s| s.is(reason::VMCALL));
    c.check(
        "hlt-no-exit-timer",
        ok,
        format_args!("{e}, activity state {activity}"),
    );
}

/// The preemption timer counts down from the VMCS value while L2 runs and
/// exits with reason 52 at zero (SDM 26.5.1); with "save preemption timer
/// value" the field reads 0 after that exit (SDM 28.3.4).
fn preemption_timer(c: &mut Checks, hv: &Hv) {
    if !hv.caps.preemption_timer() {
        return c.skip(
            "preemption-timer",
            format_args!("the preemption timer is not offered"),
        );
    }
    let Some(mut vm) = fresh(c, hv, "preemption-timer", l2!(l2_spin)) else {
        return;
    };
    hv.ctl(PIN_CONTROLS, pin::PREEMPTION_TIMER, 0);
    let save = hv.ctl(EXIT_CONTROLS, exit::SAVE_PREEMPTION_TIMER, 0);
    let _ = vmwrite(PREEMPTION_TIMER_VALUE, 3000);
    const BOUND: u64 = 20_000_000;
    vm.regs.rcx = 0;
    vm.regs.rdx = BOUND;
    let e = vm.enter();
    let left = rd(PREEMPTION_TIMER_VALUE);
    let spins = vm.regs.rcx;
    let in_loop = e
        .exit()
        .is_some_and(|x| (l2!(l2_spin)..l2!(l2_spin) + 8).contains(&x.rip));
    let ok = e.is(reason::PREEMPTION_TIMER)
        && in_loop
        && spins > 0
        && spins < BOUND
        && (!save || left == 0);
    c.check(
        "preemption-timer",
        ok,
        format_args!(
            "{e}, L2 looped {spins} times, value after exit {left} (saved: {save}), rate 2^{}",
            hv.caps.preemption_timer_rate()
        ),
    );
}

/// RDTSC exiting (SDM 26.1.3, reason 16) and TSC offsetting (SDM 26.3, RDTSC:
/// L2 reads the TSC plus the offset).
fn rdtsc(c: &mut Checks, hv: &Hv) {
    if let Some(mut vm) = fresh(c, hv, "rdtsc-exit", l2!(l2_rdtsc)) {
        if hv.ctl(PROC_CONTROLS, proc::RDTSC_EXITING, 0) {
            let e = vm.enter();
            let ok = e
                .exit()
                .is_some_and(|x| x.is(reason::RDTSC) && x.len == 2 && x.rip == l2!(l2_rdtsc));
            c.check("rdtsc-exit", ok, format_args!("{e}"));
        } else {
            c.skip("rdtsc-exit", format_args!("RDTSC exiting cannot be set"));
        }
    }
    if !hv.caps.proc.can_set(proc::TSC_OFFSETTING) || !hv.caps.proc.can_clear(proc::RDTSC_EXITING) {
        return c.skip("tsc-offset", format_args!("TSC offsetting not offered"));
    }
    let Some(mut vm) = fresh(c, hv, "tsc-offset", l2!(l2_rdtsc)) else {
        return;
    };
    hv.ctl(PROC_CONTROLS, proc::TSC_OFFSETTING, proc::RDTSC_EXITING);
    const OFFSET: u64 = 1 << 50;
    let _ = vmwrite(TSC_OFFSET, OFFSET);
    let before = cpu::rdtsc();
    let e = vm.enter();
    let after = cpu::rdtsc();
    let l2_tsc = (vm.regs.rdx as u32 as u64) << 32 | vm.regs.rax as u32 as u64;
    let ok = e.is(reason::VMCALL) && l2_tsc >= before + OFFSET && l2_tsc <= after + OFFSET;
    c.check(
        "tsc-offset",
        ok,
        format_args!("{e}, L1 TSC {before:#x}..{after:#x}, L2 read {l2_tsc:#x}"),
    );
}

/// VMX instructions in VMX non-root operation exit unconditionally (SDM
/// 26.1.2): L2's VMXON (27), VMPTRLD (21), VMREAD (23) reach L1, never
/// act on L1's VMX state.
fn l2_vmx_insns(c: &mut Checks, hv: &Hv) {
    let Some(mut vm) = fresh(c, hv, "l2-vmx-insns-exit", l2!(l2_vmx)) else {
        return;
    };
    vm.regs.rax = crate::hv::l2::TEST;
    vm.regs.rcx = VM_INSTRUCTION_ERROR as u64;
    let base = l2!(l2_vmx);
    let mut seen = [(0u32, 0u64, 0u64); 4];
    let mut e = vm.enter();
    for s in seen.iter_mut() {
        let Some(x) = e.exit().copied() else { break };
        *s = (x.reason, x.rip - base, x.len);
        if x.is(reason::VMCALL) {
            break;
        }
        e = vm.skip_and_enter(&x);
    }
    let want = [
        (reason::VMXON, 0, 4),
        (reason::VMPTRLD, 4, 3),
        (reason::VMREAD, 7, 3),
        (reason::VMCALL, 10, 3),
    ];
    // L1's own current VMCS is untouched.
    let current = crate::hv::vmx::vmptrst();
    let ok = seen == want && current == vm.vmcs;
    c.check(
        "l2-vmx-insns-exit",
        ok,
        format_args!("(reason, offset, length): {seen:?}; L1's current VMCS {current:#x}"),
    );
}

/// VMCS12 after an exit holds L2's RIP (at the VMCALL), RSP and RFLAGS as
/// L2 left them (SDM 28.3.1-28.3.2), the exit reason and instruction
/// length (SDM 28.2.1, 28.2.5).
fn exit_state(c: &mut Checks, hv: &Hv) {
    let Some(mut vm) = fresh(c, hv, "exit-state-l2", l2!(l2_state)) else {
        return;
    };
    vm.regs.rbp = 0x4abc;
    let e = vm.enter();
    // mov esp, ebp (2) ; stc (1) ; std (1) ; vmcall
    let ok = e.exit().is_some_and(|x| {
        x.reason == reason::VMCALL
            && x.rip == l2!(l2_state) + 4
            && x.len == 3
            && x.rsp == 0x4abc
            && x.rflags == 0x403
    });
    c.check(
        "exit-state-l2",
        ok,
        format_args!(
            "{e}, RSP {:#x} RFLAGS {:#x}",
            rd(GUEST_RSP),
            rd(GUEST_RFLAGS)
        ),
    );
}

/// A VM exit loads L1's state from the host-state area (SDM 28.5): CR3,
/// selectors, FS/GS bases, SYSENTER MSRs, GDTR/IDTR bases with limits
/// 0xffff, TR, RSP; RFLAGS is 0x2 and DR7 0x400 (28.5.1-28.5.3). Values
/// differ from L1's before the entry so their loading is visible.
fn host_state(c: &mut Checks, hv: &mut Hv) {
    let Some(mut vm) = fresh(c, hv, "host-state-restored", l2!(l2_vmcall)) else {
        return;
    };
    let cr3 = cpu::cr3();
    let copy = mem::page(pg::HOST_PML4);
    // SAFETY: CR3 points at L1's identity-mapped PML4 (boot page tables).
    let pml4 = unsafe { core::slice::from_raw_parts((cr3 & !0xfff) as *const u8, 4096) };
    mem::copy_in(copy, pml4);
    // SAFETY (rdmsr/wrmsr): architectural MSRs; restored below.
    let (fs_base, gs_base, se_cs, se_esp, se_eip) = unsafe {
        (
            cpu::rdmsr(cpu::IA32_FS_BASE),
            cpu::rdmsr(cpu::IA32_GS_BASE),
            cpu::rdmsr(cpu::IA32_SYSENTER_CS),
            cpu::rdmsr(cpu::IA32_SYSENTER_ESP),
            cpu::rdmsr(cpu::IA32_SYSENTER_EIP),
        )
    };
    let _ = vmwrite(HOST_CR3, copy | (cr3 & 0xfff));
    let _ = vmwrite(HOST_FS_SEL, cpu::DATA_SEL as u64);
    let _ = vmwrite(HOST_FS_BASE, 0x1234_5000);
    let _ = vmwrite(HOST_GS_BASE, 0x5678_9000);
    let _ = vmwrite(HOST_SYSENTER_CS, 0x77);
    let _ = vmwrite(HOST_SYSENTER_ESP, 0xabcd_e000);
    let _ = vmwrite(HOST_SYSENTER_EIP, 0xfedc_b000);
    let (gdt_base, idt_base) = (cpu::sgdt().1, cpu::sidt().1);
    let e = vm.enter();
    let got_cr3 = cpu::cr3();
    let (fs, tr, cs, ss, ds) = (cpu::fs(), cpu::tr(), cpu::cs(), cpu::ss(), cpu::ds());
    let (gdtr, idtr, dr7) = (cpu::sgdt(), cpu::sidt(), cpu::dr7());
    // SAFETY: as above.
    let msrs = unsafe {
        [
            cpu::rdmsr(cpu::IA32_FS_BASE),
            cpu::rdmsr(cpu::IA32_GS_BASE),
            cpu::rdmsr(cpu::IA32_SYSENTER_CS),
            cpu::rdmsr(cpu::IA32_SYSENTER_ESP),
            cpu::rdmsr(cpu::IA32_SYSENTER_EIP),
        ]
    };
    let (host_rsp, exit_rsp, exit_rflags) = crate::hv::vm::last_exit_host_view();
    // Back to L1's own values.
    // SAFETY: restores what L1 had; FS is unused by this guest.
    unsafe {
        cpu::set_cr3(cr3);
        cpu::set_fs(0);
        cpu::wrmsr(cpu::IA32_FS_BASE, fs_base);
        cpu::wrmsr(cpu::IA32_GS_BASE, gs_base);
        cpu::wrmsr(cpu::IA32_SYSENTER_CS, se_cs);
        cpu::wrmsr(cpu::IA32_SYSENTER_ESP, se_esp);
        cpu::wrmsr(cpu::IA32_SYSENTER_EIP, se_eip);
    }
    let mut bad = crate::hv::Msg::new();
    let mut want = |what: &str, got: u64, expect: u64| {
        if got != expect {
            let _ = core::fmt::Write::write_fmt(
                &mut bad,
                format_args!("{what} {got:#x} (want {expect:#x}) "),
            );
        }
    };
    want("CR3", got_cr3 & !0xfff, copy);
    want("FS", fs as u64, cpu::DATA_SEL as u64);
    want("CS", cs as u64, cpu::CODE_SEL as u64);
    want("SS", ss as u64, cpu::DATA_SEL as u64);
    want("DS", ds as u64, cpu::DATA_SEL as u64);
    want("TR", tr as u64, cpu::TSS_SEL as u64);
    want("FS.base", msrs[0], 0x1234_5000);
    want("GS.base", msrs[1], 0x5678_9000);
    want("SYSENTER_CS", msrs[2], 0x77);
    want("SYSENTER_ESP", msrs[3], 0xabcd_e000);
    want("SYSENTER_EIP", msrs[4], 0xfedc_b000);
    want("GDTR.base", gdtr.1, gdt_base);
    want("GDTR.limit", gdtr.0 as u64, 0xffff);
    want("IDTR.base", idtr.1, idt_base);
    want("IDTR.limit", idtr.0 as u64, 0xffff);
    want("DR7", dr7, 0x400);
    want("RSP", exit_rsp, host_rsp);
    want("RFLAGS", exit_rflags, 0x2);
    let ok = e.is(reason::VMCALL) && bad.as_str().is_empty();
    c.check(
        "host-state-restored",
        ok,
        format_args!("{e}; {}", bad.as_str()),
    );
}

/// The VM-entry MSR-load list loads L2's value (SDM 27.4), the VM-exit
/// MSR-store list saves L2's value and the VM-exit MSR-load list loads
/// L1's (SDM 28.4, 28.6). IA32_KERNEL_GS_BASE, passed through to L2 by a
/// zero MSR bitmap.
fn msr_lists(c: &mut Checks, hv: &Hv) {
    if !hv.caps.proc.can_set(proc::USE_MSR_BITMAPS) {
        return c.skip(
            "msr-load-store-lists",
            format_args!("MSR bitmaps not offered"),
        );
    }
    let Some(mut vm) = fresh(c, hv, "msr-load-store-lists", l2!(l2_rdmsr)) else {
        return;
    };
    const KGS: u32 = cpu::IA32_KERNEL_GS_BASE;
    let lists = mem::page(pg::MSR_LISTS);
    let bitmap = mem::page(pg::MSR_BITMAP);
    mem::zero_page(bitmap);
    mem::zero_page(lists);
    let (entry_load, exit_store, exit_load) = (lists, lists + 0x400, lists + 0x800);
    let entry_val = 0x1111_2222_3333_0000u64 & 0x0000_7fff_ffff_f000;
    let l1_val = 0x0000_4444_5555_6000u64;
    let l2_val = 0x0000_0000_7777_8000u64;
    for (list, value) in [
        (entry_load, entry_val),
        (exit_store, 0),
        (exit_load, l1_val),
    ] {
        mem::wr32(list, KGS);
        mem::wr64(list + 8, value);
    }
    // SAFETY: KERNEL_GS_BASE is unused by this guest; restored below.
    let saved = unsafe { cpu::rdmsr(KGS) };
    // SAFETY: as above.
    unsafe { cpu::wrmsr(KGS, 0x0000_0000_0bad_0000) };
    hv.ctl(PROC_CONTROLS, proc::USE_MSR_BITMAPS, 0);
    let _ = vmwrite(MSR_BITMAP, bitmap);
    let _ = vmwrite(ENTRY_MSR_LOAD_ADDR, entry_load);
    let _ = vmwrite(ENTRY_MSR_LOAD_COUNT, 1);
    let _ = vmwrite(EXIT_MSR_STORE_ADDR, exit_store);
    let _ = vmwrite(EXIT_MSR_STORE_COUNT, 1);
    let _ = vmwrite(EXIT_MSR_LOAD_ADDR, exit_load);
    let _ = vmwrite(EXIT_MSR_LOAD_COUNT, 1);
    vm.regs.rcx = KGS as u64;
    let e1 = vm.enter();
    let l2_read = (vm.regs.rdx as u32 as u64) << 32 | vm.regs.rax as u32 as u64;
    let stored1 = mem::rd64(exit_store + 8);
    // SAFETY: as above.
    let l1_after = unsafe { cpu::rdmsr(KGS) };
    // Second run: L2 writes its own value, which the store list must catch.
    let _ = vmwrite(ENTRY_MSR_LOAD_COUNT, 0);
    vm.regs.rcx = KGS as u64;
    vm.regs.rax = l2_val & 0xffff_ffff;
    vm.regs.rdx = l2_val >> 32;
    let e2 = vm.enter_at(l2!(l2_wrmsr_rdmsr));
    let stored2 = mem::rd64(exit_store + 8);
    // SAFETY: as above.
    unsafe { cpu::wrmsr(KGS, saved) };
    let ok = e1.is(reason::VMCALL)
        && e2.is(reason::VMCALL)
        && l2_read == entry_val
        && stored1 == entry_val
        && l1_after == l1_val
        && stored2 == l2_val;
    c.check(
        "msr-load-store-lists",
        ok,
        format_args!("{e1}; L2 read {l2_read:#x} (entry list {entry_val:#x}), stored {stored1:#x} then {stored2:#x}, L1 after exit {l1_after:#x}"),
    );
}
