//! Loading a multiboot (v1) kernel as L1 (Multiboot Specification 0.6.96).
//!
//! Segments go to their physical addresses (ELF p_paddr, or the a.out-kludge
//! fields); modules follow the kernel page-aligned, as GRUB places them; the
//! information structure (memory map, modules, command lines) comes last.
//! Everything must be RAM of L1 below 4 GiB: the structure has 32-bit
//! pointers.

use alloc::borrow::Cow;
use alloc::vec::Vec;

use super::{usable_ram, Entry, LoadError, LoadPlan, ModuleImage, Write};
use crate::elf::Elf;
use crate::memmap::{Range, RangeSet, PAGE_SIZE};
use crate::multiboot2::MemoryRegion;

/// Magic in the kernel's header.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// Value in EAX when the kernel starts.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header lies within this many bytes of the image start.
const SEARCH_LEN: usize = 8192;

const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMORY_INFO: u32 = 1 << 1;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Bits 0-15 are requirements; the loader must refuse ones it does not
/// meet. We meet 0 and 1, not 2 (video mode).
const REQUIRED_SUPPORTED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO;

// Information structure flags (specification 3.3).
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;
/// Size of the information structure with every field up to the framebuffer.
const INFO_SIZE: usize = 116;
const LOADER_NAME: &str = "L0 cloud hypervisor";

const FOUR_GIB: u64 = 1 << 32;

/// The parsed multiboot header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub offset: usize,
    pub flags: u32,
    /// header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
    pub aout: Option<[u32; 5]>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Finds the header: 4-byte aligned in the first 8 KiB, magic + flags +
/// checksum summing to zero.
pub fn find_header(image: &[u8]) -> Result<Header, LoadError> {
    let limit = image.len().min(SEARCH_LEN);
    for offset in (0..limit.saturating_sub(11)).step_by(4) {
        let (Some(magic), Some(flags), Some(sum)) = (
            u32_at(image, offset),
            u32_at(image, offset + 4),
            u32_at(image, offset + 8),
        ) else {
            break;
        };
        if magic != HEADER_MAGIC || magic.wrapping_add(flags).wrapping_add(sum) != 0 {
            continue;
        }
        let unsupported = flags & 0xffff & !REQUIRED_SUPPORTED;
        if unsupported != 0 {
            return Err(LoadError::UnsupportedFlags(unsupported));
        }
        let aout = if flags & FLAG_AOUT_KLUDGE != 0 {
            let mut f = [0u32; 5];
            for (i, v) in f.iter_mut().enumerate() {
                *v = u32_at(image, offset + 12 + 4 * i).ok_or(LoadError::BadAddressFields)?;
            }
            Some(f)
        } else {
            None
        };
        return Ok(Header {
            offset,
            flags,
            aout,
        });
    }
    Err(LoadError::NoMultibootHeader)
}

