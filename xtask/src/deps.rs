//! The Debian packages and rustup target the image and the emulators need:
//! installed when missing if we are root, otherwise named exactly.

use std::path::Path;
use std::process::Command;

/// (package, a file it provides that we use)
const PACKAGES: &[(&str, &str)] = &[
    ("bochs", "/usr/bin/bochs-bin"),
    ("bochsbios", "/usr/share/bochs/BIOS-bochs-latest"),
    ("vgabios", "/usr/share/vgabios/vgabios.bin"),
    ("grub-pc-bin", "/usr/lib/grub/i386-pc/multiboot2.mod"),
    ("grub-common", "/usr/bin/grub-mkrescue"),
    ("xorriso", "/usr/bin/xorriso"),
    ("mtools", "/usr/bin/mformat"),
];

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Makes sure `packages` (plus the image tools) are installed.
pub fn ensure(extra: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .chain(extra)
        .filter(|(_, f)| !Path::new(f).exists())
        .map(|(p, _)| *p)
        .collect();
    ensure_rust_target()?;
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        return Err(format!(
            "missing Debian packages; install them with:\n  sudo apt-get install -y {list}"
        ));
    }
    eprintln!("xtask: installing {list}");
    let update = Command::new("apt-get").args(["update", "-qq"]).status();
    if !update.map(|s| s.success()).unwrap_or(false) {
        return Err("apt-get update failed".into());
    }
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err(format!("apt-get install {list} failed"));
    }
    Ok(())
}

fn ensure_rust_target() -> Result<(), String> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match out {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == "x86_64-unknown-none") =>
        {
            Ok(())
        }
        Ok(_) => {
            let ok = Command::new("rustup")
                .args(["target", "add", "x86_64-unknown-none"])
                .status();
            match ok {
                Ok(s) if s.success() => Ok(()),
                _ => Err(
                    "could not add the rust target: run `rustup target add x86_64-unknown-none`"
                        .into(),
                ),
            }
        }
        // No rustup: trust the toolchain to have it (cargo will say if not).
        Err(_) => Ok(()),
    }
}
