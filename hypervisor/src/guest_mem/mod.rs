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
    /// An atomic access to a word that is not 8-byte aligned.
    Misaligned { gpa: u64 },
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotRam { gpa, len } => write!(f, "[{gpa:#x}, +{len:#x}) is not guest RAM"),
            Self::Misaligned { gpa } => write!(f, "{gpa:#x} is not 8-byte aligned"),
        }
    }
}

pub trait GuestMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError>;
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), MemError>;
    /// Whether `[gpa, gpa + len)` is all RAM of this guest.
    fn is_ram(&self, gpa: u64, len: u64) -> bool;

    /// Atomically replaces the aligned 64-bit word at `gpa` with `new` if it
    /// holds `current` (a `lock cmpxchg`): the guest's own locked
    /// instructions on other CPUs see a word that L0 shares with them
    /// change in one step. Ok(Err(value)) when it held another value.
    fn compare_exchange_u64(
        &mut self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemError>;

    fn read_u32(&self, gpa: u64) -> Result<u32, MemError> {
        let mut b = [0; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_u64(&self, gpa: u64) -> Result<u64, MemError> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Atomically applies `f` to the aligned 64-bit word at `gpa`; returns
    /// the value it had.
    fn update_u64(&mut self, gpa: u64, f: impl Fn(u64) -> u64) -> Result<u64, MemError> {
        let mut old = self.read_u64(gpa)?;
        loop {
            match self.compare_exchange_u64(gpa, old, f(old))? {
                Ok(v) => return Ok(v),
                Err(now) => old = now,
            }
        }
    }
}

/// The word an atomic access may use: 8-byte aligned.
pub fn aligned_word(gpa: u64) -> Result<(), MemError> {
    match gpa % 8 {
        0 => Ok(()),
        _ => Err(MemError::Misaligned { gpa }),
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
        fn compare_exchange_u64(
            &mut self,
            gpa: u64,
            current: u64,
            new: u64,
        ) -> Result<Result<u64, u64>, MemError> {
            aligned_word(gpa)?;
            let v = self.read_u64(gpa)?;
            if v == current {
                self.write(gpa, &new.to_le_bytes())?;
                return Ok(Ok(v));
            }
            Ok(Err(v))
        }
    }
}
