//! The guest's second CPU: which CPU runs the calling code (by its stack),
//! and starting the AP the way a bare-metal kernel does (SDM Vol. 3A
//! 9.4.4; a lone start-up IPI first, see [`start_ap`]): INIT, then
//! start-up IPIs through the xAPIC ICR naming a page
//! below 1 MiB where the trampoline L0 uses too (`boot::ap_trampoline`)
//! takes the AP from real mode to long mode on the boot CPU's page tables
//! (they identity-map 4 GiB), and `guest_ap_entry64` onto its own stack,
//! into [`ap_main`], which runs the job the boot CPU left.

use boot::ap_trampoline::param;
use core::arch::asm;
use core::ptr::addr_of;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// The CPUs this guest can use (the boot CPU and one AP).
pub const MAX_CPUS: usize = 2;
const AP_STACK: u64 = 64 * 1024;

#[repr(C, align(4096))]
struct Stacks([[u8; AP_STACK as usize]; MAX_CPUS - 1]);

static mut AP_STACKS: Stacks = Stacks([[0; AP_STACK as usize]; MAX_CPUS - 1]);

/// The index of the CPU running this code: 0 for the boot CPU, 1 + n for
/// the AP on stack n. By the stack, not by a register L1 or a check may
/// change (GS base, TSC_AUX): every CPU runs on its own stack, VM exits
/// included (each VMCS's host RSP is its CPU's).
#[inline]
pub fn cpu() -> usize {
    let rsp: u64;
    // SAFETY: reads RSP.
    unsafe { asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
    let base = addr_of!(AP_STACKS) as u64;
    if rsp > base && rsp <= base + (MAX_CPUS as u64 - 1) * AP_STACK {
        1 + ((rsp - base - 1) / AP_STACK) as usize
    } else {
        0
    }
}

/// This CPU's initial APIC ID (CPUID.1:EBX[31:24]).
pub fn apic_id() -> u32 {
    crate::io::cpuid(1, 0)[1] >> 24
}

// The shared trampoline (`boot::ap_trampoline`) jumps here in long mode
// under the boot CPU's tables with RBX = its page: the AP's stack and
// argument, then `ap_main`.
core::arch::global_asm!(
    r#"
    .text
    .global guest_ap_entry64
guest_ap_entry64:
    movq 0xf08(%rbx), %rsp
    movq 0xf10(%rbx), %rdi
    xorl %ebp, %ebp
    call {main}
1:  cli
    hlt
    jmp 1b
"#,
    main = sym ap_main,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    fn guest_ap_entry64();
}

/// Where the AP is.
pub const AP_WAITING: u32 = 0;
pub const AP_RUNNING: u32 = 1;
pub const AP_DONE: u32 = 2;
static AP_STATE: AtomicU32 = AtomicU32::new(AP_WAITING);
/// The job (a `fn(usize)`) the AP runs.
static AP_JOB: AtomicUsize = AtomicUsize::new(0);

pub fn ap_state() -> u32 {
    AP_STATE.load(Ordering::Acquire)
}

extern "C" fn ap_main(cpu_index: u64) -> ! {
    crate::faults::load();
    debug_assert_eq!(cpu() as u64, cpu_index);
    AP_STATE.store(AP_RUNNING, Ordering::Release);
    let job = AP_JOB.load(Ordering::Acquire);
    if job != 0 {
        // SAFETY: only `start_ap` stores here, a `fn(usize)`.
        let f: fn(usize) = unsafe { core::mem::transmute::<usize, fn(usize)>(job) };
        f(cpu_index as usize);
    }
    AP_STATE.store(AP_DONE, Ordering::Release);
    loop {
        // SAFETY: the AP has nothing left to do.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Spins until `done` or `ticks` TSC ticks passed; whether it is done.
pub fn spin_ticks(ticks: u64, mut done: impl FnMut() -> bool) -> bool {
    let t0 = crate::hv::cpu::rdtsc();
    while crate::hv::cpu::rdtsc().wrapping_sub(t0) < ticks {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    done()
}

const ICR_LOW: u64 = 0xfee0_0300;
const ICR_HIGH: u64 = 0xfee0_0310;

fn send_ipi(apic_id: u32, low: u32) -> Result<(), &'static str> {
    // SAFETY: the xAPIC page is identity-mapped (checked usable by the
    // caller); ICR high then low sends the IPI (SDM 11.6.1).
    unsafe {
        core::ptr::write_volatile(ICR_HIGH as *mut u32, apic_id << 24);
        core::ptr::write_volatile(ICR_LOW as *mut u32, low);
    }
    // Delivery status (bit 12) clears once the IPI is sent.
    let idle = || {
        // SAFETY: as above.
        let v = unsafe { core::ptr::read_volatile(ICR_LOW as *const u32) };
        v & (1 << 12) == 0
    };
    if spin_ticks(100_000_000, idle) {
        Ok(())
    } else {
        Err("the ICR stays busy")
    }
}

/// A page below 1 MiB for the trampoline: usable RAM in the loader's map,
/// clear of the loader's structures (`avoid`), at 0x8000 or above.
pub fn trampoline_page(mbi: &crate::mb1::Info<crate::mb1::Identity>) -> Option<u64> {
    let avoid = mbi.loader_addrs();
    (0x8..0x9f).map(|p: u64| p << 12).find(|&p| {
        let usable = mbi
            .memory_map()
            .any(|e| e.kind == 1 && e.base <= p && p + 0x1000 <= e.base + e.len);
        usable && avoid.iter().all(|&a| a == 0 || a >> 12 != p >> 12)
    })
}

/// Starts the AP with APIC ID `apic_id` through the trampoline at `page`
/// (below 1 MiB) to run `job(1)` on its own stack; returns once it runs
/// (the job then goes on in parallel); says which IPIs started it. The
/// local APIC must be usable.
pub fn start_ap(apic_id: u32, page: u64, job: fn(usize)) -> Result<&'static str, &'static str> {
    start_ap_within(apic_id, page, job, 2_000_000_000)
}

/// `start_ap`, waiting at most `patience` TSC ticks for the AP after the
/// last start-up IPI.
pub fn start_ap_within(
    apic_id: u32,
    page: u64,
    job: fn(usize),
    patience: u64,
) -> Result<&'static str, &'static str> {
    assert!(page < 0x10_0000 && page & 0xfff == 0);
    // SAFETY: linker symbols around the trampoline's bytes in the image.
    let code = unsafe {
        let s = addr_of!(ap_trampoline_start);
        let e = addr_of!(ap_trampoline_end);
        core::slice::from_raw_parts(s, e as usize - s as usize)
    };
    assert!(code.len() < param::CR3);
    let stack_top = addr_of!(AP_STACKS) as u64 + AP_STACK;
    // SAFETY: `page` is usable RAM below 1 MiB that nothing else uses
    // (`trampoline_page`), identity-mapped.
    unsafe {
        let p = page as *mut u8;
        core::ptr::write_bytes(p, 0, 0x1000);
        core::ptr::copy_nonoverlapping(code.as_ptr(), p, code.len());
        let put = |o: usize, v: u64| core::ptr::write_volatile((page + o as u64) as *mut u64, v);
        put(param::CR3, crate::hv::cpu::cr3());
        put(param::STACK, stack_top);
        put(param::ARG, 1);
        put(param::EFER, 0);
        put(param::CR0, 1 << 5); // NE
        put(param::ENTRY, guest_ap_entry64 as *const () as u64);
    }
    AP_JOB.store(job as usize, Ordering::Release);
    AP_STATE.store(AP_WAITING, Ordering::Release);
    let vector = (page >> 12) as u32;
    let running = || AP_STATE.load(Ordering::Acquire) != AP_WAITING;
    // A lone start-up IPI first: it starts an AP that already waits for
    // one (a vCPU under L0 starts so) and is ignored by any other (SDM
    // 9.4.4; Bochs's BIOS leaves its APs halted). Under L0 on Bochs 2.7
    // it is also the only way: an INIT that reaches a CPU in VMX non-root
    // operation stays pending there after its INIT exit (fixed in Bochs
    // 2.8), so that CPU's vCPU exits with INIT at every start.
    send_ipi(apic_id, 0x4600 | vector)?;
    if spin_ticks(50_000_000, running) {
        return Ok("started by a lone start-up IPI");
    }
    // Then INIT (level assert), a wait, and up to two start-up IPIs.
    send_ipi(apic_id, 0x4500)?;
    spin_ticks(10_000_000, || false);
    send_ipi(apic_id, 0x4600 | vector)?;
    if !spin_ticks(50_000_000, running) {
        send_ipi(apic_id, 0x4600 | vector)?;
    }
    if spin_ticks(patience, running) {
        Ok("started by INIT and start-up IPIs")
    } else {
        Err("no answer to INIT and start-up IPIs")
    }
}

/// Waits (up to `ticks` TSC ticks) until the AP's job has returned.
pub fn wait_ap_done(ticks: u64) -> bool {
    spin_ticks(ticks, || AP_STATE.load(Ordering::Acquire) == AP_DONE)
}
