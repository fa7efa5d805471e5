//! Guest-virtual to guest-physical translation through a guest's own page
//! tables (SDM Vol. 3A chapter 4): 32-bit, PAE, 4-level and 5-level paging,
//! with 4 MiB/2 MiB/1 GiB pages, and the permission checks that decide
//! whether the access would fault.
//!
//! L0 walks L1's tables to reach VMX-instruction operands and ultracall
//! buffers. Accessed/dirty bits are not set: L0's accesses are on the
//! guest's behalf and a guest cannot rely on A/D for them (the operands of
//! VMX instructions are read through the same path as KVM's emulator,
//! which does set them; see docs/nested-vmx.md for this difference).

use super::GuestMemory;
use crate::regs::{
    CR0_PG, CR0_WP, CR4_LA57, CR4_PAE, CR4_PSE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_NXE,
};

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;

/// Page-fault error code bits (SDM Vol. 3A 4.7).
pub mod pfec {
    pub const PRESENT: u32 = 1 << 0;
    pub const WRITE: u32 = 1 << 1;
    pub const USER: u32 = 1 << 2;
    pub const RSVD: u32 = 1 << 3;
    pub const FETCH: u32 = 1 << 4;
}

/// The registers that define a guest's paging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// PDPTEs as the CPU holds them for PAE paging (with EPT they come from
    /// the VMCS, not from memory).
    pub pdptes: [u64; 4],
    pub maxphyaddr: u8,
}

/// What kind of access, and by whom.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    pub fetch: bool,
    /// A user-mode access (CPL 3), as opposed to supervisor.
    pub user: bool,
    /// RFLAGS.AC for SMAP (supervisor data accesses to user pages).
    pub ac: bool,
}

/// Why a translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The access would fault: #PF with this error code.
    PageFault { error_code: u32 },
    /// A paging structure is not RAM of the guest.
    TableNotRam { gpa: u64 },
}

/// The paging mode these registers select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Bits32,
    Pae,
    Level4,
    Level5,
}

pub fn mode(r: &PagingRegs) -> Mode {
    if r.cr0 & CR0_PG == 0 {
        Mode::Off
    } else if r.cr4 & CR4_PAE == 0 {
        Mode::Bits32
    } else if r.efer & EFER_LMA == 0 {
        Mode::Pae
    } else if r.cr4 & CR4_LA57 != 0 {
        Mode::Level5
    } else {
        Mode::Level4
    }
}

fn read_entry(mem: &impl GuestMemory, gpa: u64, wide: bool) -> Result<u64, WalkError> {
    let mut b = [0u8; 8];
    let n = if wide { 8 } else { 4 };
    mem.read(gpa, &mut b[..n])
        .map_err(|_| WalkError::TableNotRam { gpa })?;
    Ok(u64::from_le_bytes(b))
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub gpa: u64,
    /// Bytes from `gpa` to the end of its page (1 GiB, 2/4 MiB or 4 KiB).
    pub page_remaining: u64,
}

