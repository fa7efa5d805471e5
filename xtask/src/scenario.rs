//! The Bochs scenarios: which images boot, what each serial line must show
//! (in order), and what must never appear.

use std::path::PathBuf;
use std::time::Duration;

use crate::build::{Images, IsoBoot, IsoModule};
use crate::console::{Follower, Input, LineUser, DETACH};
use crate::emulator::{self, Emulator, Logs, Verdict};
use crate::judge;
use crate::operator::Operator;

pub struct Scenario {
    pub name: &'static str,
    pub boot: Boot,
    pub limit: Duration,
    /// Markers on COM1 (the cloud VM's console), in order.
    pub com1: &'static [&'static str],
    /// Markers on COM2 (L0's management line), in order. Empty for native
    /// scenarios: no L0 is there to write them.
    pub com2: &'static [&'static str],
    /// Markers that fail the scenario wherever they appear.
    pub forbidden: &'static [&'static str],
    /// Whether plain `cargo xtask test` runs it. `false` for scenarios that
    /// cannot pass yet (the L0 variants of the nested-VMX scenarios, until
    /// L0 offers VMX to L1); `cargo xtask test scenario NAME` runs any.
    pub enabled_in_ci: bool,
    /// What the user VMs' consoles, followed on L0's management line, must
    /// show; and what the operator types there.
    pub console: ConsoleCheck,
    /// A raw disk on the secondary ATA channel (`disk.img` in the
    /// scenario's directory): the channel between two hosts.
    pub disk: Disk,
    /// CPUs of the emulated host (Bochs `cpu: count=`, QEMU `-smp`).
    pub cpus: u32,
}

pub enum Disk {
    None,
    /// A blank disk, kept after the run for the scenarios that read it.
    Blank,
    /// A copy of the disk another scenario left (run first if this
    /// process has not run it yet).
    From(&'static str),
}

/// A blank disk's size: 260 cylinders of 16 heads x 63 sectors (Bochs
/// takes a flat image's geometry from the configuration).
pub const DISK_CYLINDERS: u64 = 260;
pub const DISK_BYTES: u64 = DISK_CYLINDERS * 16 * 63 * 512;

pub struct ConsoleCheck {
    /// Text that must appear in the transcript (`console.log`), any order.
    pub expect: &'static [&'static str],
    /// Text that must appear in this order, where the story has one (a
    /// backlog line only after the operator is back).
    pub ordered: &'static [&'static str],
    /// Text that must not appear (a line that a refused restore must not
    /// bring back).
    pub forbidden: &'static [&'static str],
    /// Operator input typed when its trigger appears.
    pub typed: &'static [Input],
    /// Attach every VM as it appears (else only the inputs' targets).
    pub follow_all: bool,
    /// Instead of `typed`: an operator runs this `cargo xtask console`
    /// script (crate::operator), its transcript judged by `expect`.
    pub script: Option<&'static str>,
}

pub const NO_CONSOLE: ConsoleCheck = ConsoleCheck {
    expect: &[],
    ordered: &[],
    forbidden: &[],
    typed: &[],
    follow_all: true,
    script: None,
};

