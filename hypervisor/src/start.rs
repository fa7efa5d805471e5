//! Boot to cloud VM, in order: from the multiboot2 entry to the first VM
//! entry. Every decision is made by a host-tested module (`config`,
//! `mm::layout`, `vmx::requirements`, `l1_plan`); the privileged steps are
//! in `arch`. This file is the sequence.

use alloc::boxed::Box;
use alloc::vec::Vec;

use boot::memmap::{Range, RangeSet};
use boot::multiboot2::MemoryRegion;
use log::{info, warn};

use crate::acpi::spmi::{BmcInterface, BmcSpace};
use crate::arch::fault::fatal;
use crate::arch::iommu as arch_iommu;
use crate::arch::l1_ram::L1Ram;
use crate::arch::loader_memory;
use crate::arch::platform::Hardware;
use crate::arch::pool::{self, PoolTables};
use crate::arch::{ap_boot, bringup, cpu, cpu_loop, image, tables, tsc, vmx as vmxi, zero_ram};
use crate::config::{self, SerialChoice};
use crate::l1_plan::{self, BootModule};
use crate::logger;
use crate::machine::shared::SharedMachine;
use crate::mm::layout::{chunks, l1_memory_map, FirmwareMemory};
use crate::mm::paging::PageSize;
use crate::shadow::limits::Limits;
use crate::vcpu::bios_memory;
use crate::vcpu::l0_ports::L0Ports;
use crate::vmx::caps;
use crate::vmx::requirements;
use crate::{acpi, cpus, iommu};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn start(magic: u32, info_addr: u64) -> ! {
    tables::init();
    let (bi, info_range) = loader_memory::boot_info(magic, info_addr);
    let cfg = config::parse(bi.cmdline(), |_| {});
    if let SerialChoice::Port(p) = cfg.serial {
        logger::init_serial(p);
    }
    logger::init_log(cfg.log_level);
    let loader = match bi.loader_name() {
        "" => "?",
        name => name,
    };
    info!("L0 cloud hypervisor {VERSION} (booted by {loader})");
    let cfg = config::parse(bi.cmdline(), |e| warn!("command line: {e}"));

    // The CPU: what L0 cannot run without.
    let cpu = requirements::cpu_features(cpu::cpuid).unwrap_or_else(|e| fatal(format_args!("{e}")));
    let vcaps = vmxi::read_caps().unwrap_or_else(|| fatal(format_args!("CPUID reports no VMX")));
    requirements::check(&vcaps).unwrap_or_else(|e| fatal(format_args!("{e}")));

    // Memory: L0's pool at the top of RAM, clear of everything the loader placed.
    let fw = FirmwareMemory::new(bi.memory_map())
        .unwrap_or_else(|e| fatal(format_args!("memory map: {e}")));
    let image = image::loaded_range();
    let old_image = Range::new(image::boot_start(), image.end);
    let mut occupied = RangeSet::new();
    let _ = occupied.insert(old_image);
    let _ = occupied.insert(info_range);
    let mut modules_size = 0;
    for m in bi.modules() {
        let r = Range::new(m.start as u64, m.end as u64);
        let _ = occupied.insert(r);
        modules_size += r.grow_to_pages().len();
    }
    let pool_size = (cfg.l0_mem + modules_size + image.len()).next_multiple_of(2 << 20);
    let pool_range = fw
        .choose_pool(pool_size, &occupied)
        .unwrap_or_else(|e| fatal(format_args!("{e}")));
    // The heap: a quarter of l0_mem (shadow/limits.rs counts on it) and
    // the ports' histories' quarter (owner/mod.rs).
    pool::init(pool_range, crate::owner::heap_for_l0_mem(cfg.l0_mem));
    info!(
        "memory: {} MiB of RAM; L0 pool {pool_range} ({} MiB)",
        fw.ram.total() >> 20,
        pool_range.len() >> 20
    );
    // The heap exists from here: the operator's console can learn who talks.
    logger::send_line(&shadow_devices::mgmt::frame(format_args!(
        "hello l0 {VERSION} abi {}",
        ultracall_abi::ABI_VERSION
    )));

    // Out of the loader's memory: what L0 still needs, then L0 itself.
    let firmware_map: Vec<MemoryRegion> = bi.memory_map().collect();
    let modules = loader_memory::copy_modules(&bi);
    let rsdp: Option<Vec<u8>> = bi.rsdp().map(|r| r.to_vec());
    // The host's CPUs, while the firmware's tables are still mapped.
    // The cloud VM's MADT omits the CPUs `cpus=N` keeps from it.
    // (`cpus_known`: whether the firmware listed them; if not, CPUs L0
    // never heard of may wait for a start-up IPI.)
    let (host, cpus_known) = match rsdp.as_deref().map(loader_memory::firmware_cpus) {
        Some(Ok((mut madt, listed))) => {
            // aps=off: the cloud VM's MADT lists the boot CPU alone.
            let cap = if cfg.aps { cfg.cpus } else { Some(1) };
            let host = cpus::plan(&listed, cpus::apic_id(cpu::cpuid), cap);
            if !host.held.is_empty() {
                acpi::madt::disable(&mut madt.bytes, &host.held);
                loader_memory::write_table(&madt);
            }
            (host, true)
        }
        other => {
            match other {
                Some(Err(e)) => warn!("ACPI: {e}; the boot CPU runs alone"),
                _ => info!("no ACPI tables from the loader: the boot CPU runs alone"),
            }
            (cpus::plan(&[], cpus::apic_id(cpu::cpuid), cfg.cpus), false)
        }
    };
    // The VT-d units, while the firmware's tables are still mapped: L0
    // takes them, and the cloud VM's ACPI no longer lists them.
    let dmar = match (cfg.iommu, rsdp.as_deref().map(loader_memory::take_dmar)) {
        (true, Some(Ok(Some(d)))) => match iommu::check_units(&d.units, &fw.ram) {
            Ok(()) => Some(d),
            Err(e) => dma_isolation_failed(e),
        },
        // The host's or the operator's choice: said, not warned about.
        (false, _) => dma_isolation_absent("iommu=off"),
        (true, None) => dma_isolation_absent("no ACPI tables from the loader"),
        (true, Some(Ok(None))) => dma_isolation_absent("no VT-d (no DMAR table)"),
        (true, Some(Err(e))) => dma_isolation_failed(e),
    };
    // L0's ports: its management UART and the in-band BMC interfaces, at
    // their default addresses and wherever the SPMI tables say.
    let mut l0_ports = L0Ports::new(logger::serial_base());
    let mut bmc_frames = Vec::new();
    match rsdp.as_deref().map(loader_memory::firmware_bmcs) {
        Some(Ok(found)) => {
            for bmc in found {
                match bmc {
                    Ok(BmcInterface {
                        kind,
                        space: BmcSpace::Io { base, count },
                    }) => {
                        info!("{kind} at ports {base:#x}+{count} (SPMI): kept from the cloud VM");
                        l0_ports.add_bmc(base, count, kind);
                    }
                    Ok(BmcInterface {
                        kind,
                        space: BmcSpace::Memory { base, len },
                    }) => {
                        info!("{kind} at {base:#x}+{len} (SPMI): kept from the cloud VM");
                        bmc_frames.push(Range::new(base, base + len).grow_to_pages());
                    }
                    Err(e) => warn!("ACPI: {e}; that BMC interface is not kept from the cloud VM"),
                }
            }
        }
        Some(Err(e)) => warn!("ACPI: {e}; BMC interfaces only at the IPMI default ports"),
        None => {}
    }
    // L0's frames, which neither L1 nor its devices reach: the pool, the
    // VT-d units' registers and memory-mapped BMC interfaces.
    let mut l0_frames = RangeSet::new();
    for r in core::iter::once(pool_range).chain(
        dmar.iter()
            .flat_map(|d| d.units.iter().map(|u| u.registers))
            .chain(bmc_frames),
    ) {
        l0_frames
            .insert(r)
            .unwrap_or_else(|e| fatal(format_args!("L0's frames: {e}")));
    }
    let named = !bi.loader_name().is_empty();
    image::relocate(&fw, image, cpu.gib_pages);
    let checksum = image::checksum();
    // The old image, the boot information and the modules GRUB loaded are
    // zeroed with the rest of the cloud VM's RAM (zero_l1_ram).
    info!(
        "L0 relocated to the pool{}",
        if named { "" } else { " (loader gave no name)" }
    );

    // VMX root operation.
    vmxi::enable(cpu.xsave).unwrap_or_else(|e| fatal(format_args!("{e}")));
    info!(
        "VMX on: VMCS revision {:#x}, EPT {}, VPID {}, VMCS shadowing {}",
        vcaps.revision(),
        match requirements::ept_page_size(&vcaps, cpu.gib_pages) {
            PageSize::Size1G => "with 1 GiB pages",
            PageSize::Size2M => "with 2 MiB pages",
            PageSize::Size4K => "with 4 KiB pages",
        },
        if requirements::vpid_usable(&vcaps) {
            "on"
        } else {
            "off"
        },
        match vcaps.allows(caps::Control::Secondary, caps::secondary::VMCS_SHADOWING) {
            true => "available",
            false => "absent",
        }
    );

    // The TSC's rate: for the AP start-up delays, and L1 is told it
    // (CPUID 0x15/0x16).
    let tsc_hz = tsc::calibrate();
    match tsc_hz {
        Some(hz) => info!(
            "TSC: {hz} Hz ({}.{:03} MHz), measured against the PIT",
            hz / 1_000_000,
            hz / 1000 % 1000
        ),
        None => {
            warn!("TSC: the PIT did not answer; the cloud VM gets the CPU's own CPUID 0x15/0x16")
        }
    }

    // The other CPUs into VMX root now: they help zero the cloud VM's RAM
    // and take their vCPUs once it is built (`ap_boot::run_cloud_vm`).
    let kind = cpus::CpuKind {
        features: cpu,
        vmx: vcaps,
    };
    let runs_aps = cpus::l1_aps_possible(&vcaps);
    if !runs_aps && !host.aps.is_empty() {
        warn!(
            "VMX lacks the wait-for-SIPI activity state: the cloud VM runs on the boot CPU alone"
        );
    }
    let started = if cfg.aps {
        ap_boot::start_all(&host, kind, &fw.ram, tsc_hz, runs_aps)
    } else {
        ap_boot::Started {
            up: Vec::new(),
            left_out: host.aps.len() + host.held.len(),
            bsp: host.bsp,
        }
    };

    // The cloud VM: planned from the boot modules, then built.
    let booted: Vec<BootModule> = modules
        .iter()
        .map(|m| BootModule {
            data: m.data,
            cmdline: &m.cmdline,
        })
        .collect();
    let mut hw = Hardware {
        tables: PoolTables,
        // SAFETY: L1's RAM is everything usable but the pool; identity-mapped.
        mem: unsafe { L1Ram::new(bringup::l1_ram(&fw, pool_range)) },
        checksum,
        xcr0_supported: if cpu.xsave {
            let [a, _, _, d] = cpu::cpuid(0xd, 0);
            (d as u64) << 32 | a as u64
        } else {
            0
        },
    };
    let l1_map = l1_memory_map(firmware_map.iter().copied(), pool_range);
    // Before anything of L1 is written: where the BIOS memory services
    // go; L1's map then reserves their KiB.
    let bios = match bios_memory::probe(&hw.mem, &l1_map) {
        Ok(b) => Some(b),
        Err(e) => {
            info!("INT 15h memory services not offered to the cloud VM: {e}");
            None
        }
    };
    let l1_map = bios.as_ref().map_or(l1_map, |b| b.map.clone());
    let vm = l1_plan::plan(&booted, rsdp.as_deref(), &l1_map)
        .unwrap_or_else(|e| fatal(format_args!("{e}")));
    let key = vm.key.map(|(k, i)| {
        loader_memory::wipe(&modules[i]);
        k
    });
    for &i in &vm.identity_modules {
        loader_memory::wipe(&modules[i]);
    }
    zero_l1_ram(&bringup::l1_ram(&fw, pool_range), 1 + started.up.len());
    if let Some(b) = &bios {
        b.install(&mut hw.mem)
            .unwrap_or_else(|e| fatal(format_args!("INT 15h memory services: {e}")));
        info!(
            "INT 15h memory services (E820h, E801h, 88h) answered with the cloud VM's map: stub at {:#x}, firmware handler {:04x}:{:04x}",
            b.stub, b.firmware.0, b.firmware.1
        );
    }
    let cpus_running = 1 + host.aps.len();
    let ept02_tables = cfg
        .ept02_tables
        .unwrap_or_else(|| crate::nested::ept02::default_cap(cfg.l0_mem, cpus_running));
    info!(
        "EPT02: at most {ept02_tables} tables per CPU ({} KiB)",
        ept02_tables * 4
    );
    let (mut vcpu, mut machine, template) = bringup::cloud_vm(
        &fw,
        &l0_frames,
        &vm,
        key,
        tsc_hz,
        &vcaps,
        &cpu,
        ept02_tables,
        l0_ports,
        &mut hw,
    );
    if let Some(d) = &dmar {
        isolate_dma(&fw, d, &l0_frames);
    }
    machine.bios = bios;
    machine.console.owners =
        crate::owner::Owners::new(vm.identity, crate::arch::platform::hw_random, cfg.console);
    let histories = crate::owner::histories_for_l0_mem(cfg.l0_mem);
    crate::owner::HISTORIES.set(histories);
    machine
        .shadow
        .devices
        .set_history_budget(&crate::owner::HISTORIES);
    info!("{}", machine.console.owners.boot_line());
    info!(
        "owner consoles: output histories of {} KiB for up to {histories} used ports (a quarter of l0_mem)",
        shadow_devices::uart16550::history::HISTORY_CAPACITY >> 10
    );
    let limits = Limits::for_heap((cfg.l0_mem / 4) as usize);
    machine.shadow.set_limits(limits, pool::heap_free);
    info!(
        "shadow devices: up to {} user VMs and {} VMCS12s at once (l0_mem={} MiB)",
        limits.vms,
        limits.vmcs,
        cfg.l0_mem >> 20
    );
    vcpu.register(&mut machine, cpus::apic_id(cpu::cpuid));
    if !cfg.shadow {
        warn!("shadow=off: user VMs' COM ports go to the guest hypervisor (a baseline for measurements, not the product)");
    }
    // What every CPU shares, behind one lock (docs/architecture.md).
    let mut machine = SharedMachine::new(machine);
    machine.set_intercept_com(cfg.shadow);
    let machine: &'static SharedMachine = Box::leak(Box::new(machine));

    // The other CPUs: each runs a vCPU of the cloud VM, waiting for the
    // start-up IPI of L1's own boot CPU.
    let share = runs_aps.then(|| {
        &*Box::leak(Box::new(ap_boot::ApShare {
            machine,
            template,
            hw: hw.clone(),
        }))
    });
    if cfg.aps {
        ap_boot::run_cloud_vm(&started, share, tsc_hz);
    } else {
        info!("aps=off: the other CPUs stay as the firmware left them; the cloud VM runs on the boot CPU alone");
    }
    if !cpus_known || started.left_out > 0 {
        // Before L1's first instruction: no INIT or start-up IPI of L1 may
        // reach a CPU that is not in VMX operation (machine/ap_wait.rs).
        let vcpus = core::iter::once(host.bsp)
            .chain(started.up.iter().filter(|a| a.runs).map(|a| a.apic_id))
            .collect();
        vcpu.guard_cpus(&mut machine.lock(), &mut hw, vcpus);
        info!("INIT and start-up IPIs of the cloud VM go to its own CPUs only: L0 does not hold every CPU of this host");
    }
    vcpu.serve_console();
    // From here on guests run: their log lines are limited (per call site,
    // by the TSC's measured rate or else by a 1 GHz guess).
    crate::logger::limit_rate(tsc_hz.unwrap_or(1_000_000_000));
    cpu_loop::run(&mut vcpu, machine, &mut hw)
}

