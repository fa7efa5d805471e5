//! Detecting L0 through CPUID, as data and pure functions.
//!
//! A guest must not issue an ultracall unless it knows L0 is there: `vmcall`
//! is an Intel VMX instruction, so on bare metal it raises #UD (SIGILL in a
//! Linux process), on an AMD CPU it is no instruction at all (KVM on AMD
//! emulates it for kernels but a user process dies of a signal), and under
//! another hypervisor it means something else. So detection issues CPUID
//! only, which never faults, and decides from four answers ([`CpuidView`]):
//!
//! - leaf 0: the CPU vendor (`GenuineIntel` is the only vendor L0 runs on);
//! - leaf [`L0_LEAF`] (0x4C30_0000, "L0"): L0's announcement, which L0 itself
//!   answers at every level — to the cloud VM and to every user VM, before
//!   the guest hypervisor sees the exit — so a user VM run by KVM, Xen or
//!   anything else finds L0 with no probe;
//! - leaf 1 ECX bit 31 ("hypervisor present");
//! - leaves 0x4000_0000/0x4000_0001: the standard hypervisor vendor leaf,
//!   which L0 answers for the cloud VM (the guest hypervisor answers it for
//!   its user VMs).
//!
//! [`decide`] is the decision table of docs/ultracall-abi.md §1; L0 answers
//! its leaves with [`l0_leaf`]. Both come from here, so they cannot drift
//! apart.

use crate::error::Error;
use crate::version::{AbiVersion, ABI_VERSION};

/// The vendor leaf: EBX, EDX, ECX spell the CPU vendor.
pub const CPUID_VENDOR_LEAF: u32 = 0;
/// The only vendor whose CPUs have VMX, hence the only one L0 runs on.
pub const VENDOR_INTEL: [u8; 12] = *b"GenuineIntel";
/// The standard feature leaf.
pub const CPUID_FEATURES_LEAF: u32 = 1;
/// CPUID.1:ECX bit 31: set by every hypervisor, clear on bare metal.
pub const CPUID_FEATURES_ECX_HYPERVISOR: u32 = 1 << 31;
/// Hypervisor vendor leaf: EAX = highest hypervisor leaf, EBX/ECX/EDX = signature.
pub const HV_VENDOR_LEAF: u32 = 0x4000_0000;
/// L0's version leaf: EAX = ABI version, EBX/ECX/EDX = 0.
pub const HV_VERSION_LEAF: u32 = 0x4000_0001;
/// Highest hypervisor leaf L0 implements in the standard range (EAX of [`HV_VENDOR_LEAF`]).
pub const HV_MAX_LEAF: u32 = HV_VERSION_LEAF;
/// L0's announcement leaf, answered by L0 at every level: EAX = ABI version,
/// EBX/ECX/EDX = [`HV_SIGNATURE`]. It lies in the range the SDM leaves to
/// hypervisors (0x4000_0000–0x4FFF_FFFF) but far from the bases the others
/// use (0x4000_0000 plus multiples of 0x100, up to Xen's 0x4001_0000); its
/// upper half spells "L0" (0x4C, 0x30).
pub const L0_LEAF: u32 = 0x4C30_0000;
/// L0's 12-byte signature.
pub const HV_SIGNATURE: [u8; 12] = *b"L0Hypervisor";
/// EBX of the vendor leaf: "L0Hy".
pub const HV_SIGNATURE_EBX: u32 = u32::from_le_bytes(*b"L0Hy");
/// ECX of the vendor leaf: "perv".
pub const HV_SIGNATURE_ECX: u32 = u32::from_le_bytes(*b"perv");
/// EDX of the vendor leaf: "isor".
pub const HV_SIGNATURE_EDX: u32 = u32::from_le_bytes(*b"isor");

/// The four registers CPUID returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidRegs {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// What L0 returns for a hypervisor leaf it owns; `None` for other leaves.
pub const fn l0_leaf(leaf: u32) -> Option<CpuidRegs> {
    match leaf {
        HV_VENDOR_LEAF => Some(CpuidRegs {
            eax: HV_MAX_LEAF,
            ebx: HV_SIGNATURE_EBX,
            ecx: HV_SIGNATURE_ECX,
            edx: HV_SIGNATURE_EDX,
        }),
        HV_VERSION_LEAF => Some(CpuidRegs {
            eax: ABI_VERSION.to_raw(),
            ebx: 0,
            ecx: 0,
            edx: 0,
        }),
        L0_LEAF => Some(CpuidRegs {
            eax: ABI_VERSION.to_raw(),
            ebx: HV_SIGNATURE_EBX,
            ecx: HV_SIGNATURE_ECX,
            edx: HV_SIGNATURE_EDX,
        }),
        _ => None,
    }
}

