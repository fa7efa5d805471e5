//! The VMX capability MSRs L1 reads (SDM Vol. 3D, Appendix A): a whitelist
//! of what L0 emulates, intersected with what the CPU can do. Nothing is
//! advertised that L0 does not emulate.

use crate::regs::CR4_SMXE;
use crate::vmx::caps::{
    basic, entry, ept_vpid, exit, misc, pin, primary, secondary, Control, VmxCaps,
};
use crate::vmx::caps::{
    IA32_VMX_BASIC, IA32_VMX_CR0_FIXED0, IA32_VMX_CR0_FIXED1, IA32_VMX_CR4_FIXED0,
    IA32_VMX_CR4_FIXED1, IA32_VMX_ENTRY_CTLS, IA32_VMX_EPT_VPID_CAP, IA32_VMX_EXIT_CTLS,
    IA32_VMX_MISC, IA32_VMX_PINBASED_CTLS, IA32_VMX_PROCBASED_CTLS, IA32_VMX_PROCBASED_CTLS2,
    IA32_VMX_TRUE_ENTRY_CTLS, IA32_VMX_TRUE_EXIT_CTLS, IA32_VMX_TRUE_PINBASED_CTLS,
    IA32_VMX_TRUE_PROCBASED_CTLS, IA32_VMX_VMCS_ENUM,
};
use crate::vmx::fields::Field;

/// The revision identifier of L0's VMCS12 format ("L0" in ASCII).
pub const VMCS12_REVISION: u32 = 0x4c30;

/// Controls L0 emulates for L2, per control word.
const PIN: u32 =
    pin::EXTERNAL_INTERRUPT_EXITING | pin::NMI_EXITING | pin::VIRTUAL_NMIS | pin::PREEMPTION_TIMER;
/// Controls L0 emulates in software whether or not the CPU has them:
/// posted-interrupt processing and IPI virtualization (nested/posted.rs),
/// on top of the CPU's virtual-interrupt delivery.
const PIN_SOFT: u32 = pin::POSTED_INTERRUPTS;
const PRIMARY_SOFT: u32 = primary::ACTIVATE_TERTIARY;
/// IA32_VMX_PROCBASED_CTLS3 bits L0 emulates: IPI virtualization.
pub const TERTIARY_IPI_VIRT: u64 = 1 << 4;
/// The tertiary-controls capability MSR (SDM A.3.4).
pub const IA32_VMX_PROCBASED_CTLS3: u32 = 0x492;
const PRIMARY: u32 = primary::INTERRUPT_WINDOW_EXITING
    | primary::USE_TSC_OFFSETTING
    | primary::HLT_EXITING
    | primary::INVLPG_EXITING
    | primary::MWAIT_EXITING
    | primary::RDPMC_EXITING
    | primary::RDTSC_EXITING
    | primary::CR3_LOAD_EXITING
    | primary::CR3_STORE_EXITING
    | primary::CR8_LOAD_EXITING
    | primary::CR8_STORE_EXITING
    | primary::USE_TPR_SHADOW
    | primary::NMI_WINDOW_EXITING
    | primary::MOV_DR_EXITING
    | primary::UNCONDITIONAL_IO_EXITING
    | primary::USE_IO_BITMAPS
    | primary::MONITOR_TRAP_FLAG
    | primary::USE_MSR_BITMAPS
    | primary::MONITOR_EXITING
    | primary::PAUSE_EXITING
    | primary::ACTIVATE_SECONDARY;
const SECONDARY: u32 = secondary::VIRTUALIZE_APIC_ACCESSES
    | secondary::ENABLE_EPT
    | secondary::DESCRIPTOR_TABLE_EXITING
    | secondary::ENABLE_RDTSCP
    | secondary::VIRTUALIZE_X2APIC
    | secondary::ENABLE_VPID
    | secondary::WBINVD_EXITING
    | secondary::UNRESTRICTED_GUEST
    | secondary::APIC_REGISTER_VIRT
    | secondary::VIRTUAL_INTERRUPT_DELIVERY
    | secondary::PAUSE_LOOP_EXITING
    | secondary::RDRAND_EXITING
    | secondary::ENABLE_INVPCID
    | secondary::RDSEED_EXITING
    | secondary::ENABLE_XSAVES;
const EXIT: u32 = exit::SAVE_DEBUG_CONTROLS
    | exit::HOST_ADDRESS_SPACE_SIZE
    | exit::ACK_INTERRUPT_ON_EXIT
    | exit::SAVE_PAT
    | exit::LOAD_PAT
    | exit::SAVE_EFER
    | exit::LOAD_EFER
    | exit::SAVE_PREEMPTION_TIMER;
