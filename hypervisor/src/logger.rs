//! L0's log on its management serial line, through `log` and `uart_16550`.
//!
//! The UART is set to 115200 8N1 with its interrupt output disabled: L0
//! polls, and the IRQ line belongs to L1's interrupt controller. Log lines
//! are limited per call site and dropped, not waited for, when the send
//! queue is full (`log_limit`); console frames and L0's fatal report
//! ([`FATAL`]) wait for room.

use core::fmt::{self, Write};

use spin::Mutex;

use crate::arch::uart::{self, Uart};
use crate::log_limit::{self, SiteLimits, Verdict};

/// The target of L0's fatal report: never limited or dropped.
pub const FATAL: &str = "l0::fatal";

/// What L0 sends waits here while the UART is busy: L0 never stalls its
/// guests for the line's 115200 baud (~87 µs a byte) unless this is full.
/// The run loop moves bytes on at every VM exit ([`pump`]); fatal paths
/// and the emulator's shutdown wait for all of it ([`drain`]).
const TX_QUEUE: usize = 1 << 15;

struct Line {
    port: Option<Uart>,
    /// Bytes the UART takes at once when its transmitter is empty: 16
    /// with the 16550A's FIFO, 1 without.
    fifo: usize,
    queue: [u8; TX_QUEUE],
    head: usize,
    len: usize,
    limits: SiteLimits,
    /// Log lines dropped because the queue had no room for them.
    dropped: u64,
    /// Log lines over their call site's budget.
    suppressed: u64,
}

/// The management UART, for the fatal reports that cannot wait for
/// [`LINE`] ([`emergency`]).
static PORT: spin::Once<Uart> = spin::Once::new();

static LINE: Mutex<Line> = Mutex::new(Line {
    port: None,
    fifo: 1,
    queue: [0; TX_QUEUE],
    head: 0,
    len: 0,
    limits: SiteLimits::new(),
    dropped: 0,
    suppressed: 0,
});

