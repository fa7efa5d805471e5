//! `ultracall-save-restore` (L0 only, booted with an `l0.key` module): a
//! user VM's devices migrate from one L2 to another through L1, sealed.
//!
//! VM A registers tag `alpha` from inside L2, puts its UART in a
//! non-default state (divisor, LCR, IER, MCR, SCR), prints a prompt and
//! leaves the operator's answer (`migrate-me`, typed by the harness)
//! unread. L1 saves A's devices — after a series of refused saves that
//! must change nothing — and gets a blob in which neither the typed text
//! nor A's output can be read; A is then frozen (a second save is
//! refused, A's next COM access is held). L1 ends A (VMCLEAR) and starts
//! A' on a new VMCS and a new EPT12 root; A' registers `alpha`, L1
//! restores the blob — after refused restores (another VM's tag,
//! tampered, truncated, bad buffers) that must change nothing — and a
//! replay is refused. A' finds its UART as A left it, but not the input A
//! never read: typed for A, it returns only to A (a rollback), never to
//! another VM with A's tag (docs/shadow-devices.md). A' says what it got
//! on its console: nothing.
//!
//! Natively (no L0) no ultracall is answered: no -native variant.

use ultracall_abi::blob::BLOB_HEADER_LEN;
use ultracall_abi::{Op, Status, MAX_BUFFER_LEN};

use crate::check::Checks;
use crate::hv::fields::*;
use crate::hv::l2x::{self, Params, UART_POLLED};
use crate::hv::mem::pg;
use crate::hv::ucall::{self, Out};
use crate::hv::vm::Vm;
use crate::hv::vmx::{self, vmwrite};
use crate::hv::{cpu, Hv};
use crate::spy::{mask, masked_at};
use crate::ucall_model::UNMAPPED_BASE;
use crate::{l2x, msg};

use super::shadow::{blob_buf, io_buf, listed, run, run_to_end, st, va, Row, ShowRow, Spy, Stop};

const CHECKS: &[&str] = &[
    "vmxon",
    "vm-a",
    "input-arrived",
    "save-bad-version",
    "save-bad-tag",
    "save-unknown-tag",
    "save-size-query",
    "save-too-small",
    "save-unmapped",
    "save-noncanonical",
    "save-too-large",
    "failed-saves-changed-nothing",
    "save",
    "blob-is-sealed",
    "save-frozen",
    "frozen-io-held",
    "vmclear-ends-vm",
    "restore-unknown-tag",
    "vm-b",
    "vm-a2",
    "restore-wrong-tag",
    "restore-tampered",
    "restore-truncated",
    "restore-unmapped",
    "restore-noncanonical",
    "failed-restores-changed-nothing",
    "restore",
    "restore-replayed",
    "a2-registers",
    "a2-gets-no-unread-input",
    "l1-got-no-com-exit",
];

/// A's UART: IER (receive, line status), LCR (8 data bits, even parity,
/// 2 stop bits), MCR (DTR, RTS, OUT2), FCR (FIFOs on), SCR, DLL, DLM
/// (38400 baud). None of it is the reset state.
const A_UART: [u8; 7] = [0x05, 0x1f, 0x0b, 0x07, 0xa5, 0x03, 0x00];
/// What the harness types after A's prompt (xtask/src/scenario.rs).
static TYPED: [u8; 10] = mask(b"migrate-me");
/// Guest-TSC ticks L1 waits for the typed input to reach A's UART.
const INPUT_WAIT: u64 = 3_000_000_000;
const NON_CANONICAL: u64 = 0x8000_0000_0000_0000;

pub fn run_scenario() {
    static NAME: &str = "ultracall-save-restore";
    super::shadow::scenario(&NAME, CHECKS, body);
}

fn fail_rest(c: &mut Checks, from: &str, why: core::fmt::Arguments) {
    let i = CHECKS
        .iter()
        .position(|n| *n == from)
        .unwrap_or(CHECKS.len());
    c.fail_all(&CHECKS[i..], why);
}

