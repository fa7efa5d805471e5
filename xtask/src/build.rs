//! Building the bare-metal images and the GRUB ISO.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
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
        .args(["build", "--release", "--target", "x86_64-unknown-none", "-p", package])
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
    Ok(Images { l0: dir.join("l0"), guest: dir.join("test-guest") })
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
        IsoModule { payload: Payload::File(path.to_path_buf()), cmdline: cmdline.into() }
    }
    pub fn inline(name: &'static str, bytes: &'static [u8], cmdline: &str) -> Self {
        IsoModule { payload: Payload::Inline(name, bytes), cmdline: cmdline.into() }
    }
}

/// Makes a GRUB ISO that boots L0 with `l0_cmdline` and the modules.
pub fn iso(out: &Path, l0: &Path, l0_cmdline: &str, modules: &[IsoModule]) -> Result<(), String> {
    let stage = out.with_extension("d");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(stage.join("boot/grub")).map_err(|e| e.to_string())?;
    fs::copy(l0, stage.join("boot/l0")).map_err(|e| format!("{}: {e}", l0.display()))?;
    let mut cfg = String::from(
        "set timeout=0\nserial --unit=1 --speed=115200\nterminal_input serial\nterminal_output serial\n\
         menuentry \"L0 cloud hypervisor\" {\n",
    );
    cfg += &format!("  multiboot2 /boot/l0 {l0_cmdline}\n");
    for (i, m) in modules.iter().enumerate() {
        let name = match &m.payload {
            Payload::File(f) => {
                let name = format!("m{i}-{}", f.file_name().unwrap().to_string_lossy());
                fs::copy(f, stage.join("boot").join(&name)).map_err(|e| format!("{}: {e}", f.display()))?;
                name
            }
            Payload::Inline(n, bytes) => {
                let name = format!("m{i}-{n}");
                fs::write(stage.join("boot").join(&name), bytes).map_err(|e| e.to_string())?;
                name
            }
        };
        cfg += &format!("  module2 /boot/{name} {}\n", m.cmdline);
    }
    cfg += "  boot\n}\n";
    fs::write(stage.join("boot/grub/grub.cfg"), cfg).map_err(|e| e.to_string())?;
    // A stripped GRUB boots in under 2 s in Bochs (TESTBED.md).
    let o = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(out)
        .args(["--fonts=", "--locales=", "--themes="])
        .arg("--install-modules=normal multiboot2 serial terminal iso9660 biosdisk part_msdos")
        .arg(&stage)
        .output()
        .map_err(|e| format!("grub-mkrescue: {e}"))?;
    if !o.status.success() {
        return Err(format!("grub-mkrescue failed:\n{}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(())
}
