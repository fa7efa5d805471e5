//! The initramfs of the cloud VM (L1) and of the user VMs (L2).
//!
//! L2: busybox-static and tests/linux/init-l2.
//! L1: busybox-static, tests/linux/init, the `ultracall` CLI, `l0-relay`
//! and the clock probe (static Rust), Debian's unmodified `qemu-system-x86_64` with
//! every library `ldd` names plus the dynamic loader, the firmware QEMU
//! loads for the L2 command line (found by running QEMU itself, below),
//! and the L2 kernel and initramfs under /l2.
//!
//! Archives are built in memory (reproducibly: see `cpio`), hashed, and
//! compressed with `lz4 -l` (the legacy frame the kernel's RD_LZ4 reads)
//! only when the cache has no file of that hash.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cpio::{Archive, Node};
use super::{cache_dir, log, sha256_hex};
use crate::build::{root, target_dir};

pub const PACKAGES: &[(&str, &str)] = &[
    ("busybox-static", "/bin/busybox"),
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("qemu-system-data", "/usr/share/qemu/qboot.rom"),
    ("lz4", "/usr/bin/lz4"),
];

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Where QEMU's data and modules are, relative to its binary's prefix
/// (QEMU >= 5.2 relocates them with the binary).
const QEMU_DATA: &str = "usr/share/qemu";
const QEMU_MODULES: &str = "usr/lib/x86_64-linux-gnu/qemu";
/// Where Debian keeps firmware that /usr/share/qemu links to.
const FIRMWARE_DIRS: &[&str] = &["/usr/share/qemu", "/usr/share/seabios", "/usr/share/qboot"];

/// The QEMU options of an L2 that decide which firmware it loads; the
/// same as in tests/linux/init.
pub const L2_MACHINE: &[&str] = &[
    "-M",
    "microvm",
    "-bios",
    "qboot.rom",
    "-nodefaults",
    "-no-user-config",
    "-m",
    "96",
];

pub struct Initramfs {
    pub l1: PathBuf,
    pub l2: PathBuf,
    /// The peer host's (`cargo xtask bench`): the L1 archive with
    /// tests/linux/init-peer as init and the cloud VM's kernel and
    /// initramfs under /peer, which it runs with QEMU/KVM.
    pub peer: PathBuf,
}

fn read(p: &Path) -> Result<Vec<u8>, String> {
    fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn file(data: Vec<u8>, exec: bool) -> Node {
    Node::File { data, exec }
}

/// busybox at /bin/busybox with a symlink for each applet it lists.
pub(crate) fn add_busybox(a: &mut Archive) -> Result<(), String> {
    a.add("bin/busybox", file(read(Path::new("/bin/busybox"))?, true));
    let o = Command::new("/bin/busybox")
        .arg("--list-full")
        .output()
        .map_err(|e| format!("busybox: {e}"))?;
    for applet in String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        if !a.contains(applet) {
            let depth = applet.matches('/').count();
            a.add(
                applet,
                Node::Symlink(format!("{}bin/busybox", "../".repeat(depth))),
            );
        }
    }
    for d in ["proc", "sys", "dev", "tmp", "root", "etc"] {
        a.add(d, Node::Dir);
    }
    // The kernel opens /dev/console for init before anything is mounted.
    a.add("dev/console", Node::CharDev { major: 5, minor: 1 });
    Ok(())
}

/// Builds a static Rust tool for the guest (x86_64 Linux, static C runtime).
fn static_tool(args: &[&str], bin: &str) -> Result<PathBuf, String> {
    let dir = target_dir().join("linux-tools");
    let status = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(&dir)
        .args(args)
        .env_remove("RUSTFLAGS")
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building {bin} for the cloud VM failed"));
    }
    Ok(dir.join("x86_64-unknown-linux-gnu/release").join(bin))
}

/// The `ultracall` CLI, static: tags from a user VM, the list and
/// save/restore from the cloud VM.
pub(crate) fn ultracall_tool() -> Result<PathBuf, String> {
    static_tool(
        &[
            "-p",
            "ultracall-abi",
            "--features",
            "std",
            "--bin",
            "ultracall",
        ],
        "ultracall",
    )
}

