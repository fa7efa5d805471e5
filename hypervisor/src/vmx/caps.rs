//! VMX capability MSRs (SDM Vol. 3D, Appendix A) and how a control value is
//! fitted to them: each control MSR's low half lists bits that must be 1,
//! its high half bits that may be 1.

use core::fmt;

pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const IA32_VMX_BASIC: u32 = 0x480;
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
pub const IA32_VMX_MISC: u32 = 0x485;
pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
pub const IA32_VMX_VMCS_ENUM: u32 = 0x48a;
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
pub const IA32_VMX_VMFUNC: u32 = 0x491;

/// IA32_FEATURE_CONTROL bits.
pub const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;

/// Which control a value is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Pin,
    Primary,
    Secondary,
    Exit,
    Entry,
}

/// A control bit L0 needs that the CPU cannot set, or one it must set that
/// L0 cannot tolerate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlError {
    pub control: Control,
    pub missing: u32,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} VM-execution controls: the CPU cannot set bits {:#x} that L0 needs",
            self.control, self.missing
        )
    }
}

/// The capability MSR values L0 builds its VMCSs from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxCaps {
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
    pub ept_vpid: u64,
}

impl VmxCaps {
    /// The VMCS revision identifier (bits 30:0 of IA32_VMX_BASIC).
    pub fn revision(&self) -> u32 {
        self.basic as u32 & 0x7fff_ffff
    }

    fn msr(&self, c: Control) -> u64 {
        match c {
            Control::Pin => self.pin,
            Control::Primary => self.primary,
            Control::Secondary => self.secondary,
            Control::Exit => self.exit,
            Control::Entry => self.entry,
        }
    }

    /// Whether the CPU can set all of `bits` in control `c`.
    pub fn allows(&self, c: Control, bits: u32) -> bool {
        (self.msr(c) >> 32) as u32 & bits == bits
    }

    /// `required | optional-where-allowed`, plus the bits the CPU forces
    /// to 1. Fails if a required bit cannot be set.
    pub fn adjust(&self, c: Control, required: u32, optional: u32) -> Result<u32, ControlError> {
        let msr = self.msr(c);
        let (must, may) = (msr as u32, (msr >> 32) as u32);
        if required & !may != 0 {
            return Err(ControlError {
                control: c,
                missing: required & !may,
            });
        }
        Ok((required | (optional & may)) | must)
    }

    /// CR0 as VMX operation requires it (SDM Vol. 3D A.7).
    pub fn fix_cr0(&self, cr0: u64) -> u64 {
        (cr0 | self.cr0_fixed0) & self.cr0_fixed1
    }

    /// CR4 as VMX operation requires it (SDM Vol. 3D A.8).
    pub fn fix_cr4(&self, cr4: u64) -> u64 {
        (cr4 | self.cr4_fixed0) & self.cr4_fixed1
    }

