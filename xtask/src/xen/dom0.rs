//! dom0's initramfs: busybox, tests/xen/init-dom0, Xen's driver modules,
//! and the toolstack from the pinned packages (xenstored, xen-init-dom0,
//! xenconsoled, xl) with every library `ldd` names, the packages' own
//! first. Built in memory and cached by its bytes like the cloud VM's.
//! The variants with a user VM also hold what `xl create` starts: for a
//! PVH guest dom0's own kernel and a busybox initramfs with
//! tests/xen/init-guest; for an HVM guest the device model (QEMU, with its
//! libraries), hvmloader, SeaBIOS, a GRUB boot CD per guest of the KVM
//! scenarios' user VM kernel and initramfs (the lean bzImage and
//! tests/linux/init-l2), and the tools dom0 runs as the migration manager
//! and the spy (`ultracall`: L0's list of VMs, save/restore; `probe`: the
//! disk between hosts, the search of dom0).

use std::fs;
use std::path::Path;

use crate::build::root;
use crate::linux::cpio::{Archive, Node};
use crate::linux::initramfs::{add_busybox, cached_lz4, ldd, read};

/// (module, its file under drivers/xen), in the order init loads them:
/// xenfs needs xen-privcmd.
pub const MODULES: &[(&str, &str)] = &[
    ("xen-evtchn", "xen-evtchn.ko"),
    ("xen-privcmd", "xen-privcmd.ko"),
    ("xenfs", "xenfs/xenfs.ko"),
    ("xen-gntdev", "xen-gntdev.ko"),
    ("xen-gntalloc", "xen-gntalloc.ko"),
];

/// The toolstack's programs, where Debian installs them.
const TOOLS: &[&str] = &[
    "usr/lib/xen-4.17/bin/xenstored",
    "usr/lib/xen-4.17/bin/xen-init-dom0",
    "usr/lib/xen-4.17/bin/xenconsoled",
    "usr/lib/xen-4.17/bin/xl",
    // What `xl save`/`xl restore` run to write and read a guest's image.
    "usr/lib/xen-4.17/bin/libxl-save-helper",
];

/// An HVM guest's device model, where libxl starts it.
const DEVICE_MODEL: &str = "usr/libexec/xen-qemu-system-i386";

/// An HVM guest's firmware and QEMU's data, where libxl and QEMU look:
/// hvmloader (libxl's firmware directory), SeaBIOS (libxl hands it to
/// hvmloader as a module) and the keymap QEMU reads for `-vnc none`
/// (libxl passes it with vnc = 0; QEMU stops without the file).
const HVM_FIRMWARE: &[&str] = &[
    "usr/lib/xen-4.17/boot/hvmloader",
    "usr/share/seabios/bios-256k.bin",
    "usr/share/qemu/keymaps/en-us",
];

/// Which user VM dom0's initramfs carries for `xl create`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum UserVm {
    None,
    /// dom0's own kernel and tests/xen/init-guest, under /guest.
    Pvh,
    /// The device model and firmware, and for each guest a boot CD
    /// (/guest/NAME.iso) of the lean kernel with tests/linux/init-l2 and
    /// its arguments.
    Hvm {
        guests: &'static [HvmGuest],
    },
}

/// An HVM user VM dom0 starts: its name in `xl` and the arguments on its
/// CD's kernel command line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HvmGuest {
    pub name: &'static str,
    pub args: &'static str,
}