/// The checks run in the cloud VM and its user VMs (tests/linux/probe),
/// static.
pub(crate) fn probe_tool() -> Result<PathBuf, String> {
    static_tool(
        &["--manifest-path", "tests/linux/probe/Cargo.toml"],
        "l1-probe",
    )
}

/// Shared objects `ldd` lists for `binary`, the dynamic loader included;
/// `lib_path` is searched first (LD_LIBRARY_PATH) when given.
pub(crate) fn ldd(binary: &str, lib_path: Option<&str>) -> Result<Vec<String>, String> {
    let mut cmd = Command::new("ldd");
    cmd.arg(binary);
    if let Some(p) = lib_path {
        cmd.env("LD_LIBRARY_PATH", p);
    }
    let o = cmd.output().map_err(|e| format!("ldd: {e}"))?;
    if !o.status.success() {
        return Err(format!("ldd {binary} failed"));
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(p.to_string());
        }
    }
    Ok(libs)
}

/// The file names in quotes in QEMU's complaints ("could not load PC BIOS
/// 'qboot.rom'", "Could not open option rom 'linuxboot_dma.bin'", ...).
pub fn missing_files(stderr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in stderr.lines() {
        let l = line.to_ascii_lowercase();
        if !(l.contains("could not") || l.contains("failed to find") || l.contains("no such file"))
        {
            continue;
        }
        for q in ['\'', '"'] {
            let parts: Vec<&str> = line.split(q).collect();
            for name in parts.iter().skip(1).step_by(2).take((parts.len() - 1) / 2) {
                if !name.is_empty() && !name.contains('/') && !out.iter().any(|o| o == name) {
                    out.push(name.to_string());
                }
            }
        }
    }
    out
}

/// The firmware QEMU loads for an L2, found by running QEMU from a copy of
/// its binary whose data directory holds only what was found so far: it
/// names each file it misses, until it starts (paused, `-S`) and keeps
/// running. Runs under TCG (modules from the host) so no KVM is needed here.
fn qemu_firmware(kernel: &Path, initrd: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let dir = target_dir().join("linux-tools/qemu-probe");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("usr/bin")).map_err(|e| e.to_string())?;
    fs::create_dir_all(dir.join(QEMU_DATA)).map_err(|e| e.to_string())?;
    let moddir = dir.join(QEMU_MODULES);
    fs::create_dir_all(moddir.parent().unwrap()).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(Path::new("/").join(QEMU_MODULES), &moddir)
        .map_err(|e| e.to_string())?;
    let qemu = dir.join("usr/bin/qemu-system-x86_64");
    fs::copy(QEMU, &qemu).map_err(|e| format!("{QEMU}: {e}"))?;
    let mut found = Vec::new();
    for _ in 0..16 {
        let mut child = Command::new(&qemu)
            .args([
                "-accel",
                "tcg",
                "-S",
                "-display",
                "none",
                "-monitor",
                "none",
                "-serial",
                "null",
                "-no-reboot",
            ])
            .args(L2_MACHINE)
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{QEMU}: {e}"))?;
        let t0 = Instant::now();
        let exited = loop {
            if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
                break Some(s);
            }
            if t0.elapsed() > Duration::from_secs(3) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_dir_all(&dir);
            return Ok(found);
        }
        let mut err = String::new();
        use std::io::Read;
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        let names = missing_files(&err);
        let new: Vec<String> = names
            .into_iter()
            .filter(|n| !found.iter().any(|(f, _)| f == n))
            .collect();
        if new.is_empty() {
            return Err(format!(
                "QEMU does not start with the L2 options and names no missing file:\n{err}"
            ));
        }
        for name in new {
            let src = FIRMWARE_DIRS
                .iter()
                .map(|d| Path::new(d).join(&name))
                .find(|p| p.exists())
                .ok_or_else(|| {
                    format!("QEMU wants {name}, which no Debian package here provides")
                })?;
            let data = read(&src)?;
            fs::write(dir.join(QEMU_DATA).join(&name), &data).map_err(|e| e.to_string())?;
            found.push((name, data));
        }
    }
    Err("QEMU kept asking for firmware".into())
}

