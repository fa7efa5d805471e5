//! `shadow-many` (L0 only): eight user VMs at once, each on its own VMCS12
//! and EPT12 root, print on their COM1 in turns (L1 switches VM every 8
//! bytes, so all eight are alive and mid-output together). After the
//! first round, while every VM is mid-output, L1 waits until the operator
//! (the harness) follows all eight consoles; each VM's lines reach the
//! operator on its own console and no other's (the harness checks the
//! transcript); L1 gets no COM exit; LIST_VMS shows eight VMs, each with
//! its tag and exactly its own byte count.

use crate::check::Checks;
use crate::hv::cpu;
use crate::hv::l2x::{self, Params, UART_POLLED};
use crate::hv::mem::pg;
use crate::hv::vm::Vm;
use crate::l2x;

use super::shadow::{list_vms, run, st, Row, Spy, Stop};

const CHECKS: &[&str] = &[
    "vmxon",
    "eight-vms",
    "tags-registered",
    "operator-follows-eight",
    "interleaved-to-the-end",
    "l1-got-no-com-exit",
    "list-shows-eight",
];

const VMS: usize = 8;
/// How long the operator's attaches may take (TSC ticks; Bochs counts
/// instructions): they cross the management line one command at a time.
const ATTACH_WAIT: u64 = 3_000_000_000;
const CHUNK: u64 = 8;
/// What each VM prints: three lines of 25 bytes and the 27-byte random one.
const OUT: u64 = 3 * 25 + l2x::LINE_LEN;
const TAGS: [&str; VMS] = [
    "many-a", "many-b", "many-c", "many-d", "many-e", "many-f", "many-g", "many-h",
];

pub fn run_scenario() {
    static NAME: &str = "shadow-many";
    super::shadow::scenario(&NAME, CHECKS, body);
}

fn body(c: &mut Checks, hv: &mut crate::hv::Hv) {
    let mut vms: [Option<(Vm, u64)>; VMS] = [const { None }; VMS];
    for (i, tag) in TAGS.iter().enumerate() {
        let p = Params {
            letter: b'A' + i as u8,
            tag: tag.as_bytes(),
            uart: UART_POLLED,
            chunk: CHUNK,
        };
        match hv.vm64(i, pg::VMCS_SLOT + i, l2x!(l2x_console), &p) {
            Ok((vm, e)) => vms[i] = Some((vm, e.root)),
            Err(m) => {
                c.fail_all(
                    &CHECKS[1..],
                    format_args!("setting up VM {tag}: {}", m.as_str()),
                );
                return;
            }
        }
    }
    let mut vms = vms.map(|v| v.expect("every VM was set up"));
    let distinct = |f: &dyn Fn(usize) -> u64| (0..VMS).all(|i| (0..i).all(|j| f(i) != f(j)));
    c.check(
        "eight-vms",
        distinct(&|i| vms[i].0.vmcs) && distinct(&|i| vms[i].1),
        format_args!(
            "VMCS12s {:#x}..{:#x}, EPT12 roots {:#x}..{:#x}",
            vms[0].0.vmcs,
            vms[VMS - 1].0.vmcs,
            vms[0].1,
            vms[VMS - 1].1
        ),
    );

    // Turns: A, B, ... H, A, ... each runs until it has printed CHUNK bytes.
    let mut spy = Spy::new();
    let mut turns = [0u32; VMS];
    let mut done = [false; VMS];
    let mut trouble: Option<crate::hv::Msg> = None;
    for round in 0..2000 {
        if round == 1 {
            // Every VM exists and has output waiting: the operator
            // attaches each as L0 announces it.
            let (n, attached) = wait_attached();
            c.check(
                "operator-follows-eight",
                n == VMS && attached == VMS,
                format_args!("{n} VMs listed, {attached} with COM1 followed"),
            );
        }
        for (i, (vm, _)) in vms.iter_mut().enumerate() {
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
        if done == [true; VMS] {
            break;
        }
    }
    let ids: [u64; VMS] = core::array::from_fn(|i| l2x::rd(i, l2x::D_TAG_ID));
    let bad_tag = (0..VMS).find(|&i| l2x::rd(i, l2x::D_TAG_STATUS) != 0);
    c.check(
        "tags-registered",
        bad_tag.is_none() && distinct(&|i| ids[i]) && !ids.contains(&0),
        format_args!(
            "VM ids {ids:?}; {}",
            match bad_tag {
                Some(i) => crate::msg!("{}: {}", TAGS[i], st(l2x::rd(i, l2x::D_TAG_STATUS))),
                None => crate::msg!("every tag OK"),
            }
            .as_str()
        ),
    );
    let want = (OUT / CHUNK) as u32;
    let finished = (0..VMS).filter(|&i| l2x::rd(i, l2x::D_DONE) == 1).count();
    c.check(
        "interleaved-to-the-end",
        trouble.is_none() && finished == VMS && turns == [want; VMS],
        format_args!(
            "{}; yields {turns:?} (want {want} each: every {CHUNK} of {OUT} bytes), {finished} finished",
            trouble.as_ref().map_or("no trouble", |m| m.as_str()),
        ),
    );
    c.check(
        "l1-got-no-com-exit",
        spy.com_io == 0,
        format_args!("{} COM exits; {}", spy.com_io, spy.summary().as_str()),
    );

    // One row more than VMs: a ninth VM would show.
    let mut rows = [Row::default(); VMS + 1];
    match list_vms(&mut rows) {
        Ok(n) => {
            let wrong = (0..VMS).find(|&i| {
                !rows[..n].iter().any(|r| {
                    r.id == ids[i]
                        && r.tag.is_some_and(|t| t.as_str() == TAGS[i])
                        && r.com1_out == OUT
                        && !r.frozen
                })
            });
            c.check(
                "list-shows-eight",
                n == VMS && wrong.is_none(),
                format_args!(
                    "{n} VMs listed; {}",
                    match wrong {
                        Some(i) => crate::msg!(
                            "{} (vm {}) not listed with its tag and {OUT} bytes out",
                            TAGS[i],
                            ids[i]
                        ),
                        None => crate::msg!("each with its tag and {OUT} bytes out"),
                    }
                    .as_str()
                ),
            );
        }
        Err(s) => c.check(
            "list-shows-eight",
            false,
            format_args!("LIST_VMS: {}", st(s)),
        ),
    }
}

/// Polls LIST_VMS until every VM's COM1 is followed by the operator, or
/// the wait runs out: the VMs listed and how many are followed.
fn wait_attached() -> (usize, usize) {
    let deadline = cpu::rdtsc() + ATTACH_WAIT;
    loop {
        let mut rows = [Row::default(); VMS + 1];
        let n = list_vms(&mut rows).unwrap_or(0);
        let attached = rows[..n].iter().filter(|r| r.com1_attached).count();
        if attached == VMS || cpu::rdtsc() > deadline {
            return (n, attached);
        }
    }
}
