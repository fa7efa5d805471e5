//! Detecting L0 through CPUID, as data and pure functions.
//!
//! A guest must not issue an ultracall unless it knows L0 is there: a
//! `vmcall` on bare metal raises #UD (SIGILL in a Linux process), and under
//! another hypervisor it means something else. The check, in order:
//!
//! 1. CPUID.1:ECX bit 31 ("hypervisor present") is set;
//! 2. CPUID.0x4000_0000 returns EBX,ECX,EDX = `"L0Hy" "perv" "isor"`
//!    (little-endian, as `"GenuineIntel"`) and EAX ≥ 0x4000_0001;
//! 3. CPUID.0x4000_0001 EAX is L0's ABI version (`major << 16 | minor`).
//!
//! L0 answers those leaves with [`l0_leaf`], the client checks with
//! [`detect`]; both come from here, so they cannot drift apart.

use crate::error::Error;
use crate::version::{AbiVersion, ABI_VERSION};

/// The standard feature leaf.
pub const CPUID_FEATURES_LEAF: u32 = 1;
/// CPUID.1:ECX bit 31: set by every hypervisor, clear on bare metal.
pub const CPUID_FEATURES_ECX_HYPERVISOR: u32 = 1 << 31;
/// Hypervisor vendor leaf: EAX = highest hypervisor leaf, EBX/ECX/EDX = signature.
pub const HV_VENDOR_LEAF: u32 = 0x4000_0000;
/// L0's version leaf: EAX = ABI version, EBX/ECX/EDX = 0.
pub const HV_VERSION_LEAF: u32 = 0x4000_0001;
/// Highest hypervisor leaf L0 implements (EAX of [`HV_VENDOR_LEAF`]).
pub const HV_MAX_LEAF: u32 = HV_VERSION_LEAF;
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
        _ => None,
    }
}

/// The 12 signature bytes of a vendor-leaf answer (EBX, ECX, EDX order).
pub fn signature_of(vendor: CpuidRegs) -> [u8; 12] {
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&vendor.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&vendor.ecx.to_le_bytes());
    sig[8..12].copy_from_slice(&vendor.edx.to_le_bytes());
    sig
}

/// Runs the detection procedure over a CPUID function (`cpuid(leaf)`, sub-leaf 0)
/// and returns L0's ABI version. It does not judge compatibility: the caller
/// compares with [`AbiVersion::compatible_with`], so that a mismatch can be
/// reported as such rather than as "no L0".
pub fn detect(mut cpuid: impl FnMut(u32) -> CpuidRegs) -> Result<AbiVersion, Error> {
    if cpuid(CPUID_FEATURES_LEAF).ecx & CPUID_FEATURES_ECX_HYPERVISOR == 0 {
        return Err(Error::NoHypervisor);
    }
    let vendor = cpuid(HV_VENDOR_LEAF);
    let signature = signature_of(vendor);
    if signature != HV_SIGNATURE {
        return Err(Error::OtherHypervisor { signature });
    }
    if vendor.eax < HV_VERSION_LEAF {
        return Err(Error::Malformed(
            "L0's highest hypervisor leaf is below 0x40000001",
        ));
    }
    Ok(AbiVersion::from_raw(cpuid(HV_VERSION_LEAF).eax))
}

/// KVM's CPUID signature.
pub const KVM_SIGNATURE: [u8; 12] = *b"KVMKVMKVM\0\0\0";

/// Whether a guest that sees hypervisor `signature` in CPUID may look for
/// L0 below it with a Ping ultracall: only under KVM, which returns
/// -KVM_ENOSYS (or -KVM_EPERM from user mode) in RAX for a hypercall it
/// does not know, so the probe cannot fault. That is how a user VM run by
/// Linux/KVM in the cloud VM finds L0.
pub fn probe_by_ping(signature: &[u8; 12]) -> bool {
    *signature == KVM_SIGNATURE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(
        features_ecx: u32,
        hv: impl Fn(u32) -> Option<CpuidRegs>,
    ) -> impl FnMut(u32) -> CpuidRegs {
        move |leaf| {
            if leaf == CPUID_FEATURES_LEAF {
                CpuidRegs {
                    ecx: features_ecx,
                    ..CpuidRegs::default()
                }
            } else {
                hv(leaf).unwrap_or_default()
            }
        }
    }

    #[test]
    fn only_kvm_is_probed() {
        assert!(probe_by_ping(b"KVMKVMKVM\0\0\0"));
        assert!(!probe_by_ping(b"Microsoft Hv"));
        assert!(!probe_by_ping(b"VMwareVMware"));
    }

    #[test]
    fn signature_registers_spell_l0hypervisor() {
        let v = l0_leaf(HV_VENDOR_LEAF).unwrap();
        assert_eq!(&signature_of(v), b"L0Hypervisor");
        assert_eq!(HV_SIGNATURE_EBX, 0x7948_304c);
    }

    #[test]
    fn detects_l0_from_its_own_leaves() {
        let cpu = machine(CPUID_FEATURES_ECX_HYPERVISOR, l0_leaf);
        assert_eq!(detect(cpu), Ok(ABI_VERSION));
    }

    #[test]
    fn bare_metal_is_no_hypervisor_even_if_leaves_answer() {
        let cpu = machine(0, l0_leaf);
        assert_eq!(detect(cpu), Err(Error::NoHypervisor));
    }

    #[test]
    fn kvm_is_another_hypervisor() {
        let kvm = |leaf| {
            (leaf == HV_VENDOR_LEAF).then(|| CpuidRegs {
                eax: 0x4000_0001,
                ebx: u32::from_le_bytes(*b"KVMK"),
                ecx: u32::from_le_bytes(*b"VMKV"),
                edx: u32::from_le_bytes(*b"M\0\0\0"),
            })
        };
        let cpu = machine(CPUID_FEATURES_ECX_HYPERVISOR, kvm);
        assert_eq!(
            detect(cpu),
            Err(Error::OtherHypervisor {
                signature: *b"KVMKVMKVM\0\0\0"
            })
        );
    }

    #[test]
    fn l0_with_short_leaf_range_is_malformed() {
        let short = |leaf| {
            l0_leaf(leaf).map(|mut r| {
                if leaf == HV_VENDOR_LEAF {
                    r.eax = HV_VENDOR_LEAF;
                }
                r
            })
        };
        let cpu = machine(CPUID_FEATURES_ECX_HYPERVISOR, short);
        assert!(matches!(detect(cpu), Err(Error::Malformed(_))));
    }

    #[test]
    fn reports_a_newer_l0_version_without_judging_it() {
        let newer = |leaf| {
            if leaf == HV_VERSION_LEAF {
                Some(CpuidRegs {
                    eax: AbiVersion { major: 7, minor: 2 }.to_raw(),
                    ..CpuidRegs::default()
                })
            } else {
                l0_leaf(leaf)
            }
        };
        let cpu = machine(CPUID_FEATURES_ECX_HYPERVISOR, newer);
        assert_eq!(detect(cpu), Ok(AbiVersion { major: 7, minor: 2 }));
    }

    #[test]
    fn l0_owns_only_its_two_leaves() {
        assert!(l0_leaf(0x4000_0002).is_none());
        assert!(l0_leaf(0).is_none());
    }
}
