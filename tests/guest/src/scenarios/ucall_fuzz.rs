//! `ultracall-fuzz` (L0 only, booted with an `l0.key` module): L1 and an
//! L2 issue thousands of random ultracalls from a seeded PRNG — every
//! operation number and unknown ones, other ABI versions, buffers that
//! are good, unmapped, non-canonical, too small or too large, valid and
//! invalid tags, genuine, tampered, truncated and garbage blobs — and
//! each answer is checked against `ucall_model` (which also knows a
//! second, bystander VM whose tag the calls name): the status (always one
//! the ABI defines), RCX and RSI, RDX = L0's version, and every register
//! L0 must preserve (RFLAGS too, for L1). The caller rules are part of
//! the model: SAVE/RESTORE/LIST/SetIrqRelay/TakeIrqs from L2 and
//! REGISTER_TAG from L1 are NOT_PERMITTED. A `vmcall` without the magic
//! is #UD in L1 and reaches L1 as a VMCALL exit from L2. L0 stays alive.
//!
//! Natively (no L0) no ultracall is answered: no -native variant.

use ultracall_abi::{Op, Status, ABI_VERSION, ULTRACALL_MAGIC};

use crate::check::Checks;
use crate::hv::fields::*;
use crate::hv::l2x::{self, Params, FUZZ_ENTRIES, FUZZ_OUT, OUT_REGS, SENTINELS, UART_POLLED};
use crate::hv::mem::{self, pg};
use crate::hv::ucall::{self, Gprs};
use crate::hv::vm::Vm;
use crate::hv::vmx::vmwrite;
use crate::hv::{Hv, Msg};
use crate::ucall_model::{
    gen, Answer, Buf, Call, Content, Expect, Level, Model, Rng, VmModel, BUF_SPAN, R8, RAX, RCX,
    RDI, RDX, RSI,
};
use crate::{l2x, msg};

use super::shadow::{blob_buf, io_buf, list_vms, run, skip, st, va, Row, Spy, Stop};

const CHECKS: &[&str] = &[
    "vmxon",
    "fuzz-vm",
    "size-query",
    "l1-answers",
    "l1-registers-preserved",
    "l1-non-ultracall-ud",
    "l2-answers",
    "l2-registers-preserved",
    "l2-non-ultracalls-reflected",
    "caller-rules",
    "statuses-seen",
    "l0-state-consistent",
];

/// Statuses the run must have seen.
const REACHED: &[Status] = &[
    Status::Ok,
    Status::UnknownOp,
    Status::BadVersion,
    Status::NotPermitted,
    Status::BufferFault,
    Status::BufferTooSmall,
    Status::BufferTooLarge,
    Status::UnknownTag,
    Status::TagInUse,
    Status::TagAlreadySet,
    Status::TagInvalid,
    Status::DeviceFrozen,
    Status::NoDevice,
    Status::BlobMalformed,
    Status::BlobAuthFailed,
    Status::BlobWrongTag,
    Status::BlobReplayed,
    Status::InvalidArgument,
];

const SEED: u64 = 0x5eed_0f_1a_b0_0c;
const ROUNDS: usize = 48;
const L1_BATCH: usize = 64;
const L2_BATCH: usize = FUZZ_ENTRIES;

pub fn run_scenario() {
    static NAME: &str = "ultracall-fuzz";
    super::shadow::scenario(&NAME, CHECKS, body);
}

/// Tallies of one caller level.
#[derive(Default)]
struct Tally {
    calls: u32,
    wrong: u32,
    first_wrong: Option<Msg>,
    clobbered: u32,
    first_clobbered: Option<Msg>,
    /// Calls the caller rules refuse, and how many were refused.
    forbidden: u32,
    denied: u32,
}

impl Tally {
    fn wrong(&mut self, m: Msg) {
        self.wrong += 1;
        self.first_wrong.get_or_insert(m);
    }
    fn clobbered(&mut self, m: Msg) {
        self.clobbered += 1;
        self.first_clobbered.get_or_insert(m);
    }
}

