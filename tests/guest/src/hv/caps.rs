//! The VMX capability MSRs (SDM Vol. 3D, Appendix A) and what they allow.
//! Plain data and arithmetic: the checks never assume a feature, they ask
//! this module (under L0 the capabilities are a whitelist, fewer than
//! Bochs offers).

use super::fields::{entry, exit, pin, proc, proc2};

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
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;

/// One control field's capability (SDM A.3-A.5): bits 31:0 are the
/// allowed-0 settings (a 1 there means the control must be 1), bits 63:32
/// the allowed-1 settings (a 0 there means the control must be 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ctl {
    pub must1: u32,
    pub may1: u32,
}

impl Ctl {
    pub fn from_msr(v: u64) -> Self {
        Ctl {
            must1: v as u32,
            may1: (v >> 32) as u32,
        }
    }
    /// The value to program: what we want, plus what must be 1, minus what
    /// may not be 1 (SDM A.3.1 "(wanted | allowed-0) & allowed-1").
    pub fn adjust(self, want: u32) -> u32 {
        (want | self.must1) & self.may1
    }
    pub fn can_set(self, bits: u32) -> bool {
        self.may1 & bits == bits
    }
    pub fn can_clear(self, bits: u32) -> bool {
        self.must1 & bits == 0
    }
    /// The lowest control bit that can never be 1 (a reserved setting).
    pub fn first_reserved_one(self) -> Option<u32> {
        (0..32).find(|b| self.may1 & (1 << b) == 0).map(|b| 1 << b)
    }
    /// The lowest control bit that can never be 0.
    pub fn first_required_one(self) -> Option<u32> {
        (0..32).find(|b| self.must1 & (1 << b) != 0).map(|b| 1 << b)
    }
}

/// Everything the test hypervisor reads about VMX before using it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    pub basic: u64,
    pub pin: Ctl,
    pub proc: Ctl,
    /// All zero when the primary controls cannot activate them.
    pub proc2: Ctl,
    pub exit: Ctl,
    pub entry: Ctl,
    pub misc: u64,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    /// Zero when neither EPT nor VPID can be enabled (A.10).
    pub ept_vpid: u64,
    /// CPUID.80000008H:EAX[7:0].
    pub maxphyaddr: u32,
}

impl Caps {
    /// Reads the capability MSRs with `rdmsr` (true controls when
    /// IA32_VMX_BASIC[55] says they exist, A.2).
    pub fn read(mut rdmsr: impl FnMut(u32) -> u64, maxphyaddr: u32) -> Caps {
        let basic = rdmsr(IA32_VMX_BASIC);
        let tru = basic & (1 << 55) != 0;
        let pick = |normal, truemsr| if tru { truemsr } else { normal };
        let proc = Ctl::from_msr(rdmsr(pick(
            IA32_VMX_PROCBASED_CTLS,
            IA32_VMX_TRUE_PROCBASED_CTLS,
        )));
        let proc2 = if proc.can_set(proc::SECONDARY) {
            Ctl::from_msr(rdmsr(IA32_VMX_PROCBASED_CTLS2))
        } else {
            Ctl::default()
        };
        let ept_vpid = if proc2.can_set(proc2::EPT) || proc2.can_set(proc2::VPID) {
            rdmsr(IA32_VMX_EPT_VPID_CAP)
        } else {
            0
        };
        Caps {
            basic,
            pin: Ctl::from_msr(rdmsr(pick(
                IA32_VMX_PINBASED_CTLS,
                IA32_VMX_TRUE_PINBASED_CTLS,
            ))),
            proc,
            proc2,
            exit: Ctl::from_msr(rdmsr(pick(IA32_VMX_EXIT_CTLS, IA32_VMX_TRUE_EXIT_CTLS))),
            entry: Ctl::from_msr(rdmsr(pick(IA32_VMX_ENTRY_CTLS, IA32_VMX_TRUE_ENTRY_CTLS))),
            misc: rdmsr(IA32_VMX_MISC),
            cr0_fixed0: rdmsr(IA32_VMX_CR0_FIXED0),
            cr0_fixed1: rdmsr(IA32_VMX_CR0_FIXED1),
            cr4_fixed0: rdmsr(IA32_VMX_CR4_FIXED0),
            cr4_fixed1: rdmsr(IA32_VMX_CR4_FIXED1),
            ept_vpid,
            maxphyaddr,
        }
    }

