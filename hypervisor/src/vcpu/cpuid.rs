//! What CPUID tells the cloud VM: the host's answer, minus what L0 does not
//! emulate or let L1 use, plus the hypervisor leaves that name L0
//! (`ultracall_abi::cpuid::l0_leaf`: the standard vendor and version
//! leaves, and the announcement leaf L0 also answers for user VMs).
//! The performance-monitoring and trace facilities L0 withholds are
//! removed as `perfmon::WITHHELD` lists them.

use crate::regs::{CR4_OSXSAVE, CR4_PKE};
use ultracall_abi::cpuid::{l0_leaf, HV_VENDOR_LEAF};

/// The leaves the SDM leaves to hypervisors.
const HYPERVISOR_RANGE: core::ops::Range<u32> = HV_VENDOR_LEAF..0x5000_0000;

/// The guest state and L0 choices CPUID answers depend on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidContext {
    /// The CR4 the guest sees (OSXSAVE and PKE are reflected).
    pub guest_cr4: u64,
    /// Whether VMX is offered to the guest.
    pub vmx: bool,
    /// Whether the VMCS enables RDTSCP / INVPCID / XSAVES for the guest
    /// (without the control these instructions #UD, so CPUID must not
    /// claim them).
    pub rdtscp: bool,
    pub invpcid: bool,
    pub xsaves: bool,
    /// The TSC frequency L0 measured against the PIT (Hz); 0 = not
    /// measured, leaves 0x15/0x16 pass through.
    pub tsc_hz: u64,
}

fn set(reg: &mut u32, bit: u32, on: bool) {
    if on {
        *reg |= 1 << bit;
    } else {
        *reg &= !(1 << bit);
    }
}

/// Whether L0 answers this leaf itself, without asking the CPU.
pub fn is_synthetic(leaf: u32) -> bool {
    HYPERVISOR_RANGE.contains(&leaf)
}

/// The guest's view of CPUID(`leaf`, `subleaf`), given the CPU's answer `raw`.
pub fn guest_view(leaf: u32, subleaf: u32, raw: [u32; 4], ctx: &CpuidContext) -> [u32; 4] {
    let [mut a, mut b, mut c, mut d] = raw;
    match leaf {
        1 => {
            set(&mut c, 5, ctx.vmx); // VMX
            set(&mut c, 6, false); // SMX: GETSEC is not emulated
            set(&mut c, 27, ctx.guest_cr4 & CR4_OSXSAVE != 0);
            set(&mut c, 31, true); // running under a hypervisor
        }
        7 if subleaf == 0 => {
            set(&mut b, 2, false); // SGX
            let invpcid = b & (1 << 10) != 0 && ctx.invpcid;
            set(&mut b, 10, invpcid);
            set(&mut c, 4, ctx.guest_cr4 & CR4_PKE != 0); // OSPKE
            set(&mut c, 5, false); // WAITPKG: needs a VMX control L0 does not set
            let rdpid = c & (1 << 22) != 0 && ctx.rdtscp;
            set(&mut c, 22, rdpid);
        }
        0xd if subleaf == 1 => {
            let xsaves = a & (1 << 3) != 0 && ctx.xsaves;
            set(&mut a, 3, xsaves);
        }
        0x12 => [a, b, c, d] = [0; 4], // SGX leaf
        0x15 if ctx.tsc_hz != 0 && !tsc_leaf_agrees(raw, ctx.tsc_hz) => {
            [a, b, c, d] = tsc_leaf(ctx.tsc_hz)
        }
        0x16 if ctx.tsc_hz != 0 => {
            // Base and maximum MHz; Linux's cpu_khz_from_cpuid reads EAX
            // and trusts the TSC (leaf 0x15) over it if they disagree.
            let mhz = ((ctx.tsc_hz + 500_000) / 1_000_000) as u32;
            [a, b] = [mhz, mhz.max(b)];
        }
        0x8000_0001 => {
            let rdtscp = d & (1 << 27) != 0 && ctx.rdtscp;
            set(&mut d, 27, rdtscp);
        }
        l if is_synthetic(l) => {
            let r = l0_leaf(l).unwrap_or_default();
            [a, b, c, d] = [r.eax, r.ebx, r.ecx, r.edx]
        }
        _ => {}
    }
    let mut r = [a, b, c, d];
    super::perfmon::hide_in_cpuid(leaf, subleaf, &mut r);
    r
}

