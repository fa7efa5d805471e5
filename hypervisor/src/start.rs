//! Boot to cloud VM: everything from the multiboot2 entry to the first
//! VM entry, in order. The decisions are made by the host-tested modules;
//! this file carries them out on the machine.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use boot::memmap::{Range, RangeSet};
use boot::multiboot2::{self, BootInfo, MemoryRegion};
use log::{error, info, warn};

use crate::arch::cpu::{self, cpuid};
use crate::arch::run::{self, GuestRegs};
use crate::arch::tables::{self, ExceptionFrame};
use crate::arch::vmx as vmxi;
use crate::arch::vmx::CurrentVmcs;
use crate::config::{self, ModuleRole, SerialChoice};
use crate::console::Console;
use crate::guest_mem::{GuestMemory, L1Ram};
use crate::logger;
use crate::machine::ept01::Ept01;
use crate::machine::shutdown::{ShutdownWatch, SHUTDOWN_PORT};
use crate::machine::Machine;
use crate::mm::frames::{FrameAllocator, FRAME};
use crate::mm::layout::{l1_memory_map, FirmwareMemory};
use crate::mm::paging::{self, Ia32e, PageAttr, PageSize, TableMemory};
use crate::nested::{self, Level, Nested, Vmcs02Pages, VmcsSet};
use crate::regs::{
    CR0_EM, CR0_MP, CR0_TS, CR0_WP, CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_OSXSAVE, CR4_VMXE, EFER_NXE,
    IA32_EFER,
};
use crate::vcpu::{cpuid::CpuidContext, msr, report, setup, ExitStats, Outcome, Platform, Vcpu};
use crate::vmx::caps::{self, VmxCaps};
use crate::vmx::exit::{event_type, InterruptionInfo};
use crate::vmx::requirements;
use crate::vmx::{ept, Field as F, Vmcs};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;
const PAT: u32 = 0x277;
const L1_VPID: u16 = 1;

extern "C" {
    static __l0_boot_start: u8;
    static __l0_image_start: u8;
    static __l0_text_end: u8;
    static __l0_rodata_end: u8;
    static __l0_stack_guard: u8;
    static __l0_image_end: u8;
}

fn sym(s: &u8) -> u64 {
    s as *const u8 as u64
}

#[global_allocator]
static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

static FRAMES: spin::Mutex<Option<FrameAllocator>> = spin::Mutex::new(None);

/// Set by the NMI handler when an NMI arrives while L0 runs; delivered to L1.
static NMI_PENDING: AtomicBool = AtomicBool::new(false);

/// Stops L0 with a message on the management line.
fn fatal(args: core::fmt::Arguments) -> ! {
    error!("L0 FATAL: {args}");
    logger::drain();
    cpu::halt_forever()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(l) => logger::emergency(format_args!(
            "\nL0 PANIC at {}:{}: {}\n",
            l.file(),
            l.line(),
            info.message()
        )),
        None => logger::emergency(format_args!("\nL0 PANIC: {}\n", info.message())),
    }
    logger::drain();
    cpu::halt_forever()
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved 15",
    "#MF x87 error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD error",
    "#VE virtualization exception",
    "#CP control protection",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "#HV",
    "#VC",
    "#SX",
    "reserved 31",
];

/// Every exception L0 takes itself. An NMI is the guest's: it is queued
/// for L1. Anything else is an L0 bug: reported, then L0 stops.
#[no_mangle]
extern "C" fn handle_exception(f: &mut ExceptionFrame) {
    if f.vector == 2 {
        NMI_PENDING.store(true, Ordering::Relaxed);
        return;
    }
    if f.vector == 13 {
        if let Some(resume) = cpu::msr_fixup(f.rip) {
            f.r8 = 1;
            f.rip = resume;
            return;
        }
    }
    let guard = sym(unsafe { &__l0_stack_guard });
    let cr2 = cpu::read_cr2();
    logger::emergency(format_args!(
        "\nL0 PANIC: exception {} ({}) error {:#x} at RIP {:#x} RSP {:#x} CR2 {:#x}{}\n  RAX {:#x} RBX {:#x} RCX {:#x} RDX {:#x} RSI {:#x} RDI {:#x} RBP {:#x}\n",
        f.vector,
        EXCEPTION_NAMES[f.vector as usize & 31],
        f.error_code,
        f.rip,
        f.rsp,
        cr2,
        if (guard..guard + FRAME).contains(&cr2) || f.vector == 8 { " (stack overflow?)" } else { "" },
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx,
        f.rsi,
        f.rdi,
        f.rbp
    ));
    logger::drain();
    cpu::halt_forever()
}

/// A boot module copied into L0's pool.
struct Module {
    data: &'static [u8],
    cmdline: String,
}

/// Page tables and EPT tables live in pool frames, reached through the
/// identity map.
struct PoolTables;

impl TableMemory for PoolTables {
    fn alloc_table(&mut self) -> Option<u64> {
        let f = FRAMES.lock().as_mut()?.alloc().ok()?;
        // SAFETY: a fresh pool frame, identity-mapped, owned by L0 alone.
        unsafe { core::ptr::write_bytes(f as *mut u8, 0, FRAME as usize) };
        Some(f)
    }
    fn table(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: callers pass frames from alloc_table (pool, identity-mapped).
        unsafe { &mut *(phys as *mut [u64; 512]) }
    }
    fn free_table(&mut self, phys: u64) {
        if let Some(Err(e)) = FRAMES.lock().as_mut().map(|f| f.free(phys, 1)) {
            panic!("{e}");
        }
    }
}

