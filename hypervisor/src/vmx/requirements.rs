//! What L0 requires of the CPU and its VMX, and which optional features it
//! uses when CPUID and the capability MSRs offer them (SDM Vol. 3D
//! Appendix A). Pure decisions over CPUID answers and [`VmxCaps`], so
//! every host kind is checked on the host.

use super::caps::{basic, ept_vpid, misc, pin, primary, secondary, Control, VmxCaps};
use crate::mm::paging::PageSize;

/// What L0 needs to know of the CPU beyond VMX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    pub maxphyaddr: u8,
    /// 1 GiB pages (CPUID.80000001H:EDX[26]).
    pub gib_pages: bool,
    pub xsave: bool,
    pub mtrr: bool,
}

/// Reads the CPU's features through `cpuid(leaf, subleaf)`; refuses a CPU
/// without VMX (or a hypervisor below that hides it) or NX.
pub fn cpu_features(cpuid: impl Fn(u32, u32) -> [u32; 4]) -> Result<CpuFeatures, &'static str> {
    let [_, _, c1, d1] = cpuid(1, 0);
    if c1 & (1 << 5) == 0 {
        return Err("this CPU has no VMX (Intel VT-x), or a hypervisor below hides it: L0 needs VT-x with EPT and unrestricted guest");
    }
    let max_ext = cpuid(0x8000_0000, 0)[0];
    let [_, _, _, d81] = cpuid(0x8000_0001, 0);
    if d81 & (1 << 20) == 0 {
        return Err("this CPU has no NX (execute-disable) bit");
    }
    let maxphyaddr = if max_ext >= 0x8000_0008 {
        cpuid(0x8000_0008, 0)[0] as u8
    } else {
        36
    };
    Ok(CpuFeatures {
        maxphyaddr,
        gib_pages: d81 & (1 << 26) != 0,
        xsave: c1 & (1 << 26) != 0,
        mtrr: d1 & (1 << 12) != 0,
    })
}

/// Refuses a CPU whose VMX lacks what L0 cannot run without: secondary
/// controls with EPT and unrestricted guest, 4-level EPT with write-back
/// tables, and VMX regions that fit one 4 KiB frame anywhere in memory.
pub fn check(c: &VmxCaps) -> Result<(), &'static str> {
    if !c.allows(Control::Primary, primary::ACTIVATE_SECONDARY) {
        return Err("VMX without secondary controls: L0 needs EPT and unrestricted guest");
    }
    if !c.allows(Control::Secondary, secondary::ENABLE_EPT) {
        return Err("VMX without EPT");
    }
    if !c.allows(Control::Secondary, secondary::UNRESTRICTED_GUEST) {
        return Err("VMX without unrestricted guest");
    }
    if c.ept_vpid & ept_vpid::WALK_4_LEVELS == 0 || c.ept_vpid & ept_vpid::MEMORY_TYPE_WB == 0 {
        return Err("EPT without 4-level tables or write-back memory type");
    }
    if (c.basic >> basic::REGION_SIZE_SHIFT) & basic::REGION_SIZE_MASK > 4096
        || c.basic & basic::PHYS_ADDR_32 != 0
    {
        return Err("VMX regions larger than 4 KiB or limited to 32-bit addresses");
    }
    Ok(())
}

/// VPIDs for L1 need INVVPID of the single-context type.
pub fn vpid_usable(c: &VmxCaps) -> bool {
    c.allows(Control::Secondary, secondary::ENABLE_VPID)
        && c.ept_vpid & ept_vpid::INVVPID != 0
        && c.ept_vpid & ept_vpid::invvpid_type(1) != 0
}

/// Nested VMX needs true controls (to clear CR3 exiting for L2) and
/// all-context INVEPT (to drop EPT02s).
pub fn nested_vmx_possible(c: &VmxCaps) -> bool {
    c.basic & basic::TRUE_CONTROLS != 0
        && c.ept_vpid & ept_vpid::INVEPT != 0
        && c.ept_vpid & ept_vpid::INVEPT_ALL_CONTEXT != 0
}

/// The largest EPT01 page: 1 GiB where both paging (CPUID, `gib_pages`)
/// and EPT allow it, else 2 MiB, else 4 KiB.
pub fn ept_page_size(c: &VmxCaps, gib_pages: bool) -> PageSize {
    if gib_pages && c.ept_vpid & ept_vpid::PAGE_1G != 0 {
        PageSize::Size1G
    } else if c.ept_vpid & ept_vpid::PAGE_2M != 0 {
        PageSize::Size2M
    } else {
        PageSize::Size4K
    }
}

/// TSC ticks between L0's visits to the management line while a guest
/// runs: 2 ms at the measured rate (2²³ ticks when the TSC could not be
/// measured), so a keystroke is answered at once and the UART's FIFO never
/// overflows between visits (16 bytes take 1.4 ms at 115200 baud; once a
/// command begins, L0 reads it to its end). Each visit costs one
/// VMX-preemption-timer exit: ~0.1 % of a 3 GHz CPU, ~2 % under Bochs.
pub fn poll_ticks(tsc_hz: Option<u64>) -> u64 {
    match tsc_hz {
        Some(hz) if hz > 0 => hz / 500,
        _ => 1 << 23,
    }
}

