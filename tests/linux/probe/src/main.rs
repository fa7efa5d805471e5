//! `probe clock`: whether the cloud VM's clock runs true. Times a stretch of
//! PIT channel 2 countdowns (the hardware's own time base) with the cloud
//! VM's CLOCK_MONOTONIC and with the TSC at the frequency L0 announces in
//! CPUID 0x15; prints all three and `CLOCK ok` if L1's clock agrees with
//! both within 5 %, `CLOCK FAIL ...` otherwise.
//!
//! `probe shutdown`: writes "Shutdown" to Bochs's port 0x8900, which L0
//! watches (it reports and checks its integrity, then passes it on).
//!
//! `probe kvm-churn N`: creates and destroys N KVM VMs one after another
//! through /dev/kvm, each a real-mode guest that writes one byte to COM1
//! and halts (`CHURN ok N` when all halted and none showed KVM the port:
//! L0 takes it). L0 must see each VM come and go without leaking.
//!
//! `probe stress SECS` (in a user VM): CPUID, port I/O, MMIO, page faults
//! and timer interrupts for SECS seconds, counts checked (stress.rs).
//!
//! `probe tsc`, `probe cpuid-bench N`, `probe io-bench N`: the TSC, and
//! the mean guest-TSC ticks of a CPUID or of an OUT to port 0x80 (the
//! peer benchmark, in a user VM).
//!
//! `probe pit-tsc`, `probe serial-bench N [SUFFIX]`, `probe ticks CMD...`:
//! the TSC's rate by the PIT, serial output's cost per byte, a command's
//! duration in TSC ticks (bench.rs, for `cargo xtask bench`).
//!
//! `probe spy [--relay] [FILE...]`: the provider's view searched for the
//! operator's console marker (spy.rs); `--relay`: l0-relay must be among
//! the processes searched; `--control` and `--control-domain DOMID MIB` check
//! that the search would find it where it must be; `--xl-save IMAGE`
//! searches an `xl save` image outside the guest's RAM (xl_save.rs).
//!
//! `probe capture FILE`, `probe capture-check FILE PORT`: a packet
//! capture in L1, and what it holds of the relay's connections
//! (capture.rs).
//!
//! `probe disk-put FILE...` / `probe disk-get DIR`: files to and from the
//! raw disk that carries a migration between two hosts (disk.rs).
//!
//! Port access from user space needs root and CONFIG_X86_IOPL_IOPERM.

mod bench;
mod capture;
mod disk;
mod spy;
mod stress;
mod xl_save;

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

