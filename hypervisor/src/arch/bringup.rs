//! Bring-up of the cloud VM on one CPU: the privileged half of building it
//! (pool frames, VMCS regions, VMCLEAR/VMPTRLD, the host state read from
//! the CPU). What to build was decided by `l1_plan` and the host-tested
//! modules it calls (`vmx::requirements`, `vcpu::setup`).

use boot::memmap::{Range, RangeSet};
use log::info;

use super::cpu;
use super::fault::fatal;
use super::platform::{hw_random, Hardware};
use super::pool::alloc_frames;
use super::run::{self, GuestRegs};
use super::tables;
use super::vmx::{self as vmxi, CurrentVmcs};
use crate::console::Console;
use crate::guest_mem::GuestMemory;
use crate::l1_plan::CloudVm;
use crate::machine::ept01::Ept01;
use crate::machine::shutdown::ShutdownWatch;
use crate::machine::Machine;
use crate::mm::frames::FRAME;
use crate::mm::layout::FirmwareMemory;
use crate::nested::{self, HostVmx, Nested, Vmcs02Pages};
use crate::regs::IA32_EFER;
use crate::vcpu::l0_ports::L0Ports;
use crate::vcpu::{cpuid::CpuidContext, msr, setup, Vcpu};
use crate::vmx::caps::{self, VmxCaps};
use crate::vmx::guest_cr::CrPolicy;
use crate::vmx::requirements::{self, CpuFeatures};
use crate::vmx::{ept, Field as F, Vmcs};

const PAT: u32 = 0x277;
const L1_VPID: u16 = 1;

/// L1's RAM: everything usable but L0's pool.
pub fn l1_ram(fw: &FirmwareMemory, pool: Range) -> RangeSet {
    let mut ram = fw.ram.clone();
    let _ = ram.remove(pool);
    ram
}

