//! `shadow-console` (L0 only): two user VMs, each on its own VMCS and its
//! own EPT12 root, print on COM1 in turns (L1 alternates between them
//! every 8 bytes). Their text reaches the operator's console, each VM's on
//! its own (the harness checks the transcript), and never L1: L1 gets no
//! exit for a COM port, and L1's memory holds none of the random text each
//! VM made up inside itself (`shadow-<A|B>-<16 hex digits>`).
//!
//! Natively (no L0) every COM access exits to L1, so this cannot pass
//! there: there is no -native variant.

use ultracall_abi::Status;

use crate::check::Checks;
use crate::hv::l2x::{self, Params, UART_POLLED};
use crate::hv::mem::pg;
use crate::hv::ucall;
use crate::hv::vm::Vm;
use crate::l2x;
use crate::spy::secret_at;

use super::shadow::{list_vms, run, scan_l1, scan_l2_data, st, Row, Spy, Stop};

const CHECKS: &[&str] = &[
    "vmxon",
    "two-vms",
    "tags-registered",
    "interleaved-to-the-end",
    "l1-got-no-com-exit",
    "l1-got-no-ultracall-exit",
    "l1-memory-holds-no-console-text",
    "spy-finds-text-in-l2-memory",
    "list-shows-counts",
    "save-without-key",
];

const CHUNK: u64 = 8;
/// What each VM prints: three lines of 25 bytes and the 27-byte random one.
const OUT: u64 = 3 * 25 + l2x::LINE_LEN;

pub fn run_scenario() {
    static NAME: &str = "shadow-console";
    super::shadow::scenario(&NAME, CHECKS, body);
}

