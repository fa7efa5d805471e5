//! Guest-physical memory as L0 reaches it.
//!
//! EPT01 maps L1's RAM identity, so an L1 guest-physical address is the host
//! physical address; the machine's implementation (`arch::l1_ram::L1Ram`)
//! only allows addresses inside L1's RAM, never L0's pool or MMIO. Host
//! tests use `fake::VecMemory`.

use core::fmt;

pub mod walk;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// The range is not (entirely) RAM of this guest.
    NotRam { gpa: u64, len: u64 },
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotRam { gpa, len } => write!(f, "[{gpa:#x}, +{len:#x}) is not guest RAM"),
        }
    }
}

pub trait GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError>;
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), MemError>;
    /// Whether `[gpa, gpa + len)` is all RAM of this guest.
    fn is_ram(&self, gpa: u64, len: u64) -> bool;

    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;

    /// Guest RAM `[base, base + bytes.len())` in a vector.
    pub struct VecMemory {
        pub base: u64,
        pub bytes: Vec<u8>,
    }

    impl VecMemory {
        pub fn new(base: u64, len: usize) -> Self {
            VecMemory {
                base,
                bytes: vec![0; len],
            }
        }
        fn slot(&self, gpa: u64, len: usize) -> Result<usize, MemError> {
            let err = MemError::NotRam {
                gpa,
                len: len as u64,
            };
            let off = gpa.checked_sub(self.base).ok_or(err)? as usize;
            match off.checked_add(len) {
                Some(end) if end <= self.bytes.len() => Ok(off),
                _ => Err(err),
            }
        }
    }

    impl GuestMemory for VecMemory {
        fn is_ram(&self, gpa: u64, len: u64) -> bool {
            self.slot(gpa, len as usize).is_ok()
        }
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
            let o = self.slot(gpa, buf.len())?;
            buf.copy_from_slice(&self.bytes[o..o + buf.len()]);
            Ok(())
        }
        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
            let o = self.slot(gpa, data.len())?;
            self.bytes[o..o + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn zero(&mut self, gpa: u64, len: u64) -> Result<(), MemError> {
            let o = self.slot(gpa, len as usize)?;
            self.bytes[o..o + len as usize].fill(0);
            Ok(())
        }
    }
}
