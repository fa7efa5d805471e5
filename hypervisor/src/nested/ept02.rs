//! EPT02 = EPT12 ∘ EPT01, built lazily: one shadow table per EPTP12 in a
//! small LRU cache, filled with 4 KiB leaves on L2's EPT violations, dropped
//! whole on INVEPT. L1 must INVEPT after changing EPT12 (SDM 29.4.3.1), so
//! EPT12 need not be write-protected.
//!
//! The cache is this CPU's own (each `Nested` has one) and holds at most
//! `cap` tables, roots included, so an L2 touching more memory than that
//! costs refills, never L0's pool. When a fill needs tables beyond the cap
//! (or the pool has none), the least recently entered other shadows go
//! first, whole; if the shadow in use is still too big it is emptied below
//! its root and refills from L2's next accesses. Either way the caller
//! flushes this CPU's EPT-derived translations (INVEPT) before L2 runs
//! again: freed tables may be reused at once, and INVEPT, like the cache,
//! concerns this logical processor only (SDM 31.3).

use alloc::vec::Vec;

use boot::memmap::RangeSet;

use super::context::{Flow, NestedCtx, NestedHw};
use super::ept12::{self, Ept12Fault, EptAccess, Leaf12, EPTP_ACCESSED_DIRTY};
use super::ept_ad::{self, Marked, Pml};
use super::VmcsSet;
use crate::guest_mem::GuestMemory;
use crate::mm::paging::{MapError, TableMemory, ADDR_MASK};
use crate::vmx::caps::secondary;
use crate::vmx::ept::{LARGE, RWX, WRITE as W};
use crate::vmx::exit::{reason, ExitInfo};
use crate::vmx::{Field as F, Vmcs};

/// How many EPT12 roots keep a shadow at once (Xen keeps 10, XMHF a few).
pub const CAPACITY: usize = 8;

/// The fewest tables a cache may be limited to: a root and the three
/// tables below it that one 4 KiB leaf needs, twice (the shadow being
/// entered and one more).
pub const MIN_TABLES: usize = 8;

/// The cap without `ept02_tables=`: an eighth of `l0_mem` shared by the
/// CPUs (4 MiB, 1024 tables, on one CPU at the default `l0_mem=32M`;
/// each table maps 2 MiB of L2 memory with 4 KiB leaves).
pub fn default_cap(l0_mem: u64, cpus: usize) -> usize {
    ((l0_mem / 8 / 4096) as usize / cpus.max(1)).max(MIN_TABLES)
}

/// The default cap of a cache built without one (host tests).
const DEFAULT_CAP: usize = 1024;

struct Entry {
    /// EPT12 root address (EPTP12 bits 51:12) and A/D enable (bit 6): a
    /// shadow built without A/D flags grants writes EPT12's dirty flags
    /// would withhold, so the two never share one.
    root12: u64,
    root02: u64,
    last_use: u64,
    /// Tables of this shadow, its root included.
    tables: usize,
}

pub struct Ept02Cache {
    entries: Vec<Entry>,
    clock: u64,
    /// Tables all shadows may hold together.
    cap: usize,
    /// Tables all shadows hold now.
    in_use: usize,
    /// Times tables were reclaimed to stay under the cap.
    reclaims: u64,
    /// The L2 address of the last violation reflected to L1, and how many
    /// times in a row: L1 resuming without changing EPT12 livelocks L2.
    reflected: (u64, u64),
}

impl Default for Ept02Cache {
    fn default() -> Self {
        Self::new(DEFAULT_CAP)
    }
}

/// Exit qualification bit 12: NMI unblocking due to IRET (kept by a
/// page-modification-log-full exit, SDM 28.2.1).
const NMI_UNBLOCKING: u64 = 1 << 12;

/// Reflections of one violation in a row after which L0 says so.
const LIVELOCK: u64 = 10_000;

/// Frees a table and everything below it; how many tables that was.
fn free_tree<M: TableMemory>(mem: &mut M, table: u64, level: usize) -> usize {
    let below = free_children(mem, table, level);
    mem.free_table(table);
    below + 1
}

