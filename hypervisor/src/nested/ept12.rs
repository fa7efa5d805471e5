//! EPT12 — the EPT L1 builds for L2 — walked in software (SDM Vol. 3C
//! 29.3.2-29.3.3): translation, permissions (the AND down the walk),
//! misconfigurations, and the EPT-violation qualification L1 must get.

use super::caps::NestedCaps;
use crate::guest_mem::{GuestMemory, MemError};
use crate::mm::paging::PageSize;
use crate::vmx::caps::ept_vpid;

const R: u64 = 1;
const W: u64 = 2;
const X: u64 = 4;
const LARGE: u64 = 1 << 7;

/// EPTP bit 6: accessed and dirty flags for EPT (SDM 29.3.5).
pub const EPTP_ACCESSED_DIRTY: u64 = 1 << 6;

/// Whether L1 may use this EPTP (SDM 27.2.1.1): a memory type the caps
/// allow, a 4-level walk, A/D flags only where the caps offer them, no
/// reserved bits.
pub fn eptp_valid(eptp: u64, caps: &NestedCaps, maxphyaddr: u8) -> bool {
    let mt = eptp & 7;
    let mt_ok = (mt == 0 && caps.ept_vpid & ept_vpid::MEMORY_TYPE_UC != 0)
        || (mt == 6 && caps.ept_vpid & ept_vpid::MEMORY_TYPE_WB != 0);
    let walk_ok = (eptp >> 3) & 7 == 3;
    let ad_ok = eptp & EPTP_ACCESSED_DIRTY == 0 || caps.ept_vpid & ept_vpid::ACCESSED_DIRTY != 0;
    let reserved = eptp & 0xf80 != 0 || eptp >> maxphyaddr != 0;
    mt_ok && walk_ok && ad_ok && !reserved
}

/// A successful EPT12 translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf12 {
    /// The L1-physical address the L2-physical address maps to.
    pub gpa: u64,
    pub size: PageSize,
    /// Effective R/W/X: the AND over every entry of the walk.
    pub perms: u64,
    /// Memory type and ignore-PAT of the leaf.
    pub mem_type: u8,
    pub ignore_pat: bool,
    /// The entries the walk used, root first, as (address in L1's
    /// memory, value read): `used[..depth]`, the leaf last. The A/D
    /// flags go there (ept_ad.rs).
    pub used: [(u64, u64); 4],
    pub depth: usize,
}

/// Why the translation did not give the access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ept12Fault {
    /// EPT violation; `allowed` is the AND of bits 2:0 of the entries walked
    /// (qualification bits 5:3).
    Violation {
        allowed: u64,
    },
    Misconfig,
    /// An EPT12 table is not L1 RAM: L1's misconfiguration.
    TableNotRam,
}

/// The access being made: read, write, fetch (qualification bits 2:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptAccess(pub u64);

fn misconfigured(e: u64, level: usize, caps: &NestedCaps, maxphyaddr: u8) -> bool {
    let rwx = e & 7;
    if rwx & W != 0 && rwx & R == 0 {
        return true;
    }
    if rwx == X && caps.ept_vpid & 1 == 0 {
        return true;
    }
    // Address bits above MAXPHYADDR (bits 51:12 hold the address).
    if (e & 0x000f_ffff_ffff_f000) >> maxphyaddr != 0 {
        return true;
    }
    let large = e & LARGE != 0;
    let leaf = level == 1 || large;
    match level {
        4 if large => return true,
        3 if large && caps.ept_vpid & ept_vpid::PAGE_1G == 0 => return true,
        2 if large && caps.ept_vpid & ept_vpid::PAGE_2M == 0 => return true,
        _ => {}
    }
    if leaf {
        // Memory types 2, 3 and 7 are reserved.
        if matches!((e >> 3) & 7, 2 | 3 | 7) {
            return true;
        }
        // Bits (page size - 1):12 of a large page are reserved.
        if large {
            let page = if level == 3 { 1u64 << 30 } else { 1u64 << 21 };
            if e & (page - 1) & !0xfff != 0 {
                return true;
            }
        }
    } else if e & 0xf8 != 0 {
        // Bits 7:3 of a non-leaf entry are reserved.
        return true;
    }
    false
}

