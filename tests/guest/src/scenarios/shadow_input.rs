//! `shadow-input` (L0 only): the operator types into a user VM, whose
//! driver receives by interrupt. L1 asks L0 to relay shadow-device
//! interrupts on a vector (SetIrqRelay); when the VM's UART raises its
//! line, L0 raises that vector in L1 — through L1's IDT when L1 runs
//! (the VM halted: HLT exits to L1, which waits in HLT itself), or as an
//! external-interrupt exit carrying the vector when the VM runs (it
//! spins with interrupts enabled; "acknowledge interrupt on exit" is on).
//! Either way L1 sends no EOI, calls TakeIrqs until NO_DEVICE and injects
//! the UART's vector into the VM, whose handler drains RBR while LSR.DR;
//! the VM echoes each line. The harness types `hello-L2` after the first
//! prompt and `second-L2` after the second and checks the echoes; L1
//! gets no COM exit and its memory holds none of the typed text.
//!
//! `owner-console` is the same VM as `alpha` with an owner key (given on
//! the guest's command line, `owner-key=BASE64`) that its L2 registers
//! after its tag: there the owner's client types both lines through an
//! encrypted session that ends in L0 (xtask/src/owner.rs), and the same
//! checks hold, L1 seeing neither line.
//!
//! Natively (no L0) nobody relays anything: no -native variant.

use core::sync::atomic::{AtomicU64, Ordering};

use ultracall_abi::{OwnerKey, Status};

use crate::check::Checks;
use crate::faults::{RELAY_TAKEN, RELAY_VECTOR, TIMER_VECTOR};
use crate::hv::fields::*;
use crate::hv::l2x::{self, Params, UART_VECTOR};
use crate::hv::mem::pg;
use crate::hv::ucall;
use crate::hv::vm::Vm;
use crate::hv::vmx::{rd, vmwrite};
use crate::hv::{apic, cpu, Hv};
use crate::l2x;
use crate::spy::{mask, masked_at};

use super::shadow::{run, run_to_end, scan_l1, scan_l2_data, skip, st, Spy, Stop};

const CHECKS: &[&str] = &[
    "vmxon",
    "relay-bad-vector",
    "relay-set",
    "input-vm",
    "relay-through-idt",
    "relay-as-acked-exit",
    "relay-not-from-apic",
    "take-irqs",
    "l2-isr",
    "l2-echoed-both-lines",
    "l1-got-no-com-exit",
    "l1-memory-holds-no-typed-text",
    "spy-finds-typed-text-in-l2-memory",
    "relay-off",
];

/// What the harness types (xtask/src/scenario.rs), masked (`spy`).
static HELLO: [u8; 8] = mask(b"hello-L2");
static SECOND: [u8; 9] = mask(b"second-L2");
/// Both lines with their CRs.
const TYPED: u64 = 8 + 1 + 9 + 1;

/// Guest-TSC ticks L1 waits for a relay before it gives up.
const RELAY_WAIT: u64 = 3_000_000_000;
/// Round 2: L2's polling iterations before it gives up.
const SPIN: u64 = 1 << 27;
const WATCHDOG: u32 = 50_000_000;

pub fn run_scenario() {
    static NAME: &str = "shadow-input";
    super::shadow::scenario(&NAME, CHECKS, body);
}

/// `owner-console`'s checks: `shadow-input`'s, then the owner's own.
const OWNER_CHECKS: [&str; CHECKS.len() + 2] = {
    let own = ["owner-key-set", "break-reached-the-uart"];
    let mut all = [""; CHECKS.len() + 2];
    let mut i = 0;
    while i < all.len() {
        all[i] = if i < CHECKS.len() {
            CHECKS[i]
        } else {
            own[i - CHECKS.len()]
        };
        i += 1;
    }
    all
};

/// Guest-TSC ticks L1 gives the owner's BREAK to arrive.
const BREAK_WAIT: u64 = 20_000_000_000;

/// The owner key of `owner-console`, from the command line.
static OWNER_KEY: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// `owner-console`: `owner-key=BASE64` names the key alpha registers.
pub fn run_owner_scenario(key: Option<&str>) {
    static NAME: &str = "owner-console";
    if let Some(k) = key.and_then(|k| OwnerKey::from_base64(k).ok()) {
        for (slot, w) in OWNER_KEY.iter().zip(k.to_regs()) {
            slot.store(w, Ordering::SeqCst);
        }
    }
    super::shadow::scenario(&NAME, &OWNER_CHECKS, owner_body);
}

