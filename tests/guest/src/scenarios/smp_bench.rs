//! `smp-bench`: whether one CPU's nested VMX slows the other's (issue 15
//! item 9; goal: a round trip with both CPUs busy at most 1.1x one alone).
//! On a 2-CPU host, each CPU with its own VMCS and L2 (as `smp-nested`),
//! prints `BENCH <name> <ticks per round trip>` of `l2-cpuid-roundtrip`
//! (`nested-bench`):
//!
//! - `smp-l2-cpuid-roundtrip-alone`: CPU 0's loop while CPU 1, in VMX
//!   operation with its VMCS current, waits in L1 without exits;
//! - `smp-l2-cpuid-roundtrip-cpuN-both`: CPU N's loop while the other CPU
//!   runs the same loop (both start at one meeting point).
//!
//! Bochs's TSC counts each CPU's emulated instructions, so a figure grows
//! only if the CPU executes more (spinning on a lock of L0's, say), never
//! because the other CPU shares the host. Checks assert only that the
//! loops ran, never a figure.

use super::nested_bench::cpuid_roundtrips;
use super::smp_nested::{give_up, meet, run_on_both, OnBoth};
use crate::check::Checks;
use crate::hv::fields::reason;
use crate::hv::start;
use crate::l2;
use crate::mb1::{Identity, Info};

const CHECKS: &[&str] = &["vmxon", "alone-loop", "both-loop"];
/// Round trips per loop (as `nested-bench`).
const N: u64 = 10_000;

static SMP_BENCH: OnBoth = OnBoth {
    name: "smp-bench",
    part,
};

pub fn run(mbi: &Info<Identity>) {
    run_on_both(&SMP_BENCH, mbi);
}

/// The meeting points, in the order both CPUs pass them.
mod round {
    /// Both CPUs have their L2 set up.
    pub const READY: u32 = 1;
    /// CPU 0 measured alone.
    pub const ALONE_DONE: u32 = 2;
}

fn part(cpu: usize, c: &mut Checks) {
    let Some(hv) = start(c, CHECKS) else {
        return give_up();
    };
    let Some(mut vm) = hv.fresh(c, "both-loop", l2!(l2_cpuid_loop)) else {
        return give_up();
    };
    if !meet(round::READY) {
        return c.check("both-loop", false, format_args!("the other CPU never came"));
    }
    if cpu == 0 {
        measure(c, &mut vm, "alone-loop", "alone");
    }
    if !meet(round::ALONE_DONE) {
        return c.check("both-loop", false, format_args!("the other CPU never came"));
    }
    measure(
        c,
        &mut vm,
        "both-loop",
        if cpu == 0 { "cpu0-both" } else { "cpu1-both" },
    );
}

/// One loop of `N` round trips: its BENCH line and check `check`.
fn measure(c: &mut Checks, vm: &mut crate::hv::vm::Vm, check: &str, figure: &str) {
    match cpuid_roundtrips(vm, N) {
        Err(m) => c.check(check, false, format_args!("{m}")),
        Ok((exits, last, ticks)) => {
            crate::println!("BENCH smp-l2-cpuid-roundtrip-{figure} {ticks}");
            c.check(
                check,
                exits == N && last == reason::VMCALL,
                format_args!(
                    "{exits} CPUID exits then reason {last}, {ticks} ticks per round trip"
                ),
            );
        }
    }
}