const ENTRY: u32 =
    entry::LOAD_DEBUG_CONTROLS | entry::IA32E_MODE_GUEST | entry::LOAD_PAT | entry::LOAD_EFER;

/// EPT/VPID capabilities L0 emulates (SDM A.10): execute-only, 4-level
/// walks, UC and WB, 2 MiB and 1 GiB pages, accessed and dirty flags (L0
/// sets them in EPT12, nested/ept_ad.rs, with the CPU's own flags in EPT02
/// making its page walks count as writes), INVEPT single/all-context,
/// INVVPID of all four types.
const EPT_VPID: u64 = ept_vpid::EXECUTE_ONLY
    | ept_vpid::ACCESSED_DIRTY
    | ept_vpid::WALK_4_LEVELS
    | ept_vpid::MEMORY_TYPE_UC
    | ept_vpid::MEMORY_TYPE_WB
    | ept_vpid::PAGE_2M
    | ept_vpid::PAGE_1G
    | ept_vpid::INVEPT
    | ept_vpid::INVEPT_SINGLE_CONTEXT
    | ept_vpid::INVEPT_ALL_CONTEXT
    | ept_vpid::INVVPID
    | ept_vpid::INVVPID_ALL_TYPES;

/// CR4 bits L1 may not set in L2 either: SMX is hidden from L1.
const CR4_HIDDEN: u64 = CR4_SMXE;

/// The VMX capability MSRs (IA32_VMX_BASIC .. IA32_VMX_VMFUNC, SDM A.1).
pub const VMX_MSRS: core::ops::RangeInclusive<u32> = 0x480..=0x492;

/// The capability values L1 sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedCaps {
    pub basic: u64,
    pub pin: u64,
    pub primary: u64,
    pub secondary: u64,
    pub exit: u64,
    pub entry: u64,
    pub misc: u64,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    pub vmcs_enum: u64,
    pub ept_vpid: u64,
    /// Tertiary controls that may be 1 (the MSR has no must-be-one half).
    pub tertiary: u64,
}

/// A control MSR as L1 sees it: the CPU's must-be-one bits, and as
/// may-be-one only what L0 emulates and the CPU can do.
fn ctl(host: u64, emulated: u32) -> u64 {
    let must = host as u32;
    let may = (host >> 32) as u32 & (emulated | must);
    (may as u64) << 32 | must as u64
}

/// The "default1" bits (SDM A.2): fixed to 1 in the non-true MSRs.
const DEFAULT1_PIN: u32 = 0x16;
const DEFAULT1_PRIMARY: u32 = 0x0401_e172;
const DEFAULT1_EXIT: u32 = 0x0003_6dff;
const DEFAULT1_ENTRY: u32 = 0x11ff;

impl NestedCaps {
    pub fn new(host: &VmxCaps) -> Self {
        let max_index = Field::ALL
            .iter()
            .map(|f| f.encoding().index())
            .max()
            .unwrap_or(0);
        let misc_keep = misc::TIMER_RATE | misc::STORE_LMA | misc::ZERO_LENGTH_INJECTION;
        let cr3_targets = ((host.misc >> misc::CR3_TARGETS_SHIFT) & 0x1ff).min(4);
        // The software posting needs the CPU's virtual-interrupt delivery
        // (and APIC-register virtualization, for IPIs) below it.
        let host_may2 = (host.secondary >> 32) as u32;
        let vid = host_may2
            & (secondary::VIRTUAL_INTERRUPT_DELIVERY | secondary::APIC_REGISTER_VIRT)
            == secondary::VIRTUAL_INTERRUPT_DELIVERY | secondary::APIC_REGISTER_VIRT;
        // Page-modification logging is L0's, in software (it logs the
        // dirty flags L0 sets in EPT12), offered with EPT A/D flags and
        // where the CPU has PML too: the shadow VMCS holds the PML index
        // for L1 (shadow_vmcs.rs), which needs the field to exist.
        let pml = if host.ept_vpid & ept_vpid::ACCESSED_DIRTY != 0 {
            secondary::ENABLE_PML
        } else {
            0
        };
        let soft = |word: u64, bits: u32| {
            if vid {
                word | (bits as u64) << 32
            } else {
                word
            }
        };
        NestedCaps {
            basic: VMCS12_REVISION as u64
                | 4096 << basic::REGION_SIZE_SHIFT
                | basic::MEMORY_TYPE_WB
                | host.basic & basic::INS_OUTS_INFO
                | basic::TRUE_CONTROLS,
            pin: soft(ctl(host.pin, PIN), PIN_SOFT),
            primary: soft(ctl(host.primary, PRIMARY), PRIMARY_SOFT),
            secondary: ctl(host.secondary, SECONDARY | pml),
            exit: ctl(host.exit, EXIT),
            entry: ctl(host.entry, ENTRY),
            // Activity state HLT only; VMWRITE to any field.
            misc: host.misc & misc_keep
                | misc::ACTIVITY_HLT
                | cr3_targets << misc::CR3_TARGETS_SHIFT
                | misc::VMWRITE_ANY_FIELD,
            cr0_fixed0: host.cr0_fixed0,
            cr0_fixed1: host.cr0_fixed1,
            cr4_fixed0: host.cr4_fixed0,
            cr4_fixed1: host.cr4_fixed1 & !CR4_HIDDEN,
            vmcs_enum: (max_index as u64) << 1,
            ept_vpid: host.ept_vpid & EPT_VPID,
            tertiary: if vid { TERTIARY_IPI_VIRT } else { 0 },
        }
    }

