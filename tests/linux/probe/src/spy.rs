//! `probe spy [FILE...]`: what the provider's side (L1, root) can see,
//! searched for the run's console marker. The operator types the marker
//! into a user VM's console; it must never reach L1. The spy derives it
//! from the run's `l0marker=M` on L1's command line ("c" + M reversed,
//! as the harness makes it: M itself is on the command line, the typed
//! form is not) and never prints it.
//!
//! Searched: the FILEs (QEMU's serial chardev files, the sealed blob,
//! L1's dmesg saved to a file; under Xen also xenconsoled's logs and the
//! device model's) and the memory of every other process in L1 (QEMU, the
//! shells, the manager, Xen's daemons) except a user VM's RAM: mappings of
//! 64 MiB or more (KVM's QEMU maps all of it), and under Xen the pages of
//! a guest that dom0 maps through Xen's privcmd or gntdev devices (the
//! device model's map cache; the kernel refuses /proc/PID/mem reads of
//! them anyway). A user VM's RAM lies in L1 by construction and is out of
//! scope (docs/threat-model.md). Kernel memory is not searched (the lean
//! L1 kernel has no /dev/mem or /proc/kcore).
//!
//! A search that could not look is no proof: a readable mapping it failed
//! to read is `SPY FAIL`, naming it, and so is a search that covered less
//! than [`MIN_SEARCHED`] or no QEMU process. A process that ended while
//! the spy ran is counted and said, not searched. With `--relay` the
//! search must also have covered l0-relay, the owners' relay (its memory
//! holds every frame of the owner sessions it carries).

use std::io::{Read, Seek, SeekFrom};

const GUEST_RAM_MIN: u64 = 64 << 20;
/// What the provider's side holds of a running user VM's stack is far
/// more (QEMU alone maps tens of MiB of libraries and heap): a search of
/// less missed it.
const MIN_SEARCHED: u64 = 4 << 20;

/// Xen's devices through which dom0 maps another domain's pages.
const FOREIGN_MAPPINGS: &[&str] = &["/dev/xen/privcmd", "/dev/xen/gntdev"];

/// Whether a mapping holds a user VM's RAM: KVM's QEMU maps all of it in
/// one large mapping, Xen's device model maps it piecewise from Xen.
fn is_guest_ram(size: u64, name: &str) -> bool {
    size >= GUEST_RAM_MIN || FOREIGN_MAPPINGS.iter().any(|d| name.starts_with(d))
}

/// dom0's own pages its kernel maps into a process as VM_IO, which
/// /proc/PID/mem therefore cannot read: Xen's hypercall buffers
/// (libxencall; they hold a hypercall's arguments while it runs) and
/// xenstored's ring with dom0's kernel. The spy names and counts them as
/// not searched rather than failing on them.
const XEN_UNREADABLE: &[&str] = &[
    "/dev/xen/hypercall",
    "/dev/xen/xsd_kva",
    "/proc/xen/xsd_kva",
];

/// A device model's process: KVM's `qemu-system-x86_64`, Xen's
/// `xen-qemu-system-i386` (its name cut to 15 bytes).
fn is_qemu(comm: &str) -> bool {
    comm.contains("qemu")
}

/// What one process's search covered.
struct Scan {
    mappings: usize,
    bytes: u64,
    comm: String,
    /// Readable mappings the read of /proc/PID/mem refused.
    unreadable: Vec<String>,
    /// XEN_UNREADABLE mappings, not searched: (mappings, bytes).
    hypercall: (usize, u64),
}

fn marker() -> Option<Vec<u8>> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    let m = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("l0marker="))?;
    Some(
        core::iter::once('c')
            .chain(m.chars().rev())
            .collect::<String>()
            .into_bytes(),
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let n = needle.len();
    (0..hay.len().saturating_sub(n - 1)).any(|i| hay[i] == needle[0] && &hay[i..i + n] == needle)
}

