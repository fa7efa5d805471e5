//! Starting the application processors (SDM Vol. 3A 9.4.4): each AP gets
//! INIT, then start-up IPIs naming a page below 1 MiB where the trampoline
//! (`boot::ap_trampoline`, shared with the scenario guests) takes it from
//! real mode to long mode, and `ap_entry64` onto its own stack, into
//! [`ap_main`]: its own GDT and TSS, the check that it is the boot CPU's
//! kind (`cpus::compatible`), VMX root operation with its own VMXON
//! region. Then it helps zero the cloud VM's RAM (`zero_ram`) and takes
//! its job once the boot CPU has built the cloud VM: its vCPU (waiting for
//! the cloud VM's own start-up IPI) and the run loop, or being held in VMX
//! root, where INIT is blocked. APs start one at a time; an AP that does
//! not answer in time is sent INIT again (which stops it) and left out.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use boot::ap_trampoline::{self, param};
use boot::memmap::RangeSet;
use log::{info, warn};

use super::bringup::{self, FirstState, VcpuTemplate};
use super::fault::fatal;
use super::platform::Hardware;
use super::pool::{alloc_frames, PoolTables};
use super::{apic, cpu, cpu_loop, tables, vmx as vmxi, zero_ram};
use crate::cpus::{self, CpuKind, HostCpus, Mismatch, TRAMPOLINE_SIZE};
use crate::machine::shared::SharedMachine;
use crate::mm::frames::FRAME;
use crate::mm::paging::{self, Ia32e, PageAttr, PageSize};
use crate::vmx::requirements;

/// Each AP's stack, with an unmapped guard below it, in its own slot of
/// L0's address space (PML4 entry 508, clear of the image and identity map).
const STACKS: u64 = 0xffff_fe00_0000_0000;
const STACK_SIZE: u64 = 64 * 1024;
const STACK_SLOT: u64 = 2 * STACK_SIZE;
/// The double-fault and NMI stacks (no guard: they are used once).
const IST_SIZE: u64 = 8 * 1024;

/// Where the trampoline's page holds L0's own tables, which `ap_entry64`
/// switches to (the trampoline runs under temporary ones, pages 1-3 of
/// the trampoline: the first 2 MiB identity-mapped, L0's image through a
/// copy of L0's top PML4 entry).
const PARAM_L0_CR3: usize = param::FREE;

// The shared trampoline (`boot::ap_trampoline`) jumps here in long mode
// under the temporary tables with RBX = its page: L0's tables, then the
// AP's stack, before anything touches a stack.
core::arch::global_asm!(
    r#"
    .text
    .global ap_entry64
ap_entry64:
    movq 0xf30(%rbx), %rax
    movq %rax, %cr3
    movq 0xf08(%rbx), %rsp
    movq 0xf10(%rbx), %rdi
    xorl %ebp, %ebp
    call {main}
    ud2
"#,
    main = sym ap_main,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    fn ap_entry64();
}

/// Where an AP is, as it tells the boot CPU.
const WAITING: u32 = 0;
const RUNNING: u32 = 1;
const IN_VMX_ROOT: u32 = 2;
const FAILED: u32 = 3;
/// Its vCPU is built and registered, waiting for the cloud VM's SIPI.
const VCPU_READY: u32 = 4;

/// What the APs that run the cloud VM share: the machine-wide part behind
/// its lock, how to build a vCPU, the hardware handle each CPU copies.
pub struct ApShare {
    pub machine: &'static SharedMachine,
    pub template: VcpuTemplate,
    pub hw: Hardware,
}

/// What an AP is started for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Job {
    /// A vCPU of the cloud VM, once the boot CPU hands over the share.
    Run,
    Hold,
}