/// Walks EPT12 (rooted at the address in `eptp`) for `gpa2`.
pub fn walk<M: GuestMemory>(
    mem: &M,
    eptp: u64,
    gpa2: u64,
    access: EptAccess,
    caps: &NestedCaps,
    maxphyaddr: u8,
) -> Result<Leaf12, Ept12Fault> {
    let mut table = eptp & 0x000f_ffff_ffff_f000;
    let mut allowed = R | W | X;
    let mut used = [(0, 0); 4];
    for level in (1..=4).rev() {
        let idx = (gpa2 >> (12 + 9 * (level - 1))) & 0x1ff;
        let at = table + 8 * idx;
        let e = mem.read_u64(at).map_err(|_| Ept12Fault::TableNotRam)?;
        used[4 - level] = (at, e);
        let rwx = e & 7;
        allowed &= rwx;
        if rwx == 0 {
            return Err(Ept12Fault::Violation { allowed });
        }
        if misconfigured(e, level, caps, maxphyaddr) {
            return Err(Ept12Fault::Misconfig);
        }
        if level == 1 || e & LARGE != 0 {
            if access.0 & 7 & !allowed != 0 {
                return Err(Ept12Fault::Violation { allowed });
            }
            let size = match level {
                3 => PageSize::Size1G,
                2 => PageSize::Size2M,
                _ => PageSize::Size4K,
            };
            let base = e & 0x000f_ffff_ffff_f000 & !(size.bytes() - 1);
            return Ok(Leaf12 {
                gpa: base | (gpa2 & (size.bytes() - 1)),
                size,
                perms: allowed,
                mem_type: ((e >> 3) & 7) as u8,
                ignore_pat: e & (1 << 6) != 0,
                used,
                depth: 5 - level,
            });
        }
        table = e & 0x000f_ffff_ffff_f000;
    }
    unreachable!()
}

/// L2's physical memory as L0 reaches it: through EPT12 (when L1 uses
/// EPT) into L1's RAM, with EPT12's read or write permission checked. An
/// access is all or nothing: every page is translated before any byte
/// moves.
pub struct L2Memory<'a, M: GuestMemory> {
    pub l1: &'a mut M,
    /// L1's EPT pointer; `None`: L2's physical addresses are L1's.
    pub eptp12: Option<u64>,
    pub caps: &'a NestedCaps,
    pub maxphyaddr: u8,
}

impl<M: GuestMemory> L2Memory<'_, M> {
    fn translate(&self, gpa2: u64, write: bool) -> Result<u64, MemError> {
        let Some(eptp) = self.eptp12 else {
            return Ok(gpa2);
        };
        let access = EptAccess(if write { W } else { R });
        walk(&*self.l1, eptp, gpa2, access, self.caps, self.maxphyaddr)
            .map(|l| l.gpa)
            .map_err(|_| MemError::NotRam { gpa: gpa2, len: 1 })
    }

    /// Checks that every page of `gpa2..+len` translates, so that a
    /// refused access moves nothing; an access within one page, the usual
    /// case, is checked by its one translation instead.
    fn check_all(&self, gpa2: u64, len: usize, write: bool) -> Result<(), MemError> {
        if page_pieces(gpa2, len).nth(1).is_some() {
            for (a, _, _) in page_pieces(gpa2, len) {
                self.translate(a, write)?;
            }
        }
        Ok(())
    }
}

/// `gpa..+len` cut at page boundaries: (address, offset in the access, length).
fn page_pieces(gpa: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
    let mut done = 0;
    core::iter::from_fn(move || {
        (done < len).then(|| {
            let a = gpa + done as u64;
            let n = ((0x1000 - (a & 0xfff)) as usize).min(len - done);
            let piece = (a, done, n);
            done += n;
            piece
        })
    })
}

