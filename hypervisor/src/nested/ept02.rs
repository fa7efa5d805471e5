//! EPT02 = EPT12 ∘ EPT01, built lazily: one shadow table per EPTP12 in a
//! small LRU cache, filled with 4 KiB leaves on L2's EPT violations, dropped
//! whole on INVEPT. L1 must INVEPT after changing EPT12 (SDM 29.4.3.1), so
//! EPT12 need not be write-protected.

use alloc::vec::Vec;

use boot::memmap::RangeSet;

use super::context::{Flow, NestedCtx, NestedHw};
use super::ept12::{self, Ept12Fault, EptAccess};
use super::VmcsSet;
use crate::guest_mem::GuestMemory;
use crate::mm::paging::{MapError, TableMemory, ADDR_MASK};
use crate::vmx::ept::{LARGE, RWX};
use crate::vmx::exit::{reason, ExitInfo};
use crate::vmx::{Field as F, Vmcs};

/// How many EPT12 roots keep a shadow at once (Xen keeps 10, XMHF a few).
pub const CAPACITY: usize = 8;

struct Entry {
    /// EPT12 root address (EPTP12 bits 51:12).
    root12: u64,
    root02: u64,
    last_use: u64,
}

#[derive(Default)]
pub struct Ept02Cache {
    entries: Vec<Entry>,
    clock: u64,
    /// The L2 address of the last violation reflected to L1, and how many
    /// times in a row: L1 resuming without changing EPT12 livelocks L2.
    reflected: (u64, u64),
}

/// Reflections of one violation in a row after which L0 says so.
const LIVELOCK: u64 = 10_000;

/// Frees a table and everything below it.
fn free_tree<M: TableMemory>(mem: &mut M, table: u64, level: usize) {
    if level > 1 {
        for i in 0..512 {
            let e = mem.table(table)[i];
            if e & RWX != 0 && e & LARGE == 0 {
                free_tree(mem, e & ADDR_MASK, level - 1);
            }
        }
    }
    mem.free_table(table);
}

impl Ept02Cache {
    /// The shadow root for `eptp12`, created (evicting the least recently
    /// used one if full) when absent. Returns (root, whether one was evicted).
    pub fn root_for<M: TableMemory>(
        &mut self,
        mem: &mut M,
        eptp12: u64,
    ) -> Result<(u64, bool), MapError> {
        self.clock += 1;
        let root12 = eptp12 & ADDR_MASK;
        if let Some(e) = self.entries.iter_mut().find(|e| e.root12 == root12) {
            e.last_use = self.clock;
            return Ok((e.root02, false));
        }
        let mut evicted = false;
        if self.entries.len() == CAPACITY {
            let (i, _) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_use)
                .unwrap();
            let old = self.entries.swap_remove(i);
            free_tree(mem, old.root02, 4);
            evicted = true;
        }
        let root02 = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        self.entries.push(Entry {
            root12,
            root02,
            last_use: self.clock,
        });
        Ok((root02, evicted))
    }

    /// Drops the shadow of one EPTP12 (INVEPT single-context) or all.
    /// Returns whether anything was dropped (the caller then flushes the
    /// hardware's cached translations).
    pub fn invalidate<M: TableMemory>(&mut self, mem: &mut M, eptp12: Option<u64>) -> bool {
        let before = self.entries.len();
        let mut kept = Vec::new();
        for e in self.entries.drain(..) {
            if eptp12.is_none_or(|p| p & ADDR_MASK == e.root12) {
                free_tree(mem, e.root02, 4);
            } else {
                kept.push(e);
            }
        }
        self.entries = kept;
        self.entries.len() != before
    }

    /// A violation at `gpa2` goes to L1; true the time it has gone
    /// [`LIVELOCK`] times in a row.
    fn note_reflected(&mut self, gpa2: u64) -> bool {
        let page = gpa2 & !0xfff;
        self.reflected = match self.reflected {
            (p, n) if p == page => (p, n + 1),
            _ => (page, 1),
        };
        self.reflected.1 == LIVELOCK
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Sets the 4 KiB leaf for `gpa2` in the shadow rooted at `root02`,
/// creating tables as needed and replacing an older leaf (permissions may
/// have grown since it was filled).
pub fn set_leaf<M: TableMemory>(
    mem: &mut M,
    root02: u64,
    gpa2: u64,
    leaf: u64,
) -> Result<(), MapError> {
    let mut table = root02;
    for level in (2..=4).rev() {
        let i = ((gpa2 >> (12 + 9 * (level - 1))) & 0x1ff) as usize;
        let e = mem.table(table)[i];
        table = if e & RWX == 0 {
            let next = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
            mem.table(table)[i] = next | RWX;
            next
        } else {
            e & ADDR_MASK
        };
    }
    mem.table(table)[((gpa2 >> 12) & 0x1ff) as usize] = leaf;
    Ok(())
}

/// The EPT02 leaf for a page: EPT12's permissions and memory type, made
/// uncacheable where EPT01 maps uncacheable memory (MMIO).
pub fn leaf(hpa: u64, perms12: u64, mem_type12: u8, ignore_pat: bool, uncached01: bool) -> u64 {
    let mt = if uncached01 { 0 } else { mem_type12 as u64 };
    (hpa & ADDR_MASK) | (perms12 & RWX) | mt << 3 | if ignore_pat { 1 << 6 } else { 0 }
}

/// What an EPT violation of L2 (with EPT12) comes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// EPT02 has the leaf now (or L0 cannot go on); L2 goes on.
    Filled(Flow),
    /// L1 gets this exit: EPT12 does not map the access (`unmapped`: a
    /// violation or a misconfiguration of EPT12), or maps it onto L0's
    /// frames (a misconfiguration L0 reports).
    Reflect { exit: ExitInfo, unmapped: bool },
}