    /// The value of a VMX capability MSR, or None if it does not exist
    /// for L1 (RDMSR then #GPs, SDM A.1).
    pub fn msr(&self, msr: u32) -> Option<u64> {
        let with_default1 = |v: u64, d: u32| v | d as u64 | (d as u64) << 32;
        let has_secondary = (self.primary >> 32) & primary::ACTIVATE_SECONDARY as u64 != 0;
        let has_ept_vpid = has_secondary
            && (self.secondary >> 32) & (secondary::ENABLE_EPT | secondary::ENABLE_VPID) as u64
                != 0;
        Some(match msr {
            IA32_VMX_BASIC => self.basic,
            IA32_VMX_PINBASED_CTLS => with_default1(self.pin, DEFAULT1_PIN),
            IA32_VMX_PROCBASED_CTLS => with_default1(self.primary, DEFAULT1_PRIMARY),
            IA32_VMX_EXIT_CTLS => with_default1(self.exit, DEFAULT1_EXIT),
            IA32_VMX_ENTRY_CTLS => with_default1(self.entry, DEFAULT1_ENTRY),
            IA32_VMX_MISC => self.misc,
            IA32_VMX_CR0_FIXED0 => self.cr0_fixed0,
            IA32_VMX_CR0_FIXED1 => self.cr0_fixed1,
            IA32_VMX_CR4_FIXED0 => self.cr4_fixed0,
            IA32_VMX_CR4_FIXED1 => self.cr4_fixed1,
            IA32_VMX_VMCS_ENUM => self.vmcs_enum,
            IA32_VMX_PROCBASED_CTLS2 if has_secondary => self.secondary,
            IA32_VMX_EPT_VPID_CAP if has_ept_vpid => self.ept_vpid,
            IA32_VMX_PROCBASED_CTLS3
                if (self.primary >> 32) & primary::ACTIVATE_TERTIARY as u64 != 0 =>
            {
                self.tertiary
            }
            IA32_VMX_TRUE_PINBASED_CTLS => self.pin,
            IA32_VMX_TRUE_PROCBASED_CTLS => self.primary,
            IA32_VMX_TRUE_EXIT_CTLS => self.exit,
            IA32_VMX_TRUE_ENTRY_CTLS => self.entry,
            _ => return None,
        })
    }

    fn word(&self, c: Control) -> u64 {
        match c {
            Control::Pin => self.pin,
            Control::Primary => self.primary,
            Control::Secondary => self.secondary,
            Control::Exit => self.exit,
            Control::Entry => self.entry,
        }
    }

    /// Whether `value` is a valid setting of control `c` for L1 (SDM 27.2.1.1).
    pub fn control_ok(&self, c: Control, value: u32) -> bool {
        let w = self.word(c);
        let (must, may) = (w as u32, (w >> 32) as u32);
        value & must == must && value & !may == 0
    }

    pub fn allows(&self, c: Control, bits: u32) -> bool {
        (self.word(c) >> 32) as u32 & bits == bits
    }

