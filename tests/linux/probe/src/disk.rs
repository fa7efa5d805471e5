//! `probe disk-put FILE...` / `probe disk-get DIR`: the migration channel
//! between two hosts. Each host is an emulator with a raw disk on the
//! secondary ATA channel (0x170); the lean L1 kernel has no block layer,
//! so this drives the disk from user space by ATA PIO (LBA28, polled,
//! interrupts off). The source writes an index and the files, the
//! destination reads them back: what the provider's network would carry.
//!
//! Layout: sector 0 = "L1MIGR01", u32 count, then per file a 32-byte name,
//! u64 byte offset, u64 length (little-endian); data from sector 1 on,
//! each file sector-aligned.

use std::arch::asm;
use std::io::Write;
use std::path::Path;

const BASE: u16 = 0x170; // data, error/features, count, lba 0-7/8-15/16-23, device, status/command
const CTRL: u16 = 0x376; // device control (nIEN, SRST)
const MAGIC: &[u8; 8] = b"L1MIGR01";
const SECTOR: usize = 512;
const NAME: usize = 32;
const MAX_FILES: usize = 8;

fn outb(port: u16, v: u8) {
    // SAFETY: ports granted by ioperm in `grant`.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}
fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as outb.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}
/// One sector to the data port with one `rep outsw`: where the port
/// access is emulated (a PV dom0: Xen traps each I/O instruction) that is
/// one trap per sector instead of 256.
fn out_sector(data: &[u8; SECTOR]) {
    // SAFETY: the data port was granted by ioperm in `grant`; the
    // instruction reads SECTOR bytes from `data` (DF is clear, as the ABI
    // guarantees).
    unsafe {
        asm!("rep outsw", in("dx") BASE, inout("rsi") data.as_ptr() => _, inout("rcx") SECTOR / 2 => _,
             options(nostack, preserves_flags, readonly))
    };
}
/// One sector from the data port with one `rep insw` (as `out_sector`).
fn in_sector(buf: &mut [u8; SECTOR]) {
    // SAFETY: as out_sector; the instruction writes SECTOR bytes to `buf`.
    unsafe {
        asm!("rep insw", in("dx") BASE, inout("rdi") buf.as_mut_ptr() => _, inout("rcx") SECTOR / 2 => _,
             options(nostack, preserves_flags))
    };
}

fn grant() -> Result<(), String> {
    if super::syscall3(super::SYS_IOPERM, BASE as usize, 8, 1) != 0
        || super::syscall3(super::SYS_IOPERM, CTRL as usize, 1, 1) != 0
    {
        return Err("ioperm refused (run as root, kernel needs X86_IOPL_IOPERM)".into());
    }
    outb(CTRL, 0x02); // nIEN: we poll
    Ok(())
}

/// Waits for BSY clear; with `drq`, for DRQ too. ERR or a stuck device fail.
fn wait(drq: bool) -> Result<(), String> {
    for _ in 0..50_000_000u64 {
        let s = inb(BASE + 7);
        if s == 0xff {
            return Err("no disk on the secondary ATA channel".into());
        }
        if s & 0x80 == 0 {
            if s & 0x21 != 0 {
                return Err(format!(
                    "disk error: status {s:#x}, error {:#x}",
                    inb(BASE + 1)
                ));
            }
            if !drq || s & 0x08 != 0 {
                return Ok(());
            }
        }
    }
    Err("disk timed out".into())
}

/// One command on up to 256 sectors from `lba`.
fn command(lba: u32, count: usize, cmd: u8) -> Result<(), String> {
    if lba as u64 + count as u64 >= 1 << 28 || count == 0 || count > 256 {
        return Err(format!("sectors {lba}+{count} beyond LBA28"));
    }
    wait(false)?;
    outb(BASE + 6, 0xe0 | (lba >> 24) as u8); // master, LBA
    outb(BASE + 2, count as u8); // 0 = 256
    outb(BASE + 3, lba as u8);
    outb(BASE + 4, (lba >> 8) as u8);
    outb(BASE + 5, (lba >> 16) as u8);
    outb(BASE + 7, cmd);
    Ok(())
}

