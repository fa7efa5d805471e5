//! Measurements for `cargo xtask bench`, all timed with the TSC (RDTSC in
//! this program, no clock of the kernel's in between).
//!
//! `probe pit-tsc`: TSC ticks per millisecond of PIT channel 2 (1.193182
//! MHz), read by latching its counter; in a user VM the PIT is the one
//! its hypervisor (KVM in L1) emulates. The same program in the user VM
//! under L0 and under the peer bottom shows whether both stacks' TSCs tick
//! at one rate.
//!
//! `probe serial-bench N [SUFFIX]`: N one-byte writes to /dev/ttyS0, then
//! 8N bytes in one write, each phase timed until the UART has sent its
//! last byte (tcdrain, then LSR.TEMT); guest-TSC ticks per byte,
//! fractional.
//!
//! `probe ticks CMD [ARG...]`: runs CMD and prints `command-ticks=N`, the
//! TSC ticks from before its fork to after its exit (what the caller
//! waits for), after CMD's own output; exits with CMD's status.
//!
//! `probe dirty MIB SECS`: a busy user VM for the dirty-logging bench:
//! writes one word in every page of MIB MiB, round after round, for SECS
//! seconds (its hypervisor, migrating it meanwhile, logs each page again
//! after every pass of its dirty log).

use std::arch::x86_64::_rdtsc;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use super::{inb, outb, syscall3, syscall6, PIT_HZ, SYS_IOPERM};

fn tsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { _rdtsc() }
}

/// PIT channel 2's counter, latched (mode 2, reload 65536: it counts down
/// and wraps every ~55 ms).
fn pit2() -> u16 {
    outb(0x43, 0x80); // counter latch, channel 2
    let lo = inb(0x42) as u16;
    let hi = inb(0x42) as u16;
    lo | hi << 8
}

/// TSC ticks per PIT millisecond over `ms` of PIT time.
fn tsc_per_pit_ms(ms: f64) -> Result<f64, String> {
    if syscall3(SYS_IOPERM, 0x40, 4, 1) != 0 {
        return Err("ioperm refused for the PIT's ports".into());
    }
    outb(0x43, 0xb4); // channel 2, lo/hi byte, mode 2 (rate generator), binary
    outb(0x42, 0);
    outb(0x42, 0); // reload 0 = 65536
    let want = (ms / 1e3 * PIT_HZ) as u64;
    let mut prev = pit2();
    let t0 = tsc();
    let (mut pit, mut reads, mut still) = (0u64, 0u64, 0u64);
    while pit < want {
        let now = pit2();
        reads += 1;
        // Polls are far less than a wrap (55 ms) apart.
        let d = prev.wrapping_sub(now) as u64;
        if d == 0 {
            still += 1;
            if still > 10_000 {
                return Err(format!("PIT channel 2 does not count (stuck at {now:#x})"));
            }
        } else {
            still = 0;
        }
        pit += d;
        prev = now;
    }
    let t = tsc() - t0;
    if reads < 10 {
        return Err(format!(
            "only {reads} reads of the PIT: it jumps, the figure would mean nothing"
        ));
    }
    Ok(t as f64 / (pit as f64 / PIT_HZ * 1e3))
}

pub fn pit_tsc() -> ExitCode {
    // Five stretches of 100 ms; the figure is their mean, the spread says
    // how far to trust it.
    let mut v = Vec::new();
    for _ in 0..5 {
        match tsc_per_pit_ms(100.0) {
            Ok(k) => v.push(k),
            Err(e) => {
                println!("BENCH FAIL pit-tsc: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    println!("BENCH l2-tsc-khz-by-pit {mean:.1}");
    println!("PIT-TSC 5 x 100 ms of PIT channel 2: {lo:.1} .. {hi:.1} TSC ticks per PIT ms");
    ExitCode::SUCCESS
}

const SYS_IOCTL: usize = 16;
const SYS_NANOSLEEP: usize = 35;
const TCSBRK: usize = 0x5409;
const TIOCSERGETLSR: usize = 0x5459;
const TIOCSER_TEMT: u32 = 1;

/// Until the UART has sent everything written (tcdrain: the tty's queue
/// empty, then the driver's wait for LSR.TEMT), then LSR.TEMT checked
/// once more. The process sleeps meanwhile: polling LSR would be COM
/// accesses of its own, and each makes L0 move console output.
fn drain(fd: i32) -> Result<(), String> {
    let r = syscall6(SYS_IOCTL, [fd as usize, TCSBRK, 1, 0, 0, 0]);
    if r < 0 {
        return Err(format!("tcdrain on ttyS0: errno {}", -r));
    }
    for _ in 0..100_000 {
        let mut lsr = 0u32;
        let r = syscall6(
            SYS_IOCTL,
            [
                fd as usize,
                TIOCSERGETLSR,
                &mut lsr as *mut u32 as usize,
                0,
                0,
                0,
            ],
        );
        if r < 0 {
            return Err(format!("TIOCSERGETLSR on ttyS0: errno {}", -r));
        }
        if lsr & TIOCSER_TEMT != 0 {
            return Ok(());
        }
        let ts: [i64; 2] = [0, 100_000]; // 100 µs
        syscall6(SYS_NANOSLEEP, [ts.as_ptr() as usize, 0, 0, 0, 0, 0]);
    }
    Err("the UART's transmitter never became empty".into())
}

pub fn serial_bench(n: usize, suffix: &str) -> ExitCode {
    let r = (|| -> Result<(f64, f64), String> {
        const O_NOCTTY: i32 = 0o400;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_NOCTTY)
            .open("/dev/ttyS0")
            .map_err(|e| format!("/dev/ttyS0: {e}"))?;
        let fd = f.as_raw_fd();
        drain(fd)?;
        let t0 = tsc();
        for _ in 0..n {
            f.write_all(&[0]).map_err(|e| format!("write: {e}"))?;
        }
        drain(fd)?;
        let t1 = tsc();
        f.write_all(&vec![0u8; 8 * n])
            .map_err(|e| format!("write: {e}"))?;
        drain(fd)?;
        let t2 = tsc();
        Ok((
            (t1 - t0) as f64 / n as f64,
            (t2 - t1) as f64 / (8 * n) as f64,
        ))
    })();
    match r {
        Ok((one, bulk)) => {
            println!("BENCH l2-serial-ticks-per-byte-1{suffix} {one:.1}");
            println!("BENCH l2-serial-ticks-per-byte-bulk{suffix} {bulk:.1}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("BENCH FAIL serial-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn ticks(cmd: &[String]) -> ExitCode {
    let Some((prog, args)) = cmd.split_first() else {
        println!("usage: probe ticks CMD [ARG...]");
        return ExitCode::from(2);
    };
    let t0 = tsc();
    let status = std::process::Command::new(prog).args(args).status();
    let t = tsc() - t0;
    let _ = std::io::stderr().flush();
    match status {
        Ok(s) => {
            println!("command-ticks={t}");
            ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8)
        }
        Err(e) => {
            println!("probe ticks: {prog}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `probe dirty MIB SECS`: writes one word per 4 KiB page of an MIB MiB
/// buffer, round after round, for SECS seconds of this VM's time.
pub fn dirty(mib: usize, secs: u64) -> ExitCode {
    let mut buf = vec![0u64; mib.max(1) << 17];
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut round = 0u64;
    while std::time::Instant::now() < end {
        round += 1;
        for page in buf.chunks_mut(512) {
            page[0] = round;
        }
        std::hint::black_box(&buf);
    }
    ExitCode::SUCCESS
}
