//! EPT paging-structure entries (SDM Vol. 3C 29.3.2) and the EPT pointer
//! (SDM 25.6.11), as a [`Format`] for the shared table mapper.

use crate::mm::layout::MemType;
use crate::mm::paging::{Format, PageSize};

pub const READ: u64 = 1 << 0;
pub const WRITE: u64 = 1 << 1;
pub const EXECUTE: u64 = 1 << 2;
pub const RWX: u64 = READ | WRITE | EXECUTE;
pub const IGNORE_PAT: u64 = 1 << 6;
pub const LARGE: u64 = 1 << 7;

/// Attributes of an EPT leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptAttr {
    /// READ | WRITE | EXECUTE bits.
    pub perms: u64,
    pub mem_type: MemType,
}

/// Entry format of EPT paging structures.
pub struct Ept;

impl Format for Ept {
    type Attr = EptAttr;
    fn table_entry(&self, next: u64) -> u64 {
        // Permissions are intersected down the walk: tables allow everything.
        next | RWX
    }
    fn leaf(&self, pa: u64, size: PageSize, a: EptAttr) -> u64 {
        let large = if size == PageSize::Size4K { 0 } else { LARGE };
        pa | (a.perms & RWX) | (a.mem_type as u64) << 3 | large
    }
    fn is_present(&self, e: u64) -> bool {
        // Not-present means bits 2:0 clear (SDM 29.3.2).
        e & RWX != 0
    }
}

/// An EPT pointer for a 4-level structure at `root`, write-back, with A/D
/// flags only if asked.
pub fn eptp(root: u64, accessed_dirty: bool) -> u64 {
    root | 6 | (4 - 1) << 3 | if accessed_dirty { 1 << 6 } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::paging::{map, tests::FakeTables, translate};

    #[test]
    fn leaves_carry_type_and_permissions() {
        let mut m = FakeTables::default();
        let root = m.new_root();
        let wb = EptAttr {
            perms: RWX,
            mem_type: MemType::WriteBack,
        };
        let uc = EptAttr {
            perms: READ | WRITE,
            mem_type: MemType::Uncacheable,
        };
        map(&mut m, &Ept, root, 0, 0, 0x40_0000, wb, PageSize::Size1G).unwrap();
        map(
            &mut m,
            &Ept,
            root,
            0xfee0_0000,
            0xfee0_0000,
            0x1000,
            uc,
            PageSize::Size1G,
        )
        .unwrap();
        let l = translate(&mut m, &Ept, root, 0x20_1234).unwrap();
        assert_eq!(l.entry, 0x20_0000 | 0x7 | 6 << 3 | LARGE);
        assert_eq!(l.pa, 0x20_1234);
        let l = translate(&mut m, &Ept, root, 0xfee0_0030).unwrap();
        assert_eq!(l.entry, 0xfee0_0000 | 0x3);
        assert_eq!(l.size, PageSize::Size4K);
    }

    #[test]
    fn eptp_encoding() {
        assert_eq!(eptp(0x1234_5000, false), 0x1234_501e);
        assert_eq!(eptp(0x1234_5000, true), 0x1234_505e);
    }
}