/// The piece of L1's RAM one CPU zeroes at a time.
const ZERO_CHUNK: u64 = 64 << 20;

/// Zeroes every byte the cloud VM will own before anything of it is
/// loaded: GRUB's heap and disk cache (which read `l0.key`), the firmware's
/// and the loader's leftovers; not the BIOS data area (`BIOS_DATA`), which
/// L1 reads as on bare metal. Large stores (`rep stosq`) on every CPU L0
/// started, a chunk at a time; the cost goes on the management line
/// (docs/operations.md).
fn zero_l1_ram(ram: &RangeSet, cpus: usize) {
    let t0 = cpu::rdtsc();
    let mut ram = ram.clone();
    let _ = ram.remove(loader_memory::BIOS_DATA);
    // SAFETY: L1's RAM is all usable RAM but the pool; L0 keeps nothing
    // there any more (its image relocated, the boot information read and
    // the modules copied into the pool), and nothing of L1 is loaded yet.
    unsafe { zero_ram::zero_all(chunks(ram.iter(), ZERO_CHUNK)) };
    let ticks = cpu::rdtsc().wrapping_sub(t0);
    let mib = (ram.total() >> 20).max(1);
    info!(
        "the cloud VM's RAM zeroed before it starts: {mib} MiB by {cpus} CPU(s) in {ticks} TSC ticks ({} per MiB)",
        ticks / mib
    );
    info!("BENCH l1-ram-zero-ticks-per-mib {}", ticks / mib);
}

