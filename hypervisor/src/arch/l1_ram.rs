//! The cloud VM's RAM as L0 reaches it on the machine: identity-mapped,
//! every access checked against L1's ranges first (`guest_mem::GuestMemory`).

use boot::memmap::{Range, RangeSet};

use core::sync::atomic::Ordering;

use crate::guest_mem::{GuestMemory, MemError};

/// The cloud VM's RAM.
#[derive(Clone)]
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
        // SAFETY: checked to lie in identity-mapped L1 RAM. L1 on other CPUs
        // may change it meanwhile: L0 copies bytes, forms no reference into
        // guest memory, and takes what it reads as untrusted; words it
        // shares with L1 go through compare_exchange_u64.
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
    fn compare_exchange_u64(
        &mut self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError> {
        crate::guest_mem::aligned_word(gpa)?;
        self.check(gpa, 8)?;
        // SAFETY: an aligned word of identity-mapped L1 RAM (checked), only
        // ever accessed atomically here and by L1's locked instructions.
        let word = unsafe { core::sync::atomic::AtomicU64::from_ptr(gpa as *mut u64) };
        Ok(word.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst))
    }
}
