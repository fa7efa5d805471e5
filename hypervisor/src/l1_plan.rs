//! The cloud VM, planned from the boot information before anything is
//! written: which module is what (`config::module_role`), the sealing key,
//! and the loader's plan for the kernel with its modules or initrd. Pure,
//! so every refusal is checked on the host; start.rs carries the plan out.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use boot::loader::{self, LoadPlan, ModuleImage};
use boot::multiboot2::MemoryRegion;

use crate::config::{self, BadKey, ModuleRole, UnknownModule};

/// A boot module as L0 holds it (copied into its pool).
#[derive(Clone, Copy, Debug)]
pub struct BootModule<'a> {
    pub data: &'a [u8],
    pub cmdline: &'a str,
}

/// What L0 starts.
pub struct CloudVm<'a> {
    /// The writes into L1's memory and the first guest state.
    pub load: LoadPlan<'a>,
    /// One line for the log: what was loaded where.
    pub started: String,
    /// The sealing key, if a module gave one, and which module (L0 wipes it).
    pub key: Option<([u8; 32], usize)>,
    /// L0's owner-session identity: None without an `l0.identity` module,
    /// `Some(None)` when it is malformed or given twice (owner sessions
    /// are then off, which L0 says). Never fatal: the VMs still run.
    pub identity: Option<Option<[u8; 32]>>,
    /// The identity modules (L0 wipes them).
    pub identity_modules: Vec<usize>,
}

/// Why the boot information does not make a cloud VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanError<'a> {
    Unknown(usize, UnknownModule<'a>),
    BadKey(usize, BadKey),
    SecondKey(usize),
    SecondInitrd(usize),
    SecondKernel(usize),
    NoKernel,
    ModulesForLinux,
    InitrdForMultiboot,
    Multiboot(loader::LoadError),
    Linux(loader::linux::LinuxError),
}

