//! `probe clock`: whether the cloud VM's clock runs true. Times a stretch of
//! PIT channel 2 countdowns (the hardware's own time base) with the cloud
//! VM's CLOCK_MONOTONIC and with the TSC at the frequency L0 announces in
//! CPUID 0x15; prints all three and `CLOCK ok` if L1's clock agrees with
//! both within 5 %, `CLOCK FAIL ...` otherwise.
//!
//! `probe shutdown`: writes "Shutdown" to Bochs's port 0x8900, which L0
//! watches (it reports and checks its integrity, then passes it on).
//!
//! Port access from user space needs root and CONFIG_X86_IOPL_IOPERM.

use std::arch::asm;
use std::arch::x86_64::{__cpuid, _rdtsc};
use std::process::ExitCode;
use std::time::Instant;

const PIT_HZ: f64 = 1_193_182.0;
const ROUND_TICKS: u16 = 59_659; // 50 ms
const ROUNDS: u32 = 10;
const TOLERANCE: f64 = 0.05;

const SYS_IOPL: usize = 172;
const SYS_IOPERM: usize = 173;

fn syscall3(nr: usize, a: usize, b: usize, c: usize) -> isize {
    let ret: isize;
    // SAFETY: ioperm/iopl take plain integers and touch no memory of ours.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a, in("rsi") b, in("rdx") c,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

fn outb(port: u16, v: u8) {
    // SAFETY: the port was granted by ioperm/iopl; see the callers.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) };
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as outb.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) };
    v
}

/// The TSC frequency CPUID 0x15 announces (what L0 measured), if any.
fn announced_tsc_hz() -> Option<f64> {
    let max = __cpuid(0).eax;
    if max < 0x15 {
        return None;
    }
    let l = __cpuid(0x15);
    (l.eax != 0 && l.ebx != 0 && l.ecx != 0).then(|| l.ecx as f64 * l.ebx as f64 / l.eax as f64)
}

fn clock() -> ExitCode {
    if syscall3(SYS_IOPERM, 0x42, 2, 1) != 0 || syscall3(SYS_IOPERM, 0x61, 1, 1) != 0 {
        println!("CLOCK FAIL: ioperm refused (run as root, kernel needs X86_IOPL_IOPERM)");
        return ExitCode::FAILURE;
    }
    let saved = inb(0x61);
    let (mut l1_ns, mut tsc) = (0u128, 0u64);
    for _ in 0..ROUNDS {
        outb(0x61, (saved & !0x02) | 0x01); // gate on, speaker off
        outb(0x43, 0xb0); // channel 2, lo/hi byte, mode 0
        outb(0x42, ROUND_TICKS as u8);
        outb(0x42, (ROUND_TICKS >> 8) as u8);
        let (t0, c0) = (Instant::now(), unsafe { _rdtsc() });
        let mut spins = 0u64;
        while inb(0x61) & 0x20 == 0 {
            spins += 1;
            if spins > 1 << 32 {
                outb(0x61, saved);
                println!("CLOCK FAIL: PIT channel 2 never reached terminal count");
                return ExitCode::FAILURE;
            }
        }
        tsc += unsafe { _rdtsc() } - c0;
        l1_ns += t0.elapsed().as_nanos();
    }
    outb(0x61, saved);
    let pit_ms = ROUNDS as f64 * ROUND_TICKS as f64 / PIT_HZ * 1e3;
    let l1_ms = l1_ns as f64 / 1e6;
    let hz = announced_tsc_hz();
    let l0_ms = hz.map(|hz| tsc as f64 / hz * 1e3);
    println!(
        "CLOCK pit_ms={pit_ms:.1} l1_ms={l1_ms:.1} l0_ms={} tsc_ticks={tsc} cpuid_tsc_hz={}",
        l0_ms.map_or("?".into(), |v| format!("{v:.1}")),
        hz.map_or("?".into(), |v| format!("{v:.0}"))
    );
    let off = |a: f64, b: f64| (a / b - 1.0).abs();
    match l0_ms {
        Some(l0) if off(l1_ms, pit_ms) <= TOLERANCE && off(l1_ms, l0) <= TOLERANCE => {
            println!("CLOCK ok: L1 {:.3}x the PIT, {:.3}x L0", l1_ms / pit_ms, l1_ms / l0);
            ExitCode::SUCCESS
        }
        Some(l0) => {
            println!("CLOCK FAIL: L1's clock runs {:.3}x the PIT and {:.3}x L0's (limit 5 %)", l1_ms / pit_ms, l1_ms / l0);
            ExitCode::FAILURE
        }
        None => {
            println!("CLOCK FAIL: CPUID 0x15 announces no TSC frequency; L1's clock runs {:.3}x the PIT", l1_ms / pit_ms);
            ExitCode::FAILURE
        }
    }
}

fn shutdown() -> ExitCode {
    // Port 0x8900 is above ioperm's range (0x3ff): iopl(3).
    if syscall3(SYS_IOPL, 3, 0, 0) != 0 {
        println!("probe: iopl(3) refused; cannot reach port 0x8900");
        return ExitCode::FAILURE;
    }
    for b in b"Shutdown" {
        outb(0x8900, *b);
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("clock") => clock(),
        Some("shutdown") => shutdown(),
        _ => {
            eprintln!("usage: probe clock | probe shutdown");
            ExitCode::from(2)
        }
    }
}