fn alloc_frames(n: usize, what: &str) -> u64 {
    let r = FRAMES.lock().as_mut().map(|f| f.alloc_contiguous(n, FRAME));
    match r {
        Some(Ok(a)) => {
            // SAFETY: fresh pool frames, identity-mapped.
            unsafe { core::ptr::write_bytes(a as *mut u8, 0, n * FRAME as usize) };
            a
        }
        Some(Err(e)) => fatal(format_args!("{what}: {e}; raise l0_mem=")),
        None => fatal(format_args!("{what}: no frame allocator")),
    }
}

/// FNV-1a over L0's code and read-only data: what no one may change.
fn image_checksum() -> u64 {
    let (start, end) = (
        sym(unsafe { &__l0_image_start }),
        sym(unsafe { &__l0_rodata_end }),
    );
    // SAFETY: the range is L0's mapped, immutable image.
    let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, (end - start) as usize) };
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

struct Hardware {
    tables: PoolTables,
    mem: L1Ram,
    checksum: u64,
    xcr0_supported: u64,
}

impl Platform for Hardware {
    type Tables = PoolTables;
    type Mem = L1Ram;
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        cpuid(leaf, subleaf)
    }
    fn xcr0_supported(&self) -> u64 {
        self.xcr0_supported
    }
    fn set_xcr0(&mut self, value: u64) {
        // SAFETY: validated against CPUID by the caller; L0 itself keeps no
        // extended state.
        unsafe { cpu::xsetbv(0, value) }
    }
    fn wbinvd(&mut self) {
        cpu::wbinvd()
    }
    fn flush_vpid(&mut self, vpid: u16) {
        // SAFETY: VMX root; single-context INVVPID is supported (checked at boot).
        if let Err(e) = unsafe { vmxi::invvpid(1, vpid, 0) } {
            warn!("INVVPID failed: {e}");
        }
    }
    fn io_out(&mut self, port: u16, size: u8, value: u32) {
        // SAFETY: a port the guest may reach on its own (its I/O would go
        // there natively); never L0's management UART (handled before).
        unsafe { cpu::out_sized(port, size, value) }
    }
    fn io_in(&mut self, port: u16, size: u8) -> u32 {
        // SAFETY: as io_out.
        unsafe { cpu::in_sized(port, size) }
    }
    fn tables(&mut self) -> &mut PoolTables {
        &mut self.tables
    }
    fn mem(&mut self) -> &mut L1Ram {
        &mut self.mem
    }
    fn l0_intact(&self) -> bool {
        image_checksum() == self.checksum
    }
    fn page(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: callers pass L0's bitmap pages (pool frames, identity-mapped).
        unsafe { &mut *(phys as *mut [u64; 512]) }
    }
    fn read_msr(&mut self, msr: u32) -> Option<u64> {
        cpu::rdmsr_safe(msr)
    }
    fn write_msr(&mut self, msr: u32, value: u64) -> bool {
        // SAFETY: the MSRs L0 runs on (EFER, PAT, FS/GS base, ...) are
        // switched by the VMCS and never reach here (msr_lists::home).
        unsafe { cpu::wrmsr_safe(msr, value) }
    }
    fn invept_all(&mut self) {
        // SAFETY: VMX root; all-context INVEPT is supported (checked at boot).
        if let Err(e) = unsafe { vmxi::invept(2, 0) } {
            warn!("INVEPT failed: {e}");
        }
    }
    fn set_cr2(&mut self, value: u64) {
        // SAFETY: CR2 is the guest's; L0 takes no page faults.
        unsafe { cpu::write_cr2(value) }
    }
    fn mgmt_rx(&mut self, buf: &mut [u8]) -> usize {
        logger::recv(buf)
    }
    fn mgmt_send(&mut self, line: &str) {
        logger::send_line(line);
    }
    fn send_ipi(&mut self, dest: u32, vector: u8) -> bool {
        report_apic(crate::arch::apic::send_ipi(dest, vector))
    }
    fn apic_eoi(&mut self) -> bool {
        report_apic(crate::arch::apic::eoi())
    }
    fn apic_state(&mut self) -> String {
        match crate::arch::apic::state() {
            Ok(s) => s,
            Err(e) => alloc::format!("{e:?}"),
        }
    }
}

/// Logs (once) why L0 cannot use L1's local APIC.
fn report_apic(r: Result<(), crate::arch::apic::ApicError>) -> bool {
    static SAID: AtomicBool = AtomicBool::new(false);
    match r {
        Ok(()) => true,
        Err(e) => {
            if !SAID.swap(true, Ordering::Relaxed) {
                log::warn!("cannot use L1's local APIC for posted-interrupt notifications: {e:?}");
            }
            false
        }
    }
}

/// Random bytes for nonces: RDSEED, else RDRAND; false if the CPU has neither.
fn hw_random(buf: &mut [u8]) -> bool {
    for chunk in buf.chunks_mut(8) {
        let Some(v) = cpu::rdseed64().or_else(cpu::rdrand64) else {
            return false;
        };
        chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
    }
    true
}

/// VMCS01, VMCS02 and the shadow VMCS; VMPTRLD switches between them.
struct HwVmcsSet {
    phys: [u64; 3],
    cur: Level,
    v: CurrentVmcs,
}

