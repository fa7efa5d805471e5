//! The contract between L0 and any shadow device.
//!
//! A shadow device is a plain state machine: L0 owns it (behind its own
//! lock), forwards the guest's port accesses to it one byte at a time, asks
//! it for its interrupt level and rising edges, and saves/restores it. It
//! performs no I/O and has no interior mutability, so it can be tested on
//! the host and moved between threads ([`Send`]).
//!
//! Devices that carry a console (the UARTs) also expose [`Console`], the
//! operator side: L0 pulls what the guest wrote and pushes what the
//! operator typed.

use alloc::vec::Vec;

use crate::error::Error;
use crate::uart16550::history::HistoryBudget;

/// A contiguous range of I/O ports claimed by a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port.
    pub base: u16,
    /// Number of ports.
    pub count: u16,
}

impl PortRange {
    /// The offset of `port` inside the range, if it is inside.
    pub fn offset(&self, port: u16) -> Option<u8> {
        let off = port.checked_sub(self.base)?;
        if off < self.count {
            u8::try_from(off).ok()
        } else {
            None
        }
    }

    /// True when `port` is claimed.
    pub fn contains(&self, port: u16) -> bool {
        self.offset(port).is_some()
    }

    /// True when the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        let end = |r: &PortRange| u32::from(r.base) + u32::from(r.count);
        u32::from(self.base) < end(other) && u32::from(other.base) < end(self)
    }
}

/// Bytes that crossed the device's operator side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Operator → guest bytes delivered into the device.
    pub bytes_in: u64,
    /// Guest → operator bytes put into the output backlog.
    pub bytes_out: u64,
}

/// The operator side of a device with a console.
pub trait Console {
    /// Tells the device whether an operator is attached. While one is, a
    /// full output backlog pushes back on the guest (THRE/TEMT stay clear);
    /// while none is, the oldest backlog bytes are dropped and counted.
    fn set_operator_attached(&mut self, attached: bool);
    /// What [`Console::set_operator_attached`] last said.
    fn operator_attached(&self) -> bool;
    /// Moves up to `out.len()` bytes the guest wrote, oldest first, out of
    /// the backlog; returns the count. Frees room for pushed-back output.
    fn pull_output(&mut self, out: &mut [u8]) -> usize;
    /// Bytes waiting in the output backlog.
    fn output_pending(&self) -> usize;
    /// Queues operator input for the guest; returns how many bytes fit
    /// (the rest are not taken: the caller tells the operator).
    fn push_input(&mut self, bytes: &[u8]) -> usize;
    /// Free room in the input queue.
    fn input_space(&self) -> usize;
    /// Bytes dropped because the backlog was full with no operator attached.
    fn output_dropped(&self) -> u64;
    /// Starts keeping the output by offset for owner sessions, its buffer
    /// charged to `budget` once the port is used (a device without such
    /// a history ignores it).
    fn enable_history(&mut self, _budget: &'static HistoryBudget) {}
    /// The history's (oldest offset kept, end), once enabled; None also
    /// when its buffer could not be had.
    fn history_offsets(&self) -> Option<(u64, u64)> {
        None
    }
    /// Output from offset `from` (or the oldest kept): (offset of
    /// `out[0]`, count, end); None without a history or when its buffer
    /// could not be had.
    fn history_read(&self, _from: u64, _out: &mut [u8]) -> Option<(u64, usize, u64)> {
        None
    }
    /// What a sealed save carries of the history: appends its newest
    /// bytes to `out` and returns its end offset; None (nothing appended)
    /// without a history.
    fn history_tail_into(&self, _out: &mut Vec<u8>) -> Option<u64> {
        None
    }
    /// Continues a sealed history whose `tail` ends at offset `end`.
    fn continue_history(&mut self, _budget: &'static HistoryBudget, _end: u64, _tail: &[u8]) {}
    /// A serial BREAK from the other end of the line; false when it was
    /// not taken and should be sent again later (input typed before it is
    /// still unread). Devices without a line ignore it (and say taken).
    fn send_break(&mut self) -> bool {
        true
    }
    /// Drops the operator's input the guest has not read (the input queue,
    /// the receiver's FIFO, and the last byte an empty RBR would show
    /// again); returns how many bytes were unread. For a restore into a VM
    /// that is not the one that saved: typed input is for its reader.
    fn drop_input(&mut self) -> usize;
}

/// A device L0 runs in place of hardware the guest believes it has.
///
/// Object-safe: the registry holds `Box<dyn ShadowDevice>`.
pub trait ShadowDevice: Send {
    /// Device class id, as in the sealed-blob header
    /// (`ultracall_abi::DEVICE_CLASS_*`).
    fn class(&self) -> u16;
    /// Ports claimed.
    fn ports(&self) -> PortRange;
    /// ISA IRQ the device drives, if any.
    fn isa_irq(&self) -> Option<u8>;
    /// One-byte read of `port` (L0 splits wider accesses). A port outside
    /// [`ShadowDevice::ports`] reads 0xFF, as an undecoded bus does.
    fn io_read(&mut self, port: u16) -> u8;
    /// One-byte write of `port`; outside [`ShadowDevice::ports`] it is ignored.
    fn io_write(&mut self, port: u16, value: u8);
    /// Current level of the interrupt output.
    fn irq_line(&self) -> bool;
    /// True once per rising edge of the interrupt output since the last
    /// call. L0 posts an interrupt only then: the guest must never see an
    /// interrupt without a cause.
    fn take_irq_edge(&mut self) -> bool;
    /// Serialises the whole device state (versioned, little-endian).
    fn save_state(&self) -> Vec<u8>;
    /// Appends what [`ShadowDevice::save_state`] returns to `out` (a
    /// device may do it without a buffer of its own).
    fn save_state_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.save_state());
    }
    /// Checks a state without applying it.
    fn validate_state(&self, state: &[u8]) -> Result<(), Error>;
    /// Replaces the device state; on error the device is untouched.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), Error>;
    /// Traffic counters for the VM list.
    fn traffic(&self) -> Traffic;
    /// Hardware reset (the guest's platform reset); consoles keep their rings.
    fn reset(&mut self);
    /// The console, for devices that have one.
    fn console(&mut self) -> Option<&mut dyn Console> {
        None
    }
    /// The console, read-only.
    fn console_ref(&self) -> Option<&dyn Console> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_offsets() {
        let r = PortRange {
            base: 0x3f8,
            count: 8,
        };
        assert_eq!(r.offset(0x3f8), Some(0));
        assert_eq!(r.offset(0x3ff), Some(7));
        assert_eq!(r.offset(0x400), None);
        assert_eq!(r.offset(0x3f7), None);
        assert_eq!(r.offset(0), None);
        let top = PortRange {
            base: 0xfffc,
            count: 8,
        };
        assert_eq!(top.offset(0xffff), Some(3));
    }

    #[test]
    fn port_range_overlap() {
        let a = PortRange {
            base: 0x3f8,
            count: 8,
        };
        assert!(a.overlaps(&PortRange {
            base: 0x3ff,
            count: 1
        }));
        assert!(!a.overlaps(&PortRange {
            base: 0x400,
            count: 8
        }));
        assert!(!a.overlaps(&PortRange {
            base: 0x2f8,
            count: 8
        }));
        assert!(PortRange {
            base: 0xfff8,
            count: 8
        }
        .overlaps(&PortRange {
            base: 0xffff,
            count: 1
        }));
    }
}