/// Builds the cloud VM on this CPU from its plan: L1's memory written,
/// EPT01, L0's bitmaps, VMCS01 (and VMCS02 and the shadow VMCS), the first
/// guest state; returns the boot vCPU, the machine-wide part, and the
/// template the other vCPUs are built from.
#[allow(clippy::too_many_arguments)]
pub fn cloud_vm(
    fw: &FirmwareMemory,
    l0: &RangeSet,
    vm: &CloudVm,
    key: Option<[u8; 32]>,
    tsc_hz: Option<u64>,
    vcaps: &VmxCaps,
    cpu: &CpuFeatures,
    ept02_tables: usize,
    ports: L0Ports,
    hw: &mut Hardware,
) -> (Vcpu, Machine, VcpuTemplate) {
    let (plan, started) = (&vm.load, &vm.started);
    for w in &plan.writes {
        let r = match w {
            boot::loader::Write::Bytes { gpa, data } => hw.mem.write(*gpa, data),
            boot::loader::Write::Zero { gpa, len } => hw.mem.zero(*gpa, *len),
        };
        r.unwrap_or_else(|e| fatal(format_args!("loading the cloud VM: {e}")));
    }

    // EPT01: identity except L0's frames (its pool and the VT-d units'
    // registers), which resolve to a scratch page.
    let regions = fw
        .ept_regions(l0)
        .unwrap_or_else(|e| fatal(format_args!("EPT01: {e}")));
    let sink = alloc_frames(1, "scratch page");
    // SAFETY: a fresh pool frame: all ones, like reads of absent memory.
    unsafe { core::ptr::write_bytes(sink as *mut u8, 0xff, FRAME as usize) };
    let max = requirements::ept_page_size(vcaps, cpu.gib_pages);
    let apic_page = Some(super::apic::base());
    let ept01 = Ept01::build(
        &mut hw.tables,
        &regions,
        l0.clone(),
        fw.ept_limit(),
        sink,
        max,
        apic_page,
    )
    .unwrap_or_else(|e| fatal(format_args!("EPT01: {e}")));

    info!(
        "shadow devices: sealing key {}",
        if key.is_some() {
            "provisioned"
        } else {
            "absent (save/restore refused)"
        }
    );
    // Bitmaps, one set for every vCPU: L0's UART and the emulator's
    // shutdown port; the MSRs L0 keeps; for VMCS02, L0's ports for L2 (the
    // same as for L1) and all ones.
    let io = msr::l1_io_bitmap(&ports);
    let io_pages = alloc_frames(2, "I/O bitmaps");
    let msr_page = alloc_frames(1, "MSR bitmap");
    let (io_l0, io_all) = (
        alloc_frames(2, "I/O bitmaps"),
        alloc_frames(2, "I/O bitmaps"),
    );
    // SAFETY: fresh pool frames of the right sizes.
    unsafe {
        core::ptr::copy_nonoverlapping(io.0.as_ptr(), io_pages as *mut u8, 8192);
        core::ptr::copy_nonoverlapping(
            msr::l2_io_bitmap(&ports).0.as_ptr(),
            io_l0 as *mut u8,
            8192,
        );
        core::ptr::write_bytes(io_all as *mut u8, 0xff, 8192);
        core::ptr::copy_nonoverlapping(msr::l1_msr_bitmap().0.as_ptr(), msr_page as *mut u8, 4096);
    }

    let vpid = requirements::vpid_usable(vcaps);
    let offer_vmx = requirements::nested_vmx_possible(vcaps);
    let poll_ticks = requirements::poll_ticks(tsc_hz);
    let l0_timer = requirements::preemption_timer(vcaps, poll_ticks);
    let controls = setup::l1_controls(vcaps, vpid, l0_timer.is_some())
        .unwrap_or_else(|e| fatal(format_args!("{e}")));
    // L1's VMREAD/VMWRITE of the fields a guest hypervisor uses at every
    // exit go to a shadow VMCS without exiting (nested/shadow_vmcs.rs);
    // the control is on while L1 is in VMX operation.
    let shadow_bitmaps = (offer_vmx
        && vcaps.allows(caps::Control::Secondary, caps::secondary::VMCS_SHADOWING))
    .then(|| {
        let pml_index =
            nested::shadow_vmcs::pml_index_shadowed(&nested::caps::NestedCaps::new(vcaps));
        let (read, write) = nested::shadow_vmcs::bitmaps(pml_index);
        let (rp, wp) = (
            alloc_frames(1, "VMREAD bitmap"),
            alloc_frames(1, "VMWRITE bitmap"),
        );
        // SAFETY: fresh pool frames.
        unsafe {
            core::ptr::copy_nonoverlapping(read.as_ptr(), rp as *mut u8, 4096);
            core::ptr::copy_nonoverlapping(write.as_ptr(), wp as *mut u8, 4096);
        }
        (rp, wp)
    });
    use caps::secondary as s;
    let template = VcpuTemplate {
        controls,
        policy: setup::l1_cr_policy(vcaps, offer_vmx),
        pages: setup::ControlPages {
            io_bitmap_a: io_pages,
            io_bitmap_b: io_pages + FRAME,
            msr_bitmap: msr_page,
            eptp: pages_eptp(&ept01),
            vpid: L1_VPID,
        },
        vpid,
        shadow_bitmaps,
        l0_timer,
        poll_ticks,
        cpuid: CpuidContext {
            guest_cr4: 0,
            vmx: offer_vmx,
            rdtscp: controls.has_secondary(s::ENABLE_RDTSCP),
            invpcid: controls.has_secondary(s::ENABLE_INVPCID),
            xsaves: controls.has_secondary(s::ENABLE_XSAVES),
            tsc_hz: tsc_hz.unwrap_or(0),
        },
        cpu: *cpu,
        vcaps: *vcaps,
        vmcs02_io: (io_l0, io_all),
        ept02_tables,
    };
    info!(
        "starting the cloud VM: {started}, {} MiB of RAM, nested VMX {}",
        hw.mem.ranges().total() >> 20,
        if offer_vmx {
            "offered"
        } else {
            "not possible on this CPU"
        }
    );
    let vcpu = vcpu(&template, FirstState::Boot(&plan.entry));
    let machine = Machine {
        ept: ept01,
        shadow: crate::shadow::Shadow::new(key.map(sealing_key), hw_random),
        console: Console::default(),
        l0_ports: ports,
        shutdown: ShutdownWatch::default(),
        ap_wait: Default::default(),
        vmcs12_owners: Default::default(),
        vmx_operation: Default::default(),
        cpus: alloc::vec::Vec::new(),
        bios: None,
    };
    (vcpu, machine, template)
}

