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
//!   hands every COM access to L1;
//! - `smp-l2-posted-interrupt-cross-cpu`: one VM with a vCPU on each CPU
//!   (one EPT12), the one on CPU 1 run with posted interrupts as KVM runs
//!   its vCPUs (virtual-interrupt delivery, a descriptor whose NDST names
//!   CPU 1), the VM's IOAPIC sending COM1's pin to it: ticks from the
//!   vCPU on CPU 0 raising its UART's THR-empty edge to the handler on
//!   CPU 1 reading the TSC (L0 posts, notifies CPU 1, delivers there),
//!   under L0 only. L1 ends each interrupt in the virtual APIC for the
//!   handler (`EXIT_EOI`).
//!
//! Bochs's TSC counts each CPU's emulated instructions, so a figure grows
//! only if the CPU executes more (spinning on a lock of L0's, say), never
//! because the other CPU shares the host. Checks assert only that the
//! loops ran, never a figure.

use super::nested_bench::cpuid_roundtrips;
use core::sync::atomic::{AtomicU64, Ordering};

use super::shadow::{self, listed, run_to_end, skip, st, ShowRow, Spy, Stop};
use super::smp_nested::{give_up, meet, run_on_both, OnBoth};
use crate::check::Checks;
use crate::hv::fields::*;
use crate::hv::l2x::{self, Params, UART_POLLED};
use crate::hv::mem::pg;
use crate::hv::vm::Vm;
use crate::hv::vmx::{self, VmFail};
use crate::hv::{below, cpu, mem, start, ucall, vmcs, Below, Hv};
use crate::mb1::{Identity, Info};
use crate::{l2, l2x, msg, smp};

const CHECKS: &[&str] = &[
    "vmxon",
    "serial-vm",
    "operator-attached",
    "alone-loop",
    "serial-alone-loop",
    "both-loop",
    "serial-both-loop",
    "pi-loop",
    "pi-vcpu",
];
/// Rounds of the cross-CPU posted-interrupt loop.
const PI_ROUNDS: u64 = 64;
/// The slot of the posted-interrupt VM in CPU 0's pool (0 is the serial VM's).
const PI_SLOT: usize = 1;
/// The posted-interrupt VM's EPT12 pointer, as CPU 0 made it for CPU 1.
static PI_EPTP: AtomicU64 = AtomicU64::new(0);
/// The notification vector (KVM's POSTED_INTR_VECTOR).
const PI_NV: u8 = 0xf2;
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
    /// Both serial loops are done.
    pub const SERIAL_DONE: u32 = 4;
    /// CPU 0 made the posted-interrupt VM (`PI_EPTP`).
    pub const PI_VM: u32 = 5;
    /// Both vCPUs are done.
    pub const PI_DONE: u32 = 6;
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
    if !meet(round::SERIAL_DONE) {
        return c.check("pi-loop", false, format_args!("the other CPU never came"));
    }
    if below() != Below::L0 {
        let why = "running natively: no L0 posts a shadow UART's interrupt";
        c.skip("pi-loop", format_args!("{why}"));
        return c.skip("pi-vcpu", format_args!("{why}"));
    }
    match cpu {
        0 => pi_sender(c, &mut hv),
        _ => pi_receiver(c, &hv),
    }
    meet(round::PI_DONE);
}

/// CPU 0: the posted-interrupt VM's sending vCPU (`l2x_pi_send`), its
/// IOAPIC writes stepped past as KVM's IOAPIC emulation would; the BENCH
/// line and check `pi-loop`.
fn pi_sender(c: &mut Checks, hv: &mut Hv) {
    c.skip("pi-vcpu", format_args!("CPU 1's"));
    let p = Params {
        letter: b'p',
        tag: b"",
        uart: UART_POLLED,
        chunk: 0,
    };
    let (mut vm, ept) = match hv.vm64(PI_SLOT, pg::VMCS_SLOT + PI_SLOT, l2x!(l2x_pi_send), &p) {
        Ok(v) => v,
        Err(m) => {
            meet(round::PI_VM);
            return c.check("pi-loop", false, format_args!("setting up the VM: {m}"));
        }
    };
    l2x::wr(PI_SLOT, l2x::D_N, PI_ROUNDS);
    PI_EPTP.store(ept.eptp(false), Ordering::SeqCst);
    if !meet(round::PI_VM) {
        return c.check("pi-loop", false, format_args!("the other CPU never came"));
    }
    let _ = vm.load();
    let mut spy = Spy::new();
    let mut ioapic_writes = 0;
    let s = loop {
        match shadow::run(&mut vm, PI_SLOT, &mut spy) {
            Stop::Yield => continue,
            Stop::Exit(x)
                if x.basic() == reason::EPT_VIOLATION
                    && vmx::rd(GUEST_PHYSICAL_ADDRESS) & !0x1f == 0xfec0_0000 =>
            {
                // `mov [rax], esi`: two bytes.
                let _ = vmx::vmwrite(GUEST_RIP, x.rip + 2);
                ioapic_writes += 1;
            }
            s => break s,
        }
    };
    let sum = l2x::rd(PI_SLOT, l2x::D_T_PI);
    let done = matches!(s, Stop::Done) && l2x::rd(PI_SLOT, l2x::D_DONE) == 1;
    if done {
        crate::println!(
            "BENCH smp-l2-posted-interrupt-cross-cpu {}",
            sum / PI_ROUNDS
        );
    }
    c.check(
        "pi-loop",
        done && ioapic_writes == 4 && spy.com_io == 0,
        format_args!(
            "{s}; {ioapic_writes} IOAPIC writes; {PI_ROUNDS} rounds in {sum} ticks; timed out: {}; L1 got {} COM exits",
            l2x::rd(PI_SLOT, l2x::D_TIMEOUT),
            spy.com_io
        ),
    );
}

