//! Multiboot2 boot information (Multiboot2 specification 1.0, section 3.6).
//!
//! [`BootInfo::parse`] walks every tag once and validates it, so the
//! accessors afterwards cannot fail: a malformed structure is reported
//! as a [`ParseError`] before L0 relies on any of it.

use core::fmt;

/// Value in EAX when a multiboot2 loader enters the kernel.
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;
/// Magic at the start of the multiboot2 header in the kernel image.
pub const HEADER_MAGIC: u32 = 0xe852_50d6;

const TAG_END: u32 = 0;
const TAG_CMDLINE: u32 = 1;
const TAG_LOADER_NAME: u32 = 2;
const TAG_MODULE: u32 = 3;
const TAG_MMAP: u32 = 6;
const TAG_ACPI_OLD: u32 = 14;
const TAG_ACPI_NEW: u32 = 15;

/// Memory map entry types (spec 3.6.8).
pub const MEMORY_AVAILABLE: u32 = 1;
/// Usable after the ACPI tables are read.
pub const MEMORY_ACPI_RECLAIMABLE: u32 = 3;
/// Must be preserved across hibernation.
pub const MEMORY_NVS: u32 = 4;
/// Defective RAM.
pub const MEMORY_BAD: u32 = 5;

/// Why the boot information was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// EAX did not hold the multiboot2 magic: not started by a multiboot2 loader.
    BadMagic(u32),
    /// The info pointer is null or not 8-byte aligned.
    BadPointer(u64),
    /// total_size is smaller than the fixed part or larger than the bound we accept.
    BadTotalSize(u32),
    /// A tag at this offset runs past the end or is shorter than its type needs.
    BadTag { offset: usize, tag: u32, size: u32 },
    /// No end tag before total_size.
    MissingEnd,
    /// The memory map tag is absent.
    MissingMemoryMap,
    /// The memory map's entry_size is too small or the tag is not a whole number of entries.
    BadMemoryMap { entry_size: u32 },
    /// A module's end is before its start.
    BadModule { start: u32, end: u32 },
    /// A string tag is not NUL-terminated UTF-8.
    BadString { tag: u32 },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadMagic(m) => write!(
                f,
                "boot magic {m:#x} is not multiboot2's {BOOTLOADER_MAGIC:#x}: boot L0 with GRUB's `multiboot2` command"
            ),
            Self::BadPointer(p) => write!(f, "boot information pointer {p:#x} is null or misaligned"),
            Self::BadTotalSize(s) => write!(f, "boot information total_size {s} is out of range"),
            Self::BadTag { offset, tag, size } => {
                write!(f, "boot information tag type {tag} at offset {offset} has bad size {size}")
            }
            Self::MissingEnd => write!(f, "boot information has no end tag"),
            Self::MissingMemoryMap => write!(f, "boot information has no memory map (tag 6)"),
            Self::BadMemoryMap { entry_size } => {
                write!(f, "memory map tag has unusable entry_size {entry_size}")
            }
            Self::BadModule { start, end } => {
                write!(f, "module [{start:#x}, {end:#x}) ends before it starts")
            }
            Self::BadString { tag } => write!(f, "string in tag type {tag} is not NUL-terminated UTF-8"),
        }
    }
}

/// Upper bound on the boot information we accept; GRUB's is a few KiB.
pub const MAX_TOTAL_SIZE: u32 = 1 << 20;

/// One entry of the firmware memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub base: u64,
    pub len: u64,
    pub kind: u32,
}

/// A boot module: its physical range and the command line GRUB gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module<'a> {
    pub start: u32,
    pub end: u32,
    pub cmdline: &'a str,
}

/// Validated view of the multiboot2 information structure.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo<'a> {
    bytes: &'a [u8],
    cmdline: &'a str,
    loader_name: &'a str,
    mmap: (usize, usize, usize), // offset of first entry, entry count, entry size
    rsdp: Option<&'a [u8]>,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn c_str(bytes: &[u8], tag: u32) -> Result<&str, ParseError> {
    let nul = bytes
        .iter()
        .position(|&c| c == 0)
        .ok_or(ParseError::BadString { tag })?;
    core::str::from_utf8(&bytes[..nul]).map_err(|_| ParseError::BadString { tag })
}