/// Why an AP was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApFailure {
    /// No answer to INIT-SIPI-SIPI in time.
    NoAnswer,
    /// The APIC cannot address it.
    Apic(apic::ApicError),
    /// It lacks what L0 requires.
    Requirement(&'static str),
    /// It is not the boot CPU's kind.
    Mismatch(Mismatch),
    Vmxon(&'static str),
}

impl core::fmt::Display for ApFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ApFailure::NoAnswer => write!(f, "no answer to INIT and start-up IPIs"),
            ApFailure::Apic(e) => write!(f, "the APIC cannot reach it ({e:?})"),
            ApFailure::Requirement(e) | ApFailure::Vmxon(e) => write!(f, "{e}"),
            ApFailure::Mismatch(m) => write!(f, "{m}"),
        }
    }
}

/// What the boot CPU and one AP share while it starts.
struct Handoff {
    apic_id: u32,
    job: Job,
    bsp: CpuKind,
    state: AtomicU32,
    failure: spin::Mutex<Option<ApFailure>>,
    /// What a `Job::Run` AP builds its vCPU from, once the boot CPU set it.
    share: AtomicPtr<ApShare>,
}

/// One started AP.
pub struct StartedAp {
    pub apic_id: u32,
    /// Whether it runs the cloud VM (else it is held).
    pub runs: bool,
    handoff: &'static Handoff,
}

/// What starting the APs gave.
pub struct Started {
    /// The APs in VMX root.
    pub up: Vec<StartedAp>,
    /// The APs left out: not in VMX operation.
    pub left_out: usize,
    pub bsp: u32,
}

/// A TSC rate for the start-up delays when the PIT gave none: high, so
/// that the delays are at least what the SDM asks.
const ASSUMED_TSC_HZ: u64 = 5_000_000_000;

/// Starts every AP of `cpus` into VMX root, where each helps zero the
/// cloud VM's RAM; those in `cpus.aps` will run the cloud VM (when `runs`:
/// [`run_cloud_vm`]), the others are held there. Says on the management
/// line which were left out and why.
pub fn start_all(
    cpus: &HostCpus,
    bsp: CpuKind,
    ram: &RangeSet,
    tsc_hz: Option<u64>,
    runs: bool,
) -> Started {
    if !cpus.bsp_listed && !cpus.aps.is_empty() {
        warn!(
            "the firmware's CPU list lacks the boot CPU (APIC ID {:#x})",
            cpus.bsp
        );
    }
    let jobs: Vec<(u32, Job)> = cpus
        .aps
        .iter()
        .map(|&id| (id, if runs { Job::Run } else { Job::Hold }))
        .chain(cpus.held.iter().map(|&id| (id, Job::Hold)))
        .collect();
    let (up, out) = match cpus::trampoline(ram) {
        _ if jobs.is_empty() => (Vec::new(), Vec::new()),
        Some(at) => start_aps(&jobs, bsp, at, tsc_hz.unwrap_or(ASSUMED_TSC_HZ)),
        None => {
            warn!("no usable RAM below 1 MiB for the AP start-up code: the boot CPU runs alone");
            (Vec::new(), Vec::new())
        }
    };
    for (id, why) in &out {
        warn!("CPU APIC ID {id:#x} left out: {why}");
    }
    Started {
        left_out: jobs.len() - up.len(),
        up,
        bsp: cpus.bsp,
    }
}

/// Hands the built cloud VM to the APs that run it and waits until each
/// has its vCPU waiting for a SIPI (before L1's first instruction, so that
/// L1's start-up IPIs find them); says which CPUs run and which are held.
pub fn run_cloud_vm(started: &Started, share: Option<&'static ApShare>, tsc_hz: Option<u64>) {
    for a in &started.up {
        if let (true, Some(s)) = (a.runs, share) {
            a.handoff
                .share
                .store(s as *const ApShare as *mut ApShare, Ordering::Release);
        }
    }
    let second = tsc_hz.unwrap_or(ASSUMED_TSC_HZ);
    let mut running = 0;
    for a in &started.up {
        let ready = a.runs
            && share.is_some()
            && spin(second, || {
                a.handoff.state.load(Ordering::Acquire) == VCPU_READY
            });
        match (a.runs, ready) {
            (true, true) => {
                running += 1;
                info!("CPU APIC ID {:#x}: runs the cloud VM", a.apic_id)
            }
            (true, false) => warn!(
                "CPU APIC ID {:#x}: its vCPU was not ready within a second; the cloud VM may not start it",
                a.apic_id
            ),
            (false, _) => info!("CPU APIC ID {:#x}: held in VMX root", a.apic_id),
        }
    }
    info!(
        "CPUs: {} of {} run the cloud VM (boot CPU APIC ID {:#x})",
        1 + running,
        1 + started.up.len() + started.left_out,
        started.bsp
    );
}