/// CPU 1: the posted-interrupt VM's other vCPU (`l2x_pi_wait` on the same
/// EPT12), with posted interrupts, its virtual APIC ID 1, its
/// descriptor's NDST this CPU; each `EXIT_EOI` ends the interrupt in its
/// virtual APIC. Check `pi-vcpu`.
fn pi_receiver(c: &mut Checks, hv: &Hv) {
    c.skip("pi-loop", format_args!("CPU 0's"));
    if !meet(round::PI_VM) {
        return c.check("pi-vcpu", false, format_args!("the other CPU never came"));
    }
    let [vmcs, vapic, desc] = [1, 2, 3].map(|i| mem::page(pg::VMCS_SLOT + i));
    mem::zero_page(vapic);
    mem::zero_page(desc);
    mem::wr32(vapic + 0x20, 1 << 24); // the virtual APIC ID the IOAPIC names
    mem::wr8(desc + 34, PI_NV);
    mem::wr32(desc + 36, smp::apic_id() << 8); // NDST, xAPIC mode
    let mut ctls = hv.ctls;
    ctls.entry |= entry::IA32E_MODE_GUEST;
    ctls.pin |= pin::EXT_INTR_EXITING | pin::POSTED_INTERRUPTS;
    ctls.proc |= proc::USE_TPR_SHADOW | proc::SECONDARY;
    ctls.proc2 |= proc2::VIRTUAL_INTR_DELIVERY;
    ctls.exit |= exit::ACK_INTR_ON_EXIT;
    let caps = &hv.caps;
    let offered = caps.pin.can_set(ctls.pin)
        && caps.proc.can_set(ctls.proc)
        && caps.proc2.can_set(ctls.proc2)
        && caps.exit.can_set(ctls.exit);
    if !offered {
        return c.check(
            "pi-vcpu",
            false,
            format_args!("posted interrupts not offered"),
        );
    }
    let fill = || -> Result<(), (u32, VmFail)> {
        vmcs::write_host_state(caps, cpu::cr3())?;
        vmcs::write_guest_state64(caps, l2x!(l2x_pi_wait))?;
        vmcs::write_controls(caps, &ctls)?;
        vmcs::w(EPT_POINTER, PI_EPTP.load(Ordering::SeqCst))?;
        vmcs::w(GUEST_RSP, l2x::PI_WAIT_STACK)?;
        vmcs::w(VIRTUAL_APIC_ADDR, vapic)?;
        vmcs::w(TPR_THRESHOLD, 0)?;
        vmcs::w(POSTED_INTR_NV, PI_NV as u64)?;
        vmcs::w(POSTED_INTR_DESC, desc)?;
        vmcs::w(GUEST_INTR_STATUS, 0)?;
        for i in 0..4 {
            vmcs::w(EOI_EXIT_BITMAP0 + 2 * i, 0)?;
        }
        Ok(())
    };
    let mut vm = Vm::new(vmcs);
    if let Err(e) = vmcs::init_region(caps, vmcs) {
        return c.check("pi-vcpu", false, format_args!("VMCLEAR: {e:?}"));
    }
    if let Err(e) = vm.load() {
        return c.check("pi-vcpu", false, format_args!("VMPTRLD: {e:?}"));
    }
    if let Err((f, e)) = fill() {
        return c.check("pi-vcpu", false, format_args!("VMWRITE {f:#x}: {e:?}"));
    }
    let (mut eois, mut last) = (0u64, None);
    for _ in 0..100_000 {
        let e = vm.enter();
        let Some(x) = e.exit().copied() else {
            last = Some(msg!("{e:?}"));
            break;
        };
        match (x.basic(), vm.regs.rax) {
            (reason::VMCALL, l2x::EXIT_EOI) => {
                eoi(vapic, l2x::PI_VECTOR);
                eois += 1;
                skip(&x);
            }
            (reason::VMCALL, l2x::EXIT_DONE) => break,
            _ => {
                last = Some(msg!("{x}"));
                break;
            }
        }
    }
    c.check(
        "pi-vcpu",
        last.is_none() && eois == PI_ROUNDS,
        format_args!(
            "{eois} interrupts taken and ended; {}",
            match &last {
                Some(m) => m.as_str(),
                None => "done",
            }
        ),
    );
}

/// Ends interrupt `vector` in a virtual-APIC page and VMCS12's SVI, as the
/// EOI virtualization would (SDM 30.1.4): nothing else is in service.
fn eoi(vapic: u64, vector: u8) {
    let isr = vapic + 0x100 + (vector as u64 / 32) * 0x10;
    mem::wr32(isr, mem::rd32(isr) & !(1 << (vector % 32)));
    let status = vmx::rd(GUEST_INTR_STATUS);
    let _ = vmx::vmwrite(GUEST_INTR_STATUS, status & 0xff);
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
