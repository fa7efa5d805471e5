//! A 4-level radix-table mapper shared by L0's page tables and EPT.
//!
//! The two formats differ only in how an entry is spelled ([`Format`]); the
//! walking, allocation and choice of page sizes are one piece of code, run
//! on the host against [`tests::FakeTables`].

use core::fmt;

/// Sizes a leaf can map: level 1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PageSize {
    Size4K = 1,
    Size2M = 2,
    Size1G = 3,
}

impl PageSize {
    pub const fn bytes(self) -> u64 {
        1 << (12 + 9 * (self as u32 - 1))
    }
    pub const fn level(self) -> usize {
        self as usize
    }
}

/// Physical memory that holds tables.
pub trait TableMemory {
    /// A zeroed 4 KiB table; its physical address.
    fn alloc_table(&mut self) -> Option<u64>;
    /// The table at `phys`.
    fn table(&mut self, phys: u64) -> &mut [u64; 512];
    /// Returns a table no longer referenced.
    fn free_table(&mut self, phys: u64);
}

/// How entries of one table format are spelled.
pub trait Format {
    type Attr: Copy;
    /// A non-leaf entry pointing at the table at `next`.
    fn table_entry(&self, next: u64) -> u64;
    /// A leaf mapping `pa` at `size` with `attr`.
    fn leaf(&self, pa: u64, size: PageSize, attr: Self::Attr) -> u64;
    fn is_present(&self, entry: u64) -> bool;
    /// Whether a present entry at `level` (2 or 3) is a large leaf.
    fn is_large(&self, entry: u64) -> bool {
        entry & (1 << 7) != 0
    }
}

/// Bits 51:12 of an entry: the next table or the page.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Something is already mapped at this address.
    AlreadyMapped(u64),
    OutOfMemory,
    /// Address or length not 4 KiB aligned.
    Misaligned(u64),
    /// A table given as a shadow's root is none (an L0 bug).
    NotAShadowRoot(u64),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyMapped(a) => write!(f, "{a:#x} is already mapped"),
            Self::OutOfMemory => write!(f, "out of memory for page tables"),
            Self::Misaligned(a) => write!(f, "{a:#x} is not page aligned"),
            Self::NotAShadowRoot(a) => write!(f, "{a:#x} is not the root of a shadow table"),
        }
    }
}

fn index(va: u64, level: usize) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// A leaf found by [`translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub entry: u64,
    pub size: PageSize,
    /// The physical address `va` translates to.
    pub pa: u64,
}

/// Maps `[va, va + len)` to `[pa, pa + len)` with the largest pages up to
/// `max` that alignment allows.
pub fn map<M: TableMemory, F: Format>(
    mem: &mut M,
    fmt: &F,
    root: u64,
    mut va: u64,
    mut pa: u64,
    mut len: u64,
    attr: F::Attr,
    max: PageSize,
) -> Result<(), MapError> {
    for a in [va, pa, len] {
        if a % 4096 != 0 {
            return Err(MapError::Misaligned(a));
        }
    }
    while len > 0 {
        let size = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K]
            .into_iter()
            .find(|s| {
                *s <= max
                    && va.is_multiple_of(s.bytes())
                    && pa.is_multiple_of(s.bytes())
                    && len >= s.bytes()
            })
            .unwrap_or(PageSize::Size4K);
        map_one(mem, fmt, root, va, pa, size, attr)?;
        va += size.bytes();
        pa += size.bytes();
        len -= size.bytes();
    }
    Ok(())
}