fn body(c: &mut Checks, hv: &mut Hv) {
    run_vm(c, hv, b"input-1", None)
}

fn owner_body(c: &mut Checks, hv: &mut Hv) {
    let key: [u64; 4] = core::array::from_fn(|i| OWNER_KEY[i].load(Ordering::SeqCst));
    if key == [0; 4] {
        for n in &OWNER_CHECKS[1..] {
            c.check(
                n,
                false,
                format_args!("no owner-key=BASE64 on the command line"),
            );
        }
        return;
    }
    run_vm(c, hv, b"alpha", Some(key))
}

/// What L1's relay service saw.
#[derive(Default)]
struct Relay {
    /// Relays taken as external-interrupt exits with the vector.
    acked: u32,
    /// Relay vector found in the APIC's ISR or IRR (it must never be).
    in_apic: u32,
    /// TakeIrqs answers: OK for our VM with IRQ 4, OK otherwise, the
    /// NO_DEVICE that ended each round, and anything else.
    ours: u32,
    foreign: u32,
    drained: u32,
    rounds: u32,
    bad: Option<u64>,
    levels: u64,
    injected: u32,
    /// An injection waits for L2 to accept interrupts.
    owed: bool,
}

fn run_vm(c: &mut Checks, hv: &mut Hv, tag: &'static [u8], owner: Option<[u64; 4]>) {
    let checks: &[&str] = if owner.is_some() {
        &OWNER_CHECKS
    } else {
        CHECKS
    };
    let o = ucall::set_irq_relay(5);
    c.check(
        "relay-bad-vector",
        o.is(Status::InvalidArgument),
        format_args!("SetIrqRelay(5): {}", st(o.rax)),
    );
    let o = ucall::set_irq_relay(RELAY_VECTOR as u64);
    c.check(
        "relay-set",
        o.is(Status::Ok) && o.rsi == RELAY_VECTOR as u64,
        format_args!(
            "SetIrqRelay({RELAY_VECTOR:#x}): {}, RSI {:#x}",
            st(o.rax),
            o.rsi
        ),
    );

    // Receive interrupts on (IER.ERBFI), OUT2 gates them onto IRQ 4.
    let p = Params {
        letter: b'I',
        tag,
        uart: [0x01, 0x03, 0x0b, 0x07, 0x00, 0x01, 0x00],
        chunk: 0,
    };
    let mut vm = match hv.vm64(0, pg::VMCS_A, l2x!(l2x_input), &p) {
        Ok((vm, _)) => vm,
        Err(m) => {
            c.fail_all(
                &checks[3..],
                format_args!("setting up the VM: {}", m.as_str()),
            );
            return;
        }
    };
    // The owner's client polls over the line: give it longer to type.
    l2x::wr(0, l2x::D_N, if owner.is_some() { SPIN << 2 } else { SPIN });
    for (i, w) in owner.unwrap_or([0; 4]).into_iter().enumerate() {
        l2x::wr(0, l2x::D_OWNER_KEY + 8 * i as u64, w);
    }
    let acked_exits = hv.ctl(EXIT_CONTROLS, exit::ACK_INTR_ON_EXIT, 0);
    let apic_ok = apic::usable().is_ok();
    if apic_ok {
        apic::enable();
    }
    c.check(
        "input-vm",
        true,
        format_args!(
            "VMCS12 {:#x}; ack on exit {acked_exits}; local APIC usable {apic_ok}",
            vm.vmcs
        ),
    );

    let mut spy = Spy::new();
    let mut r = Relay::default();
    let mut trouble = None;
    for _ in 0..10_000 {
        match run(&mut vm, 0, &mut spy) {
            Stop::Done => break,
            Stop::Exit(x) if x.is(reason::HLT) => {
                // L2 waits for input: so does L1, until L0 relays.
                skip(&x);
                if !wait_relay(&mut r) {
                    trouble = Some(crate::msg!(
                        "no relay within {RELAY_WAIT} ticks of L2's HLT"
                    ));
                    break;
                }
                service(&mut vm, &mut r);
            }
            Stop::Exit(x) if x.is(reason::EXTERNAL_INTERRUPT) => {
                let v = (x.intr_info & 0xff) as u8;
                if x.intr_info & intr::VALID == 0 {
                    // Not acknowledged: it waits for L1's IDT.
                    // SAFETY: L1's IDT has every vector used; one instruction window.
                    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
                } else if v == RELAY_VECTOR {
                    r.acked += 1;
                    r.in_apic += relay_in_apic(apic_ok) as u32;
                } else if v == TIMER_VECTOR {
                    apic::eoi();
                } else {
                    trouble = Some(crate::msg!("external interrupt {v:#x} while L2 ran"));
                    break;
                }
                service(&mut vm, &mut r);
            }
            Stop::Exit(x) if x.is(reason::INTERRUPT_WINDOW) => {
                hv.ctl(PROC_CONTROLS, 0, proc::INTR_WINDOW_EXITING);
                inject(&mut r);
            }
            s => {
                trouble = Some(crate::msg!("{s}"));
                break;
            }
        }
    }
    // The owner sends BREAK once it saw the second echo: L1 reads the
    // UART's LSR from L2 until BI shows (reading clears it). The break's
    // NUL in RBR raises the receive interrupt: L1 takes it and reads on,
    // never injecting it (L2's handler would read the break away).
    let mut brk = (0u8, 0u32);
    if owner.is_some() && trouble.is_none() {
        let deadline = cpu::rdtsc() + BREAK_WAIT;
        loop {
            let s = run_to_end(vm.at(l2x!(l2x_lsr)), 0, &mut spy);
            match s {
                Stop::Done => brk = (l2x::rd8(0, l2x::D_READ + 4), brk.1 + 1),
                Stop::Exit(x) if x.is(reason::EXTERNAL_INTERRUPT) => {
                    if x.intr_info & intr::VALID == 0 {
                        // SAFETY: L1's IDT has every vector used; one instruction window.
                        unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
                    } else if (x.intr_info & 0xff) as u8 == TIMER_VECTOR {
                        apic::eoi();
                    }
                    // L0 relays the edge until L1 takes it: take it, inject nothing.
                    for _ in 0..16 {
                        if !ucall::take_irqs().is(Status::Ok) {
                            break;
                        }
                    }
                }
                _ => break,
            }
            if brk.0 & 0x10 != 0 || cpu::rdtsc() > deadline {
                break;
            }
            let pause = cpu::rdtsc() + 20_000_000;
            while cpu::rdtsc() < pause {
                core::hint::spin_loop();
            }
        }
    }
    let idt = RELAY_TAKEN.load(Ordering::SeqCst);
    let why = trouble.as_ref().map_or("", |m| m.as_str());
    c.check(
        "relay-through-idt",
        idt >= 1,
        format_args!("L1's IDT took vector {RELAY_VECTOR:#x} {idt} time(s) {why}"),
    );
    if acked_exits {
        c.check(
            "relay-as-acked-exit",
            r.acked >= 1,
            format_args!(
                "{} external-interrupt exit(s) with vector {RELAY_VECTOR:#x}",
                r.acked
            ),
        );
    } else {
        c.skip(
            "relay-as-acked-exit",
            format_args!("acknowledge interrupt on exit not offered"),
        );
    }
    if apic_ok {
        c.check(
            "relay-not-from-apic",
            r.in_apic == 0,
            format_args!(
                "relay vector seen in the APIC's ISR/IRR {} time(s)",
                r.in_apic
            ),
        );
    } else {
        c.skip(
            "relay-not-from-apic",
            format_args!("the local APIC cannot be read here"),
        );
    }
    c.check(
        "take-irqs",
        r.ours >= 2 && r.foreign == 0 && r.bad.is_none() && r.drained == r.rounds && r.levels & 1 << 4 != 0,
        format_args!(
            "{} round(s): {} answer(s) for VMCS12 {:#x} with IRQ 4, {} other, {} ended in no_device, levels {:#x}, other status {}; {} injection(s)",
            r.rounds, r.ours, vm.vmcs, r.foreign, r.drained, r.levels, st(r.bad.unwrap_or(0)), r.injected
        ),
    );
    let (isr, iir) = (l2x::rd(0, l2x::D_ISR), l2x::rd8(0, l2x::D_IIR));
    c.check(
        "l2-isr",
        isr >= 2 && isr <= r.injected as u64 && matches!(iir & 0x0f, 0x04 | 0x0c),
        format_args!("L2's UART handler ran {isr} time(s), last IIR {iir:#x}"),
    );
    let (done, timeout, rx) = (
        l2x::rd(0, l2x::D_DONE),
        l2x::rd(0, l2x::D_TIMEOUT),
        l2x::rd(0, l2x::D_RX_N),
    );
    c.check(
        "l2-echoed-both-lines",
        done == 1 && timeout == 0 && rx == TYPED,
        format_args!("done {done}, timed out {timeout}, received {rx} bytes (want {TYPED})"),
    );
    c.check(
        "l1-got-no-com-exit",
        spy.com_io == 0,
        format_args!("{} COM exits; {}", spy.com_io, spy.summary().as_str()),
    );
    let (h1, bytes) = scan_l1(&|b| masked_at(b, &HELLO));
    let (h2, _) = scan_l1(&|b| masked_at(b, &SECOND));
    c.check(
        "l1-memory-holds-no-typed-text",
        h1 == 0 && h2 == 0,
        format_args!(
            "first line {h1} time(s), second {h2} time(s) in {bytes} bytes of L1's memory"
        ),
    );
    let (l1, l2) = (
        scan_l2_data(0, &|b| masked_at(b, &HELLO)),
        scan_l2_data(0, &|b| masked_at(b, &SECOND)),
    );
    c.check(
        "spy-finds-typed-text-in-l2-memory",
        l1 == 1 && l2 == 1,
        format_args!("L2's page holds the first line {l1} time(s), the second {l2}"),
    );
    let o = ucall::set_irq_relay(0);
    c.check(
        "relay-off",
        o.is(Status::Ok),
        format_args!("SetIrqRelay(0): {}", st(o.rax)),
    );
    if owner.is_some() {
        let (status, count) = (
            l2x::rd(0, l2x::D_OWNER_STATUS),
            l2x::rd(0, l2x::D_OWNER_COUNT),
        );
        c.check(
            "owner-key-set",
            status == Status::Ok.raw() && count >= 1,
            format_args!("OWNER_KEY_ADD from L2: {}, {count} key(s)", st(status)),
        );
        c.check(
            "break-reached-the-uart",
            brk.0 & 0x11 == 0x11,
            format_args!(
                "LSR {:#x} after {} read(s) from L2 (BI 0x10 with DR 0x01: the break's NUL)",
                brk.0, brk.1
            ),
        );
    }
}

