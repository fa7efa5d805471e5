//! The Bochs scenarios: which images boot, what each serial line must show
//! (in order), and what must never appear.

use std::path::PathBuf;
use std::time::Duration;

use crate::build::{Images, IsoModule};
use crate::emulator::{self, Emulator, Verdict};

pub struct Scenario {
    pub name: &'static str,
    pub l0_cmdline: &'static str,
    pub modules: fn(&Images) -> Vec<IsoModule>,
    pub limit: Duration,
    /// Markers on COM1 (the cloud VM's console), in order.
    pub com1: &'static [&'static str],
    /// Markers on COM2 (L0's management line), in order.
    pub com2: &'static [&'static str],
    /// Markers that fail the scenario wherever they appear.
    pub forbidden: &'static [&'static str],
}

/// Failure markers of every scenario that expects L0 and L1 to be healthy.
const HEALTHY: &[&str] = &["FAIL", "L0 FATAL", "L0 PANIC", "GUEST panic", "GUEST exception", "L0 WARN  command line"];

fn guest(cmdline: &'static str) -> fn(&Images) -> Vec<IsoModule> {
    // One function per command line: fn pointers cannot capture.
    match cmdline {
        "boot" => |i| vec![IsoModule::file(&i.guest, "l1=multiboot test=boot")],
        "ept-guard" => |i| vec![IsoModule::file(&i.guest, "l1=multiboot test=ept-guard")],
        _ => unreachable!(),
    }
}

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "boot",
            l0_cmdline: "serial=com2 loglevel=info",
            modules: guest("boot"),
            limit: Duration::from_secs(60),
            com1: &["TEST boot START", "CHECK cpuid-signature ok", "CHECK low-memory-is-l1s ok", "TEST boot PASS"],
            com2: &[
                "L0 cloud hypervisor",
                "L0 relocated to the pool",
                "VMX on",
                "starting the cloud VM",
                "cloud VM requested shutdown",
                "L0 integrity OK",
            ],
            forbidden: HEALTHY,
        },
        Scenario {
            name: "ept-guard",
            l0_cmdline: "serial=com2 loglevel=info",
            modules: guest("ept-guard"),
            limit: Duration::from_secs(120),
            com1: &[
                "TEST ept-guard START",
                "CHECK l0-range-listed ok",
                "CHECK read-all-ones ok",
                "CHECK read-back-only-own-data ok",
                "CHECK l0-alive ok",
                "TEST ept-guard PASS",
            ],
            com2: &["starting the cloud VM", "L1 read L0 memory", "L1 wrote L0 memory", "L0 integrity OK"],
            forbidden: HEALTHY,
        },
        Scenario {
            // A module that is not a kernel: L0 says so and stops.
            name: "bad-kernel",
            l0_cmdline: "serial=com2",
            modules: |_| vec![IsoModule::inline("not-a-kernel.txt", b"This is a text file, not a kernel.\n", "l1=multiboot")],
            limit: Duration::from_secs(60),
            com1: &[],
            com2: &["L0 FATAL: cloud VM kernel: no multiboot header"],
            forbidden: &["L0 PANIC", "starting the cloud VM"],
        },
    ]
}

/// Failure markers of the Linux scenarios: L0 stopping, L1's kernel
/// panicking, its init or the clock probe reporting a failure.
const LINUX_HEALTHY: &[&str] = &["L0 FATAL", "L0 PANIC", "L0 WARN  command line", "Kernel panic", "CLOCK FAIL", "L1INIT FAIL"];

