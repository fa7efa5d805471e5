//! VMX: VMCS access behind a trait, capability MSRs, exit decoding, EPT.
//!
//! [`Vmcs`] has one hardware implementation (`arch::vmx::CurrentVmcs`, the CPU's
//! current VMCS) and a map-backed fake for host tests; nested VMX adds the
//! software VMCS12 as a third.

use core::fmt;

pub mod caps;
pub mod ept;
pub mod exit;
pub mod fields;
pub mod guest_cr;
pub mod inject;
pub mod requirements;

pub use fields::Field;

/// A VMX instruction failed (SDM Vol. 3C 31.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxError {
    /// CF=1: no current VMCS (or the operand pointer itself is bad).
    FailInvalid,
    /// ZF=1: the VM-instruction error number (SDM 31.4).
    FailValid(u32),
}

/// VM-instruction error numbers (SDM Vol. 3C 31.4).
pub fn instruction_error_name(n: u32) -> &'static str {
    match n {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => "VM entry with executive-VMCS pointer not VMXON pointer",
        19 => "VMCALL with non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with incorrect MSEG revision identifier",
        23 => "VMXOFF under dual-monitor treatment",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "Invalid operand to INVEPT/INVVPID",
        _ => "unknown VM-instruction error",
    }
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::FailInvalid => write!(f, "VMfailInvalid"),
            Self::FailValid(n) => write!(f, "VMfailValid({n}: {})", instruction_error_name(n)),
        }
    }
}

/// Access to one VMCS.
pub trait Vmcs {
    fn read_raw(&self, encoding: u32) -> Result<u64, VmxError>;
    fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmxError>;

    /// Reads a field L0 knows exists; failing is an L0 bug.
    fn read(&self, f: Field) -> u64 {
        self.read_raw(f as u32)
            .unwrap_or_else(|e| panic!("VMREAD {f}: {e}"))
    }
    /// Writes a field L0 knows exists; failing is an L0 bug.
    fn write(&mut self, f: Field, v: u64) {
        self.write_raw(f as u32, v)
            .unwrap_or_else(|e| panic!("VMWRITE {f} = {v:#x}: {e}"))
    }
    fn set_bits(&mut self, f: Field, bits: u64) {
        let v = self.read(f);
        self.write(f, v | bits);
    }
    fn clear_bits(&mut self, f: Field, bits: u64) {
        let v = self.read(f);
        self.write(f, v & !bits);
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::BTreeMap;

    /// A VMCS in a map: unknown encodings fail like hardware (error 12).
    #[derive(Default, Debug, Clone)]
    pub struct FakeVmcs {
        pub fields: BTreeMap<u32, u64>,
    }

    impl Vmcs for FakeVmcs {
        fn read_raw(&self, encoding: u32) -> Result<u64, VmxError> {
            match Field::from_encoding(encoding) {
                Some(_) => Ok(*self.fields.get(&encoding).unwrap_or(&0)),
                None => Err(VmxError::FailValid(12)),
            }
        }
        fn write_raw(&mut self, encoding: u32, value: u64) -> Result<(), VmxError> {
            match Field::from_encoding(encoding) {
                Some(f) => {
                    self.fields.insert(encoding, value & f.mask());
                    Ok(())
                }
                None => Err(VmxError::FailValid(12)),
            }
        }
    }
}