/// Whether the relay vector is pending or in service in L1's local APIC:
/// L0 injects it by VM entry, so it must never be there.
fn relay_in_apic(apic_ok: bool) -> bool {
    apic_ok && (apic::in_service(RELAY_VECTOR) || apic::pending(RELAY_VECTOR))
}

/// L1 halts until its IDT takes the relay (a LAPIC timer wakes it now and
/// then to look at the clock). False if none came in time.
fn wait_relay(r: &mut Relay) -> bool {
    let before = RELAY_TAKEN.load(Ordering::SeqCst);
    let deadline = cpu::rdtsc() + RELAY_WAIT;
    while RELAY_TAKEN.load(Ordering::SeqCst) == before && cpu::rdtsc() < deadline {
        let _w = apic::Watchdog::arm(WATCHDOG);
        // SAFETY: L1's IDT handles the relay and timer vectors; STI's
        // shadow covers HLT, so an interrupt cannot slip in between.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    }
    let took = RELAY_TAKEN.load(Ordering::SeqCst) != before;
    if took {
        r.in_apic += relay_in_apic(apic::usable().is_ok()) as u32;
    }
    took
}

/// TakeIrqs until NO_DEVICE; an edge of our VM's IRQ 4 makes an injection owed.
fn service(vm: &mut Vm, r: &mut Relay) {
    r.rounds += 1;
    for _ in 0..16 {
        let o = ucall::take_irqs();
        if o.is(Status::NoDevice) {
            r.drained += 1;
            break;
        }
        if !o.is(Status::Ok) {
            r.bad = Some(o.rax);
            break;
        }
        if o.rcx == vm.vmcs && o.rsi & 1 << 4 != 0 {
            r.ours += 1;
            r.levels |= o.rdi;
            r.owed = true;
        } else {
            r.foreign += 1;
        }
    }
    inject(r);
}

/// Injects the UART's vector into L2 (its VMCS current) when L2 accepts
/// interrupts, else asks for an interrupt-window exit (SDM 26.3.1.5, 27.6).
fn inject(r: &mut Relay) {
    if !r.owed {
        return;
    }
    let open = rd(GUEST_RFLAGS) & 1 << 9 != 0 && rd(GUEST_INTERRUPTIBILITY) & 3 == 0;
    if open {
        let _ = vmwrite(
            ENTRY_INTR_INFO,
            (intr::VALID | intr::TYPE_EXTERNAL | UART_VECTOR as u32) as u64,
        );
        r.owed = false;
        r.injected += 1;
    } else {
        let p = rd(PROC_CONTROLS) as u32;
        let _ = vmwrite(PROC_CONTROLS, (p | proc::INTR_WINDOW_EXITING) as u64);
    }
}