/// How GRUB starts a scenario.
pub enum Boot {
    /// L0 (multiboot2) with this command line, the cloud VM and its modules.
    L0 {
        cmdline: &'static str,
        modules: fn(&Images) -> Vec<IsoModule>,
    },
    /// The scenario guest alone (multiboot v1) with these arguments: the
    /// emulator's own VMX is the hypervisor below it ("native").
    Native { args: &'static str },
    /// The peer bottom (`cargo xtask bench`): Linux/KVM booted directly,
    /// running the cloud VM (`l0test=TEST`) under QEMU with nested VMX.
    Peer { test: &'static str },
    /// Xen with its dom0 (crate::xen) as the cloud VM under L0, or booted
    /// directly by GRUB with no L0 (`native`); dom0's /init runs `xentest`
    /// (tests/xen/init-dom0: "boot", or "pvh" to `xl create` a PVH guest).
    Xen { native: bool, xentest: &'static str },
    /// The Xen peer bottom (`cargo xtask bench`): Linux/KVM booted
    /// directly, running Xen and its dom0 (`xentest`) under QEMU with
    /// nested VMX (crate::xen::peer).
    XenPeer { xentest: &'static str },
}

impl Scenario {
    pub fn native(&self) -> bool {
        matches!(
            self.boot,
            Boot::Native { .. } | Boot::Xen { native: true, .. }
        )
    }

    /// The emulated host's RAM: the peer holds the cloud VM in its own
    /// RAM; Xen's dom0 takes XEN_DOM0_MEM beside Xen and L0.
    pub fn memory_mib(&self) -> u32 {
        match self.boot {
            Boot::Peer { .. } | Boot::Xen { .. } => 1024,
            // Xen's guest RAM beside the peer's initramfs (QEMU, Xen, dom0).
            Boot::XenPeer { .. } => 1536,
            _ => 512,
        }
    }
}

/// Failure markers of every scenario that expects L0 and L1 to be healthy.
/// (The guest's own failures are its tests' verdicts: crate::verdict.)
const HEALTHY: &[&str] = &[
    "L0 FATAL",
    "L0 PANIC",
    "GUEST panic",
    "GUEST exception",
    "L0 WARN  command line",
    // L0's entry checks missed a rule the hardware applies to VMCS02.
    "although it passed L0's checks",
];
/// The same for a guest that runs without L0.
const NATIVE_HEALTHY: &[&str] = &["GUEST panic", "GUEST exception"];
/// What L0 says around a healthy cloud VM run.
const L0_RUNS_GUEST: &[&str] = &["starting the cloud VM", "L0 integrity OK"];

/// The cloud VM module: the scenario guest with `l1=multiboot test=NAME`.
/// (A macro: fn pointers cannot capture the name.)
macro_rules! guest {
    ($name:literal) => {
        |i: &Images| {
            vec![IsoModule::file(
                &i.guest,
                concat!("l1=multiboot test=", $name),
            )]
        }
    };
}

/// The sealing key of the scenarios that save and restore: an `l0.key`
/// module (64 hex digits), the only way L0 takes a key.
const TEST_KEY: &[u8] = b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";

/// The cloud VM module plus the sealing key.
macro_rules! guest_with_key {
    ($name:literal) => {
        |i: &Images| {
            vec![
                IsoModule::file(&i.guest, concat!("l1=multiboot test=", $name)),
                IsoModule::inline("l0.key", TEST_KEY, "l0.key"),
            ]
        }
    };
}

/// A test-hypervisor scenario about L0's shadow devices and ultracalls.
/// Only under L0 (natively Bochs's VMX hands L1 every COM access of its
/// L2s and nobody answers ultracalls), so there is no -native variant.
macro_rules! l0_only {
    ($name:literal, $secs:expr, $modules:expr, $console:expr) => {
        Scenario {
            name: $name,
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info",
                modules: $modules,
            },
            limit: Duration::from_secs($secs),
            com1: &[
                concat!("TEST ", $name, " START"),
                concat!("TEST ", $name, " PASS"),
            ],
            com2: L0_RUNS_GUEST,
            forbidden: HEALTHY,
            console: $console,
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
        }
    };
}

/// A guest scenario of the test hypervisor twice: `NAME-native` (booted
/// directly by GRUB, checked against Bochs's VMX, in CI) and `NAME` (booted
/// by L0, enabled in CI once L0 offers nested VMX), on a host with 1 CPU
/// or the CPUs given.
macro_rules! nested {
    ($name:literal, $secs:expr, $l0_in_ci:expr) => {
        nested!($name, $secs, $l0_in_ci, 1)
    };
    ($name:literal, $secs:expr, $l0_in_ci:expr, $cpus:expr) => {
        [
            Scenario {
                name: concat!($name, "-native"),
                boot: Boot::Native {
                    args: concat!("test=", $name),
                },
                limit: Duration::from_secs($secs),
                com1: &[
                    concat!("TEST ", $name, " START"),
                    concat!("TEST ", $name, " PASS"),
                ],
                com2: &[],
                forbidden: NATIVE_HEALTHY,
                console: NO_CONSOLE,
                enabled_in_ci: true,
                disk: Disk::None,
                cpus: $cpus,
            },
            Scenario {
                name: $name,
                boot: Boot::L0 {
                    cmdline: "serial=com2 loglevel=info",
                    modules: guest!($name),
                },
                limit: Duration::from_secs($secs * 3),
                com1: &[
                    concat!("TEST ", $name, " START"),
                    concat!("TEST ", $name, " PASS"),
                ],
                com2: L0_RUNS_GUEST,
                forbidden: HEALTHY,
                console: NO_CONSOLE,
                enabled_in_ci: $l0_in_ci,
                disk: Disk::None,
                cpus: $cpus,
            },
        ]
    };
}

/// A nested scenario with extra guest arguments, natively and under L0:
/// `l2=paged` / `l2=noept` make the test hypervisor use its fallbacks for
/// capabilities without unrestricted guest / without EPT, so both paths of
/// L0 (EPT02 shadows, and EPT01 serving an L2 without EPT12) are exercised.
macro_rules! fallback {
    ($name:literal, $variant:literal, $secs:expr) => {
        [
            Scenario {
                name: concat!($name, "-", $variant, "-native"),
                boot: Boot::Native {
                    args: concat!("test=", $name, " l2=", $variant),
                },
                limit: Duration::from_secs($secs),
                com1: &[
                    concat!("TEST ", $name, " START"),
                    "forced by the command line",
                    concat!("TEST ", $name, " PASS"),
                ],
                com2: &[],
                forbidden: NATIVE_HEALTHY,
                console: NO_CONSOLE,
                enabled_in_ci: true,
                disk: Disk::None,
                cpus: 1,
            },
            Scenario {
                name: concat!($name, "-", $variant),
                boot: Boot::L0 {
                    cmdline: "serial=com2 loglevel=info",
                    modules: |i: &Images| {
                        vec![IsoModule::file(
                            &i.guest,
                            concat!("l1=multiboot test=", $name, " l2=", $variant),
                        )]
                    },
                },
                limit: Duration::from_secs($secs * 3),
                com1: &[
                    concat!("TEST ", $name, " START"),
                    "forced by the command line",
                    concat!("TEST ", $name, " PASS"),
                ],
                com2: L0_RUNS_GUEST,
                forbidden: HEALTHY,
                console: NO_CONSOLE,
                enabled_in_ci: L0_NESTED_VMX,
                disk: Disk::None,
                cpus: 1,
            },
        ]
    };
}

/// Whether L0 offers nested VMX yet. Flip to `true` when it does: the L0
/// variants of the nested scenarios then run in `cargo xtask test`.
const L0_NESTED_VMX: bool = true;

pub fn all() -> Vec<Scenario> {
    let mut v = vec![
        Scenario {
            name: "boot",
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info",
                modules: guest!("boot"),
            },
            limit: Duration::from_secs(60),
            com1: &[
                "TEST boot START",
                "CHECK cpuid-signature ok",
                "CHECK cpuid-detect ok",
                "CHECK cpuid-no-perfmon-or-trace ok",
                "CHECK perfmon-msrs-fault ok",
                "CHECK rdpmc-faults ok",
                "CHECK low-memory-is-l1s ok",
                "CHECK ram-zeroed-for-l1 ok",
                "TEST boot PASS",
            ],
            com2: &[
                "L0 cloud hypervisor",
                // Bochs has no IOMMU: L0 says so and boots on.
                "DMA isolation absent: no VT-d (no DMAR table)",
                "L0 relocated to the pool",
                "VMX on",
                "starting the cloud VM",
                "cloud VM requested shutdown",
                "L0 integrity OK",
                "L0 data intact",
            ],
            forbidden: HEALTHY,
            console: NO_CONSOLE,
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
        },
        // The same on a host with two CPUs: L0 finds the second in the
        // MADT and starts it into VMX root; the cloud VM runs as before.
        Scenario {
            name: "smp-boot",
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info",
                modules: guest!("boot"),
            },
            limit: Duration::from_secs(60),
            com1: &["TEST boot START", "TEST boot PASS"],
            com2: &[
                "VMX on",
                "starting the cloud VM",
                "CPU APIC ID 0x1: runs the cloud VM",
                "CPUs: 2 of 2 run the cloud VM (boot CPU APIC ID 0x0)",
                "CPU APIC ID 0x1: L1 ",
                "L0 integrity OK",
                "L0 data intact",
            ],
            forbidden: &[
                "L0 FATAL",
                "L0 PANIC",
                "GUEST panic",
                "GUEST exception",
                "L0 WARN",
            ],
            console: NO_CONSOLE,
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 2,
        },
        // `cpus=1` on that host: L0 still starts the second CPU, to hold
        // it in VMX root, and the cloud VM runs on the boot CPU alone; its
        // INIT and start-up IPIs at the held CPU start nothing.
        Scenario {
            name: "smp-cap",
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info cpus=1",
                modules: guest!("held-cpu"),
            },
            limit: Duration::from_secs(120),
            com1: &["TEST held-cpu START", "TEST held-cpu PASS"],
            com2: &[
                "starting the cloud VM",
                "CPU APIC ID 0x1: held in VMX root",
                "CPUs: 1 of 2 run the cloud VM (boot CPU APIC ID 0x0)",
                "L0 integrity OK",
            ],
            forbidden: &[
                "L0 FATAL",
                "L0 PANIC",
                "GUEST panic",
                "GUEST exception",
                "GUEST the held CPU ran",
                "L0 WARN",
            ],
            console: NO_CONSOLE,
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 2,
        },
        // `aps=off`: L0 leaves the second CPU as the firmware left it
        // (waiting for a start-up IPI), so it refuses the cloud VM's INIT
        // and start-up IPIs at it: the CPU never runs the VM's code.
        Scenario {
            name: "smp-aps-off",
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info aps=off",
                modules: guest!("held-cpu"),
            },
            limit: Duration::from_secs(120),
            com1: &["TEST held-cpu START", "TEST held-cpu PASS"],
            com2: &[
                "starting the cloud VM",
                "aps=off: the other CPUs stay as the firmware left them",
                "go to its own CPUs only",
                "refused an INIT or start-up IPI of the cloud VM (ICR 0x46",
                "L0 integrity OK",
            ],
            forbidden: &[
                "L0 FATAL",
                "L0 PANIC",
                "GUEST panic",
                "GUEST exception",
                "GUEST the held CPU ran",
            ],
            console: NO_CONSOLE,
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 2,
        },
        Scenario {
            name: "ept-guard",
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info",
                modules: guest!("ept-guard"),
            },
            limit: Duration::from_secs(120),
            com1: &[
                "TEST ept-guard START",
                "CHECK l0-range-listed ok",
                "CHECK read-all-ones ok",
                "CHECK one-scratch-page ok",
                "CHECK read-back-last-write ok",
                "CHECK beyond-the-map-read ok",
                "CHECK l0-alive ok",
                "TEST ept-guard PASS",
            ],
            com2: &[
                "starting the cloud VM",
                // Every page is read first: L1's reads fault them all in,
                // its writes then land in the scratch page without a fault.
                "L1 read L0 memory",
                // One word in every GiB up to 1 TiB beyond the map: 1 GiB
                // pages, a table per 512 GiB at most.
                "mapped as MMIO (1048576 KiB page, 512 so far)",
                "L1 touched L0 memory",
                "L0 integrity OK",
                "L0 data intact",
            ],
            forbidden: HEALTHY,
            console: NO_CONSOLE,
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
        },
        Scenario {
            // A module that is not a kernel: L0 says so and stops.
            name: "bad-kernel",
            boot: Boot::L0 {
                cmdline: "serial=com2",
                modules: |_| {
                    vec![IsoModule::inline(
                        "not-a-kernel.txt",
                        b"This is a text file, not a kernel.\n",
                        "l1=multiboot",
                    )]
                },
            },
            limit: Duration::from_secs(60),
            com1: &[],
            com2: &["L0 FATAL: cloud VM kernel: no multiboot header"],
            forbidden: &["L0 PANIC", "starting the cloud VM"],
            console: NO_CONSOLE,
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
        },
    ];
    // The test hypervisor (tests/guest/src/hv): nested-VMX checks.
    v.extend(nested!("nested-vmx-instr", 60, L0_NESTED_VMX));
    v.extend(nested!("nested-entry-checks", 60, L0_NESTED_VMX));
    v.extend(nested!("nested-basic", 60, L0_NESTED_VMX));
    v.extend(nested!("nested-exits", 60, L0_NESTED_VMX));
    // Its L2 touches more memory than L0 keeps EPT02 tables for (the
    // default cap at l0_mem=32M): L0 reclaims and L2 runs on.
    let [native, mut l0] = nested!("nested-ept", 60, L0_NESTED_VMX);
    l0.com2 = &[
        "EPT02: at most 1024 tables per CPU",
        "starting the cloud VM",
        "EPT02 tables reclaimed (1 times so far",
        "L0 integrity OK",
    ];
    v.extend([native, l0]);
    // The test hypervisor on both CPUs of a 2-CPU host, an L2 on each at
    // once: the guest starts the AP itself (INIT-SIPI-SIPI).
    let [native, mut l0] = nested!("smp-nested", 120, true, 2);
    // L0 logs the refused VMPTRLD and VMCLEAR of CPU 0's current VMCS by CPU 1.
    l0.com2 = &[
        "starting the cloud VM",
        "L1 VMPTRLD of VMCS12",
        "L1 VMCLEAR of VMCS12",
        "L0 integrity OK",
    ];
    v.extend([native, l0]);
    // A VMX abort caused by VMCS12 (an exit MSR-store list naming an MSR
    // that cannot be stored) shuts down the AP's vCPU alone, as the SDM
    // says; L0 and the boot CPU go on. Under L0 only: natively Bochs's own
    // abort would end its CPU.
    v.push(Scenario {
        name: "vmx-abort",
        boot: Boot::L0 {
            cmdline: "serial=com2 loglevel=info",
            modules: guest!("vmx-abort"),
        },
        limit: Duration::from_secs(120),
        com1: &[
            "TEST vmx-abort START",
            "CHECK ap-started ok",
            "CHECK abort-indicator ok",
            "CHECK vcpu-shut-down ok",
            "CHECK l0-alive ok",
            "TEST vmx-abort PASS",
        ],
        com2: &[
            "starting the cloud VM",
            "VMX abort 1 of the cloud VM's vCPU: the VM-exit MSR-store list names an MSR",
            "L0 integrity OK",
        ],
        forbidden: HEALTHY,
        console: NO_CONSOLE,
        enabled_in_ci: true,
        disk: Disk::None,
        cpus: 2,
    });
    for variant in [
        fallback!("nested-basic", "paged", 60),
        fallback!("nested-exits", "paged", 60),
        fallback!("nested-ept", "paged", 60),
        fallback!("nested-basic", "noept", 60),
        fallback!("nested-exits", "noept", 60),
    ] {
        v.extend(variant);
    }
    // Measurements (`cargo xtask bench`); the native run also smoke-tests
    // the bench code in CI, asserting only that its loops complete.
    v.extend(nested!("nested-bench", 120, L0_NESTED_VMX));
    // The L2 CPUID round trip on one CPU of a 2-CPU host alone, then on
    // both at once: in CI natively as a smoke test (~28 s), under L0
    // (~60 s) in `cargo xtask bench` only.
    v.extend(nested!("smp-bench", 120, false, 2));
    // Shadow devices and ultracalls, with 64-bit L2s (docs/testing.md).
    v.push(l0_only!(
        "shadow-console",
        120,
        guest!("shadow-console"),
        ConsoleCheck {
            // Each VM's lines on its own console (L0 numbers them in the
            // order they first touch a COM port: A, then B).
            expect: &[
                "vm 1 tag=console-a",
                "vm 2 tag=console-b",
                "vm1| shadow-console A line 1",
                "vm1| shadow-A-",
                "vm1| shadow-console A line 2",
                "vm1| shadow-console A line 3",
                "vm2| shadow-console B line 1",
                "vm2| shadow-B-",
                "vm2| shadow-console B line 2",
                "vm2| shadow-console B line 3",
            ],
            typed: &[],
            follow_all: true,
            ordered: &[],
            forbidden: &[],
            script: None,
        }
    ));
    // An L2 probes L0's management UART while L1 lets every port through:
    // at COM2 with shadow devices off, and outside COM1-COM4 (Bochs's port
    // 0xE9, which answers; the management line then writes there, not to
    // COM2, so only the guest's verdict is judged).
    type Probe = (
        &'static str,
        &'static str,
        fn(&Images) -> Vec<IsoModule>,
        &'static [&'static str],
    );
    let probes: [Probe; 2] = [
        (
            "l2-probes-l0-port-shadow-off",
            "serial=com2 loglevel=info shadow=off",
            |i| {
                let args = "l1=multiboot test=l2-probes-l0-port port=0x2f8";
                vec![IsoModule::file(&i.guest, args)]
            },
            L0_RUNS_GUEST,
        ),
        (
            "l2-probes-l0-port-e9",
            "serial=0xe9 loglevel=info",
            |i| {
                let args = "l1=multiboot test=l2-probes-l0-port port=0xe9";
                vec![IsoModule::file(&i.guest, args)]
            },
            &[],
        ),
    ];
    for (name, cmdline, modules, com2) in probes {
        v.push(Scenario {
            name,
            boot: Boot::L0 { cmdline, modules },
            limit: Duration::from_secs(60),
            com1: &[
                "TEST l2-probes-l0-port START",
                "CHECK base-reads-absent ok",
                "CHECK lsr-reads-absent ok",
                "CHECK scratch-keeps-nothing ok",
                "TEST l2-probes-l0-port PASS",
            ],
            com2,
            forbidden: HEALTHY,
            console: NO_CONSOLE,
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
        });
    }
    // A log flood from a user VM (L0's debug line for each ultracall it
    // refuses) while the operator follows the VM's console: every console
    // line arrives, in order; L0 suppresses log lines instead of waiting.
    v.push(Scenario {
        name: "shadow-flood",
        boot: Boot::L0 {
            cmdline: "serial=com2 loglevel=debug",
            modules: guest!("shadow-flood"),
        },
        limit: Duration::from_secs(180),
        com1: &["TEST shadow-flood START", "TEST shadow-flood PASS"],
        com2: &[
            "starting the cloud VM",
            "from L2 -> ",
            "log lines not sent: 0 dropped (the line was full), ",
            "L0 integrity OK",
        ],
        // (None suppressed would mean the flood never reached the limit.)
        forbidden: &[
            "L0 FATAL",
            "L0 PANIC",
            "GUEST panic",
            "GUEST exception",
            " 0 over their call site's limit",
        ],
        console: ConsoleCheck {
            expect: &["vm 1 tag=flood"],
            ordered: &[
                "vm1| shadow-console F line 0",
                "vm1| shadow-console F line 1",
                "vm1| shadow-console F line 2",
                "vm1| shadow-console F line 3",
                "vm1| shadow-console F line 4",
                "vm1| shadow-console F line 5",
                "vm1| shadow-console F line 6",
                "vm1| shadow-console F line 7",
                "vm1| shadow-console F line 8",
                "vm1| shadow-console F line 9",
            ],
            forbidden: &[],
            typed: &[],
            follow_all: true,
            script: None,
        },
        enabled_in_ci: true,
        disk: Disk::None,
        cpus: 1,
    });
    // Eight user VMs at once, each with its own console.
    v.push(l0_only!(
        "shadow-many",
        120,
        guest!("shadow-many"),
        many_consoles()
    ));
    v.push(l0_only!(
        "shadow-input",
        120,
        guest!("shadow-input"),
        ConsoleCheck {
            expect: &[
                "vm 1 tag=input-1",
                "vm1| echo: hello-L2",
                "vm1| echo: second-L2"
            ],
            typed: &[
                Input {
                    after: "shadow-input ready>",
                    target: "input-1",
                    text: "hello-L2\r"
                },
                Input {
                    after: "shadow-input again>",
                    target: "input-1",
                    text: "second-L2\r"
                },
            ],
            follow_all: true,
            ordered: &[],
            forbidden: &[],
            script: None,
        }
    ));
    // A VM's owner on the line: L0 booted `console=owners` with its
    // identity module; alpha (the shadow-input VM) registers the owner's
    // key itself; the owner's client (crate::owner) pins L0, types both
    // lines through its session, reads the backlog by offset, adds an ro
    // key that then cannot type, and a stranger and a wrong pin are
    // refused, each with its message in the transcript.
    v.push(Scenario {
        boot: Boot::L0 {
            cmdline: "serial=com2 loglevel=info console=owners",
            modules: |i: &Images| {
                vec![
                    IsoModule::file(
                        &i.guest,
                        &format!(
                            "l1=multiboot test=owner-console owner-key={}",
                            crate::owner::test_keys::RW_PUBLIC_B64
                        ),
                    ),
                    IsoModule::inline(
                        "l0.identity",
                        crate::owner::test_keys::L0_IDENTITY_HEX.as_bytes(),
                        "l0.identity",
                    ),
                ]
            },
        },
        com2: &[
            "starting the cloud VM",
            "owner sessions: on; L0 identity (owners pin this) 17XoHTNuV4sTuNcG6C0GHjA4yWvOZs3PUNVmuW3buhA=",
            "user VM 1 set owner key e06Qm75//kTEZaIgA31gjuNYl9Me+XLwf3SJLLD3PxM= (rw)",
            "owner key D6poTtKIZ7l/Smot7l34zpdOdrcBjj8iocTPJnhXDyA= (ro) added by an owner",
            "L0 integrity OK",
        ],
        console: ConsoleCheck {
            expect: &[],
            ordered: &[
                "owner: refused to connect: L0's identity is ",
                "owner: session refused as expected: L0 could not open the handshake",
                "owner: L0's identity is the pinned ",
                "owner: attached to alpha port 0x3f8 (rw, writer)",
                "owner: typed \"hello-L2\"",
                "owner| echo: hello-L2",
                "owner: typed \"second-L2\"",
                "owner| echo: second-L2",
                "owner: sent BREAK",
                "owner: backlog to offset ",
                "owner: added key D6poTtKIZ7l/Smot7l34zpdOdrcBjj8iocTPJnhXDyA= (ro); the VM holds 2",
                "owner: attached to alpha port 0x3f8 (ro)",
                "owner: type: refused as expected: this key is read-only",
                "owner: BREAK: refused as expected: this key is read-only",
                "owner: session closed",
                "owner: session refused as expected: no VM on this L0 knows this key",
            ],
            forbidden: &["owner: FAILED"],
            typed: &[],
            follow_all: false,
            script: None,
        },
        ..l0_only!("owner-console", 180, guest!("owner-console"), NO_CONSOLE)
    });
    v.push(l0_only!(
        "ultracall-save-restore",
        120,
        guest_with_key!("ultracall-save-restore"),
        ConsoleCheck {
            // A is vm 1, B vm 2, A' vm 3: A's text before the save, A''s
            // after the restore, without the input A left unread (it
            // returns only to A).
            expect: &[
                "vm 1 tag=alpha",
                "vm1| alpha: before save, type now>",
                "vm 2 tag=beta",
                "vm2| beta: standing by",
                "vm 3 tag=alpha",
                "vm3| alpha: after restore, got: ",
            ],
            typed: &[Input {
                after: "alpha: before save, type now>",
                target: "alpha",
                text: "migrate-me"
            }],
            follow_all: true,
            ordered: &[],
            forbidden: &["got: migrate-me"],
            script: None,
        }
    ));
    v.push(l0_only!(
        "ultracall-fuzz",
        300,
        guest_with_key!("ultracall-fuzz"),
        NO_CONSOLE
    ));
    // Measurements of the shadow path (`cargo xtask bench`); in CI it
    // asserts only that its loops complete.
    v.push(l0_only!(
        "shadow-bench",
        120,
        guest_with_key!("shadow-bench"),
        NO_CONSOLE
    ));
    v
}

