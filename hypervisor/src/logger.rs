//! L0's log on its management serial line, through `log` and `uart_16550`.
//!
//! The UART is set to 115200 8N1 with its interrupt output disabled: L0
//! polls, and the IRQ line belongs to L1's interrupt controller.

use core::fmt::{self, Write};

use spin::Mutex;
use uart_16550::SerialPort;

use crate::arch::cpu;

struct Line {
    port: Option<SerialPort>,
    base: u16,
}

static LINE: Mutex<Line> = Mutex::new(Line {
    port: None,
    base: 0,
});

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(p) = self.port.as_mut() {
            for b in s.bytes() {
                p.send_raw(b);
            }
        }
        Ok(())
    }
}

/// Takes the UART at `base` for the management line.
pub fn init_serial(base: u16) {
    // SAFETY: the operator chose this port for L0 on the command line; L1
    // is not running yet and never gets it (the I/O bitmap traps it).
    let mut port = unsafe { SerialPort::new(base) };
    port.init();
    // SAFETY: same port. Divisor 1 = 115200 baud; IER=0 and MCR without
    // OUT2 keep the UART's interrupt off the (L1-owned) IRQ line.
    unsafe {
        cpu::outb(base + 3, 0x80);
        cpu::outb(base, 1);
        cpu::outb(base + 1, 0);
        cpu::outb(base + 3, 0x03);
        cpu::outb(base + 1, 0);
        cpu::outb(base + 4, 0x03);
    }
    *LINE.lock() = Line {
        port: Some(port),
        base,
    };
}

/// The management port's base, if one is in use.
pub fn serial_base() -> Option<u16> {
    let l = LINE.lock();
    l.port.as_ref().map(|_| l.base)
}

/// A whole line (a protocol frame) on the management line.
pub fn send_line(line: &str) {
    let _ = LINE.lock().write_str(line);
}

/// Bytes the operator sent, without waiting: up to `buf.len()`, while the
/// receiver has data (LSR.DR).
pub fn recv(buf: &mut [u8]) -> usize {
    let l = LINE.lock();
    if l.port.is_none() {
        return 0;
    }
    let mut n = 0;
    // SAFETY: L0's own UART; LSR first, RBR only when data is ready.
    while n < buf.len() && unsafe { cpu::inb(l.base + 5) } & 1 != 0 {
        buf[n] = unsafe { cpu::inb(l.base) };
        n += 1;
    }
    n
}

/// Waits until the UART has sent everything (LSR.TEMT): emulators drop
/// what is still in the transmitter when they stop.
pub fn drain() {
    if let Some(base) = serial_base() {
        // SAFETY: reading LSR of L0's own port.
        while unsafe { cpu::inb(base + 5) } & 0x40 == 0 {
            core::hint::spin_loop();
        }
    }
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let _ = writeln!(LINE.lock(), "L0 {:<5} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

pub fn init_log(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Writes without waiting for the lock: for panics and exceptions, which
/// may strike while the lock is held.
pub fn emergency(args: fmt::Arguments) {
    // SAFETY: one CPU, and the holder (if any) is the code we interrupted,
    // which will never resume; interleaved output is the worst outcome.
    unsafe { LINE.force_unlock() };
    let _ = LINE.lock().write_fmt(args);
}

/// Raw bytes on the management line before logging is set up (bad boot
/// information): to COM2, where the default management line is.
pub fn early_print(s: &str) {
    for b in s.bytes() {
        // SAFETY: COM2's THR; polling LSR.THRE first. Nothing else owns it yet.
        unsafe {
            while cpu::inb(0x2f8 + 5) & 0x20 == 0 {}
            cpu::outb(0x2f8, b);
        }
    }
}