fn map_one<M: TableMemory, F: Format>(
    mem: &mut M,
    fmt: &F,
    root: u64,
    va: u64,
    pa: u64,
    size: PageSize,
    attr: F::Attr,
) -> Result<(), MapError> {
    let mut table = root;
    for level in (size.level() + 1..=4).rev() {
        let i = index(va, level);
        let e = mem.table(table)[i];
        if !fmt.is_present(e) {
            let next = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
            mem.table(table)[i] = fmt.table_entry(next);
            table = next;
        } else if level <= 3 && fmt.is_large(e) {
            return Err(MapError::AlreadyMapped(va));
        } else {
            table = e & ADDR_MASK;
        }
    }
    let slot = &mut mem.table(table)[index(va, size.level())];
    if fmt.is_present(*slot) {
        return Err(MapError::AlreadyMapped(va));
    }
    *slot = fmt.leaf(pa, size, attr);
    Ok(())
}

/// Rewrites the 4 KiB leaf that maps `va` with `f`; false (and nothing
/// changed) if `va` is not mapped by a 4 KiB leaf.
pub fn update_leaf_4k<M: TableMemory, F: Format>(
    mem: &mut M,
    fmt: &F,
    root: u64,
    va: u64,
    f: impl FnOnce(u64) -> u64,
) -> bool {
    let mut table = root;
    for level in (2..=4).rev() {
        let e = mem.table(table)[index(va, level)];
        if !fmt.is_present(e) || (level <= 3 && fmt.is_large(e)) {
            return false;
        }
        table = e & ADDR_MASK;
    }
    let slot = &mut mem.table(table)[index(va, 1)];
    if !fmt.is_present(*slot) {
        return false;
    }
    *slot = f(*slot);
    true
}

/// Walks the tables for `va`.
pub fn translate<M: TableMemory, F: Format>(
    mem: &mut M,
    fmt: &F,
    root: u64,
    va: u64,
) -> Option<Leaf> {
    let mut table = root;
    for level in (1..=4).rev() {
        let e = mem.table(table)[index(va, level)];
        if !fmt.is_present(e) {
            return None;
        }
        let size = match level {
            1 => Some(PageSize::Size4K),
            2 if fmt.is_large(e) => Some(PageSize::Size2M),
            3 if fmt.is_large(e) => Some(PageSize::Size1G),
            _ => None,
        };
        if let Some(size) = size {
            let base = e & ADDR_MASK & !(size.bytes() - 1);
            return Some(Leaf {
                entry: e,
                size,
                pa: base + (va & (size.bytes() - 1)),
            });
        }
        table = e & ADDR_MASK;
    }
    None
}

/// L0's own page-table entries (SDM Vol. 3A 4.5).
pub struct Ia32e;

/// Attributes of an L0 mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageAttr {
    pub writable: bool,
    pub executable: bool,
    /// Uncacheable (PCD|PWT): memory-mapped device registers.
    pub uncached: bool,
}

pub const PTE_PRESENT: u64 = 1 << 0;
pub const PTE_WRITABLE: u64 = 1 << 1;
pub const PTE_PWT: u64 = 1 << 3;
pub const PTE_PCD: u64 = 1 << 4;
pub const PTE_LARGE: u64 = 1 << 7;
pub const PTE_GLOBAL: u64 = 1 << 8;
pub const PTE_NX: u64 = 1 << 63;

impl Format for Ia32e {
    type Attr = PageAttr;
    fn table_entry(&self, next: u64) -> u64 {
        next | PTE_PRESENT | PTE_WRITABLE
    }
    fn leaf(&self, pa: u64, size: PageSize, a: PageAttr) -> u64 {
        let mut e = pa | PTE_PRESENT | PTE_GLOBAL;
        if size != PageSize::Size4K {
            e |= PTE_LARGE;
        }
        if a.writable {
            e |= PTE_WRITABLE;
        }
        if !a.executable {
            e |= PTE_NX;
        }
        if a.uncached {
            e |= PTE_PWT | PTE_PCD;
        }
        e
    }
    fn is_present(&self, e: u64) -> bool {
        e & PTE_PRESENT != 0
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Tables in host memory under made-up physical addresses.
    #[derive(Default)]
    pub struct FakeTables {
        pub tables: BTreeMap<u64, Box<[u64; 512]>>,
        pub limit: Option<usize>,
        next: u64,
    }

    impl FakeTables {
        pub fn new_root(&mut self) -> u64 {
            self.alloc_table().unwrap()
        }
    }

    impl TableMemory for FakeTables {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.limit.is_some_and(|l| self.tables.len() >= l) {
                return None;
            }
            self.next += 1;
            let phys = 0x100_0000 + 0x1000 * self.next;
            self.tables.insert(phys, Box::new([0; 512]));
            Some(phys)
        }
        fn table(&mut self, phys: u64) -> &mut [u64; 512] {
            self.tables.get_mut(&phys).expect("no table there")
        }
        fn free_table(&mut self, phys: u64) {
            self.tables.remove(&phys).expect("freeing a table twice");
        }
    }

