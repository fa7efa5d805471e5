//! The guest's IDT and expected faults: a check arms [`expect_fault`] with
//! the length of the instruction it runs; if that instruction faults, the
//! handler records the vector and resumes after it.

use core::sync::atomic::{AtomicU64, Ordering};

use boot::exceptions::ExceptionFrame;

use crate::smp::{cpu, MAX_CPUS};

/// Per CPU: 0 = not armed; else the instruction length.
static ARMED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU: last vector taken while armed, + 1 (0 = none).
static TAKEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// 256 gates: the boot stubs for exceptions, the test hypervisor's timer
/// vector and the APIC spurious vector (VM exits set the IDTR limit to
/// 0xffff, SDM 28.5.2, so every vector must land somewhere defined).
static mut IDT: [[u64; 2]; 256] = [[0; 2]; 256];

/// The vector of the LAPIC timer the external-interrupt checks use.
pub const TIMER_VECTOR: u8 = 0x30;
/// How many times L1 took [`TIMER_VECTOR`].
pub static TIMER_TAKEN: AtomicU64 = AtomicU64::new(0);

/// The vector L1 asks L0 to relay shadow-device interrupts on
/// (SetIrqRelay), and how many times L1 took it through its IDT.
pub const RELAY_VECTOR: u8 = 0x50;
pub static RELAY_TAKEN: AtomicU64 = AtomicU64::new(0);

// The timer vector counts and signals end-of-interrupt to the xAPIC; the
// spurious vector (0xff) needs no EOI. Nor does the relay: L0 injects it
// at VM entry, no interrupt controller delivered it, and an EOI would
// retire whatever the local APIC has in service (docs/shadow-devices.md).
core::arch::global_asm!(
    r#"
    .section .text
    .global l1_timer_stub
l1_timer_stub:
    push rax
    lock inc qword ptr [rip + {taken}]
    mov rax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq
    .global l1_spurious_stub
l1_spurious_stub:
    iretq
    .global l1_relay_stub
l1_relay_stub:
    lock inc qword ptr [rip + {relay}]
    iretq
"#,
    taken = sym TIMER_TAKEN,
    relay = sym RELAY_TAKEN,
);

extern "C" {
    fn l1_timer_stub();
    fn l1_spurious_stub();
    fn l1_relay_stub();
}

fn gate(handler: u64) -> [u64; 2] {
    [
        (handler & 0xffff) | 0x08 << 16 | 0x8e << 40 | (handler >> 16 & 0xffff) << 48,
        handler >> 32,
    ]
}

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

pub fn init() {
    // SAFETY: single CPU, set once before any fault can be expected.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        idt[..32].copy_from_slice(&boot::exceptions::idt(0x08, |_| 0));
        idt[TIMER_VECTOR as usize] = gate(l1_timer_stub as *const () as u64);
        idt[0xff] = gate(l1_spurious_stub as *const () as u64);
        idt[RELAY_VECTOR as usize] = gate(l1_relay_stub as *const () as u64);
    }
    load();
}

/// Loads the IDT [`init`] filled (on an AP: the boot CPU's, shared).
pub fn load() {
    let p = Pointer {
        limit: 256 * 16 - 1,
        base: core::ptr::addr_of!(IDT) as u64,
    };
    // SAFETY: the IDT is filled by `init` on the boot CPU before any AP runs.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &p, options(readonly, nostack)) };
}

/// Runs `f`, which executes one instruction of `len` bytes that may fault;
/// returns the vector if it did.
pub fn expect_fault(len: u64, f: impl FnOnce()) -> Option<u8> {
    let me = cpu();
    TAKEN[me].store(0, Ordering::SeqCst);
    ARMED[me].store(len, Ordering::SeqCst);
    f();
    ARMED[me].store(0, Ordering::SeqCst);
    match TAKEN[me].load(Ordering::SeqCst) {
        0 => None,
        v => Some((v - 1) as u8),
    }
}

#[no_mangle]
extern "C" fn handle_exception(f: &mut ExceptionFrame) {
    let me = cpu();
    let len = ARMED[me].swap(0, Ordering::SeqCst);
    if len != 0 && f.vector < 32 {
        TAKEN[me].store(f.vector + 1, Ordering::SeqCst);
        f.rip += len;
        return;
    }
    crate::println!(
        "GUEST exception {} error {:#x} at RIP {:#x} on CPU {me}",
        f.vector,
        f.error_code,
        f.rip
    );
    crate::println!(
        "TEST {} FAIL unexpected exception {}",
        crate::current_test(),
        f.vector
    );
    crate::io::shutdown();
}