/// Linux cloud VM scenarios (docs/linux-l1.md). They build the lean kernel
/// and initramfs on first use (cached under ~/.cache/l0-hypervisor).
pub fn linux() -> Vec<Scenario> {
    let m = crate::linux::run_marker();
    let leak = |v: Vec<String>| -> &'static [&'static str] {
        Box::leak(v.into_iter().map(|s| &*Box::leak(s.into_boxed_str())).collect::<Vec<_>>().into_boxed_slice())
    };
    vec![
        Scenario {
            // L1 Linux reaches init with KVM (EPT, VPID) and a clock that
            // agrees with the PIT and with L0's TSC within 5 %.
            name: "linux-l1-boot",
            l0_cmdline: "serial=com2 loglevel=info",
            modules: |_| crate::linux::scenario_modules("boot"),
            limit: Duration::from_secs(300),
            com1: &["L1INIT ok", "KVM ept=Y vpid=Y", "CLOCK ok", "L1DONE"],
            com2: &["TSC:", "starting the cloud VM: Linux bzImage", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: LINUX_HEALTHY,
        },
        Scenario {
            // QEMU/KVM in L1 runs two L2 Linux VMs at once; each prints the
            // run's marker on its ttyS0 and powers off; QEMU exits 0.
            name: "linux-l2",
            l0_cmdline: "serial=com2 loglevel=info",
            modules: |_| crate::linux::scenario_modules("l2"),
            limit: Duration::from_secs(900),
            com1: leak(vec![
                "L1INIT ok".into(),
                "KVM ept=Y vpid=Y".into(),
                format!("vm1| L2 {m}-vm1 ok"),
                "QEMU vm1 exit=0".into(),
                format!("vm2| L2 {m}-vm2 ok"),
                "QEMU vm2 exit=0".into(),
                "L2 concurrent=yes".into(),
                "L1DONE".into(),
            ]),
            com2: &["starting the cloud VM: Linux bzImage", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: LINUX_HEALTHY,
        },
        Scenario {
            // A module that is no bzImage: L0 says so and stops.
            name: "linux-bad-kernel",
            l0_cmdline: "serial=com2",
            modules: |_| vec![IsoModule::inline("not-a-bzimage.txt", b"This is a text file, not a kernel.\n", "l1=linux console=ttyS0")],
            limit: Duration::from_secs(60),
            com1: &[],
            com2: &["L0 FATAL: cloud VM kernel: not a Linux bzImage"],
            forbidden: &["L0 PANIC", "starting the cloud VM"],
        },
        Scenario {
            // The real kernel with an initrd that is no archive.
            name: "linux-bad-initrd",
            l0_cmdline: "serial=com2",
            modules: |_| {
                let mut m = crate::linux::scenario_modules("boot");
                m.truncate(1);
                m.push(IsoModule::inline("garbage.img", b"garbage, not a cpio archive", "l1.initrd"));
                m
            },
            limit: Duration::from_secs(60),
            com1: &[],
            com2: &["L0 FATAL: cloud VM kernel: the initrd is neither a cpio archive"],
            forbidden: &["L0 PANIC", "starting the cloud VM"],
        },
    ]
}

/// Whether `markers` all appear in `log` in this order.
pub fn in_order(log: &str, markers: &[&str]) -> bool {
    let mut rest = log;
    markers.iter().all(|m| match rest.find(m) {
        Some(i) => {
            rest = &rest[i + m.len()..];
            true
        }
        None => false,
    })
}

/// The first forbidden marker in either log.
pub fn forbidden(s: &Scenario, com1: &str, com2: &str) -> Option<&'static str> {
    s.forbidden.iter().copied().find(|m| com1.contains(m) || com2.contains(m))
}

pub struct Outcome {
    pub passed: bool,
    pub reason: String,
    pub elapsed: Duration,
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

pub fn run(s: &Scenario, images: &Images, emu: Emulator) -> Result<Outcome, String> {
    let dir = crate::build::target_dir().join("scenarios").join(s.name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let iso = dir.join("boot.iso");
    crate::build::iso(&iso, &images.l0, s.l0_cmdline, &(s.modules)(images))?;
    // Once everything expected is there, give the guest a moment to shut
    // the emulator down itself, then stop it.
    let mut done_at: Option<std::time::Instant> = None;
    let run = emulator::run(emu, &dir, &iso, 512, s.limit, false, |c1, c2| {
        if forbidden(s, c1, c2).is_some() {
            return Verdict::Stop;
        }
        if in_order(c1, s.com1) && in_order(c2, s.com2) {
            let t = *done_at.get_or_insert_with(std::time::Instant::now);
            if t.elapsed() > Duration::from_secs(1) {
                return Verdict::Stop;
            }
        }
        Verdict::Continue
    })?;
    let reason = if let Some(m) = forbidden(s, &run.com1, &run.com2) {
        format!("failure marker \"{m}\" appeared")
    } else if !in_order(&run.com1, s.com1) {
        format!("COM1 lacks (in order) {:?}", s.com1)
    } else if !in_order(&run.com2, s.com2) {
        format!("COM2 lacks (in order) {:?}", s.com2)
    } else {
        String::new()
    };
    let passed = reason.is_empty();
    if !passed {
        eprintln!("---- {} failed: {reason}{}", s.name, if run.timed_out { " (wall-clock limit reached)" } else { "" });
        eprintln!("---- COM1 (cloud VM), last lines:\n{}", tail(&run.com1, 40));
        eprintln!("---- COM2 (L0), last lines:\n{}", tail(&run.com2, 60));
        eprintln!("---- {}/bochs.log, last lines:\n{}", dir.display(), tail(&run.emulator_log(), 30));
    }
    Ok(Outcome { passed, reason, elapsed: run.elapsed })
}

pub fn find(name: &str) -> Option<Scenario> {
    all().into_iter().chain(linux()).find(|s| s.name == name)
}

pub fn scenario_dir(name: &str) -> PathBuf {
    crate::build::target_dir().join("scenarios").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_in_order() {
        assert!(in_order("a\nb\nc\n", &["a", "c"]));
        assert!(!in_order("a\nb\nc\n", &["c", "a"]));
        assert!(in_order("anything", &[]));
        assert!(!in_order("a", &["a", "a"]));
    }

    #[test]
    fn scenario_names_are_unique() {
        let mut names: Vec<_> = all().iter().chain(&linux()).map(|s| s.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