/// `shadow-many`'s consoles: VM n (L0 numbers them in the order they first
/// touch a COM port: A to H) shows its tag, its letter's three lines and
/// its random line, and no line of another letter.
fn many_consoles() -> ConsoleCheck {
    let leak = |v: Vec<String>| -> &'static [&'static str] {
        Box::leak(
            v.into_iter()
                .map(leak_str)
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        )
    };
    let letters = 'A'..='H';
    let mut expect = Vec::new();
    let mut forbidden = Vec::new();
    for (n, x) in (1..).zip(letters.clone()) {
        expect.push(format!("vm {n} tag=many-{}", x.to_ascii_lowercase()));
        for line in 1..=3 {
            expect.push(format!("vm{n}| shadow-console {x} line {line}"));
        }
        expect.push(format!("vm{n}| shadow-{x}-"));
        for y in letters.clone().filter(|&y| y != x) {
            forbidden.push(format!("vm{n}| shadow-console {y} "));
            forbidden.push(format!("vm{n}| shadow-{y}-"));
        }
    }
    ConsoleCheck {
        expect: leak(expect),
        ordered: &[],
        forbidden: leak(forbidden),
        typed: &[],
        follow_all: true,
        script: None,
    }
}

/// The peer bottom's TSC: under Bochs, the rate as L0 measures it against
/// the PIT (Bochs's TSC counts instructions, `ips` a second). Left to
/// itself the peer's Linux takes it from Bochs's CPUID 0x15 (3.5 GHz), so
/// its clocks, and the cloud VM's and the user VM's with them, would run
/// 35 times slow per instruction and every timed wait would cost 35 times
/// the ticks it costs on L0 (`l2-tsc-khz-by-pit` in `cargo xtask bench`
/// shows it).
fn peer_tsc(emu: Emulator) -> String {
    match emu {
        Emulator::Bochs => format!(" tsc_early_khz={}", crate::emulator::BOCHS_IPS / 1000),
        Emulator::Qemu => String::new(),
    }
}

/// Builds the ISO that boots `s` on `emu`.
pub fn make_iso(
    s: &Scenario,
    images: &Images,
    iso: &std::path::Path,
    emu: Emulator,
) -> Result<(), String> {
    match &s.boot {
        Boot::L0 { cmdline, modules } => {
            let mods = modules(images);
            crate::build::iso(
                iso,
                IsoBoot::L0 {
                    l0: &images.l0,
                    cmdline,
                    modules: &mods,
                },
            )
        }
        Boot::Native { args } => crate::build::iso(
            iso,
            IsoBoot::Native {
                kernel: &images.guest,
                cmdline: args,
            },
        ),
        Boot::Xen { native, xentest } => {
            let mut mods = xen_modules(xentest)?;
            let xen = mods.remove(0);
            if *native {
                crate::build::iso(
                    iso,
                    IsoBoot::Multiboot {
                        kernel: &xen,
                        modules: &mods,
                    },
                )
            } else {
                let mut l1 = vec![IsoModule {
                    payload: xen.payload,
                    cmdline: format!("l1=multiboot {}", xen.cmdline),
                }];
                l1.extend(mods.into_iter().map(|m| IsoModule {
                    payload: m.payload,
                    cmdline: format!("l1.module {}", m.cmdline),
                }));
                // The fleet's sealing key, as every host of a provider
                // has it: save/restore between two Xen hosts.
                l1.push(IsoModule::inline("l0.key", TEST_KEY, "l0.key"));
                crate::build::iso(
                    iso,
                    IsoBoot::L0 {
                        l0: &images.l0,
                        cmdline: "serial=com2 loglevel=info",
                        modules: &l1,
                    },
                )
            }
        }
        Boot::XenPeer { xentest } => {
            let li = crate::linux::images()?;
            let initrd = crate::xen::peer::initramfs(&xen_modules(xentest)?)?;
            crate::build::iso(
                iso,
                IsoBoot::Linux {
                    kernel: &li.kernel,
                    initrd: &initrd,
                    cmdline: &format!("console=ttyS0,115200 panic=0{}", peer_tsc(emu)),
                },
            )
        }
        Boot::Peer { test } => {
            let li = crate::linux::images()?;
            let cmdline = format!(
                "console=ttyS0,115200 panic=0{} l0test={test} l0marker={}",
                peer_tsc(emu),
                crate::linux::run_marker()
            );
            crate::build::iso(
                iso,
                IsoBoot::Linux {
                    kernel: &li.kernel,
                    initrd: &li.peer,
                    cmdline: &cmdline,
                },
            )
        }
    }
}

/// dom0's memory: room for Xen, L0 and user VMs in the 1 GiB host.
const XEN_DOM0_MEM: &str = "320M";
/// A migration host's dom0 holds the guest's whole image (~105 MiB for
/// its 96) in a tmpfs, and `probe disk-put`/`disk-get` read it into
/// memory once more.
const XEN_DOM0_MEM_MIGRATING: &str = "512M";

/// Xen, dom0's kernel and its initramfs with their command lines, as GRUB
/// gives them: each begins with the file's name, which Xen skips (it
/// keeps every word only when the loader calls itself GRUB 2; L0 keeps
/// the name so Xen's own rule holds under both). Xen's console is COM1,
/// where a provider would put it; dom0's is Xen's (hvc0), so it shows on
/// COM1 too. iommu=0: Bochs has no IOMMU. Xen's boot code drops to real
/// mode and asks the BIOS for the memory map (INT 15h E820h), which it
/// prefers to the multiboot map: under L0 the answer is L0's
/// (vcpu/bios_memory.rs), the cloud VM's map with L0's pool reserved.
fn xen_modules(xentest: &str) -> Result<Vec<IsoModule>, String> {
    use crate::xen::dom0::{HvmGuest, UserVm};
    let x = crate::xen::images()?;
    let initrd = match xentest {
        "boot" => x.dom0_initrd.clone(),
        "pvh" => x.dom0_initrd_for(UserVm::Pvh)?,
        // The HVM guests' shells for the operator under L0; natively (no
        // shadow UARTs, nobody to type) one guest's marker line.
        "hvm" => x.dom0_initrd_for(UserVm::Hvm {
            guests: &[
                HvmGuest {
                    name: "hvm1",
                    args: "l2mode=shell l2tag=hvm1",
                },
                HvmGuest {
                    name: "hvm2",
                    args: "l2mode=shell l2tag=hvm2",
                },
            ],
        })?,
        // The migrating guest's shell.
        "hvm-save" | "hvm-restore" => x.dom0_initrd_for(UserVm::Hvm {
            guests: &[HvmGuest {
                name: "hvm1",
                args: "l2mode=shell l2tag=hvm1",
            }],
        })?,
        // CPUID, port I/O and 200 serial writes (+1600 in bulk) measured
        // in the guest: each write is a round trip to QEMU in dom0 under
        // the peer bottom.
        "hvm-bench" => x.dom0_initrd_for(UserVm::Hvm {
            guests: &[HvmGuest {
                name: "hvm1",
                args: "l2mode=peer-bench l2serial=200",
            }],
        })?,
        "hvm-boot" => x.dom0_initrd_for(UserVm::Hvm {
            guests: &[HvmGuest {
                name: "hvm1",
                args: "l2marker=hvm1",
            }],
        })?,
        other => return Err(format!("no dom0 initramfs for xentest={other}")),
    };
    let mem = match xentest {
        "hvm-save" | "hvm-restore" => XEN_DOM0_MEM_MIGRATING,
        _ => XEN_DOM0_MEM,
    };
    // The spy in dom0 waits until the operator has typed all of
    // XEN_HVM_TYPED into each guest (it derives the console marker from
    // l0marker=, as in the Linux cloud VM).
    let spy = match xentest {
        "hvm" => format!(" xenspyin={}", xen_hvm_typed_bytes()),
        _ => String::new(),
    };
    Ok(vec![
        IsoModule::file(
            &x.xen,
            &format!(
                "xen console=com1 com1=115200,8n1 dom0_mem={mem},max:{mem} \
                 dom0_max_vcpus=1 loglvl=all guest_loglvl=all noreboot iommu=0"
            ),
        ),
        IsoModule::file(
            &x.vmlinux,
            &format!(
                "vmlinux console=hvc0 earlyprintk=xen rdinit=/init panic=0 xentest={xentest} l0marker={}{spy}",
                crate::linux::run_marker()
            ),
        ),
        IsoModule::file(&initrd, "dom0.initrd"),
    ])
}

