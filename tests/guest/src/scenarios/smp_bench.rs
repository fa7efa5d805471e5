//! `smp-bench`: whether one CPU's nested VMX slows the other's (issue 15
//! item 9; goal: a round trip with both CPUs busy at most 1.1x one alone).
//! On a 2-CPU host, each CPU with its own VMCS and L2 (as `smp-nested`),
//! prints `BENCH <name> <ticks per round trip>` of `l2-cpuid-roundtrip`
//! (`nested-bench`):
//!
//! - `smp-l2-cpuid-roundtrip-alone`: CPU 0's loop while CPU 1, in VMX
//!   operation with its VMCS current, waits in L1 without exits;
//! - `smp-l2-cpuid-roundtrip-cpuN-both`: CPU N's loop while the other CPU
//!   runs the same loop (both start at one meeting point);
//! - `smp-l2-serial-byte-alone`, `-cpuN-both`: the same for one byte out
//!   of a 64-bit L2's shadow COM1 (`shadow-bench`'s `l2-serial-byte`, the
//!   operator following both VMs), under L0 only: natively Bochs's VMX
//!   hands every COM access to L1.
//!
//! Bochs's TSC counts each CPU's emulated instructions, so a figure grows
//! only if the CPU executes more (spinning on a lock of L0's, say), never
//! because the other CPU shares the host. Checks assert only that the
//! loops ran, never a figure.

use super::nested_bench::cpuid_roundtrips;
use super::shadow::{listed, run_to_end, st, ShowRow, Spy, Stop};
use super::smp_nested::{give_up, meet, run_on_both, OnBoth};
use crate::check::Checks;
use crate::hv::fields::reason;
use crate::hv::l2x::{self, Params, UART_POLLED};
use crate::hv::mem::pg;
use crate::hv::vm::Vm;
use crate::hv::{below, cpu, start, ucall, Below, Hv};
use crate::mb1::{Identity, Info};
use crate::{l2, l2x};

const CHECKS: &[&str] = &[
    "vmxon",
    "serial-vm",
    "operator-attached",
    "alone-loop",
    "serial-alone-loop",
    "both-loop",
    "serial-both-loop",
];
/// Round trips per loop (as `nested-bench`).
const N: u64 = 10_000;
/// Bytes per serial loop (as `shadow-bench`).
const TX_BYTES: u64 = 256;
const ATTACH_WAIT: u64 = 3_000_000_000;
const TAGS: [&str; 2] = ["smp-bench-0", "smp-bench-1"];

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
    /// Both CPUs' CPUID loops are done.
    pub const CPUID_DONE: u32 = 3;
}

fn part(cpu: usize, c: &mut Checks) {
    let Some(mut hv) = start(c, CHECKS) else {
        return give_up();
    };
    let mut serial = serial_vm(cpu, c, &mut hv);
    let Some(mut vm) = hv.fresh(c, "both-loop", l2!(l2_cpuid_loop)) else {
        return give_up();
    };
    if !meet(round::READY) {
        return c.check("both-loop", false, format_args!("the other CPU never came"));
    }
    if cpu == 0 {
        // One CPU lists the VMs (the ultracall buffer is not per CPU).
        match serial {
            Some(_) => wait_attached(c),
            None => c.skip("operator-attached", format_args!("no shadow UART")),
        }
        measure(c, &mut vm, "alone-loop", "alone");
        measure_serial(c, serial.as_mut(), "serial-alone-loop", "alone");
    }
    if !meet(round::ALONE_DONE) {
        return c.check("both-loop", false, format_args!("the other CPU never came"));
    }
    let both = if cpu == 0 { "cpu0-both" } else { "cpu1-both" };
    measure(c, &mut vm, "both-loop", both);
    if !meet(round::CPUID_DONE) {
        return c.check(
            "serial-both-loop",
            false,
            format_args!("the other CPU never came"),
        );
    }
    measure_serial(c, serial.as_mut(), "serial-both-loop", both);
}

/// This CPU's 64-bit L2 with a polled shadow COM1 and its own tag (on
/// VMCS B, slot 0 of this CPU's pool), or `None` natively.
fn serial_vm(cpu: usize, c: &mut Checks, hv: &mut Hv) -> Option<(Vm, Spy)> {
    if below() != Below::L0 {
        c.skip(
            "serial-vm",
            format_args!("running natively: Bochs's VMX has no shadow UART"),
        );
        return None;
    }
    let p = Params {
        letter: b'0' + cpu as u8,
        tag: TAGS[cpu].as_bytes(),
        uart: UART_POLLED,
        chunk: 0,
    };
    let mut vm = match hv.vm64(0, pg::VMCS_B, l2x!(l2x_tag_only), &p) {
        Ok((vm, _)) => vm,
        Err(m) => {
            c.check("serial-vm", false, format_args!("setting up the VM: {m}"));
            return None;
        }
    };
    let mut spy = Spy::new();
    let s = run_to_end(&mut vm, 0, &mut spy);
    let tagged = matches!(s, Stop::Done) && l2x::rd(0, l2x::D_TAG_STATUS) == 0;
    c.check(
        "serial-vm",
        tagged,
        format_args!(
            "{s}; tag {}: {}",
            TAGS[cpu],
            st(l2x::rd(0, l2x::D_TAG_STATUS))
        ),
    );
    // One byte per ping and per scratch read: only the bytes out count.
    l2x::wr(0, l2x::D_N, TX_BYTES);
    l2x::wr(0, l2x::D_N2, 1);
    tagged.then_some((vm, spy))
}

/// Waits until the harness's operator follows both VMs, so each byte
/// also leaves on the management line, as in `shadow-bench`.
fn wait_attached(c: &mut Checks) {
    let (a, b) = (ucall::tag(TAGS[0]), ucall::tag(TAGS[1]));
    let attached = |t| matches!(listed(t), Ok(Some(r)) if r.com1_attached);
    let deadline = cpu::rdtsc() + ATTACH_WAIT;
    while !(attached(&a) && attached(&b)) && cpu::rdtsc() < deadline {}
    let (ra, rb) = (listed(&a).ok().flatten(), listed(&b).ok().flatten());
    c.check(
        "operator-attached",
        attached(&a) && attached(&b),
        format_args!("{}; {}", ShowRow(ra), ShowRow(rb)),
    );
}

/// `l2x_bench`'s `TX_BYTES` bytes out of COM1 on this CPU's serial VM:
/// its BENCH line and check `check` (skipped natively).
fn measure_serial(c: &mut Checks, serial: Option<&mut (Vm, Spy)>, check: &str, figure: &str) {
    let Some((vm, spy)) = serial else {
        return c.skip(check, format_args!("no shadow UART (natively, or no VM)"));
    };
    let _ = vm.load();
    l2x::wr(0, l2x::D_DONE, 0);
    let s = run_to_end(vm.at(l2x!(l2x_bench)), 0, spy);
    let tx = l2x::rd(0, l2x::D_T_TX);
    let done = matches!(s, Stop::Done) && l2x::rd(0, l2x::D_DONE) == 1;
    if done {
        crate::println!("BENCH smp-l2-serial-byte-{figure} {}", tx / TX_BYTES);
    }
    c.check(
        check,
        done && spy.com_io == 0,
        format_args!(
            "{s}; {TX_BYTES} bytes in {tx} ticks; L1 got {} COM exits",
            spy.com_io
        ),
    );
}

/// One loop of `N` round trips: its BENCH line and check `check`.
fn measure(c: &mut Checks, vm: &mut Vm, check: &str, figure: &str) {
    let _ = vm.load();
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