fn body(c: &mut Checks, hv: &mut Hv) {
    crate::println!(
        "guest: fuzz seed {SEED:#x}, {ROUNDS} rounds of {L1_BATCH} L1 and {L2_BATCH} L2 calls"
    );
    let tag = ucall::tag("fuzz-l2");
    let mut spy = Spy::new();
    // The fuzzing VM, and a bystander whose tag the calls also name.
    let mut vms = [None, None];
    for (i, (name, page)) in [("fuzz-l2", pg::VMCS_A), ("bystander", pg::VMCS_B)]
        .into_iter()
        .enumerate()
    {
        let p = Params {
            letter: b'F',
            tag: name.as_bytes(),
            uart: UART_POLLED,
            chunk: 0,
        };
        match hv.vm64(i, page, l2x!(l2x_tag_only), &p) {
            Ok((mut vm, _)) => {
                let s = super::shadow::run_to_end(&mut vm, i, &mut spy);
                vms[i] = Some((vm, s));
            }
            Err(m) => {
                c.fail_all(
                    &CHECKS[1..],
                    format_args!("setting up {name}: {}", m.as_str()),
                );
                return;
            }
        }
    }
    let [Some((mut vm, s0)), Some((_, s1))] = vms else {
        return;
    };
    let (t_st, vm_id) = (l2x::rd(0, l2x::D_TAG_STATUS), l2x::rd(0, l2x::D_TAG_ID));
    let (b_st, b_id) = (l2x::rd(1, l2x::D_TAG_STATUS), l2x::rd(1, l2x::D_TAG_ID));
    c.check(
        "fuzz-vm",
        matches!((s0, s1), (Stop::Done, Stop::Done)) && t_st == 0 && b_st == 0,
        format_args!(
            "{s0}, {s1}; fuzz-l2 {} as vm {vm_id}, bystander {} as vm {b_id}",
            st(t_st),
            st(b_st)
        ),
    );
    let o = ucall::save(&tag, 0, 0);
    let ob = ucall::save(&ucall::tag("bystander"), 0, 0);
    c.check(
        "size-query",
        o.is(Status::BufferTooSmall)
            && o.rcx > 96
            && ob.is(Status::BufferTooSmall)
            && ob.rcx == o.rcx,
        format_args!(
            "{}: {} bytes; the bystander's {}: {} bytes",
            st(o.rax),
            o.rcx,
            st(ob.rax),
            ob.rcx
        ),
    );
    let mut m = Model::new(
        [
            VmModel::new(b"fuzz-l2", vm_id),
            VmModel::new(b"bystander", b_id),
        ],
        o.rcx,
    );

    let mut rng = Rng::new(SEED);
    let (mut t1, mut t2) = (Tally::default(), Tally::default());
    let mut seen = 0u64;
    let mut reflected_ok = true;
    let mut reflected = 0u32;
    let mut trouble = None;
    for round in 0..ROUNDS {
        for i in 0..L1_BATCH {
            let call = gen(&mut rng, Level::L1, &m, va(io_buf()));
            l1_call(
                &mut rng,
                &mut m,
                &call,
                round * L1_BATCH + i,
                &mut t1,
                &mut seen,
            );
        }
        match l2_batch(
            &mut rng, &mut m, &mut vm, &mut spy, round, &mut t2, &mut seen,
        ) {
            Ok(n) => {
                reflected += n.0;
                reflected_ok &= n.1;
            }
            Err(e) => {
                trouble = Some(e);
                break;
            }
        }
    }
    report(c, "l1", &t1);
    let ud = l1_non_ultracalls(&mut rng);
    c.check(
        "l1-non-ultracall-ud",
        ud.is_none(),
        format_args!(
            "16 vmcalls without the magic: {}",
            ud.as_ref()
                .map_or("each #UD, registers kept", |m| m.as_str())
        ),
    );
    let why = trouble.as_ref().map_or("", |m| m.as_str());
    if let Some(t) = &trouble {
        t2.wrong(msg!("{}", t.as_str()));
    }
    report(c, "l2", &t2);
    c.check(
        "l2-non-ultracalls-reflected",
        reflected_ok && reflected > 0 && spy.ucall_exits == 0,
        format_args!("{reflected} reached L1 as VMCALL exits, registers as L2 left them {reflected_ok}; ultracalls that reached L1: {} {why}", spy.ucall_exits),
    );
    c.check(
        "caller-rules",
        t1.forbidden > 0
            && t1.denied == t1.forbidden
            && t2.forbidden > 0
            && t2.denied == t2.forbidden,
        format_args!(
            "L1 refused {} of {} REGISTER_TAGs; L2 refused {} of {} L1-only calls",
            t1.denied, t1.forbidden, t2.denied, t2.forbidden
        ),
    );
    // The seeded run reaches every status a fuzzed call can get here
    // (not: a read-only buffer, an internal limit, no key, a rejected state).
    let missing = REACHED
        .iter()
        .filter(|s| seen & 1 << s.raw() == 0)
        .fold(msg!(""), |mut m, s| {
            let _ = core::fmt::Write::write_fmt(&mut m, format_args!(" {}", st(s.raw())));
            m
        });
    let names = (0..64).filter(|b| seen & 1 << b != 0).count();
    c.check(
        "statuses-seen",
        missing.as_str().is_empty(),
        format_args!(
            "{names} different statuses (bits {seen:#x}); missing:{}",
            missing.as_str()
        ),
    );

    let mut rows = [Row::default(); 8];
    let relay = ucall::set_irq_relay(0);
    let listed = list_vms(&mut rows);
    let agrees = |i: usize| {
        rows[..2].iter().any(|r| {
            r.id == m.vms[i].id
                && r.frozen == m.vms[i].frozen
                && r.tag.is_some_and(|t| t.padded() == &m.vms[i].tag)
        })
    };
    c.check(
        "l0-state-consistent",
        matches!(listed, Ok(2)) && agrees(0) && agrees(1) && relay.is(Status::Ok),
        format_args!(
            "{}; {}; the model says frozen {}/{}, epochs {}/{}; relay off: {}",
            super::shadow::ShowRow(Some(rows[0])),
            super::shadow::ShowRow(Some(rows[1])),
            m.vms[0].frozen,
            m.vms[1].frozen,
            m.vms[0].high,
            m.vms[1].high,
            st(relay.rax)
        ),
    );
}