    /// Every capability MSR value by name, for comparing two CPUs.
    pub fn named(&self) -> [(&'static str, u64); 12] {
        [
            ("IA32_VMX_BASIC", self.basic),
            ("pin-based controls", self.pin),
            ("primary controls", self.primary),
            ("secondary controls", self.secondary),
            ("exit controls", self.exit),
            ("entry controls", self.entry),
            ("IA32_VMX_MISC", self.misc),
            ("IA32_VMX_CR0_FIXED0", self.cr0_fixed0),
            ("IA32_VMX_CR0_FIXED1", self.cr0_fixed1),
            ("IA32_VMX_CR4_FIXED0", self.cr4_fixed0),
            ("IA32_VMX_CR4_FIXED1", self.cr4_fixed1),
            ("IA32_VMX_EPT_VPID_CAP", self.ept_vpid),
        ]
    }
}

/// Pin-based controls (SDM Vol. 3C 25.6.1).
pub mod pin {
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
    pub const NMI_EXITING: u32 = 1 << 3;
    pub const VIRTUAL_NMIS: u32 = 1 << 5;
    pub const PREEMPTION_TIMER: u32 = 1 << 6;
    pub const POSTED_INTERRUPTS: u32 = 1 << 7;
}

/// Primary processor-based controls (SDM Vol. 3C 25.6.2).
pub mod primary {
    pub const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
    pub const USE_TSC_OFFSETTING: u32 = 1 << 3;
    pub const HLT_EXITING: u32 = 1 << 7;
    pub const INVLPG_EXITING: u32 = 1 << 9;
    pub const MWAIT_EXITING: u32 = 1 << 10;
    pub const RDPMC_EXITING: u32 = 1 << 11;
    pub const RDTSC_EXITING: u32 = 1 << 12;
    pub const CR3_LOAD_EXITING: u32 = 1 << 15;
    pub const CR3_STORE_EXITING: u32 = 1 << 16;
    pub const ACTIVATE_TERTIARY: u32 = 1 << 17;
    pub const CR8_LOAD_EXITING: u32 = 1 << 19;
    pub const CR8_STORE_EXITING: u32 = 1 << 20;
    pub const USE_TPR_SHADOW: u32 = 1 << 21;
    pub const NMI_WINDOW_EXITING: u32 = 1 << 22;
    pub const MOV_DR_EXITING: u32 = 1 << 23;
    pub const UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
    pub const USE_IO_BITMAPS: u32 = 1 << 25;
    pub const MONITOR_TRAP_FLAG: u32 = 1 << 27;
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    pub const MONITOR_EXITING: u32 = 1 << 29;
    pub const PAUSE_EXITING: u32 = 1 << 30;
    pub const ACTIVATE_SECONDARY: u32 = 1 << 31;
}

/// Secondary processor-based controls (SDM Vol. 3C 25.6.2).
pub mod secondary {
    pub const VIRTUALIZE_APIC_ACCESSES: u32 = 1 << 0;
    pub const ENABLE_EPT: u32 = 1 << 1;
    pub const DESCRIPTOR_TABLE_EXITING: u32 = 1 << 2;
    pub const ENABLE_RDTSCP: u32 = 1 << 3;
    pub const VIRTUALIZE_X2APIC: u32 = 1 << 4;
    pub const ENABLE_VPID: u32 = 1 << 5;
    pub const WBINVD_EXITING: u32 = 1 << 6;
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    pub const APIC_REGISTER_VIRT: u32 = 1 << 8;
    pub const VIRTUAL_INTERRUPT_DELIVERY: u32 = 1 << 9;
    pub const PAUSE_LOOP_EXITING: u32 = 1 << 10;
    pub const RDRAND_EXITING: u32 = 1 << 11;
    pub const ENABLE_INVPCID: u32 = 1 << 12;
    pub const ENABLE_VMFUNC: u32 = 1 << 13;
    pub const VMCS_SHADOWING: u32 = 1 << 14;
    pub const RDSEED_EXITING: u32 = 1 << 16;
    pub const ENABLE_PML: u32 = 1 << 17;
    pub const EPT_VIOLATION_VE: u32 = 1 << 18;
    pub const ENABLE_XSAVES: u32 = 1 << 20;
    pub const MODE_BASED_EPT_EXEC: u32 = 1 << 22;
    pub const TSC_SCALING: u32 = 1 << 25;
    pub const ENABLE_USER_WAIT_PAUSE: u32 = 1 << 26;
}

/// IA32_VMX_BASIC bits (SDM Vol. 3D A.1).
pub mod basic {
    /// Bits 44:32: bytes of the VMXON region and VMCS.
    pub const REGION_SIZE_SHIFT: u32 = 32;
    pub const REGION_SIZE_MASK: u64 = 0x1fff;
    /// Physical addresses of VMX structures are limited to 32 bits.
    pub const PHYS_ADDR_32: u64 = 1 << 48;
    /// Bits 53:50: the memory type of VMCS accesses (6 = write-back).
    pub const MEMORY_TYPE_SHIFT: u32 = 50;
    pub const MEMORY_TYPE_WB: u64 = 6 << MEMORY_TYPE_SHIFT;
    /// VM exits from INS/OUTS report instruction information.
    pub const INS_OUTS_INFO: u64 = 1 << 54;
    /// The TRUE_* control MSRs exist.
    pub const TRUE_CONTROLS: u64 = 1 << 55;
}

/// IA32_VMX_MISC bits (SDM Vol. 3D A.6).
pub mod misc {
    /// Bits 4:0: the preemption timer counts at TSC >> this rate.
    pub const TIMER_RATE: u64 = 0x1f;
    /// EFER.LMA is stored into the "IA-32e mode guest" entry control on exits.
    pub const STORE_LMA: u64 = 1 << 5;
    /// Activity states: HLT (bit 6), shutdown (7), wait-for-SIPI (8).
    pub const ACTIVITY_HLT: u64 = 1 << 6;
    pub const ACTIVITY_SHUTDOWN: u64 = 1 << 7;
    pub const ACTIVITY_WAIT_FOR_SIPI: u64 = 1 << 8;
    pub const ACTIVITY_MASK: u64 = 7 << 6;
    /// Bits 24:16: how many CR3-target values.
    pub const CR3_TARGETS_SHIFT: u32 = 16;
    /// VMWRITE may write any field, the exit-information fields included.
    pub const VMWRITE_ANY_FIELD: u64 = 1 << 29;
    /// Injection of events with instruction length 0.
    pub const ZERO_LENGTH_INJECTION: u64 = 1 << 30;
}

/// IA32_VMX_EPT_VPID_CAP bits (SDM Vol. 3D A.10).
pub mod ept_vpid {
    pub const EXECUTE_ONLY: u64 = 1 << 0;
    pub const WALK_4_LEVELS: u64 = 1 << 6;
    pub const MEMORY_TYPE_UC: u64 = 1 << 8;
    pub const MEMORY_TYPE_WB: u64 = 1 << 14;
    pub const PAGE_2M: u64 = 1 << 16;
    pub const PAGE_1G: u64 = 1 << 17;
    pub const INVEPT: u64 = 1 << 20;
    pub const ACCESSED_DIRTY: u64 = 1 << 21;
    pub const INVEPT_SINGLE_CONTEXT: u64 = 1 << 25;
    pub const INVEPT_ALL_CONTEXT: u64 = 1 << 26;
    pub const INVVPID: u64 = 1 << 32;
    /// INVVPID type `t` (0 individual address, 1 single context, 2 all
    /// context, 3 single context retaining globals) is bit 40 + t.
    pub const fn invvpid_type(t: u64) -> u64 {
        1 << (40 + t)
    }
    pub const INVVPID_ALL_TYPES: u64 =
        invvpid_type(0) | invvpid_type(1) | invvpid_type(2) | invvpid_type(3);
}

/// VM-exit controls (SDM Vol. 3C 25.7.1).
pub mod exit {
    pub const SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
    pub const LOAD_PERF_GLOBAL_CTRL: u32 = 1 << 12;
    pub const ACK_INTERRUPT_ON_EXIT: u32 = 1 << 15;
    pub const SAVE_PAT: u32 = 1 << 18;
    pub const LOAD_PAT: u32 = 1 << 19;
    pub const SAVE_EFER: u32 = 1 << 20;
    pub const LOAD_EFER: u32 = 1 << 21;
    pub const SAVE_PREEMPTION_TIMER: u32 = 1 << 22;
}

/// VM-entry controls (SDM Vol. 3C 25.8.1).
pub mod entry {
    pub const LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const IA32E_MODE_GUEST: u32 = 1 << 9;
    pub const ENTRY_TO_SMM: u32 = 1 << 10;
    pub const LOAD_PERF_GLOBAL_CTRL: u32 = 1 << 13;
    pub const LOAD_PAT: u32 = 1 << 14;
    pub const LOAD_EFER: u32 = 1 << 15;
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The values TESTBED.md recorded on Bochs corei7_skylake_x: every
    /// host test that needs a real CPU's capabilities uses these.
    pub fn bochs_skylake() -> VmxCaps {
        VmxCaps {
            basic: 0x00d8_1000_0000_002b,
            pin: 0x7f_0000_0016,
            primary: 0xf7f9_fffe_0400_6172,
            secondary: 0x0217_7fff_0000_0000,
            exit: 0x7f_ffff_0003_6dff,
            entry: 0xffff_0000_11ff,
            misc: 0x6004_01e0,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xffff_ffff,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x37_27ff,
            ept_vpid: 0xf01_0633_4141,
        }
    }