fn syscall6(nr: usize, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the callers pass valid fds and pointers to live buffers of
    // the sizes the ioctl/mmap/munmap contracts name.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
             in("r10") a[3], in("r8") a[4], in("r9") a[5], lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

fn outb(port: u16, v: u8) {
    // SAFETY: the port was granted by ioperm/iopl; see the callers.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as outb.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
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
            println!(
                "CLOCK ok: L1 {:.3}x the PIT, {:.3}x L0",
                l1_ms / pit_ms,
                l1_ms / l0
            );
            ExitCode::SUCCESS
        }
        Some(l0) => {
            println!(
                "CLOCK FAIL: L1's clock runs {:.3}x the PIT and {:.3}x L0's (limit 5 %)",
                l1_ms / pit_ms,
                l1_ms / l0
            );
            ExitCode::FAILURE
        }
        None => {
            println!(
                "CLOCK FAIL: CPUID 0x15 announces no TSC frequency; L1's clock runs {:.3}x the PIT",
                l1_ms / pit_ms
            );
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

mod kvm {
    //! Just enough of the KVM API (include/uapi/linux/kvm.h) for a
    //! real-mode guest: ioctl numbers, kvm_regs, kvm_sregs, kvm_run.
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const SYS_IOCTL: usize = 16;
    const SYS_MMAP: usize = 9;
    const SYS_MUNMAP: usize = 11;
    pub const CREATE_VM: usize = 0xae01;
    pub const GET_VCPU_MMAP_SIZE: usize = 0xae04;
    pub const CREATE_VCPU: usize = 0xae41;
    pub const SET_USER_MEMORY_REGION: usize = 0x4020_ae46;
    pub const RUN: usize = 0xae80;
    pub const SET_REGS: usize = 0x4090_ae82;
    pub const GET_SREGS: usize = 0x8138_ae83;
    pub const SET_SREGS: usize = 0x4138_ae84;
    pub const EXIT_IO: u32 = 2;
    pub const EXIT_HLT: u32 = 5;

    use super::syscall6;

    pub fn ioctl(fd: &impl AsRawFd, req: usize, arg: usize) -> Result<usize, String> {
        let r = syscall6(SYS_IOCTL, [fd.as_raw_fd() as usize, req, arg, 0, 0, 0]);
        if r < 0 {
            Err(format!("ioctl {req:#x}: errno {}", -r))
        } else {
            Ok(r as usize)
        }
    }

    pub fn fd(raw: usize) -> OwnedFd {
        // SAFETY: a descriptor KVM just returned to us, owned from here on.
        unsafe { OwnedFd::from_raw_fd(raw as i32) }
    }

    /// An anonymous (or, with `fd`, shared file) mapping, unmapped on drop.
    pub struct Map {
        pub ptr: *mut u8,
        pub len: usize,
    }

    impl Map {
        pub fn new(len: usize, shared: Option<&OwnedFd>) -> Result<Map, String> {
            const PROT_RW: usize = 3;
            let (flags, f) = match shared {
                Some(f) => (0x01, f.as_raw_fd() as usize), // MAP_SHARED
                None => (0x02 | 0x20, usize::MAX),         // MAP_PRIVATE | MAP_ANONYMOUS
            };
            let r = syscall6(SYS_MMAP, [0, len, PROT_RW, flags, f, 0]);
            if r < 0 {
                Err(format!("mmap: errno {}", -r))
            } else {
                Ok(Map {
                    ptr: r as *mut u8,
                    len,
                })
            }
        }
    }

    impl Drop for Map {
        fn drop(&mut self) {
            syscall6(SYS_MUNMAP, [self.ptr as usize, self.len, 0, 0, 0, 0]);
        }
    }
}

/// One KVM VM from creation to destruction; the exit reason of its run.
fn one_vm(dev: &std::fs::File, i: u32) -> Result<u32, String> {
    let vm = kvm::fd(kvm::ioctl(dev, kvm::CREATE_VM, 0)?);
    let mem = kvm::Map::new(0x10000, None)?;
    // mov dx, 0x3f8; mov al, 'a' + i % 26; out dx, al; hlt
    let code = [0xba, 0xf8, 0x03, 0xb0, b'a' + (i % 26) as u8, 0xee, 0xf4];
    // SAFETY: `mem` is our fresh 64 KiB mapping.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), mem.ptr.add(0x1000), code.len()) };
    let region: [u64; 4] = [0, 0, 0x10000, mem.ptr as u64]; // slot 0, flags 0, gpa 0, size, host address
    kvm::ioctl(&vm, kvm::SET_USER_MEMORY_REGION, region.as_ptr() as usize)?;
    let vcpu = kvm::fd(kvm::ioctl(&vm, kvm::CREATE_VCPU, 0)?);
    let run_len = kvm::ioctl(dev, kvm::GET_VCPU_MMAP_SIZE, 0)?;
    let run = kvm::Map::new(run_len, Some(&vcpu))?;
    // Real mode at 0:0x1000: CS base and selector 0 (kvm_sregs: CS first).
    let mut sregs = [0u8; 312];
    kvm::ioctl(&vcpu, kvm::GET_SREGS, sregs.as_mut_ptr() as usize)?;
    sregs[0..8].fill(0);
    sregs[12..14].fill(0);
    kvm::ioctl(&vcpu, kvm::SET_SREGS, sregs.as_ptr() as usize)?;
    let mut regs = [0u64; 18];
    regs[16] = 0x1000; // RIP
    regs[17] = 2; // RFLAGS
    kvm::ioctl(&vcpu, kvm::SET_REGS, regs.as_ptr() as usize)?;
    kvm::ioctl(&vcpu, kvm::RUN, 0)?;
    // SAFETY: kvm_run's exit_reason is the u32 at offset 8 of the mapping.
    let reason = unsafe { std::ptr::read_volatile(run.ptr.add(8) as *const u32) };
    drop(run);
    drop(vcpu);
    drop(mem);
    drop(vm);
    Ok(reason)
}

fn kvm_churn(n: u32) -> ExitCode {
    let dev = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(f) => f,
        Err(e) => {
            println!("CHURN FAIL /dev/kvm: {e}");
            return ExitCode::FAILURE;
        }
    };
    for i in 0..n {
        match one_vm(&dev, i) {
            Ok(kvm::EXIT_HLT) => {}
            Ok(kvm::EXIT_IO) => {
                println!("CHURN FAIL vm {i}: KVM saw the COM1 write (L0 did not take the port)");
                return ExitCode::FAILURE;
            }
            Ok(r) => {
                println!("CHURN FAIL vm {i}: exit reason {r}, expected HLT");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                println!("CHURN FAIL vm {i}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("CHURN ok {n}");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("clock") => clock(),
        Some("shutdown") => shutdown(),
        Some(c @ ("disk-put" | "disk-get")) => {
            let rest: Vec<String> = args.collect();
            let r = match (c, rest.as_slice()) {
                ("disk-get", [dir]) => disk::get(dir),
                ("disk-get", _) => Err("usage: probe disk-get DIR".into()),
                _ => disk::put(&rest),
            };
            r.map(|_| ExitCode::SUCCESS).unwrap_or_else(|e| {
                println!("DISK FAIL: {e}");
                ExitCode::FAILURE
            })
        }
        Some("stress") => {
            match stress::stress(args.next().and_then(|n| n.parse().ok()).unwrap_or(30)) {
                Ok(counts) => {
                    println!("STRESS {counts} ok");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("STRESS FAIL: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("tsc") => {
            // SAFETY: RDTSC has no side effects.
            println!("{}", unsafe { _rdtsc() });
            ExitCode::SUCCESS
        }
        Some(b @ ("cpuid-bench" | "io-bench")) => {
            // Guest-TSC ticks per exit to the guest hypervisor (CPUID) or
            // to its device model (OUT to port 0x80), mean over N.
            let n: u64 = args
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(2000)
                .max(1);
            if b == "io-bench" && syscall3(SYS_IOPERM, 0x80, 1, 1) != 0 {
                println!("BENCH FAIL: ioperm refused");
                return ExitCode::FAILURE;
            }
            // SAFETY: as above.
            let t0 = unsafe { _rdtsc() };
            for i in 0..n {
                if b == "io-bench" {
                    outb(0x80, i as u8);
                } else {
                    std::hint::black_box(__cpuid(0));
                }
            }
            // SAFETY: as above.
            let t = unsafe { _rdtsc() } - t0;
            println!(
                "BENCH l2-{}-ticks {}",
                if b == "io-bench" { "port-io" } else { "cpuid" },
                t / n
            );
            ExitCode::SUCCESS
        }
        Some("spy") => {
            let files: Vec<String> = args.collect();
            let ok = match files.as_slice() {
                [c] if c == "--control" => spy::control(),
                [c, f] if c == "--xl-save" => spy::xl_save(f),
                [c, d, m] if c == "--control-domain" => match (d.parse(), m.parse()) {
                    (Ok(d), Ok(m)) => spy::control_domain(d, m),
                    _ => {
                        println!("SPY FAIL: --control-domain DOMID MIB, not {d} {m}");
                        false
                    }
                },
                [r, rest @ ..] if r == "--relay" => spy::spy(rest, true),
                _ => spy::spy(&files, false),
            };
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some("capture") => match args.next() {
            Some(f) if capture::capture(&f) => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        },
        Some("capture-check") => {
            let (f, port) = (
                args.next().unwrap_or_default(),
                args.next().and_then(|p| p.parse().ok()),
            );
            match port {
                Some(port) if capture::check(&f, port) => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            }
        }
        Some("pit-tsc") => bench::pit_tsc(),
        Some("serial-bench") => {
            let n = args
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(2000usize)
                .max(1);
            bench::serial_bench(n, &args.next().unwrap_or_default())
        }
        Some("ticks") => bench::ticks(&args.collect::<Vec<_>>()),
        Some("dirty") => {
            let mib = args.next().and_then(|n| n.parse().ok()).unwrap_or(16);
            bench::dirty(mib, args.next().and_then(|n| n.parse().ok()).unwrap_or(10))
        }
        Some("kvm-churn") => kvm_churn(args.next().and_then(|n| n.parse().ok()).unwrap_or(50)),
        _ => {
            eprintln!("usage: probe clock | probe shutdown | probe kvm-churn [N] | probe disk-put FILE... | probe disk-get DIR | probe spy [--relay] [FILE...] | probe capture FILE | probe capture-check FILE PORT | probe stress [SECS] | probe tsc | probe cpuid-bench|io-bench [N] | probe pit-tsc | probe serial-bench [N [SUFFIX]] | probe ticks CMD... | probe dirty [MIB [SECS]]");
            ExitCode::from(2)
        }
    }
}