    const RW: PageAttr = PageAttr {
        writable: true,
        executable: false,
        uncached: false,
    };

    #[test]
    fn picks_largest_pages_alignment_allows() {
        let mut m = FakeTables::default();
        let root = m.new_root();
        // 4K..2M in 4K pages, 2M..1G in 2M pages, 1G..2G one 1G page, then 4K tail.
        map(
            &mut m,
            &Ia32e,
            root,
            0x1000,
            0x1000,
            (2 << 30) + 0x1000 - 0x1000,
            RW,
            PageSize::Size1G,
        )
        .unwrap();
        let l = translate(&mut m, &Ia32e, root, 0x5123).unwrap();
        assert_eq!((l.size, l.pa), (PageSize::Size4K, 0x5123));
        let l = translate(&mut m, &Ia32e, root, 0x40_0123).unwrap();
        assert_eq!((l.size, l.pa), (PageSize::Size2M, 0x40_0123));
        let l = translate(&mut m, &Ia32e, root, 0x4000_0123).unwrap();
        assert_eq!((l.size, l.pa), (PageSize::Size1G, 0x4000_0123));
        let l = translate(&mut m, &Ia32e, root, 0x8000_0000).unwrap();
        assert_eq!(l.size, PageSize::Size4K);
        assert!(translate(&mut m, &Ia32e, root, 0x8000_1000).is_none());
        assert!(translate(&mut m, &Ia32e, root, 0).is_none());
        assert_eq!(l.entry & PTE_NX, PTE_NX);
    }

    #[test]
    fn respects_max_page_size_and_offsets() {
        let mut m = FakeTables::default();
        let root = m.new_root();
        let va = 0xffff_ffff_8010_0000;
        map(
            &mut m,
            &Ia32e,
            root,
            va,
            0x1c00_0000,
            0x40_0000,
            RW,
            PageSize::Size4K,
        )
        .unwrap();
        let l = translate(&mut m, &Ia32e, root, va + 0x20_0010).unwrap();
        assert_eq!((l.size, l.pa), (PageSize::Size4K, 0x1c20_0010));
    }

    #[test]
    fn refuses_double_mapping_and_misalignment() {
        let mut m = FakeTables::default();
        let root = m.new_root();
        map(&mut m, &Ia32e, root, 0, 0, 0x20_0000, RW, PageSize::Size2M).unwrap();
        assert_eq!(
            map(
                &mut m,
                &Ia32e,
                root,
                0x1000,
                0,
                0x1000,
                RW,
                PageSize::Size4K
            ),
            Err(MapError::AlreadyMapped(0x1000))
        );
        assert_eq!(
            map(
                &mut m,
                &Ia32e,
                root,
                0x20_0800,
                0,
                0x1000,
                RW,
                PageSize::Size4K
            ),
            Err(MapError::Misaligned(0x20_0800))
        );
    }

    #[test]
    fn reports_out_of_memory() {
        let mut m = FakeTables {
            limit: Some(3),
            ..Default::default()
        };
        let root = m.new_root();
        assert_eq!(
            map(&mut m, &Ia32e, root, 0, 0, 0x1000, RW, PageSize::Size4K),
            Err(MapError::OutOfMemory)
        );
    }
}