fn report(c: &mut Checks, level: &str, t: &Tally) {
    c.check(
        if level == "l1" {
            "l1-answers"
        } else {
            "l2-answers"
        },
        t.wrong == 0 && t.calls > 0,
        format_args!(
            "{} calls, {} answered otherwise than modelled{}{}",
            t.calls,
            t.wrong,
            if t.wrong > 0 { "; first: " } else { "" },
            t.first_wrong.as_ref().map_or("", |m| m.as_str())
        ),
    );
    c.check(
        if level == "l1" {
            "l1-registers-preserved"
        } else {
            "l2-registers-preserved"
        },
        t.clobbered == 0 && t.calls > 0,
        format_args!(
            "{} calls changed a register L0 must keep{}{}",
            t.clobbered,
            if t.clobbered > 0 { "; first: " } else { "" },
            t.first_clobbered.as_ref().map_or("", |m| m.as_str())
        ),
    );
}

/// The caller rules: calls the level may never make.
fn forbidden(level: Level, r: &[u64; 9]) -> bool {
    let version_ok = r[RDX] >> 32 == 0 && r[RDX] >> 16 == ABI_VERSION.major as u64;
    version_ok
        && match level {
            Level::L1 => r[RCX] == Op::RegisterTag.raw() || r[RCX] == Op::OwnerKeyAdd.raw(),
            Level::L2 => (3..=7).contains(&r[RCX]),
        }
}

fn show_expect(e: &Expect) -> Msg {
    match e {
        Expect::Is(s) => msg!("{}", st(s.raw())),
        Expect::OneOf(v) => {
            let mut m = msg!("one of");
            for s in v.iter() {
                let _ = core::fmt::Write::write_fmt(&mut m, format_args!(" {}", st(s.raw())));
            }
            m
        }
    }
}

