//! The guest's IDT and expected faults: a check arms [`expect_fault`] with
//! the length of the instruction it runs; if that instruction faults, the
//! handler records the vector and resumes after it.

use core::sync::atomic::{AtomicU64, Ordering};

use boot::exceptions::ExceptionFrame;

/// 0 = not armed; else the instruction length.
static ARMED: AtomicU64 = AtomicU64::new(0);
/// Last vector taken while armed, + 1 (0 = none).
static TAKEN: AtomicU64 = AtomicU64::new(0);

static mut IDT: [[u64; 2]; 32] = [[0; 2]; 32];

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

pub fn init() {
    // SAFETY: single CPU, set once before any fault can be expected.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        *idt = boot::exceptions::idt(0x08, |_| 0);
        let p = Pointer { limit: 32 * 16 - 1, base: idt.as_ptr() as u64 };
        core::arch::asm!("lidt [{}]", in(reg) &p, options(readonly, nostack));
    }
}

/// Runs `f`, which executes one instruction of `len` bytes that may fault;
/// returns the vector if it did.
pub fn expect_fault(len: u64, f: impl FnOnce()) -> Option<u8> {
    TAKEN.store(0, Ordering::SeqCst);
    ARMED.store(len, Ordering::SeqCst);
    f();
    ARMED.store(0, Ordering::SeqCst);
    match TAKEN.load(Ordering::SeqCst) {
        0 => None,
        v => Some((v - 1) as u8),
    }
}

#[no_mangle]
extern "C" fn handle_exception(f: &mut ExceptionFrame) {
    let len = ARMED.swap(0, Ordering::SeqCst);
    if len != 0 && f.vector < 32 {
        TAKEN.store(f.vector + 1, Ordering::SeqCst);
        f.rip += len;
        return;
    }
    crate::println!("GUEST exception {} error {:#x} at RIP {:#x}", f.vector, f.error_code, f.rip);
    crate::println!("TEST {} FAIL unexpected exception {}", crate::current_test(), f.vector);
    crate::io::shutdown();
}