impl Line {
    /// Hands queued bytes to the UART as far as it has room, without
    /// waiting; whether the queue is empty.
    fn pump(&mut self) -> bool {
        let Some(port) = self.port else {
            return self.len == 0;
        };
        if self.len > 0 && port.can_send() {
            for _ in 0..self.fifo.min(self.len) {
                port.send(self.queue[self.head]);
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
    // The operator chose this port for L0 on the command line; L1 is not
    // running yet and never gets it (the I/O bitmaps trap it).
    let Some((port, fifo)) = Uart::claim(base) else {
        return; // taken already
    };
    PORT.call_once(|| port);
    let mut l = LINE.lock();
    l.port = Some(port);
    l.fifo = fifo;
}

/// Moves queued output on to the UART if it has room (at every VM exit:
/// cheap when nothing waits).
pub fn pump() {
    if let Some(mut l) = LINE.try_lock() {
        l.pump();
    }
}

/// Bytes the send queue takes now without waiting for the line.
pub fn tx_room() -> usize {
    TX_QUEUE - LINE.lock().len
}

/// Limits log lines per call site from now on (once guests may run), the
/// TSC ticking `tsc_hz` a second.
pub fn limit_rate(tsc_hz: u64) {
    LINE.lock().limits.start(tsc_hz);
}

/// Log lines not sent so far: (dropped for want of room, suppressed by
/// their call site's limit).
pub fn lines_not_sent() -> (u64, u64) {
    let l = LINE.lock();
    (l.dropped, l.suppressed)
}

/// The management port's base, if one is in use.
pub fn serial_base() -> Option<u16> {
    LINE.lock().port.map(|p| p.base())
}

/// A whole line (a protocol frame) on the management line.
pub fn send_line(line: &str) {
    let _ = LINE.lock().write_str(line);
}

/// Bytes the operator sent, without waiting: up to `buf.len()`, while the
/// receiver has data (LSR.DR).
pub fn recv(buf: &mut [u8]) -> usize {
    let Some(port) = LINE.lock().port else {
        return 0;
    };
    let mut n = 0;
    while n < buf.len() {
        match port.recv() {
            Some(b) => buf[n] = b,
            None => break,
        }
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
    let port = LINE.lock().port;
    if let Some(port) = port {
        while !port.idle() {
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
            if l.port.is_none() {
                return;
            }
            let mut suppressed = 0;
            if r.target() != FATAL {
                let file = r.file_static().map_or(0, |f| f.as_ptr() as usize);
                let site = (file, r.line().unwrap_or(0));
                match l.limits.admit(site, crate::arch::cpu::rdtsc()) {
                    Verdict::Suppress => {
                        l.suppressed += 1;
                        return;
                    }
                    Verdict::Send { suppressed: n } => suppressed = n,
                }
                // The whole line or nothing, and never a wait.
                let mut len = Count(level.len() + 1);
                let _ = len.write_fmt(*r.args());
                if suppressed > 0 {
                    let _ = len.write_fmt(format_args!(" (+{suppressed} suppressed)"));
                }
                if !log_limit::log_fits(TX_QUEUE, l.len, len.0) {
                    l.dropped += 1;
                    return;
                }
            }
            let _ = l.write_str(level);
            let _ = l.write_fmt(*r.args());
            if suppressed > 0 {
                let _ = l.write_fmt(format_args!(" (+{suppressed} suppressed)"));
            }
            let _ = l.write_str("\n");
        }
    }
    fn flush(&self) {}
}

/// Counts what is formatted.
struct Count(usize);

impl Write for Count {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

static LOGGER: Logger = Logger;

pub fn init_log(level: log::LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Sends a report of a panic or an exception and waits until it is out,
/// whoever holds the line. These strike at any moment: the lock's holder
/// may be the code interrupted on this CPU, which never resumes, or
/// another CPU, which lets go within a line. So the lock is tried for a
/// bounded while (after what is queued); failing that, the report goes to
/// the UART directly: never two writers in the queue, at worst another
/// CPU's bytes interleaved with the report.
pub fn emergency(args: fmt::Arguments) {
    const TRIES: u32 = 1 << 20;
    for _ in 0..TRIES {
        if let Some(mut l) = LINE.try_lock() {
            let _ = l.write_fmt(args);
            while !l.pump() {
                core::hint::spin_loop();
            }
            drop(l);
            wait_idle();
            return;
        }
        core::hint::spin_loop();
    }
    if let Some(&port) = PORT.get() {
        let _ = Direct(port).write_fmt(args);
        wait_idle();
    }
}

/// Until the UART's transmitter is empty.
fn wait_idle() {
    if let Some(port) = PORT.get() {
        while !port.idle() {
            core::hint::spin_loop();
        }
    }
}

/// The UART without the queue, each byte when it has room.
struct Direct(Uart);

impl Write for Direct {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            while !self.0.can_send() {
                core::hint::spin_loop();
            }
            self.0.send(b);
        }
        Ok(())
    }
}

/// Raw bytes on the management line before logging is set up (bad boot
/// information): to COM2, where the default management line is.
pub fn early_print(s: &str) {
    uart::early_print(s)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::time::{Duration, Instant};

    /// A fault on one CPU while another holds the line (or the faulting
    /// code itself, which never resumes): the report does not wait for
    /// the holder, and never takes the line from it.
    #[test]
    fn an_emergency_report_does_not_wait_for_the_lines_holder() {
        let done = AtomicBool::new(false);
        let held = super::LINE.lock();
        let finished = std::thread::scope(|s| {
            s.spawn(|| {
                super::emergency(format_args!("L0 PANIC: test\n"));
                done.store(true, SeqCst);
            });
            let start = Instant::now();
            while !done.load(SeqCst) && start.elapsed() < Duration::from_secs(10) {
                std::hint::spin_loop();
            }
            let finished = done.load(SeqCst);
            assert!(super::LINE.is_locked(), "still the holder's");
            drop(held);
            finished
        });
        assert!(finished, "the report waited for the holder");
    }
}