    /// Whether L1 may enter "unrestricted guest" (which relaxes CR0.PE/PG).
    pub fn unrestricted(&self) -> bool {
        self.allows(Control::Secondary, secondary::UNRESTRICTED_GUEST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::vmx::caps::tests::bochs_skylake as bochs;

    #[test]
    fn whitelist_hides_what_is_not_emulated() {
        let n = NestedCaps::new(&bochs());
        assert_eq!(n.basic as u32, VMCS12_REVISION);
        assert_ne!(n.basic & basic::TRUE_CONTROLS, 0, "true controls");
        assert_eq!((n.basic >> 32) & 0x1fff, 4096);
        // Posted interrupts and IPI virtualization: Bochs has neither, L0
        // emulates both on top of its virtual-interrupt delivery.
        assert!(n.allows(Control::Pin, pin::POSTED_INTERRUPTS));
        assert!(n.allows(Control::Primary, primary::ACTIVATE_TERTIARY));
        assert_eq!(n.tertiary, TERTIARY_IPI_VIRT);
        let mut no_vid = bochs();
        no_vid.secondary &= !((secondary::VIRTUAL_INTERRUPT_DELIVERY as u64) << 32);
        let m = NestedCaps::new(&no_vid);
        assert!(!m.allows(Control::Pin, pin::POSTED_INTERRUPTS));
        assert_eq!(m.msr(IA32_VMX_PROCBASED_CTLS3), None);
        assert!(n.allows(Control::Pin, pin::PREEMPTION_TIMER));
        // VMCS shadowing, EPT-violation #VE, TSC scaling, VMFUNC: hidden.
        for bit in [
            secondary::VMCS_SHADOWING,
            secondary::EPT_VIOLATION_VE,
            secondary::TSC_SCALING,
            secondary::ENABLE_VMFUNC,
        ] {
            assert!(!n.allows(Control::Secondary, bit), "{bit:#x}");
        }
        assert!(n.allows(
            Control::Secondary,
            secondary::ENABLE_EPT | secondary::UNRESTRICTED_GUEST | secondary::ENABLE_VPID
        ));
        // EPT A/D flags and PML (software) where the CPU has EPT A/D.
        assert_ne!(n.ept_vpid & ept_vpid::ACCESSED_DIRTY, 0, "EPT A/D");
        assert!(n.allows(Control::Secondary, secondary::ENABLE_PML));
        let mut no_ad = bochs();
        no_ad.ept_vpid &= !ept_vpid::ACCESSED_DIRTY;
        let m = NestedCaps::new(&no_ad);
        assert_eq!(m.ept_vpid & ept_vpid::ACCESSED_DIRTY, 0);
        assert!(!m.allows(Control::Secondary, secondary::ENABLE_PML));
        let mut no_pml = bochs();
        no_pml.secondary &= !((secondary::ENABLE_PML as u64) << 32);
        let m = NestedCaps::new(&no_pml);
        assert_ne!(m.ept_vpid & ept_vpid::ACCESSED_DIRTY, 0);
        assert!(!m.allows(Control::Secondary, secondary::ENABLE_PML));
        assert_ne!(
            n.ept_vpid & (ept_vpid::INVEPT_SINGLE_CONTEXT | ept_vpid::INVEPT_ALL_CONTEXT),
            0
        );
        assert_ne!(n.misc & misc::VMWRITE_ANY_FIELD, 0);
        assert_eq!(
            n.misc & misc::ACTIVITY_MASK,
            misc::ACTIVITY_HLT,
            "activity state HLT only"
        );
        assert_eq!((n.misc >> 16) & 0x1ff, 4, "min(host, 4) CR3 targets");
        assert_eq!(n.cr4_fixed1 & CR4_SMXE, 0, "SMXE hidden");
    }

    #[test]
    fn msrs_exist_as_the_sdm_says() {
        let n = NestedCaps::new(&bochs());
        assert_eq!(n.msr(0x480), Some(n.basic));
        // The non-true primary MSR reports default1 bits (CR3 exiting) as fixed.
        assert_eq!(n.msr(0x482).unwrap() as u32 & 0x18000, 0x18000);
        assert_eq!(n.msr(0x48e).unwrap() as u32 & 0x18000, 0);
        assert!(n.msr(0x48b).is_some() && n.msr(0x48c).is_some());
        assert_eq!(n.msr(0x491), None, "no VM functions");
        assert_eq!(n.msr(0x492), Some(TERTIARY_IPI_VIRT));
    }

    #[test]
    fn control_validation() {
        let n = NestedCaps::new(&bochs());
        assert!(n.control_ok(Control::Pin, 0x16));
        assert!(!n.control_ok(Control::Pin, 0x14), "default1 bit clear");
        assert!(n.control_ok(Control::Pin, 0x16 | pin::POSTED_INTERRUPTS));
        assert!(!n.control_ok(Control::Pin, 0x16 | 1 << 8));
        assert!(n.control_ok(Control::Primary, 0x0400_6172 | primary::USE_IO_BITMAPS));
        assert!(n.control_ok(Control::Secondary, 0));
        assert!(n.unrestricted());
    }

    #[test]
    fn enum_covers_the_table() {
        let n = NestedCaps::new(&bochs());
        let max = (n.vmcs_enum >> 1) & 0x1ff;
        assert!(Field::ALL
            .iter()
            .all(|f| f.encoding().index() as u64 <= max));
    }
}