/// Frees every table below `table` and clears its entries; how many.
fn free_children<M: TableMemory>(mem: &mut M, table: u64, level: usize) -> usize {
    let mut n = 0;
    if level > 1 {
        for i in 0..512 {
            let e = mem.table(table)[i];
            if e & RWX != 0 && e & LARGE == 0 {
                n += free_tree(mem, e & ADDR_MASK, level - 1);
            }
            mem.table(table)[i] = 0;
        }
    }
    n
}

/// The tables missing on the way to `gpa2`'s 4 KiB leaf under `root02`.
fn missing_tables<M: TableMemory>(mem: &mut M, root02: u64, gpa2: u64) -> usize {
    let mut table = root02;
    for level in (2..=4).rev() {
        let e = mem.table(table)[((gpa2 >> (12 + 9 * (level - 1))) & 0x1ff) as usize];
        if e & RWX == 0 {
            return level - 1;
        }
        table = e & ADDR_MASK;
    }
    0
}

impl Ept02Cache {
    /// An empty cache that holds at most `cap` tables ([`MIN_TABLES`] at least).
    pub fn new(cap: usize) -> Self {
        Ept02Cache {
            entries: Vec::new(),
            clock: 0,
            cap: cap.max(MIN_TABLES),
            in_use: 0,
            reclaims: 0,
            reflected: (0, 0),
        }
    }

    /// The shadow root for `eptp12`, created (evicting the least recently
    /// used ones if the cache is full) when absent. Returns (root, whether
    /// one was evicted: the caller flushes this CPU's EPT translations).
    pub fn root_for<M: TableMemory>(
        &mut self,
        mem: &mut M,
        eptp12: u64,
    ) -> Result<(u64, bool), MapError> {
        self.clock += 1;
        let root12 = eptp12 & (ADDR_MASK | EPTP_ACCESSED_DIRTY);
        if let Some(e) = self.entries.iter_mut().find(|e| e.root12 == root12) {
            e.last_use = self.clock;
            return Ok((e.root02, false));
        }
        let mut evicted = false;
        while self.entries.len() >= CAPACITY || self.in_use + 1 > self.cap {
            evicted |= self.evict_lru(mem, None);
        }
        let root02 = match mem.alloc_table() {
            Some(t) => t,
            None => {
                // The pool is short: what this cache holds goes back to it.
                while self.evict_lru(mem, None) {
                    evicted = true;
                }
                mem.alloc_table().ok_or(MapError::OutOfMemory)?
            }
        };
        self.in_use += 1;
        self.entries.push(Entry {
            root12,
            root02,
            last_use: self.clock,
            tables: 1,
        });
        Ok((root02, evicted))
    }