/// What a healthy Xen run shows on COM1, natively and under L0: Xen's
/// banner with VMX and HAP (EPT) found, dom0 at its /init, and `xl info`
/// listing HVM among what Xen can run.
const XEN_BOOT_COM1: &[&str] = &[
    "Xen version 4.17",
    "Xen-e820 RAM map:",
    "HVM: VMX enabled",
    "HVM: Hardware Assisted Paging (HAP) detected",
    "DOM0INIT ok",
    "XL virt_caps=pv hvm hap",
    "DOM0DONE",
];

/// The same, then a PVH user VM started by `xl create` reaches its /init
/// (its console as xenconsoled logs it in dom0).
const XEN_PVH_COM1: &[&str] = &[
    "HVM: VMX enabled",
    "DOM0INIT ok",
    "XL virt_caps=pv hvm hap",
    "XL created",
    "GUEST| XENGUEST ok xenguest=pvh1",
    "XL PVH guest ran",
    "DOM0DONE",
];

/// Two HVM user VMs under L0 (`xentest=hvm`): dom0 creates hvm1 and
/// hvm2 with QEMU as their device model and COM1 on a pty each; each
/// registers its tag and runs a shell on ttyS0 (the KVM scenarios' L2
/// kernel and initramfs), the operator uses both shells through L0's
/// console (xen_hvm_console), the spy in dom0 finds no console marker in
/// the provider's view (and does find it in a dump of a guest's RAM),
/// the provider stops both, and nothing came out of either pty.
const XEN_HVM_COM1: &[&str] = &[
    "HVM: VMX enabled",
    "DOM0INIT ok",
    "XL virt_caps=pv hvm hap",
    "XL hvm1 COM1 on /dev/pts/",
    "XL created hvm1",
    "XL hvm2 COM1 on /dev/pts/",
    "XL created hvm2",
    "SPY dom0 searches: /tmp/dom0.dmesg /tmp/xen.dmesg /var/log/xen/",
    "SPY clean: ",
    "QEMU among them) searched",
    "SPY control: the marker is in domain ",
    "XL hvm1 gone",
    "pty-bytes=0 console-log-bytes=0",
    "XL hvm2 gone",
    "pty-bytes=0 console-log-bytes=0",
    "DOM0DONE",
];

/// The same natively (`xentest=hvm-boot`): no shadow UARTs, so the guest
/// prints its marker through QEMU's UART into the pty, where dom0 reads it.
const XEN_HVM_NATIVE_COM1: &[&str] = &[
    "HVM: VMX enabled",
    "DOM0INIT ok",
    "XL virt_caps=pv hvm hap",
    "XL hvm1 COM1 on /dev/pts/",
    "XL created hvm1",
    "XL hvm1 gone",
    "HVMPTY| L2 hvm1 ok",
    "DOM0DONE",
];

/// What the operator types into each of xen-hvm's shells, in order (the
/// same lines in both: the answers differ by the guest's own command
/// line): the shell names its guest, ttyS0's interrupt count has risen
/// (it reads input on its interrupt), and the console marker (`{cm}`)
/// comes back from the shell. None of their answers is in what is typed.
const XEN_HVM_TYPED: &[&str] = &[
    "echo answer-$(sed -n 's/.*l2tag=\\([a-z0-9]*\\).*/\\1/p' /proc/cmdline)-$((6*7))",
    "awk '/ttyS0/ { print \"ttyS0 irqs\", $2; if ($2 > 5) print \"irq4\" \"-count-ok\" }' /proc/interrupts",
    "echo mark-{cm}-$((6*7))",
];

/// The bytes the operator types into each shell (each line and its
/// carriage return), which dom0's spy waits for in L0's list.
fn xen_hvm_typed_bytes() -> usize {
    XEN_HVM_TYPED
        .iter()
        .map(|l| l.replace("{cm}", &crate::linux::console_marker()).len() + 1)
        .sum()
}

/// The operator's side of `xen-hvm` (`cargo xtask console`'s script):
/// wait for both tags (the guests boot from CDs through Xen's emulation
/// and QEMU in dom0: many minutes), list the VMs, then in each shell the
/// lines of XEN_HVM_TYPED, each after the previous answer.
fn xen_hvm_console() -> ConsoleCheck {
    let cm = crate::linux::console_marker();
    let mut script = String::from("/wait-vm hvm1 1200\n/wait-vm hvm2 1200\n/list\n");
    let mut ordered = vec!["2 VM(s)".to_string()];
    for vm in ["hvm1", "hvm2"] {
        let answers = [
            format!("answer-{vm}-42"),
            "irq4-count-ok".to_string(),
            format!("mark-{cm}-42"),
        ];
        script += &format!("/attach {vm}\n/wait {vm}#\n");
        for (line, answer) in XEN_HVM_TYPED.iter().zip(&answers) {
            script += &format!("{}\n/wait {answer}\n", line.replace("{cm}", &cm));
        }
        ordered.extend(answers);
    }
    ConsoleCheck {
        expect: &["tag=hvm1", "tag=hvm2"],
        ordered: leak_strs(ordered),
        forbidden: &[],
        typed: &[],
        follow_all: false,
        script: Some(leak_str(script)),
    }
}

/// Failure markers of the Xen scenarios.
const XEN_HEALTHY: &[&str] = &[
    "L0 FATAL",
    "L0 PANIC",
    "L0 WARN  command line",
    "Panic on CPU",
    "Kernel panic",
    "DOM0 FAIL",
    "L1 wrote L0 memory",
];

/// Xen as the cloud VM (docs/xen-l1.md), natively and under L0.
fn xen() -> Vec<Scenario> {
    // What every Xen scenario shares: one CPU, no disk, Xen's failure
    // markers, no console session, in CI unless said otherwise.
    let xen = |name, native, xentest, limit, com1| Scenario {
        name,
        boot: Boot::Xen { native, xentest },
        limit: Duration::from_secs(limit),
        com1,
        com2: &[],
        forbidden: XEN_HEALTHY,
        console: NO_CONSOLE,
        enabled_in_ci: true,
        disk: Disk::None,
        cpus: 1,
    };
    vec![
        xen("xen-boot-native", true, "boot", 600, XEN_BOOT_COM1),
        Scenario {
            com2: &[
                "INT 15h memory services (E820h, E801h, 88h) answered",
                "starting the cloud VM: multiboot kernel",
                "the cloud VM reads its memory map through INT 15h E820h",
            ],
            ..xen("xen-boot", false, "boot", 900, XEN_BOOT_COM1)
        },
        // Xen starts a PVH user VM (`xl create`, dom0's kernel): under L0
        // it is an L2 on L0's nested VMX. The native twin is the reference
        // (`cargo xtask test scenario xen-pvh-native`), left out of CI for
        // its ~6 minutes: xen-boot-native already checks Xen on Bochs.
        Scenario {
            enabled_in_ci: false,
            ..xen("xen-pvh-native", true, "pvh", 1200, XEN_PVH_COM1)
        },
        Scenario {
            com2: &["starting the cloud VM: multiboot kernel"],
            ..xen("xen-pvh", false, "pvh", 1800, XEN_PVH_COM1)
        },
        // Xen starts an HVM user VM (QEMU in dom0, hvmloader, SeaBIOS,
        // the L2 kernel and initramfs from a GRUB CD): under L0 its COM
        // ports are L0's shadow UARTs, which the operator uses. The native
        // twin only boots it (no shadow UARTs there), by name.
        Scenario {
            enabled_in_ci: false,
            ..xen(
                "xen-hvm-native",
                true,
                "hvm-boot",
                1500,
                XEN_HVM_NATIVE_COM1,
            )
        },
        // Two at once: each its own shadow console, which the operator
        // uses; the spy in dom0.
        Scenario {
            com2: &[
                "starting the cloud VM: multiboot kernel",
                "registered tag hvm",
                "registered tag hvm",
            ],
            console: xen_hvm_console(),
            // The console marker never in Xen's console or L0's log.
            forbidden: leak_strs(
                XEN_HEALTHY
                    .iter()
                    .map(|s| s.to_string())
                    .chain([
                        "SPY LEAK".into(),
                        "SPY FAIL".into(),
                        crate::linux::console_marker(),
                    ])
                    .collect(),
            ),
            ..xen("xen-hvm", false, "hvm", 1800, XEN_HVM_COM1)
        },
    ]
    .into_iter()
    .chain(xen_migration(&xen))
    .chain(xen_bench(&xen))
    .collect()
}

/// What an HVM guest of Xen measures for `cargo xtask bench`: CPUID, port
/// I/O, the TSC's rate by the PIT and serial writes, with Xen on L0 and
/// with Xen on the Linux/KVM peer bottom. Under L0 the figures reach the
/// operator's console from the shadow UART; under the peer, dom0 passes
/// them on from the pty of QEMU's UART.
fn xen_bench(
    xen: &impl Fn(&'static str, bool, &'static str, u64, &'static [&'static str]) -> Scenario,
) -> Vec<Scenario> {
    const FIGURES: &[&str] = &[
        "BENCH l2-cpuid-ticks ",
        "BENCH l2-port-io-ticks ",
        "BENCH l2-tsc-khz-by-pit ",
        "BENCH l2-serial-ticks-per-byte-1 ",
        "BENCH l2-serial-ticks-per-byte-bulk ",
    ];
    let forbidden = leak_strs(
        XEN_HEALTHY
            .iter()
            .chain(&["BENCH FAIL"])
            .map(|s| s.to_string())
            .collect(),
    );
    vec![
        Scenario {
            com2: &["starting the cloud VM: multiboot kernel"],
            forbidden,
            console: ConsoleCheck {
                expect: FIGURES,
                ordered: &[],
                forbidden: &["BENCH FAIL"],
                typed: &[],
                follow_all: true,
                script: None,
            },
            enabled_in_ci: false,
            ..xen(
                "xen-hvm-bench",
                false,
                "hvm-bench",
                2400,
                &["XL created hvm1", "XL hvm1 gone", "DOM0DONE"],
            )
        },
        Scenario {
            boot: Boot::XenPeer {
                xentest: "hvm-bench",
            },
            forbidden,
            enabled_in_ci: false,
            com1: leak_strs(
                ["PEER host up", "DOM0INIT ok", "XL created hvm1"]
                    .iter()
                    .chain(FIGURES)
                    .chain(&["DOM0DONE", "PEER cloud VM ended"])
                    .map(|s| s.to_string())
                    .collect(),
            ),
            ..xen("xen-peer-bench", false, "hvm-bench", 3600, &[])
        },
    ]
}

