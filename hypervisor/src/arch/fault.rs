//! What stops L0: a fatal error, a panic, an exception L0 took itself. Each
//! says what went wrong on the management line, drains the log and halts.
//! An NMI is not L0's: it is held for the cloud VM.

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use log::error;

use super::cpu;
use super::tables::ExceptionFrame;
use crate::logger;
use crate::mm::frames::FRAME;
use crate::vmx::exit::{event_type, InterruptionInfo};
use crate::vmx::{Field as F, Vmcs};

/// Stops L0 with a message on the management line.
pub fn fatal(args: core::fmt::Arguments) -> ! {
    error!(target: logger::FATAL, "L0 FATAL: {args}");
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
    // (emergency waited until the report was out: a drain would wait for
    // a lock the interrupted code may hold.)
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
        super::tables::this_cpu()
            .nmi_pending
            .store(true, Ordering::Relaxed);
        return;
    }
    if f.vector == 13 {
        if let Some(resume) = cpu::msr_fixup(f.rip) {
            f.r8 = 1;
            f.rip = resume;
            return;
        }
    }
    let guard = super::image::stack_guard();
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
    cpu::halt_forever()
}

/// A boot-information error before the log exists: straight to COM2.
pub fn early_fatal(args: core::fmt::Arguments) -> ! {
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

/// Delivers an NMI that arrived while L0 ran on this CPU (`pending`, its
/// `PerCpu::nmi_pending`) to this CPU's L1, when L1 can take it.
pub fn deliver_pending_nmi(pending: &AtomicBool, v: &mut impl Vmcs) {
    const BLOCKING_BY_NMI: u64 = 1 << 3;
    if pending.load(Ordering::Relaxed)
        && v.read(F::GUEST_INTERRUPTIBILITY_INFO) & BLOCKING_BY_NMI == 0
        && v.read(F::VM_ENTRY_INTR_INFO_FIELD) & InterruptionInfo::VALID as u64 == 0
    {
        pending.store(false, Ordering::Relaxed);
        v.write(
            F::VM_ENTRY_INTR_INFO_FIELD,
            InterruptionInfo::new(2, event_type::NMI, false).0 as u64,
        );
    }
}