/// Starts the APs of `jobs` one after the other with the trampoline at `at`
/// (`cpus::trampoline`, usable RAM L0 borrows and gives back as it was);
/// returns the APs in VMX root and the ones left out with why.
fn start_aps(
    jobs: &[(u32, Job)],
    bsp: CpuKind,
    at: u64,
    tsc_hz: u64,
) -> (Vec<StartedAp>, Vec<(u32, ApFailure)>) {
    let (mut up, mut out) = (Vec::new(), Vec::new());
    let len = TRAMPOLINE_SIZE as usize;
    // SAFETY: `at` is usable RAM below 1 MiB, identity-mapped, that no one
    // uses while L0 boots (the cloud VM is not built yet); saved here and
    // restored below.
    let area = unsafe { core::slice::from_raw_parts_mut(at as *mut u8, len) };
    let saved = Vec::from(&area[..]);
    install(area, at);
    let us = |n: u64| n * tsc_hz / 1_000_000;
    for (i, &(id, job)) in jobs.iter().enumerate() {
        let h: &'static Handoff = Box::leak(Box::new(Handoff {
            apic_id: id,
            job,
            bsp,
            state: AtomicU32::new(WAITING),
            failure: spin::Mutex::new(None),
            share: AtomicPtr::new(core::ptr::null_mut()),
        }));
        let put =
            |area: &mut [u8], o: usize, v: u64| area[o..o + 8].copy_from_slice(&v.to_le_bytes());
        put(area, param::STACK, stack(i));
        put(area, param::ARG, h as *const Handoff as u64);
        let answered = |h: &Handoff| h.state.load(Ordering::Acquire) != WAITING;
        let sent = apic::send_init(id).and_then(|_| {
            spin(us(10_000), || false);
            apic::send_startup(id, (at >> 12) as u8)?;
            if !spin(us(200), || answered(h)) {
                apic::send_startup(id, (at >> 12) as u8)?;
            }
            Ok(())
        });
        if let Err(e) = sent {
            out.push((id, ApFailure::Apic(e)));
            continue;
        }
        // Running: it finishes its checks and VMXON quickly; allow long.
        spin(us(200_000), || answered(h));
        spin(us(1_000_000), || {
            h.state.load(Ordering::Acquire) >= IN_VMX_ROOT
        });
        match h.state.load(Ordering::Acquire) {
            IN_VMX_ROOT => up.push(StartedAp {
                apic_id: id,
                runs: job == Job::Run,
                handoff: h,
            }),
            FAILED => out.push((id, (*h.failure.lock()).unwrap_or(ApFailure::NoAnswer))),
            _ => {
                // Hold it: it must not run the trampoline for the next AP.
                let _ = apic::send_init(id);
                out.push((id, ApFailure::NoAnswer));
            }
        }
    }
    area.copy_from_slice(&saved);
    (up, out)
}

/// Copies the trampoline to `at` and builds its temporary page tables.
fn install(area: &mut [u8], at: u64) {
    // SAFETY: linker symbols around the trampoline's bytes in L0's image.
    let code = unsafe {
        let start = &ap_trampoline_start as *const u8;
        let end = &ap_trampoline_end as *const u8;
        core::slice::from_raw_parts(start, end as usize - start as usize)
    };
    assert!(
        code.len() < param::CR3,
        "the AP trampoline outgrew its page"
    );
    area.fill(0);
    area[..code.len()].copy_from_slice(code);
    let root = cpu::read_cr3() & !0xfff;
    // SAFETY: L0's PML4, a pool frame, identity-mapped.
    let top = unsafe { (root as *const u64).add(511).read() };
    let page = |n: usize, entry: usize| n * FRAME as usize + entry * 8;
    put(area, page(1, 0), (at + 0x2000) | 3); // PML4[0] -> PDPT
    put(area, page(1, 511), top); // L0's image
    put(area, page(2, 0), (at + 0x3000) | 3); // PDPT[0] -> PD
    put(area, page(3, 0), 0x83); // 2 MiB at 0: present, writable, large
    put(area, param::CR3, at + 0x1000);
    put(area, PARAM_L0_CR3, root);
    put(area, param::EFER, 1 << 11); // NXE: L0's tables use XD
    put(area, param::CR0, 1 << 16); // WP
    put(area, param::ENTRY, ap_entry64 as *const () as u64);
}

