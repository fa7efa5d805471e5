//! Building the bare-metal images and the GRUB ISO.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The images, built for x86_64-unknown-none in release mode.
pub struct Images {
    pub l0: PathBuf,
    pub guest: PathBuf,
}

fn cargo_build(package: &str) -> Result<(), String> {
    // Separate invocations: each image has its own entry header and features.
    let status = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-none",
            "-p",
            package,
        ])
        // RUSTFLAGS would replace the target flags in .cargo/config.toml.
        .env_remove("RUSTFLAGS")
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building {package} failed"));
    }
    Ok(())
}

pub fn images() -> Result<Images, String> {
    cargo_build("hypervisor")?;
    cargo_build("test-guest")?;
    let dir = target_dir().join("x86_64-unknown-none/release");
    Ok(Images {
        l0: dir.join("l0"),
        guest: dir.join("test-guest"),
    })
}

/// What a module holds.
pub enum Payload {
    File(PathBuf),
    Inline(&'static str, &'static [u8]),
}

/// A module on the ISO under /boot and the command line GRUB gives it.
pub struct IsoModule {
    pub payload: Payload,
    pub cmdline: String,
}

impl IsoModule {
    pub fn file(path: &Path, cmdline: &str) -> Self {
        IsoModule {
            payload: Payload::File(path.to_path_buf()),
            cmdline: cmdline.into(),
        }
    }
    pub fn inline(name: &'static str, bytes: &'static [u8], cmdline: &str) -> Self {
        IsoModule {
            payload: Payload::Inline(name, bytes),
            cmdline: cmdline.into(),
        }
    }
}

/// What GRUB boots from an ISO.
pub enum IsoBoot<'a> {
    /// L0 (multiboot2) with its command line and modules (the cloud VM first).
    L0 {
        l0: &'a Path,
        cmdline: &'a str,
        modules: &'a [IsoModule],
    },
    /// A multiboot (v1) kernel booted directly, with no L0 below it: the
    /// scenario guest on the emulator's own VMX ("native" scenarios).
    Native { kernel: &'a Path, cmdline: &'a str },
    /// A multiboot (v1) kernel with modules booted directly: Xen and its
    /// dom0 with no L0 below them (the Xen scenarios' native twins).
    Multiboot {
        kernel: &'a IsoModule,
        modules: &'a [IsoModule],
    },
    /// A Linux bzImage and initrd booted directly (the peer bottom of
    /// `cargo xtask bench`: Linux/KVM where L0 would be).
    Linux {
        kernel: &'a Path,
        initrd: &'a Path,
        cmdline: &'a str,
    },
    /// A user VM's boot CD: a Linux bzImage and initrd, GRUB silent (its
    /// terminal the BIOS console, so no UART sees GRUB and the VM's COM
    /// ports carry only what the VM's kernel writes).
    UserVm {
        kernel: &'a Path,
        initrd: &'a Path,
        cmdline: &'a str,
    },
}

/// Puts `m` under the stage's /boot as PREFIX-NAME; returns that name.
fn stage_module(stage: &Path, prefix: &str, m: &IsoModule) -> Result<String, String> {
    match &m.payload {
        Payload::File(f) => {
            let name = format!("{prefix}-{}", f.file_name().unwrap().to_string_lossy());
            fs::copy(f, stage.join("boot").join(&name))
                .map_err(|e| format!("{}: {e}", f.display()))?;
            Ok(name)
        }
        Payload::Inline(n, bytes) => {
            let name = format!("{prefix}-{n}");
            fs::write(stage.join("boot").join(&name), bytes).map_err(|e| e.to_string())?;
            Ok(name)
        }
    }
}

/// The start of grub.cfg: no menu delay, and GRUB's terminal on COM2
/// (L0's management line, or the native guest's second port), except on
/// a user VM's CD, where GRUB keeps to the BIOS console so that the VM's
/// COM ports carry only what its kernel writes.
fn grub_terminal(boot: &IsoBoot) -> &'static str {
    match boot {
        IsoBoot::UserVm { .. } => "set timeout=0\n",
        _ => "set timeout=0\nserial --unit=1 --speed=115200\nterminal_input serial\nterminal_output serial\n",
    }
}