/// Kernel segments as (destination, file bytes, total size) and the entry.
fn kernel_segments<'a>(
    image: &'a [u8],
    header: &Header,
) -> Result<(Vec<(u64, &'a [u8], u64)>, u64), LoadError> {
    if let Some([header_addr, load_addr, load_end, bss_end, entry]) = header.aout {
        let back = header_addr
            .checked_sub(load_addr)
            .ok_or(LoadError::BadAddressFields)?;
        let file_start = (header.offset as u64)
            .checked_sub(back as u64)
            .ok_or(LoadError::BadAddressFields)? as usize;
        let file_len = if load_end == 0 {
            image.len() - file_start
        } else {
            load_end
                .checked_sub(load_addr)
                .ok_or(LoadError::BadAddressFields)? as usize
        };
        let bytes = image
            .get(file_start..file_start + file_len)
            .ok_or(LoadError::BadAddressFields)?;
        let mem_end = if bss_end == 0 {
            load_addr as u64 + file_len as u64
        } else {
            bss_end as u64
        };
        if mem_end < load_addr as u64 + file_len as u64 {
            return Err(LoadError::BadAddressFields);
        }
        Ok((
            alloc::vec![(load_addr as u64, bytes, mem_end - load_addr as u64)],
            entry as u64,
        ))
    } else {
        let elf = Elf::parse(image)?;
        let segs = elf
            .segments()
            .filter(|s| s.memsz > 0)
            .map(|s| {
                (
                    s.paddr,
                    &image[s.offset as usize..(s.offset + s.filesz) as usize],
                    s.memsz,
                )
            })
            .collect();
        Ok((segs, elf.physical_entry()))
    }
}

/// Takes `size` bytes of `free` at or above `min`, falling back to the lowest
/// fit anywhere; below 4 GiB.
fn place(free: &mut RangeSet, size: u64, min: u64, what: &'static str) -> Result<u64, LoadError> {
    let size_pages = size.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let r = free
        .find_lowest(size_pages, PAGE_SIZE, min)
        .or_else(|| free.find_lowest(size_pages, PAGE_SIZE, 0))
        .filter(|r| r.end <= FOUR_GIB)
        .ok_or(LoadError::NoRoom { what, size })?;
    free.remove(r)?;
    Ok(r.start)
}

/// Plans loading `image` as a multiboot kernel with `cmdline` and `modules`,
/// into a machine whose memory map (as L1 is told it) is `map`.
pub fn plan<'a>(
    image: &'a [u8],
    cmdline: &str,
    modules: &[ModuleImage<'a>],
    map: &[MemoryRegion],
) -> Result<LoadPlan<'a>, LoadError> {
    let header = find_header(image)?;
    let (segments, entry) = kernel_segments(image, &header)?;
    let ram = usable_ram(map)?;
    let mut free = ram.clone();
    let mut writes = Vec::new();
    let mut kernel_end = 0;
    for &(dest, bytes, memsz) in &segments {
        let r = Range::new(
            dest,
            dest.checked_add(memsz).ok_or(LoadError::BadAddressFields)?,
        );
        if !ram.contains_range(r) || r.end > FOUR_GIB || !free.contains_range(r) {
            return Err(LoadError::SegmentNotRam(r));
        }
        free.remove(r.grow_to_pages())?;
        writes.push(Write::Bytes {
            gpa: dest,
            data: Cow::Borrowed(bytes),
        });
        if memsz > bytes.len() as u64 {
            writes.push(Write::Zero {
                gpa: dest + bytes.len() as u64,
                len: memsz - bytes.len() as u64,
            });
        }
        kernel_end = kernel_end.max(r.end);
    }
    if entry >= FOUR_GIB {
        return Err(LoadError::BadAddressFields);
    }

    let mut cursor = kernel_end;
    let mut mods = Vec::new();
    for m in modules {
        let at = place(&mut free, m.data.len() as u64, cursor, "a module")?;
        writes.push(Write::Bytes {
            gpa: at,
            data: Cow::Borrowed(m.data),
        });
        mods.push((at, at + m.data.len() as u64, m.cmdline));
        cursor = at + m.data.len() as u64;
    }

    // The information structure and everything it points to, in one block.
    let mut strings = Vec::new();
    let mut string = |s: &str| {
        let off = strings.len();
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        off
    };
    let cmdline_off = string(cmdline);
    let loader_off = string(LOADER_NAME);
    let mod_name_offs: Vec<usize> = mods.iter().map(|m| string(m.2)).collect();
    let mods_off = INFO_SIZE;
    let mmap_off = mods_off + 16 * mods.len();
    let strings_off = mmap_off + 24 * map.len();
    let total = strings_off + strings.len();
    let base = place(&mut free, total as u64, cursor, "the multiboot information")?;
    let addr = |off: usize| (base + off as u64) as u32;

    let mut info = alloc::vec![0u8; total];
    let mut put = |off: usize, v: u32| info[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let (lower, upper) = lower_upper_kib(&ram);
    put(
        0,
        INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME,
    );
    put(4, lower);
    put(8, upper);
    put(16, addr(strings_off + cmdline_off));
    put(20, mods.len() as u32);
    put(24, addr(mods_off));
    put(44, (24 * map.len()) as u32);
    put(48, addr(mmap_off));
    put(64, addr(strings_off + loader_off));
    for (i, (m, name)) in mods.iter().zip(&mod_name_offs).enumerate() {
        let o = mods_off + 16 * i;
        put(o, m.0 as u32);
        put(o + 4, m.1 as u32);
        put(o + 8, addr(strings_off + name));
    }
    for (i, r) in map.iter().enumerate() {
        let o = mmap_off + 24 * i;
        info[o..o + 4].copy_from_slice(&20u32.to_le_bytes());
        info[o + 4..o + 12].copy_from_slice(&r.base.to_le_bytes());
        info[o + 12..o + 20].copy_from_slice(&r.len.to_le_bytes());
        info[o + 20..o + 24].copy_from_slice(&r.kind.to_le_bytes());
    }
    info[strings_off..].copy_from_slice(&strings);
    writes.push(Write::Bytes {
        gpa: base,
        data: Cow::Owned(info),
    });

    Ok(LoadPlan {
        writes,
        entry: Entry::Multiboot {
            eip: entry as u32,
            ebx: base as u32,
        },
    })
}

/// mem_lower: KiB of RAM from address 0 (at most 640); mem_upper: KiB of RAM
/// contiguous from 1 MiB.
fn lower_upper_kib(ram: &RangeSet) -> (u32, u32) {
    let lower = ram
        .iter()
        .find(|r| r.start == 0)
        .map_or(0, |r| r.end.min(0xa_0000) / 1024);
    let upper = ram
        .iter()
        .find(|r| r.contains(0x10_0000))
        .map_or(0, |r| (r.end - 0x10_0000) / 1024);
    (lower as u32, upper.min(u32::MAX as u64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::{elf32, elf64};

    fn header(flags: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&HEADER_MAGIC.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&(0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags)).to_le_bytes());
        h
    }

    /// An ELF64 kernel at 1 MiB whose first segment starts with the header.
    fn kernel() -> Vec<u8> {
        let mut code = header(3);
        code.extend_from_slice(b"KERNEL");
        elf64(0x10_0000, &[(0x10_0000, 0x10_0000, &code, 0x3000)])
    }

    /// What L0 tells L1 on a 512 MiB Bochs machine, with L0's pool at the top.
    fn l1_map() -> Vec<MemoryRegion> {
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
                base: 0x10_0000,
                len: 0x1bf0_0000,
                kind: 1,
            },
            MemoryRegion {
                base: 0x1c00_0000,
                len: 0x3ff_0000,
                kind: 2,
            },
        ]
    }

    fn read_u8(plan: &LoadPlan, gpa: u64) -> u8 {
        for w in &plan.writes {
            if let Write::Bytes { gpa: base, data } = w {
                if *base <= gpa && gpa < base + data.len() as u64 {
                    return data[(gpa - base) as usize];
                }
            }
        }
        panic!("{gpa:#x} not written");
    }

    fn read_u32(plan: &LoadPlan, gpa: u64) -> u32 {
        u32::from_le_bytes(core::array::from_fn(|i| read_u8(plan, gpa + i as u64)))
    }

    fn read_str(plan: &LoadPlan, gpa: u64) -> String {
        (gpa..)
            .map(|a| read_u8(plan, a))
            .take_while(|&c| c != 0)
            .map(char::from)
            .collect()
    }

    #[test]
    fn finds_header_and_rejects_bad_ones() {
        let mut img = vec![0u8; 64];
        img.extend_from_slice(&header(3));
        assert_eq!(
            find_header(&img).unwrap(),
            Header {
                offset: 64,
                flags: 3,
                aout: None
            }
        );
        let mut bad = vec![0u8; 64];
        let mut h = header(3);
        h[8] ^= 1;
        bad.extend_from_slice(&h);
        assert_eq!(find_header(&bad).unwrap_err(), LoadError::NoMultibootHeader);
        let mut late = vec![0u8; 8192];
        late.extend_from_slice(&header(3));
        assert_eq!(
            find_header(&late).unwrap_err(),
            LoadError::NoMultibootHeader
        );
        assert_eq!(
            find_header(&header(4)).unwrap_err(),
            LoadError::UnsupportedFlags(4)
        );
        assert_eq!(
            find_header(&header(0x8003)).unwrap_err(),
            LoadError::UnsupportedFlags(0x8000)
        );
        // Flags above bit 15 other than the kludge are optional.
        assert!(find_header(&header(0x2_0003)).is_ok());
    }

    #[test]
    fn loads_elf_kernel_modules_and_info() {
        let img = kernel();
        let mods = [
            ModuleImage {
                data: b"first module",
                cmdline: "one arg",
            },
            ModuleImage {
                data: &[7u8; 5000],
                cmdline: "",
            },
        ];
        let plan = plan(&img, "test=boot", &mods, &l1_map()).unwrap();
        let Entry::Multiboot { eip, ebx } = plan.entry else {
            panic!("not a multiboot entry")
        };
        assert_eq!(eip, 0x10_0000);
        // Kernel bytes and its bss.
        assert!(
            matches!(&plan.writes[0], Write::Bytes { gpa: 0x10_0000, data } if data.ends_with(b"KERNEL"))
        );
        assert!(
            matches!(plan.writes[1], Write::Zero { gpa, len } if gpa == 0x10_0000 + 18 && len == 0x3000 - 18)
        );
        // Modules page-aligned after the kernel, then the info structure.
        let info = ebx as u64;
        assert_eq!(read_u32(&plan, info) & 0x24d, 0x24d);
        assert_eq!(read_u32(&plan, info + 4), 0x9f000 / 1024);
        assert_eq!(read_u32(&plan, info + 8), (0x1c00_0000 - 0x10_0000) / 1024);
        assert_eq!(
            read_str(&plan, read_u32(&plan, info + 16) as u64),
            "test=boot"
        );
        assert_eq!(
            read_str(&plan, read_u32(&plan, info + 64) as u64),
            LOADER_NAME
        );
        assert_eq!(read_u32(&plan, info + 20), 2);
        let mods_addr = read_u32(&plan, info + 24) as u64;
        let m0 = (read_u32(&plan, mods_addr), read_u32(&plan, mods_addr + 4));
        assert_eq!(m0, (0x10_3000, 0x10_3000 + 12));
        assert_eq!(
            read_str(&plan, read_u32(&plan, mods_addr + 8) as u64),
            "one arg"
        );
        let m1 = (
            read_u32(&plan, mods_addr + 16),
            read_u32(&plan, mods_addr + 20),
        );
        assert_eq!(m1, (0x10_4000, 0x10_4000 + 5000));
        assert!(info >= 0x10_6000);
        // The memory map, as given.
        assert_eq!(read_u32(&plan, info + 44), 4 * 24);
        let mmap = read_u32(&plan, info + 48) as u64;
        assert_eq!(read_u32(&plan, mmap), 20);
        assert_eq!(read_u32(&plan, mmap + 4 + 24 * 3), 0x1c00_0000);
        assert_eq!(read_u32(&plan, mmap + 20 + 24 * 3), 2);
        // Nothing overlaps.
        let mut seen = RangeSet::new();
        for w in &plan.writes {
            assert!(!seen.overlaps(w.range()), "{:?} overlaps", w.range());
            seen.insert(w.range()).unwrap();
        }
    }

    #[test]
    fn loads_elf32_with_translated_entry() {
        let mut code = header(3);
        code.extend_from_slice(&[0x90; 16]);
        let img = elf32(0xc040_0010, &[(0x40_0000, 0xc040_0000, &code, 0x1000)]);
        let plan = plan(&img, "", &[], &l1_map()).unwrap();
        assert!(matches!(
            plan.entry,
            Entry::Multiboot { eip: 0x40_0010, .. }
        ));
    }

    #[test]
    fn loads_aout_kludge() {
        // Header at offset 0 of a flat image loaded at 2 MiB, 4 KiB of bss.
        let mut img = header(0x1_0003);
        // header_addr, load_addr, load_end_addr (0 = whole file), bss_end_addr, entry_addr
        for v in [0x20_0000u32, 0x20_0000, 0, 0x20_2000, 0x20_0020] {
            img.extend_from_slice(&v.to_le_bytes());
        }
        img.resize(0x40, 0xf4);
        let plan = plan(&img, "", &[], &l1_map()).unwrap();
        assert!(
            matches!(&plan.writes[0], Write::Bytes { gpa: 0x20_0000, data } if data.len() == 0x40)
        );
        assert_eq!(
            plan.writes[1],
            Write::Zero {
                gpa: 0x20_0040,
                len: 0x2000 - 0x40
            }
        );
        assert!(matches!(
            plan.entry,
            Entry::Multiboot { eip: 0x20_0020, .. }
        ));
        // load_addr above header_addr is inconsistent.
        let mut bad = header(0x1_0003);
        for v in [0x20_0000u32, 0x20_1000, 0, 0, 0x20_0020] {
            bad.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(plan_err(&bad), LoadError::BadAddressFields);
    }

    fn plan_err(img: &[u8]) -> LoadError {
        plan(img, "", &[], &l1_map()).unwrap_err()
    }

    #[test]
    fn refuses_segments_outside_l1_ram() {
        let mut code = header(3);
        code.push(0);
        // Into L0's pool at the top.
        let img = elf64(0x1c00_0000, &[(0x1c00_0000, 0x1c00_0000, &code, 0x1000)]);
        assert_eq!(
            plan_err(&img),
            LoadError::SegmentNotRam(Range::new(0x1c00_0000, 0x1c00_1000))
        );
        // Straddling the EBDA hole.
        let img = elf64(0x9e000, &[(0x9e000, 0x9e000, &code, 0x2000)]);
        assert_eq!(
            plan_err(&img),
            LoadError::SegmentNotRam(Range::new(0x9e000, 0xa0000))
        );
        // Two segments on top of each other.
        let img = elf64(
            0x20_0000,
            &[
                (0x20_0000, 0x20_0000, &code, 0x1000),
                (0x20_0800, 0x20_0800, b"", 0x10),
            ],
        );
        assert_eq!(
            plan_err(&img),
            LoadError::SegmentNotRam(Range::new(0x20_0800, 0x20_0810))
        );
    }

    #[test]
    fn reports_no_room_for_modules() {
        let small = [MemoryRegion {
            base: 0x10_0000,
            len: 0x4000,
            kind: 1,
        }];
        let img = kernel();
        let big = vec![0u8; 0x2000];
        let e = plan(
            &img,
            "",
            &[ModuleImage {
                data: &big,
                cmdline: "",
            }],
            &small,
        )
        .unwrap_err();
        assert_eq!(
            e,
            LoadError::NoRoom {
                what: "a module",
                size: 0x2000
            }
        );
    }
}