fn put(area: &mut [u8], offset: usize, v: u64) {
    ap_trampoline::put(area, offset, v);
}

/// Maps AP `i`'s stack (pool frames) in its slot and returns its top.
fn stack(i: usize) -> u64 {
    let frames = alloc_frames((STACK_SIZE / FRAME) as usize, "AP stack");
    let top = STACKS + (i as u64 + 1) * STACK_SLOT;
    let rw = PageAttr {
        writable: true,
        executable: false,
        uncached: false,
    };
    let root = cpu::read_cr3() & !0xfff;
    paging::map(
        &mut PoolTables,
        &Ia32e,
        root,
        top - STACK_SIZE,
        frames,
        STACK_SIZE,
        rw,
        PageSize::Size4K,
    )
    .unwrap_or_else(|e| fatal(format_args!("AP stack: {e}")));
    top
}

/// Spins until `done` or `ticks` TSC ticks passed; whether it is done.
fn spin(ticks: u64, mut done: impl FnMut() -> bool) -> bool {
    let t0 = cpu::rdtsc();
    while cpu::rdtsc().wrapping_sub(t0) < ticks {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    done()
}

/// An AP in L0's address space on its own stack.
extern "C" fn ap_main(h: &'static Handoff) -> ! {
    tables::init_ap(
        alloc_frames((2 * IST_SIZE / FRAME) as usize, "AP IST stacks"),
        IST_SIZE,
    );
    h.state.store(RUNNING, Ordering::Release);
    let fail = |f: ApFailure| -> ! {
        *h.failure.lock() = Some(f);
        h.state.store(FAILED, Ordering::Release);
        cpu::halt_forever()
    };
    let features =
        requirements::cpu_features(cpu::cpuid).unwrap_or_else(|e| fail(ApFailure::Requirement(e)));
    if cpus::apic_id(cpu::cpuid) != h.apic_id {
        fail(ApFailure::Requirement(
            "its APIC ID differs from the firmware's",
        ));
    }
    let Some(vmx) = vmxi::read_caps() else {
        fail(ApFailure::Requirement("CPUID reports no VMX"))
    };
    let kind = CpuKind { features, vmx };
    let compatible = cpus::compatible(&h.bsp, &kind);
    // A CPU unfit to run the cloud VM still enters VMX root to be held there.
    vmxi::enable(features.xsave).unwrap_or_else(|e| fail(ApFailure::Vmxon(e)));
    if let Err(m) = compatible {
        fail(ApFailure::Mismatch(m));
    }
    h.state.store(IN_VMX_ROOT, Ordering::Release);
    zero_ram::help_until_closed();
    if h.job == Job::Hold {
        cpu::halt_forever()
    }
    let share = loop {
        let p = h.share.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: set once by `run_cloud_vm` from a leaked ApShare.
            break unsafe { &*p };
        }
        core::hint::spin_loop();
    };
    let mut vcpu = bringup::vcpu(&share.template, FirstState::WaitForSipi);
    let mut hw = share.hw.clone();
    let mut m = share.machine.lock();
    vcpu.register(&mut m, h.apic_id);
    vcpu.wait_for_sipi(&mut m, &mut hw);
    drop(m);
    h.state.store(VCPU_READY, Ordering::Release);
    cpu_loop::run(&mut vcpu, share.machine, &mut hw)
}
