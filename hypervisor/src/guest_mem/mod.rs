//! Guest-physical memory as L0 reaches it.
//!
//! EPT01 maps L1's RAM identity, so an L1 guest-physical address is the host
//! physical address; [`L1Ram`] only allows addresses inside L1's RAM, never
//! L0's pool or MMIO. Host tests use [`fake::VecMemory`].

use core::fmt;

pub mod walk;

use boot::memmap::{Range, RangeSet};

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

/// The cloud VM's RAM.
pub struct L1Ram {
    ram: RangeSet,
}

impl L1Ram {
    /// # Safety
    /// `ram` must be RAM that L0 has identity-mapped and that belongs to L1
    /// (no L0 data lives there).
    pub unsafe fn new(ram: RangeSet) -> Self {
        L1Ram { ram }
    }

    fn check(&self, gpa: u64, len: u64) -> Result<(), MemError> {
        let end = gpa.checked_add(len).ok_or(MemError::NotRam { gpa, len })?;
        match self.ram.contains_range(Range::new(gpa, end)) {
            true => Ok(()),
            false => Err(MemError::NotRam { gpa, len }),
        }
    }

    pub fn ranges(&self) -> &RangeSet {
        &self.ram
    }
}

impl GuestMemory for L1Ram {
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        self.check(gpa, len).is_ok()
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.check(gpa, buf.len() as u64)?;
        // SAFETY: checked to lie in identity-mapped L1 RAM; a guest may change
        // it concurrently only on other CPUs, and L1 runs on this one.
        unsafe { core::ptr::copy_nonoverlapping(gpa as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        self.check(gpa, data.len() as u64)?;
        // SAFETY: as in read(); the range holds no L0 data.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), gpa as *mut u8, data.len()) };
        Ok(())
    }
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), MemError> {
        self.check(gpa, len)?;
        // SAFETY: as in write().
        unsafe { core::ptr::write_bytes(gpa as *mut u8, 0, len as usize) };
        Ok(())
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