    /// VMCS revision identifier (A.1, bits 30:0).
    pub fn revision(&self) -> u32 {
        self.basic as u32 & 0x7fff_ffff
    }
    /// IA32_VMX_BASIC[54]: VM exits for INS/OUTS report instruction information.
    pub fn ins_outs_info(&self) -> bool {
        self.basic & (1 << 54) != 0
    }
    pub fn secondary(&self) -> bool {
        self.proc.can_set(proc::SECONDARY)
    }
    pub fn ept(&self) -> bool {
        self.secondary()
            && self.proc2.can_set(proc2::EPT)
            && self.ept_4level()
            && (self.ept_wb() || self.ept_uc())
    }
    pub fn unrestricted_guest(&self) -> bool {
        self.ept() && self.proc2.can_set(proc2::UNRESTRICTED_GUEST)
    }
    pub fn vpid(&self) -> bool {
        self.secondary() && self.proc2.can_set(proc2::VPID)
    }
    /// A.10: bit 0 execute-only translations.
    pub fn ept_execute_only(&self) -> bool {
        self.ept_vpid & 1 != 0
    }
    /// A.10: bit 6 page-walk length 4.
    pub fn ept_4level(&self) -> bool {
        self.ept_vpid & (1 << 6) != 0
    }
    pub fn ept_uc(&self) -> bool {
        self.ept_vpid & (1 << 8) != 0
    }
    pub fn ept_wb(&self) -> bool {
        self.ept_vpid & (1 << 14) != 0
    }
    pub fn ept_2m(&self) -> bool {
        self.ept_vpid & (1 << 16) != 0
    }
    pub fn invept(&self) -> bool {
        self.ept_vpid & (1 << 20) != 0
    }
    pub fn ept_ad(&self) -> bool {
        self.ept_vpid & (1 << 21) != 0
    }
    /// Secondary control 17: page-modification logging (SDM 29.3.6).
    pub fn pml(&self) -> bool {
        self.proc2.can_set(proc2::ENABLE_PML)
    }
    /// A.10 bit 22: EPT violations report bits 9-11 of the qualification.
    pub fn ept_advanced_info(&self) -> bool {
        self.ept_vpid & (1 << 22) != 0
    }
    /// INVEPT type 1 (single-context, bit 25) or 2 (all-context, bit 26).
    pub fn invept_type(&self, t: u64) -> bool {
        self.invept() && matches!(t, 1 | 2) && self.ept_vpid & (1 << (24 + t)) != 0
    }
    pub fn invvpid(&self) -> bool {
        self.ept_vpid & (1 << 32) != 0
    }
    /// INVVPID types 0-3 (bits 40-43).
    pub fn invvpid_type(&self, t: u64) -> bool {
        self.invvpid() && t < 4 && self.ept_vpid & (1 << (40 + t)) != 0
    }
    /// The EPT memory type for our mappings: write-back when offered.
    pub fn ept_memtype(&self) -> u64 {
        if self.ept_wb() {
            6
        } else {
            0
        }
    }
    /// MISC bits 4:0: the preemption timer counts once per 2^rate TSC ticks.
    pub fn preemption_timer_rate(&self) -> u32 {
        self.misc as u32 & 0x1f
    }
    /// MISC bits 24:16: number of CR3-target values.
    pub fn cr3_targets(&self) -> u32 {
        (self.misc >> 16) as u32 & 0x1ff
    }
    /// MISC bit 29: VMWRITE may write the VM-exit information fields.
    pub fn vmwrite_exit_info(&self) -> bool {
        self.misc & (1 << 29) != 0
    }
    /// MISC bits 8:6: HLT (bit 6), shutdown (7), wait-for-SIPI (8) activity states.
    pub fn activity_hlt(&self) -> bool {
        self.misc & (1 << 6) != 0
    }
    pub fn preemption_timer(&self) -> bool {
        self.pin.can_set(pin::PREEMPTION_TIMER)
    }
    pub fn exit_load_efer(&self) -> bool {
        self.exit.can_set(exit::SAVE_EFER | exit::LOAD_EFER) && self.entry.can_set(entry::LOAD_EFER)
    }
    /// Guest CR0 must have these bits; PE and PG are exempt for an
    /// unrestricted guest (26.3.1.1).
    pub fn guest_cr0_must1(&self, unrestricted: bool) -> u64 {
        let mut m = self.cr0_fixed0;
        if unrestricted {
            m &= !(1 | 1 << 31);
        }
        m
    }
    /// Physical addresses must be below 2^maxphyaddr; the VMXON/VMCS
    /// pointers are limited to 32 bits when IA32_VMX_BASIC[48] is set.
    pub fn phys_limit(&self) -> u64 {
        let bits = if self.basic & (1 << 48) != 0 {
            32
        } else {
            self.maxphyaddr
        };
        1u64 << bits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values Bochs's corei7_skylake_x reports (TESTBED.md).
    fn bochs(msr: u32) -> u64 {
        match msr {
            0x480 => 0x00d8_1000_0000_002b,
            0x481 => 0x7f_0000_0016,
            0x482 => 0xf7f9_fffe_0401_e172,
            0x483 => 0x7f_ffff_0003_6dff,
            0x484 => 0xffff_0000_11ff,
            0x485 => 0x6004_01e0,
            0x486 => 0x8000_0021,
            0x487 => 0xffff_ffff,
            0x488 => 0x2000,
            0x489 => 0x37_27ff,
            0x48a => 0x34,
            0x48b => 0x0217_7fff_0000_0000,
            0x48c => 0xf01_0633_4141,
            0x48d => 0x7f_0000_0016,
            0x48e => 0xf7f9_fffe_0401_e172 & !(3 << 15),
            0x48f => 0x7f_ffff_0003_6dfb,
            0x490 => 0xffff_0000_11fb,
            _ => 0,
        }
    }

    #[test]
    fn adjust_follows_allowed_settings() {
        let c = Ctl::from_msr(0x7f_0000_0016);
        assert_eq!(c.adjust(0), 0x16);
        assert_eq!(c.adjust(1 << 6 | 1 << 9), 0x56);
        assert!(c.can_set(1 << 6) && !c.can_set(1 << 7));
        assert!(!c.can_clear(1 << 1) && c.can_clear(1));
        assert_eq!(c.first_reserved_one(), Some(1 << 7));
        assert_eq!(c.first_required_one(), Some(1 << 1));
    }

    #[test]
    fn reads_bochs_caps() {
        let c = Caps::read(bochs, 40);
        assert_eq!(c.revision(), 0x2b);
        assert!(c.ept() && c.unrestricted_guest() && c.vpid() && c.invvpid());
        assert!(c.invept_type(1) && c.invept_type(2) && !c.invept_type(0) && !c.invept_type(3));
        assert!((0..4).all(|t| c.invvpid_type(t)) && !c.invvpid_type(4));
        assert!(c.ept_ad() && c.ept_2m() && c.ept_execute_only() && !c.ept_advanced_info());
        assert_eq!(c.cr3_targets(), 4);
        assert!(c.vmwrite_exit_info() && c.ins_outs_info() && c.activity_hlt());
        assert_eq!(c.guest_cr0_must1(true), 0x20);
        assert_eq!(c.guest_cr0_must1(false), 0x8000_0021);
        assert!(c.proc.can_clear(proc::CR3_LOAD_EXITING));
        assert_eq!(c.phys_limit(), 1 << 40);
    }

    #[test]
    fn no_secondary_means_no_ept() {
        let c = Caps::read(
            |m| {
                if m == 0x482 || m == 0x48e {
                    0x7fff_fffe_0401_e172
                } else {
                    bochs(m)
                }
            },
            40,
        );
        assert!(!c.secondary() && !c.ept() && !c.vpid() && c.ept_vpid == 0);
    }
}