/// An HVM guest of Xen carried to a second L0 host (docs/operations.md):
/// on host A the operator uses hvm1's shell and detaches, dom0 `xl save`s
/// it, seals its shadow devices with `ultracall save` and puts both on
/// the disk; on host B dom0 `xl restore`s it, and once it has registered
/// its tag again restores its devices from the blob (a tampered copy and
/// a replay refused): A's late line arrives as backlog and the same shell
/// answers. The marker is typed by the operator only: dom0 never sees it.
fn xen_migration(
    xen: &impl Fn(&'static str, bool, &'static str, u64, &'static [&'static str]) -> Scenario,
) -> Vec<Scenario> {
    let cm = crate::linux::console_marker();
    let forbidden = leak_strs(
        [XEN_HEALTHY, &["DISK FAIL", "SPY LEAK", "SPY FAIL"]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .chain([cm.clone()])
            .collect(),
    );
    let said = leak_str(format!("XA-said-42-{cm}"));
    vec![
        Scenario {
            com1: &[
                "XL created hvm1",
                "MIGRATE saved hvm1",
                "XL hvm1 gone",
                "pty-bytes=0 console-log-bytes=0",
                "SPY clean: /tmp/m/hvm1.save outside the guest's RAM",
                "SPY control: its ",
                "MIGRATE image",
                "DISK put 2 files",
                "MIGRATE on the disk",
                "DOM0DONE",
            ],
            com2: &["registered tag hvm1", "devices of hvm1 saved"],
            forbidden,
            console: ConsoleCheck {
                expect: leak_strs(vec![said.into(), "detached from hvm1".into()]),
                ordered: &[],
                // Written while nobody follows the console: backlog for B.
                forbidden: &["XA-late-42"],
                typed: inputs_for(
                    "hvm1",
                    vec![
                        ("tag=hvm1", String::new()),
                        ("hvm1# ", format!("p=$$ m={cm}; echo XA-said-$((6*7))-$m; (sleep 2; echo XA-late-$((6*7))-$m) &\r")),
                        (said, DETACH.into()),
                    ],
                ),
                follow_all: false,
                script: None,
            },
            disk: Disk::Blank,
            // In CI: the pair took ~11 min on a loaded machine.
            ..xen("xen-migrate-source", false, "hvm-save", 1500, &[])
        },
        Scenario {
            com1: &[
                "DISK got 2 files",
                "XL restored hvm1",
                "MIGRATE tampered: ultracall: error: L0 refused: BLOB_AUTH_FAILED",
                "MIGRATE restore: restored hvm1",
                "MIGRATE again: ultracall: error: L0 refused: BLOB_REPLAYED",
                "XL hvm1 gone",
                "pty-bytes=0 console-log-bytes=0",
                "DOM0DONE",
            ],
            com2: &["restore for hvm1 refused", "devices of hvm1 restored"],
            forbidden,
            console: ConsoleCheck {
                expect: &[],
                ordered: leak_strs(vec![
                    "hvm1 restore-refused".into(),
                    "hvm1 restored epoch=1".into(),
                    format!("XA-late-42-{cm}"),
                    format!("same-shell-{cm}-42"),
                ]),
                forbidden: &[],
                typed: inputs_for(
                    "hvm1",
                    vec![
                        ("tag=hvm1", String::new()),
                        ("restored", "[ \"$p\" = \"$$\" ] && echo same-shell-$m-$((6*7))\r".into()),
                        (leak_str(format!("same-shell-{cm}-42")), "exit\r".into()),
                    ],
                ),
                follow_all: false,
                script: None,
            },
            disk: Disk::From("xen-migrate-source"),
            ..xen("xen-migrate-two-hosts", false, "hvm-restore", 1200, &[])
        },
    ]
}

/// Failure markers of the Linux scenarios: L0 stopping, L1's kernel
/// panicking, its init or the clock probe reporting a failure.
const LINUX_HEALTHY: &[&str] = &[
    "L0 FATAL",
    "L0 PANIC",
    "L0 WARN  command line",
    "Kernel panic",
    "CLOCK FAIL",
    "L1INIT FAIL",
];

fn leak_strs(v: Vec<String>) -> &'static [&'static str] {
    Box::leak(
        v.into_iter()
            .map(leak_str)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// What the operator types into `target`: each text once `after` shows.
fn inputs_for(target: &'static str, v: Vec<(&'static str, String)>) -> &'static [Input] {
    Box::leak(
        v.into_iter()
            .map(|(after, text)| Input {
                after,
                target,
                text: leak_str(text),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

fn leak_str(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Another host's key (`migrate-other-key`).
const OTHER_KEY: &[u8] = b"f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff\n";

/// A migration host whose cloud VM runs the relay for owners: the
/// scenarios' sealing key and L0 identity.
fn owner_migrate_modules(test: &str) -> Vec<IsoModule> {
    let mut v = relay_modules(test);
    v.push(IsoModule::inline("l0.key", TEST_KEY, "l0.key"));
    v
}

/// The Linux cloud VM for a migration host, provisioned with `key`.
fn migrate_modules(test: &str, key: &'static [u8]) -> Vec<IsoModule> {
    let mut v = crate::linux::scenario_modules(test);
    v.push(IsoModule::inline("l0.key", key, "l0.key"));
    v
}

fn migrate_forbidden() -> Vec<String> {
    [
        LINUX_HEALTHY,
        &[
            "MIGRATE FAIL",
            "DISK FAIL",
            "SPY LEAK",
            "SPY FAIL",
            "exit=1 ",
        ],
    ]
    .concat()
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Linux cloud VM scenarios (docs/linux-l1.md). They build the lean kernel
/// and initramfs on first use (cached under ~/.cache/l0-hypervisor).
pub fn linux() -> Vec<Scenario> {
    let m = crate::linux::run_marker();
    // What the operator types: not on L1's command line, unlike `m`.
    let cm = crate::linux::console_marker();
    let leak = leak_strs;
    let leak_inputs = |v| inputs_for("alpha", v);
    vec![
        Scenario {
            // L1 Linux reaches init with KVM (EPT, VPID) and a clock that
            // agrees with the PIT and with L0's TSC within 5 %.
            name: "linux-l1-boot",
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info",
                modules: |_| crate::linux::scenario_modules("boot"),
            },
            limit: Duration::from_secs(300),
            com1: &["L1INIT ok", "KVM ept=Y vpid=Y", "CLOCK ok", "L1DONE"],
            com2: &["TSC:", "starting the cloud VM: Linux bzImage", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: LINUX_HEALTHY,
            console: NO_CONSOLE,
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
        },
        // The Linux cloud VM on a host with two CPUs: L0 runs a vCPU on
        // each, the second waiting for a start-up IPI; Linux starts it
        // itself, as on bare metal, and a task runs on each CPU.
        Scenario {
            name: "linux-l1-smp",
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info",
                modules: |_| crate::linux::scenario_modules("smp"),
            },
            limit: Duration::from_secs(900),
            com1: &[
                "L1INIT ok",
                "KVM ept=Y vpid=Y",
                "CLOCK ok",
                "L1 CPUS nproc=2 online=0-1",
                "L1 CPU0 ran=0",
                "L1 CPU1 ran=1",
                "smpboot: Total of 2 processors activated",
                "QEMU duo exit=0 console-bytes=0",
                "QEMU solo exit=0 console-bytes=0",
                "L1DONE",
            ],
            com2: &[
                "starting the cloud VM: Linux bzImage",
                "CPUs: 2 of 2 run the cloud VM",
                "user VM",
                "cloud VM requested shutdown",
                "L0 integrity OK",
            ],
            forbidden: Box::leak(
                [LINUX_HEALTHY, &["failed to boot", "TSC warp", "unstable", "stuck"]]
                    .concat()
                    .into_boxed_slice(),
            ),
            // The 2-vCPU user VM's console, written from both vCPUs at
            // once: every line of each, each vCPU's in order; then the
            // operator's line read on the interrupt L0 posted to vCPU 1,
            // where L2's IOAPIC entry sends it. Then a 1-vCPU VM.
            console: ConsoleCheck {
                expect: leak(
                    (0..30)
                        .flat_map(|i| [format!("duo vcpu0 line {i} on 0"), format!("duo vcpu1 line {i} on 1")])
                        .chain(
                            [
                                "L2 duo nproc=2",
                                "L2 duo read hello-duo on-last-vcpu=1",
                                "L2 duo unhandled=0",
                                "L2 duo done",
                                "L2 solo ok",
                            ]
                            .map(String::from),
                        )
                        .collect(),
                ),
                ordered: leak((0..30).map(|i| format!("duo vcpu1 line {i} on")).collect()),
                forbidden: &[],
                typed: &[Input { after: "L2 duo waiting for input", target: "duo", text: "hello-duo\r" }],
                follow_all: true,
                script: None,
            },
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 2,
        },
        Scenario {
            // QEMU/KVM in L1 runs two L2 Linux VMs at once; each prints the
            // run's marker on its ttyS0 and powers off; QEMU exits 0. The
            // markers go to L0's shadow UARTs, and from there to the
            // operator's console: L1 (COM1) must never see them.
            name: "linux-l2",
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info",
                modules: |_| crate::linux::scenario_modules("l2"),
            },
            limit: Duration::from_secs(900),
            com1: &[
                "L1INIT ok",
                "KVM ept=Y vpid=Y unrestricted_guest=Y nested=Y apicv=Y ipiv=Y",
                "QEMU vm1 exit=0 ",
                "console-bytes=0",
                "QEMU vm2 exit=0 ",
                "console-bytes=0",
                "L2 concurrent=yes",
                "L1DONE",
            ],
            com2: &["starting the cloud VM: Linux bzImage", "user VM", "ended", "user VM", "ended", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: leak([LINUX_HEALTHY.iter().map(|s| s.to_string()).collect(), vec![format!("L2 {m}-vm1"), format!("L2 {m}-vm2")]].concat()),
            console: ConsoleCheck { expect: leak(vec![format!("L2 {m}-vm1 ok"), format!("L2 {m}-vm2 ok")]), typed: &[], follow_all: true, ordered: &[], forbidden: &[], script: None },
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
        },
        Scenario {
            // The operator uses shells in two Linux user VMs run by QEMU/KVM,
            // "alpha" (KVM intercepts HLT: a keystroke must wake the vCPU
            // KVM halted) and "beta" (-overcommit cpu-pm=on: it halts in
            // hardware). Each registers its tag by ultracall; keystrokes
            // reach it by the UART's interrupt, posted by L0; output comes
            // back. A third, "gamma", writes 200 kB to its ttyS0 while no
            // operator follows it (>10 000 interrupts, none spurious or
            // unhandled in its dmesg), then tags itself; attaching replays
            // its backlog. QEMU's own serial files stay empty.
            name: "linux-shadow-input",
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info",
                modules: |_| crate::linux::scenario_modules("shell"),
            },
            limit: Duration::from_secs(600),
            com1: &["L1INIT ok", "apicv=Y ipiv=Y", "L1 starting alpha, beta and gamma", "console-bytes=0", "console-bytes=0", "console-bytes=0", "L1DONE"],
            com2: &["starting the cloud VM: Linux bzImage", "registered tag", "registered tag", "registered tag", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: leak(
                [LINUX_HEALTHY.iter().map(|s| s.to_string()).collect::<Vec<_>>(), vec!["exit=1 ".into()]].concat(),
            ),
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
            console: ConsoleCheck {
                // Alpha registers its owner's key with the ultracall CLI
                // (the owner-console scenario's rw key).
                expect: &["alpha-42-ok", "irq4-count-ok", "beta-42-ok", "flood-irqs-ok", "flood-irq-warnings=0", "owner key e06Qm75//kTEZaIgA31gjuNYl9Me+XLwf3SJLLD3PxM= (rw) set; the VM holds 1"],
                typed: &[
                    Input { after: "tag=alpha", target: "alpha", text: "" },
                    Input { after: "alpha# ", target: "alpha", text: "echo alpha-$((6*7))-ok\r" },
                    Input {
                        after: "alpha-42-ok",
                        target: "alpha",
                        text: "awk '/ttyS0/ { if ($2 > 20) print \"irq4\" \"-count-ok\" }' /proc/interrupts\r",
                    },
                    Input { after: "irq4-count-ok", target: "alpha", text: "exit\r" },
                    Input { after: "tag=beta", target: "beta", text: "" },
                    Input { after: "beta# ", target: "beta", text: "echo beta-$((6*7))-ok; exit\r" },
                    Input { after: "tag=gamma", target: "gamma", text: "\r" },
                ],
                follow_all: false,
            ordered: &[],
            forbidden: &[],
            script: None,
},
        },
        Scenario {
            // `cargo xtask console` as an operator uses it, on the demo of
            // `cargo xtask run` (two shells, "alpha" and "beta"): list the
            // VMs by tag, attach alpha, edit a line (Ctrl-U, DEL), Ctrl-C
            // a foreground job (the byte reaches the shell's tty: $? is
            // 130), start a job that prints while the console is on beta,
            // use beta, come back: alpha's backlog holds the line.
            name: "linux-shadow-console",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| crate::linux::scenario_modules("demo") },
            limit: Duration::from_secs(600),
            com1: &["L1INIT ok", "L1 starting alpha and beta", "console-bytes=0", "console-bytes=0", "L1DONE"],
            com2: &["starting the cloud VM: Linux bzImage", "registered tag", "registered tag", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: leak([LINUX_HEALTHY.iter().map(|s| s.to_string()).collect::<Vec<_>>(), vec!["exit=1 ".into()]].concat()),
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
            console: ConsoleCheck {
                // The tags come in either order.
                expect: &["tag=alpha", "tag=beta"],
                // Alpha's background line is backlog: it shows only after
                // beta's shell is done and the operator is back on alpha,
                // never on beta's console in between.
                ordered: &["2 VM(s)", "edit-42-ok", "rc-130", "beta-42-ok", "beta-42-slept", "backlog-42"],
                forbidden: &[],
                typed: &[],
                follow_all: false,
                script: Some(concat!(
                    "/wait-vm alpha\n",
                    "/wait-vm beta\n",
                    "/list\n",
                    "/attach alpha\n",
                    "/wait alpha#\n",
                    // Ctrl-U drops `false`, DEL the Z.
                    "false\x15echo edit-$((6*7))Z\x7f-ok\n",
                    "/wait edit-42-ok\n",
                    "echo zz-$((6*7)); sleep 1000\n",
                    "/wait zz-42\n",
                    "/ctrl-c\n",
                    "/wait alpha#\n",
                    "echo rc-$?\n",
                    "/wait rc-130\n",
                    // Printed 4 s on, while the console is on beta (8 s).
                    "(sleep 4; echo backlog-$((6*7))) &\n",
                    "/wait alpha#\n",
                    "/attach beta\n",
                    "/wait beta#\n",
                    "echo beta-$((6*7))-ok; sleep 8; echo beta-$((6*7))-slept\n",
                    "/wait beta-42-slept\n",
                    "/attach alpha\n",
                    "/wait backlog-42\n",
                    "exit\n",
                    // Beta's prompt was seen already: no backlog to wait for.
                    "/attach beta\n",
                    "exit\n",
                )),
            },
        },
        Scenario {
            // An owner reaches alpha through the provider's network: the
            // cloud VM has a NIC, l0-relay listens in it, and the owner's
            // client on the build host connects through slirp's forwarded
            // port (crate::owner_relay). Through the relay: a wrong pin is
            // refused, the rw key attaches by tag and types a command
            // alpha's shell answers, an ro key added through that session
            // reads the backlog by offset and cannot type, a stranger's key
            // is refused; the owner has alpha print more than a mebibyte,
            // reads it on by offset and reads lines of it back at their
            // offsets, and ends alpha's shell. BREAK (issue
            // 17's owner-break, folded in here: the same boot and shell)
            // with a SysRq key behind it runs alpha's SysRq handler — its
            // dmesg shows it —, and the ro key's BREAK is refused. The
            // owner's first line is the run's console marker: once typed,
            // L1 checks a packet capture taken since boot (it must hold
            // the relay's owner frames), the relay's memory and the rest
            // of L1 for it: nowhere. An impostor that takes alpha's tag
            // without the owner's key is not opened by it, and the client
            // says that VM does not know the key (a stranger naming alpha,
            // which has owner keys, hears only that no VM knows its key).
            // The relay's idle cost is measured at the end.
            name: "owner-relay",
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info",
                modules: |_| relay_modules("relay"),
            },
            limit: Duration::from_secs(1500),
            com1: &["L1INIT ok", "L1 network inet addr:10.0.2.15", "L1 starting alpha", "CAPTURE ok", "SPY clean", "SPY control: the marker is in a user VM's RAM", "QEMU alpha exit=0 console-bytes=0", "L1 starting an impostor tagged alpha", "RELAY| l0-relay: listening on 0.0.0.0:7000; L0 identity 17XoHTNuV4sTuNcG6C0GHjA4yWvOZs3PUNVmuW3buhA=", "RELAY| l0-relay: connection 1 closed; ", "RELAY idle 10 s: 0 wakeups", "L1DONE"],
            com2: &["starting the cloud VM: Linux bzImage", "owner sessions: on", "owner relay: the cloud VM's l0-relay carries owner sessions", "owner key D6poTtKIZ7l/Smot7l34zpdOdrcBjj8iocTPJnhXDyA= (ro) added by an owner", "user VM 2 registered tag alpha", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: leak(
                [
                    LINUX_HEALTHY.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    vec!["exit=1 ".into(), "RELAY FAIL".into(), "CAPTURE FAIL".into(), "SPY FAIL".into(), "SPY LEAK".into(), cm.clone()],
                ]
                .concat(),
            ),
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
            console: ConsoleCheck {
                expect: &[],
                ordered: &[
                    "owner: refused to connect: L0's identity is ",
                    "owner: session refused as expected: L0 could not open the handshake",
                    "owner: L0's identity is the pinned ",
                    "owner: attached to alpha port 0x3f8 (rw, writer)",
                    "owner: typed \"echo relay-$((6*7))-ok\"",
                    "owner| relay-42-ok",
                    "owner: sent BREAK then \"h\" (1 of 1 bytes taken)",
                    "] sysrq: HELP",
                    "owner| sysrq-42-in-dmesg",
                    "owner: added key D6poTtKIZ7l/Smot7l34zpdOdrcBjj8iocTPJnhXDyA= (ro); the VM holds 2",
                    "owner: session closed",
                    "owner: attached to alpha port 0x3f8 (ro)",
                    "owner: backlog to offset ",
                    "owner: type: refused as expected: this key is read-only",
                    "owner: BREAK: refused as expected: this key is read-only",
                    "owner: session refused as expected: no VM on this L0 knows this key",
                    "owner: pattern: printed from offset ",
                    "owner: pattern: 16500 lines, 1056000 bytes from offset ",
                    "owner: typed \"exit\"",
                    "owner: L0 logged \"registered tag alpha\"",
                    "owner: session refused as expected: the VM does not know this key",
                ],
                // The ro key's command never ran.
                forbidden: &["owner: FAILED", "ro-42-typed"],
                // The operator follows alpha on the line while the owner
                // reads it through the relay (L0's two output costs from
                // the same bytes), and leaves before the megabyte, which
                // the line would hold to its pace.
                typed: inputs_for(
                    "alpha",
                    vec![("tag=alpha", String::new()), ("rtt-42-done", DETACH.into())],
                ),
                follow_all: false,
                script: None,
            },
        },
        Scenario {
            // A hostile relay: l0-relay --tamper all spoils the first typed
            // message of its first five connections — a flipped bit, a
            // replay, a reordered answer, a drop, an injected message. The
            // client notices each (L0 ends the session, or the answer does
            // not authenticate, or none comes), says so and connects again;
            // none of the five commands reaches alpha; the sixth connection
            // is honest and its command runs.
            name: "relay-tamper",
            boot: Boot::L0 {
                cmdline: "serial=com2 loglevel=info",
                modules: |_| relay_modules("relay-tamper"),
            },
            limit: Duration::from_secs(600),
            com1: &["L1INIT ok", "L1 network inet addr:10.0.2.15", "L1 starting alpha", "QEMU alpha exit=0 console-bytes=0", "RELAY| l0-relay: tampering (flip)", "RELAY| l0-relay: tampering (replay)", "RELAY| l0-relay: tampering (reorder)", "RELAY| l0-relay: tampering (drop)", "RELAY| l0-relay: tampering (inject)", "RELAY| l0-relay: connection 5 closed", "L1DONE"],
            com2: &["starting the cloud VM: Linux bzImage", "owner relay: the cloud VM's l0-relay carries owner sessions", "owner session", "on the relay ended: a message failed authentication", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: leak([LINUX_HEALTHY.iter().map(|s| s.to_string()).collect::<Vec<_>>(), vec!["exit=1 ".into(), "RELAY FAIL".into()]].concat()),
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
            console: ConsoleCheck {
                expect: &[],
                ordered: &[
                    "owner: typing \"echo tamper-$((1+1))-flip\" through a hostile relay",
                    "owner: tampering detected: L0 ended the session: a message failed authentication",
                    "owner: connecting to the relay again",
                    "owner: typing \"echo tamper-$((1+1))-replay\" through a hostile relay",
                    "owner: tampering detected: L0 ended the session: a message failed authentication",
                    "owner: typing \"echo tamper-$((1+1))-reorder\" through a hostile relay",
                    "owner: tampering detected: an answer failed authentication",
                    "owner: typing \"echo tamper-$((1+1))-drop\" through a hostile relay",
                    "owner: tampering detected: no answer within 15 s",
                    "owner: typing \"echo tamper-$((1+1))-inject\" through a hostile relay",
                    "owner: tampering detected: L0 ended the session: a message failed authentication",
                    "owner: attached to alpha port 0x3f8 (rw, writer)",
                    "owner| relay-42-ok",
                    "owner: typed \"exit\"",
                ],
                // Nothing of a spoiled session reached alpha's shell.
                forbidden: &["owner: FAILED", "tamper-2-"],
                typed: &[],
                follow_all: true,
                script: None,
            },
        },
        Scenario {
            // A static program in a Linux L2 loops over CPUID, port I/O to
            // port 0x80, MMIO to its IOAPIC and page faults for 30 s of its
            // time while the timer interrupts; its counts must check out.
            name: "linux-l2-stress",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| crate::linux::scenario_modules("stress") },
            limit: Duration::from_secs(900),
            com1: &["L1INIT ok", "L1 starting stress", "QEMU stress exit=0 console-bytes=0", "L1DONE"],
            com2: &["starting the cloud VM: Linux bzImage", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: LINUX_HEALTHY,
            enabled_in_ci: true,
            console: ConsoleCheck { expect: &["STRESS cpuid=", " ok"], typed: &[], follow_all: true, ordered: &[], forbidden: &[], script: None },
            disk: Disk::None,
            cpus: 1,
        },
        // linux-l2-stress on a host with two CPUs: a 2-vCPU user VM runs
        // the stress on both vCPUs at once, each pinned to one.
        Scenario {
            name: "linux-smp-stress",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| crate::linux::scenario_modules("smp-stress") },
            limit: Duration::from_secs(1200),
            com1: &["L1INIT ok", "L1 starting stress on 2 CPUs", "QEMU stress exit=0 console-bytes=0", "L1DONE"],
            com2: &["starting the cloud VM: Linux bzImage", "CPUs: 2 of 2 run the cloud VM", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: Box::leak([LINUX_HEALTHY, &["STRESS vcpu0 FAIL", "STRESS vcpu1 FAIL", "TSC warp", "stuck"]].concat().into_boxed_slice()),
            enabled_in_ci: true,
            console: ConsoleCheck {
                expect: &["STRESS vcpu0 cpuid=", "STRESS vcpu1 cpuid="],
                typed: &[],
                follow_all: true,
                ordered: &[],
                forbidden: &[],
                script: None,
            },
            disk: Disk::None,
            cpus: 2,
        },
        Scenario {
            // 50 KVM VMs created and destroyed one after another: each
            // writes COM1 (L0's shadow UART: KVM never sees the port) and
            // halts; L0 sees each VM come and go and ends with none.
            name: "linux-vm-churn",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| crate::linux::scenario_modules("churn") },
            limit: Duration::from_secs(600),
            com1: &["L1INIT ok", "CHURN ok 50", "CHURN vms-left=0", "L1DONE"],
            // Every one of the 50 came and went, in turn.
            com2: leak(
                ["starting the cloud VM: Linux bzImage".to_string()]
                    .into_iter()
                    .chain((1..=50).map(|i| format!("user VM {i} ended")))
                    .chain(["cloud VM requested shutdown".into(), "L0 integrity OK".into()])
                    .collect(),
            ),
            forbidden: leak(
                [LINUX_HEALTHY.iter().map(|s| s.to_string()).collect::<Vec<_>>(), vec!["CHURN FAIL".into(), "user VM 51 ".into()]].concat(),
            ),
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
            // Each VM lives for less than the harness needs to attach, so
            // its byte dies with it; its coming and going is announced
            // (its going up to 50 ms after the next VM came).
            console: ConsoleCheck {
                expect: leak((1..=50).map(|i| format!("vm {i} gone")).collect()),
                typed: &[],
                follow_all: true,
                ordered: leak((1..=50).map(|i| format!("vm {i} appeared")).collect()),
                forbidden: &[],
                script: None,
            },
        },
        // Migration between two hosts (docs/operations.md): host A runs
        // "alpha" with its owner's key and the operator's shell in it;
        // the owner types through A's relay (crate::owner_relay), then
        // the operator on the line; A migrates alpha to a disk; host B
        // resumes it from there and restores its console after refusing
        // a tampered blob, alpha's blob for "beta" and a replay; host C
        // holds another key and refuses the blob; on host D (owner-
        // migrate) the owner reconnects through D's relay. Hosts A and B
        // have two CPUs and alpha two vCPUs (hosts C and D: one CPU, the
        // same alpha). The console marker is typed by the operator only:
        // L1's console never shows it.
        Scenario {
            name: "migrate-source",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| owner_migrate_modules("migrate-src") },
            limit: Duration::from_secs(1500),
            com1: &[
                "L1INIT ok",
                "L1 network inet addr:10.0.2.15",
                "L1 starting alpha (host A)",
                "SPY clean",
                "SPY control: the marker is in a user VM's RAM",
                "MIGRATE qemu Migration status: completed",
                "MIGRATE saved alpha",
                "SPY clean",
                "QEMU alpha exit=0 console-bytes=0",
                "MIGRATE stream",
                "DISK put 2 files",
                "L1DONE",
            ],
            com2: &["starting the cloud VM: Linux bzImage", "registered tag alpha", "set owner key", "devices of alpha saved", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: leak([migrate_forbidden(), vec![cm.clone()]].concat()),
            enabled_in_ci: true,
            console: ConsoleCheck {
                // (Unordered: the detach is noted as soon as the trigger's
                // bytes arrive, before the rest of its line.)
                expect: leak(vec![format!("A-said-42-n2-{cm}"), "detached from alpha".into()]),
                // The owner's part, through the relay (the client's
                // transcript follows the line's).
                ordered: &[
                    "owner: attached to alpha port 0x3f8 (rw, writer)",
                    "owner: typed \"echo owner-A-$((6*7))-ok\"",
                    "owner: mark \"owner-A-42-ok\" at offset ",
                    "owner: session closed",
                ],
                // The late line comes once nobody follows the console, so
                // host A never shows it (the typed command holds
                // `A-late-$((6*7))`, not this).
                forbidden: &["A-late-42"],
                typed: leak_inputs(vec![
                    ("tag=alpha", String::new()),
                    // After the owner's line: a shell variable and $$: on
                    // host B the same shell knows them. The late line is
                    // written while nobody follows the console: it
                    // travels as backlog.
                    ("owner-A-42-ok", format!("p=$$ m={cm}; echo A-said-$((6*7))-n$(nproc)-$m; (sleep 2; echo A-late-$((6*7))-$m) &\r")),
                    (leak_str(format!("A-said-42-n2-{cm}")), DETACH.into()),
                ]),
                follow_all: false,
            script: None,
},
            disk: Disk::Blank,
            cpus: 2,
        },
        Scenario {
            name: "migrate-two-hosts",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| migrate_modules("migrate-dst", TEST_KEY) },
            limit: Duration::from_secs(1500),
            com1: &[
                "L1INIT ok",
                "DISK got 2 files",
                "L1 starting beta and the incoming alpha (host B)",
                "SPY control: the marker is in a user VM's RAM",
                "MIGRATE tampered: ultracall: error: L0 refused: BLOB_AUTH_FAILED",
                "MIGRATE as-beta: ultracall: error: L0 refused: BLOB_WRONG_TAG",
                "MIGRATE restore: restored alpha",
                "MIGRATE again: ultracall: error: L0 refused: BLOB_REPLAYED",
                "MIGRATE states alpha=live beta=live",
                "QEMU alpha exit=0 console-bytes=0",
                "SPY clean",
                "console-bytes=0",
                "L1DONE",
            ],
            com2: &[
                "starting the cloud VM: Linux bzImage",
                "restore for alpha refused",
                "restore for beta refused",
                "devices of alpha restored",
                "restore for alpha refused",
                "cloud VM requested shutdown",
                "L0 integrity OK",
            ],
            forbidden: leak([migrate_forbidden(), vec![cm.clone()]].concat()),
            enabled_in_ci: true,
            console: ConsoleCheck {
                expect: &[],
                // The tampered blob refused, the good one restored, then
                // A's late line as backlog, then the same shell answering.
                ordered: leak(vec![
                    "alpha restore-refused".into(),
                    "alpha restored epoch=1".into(),
                    format!("A-late-42-{cm}"),
                    format!("same-shell-{cm}-42"),
                ]),
                forbidden: &[],
                typed: leak_inputs(vec![
                    ("tag=alpha", String::new()),
                    ("restored", "[ \"$p\" = \"$$\" ] && echo same-shell-$m-$((6*7))\r".into()),
                    (leak_str(format!("same-shell-{cm}-42")), "exit\r".into()),
                ]),
                follow_all: false,
            script: None,
},
            disk: Disk::From("migrate-source"),
            cpus: 2,
        },
        Scenario {
            name: "migrate-other-key",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| migrate_modules("migrate-dst", OTHER_KEY) },
            limit: Duration::from_secs(900),
            com1: &[
                "L1INIT ok",
                "DISK got 2 files",
                "MIGRATE restore: ultracall: error: L0 refused: BLOB_WRONG_KEY",
                "MIGRATE states alpha=live beta=live",
                "QEMU alpha exit=0 console-bytes=0",
                "L1DONE",
            ],
            com2: &["starting the cloud VM: Linux bzImage", "restore for alpha refused", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: leak([migrate_forbidden(), vec![cm.clone(), "devices of alpha restored".into()]].concat()),
            enabled_in_ci: true,
            console: ConsoleCheck {
                expect: &["alpha restore-refused sealed blob was sealed under a different key"],
                ordered: &[],
                // Refused: alpha keeps its fresh UARTs, without A's backlog.
                forbidden: &["alpha restored", "A-late-42"],
                typed: &[Input { after: "tag=alpha", target: "alpha", text: "" }],
                follow_all: false,
            script: None,
},
            disk: Disk::From("migrate-source"),
            cpus: 1,
        },
        // What dirty logging for a live migration costs the cloud VM
        // (`cargo xtask bench`, issue 18): a user VM writing memory
        // without pause is migrated by QEMU/KVM in L1, whose KVM logs
        // the writes with PML (L0's emulation over EPT A/D flags) or,
        // with `kvm_intel.pml=0`, by write-protecting the VM's pages.
        Scenario {
            // Host D: alpha resumed from migrate-source's disk, its owner
            // back through this host's relay with the same key (it came in
            // the blob): host A's line at its old offset, the same shell,
            // the output continuous by offset from there.
            name: "owner-migrate",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| owner_migrate_modules("owner-migrate-dst") },
            limit: Duration::from_secs(900),
            com1: &[
                "L1INIT ok",
                "L1 network inet addr:10.0.2.15",
                "DISK got 2 files",
                "MIGRATE restore: restored alpha",
                "QEMU alpha exit=0 console-bytes=0",
                "SPY clean",
                "L1DONE",
            ],
            com2: &[
                "starting the cloud VM: Linux bzImage",
                "owner relay: the cloud VM's l0-relay carries owner sessions",
                "devices of alpha restored",
                "output history continues at offset",
                "cloud VM requested shutdown",
                "L0 integrity OK",
            ],
            forbidden: leak([migrate_forbidden(), vec![cm.clone(), "RELAY FAIL".into()]].concat()),
            enabled_in_ci: true,
            console: ConsoleCheck {
                expect: &[],
                ordered: &[
                    "owner: attached to alpha port 0x3f8 (rw, writer)",
                    "owner: offset ",
                    "owner| owner-same-shell-42",
                    "owner: continuous from offset ",
                    "owner: typed \"exit\"",
                ],
                forbidden: &["owner: FAILED"],
                typed: &[],
                follow_all: false,
                script: None,
            },
            disk: Disk::From("migrate-source"),
            cpus: 1,
        },
        Scenario {
            name: "linux-dirty-bench",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| crate::linux::scenario_modules("dirty-bench") },
            limit: Duration::from_secs(1200),
            com1: &["L1INIT ok", "KVM ept=Y", "eptad=Y pml=Y", "BENCH dirty-log-l2-exits ", "QEMU busy exit=", "L1DONE"],
            com2: &["registered tag busy", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: leak([LINUX_HEALTHY.iter().map(|s| s.to_string()).collect::<Vec<_>>(), vec!["BENCH FAIL".into()]].concat()),
            enabled_in_ci: false,
            console: NO_CONSOLE,
            disk: Disk::None,
            cpus: 1,
        },
        Scenario {
            name: "linux-dirty-bench-nopml",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| crate::linux::scenario_modules_with("dirty-bench", "kvm_intel.pml=0") },
            limit: Duration::from_secs(1200),
            com1: &["L1INIT ok", "KVM ept=Y", "eptad=Y pml=N", "BENCH dirty-log-l2-exits ", "QEMU busy exit=", "L1DONE"],
            com2: &["registered tag busy", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: leak([LINUX_HEALTHY.iter().map(|s| s.to_string()).collect::<Vec<_>>(), vec!["BENCH FAIL".into()]].concat()),
            enabled_in_ci: false,
            console: NO_CONSOLE,
            disk: Disk::None,
            cpus: 1,
        },
        // The peer benchmark (`cargo xtask bench`, issue 7): the same cloud
        // VM and user-VM workload on L0 and on the peer bottom, Linux/KVM
        // booted directly by the emulator; figures from the cloud VM's and
        // the user VM's own TSCs.
        Scenario {
            name: "linux-peer-bench-l0",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| crate::linux::scenario_modules("peer-bench") },
            limit: Duration::from_secs(900),
            com1: &["L1INIT ok", "QEMU bench exit=0", "BENCH l2-qemu-start-to-exit-ticks ", "L1DONE"],
            com2: &["cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: LINUX_HEALTHY,
            enabled_in_ci: false,
            console: ConsoleCheck {
                expect: &["BENCH l2-cpuid-ticks ", "BENCH l2-port-io-ticks ", "BENCH l2-tsc-khz-by-pit "],
                typed: &[],
                follow_all: true,
                ordered: &[],
                forbidden: &["BENCH FAIL"],
                script: None,
            },
            disk: Disk::None,
            cpus: 1,
        },
        Scenario {
            name: "linux-peer-bench",
            boot: Boot::Peer { test: "peer-bench" },
            limit: Duration::from_secs(1800),
            com1: &["PEER host up", "L1INIT ok", "BENCH l2-qemu-start-to-exit-ticks ", "BENCH l2-cpuid-ticks ", "BENCH l2-port-io-ticks ", "BENCH l2-tsc-khz-by-pit ", "PEER cloud VM ended"],
            com2: &[],
            forbidden: &["Kernel panic", "BENCH FAIL"],
            enabled_in_ci: false,
            console: NO_CONSOLE,
            disk: Disk::None,
            cpus: 1,
        },
        // Serial cost from a Linux user VM (`cargo xtask bench`): through
        // L0's shadow UART, first while nobody follows the port, then with
        // the operator attached (every byte leaves L0 on the management
        // line); and with L0 booted `shadow=off` through QEMU's emulated
        // 16550 (its file then holds the output).
        Scenario {
            name: "linux-serial-bench",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| crate::linux::scenario_modules("serial-bench") },
            limit: Duration::from_secs(900),
            com1: &["L1INIT ok", "QEMU bench exit=0 console-bytes=0", "L1DONE"],
            com2: &["registered tag bench", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: LINUX_HEALTHY,
            enabled_in_ci: false,
            console: ConsoleCheck {
                expect: &[
                    "BENCH l2-serial-ticks-per-byte-1 ",
                    "BENCH l2-serial-ticks-per-byte-bulk ",
                    "BENCH l2-serial-ticks-per-byte-1-unattached ",
                    "BENCH l2-serial-ticks-per-byte-bulk-unattached ",
                ],
                // Attach once the VM has its tag (its unattached run is
                // over), then, when its line says so (after the backlog:
                // nothing of it is still on the line), type the line that
                // starts the attached run.
                typed: &[
                    Input { after: "tag=bench", target: "bench", text: "" },
                    Input { after: "bench-ready", target: "bench", text: "go\r" },
                ],
                follow_all: false,
                ordered: &["typed into bench", "BENCH l2-serial-ticks-per-byte-1 "],
                forbidden: &["BENCH FAIL"],
                script: None,
            },
            disk: Disk::None,
            cpus: 1,
        },
        Scenario {
            name: "linux-serial-bench-qemu",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info shadow=off", modules: |_| crate::linux::scenario_modules("serial-bench-qemu") },
            limit: Duration::from_secs(1800),
            com1: &["L1INIT ok", "QEMU bench exit=0", "BENCH l2-serial-ticks-per-byte-1 ", "BENCH l2-serial-ticks-per-byte-bulk ", "L1DONE"],
            com2: &["shadow=off", "cloud VM requested shutdown", "L0 integrity OK"],
            forbidden: leak([LINUX_HEALTHY.iter().map(|s| s.to_string()).collect::<Vec<_>>(), vec!["BENCH FAIL".into()]].concat()),
            enabled_in_ci: false,
            console: NO_CONSOLE,
            disk: Disk::None,
            cpus: 1,
        },
        Scenario {
            // `cargo xtask run`'s demo: two Linux user VMs with shells, the
            // operator's console attached. Interactive: not a test.
            name: "demo",
            boot: Boot::L0 { cmdline: "serial=com2 loglevel=info", modules: |_| crate::linux::scenario_modules("demo") },
            limit: Duration::from_secs(3600),
            com1: &["L1DONE"],
            com2: &[],
            forbidden: LINUX_HEALTHY,
            enabled_in_ci: false,
            disk: Disk::None,
            cpus: 1,
            console: NO_CONSOLE,
        },
        Scenario {
            // A module that is no bzImage: L0 says so and stops.
            name: "linux-bad-kernel",
            boot: Boot::L0 {
                cmdline: "serial=com2",
                modules: |_| vec![IsoModule::inline("not-a-bzimage.txt", b"This is a text file, not a kernel.\n", "l1=linux console=ttyS0")],
            },
            limit: Duration::from_secs(60),
            com1: &[],
            com2: &["L0 FATAL: cloud VM kernel: not a Linux bzImage"],
            forbidden: &["L0 PANIC", "starting the cloud VM"],
            console: NO_CONSOLE,
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
        },
        Scenario {
            // The real kernel with an initrd that is no archive.
            name: "linux-bad-initrd",
            boot: Boot::L0 {
                cmdline: "serial=com2",
                modules: |_| {
                    let mut m = crate::linux::scenario_modules("boot");
                    m.truncate(1);
                    m.push(IsoModule::inline("garbage.img", b"garbage, not a cpio archive", "l1.initrd"));
                    m
                },
            },
            limit: Duration::from_secs(60),
            com1: &[],
            com2: &["L0 FATAL: cloud VM kernel: the initrd is neither a cpio archive"],
            forbidden: &["L0 PANIC", "starting the cloud VM"],
            console: NO_CONSOLE,
            enabled_in_ci: true,
            disk: Disk::None,
            cpus: 1,
        },
    ]
    .into_iter()
    .chain(xen())
    .collect()
}

pub struct Outcome {
    pub passed: bool,
    pub reason: String,
    pub elapsed: Duration,
    /// The cloud VM's serial output (COM1).
    pub com1: String,
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A Linux scenario's modules with L0's identity (the owner-console
/// scenario's test key), for owners who pin it.
fn relay_modules(test: &str) -> Vec<IsoModule> {
    let mut m = crate::linux::scenario_modules(test);
    m.push(IsoModule::inline(
        "l0.identity",
        crate::owner::test_keys::L0_IDENTITY_HEX.as_bytes(),
        "l0.identity",
    ));
    m
}

/// A TCP port on 127.0.0.1 nobody listens on now.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

pub fn run(s: &Scenario, images: &Images, emu: Emulator) -> Result<Outcome, String> {
    let dir = crate::build::target_dir().join("scenarios").join(s.name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    prepare_disk(s, images, emu, &dir)?;
    let iso = dir.join("boot.iso");
    make_iso(s, images, &iso, emu)?;
    // Once everything expected is there, give the guest a moment to shut
    // the emulator down itself, then stop it.
    let mut done_at: Option<std::time::Instant> = None;
    let mut bad_at: Option<std::time::Instant> = None;
    // A networked run's forwarded port: free now (bound and let go), so
    // two runs at once each get their own.
    let nic = match crate::owner_relay::story(s.name) {
        Some(_) => Some(free_port()?),
        None => None,
    };
    let mut user: Box<dyn LineUser> = match s.console.script {
        _ if s.name == "owner-console" => Box::new(crate::owner::scenario_client()),
        _ if nic.is_some() => Box::new(crate::owner_relay::RelayUser::new(
            Follower::new(s.console.typed, s.console.follow_all),
            s.name,
            nic.unwrap_or_default(),
        )),
        Some(script) => Box::new(Operator::scripted(script)),
        None => Box::new(Follower::new(s.console.typed, s.console.follow_all)),
    };
    let memory_mib = s.memory_mib();
    let run = emulator::run(
        emu,
        &dir,
        &iso,
        emulator::HostSize {
            memory_mib,
            cpus: s.cpus,
            nic,
        },
        s.limit,
        false,
        &mut *user,
        |l: &Logs| match judge::now(s, l) {
            // A failed run stops, but a guest that goes on checking gets to
            // print the rest of its checks and its verdict first.
            judge::Now::Failed { settled } => {
                let t = *bad_at.get_or_insert_with(std::time::Instant::now);
                if settled || t.elapsed() > Duration::from_secs(5) {
                    return Verdict::Stop;
                }
                Verdict::Continue
            }
            judge::Now::Passing => {
                let t = *done_at.get_or_insert_with(std::time::Instant::now);
                if t.elapsed() > Duration::from_secs(1) {
                    return Verdict::Stop;
                }
                Verdict::Continue
            }
            judge::Now::Undecided => Verdict::Continue,
        },
    )?;
    let _ = std::fs::write(dir.join("console.log"), user.transcript());
    let logs = Logs {
        com1: &run.com1,
        com2: &run.com2,
        console: user.transcript(),
    };
    let reason = judge::run(s, &logs, user.unfinished()).unwrap_or_default();
    let passed = reason.is_empty();
    if passed {
        PASSED.lock().unwrap().push(s.name);
    }
    if !passed {
        // One write, so that a report is not cut by another run's lines.
        let mut report = format!(
            "---- {} failed: {reason}{}\n",
            s.name,
            if run.timed_out {
                " (wall-clock limit reached)"
            } else {
                ""
            }
        );
        report += &format!(
            "---- COM1 (cloud VM), last lines:\n{}\n",
            tail(&run.com1, 40)
        );
        report += &format!("---- COM2 (L0), last lines:\n{}\n", tail(&run.com2, 60));
        if !user.transcript().is_empty() {
            report += &format!(
                "---- user VM consoles (console.log), last lines:\n{}\n",
                tail(user.transcript(), 30)
            );
        }
        report += &format!(
            "---- {}/bochs.log, last lines:\n{}\n",
            dir.display(),
            tail(&run.emulator_log(), 30)
        );
        eprint!("{report}");
    }
    Ok(Outcome {
        passed,
        reason,
        elapsed: run.elapsed,
        com1: run.com1,
    })
}

/// The scenarios that passed in this process (whose disks are fresh).
static PASSED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

/// Taken by a scenario that may have to run another first for its disk.
static SOURCE_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `disk.img` in `dir` as `s` wants it (none, blank, or another's copy).
fn prepare_disk(
    s: &Scenario,
    images: &Images,
    emu: Emulator,
    dir: &std::path::Path,
) -> Result<(), String> {
    let img = dir.join("disk.img");
    let _ = std::fs::remove_file(&img);
    // Bochs locks an image it opens; a killed run leaves the lock behind.
    let _ = std::fs::remove_file(dir.join("disk.img.lock"));
    match s.disk {
        Disk::None => Ok(()),
        Disk::Blank => std::fs::File::create(&img)
            .and_then(|f| f.set_len(DISK_BYTES))
            .map_err(|e| format!("{}: {e}", img.display())),
        Disk::From(source) => {
            // Held while the source runs: scenarios that run at once and
            // need the same source wait for its one run.
            let _one_source_run = SOURCE_RUN.lock().unwrap_or_else(|e| e.into_inner());
            if !PASSED.lock().unwrap().contains(&source) {
                let src = find(source)
                    .ok_or_else(|| format!("{}: no scenario named {source}", s.name))?;
                println!("== scenario {} runs {source} first for its disk", s.name);
                let o = run(&src, images, emu)?;
                if !o.passed {
                    return Err(format!(
                        "{} needs {source}'s disk, and {source} failed: {}",
                        s.name, o.reason
                    ));
                }
                println!(
                    "== scenario {source} ... ok ({:.1} s)",
                    o.elapsed.as_secs_f64()
                );
            }
            std::fs::copy(scenario_dir(source).join("disk.img"), &img)
                .map(|_| ())
                .map_err(|e| format!("{source}'s disk: {e}"))
        }
    }
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
    fn native_variants_pair_with_l0_variants() {
        let all = all();
        for s in all.iter().filter(|s| s.native()) {
            assert!(s.com2.is_empty(), "{}: no L0, no COM2 markers", s.name);
            assert!(
                s.enabled_in_ci,
                "{}: native scenarios must pass now",
                s.name
            );
            let base = s
                .name
                .strip_suffix("-native")
                .expect("native scenarios end in -native");
            if base.ends_with("-paged") || base.ends_with("-noept") {
                continue; // native-only fallback variants
            }
            let l0 = all
                .iter()
                .find(|t| t.name == base)
                .expect("each native scenario has an L0 variant");
            assert!(!l0.native() && l0.com1 == s.com1);
        }
    }

    #[test]
    fn shadow_scenarios_are_l0_only_and_in_ci() {
        let all = all();
        for name in [
            "shadow-console",
            "shadow-input",
            "ultracall-save-restore",
            "ultracall-fuzz",
            "shadow-bench",
        ] {
            let s = all.iter().find(|s| s.name == name).expect(name);
            assert!(!s.native() && s.enabled_in_ci, "{name}");
            assert!(
                !all.iter().any(|t| t.name == format!("{name}-native")),
                "{name} cannot pass natively"
            );
            let Boot::L0 { modules, .. } = &s.boot else {
                unreachable!()
            };
            let images = Images {
                l0: "l0".into(),
                guest: "guest".into(),
            };
            let keyed = modules(&images).iter().any(|m| m.cmdline == "l0.key");
            assert_eq!(
                keyed,
                !name.starts_with("shadow-c") && name != "shadow-input",
                "{name}: key module"
            );
        }
    }

    #[test]
    fn guest_scenarios_name_the_test_they_run() {
        // A "FAIL" is caught only through the test a scenario names
        // (crate::verdict): a guest scenario naming none would pass it.
        let images = Images {
            l0: "l0".into(),
            guest: "guest".into(),
        };
        for s in all() {
            let args = match &s.boot {
                Boot::Native { args } => args.to_string(),
                Boot::L0 { modules, .. } => modules(&images)
                    .iter()
                    .map(|m| m.cmdline.clone())
                    .find(|c| c.starts_with("l1=multiboot "))
                    .unwrap_or_default(),
                Boot::Peer { .. } | Boot::Xen { .. } | Boot::XenPeer { .. } => continue,
            };
            let test = args.split(' ').find_map(|a| a.strip_prefix("test="));
            let expected = crate::verdict::expected(s.com1);
            assert_eq!(expected, test.into_iter().collect::<Vec<_>>(), "{}", s.name);
        }
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

#[cfg(test)]
mod xen_hvm_tests {
    use super::*;

    #[test]
    fn xen_hvm_types_the_same_lines_into_both_shells_and_counts_them() {
        let c = xen_hvm_console();
        let script = c.script.unwrap();
        let cm = crate::linux::console_marker();
        println!("{script}");
        for vm in ["hvm1", "hvm2"] {
            assert!(script.contains(&format!("/attach {vm}\n")));
        }
        // What dom0 waits for: every typed line and its carriage return.
        let typed: usize = script
            .lines()
            .filter(|l| !l.starts_with('/'))
            .map(|l| l.len() + 1)
            .sum();
        assert_eq!(typed, 2 * xen_hvm_typed_bytes());
        assert!(script.contains(&format!("echo mark-{cm}-$((6*7))\n")));
        // The marker the spy searches for is not the run's marker itself
        // (which is on dom0's command line), and no answer is typed.
        assert!(!cm.contains(crate::linux::run_marker()));
        for answer in c.ordered {
            assert!(
                !script
                    .lines()
                    .any(|l| !l.starts_with('/') && l.contains(answer)),
                "{answer} is typed"
            );
        }
    }
}