fn body(c: &mut Checks, hv: &mut Hv) {
    let alpha = ucall::tag("alpha");
    let beta = ucall::tag("beta");
    let mut spy = Spy::new();

    // ---- VM A
    let p = Params {
        letter: b'A',
        tag: b"alpha",
        uart: A_UART,
        chunk: 0,
    };
    let mut a = match hv.vm64(0, pg::VMCS_A, l2x!(l2x_sr_a), &p) {
        Ok((vm, _)) => vm,
        Err(m) => return fail_rest(c, "vm-a", format_args!("setting up A: {}", m.as_str())),
    };
    let s = run_to_end(&mut a, 0, &mut spy);
    let (a_st, a_id) = (l2x::rd(0, l2x::D_TAG_STATUS), l2x::rd(0, l2x::D_TAG_ID));
    c.check(
        "vm-a",
        matches!(s, Stop::Done) && a_st == 0,
        format_args!("A: {s}; registered alpha: {} as vm {a_id}", st(a_st)),
    );

    // The operator's answer to A's prompt reaches A's receiver; A does
    // not read it.
    let deadline = cpu::rdtsc() + INPUT_WAIT;
    let mut row = listed(&alpha);
    while matches!(row, Ok(Some(r)) if r.com1_in < TYPED.len() as u64) && cpu::rdtsc() < deadline {
        row = listed(&alpha);
    }
    let Ok(Some(before)) = row else {
        return fail_rest(c, "input-arrived", format_args!("alpha: {}", show(row)));
    };
    c.check(
        "input-arrived",
        before.com1_in == TYPED.len() as u64,
        format_args!("{}", ShowRow(Some(before))),
    );

    // ---- refused saves change nothing
    let (buf, bva) = (io_buf(), va(io_buf()));
    let o = ucall::call_version(Op::SaveDevices, 0x0002_0000, Some(&alpha));
    c.check(
        "save-bad-version",
        o.is(Status::BadVersion) && o.rdx == ultracall_abi::ABI_VERSION.to_raw() as u64,
        format_args!(
            "caller 2.0: {}, L0's version in RDX {:#x}",
            st(o.rax),
            o.rdx
        ),
    );
    let o = ucall::call_tag_regs(
        Op::SaveDevices,
        bva,
        buf.len() as u64,
        [u64::from_le_bytes(*b"-alpha\0\0"), 0, 0, 0],
    );
    c.check(
        "save-bad-tag",
        o.is(Status::TagInvalid),
        format_args!("tag \"-alpha\": {}", st(o.rax)),
    );
    let o = ucall::save(&ucall::tag("gamma"), bva, buf.len() as u64);
    c.check(
        "save-unknown-tag",
        o.is(Status::UnknownTag),
        format_args!("tag gamma: {}", st(o.rax)),
    );
    let o = ucall::save(&alpha, bva, 0);
    let needed = o.rcx;
    c.check(
        "save-size-query",
        o.is(Status::BufferTooSmall)
            && needed > (BLOB_HEADER_LEN + 16) as u64
            && needed <= buf.len() as u64,
        format_args!("length 0: {}, RCX {needed}", st(o.rax)),
    );
    let o = ucall::save(&alpha, bva, needed - 1);
    c.check(
        "save-too-small",
        o.is(Status::BufferTooSmall) && o.rcx == needed,
        format_args!("{} bytes: {}, RCX {}", needed - 1, st(o.rax), o.rcx),
    );
    let o = ucall::save(&alpha, UNMAPPED_BASE, needed);
    c.check(
        "save-unmapped",
        o.is(Status::BufferFault),
        format_args!("at {UNMAPPED_BASE:#x}: {}", st(o.rax)),
    );
    let o = ucall::save(&alpha, NON_CANONICAL, needed);
    c.check(
        "save-noncanonical",
        o.is(Status::BufferFault),
        format_args!("at {NON_CANONICAL:#x}: {}", st(o.rax)),
    );
    let o = ucall::save(&alpha, bva, MAX_BUFFER_LEN as u64 + 1);
    c.check(
        "save-too-large",
        o.is(Status::BufferTooLarge),
        format_args!("1 MiB + 1: {}", st(o.rax)),
    );
    let after = listed(&alpha);
    c.check(
        "failed-saves-changed-nothing",
        matches!(after, Ok(Some(r)) if !r.frozen && same_counts(&r, &before)),
        format_args!("{}", show(after)),
    );

    // ---- the save
    buf.fill(0);
    let o = ucall::save(&alpha, bva, buf.len() as u64);
    let len = o.rcx as usize;
    let header_ok = len >= BLOB_HEADER_LEN
        && &buf[..4] == b"L0SB"
        && &buf[48..53] == b"alpha"
        && buf[53] == 0
        && buf[24..32] == 1u64.to_le_bytes();
    c.check(
        "save",
        o.is(Status::Ok) && o.rcx == needed && o.rsi == 1 && header_ok,
        format_args!(
            "{}: {} bytes, epoch {}; header magic, tag and epoch {header_ok}",
            st(o.rax),
            o.rcx,
            o.rsi
        ),
    );
    if !o.is(Status::Ok) || len > buf.len() {
        return fail_rest(c, "blob-is-sealed", format_args!("no blob"));
    }
    let blob = &mut blob_buf()[..len];
    blob.copy_from_slice(&buf[..len]);
    let typed = crate::spy::count(blob, |b| masked_at(b, &TYPED));
    let printed = crate::spy::count(blob, |b| b.starts_with(b"before save"));
    c.check(
        "blob-is-sealed",
        typed == 0 && printed == 0,
        format_args!("typed text {typed} time(s), A's output {printed} time(s) in the blob"),
    );
    let o = ucall::save(&alpha, bva, buf.len() as u64);
    let now = listed(&alpha);
    c.check(
        "save-frozen",
        o.is(Status::DeviceFrozen) && matches!(now, Ok(Some(r)) if r.frozen),
        format_args!("second save: {}; {}", st(o.rax), show(now)),
    );
    held_io(c, hv, &mut a, &mut spy);

    // ---- A ends: 50 ms after the VMCLEAR that is not followed by an entry
    // (a VMCLEAR may only move a vCPU to another CPU; docs/shadow-devices.md).
    // SAFETY: A's VMCS page, which L1 no longer runs.
    let r = unsafe { vmx::vmclear(a.vmcs) };
    let cleared = cpu::rdtsc();
    let mut gone = listed(&alpha);
    // At most 2^29 ticks (over 50 ms at any TSC rate up to 10 GHz).
    while matches!(gone, Ok(Some(_))) && cpu::rdtsc() - cleared < 1 << 29 {
        gone = listed(&alpha);
    }
    let waited = cpu::rdtsc() - cleared;
    c.check(
        "vmclear-ends-vm",
        r.is_ok() && matches!(gone, Ok(None)),
        format_args!(
            "VMCLEAR {r:?}; alpha {} after {waited} TSC ticks",
            show(gone)
        ),
    );
    let o = stage_and_restore(&alpha, None);
    c.check(
        "restore-unknown-tag",
        o.is(Status::UnknownTag),
        format_args!("nobody holds alpha: {}", st(o.rax)),
    );

    // ---- VM B (beta) and A' (alpha again)
    let p = Params {
        letter: b'B',
        tag: b"beta",
        uart: UART_POLLED,
        chunk: 0,
    };
    let b_row = match hv.vm64(1, pg::VMCS_B, l2x!(l2x_sr_b), &p) {
        Ok((mut b, _)) => {
            let s = run_to_end(&mut b, 1, &mut spy);
            let row = listed(&beta);
            c.check(
                "vm-b",
                matches!(s, Stop::Done) && matches!(row, Ok(Some(_))),
                format_args!("B: {s}; {}", show(row)),
            );
            row.ok().flatten()
        }
        Err(m) => {
            c.check("vm-b", false, format_args!("setting up B: {}", m.as_str()));
            None
        }
    };
    let p = Params {
        letter: b'A',
        tag: b"alpha",
        uart: UART_POLLED,
        chunk: 0,
    };
    let (mut a2, root2) = match hv.vm64(2, pg::VMCS_S, l2x!(l2x_tag_only), &p) {
        Ok((vm, e)) => (vm, e.root),
        Err(m) => return fail_rest(c, "vm-a2", format_args!("setting up A': {}", m.as_str())),
    };
    let s = run_to_end(&mut a2, 2, &mut spy);
    let (a2_st, a2_id) = (l2x::rd(2, l2x::D_TAG_STATUS), l2x::rd(2, l2x::D_TAG_ID));
    let fresh = listed(&alpha);
    c.check(
        "vm-a2",
        matches!(s, Stop::Done) && a2_st == 0 && a2_id != a_id && a2.vmcs != a.vmcs && matches!(fresh, Ok(Some(r)) if r.com1_in == 0 && r.com1_out == 0),
        format_args!("A': {s}; alpha {} as vm {a2_id} (A was {a_id}), VMCS12 {:#x}, EPT12 root {root2:#x}; {}", st(a2_st), a2.vmcs, show(fresh)),
    );

    // ---- refused restores change nothing
    let o = stage_and_restore(&beta, None);
    let b_now = listed(&beta);
    c.check(
        "restore-wrong-tag",
        o.is(Status::BlobWrongTag)
            && matches!((b_now, b_row), (Ok(Some(n)), Some(r)) if !n.frozen && same_counts(&n, &r)),
        format_args!("alpha's blob to beta: {}; beta {}", st(o.rax), show(b_now)),
    );
    let mut tampered = [0u64; 3];
    for (i, bit) in [(BLOB_HEADER_LEN + 5) * 8 + 2, 24 * 8, (len - 1) * 8 + 7]
        .into_iter()
        .enumerate()
    {
        tampered[i] = stage_and_restore(&alpha, Some(Edit::Flip(bit))).rax;
    }
    c.check(
        "restore-tampered",
        tampered.iter().all(|&s| s == Status::BlobAuthFailed.raw()),
        format_args!(
            "a bit flipped in the ciphertext: {}, the epoch: {}, the GCM tag: {}",
            st(tampered[0]),
            st(tampered[1]),
            st(tampered[2])
        ),
    );
    let o = stage_and_restore(&alpha, Some(Edit::Truncate));
    c.check(
        "restore-truncated",
        o.is(Status::BlobMalformed),
        format_args!("{} bytes: {}", len - 1, st(o.rax)),
    );
    let o = ucall::restore(&alpha, UNMAPPED_BASE, len as u64);
    c.check(
        "restore-unmapped",
        o.is(Status::BufferFault),
        format_args!("at {UNMAPPED_BASE:#x}: {}", st(o.rax)),
    );
    let o = ucall::restore(&alpha, NON_CANONICAL, len as u64);
    c.check(
        "restore-noncanonical",
        o.is(Status::BufferFault),
        format_args!("at {NON_CANONICAL:#x}: {}", st(o.rax)),
    );
    let still = listed(&alpha);
    c.check(
        "failed-restores-changed-nothing",
        matches!(still, Ok(Some(r)) if !r.frozen && r.com1_in == 0 && r.com1_out == 0),
        format_args!("{}", show(still)),
    );

    // ---- the restore, then its replay
    let o = stage_and_restore(&alpha, None);
    let restored = listed(&alpha);
    c.check(
        "restore",
        o.is(Status::Ok)
            && o.rcx == len as u64
            && o.rsi == 1
            && matches!(restored, Ok(Some(r)) if !r.frozen && same_counts(&r, &before)),
        format_args!(
            "{}: {} bytes, epoch {}; {} (A had in {} out {})",
            st(o.rax),
            o.rcx,
            o.rsi,
            show(restored),
            before.com1_in,
            before.com1_out
        ),
    );
    let o = stage_and_restore(&alpha, None);
    c.check(
        "restore-replayed",
        o.is(Status::BlobReplayed),
        format_args!("the same blob again: {}", st(o.rax)),
    );

    // ---- A' carries on where A stopped
    let s = match a2.load() {
        Ok(()) => run_to_end(a2.at(l2x!(l2x_sr_check)), 2, &mut spy),
        Err(e) => Stop::Failed(crate::hv::vm::Entry::Fail(e)),
    };
    let rb = |i: u64| l2x::rd8(2, l2x::D_READ + i);
    let (lcr, ier, mcr, scr, lsr, dll, dlm) = (rb(0), rb(1), rb(2), rb(3), rb(4), rb(5), rb(6));
    c.check(
        "a2-registers",
        matches!(s, Stop::Done) && [ier, lcr, mcr, scr, dll, dlm] == [A_UART[0], A_UART[1], A_UART[2], A_UART[4], A_UART[5], A_UART[6]],
        format_args!("A': {s}; IER {ier:#x} LCR {lcr:#x} MCR {mcr:#x} SCR {scr:#x} DLL {dll:#x} DLM {dlm:#x} (A wrote {A_UART:x?})"),
    );
    let rx = l2x::rd(2, l2x::D_RX_N);
    c.check(
        "a2-gets-no-unread-input",
        lsr & 1 == 0 && rx == 0,
        format_args!(
            "LSR {lsr:#x} (data ready clear), {rx} bytes received (A left {} unread)",
            TYPED.len()
        ),
    );
    c.check(
        "l1-got-no-com-exit",
        spy.com_io == 0,
        format_args!("{} COM exits; {}", spy.com_io, spy.summary().as_str()),
    );
}

