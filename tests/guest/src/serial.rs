//! COM1, the cloud VM's own console, polled.

use core::fmt::{self, Write};

use crate::io::{inb, outb};

const COM1: u16 = 0x3f8;

pub fn init() {
    // SAFETY: COM1 belongs to this guest (L0 passes it through).
    unsafe {
        outb(COM1 + 1, 0); // no interrupts
        outb(COM1 + 3, 0x80); // DLAB
        outb(COM1, 1); // 115200 baud
        outb(COM1 + 1, 0);
        outb(COM1 + 3, 0x03); // 8N1
        outb(COM1 + 2, 0x07); // FIFOs on and cleared
        outb(COM1 + 4, 0x03);
    }
}

fn put(b: u8) {
    // SAFETY: COM1 is ours; wait for THRE before writing THR.
    unsafe {
        while inb(COM1 + 5) & 0x20 == 0 {}
        outb(COM1, b);
    }
}

/// Waits until everything is on the wire (LSR.TEMT).
pub fn drain() {
    // SAFETY: reading LSR.
    while unsafe { inb(COM1 + 5) } & 0x40 == 0 {}
}

pub struct Com1;

impl Write for Com1 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(put);
        Ok(())
    }
}

/// The CPU that prints now, + 1 (0: none): lines from two CPUs never
/// interleave. The owner may print again (a fault handler's line while
/// its CPU was printing), so a fault mid-line cannot deadlock.
#[cfg(target_os = "none")]
static OWNER: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Writes one line to COM1 with no other CPU's bytes in between.
pub fn line(args: fmt::Arguments) {
    #[cfg(target_os = "none")]
    {
        use core::sync::atomic::Ordering;
        let me = crate::smp::cpu() + 1;
        let nested = OWNER.load(Ordering::Acquire) == me;
        if !nested {
            while OWNER
                .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                core::hint::spin_loop();
            }
        }
        let _ = Com1.write_fmt(args);
        let _ = Com1.write_str("\n");
        if !nested {
            OWNER.store(0, Ordering::Release);
        }
    }
    #[cfg(not(target_os = "none"))]
    {
        let _ = Com1.write_fmt(args);
        let _ = Com1.write_str("\n");
    }
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        $crate::serial::line(format_args!($($arg)*));
    }};
}
