//! Loading a Linux bzImage as L1 by the x86 64-bit boot protocol
//! (Documentation/x86/boot.rst, "64-bit Boot Protocol").
//!
//! The protected-mode kernel goes to an aligned address with `init_size`
//! bytes of room (where it decompresses itself), the initrd high below
//! `initrd_addr_max`, and one block above 1 MiB holds everything else the
//! entry needs: the zero page (`struct boot_params`, with the setup header
//! copied from the image and the e820 table from L1's memory map), page
//! tables identity-mapping the low 4 GiB, a flat GDT with `__BOOT_CS` 0x10
//! and `__BOOT_DS` 0x18, a small stack, the ACPI RSDP (if L0 was given one)
//! and the command line. Linux abandons the tables, GDT and stack within
//! its first instructions and copies the zero page and command line, so
//! the block is ordinary RAM to it afterwards, except the RSDP page, which
//! the e820 table lists as reserved because Linux reads it much later.
//!
//! The low 1 MiB is left alone: it holds the BIOS data, the EBDA and the
//! spot where Linux's decompressor puts its 5-level-paging trampoline.

use alloc::borrow::Cow;
use alloc::vec::Vec;
use core::fmt;

use super::{usable_ram, Entry, LoadPlan, Write};
use crate::memmap::{CapacityExceeded, Range, RangeSet, PAGE_SIZE};
use crate::multiboot2::MemoryRegion;

const MIB: u64 = 1 << 20;
const FOUR_GIB: u64 = 1 << 32;

// Setup header offsets in the image and in boot_params (boot.rst).
const SETUP_SECTS: usize = 0x1f1;
const SYSSIZE: usize = 0x1f4;
const BOOT_FLAG: usize = 0x1fe;
const JUMP: usize = 0x200;
const HEADER: usize = 0x202;
const VERSION: usize = 0x206;
const TYPE_OF_LOADER: usize = 0x210;
const LOADFLAGS: usize = 0x211;
const CODE32_START: usize = 0x214;
const RAMDISK_IMAGE: usize = 0x218;
const RAMDISK_SIZE: usize = 0x21c;
const CMD_LINE_PTR: usize = 0x228;
const INITRD_ADDR_MAX: usize = 0x22c;
const KERNEL_ALIGNMENT: usize = 0x230;
const RELOCATABLE_KERNEL: usize = 0x234;
const XLOADFLAGS: usize = 0x236;
const CMDLINE_SIZE: usize = 0x238;
const PREF_ADDRESS: usize = 0x258;
const INIT_SIZE: usize = 0x260;
/// The last field we read; protocol 2.12 headers reach past it.
const HEADER_MIN_END: usize = INIT_SIZE + 4;

// Zero page fields outside the setup header (arch/x86/include/uapi/asm/bootparam.h).
const BP_ACPI_RSDP_ADDR: usize = 0x070;
const BP_EXT_RAMDISK_IMAGE: usize = 0x0c0;
const BP_EXT_RAMDISK_SIZE: usize = 0x0c4;
const BP_EXT_CMD_LINE_PTR: usize = 0x0c8;
const BP_E820_ENTRIES: usize = 0x1e8;
const BP_E820_TABLE: usize = 0x2d0;
/// E820_MAX_ENTRIES_ZEROPAGE.
pub const E820_MAX: usize = 128;
const ZERO_PAGE_SIZE: usize = 4096;

const HDRS: u32 = u32::from_le_bytes(*b"HdrS");
/// Protocol 2.12 brought xloadflags and the 64-bit entry at +0x200.
pub const MIN_VERSION: u16 = 0x020c;
const LOADED_HIGH: u8 = 1 << 0;
const XLF_KERNEL_64: u16 = 1 << 0;
/// "Undefined" boot loader (boot.rst: type_of_loader).
const LOADER_UNDEFINED: u8 = 0xff;
/// Offset of the 64-bit entry from the protected-mode kernel's start.
pub const ENTRY_64: u64 = 0x200;

/// Where Linux likes to live when it may choose (LOAD_PHYSICAL_ADDR's default).
const PREFERRED_MIN: u64 = 16 * MIB;

/// Selectors the 64-bit entry requires (boot.rst: __BOOT_CS, __BOOT_DS).
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
/// Null, null, 64-bit code (execute/read, L, G), flat data (read/write, D, G);
/// accessed bits set so the CPU never writes them.
const GDT: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

// Layout of the boot block, in bytes from its start.
const BLK_ZERO_PAGE: u64 = 0;
const BLK_PML4: u64 = 0x1000;
const BLK_PDPT: u64 = 0x2000;
/// Four page directories of 2 MiB pages: the low 4 GiB.
const BLK_PD: u64 = 0x3000;
const BLK_GDT: u64 = 0x7000;
const BLK_STACK_TOP: u64 = 0x9000;
const BLK_RSDP: u64 = 0x9000;
const BLK_CMDLINE: u64 = 0xa000;

const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_PS: u64 = 1 << 7;