/// Compares an answer with the model's; true if as modelled.
fn judge(
    level: Level,
    call: &Call,
    a: &Answer,
    out: [u64; 4],
    n: usize,
    t: &mut Tally,
    seen: &mut u64,
) -> Option<Status> {
    let [rax, rcx, rdx, rsi] = out;
    t.calls += 1;
    let status = Status::from_raw(rax);
    if let Some(s) = status {
        *seen |= 1 << s.raw();
    }
    let r = &call.regs;
    if forbidden(level, r) {
        t.forbidden += 1;
        t.denied += (status == Some(Status::NotPermitted)) as u32;
    }
    let ok = status.is_some_and(|s| a.expect.allows(s))
        && a.rcx.is_none_or(|v| v == rcx)
        && a.rsi.is_none_or(|v| v == rsi)
        && rdx == ABI_VERSION.to_raw() as u64;
    if !ok {
        t.wrong(msg!(
            "#{n} op {:#x} ver {:#x} buf {:#x}+{:#x} {:?}/{:?}: got {} rcx {rcx:#x} rsi {rsi:#x} rdx {rdx:#x}, want {} rcx {:?} rsi {:?}",
            r[RCX],
            r[RDX],
            r[RSI],
            r[RDI],
            call.buf,
            call.content,
            st(rax),
            show_expect(&a.expect).as_str(),
            a.rcx,
            a.rsi
        ));
    }
    status
}

/// Puts what a RESTORE's buffer should hold at its offset.
fn stage(rng: &mut Rng, m: &Model, call: &Call) {
    let Buf::Good { off } = call.buf else { return };
    let (buf, off) = (io_buf(), off as usize);
    let blob = &blob_buf()[..m.blob_len as usize];
    let held = m.blob.is_some();
    let len = (call.regs[RDI] as usize).min(BUF_SPAN as usize - off);
    match call.content {
        Content::Blob | Content::Flipped(_) | Content::Truncated(_) | Content::Extended if held => {
            let n = blob.len().min(len);
            buf[off..off + n].copy_from_slice(&blob[..n]);
            if let Content::Flipped(bit) = call.content {
                buf[off + bit / 8] ^= 1 << (bit % 8);
            }
            if call.content == Content::Extended {
                buf[off + blob.len()] = 0x5a;
            }
        }
        _ => {
            for b in &mut buf[off..off + len] {
                *b = rng.next() as u8;
            }
            if len > 0 {
                buf[off] = b'X'; // never a blob's magic
            }
        }
    }
}

fn l1_call(rng: &mut Rng, m: &mut Model, call: &Call, n: usize, t: &mut Tally, seen: &mut u64) {
    let Some(a) = m.answer(Level::L1, call) else {
        return;
    };
    if call.regs[RCX] == Op::RestoreDevices.raw() {
        stage(rng, m, call);
    }
    let mut g = Gprs::default();
    for (i, v) in g.r.iter_mut().enumerate() {
        *v = rng.next() ^ i as u64;
    }
    let map = [
        (RAX, ucall::RAX),
        (RCX, ucall::RCX),
        (RDX, ucall::RDX),
        (RSI, ucall::RSI),
        (RDI, ucall::RDI),
    ];
    for (from, to) in map {
        g.r[to] = call.regs[from];
    }
    g.r[ucall::R8..ucall::R8 + 4].copy_from_slice(&call.regs[R8..R8 + 4]);
    let before = g;
    ucall::raw(&mut g);
    let status = judge(
        Level::L1,
        call,
        &a,
        [
            g.r[ucall::RAX],
            g.r[ucall::RCX],
            g.r[ucall::RDX],
            g.r[ucall::RSI],
        ],
        n,
        t,
        seen,
    );
    let kept = [
        ucall::RBX,
        ucall::RDI,
        ucall::RBP,
        7,
        8,
        9,
        10,
        11,
        12,
        13,
        14,
    ];
    if let Some(&i) = kept.iter().find(|&&i| g.r[i] != before.r[i]) {
        t.clobbered(msg!(
            "#{n} op {:#x}: {} {:#x} -> {:#x}",
            call.regs[RCX],
            ucall::NAMES[i],
            before.r[i],
            g.r[i]
        ));
    } else if g.rflags_after != g.rflags_before {
        t.clobbered(msg!(
            "#{n} op {:#x}: RFLAGS {:#x} -> {:#x}",
            call.regs[RCX],
            g.rflags_before,
            g.rflags_after
        ));
    }
    if let Some(s) = status {
        if s == Status::Ok && call.regs[RCX] == Op::SaveDevices.raw() {
            if let Buf::Good { off } = call.buf {
                let len = m.blob_len as usize;
                blob_buf()[..len].copy_from_slice(&io_buf()[off as usize..off as usize + len]);
            }
        }
        m.apply(Level::L1, call, s);
    }
}

