//! `probe stress SECS` (in a user VM): for SECS seconds of the VM's time,
//! loops over what makes a nested hypervisor work — CPUID (exits to the
//! guest hypervisor), port I/O to a non-serial port (POST port 0x80, to
//! QEMU), MMIO (the IOAPIC's version register through /dev/mem, to KVM),
//! page faults (fresh anonymous pages) — while the timer interrupts. Then
//! checks the counts: every CPUID gave the same vendor, every port and
//! MMIO read the same value, the kernel counted at least the faults we
//! caused, the local timer ticked at 100/s or more (the kernel's HZ is
//! 250), and each loop ran at least [`MIN_ROUNDS`] times. Prints
//! `STRESS ... ok` or `STRESS FAIL: why`.

use std::arch::x86_64::__cpuid;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::syscall6;

const SYS_MMAP: usize = 9;
const SYS_MUNMAP: usize = 11;
const IOAPIC: usize = 0xfec0_0000;
const PAGES: usize = 16;
/// Rounds of the loop a run must reach: a run that exits to L0 or L1 far
/// more slowly than it should fails, not only one that gets wrong answers
/// (30 s of guest time give ~15 000 rounds under Bochs; the clock is the
/// guest's, so the figure does not depend on the host's speed).
const MIN_ROUNDS: u64 = 2000;
/// Local timer interrupts per second below which the timer counts as
/// stalled (HZ is 250).
const MIN_TIMER_HZ: f64 = 100.0;

fn mmap(len: usize, prot: usize, flags: usize, fd: usize, off: usize) -> Result<*mut u8, isize> {
    match syscall6(SYS_MMAP, [0, len, prot, flags, fd, off]) {
        r if r < 0 && r > -4096 => Err(-r),
        r => Ok(r as *mut u8),
    }
}

fn local_timer_irqs() -> u64 {
    let s = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    s.lines()
        .find(|l| l.trim_start().starts_with("LOC:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn minor_faults() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is 3rd.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn vendor() -> [u32; 3] {
    let l = __cpuid(0);
    [l.ebx, l.edx, l.ecx]
}

pub fn stress(secs: u64) -> Result<String, String> {
    if super::syscall3(super::SYS_IOPERM, 0x80, 1, 1) != 0 {
        return Err("ioperm refused".into());
    }
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mem")
        .map_err(|e| format!("/dev/mem: {e}"))?;
    // PROT_READ|PROT_WRITE, MAP_SHARED.
    let ioapic = mmap(4096, 3, 1, mem.as_raw_fd() as usize, IOAPIC)
        .map_err(|e| format!("mapping the IOAPIC: errno {e}"))?;
    let mmio_read = || {
        // SAFETY: the IOAPIC page is mapped shared and uncached by the
        // kernel's /dev/mem; IOREGSEL at 0, IOWIN at 0x10; register 1 is
        // the read-only version register.
        unsafe {
            core::ptr::write_volatile(ioapic as *mut u32, 1);
            core::ptr::read_volatile(ioapic.add(0x10) as *const u32)
        }
    };
    let (v0, io0, m0) = (vendor(), super::inb(0x80), mmio_read());
    let (t0, f0, start) = (local_timer_irqs(), minor_faults(), Instant::now());
    let (mut cpuid, mut io, mut mmio, mut faults) = (0u64, 0u64, 0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        if vendor() != v0 {
            return Err(format!("CPUID vendor changed after {cpuid} calls"));
        }
        cpuid += 1;
        super::outb(0x80, cpuid as u8);
        if super::inb(0x80) != io0 {
            return Err(format!("port 0x80 read changed after {io} accesses"));
        }
        io += 2;
        if mmio_read() != m0 {
            return Err(format!("the IOAPIC version changed after {mmio} accesses"));
        }
        mmio += 2;
        // PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS.
        let p =
            mmap(PAGES * 4096, 3, 0x22, usize::MAX, 0).map_err(|e| format!("mmap: errno {e}"))?;
        for i in 0..PAGES {
            // SAFETY: p maps PAGES fresh pages of our own.
            unsafe { core::ptr::write_volatile(p.add(i * 4096), i as u8) };
        }
        syscall6(SYS_MUNMAP, [p as usize, PAGES * 4096, 0, 0, 0, 0]);
        faults += PAGES as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (ticks, kernel_faults) = (local_timer_irqs() - t0, minor_faults() - f0);
    if kernel_faults < faults {
        return Err(format!(
            "the kernel counted {kernel_faults} page faults, we caused {faults}"
        ));
    }
    if (ticks as f64) < elapsed * MIN_TIMER_HZ {
        return Err(format!(
            "{ticks} local timer interrupts in {elapsed:.1} s (fewer than {MIN_TIMER_HZ}/s)"
        ));
    }
    if cpuid < MIN_ROUNDS {
        return Err(format!(
            "{cpuid} rounds of CPUID, port I/O, MMIO and page faults in {elapsed:.1} s (fewer than {MIN_ROUNDS})"
        ));
    }
    if m0 & 0xff == 0 || m0 == u32::MAX {
        return Err(format!("the IOAPIC version register reads {m0:#x}"));
    }
    Ok(format!(
        "cpuid={cpuid} io={io} mmio={mmio} faults={kernel_faults} (caused {faults}) timer-irqs={ticks} seconds={elapsed:.1} ioapic-version={m0:#x}"
    ))
}