/// Translates `gva` for `access`.
pub fn translate(
    mem: &impl GuestMemory,
    r: &PagingRegs,
    gva: u64,
    a: Access,
) -> Result<Translation, WalkError> {
    let m = mode(r);
    if m == Mode::Off {
        return Ok(Translation {
            gpa: gva & 0xffff_ffff,
            page_remaining: 0x1000 - (gva & 0xfff),
        });
    }
    let addr_mask = ((1u64 << r.maxphyaddr) - 1) & !0xfff;
    let nxe = r.efer & EFER_NXE != 0;
    // Reserved bits in 64-bit entries: above MAXPHYADDR, and XD without NXE.
    let rsvd_hi =
        !((1u64 << r.maxphyaddr) - 1) & !XD & 0x000f_ffff_ffff_ffff | if nxe { 0 } else { XD };
    let base_code = if a.write { pfec::WRITE } else { 0 }
        | if a.user { pfec::USER } else { 0 }
        | if a.fetch && (nxe || r.cr4 & CR4_SMEP != 0) {
            pfec::FETCH
        } else {
            0
        };
    let fault = |extra: u32| WalkError::PageFault {
        error_code: base_code | extra,
    };

    // Accumulated rights along the walk: writable, user, executable.
    let (mut w, mut u, mut x) = (true, true, true);
    let (mut table, levels, wide) = match m {
        Mode::Bits32 => (r.cr3 & 0xffff_f000, 2, false),
        Mode::Pae => {
            let e = r.pdptes[((gva >> 30) & 3) as usize];
            if e & P == 0 {
                return Err(fault(0));
            }
            if e & (0x1e6 | rsvd_hi & !XD) != 0 {
                return Err(fault(pfec::PRESENT | pfec::RSVD));
            }
            (e & addr_mask, 2, true)
        }
        Mode::Level4 => (r.cr3 & addr_mask, 4, true),
        Mode::Level5 => (r.cr3 & addr_mask, 5, true),
        Mode::Off => unreachable!(),
    };
    for level in (1..=levels).rev() {
        let (shift, idx_mask) = if wide {
            (12 + 9 * (level - 1), 0x1ff)
        } else {
            (12 + 10 * (level - 1), 0x3ff)
        };
        let esize = if wide { 8 } else { 4 };
        let e = read_entry(mem, table + ((gva >> shift) & idx_mask) * esize, wide)?;
        if e & P == 0 {
            return Err(fault(0));
        }
        if wide && e & rsvd_hi != 0 {
            return Err(fault(pfec::PRESENT | pfec::RSVD));
        }
        w &= e & RW != 0;
        u &= e & US != 0;
        x &= !(nxe && e & XD != 0);
        // PS is reserved in PML4Es and PML5Es.
        if wide && level >= 4 && e & PS != 0 {
            return Err(fault(pfec::PRESENT | pfec::RSVD));
        }
        let large = level > 1 && e & PS != 0 && (wide || r.cr4 & CR4_PSE != 0);
        if level == 1 || large {
            let page = 1u64 << shift;
            let base = if wide {
                let b = e & addr_mask & !(page - 1);
                // Bits 12..shift of a large-page entry (except PAT at bit 12) are reserved.
                if large && e & (page - 1) & !0x1fff & addr_mask != 0 {
                    return Err(fault(pfec::PRESENT | pfec::RSVD));
                }
                b
            } else if large {
                // 4 MiB page: bits 31:22 plus PSE-36 bits 20:13 as 39:32.
                (e & 0xffc0_0000) | ((e >> 13) & 0xff) << 32
            } else {
                e & 0xffff_f000
            };
            check_rights(r, a, w, u, x).map_err(|_| fault(pfec::PRESENT))?;
            let off = gva & (page - 1);
            return Ok(Translation {
                gpa: base + off,
                page_remaining: page - off,
            });
        }
        table = if wide { e & addr_mask } else { e & 0xffff_f000 };
    }
    unreachable!()
}

/// SDM Vol. 3A 4.6: the rights of a translation against the access.
fn check_rights(r: &PagingRegs, a: Access, w: bool, u: bool, x: bool) -> Result<(), ()> {
    if a.user && !u {
        return Err(());
    }
    if a.write && !w && (a.user || r.cr0 & CR0_WP != 0) {
        return Err(());
    }
    if a.fetch {
        if !x {
            return Err(());
        }
        if !a.user && u && r.cr4 & CR4_SMEP != 0 {
            return Err(());
        }
    } else if !a.user && u && r.cr4 & CR4_SMAP != 0 && !a.ac {
        return Err(());
    }
    Ok(())
}

/// A fault of a multi-byte access: what went wrong, and at which linear
/// address (the first byte of the page that faulted, as CR2 would hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtFault {
    pub error: WalkError,
    pub address: u64,
}

/// Reads `buf.len()` bytes at `gva`, page by page.
pub fn read_virt(
    mem: &impl GuestMemory,
    r: &PagingRegs,
    gva: u64,
    buf: &mut [u8],
    a: Access,
) -> Result<(), VirtFault> {
    let mut done = 0;
    while done < buf.len() {
        let at = gva.wrapping_add(done as u64);
        let t = translate(mem, r, at, a).map_err(|error| VirtFault { error, address: at })?;
        let n = (t.page_remaining as usize).min(buf.len() - done);
        mem.read(t.gpa, &mut buf[done..done + n])
            .map_err(|_| VirtFault {
                error: WalkError::TableNotRam { gpa: t.gpa },
                address: at,
            })?;
        done += n;
    }
    Ok(())
}