    /// Drops the least recently used shadow but `keep`'s; false when
    /// there is none.
    fn evict_lru<M: TableMemory>(&mut self, mem: &mut M, keep: Option<u64>) -> bool {
        let lru = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| Some(e.root02) != keep)
            .min_by_key(|(_, e)| e.last_use)
            .map(|(i, _)| i);
        let Some(i) = lru else {
            return false;
        };
        let old = self.entries.swap_remove(i);
        self.in_use -= free_tree(mem, old.root02, 4);
        true
    }

    /// Makes room for `need` more tables in the shadow rooted at
    /// `root02`: other shadows first, least recently used first, then
    /// that shadow's own tables below its root. True when anything was
    /// reclaimed.
    fn make_room<M: TableMemory>(&mut self, mem: &mut M, root02: u64, need: usize) -> bool {
        let mut reclaimed = false;
        while self.in_use + need > self.cap && self.evict_lru(mem, Some(root02)) {
            reclaimed = true;
        }
        if self.in_use + need > self.cap {
            reclaimed |= self.empty(mem, root02);
        }
        reclaimed
    }

    /// Frees every table below `root02`; whether there were any.
    fn empty<M: TableMemory>(&mut self, mem: &mut M, root02: u64) -> bool {
        let freed = free_children(mem, root02, 4);
        self.in_use -= freed;
        if let Some(e) = self.entries.iter_mut().find(|e| e.root02 == root02) {
            e.tables -= freed;
        }
        freed > 0
    }

    /// Sets the 4 KiB leaf for `gpa2` in the shadow rooted at `root02`
    /// (replacing an older leaf: permissions may have grown since it was
    /// filled), reclaiming tables when the cap or the pool asks for it.
    /// Returns whether tables were reclaimed: the caller then flushes this
    /// CPU's EPT-derived translations before L2 runs again.
    pub fn set_leaf<M: TableMemory>(
        &mut self,
        mem: &mut M,
        root02: u64,
        gpa2: u64,
        leaf: u64,
    ) -> Result<bool, MapError> {
        if !self.entries.iter().any(|e| e.root02 == root02) {
            // VMCS02's EPTP is always a root of this cache (entry.rs).
            return Err(MapError::NotAShadowRoot(root02));
        }
        let need = missing_tables(mem, root02, gpa2);
        let mut reclaimed = self.make_room(mem, root02, need);
        let made = match set_leaf(mem, root02, gpa2, leaf) {
            Ok(n) => n,
            Err(n) => {
                // The pool is short: everything but the root goes back.
                self.count(root02, n);
                while self.evict_lru(mem, Some(root02)) {}
                self.empty(mem, root02);
                reclaimed = true;
                set_leaf(mem, root02, gpa2, leaf).map_err(|n| {
                    self.count(root02, n);
                    MapError::OutOfMemory
                })?
            }
        };
        self.count(root02, made);
        if reclaimed {
            self.reclaims += 1;
        }
        Ok(reclaimed)
    }

    /// Notes `n` new tables in the shadow rooted at `root02`.
    fn count(&mut self, root02: u64, n: usize) {
        self.in_use += n;
        if let Some(e) = self.entries.iter_mut().find(|e| e.root02 == root02) {
            e.tables += n;
        }
    }

    /// Drops the shadow of one EPTP12 (INVEPT single-context) or all.
    /// Returns whether anything was dropped (the caller then flushes the
    /// hardware's cached translations).
    pub fn invalidate<M: TableMemory>(&mut self, mem: &mut M, eptp12: Option<u64>) -> bool {
        let before = self.entries.len();
        let mut kept = Vec::new();
        for e in self.entries.drain(..) {
            if eptp12.is_none_or(|p| p & ADDR_MASK == e.root12 & ADDR_MASK) {
                self.in_use -= free_tree(mem, e.root02, 4);
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

    /// Tables held now, and the cap.
    pub fn tables(&self) -> (usize, usize) {
        (self.in_use, self.cap)
    }

    /// Times tables were reclaimed to stay under the cap.
    pub fn reclaims(&self) -> u64 {
        self.reclaims
    }
}

/// Sets the 4 KiB leaf for `gpa2` in the shadow rooted at `root02`,
/// creating tables as needed and replacing an older leaf. Returns how many
/// tables it created (or had created when the pool ran out: they stay
/// linked, and belong to the shadow).
fn set_leaf<M: TableMemory>(
    mem: &mut M,
    root02: u64,
    gpa2: u64,
    leaf: u64,
) -> Result<usize, usize> {
    let mut table = root02;
    let mut made = 0;
    for level in (2..=4).rev() {
        let i = ((gpa2 >> (12 + 9 * (level - 1))) & 0x1ff) as usize;
        let e = mem.table(table)[i];
        table = if e & RWX == 0 {
            let next = mem.alloc_table().ok_or(made)?;
            made += 1;
            mem.table(table)[i] = next | RWX;
            next
        } else {
            e & ADDR_MASK
        };
    }
    mem.table(table)[((gpa2 >> 12) & 0x1ff) as usize] = leaf;
    Ok(made)
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
                let mut perms = l12.perms;
                if eptp12 & EPTP_ACCESSED_DIRTY != 0 {
                    match self.mark_accessed_dirty(e, &l12) {
                        Marked::Done { dirty: true } => {}
                        // Writes come back to L0 until the leaf is dirty.
                        Marked::Done { dirty: false } => perms &= !W,
                        Marked::LogFull => {
                            return Fill::Reflect {
                                exit: ExitInfo {
                                    reason: reason::PML_FULL as u32,
                                    qualification: e.qualification & NMI_UNBLOCKING,
                                    ..*e
                                },
                                unmapped: false,
                            }
                        }
                        Marked::Changed => return Fill::Filled(Flow::Resume),
                    }
                }
                let uncached = !self.hw.mem().is_ram(page1, 4096);
                let root02 = self.vs.current().read(F::EPT_POINTER) & ADDR_MASK;
                let entry = leaf(page1, perms, l12.mem_type, l12.ignore_pat, uncached);
                let gpa2 = e.guest_physical & !0xfff;
                let ept02 = &mut self.nested.ept02;
                Fill::Filled(
                    match ept02.set_leaf(self.hw.tables(), root02, gpa2, entry) {
                        Ok(reclaimed) => {
                            if reclaimed {
                                self.hw.invept_all();
                                let (n, (held, cap)) = (ept02.reclaims(), ept02.tables());
                                if n <= 4 || n.is_power_of_two() {
                                    log::info!("EPT02 tables reclaimed ({n} times so far; {held} of {cap} held after)");
                                }
                            }
                            Flow::Resume
                        }
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

    /// EPT12's accessed and dirty flags for the access `e` describes (a
    /// write when its qualification says so: the CPU's walks of L2's page
    /// tables come as writes, EPTP02 having A/D flags too), logged in
    /// L1's page-modification log when VMCS12 enables it.
    fn mark_accessed_dirty(&mut self, e: &ExitInfo, l12: &Leaf12) -> Marked {
        let v12 = &mut self.nested.vmx.vmcs12;
        let mut pml = (v12.secondary_controls() & secondary::ENABLE_PML != 0).then(|| Pml {
            address: v12.get(F::PML_ADDRESS),
            index: v12.get(F::GUEST_PML_INDEX) as u16,
        });
        let write = e.qualification & W != 0;
        let marked = ept_ad::mark(self.hw.mem(), l12, e.guest_physical, write, pml.as_mut());
        if let Some(p) = pml {
            v12.set(F::GUEST_PML_INDEX, u64::from(p.index));
        }
        marked
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
        assert_eq!(
            c.set_leaf(&mut m, a, 0x5000, 0x9000 | 7 | 6 << 3),
            Ok(false)
        );
        let tables_with_a = m.tables.len();
        assert_eq!(tables_with_a, 4);
        assert_eq!(c.tables().0, 4);
        for i in 0..CAPACITY as u64 - 1 {
            c.root_for(&mut m, 0x10_0000 + i * 0x1000).unwrap();
        }
        assert_eq!(c.len(), CAPACITY);
        // Touch `a` so it is not the LRU one; the next new root evicts another.
        c.root_for(&mut m, 0x1000).unwrap();
        let (_, evicted) = c.root_for(&mut m, 0x90_0000).unwrap();
        assert!(evicted);
        assert!(m.tables.contains_key(&a));
        assert_eq!(c.tables().0, m.tables.len());
        assert!(c.invalidate(&mut m, Some(0x1000 | 0x1e)));
        assert!(!m.tables.contains_key(&a), "its tables are freed");
        assert!(!c.invalidate(&mut m, Some(0x1000)));
        assert!(c.invalidate(&mut m, None));
        assert!(c.is_empty());
        assert!(m.tables.is_empty());
        assert_eq!(c.tables().0, 0);
    }

    /// L2 touching far more memory than the cap: every fill succeeds, the
    /// tables never exceed the cap, and the shadow restarts below its root
    /// (the caller is told, to INVEPT) when it would.
    #[test]
    fn one_shadow_stays_under_the_cap() {
        let mut m = FakeTables::default();
        let mut c = Ept02Cache::new(MIN_TABLES);
        let (root, _) = c.root_for(&mut m, 0x1000).unwrap();
        let mut reclaims = 0;
        // One page per 2 MiB over 1 GiB and then in a second GiB: each
        // needs a table of its own.
        for i in 0..1024u64 {
            let gpa2 = i * 0x20_0000;
            let leaf = 0x7000 | 7 | 6 << 3;
            if c.set_leaf(&mut m, root, gpa2, leaf).unwrap() {
                reclaims += 1;
            }
            assert!(c.tables().0 <= MIN_TABLES);
            assert_eq!(c.tables().0, m.tables.len(), "every table counted");
            assert_eq!(translate(&mut m, &Ept, root, gpa2).unwrap().entry, leaf);
        }
        assert!(reclaims > 100, "{reclaims} reclaims");
        assert_eq!(c.reclaims(), reclaims);
        assert_eq!(
            c.root_for(&mut m, 0x1000).unwrap(),
            (root, false),
            "the root stays"
        );
        assert!(
            translate(&mut m, &Ept, root, 0).is_none(),
            "the oldest leaves went"
        );
    }

    /// Other shadows are reclaimed before the one in use, least recently
    /// entered first.
    #[test]
    fn other_shadows_go_first_least_recently_used_first() {
        let mut m = FakeTables::default();
        let mut c = Ept02Cache::new(11);
        let (b, _) = c.root_for(&mut m, 0xb000).unwrap();
        c.set_leaf(&mut m, b, 0x5000, 0x9000 | 7).unwrap();
        let (d, _) = c.root_for(&mut m, 0xd000).unwrap();
        c.set_leaf(&mut m, d, 0x5000, 0x9000 | 7).unwrap();
        let (a, _) = c.root_for(&mut m, 0xa000).unwrap();
        // b is entered again: d is now the least recently used.
        c.root_for(&mut m, 0xb000).unwrap();
        c.root_for(&mut m, 0xa000).unwrap();
        assert_eq!(c.tables().0, 9);
        assert_eq!(c.set_leaf(&mut m, a, 0x5000, 0x9000 | 7), Ok(true));
        assert!(!m.tables.contains_key(&d), "d's shadow went");
        assert!(m.tables.contains_key(&b) && translate(&mut m, &Ept, b, 0x5000).is_some());
        assert!(translate(&mut m, &Ept, a, 0x5000).is_some());
        assert_eq!(c.len(), 2);
        // A new EPT12 root past the cap takes b's place (a is in use, the
        // newer one), not a's.
        assert_eq!(c.tables(), (8, 11));
        let (e, evicted) = c.root_for(&mut m, 0xe000).unwrap();
        assert!(!evicted, "room for a root");
        c.root_for(&mut m, 0xa000).unwrap();
        assert_eq!(c.set_leaf(&mut m, e, 0x40_0000, 0x9000 | 7), Ok(true));
        assert!(!m.tables.contains_key(&b));
        assert!(translate(&mut m, &Ept, a, 0x5000).is_some());
        assert_eq!(c.tables().0, m.tables.len());
    }

    /// The pool running out is a reclaim too; only a cache that cannot
    /// free anything fails, and then nothing leaks.
    #[test]
    fn a_short_pool_reclaims_then_fails_cleanly() {
        let mut m = FakeTables::default();
        m.limit = Some(6);
        let mut c = Ept02Cache::new(1000);
        let (other, _) = c.root_for(&mut m, 0xb000).unwrap();
        c.set_leaf(&mut m, other, 0, 0x9000 | 7).unwrap();
        let (root, _) = c.root_for(&mut m, 0xa000).unwrap();
        assert_eq!(m.tables.len(), 5);
        // Three more tables do not fit in the pool: the other shadow goes.
        assert_eq!(c.set_leaf(&mut m, root, 0, 0x9000 | 7), Ok(true));
        assert_eq!(c.len(), 1);
        // Each next 2 MiB needs one table; the pool has two more, then
        // the shadow restarts below its root.
        assert_eq!(c.set_leaf(&mut m, root, 0x20_0000, 0x9000 | 7), Ok(false));
        assert_eq!(c.set_leaf(&mut m, root, 0x40_0000, 0x9000 | 7), Ok(false));
        assert_eq!(c.set_leaf(&mut m, root, 0x60_0000, 0x9000 | 7), Ok(true));
        assert!(translate(&mut m, &Ept, root, 0x60_0000).is_some());
        assert!(translate(&mut m, &Ept, root, 0).is_none());
        assert_eq!(c.tables().0, m.tables.len());
        // A pool that cannot give even a walk's tables: an error, counted.
        m.limit = Some(2);
        assert_eq!(
            c.set_leaf(&mut m, root, 1 << 39, 0x9000 | 7),
            Err(MapError::OutOfMemory)
        );
        assert_eq!(c.tables().0, m.tables.len());
        assert_eq!(
            c.set_leaf(&mut m, 0x1234_5000, 0, 0x9000),
            Err(MapError::NotAShadowRoot(0x1234_5000))
        );
    }

    #[test]
    fn the_default_cap_shares_an_eighth_of_l0_mem() {
        assert_eq!(default_cap(32 << 20, 1), 1024);
        assert_eq!(default_cap(32 << 20, 2), 512);
        assert_eq!(default_cap(8 << 20, 1000), MIN_TABLES);
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
