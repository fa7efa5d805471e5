//! The 16550A UART shadow device.
//!
//! - [`registers`]: offsets and bits, one datasheet line each;
//! - [`model`]: the register state machine and console rings ([`Uart16550`]);
//! - [`state`]: the versioned saved-state format and its validation.
//!
//! [`ComPort`] names the four PC serial ports L0 claims.

pub mod fifo;
pub mod history;
pub mod model;
pub mod registers;
pub mod state;

pub use model::{Uart16550, INPUT_CAPACITY, OUTPUT_CAPACITY};
pub use state::{UartState, UART_STATE_VERSION};

/// The PC's four serial ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ComPort {
    /// 0x3F8, IRQ 4.
    Com1,
    /// 0x2F8, IRQ 3.
    Com2,
    /// 0x3E8, IRQ 4.
    Com3,
    /// 0x2E8, IRQ 3.
    Com4,
}

impl ComPort {
    /// All four, in order.
    pub const ALL: [ComPort; 4] = [ComPort::Com1, ComPort::Com2, ComPort::Com3, ComPort::Com4];

    /// Base I/O port.
    pub const fn base(self) -> u16 {
        match self {
            ComPort::Com1 => 0x3F8,
            ComPort::Com2 => 0x2F8,
            ComPort::Com3 => 0x3E8,
            ComPort::Com4 => 0x2E8,
        }
    }

    /// ISA IRQ.
    pub const fn irq(self) -> u8 {
        match self {
            ComPort::Com1 | ComPort::Com3 => 4,
            ComPort::Com2 | ComPort::Com4 => 3,
        }
    }

    /// A fresh UART at this port.
    pub fn uart(self) -> Uart16550 {
        Uart16550::new(self.base(), self.irq())
    }
}