fn body(c: &mut Checks, hv: &mut crate::hv::Hv) {
    let mut vms: [Option<(Vm, u64)>; 2] = [None, None];
    for (i, (letter, tag, page)) in [
        (b'A', "console-a", pg::VMCS_A),
        (b'B', "console-b", pg::VMCS_B),
    ]
    .into_iter()
    .enumerate()
    {
        let p = Params {
            letter,
            tag: tag.as_bytes(),
            uart: UART_POLLED,
            chunk: CHUNK,
        };
        match hv.vm64(i, page, l2x!(l2x_console), &p) {
            Ok((vm, e)) => vms[i] = Some((vm, e.root)),
            Err(m) => {
                c.fail_all(
                    &CHECKS[1..],
                    format_args!("setting up VM {}: {}", letter as char, m.as_str()),
                );
                return;
            }
        }
    }
    let [Some((mut a, ra)), Some((mut b, rb))] = vms else {
        return;
    };
    c.check(
        "two-vms",
        a.vmcs != b.vmcs && ra != rb,
        format_args!(
            "VMCS12 {:#x} / {:#x}, EPT12 roots {ra:#x} / {rb:#x}",
            a.vmcs, b.vmcs
        ),
    );

    // Turns: A, B, A, B ... each runs until it has printed CHUNK bytes.
    let mut spy = Spy::new();
    let mut turns = [0u32; 2];
    let mut done = [false; 2];
    let mut trouble: Option<crate::hv::Msg> = None;
    for _ in 0..2000 {
        for (i, vm) in [&mut a, &mut b].into_iter().enumerate() {
            if done[i] {
                continue;
            }
            if let Err(e) = vm.load() {
                trouble.get_or_insert(crate::msg!("VMPTRLD {i}: {e:?}"));
                done[i] = true;
                continue;
            }
            match run(vm, i, &mut spy) {
                Stop::Yield => turns[i] += 1,
                Stop::Done => done[i] = true,
                s => {
                    trouble.get_or_insert(crate::msg!("VM {i}: {s}"));
                    done[i] = true;
                }
            }
        }
        if done == [true, true] {
            break;
        }
    }
    let ids = [l2x::rd(0, l2x::D_TAG_ID), l2x::rd(1, l2x::D_TAG_ID)];
    let sts = [l2x::rd(0, l2x::D_TAG_STATUS), l2x::rd(1, l2x::D_TAG_STATUS)];
    c.check(
        "tags-registered",
        sts == [0, 0] && ids[0] != ids[1] && ids[0] != 0 && ids[1] != 0,
        format_args!(
            "console-a: {} as vm {}, console-b: {} as vm {}",
            st(sts[0]),
            ids[0],
            st(sts[1]),
            ids[1]
        ),
    );
    let finished = [l2x::rd(0, l2x::D_DONE), l2x::rd(1, l2x::D_DONE)];
    let want = (OUT / CHUNK) as u32;
    c.check(
        "interleaved-to-the-end",
        trouble.is_none() && finished == [1, 1] && turns == [want, want],
        format_args!(
            "{}; A yielded {} times, B {} times (want {want}: every {CHUNK} of {OUT} bytes), both finished {:?}",
            trouble.as_ref().map_or("no trouble", |m| m.as_str()),
            turns[0],
            turns[1],
            finished
        ),
    );
    c.check(
        "l1-got-no-com-exit",
        spy.com_io == 0,
        format_args!("{} COM exits; {}", spy.com_io, spy.summary().as_str()),
    );
    c.check(
        "l1-got-no-ultracall-exit",
        spy.ucall_exits == 0,
        format_args!("{} ultracalls reached L1", spy.ucall_exits),
    );

    let is_secret = |b: &[u8]| secret_at(b).is_some();
    let (hits, bytes) = scan_l1(&is_secret);
    c.check(
        "l1-memory-holds-no-console-text",
        hits == 0,
        format_args!("{hits} copies of shadow-<A|B>-<16 hex> in {bytes} bytes of L1's image, data, .bss and stack"),
    );
    // The scan can find what is there: each VM's text is in its own memory.
    let (in_a, in_b) = (
        scan_l2_data(0, &|b| secret_at(b) == Some(b'A')),
        scan_l2_data(1, &|b| secret_at(b) == Some(b'B')),
    );
    c.check(
        "spy-finds-text-in-l2-memory",
        in_a == 1 && in_b == 1,
        format_args!("A's page holds {in_a}, B's {in_b}"),
    );

    // L1 sees counters, never bytes.
    let mut rows = [Row::default(); 8];
    match list_vms(&mut rows) {
        Ok(n) => {
            let find = |id| rows[..n].iter().find(|r| r.id == id).copied();
            let (ra, rb) = (find(ids[0]), find(ids[1]));
            let expect_out = OUT;
            let ok = n == 2
                && ra.is_some_and(|r| {
                    r.tag.is_some_and(|t| t.as_str() == "console-a")
                        && r.com1_out == expect_out
                        && !r.frozen
                })
                && rb.is_some_and(|r| {
                    r.tag.is_some_and(|t| t.as_str() == "console-b")
                        && r.com1_out == expect_out
                        && !r.frozen
                });
            c.check(
                "list-shows-counts",
                ok,
                format_args!(
                    "{n} VMs; A: {}; B: {} (want {expect_out} bytes out each)",
                    super::shadow::ShowRow(ra),
                    super::shadow::ShowRow(rb)
                ),
            );
        }
        Err(s) => c.check(
            "list-shows-counts",
            false,
            format_args!("LIST_VMS: {}", st(s)),
        ),
    }

    // Booted without an `l0.key` module: L0 cannot seal, and says so.
    let buf = super::shadow::io_buf();
    let o = ucall::save(
        &ucall::tag("console-a"),
        super::shadow::va(buf),
        buf.len() as u64,
    );
    let frozen = super::shadow::listed(&ucall::tag("console-a"))
        .ok()
        .flatten()
        .map(|r| r.frozen);
    c.check(
        "save-without-key",
        o.is(Status::NoKey) && o.rcx == 0 && frozen == Some(false),
        format_args!(
            "SAVE_DEVICES: {}, RCX {}; console-a frozen afterwards: {frozen:?}",
            st(o.rax),
            o.rcx
        ),
    );
}