impl VmcsSet for HwVmcsSet {
    type V = CurrentVmcs;
    fn current(&mut self) -> &mut CurrentVmcs {
        &mut self.v
    }
    fn select(&mut self, which: Level) {
        if which != self.cur {
            let p = self.phys[which as usize];
            // SAFETY: both are L0's VMCS regions, set up at boot.
            if let Err(e) = unsafe { vmxi::vmptrld(p) } {
                fatal(format_args!("VMPTRLD {p:#x}: {e}"));
            }
            self.cur = which;
        }
    }
    fn selected(&self) -> Level {
        self.cur
    }
}

/// What L0 needs of the CPU, with a plain message for what is missing.
struct CpuFeatures {
    maxphyaddr: u8,
    gib_pages: bool,
    xsave: bool,
    mtrr: bool,
}

fn check_cpu() -> Result<CpuFeatures, &'static str> {
    let [_, _, c1, d1] = cpuid(1, 0);
    if c1 & (1 << 5) == 0 {
        return Err("this CPU has no VMX (Intel VT-x), or a hypervisor below hides it: L0 needs VT-x with EPT and unrestricted guest");
    }
    let max_ext = cpuid(0x8000_0000, 0)[0];
    let [_, _, _, d81] = cpuid(0x8000_0001, 0);
    if d81 & (1 << 20) == 0 {
        return Err("this CPU has no NX (execute-disable) bit");
    }
    let maxphyaddr = if max_ext >= 0x8000_0008 {
        cpuid(0x8000_0008, 0)[0] as u8
    } else {
        36
    };
    Ok(CpuFeatures {
        maxphyaddr,
        gib_pages: d81 & (1 << 26) != 0,
        xsave: c1 & (1 << 26) != 0,
        mtrr: d1 & (1 << 12) != 0,
    })
}

fn enable_vmx(c: &VmxCaps, cpu: &CpuFeatures) -> Result<(), &'static str> {
    // SAFETY: CPUID reported VMX, so IA32_FEATURE_CONTROL exists.
    let fc = unsafe { cpu::rdmsr(caps::IA32_FEATURE_CONTROL) };
    if fc & caps::FEATURE_CONTROL_LOCKED != 0 {
        if fc & caps::FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0 {
            return Err("VMX is disabled by the firmware (IA32_FEATURE_CONTROL locked without VMX): enable VT-x in the BIOS setup");
        }
    } else {
        // SAFETY: unlocked: enabling VMX and locking is what firmware would do.
        unsafe {
            cpu::wrmsr(
                caps::IA32_FEATURE_CONTROL,
                fc | caps::FEATURE_CONTROL_LOCKED | caps::FEATURE_CONTROL_VMX_OUTSIDE_SMX,
            )
        };
    }
    // SSE on (FXSAVE/FXRSTOR and SIMD exceptions known): L0's sealing code
    // uses AES-NI, saving and restoring the guest's vector registers itself.
    let mut cr4 = cpu::read_cr4() | CR4_VMXE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    if cpu.xsave {
        // L0 executes the guest's XSETBV for it.
        cr4 |= CR4_OSXSAVE;
    }
    // SAFETY: the fixed bits are what VMX operation requires; NE, PE, PG
    // and VMXE are compatible with how L0 runs.
    unsafe {
        cpu::write_cr0(c.fix_cr0(cpu::read_cr0() & !(CR0_EM | CR0_TS) | CR0_MP));
        cpu::write_cr4(c.fix_cr4(cr4));
    }
    let region = alloc_frames(1, "VMXON region");
    // SAFETY: a fresh, zeroed pool frame.
    unsafe { (region as *mut u32).write(c.revision()) };
    // SAFETY: CR0/CR4 fixed, feature control on, region aligned with the revision.
    unsafe { vmxi::vmxon(region) }.map_err(|_| "VMXON failed")
}

/// The management line and log, from the command line.
fn start_logging(bi: &BootInfo) {
    let cfg = config::parse(bi.cmdline(), |_| {});
    if let SerialChoice::Port(p) = cfg.serial {
        logger::init_serial(p);
    }
    logger::init_log(cfg.log_level);
}