/// What every vCPU of the cloud VM is built from, decided once on the boot
/// CPU: its controls and L0's pages they point at (shared by all vCPUs:
/// L0 never writes them after boot).
#[derive(Clone)]
pub struct VcpuTemplate {
    controls: setup::L1Controls,
    policy: CrPolicy,
    pages: setup::ControlPages,
    vpid: bool,
    /// The VMREAD and VMWRITE bitmaps, when VMCS shadowing is used.
    shadow_bitmaps: Option<(u64, u64)>,
    /// The preemption timer that brings every CPU back to L0 every 2 ms:
    /// the console CPU serves the management line, every CPU picks up
    /// EPT01 changes, and an L1 that waits in MWAIT for a store it missed
    /// goes on (Bochs's MONITOR does not see every CPU's stores).
    l0_timer: Option<u64>,
    poll_ticks: u64,
    cpuid: CpuidContext,
    cpu: CpuFeatures,
    vcaps: VmxCaps,
    /// VMCS02's I/O bitmaps: L0's ports only, and all ones.
    vmcs02_io: (u64, u64),
    /// The EPT02 tables each CPU keeps at most (nested/ept02.rs).
    ept02_tables: usize,
}

/// How a vCPU starts.
pub enum FirstState<'a> {
    /// The boot vCPU, at the loaded kernel's entry.
    Boot(&'a boot::loader::Entry),
    /// An AP of the cloud VM: in the state after INIT, waiting for the
    /// start-up IPI its guest sends (vcpu/reset.rs).
    WaitForSipi,
}