/// Makes a GRUB ISO that boots `boot`.
pub fn iso(out: &Path, boot: IsoBoot) -> Result<(), String> {
    let stage = out.with_extension("d");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(stage.join("boot/grub")).map_err(|e| e.to_string())?;
    let mut cfg = String::from(grub_terminal(&boot));
    match boot {
        IsoBoot::L0 {
            l0,
            cmdline,
            modules,
        } => {
            fs::copy(l0, stage.join("boot/l0")).map_err(|e| format!("{}: {e}", l0.display()))?;
            cfg += "menuentry \"L0 cloud hypervisor\" {\n";
            cfg += &format!("  multiboot2 /boot/l0 {cmdline}\n");
            for (i, m) in modules.iter().enumerate() {
                let name = stage_module(&stage, &format!("m{i}"), m)?;
                cfg += &format!("  module2 /boot/{name} {}\n", m.cmdline);
            }
        }
        IsoBoot::Multiboot { kernel, modules } => {
            // `multiboot` + `module` (v1): GRUB's multiboot2 loader crashes
            // on Xen under Bochs (TESTBED.md). --nounzip: the modules are
            // handed over as they are (an LZ4 initrd GRUB would not unpack
            // anyway).
            let name = stage_module(&stage, "k", kernel)?;
            cfg += "menuentry \"multiboot kernel with modules, native\" {\n";
            cfg += &format!("  multiboot /boot/{name} {}\n", kernel.cmdline);
            for (i, m) in modules.iter().enumerate() {
                let name = stage_module(&stage, &format!("m{i}"), m)?;
                cfg += &format!("  module --nounzip /boot/{name} {}\n", m.cmdline);
            }
        }
        IsoBoot::Native { kernel, cmdline } => {
            let name = kernel.file_name().unwrap().to_string_lossy().into_owned();
            fs::copy(kernel, stage.join("boot").join(&name))
                .map_err(|e| format!("{}: {e}", kernel.display()))?;
            // GRUB 2's `multiboot` loads ELF64 multiboot (v1) kernels by
            // their physical addresses and passes "path args" as the
            // command line.
            cfg += "menuentry \"scenario guest, native\" {\n";
            cfg += &format!("  multiboot /boot/{name} {cmdline}\n");
        }
        IsoBoot::Linux {
            kernel,
            initrd,
            cmdline,
        }
        | IsoBoot::UserVm {
            kernel,
            initrd,
            cmdline,
        } => {
            fs::copy(kernel, stage.join("boot/bzImage"))
                .map_err(|e| format!("{}: {e}", kernel.display()))?;
            fs::copy(initrd, stage.join("boot/initrd"))
                .map_err(|e| format!("{}: {e}", initrd.display()))?;
            cfg += "menuentry \"Linux/KVM, directly\" {\n";
            cfg += &format!("  linux /boot/bzImage {cmdline}\n  initrd /boot/initrd\n");
        }
    }
    cfg += "  boot\n}\n";
    fs::write(stage.join("boot/grub/grub.cfg"), cfg).map_err(|e| e.to_string())?;
    // A stripped GRUB boots in under 2 s in Bochs (TESTBED.md).
    let o = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(out)
        .args(["--fonts=", "--locales=", "--themes="])
        .arg("--install-modules=normal multiboot multiboot2 linux serial terminal iso9660 biosdisk part_msdos")
        .arg(&stage)
        .output()
        .map_err(|e| format!("grub-mkrescue: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "grub-mkrescue failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_vms_cd_keeps_grub_off_the_uarts() {
        let (k, i) = (Path::new("k"), Path::new("i"));
        let vm = IsoBoot::UserVm {
            kernel: k,
            initrd: i,
            cmdline: "",
        };
        assert!(!grub_terminal(&vm).contains("serial"));
        let peer = IsoBoot::Linux {
            kernel: k,
            initrd: i,
            cmdline: "",
        };
        assert!(grub_terminal(&peer).contains("terminal_output serial"));
    }
}