/// e820 types as Linux reads them (the multiboot2 map uses the same numbers).
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// Why a bzImage or initrd cannot be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxError {
    /// Shorter than the setup header, or no 0xaa55 boot flag / "HdrS" magic.
    NotBzImage,
    /// Boot protocol older than 2.12 (no 64-bit entry information).
    ProtocolTooOld(u16),
    /// xloadflags lacks XLF_KERNEL_64: a 32-bit kernel, or a very old one.
    No64BitEntry,
    /// Not a bzImage (LOADED_HIGH clear): a zImage loads at 0x10000.
    NotLoadedHigh,
    /// The file ends before setup_sects and syssize say it does.
    Truncated { expected: u64, actual: u64 },
    /// kernel_alignment or init_size make no sense.
    BadHeader(&'static str),
    /// A non-relocatable kernel whose fixed address is not free RAM of L1.
    FixedAddressTaken { pref_address: u64, size: u64 },
    /// The command line is longer than the kernel accepts.
    CmdlineTooLong { len: usize, max: u32 },
    /// The initrd is empty.
    EmptyInitrd,
    /// The initrd is no cpio archive and no compression format Linux knows.
    InitrdFormat([u8; 4]),
    /// Nowhere to put something this large.
    NoRoom {
        what: &'static str,
        size: u64,
        below: u64,
    },
    /// More memory-map entries than the zero page holds.
    TooManyRegions(usize),
    /// The memory map is too fragmented.
    Capacity,
}

impl From<CapacityExceeded> for LinuxError {
    fn from(_: CapacityExceeded) -> Self {
        LinuxError::Capacity
    }
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotBzImage => write!(f, "not a Linux bzImage (no 0xaa55 boot flag and \"HdrS\" setup header at 0x1fe)"),
            Self::ProtocolTooOld(v) => write!(
                f,
                "Linux boot protocol {}.{:02} is older than 2.12: no 64-bit entry; use a kernel from 3.8 on",
                v >> 8,
                v & 0xff
            ),
            Self::No64BitEntry => write!(f, "bzImage has no 64-bit entry (xloadflags lacks XLF_KERNEL_64): a 32-bit kernel?"),
            Self::NotLoadedHigh => write!(f, "a zImage (LOADED_HIGH clear), not a bzImage"),
            Self::Truncated { expected, actual } => {
                write!(f, "bzImage is truncated: the setup header says {expected} bytes, the file has {actual}")
            }
            Self::BadHeader(what) => write!(f, "bzImage setup header is inconsistent: {what}"),
            Self::FixedAddressTaken { pref_address, size } => write!(
                f,
                "kernel is not relocatable and its address {pref_address:#x} (+{size:#x} bytes) is not free RAM of the cloud VM"
            ),
            Self::CmdlineTooLong { len, max } => write!(f, "kernel command line has {len} bytes; this kernel takes at most {max}"),
            Self::EmptyInitrd => write!(f, "the initrd module is empty"),
            Self::InitrdFormat(b) => write!(
                f,
                "the initrd is neither a cpio archive nor gzip/lz4/xz/zstd/bzip2/lzma/lzo data (starts with {:02x} {:02x} {:02x} {:02x})",
                b[0], b[1], b[2], b[3]
            ),
            Self::NoRoom { what, size, below } => {
                write!(f, "no room for {what} ({size} bytes) in the cloud VM's RAM below {below:#x}")
            }
            Self::TooManyRegions(n) => write!(f, "memory map has {n} entries; the zero page holds {E820_MAX}"),
            Self::Capacity => write!(f, "memory map too fragmented"),
        }
    }
}

fn u8_at(b: &[u8], off: usize) -> u8 {
    b[off]
}
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// The parts of a bzImage the loader works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BzImage<'a> {
    pub version: u16,
    /// The setup header as it appears in the image: 0x1f1 up to its end.
    pub header: &'a [u8],
    /// The protected-mode kernel (everything after the setup sectors).
    pub kernel: &'a [u8],
    pub relocatable: bool,
    pub kernel_alignment: u64,
    pub pref_address: u64,
    pub init_size: u64,
    pub initrd_addr_max: u64,
    pub cmdline_size: u32,
    pub xloadflags: u16,
}

