//! The Xen peer bottom for `cargo xtask bench`: the lean Linux with KVM,
//! booted directly by the emulator where L0 would be, runs Xen and dom0
//! as its guest under Debian's QEMU (a PC with SeaBIOS, Xen a multiboot
//! kernel, dom0's kernel and initramfs its modules) with nested VMX — the
//! same cloud VM the Xen scenarios run under L0, so the two bottoms can
//! be compared (tests/linux/init-peer).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::build::{root, IsoModule, Payload};
use crate::linux::cpio::Archive;
use crate::linux::initramfs::{add_busybox, add_qemu, cached_lz4, file, guest_tools, read};

/// The peer host's initramfs: busybox, tests/linux/init-peer, `probe`
/// (which ends the emulator), QEMU with the PC firmware a multiboot boot
/// needs, and under /peer Xen, dom0's kernel and initramfs and their
/// command lines. `mods` are the three as GRUB gets them under L0 (each
/// command line begins with the file's name, which QEMU puts there
/// itself).
pub fn initramfs(mods: &[IsoModule]) -> Result<PathBuf, String> {
    let [xen, vmlinux, initrd] = mods else {
        return Err(format!("the Xen peer boots 3 files, not {}", mods.len()));
    };
    let path = |m: &IsoModule| match &m.payload {
        Payload::File(p) => Ok(p.clone()),
        Payload::Inline(name, _) => Err(format!("the Xen peer boots files, not inline {name}")),
    };
    let args = |m: &IsoModule| {
        m.cmdline
            .split_once(' ')
            .map(|(_, r)| r.to_string())
            .unwrap_or_default()
    };
    let (xen, vmlinux, initrd, dom0_args) =
        (path(xen)?, path(vmlinux)?, path(initrd)?, args(vmlinux));
    if dom0_args.contains(',') {
        return Err(format!(
            "QEMU's -initrd cannot carry dom0's comma: {dom0_args}"
        ));
    }
    let mut a = Archive::default();
    add_busybox(&mut a)?;
    a.add(
        "init",
        file(read(&root().join("tests/linux/init-peer"))?, true),
    );
    a.add("bin/probe", file(read(&guest_tools()?.probe)?, true));
    let machine: Vec<OsString> = [
        "-M",
        "pc",
        "-nodefaults",
        "-no-user-config",
        "-vga",
        "none",
        "-m",
        "800",
    ]
    .iter()
    .map(Into::into)
    .chain([
        "-kernel".into(),
        xen.clone().into(),
        "-initrd".into(),
        format!("{},{}", vmlinux.display(), initrd.display()).into(),
    ])
    .collect();
    add_qemu(
        &mut a,
        "Xen peer",
        &machine,
        &["multiboot_dma.bin", "kvmvapic.bin"],
    )?;
    for (p, from) in [
        ("peer/xen", &xen),
        ("peer/vmlinux", &vmlinux),
        ("peer/dom0.initrd", &initrd),
    ] {
        a.add(p, file(read(from)?, false));
    }
    a.add("peer/xen.cmdline", file(args(&mods[0]).into_bytes(), false));
    a.add("peer/dom0.cmdline", file(dom0_args.into_bytes(), false));
    cached_lz4("xen-peer", &a.to_bytes())
}
