//! The host's CPUs: which ones L0 starts, and whether a started one may
//! join. The firmware's MADT lists them (acpi::madt); without ACPI L0 runs
//! on the boot CPU alone. `cpus=N` caps the count, the boot CPU included.
//!
//! An application processor (AP) joins only if its CPU features and every
//! VMX capability MSR equal the boot CPU's: VMCSs and EPT are built from
//! the boot CPU's capabilities and must be valid on every CPU (KVM refuses
//! a mismatched CPU the same way, in its per-CPU compatibility check).

use alloc::vec::Vec;
use core::fmt;

use crate::acpi::madt::MadtCpu;
use crate::vmx::caps::VmxCaps;
use crate::vmx::requirements::CpuFeatures;

/// The CPUs L0 will start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCpus {
    /// The boot CPU's APIC ID.
    pub bsp: u32,
    /// The APs that run the cloud VM, in the firmware's order.
    pub aps: Vec<u32>,
    /// The APs `cpus=N` leaves out: L0 still starts them, to hold them in
    /// VMX root, where the cloud VM's INIT and start-up IPIs cannot run
    /// code on them outside L0's control.
    pub held: Vec<u32>,
    /// Whether the firmware's list names the boot CPU (it should).
    pub bsp_listed: bool,
}

impl HostCpus {
    /// The CPUs that run the cloud VM.
    pub fn total(&self) -> usize {
        1 + self.aps.len()
    }
}

/// The CPUs to start: every enabled CPU of the MADT but the boot CPU, the
/// first `cpus - 1` of them under a cap.
pub fn plan(listed: &[MadtCpu], bsp: u32, cap: Option<u32>) -> HostCpus {
    let aps: Vec<u32> = listed
        .iter()
        .map(|c| c.apic_id)
        .filter(|&id| id != bsp)
        .collect();
    let keep = cap.map_or(aps.len(), |n| (n as usize).saturating_sub(1).min(aps.len()));
    HostCpus {
        bsp,
        held: aps[keep..].to_vec(),
        aps: aps[..keep].to_vec(),
        bsp_listed: listed.iter().any(|c| c.apic_id == bsp),
    }
}

/// This CPU's APIC ID: the x2APIC ID of CPUID leaf 0xB where the CPU
/// reports that leaf, the initial APIC ID of leaf 1 otherwise.
pub fn apic_id(cpuid: impl Fn(u32, u32) -> [u32; 4]) -> u32 {
    if cpuid(0, 0)[0] >= 0xb {
        let [_, levels, _, x2apic_id] = cpuid(0xb, 0);
        if levels != 0 {
            return x2apic_id;
        }
    }
    cpuid(1, 0)[1] >> 24
}

/// Bytes of the AP start-up code and its page tables (`arch::ap_boot`).
pub const TRAMPOLINE_SIZE: u64 = 0x4000;

/// Where the APs' real-mode start-up code goes: the highest usable RAM
/// below 1 MiB (a start-up IPI names a page there), never page 0 (the
/// real-mode interrupt table and BIOS data the cloud VM may still read).
pub fn trampoline(ram: &boot::memmap::RangeSet) -> Option<u64> {
    ram.find_highest(TRAMPOLINE_SIZE, 0x1000, 0x10_0000)
        .map(|r| r.start)
        .filter(|&a| a >= 0x1000)
}

/// Whether the cloud VM can run on APs: they start in the wait-for-SIPI
/// activity state (vcpu/reset.rs), which VMX must support.
pub fn l1_aps_possible(vmx: &VmxCaps) -> bool {
    vmx.misc & crate::vmx::caps::misc::ACTIVITY_WAIT_FOR_SIPI != 0
}

/// What a CPU is: what L0 requires of it and its VMX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuKind {
    pub features: CpuFeatures,
    pub vmx: VmxCaps,
}

/// How an AP differs from the boot CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    Features,
    Vmx {
        msr: &'static str,
        bsp: u64,
        ap: u64,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Features => write!(f, "CPU features differ from the boot CPU's"),
            Mismatch::Vmx { msr, bsp, ap } => {
                write!(f, "VMX {msr} is {ap:#x}, the boot CPU's {bsp:#x}")
            }
        }
    }
}