/// Reads total_size from the first word of the structure at `ptr`, so the
/// caller can build the slice to hand to [`BootInfo::parse`].
///
/// # Safety
/// `ptr` must point to readable memory of at least 8 bytes.
pub unsafe fn total_size_at(ptr: *const u8) -> u32 {
    // SAFETY: the caller guarantees 8 readable bytes.
    unsafe { core::ptr::read_unaligned(ptr as *const u32) }
}

/// Checks the entry magic and pointer that the loader passed in EAX/EBX.
pub fn check_entry(magic: u32, info: u64) -> Result<(), ParseError> {
    if magic != BOOTLOADER_MAGIC {
        return Err(ParseError::BadMagic(magic));
    }
    if info == 0 || !info.is_multiple_of(8) {
        return Err(ParseError::BadPointer(info));
    }
    Ok(())
}

impl<'a> BootInfo<'a> {
    /// Validates the structure in `bytes` (exactly total_size bytes, or more).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        if bytes.len() < 8 {
            return Err(ParseError::BadTotalSize(bytes.len() as u32));
        }
        let total = u32_at(bytes, 0);
        if !(16..=MAX_TOTAL_SIZE).contains(&total) || total as usize > bytes.len() {
            return Err(ParseError::BadTotalSize(total));
        }
        let bytes = &bytes[..total as usize];
        let mut info = BootInfo {
            bytes,
            cmdline: "",
            loader_name: "",
            mmap: (0, 0, 0),
            rsdp: None,
        };
        let mut have_mmap = false;
        let mut off = 8usize;
        loop {
            if off + 8 > bytes.len() {
                return Err(ParseError::MissingEnd);
            }
            let tag = u32_at(bytes, off);
            let size = u32_at(bytes, off + 4);
            let bad = ParseError::BadTag {
                offset: off,
                tag,
                size,
            };
            let end = off.checked_add(size as usize).ok_or(bad)?;
            if size < 8 || end > bytes.len() {
                return Err(bad);
            }
            let body = &bytes[off + 8..end];
            match tag {
                TAG_END => {
                    if size != 8 {
                        return Err(bad);
                    }
                    break;
                }
                TAG_CMDLINE => info.cmdline = c_str(body, tag)?,
                TAG_LOADER_NAME => info.loader_name = c_str(body, tag)?,
                TAG_MODULE => {
                    if body.len() < 9 {
                        return Err(bad);
                    }
                    let (start, end) = (u32_at(body, 0), u32_at(body, 4));
                    if end < start {
                        return Err(ParseError::BadModule { start, end });
                    }
                    c_str(&body[8..], tag)?;
                }
                TAG_MMAP => {
                    if body.len() < 8 {
                        return Err(bad);
                    }
                    let entry_size = u32_at(body, 0);
                    let entries = body.len() - 8;
                    if entry_size < 24
                        || !entry_size.is_multiple_of(8)
                        || !entries.is_multiple_of(entry_size as usize)
                    {
                        return Err(ParseError::BadMemoryMap { entry_size });
                    }
                    info.mmap = (off + 16, entries / entry_size as usize, entry_size as usize);
                    have_mmap = true;
                }
                // Prefer the ACPI 2.0 RSDP when both are present.
                TAG_ACPI_OLD | TAG_ACPI_NEW if tag == TAG_ACPI_NEW || info.rsdp.is_none() => {
                    info.rsdp = Some(body);
                }
                _ => {} // Other tags (framebuffer, ELF sections, ...) are not used.
            }
            // Tags are padded to 8-byte alignment.
            off = (end + 7) & !7;
        }
        if !have_mmap {
            return Err(ParseError::MissingMemoryMap);
        }
        Ok(info)
    }

    /// The size of the structure in bytes (its frames are L0's until it is parsed).
    pub fn total_size(&self) -> usize {
        self.bytes.len()
    }

    /// L0's command line (without the kernel path).
    pub fn cmdline(&self) -> &'a str {
        self.cmdline
    }

    /// The loader's name, empty if absent.
    pub fn loader_name(&self) -> &'a str {
        self.loader_name
    }

    /// The ACPI RSDP as copied by the loader, if it gave one.
    pub fn rsdp(&self) -> Option<&'a [u8]> {
        self.rsdp
    }

    /// The firmware memory map.
    pub fn memory_map(&self) -> impl Iterator<Item = MemoryRegion> + Clone + 'a {
        let (first, count, size) = self.mmap;
        let bytes = self.bytes;
        (0..count).map(move |i| {
            let e = first + i * size;
            MemoryRegion {
                base: u64_at(bytes, e),
                len: u64_at(bytes, e + 8),
                kind: u32_at(bytes, e + 16),
            }
        })
    }

    /// Boot modules in the order GRUB loaded them.
    pub fn modules(&self) -> impl Iterator<Item = Module<'a>> + 'a {
        let bytes = self.bytes;
        let mut off = 8usize;
        core::iter::from_fn(move || loop {
            let tag = u32_at(bytes, off);
            let size = u32_at(bytes, off + 4) as usize;
            if tag == TAG_END {
                return None;
            }
            let here = off;
            off = (off + size + 7) & !7;
            if tag == TAG_MODULE {
                let body = &bytes[here + 8..here + size];
                // Validated in parse().
                let cmdline = c_str(&body[8..], tag).unwrap_or("");
                return Some(Module {
                    start: u32_at(body, 0),
                    end: u32_at(body, 4),
                    cmdline,
                });
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a multiboot2 information structure the way GRUB lays it out.
    #[derive(Default)]
    pub struct Builder {
        tags: Vec<u8>,
    }

    impl Builder {
        pub fn tag(mut self, tag: u32, body: &[u8]) -> Self {
            self.tags.extend_from_slice(&tag.to_le_bytes());
            self.tags
                .extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
            self.tags.extend_from_slice(body);
            while !self.tags.len().is_multiple_of(8) {
                self.tags.push(0);
            }
            self
        }
        pub fn cmdline(self, s: &str) -> Self {
            let mut b = s.as_bytes().to_vec();
            b.push(0);
            self.tag(TAG_CMDLINE, &b)
        }
        pub fn module(self, start: u32, end: u32, s: &str) -> Self {
            let mut b = Vec::new();
            b.extend_from_slice(&start.to_le_bytes());
            b.extend_from_slice(&end.to_le_bytes());
            b.extend_from_slice(s.as_bytes());
            b.push(0);
            self.tag(TAG_MODULE, &b)
        }
        pub fn mmap(self, regions: &[(u64, u64, u32)]) -> Self {
            let mut b = Vec::new();
            b.extend_from_slice(&24u32.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            for &(base, len, kind) in regions {
                b.extend_from_slice(&base.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
                b.extend_from_slice(&kind.to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
            }
            self.tag(TAG_MMAP, &b)
        }
        pub fn build(self) -> Vec<u8> {
            let s = self.tag(TAG_END, &[]);
            let mut out = Vec::new();
            out.extend_from_slice(&(8 + s.tags.len() as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&s.tags);
            out
        }
    }

    pub fn bochs_map() -> [(u64, u64, u32); 3] {
        [
            (0, 0x9f000, 1),
            (0x9f000, 0x1000, 2),
            (0x10_0000, 0x1fef_0000, 1),
        ]
    }

    #[test]
    fn parses_grub_like_info() {
        let b = Builder::default()
            .cmdline("serial=com2 loglevel=debug")
            .module(0x20_0000, 0x20_1234, "l1=multiboot test=boot")
            .module(0x20_2000, 0x20_2000, "l1.module")
            .mmap(&bochs_map())
            .build();
        let info = BootInfo::parse(&b).unwrap();
        assert_eq!(info.cmdline(), "serial=com2 loglevel=debug");
        let mods: Vec<_> = info.modules().collect();
        assert_eq!(mods.len(), 2);
        assert_eq!(
            mods[0],
            Module {
                start: 0x20_0000,
                end: 0x20_1234,
                cmdline: "l1=multiboot test=boot"
            }
        );
        assert_eq!(mods[1].cmdline, "l1.module");
        let map: Vec<_> = info.memory_map().collect();
        assert_eq!(map.len(), 3);
        assert_eq!(
            map[2],
            MemoryRegion {
                base: 0x10_0000,
                len: 0x1fef_0000,
                kind: 1
            }
        );
    }

    #[test]
    fn missing_memory_map_is_an_error() {
        let b = Builder::default().cmdline("x").build();
        assert_eq!(
            BootInfo::parse(&b).unwrap_err(),
            ParseError::MissingMemoryMap
        );
    }

    #[test]
    fn truncated_structure_is_an_error() {
        let b = Builder::default().mmap(&bochs_map()).build();
        // total_size says more than the slice holds.
        assert_eq!(
            BootInfo::parse(&b[..b.len() - 8]).unwrap_err(),
            ParseError::BadTotalSize(b.len() as u32)
        );
        // No end tag within total_size.
        let mut c = b.clone();
        let n = (c.len() - 8) as u32;
        c[0..4].copy_from_slice(&n.to_le_bytes());
        assert_eq!(BootInfo::parse(&c).unwrap_err(), ParseError::MissingEnd);
    }

    #[test]
    fn tag_running_past_the_end_is_an_error() {
        let mut b = Builder::default().cmdline("abc").mmap(&bochs_map()).build();
        b[12..16].copy_from_slice(&0x1000u32.to_le_bytes()); // cmdline tag size
        assert!(matches!(
            BootInfo::parse(&b).unwrap_err(),
            ParseError::BadTag {
                offset: 8,
                tag: 1,
                ..
            }
        ));
    }

    #[test]
    fn unterminated_string_is_an_error() {
        // The padding after a tag is not part of it: "abc" needs its own NUL.
        let b = Builder::default()
            .tag(TAG_CMDLINE, b"abc")
            .mmap(&bochs_map())
            .build();
        assert_eq!(
            BootInfo::parse(&b).unwrap_err(),
            ParseError::BadString { tag: 1 }
        );
        let b = Builder::default()
            .tag(TAG_CMDLINE, b"ab\xffc\0")
            .mmap(&bochs_map())
            .build();
        assert_eq!(
            BootInfo::parse(&b).unwrap_err(),
            ParseError::BadString { tag: 1 }
        );
    }

    #[test]
    fn module_ending_before_start_is_an_error() {
        let b = Builder::default()
            .module(0x3000, 0x2000, "m")
            .mmap(&bochs_map())
            .build();
        assert_eq!(
            BootInfo::parse(&b).unwrap_err(),
            ParseError::BadModule {
                start: 0x3000,
                end: 0x2000
            }
        );
    }

    #[test]
    fn bad_mmap_entry_size_is_an_error() {
        let mut body = Vec::new();
        body.extend_from_slice(&20u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&[0; 20]);
        let b = Builder::default().tag(TAG_MMAP, &body).build();
        assert_eq!(
            BootInfo::parse(&b).unwrap_err(),
            ParseError::BadMemoryMap { entry_size: 20 }
        );
    }

    #[test]
    fn entry_checks() {
        assert!(check_entry(BOOTLOADER_MAGIC, 0x10000).is_ok());
        assert_eq!(
            check_entry(0x2badb002, 0x10000),
            Err(ParseError::BadMagic(0x2badb002))
        );
        assert_eq!(
            check_entry(BOOTLOADER_MAGIC, 0x10004),
            Err(ParseError::BadPointer(0x10004))
        );
        assert_eq!(
            check_entry(BOOTLOADER_MAGIC, 0),
            Err(ParseError::BadPointer(0))
        );
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: every prefix and many byte flips of a valid structure.
        let b = Builder::default()
            .cmdline("a=b")
            .module(1, 2, "m")
            .mmap(&bochs_map())
            .build();
        for n in 0..b.len() {
            let _ = BootInfo::parse(&b[..n]);
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..5000 {
            let mut c = b.clone();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = x as usize % c.len();
            c[i] = (x >> 8) as u8;
            if let Ok(info) = BootInfo::parse(&c) {
                let _ = info.modules().count();
                let _ = info.memory_map().count();
            }
        }
    }
}