/// Says on the management line that devices can reach L0's memory, on a
/// host without VT-d or with `iommu=off`.
fn dma_isolation_absent<T>(why: &str) -> Option<T> {
    info!("DMA isolation absent: {why}; devices of the cloud VM can reach L0's memory");
    None
}

/// The same when VT-d is there but could not be used: a warning.
fn dma_isolation_failed<T>(why: impl core::fmt::Display) -> Option<T> {
    warn!("DMA isolation absent: {why}; devices of the cloud VM can reach L0's memory");
    None
}

/// Makes the VT-d units keep devices' DMA to what EPT01 gives the cloud
/// VM (the same map from the same ownership), before it first runs.
fn isolate_dma(fw: &FirmwareMemory, dmar: &acpi::dmar::Dmar, l0: &RangeSet) {
    let Ok(regions) = fw.ept_regions(l0) else {
        dma_isolation_failed::<()>("the memory map has too many pieces");
        return;
    };
    let l1_regions = regions.iter().map(|(r, _)| *r);
    let done = iommu::dma_map(l1_regions, &dmar.reserved, l0).and_then(|(map, cut)| {
        if cut > 0 {
            warn!("VT-d: {cut} RMRR region(s) overlap L0's memory; DMA there faults");
        }
        arch_iommu::protect(&dmar.units, &map)
    });
    match done {
        Ok(i) => info!(
            "DMA isolation: VT-d translating on {} unit(s), {} KiB pages at most",
            i.units,
            i.page.bytes() >> 10
        ),
        Err(e) => {
            dma_isolation_failed::<()>(e);
        }
    }
}