/// VMCALLs from L1 without the magic: #UD, nothing changed.
fn l1_non_ultracalls(rng: &mut Rng) -> Option<Msg> {
    for i in 0..16 {
        let mut g = Gprs::default();
        for v in g.r.iter_mut() {
            *v = rng.next();
        }
        g.r[ucall::RAX] = [0, 12, ULTRACALL_MAGIC ^ 1 << 63, ULTRACALL_MAGIC >> 8][i % 4];
        let before = g;
        // The VMCALL in l1_ucall is 3 bytes (0f 01 c1).
        let fault = crate::faults::expect_fault(3, || ucall::raw(&mut g));
        if fault != Some(6) || g.r != before.r {
            return Some(msg!(
                "RAX {:#x}: fault {fault:?}, registers kept {}",
                before.r[ucall::RAX],
                g.r == before.r
            ));
        }
    }
    None
}

fn table(i: usize, w: usize) -> u64 {
    l2x::backing(0, l2x::TABLE + (i * 256 + w * 8) as u64)
}

/// One batch of L2 calls through `l2x_fuzz`; returns the calls reflected
/// to L1 and whether each of them was a non-ultracall that reached L1
/// with L2's registers intact.
fn l2_batch(
    rng: &mut Rng,
    m: &mut Model,
    vm: &mut Vm,
    spy: &mut Spy,
    round: usize,
    t: &mut Tally,
    seen: &mut u64,
) -> Result<(u32, bool), Msg> {
    let mut calls = [None; L2_BATCH];
    for (i, slot) in calls.iter_mut().enumerate() {
        let call = gen(rng, Level::L2, m, va(io_buf()));
        for (w, &v) in call.regs.iter().enumerate() {
            mem::wr64(table(i, w), v);
        }
        *slot = Some(call);
    }
    l2x::wr(0, l2x::D_N, L2_BATCH as u64);
    vm.load().map_err(|e| msg!("VMPTRLD: {e:?}"))?;
    let _ = vmwrite(GUEST_RSP, l2x::STACK_TOP);
    vm.at(l2x!(l2x_fuzz));
    let mut reflected = [false; L2_BATCH];
    loop {
        match run(vm, 0, spy) {
            Stop::Done => break,
            Stop::Exit(x) if x.is(reason::VMCALL) => {
                let i = l2x::rd(0, l2x::D_I) as usize;
                if i >= L2_BATCH {
                    return Err(msg!("round {round}: a VMCALL exit past the table ({i})"));
                }
                reflected[i] = true;
                skip(&x);
            }
            s => return Err(msg!("round {round}: {s}")),
        }
    }
    let (mut n, mut intact) = (0, true);
    for (i, call) in calls.iter().enumerate() {
        let Some(call) = call else { continue };
        let out = |reg: usize| mem::rd64(table(i, FUZZ_OUT + reg));
        let Some(a) = m.answer(Level::L2, call) else {
            // Not an ultracall: L1 got it and left every register as it was.
            n += 1;
            intact &= reflected[i] && out(0) == call.regs[RAX];
            continue;
        };
        if reflected[i] {
            t.wrong(msg!("round {round} #{i}: an ultracall reached L1"));
        }
        let idx = |name: &str| OUT_REGS.iter().position(|r| *r == name).unwrap_or(0);
        let status = judge(
            Level::L2,
            call,
            &a,
            [out(0), out(idx("rcx")), out(idx("rdx")), out(idx("rsi"))],
            round * L2_BATCH + i,
            t,
            seen,
        );
        let mut kept: [(usize, u64); 11] = [(0, 0); 11];
        for (k, &(reg, v)) in SENTINELS.iter().enumerate() {
            kept[k] = (reg, v);
        }
        for (k, name) in ["rdi", "r8", "r9", "r10", "r11"].iter().enumerate() {
            let input = [RDI, R8, R8 + 1, R8 + 2, R8 + 3][k];
            kept[6 + k] = (idx(name), call.regs[input]);
        }
        if let Some(&(reg, v)) = kept.iter().find(|&&(reg, v)| out(reg) != v) {
            t.clobbered(msg!(
                "round {round} #{i} op {:#x}: {} {v:#x} -> {:#x}",
                call.regs[RCX],
                OUT_REGS[reg],
                out(reg)
            ));
        }
        if let Some(s) = status {
            m.apply(Level::L2, call, s);
        }
    }
    Ok((n, intact))
}