/// The VMX-preemption timer value for `poll_ticks` (the timer counts at
/// the TSC divided by 2^rate, IA32_VMX_MISC[4:0]); `None` without the timer.
pub fn preemption_timer(c: &VmxCaps, poll_ticks: u64) -> Option<u64> {
    c.allows(Control::Pin, pin::PREEMPTION_TIMER)
        .then(|| poll_ticks >> (c.misc & misc::TIMER_RATE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::caps::tests::bochs_skylake;

    #[test]
    fn bochs_skylake_has_everything() {
        let c = bochs_skylake();
        assert_eq!(check(&c), Ok(()));
        assert!(vpid_usable(&c) && nested_vmx_possible(&c));
        assert_eq!(ept_page_size(&c, true), PageSize::Size1G);
        assert_eq!(ept_page_size(&c, false), PageSize::Size2M);
        // MISC rate 0: the timer counts at the TSC's rate.
        assert_eq!(preemption_timer(&c, 200_000), Some(200_000));
    }

    #[test]
    fn each_missing_requirement_is_named() {
        let base = bochs_skylake();
        let cases: [(&str, fn(&mut VmxCaps)); 6] = [
            ("secondary", |c| {
                c.primary &= !((primary::ACTIVATE_SECONDARY as u64) << 32)
            }),
            ("EPT", |c| {
                c.secondary &= !((secondary::ENABLE_EPT as u64) << 32)
            }),
            ("unrestricted", |c| {
                c.secondary &= !((secondary::UNRESTRICTED_GUEST as u64) << 32)
            }),
            ("write-back", |c| c.ept_vpid &= !ept_vpid::MEMORY_TYPE_WB),
            // Region size 6 KiB in bits 44:32 (the check once read 56:44).
            ("4 KiB", |c| {
                c.basic = c.basic & !(basic::REGION_SIZE_MASK << 32) | 0x1800 << 32
            }),
            ("32-bit", |c| c.basic |= basic::PHYS_ADDR_32),
        ];
        for (word, break_it) in cases {
            let mut c = base;
            break_it(&mut c);
            let e = check(&c).expect_err(word);
            assert!(e.contains(word), "{word}: {e}");
        }
    }

    #[test]
    fn optional_features_follow_their_bits() {
        let mut c = bochs_skylake();
        c.ept_vpid &= !ept_vpid::invvpid_type(1);
        assert!(!vpid_usable(&c));
        let mut c = bochs_skylake();
        c.ept_vpid &= !ept_vpid::INVEPT_ALL_CONTEXT;
        assert!(!nested_vmx_possible(&c));
        let mut c = bochs_skylake();
        c.basic &= !basic::TRUE_CONTROLS;
        assert!(!nested_vmx_possible(&c));
        let mut c = bochs_skylake();
        c.ept_vpid &= !(ept_vpid::PAGE_1G | ept_vpid::PAGE_2M);
        assert_eq!(ept_page_size(&c, true), PageSize::Size4K);
        c.misc = c.misc & !misc::TIMER_RATE | 5;
        assert_eq!(preemption_timer(&c, 64 << 5), Some(64));
        c.pin &= !((pin::PREEMPTION_TIMER as u64) << 32);
        assert_eq!(preemption_timer(&c, 64), None);
    }

    #[test]
    fn cpu_features_from_cpuid() {
        // Bochs corei7_skylake_x: VMX, NX, 1 GiB pages, XSAVE, MTRRs, 39 bits.
        let skylake = |leaf: u32, _| match leaf {
            1 => [0x50654, 0, 1 << 5 | 1 << 26, 1 << 12],
            0x8000_0000 => [0x8000_0008, 0, 0, 0],
            0x8000_0001 => [0, 0, 0, 1 << 20 | 1 << 26],
            0x8000_0008 => [0x3027, 0, 0, 0],
            _ => [0; 4],
        };
        assert_eq!(
            cpu_features(skylake),
            Ok(CpuFeatures {
                maxphyaddr: 39,
                gib_pages: true,
                xsave: true,
                mtrr: true
            })
        );
        let no_vmx = |leaf: u32, s| match leaf {
            1 => [0, 0, 1 << 26, 0],
            l => skylake(l, s),
        };
        assert!(cpu_features(no_vmx).unwrap_err().contains("no VMX"));
        let no_nx = |leaf: u32, s| match leaf {
            0x8000_0001 => [0; 4],
            l => skylake(l, s),
        };
        assert!(cpu_features(no_nx).unwrap_err().contains("NX"));
        let old = |leaf: u32, s| match leaf {
            0x8000_0000 => [0x8000_0001, 0, 0, 0],
            l => skylake(l, s),
        };
        assert_eq!(cpu_features(old).unwrap().maxphyaddr, 36);
    }

    #[test]
    fn poll_interval_is_two_milliseconds() {
        assert_eq!(poll_ticks(Some(100_000_000)), 200_000);
        assert_eq!(poll_ticks(Some(0)), 1 << 23);
        assert_eq!(poll_ticks(None), 1 << 23);
    }
}