pub fn start(magic: u32, info_addr: u64) -> ! {
    // SAFETY: first thing on the boot CPU.
    unsafe { tables::init() };
    if let Err(e) = multiboot2::check_entry(magic, info_addr) {
        early_fatal(format_args!("{e}"));
    }
    // SAFETY: the loader's pointer, below 4 GiB, identity-mapped by the entry code.
    let total = unsafe { multiboot2::total_size_at(info_addr as *const u8) };
    // SAFETY: the structure is `total` bytes long (bounded by parse).
    let bytes = unsafe {
        core::slice::from_raw_parts(
            info_addr as *const u8,
            (total as usize).min(multiboot2::MAX_TOTAL_SIZE as usize),
        )
    };
    let bi = match BootInfo::parse(bytes) {
        Ok(b) => b,
        Err(e) => early_fatal(format_args!("{e}")),
    };
    start_logging(&bi);
    info!(
        "L0 cloud hypervisor {VERSION} (booted by {})",
        if bi.loader_name().is_empty() {
            "?"
        } else {
            bi.loader_name()
        }
    );
    let cfg = config::parse(bi.cmdline(), |e| warn!("command line: {e}"));

    let cpu = check_cpu().unwrap_or_else(|e| fatal(format_args!("{e}")));
    // SAFETY: VMX present.
    let vcaps = unsafe { VmxCaps::read() };
    requirements::check(&vcaps).unwrap_or_else(|e| fatal(format_args!("{e}")));

    // Memory: L0's pool at the top of RAM, clear of everything the loader placed.
    let fw = FirmwareMemory::new(bi.memory_map())
        .unwrap_or_else(|e| fatal(format_args!("memory map: {e}")));
    let boot_start = sym(unsafe { &__l0_boot_start });
    let image = Range::new(
        sym(unsafe { &__l0_image_start }) - KERNEL_VMA,
        sym(unsafe { &__l0_image_end }) - KERNEL_VMA,
    );
    let mut occupied = RangeSet::new();
    let mut loader_ranges = Vec::<Range>::new();
    let info_range = Range::new(info_addr, info_addr + total as u64);
    let _ = occupied.insert(Range::new(boot_start, image.end));
    let _ = occupied.insert(info_range);
    let mut modules_size = 0;
    for m in bi.modules() {
        let r = Range::new(m.start as u64, m.end as u64);
        let _ = occupied.insert(r);
        modules_size += r.grow_to_pages().len();
    }
    let pool_size = (cfg.l0_mem + modules_size + image.len()).next_multiple_of(2 << 20);
    let pool = fw
        .choose_pool(pool_size, &occupied)
        .unwrap_or_else(|e| fatal(format_args!("{e}")));
    init_pool(pool, cfg.l0_mem / 4);
    info!(
        "memory: {} MiB of RAM; L0 pool {pool} ({} MiB)",
        fw.ram.total() >> 20,
        pool.len() >> 20
    );
    // The heap exists from here: the operator's console can learn who talks.
    logger::send_line(&shadow_devices::mgmt::frame(format_args!(
        "hello l0 {VERSION} abi {}",
        ultracall_abi::ABI_VERSION
    )));

    // Copy out everything still needed from the loader's memory.
    let firmware_map: Vec<MemoryRegion> = bi.memory_map().collect();
    let modules: Vec<Module> = bi
        .modules()
        .map(|m| {
            let len = (m.end - m.start) as usize;
            let at = alloc_frames(len.div_ceil(FRAME as usize).max(1), "module copy");
            // SAFETY: source is the loader's module (identity-mapped, below
            // 4 GiB), destination fresh pool frames of at least `len` bytes.
            unsafe {
                core::ptr::copy_nonoverlapping(m.start as u64 as *const u8, at as *mut u8, len)
            };
            loader_ranges.push(Range::new(m.start as u64, m.end as u64));
            // SAFETY: just written, never freed.
            Module {
                data: unsafe { core::slice::from_raw_parts(at as *const u8, len) },
                cmdline: m.cmdline.into(),
            }
        })
        .collect();
    let loader_name_ok = !bi.loader_name().is_empty();
    // The ACPI RSDP GRUB copied, for a Linux L1 (the boot information is
    // cleared below).
    let rsdp: Option<Vec<u8>> = bi.rsdp().map(|r| r.to_vec());

    relocate(&fw, image, &cpu);
    // The old image, the boot information and the modules become L1's:
    // nothing of L0 may remain there.
    let old_image = Range::new(boot_start, image.end);
    for r in [old_image, info_range].into_iter().chain(loader_ranges) {
        let r = r.grow_to_pages();
        // SAFETY: identity-mapped RAM L0 no longer uses (copied above).
        unsafe { core::ptr::write_bytes(r.start as *mut u8, 0, r.len() as usize) };
    }
    let checksum = image_checksum();
    info!(
        "L0 relocated to the pool; low memory cleared for the cloud VM{}",
        if loader_name_ok {
            ""
        } else {
            " (loader gave no name)"
        }
    );

    enable_vmx(&vcaps, &cpu).unwrap_or_else(|e| fatal(format_args!("{e}")));
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
        if vcaps.allows(caps::Control::Secondary, caps::secondary::VMCS_SHADOWING) {
            "available"
        } else {
            "absent"
        }
    );

    let mut hw = Hardware {
        tables: PoolTables,
        // SAFETY: L1's RAM is everything usable but the pool; identity-mapped.
        mem: unsafe { L1Ram::new(l1_ram(&fw, pool)) },
        checksum,
        xcr0_supported: if cpu.xsave {
            let [a, _, _, d] = cpuid(0xd, 0);
            (d as u64) << 32 | a as u64
        } else {
            0
        },
    };
    // L1 is told the TSC frequency L0 measures here (CPUID 0x15/0x16).
    let tsc_hz = crate::arch::tsc::calibrate();
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
    let (mut vcpu, mut machine) = build_l1(
        &fw,
        pool,
        &firmware_map,
        &modules,
        rsdp.as_deref(),
        tsc_hz,
        &vcaps,
        &cpu,
        &mut hw,
    );
    machine.shadow.intercept_com = cfg.shadow;
    if !cfg.shadow {
        warn!("shadow=off: user VMs' COM ports go to the guest hypervisor (a baseline for measurements, not the product)");
    }
    run_l1(&mut vcpu, &mut machine, &mut hw)
}

/// A boot-information error before the log exists: straight to COM2.
fn early_fatal(args: core::fmt::Arguments) -> ! {
    let mut s = heapless_line::Line::new();
    let _ = s.write_fmt(format_args!("L0 FATAL: {args}\n"));
    logger::early_print(s.as_str());
    cpu::halt_forever()
}