impl<M: GuestMemory> GuestMemory for L2Memory<'_, M> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.check_all(gpa, buf.len(), false)?;
        for (a, off, n) in page_pieces(gpa, buf.len()) {
            self.l1
                .read(self.translate(a, false)?, &mut buf[off..off + n])?;
        }
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        self.check_all(gpa, data.len(), true)?;
        for (a, off, n) in page_pieces(gpa, data.len()) {
            let g1 = self.translate(a, true)?;
            self.l1.write(g1, &data[off..off + n])?;
        }
        Ok(())
    }
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), MemError> {
        self.write(gpa, &alloc::vec![0; len as usize])
    }
    fn compare_exchange_u64(
        &mut self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        crate::guest_mem::aligned_word(gpa)?;
        self.check_all(gpa, 8, true)?;
        let g1 = self.translate(gpa, true)?;
        self.l1.compare_exchange_u64(g1, current, new)
    }
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        len > 0
            && page_pieces(gpa, len as usize).all(|(a, _, n)| {
                self.translate(a, false)
                    .is_ok_and(|g1| self.l1.is_ram(g1, n as u64))
            })
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::guest_mem::fake::VecMemory;
    use crate::vmx::caps::tests::bochs_skylake as bochs;

    pub fn caps() -> NestedCaps {
        NestedCaps::new(&bochs())
    }

    fn put(m: &mut VecMemory, a: u64, v: u64) {
        m.write(a, &v.to_le_bytes()).unwrap();
    }

    /// EPT12 at 0x1000: L2 0x0 -> L1 0x10_0000 (4K, RWX, WB),
    /// L2 0x20_0000 -> L1 0x40_0000 (2M, R only), L2 0x1000 -> not present.
    pub fn ept12() -> VecMemory {
        let mut m = VecMemory::new(0, 0x100_0000);
        put(&mut m, 0x1000, 0x2000 | 7);
        put(&mut m, 0x2000, 0x3000 | 7);
        put(&mut m, 0x3000, 0x4000 | 7);
        put(&mut m, 0x3000 + 8, 0x40_0000 | R | 6 << 3 | LARGE);
        put(&mut m, 0x4000, 0x10_0000 | 7 | 6 << 3);
        m
    }

    const EPTP: u64 = 0x1000 | 6 | 3 << 3;

    #[test]
    fn l2_memory_is_all_or_nothing_through_ept12() {
        let mut m = ept12();
        let c = caps();
        m.write(0x10_0ffe, b"ab").unwrap();
        let mut l2 = L2Memory {
            l1: &mut m,
            eptp12: Some(EPTP),
            caps: &c,
            maxphyaddr: 39,
        };
        let mut b = [0u8; 2];
        l2.read(0xffe, &mut b).unwrap();
        assert_eq!(&b, b"ab");
        // Crossing into L2 0x1000 (not mapped): refused, nothing written.
        assert!(l2.write(0xffe, b"xyzw").is_err());
        assert!(l2.read(0xffe, &mut [0u8; 4]).is_err());
        assert!(!l2.is_ram(0xffe, 4) && l2.is_ram(0, 0x1000));
        // The 2 MiB page is read-only for L2.
        assert!(l2.write(0x20_0000, b"x").is_err());
        l2.read(0x20_0010, &mut b).unwrap();
        drop(l2);
        assert_eq!(
            m.read_u64(0x10_0ff8).unwrap() >> 48,
            u64::from(u16::from_le_bytes(*b"ab"))
        );
        // Without EPT12, L2's addresses are L1's.
        let mut flat = L2Memory {
            l1: &mut m,
            eptp12: None,
            caps: &c,
            maxphyaddr: 39,
        };
        flat.write(0x10_0ffe, b"cd").unwrap();
        flat.read(0x10_0ffe, &mut b).unwrap();
        assert_eq!(&b, b"cd");
    }

    #[test]
    fn translates_4k_and_2m() {
        let m = ept12();
        let c = caps();
        let l = walk(&m, EPTP, 0x123, EptAccess(W), &c, 39).unwrap();
        assert_eq!(
            (l.gpa, l.size, l.perms, l.mem_type),
            (0x10_0123, PageSize::Size4K, 7, 6)
        );
        let l = walk(&m, EPTP, 0x2f_0010, EptAccess(R), &c, 39).unwrap();
        assert_eq!((l.gpa, l.size, l.perms), (0x4f_0010, PageSize::Size2M, R));
    }

    #[test]
    fn violations_carry_the_and_of_permissions() {
        let m = ept12();
        let c = caps();
        assert_eq!(
            walk(&m, EPTP, 0x1000, EptAccess(R), &c, 39),
            Err(Ept12Fault::Violation { allowed: 0 })
        );
        assert_eq!(
            walk(&m, EPTP, 0x20_0000, EptAccess(W), &c, 39),
            Err(Ept12Fault::Violation { allowed: R })
        );
        assert_eq!(
            walk(&m, EPTP, 0x20_0000, EptAccess(X), &c, 39),
            Err(Ept12Fault::Violation { allowed: R })
        );
        assert_eq!(
            walk(&m, EPTP, 0x4000_0000, EptAccess(R), &c, 39),
            Err(Ept12Fault::Violation { allowed: 0 })
        );
    }

    #[test]
    fn misconfigurations() {
        let c = caps();
        let mut m = ept12();
        put(&mut m, 0x4000 + 8, 0x11_0000 | W | 6 << 3); // write without read
        assert_eq!(
            walk(&m, EPTP, 0x1000, EptAccess(R), &c, 39),
            Err(Ept12Fault::Misconfig)
        );
        put(&mut m, 0x4000 + 8, 0x11_0000 | 7 | 2 << 3); // memory type 2
        assert_eq!(
            walk(&m, EPTP, 0x1000, EptAccess(R), &c, 39),
            Err(Ept12Fault::Misconfig)
        );
        put(&mut m, 0x4000 + 8, (1 << 40) | 7 | 6 << 3); // beyond MAXPHYADDR
        assert_eq!(
            walk(&m, EPTP, 0x1000, EptAccess(R), &c, 39),
            Err(Ept12Fault::Misconfig)
        );
        put(&mut m, 0x3000 + 8, 0x40_1000 | R | 6 << 3 | LARGE); // misaligned 2M page
        assert_eq!(
            walk(&m, EPTP, 0x20_0000, EptAccess(R), &c, 39),
            Err(Ept12Fault::Misconfig)
        );
        put(&mut m, 0x1000, 0x2000 | 7 | LARGE); // large PML4E
        assert_eq!(
            walk(&m, EPTP, 0, EptAccess(R), &c, 39),
            Err(Ept12Fault::Misconfig)
        );
    }

    #[test]
    fn tables_outside_l1_ram() {
        let m = ept12();
        assert_eq!(
            walk(&m, 0x4000_0000 | 0x1e, 0, EptAccess(R), &caps(), 39),
            Err(Ept12Fault::TableNotRam)
        );
    }

    #[test]
    fn eptp_checks() {
        let c = caps();
        assert!(eptp_valid(EPTP, &c, 39));
        assert!(eptp_valid(0x1000 | 3 << 3, &c, 39), "UC");
        assert!(
            !eptp_valid(0x1000 | 1 | 3 << 3, &c, 39),
            "WC is not an EPTP type"
        );
        assert!(
            !eptp_valid(0x1000 | 6 | 4 << 3, &c, 39),
            "5-level walk not offered"
        );
        assert!(eptp_valid(EPTP | 1 << 6, &c, 39), "A/D offered");
        let mut no_ad = c;
        no_ad.ept_vpid &= !ept_vpid::ACCESSED_DIRTY;
        assert!(!eptp_valid(EPTP | 1 << 6, &no_ad, 39), "A/D not offered");
        assert!(!eptp_valid(EPTP | 1 << 7, &c, 39), "bit 7 reserved");
        assert!(!eptp_valid(EPTP | 1 << 11, &c, 39), "bit 11 reserved");
        assert!(!eptp_valid(EPTP | 1 << 39, &c, 39), "beyond MAXPHYADDR");
        assert!(!eptp_valid(EPTP | 1 << 40, &c, 39));
    }
}
