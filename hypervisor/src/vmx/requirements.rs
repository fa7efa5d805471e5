//! What L0 requires of the CPU's VMX, and which optional features it uses
//! when the capability MSRs offer them (SDM Vol. 3D Appendix A). Pure
//! decisions over [`VmxCaps`], so every host kind is checked on the host.

use super::caps::{basic, ept_vpid, misc, pin, primary, secondary, Control, VmxCaps};
use crate::mm::paging::PageSize;

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

/// TSC ticks between L0's visits to the management line: 2 ms at the
/// measured rate, or 2²³ ticks when the TSC could not be measured.
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
    fn poll_interval_is_two_milliseconds() {
        assert_eq!(poll_ticks(Some(100_000_000)), 200_000);
        assert_eq!(poll_ticks(Some(0)), 1 << 23);
        assert_eq!(poll_ticks(None), 1 << 23);
    }
}
