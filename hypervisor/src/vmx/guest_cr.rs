//! Emulating writes to CR0, CR3 and CR4 when they exit (SDM Vol. 3A 2.5,
//! MOV-to-CR in Vol. 2B; Vol. 3C 26.3.1.1, 29.4 for what VMX requires).
//!
//! L0 owns only the bits VMX operation forces (CR0.NE, CR4.VMXE): those are
//! in the guest/host masks, so a guest write exits only when it differs
//! from the read shadow in one of them. Then L0 carries out the whole write,
//! with every check and side effect the CPU would have applied.
//!
//! [`read_cr_state`] and [`write_cr_state`] move the state between a VMCS
//! (real values, read shadows, guest/host masks) and [`CrState`]; both
//! levels use them, L1's VMCS01 and the nested exit's load of L1's host
//! state alike.

use super::caps::entry;
use super::{Field as F, Vmcs};
use crate::guest_mem::walk::PagingRegs;
use crate::regs::{
    AR_L, AR_TYPE, CR0_CD, CR0_ET, CR0_NW, CR0_PE, CR0_PG, CR4_LA57, CR4_PAE, CR4_PCIDE, CR4_PGE,
    CR4_PSE, CR4_SMEP, EFER_LMA, EFER_LME,
};

/// CR0 bits that exist (SDM 2.5); writes of other low bits are ignored.
const CR0_DEFINED: u64 = 0xe005_003f;

/// The control-register state of a guest, as the guest sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// CS.L: executing 64-bit code.
    pub cs_long: bool,
}

/// What L0 imposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrPolicy {
    /// Bits the hardware needs set in the real register; guests see the
    /// read shadow for them.
    pub cr0_forced: u64,
    pub cr4_forced: u64,
    /// CR4 bits a guest may set (the CPU's FIXED1, minus what L0 hides).
    pub cr4_allowed: u64,
}

/// Side effects the caller must carry out after a successful write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// PAE paging is (still) on outside IA-32e mode: reload PDPTEs from CR3.
    pub load_pdptes: bool,
    /// Translations changed: flush the guest's TLB entries (its VPID).
    pub flush_tlb: bool,
    /// CR0.CD or CR0.NW changed: load these (CD | NW as the guest now has
    /// them) into the CPU's CR0. VM entry leaves both bits as they are and
    /// so does VM exit (SDM Vol. 3C 27.3.2.1, 28.5.1): they are the
    /// physical register's, shared by L0 and its guest, and a write L0
    /// emulates reaches the CPU only if L0 makes it.
    pub cache_mode: Option<u64>,
}

/// The write faults with #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneralProtection;

fn pae_paging(s: &CrState) -> bool {
    s.cr0 & CR0_PG != 0 && s.cr4 & CR4_PAE != 0 && s.efer & EFER_LMA == 0
}

impl CrState {
    /// Real register value for the VMCS guest field.
    pub fn cr0_actual(&self, p: &CrPolicy) -> u64 {
        self.cr0 | p.cr0_forced
    }
    pub fn cr4_actual(&self, p: &CrPolicy) -> u64 {
        self.cr4 | p.cr4_forced
    }
    /// Whether the "IA-32e mode guest" entry control must be set.
    pub fn ia32e(&self) -> bool {
        self.efer & EFER_LMA != 0
    }
}

/// MOV to CR0 (also CLTS and LMSW, which the caller turns into a value).
pub fn write_cr0(s: &mut CrState, value: u64) -> Result<Effects, GeneralProtection> {
    if value >> 32 != 0 {
        return Err(GeneralProtection);
    }
    let new = (value & CR0_DEFINED) | CR0_ET;
    if new & CR0_PG != 0 && new & CR0_PE == 0 {
        return Err(GeneralProtection);
    }
    if new & CR0_NW != 0 && new & CR0_CD == 0 {
        return Err(GeneralProtection);
    }
    let old = *s;
    let enabling = new & CR0_PG != 0 && old.cr0 & CR0_PG == 0;
    let disabling = new & CR0_PG == 0 && old.cr0 & CR0_PG != 0;
    if enabling && s.efer & EFER_LME != 0 && s.cr4 & CR4_PAE == 0 {
        return Err(GeneralProtection);
    }
    if disabling && (s.cr4 & CR4_PCIDE != 0 || (s.efer & EFER_LMA != 0 && s.cs_long)) {
        return Err(GeneralProtection);
    }
    s.cr0 = new;
    if enabling && s.efer & EFER_LME != 0 {
        s.efer |= EFER_LMA;
    }
    if disabling {
        s.efer &= !EFER_LMA;
    }
    let paging_changed = (old.cr0 ^ new) & (CR0_PG | CR0_PE | 1 << 16) != 0; // PG, PE, WP
    let cache_bits = CR0_CD | CR0_NW;
    Ok(Effects {
        load_pdptes: pae_paging(s) && paging_changed,
        flush_tlb: paging_changed,
        cache_mode: ((old.cr0 ^ new) & cache_bits != 0).then_some(new & cache_bits),
    })
}

