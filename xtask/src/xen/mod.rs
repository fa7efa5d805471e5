//! Xen as the cloud VM (docs/xen-l1.md): Debian's stock Xen 4.17 and a
//! dom0 of Debian's stock kernel with the toolstack in its initramfs.
//!
//! Both kernels are handed over uncompressed, so no emulated CPU spends
//! minutes unpacking them: `xen` is the multiboot ELF from
//! xen-4.17-amd64.gz (L0 loads ELF, not gzip), `vmlinux` the ELF inside
//! the stock bzImage's XZ payload (Xen's dom0 builder takes an ELF as it
//! is; the XZ bzImage cost it ~55 s in Bochs). The stock kernel rather
//! than the lean one with Xen options: the lean kernel's config is every
//! Linux scenario's cache key, and its ~7 min build would be paid again
//! for each change while Xen is brought up.

pub mod dom0;
pub mod packages;
pub mod peer;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::linux::{cache_dir, log, sha256_hex};

/// Bump when the steps below change in a way that changes the result.
const RECIPE: &str =
    "xen-recipe-1: xen gunzipped, vmlinux from the bzImage's XZ payload, 5 modules";
const XEN_GZ: &str = "boot/xen-4.17-amd64.gz";
const KERNEL_RELEASE: &str = "6.1.0-57-amd64";

/// The hypervisor, dom0's kernel and its Xen driver modules, unpacked.
pub struct XenImages {
    /// Xen's multiboot (v1) ELF.
    pub xen: PathBuf,
    /// dom0's kernel, an ELF.
    pub vmlinux: PathBuf,
    /// dom0's initramfs (`dom0::initramfs`).
    pub dom0_initrd: PathBuf,
    /// The cache directory they came from.
    dir: PathBuf,
}

impl XenImages {
    /// dom0's initramfs with what `xl create` of `vm` needs (built on
    /// demand: it holds a second kernel and, for HVM, the device model).
    pub fn dom0_initrd_for(&self, vm: dom0::UserVm) -> Result<PathBuf, String> {
        dom0::initramfs(&self.dir, vm)
    }
}

/// The compressed kernel inside a bzImage: `payload_offset` (0x248) and
/// `payload_length` (0x24c) of the setup header count from the start of
/// the protected-mode code, which follows `setup_sects` (0x1f1; 0 means 4)
/// sectors of real-mode setup and the boot sector.
pub fn bzimage_payload(image: &[u8]) -> Result<&[u8], String> {
    let u32_at = |o: usize| {
        image
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
            .ok_or("bzImage too short for its setup header")
    };
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS)".into());
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let len = u32_at(0x24c)?;
    image
        .get(start..start + len)
        .ok_or_else(|| format!("payload {start:#x}+{len:#x} lies outside the bzImage"))
}

fn run(cmd: &mut Command, input: &Path, what: &str) -> Result<Vec<u8>, String> {
    let o = cmd
        .stdin(fs::File::open(input).map_err(|e| format!("{}: {e}", input.display()))?)
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(o.stdout)
}

/// Xen, dom0's kernel and modules in the cache, keyed by the pinned
/// packages and the recipe.
fn unpacked() -> Result<PathBuf, String> {
    let key = sha256_hex(format!("{}{RECIPE}\n", packages::pinned_text()).as_bytes())?;
    let dir = cache_dir().join(format!("xen-{}", &key[..16]));
    if dir.join("vmlinux").exists() {
        log(&format!("Xen and dom0 kernel {}: cached", &key[..16]));
        return Ok(dir);
    }
    let work = dir.with_extension("build");
    let _ = fs::remove_dir_all(&work);
    let root = work.join("root");
    packages::unpack_all(&root)?;
    let xen = run(
        Command::new("gzip").arg("-dc"),
        &root.join(XEN_GZ),
        "gunzip xen",
    )?;
    fs::write(work.join("xen"), xen).map_err(|e| e.to_string())?;
    let bz = fs::read(root.join(format!("boot/vmlinuz-{KERNEL_RELEASE}")))
        .map_err(|e| format!("vmlinuz: {e}"))?;
    let payload = bzimage_payload(&bz)?;
    if !payload.starts_with(b"\xfd7zXZ\0") {
        return Err("the stock kernel's payload is not XZ".into());
    }
    let xz = work.join("payload.xz");
    fs::write(&xz, payload).map_err(|e| e.to_string())?;
    // --single-stream: the payload ends with the kernel's size, 4 bytes
    // xz would take for the start of another stream.
    let elf = run(
        Command::new("xz").args(["-dc", "--single-stream"]),
        &xz,
        "unxz the kernel",
    )?;
    if !elf.starts_with(b"\x7fELF") {
        return Err("the stock kernel's payload is not an ELF".into());
    }
    fs::write(work.join("vmlinux"), elf).map_err(|e| e.to_string())?;
    let _ = fs::remove_file(&xz);
    let mods = work.join("modules");
    fs::create_dir_all(&mods).map_err(|e| e.to_string())?;
    for m in dom0::MODULES {
        let src = root
            .join(format!("lib/modules/{KERNEL_RELEASE}/kernel/drivers/xen"))
            .join(m.1);
        fs::copy(&src, mods.join(format!("{}.ko", m.0)))
            .map_err(|e| format!("{}: {e}", src.display()))?;
    }
    // The kernel's other modules and the images are not needed again
    // (~400 MB); the toolstack's files stay for dom0::initramfs.
    let _ = fs::remove_dir_all(root.join("lib/modules"));
    let _ = fs::remove_dir_all(root.join("boot"));
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&work, &dir).map_err(|e| e.to_string())?;
    log(&format!("Xen and dom0 kernel {}: unpacked", &key[..16]));
    Ok(dir)
}

static IMAGES: std::sync::OnceLock<Result<XenImages, String>> = std::sync::OnceLock::new();

/// Builds (or finds in the cache) everything a Xen scenario boots, once
/// per run.
pub fn images() -> Result<&'static XenImages, String> {
    IMAGES
        .get_or_init(|| {
            let dir = unpacked()?;
            let dom0_initrd = dom0::initramfs(&dir, dom0::UserVm::None)?;
            Ok(XenImages {
                xen: dir.join("xen"),
                vmlinux: dir.join("vmlinux"),
                dom0_initrd,
                dir,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(setup_sects: u8, offset: u32, len: u32, size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        b[0x1f1] = setup_sects;
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x248..0x24c].copy_from_slice(&offset.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&len.to_le_bytes());
        b
    }

    #[test]
    fn payload_counts_from_the_protected_mode_code() {
        let mut b = header(2, 0x10, 4, 0x1000);
        b[3 * 512 + 0x10..3 * 512 + 0x14].copy_from_slice(b"PAYL");
        assert_eq!(bzimage_payload(&b).unwrap(), b"PAYL");
        // setup_sects 0 means 4.
        let mut b = header(0, 0, 4, 0x1000);
        b[5 * 512..5 * 512 + 4].copy_from_slice(b"OLD!");
        assert_eq!(bzimage_payload(&b).unwrap(), b"OLD!");
    }

    #[test]
    fn payload_refuses_what_is_not_there() {
        assert!(bzimage_payload(&[0u8; 0x300]).is_err());
        assert!(bzimage_payload(&header(1, 0x800, 0x100, 0x900)).is_err());
        // A setup header cut short before its payload fields.
        let mut short = vec![0u8; 0x220];
        short[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(bzimage_payload(&short).is_err());
    }
}