impl<S: VmcsSet, H: NestedHw> NestedCtx<'_, S, H> {
    /// An EPT violation while L2 runs with EPT12 (VMCS02 current): the
    /// leaf EPT12 gives, checked against L0's frames (EPT01 leaves them
    /// out: an EPT12 leaf there is L1's misconfiguration), into EPT02.
    pub fn fill_ept02(&mut self, e: &ExitInfo, l0_frames: &RangeSet) -> Fill {
        let fill = self.fill_from_ept12(e, l0_frames);
        if let Fill::Reflect { exit, .. } = &fill {
            if self.nested.ept02.note_reflected(e.guest_physical) {
                log::warn!(
                    "L2's EPT violation at {:#x} (RIP {:#x}, qualification {:#x}) reflected to L1 {LIVELOCK} times in a row as exit {} (qualification {:#x}); EPTP12 {:#x}",
                    e.guest_physical,
                    self.vs.current().read(F::GUEST_RIP),
                    e.qualification,
                    exit.reason,
                    exit.qualification,
                    self.nested.vmx.vmcs12.get(F::EPT_POINTER)
                );
            }
        }
        fill
    }

    fn fill_from_ept12(&mut self, e: &ExitInfo, l0_frames: &RangeSet) -> Fill {
        let eptp12 = self.nested.vmx.vmcs12.get(F::EPT_POINTER);
        let access = EptAccess(e.qualification & 7);
        let walk = ept12::walk(
            self.hw.mem(),
            eptp12,
            e.guest_physical,
            access,
            &self.nested.vmx.caps,
            self.host.maxphyaddr,
        );
        let misconfig = ExitInfo {
            reason: reason::EPT_MISCONFIG as u32,
            qualification: 0,
            ..*e
        };
        match walk {
            Ok(l12) => {
                let page1 = l12.gpa & !0xfff;
                if l0_frames.contains(page1) {
                    // Never map L0's frames, whatever EPT12 says.
                    log::warn!("EPT12 maps L2 {:#x} to {page1:#x}, which is not L1's: reflected as a misconfiguration", e.guest_physical);
                    return Fill::Reflect {
                        exit: misconfig,
                        unmapped: false,
                    };
                }
                let uncached = !self.hw.mem().is_ram(page1, 4096);
                let root02 = self.vs.current().read(F::EPT_POINTER) & ADDR_MASK;
                let entry = leaf(page1, l12.perms, l12.mem_type, l12.ignore_pat, uncached);
                Fill::Filled(
                    match set_leaf(self.hw.tables(), root02, e.guest_physical & !0xfff, entry) {
                        Ok(()) => Flow::Resume,
                        Err(_) => Flow::Stop("out of memory for EPT02 tables"),
                    },
                )
            }
            Err(Ept12Fault::Violation { allowed }) => {
                let q = (e.qualification & !0x38) | allowed << 3;
                Fill::Reflect {
                    exit: ExitInfo {
                        qualification: q,
                        ..*e
                    },
                    unmapped: true,
                }
            }
            // KVM marks MMIO pages with misconfigured entries.
            Err(Ept12Fault::Misconfig | Ept12Fault::TableNotRam) => Fill::Reflect {
                exit: misconfig,
                unmapped: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::paging::tests::FakeTables;
    use crate::mm::paging::translate;
    use crate::vmx::ept::Ept;

    #[test]
    fn cache_reuses_evicts_and_invalidates() {
        let mut m = FakeTables::default();
        let mut c = Ept02Cache::default();
        let (a, _) = c.root_for(&mut m, 0x1000 | 0x1e).unwrap();
        assert_eq!(
            c.root_for(&mut m, 0x1000 | 0x18).unwrap(),
            (a, false),
            "same EPT12 root"
        );
        set_leaf(&mut m, a, 0x5000, 0x9000 | 7 | 6 << 3).unwrap();
        let tables_with_a = m.tables.len();
        assert_eq!(tables_with_a, 4);
        for i in 0..CAPACITY as u64 - 1 {
            c.root_for(&mut m, 0x10_0000 + i * 0x1000).unwrap();
        }
        assert_eq!(c.len(), CAPACITY);
        // Touch `a` so it is not the LRU one; the next new root evicts another.
        c.root_for(&mut m, 0x1000).unwrap();
        let (_, evicted) = c.root_for(&mut m, 0x90_0000).unwrap();
        assert!(evicted);
        assert!(m.tables.contains_key(&a));
        assert!(c.invalidate(&mut m, Some(0x1000 | 0x1e)));
        assert!(!m.tables.contains_key(&a), "its tables are freed");
        assert!(!c.invalidate(&mut m, Some(0x1000)));
        assert!(c.invalidate(&mut m, None));
        assert!(c.is_empty());
        assert!(m.tables.is_empty());
    }

    #[test]
    fn leaves_are_replaced() {
        let mut m = FakeTables::default();
        let root = m.alloc_table().unwrap();
        set_leaf(&mut m, root, 0x20_3000, leaf(0x7000, 1, 6, false, false)).unwrap();
        assert_eq!(
            translate(&mut m, &Ept, root, 0x20_3010).unwrap().entry,
            0x7000 | 1 | 6 << 3
        );
        set_leaf(&mut m, root, 0x20_3000, leaf(0x7000, 3, 6, true, false)).unwrap();
        assert_eq!(
            translate(&mut m, &Ept, root, 0x20_3010).unwrap().entry,
            0x7000 | 3 | 6 << 3 | 1 << 6
        );
        assert_eq!(leaf(0xfee0_0000, 3, 6, false, true), 0xfee0_0000 | 3);
    }
}