fn write_sectors(mut lba: u32, data: &[u8]) -> Result<(), String> {
    for chunk in data.chunks(256 * SECTOR) {
        let n = chunk.len().div_ceil(SECTOR);
        command(lba, n, 0x30)?; // WRITE SECTORS
        for part in chunk.chunks(SECTOR) {
            wait(true)?;
            let mut sector = [0u8; SECTOR];
            sector[..part.len()].copy_from_slice(part);
            out_sector(&sector);
        }
        wait(false)?;
        lba += n as u32;
    }
    command(0, 1, 0xe7)?; // FLUSH CACHE
    wait(false)
}

fn read_sectors(mut lba: u32, len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(len.div_ceil(SECTOR) * SECTOR);
    let mut left = len.div_ceil(SECTOR);
    while left > 0 {
        let n = left.min(256);
        command(lba, n, 0x20)?; // READ SECTORS
        for _ in 0..n {
            wait(true)?;
            let mut sector = [0u8; SECTOR];
            in_sector(&mut sector);
            out.extend_from_slice(&sector);
        }
        lba += n as u32;
        left -= n;
    }
    out.truncate(len);
    Ok(out)
}

pub fn put(files: &[String]) -> Result<(), String> {
    grant()?;
    if files.is_empty() || files.len() > MAX_FILES {
        return Err(format!("1 to {MAX_FILES} files"));
    }
    let mut index = MAGIC.to_vec();
    index.extend_from_slice(&(files.len() as u32).to_le_bytes());
    let mut lba = 1u32;
    let mut total = 0usize;
    for f in files {
        let data = std::fs::read(f).map_err(|e| format!("{f}: {e}"))?;
        let name = Path::new(f)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        if name.is_empty() || name.len() > NAME {
            return Err(format!("{f}: a file name of 1 to {NAME} bytes"));
        }
        let mut n = [0u8; NAME];
        n[..name.len()].copy_from_slice(name.as_bytes());
        index.extend_from_slice(&n);
        index.extend_from_slice(&(lba as u64 * SECTOR as u64).to_le_bytes());
        index.extend_from_slice(&(data.len() as u64).to_le_bytes());
        write_sectors(lba, &data)?;
        lba += data.len().div_ceil(SECTOR) as u32;
        total += data.len();
    }
    write_sectors(0, &index)?;
    println!("DISK put {} files, {total} bytes", files.len());
    Ok(())
}

pub fn get(dir: &str) -> Result<(), String> {
    grant()?;
    let index = read_sectors(0, SECTOR)?;
    if &index[..8] != MAGIC {
        return Err("no migration index on the disk".into());
    }
    let count = u32::from_le_bytes(index[8..12].try_into().unwrap()) as usize;
    if count == 0 || count > MAX_FILES {
        return Err(format!("bad index: {count} files"));
    }
    let mut total = 0;
    for i in 0..count {
        let e = &index[12 + i * (NAME + 16)..12 + (i + 1) * (NAME + 16)];
        let name = std::str::from_utf8(&e[..NAME])
            .map_err(|_| "bad index: a name is not UTF-8")?
            .trim_end_matches('\0');
        let off = u64::from_le_bytes(e[NAME..NAME + 8].try_into().unwrap());
        let len = u64::from_le_bytes(e[NAME + 8..].try_into().unwrap()) as usize;
        if name.is_empty()
            || name.contains('/')
            || name.starts_with('.')
            || off % SECTOR as u64 != 0
            || len > 1 << 30
        {
            return Err(format!("bad index entry {i}"));
        }
        let data = read_sectors((off / SECTOR as u64) as u32, len)?;
        let path = Path::new(dir).join(name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&data))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        total += len;
    }
    println!("DISK got {count} files, {total} bytes");
    Ok(())
}