/// Whether the CPU's leaf 0x15 (EAX = denominator, EBX = numerator,
/// ECX = crystal Hz) already names `hz`, within 1 %: then real hardware
/// speaks and L1 gets its answer unchanged, crystal and all.
fn tsc_leaf_agrees(raw: [u32; 4], hz: u64) -> bool {
    let [den, num, crystal, _] = raw;
    if den == 0 || num == 0 || crystal == 0 {
        return false;
    }
    let claimed = crystal as u64 * num as u64 / den as u64;
    claimed.abs_diff(hz) * 100 <= hz
}

/// Leaf 0x15 naming `hz`: crystal = TSC (ratio 1/1), or for a TSC above
/// 4.29 GHz a crystal of hz/k with ratio k/1. A nonzero crystal is what
/// makes Linux 6.1 (native_calibrate_tsc) take the frequency as known and
/// skip its own calibration. Linux also sets its local APIC timer period
/// from the crystal; that matters only without the TSC-deadline timer,
/// and on Bochs the APIC timer runs at the TSC's rate, as this claims.
fn tsc_leaf(hz: u64) -> [u32; 4] {
    let k = hz.div_ceil(u32::MAX as u64).max(1);
    [1, k as u32, (hz / k) as u32, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CpuidContext {
        CpuidContext {
            guest_cr4: 0,
            vmx: false,
            rdtscp: true,
            invpcid: true,
            xsaves: false,
            tsc_hz: 0,
        }
    }

    /// Linux 6.1's native_calibrate_tsc, for an Intel CPU with max leaf >= 0x16.
    fn linux_tsc_khz(l15: [u32; 4], l16: [u32; 4]) -> u64 {
        let [den, num, ecx, _] = l15;
        if den == 0 || num == 0 {
            return 0;
        }
        let mut crystal_khz = ecx as u64 / 1000;
        if crystal_khz == 0 {
            crystal_khz = l16[0] as u64 * 1000 * den as u64 / num as u64;
        }
        crystal_khz * num as u64 / den as u64
    }

    #[test]
    fn tsc_leaves_name_the_measured_frequency() {
        // Bochs skylake_x: 0x15 claims a 3.5 GHz TSC (a ratio, no crystal),
        // 0x16 3500 MHz; L0 measured 100 MHz.
        let raw15 = [2, 292, 0, 0];
        let raw16 = [3500, 3500, 100, 0];
        assert!(
            linux_tsc_khz(raw15, raw16) > 3_400_000,
            "what Linux would believe unaided"
        );
        let bochs = CpuidContext {
            tsc_hz: 99_998_765,
            ..ctx()
        };
        let l15 = guest_view(0x15, 0, raw15, &bochs);
        let l16 = guest_view(0x16, 0, raw16, &bochs);
        assert_eq!(l15, [1, 1, 99_998_765, 0]);
        assert_eq!(l16, [100, 3500, 100, 0]);
        assert_eq!(linux_tsc_khz(l15, l16), 99_998);
        // Unmeasured: the CPU's answer.
        assert_eq!(guest_view(0x15, 0, raw15, &ctx()), raw15);
        assert_eq!(guest_view(0x16, 0, raw16, &ctx()), raw16);
        // A CPU that reports its crystal truthfully keeps its answer.
        let real = [2, 250, 24_000_000, 0];
        let ctx3 = CpuidContext {
            tsc_hz: 3_000_100_000,
            ..ctx()
        };
        assert_eq!(guest_view(0x15, 0, real, &ctx3), real);
        // One that is 10 % off does not.
        let ctx33 = CpuidContext {
            tsc_hz: 3_300_000_000,
            ..ctx()
        };
        assert_eq!(
            linux_tsc_khz(guest_view(0x15, 0, real, &ctx33), [0; 4]),
            3_300_000
        );
        // Above 4.29 GHz the crystal is a fraction of the TSC.
        let fast = CpuidContext {
            tsc_hz: 5_000_000_000,
            ..ctx()
        };
        let l = guest_view(0x15, 0, [0; 4], &fast);
        assert_eq!(l, [1, 2, 2_500_000_000, 0]);
        assert_eq!(linux_tsc_khz(l, [0; 4]), 5_000_000);
    }

    #[test]
    fn signature_leaves() {
        use ultracall_abi::cpuid::{detect, CpuidRegs, L0_LEAF};
        use ultracall_abi::ABI_VERSION;
        let r = guest_view(
            HV_VENDOR_LEAF,
            0,
            [0x4000_0001, 0x4b4d564b, 0x564b4d56, 0x4d],
            &ctx(),
        );
        let mut sig = Vec::new();
        for w in &r[1..] {
            sig.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(&sig, b"L0Hypervisor");
        assert_eq!(r[0], 0x4000_0001);
        assert_eq!(
            guest_view(0x4000_0001, 0, [9; 4], &ctx()),
            [ABI_VERSION.to_raw(), 0, 0, 0]
        );
        assert_eq!(
            guest_view(L0_LEAF, 0, [9; 4], &ctx())[0],
            ABI_VERSION.to_raw()
        );
        // The guest tools' detection finds L0 in what the cloud VM sees,
        // on an Intel CPU (the only kind L0 runs on).
        let intel = [
            0x16,
            u32::from_le_bytes(*b"Genu"),
            u32::from_le_bytes(*b"ntel"),
            u32::from_le_bytes(*b"ineI"),
        ];
        let seen = |leaf| {
            let raw = if leaf == 0 { intel } else { [0; 4] };
            let [eax, ebx, ecx, edx] = guest_view(leaf, 0, raw, &ctx());
            CpuidRegs { eax, ebx, ecx, edx }
        };
        assert_eq!(detect(seen), Ok(ABI_VERSION));
        // A KVM underneath does not shine through.
        assert_eq!(guest_view(0x4000_0100, 0, [1, 2, 3, 4], &ctx()), [0; 4]);
        assert!(is_synthetic(0x4000_0100) && !is_synthetic(0x8000_0000));
    }

    #[test]
    fn leaf1_flags() {
        let raw = [0x50654, 0x800, (1 << 5) | (1 << 6) | (1 << 26), 0];
        let r = guest_view(1, 0, raw, &ctx());
        assert_eq!(r[2] & (1 << 5), 0, "VMX hidden");
        assert_eq!(r[2] & (1 << 6), 0, "SMX hidden");
        assert_ne!(r[2] & (1 << 31), 0, "hypervisor bit");
        assert_eq!(r[2] & (1 << 27), 0, "OSXSAVE follows the guest's CR4");
        let with = CpuidContext {
            guest_cr4: CR4_OSXSAVE,
            vmx: true,
            ..ctx()
        };
        let r = guest_view(1, 0, raw, &with);
        assert_ne!(r[2] & (1 << 27), 0);
        assert_ne!(r[2] & (1 << 5), 0);
        assert_eq!(r[0], 0x50654);
    }

    #[test]
    fn features_follow_vmcs_controls() {
        let raw7 = [0, (1 << 2) | (1 << 10) | (1 << 25), (1 << 5) | (1 << 22), 0];
        let none = CpuidContext {
            rdtscp: false,
            invpcid: false,
            ..ctx()
        };
        let r = guest_view(7, 0, raw7, &none);
        assert_eq!(r[1], 0);
        assert_eq!(r[2], 0);
        let r = guest_view(7, 0, raw7, &ctx());
        assert_eq!(r[1], 1 << 10);
        assert_eq!(r[2], 1 << 22);
        assert_eq!(
            guest_view(7, 1, raw7, &none),
            raw7,
            "only subleaf 0 is filtered"
        );
        assert_eq!(guest_view(0x8000_0001, 0, [0, 0, 0, 1 << 27], &none)[3], 0);
        assert_eq!(guest_view(0xd, 1, [0xf, 0, 0, 0], &ctx())[0], 0x7);
        assert_eq!(guest_view(0x12, 0, [1, 2, 3, 4], &ctx()), [0; 4]);
    }
}