/// MOV to CR4.
pub fn write_cr4(s: &mut CrState, value: u64, p: &CrPolicy) -> Result<Effects, GeneralProtection> {
    if value & !p.cr4_allowed != 0 {
        return Err(GeneralProtection);
    }
    let old = *s;
    let long = s.efer & EFER_LMA != 0;
    if long && value & CR4_PAE == 0 {
        return Err(GeneralProtection);
    }
    if long && (value ^ old.cr4) & CR4_LA57 != 0 {
        return Err(GeneralProtection);
    }
    if value & CR4_PCIDE != 0 && old.cr4 & CR4_PCIDE == 0 && (!long || s.cr3 & 0xfff != 0) {
        return Err(GeneralProtection);
    }
    s.cr4 = value;
    let changed = old.cr4 ^ value;
    let paging_bits = CR4_PSE | CR4_PAE | CR4_PGE | CR4_PCIDE | CR4_SMEP | CR4_LA57;
    Ok(Effects {
        load_pdptes: pae_paging(s) && changed & (CR4_PAE | CR4_PGE | CR4_PSE | CR4_SMEP) != 0,
        flush_tlb: changed & paging_bits != 0,
        cache_mode: None,
    })
}

/// MOV to CR3 (only when CR3-load exiting is on; not for L1 today).
pub fn write_cr3(
    s: &mut CrState,
    value: u64,
    maxphyaddr: u8,
) -> Result<Effects, GeneralProtection> {
    let long = s.efer & EFER_LMA != 0;
    // Bit 63 (with PCIDE) asks not to flush; it is not part of CR3.
    let no_flush = long && s.cr4 & CR4_PCIDE != 0 && value & (1 << 63) != 0;
    let v = if long {
        value & !(1 << 63)
    } else {
        value & 0xffff_ffff
    };
    if long && v >> maxphyaddr != 0 {
        return Err(GeneralProtection);
    }
    s.cr3 = v;
    Ok(Effects {
        load_pdptes: pae_paging(s),
        flush_tlb: !no_flush,
        cache_mode: None,
    })
}

/// Validates four PDPTEs for PAE paging (SDM Vol. 3A 4.4.1): a present
/// entry with reserved bits set makes the load #GP.
pub fn check_pdptes(pdptes: &[u64; 4], maxphyaddr: u8) -> Result<(), GeneralProtection> {
    let reserved = 0x1e6 | !((1u64 << maxphyaddr) - 1);
    match pdptes.iter().any(|&e| e & 1 != 0 && e & reserved != 0) {
        true => Err(GeneralProtection),
        false => Ok(()),
    }
}

/// The CR state the guest sees, from the VMCS.
pub fn read_cr_state(v: &impl Vmcs) -> CrState {
    let view = |real: F, shadow: F, mask: F| {
        (v.read(real) & !v.read(mask)) | (v.read(shadow) & v.read(mask))
    };
    CrState {
        cr0: view(F::GUEST_CR0, F::CR0_READ_SHADOW, F::CR0_GUEST_HOST_MASK),
        cr3: v.read(F::GUEST_CR3),
        cr4: view(F::GUEST_CR4, F::CR4_READ_SHADOW, F::CR4_GUEST_HOST_MASK),
        efer: v.read(F::GUEST_IA32_EFER),
        cs_long: v.read(F::GUEST_CS_AR_BYTES) & AR_L != 0,
    }
}

/// TR's type for an IA-32e mode guest: a busy 64-bit TSS.
const TSS_BUSY_64: u64 = 11;

/// Writes `s` back: real registers, read shadows, EFER and the IA-32e
/// entry control. Entering IA-32e mode also makes TR's type a busy 64-bit
/// TSS when it is not one: VMX requires that type of an IA-32e mode guest
/// (SDM Vol. 3C 27.3.1.2) while the processor itself only checks TR when
/// it is used, so a guest that enables long mode with the TR of reset (a
/// busy 16-bit TSS: an AP just started by a SIPI) runs on, as it would on
/// bare metal, until its LTR. (KVM makes the same fix-up.)
pub fn write_cr_state(v: &mut impl Vmcs, s: &CrState, p: &CrPolicy) {
    v.write(F::GUEST_CR0, s.cr0_actual(p));
    v.write(F::CR0_READ_SHADOW, s.cr0);
    v.write(F::GUEST_CR3, s.cr3);
    v.write(F::GUEST_CR4, s.cr4_actual(p));
    v.write(F::CR4_READ_SHADOW, s.cr4);
    v.write(F::GUEST_IA32_EFER, s.efer);
    if s.ia32e() {
        v.set_bits(F::VM_ENTRY_CONTROLS, entry::IA32E_MODE_GUEST as u64);
        let tr = v.read(F::GUEST_TR_AR_BYTES);
        if tr & AR_TYPE != TSS_BUSY_64 {
            v.write(F::GUEST_TR_AR_BYTES, tr & !AR_TYPE | TSS_BUSY_64);
        }
    } else {
        v.clear_bits(F::VM_ENTRY_CONTROLS, entry::IA32E_MODE_GUEST as u64);
    }
}