/// Whether L0 answers `leaf` for a user VM itself instead of passing the
/// CPUID exit to the guest hypervisor: the announcement only.
pub const fn l0_answers_for_user_vms(leaf: u32) -> bool {
    leaf == L0_LEAF
}

/// The 12 signature bytes of a hypervisor-leaf answer (EBX, ECX, EDX order).
pub fn signature_of(vendor: CpuidRegs) -> [u8; 12] {
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&vendor.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&vendor.ecx.to_le_bytes());
    sig[8..12].copy_from_slice(&vendor.edx.to_le_bytes());
    sig
}

/// The CPU vendor of a leaf-0 answer (EBX, EDX, ECX order).
pub fn vendor_of(leaf0: CpuidRegs) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    v[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
    v
}

/// The CPUID answers detection decides from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidView {
    /// Leaf 0's vendor string.
    pub vendor: [u8; 12],
    /// Leaf [`L0_LEAF`].
    pub announcement: CpuidRegs,
    /// CPUID.1:ECX bit 31.
    pub hypervisor_bit: bool,
    /// Leaf 0x4000_0000.
    pub hv_vendor: CpuidRegs,
    /// Leaf 0x4000_0001.
    pub hv_version: CpuidRegs,
}

impl CpuidView {
    /// Reads the five leaves through `cpuid(leaf)` (sub-leaf 0). Reading a
    /// leaf past the CPU's range is harmless: Intel CPUs answer with the
    /// highest basic leaf, AMD CPUs with zeros, hypervisors as they like.
    pub fn read(mut cpuid: impl FnMut(u32) -> CpuidRegs) -> CpuidView {
        CpuidView {
            vendor: vendor_of(cpuid(CPUID_VENDOR_LEAF)),
            announcement: cpuid(L0_LEAF),
            hypervisor_bit: cpuid(CPUID_FEATURES_LEAF).ecx & CPUID_FEATURES_ECX_HYPERVISOR != 0,
            hv_vendor: cpuid(HV_VENDOR_LEAF),
            hv_version: cpuid(HV_VERSION_LEAF),
        }
    }
}

/// Decides whether L0 is below and returns its ABI version; the table in
/// docs/ultracall-abi.md §1, row by row. It does not judge compatibility:
/// the caller compares with [`AbiVersion::compatible_with`], so that a
/// mismatch is reported as such rather than as "no L0". `Ok` is the only
/// answer after which a `vmcall` may be issued.
pub fn decide(v: &CpuidView) -> Result<AbiVersion, Error> {
    let announced = signature_of(v.announcement) == HV_SIGNATURE;
    let standard = v.hypervisor_bit && signature_of(v.hv_vendor) == HV_SIGNATURE;
    if (announced || standard) && v.vendor != VENDOR_INTEL {
        // L0 runs on VMX only: on this CPU a `vmcall` would fault, whoever
        // claims to be L0.
        return Err(Error::NotIntel { vendor: v.vendor });
    }
    if announced {
        return Ok(AbiVersion::from_raw(v.announcement.eax));
    }
    if !v.hypervisor_bit {
        return Err(Error::NoHypervisor);
    }
    if !standard {
        return Err(Error::OtherHypervisor {
            signature: signature_of(v.hv_vendor),
        });
    }
    // An L0 that predates the announcement leaf, seen from the cloud VM.
    if v.hv_vendor.eax < HV_VERSION_LEAF {
        return Err(Error::Malformed(
            "L0's highest hypervisor leaf is below 0x40000001",
        ));
    }
    Ok(AbiVersion::from_raw(v.hv_version.eax))
}