/// What was searched in `pid` (`None`: the process is gone), or where the
/// marker was found: the mappings below 64 MiB, or (`guest_ram`) only
/// those of 64 MiB or more.
fn scan_process(pid: u32, needle: &[u8], guest_ram: bool) -> Result<Option<Scan>, String> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Ok(None);
    };
    let Ok(mut mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
        return Ok(None);
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.trim().to_string();
    let (mut n, mut bytes, mut unreadable, mut hypercall) = (0, 0u64, Vec::new(), (0, 0u64));
    for line in maps.lines() {
        let mut w = line.split_whitespace();
        let (Some(range), Some(perms)) = (w.next(), w.next()) else {
            continue;
        };
        let name = line.split_whitespace().nth(5).unwrap_or("");
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        if !perms.starts_with('r')
            || is_guest_ram(b - a, name) != guest_ram
            || name == "[vvar]"
            || name == "[vsyscall]"
        {
            continue;
        }
        if XEN_UNREADABLE.contains(&name) {
            hypercall = (hypercall.0 + 1, hypercall.1 + (b - a));
            continue;
        }
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            if std::fs::metadata(format!("/proc/{pid}")).is_err() {
                return Ok(None); // it ended meanwhile
            }
            unreadable.push(format!("{pid} ({comm}) {range} {perms} {name}"));
            continue;
        }
        if contains(&buf, needle) {
            return Err(format!("process {pid} ({comm}) at {range} {name}"));
        }
        n += 1;
        bytes += b - a;
    }
    Ok(Some(Scan {
        mappings: n,
        bytes,
        comm,
        unreadable,
        hypercall,
    }))
}

/// The control: the same search over the user VMs' RAM mappings must find
/// the marker (the VM's tty and shell hold what was typed), or the search
/// proves nothing.
pub fn control() -> bool {
    let Some(needle) = marker() else {
        println!("SPY FAIL: no l0marker= on the command line");
        return false;
    };
    let me = std::process::id();
    let found = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let pid = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok());
            pid.is_some_and(|p| p != me && scan_process(p, &needle, true).is_err())
        });
    match found {
        true => println!("SPY control: the marker is in a user VM's RAM (in L1 by construction), so the search works"),
        false => println!("SPY FAIL: the marker is not even in a user VM's RAM: the search proves nothing"),
    }
    found
}

/// The control where no dom0 process maps a user VM's RAM whole (Xen):
/// the guest's frames from 0 to `mib` MiB, mapped from Xen through privcmd
/// as its device model maps them, 4 MiB at a time, must hold the marker.
/// Frames the guest does not have (the VGA hole) are skipped. (`xl
/// dump-core` would do it too, but maps one frame at a time over all of
/// an HVM guest's 4 GiB of frame numbers: over an hour under Bochs.)
pub fn control_domain(domid: u16, mib: u64) -> bool {
    let Some(needle) = marker() else {
        println!("SPY FAIL: no l0marker= on the command line");
        return false;
    };
    let mut mapped = 0u64;
    let frames = mib << 8;
    let pieces = (0..frames).step_by(BATCH).map(|first| {
        let n = BATCH.min((frames - first) as usize);
        let (piece, got) = xen::map_frames(domid, first, n)?;
        mapped += got;
        Ok(piece)
    });
    match pieces_contain(pieces, &needle) {
        Ok(true) => {
            println!("SPY control: the marker is in domain {domid}'s RAM (mapped through privcmd, as its device model maps it), so the search works");
            true
        }
        Ok(false) => {
            println!("SPY FAIL: the marker is not even in domain {domid}'s RAM ({mapped} of {frames} frames mapped): the search proves nothing");
            false
        }
        Err(e) => {
            println!("SPY FAIL: domain {domid}'s RAM: {e}");
            false
        }
    }
}

