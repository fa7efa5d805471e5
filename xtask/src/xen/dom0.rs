//! dom0's initramfs: busybox, tests/xen/init-dom0, Xen's driver modules,
//! and the toolstack from the pinned packages (xenstored, xen-init-dom0,
//! xenconsoled, xl) with every library `ldd` names, the packages' own
//! first. Built in memory and cached by its bytes like the cloud VM's.
//! The variant with a guest also holds what `xl create` starts: dom0's
//! own kernel and a busybox initramfs with tests/xen/init-guest.

use std::fs;
use std::path::Path;

use crate::build::root;
use crate::linux::cpio::{Archive, Node};
use crate::linux::initramfs::{add_busybox, cached_lz4, ldd};

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
];

/// Where the packages put their libraries.
const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// glibc loads libgcc_s.so.1 by name when a thread is cancelled: `xl`
/// aborts without it ("libgcc_s.so.1 must be installed for
/// pthread_cancel"), and no ldd lists it.
const LIBGCC_S: &str = "/lib/x86_64-linux-gnu/libgcc_s.so.1";

fn read(p: &Path) -> Result<Vec<u8>, String> {
    fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

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

/// `unpacked` is the cache directory of `super::unpacked`: modules/,
/// vmlinux, and the packages' files under root/. With `guest`, the
/// archive also holds /guest/vmlinux and /guest/initrd.
pub fn initramfs(unpacked: &Path, guest: bool) -> Result<std::path::PathBuf, String> {
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
    let lib_path = pkg_root.join(LIB_DIR);
    let lib_path = lib_path.to_string_lossy();
    let prefix = pkg_root.to_string_lossy().into_owned();
    for tool in TOOLS {
        let bin = pkg_root.join(tool);
        a.add(
            tool,
            Node::File {
                data: read(&bin)?,
                exec: true,
            },
        );
        for lib in ldd(&bin.to_string_lossy(), Some(&lib_path))? {
            // The packages' libraries under their installed path; the
            // rest (glibc, zlib, ...) from this Debian host.
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
    }
    a.add(
        LIBGCC_S,
        Node::File {
            data: read(Path::new(LIBGCC_S))?,
            exec: true,
        },
    );
    if !guest {
        return cached_lz4("dom0", &a.to_bytes());
    }
    for (path, data) in [
        ("guest/vmlinux", read(&unpacked.join("vmlinux"))?),
        ("guest/initrd", read(&guest_initramfs()?)?),
    ] {
        a.add(path, Node::File { data, exec: false });
    }
    cached_lz4("dom0-guest", &a.to_bytes())
}