/// The HVM user VM's boot CD: GRUB booting the KVM scenarios' L2 kernel
/// and initramfs with `args`, cached by what goes in. (A CD rather than
/// xl's `kernel=`/`ramdisk=`: with those QEMU boots the kernel through
/// its linuxboot.bin option ROM, which loads the initrd with `rep insb`
/// in protected mode with CS still holding real mode's cached
/// descriptor; Xen emulates that instruction and, on Bochs, the guest
/// triple-faults there, natively as under L0 — docs/xen-l1.md.)
/// The initramfs goes on the CD as gzip rather than LZ4 (the same files,
/// 3.4 MB instead of 4.9): SeaBIOS reads the CD by ATAPI PIO through
/// Xen's emulation and QEMU in dom0, the slowest part of the guest's boot.
fn hvm_boot_cd(args: &str) -> Result<std::path::PathBuf, String> {
    let l2 = crate::linux::images()?;
    let cmdline = format!("console=ttyS0,115200 panic=-1 quiet {args}");
    let mut key = read(&l2.kernel)?;
    key.extend(read(&l2.l2)?);
    key.extend(cmdline.as_bytes());
    key.extend(b"initrd as gzip -9n");
    let hash = crate::linux::sha256_hex(&key)?;
    let out = crate::linux::cache_dir().join(format!("xen-hvm-cd-{}.iso", &hash[..16]));
    if !out.exists() {
        let tmp = out.with_extension("tmp.iso");
        let initrd = out.with_extension("initrd.gz");
        lz4_to_gzip(&l2.l2, &initrd)?;
        crate::build::iso(
            &tmp,
            crate::build::IsoBoot::UserVm {
                kernel: &l2.kernel,
                initrd: &initrd,
                cmdline: &cmdline,
            },
        )?;
        let _ = fs::remove_file(&initrd);
        let _ = fs::remove_dir_all(tmp.with_extension("d"));
        fs::rename(&tmp, &out).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// `lz4 -dc FROM | gzip -9n > TO`.
fn lz4_to_gzip(from: &Path, to: &Path) -> Result<(), String> {
    let out = fs::File::create(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let mut lz4 = std::process::Command::new("lz4")
        .arg("-dc")
        .arg(from)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("lz4: {e}"))?;
    let gz = std::process::Command::new("gzip")
        .arg("-9n")
        .stdin(lz4.stdout.take().ok_or("lz4: no stdout")?)
        .stdout(out)
        .status()
        .map_err(|e| format!("gzip: {e}"))?;
    let unpacked = lz4.wait().map_err(|e| format!("lz4: {e}"))?;
    if !gz.success() || !unpacked.success() {
        return Err(format!("recompressing {} as gzip failed", from.display()));
    }
    Ok(())
}

/// Where the packages put their libraries.
const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// glibc loads libgcc_s.so.1 by name when a thread is cancelled: `xl`
/// aborts without it ("libgcc_s.so.1 must be installed for
/// pthread_cancel"), and no ldd lists it.
const LIBGCC_S: &str = "/lib/x86_64-linux-gnu/libgcc_s.so.1";

/// The user VM's initramfs: busybox and tests/xen/init-guest.
fn guest_initramfs() -> Result<std::path::PathBuf, String> {
    let mut a = Archive::default();
    add_busybox(&mut a)?;
    a.add(
        "init",
        Node::File {
            data: read(&root().join("tests/xen/init-guest"))?,
            exec: true,
        },
    );
    cached_lz4("xen-guest", &a.to_bytes())
}

/// Adds `bin` (a path inside the packages' root) and every library `ldd`
/// names: the packages' own under their installed path, the rest (glibc,
/// zlib, ...) from this Debian host.
fn add_program(a: &mut Archive, pkg_root: &Path, bin: &str) -> Result<(), String> {
    let lib_path = pkg_root.join(LIB_DIR);
    let lib_path = lib_path.to_string_lossy();
    let prefix = pkg_root.to_string_lossy().into_owned();
    let path = pkg_root.join(bin);
    a.add(
        bin,
        Node::File {
            data: read(&path)?,
            exec: true,
        },
    );
    for lib in ldd(&path.to_string_lossy(), Some(&lib_path))? {
        let inside = lib.strip_prefix(&prefix).unwrap_or(&lib).to_string();
        if !a.contains(&inside) {
            a.add(
                &inside,
                Node::File {
                    data: read(Path::new(&lib))?,
                    exec: true,
                },
            );
        }
    }
    Ok(())
}

/// `unpacked` is the cache directory of `super::unpacked`: modules/,
/// vmlinux, and the packages' files under root/; `vm` says which user
/// VM's files go in as well.
pub fn initramfs(unpacked: &Path, vm: UserVm) -> Result<std::path::PathBuf, String> {
    let pkg_root = unpacked.join("root");
    let mut a = Archive::default();
    add_busybox(&mut a)?;
    a.add(
        "init",
        Node::File {
            data: read(&root().join("tests/xen/init-dom0"))?,
            exec: true,
        },
    );
    for (name, _) in MODULES {
        a.add(
            &format!("lib/modules/xen/{name}.ko"),
            Node::File {
                data: read(&unpacked.join("modules").join(format!("{name}.ko")))?,
                exec: false,
            },
        );
    }
    for tool in TOOLS {
        add_program(&mut a, &pkg_root, tool)?;
    }
    a.add(
        LIBGCC_S,
        Node::File {
            data: read(Path::new(LIBGCC_S))?,
            exec: true,
        },
    );
    match vm {
        UserVm::None => cached_lz4("dom0", &a.to_bytes()),
        UserVm::Pvh => {
            for (path, data) in [
                ("guest/vmlinux", read(&unpacked.join("vmlinux"))?),
                ("guest/initrd", read(&guest_initramfs()?)?),
            ] {
                a.add(path, Node::File { data, exec: false });
            }
            cached_lz4("dom0-guest", &a.to_bytes())
        }
        UserVm::Hvm { guests } => {
            add_program(&mut a, &pkg_root, DEVICE_MODEL)?;
            // The migration manager's `ultracall save`/`restore` and the
            // disk between the hosts (`probe disk-put`/`-get`); the spy's
            // `ultracall list` (what was typed, in bytes) and `probe spy`.
            let tools = crate::linux::initramfs::guest_tools()?;
            for (path, tool) in [
                ("bin/ultracall", tools.ultracall),
                ("bin/probe", tools.probe),
            ] {
                a.add(
                    path,
                    Node::File {
                        data: read(&tool)?,
                        exec: true,
                    },
                );
            }
            for f in HVM_FIRMWARE {
                let data = read(&pkg_root.join(f))?;
                a.add(f, Node::File { data, exec: false });
            }
            for g in guests {
                a.add(
                    &format!("guest/{}.iso", g.name),
                    Node::File {
                        data: read(&hvm_boot_cd(g.args)?)?,
                        exec: false,
                    },
                );
            }
            cached_lz4("dom0-hvm", &a.to_bytes())
        }
    }
}
