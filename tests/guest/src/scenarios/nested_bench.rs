//! `nested-bench`: what nesting costs, in guest-TSC ticks (on Bochs the
//! TSC counts emulated instructions). Prints `BENCH <name> <ticks per
//! operation>`; the checks only assert that each loop ran to completion,
//! never a figure.
//!
//! - `l1-cpuid`: one CPUID executed by L1 itself (natively an emulated
//!   instruction; under L0 a CPUID exit of L1 to L0).
//! - `l2-cpuid-roundtrip`: one CPUID in L2 that exits to L1, which emulates
//!   it minimally (three VMREADs, one VMWRITE) and resumes L2.
//! - `l1-vmread`, `l1-vmwrite`: one VMREAD/VMWRITE by L1 (under L0 either
//!   an exit or a shadow-VMCS access).

use crate::check::Checks;
use crate::hv::fields::*;
use crate::hv::vm::Vm;
use crate::hv::vmx::{rd, vmread, vmwrite};
use crate::hv::{cpu, l0_alive, start, Msg};
use crate::io::cpuid;
use crate::l2;

const CHECKS: &[&str] = &[
    "vmxon",
    "l1-cpuid-loop",
    "l2-cpuid-loop",
    "l1-vmread-loop",
    "l1-vmwrite-loop",
];
const N: u64 = 10_000;

pub fn run() {
    static NAME: &str = "nested-bench";
    crate::set_current_test(&NAME);
    let mut c = Checks::new(NAME);
    let t0 = cpu::rdtsc();
    let mut sum = 0u32;
    for i in 0..N {
        sum = sum.wrapping_add(cpuid(i as u32 & 1, 0)[0]);
    }
    let l1 = (cpu::rdtsc() - t0) / N;
    crate::println!("BENCH l1-cpuid {l1}");
    if let Some(hv) = start(&mut c, CHECKS) {
        c.check(
            "l1-cpuid-loop",
            sum != 0,
            format_args!("{N} CPUIDs, {l1} ticks each"),
        );
        l2_roundtrip(&mut c, &hv);
        vmcs_access(&mut c, &hv);
    }
    l0_alive(&mut c);
    c.finish();
}

fn l2_roundtrip(c: &mut Checks, hv: &crate::hv::Hv) {
    let Some(mut vm) = hv.fresh(c, "l2-cpuid-loop", l2!(l2_cpuid_loop)) else {
        return;
    };
    let (exits, last, ticks) = match cpuid_roundtrips(&mut vm, N) {
        Ok(r) => r,
        Err(m) => return c.check("l2-cpuid-loop", false, format_args!("{m}")),
    };
    crate::println!("BENCH l2-cpuid-roundtrip {ticks}");
    c.check(
        "l2-cpuid-loop",
        exits == N && last == reason::VMCALL,
        format_args!("{exits} CPUID exits then reason {last}, {ticks} ticks per round trip"),
    );
}

/// `n` CPUIDs of L2 (`l2_cpuid_loop`, from its start) on `vm`, whose VMCS
/// is current, each exiting to L1, which emulates it minimally and
/// resumes: the CPUID exits seen, the reason of the exit that ended the
/// loop (VMCALL when L2 finished) and ticks per round trip.
// The error is a line for one CHECK per loop: its size does not matter.
#[allow(clippy::result_large_err)]
pub(super) fn cpuid_roundtrips(vm: &mut Vm, n: u64) -> Result<(u64, u32, u64), Msg> {
    vm.at(l2!(l2_cpuid_loop));
    vm.regs.rdi = n;
    let mut exits = 0u64;
    let mut last;
    let t0 = cpu::rdtsc();
    loop {
        if let Err(e) = vm.enter_raw() {
            return Err(crate::msg!("entry failed after {exits} exits: {e:?}"));
        }
        last = rd(EXIT_REASON) as u32;
        if last != reason::CPUID || exits > n {
            break;
        }
        exits += 1;
        // A minimal CPUID emulation: fixed results, skip the instruction.
        vm.regs.rax = 0x1234;
        vm.regs.rbx = 0;
        vm.regs.rcx = 0;
        vm.regs.rdx = 0;
        let rip = rd(GUEST_RIP) + rd(EXIT_INSTR_LEN);
        let _ = vmwrite(GUEST_RIP, rip);
    }
    Ok((exits, last, (cpu::rdtsc() - t0) / n))
}

fn vmcs_access(c: &mut Checks, _hv: &crate::hv::Hv) {
    let t0 = cpu::rdtsc();
    let mut ok = 0u64;
    for _ in 0..N {
        ok += vmread(GUEST_RIP).is_ok() as u64;
    }
    let r = (cpu::rdtsc() - t0) / N;
    crate::println!("BENCH l1-vmread {r}");
    c.check(
        "l1-vmread-loop",
        ok == N,
        format_args!("{ok} VMREADs, {r} ticks each"),
    );
    let t0 = cpu::rdtsc();
    let mut ok = 0u64;
    for i in 0..N {
        ok += vmwrite(GUEST_RSP, 0x4000 + (i & 0xff0)).is_ok() as u64;
    }
    let w = (cpu::rdtsc() - t0) / N;
    crate::println!("BENCH l1-vmwrite {w}");
    c.check(
        "l1-vmwrite-loop",
        ok == N,
        format_args!("{ok} VMWRITEs, {w} ticks each"),
    );
}
