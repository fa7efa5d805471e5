//! The Linux cloud VM: kernel, initramfs and what they are built from.
//!
//! Everything comes from Debian packages and files in this repository, with
//! no hand steps: [`kernel`] builds the lean kernel, [`initramfs`] packs
//! busybox, Debian's QEMU with what it loads, the `ultracall` CLI, the clock
//! probe and the L2 images. Both are cached by a hash of their inputs.

pub mod cpio;
pub mod initramfs;
pub mod kernel;

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// `${XDG_CACHE_HOME:-$HOME/.cache}/l0-hypervisor`: outside the clone, so
/// it survives `cargo clean` and fresh work trees.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| crate::build::target_dir().join("cache"));
    base.join("l0-hypervisor")
}

pub fn log(msg: &str) {
    println!("xtask: {msg}");
}

/// The installed version of a Debian package.
pub fn package_version(pkg: &str) -> Result<String, String> {
    let o = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", pkg])
        .output()
        .map_err(|e| format!("dpkg-query: {e}"))?;
    let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if !o.status.success() || v.is_empty() {
        return Err(format!("Debian package {pkg} is not installed"));
    }
    Ok(v)
}

/// SHA-256 of `data` in hex, by coreutils' sha256sum.
pub fn sha256_hex(data: &[u8]) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("sha256sum: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(data)
        .map_err(|e| e.to_string())?;
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    let hex = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    if hex.len() != 64 {
        return Err("sha256sum gave no digest".into());
    }
    Ok(hex)
}

/// The cloud VM's kernel and initramfs.
pub struct LinuxImages {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The peer host's initramfs (see `initramfs::Initramfs::peer`).
    pub peer: PathBuf,
    /// The user VMs' initramfs (tests/linux/init-l2), which boots with
    /// `kernel` as well.
    pub l2: PathBuf,
}

static IMAGES: std::sync::OnceLock<Result<LinuxImages, String>> = std::sync::OnceLock::new();

/// Builds (or finds in the cache) the kernel and initramfs, once per run.
pub fn images() -> Result<&'static LinuxImages, String> {
    IMAGES
        .get_or_init(|| {
            let k = kernel::ensure()?;
            let i = initramfs::ensure(&k.bz_image)?;
            Ok(LinuxImages {
                kernel: k.bz_image,
                initramfs: i.l1,
                peer: i.peer,
                l2: i.l2,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The marker the L2 VMs of this run print: random per xtask run, so a
/// log from an earlier run can never pass.
pub fn run_marker() -> &'static str {
    static MARKER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARKER.get_or_init(|| {
        let mut b = [0u8; 6];
        match std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        {
            Ok(()) => {}
            Err(_) => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                b.copy_from_slice(&t.as_nanos().to_le_bytes()[..6]);
            }
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    })
}

/// What an operator or owner types into a user VM as the run's console
/// marker: derived from [`run_marker`] but not on L1's command line, so
/// L1 may hold it only if the console leaked (tests/linux/probe spy.rs).
pub fn console_marker() -> String {
    format!("c{}", run_marker().chars().rev().collect::<String>())
}

/// The GRUB modules of a Linux scenario: L1's kernel with `l0test=TEST`
/// and the run's marker on its command line, and its initramfs. A failed
/// build ends xtask here (scenario tables hold plain function pointers).
pub fn scenario_modules(test: &str) -> Vec<crate::build::IsoModule> {
    scenario_modules_with(test, "")
}

/// As [`scenario_modules`], with `extra` added to the cloud VM kernel's
/// command line (parameters of built-in modules, as `kvm_intel.pml=0`).
pub fn scenario_modules_with(test: &str, extra: &str) -> Vec<crate::build::IsoModule> {
    let li = images().unwrap_or_else(|e| {
        eprintln!("xtask: building the Linux cloud VM failed: {e}");
        std::process::exit(1)
    });
    let cmdline = format!(
        "l1=linux console=ttyS0,115200 panic=0 l0test={test} l0marker={}{}{extra}",
        run_marker(),
        if extra.is_empty() { "" } else { " " }
    );
    vec![
        crate::build::IsoModule::file(&li.kernel, &cmdline),
        crate::build::IsoModule::file(&li.initramfs, "l1.initrd"),
    ]
}