/// Runs the detection over a CPUID function: [`CpuidView::read`], then [`decide`].
pub fn detect(cpuid: impl FnMut(u32) -> CpuidRegs) -> Result<AbiVersion, Error> {
    decide(&CpuidView::read(cpuid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD: [u8; 12] = *b"AuthenticAMD";
    const HYGON: [u8; 12] = *b"HygonGenuine";
    const ZHAOXIN: [u8; 12] = *b"  Shanghai  ";
    const VENDORS: [[u8; 12]; 4] = [VENDOR_INTEL, AMD, HYGON, ZHAOXIN];

    /// Hypervisor signatures seen in leaf 0x4000_0000 (all zero: none).
    const SIGNATURES: [[u8; 12]; 8] = [
        [0; 12],
        HV_SIGNATURE,
        *b"KVMKVMKVM\0\0\0",
        *b"XenVMMXenVMM",
        *b"Microsoft Hv",
        *b"VMwareVMware",
        *b"bhyve bhyve ",
        *b"TCGTCGTCGTCG",
    ];

    fn regs(eax: u32, sig: &[u8; 12]) -> CpuidRegs {
        let w = |i: usize| u32::from_le_bytes(sig[i..i + 4].try_into().unwrap());
        CpuidRegs {
            eax,
            ebx: w(0),
            ecx: w(4),
            edx: w(8),
        }
    }

    /// What a CPU or hypervisor may answer at leaf 0x4C30_0000.
    fn announcements() -> [CpuidRegs; 5] {
        [
            CpuidRegs::default(), // AMD CPUs, most hypervisors
            CpuidRegs {
                eax: 0x0000_0001,
                ebx: 0x0000_0040,
                ecx: 0x12,
                edx: 0,
            }, // Intel: the highest basic leaf's data
            l0_leaf(L0_LEAF).unwrap(),
            regs(AbiVersion { major: 2, minor: 0 }.to_raw(), &HV_SIGNATURE),
            regs(ABI_VERSION.to_raw(), b"L0Hypervisoq"),
        ]
    }

    fn view(
        vendor: [u8; 12],
        announcement: CpuidRegs,
        hypervisor_bit: bool,
        sig: [u8; 12],
    ) -> CpuidView {
        CpuidView {
            vendor,
            announcement,
            hypervisor_bit,
            hv_vendor: regs(HV_MAX_LEAF, &sig),
            hv_version: CpuidRegs {
                eax: ABI_VERSION.to_raw(),
                ..CpuidRegs::default()
            },
        }
    }

    /// The rows of docs/ultracall-abi.md §1, one example each.
    #[test]
    fn the_documented_table() {
        let l0 = l0_leaf(L0_LEAF).unwrap();
        let none = CpuidRegs::default();
        let kvm = *b"KVMKVMKVM\0\0\0";
        let rows: [(&str, CpuidView, Result<AbiVersion, Error>); 9] = [
            (
                "1: Intel, announced (L1 or a user VM under any guest hypervisor)",
                view(VENDOR_INTEL, l0, true, kvm),
                Ok(ABI_VERSION),
            ),
            (
                "1: Intel, announced, hypervisor bit hidden by the guest hypervisor",
                view(VENDOR_INTEL, l0, false, [0; 12]),
                Ok(ABI_VERSION),
            ),
            (
                "2: not announced, no hypervisor bit: bare metal",
                view(VENDOR_INTEL, none, false, [0; 12]),
                Err(Error::NoHypervisor),
            ),
            (
                "3: Intel, standard leaf only (an L0 from before the announcement)",
                view(VENDOR_INTEL, none, true, HV_SIGNATURE),
                Ok(ABI_VERSION),
            ),
            (
                "5: another hypervisor",
                view(VENDOR_INTEL, none, true, kvm),
                Err(Error::OtherHypervisor { signature: kvm }),
            ),
            (
                "5: another hypervisor on AMD (the build machines of our kind)",
                view(AMD, none, true, kvm),
                Err(Error::OtherHypervisor { signature: kvm }),
            ),
            (
                "2: AMD bare metal",
                view(AMD, none, false, [0; 12]),
                Err(Error::NoHypervisor),
            ),
            (
                "6: announced on AMD: nobody may vmcall there",
                view(AMD, l0, true, kvm),
                Err(Error::NotIntel { vendor: AMD }),
            ),
            (
                "6: standard leaf claims L0 on AMD",
                view(AMD, none, true, HV_SIGNATURE),
                Err(Error::NotIntel { vendor: AMD }),
            ),
        ];
        for (what, v, want) in rows {
            assert_eq!(decide(&v), want, "{what}");
        }
        let mut short = view(VENDOR_INTEL, none, true, HV_SIGNATURE);
        short.hv_vendor.eax = HV_VENDOR_LEAF;
        assert!(
            matches!(decide(&short), Err(Error::Malformed(_))),
            "4: L0's standard leaf with too short a range"
        );
    }

    /// Every vendor × hypervisor signature × announcement × hypervisor bit:
    /// a `vmcall` is allowed (`Ok`) only on an Intel CPU where L0's
    /// signature was seen, and every refusal names the right reason.
    #[test]
    fn the_whole_table() {
        let mut allowed = 0;
        for vendor in VENDORS {
            for sig in SIGNATURES {
                for a in announcements() {
                    for bit in [false, true] {
                        let v = view(vendor, a, bit, sig);
                        let announced = signature_of(a) == HV_SIGNATURE;
                        let standard = bit && sig == HV_SIGNATURE;
                        let got = decide(&v);
                        let why = format!("{v:?}");
                        match got {
                            Ok(version) => {
                                allowed += 1;
                                assert_eq!(vendor, VENDOR_INTEL, "{why}");
                                let want = if announced { a.eax } else { v.hv_version.eax };
                                assert_eq!(version.to_raw(), want, "{why}");
                            }
                            Err(Error::NotIntel { vendor: got }) => {
                                assert!(announced || standard, "{why}");
                                assert_ne!(vendor, VENDOR_INTEL, "{why}");
                                assert_eq!(got, vendor);
                            }
                            Err(Error::NoHypervisor) => {
                                assert!(!bit && !announced, "{why}")
                            }
                            Err(Error::OtherHypervisor { signature }) => {
                                assert!(bit && !announced && !standard, "{why}");
                                assert_eq!(signature, sig);
                            }
                            Err(e) => panic!("{e:?} for {why}"),
                        }
                        if vendor == VENDOR_INTEL && (announced || standard) {
                            assert!(got.is_ok(), "{why}");
                        }
                    }
                }
            }
        }
        // Intel with L0 announced (2 announcements × 8 signatures × 2 bits)
        // plus Intel with L0's standard leaf only (3 × 1 × 1).
        assert_eq!(allowed, 2 * 8 * 2 + 3);
    }

    #[test]
    fn detect_reads_the_leaves_it_decides_from() {
        // L0 as the cloud VM sees it: every leaf from l0_leaf.
        let l1 = |leaf| match leaf {
            CPUID_VENDOR_LEAF => regs(0x16, b"GenuntelineI"),
            CPUID_FEATURES_LEAF => CpuidRegs {
                ecx: CPUID_FEATURES_ECX_HYPERVISOR,
                ..CpuidRegs::default()
            },
            l => l0_leaf(l).unwrap_or_default(),
        };
        assert_eq!(vendor_of(l1(0)), VENDOR_INTEL);
        assert_eq!(detect(l1), Ok(ABI_VERSION));
        // A user VM under KVM: KVM's leaves, L0's announcement.
        let l2 = |leaf| match leaf {
            HV_VENDOR_LEAF => regs(0x4000_0001, b"KVMKVMKVM\0\0\0"),
            L0_LEAF => l0_leaf(L0_LEAF).unwrap(),
            l => l1(l),
        };
        assert_eq!(detect(l2), Ok(ABI_VERSION));
    }

    #[test]
    fn signature_registers_spell_l0hypervisor() {
        let v = l0_leaf(HV_VENDOR_LEAF).unwrap();
        assert_eq!(&signature_of(v), b"L0Hypervisor");
        assert_eq!(&signature_of(l0_leaf(L0_LEAF).unwrap()), b"L0Hypervisor");
        assert_eq!(HV_SIGNATURE_EBX, 0x7948_304c);
        assert_eq!(L0_LEAF >> 16, u32::from(u16::from_be_bytes(*b"L0")));
    }

    #[test]
    fn l0_owns_only_its_three_leaves() {
        assert!(l0_leaf(0x4000_0002).is_none());
        assert!(l0_leaf(0).is_none());
        assert!(l0_leaf(L0_LEAF + 1).is_none());
        assert!(l0_answers_for_user_vms(L0_LEAF));
        assert!(!l0_answers_for_user_vms(HV_VENDOR_LEAF));
    }
}