/// The registers the guest's paging runs on, as the VMCS holds them (the
/// real CR0/CR4, not the read shadows: the bits VMX forces do not bear on
/// paging), for walking its page tables.
pub fn paging_regs(v: &impl Vmcs, maxphyaddr: u8) -> PagingRegs {
    PagingRegs {
        cr0: v.read(F::GUEST_CR0),
        cr3: v.read(F::GUEST_CR3),
        cr4: v.read(F::GUEST_CR4),
        efer: v.read(F::GUEST_IA32_EFER),
        pdptes: [
            F::GUEST_PDPTE0,
            F::GUEST_PDPTE1,
            F::GUEST_PDPTE2,
            F::GUEST_PDPTE3,
        ]
        .map(|f| v.read(f)),
        maxphyaddr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::{CR0_NE, CR4_SMXE, CR4_VMXE};

    const P: CrPolicy = CrPolicy {
        cr0_forced: CR0_NE,
        cr4_forced: CR4_VMXE,
        cr4_allowed: 0x37_27ff & !CR4_VMXE & !CR4_SMXE,
    };

    fn real_mode() -> CrState {
        CrState {
            cr0: 0x10,
            ..Default::default()
        }
    }

    #[test]
    fn protected_then_long_mode() {
        let mut s = real_mode();
        assert_eq!(
            write_cr0(&mut s, 0x11),
            Ok(Effects {
                load_pdptes: false,
                flush_tlb: true,
                cache_mode: None,
            })
        );
        write_cr4(&mut s, CR4_PAE, &P).unwrap();
        s.efer = EFER_LME;
        let e = write_cr0(&mut s, 0x8000_0011).unwrap();
        assert!(s.ia32e());
        assert!(!e.load_pdptes, "no PDPTEs in IA-32e mode");
        assert_eq!(s.cr0_actual(&P), 0x8000_0031);
        assert_eq!(s.cr4_actual(&P), CR4_PAE | CR4_VMXE);
    }

    #[test]
    fn pae_paging_loads_pdptes() {
        let mut s = CrState {
            cr0: 0x11,
            cr4: CR4_PAE,
            ..Default::default()
        };
        let e = write_cr0(&mut s, 0x8000_0011).unwrap();
        assert!(e.load_pdptes && !s.ia32e());
        let e = write_cr4(&mut s, CR4_PAE | CR4_PGE, &P).unwrap();
        assert!(e.load_pdptes && e.flush_tlb);
    }

    #[test]
    fn cr0_faults() {
        let mut s = real_mode();
        assert_eq!(write_cr0(&mut s, 1 << 32), Err(GeneralProtection));
        assert_eq!(
            write_cr0(&mut s, CR0_PG),
            Err(GeneralProtection),
            "PG without PE"
        );
        assert_eq!(
            write_cr0(&mut s, CR0_NW | CR0_PE),
            Err(GeneralProtection),
            "NW without CD"
        );
        s.efer = EFER_LME;
        s.cr0 = 0x11;
        assert_eq!(
            write_cr0(&mut s, 0x8000_0011),
            Err(GeneralProtection),
            "long mode without PAE"
        );
        assert_eq!(s.cr0, 0x11, "state unchanged on #GP");
        // Leaving paging from 64-bit code.
        let mut l = CrState {
            cr0: 0x8000_0011,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            cs_long: true,
            cr3: 0,
        };
        assert_eq!(write_cr0(&mut l, 0x11), Err(GeneralProtection));
        l.cs_long = false;
        write_cr0(&mut l, 0x11).unwrap();
        assert!(!l.ia32e());
    }

    #[test]
    fn cache_mode_changes_are_for_the_cpu() {
        let mut s = CrState {
            cr0: 0x8005_0033,
            ..Default::default()
        };
        let e = write_cr0(&mut s, 0x8005_0033 | CR0_CD).unwrap();
        assert_eq!(e.cache_mode, Some(CR0_CD), "no-fill mode");
        let e = write_cr0(&mut s, 0x8005_0033 | CR0_CD | 1 << 3).unwrap();
        assert_eq!(e.cache_mode, None, "TS alone leaves the cache mode");
        let e = write_cr0(&mut s, 0x8005_0033).unwrap();
        assert_eq!(e.cache_mode, Some(0), "caches back on");
        // The reset state's CD | NW, cleared at once.
        s.cr0 = 0x6000_0011;
        let e = write_cr0(&mut s, 0x11).unwrap();
        assert_eq!(e.cache_mode, Some(0));
        assert_eq!(
            write_cr0(&mut s, CR0_NW | 0x11),
            Err(GeneralProtection),
            "NW without CD never reaches the CPU"
        );
    }

    #[test]
    fn reserved_low_cr0_bits_are_ignored_and_et_sticks() {
        let mut s = real_mode();
        write_cr0(&mut s, 0x11 | 1 << 7).unwrap();
        assert_eq!(s.cr0, 0x11);
        write_cr0(&mut s, 0x1).unwrap();
        assert_eq!(s.cr0, 0x11);
    }

    #[test]
    fn cr4_faults() {
        let mut s = real_mode();
        assert_eq!(
            write_cr4(&mut s, CR4_VMXE, &P),
            Err(GeneralProtection),
            "VMX not offered"
        );
        assert_eq!(
            write_cr4(&mut s, 1 << 23, &P),
            Err(GeneralProtection),
            "reserved bit"
        );
        assert_eq!(
            write_cr4(&mut s, CR4_PCIDE, &P),
            Err(GeneralProtection),
            "PCIDE outside long mode"
        );
        let mut l = CrState {
            cr0: 0x8000_0011,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            cs_long: true,
            cr3: 0x1000,
        };
        assert_eq!(
            write_cr4(&mut l, 0, &P),
            Err(GeneralProtection),
            "clearing PAE in long mode"
        );
        assert_eq!(
            write_cr4(&mut l, CR4_PAE | CR4_LA57, &P),
            Err(GeneralProtection)
        );
        assert_eq!(
            write_cr4(&mut l, CR4_PAE | CR4_PCIDE, &P),
            Ok(Effects {
                load_pdptes: false,
                flush_tlb: true,
                cache_mode: None,
            })
        );
        l.cr4 = CR4_PAE;
        l.cr3 = 0x1001;
        assert_eq!(
            write_cr4(&mut l, CR4_PAE | CR4_PCIDE, &P),
            Err(GeneralProtection),
            "PCID bits in CR3"
        );
    }

    #[test]
    fn cr3_writes() {
        let mut s = CrState {
            cr0: 0x8000_0011,
            cr4: CR4_PAE | CR4_PCIDE,
            efer: EFER_LME | EFER_LMA,
            cs_long: true,
            cr3: 0,
        };
        assert_eq!(
            write_cr3(&mut s, 1 << 63 | 0x5000, 39),
            Ok(Effects {
                load_pdptes: false,
                flush_tlb: false,
                cache_mode: None,
            })
        );
        assert_eq!(s.cr3, 0x5000);
        assert_eq!(write_cr3(&mut s, 1 << 45, 39), Err(GeneralProtection));
        let mut p = CrState {
            cr0: 0x8000_0011,
            cr4: CR4_PAE,
            ..Default::default()
        };
        assert!(write_cr3(&mut p, 0x1_2345_6000, 39).unwrap().load_pdptes);
        assert_eq!(p.cr3, 0x2345_6000);
    }

    #[test]
    fn pdpte_checks() {
        assert!(
            check_pdptes(&[0x1001, 0, 0x2001, 0x3000 | 0x1e6], 39).is_ok(),
            "not-present entries are not checked"
        );
        assert!(check_pdptes(&[0x1001 | 0x2, 0, 0, 0], 39).is_err());
        assert!(check_pdptes(&[(1 << 40) | 1, 0, 0, 0], 39).is_err());
    }

    #[test]
    fn entering_long_mode_makes_tr_a_busy_64_bit_tss() {
        let mut v = crate::nested::testutil::valid_vmcs12();
        v.set(F::GUEST_TR_AR_BYTES, 0x83); // reset's busy 16-bit TSS
        let mut s = real_mode();
        write_cr0(&mut s, 0x11).unwrap();
        write_cr4(&mut s, CR4_PAE, &P).unwrap();
        write_cr_state(&mut v, &s, &P);
        assert_eq!(v.get(F::GUEST_TR_AR_BYTES), 0x83, "not IA-32e yet");
        s.efer = EFER_LME;
        write_cr0(&mut s, 0x8000_0011).unwrap();
        write_cr_state(&mut v, &s, &P);
        assert_eq!(v.get(F::GUEST_TR_AR_BYTES), 0x8b);
        assert_ne!(
            v.get(F::VM_ENTRY_CONTROLS) & entry::IA32E_MODE_GUEST as u64,
            0
        );
    }
}