    #[test]
    fn adjust_applies_must_and_may() {
        let c = bochs_skylake();
        // Pin: must-be-one 0x16 is forced in; bit 6 (preemption timer) allowed.
        assert_eq!(c.adjust(Control::Pin, 0, 0), Ok(0x16));
        assert_eq!(c.adjust(Control::Pin, pin::PREEMPTION_TIMER, 0), Ok(0x56));
        // Optional bits the CPU lacks are dropped, required ones fail.
        assert_eq!(c.adjust(Control::Pin, 0, 1 << 8), Ok(0x16));
        assert_eq!(
            c.adjust(Control::Pin, 1 << 8, 0),
            Err(ControlError {
                control: Control::Pin,
                missing: 1 << 8
            })
        );
    }

    #[test]
    fn true_controls_let_cr3_exiting_be_cleared() {
        // With the true primary MSR (allowed-0 = 0x04006172) CR3 load/store
        // exiting (bits 15, 16) are not forced on.
        let c = bochs_skylake();
        let v = c
            .adjust(
                Control::Primary,
                primary::USE_IO_BITMAPS | primary::ACTIVATE_SECONDARY,
                0,
            )
            .unwrap();
        assert_eq!(
            v & (primary::CR3_LOAD_EXITING | primary::CR3_STORE_EXITING),
            0
        );
        assert_eq!(c.revision(), 0x2b);
    }

    #[test]
    fn fixed_bits() {
        let c = bochs_skylake();
        assert_eq!(c.fix_cr0(0x11), 0x8000_0031);
        assert_eq!(c.fix_cr4(0x20), 0x2020);
        assert_eq!(c.fix_cr4(1 << 23), 0x2000); // a bit FIXED1 does not allow is cleared
    }

    #[test]
    fn allows() {
        let c = bochs_skylake();
        assert!(c.allows(
            Control::Secondary,
            secondary::ENABLE_EPT | secondary::UNRESTRICTED_GUEST
        ));
        assert!(!c.allows(Control::Secondary, secondary::ENABLE_USER_WAIT_PAUSE));
    }
}
