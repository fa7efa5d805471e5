//! The performance-monitoring and trace facilities L0 withholds from the
//! cloud VM, in one table: their CPUID bits and leaves, and their MSRs.
//!
//! Why withhold rather than share: their state survives VM exits. A PEBS
//! record (adaptive PEBS can hold XMM registers, which hold AES round keys
//! while L0 seals), a BTS record or Intel PT output is written through the
//! address L1 put in IA32_DS_AREA / IA32_RTIT_OUTPUT_BASE while L0 runs;
//! counters and architectural LBRs count and record in VMX root; energy
//! counters measure L0's work as it runs. So CPUID says the facilities are
//! absent and every MSR in the table exits and gets #GP, as on a CPU
//! without them (SDM Vol. 3B ch. 20 and 33; addresses from Vol. 4 ch. 2),
//! and IA32_XSS may not name their XSAVE components (XRSTORS would load
//! the MSRs without a WRMSR: SDM Vol. 1 ch. 13).
//!
//! IA32_DEBUGCTL stays L1's: a VM exit clears it (SDM Vol. 3C 28.5.1), so
//! legacy LBR, BTF and BTS never run in L0; the LBR stack they fill is only
//! readable through MSRs below, and BTS needs IA32_DS_AREA, below too.
//! IA32_MISC_ENABLE is not trapped: its bits 7, 11 and 12 only describe
//! facilities CPUID already withdraws (BTS and PEBS availability presume
//! CPUID.1:EDX.DS), and nothing here rests on them.

use core::ops::RangeInclusive;

/// A CPUID output register holding feature flags (the discriminant is
/// its index in [EAX, EBX, ECX, EDX]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Ebx = 1,
    Ecx = 2,
    Edx = 3,
}

/// One feature bit: CPUID(`leaf`, `subleaf`).`reg`[`bit`]; `subleaf`
/// None for a leaf that ignores ECX (leaf 1 answers the same for any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureBit {
    pub leaf: u32,
    pub subleaf: Option<u32>,
    pub reg: Reg,
    pub bit: u32,
}

/// A facility L1 does not get (named in a comment above each row).
pub struct Facility {
    /// Feature flags cleared in the guest's CPUID.
    pub flags: &'static [FeatureBit],
    /// Leaves (one subleaf, or None: every subleaf) that describe only
    /// this facility: all zero for the guest.
    pub leaves: &'static [(u32, Option<u32>)],
    /// Its XSAVE supervisor state component: an IA32_XSS bit, through
    /// which XRSTORS would load its MSRs without WRMSR.
    pub xss_component: Option<u32>,
    /// Its MSRs: each read and write exits and gets #GP.
    pub msrs: &'static [RangeInclusive<u32>],
}

/// IA32_XSS: which supervisor state components XSAVES/XRSTORS handle.
pub const IA32_XSS: u32 = 0xda0;

/// A flag of leaf 1 (which ignores ECX), or of subleaf 0 of leaf 7.
const fn flag(leaf: u32, reg: Reg, bit: u32) -> FeatureBit {
    let subleaf = if leaf == 7 { Some(0) } else { None };
    FeatureBit {
        leaf,
        subleaf,
        reg,
        bit,
    }
}

/// CPUID(0xD, 1).ECX: the IA32_XSS bits the CPU supports.
const fn xss_flag(component: u32) -> FeatureBit {
    FeatureBit {
        leaf: 0xd,
        subleaf: Some(1),
        reg: Reg::Ecx,
        bit: component,
    }
}

