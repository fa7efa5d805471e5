//! L0's log on its management serial line, through `log` and `uart_16550`.
//!
//! The UART is set to 115200 8N1 with its interrupt output disabled: L0
//! polls, and the IRQ line belongs to L1's interrupt controller.

use core::fmt::{self, Write};

use spin::Mutex;
use uart_16550::SerialPort;

use crate::arch::cpu;

/// What L0 sends waits here while the UART is busy: L0 never stalls its
/// guests for the line's 115200 baud (~87 µs a byte) unless this is full.
/// The run loop moves bytes on at every VM exit ([`pump`]); fatal paths
/// and the emulator's shutdown wait for all of it ([`drain`]).
const TX_QUEUE: usize = 1 << 15;

struct Line {
    port: Option<SerialPort>,
    base: u16,
    /// Bytes the UART takes at once when its transmitter is empty: 16
    /// with the 16550A's FIFO, 1 without.
    fifo: usize,
    queue: [u8; TX_QUEUE],
    head: usize,
    len: usize,
}

static LINE: Mutex<Line> = Mutex::new(Line {
    port: None,
    base: 0,
    fifo: 1,
    queue: [0; TX_QUEUE],
    head: 0,
    len: 0,
});

impl Line {
    /// Hands queued bytes to the UART as far as it has room, without
    /// waiting; whether the queue is empty.
    fn pump(&mut self) -> bool {
        if self.len == 0 || self.port.is_none() {
            return self.len == 0;
        }
        // SAFETY: L0's own UART: LSR, then THR only when it is empty.
        if unsafe { cpu::inb(self.base + 5) } & 0x20 != 0 {
            for _ in 0..self.fifo.min(self.len) {
                // SAFETY: the transmitter FIFO has room (THRE above).
                unsafe { cpu::outb(self.base, self.queue[self.head]) };
                self.head = (self.head + 1) % TX_QUEUE;
                self.len -= 1;
            }
        }
        self.len == 0
    }

    fn push(&mut self, b: u8) {
        while self.len == TX_QUEUE {
            // Full: the line's pace is the only way on.
            self.pump();
            core::hint::spin_loop();
        }
        self.queue[(self.head + self.len) % TX_QUEUE] = b;
        self.len += 1;
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.port.is_none() {
            return Ok(());
        }
        let mut rest = s.as_bytes();
        while !rest.is_empty() {
            if self.len == TX_QUEUE {
                self.push(rest[0]); // waits for room
                rest = &rest[1..];
                continue;
            }
            // As much as fits up to the end of the buffer, in one copy.
            let tail = (self.head + self.len) % TX_QUEUE;
            let n = rest.len().min(TX_QUEUE - self.len).min(TX_QUEUE - tail);
            self.queue[tail..tail + n].copy_from_slice(&rest[..n]);
            self.len += n;
            rest = &rest[n..];
        }
        self.pump();
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
    // OUT2 keep the UART's interrupt off the (L1-owned) IRQ line. FIFOs
    // on and cleared; IIR bits 7:6 say whether there are any (16550A).
    let fifo = unsafe {
        cpu::outb(base + 3, 0x80);
        cpu::outb(base, 1);
        cpu::outb(base + 1, 0);
        cpu::outb(base + 3, 0x03);
        cpu::outb(base + 1, 0);
        cpu::outb(base + 4, 0x03);
        cpu::outb(base + 2, 0x07);
        if cpu::inb(base + 2) & 0xc0 == 0xc0 {
            16
        } else {
            1
        }
    };
    let mut l = LINE.lock();
    l.port = Some(port);
    l.base = base;
    l.fifo = fifo;
}

/// Moves queued output on to the UART if it has room (at every VM exit:
/// cheap when nothing waits).
pub fn pump() {
    if let Some(mut l) = LINE.try_lock() {
        l.pump();
    }
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
        // SAFETY: data ready (LSR bit 0).
        buf[n] = unsafe { cpu::inb(l.base) };
        n += 1;
    }
    n
}

/// Waits until the queue and the UART have sent everything (LSR.TEMT):
/// emulators drop what is still in the transmitter when they stop.
pub fn drain() {
    while !LINE.lock().pump() {
        core::hint::spin_loop();
    }
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
            // The level as a literal: padding through the formatter costs
            // more than the rest of a short line.
            let level = match r.level() {
                log::Level::Error => "L0 ERROR ",
                log::Level::Warn => "L0 WARN  ",
                log::Level::Info => "L0 INFO  ",
                log::Level::Debug => "L0 DEBUG ",
                log::Level::Trace => "L0 TRACE ",
            };
            let mut l = LINE.lock();
            let _ = l.write_str(level);
            let _ = l.write_fmt(*r.args());
            let _ = l.write_str("\n");
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
