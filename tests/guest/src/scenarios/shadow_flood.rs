//! `shadow-flood` (L0 only, booted with `loglevel=debug`): a user VM prints
//! ten console lines, each after a burst of ultracalls L0 refuses, every
//! one of which is a debug line of L0's log: a log flood from L2 while the
//! operator follows its console. The harness checks that every console
//! line reached the operator (no frame lost) and that L0 suppressed log
//! lines rather than waiting for the line.
//!
//! Natively (no L0) no ultracall is answered: no -native variant.

use crate::check::Checks;
use crate::hv::l2x::{self, Params, UART_POLLED};
use crate::hv::mem::pg;
use crate::l2x;

use super::shadow::{run_to_end, until_attached, ShowRow, Spy, Stop};

const CHECKS: &[&str] = &[
    "vmxon",
    "vm",
    "operator-attached",
    "flood-ran-to-the-end",
    "l1-got-no-com-exit",
];

/// TSC ticks to wait for the harness to follow the VM's console.
const ATTACH_WAIT: u64 = 3_000_000_000;

/// Refused ultracalls before each console line.
const CALLS_PER_LINE: u64 = 400;

pub fn run_scenario() {
    static NAME: &str = "shadow-flood";
    super::shadow::scenario(&NAME, CHECKS, body);
}

fn body(c: &mut Checks, hv: &mut crate::hv::Hv) {
    let p = Params {
        letter: b'F',
        tag: b"flood",
        uart: UART_POLLED,
        chunk: u64::MAX,
    };
    // The VM registers its tag first; the flood starts once the operator
    // follows its console (else its lines would only wait as backlog).
    let mut vm = match hv.vm64(0, pg::VMCS_A, l2x!(l2x_tag_only), &p) {
        Ok((vm, _)) => vm,
        Err(m) => {
            c.fail_all(
                &CHECKS[1..],
                format_args!("setting up the VM: {}", m.as_str()),
            );
            return;
        }
    };
    c.check("vm", true, format_args!("VMCS {:#x}", vm.vmcs));
    let mut spy = Spy::new();
    let s = run_to_end(&mut vm, 0, &mut spy);
    let row = until_attached(&crate::hv::ucall::tag("flood"), ATTACH_WAIT);
    c.check(
        "operator-attached",
        matches!(s, Stop::Done) && row.is_some_and(|r| r.com1_attached),
        format_args!("{s}; {}", ShowRow(row)),
    );
    l2x::wr(0, l2x::D_N, CALLS_PER_LINE);
    let s = run_to_end(vm.at(l2x!(l2x_flood)), 0, &mut spy);
    let done = l2x::rd(0, l2x::D_DONE);
    c.check(
        "flood-ran-to-the-end",
        matches!(s, Stop::Done) && done == 1,
        format_args!(
            "{s}; {} refused ultracalls; {}",
            10 * CALLS_PER_LINE,
            spy.summary().as_str()
        ),
    );
    c.check(
        "l1-got-no-com-exit",
        spy.com_io == 0 && spy.ucall_exits == 0,
        format_args!(
            "{} COM exits, {} ultracall exits",
            spy.com_io, spy.ucall_exits
        ),
    );
}