impl<'a> BzImage<'a> {
    pub fn parse(image: &'a [u8]) -> Result<Self, LinuxError> {
        if image.len() < HEADER + 6
            || u16_at(image, BOOT_FLAG) != 0xaa55
            || u32_at(image, HEADER) != HDRS
        {
            return Err(LinuxError::NotBzImage);
        }
        let version = u16_at(image, VERSION);
        if version < MIN_VERSION {
            return Err(LinuxError::ProtocolTooOld(version));
        }
        // The header ends where the jump at 0x200 lands (boot.rst: copy
        // 0x1f1 up to 0x202 + the byte at 0x201).
        let header_end = (HEADER + u8_at(image, JUMP + 1) as usize).max(HEADER_MIN_END);
        let setup_sects = match u8_at(image, SETUP_SECTS) {
            0 => 4,
            n => n as usize,
        };
        let setup_len = (setup_sects + 1) * 512;
        if image.len() < header_end || image.len() < setup_len {
            return Err(LinuxError::Truncated {
                expected: setup_len.max(header_end) as u64,
                actual: image.len() as u64,
            });
        }
        if u8_at(image, LOADFLAGS) & LOADED_HIGH == 0 {
            return Err(LinuxError::NotLoadedHigh);
        }
        let xloadflags = u16_at(image, XLOADFLAGS);
        if xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LinuxError::No64BitEntry);
        }
        // syssize counts 16-byte paragraphs, rounded up: the file may end
        // up to 15 bytes before syssize * 16.
        let kernel = &image[setup_len..];
        let sys_bytes = u32_at(image, SYSSIZE) as u64 * 16;
        if sys_bytes == 0 || (kernel.len() as u64) + 15 < sys_bytes {
            return Err(LinuxError::Truncated {
                expected: setup_len as u64 + sys_bytes,
                actual: image.len() as u64,
            });
        }
        let kernel_alignment = u32_at(image, KERNEL_ALIGNMENT) as u64;
        if !kernel_alignment.is_power_of_two() {
            return Err(LinuxError::BadHeader(
                "kernel_alignment is not a power of two",
            ));
        }
        let init_size = u32_at(image, INIT_SIZE) as u64;
        if init_size < kernel.len() as u64 {
            return Err(LinuxError::BadHeader(
                "init_size is smaller than the kernel",
            ));
        }
        let pref_address = u64_at(image, PREF_ADDRESS);
        let relocatable = u8_at(image, RELOCATABLE_KERNEL) != 0;
        if !relocatable && !pref_address.is_multiple_of(PAGE_SIZE) {
            return Err(LinuxError::BadHeader("pref_address is not page-aligned"));
        }
        Ok(BzImage {
            version,
            header: &image[SETUP_SECTS..header_end],
            kernel,
            relocatable,
            kernel_alignment: kernel_alignment.max(PAGE_SIZE),
            pref_address,
            init_size,
            initrd_addr_max: u32_at(image, INITRD_ADDR_MAX) as u64,
            cmdline_size: u32_at(image, CMDLINE_SIZE),
            xloadflags,
        })
    }
}

/// Refuses what Linux's initramfs unpacker would choke on, with a message
/// L0 can show before L1 starts rather than a panic deep inside L1.
pub fn check_initrd(data: &[u8]) -> Result<(), LinuxError> {
    if data.is_empty() {
        return Err(LinuxError::EmptyInitrd);
    }
    const MAGICS: [&[u8]; 9] = [
        b"070701",                       // cpio newc
        b"070702",                       // cpio crc
        &[0x1f, 0x8b],                   // gzip
        &[0x02, 0x21, 0x4c, 0x18],       // lz4 legacy (what `lz4 -l` writes)
        &[0xfd, b'7', b'z', b'X', b'Z'], // xz
        &[0x28, 0xb5, 0x2f, 0xfd],       // zstd
        b"BZh",                          // bzip2
        &[0x5d, 0x00, 0x00],             // lzma
        &[0x89, b'L', b'Z', b'O'],       // lzop
    ];
    if MAGICS.iter().any(|m| data.starts_with(m)) {
        return Ok(());
    }
    let mut head = [0u8; 4];
    for (h, b) in head.iter_mut().zip(data) {
        *h = *b;
    }
    Err(LinuxError::InitrdFormat(head))
}

/// Where things went, for the log and the tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub kernel: Range,
    pub initrd: Option<Range>,
    pub boot_block: Range,
}