/// The one table.
pub const WITHHELD: &[Facility] = &[
    // Architectural performance monitoring.
    Facility {
        // PDCM: IA32_PERF_CAPABILITIES exists.
        flags: &[flag(1, Reg::Ecx, 15)],
        // 0xA version 0 = no architectural PMU (SDM Vol. 3B 20.2.1).
        leaves: &[(0xa, None)],
        xss_component: None,
        msrs: &[
            0xc1..=0xc8,     // IA32_PMC0-7
            0x186..=0x18d,   // IA32_PERFEVTSEL0-7
            0x1a6..=0x1a7,   // MSR_OFFCORE_RSP_0/1
            0x309..=0x30c,   // IA32_FIXED_CTR0-3
            0x329..=0x329,   // IA32_PERF_METRICS
            0x345..=0x345,   // IA32_PERF_CAPABILITIES
            0x38d..=0x392,   // FIXED_CTR_CTRL, PERF_GLOBAL_STATUS/CTRL/OVF_CTRL/STATUS_SET/INUSE
            0x4c1..=0x4c8,   // IA32_A_PMC0-7
            0x1900..=0x19ff, // IA32_PMC_GPn_* / FXn_* (architectural PMU v6 layout)
        ],
    },
    // Debug store: BTS and PEBS.
    Facility {
        // DS; DTES64; DS-CPL.
        flags: &[
            flag(1, Reg::Edx, 21),
            flag(1, Reg::Ecx, 2),
            flag(1, Reg::Ecx, 4),
        ],
        leaves: &[],
        xss_component: None,
        msrs: &[
            0x3f1..=0x3f2, // IA32_PEBS_ENABLE, MSR_PEBS_DATA_CFG
            0x3f6..=0x3f7, // MSR_PEBS_LD_LAT, MSR_PEBS_FRONTEND
            0x600..=0x600, // IA32_DS_AREA
        ],
    },
    // Intel Processor Trace.
    Facility {
        flags: &[flag(7, Reg::Ebx, 25), xss_flag(8)],
        leaves: &[(0x14, None), (0xd, Some(8))],
        xss_component: Some(8),
        msrs: &[
            0x560..=0x561, // IA32_RTIT_OUTPUT_BASE, _OUTPUT_MASK_PTRS
            0x570..=0x572, // IA32_RTIT_CTL, _STATUS, _CR3_MATCH
            0x580..=0x587, // IA32_RTIT_ADDR0_A .. ADDR3_B
        ],
    },
    // Last branch records (model-specific MSRs; DEBUGCTL.LBR stays L1's).
    Facility {
        flags: &[],
        leaves: &[],
        xss_component: None,
        msrs: &[
            0x40..=0x47,   // MSR_LASTBRANCH_0-7_FROM_IP (older cores)
            0x60..=0x67,   // MSR_LASTBRANCH_0-7_TO_IP (older cores)
            0x1c8..=0x1c9, // MSR_LBR_SELECT, MSR_LASTBRANCH_TOS
            0x1dd..=0x1de, // MSR_LER_FROM_IP, MSR_LER_TO_IP
            0x680..=0x69f, // MSR_LASTBRANCH_0-31_FROM_IP
            0x6c0..=0x6df, // MSR_LASTBRANCH_0-31_TO_IP
            0xdc0..=0xddf, // MSR_LBR_INFO_0-31
        ],
    },
    // Architectural LBR.
    Facility {
        // Unlike DEBUGCTL.LBR, IA32_LBR_CTL is not cleared by a VM exit
        // without a control L0 would have to depend on.
        flags: &[flag(7, Reg::Edx, 19), xss_flag(15)],
        leaves: &[(0x1c, None), (0xd, Some(15))],
        xss_component: Some(15),
        msrs: &[
            0x1200..=0x121f, // IA32_LBR_0-31_INFO
            0x14ce..=0x14cf, // IA32_LBR_CTL, IA32_LBR_DEPTH
            0x1500..=0x151f, // IA32_LBR_0-31_FROM_IP
            0x1600..=0x161f, // IA32_LBR_0-31_TO_IP
        ],
    },
    // Energy counters (RAPL status): fine-grained enough to read
    // data-dependent power, AES rounds included (the Platypus attack,
    // CVE-2020-8694/8695). Power limits stay L1's.
    Facility {
        flags: &[],
        leaves: &[],
        xss_component: None,
        msrs: &[
            0x611..=0x611, // MSR_PKG_ENERGY_STATUS
            0x619..=0x619, // MSR_DRAM_ENERGY_STATUS
            0x639..=0x639, // MSR_PP0_ENERGY_STATUS
            0x641..=0x641, // MSR_PP1_ENERGY_STATUS
            0x64d..=0x64d, // MSR_PLATFORM_ENERGY_STATUS
        ],
    },
];

/// Whether `msr` belongs to a withheld facility.
pub fn is_withheld_msr(msr: u32) -> bool {
    WITHHELD
        .iter()
        .any(|f| f.msrs.iter().any(|r| r.contains(&msr)))
}

/// Every withheld MSR, for the bitmap.
pub fn withheld_msrs() -> impl Iterator<Item = u32> {
    WITHHELD
        .iter()
        .flat_map(|f| f.msrs.iter().cloned().flatten())
}

/// Whether a value for IA32_XSS names no withheld component (else the
/// write gets #GP, as on a CPU without them).
pub fn xss_allowed(value: u64) -> bool {
    WITHHELD
        .iter()
        .filter_map(|f| f.xss_component)
        .all(|c| value & 1 << c == 0)
}