/// Builds a vCPU of the cloud VM on this CPU: its VMCS01 (current on
/// return), VMCS02 and shadow VMCS, with this CPU's host state.
pub fn vcpu(t: &VcpuTemplate, first: FirstState) -> Vcpu {
    let vmcs = alloc_frames(1, "VMCS01");
    let vmcs02 = alloc_frames(1, "VMCS02");
    let shadow = alloc_frames(1, "shadow VMCS");
    let msr02 = alloc_frames(1, "MSR bitmap");
    // SAFETY: a fresh pool frame.
    unsafe { core::ptr::write_bytes(msr02 as *mut u8, 0xff, 4096) };
    // Filled with all ones at each entry that uses it (nested/entry.rs).
    let vapic_unbacked = alloc_frames(1, "virtual-APIC page");
    // SAFETY: fresh frames; revision id first (bit 31 marks the shadow
    // VMCS); VMCLEAR puts them in the clear state; VMCS01 ends up current.
    unsafe {
        for (f, indicator) in [(vmcs, 0), (vmcs02, 0), (shadow, 1u32 << 31)] {
            (f as *mut u32).write(t.vcaps.revision() | indicator);
            vmxi::vmclear(f).unwrap_or_else(|e| fatal(format_args!("VMCLEAR: {e}")));
        }
        vmxi::vmptrld(vmcs02).unwrap_or_else(|e| fatal(format_args!("VMPTRLD: {e}")));
    }
    let host = setup::HostState {
        cr0: cpu::read_cr0(),
        cr3: cpu::read_cr3(),
        cr4: cpu::read_cr4(),
        cs: tables::CODE_SELECTOR,
        ds: tables::DATA_SELECTOR,
        tr: tables::TSS_SELECTOR,
        tr_base: tables::tss_base(),
        gdtr_base: cpu::gdt_base(),
        idtr_base: cpu::idt_base(),
        // SAFETY: EFER and PAT exist on every CPU with VMX.
        efer: unsafe { cpu::rdmsr(IA32_EFER) },
        // SAFETY: as EFER.
        pat: unsafe { cpu::rdmsr(PAT) },
        rip: run::exit_entry_point(),
    };
    // SAFETY: VMCS02 is current; its host state never changes.
    setup::write_host_state(&mut unsafe { CurrentVmcs::new() }, &host);
    // SAFETY: VMCS01 is L0's, cleared above.
    unsafe { vmxi::vmptrld(vmcs).unwrap_or_else(|e| fatal(format_args!("VMPTRLD: {e}"))) };
    // SAFETY: VMCS01 is current.
    let mut v = unsafe { CurrentVmcs::new() };
    setup::write_host_state(&mut v, &host);
    let l0_timer = t.l0_timer;
    setup::write_controls(&mut v, &t.controls, &t.pages, &t.policy);
    if let Some((rp, wp)) = t.shadow_bitmaps {
        v.write(F::VMREAD_BITMAP, rp);
        v.write(F::VMWRITE_BITMAP, wp);
    }
    if let Some(timer) = l0_timer {
        // Not saved on exit: reloaded at every entry (SDM 26.7.4).
        v.write(F::VMX_PREEMPTION_TIMER_VALUE, timer);
    }
    let mut regs = GuestRegs::default();
    match first {
        FirstState::Boot(entry) => {
            for (reg, value) in setup::write_entry_state(&mut v, entry, &t.policy) {
                regs.gpr[reg] = value;
            }
        }
        FirstState::WaitForSipi => {
            crate::vcpu::reset::write_init_state(&mut v, &t.policy);
            regs.gpr[GuestRegs::RDX] = crate::vcpu::reset::init_rdx(cpu::cpuid);
        }
    }
    let mtrr = if t.cpu.mtrr {
        // SAFETY: MTRRs exist (CPUID.1:EDX[12]); only the ones MTRRCAP lists are read.
        let cap = unsafe { cpu::rdmsr(msr::IA32_MTRRCAP) };
        msr::MtrrShadow::capture(cap, t.cpu.maxphyaddr, |m| {
            // SAFETY: one of the MTRRs MTRRCAP lists.
            unsafe { cpu::rdmsr(m) }
        })
    } else {
        msr::MtrrShadow::capture(0, t.cpu.maxphyaddr, |_| 0)
    };
    let nested_pages = Vmcs02Pages {
        io_l0: t.vmcs02_io.0,
        io_all: t.vmcs02_io.1,
        msr02,
        vapic_unbacked,
    };
    let ncaps = nested::caps::NestedCaps::new(&t.vcaps);
    let host = HostVmx {
        caps: t.vcaps,
        policy: t.policy,
        eptp01: t.pages.eptp,
        msr_bitmap01: t.pages.msr_bitmap,
        vmcs_phys: [vmcs, vmcs02, shadow],
        vpid: if t.vpid { L1_VPID } else { 0 },
        maxphyaddr: t.cpu.maxphyaddr,
        l0_timer,
    };
    let mut nested = Nested::new(
        ncaps,
        t.cpu.maxphyaddr,
        nested_pages,
        t.shadow_bitmaps.is_some(),
    );
    nested.cap_ept02(t.ept02_tables);
    Vcpu::new(regs, t.cpuid, mtrr, host, nested, t.poll_ticks)
}

/// The sealing key, on the CPU's AES and carry-less multiply when it has
/// them (a save or restore then costs a few thousand instructions instead
/// of ~80 000: under an emulator that is most of its time).
fn sealing_key(k: [u8; 32]) -> shadow_devices::SealKey {
    // SAFETY: CR4.OSFXSR is set (enable_vmx), and the code keeps the
    // guests' vector registers as they were.
    let key = unsafe { shadow_devices::SealKey::new_accelerated(&k) };
    info!(
        "sealing key provisioned; AES-256-GCM in {}",
        if key.accelerated() {
            "AES-NI and PCLMULQDQ"
        } else {
            "software"
        }
    );
    key
}

fn pages_eptp(e: &Ept01) -> u64 {
    ept::eptp(e.root, false)
}