impl fmt::Display for PlanError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Unknown(i, e) => write!(f, "module {i}: {e}"),
            PlanError::BadKey(i, e) => write!(f, "module {i}: {e}"),
            PlanError::SecondKey(i) => write!(f, "module {i}: a second `l0.key`"),
            PlanError::SecondInitrd(i) => write!(f, "module {i}: a second `l1.initrd`"),
            PlanError::SecondKernel(i) => write!(
                f,
                "module {i}: a second cloud VM kernel (`l1=multiboot` or `l1=linux`); give exactly one"
            ),
            PlanError::NoKernel => f.write_str(
                "no cloud VM kernel: add `module2 /path/kernel l1=multiboot [args]` or `module2 /path/bzImage l1=linux [args]` to the GRUB entry",
            ),
            PlanError::ModulesForLinux => f.write_str(
                "`l1.module` is for multiboot kernels; a Linux kernel takes one `l1.initrd`",
            ),
            PlanError::InitrdForMultiboot => f.write_str(
                "`l1.initrd` is for Linux kernels (`l1=linux`); a multiboot kernel takes `l1.module`s",
            ),
            PlanError::Multiboot(e) => write!(f, "cloud VM kernel: {e}"),
            PlanError::Linux(e) => write!(f, "cloud VM kernel: {e}"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KernelKind {
    Multiboot,
    Linux,
}

/// Plans the cloud VM from the boot modules, the ACPI RSDP to hand a Linux
/// kernel, and L1's memory map.
pub fn plan<'a>(
    modules: &[BootModule<'a>],
    rsdp: Option<&[u8]>,
    l1_map: &[MemoryRegion],
) -> Result<CloudVm<'a>, PlanError<'a>> {
    let mut kernel: Option<(&'a [u8], &'a str, KernelKind)> = None;
    let mut initrd: Option<&'a [u8]> = None;
    let mut l1_modules = Vec::new();
    let mut key = None;
    let mut identity = None;
    let mut identity_modules = Vec::new();
    for (i, m) in modules.iter().enumerate() {
        let (args, kind) = match config::module_role(m.cmdline) {
            Ok(ModuleRole::L0Identity) => {
                // A second one: neither is trusted.
                identity = match identity {
                    None => Some(owner_session::noise::parse_private_key(m.data)),
                    Some(_) => Some(None),
                };
                identity_modules.push(i);
                continue;
            }
            Ok(ModuleRole::L0Key) if key.is_none() => {
                let k = config::parse_key(m.data).map_err(|e| PlanError::BadKey(i, e))?;
                key = Some((k, i));
                continue;
            }
            Ok(ModuleRole::L0Key) => return Err(PlanError::SecondKey(i)),
            Ok(ModuleRole::L1Multiboot(args)) => (args, KernelKind::Multiboot),
            Ok(ModuleRole::L1Linux(args)) => (args, KernelKind::Linux),
            Ok(ModuleRole::L1Module(args)) => {
                l1_modules.push(ModuleImage {
                    data: m.data,
                    cmdline: args,
                });
                continue;
            }
            Ok(ModuleRole::L1Initrd) if initrd.is_none() => {
                initrd = Some(m.data);
                continue;
            }
            Ok(ModuleRole::L1Initrd) => return Err(PlanError::SecondInitrd(i)),
            Err(e) => return Err(PlanError::Unknown(i, e)),
        };
        if kernel.is_some() {
            return Err(PlanError::SecondKernel(i));
        }
        kernel = Some((m.data, args, kind));
    }
    let (image, args, kind) = kernel.ok_or(PlanError::NoKernel)?;
    let mut started = String::new();
    let load = match kind {
        KernelKind::Linux if !l1_modules.is_empty() => return Err(PlanError::ModulesForLinux),
        KernelKind::Multiboot if initrd.is_some() => return Err(PlanError::InitrdForMultiboot),
        KernelKind::Multiboot => {
            let plan = loader::multiboot::plan(image, args, &l1_modules, l1_map)
                .map_err(PlanError::Multiboot)?;
            if let loader::Entry::Multiboot { eip, .. } = plan.entry {
                let _ = write!(
                    started,
                    "multiboot kernel at {eip:#x}, {} module(s)",
                    l1_modules.len()
                );
            }
            plan
        }
        KernelKind::Linux => {
            let (plan, at) =
                loader::linux::plan(image, args, initrd, rsdp, l1_map).map_err(PlanError::Linux)?;
            let _ = write!(
                started,
                "Linux bzImage at {}, boot_params at {:#x}",
                at.kernel, at.boot_block.start
            );
            match at.initrd {
                Some(r) => {
                    let _ = write!(started, ", initrd {r} ({} KiB)", r.len() >> 10);
                }
                None => started.push_str(", no initrd"),
            }
            plan
        }
    };
    Ok(CloudVm {
        load,
        started,
        key,
        identity,
        identity_modules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot::multiboot2::MEMORY_AVAILABLE;

    fn map() -> [MemoryRegion; 2] {
        [
            MemoryRegion {
                base: 0,
                len: 0x9f000,
                kind: MEMORY_AVAILABLE,
            },
            MemoryRegion {
                base: 0x10_0000,
                len: 0x1000_0000,
                kind: MEMORY_AVAILABLE,
            },
        ]
    }

    /// A minimal multiboot (v1) image: the header with the a.out kludge
    /// loading the 8 KiB image at 1 MiB, entry at its start.
    fn multiboot_kernel() -> Vec<u8> {
        let mut img = alloc::vec![0u8; 0x2000];
        let flags: u32 = 1 << 16;
        let magic: u32 = 0x1bad_b002;
        let fields = [
            magic,
            flags,
            0u32.wrapping_sub(magic).wrapping_sub(flags),
            0x10_0000,
            0x10_0000,
            0x10_2000,
            0x10_2000,
            0x10_0000,
        ];
        for (i, w) in fields.iter().enumerate() {
            img[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        img
    }

    #[test]
    fn a_multiboot_cloud_vm_with_a_module_and_a_key() {
        let k = multiboot_kernel();
        let key = [b'a'; 64];
        let mods = [
            BootModule {
                data: &k,
                cmdline: "l1=multiboot test=boot",
            },
            BootModule {
                data: b"data",
                cmdline: "l1.module extra",
            },
            BootModule {
                data: &key,
                cmdline: "l0.key",
            },
        ];
        let vm = plan(&mods, None, &map()).unwrap();
        assert_eq!(vm.started, "multiboot kernel at 0x100000, 1 module(s)");
        assert_eq!(vm.key, Some(([0xaa; 32], 2)));
    }

    #[test]
    fn an_identity_module_is_read_and_never_fatal() {
        let k = multiboot_kernel();
        let kernel = BootModule {
            data: &k,
            cmdline: "l1=multiboot",
        };
        let id = |data| BootModule {
            data,
            cmdline: "l0.identity",
        };
        let hex = [b'b'; 64];
        let vm = plan(&[kernel, id(&hex)], None, &map()).unwrap();
        assert_eq!(vm.identity, Some(Some([0xbb; 32])));
        assert_eq!(vm.identity_modules, [1]);
        let vm = plan(&[kernel], None, &map()).unwrap();
        assert_eq!(vm.identity, None);
        // Malformed, or two of them: sessions off, the VM still starts.
        let vm = plan(&[id(b"not a key"), kernel], None, &map()).unwrap();
        assert_eq!(vm.identity, Some(None));
        let vm = plan(&[id(&hex), kernel, id(&hex)], None, &map()).unwrap();
        assert_eq!(vm.identity, Some(None));
        assert_eq!(vm.identity_modules, [0, 2]);
    }

    #[test]
    fn every_refusal_names_its_module() {
        let k = multiboot_kernel();
        let m = |cmdline| BootModule { data: &k, cmdline };
        let key = |data| BootModule {
            data,
            cmdline: "l0.key",
        };
        let cases: [(&[BootModule], PlanError); 8] = [
            (&[], PlanError::NoKernel),
            (
                &[m("l1=multiboot"), m("l1=linux")],
                PlanError::SecondKernel(1),
            ),
            (
                &[m("l1=multiboot"), m("l1.initrd"), m("l1.initrd")],
                PlanError::SecondInitrd(2),
            ),
            (
                &[key(&[1; 32]), key(&[2; 32]), m("l1=multiboot")],
                PlanError::SecondKey(1),
            ),
            (&[key(b"short")], PlanError::BadKey(0, BadKey(5))),
            (
                &[m("l1=multiboot"), m("kernel")],
                PlanError::Unknown(1, UnknownModule("kernel")),
            ),
            (&[m("l1=linux"), m("l1.module")], PlanError::ModulesForLinux),
            (
                &[m("l1=multiboot"), m("l1.initrd")],
                PlanError::InitrdForMultiboot,
            ),
        ];
        for (mods, want) in cases {
            let got = plan(mods, None, &map()).err();
            assert_eq!(got, Some(want), "{mods:?}");
            assert!(!want.to_string().is_empty());
        }
        assert!(PlanError::SecondKernel(3)
            .to_string()
            .starts_with("module 3: "));
        // A file that is no kernel at all.
        let text = [BootModule {
            data: b"This is a text file, not a kernel.\n",
            cmdline: "l1=multiboot",
        }];
        assert_eq!(
            plan(&text, None, &map()).err(),
            Some(PlanError::Multiboot(loader::LoadError::NoMultibootHeader))
        );
    }
}