/// Removes the withheld facilities from CPUID(`leaf`, `subleaf`).
pub fn hide_in_cpuid(leaf: u32, subleaf: u32, regs: &mut [u32; 4]) {
    for f in WITHHELD {
        if f.leaves
            .iter()
            .any(|&(l, s)| l == leaf && s.is_none_or(|s| s == subleaf))
        {
            *regs = [0; 4];
        }
        for b in f.flags {
            if b.leaf == leaf && b.subleaf.is_none_or(|s| s == subleaf) {
                regs[b.reg as usize] &= !(1 << b.bit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_msrs_the_issue_names_are_withheld() {
        for (msr, name) in [
            (0xc1, "IA32_PMC0"),
            (0x186, "IA32_PERFEVTSEL0"),
            (0x309, "IA32_FIXED_CTR0"),
            (0x38d, "IA32_FIXED_CTR_CTRL"),
            (0x38f, "IA32_PERF_GLOBAL_CTRL"),
            (0x392, "IA32_PERF_GLOBAL_INUSE"),
            (0x4c1, "IA32_A_PMC0"),
            (0x600, "IA32_DS_AREA"),
            (0x3f1, "IA32_PEBS_ENABLE"),
            (0x3f2, "MSR_PEBS_DATA_CFG"),
            (0x570, "IA32_RTIT_CTL"),
            (0x560, "IA32_RTIT_OUTPUT_BASE"),
            (0x587, "IA32_RTIT_ADDR3_B"),
            (0x1c8, "MSR_LBR_SELECT"),
            (0x680, "MSR_LASTBRANCH_0_FROM_IP"),
            (0x14ce, "IA32_LBR_CTL"),
            (0x611, "MSR_PKG_ENERGY_STATUS"),
        ] {
            assert!(is_withheld_msr(msr), "{name}");
        }
    }

    #[test]
    fn neighbours_stay_passed_through() {
        // SPEC_CTRL and PRED_CMD sit right after the old LBR range;
        // DEBUGCTL, MISC_ENABLE and the SYSENTER MSRs near the others.
        // The RAPL power limits beside the energy counters.
        for msr in [
            0x48, 0x49, 0x1d9, 0x1a0, 0x174, 0x3a, 0x10, 0x277, 0x6e0, 0x606, 0x610,
        ] {
            assert!(!is_withheld_msr(msr), "{msr:#x}");
        }
    }

    #[test]
    fn xrstors_cannot_load_pt_or_lbr_state() {
        assert!(
            xss_allowed(0) && xss_allowed(1 << 11 | 1 << 12),
            "CET state"
        );
        assert!(!xss_allowed(1 << 8), "PT");
        assert!(!xss_allowed(1 << 15 | 1 << 11), "arch LBR");
    }

    #[test]
    fn cpuid_shows_no_pmu_ds_or_pt() {
        let mut l1 = [0x50654, 0, u32::MAX, u32::MAX];
        hide_in_cpuid(1, 0x1234, &mut l1);
        assert_eq!(l1[3] & (1 << 21), 0, "DS");
        assert_eq!(
            l1[2] & (1 << 2 | 1 << 4 | 1 << 15),
            0,
            "DTES64, DS-CPL, PDCM"
        );
        assert_eq!(
            l1[2] | (1 << 2 | 1 << 4 | 1 << 15),
            u32::MAX,
            "the rest kept"
        );
        assert_eq!(l1[0], 0x50654, "whatever ECX was");
        let mut pmu = [0x0703_0804, 0, 0, 0x603];
        hide_in_cpuid(0xa, 0, &mut pmu);
        assert_eq!(pmu, [0; 4], "version 0: no PMU");
        for leaf in [0x14, 0x1c] {
            let mut r = [1, 2, 3, 4];
            hide_in_cpuid(leaf, 1, &mut r);
            assert_eq!(r, [0; 4], "leaf {leaf:#x}, every subleaf");
        }
        let mut l7 = [u32::MAX; 4];
        hide_in_cpuid(7, 0, &mut l7);
        assert_eq!(l7[1] & (1 << 25), 0, "PT");
        assert_eq!(l7[3] & (1 << 19), 0, "arch LBR");
        let mut xsave = [u32::MAX; 4];
        hide_in_cpuid(0xd, 1, &mut xsave);
        assert_eq!(xsave[2], !(1 << 8 | 1 << 15), "no PT or LBR state in XSS");
        for (sub, zero) in [(8, true), (15, true), (2, false)] {
            let mut r = [1; 4];
            hide_in_cpuid(0xd, sub, &mut r);
            assert_eq!(r == [0; 4], zero, "0xD subleaf {sub}");
        }
        let mut l7_1 = [u32::MAX; 4];
        hide_in_cpuid(7, 1, &mut l7_1);
        assert_eq!(l7_1, [u32::MAX; 4], "other subleaves keep their bits");
    }
}