/// A fixed-size line buffer for messages before the heap exists.
mod heapless_line {
    pub struct Line {
        buf: [u8; 256],
        len: usize,
    }
    impl Line {
        pub fn new() -> Self {
            Line {
                buf: [0; 256],
                len: 0,
            }
        }
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.buf[..self.len]).unwrap_or("L0 FATAL: (unprintable)\n")
        }
    }
    impl core::fmt::Write for Line {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let n = s.len().min(self.buf.len() - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
}

/// Frame allocator and heap over the pool.
fn init_pool(pool: Range, heap_size: u64) {
    let frames = (pool.len() / FRAME) as usize;
    let words = FrameAllocator::bitmap_words(frames);
    let bitmap_frames = (words * 8).div_ceil(FRAME as usize);
    // SAFETY: the pool is free RAM below 4 GiB (identity-mapped by the entry
    // code) that nothing else uses; the bitmap takes its first frames.
    let bits = unsafe { core::slice::from_raw_parts_mut(pool.start as *mut u64, words) };
    let mut fa = FrameAllocator::new(pool.start, frames, bits);
    fa.reserve(pool.start, bitmap_frames);
    let heap = fa
        .alloc_contiguous((heap_size / FRAME) as usize, FRAME)
        .unwrap_or_else(|e| fatal(format_args!("heap: {e}")));
    *FRAMES.lock() = Some(fa);
    // SAFETY: `heap` is ours alone and identity-mapped.
    unsafe { HEAP.lock().init(heap as *mut u8, heap_size as usize) };
}

/// Builds L0's own page tables — RAM identity-mapped non-executable, the
/// image in the top 2 GiB with per-section rights and a stack guard — then
/// copies the image into the pool and switches to them in one step.
fn relocate(fw: &FirmwareMemory, image: Range, cpu: &CpuFeatures) {
    let mut t = PoolTables;
    let root = t
        .alloc_table()
        .unwrap_or_else(|| fatal(format_args!("page tables: pool exhausted")));
    let max = if cpu.gib_pages {
        PageSize::Size1G
    } else {
        PageSize::Size2M
    };
    let rw = PageAttr {
        writable: true,
        executable: false,
        uncached: false,
    };
    for r in fw.ram.iter() {
        paging::map(&mut t, &Ia32e, root, r.start, r.start, r.len(), rw, max)
            .unwrap_or_else(|e| fatal(format_args!("identity map: {e}")));
    }
    // The local APIC's register page, for posted-interrupt notifications.
    let apic = crate::arch::apic::base();
    if !fw.ram.contains(apic) {
        let mmio = PageAttr {
            writable: true,
            executable: false,
            uncached: true,
        };
        paging::map(
            &mut t,
            &Ia32e,
            root,
            apic,
            apic,
            FRAME,
            mmio,
            PageSize::Size4K,
        )
        .unwrap_or_else(|e| fatal(format_args!("APIC map: {e}")));
        crate::arch::apic::set_mapped(apic);
    }
    let pages = (image.len() / FRAME) as usize;
    let dest = alloc_frames(pages, "image copy");
    let va = |s: &u8| sym(s);
    let (start, text_end, ro_end, guard, end) = unsafe {
        (
            va(&__l0_image_start),
            va(&__l0_text_end),
            va(&__l0_rodata_end),
            va(&__l0_stack_guard),
            va(&__l0_image_end),
        )
    };
    let sections = [
        (
            start,
            text_end,
            PageAttr {
                writable: false,
                executable: true,
                uncached: false,
            },
        ),
        (
            text_end,
            ro_end,
            PageAttr {
                writable: false,
                executable: false,
                uncached: false,
            },
        ),
        (ro_end, guard, rw),
        (guard + FRAME, end, rw),
    ];
    for (a, b, attr) in sections {
        paging::map(
            &mut t,
            &Ia32e,
            root,
            a,
            dest + (a - start),
            b - a,
            attr,
            PageSize::Size4K,
        )
        .unwrap_or_else(|e| fatal(format_args!("image map: {e}")));
    }
    // SAFETY: NX is supported (checked); WP makes read-only pages binding in ring 0.
    unsafe {
        cpu::wrmsr(IA32_EFER, cpu::rdmsr(IA32_EFER) | EFER_NXE);
        cpu::write_cr0(cpu::read_cr0() | CR0_WP);
    }
    // SAFETY: the new tables map the image at the same virtual addresses,
    // backed by `dest`; the copy and the switch happen in one asm block
    // that touches no memory in between, so the copied stack is current.
    unsafe {
        core::arch::asm!(
            "rep movsb",
            "mov cr3, {root}",
            root = in(reg) root,
            inout("rcx") image.len() => _,
            inout("rsi") start => _,
            inout("rdi") dest => _,
            options(nostack)
        );
    }
}

fn l1_ram(fw: &FirmwareMemory, pool: Range) -> RangeSet {
    let mut ram = fw.ram.clone();
    let _ = ram.remove(pool);
    ram
}

/// What the `l1=` module is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KernelKind {
    Multiboot,
    Linux,
}