/// An `xl save` image on the provider's side: outside the guest's RAM
/// (xl's header and the guest's configuration, QEMU's device state, Xen's
/// HVM context) it must not hold the marker, and as the control its pages
/// of RAM must (the shell there holds what was typed).
pub fn xl_save(path: &str) -> bool {
    let Some(needle) = marker() else {
        println!("SPY FAIL: no l0marker= on the command line");
        return false;
    };
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            println!("SPY FAIL: {path}: {e}");
            return false;
        }
    };
    let parts = match crate::xl_save::parts(&data) {
        Ok(p) => p,
        Err(e) => {
            println!("SPY FAIL: {path}: {e}");
            return false;
        }
    };
    let rest: usize = parts.rest.iter().map(|r| r.len()).sum();
    if let Some(r) = parts
        .rest
        .iter()
        .find(|r| contains(&data[(*r).clone()], &needle))
    {
        println!("SPY LEAK: the console marker is in {path} outside the guest's RAM, bytes {r:?}");
        return false;
    }
    if !parts
        .ram
        .iter()
        .any(|r| contains(&data[r.clone()], &needle))
    {
        println!("SPY FAIL: the marker is not even in the {} pages of guest RAM in {path}: the search proves nothing", parts.pages);
        return false;
    }
    println!(
        "SPY clean: {path} outside the guest's RAM ({rest} bytes: xl's header, the libxl and libxc records, QEMU's state) holds no console marker; SPY control: its {} pages of the guest's RAM do",
        parts.pages
    );
    true
}

/// Frames mapped per privcmd call: 4 MiB.
const BATCH: usize = 1024;

/// Whether `needle` is in the concatenation of `pieces` (a match across
/// two pieces is found: each is searched behind the previous one's tail).
fn pieces_contain(
    pieces: impl Iterator<Item = Result<Vec<u8>, String>>,
    needle: &[u8],
) -> Result<bool, String> {
    let mut window = Vec::new();
    for p in pieces {
        window.extend_from_slice(&p?);
        if contains(&window, needle) {
            return Ok(true);
        }
        let done = window.len().saturating_sub(needle.len() - 1);
        window.drain(..done);
    }
    Ok(false)
}

mod xen {
    //! Another domain's frames mapped into dom0 through Xen's privcmd
    //! device (include/uapi/xen/privcmd.h), as QEMU's map cache does.
    use std::os::fd::AsRawFd;

    use crate::kvm::Map;

    const SYS_IOCTL: usize = 16;

    /// IOCTL_PRIVCMD_MMAPBATCH_V2: _IOC(_IOC_NONE, 'P', 4, 32).
    const MMAPBATCH_V2: usize = 0x0020_5004;
    const PAGE: usize = 4096;

    #[repr(C)]
    struct MmapBatchV2 {
        num: u32,
        dom: u16,
        addr: u64,
        arr: *const u64,
        err: *mut i32,
    }

    /// Frames `first`..`first + n` of domain `dom`, those it lacks as
    /// zeros, and how many it had.
    pub fn map_frames(dom: u16, first: u64, n: usize) -> Result<(Vec<u8>, u64), String> {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/xen/privcmd")
            .map_err(|e| format!("/dev/xen/privcmd: {e}"))?;
        let dev = std::os::fd::OwnedFd::from(dev);
        let map = Map::new(n * PAGE, Some(&dev))?;
        let frames: Vec<u64> = (first..first + n as u64).collect();
        let mut err = vec![0i32; n];
        let batch = MmapBatchV2 {
            num: n as u32,
            dom,
            addr: map.ptr as u64,
            arr: frames.as_ptr(),
            err: err.as_mut_ptr(),
        };
        let r = crate::syscall6(
            SYS_IOCTL,
            [
                dev.as_raw_fd() as usize,
                MMAPBATCH_V2,
                &batch as *const MmapBatchV2 as usize,
                0,
                0,
                0,
            ],
        );
        // -ENOENT: some frames are paged out; each frame has its own error.
        if r < 0 && r != -2 {
            return Err(format!("privcmd mmapbatch: errno {}", -r));
        }
        let mut out = vec![0u8; n * PAGE];
        let mut got = 0;
        for (i, _) in err.iter().enumerate().filter(|(_, e)| **e == 0) {
            // SAFETY: frame i of the batch is mapped (its error is 0) in
            // `map`, which lives until the end of this function.
            let page = unsafe { std::slice::from_raw_parts(map.ptr.add(i * PAGE), PAGE) };
            out[i * PAGE..(i + 1) * PAGE].copy_from_slice(page);
            got += 1;
        }
        Ok((out, got))
    }
}