/// Whether an AP of kind `ap` may run beside the boot CPU of kind `bsp`.
pub fn compatible(bsp: &CpuKind, ap: &CpuKind) -> Result<(), Mismatch> {
    if bsp.features != ap.features {
        return Err(Mismatch::Features);
    }
    match bsp
        .vmx
        .named()
        .iter()
        .zip(ap.vmx.named())
        .find(|(b, a)| b.1 != a.1)
    {
        Some(((msr, b), (_, a))) => Err(Mismatch::Vmx {
            msr,
            bsp: *b,
            ap: a,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(ids: &[u32]) -> Vec<MadtCpu> {
        ids.iter()
            .map(|&apic_id| MadtCpu { apic_id, uid: 0 })
            .collect()
    }

    #[test]
    fn every_listed_cpu_but_the_boot_cpu() {
        let h = plan(&listed(&[0, 2, 4, 6]), 2, None);
        assert_eq!(h.aps, [0, 4, 6]);
        assert_eq!((h.total(), h.held.len(), h.bsp_listed), (4, 0, true));
        // No ACPI, or a list without the boot CPU: it still runs.
        let alone = plan(&[], 5, None);
        assert_eq!((alone.total(), alone.bsp_listed), (1, false));
        assert!(!plan(&listed(&[1]), 0, None).bsp_listed);
    }

    #[test]
    fn the_cap_counts_the_boot_cpu() {
        let ids: Vec<u32> = (0..300).collect();
        assert_eq!(plan(&listed(&ids), 0, Some(1)).aps, [] as [u32; 0]);
        let h = plan(&listed(&ids), 0, Some(2));
        assert_eq!((h.aps.clone(), h.held.len(), h.held[0]), (vec![1], 298, 2));
        assert_eq!(plan(&listed(&ids), 0, Some(1000)).total(), 300);
    }

    #[test]
    fn apic_ids_from_cpuid() {
        let old = |leaf: u32, _| match leaf {
            0 => [0xa, 0, 0, 0],
            1 => [0, 0x0500_0800, 0, 0],
            _ => [0; 4],
        };
        assert_eq!(apic_id(old), 5);
        let x2 = |leaf: u32, _| match leaf {
            0 => [0x1f, 0, 0, 0],
            1 => [0, 0xff00_0800, 0, 0],
            0xb => [1, 2, 0x100, 0x1234],
            _ => [0; 4],
        };
        assert_eq!(apic_id(x2), 0x1234);
    }

    #[test]
    fn the_trampoline_sits_in_low_ram_above_page_0() {
        use boot::memmap::{Range, RangeSet};
        let mut ram = RangeSet::new();
        ram.insert(Range::new(0, 0x9_fc00)).unwrap();
        ram.insert(Range::new(0x10_0000, 0x2000_0000)).unwrap();
        assert_eq!(trampoline(&ram), Some(0x9_b000));
        let mut tiny = RangeSet::new();
        tiny.insert(Range::new(0, 0x4000)).unwrap();
        tiny.insert(Range::new(0x10_0000, 0x2000_0000)).unwrap();
        assert_eq!(trampoline(&tiny), None);
    }

    fn kind() -> CpuKind {
        CpuKind {
            features: CpuFeatures {
                maxphyaddr: 46,
                gib_pages: true,
                xsave: true,
                mtrr: true,
            },
            vmx: VmxCaps {
                basic: 0xda04_0000_0000_0004,
                secondary: 0x0000_17ff_0000_0000,
                ..VmxCaps::default()
            },
        }
    }

    #[test]
    fn an_ap_must_match_the_boot_cpu() {
        assert_eq!(compatible(&kind(), &kind()), Ok(()));
        let mut ap = kind();
        ap.features.gib_pages = false;
        assert_eq!(compatible(&kind(), &ap), Err(Mismatch::Features));
        let mut ap = kind();
        ap.vmx.secondary &= !(1 << 33); // no EPT
        let e = compatible(&kind(), &ap).unwrap_err();
        assert_eq!(
            e.to_string(),
            "VMX secondary controls is 0x17fd00000000, the boot CPU's 0x17ff00000000"
        );
    }
}
