//! `probe spy [FILE...]`: what the provider's side (L1, root) can see,
//! searched for the run's console marker. The operator types the marker
//! into a user VM's console; it must never reach L1. The spy derives it
//! from the run's `l0marker=M` on L1's command line ("c" + M reversed,
//! as the harness makes it: M itself is on the command line, the typed
//! form is not) and never prints it.
//!
//! Searched: the FILEs (QEMU's serial chardev files, the sealed blob,
//! L1's dmesg saved to a file) and the memory of every other process in
//! L1 (QEMU, the shells, the manager) except mappings of 64 MiB or more:
//! a user VM's RAM lies in L1 by construction and is out of scope
//! (docs/threat-model.md). Kernel memory is not searched (the lean L1
//! kernel has no /dev/mem or /proc/kcore).

use std::io::{Read, Seek, SeekFrom};

const GUEST_RAM_MIN: u64 = 64 << 20;

fn marker() -> Option<Vec<u8>> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    let m = cmdline.split_whitespace().find_map(|w| w.strip_prefix("l0marker="))?;
    Some(core::iter::once('c').chain(m.chars().rev()).collect::<String>().into_bytes())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let n = needle.len();
    (0..hay.len().saturating_sub(n - 1)).any(|i| hay[i] == needle[0] && &hay[i..i + n] == needle)
}

/// (mappings, bytes) searched in `pid`, or where the marker was found:
/// the mappings below 64 MiB, or (`guest_ram`) only those of 64 MiB or more.
fn scan_process(pid: u32, needle: &[u8], guest_ram: bool) -> Result<(usize, u64), String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|_| String::new())?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(|_| String::new())?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let (mut n, mut bytes) = (0, 0u64);
    for line in maps.lines() {
        let mut w = line.split_whitespace();
        let (Some(range), Some(perms)) = (w.next(), w.next()) else { continue };
        let name = line.split_whitespace().nth(5).unwrap_or("");
        let Some((a, b)) = range.split_once('-') else { continue };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else { continue };
        if !perms.starts_with('r') || (b - a >= GUEST_RAM_MIN) != guest_ram || name == "[vvar]" || name == "[vsyscall]" {
            continue;
        }
        let mut buf = vec![0u8; (b - a) as usize];
        if mem.seek(SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if contains(&buf, needle) {
            return Err(format!("process {pid} ({}) at {range} {name}", comm.trim()));
        }
        n += 1;
        bytes += b - a;
    }
    Ok((n, bytes))
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
    let found = std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
        let pid = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok());
        pid.is_some_and(|p| p != me && matches!(scan_process(p, &needle, true), Err(w) if !w.is_empty()))
    });
    match found {
        true => println!("SPY control: the marker is in a user VM's RAM (in L1 by construction), so the search works"),
        false => println!("SPY FAIL: the marker is not even in a user VM's RAM: the search proves nothing"),
    }
    found
}

pub fn spy(files: &[String]) -> bool {
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
    let (mut procs, mut maps, mut bytes) = (0, 0, 0u64);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        match scan_process(pid, &needle, false) {
            Ok((n, b)) => {
                procs += 1;
                maps += n;
                bytes += b;
            }
            Err(w) if w.is_empty() => {} // a kernel thread, or gone
            Err(w) => leaks.push(w),
        }
    }
    if leaks.is_empty() {
        println!("SPY clean: {} files, {procs} processes ({maps} mappings, {} KiB) searched", files.len(), bytes >> 10);
        true
    } else {
        for l in &leaks {
            println!("SPY LEAK: the console marker is in {l}");
        }
        false
    }
}
