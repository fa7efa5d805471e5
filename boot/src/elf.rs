//! The loadable segments of ELF32/ELF64 x86 images (System V gABI), enough
//! to load a multiboot kernel by physical address as GRUB does.

use core::fmt;

/// Why an ELF image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    NotElf,
    /// Not little-endian x86 / x86-64 of a class we know.
    Unsupported {
        class: u8,
        machine: u16,
    },
    /// Header or program header table out of bounds.
    Truncated,
    /// A segment's file range is outside the image or memsz < filesz.
    BadSegment {
        index: usize,
    },
    /// No PT_LOAD segment.
    NothingToLoad,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotElf => write!(f, "not an ELF image"),
            Self::Unsupported { class, machine } => {
                write!(
                    f,
                    "ELF class {class} machine {machine} is not little-endian x86/x86-64"
                )
            }
            Self::Truncated => write!(f, "ELF headers run past the end of the image"),
            Self::BadSegment { index } => write!(f, "ELF program header {index} is inconsistent"),
            Self::NothingToLoad => write!(f, "ELF image has no loadable segment"),
        }
    }
}

/// A PT_LOAD segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// A validated ELF image.
#[derive(Clone, Copy, Debug)]
pub struct Elf<'a> {
    image: &'a [u8],
    is64: bool,
    entry: u64,
    phoff: usize,
    phentsize: usize,
    phnum: usize,
}

const PT_LOAD: u32 = 1;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

