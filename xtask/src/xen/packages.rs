//! Debian bookworm's Xen 4.17, the stock kernel its dom0 runs and an HVM
//! guest's device model and firmware, pinned.
//!
//! Each package is fetched once with `apt-get download NAME=VERSION`, its
//! SHA-256 checked against the table (as the archive's Packages file lists
//! it), and kept in the cache; a package the archive no longer serves at
//! that version stops the build with that sentence, never a silent update.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::linux::{cache_dir, log, sha256_hex};

/// (package, version, SHA-256 of the .deb). Xen from bookworm-security;
/// the kernel is the one `linux-image-amd64` named when pinned.
pub const PINNED: &[(&str, &str, &str)] = &[
    (
        "xen-hypervisor-4.17-amd64",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "fc074298a677325306662eea382cc4503339b8e1f4db54b24702b0b07cf6741d",
    ),
    (
        "xen-utils-4.17",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "1c928e408738cab624ee1d0ce2a824b0e9bc8874e91d635208f346940fb6d47c",
    ),
    (
        "libxenmisc4.17",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "bb43a3633976c8dfa79e0cad473ffeb4f014a5f666b3b62a32bd42ab6daf8862",
    ),
    (
        "libxencall1",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "7479a19973fc1f5d35a73370e3ace8968d3bfb6c49f6b723b2ce85103fd7ebf1",
    ),
    (
        "libxenevtchn1",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "95f4a1a52c95c62360881c1a2770a47b5ff52bed6658e008754bda0cf5c92f0b",
    ),
    (
        "libxenforeignmemory1",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "c3a57bceb6eb06d77b960a133ac0591024d992fd1e820b25c4e3323d4635e04e",
    ),
    (
        "libxengnttab1",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "3525aa228b3f27e0a267bc6f9f59ab9963a2adf490a0df406810988b5fdee98e",
    ),
    (
        "libxenstore4",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "94197a6d85b33377f6f1775fa89b2c5eea96822736a87b4bb36f7a70fc7ff4d0",
    ),
    (
        "libxentoollog1",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "2d3d38d45d8176dd5d1517020c2daf686885f034229c33595ca263d0a9c8ecd3",
    ),
    (
        "libxendevicemodel1",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "205a8f266517dee5ac9c676aa2540e2865758cc584e2602ed978a76f160ef042",
    ),
    (
        "libxenhypfs1",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "2eb9de8ca25a0142f7a54fe05563fca78f7afcf4bad9c936602b4c96a68ddfb6",
    ),
    (
        "libxentoolcore1",
        "4.17.7+13-g2445b30a44-0+deb12u1",
        "67deaa6b71b3f5caa5021f45f2aa1b3054ce3a972e236222e9d79affe54e0c72",
    ),
    (
        "libyajl2",
        "2.1.0-3+deb12u2",
        "b512a6efbe735e7c731185a1b3ea477ff306f0c3f6aa2970e85b12f01fe8063b",
    ),
    // An HVM guest's device model (/usr/libexec/xen-qemu-system-i386,
    // the path libxl starts), its data files (a keymap) and SeaBIOS
    // (bios-256k.bin, which libxl hands hvmloader). hvmloader itself is
    // in xen-utils-4.17.
    (
        "qemu-system-xen",
        "1:7.2+dfsg-7+deb12u18+b3",
        "550fe1c829699fa6cdc581f570118aadd7d79c63b7e01cc86edcaf9dd828a802",
    ),
    (
        "qemu-system-data",
        "1:7.2+dfsg-7+deb12u18",
        "8d7647370573fe9871949acf60d0c000546c2c089008a70accb3d015781e6bf1",
    ),
    (
        "seabios",
        "1.16.2-1",
        "08e5b3f761379f17a6051731cafa03e97686049e2cc1b8bdccc5a910646e2d8e",
    ),
    (
        "linux-image-6.1.0-57-amd64",
        "6.1.192-3",
        "14d219d01e1283261817d961dbb3895cb5b4288d0de10e0ba0632a0d993e15bf",
    ),
];

/// The pinned table as text: part of every cache key built from it.
pub fn pinned_text() -> String {
    PINNED
        .iter()
        .map(|(p, v, s)| format!("{p} {v} {s}\n"))
        .collect()
}

/// The .deb of `package` in the cache, downloaded and checked if missing.
fn deb(package: &str, version: &str, sha256: &str) -> Result<PathBuf, String> {
    let dir = cache_dir().join("debs");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = dir.join(format!("{package}_{sha256}.deb"));
    if out.exists() {
        return Ok(out);
    }
    let work = dir.join(format!("{package}.download"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let o = Command::new("apt-get")
        .current_dir(&work)
        .args(["download", "-qq", &format!("{package}={version}")])
        .output()
        .map_err(|e| format!("apt-get: {e}"))?;
    let got = fs::read_dir(&work)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"));
    let Some(got) = got.filter(|_| o.status.success()) else {
        let _ = fs::remove_dir_all(&work);
        return Err(format!(
            "apt-get download {package}={version} failed (the archive may no longer serve \
             that version: pin a new one in xtask/src/xen/packages.rs):\n{}",
            String::from_utf8_lossy(&o.stderr)
        ));
    };
    let data = fs::read(&got).map_err(|e| e.to_string())?;
    let digest = sha256_hex(&data)?;
    let _ = fs::remove_dir_all(&work);
    if digest != sha256 {
        return Err(format!(
            "{package} {version}: SHA-256 {digest}, pinned {sha256}; refusing it"
        ));
    }
    fs::write(&out, &data).map_err(|e| e.to_string())?;
    log(&format!("{package} {version}: downloaded and checked"));
    Ok(out)
}

/// Every pinned package unpacked into `root` (dpkg-deb -x, no scripts).
pub fn unpack_all(root: &Path) -> Result<(), String> {
    fs::create_dir_all(root).map_err(|e| e.to_string())?;
    for (package, version, sha256) in PINNED {
        let path = deb(package, version, sha256)?;
        let ok = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&path)
            .arg(root)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!("dpkg-deb -x {} failed", path.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pin_is_a_version_and_a_digest() {
        for (p, v, s) in PINNED {
            assert!(!p.is_empty() && !v.is_empty(), "{p}");
            assert_eq!(s.len(), 64, "{p}");
            assert!(s.bytes().all(|b| b.is_ascii_hexdigit()), "{p}");
        }
        let names: std::collections::BTreeSet<_> = PINNED.iter().map(|p| p.0).collect();
        assert_eq!(names.len(), PINNED.len(), "a package pinned twice");
    }
}