fn pages(n: u64) -> u64 {
    n.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// The kernel's range: pref_address if it is free, else (relocatable only)
/// the lowest aligned fit from 16 MiB, else from 1 MiB; below 4 GiB, where
/// the boot page tables reach.
fn place_kernel(free: &RangeSet, bz: &BzImage) -> Result<Range, LinuxError> {
    let size = pages(bz.init_size);
    let at_pref = Range::new(bz.pref_address, bz.pref_address.saturating_add(size));
    let pref_ok = bz.pref_address.is_multiple_of(bz.kernel_alignment) || !bz.relocatable;
    if pref_ok && at_pref.end <= FOUR_GIB && free.contains_range(at_pref) {
        return Ok(at_pref);
    }
    if !bz.relocatable {
        return Err(LinuxError::FixedAddressTaken {
            pref_address: bz.pref_address,
            size,
        });
    }
    free.find_lowest(size, bz.kernel_alignment, PREFERRED_MIN)
        .or_else(|| free.find_lowest(size, bz.kernel_alignment, MIB))
        .filter(|r| r.end <= FOUR_GIB)
        .ok_or(LinuxError::NoRoom {
            what: "the kernel and its decompression (init_size)",
            size,
            below: FOUR_GIB,
        })
}

/// The e820 table: L1's map, with `reserved` (whole pages of RAM) cut out
/// and listed as reserved.
fn e820(map: &[MemoryRegion], reserved: Option<Range>) -> Result<Vec<(u64, u64, u32)>, LinuxError> {
    let mut out = Vec::new();
    for r in map.iter().filter(|r| r.len > 0) {
        let whole = Range::new(r.base, r.base.saturating_add(r.len));
        match reserved.filter(|x| r.kind == E820_RAM && whole.overlaps(x)) {
            Some(x) => {
                for piece in [
                    Range::new(whole.start, x.start),
                    Range::new(x.end, whole.end),
                ] {
                    if !piece.is_empty() {
                        out.push((piece.start, piece.len(), E820_RAM));
                    }
                }
                out.push((x.start, x.len(), E820_RESERVED));
            }
            None => out.push((r.base, r.len, r.kind)),
        }
    }
    out.sort_by_key(|e| e.0);
    if out.len() > E820_MAX {
        return Err(LinuxError::TooManyRegions(out.len()));
    }
    Ok(out)
}

/// Plans starting `image` (a bzImage) with `cmdline` and an optional
/// `initrd`, in a machine whose memory map (as L1 is told it, L0's pool
/// reserved) is `map`. `rsdp` is the ACPI RSDP L0's loader handed it, if any.
pub fn plan<'a>(
    image: &'a [u8],
    cmdline: &str,
    initrd: Option<&'a [u8]>,
    rsdp: Option<&[u8]>,
    map: &[MemoryRegion],
) -> Result<(LoadPlan<'a>, Placement), LinuxError> {
    let bz = BzImage::parse(image)?;
    if let Some(i) = initrd {
        check_initrd(i)?;
    }
    // cmdline_size excludes the terminating NUL.
    if cmdline.len() > bz.cmdline_size as usize {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max: bz.cmdline_size,
        });
    }
    let mut free = usable_ram(map)?;
    free.remove(Range::new(0, MIB))?;

    let kernel = place_kernel(&free, &bz)?;
    free.remove(kernel)?;

    // The initrd as high as allowed: out of the way of everything Linux
    // allocates early (bottom-up from the kernel) and of the kernel itself.
    let initrd_range = match initrd {
        Some(data) => {
            let below = (bz.initrd_addr_max + 1).min(FOUR_GIB);
            let r = free
                .find_highest(pages(data.len() as u64), PAGE_SIZE, below)
                .ok_or(LinuxError::NoRoom {
                    what: "the initrd",
                    size: data.len() as u64,
                    below,
                })?;
            free.remove(r)?;
            Some(Range::new(r.start, r.start + data.len() as u64))
        }
        None => None,
    };

    let block_len = pages(BLK_CMDLINE + cmdline.len() as u64 + 1);
    let block = free
        .find_lowest(block_len, PAGE_SIZE, MIB)
        .filter(|r| r.end <= FOUR_GIB)
        .ok_or(LinuxError::NoRoom {
            what: "the zero page, page tables and command line",
            size: block_len,
            below: FOUR_GIB,
        })?;
    let base = block.start;
    let rsdp_page = rsdp.map(|_| Range::new(base + BLK_RSDP, base + BLK_RSDP + PAGE_SIZE));
    let table = e820(map, rsdp_page)?;

    let mut blk = alloc::vec![0u8; block_len as usize];
    // Zero page: the image's setup header, then what the loader fills in.
    let zp = &mut blk[..ZERO_PAGE_SIZE];
    zp[SETUP_SECTS..SETUP_SECTS + bz.header.len()].copy_from_slice(bz.header);
    zp[TYPE_OF_LOADER] = LOADER_UNDEFINED;
    put32(zp, CODE32_START, kernel.start as u32);
    let cmd = base + BLK_CMDLINE;
    put32(zp, CMD_LINE_PTR, cmd as u32);
    put32(zp, BP_EXT_CMD_LINE_PTR, (cmd >> 32) as u32);
    if let Some(r) = initrd_range {
        put32(zp, RAMDISK_IMAGE, r.start as u32);
        put32(zp, BP_EXT_RAMDISK_IMAGE, (r.start >> 32) as u32);
        put32(zp, RAMDISK_SIZE, r.len() as u32);
        put32(zp, BP_EXT_RAMDISK_SIZE, (r.len() >> 32) as u32);
    }
    if rsdp.is_some() {
        put64(zp, BP_ACPI_RSDP_ADDR, base + BLK_RSDP);
    }
    zp[BP_E820_ENTRIES] = table.len() as u8;
    for (i, &(addr, size, kind)) in table.iter().enumerate() {
        let o = BP_E820_TABLE + 20 * i;
        put64(zp, o, addr);
        put64(zp, o + 8, size);
        put32(zp, o + 16, kind);
    }
    // Identity map of the low 4 GiB in 2 MiB pages.
    put64(
        &mut blk,
        BLK_PML4 as usize,
        (base + BLK_PDPT) | PTE_P | PTE_RW,
    );
    for g in 0..4u64 {
        put64(
            &mut blk,
            (BLK_PDPT + 8 * g) as usize,
            (base + BLK_PD + g * PAGE_SIZE) | PTE_P | PTE_RW,
        );
        for e in 0..512u64 {
            let phys = (g << 30) | (e << 21);
            put64(
                &mut blk,
                (BLK_PD + g * PAGE_SIZE + 8 * e) as usize,
                phys | PTE_P | PTE_RW | PTE_PS,
            );
        }
    }
    for (i, d) in GDT.iter().enumerate() {
        put64(&mut blk, BLK_GDT as usize + 8 * i, *d);
    }
    if let Some(r) = rsdp {
        let n = r.len().min(PAGE_SIZE as usize);
        blk[BLK_RSDP as usize..BLK_RSDP as usize + n].copy_from_slice(&r[..n]);
    }
    blk[BLK_CMDLINE as usize..BLK_CMDLINE as usize + cmdline.len()]
        .copy_from_slice(cmdline.as_bytes());

    let mut writes = alloc::vec![Write::Bytes {
        gpa: kernel.start,
        data: Cow::Borrowed(bz.kernel)
    }];
    // The decompressor zeroes its own bss; a clean init_size area makes
    // the start independent of what the RAM held before.
    let tail = kernel.len() - bz.kernel.len() as u64;
    if tail > 0 {
        writes.push(Write::Zero {
            gpa: kernel.start + bz.kernel.len() as u64,
            len: tail,
        });
    }
    if let (Some(r), Some(data)) = (initrd_range, initrd) {
        writes.push(Write::Bytes {
            gpa: r.start,
            data: Cow::Borrowed(data),
        });
    }
    writes.push(Write::Bytes {
        gpa: base,
        data: Cow::Owned(blk),
    });

    let entry = Entry::Linux {
        rip: kernel.start + ENTRY_64,
        rsi: base + BLK_ZERO_PAGE,
        rsp: base + BLK_STACK_TOP,
        cr3: base + BLK_PML4,
        gdt_base: base + BLK_GDT,
        gdt_limit: (GDT.len() * 8 - 1) as u16,
    };
    Ok((
        LoadPlan { writes, entry },
        Placement {
            kernel,
            initrd: initrd_range,
            boot_block: block,
        },
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A bzImage with a protocol 2.15 header like Linux 6.1's: 4 setup
    /// sectors of 512 bytes, then `kernel_len` bytes of kernel.
    pub fn bzimage(kernel_len: usize, relocatable: bool) -> Vec<u8> {
        let setup_sects = 4usize;
        let mut img = vec![0u8; (setup_sects + 1) * 512 + kernel_len];
        img[SETUP_SECTS] = setup_sects as u8;
        put32(&mut img, SYSSIZE, (kernel_len as u32).div_ceil(16));
        img[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&0xaa55u16.to_le_bytes());
        // jmp short to 0x26c: the header is 0x202 + 0x6a long.
        img[JUMP] = 0xeb;
        img[JUMP + 1] = 0x6a;
        put32(&mut img, HEADER, HDRS);
        img[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        img[LOADFLAGS] = LOADED_HIGH;
        put32(&mut img, CODE32_START, 0x10_0000);
        put32(&mut img, INITRD_ADDR_MAX, 0x7fff_ffff);
        put32(&mut img, KERNEL_ALIGNMENT, 0x20_0000);
        img[RELOCATABLE_KERNEL] = relocatable as u8;
        img[XLOADFLAGS..XLOADFLAGS + 2].copy_from_slice(&0x7fu16.to_le_bytes());
        put32(&mut img, CMDLINE_SIZE, 2047);
        put64(&mut img, PREF_ADDRESS, 0x100_0000);
        put32(&mut img, INIT_SIZE, (kernel_len as u32).max(0x80_0000));
        let k = (setup_sects + 1) * 512;
        img[k..k + 6].copy_from_slice(b"KERNEL");
        img
    }

    /// What L0 tells L1 on a 512 MiB Bochs machine, L0's pool at the top.
    pub fn l1_map() -> Vec<MemoryRegion> {
        vec![
            MemoryRegion {
                base: 0,
                len: 0x9f000,
                kind: 1,
            },
            MemoryRegion {
                base: 0x9f000,
                len: 0x1000,
                kind: 2,
            },
            MemoryRegion {
                base: 0xe8000,
                len: 0x18000,
                kind: 2,
            },
            MemoryRegion {
                base: 0x10_0000,
                len: 0x1bf0_0000,
                kind: 1,
            },
            MemoryRegion {
                base: 0x1c00_0000,
                len: 0x3ff_0000,
                kind: 2,
            },
            MemoryRegion {
                base: 0x1fff_0000,
                len: 0x1_0000,
                kind: 3,
            },
            MemoryRegion {
                base: 0xfffc_0000,
                len: 0x4_0000,
                kind: 2,
            },
        ]
    }

    fn find<'p>(plan: &'p LoadPlan, gpa: u64) -> (&'p [u8], usize) {
        for w in &plan.writes {
            if let Write::Bytes { gpa: base, data } = w {
                if *base <= gpa && gpa < base + data.len() as u64 {
                    return (data, (gpa - base) as usize);
                }
            }
        }
        panic!("{gpa:#x} not written");
    }
    fn r8(plan: &LoadPlan, gpa: u64) -> u8 {
        let (d, o) = find(plan, gpa);
        d[o]
    }
    fn r32(plan: &LoadPlan, gpa: u64) -> u32 {
        u32::from_le_bytes(core::array::from_fn(|i| r8(plan, gpa + i as u64)))
    }
    fn r64(plan: &LoadPlan, gpa: u64) -> u64 {
        u64::from_le_bytes(core::array::from_fn(|i| r8(plan, gpa + i as u64)))
    }
    fn cstr(plan: &LoadPlan, gpa: u64) -> String {
        (gpa..)
            .map(|a| r8(plan, a))
            .take_while(|&c| c != 0)
            .map(char::from)
            .collect()
    }

    fn entry(plan: &LoadPlan) -> (u64, u64, u64, u64, u64, u16) {
        match plan.entry {
            Entry::Linux {
                rip,
                rsi,
                rsp,
                cr3,
                gdt_base,
                gdt_limit,
            } => (rip, rsi, rsp, cr3, gdt_base, gdt_limit),
            _ => panic!("not a Linux entry"),
        }
    }

    /// An lz4-compressed initrd's first bytes.
    fn initrd(len: usize) -> Vec<u8> {
        let mut v = vec![0x5a; len];
        v[..4].copy_from_slice(&[0x02, 0x21, 0x4c, 0x18]);
        v
    }

    #[test]
    fn parses_the_setup_header() {
        let img = bzimage(0x1234, true);
        let bz = BzImage::parse(&img).unwrap();
        assert_eq!(bz.version, 0x020f);
        assert_eq!(bz.header.len(), 0x26c - 0x1f1);
        assert_eq!(bz.kernel.len(), 0x1234);
        assert!(bz.kernel.starts_with(b"KERNEL"));
        assert!(bz.relocatable);
        assert_eq!(
            (bz.kernel_alignment, bz.pref_address, bz.init_size),
            (0x20_0000, 0x100_0000, 0x80_0000)
        );
        assert_eq!((bz.initrd_addr_max, bz.cmdline_size), (0x7fff_ffff, 2047));
        // setup_sects 0 means 4.
        let mut img0 = img.clone();
        img0[SETUP_SECTS] = 0;
        assert_eq!(BzImage::parse(&img0).unwrap().kernel.len(), 0x1234);
    }

    #[test]
    fn refuses_malformed_images() {
        let good = bzimage(0x1000, true);
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = good.clone();
            f(&mut v);
            BzImage::parse(&v).unwrap_err()
        };
        assert_eq!(
            BzImage::parse(b"This is a text file, not a kernel.\n").unwrap_err(),
            LinuxError::NotBzImage
        );
        assert_eq!(with(&|v| v[HEADER] = b'X'), LinuxError::NotBzImage);
        assert_eq!(with(&|v| v[BOOT_FLAG] = 0), LinuxError::NotBzImage);
        assert_eq!(
            with(&|v| v[VERSION] = 0x0b),
            LinuxError::ProtocolTooOld(0x020b)
        );
        assert_eq!(with(&|v| v[XLOADFLAGS] = 0x7e), LinuxError::No64BitEntry);
        assert_eq!(with(&|v| v[LOADFLAGS] = 0), LinuxError::NotLoadedHigh);
        assert_eq!(
            with(&|v| v.truncate(v.len() - 32)),
            LinuxError::Truncated {
                expected: 0xa00 + 0x1000,
                actual: 0xa00 + 0x1000 - 32
            }
        );
        assert_eq!(
            with(&|v| v.truncate(0x800)),
            LinuxError::Truncated {
                expected: 0xa00,
                actual: 0x800
            }
        );
        assert_eq!(
            with(&|v| put32(v, KERNEL_ALIGNMENT, 0x30_0000)),
            LinuxError::BadHeader("kernel_alignment is not a power of two")
        );
        assert_eq!(
            with(&|v| put32(v, INIT_SIZE, 0x800)),
            LinuxError::BadHeader("init_size is smaller than the kernel")
        );
        // Up to 15 bytes short of syssize * 16 is how the build rounds.
        let mut v = good.clone();
        v.truncate(v.len() - 15);
        assert!(BzImage::parse(&v).is_ok());
        assert!(LinuxError::ProtocolTooOld(0x0203)
            .to_string()
            .contains("2.03"));
    }

    #[test]
    fn checks_initrd_formats() {
        assert_eq!(check_initrd(b""), Err(LinuxError::EmptyInitrd));
        assert!(check_initrd(b"070701000000").is_ok());
        assert!(check_initrd(&[0x1f, 0x8b, 8, 0]).is_ok());
        assert!(check_initrd(&initrd(16)).is_ok());
        assert_eq!(
            check_initrd(b"hello world"),
            Err(LinuxError::InitrdFormat(*b"hell"))
        );
        assert_eq!(
            check_initrd(b"hi"),
            Err(LinuxError::InitrdFormat([b'h', b'i', 0, 0]))
        );
        assert!(LinuxError::InitrdFormat(*b"hell")
            .to_string()
            .contains("68 65 6c 6c"));
    }

    #[test]
    fn loads_kernel_initrd_and_zero_page() {
        let img = bzimage(0x30_0000, true);
        let rd = initrd(0x12_3456);
        let (plan, at) = plan(
            &img,
            "console=ttyS0,115200 l0test=boot",
            Some(&rd),
            None,
            &l1_map(),
        )
        .unwrap();
        // pref_address is free: the kernel goes there, with init_size room.
        assert_eq!(at.kernel, Range::new(0x100_0000, 0x180_0000));
        assert!(
            matches!(&plan.writes[0], Write::Bytes { gpa: 0x100_0000, data } if data.starts_with(b"KERNEL") && data.len() == 0x30_0000)
        );
        assert_eq!(
            plan.writes[1],
            Write::Zero {
                gpa: 0x130_0000,
                len: 0x50_0000
            }
        );
        // The initrd as high as it fits in L1's RAM (below L0's pool).
        let rd_at = at.initrd.unwrap();
        assert_eq!(
            rd_at,
            Range::new(0x1c00_0000 - 0x12_4000, 0x1c00_0000 - 0x12_4000 + 0x12_3456)
        );
        // The boot block right above 1 MiB.
        assert_eq!(at.boot_block.start, 0x10_0000);
        let (rip, rsi, rsp, cr3, gdt, limit) = entry(&plan);
        assert_eq!(rip, 0x100_0200);
        assert_eq!(rsi, 0x10_0000);
        assert!(
            at.boot_block.contains(rsp - 8)
                && at.boot_block.contains(cr3)
                && at.boot_block.contains(gdt)
        );
        assert_eq!(limit, 31);

        // The zero page.
        let zp = rsi;
        assert_eq!(r32(&plan, zp + HEADER as u64), HDRS, "setup header copied");
        assert_eq!(r8(&plan, zp + 0x1ef), 0, "sentinel clear");
        assert_eq!(r8(&plan, zp + TYPE_OF_LOADER as u64), 0xff);
        assert_eq!(r32(&plan, zp + CODE32_START as u64), 0x100_0000);
        assert_eq!(
            cstr(&plan, r32(&plan, zp + CMD_LINE_PTR as u64) as u64),
            "console=ttyS0,115200 l0test=boot"
        );
        assert_eq!(r32(&plan, zp + BP_EXT_CMD_LINE_PTR as u64), 0);
        assert_eq!(r32(&plan, zp + RAMDISK_IMAGE as u64) as u64, rd_at.start);
        assert_eq!(r32(&plan, zp + RAMDISK_SIZE as u64), 0x12_3456);
        assert_eq!(r32(&plan, zp + BP_EXT_RAMDISK_IMAGE as u64), 0);
        assert_eq!(
            r64(&plan, zp + BP_ACPI_RSDP_ADDR as u64),
            0,
            "no RSDP: Linux scans the BIOS area"
        );
        assert_eq!(r32(&plan, rd_at.start), 0x184c_2102);
        // e820 = L1's map, L0's pool reserved.
        assert_eq!(r8(&plan, zp + BP_E820_ENTRIES as u64), 7);
        let e = |i: u64| {
            let o = zp + BP_E820_TABLE as u64 + 20 * i;
            (r64(&plan, o), r64(&plan, o + 8), r32(&plan, o + 16))
        };
        assert_eq!(e(0), (0, 0x9f000, 1));
        assert_eq!(e(3), (0x10_0000, 0x1bf0_0000, 1));
        assert_eq!(e(4), (0x1c00_0000, 0x3ff_0000, 2));
        assert_eq!(e(6), (0xfffc_0000, 0x4_0000, 2));

        // Page tables: identity, 2 MiB pages, the low 4 GiB.
        let pdpt = r64(&plan, cr3) & !0xfff;
        for va in [0u64, 0x100_0200, rsi, rd_at.start, 0xffff_f000] {
            let pd = r64(&plan, pdpt + 8 * (va >> 30)) & !0xfff;
            let pde = r64(&plan, pd + 8 * ((va >> 21) & 511));
            assert_eq!(pde & 0x83, 0x83, "{va:#x}: present, writable, 2 MiB");
            assert_eq!(pde & !0x1f_ffff, va & !0x1f_ffff, "{va:#x} maps to itself");
        }
        // GDT: __BOOT_CS long-mode code, __BOOT_DS flat data.
        assert_eq!(r64(&plan, gdt + BOOT_CS as u64), 0x00af_9b00_0000_ffff);
        assert_eq!(r64(&plan, gdt + BOOT_DS as u64), 0x00cf_9300_0000_ffff);

        // Nothing overlaps, nothing lands in L0's pool or the low 1 MiB.
        let mut seen = RangeSet::new();
        for w in &plan.writes {
            let r = w.range();
            assert!(!seen.overlaps(r), "{r} overlaps");
            assert!(
                r.start >= MIB && r.end <= 0x1c00_0000,
                "{r} outside L1's RAM above 1 MiB"
            );
            seen.insert(r).unwrap();
        }
    }

    #[test]
    fn relocates_when_pref_address_is_taken() {
        // L0's pool over 16 MiB.
        let map = [
            MemoryRegion {
                base: 0,
                len: 0x9f000,
                kind: 1,
            },
            MemoryRegion {
                base: 0x10_0000,
                len: 0xf0_0000,
                kind: 1,
            },
            MemoryRegion {
                base: 0x100_0000,
                len: 0x40_0000,
                kind: 2,
            },
            MemoryRegion {
                base: 0x140_0000,
                len: 0x1000_0000,
                kind: 1,
            },
        ];
        let img = bzimage(0x10_0000, true);
        let (plan, at) = plan(&img, "", None, None, &map).unwrap();
        assert_eq!(
            at.kernel.start, 0x140_0000,
            "lowest 2 MiB-aligned fit from 16 MiB"
        );
        assert_eq!(entry(&plan).0, 0x140_0200);
        assert_eq!(at.initrd, None);
        assert_eq!(r32(&plan, entry(&plan).1 + RAMDISK_IMAGE as u64), 0);
        // Not relocatable: it must have its address.
        let img = bzimage(0x10_0000, false);
        assert_eq!(
            super::plan(&img, "", None, None, &map).unwrap_err(),
            LinuxError::FixedAddressTaken {
                pref_address: 0x100_0000,
                size: 0x80_0000
            }
        );
        // A relocatable kernel with nowhere to go.
        let tiny = [MemoryRegion {
            base: 0,
            len: 0x80_0000,
            kind: 1,
        }];
        assert!(matches!(
            super::plan(&bzimage(0x1000, true), "", None, None, &tiny),
            Err(LinuxError::NoRoom { .. })
        ));
    }

    #[test]
    fn initrd_stays_below_initrd_addr_max() {
        // 3 GiB of RAM above 1 MiB, initrd_addr_max at 2 GiB - 1.
        let map = [
            MemoryRegion {
                base: 0,
                len: 0x9f000,
                kind: 1,
            },
            MemoryRegion {
                base: 0x10_0000,
                len: 0xbff0_0000,
                kind: 1,
            },
        ];
        let (_, at) = plan(
            &bzimage(0x1000, true),
            "",
            Some(&initrd(0x2000)),
            None,
            &map,
        )
        .unwrap();
        assert_eq!(at.initrd.unwrap(), Range::new(0x7fff_e000, 0x8000_0000));
        // Bigger than the room below the limit.
        let small = [MemoryRegion {
            base: 0,
            len: 0x200_0000,
            kind: 1,
        }];
        let e = plan(
            &bzimage(0x1000, true),
            "",
            Some(&initrd(0x100_0000)),
            None,
            &small,
        )
        .unwrap_err();
        assert_eq!(
            e,
            LinuxError::NoRoom {
                what: "the initrd",
                size: 0x100_0000,
                below: 0x8000_0000
            }
        );
        let e = plan(&bzimage(0x1000, true), "", Some(b"garbage!"), None, &map).unwrap_err();
        assert_eq!(e, LinuxError::InitrdFormat(*b"garb"));
    }

    #[test]
    fn rsdp_copy_is_reserved_in_e820() {
        let rsdp = *b"RSD PTR \x00BOCHS \x00\x00\x00\x00\x00\x00\x00\x00";
        let img = bzimage(0x1000, true);
        let (plan, at) = plan(&img, "x", None, Some(&rsdp), &l1_map()).unwrap();
        let zp = entry(&plan).1;
        let addr = r64(&plan, zp + BP_ACPI_RSDP_ADDR as u64);
        assert!(at.boot_block.contains(addr));
        assert_eq!(addr % PAGE_SIZE, 0);
        assert_eq!(r64(&plan, addr), u64::from_le_bytes(*b"RSD PTR "));
        // 1 MiB..RSDP RAM, the RSDP page reserved, the rest RAM.
        let n = r8(&plan, zp + BP_E820_ENTRIES as u64) as u64;
        let table: Vec<(u64, u64, u32)> = (0..n)
            .map(|i| {
                let o = zp + BP_E820_TABLE as u64 + 20 * i;
                (r64(&plan, o), r64(&plan, o + 8), r32(&plan, o + 16))
            })
            .collect();
        assert!(table.contains(&(0x10_0000, addr - 0x10_0000, 1)));
        assert!(table.contains(&(addr, 0x1000, 2)));
        assert!(table.contains(&(addr + 0x1000, 0x1c00_0000 - addr - 0x1000, 1)));
        assert!(table.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn command_line_limits() {
        let long = "x".repeat(2048);
        let e = plan(&bzimage(0x1000, true), &long, None, None, &l1_map()).unwrap_err();
        assert_eq!(
            e,
            LinuxError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        );
        assert!(plan(&bzimage(0x1000, true), &long[..2047], None, None, &l1_map()).is_ok());
    }

    #[test]
    fn too_many_regions() {
        let map: Vec<MemoryRegion> = (0..130u64)
            .map(|i| MemoryRegion {
                base: 0x80_0000 * i,
                len: 0x80_0000,
                kind: 1 + (i as u32 & 1),
            })
            .collect();
        assert_eq!(
            plan(&bzimage(0x1000, true), "", None, None, &map).unwrap_err(),
            LinuxError::TooManyRegions(130)
        );
    }
}