/// With its devices frozen, A's next COM access is held: L1's
/// VMX-preemption timer ends the run with L2 still at the OUT.
fn held_io(c: &mut Checks, hv: &Hv, a: &mut Vm, spy: &mut Spy) {
    if !hv.caps.preemption_timer() {
        return c.skip(
            "frozen-io-held",
            format_args!("VMX-preemption timer not offered"),
        );
    }
    if let Err(e) = a.load() {
        return c.check("frozen-io-held", false, format_args!("VMPTRLD: {e:?}"));
    }
    hv.ctl(PIN_CONTROLS, pin::PREEMPTION_TIMER, 0);
    // The timer counts only while L2 runs, about a tick per retry of the
    // held OUT (each one an exit to L0).
    let _ = vmwrite(
        PREEMPTION_TIMER_VALUE,
        5_000 >> hv.caps.preemption_timer_rate(),
    );
    // Should the timer never fire, L1's LAPIC timer ends the run instead
    // (an external-interrupt exit) and the check fails rather than hangs.
    // L2 runs with IF = 1: Bochs does not let an external interrupt exit
    // an L2 entered with IF = 0 that never touches IF (docs/testing.md).
    let _ = vmwrite(GUEST_RFLAGS, 0x202);
    let watchdog = crate::hv::apic::Watchdog::arm(50_000_000);
    let s = run(a.at(l2x!(l2x_held)), 0, spy);
    drop(watchdog);
    hv.ctl(PIN_CONTROLS, 0, pin::PREEMPTION_TIMER);
    let out = l2x!(l2x_held_out);
    let held = matches!(s, Stop::Exit(x) if x.is(reason::PREEMPTION_TIMER) && x.rip == out);
    let row = listed(&ucall::tag("alpha"));
    c.check(
        "frozen-io-held",
        held,
        format_args!(
            "{s} (want the timer with RIP at the OUT, {out:#x}); {}",
            show(row)
        ),
    );
}

fn same_counts(a: &Row, b: &Row) -> bool {
    a.com1_in == b.com1_in && a.com1_out == b.com1_out
}

fn show(r: Result<Option<Row>, u64>) -> crate::hv::Msg {
    match r {
        Ok(r) => msg!("{}", ShowRow(r)),
        Err(s) => msg!("LIST_VMS: {}", st(s)),
    }
}

enum Edit {
    Flip(usize),
    Truncate,
}

/// Copies the kept blob into the I/O buffer, edited, and restores it for `tag`.
fn stage_and_restore(tag: &ultracall_abi::VmTag, edit: Option<Edit>) -> Out {
    let (buf, bva) = (io_buf(), va(io_buf()));
    let len = blob_len();
    buf[..len].copy_from_slice(&blob_buf()[..len]);
    let len = match edit {
        Some(Edit::Flip(bit)) => {
            buf[bit / 8] ^= 1 << (bit % 8);
            len
        }
        Some(Edit::Truncate) => len - 1,
        None => len,
    };
    ucall::restore(tag, bva, len as u64)
}

/// The kept blob's length, from its header (ciphertext length + overhead).
fn blob_len() -> usize {
    let b = blob_buf();
    u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize + ultracall_abi::blob::BLOB_OVERHEAD
}