#[allow(clippy::too_many_arguments)]
fn build_l1(
    fw: &FirmwareMemory,
    pool: Range,
    firmware_map: &[MemoryRegion],
    modules: &[Module],
    rsdp: Option<&[u8]>,
    tsc_hz: Option<u64>,
    vcaps: &VmxCaps,
    cpu: &CpuFeatures,
    hw: &mut Hardware,
) -> (Vcpu, Machine) {
    // Which module is what.
    let mut kernel: Option<(&Module, &str, KernelKind)> = None;
    let mut initrd: Option<&Module> = None;
    let mut l1_modules = Vec::new();
    let mut key = None;
    for (i, m) in modules.iter().enumerate() {
        let (args, kind) = match config::module_role(&m.cmdline) {
            Ok(ModuleRole::L0Key) if key.is_none() => {
                key = Some(
                    config::parse_key(m.data)
                        .unwrap_or_else(|e| fatal(format_args!("module {i}: {e}"))),
                );
                // SAFETY: the module copy is L0's; nothing else refers to it now.
                unsafe { core::ptr::write_bytes(m.data.as_ptr() as *mut u8, 0, m.data.len()) };
                continue;
            }
            Ok(ModuleRole::L0Key) => fatal(format_args!("module {i}: a second `l0.key`")),
            Ok(ModuleRole::L1Multiboot(args)) => (args, KernelKind::Multiboot),
            Ok(ModuleRole::L1Linux(args)) => (args, KernelKind::Linux),
            Ok(ModuleRole::L1Module(args)) => {
                l1_modules.push(boot::loader::ModuleImage {
                    data: m.data,
                    cmdline: args,
                });
                continue;
            }
            Ok(ModuleRole::L1Initrd) if initrd.is_none() => {
                initrd = Some(m);
                continue;
            }
            Ok(ModuleRole::L1Initrd) => fatal(format_args!("module {i}: a second `l1.initrd`")),
            Err(e) => fatal(format_args!("module {i}: {e}")),
        };
        if kernel.is_some() {
            fatal(format_args!("module {i}: a second cloud VM kernel (`l1=multiboot` or `l1=linux`); give exactly one"));
        }
        kernel = Some((m, args, kind));
    }
    let Some((kernel, kernel_args, kind)) = kernel else {
        fatal(format_args!(
            "no cloud VM kernel: add `module2 /path/kernel l1=multiboot [args]` or `module2 /path/bzImage l1=linux [args]` to the GRUB entry"
        ))
    };
    match kind {
        KernelKind::Linux if !l1_modules.is_empty() => fatal(format_args!(
            "`l1.module` is for multiboot kernels; a Linux kernel takes one `l1.initrd`"
        )),
        KernelKind::Multiboot if initrd.is_some() => fatal(format_args!(
            "`l1.initrd` is for Linux kernels (`l1=linux`); a multiboot kernel takes `l1.module`s"
        )),
        _ => {}
    }

    // Load L1.
    let l1_map = l1_memory_map(firmware_map.iter().copied(), pool);
    let (plan, started) = match kind {
        KernelKind::Multiboot => {
            let plan =
                boot::loader::multiboot::plan(kernel.data, kernel_args, &l1_modules, &l1_map)
                    .unwrap_or_else(|e| fatal(format_args!("cloud VM kernel: {e}")));
            let boot::loader::Entry::Multiboot { eip, .. } = plan.entry else {
                unreachable!()
            };
            let mut s = String::new();
            let _ = write!(
                s,
                "multiboot kernel at {eip:#x}, {} module(s)",
                l1_modules.len()
            );
            (plan, s)
        }
        KernelKind::Linux => {
            let (plan, at) = boot::loader::linux::plan(
                kernel.data,
                kernel_args,
                initrd.map(|m| m.data),
                rsdp,
                &l1_map,
            )
            .unwrap_or_else(|e| fatal(format_args!("cloud VM kernel: {e}")));
            let mut s = String::new();
            let _ = write!(
                s,
                "Linux bzImage at {}, boot_params at {:#x}",
                at.kernel, at.boot_block.start
            );
            match at.initrd {
                Some(r) => {
                    let _ = write!(s, ", initrd {r} ({} KiB)", r.len() >> 10);
                }
                None => s.push_str(", no initrd"),
            }
            (plan, s)
        }
    };
    for w in &plan.writes {
        let r = match w {
            boot::loader::Write::Bytes { gpa, data } => hw.mem.write(*gpa, data),
            boot::loader::Write::Zero { gpa, len } => hw.mem.zero(*gpa, *len),
        };
        r.unwrap_or_else(|e| fatal(format_args!("loading the cloud VM: {e}")));
    }

    // EPT01: identity except the pool; L0's frames resolve to a scratch page.
    let mut l0 = RangeSet::new();
    let _ = l0.insert(pool);
    let regions = fw
        .ept_regions(&l0)
        .unwrap_or_else(|e| fatal(format_args!("EPT01: {e}")));
    let sink = alloc_frames(1, "scratch page");
    // SAFETY: a fresh pool frame: all ones, like reads of absent memory.
    unsafe { core::ptr::write_bytes(sink as *mut u8, 0xff, FRAME as usize) };
    let max = requirements::ept_page_size(vcaps, cpu.gib_pages);
    let ept01 = Ept01::build(&mut hw.tables, &regions, l0, fw.ept_limit(), sink, max)
        .unwrap_or_else(|e| fatal(format_args!("EPT01: {e}")));

    info!(
        "shadow devices: sealing key {}",
        if key.is_some() {
            "provisioned"
        } else {
            "absent (save/restore refused)"
        }
    );
    // Bitmaps: L0's UART and the emulator's shutdown port; the MSRs L0 keeps.
    let mgmt_port = logger::serial_base();
    let mut io = msr::IoBitmaps::new();
    if let Some(base) = mgmt_port {
        for p in base..base + 8 {
            io.intercept(p);
        }
    }
    io.intercept(SHUTDOWN_PORT);
    let io_pages = alloc_frames(2, "I/O bitmaps");
    let msr_page = alloc_frames(1, "MSR bitmap");
    // VMCS02's bitmaps: L0's ports for L2 (the same as for L1), all ones,
    // and pages for the merge with L1's.
    let nested_pages = Vmcs02Pages {
        io_l0: alloc_frames(2, "I/O bitmaps"),
        io_all: alloc_frames(2, "I/O bitmaps"),
        msr02: alloc_frames(1, "MSR bitmap"),
    };
    // SAFETY: fresh pool frames of the right sizes.
    unsafe {
        core::ptr::copy_nonoverlapping(io.0.as_ptr(), io_pages as *mut u8, 8192);
        core::ptr::copy_nonoverlapping(
            l2_io_bitmap().0.as_ptr(),
            nested_pages.io_l0 as *mut u8,
            8192,
        );
        core::ptr::write_bytes(nested_pages.io_all as *mut u8, 0xff, 8192);
        core::ptr::write_bytes(nested_pages.msr02 as *mut u8, 0xff, 4096);
        core::ptr::copy_nonoverlapping(msr::l1_msr_bitmap().0.as_ptr(), msr_page as *mut u8, 4096);
    }

    // VMCS01, and VMCS02 for L2 (one, rebuilt at every nested entry).
    let vpid = requirements::vpid_usable(vcaps);
    let offer_vmx = requirements::nested_vmx_possible(vcaps);
    let poll_ticks = requirements::poll_ticks(tsc_hz);
    let l0_timer = requirements::preemption_timer(vcaps, poll_ticks);
    let timer = l0_timer.is_some();
    let controls =
        setup::l1_controls(vcaps, vpid, timer).unwrap_or_else(|e| fatal(format_args!("{e}")));
    // L1's VMREAD/VMWRITE of the fields a guest hypervisor uses at every
    // exit go to a shadow VMCS without exiting (nested/shadow_vmcs.rs);
    // the control is on while L1 is in VMX operation.
    let shadowing =
        offer_vmx && vcaps.allows(caps::Control::Secondary, caps::secondary::VMCS_SHADOWING);
    let policy = setup::l1_cr_policy(vcaps, offer_vmx);
    let vmcs = alloc_frames(1, "VMCS01");
    let vmcs02 = alloc_frames(1, "VMCS02");
    let shadow = alloc_frames(1, "shadow VMCS");
    // SAFETY: fresh frames; revision id first (bit 31 marks the shadow
    // VMCS); VMCLEAR puts them in the clear state; VMCS01 ends up current.
    unsafe {
        for (f, indicator) in [(vmcs, 0), (vmcs02, 0), (shadow, 1u32 << 31)] {
            (f as *mut u32).write(vcaps.revision() | indicator);
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
    let pages = setup::ControlPages {
        io_bitmap_a: io_pages,
        io_bitmap_b: io_pages + FRAME,
        msr_bitmap: msr_page,
        eptp: pages_eptp(&ept01),
        vpid: L1_VPID,
    };
    setup::write_controls(&mut v, &controls, &pages, &policy);
    if shadowing {
        let (read, write) = nested::shadow_vmcs::bitmaps();
        let (rp, wp) = (
            alloc_frames(1, "VMREAD bitmap"),
            alloc_frames(1, "VMWRITE bitmap"),
        );
        // SAFETY: fresh pool frames.
        unsafe {
            core::ptr::copy_nonoverlapping(read.as_ptr(), rp as *mut u8, 4096);
            core::ptr::copy_nonoverlapping(write.as_ptr(), wp as *mut u8, 4096);
        }
        v.write(F::VMREAD_BITMAP, rp);
        v.write(F::VMWRITE_BITMAP, wp);
    }
    if let Some(t) = l0_timer {
        // Not saved on exit: reloaded at every entry (SDM 26.7.4).
        v.write(F::VMX_PREEMPTION_TIMER_VALUE, t);
    }
    let mut regs = GuestRegs::default();
    for (reg, value) in setup::write_entry_state(&mut v, &plan.entry, &policy) {
        regs.gpr[reg] = value;
    }
    let mtrr = if cpu.mtrr {
        // SAFETY: MTRRs exist (CPUID.1:EDX[12]); only the ones MTRRCAP lists are read.
        let cap = unsafe { cpu::rdmsr(msr::IA32_MTRRCAP) };
        msr::MtrrShadow::capture(cap, cpu.maxphyaddr, |m| unsafe { cpu::rdmsr(m) })
    } else {
        msr::MtrrShadow::capture(0, cpu.maxphyaddr, |_| 0)
    };
    let eptp01 = pages_eptp(&ept01);
    let l0_frames = ept01.l0.clone();
    let ncaps = nested::caps::NestedCaps::new(vcaps);
    info!(
        "starting the cloud VM: {started}, {} MiB of RAM, nested VMX {}",
        hw.mem.ranges().total() >> 20,
        if offer_vmx {
            "offered"
        } else {
            "not possible on this CPU"
        }
    );
    use caps::secondary as s;
    let vcpu = Vcpu {
        regs,
        launched: false,
        policy,
        cpuid: CpuidContext {
            guest_cr4: 0,
            vmx: offer_vmx,
            rdtscp: controls.has_secondary(s::ENABLE_RDTSCP),
            invpcid: controls.has_secondary(s::ENABLE_INVPCID),
            xsaves: controls.has_secondary(s::ENABLE_XSAVES),
            tsc_hz: tsc_hz.unwrap_or(0),
        },
        mtrr,
        vpid: if vpid { L1_VPID } else { 0 },
        maxphyaddr: cpu.maxphyaddr,
        stats: ExitStats::default(),
        l2_stats: ExitStats::default(),
        last_l0_touch: "",
        host_caps: *vcaps,
        eptp01,
        msr_bitmap01: msr_page,
        nested: Nested {
            shadowing,
            ..Nested::new(ncaps, cpu.maxphyaddr, nested_pages, l0_frames)
        },
        vmcs_phys: [vmcs, vmcs02, shadow],
        l0_timer,
        poll_ticks,
        window_requested: false,
    };
    let machine = Machine {
        ept: ept01,
        shadow: crate::shadow::Shadow::new(key.map(sealing_key), hw_random),
        console: Console::default(),
        mgmt_port,
        shutdown: ShutdownWatch::default(),
    };
    (vcpu, machine)
}

/// TSC ticks between L0's visits to the management line while a guest
/// runs: 2 ms, so a keystroke is answered at once and the UART's FIFO
/// never overflows between visits (16 bytes take 1.4 ms at 115200 baud;
/// once a command begins, L0 reads it to its end). Each visit costs one
/// VMX-preemption-timer exit: ~0.1 % of a 3 GHz CPU, ~2 % under Bochs.
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

/// The ports L0 takes from every L2, whatever L1's bitmaps say: the user
/// VMs' COM1-COM4 (their shadow UARTs) and the emulator's shutdown port.
fn l2_io_bitmap() -> msr::IoBitmaps {
    let mut io = msr::IoBitmaps::new();
    for base in crate::shadow::COM_PORTS {
        for p in base..base + 8 {
            io.intercept(p);
        }
    }
    io.intercept(SHUTDOWN_PORT);
    io
}

fn pages_eptp(e: &Ept01) -> u64 {
    ept::eptp(e.root, false)
}

/// Delivers an NMI that arrived while L0 ran, when L1 can take it.
fn deliver_pending_nmi(v: &mut impl Vmcs) {
    const BLOCKING_BY_NMI: u64 = 1 << 3;
    if NMI_PENDING.load(Ordering::Relaxed)
        && v.read(F::GUEST_INTERRUPTIBILITY_INFO) & BLOCKING_BY_NMI == 0
        && v.read(F::VM_ENTRY_INTR_INFO_FIELD) & InterruptionInfo::VALID as u64 == 0
    {
        NMI_PENDING.store(false, Ordering::Relaxed);
        v.write(
            F::VM_ENTRY_INTR_INFO_FIELD,
            InterruptionInfo::new(2, event_type::NMI, false).0 as u64,
        );
    }
}

fn run_l1(vcpu: &mut Vcpu, m: &mut Machine, hw: &mut Hardware) -> ! {
    // SAFETY: VMCS01 is current; from here on only HwVmcsSet switches.
    let mut vs = HwVmcsSet {
        phys: vcpu.vmcs_phys,
        cur: Level::L1,
        v: unsafe { CurrentVmcs::new() },
    };
    let mut last_poll = cpu::rdtsc();
    loop {
        let in_l2 = vcpu.nested.in_l2;
        if !in_l2 {
            deliver_pending_nmi(vs.current());
            vcpu.before_l1_entry(m, vs.current());
        } else {
            vcpu.before_l2_entry(vs.current(), &mut hw.mem);
        }
        let launched = if in_l2 {
            vcpu.nested.vmcs02_launched
        } else {
            vcpu.launched
        };
        // SAFETY: the current VMCS is complete: host state brings us back to l0_vmx_exit.
        let outcome = match unsafe { run::run(&mut vcpu.regs, launched) } {
            Ok(()) => {
                if in_l2 {
                    vcpu.nested.vmcs02_launched = true;
                } else {
                    vcpu.launched = true;
                }
                // Cost accounting per exit reason (the shutdown report shows it).
                let basic = vs.current().read(F::VM_EXIT_REASON) as usize & 0xffff;
                let rip = vs.current().read(F::GUEST_RIP);
                let t0 = cpu::rdtsc();
                let o = vcpu.handle_exit(m, &mut vs, hw);
                let stats = if in_l2 {
                    &mut vcpu.l2_stats
                } else {
                    &mut vcpu.stats
                };
                stats.record(basic as u16, rip);
                if let Some(t) = stats.ticks_by_reason.get_mut(basic) {
                    *t += cpu::rdtsc().wrapping_sub(t0);
                }
                logger::pump();
                // Exits too frequent for the preemption timer to fire still
                // let L0 serve the management line.
                let now = cpu::rdtsc();
                if now.wrapping_sub(last_poll) > vcpu.poll_ticks {
                    last_poll = now;
                    vcpu.poll_console(m, &mut vs, hw);
                }
                o
            }
            Err(e) if in_l2 => vcpu.vmcs02_entry_failed(&mut vs, hw, e),
            Err(e) => {
                let mut s = String::new();
                let _ = report::guest_state(&mut s, vs.current(), &vcpu.regs);
                fatal(format_args!("VM entry to the cloud VM failed: {e}\n{s}"));
            }
        };
        if let Outcome::Stop(stop) = outcome {
            let mut s = String::new();
            let _ = report::guest_state(&mut s, vs.current(), &vcpu.regs);
            fatal(format_args!(
                "{stop} ({})\n{s}  L1: {}\n  L2: {}",
                if vcpu.nested.in_l2 { "in L2" } else { "in L1" },
                vcpu.stats,
                vcpu.l2_stats
            ));
        }
    }
}