fn rd<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N], ElfError> {
    b.get(off..off + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(ElfError::Truncated)
}
fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    rd::<2>(b, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    rd::<4>(b, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    rd::<8>(b, off).map(u64::from_le_bytes)
}

impl<'a> Elf<'a> {
    pub fn parse(image: &'a [u8]) -> Result<Self, ElfError> {
        if image.get(0..4) != Some(b"\x7fELF") {
            return Err(ElfError::NotElf);
        }
        let class = *image.get(4).ok_or(ElfError::Truncated)?;
        let data = *image.get(5).ok_or(ElfError::Truncated)?;
        let machine = u16_at(image, 18)?;
        let is64 = match (class, data, machine) {
            (1, 1, EM_386) => false,
            (2, 1, EM_X86_64) => true,
            _ => return Err(ElfError::Unsupported { class, machine }),
        };
        let (entry, phoff, phentsize, phnum) = if is64 {
            (
                u64_at(image, 24)?,
                u64_at(image, 32)?,
                u16_at(image, 54)?,
                u16_at(image, 56)?,
            )
        } else {
            (
                u32_at(image, 24)? as u64,
                u32_at(image, 28)? as u64,
                u16_at(image, 42)?,
                u16_at(image, 44)?,
            )
        };
        let min_ent = if is64 { 56 } else { 32 };
        if (phentsize as usize) < min_ent {
            return Err(ElfError::Truncated);
        }
        let table_end = (phnum as u64)
            .checked_mul(phentsize as u64)
            .and_then(|n| n.checked_add(phoff));
        if table_end.is_none_or(|e| e > image.len() as u64) {
            return Err(ElfError::Truncated);
        }
        let elf = Elf {
            image,
            is64,
            entry,
            phoff: phoff as usize,
            phentsize: phentsize as usize,
            phnum: phnum as usize,
        };
        let mut any = false;
        for (index, seg) in elf.raw_segments().enumerate() {
            let Some(seg) = seg? else { continue };
            let file_end = seg.offset.checked_add(seg.filesz);
            if file_end.is_none_or(|e| e > image.len() as u64)
                || seg.memsz < seg.filesz
                || seg.paddr.checked_add(seg.memsz).is_none()
                || seg.vaddr.checked_add(seg.memsz).is_none()
            {
                return Err(ElfError::BadSegment { index });
            }
            any |= seg.memsz > 0;
        }
        if !any {
            return Err(ElfError::NothingToLoad);
        }
        Ok(elf)
    }

    fn raw_segments(&self) -> impl Iterator<Item = Result<Option<Segment>, ElfError>> + '_ {
        (0..self.phnum).map(move |i| {
            let p = self.phoff + i * self.phentsize;
            let b = self.image;
            if u32_at(b, p)? != PT_LOAD {
                return Ok(None);
            }
            Ok(Some(if self.is64 {
                Segment {
                    offset: u64_at(b, p + 8)?,
                    vaddr: u64_at(b, p + 16)?,
                    paddr: u64_at(b, p + 24)?,
                    filesz: u64_at(b, p + 32)?,
                    memsz: u64_at(b, p + 40)?,
                }
            } else {
                Segment {
                    offset: u32_at(b, p + 4)? as u64,
                    vaddr: u32_at(b, p + 8)? as u64,
                    paddr: u32_at(b, p + 12)? as u64,
                    filesz: u32_at(b, p + 16)? as u64,
                    memsz: u32_at(b, p + 20)? as u64,
                }
            }))
        })
    }

    /// The PT_LOAD segments (validated in [`Elf::parse`]).
    pub fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        self.raw_segments().filter_map(|s| s.ok().flatten())
    }

    pub fn is64(&self) -> bool {
        self.is64
    }

    /// The entry point as a physical address: e_entry translated through
    /// the segment whose virtual range holds it (GRUB does the same).
    pub fn physical_entry(&self) -> u64 {
        self.segments()
            .find(|s| s.vaddr <= self.entry && self.entry < s.vaddr + s.memsz)
            .map_or(self.entry, |s| self.entry - s.vaddr + s.paddr)
    }

    pub fn image(&self) -> &'a [u8] {
        self.image
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 image with the given (paddr, vaddr, file bytes, memsz) segments.
    pub fn elf64(entry: u64, segs: &[(u64, u64, &[u8], u64)]) -> Vec<u8> {
        let mut img = vec![0u8; 64 + 56 * segs.len()];
        img[0..4].copy_from_slice(b"\x7fELF");
        img[4] = 2;
        img[5] = 1;
        img[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        img[24..32].copy_from_slice(&entry.to_le_bytes());
        img[32..40].copy_from_slice(&64u64.to_le_bytes());
        img[54..56].copy_from_slice(&56u16.to_le_bytes());
        img[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, &(paddr, vaddr, bytes, memsz)) in segs.iter().enumerate() {
            let off = img.len() as u64;
            let p = 64 + 56 * i;
            img[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            img[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            img[p + 16..p + 24].copy_from_slice(&vaddr.to_le_bytes());
            img[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
            img[p + 32..p + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            img[p + 40..p + 48].copy_from_slice(&memsz.to_le_bytes());
            img.extend_from_slice(bytes);
        }
        img
    }

    /// The same as ELF32 (i386), as kvm-unit-tests' multiboot images are.
    pub fn elf32(entry: u32, segs: &[(u32, u32, &[u8], u32)]) -> Vec<u8> {
        let mut img = vec![0u8; 52 + 32 * segs.len()];
        img[0..4].copy_from_slice(b"\x7fELF");
        img[4] = 1;
        img[5] = 1;
        img[18..20].copy_from_slice(&EM_386.to_le_bytes());
        img[24..28].copy_from_slice(&entry.to_le_bytes());
        img[28..32].copy_from_slice(&52u32.to_le_bytes());
        img[42..44].copy_from_slice(&32u16.to_le_bytes());
        img[44..46].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, &(paddr, vaddr, bytes, memsz)) in segs.iter().enumerate() {
            let off = img.len() as u32;
            let p = 52 + 32 * i;
            img[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            img[p + 4..p + 8].copy_from_slice(&off.to_le_bytes());
            img[p + 8..p + 12].copy_from_slice(&vaddr.to_le_bytes());
            img[p + 12..p + 16].copy_from_slice(&paddr.to_le_bytes());
            img[p + 16..p + 20].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            img[p + 20..p + 24].copy_from_slice(&memsz.to_le_bytes());
            img.extend_from_slice(bytes);
        }
        img
    }

    #[test]
    fn parses_elf64_segments_and_entry() {
        let img = elf64(
            0xffff_8000_0100_0010,
            &[(0x100_0000, 0xffff_8000_0100_0000, b"code", 0x2000)],
        );
        let elf = Elf::parse(&img).unwrap();
        assert!(elf.is64());
        let s: Vec<_> = elf.segments().collect();
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].paddr, s[0].filesz, s[0].memsz),
            (0x100_0000, 4, 0x2000)
        );
        assert_eq!(elf.physical_entry(), 0x100_0010);
    }

    #[test]
    fn parses_elf32() {
        let img = elf32(0x40_0000, &[(0x40_0000, 0x40_0000, b"abcd", 4)]);
        let elf = Elf::parse(&img).unwrap();
        assert!(!elf.is64());
        assert_eq!(elf.physical_entry(), 0x40_0000);
    }

    #[test]
    fn rejects_bad_images() {
        assert_eq!(Elf::parse(b"MZ").unwrap_err(), ElfError::NotElf);
        let mut img = elf64(0, &[(0x1000, 0x1000, b"x", 1)]);
        img[18] = 40; // ARM
        assert!(matches!(
            Elf::parse(&img).unwrap_err(),
            ElfError::Unsupported { .. }
        ));
        let img = elf64(0, &[(0x1000, 0x1000, b"x", 0)]);
        assert_eq!(
            Elf::parse(&img).unwrap_err(),
            ElfError::BadSegment { index: 0 }
        );
        let img = elf64(0, &[(0x1000, 0x1000, b"xyz", 3)]);
        assert_eq!(
            Elf::parse(&img[..img.len() - 1]).unwrap_err(),
            ElfError::BadSegment { index: 0 }
        );
        assert_eq!(Elf::parse(&img[..70]).unwrap_err(), ElfError::Truncated);
        let img = elf64(0, &[]);
        assert_eq!(Elf::parse(&img).unwrap_err(), ElfError::NothingToLoad);
    }

    #[test]
    fn garbage_never_panics() {
        let img = elf64(
            0x1000,
            &[
                (0x1000, 0x1000, b"hello", 0x10),
                (0x3000, 0x3000, b"", 0x10),
            ],
        );
        let mut x = 0xdead_beefu32;
        for _ in 0..5000 {
            let mut c = img.clone();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = x as usize % c.len();
            c[i] = (x >> 8) as u8;
            if let Ok(e) = Elf::parse(&c) {
                let _ = e.segments().count();
                let _ = e.physical_entry();
            }
        }
    }
}