pub fn spy(files: &[String], need_relay: bool) -> bool {
    let Some(needle) = marker() else {
        println!("SPY FAIL: no l0marker= on the command line");
        return false;
    };
    let mut leaks = Vec::new();
    for f in files {
        match std::fs::read(f) {
            Ok(b) if contains(&b, &needle) => leaks.push(format!("file {f}")),
            Ok(_) => {}
            Err(e) => leaks.push(format!("file {f} unreadable: {e}")),
        }
    }
    let me = std::process::id();
    let (mut procs, mut gone, mut maps, mut bytes, mut qemu) = (0, 0, 0, 0u64, false);
    let mut relay_bytes = 0u64;
    let mut unreadable = Vec::new();
    let mut hypercall = (0, 0u64);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        match scan_process(pid, &needle, false) {
            Ok(Some(s)) => {
                procs += 1;
                maps += s.mappings;
                bytes += s.bytes;
                qemu |= is_qemu(&s.comm) && s.bytes > 0;
                if s.comm == "l0-relay" {
                    relay_bytes += s.bytes;
                }
                unreadable.extend(s.unreadable);
                hypercall = (hypercall.0 + s.hypercall.0, hypercall.1 + s.hypercall.1);
            }
            Ok(None) => gone += 1,
            Err(w) => leaks.push(w),
        }
    }
    for l in &leaks {
        println!("SPY LEAK: the console marker is in {l}");
    }
    if !unreadable.is_empty() {
        println!(
            "SPY FAIL: {} readable mappings could not be read: {}",
            unreadable.len(),
            unreadable.join("; ")
        );
    }
    if need_relay && relay_bytes == 0 {
        println!("SPY FAIL: l0-relay was not among the processes searched");
    }
    let enough = bytes >= MIN_SEARCHED && qemu && (!need_relay || relay_bytes > 0);
    if !enough {
        println!(
            "SPY FAIL: searched {} KiB in {procs} processes{}: under the {} KiB floor, or no QEMU among them",
            bytes >> 10,
            if qemu { " (QEMU among them)" } else { "" },
            MIN_SEARCHED >> 10
        );
    }
    if leaks.is_empty() && unreadable.is_empty() && enough {
        let relay = if need_relay {
            format!(", l0-relay's {} KiB among them", relay_bytes >> 10)
        } else {
            String::new()
        };
        println!(
            "SPY clean: {} files, {procs} processes ({maps} mappings, {} KiB, QEMU among them{relay}) searched, {gone} ended meanwhile{}",
            files.len(),
            bytes >> 10,
            match hypercall {
                (0, _) => String::new(),
                (n, b) => format!("; {n} mappings of Xen hypercall buffers or xenstored's ring ({} KiB) not searched: /proc/PID/mem cannot read them", b >> 10),
            }
        );
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xen_foreign_mappings_are_guest_ram() {
        assert!(is_guest_ram(4096, "/dev/xen/privcmd"));
        assert!(is_guest_ram(1 << 20, "/dev/xen/gntdev"));
        assert!(is_guest_ram(GUEST_RAM_MIN, ""));
        assert!(!is_guest_ram(1 << 20, "[heap]"));
        assert!(!is_guest_ram(1 << 20, "/usr/libexec/xen-qemu-system-i386"));
    }

    #[test]
    fn both_device_models_count_as_qemu() {
        assert!(is_qemu("qemu-system-x86"));
        assert!(is_qemu("xen-qemu-system"));
        assert!(!is_qemu("xenconsoled"));
    }

    #[test]
    fn a_match_across_two_pieces_is_found() {
        let pieces = |v: &[&[u8]]| {
            v.iter()
                .map(|p| Ok(p.to_vec()))
                .collect::<Vec<Result<Vec<u8>, String>>>()
                .into_iter()
        };
        assert!(pieces_contain(pieces(&[b"xxxnee", b"dlexx"]), b"needle").unwrap());
        assert!(pieces_contain(pieces(&[b"xxxn", b"e", b"edle"]), b"needle").unwrap());
        assert!(!pieces_contain(pieces(&[b"xxxnee", b"dlexx"]), b"needles").unwrap());
        assert!(!pieces_contain(pieces(&[b"needl", b"xe"]), b"needle").unwrap());
        assert!(pieces_contain(vec![Err("gone".to_string())].into_iter(), b"needle").is_err());
    }
}
