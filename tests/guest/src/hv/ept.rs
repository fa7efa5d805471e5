//! EPT12: the 4-level EPT paging structures L1 builds for L2 (SDM 29.3.2).
//! Plain arithmetic over a [`Tables`] memory so the host tests can check
//! the format.

pub const R: u64 = 1;
pub const W: u64 = 2;
pub const X: u64 = 4;
pub const RWX: u64 = R | W | X;
/// Bit 7 of a PDE: this entry maps a 2 MiB page.
pub const LARGE: u64 = 1 << 7;
/// Accessed and dirty flags (with EPTP bit 6, SDM 29.3.5).
pub const ACCESSED: u64 = 1 << 8;
pub const DIRTY: u64 = 1 << 9;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Where the paging structures live.
pub trait Tables {
    /// A zeroed page.
    fn alloc(&mut self) -> u64;
    fn read(&self, pa: u64) -> u64;
    fn write(&mut self, pa: u64, v: u64);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    K4,
    M2,
}

pub struct Ept {
    pub root: u64,
    memtype: u64,
}

fn index(gpa: u64, level: u32) -> u64 {
    gpa >> (12 + 9 * (level - 1)) & 0x1ff
}

impl Ept {
    /// An empty hierarchy whose leaves get memory type `memtype` (6 = WB).
    pub fn new(t: &mut impl Tables, memtype: u64) -> Ept {
        Ept {
            root: t.alloc(),
            memtype,
        }
    }

    /// The EPT pointer (SDM 25.6.11): memory type of the structures,
    /// page-walk length 4 (encoded 3), A/D flags on request.
    pub fn eptp(&self, ad: bool) -> u64 {
        self.root | self.memtype | 3 << 3 | (ad as u64) << 6
    }

    /// The address of the entry at `level` (1 = PTE .. 4 = PML4E) for
    /// `gpa`, creating the tables above it (non-leaf entries are RWX).
    fn slot(&mut self, t: &mut impl Tables, gpa: u64, level: u32) -> u64 {
        let mut table = self.root;
        for l in (level + 1..=4).rev() {
            let e = table + 8 * index(gpa, l);
            let v = t.read(e);
            table = if v & RWX == 0 {
                let n = t.alloc();
                t.write(e, n | RWX);
                n
            } else {
                assert!(
                    v & LARGE == 0 || l == 4,
                    "EPT: {gpa:#x} is inside a large page"
                );
                v & ADDR
            };
        }
        table + 8 * index(gpa, level)
    }

    /// Maps `gpa` to `hpa` with the permission bits `perms`.
    pub fn map(&mut self, t: &mut impl Tables, gpa: u64, hpa: u64, size: Size, perms: u64) {
        let (level, large) = match size {
            Size::K4 => (1, 0),
            Size::M2 => (2, LARGE),
        };
        let e = self.slot(t, gpa, level);
        t.write(e, hpa | perms | self.memtype << 3 | large);
    }

    /// The leaf entry's address for `gpa` (4 KiB or 2 MiB), if mapped.
    pub fn leaf(&self, t: &impl Tables, gpa: u64) -> Option<u64> {
        let mut table = self.root;
        for l in (1..=4).rev() {
            let e = table + 8 * index(gpa, l);
            let v = t.read(e);
            if v & RWX == 0 {
                return None;
            }
            if l == 1 || (l == 2 && v & LARGE != 0) {
                return Some(e);
            }
            table = v & ADDR;
        }
        None
    }

    /// Rewrites the permission bits of `gpa`'s leaf; the old entry.
    pub fn set_perms(&self, t: &mut impl Tables, gpa: u64, perms: u64) -> Option<u64> {
        let e = self.leaf(t, gpa)?;
        let old = t.read(e);
        t.write(e, old & !RWX | perms);
        Some(old)
    }

    /// Removes `gpa`'s leaf; the old entry.
    pub fn unmap(&self, t: &mut impl Tables, gpa: u64) -> Option<u64> {
        let e = self.leaf(t, gpa)?;
        let old = t.read(e);
        t.write(e, 0);
        Some(old)
    }

    /// Puts back a leaf that [`Ept::unmap`] or [`Ept::set_perms`] returned.
    pub fn restore(&mut self, t: &mut impl Tables, gpa: u64, entry: u64) {
        let level = if entry & LARGE != 0 { 2 } else { 1 };
        let e = self.slot(t, gpa, level);
        t.write(e, entry);
    }
}

/// Exit qualification of an EPT violation (SDM 28.2.1), bits 0-8.
pub fn violation_qual(access: u64, allowed: u64, linear_valid: bool, translated: bool) -> u64 {
    access | allowed << 3 | (linear_valid as u64) << 7 | ((linear_valid && translated) as u64) << 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Mem {
        next: u64,
        words: HashMap<u64, u64>,
    }
    impl Tables for Mem {
        fn alloc(&mut self) -> u64 {
            self.next += 0x1000;
            0x10_0000 + self.next
        }
        fn read(&self, pa: u64) -> u64 {
            *self.words.get(&pa).unwrap_or(&0)
        }
        fn write(&mut self, pa: u64, v: u64) {
            self.words.insert(pa, v);
        }
    }

    #[test]
    fn maps_4k_and_2m() {
        let mut m = Mem::default();
        let mut e = Ept::new(&mut m, 6);
        assert_eq!(e.eptp(false), e.root | 0x1e);
        assert_eq!(e.eptp(true), e.root | 0x5e);
        e.map(&mut m, 0x6000, 0x123_4000, Size::K4, RWX);
        e.map(&mut m, 0x20_0000, 0x40_0000, Size::M2, R | W);
        let l = e.leaf(&m, 0x6abc).unwrap();
        assert_eq!(m.read(l), 0x123_4000 | 7 | 6 << 3);
        let b = e.leaf(&m, 0x3f_ffff).unwrap();
        assert_eq!(m.read(b), 0x40_0000 | 3 | 6 << 3 | LARGE);
        assert_eq!(e.leaf(&m, 0x80_0000), None);
        // PML4, PDPT, PD, one PT.
        assert_eq!(m.next, 4 * 0x1000);
        let old = e.set_perms(&mut m, 0x6000, R).unwrap();
        assert_eq!(m.read(l), 0x123_4000 | 1 | 6 << 3);
        e.restore(&mut m, 0x6000, old);
        assert_eq!(m.read(l) & 7, 7);
        e.unmap(&mut m, 0x6000);
        assert_eq!(e.leaf(&m, 0x6000), None);
    }

    #[test]
    fn violation_bits() {
        // A read of a not-present page, translated from a linear address.
        assert_eq!(violation_qual(R, 0, true, true), 0x181);
        // A write to a read-only page.
        assert_eq!(violation_qual(W, R, true, true), 0x18a);
        // A guest paging-structure access: bit 8 clear.
        assert_eq!(violation_qual(R, 0, true, false), 0x81);
    }
}