/// Writes `data` at `gva`, page by page. Every page is translated and
/// checked before the first byte is written, and the bytes go to the
/// addresses that check found: a fault leaves memory unchanged, even when
/// the buffer overlaps the page tables that map it (translating again after
/// a first write could find other tables, or none).
pub fn write_virt(
    mem: &mut impl GuestMemory,
    r: &PagingRegs,
    gva: u64,
    data: &[u8],
    a: Access,
) -> Result<(), VirtFault> {
    let a = Access { write: true, ..a };
    // (guest-physical address, guest-virtual address, bytes) per page.
    let mut pieces = alloc::vec::Vec::new();
    let mut done = 0;
    while done < data.len() {
        let at = gva.wrapping_add(done as u64);
        let t = translate(mem, r, at, a).map_err(|error| VirtFault { error, address: at })?;
        let n = (t.page_remaining as usize).min(data.len() - done);
        if !mem.is_ram(t.gpa, n as u64) {
            return Err(VirtFault {
                error: WalkError::TableNotRam { gpa: t.gpa },
                address: at,
            });
        }
        pieces.push((t.gpa, at, done..done + n));
        done += n;
    }
    for (gpa, at, range) in pieces {
        mem.write(gpa, &data[range]).map_err(|_| VirtFault {
            error: WalkError::TableNotRam { gpa },
            address: at,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_mem::fake::VecMemory;

    const SUP_READ: Access = Access {
        write: false,
        fetch: false,
        user: false,
        ac: false,
    };

    fn put(m: &mut VecMemory, gpa: u64, v: u64) {
        m.write(gpa, &v.to_le_bytes()).unwrap();
    }

    /// 4-level tables at 0x1000.. mapping 0x40_0000 -> 0x20_0000 (4K),
    /// 0x8000_0000 -> 2 MiB page at 0x60_0000, user read-only page at 0x40_1000.
    fn four_level() -> (VecMemory, PagingRegs) {
        let mut m = VecMemory::new(0, 0x100_0000);
        put(&mut m, 0x1000, 0x2000 | P | RW | US); // PML4[0]
        put(&mut m, 0x2000, 0x3000 | P | RW | US); // PDPT[0]
        put(&mut m, 0x2000 + 2 * 8, 0x5000 | P | RW | US); // PDPT[2] (0x8000_0000)
        put(&mut m, 0x3000 + 2 * 8, 0x4000 | P | RW | US); // PD[2] (0x40_0000)
        put(&mut m, 0x4000, 0x20_0000 | P | RW); // PT[0]: supervisor RW
        put(&mut m, 0x4000 + 8, 0x21_0000 | P | US | XD); // PT[1]: user read-only, no-exec
        put(&mut m, 0x5000, 0x60_0000 | P | RW | PS); // PD[0] of PDPT[2]: 2 MiB
        let r = PagingRegs {
            cr0: CR0_PG | CR0_WP | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA | EFER_NXE | (1 << 8),
            pdptes: [0; 4],
            maxphyaddr: 39,
        };
        (m, r)
    }

    #[test]
    fn write_over_its_own_page_table_lands_where_checked() {
        // 0x5f_e000 maps the page table itself (0x4000); 0x5f_f000 maps
        // 0x22_0000 through PT[0x1ff] at 0x4ff8, which the buffer's first
        // eight bytes (at 0x5f_eff8) overwrite with zeros.
        let (mut m, r) = four_level();
        put(&mut m, 0x4000 + 0x1fe * 8, 0x4000 | P | RW);
        put(&mut m, 0x4000 + 0x1ff * 8, 0x22_0000 | P | RW);
        let sup_write = Access {
            write: true,
            ..SUP_READ
        };
        let mut data = [0u8; 16];
        data[8..].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(write_virt(&mut m, &r, 0x5f_eff8, &data, sup_write), Ok(()));
        let mut pte = [0xffu8; 8];
        m.read(0x4ff8, &mut pte).unwrap();
        assert_eq!(pte, [0; 8], "the first page's bytes: the PTE");
        let mut after = [0u8; 8];
        m.read(0x22_0000, &mut after).unwrap();
        assert_eq!(
            after,
            data[8..],
            "the second page's bytes: where it was mapped"
        );
        // A fault on the second page still writes nothing.
        put(&mut m, 0x4000 + 0x1ff * 8, 0);
        data[..8].fill(0x55);
        assert!(write_virt(&mut m, &r, 0x5f_eff8, &data, sup_write).is_err());
        m.read(0x4ff8, &mut pte).unwrap();
        assert_eq!(pte, [0; 8]);
    }

    #[test]
    fn four_level_pages() {
        let (m, r) = four_level();
        assert_eq!(mode(&r), Mode::Level4);
        let t = translate(&m, &r, 0x40_0123, SUP_READ).unwrap();
        assert_eq!(
            t,
            Translation {
                gpa: 0x20_0123,
                page_remaining: 0x1000 - 0x123
            }
        );
        let t = translate(&m, &r, 0x8012_3456, SUP_READ).unwrap();
        assert_eq!(t.gpa, 0x72_3456);
        assert_eq!(t.page_remaining, 0x20_0000 - 0x12_3456);
        assert_eq!(
            translate(&m, &r, 0x40_2000, SUP_READ),
            Err(WalkError::PageFault { error_code: 0 })
        );
    }

    #[test]
    fn rights() {
        let (m, r) = four_level();
        let user_read = Access {
            user: true,
            ..SUP_READ
        };
        let user_write = Access {
            user: true,
            write: true,
            ..SUP_READ
        };
        assert_eq!(
            translate(&m, &r, 0x40_0000, user_read),
            Err(WalkError::PageFault {
                error_code: pfec::PRESENT | pfec::USER
            })
        );
        assert!(translate(&m, &r, 0x40_1000, user_read).is_ok());
        assert_eq!(
            translate(&m, &r, 0x40_1000, user_write),
            Err(WalkError::PageFault {
                error_code: pfec::PRESENT | pfec::USER | pfec::WRITE
            })
        );
        // Supervisor write to a read-only page: faults only with CR0.WP.
        let sup_write = Access {
            write: true,
            ..SUP_READ
        };
        assert!(translate(&m, &r, 0x40_1000, sup_write).is_err());
        let no_wp = PagingRegs {
            cr0: r.cr0 & !CR0_WP,
            ..r
        };
        assert!(translate(&m, &no_wp, 0x40_1000, sup_write).is_ok());
        // No-execute.
        let fetch = Access {
            fetch: true,
            ..SUP_READ
        };
        assert_eq!(
            translate(&m, &r, 0x40_1000, fetch),
            Err(WalkError::PageFault {
                error_code: pfec::PRESENT | pfec::FETCH
            })
        );
        // SMAP: supervisor data access to a user page, unless RFLAGS.AC.
        let smap = PagingRegs {
            cr4: r.cr4 | CR4_SMAP,
            ..r
        };
        assert!(translate(&m, &smap, 0x40_1000, SUP_READ).is_err());
        assert!(translate(
            &m,
            &smap,
            0x40_1000,
            Access {
                ac: true,
                ..SUP_READ
            }
        )
        .is_ok());
    }

    #[test]
    fn reserved_bits() {
        let (mut m, r) = four_level();
        put(&mut m, 0x4000 + 16, (1 << 45) | 0x30_0000 | P); // beyond MAXPHYADDR 39
        assert_eq!(
            translate(&m, &r, 0x40_2000, SUP_READ),
            Err(WalkError::PageFault {
                error_code: pfec::PRESENT | pfec::RSVD
            })
        );
        let no_nx = PagingRegs {
            efer: r.efer & !EFER_NXE,
            ..r
        };
        assert_eq!(
            translate(&m, &no_nx, 0x40_1000, SUP_READ),
            Err(WalkError::PageFault {
                error_code: pfec::PRESENT | pfec::RSVD
            })
        );
    }

    #[test]
    fn five_level() {
        let (mut m, r) = four_level();
        put(&mut m, 0x9000, 0x1000 | P | RW | US); // PML5[0] -> the PML4
        let r5 = PagingRegs {
            cr3: 0x9000,
            cr4: r.cr4 | CR4_LA57,
            ..r
        };
        assert_eq!(mode(&r5), Mode::Level5);
        assert_eq!(
            translate(&m, &r5, 0x40_0123, SUP_READ).unwrap().gpa,
            0x20_0123
        );
    }

    #[test]
    fn one_gib_page() {
        let (mut m, r) = four_level();
        put(&mut m, 0x2000 + 3 * 8, 0x4000_0000 | P | RW | PS);
        let t = translate(&m, &r, 0xc123_4567, SUP_READ).unwrap();
        assert_eq!(t.gpa, 0x4123_4567);
        // Low address bits of a 1 GiB page set: reserved.
        put(
            &mut m,
            0x2000 + 3 * 8,
            0x4000_0000 | 0x20_0000 | P | RW | PS,
        );
        assert!(translate(&m, &r, 0xc000_0000, SUP_READ).is_err());
    }

    #[test]
    fn pae_and_32_bit() {
        let mut m = VecMemory::new(0, 0x100_0000);
        // PAE: PDPTE[1] -> PD at 0x3000, PD[0] -> PT at 0x4000, PT[5] -> 0x80_5000.
        put(&mut m, 0x3000, 0x4000 | P | RW);
        put(&mut m, 0x4000 + 5 * 8, 0x80_5000 | P | RW);
        let r = PagingRegs {
            cr0: CR0_PG | 1,
            cr3: 0x2000,
            cr4: CR4_PAE,
            efer: 0,
            pdptes: [0, 0x3000 | P, 0, 0],
            maxphyaddr: 36,
        };
        assert_eq!(mode(&r), Mode::Pae);
        assert_eq!(
            translate(&m, &r, 0x4000_5010, SUP_READ).unwrap().gpa,
            0x80_5010
        );
        assert!(translate(&m, &r, 0x0000_5010, SUP_READ).is_err());
        // 32-bit paging with a 4 MiB page and a 4 KiB page.
        let mut m = VecMemory::new(0, 0x100_0000);
        m.write(0x1000 + 4, &((0x0040_0000u32 | 0x83).to_le_bytes()))
            .unwrap(); // PDE[1]: 4 MiB
        m.write(0x1000 + 8, &((0x5000u32 | 3).to_le_bytes()))
            .unwrap(); // PDE[2] -> PT
        m.write(0x5000 + 4, &((0x9000u32 | 3).to_le_bytes()))
            .unwrap();
        let r = PagingRegs {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PSE,
            efer: 0,
            pdptes: [0; 4],
            maxphyaddr: 36,
        };
        assert_eq!(
            translate(&m, &r, 0x0045_6789, SUP_READ).unwrap().gpa,
            0x45_6789
        );
        assert_eq!(
            translate(&m, &r, 0x0080_1abc, SUP_READ).unwrap().gpa,
            0x9abc
        );
    }

    #[test]
    fn paging_off_is_identity() {
        let m = VecMemory::new(0, 0x1000);
        let r = PagingRegs {
            cr0: 1,
            ..Default::default()
        };
        assert_eq!(
            translate(&m, &r, 0x1234_5678, SUP_READ).unwrap().gpa,
            0x1234_5678
        );
    }

    #[test]
    fn tables_outside_ram() {
        let (m, r) = four_level();
        let far = PagingRegs {
            cr3: 0x4000_0000,
            ..r
        };
        assert_eq!(
            translate(&m, &far, 0, SUP_READ),
            Err(WalkError::TableNotRam { gpa: 0x4000_0000 })
        );
    }

    #[test]
    fn cross_page_copies() {
        let (mut m, r) = four_level();
        // 0x40_0ffc.. spans the supervisor page and the user read-only one.
        put(&mut m, 0x20_0ff8, 0x1122_3344_5566_7788);
        put(&mut m, 0x21_0000, 0x99aa_bbcc_ddee_ff00);
        let mut b = [0u8; 8];
        read_virt(&m, &r, 0x40_0ffc, &mut b, SUP_READ).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0xddee_ff00_1122_3344);
        // Writing across into the read-only page faults and changes nothing.
        let e = write_virt(&mut m, &r, 0x40_0ffc, &[0; 8], SUP_READ).unwrap_err();
        assert!(matches!(e.error, WalkError::PageFault { .. }));
        assert_eq!(e.address, 0x40_1000, "the faulting page, as CR2 holds it");
        let mut c = [0u8; 4];
        m.read(0x20_0ffc, &mut c).unwrap();
        assert_eq!(u32::from_le_bytes(c), 0x1122_3344);
    }
}
