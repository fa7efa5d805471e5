//! `shadow-bench` (L0 only, booted with an `l0.key` module): what the
//! shadow path costs, in guest-TSC ticks (on Bochs the TSC counts emulated
//! instructions). Prints `BENCH <name> <ticks per operation>`; the checks
//! only assert that each loop ran, never a figure.
//!
//! - `l2-serial-byte`: one byte out of an L2's COM1 as a driver sends it
//!   (LSR polled until THRE, then THR), with the operator's console
//!   attached, so the byte also leaves on L0's management line; measured
//!   in L2 over `TX_BYTES` bytes.
//! - `l2-com-read`: one read of the scratch register: the trap to L0 and
//!   the shadow UART alone, measured in L2.
//! - `l2-ucall-ping`, `l1-ucall-ping`: the cheapest ultracall from each level.
//! - `ucall-save`, `ucall-restore`: sealing the VM's devices into a blob
//!   and opening it again (AES-256-GCM in software in L0), measured in L1
//!   over `SEALS` save/restore pairs (each restore is the source's
//!   rollback of the blob it just issued, so the pair can repeat).
//!
//! Natively (no L0) there is no shadow path: no -native variant.

use ultracall_abi::Status;

use crate::check::Checks;
use crate::hv::l2x::{self, Params, UART_POLLED};
use crate::hv::mem::pg;
use crate::hv::ucall;
use crate::hv::{cpu, Hv};
use crate::l2x;

use super::shadow::{blob_buf, io_buf, run_to_end, st, until_attached, va, ShowRow, Spy, Stop};

const CHECKS: &[&str] = &[
    "vmxon",
    "bench-vm",
    "operator-attached",
    "l2-loops",
    "l1-ping-loop",
    "save-restore-loop",
    "l1-got-no-com-exit",
];

const TX_BYTES: u64 = 256;
const READS: u64 = 2000;
const PINGS: u64 = 2000;
const SEALS: u64 = 16;
const ATTACH_WAIT: u64 = 3_000_000_000;

pub fn run_scenario() {
    static NAME: &str = "shadow-bench";
    super::shadow::scenario(&NAME, CHECKS, body);
}

fn body(c: &mut Checks, hv: &mut Hv) {
    let tag = ucall::tag("bench");
    let mut spy = Spy::new();
    let p = Params {
        letter: b'Z',
        tag: b"bench",
        uart: UART_POLLED,
        chunk: 0,
    };
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
    let s = run_to_end(&mut vm, 0, &mut spy);
    c.check(
        "bench-vm",
        matches!(s, Stop::Done) && l2x::rd(0, l2x::D_TAG_STATUS) == 0,
        format_args!("{s}; tag bench: {}", st(l2x::rd(0, l2x::D_TAG_STATUS))),
    );

    // Measure with the output flowing to an operator, as it does in use:
    // wait until the harness's console follows the VM.
    let row = until_attached(&tag, ATTACH_WAIT);
    c.check(
        "operator-attached",
        row.is_some_and(|r| r.com1_attached),
        format_args!("{}", ShowRow(row)),
    );

    l2x::wr(0, l2x::D_N, TX_BYTES);
    l2x::wr(0, l2x::D_N2, READS.max(PINGS));
    let s = run_to_end(vm.at(l2x!(l2x_bench)), 0, &mut spy);
    let (tx, scr, ping) = (
        l2x::rd(0, l2x::D_T_TX),
        l2x::rd(0, l2x::D_T_SCR),
        l2x::rd(0, l2x::D_T_PING),
    );
    let done = matches!(s, Stop::Done) && l2x::rd(0, l2x::D_DONE) == 1;
    if done {
        crate::println!("BENCH l2-serial-byte {}", tx / TX_BYTES);
        crate::println!("BENCH l2-com-read {}", scr / READS);
        crate::println!("BENCH l2-ucall-ping {}", ping / PINGS);
    }
    c.check(
        "l2-loops",
        done,
        format_args!(
            "{s}; {TX_BYTES} bytes in {tx} ticks, {READS} reads in {scr}, {PINGS} pings in {ping}"
        ),
    );

    let mut ok = 0;
    let t0 = cpu::rdtsc();
    for _ in 0..PINGS {
        ok += ucall::ping().is(Status::Ok) as u64;
    }
    let t = (cpu::rdtsc() - t0) / PINGS;
    crate::println!("BENCH l1-ucall-ping {t}");
    c.check(
        "l1-ping-loop",
        ok == PINGS,
        format_args!("{ok} of {PINGS} pings answered, {t} ticks each"),
    );

    let (buf, bva) = (io_buf(), va(io_buf()));
    let (mut save_ticks, mut restore_ticks, mut pairs, mut bad) = (0, 0, 0, None);
    for i in 0..SEALS {
        let t0 = cpu::rdtsc();
        let o = ucall::save(&tag, bva, buf.len() as u64);
        let t1 = cpu::rdtsc();
        if !o.is(Status::Ok) || o.rsi != i + 1 {
            bad = Some(("save", o.rax, o.rsi));
            break;
        }
        let len = o.rcx;
        blob_buf()[..len as usize].copy_from_slice(&buf[..len as usize]);
        let t2 = cpu::rdtsc();
        let r = ucall::restore(&tag, va(blob_buf()), len);
        let t3 = cpu::rdtsc();
        if !r.is(Status::Ok) || r.rsi != i + 1 {
            bad = Some(("restore", r.rax, r.rsi));
            break;
        }
        save_ticks += t1 - t0;
        restore_ticks += t3 - t2;
        pairs += 1;
    }
    if pairs > 0 {
        crate::println!("BENCH ucall-save {}", save_ticks / pairs);
        crate::println!("BENCH ucall-restore {}", restore_ticks / pairs);
    }
    let why = bad.map(|(op, s, e)| crate::msg!("; {op} {}: {} epoch {e}", pairs + 1, st(s)));
    c.check(
        "save-restore-loop",
        pairs == SEALS,
        format_args!(
            "{pairs} of {SEALS} save/restore pairs{}",
            why.as_ref().map_or("", |m| m.as_str())
        ),
    );
    c.check(
        "l1-got-no-com-exit",
        spy.com_io == 0,
        format_args!("{} COM exits; {}", spy.com_io, spy.summary().as_str()),
    );
}
