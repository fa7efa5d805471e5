//! The translation structures a VT-d unit walks in legacy mode (VT-d
//! specification 4.1, §9): a root table (one entry per bus) pointing at a
//! context table (one entry per device and function), whose entries
//! point at second-level page tables.
//!
//! The second-level tables are built by `mm::paging`'s mapper, the one
//! that builds EPT01; the formats differ only in spelling (§9.8): an
//! entry is present when Read or Write is set (EPT: any of Read, Write,
//! Execute), leaves carry no memory type (EPT: bits 5:3 and ignore-PAT;
//! VT-d legacy mode takes the type from elsewhere), and there is no
//! execute permission (DMA does not execute). Large leaves set bit 7 in
//! both.

use crate::mm::paging::{Format, PageSize, TableMemory, ADDR_MASK};

const READ: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
const PAGE_SIZE: u64 = 1 << 7;

/// VT-d second-level paging entries.
pub struct SecondLevel;

impl Format for SecondLevel {
    type Attr = ();
    fn table_entry(&self, next: u64) -> u64 {
        next | READ | WRITE
    }
    fn leaf(&self, pa: u64, size: PageSize, _: ()) -> u64 {
        let large = if size == PageSize::Size4K {
            0
        } else {
            PAGE_SIZE
        };
        pa | READ | WRITE | large
    }
    fn is_present(&self, entry: u64) -> bool {
        entry & (READ | WRITE) != 0
    }
}

/// The depth of the second-level tables a context entry names: its AW
/// field (§9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressWidth {
    /// 39 bits, 3 levels: the root is the tree's first level-3 table.
    Bits39 = 1,
    /// 48 bits, 4 levels: the whole tree.
    Bits48 = 2,
}

/// The domain every device is put in (0 is reserved when the unit caches
/// not-present entries, CAP.CM).
pub const DOMAIN: u64 = 1;

/// Context entry (§9.3), low word: present, translation type 00
/// (untranslated requests through second-level tables; translated and
/// translation requests blocked: no ATS), the table's address.
pub fn context_entry(slpt: u64, aw: AddressWidth) -> [u64; 2] {
    [slpt & ADDR_MASK | 1, aw as u64 | DOMAIN << 8]
}

/// Root entry (§9.1): present, the context table's address.
pub fn root_entry(context_table: u64) -> [u64; 2] {
    [context_table & ADDR_MASK | 1, 0]
}

/// The table a unit of width `aw` starts its walks at, in the 4-level
/// tree at `pml4`; None when a 39-bit unit cannot reach every mapping
/// (something is mapped at or above 512 GiB).
pub fn walk_root<M: TableMemory>(mem: &mut M, pml4: u64, aw: AddressWidth) -> Option<u64> {
    match aw {
        AddressWidth::Bits48 => Some(pml4),
        AddressWidth::Bits39 => {
            let t = mem.table(pml4);
            if t[1..].iter().any(|&e| SecondLevel.is_present(e)) {
                return None;
            }
            SecondLevel.is_present(t[0]).then_some(t[0] & ADDR_MASK)
        }
    }
}

/// A root table whose every bus points at one context table whose every
/// device points at `slpt`: all devices get the same translation.
pub fn root_table<M: TableMemory>(mem: &mut M, slpt: u64, aw: AddressWidth) -> Option<u64> {
    let (root, context) = (mem.alloc_table()?, mem.alloc_table()?);
    let fill = |t: &mut [u64; 512], e: [u64; 2]| {
        for pair in t.chunks_exact_mut(2) {
            pair.copy_from_slice(&e);
        }
    };
    fill(mem.table(context), context_entry(slpt, aw));
    fill(mem.table(root), root_entry(context));
    Some(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::paging::{map, tests::FakeTables, translate};

    #[test]
    fn entries_are_spelled_as_the_spec_says() {
        assert_eq!(SecondLevel.table_entry(0x5000), 0x5003);
        assert_eq!(
            SecondLevel.leaf(0x4000_0000, PageSize::Size1G, ()),
            0x4000_0083
        );
        assert_eq!(SecondLevel.leaf(0x7000, PageSize::Size4K, ()), 0x7003);
        assert!(
            !SecondLevel.is_present(0x7004),
            "execute alone is not present"
        );
        assert_eq!(
            context_entry(0x1234_5000, AddressWidth::Bits48),
            [0x1234_5001, 0x102],
            "P, TT=00; AW=2, DID=1"
        );
        assert_eq!(context_entry(0x8000, AddressWidth::Bits39)[1], 0x101);
        assert_eq!(root_entry(0x9000), [0x9001, 0]);
    }

    #[test]
    fn every_device_gets_the_domain() {
        let mut m = FakeTables::default();
        let slpt = m.new_root();
        let root = root_table(&mut m, slpt, AddressWidth::Bits48).unwrap();
        let rt = *m.table(root);
        let context = rt[0] & ADDR_MASK;
        for bus in 0..256 {
            assert_eq!(
                [rt[2 * bus], rt[2 * bus + 1]],
                root_entry(context),
                "bus {bus}"
            );
        }
        let ct = *m.table(context);
        for devfn in 0..256 {
            assert_eq!(
                [ct[2 * devfn], ct[2 * devfn + 1]],
                context_entry(slpt, AddressWidth::Bits48)
            );
        }
        m.limit = Some(m.tables.len() + 1);
        assert_eq!(
            root_table(&mut m, slpt, AddressWidth::Bits48),
            None,
            "out of frames"
        );
    }

    #[test]
    fn a_39_bit_unit_walks_from_the_first_level_3_table() {
        let mut m = FakeTables::default();
        let pml4 = m.new_root();
        map(
            &mut m,
            &SecondLevel,
            pml4,
            0,
            0,
            1 << 30,
            (),
            PageSize::Size1G,
        )
        .unwrap();
        let l3 = walk_root(&mut m, pml4, AddressWidth::Bits39).unwrap();
        assert_eq!(m.table(l3)[0], 0x83, "1 GiB at 0, read and write");
        assert_eq!(walk_root(&mut m, pml4, AddressWidth::Bits48), Some(pml4));
        let at = 1u64 << 39;
        map(
            &mut m,
            &SecondLevel,
            pml4,
            at,
            at,
            1 << 21,
            (),
            PageSize::Size2M,
        )
        .unwrap();
        assert_eq!(walk_root(&mut m, pml4, AddressWidth::Bits39), None);
        let leaf = translate(&mut m, &SecondLevel, pml4, at + 0x1234).unwrap();
        assert_eq!((leaf.pa, leaf.size), (at + 0x1234, PageSize::Size2M));
    }
}