/// Compresses `archive` into the cache under a name derived from its
/// bytes; returns the cached file.
pub(crate) fn cached_lz4(what: &str, archive: &[u8]) -> Result<PathBuf, String> {
    let hash = &sha256_hex(archive)?[..16];
    let dir = cache_dir();
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let out = dir.join(format!("{what}-{hash}.cpio.lz4"));
    if out.exists() {
        log(&format!(
            "{what} initramfs {hash}: cached ({} KiB)",
            fs::metadata(&out).map(|m| m.len()).unwrap_or(0) / 1024
        ));
        return Ok(out);
    }
    let tmp = out.with_extension("tmp");
    let raw = out.with_extension("cpio");
    fs::write(&raw, archive).map_err(|e| e.to_string())?;
    let ok = Command::new("lz4")
        .args(["-l", "-q", "-f"])
        .arg(&raw)
        .arg(&tmp)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = fs::remove_file(&raw);
    if !ok {
        return Err("lz4 failed".into());
    }
    fs::rename(&tmp, &out).map_err(|e| e.to_string())?;
    log(&format!(
        "{what} initramfs {hash}: {} KiB, {} KiB as LZ4",
        archive.len() / 1024,
        fs::metadata(&out).map(|m| m.len()).unwrap_or(0) / 1024
    ));
    Ok(out)
}

pub fn ensure(kernel: &Path) -> Result<Initramfs, String> {
    crate::deps::ensure(PACKAGES)?;
    let t0 = Instant::now();
    let tests = root().join("tests/linux");

    // The guest tool both levels use: tags from L2, save/restore from L1.
    let ultracall = ultracall_tool()?;
    let mut l2 = Archive::default();
    add_busybox(&mut l2)?;
    l2.add("init", file(read(&tests.join("init-l2"))?, true));
    l2.add("bin/ultracall", file(read(&ultracall)?, true));
    // The probes (`probe stress` runs in L2; the rest in L1).
    let probe = probe_tool()?;
    l2.add("bin/probe", file(read(&probe)?, true));
    let l2_path = cached_lz4("l2", &l2.to_bytes())?;

    // The owner-session relay the provider runs in the cloud VM.
    let relay = static_tool(&["-p", "l0-relay", "--bin", "l0-relay"], "l0-relay")?;
    let mut l1 = Archive::default();
    add_busybox(&mut l1)?;
    l1.add("init", file(read(&tests.join("init"))?, true));
    l1.add("bin/probe", file(read(&probe)?, true));
    l1.add("bin/ultracall", file(read(&ultracall)?, true));
    l1.add("bin/l0-relay", file(read(&relay)?, true));
    l1.add(QEMU, file(read(Path::new(QEMU))?, true));
    let libs = ldd(QEMU, None)?;
    for lib in &libs {
        // Stored under the name ldd gives, symlinks resolved.
        l1.add(lib, file(read(Path::new(lib))?, true));
    }
    let firmware = qemu_firmware(kernel, &l2_path)?;
    let names: Vec<&str> = firmware.iter().map(|(n, _)| n.as_str()).collect();
    for (name, data) in firmware.iter() {
        l1.add(&format!("{QEMU_DATA}/{name}"), file(data.clone(), false));
    }
    l1.add("l2/bzImage", file(read(kernel)?, false));
    l1.add("l2/initrd", file(read(&l2_path)?, false));
    log(&format!(
        "L1 initramfs: QEMU with {} libraries, firmware {}",
        libs.len(),
        names.join(", ")
    ));
    let l1_path = cached_lz4("l1", &l1.to_bytes())?;
    let mut peer = l1.clone();
    peer.add("init", file(read(&tests.join("init-peer"))?, true));
    peer.add("peer/bzImage", file(read(kernel)?, false));
    peer.add("peer/l1.initrd", file(read(&l1_path)?, false));
    let peer_path = cached_lz4("peer", &peer.to_bytes())?;
    log(&format!(
        "initramfs ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(Initramfs {
        l1: l1_path,
        l2: l2_path,
        peer: peer_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_qemu_errors() {
        let err = "Could not open option rom 'linuxboot_dma.bin': No such file or directory\n\
                   qemu: could not load PC BIOS 'qboot.rom'\n\
                   qemu-system-x86_64: failed to find romfile \"vgabios-stdvga.bin\"\n\
                   qemu-system-x86_64: -m 96: something else 'x'\n";
        assert_eq!(
            missing_files(err),
            vec!["linuxboot_dma.bin", "qboot.rom", "vgabios-stdvga.bin"]
        );
        assert!(missing_files("could not load '/abs/path'").is_empty());
    }
}
