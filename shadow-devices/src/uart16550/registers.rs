//! 16550A register offsets and bits, from the National Semiconductor
//! PC16550D datasheet (June 1995), Table II "Summary of Registers".

// ---- Offsets from the base port (DLAB = LCR bit 7 selects 0 and 1) ----

/// 0, DLAB=0, read: Receiver Buffer Register (top of the RX FIFO).
pub const RBR: u8 = 0;
/// 0, DLAB=0, write: Transmitter Holding Register (into the TX FIFO).
pub const THR: u8 = 0;
/// 0, DLAB=1: Divisor Latch, least significant byte.
pub const DLL: u8 = 0;
/// 1, DLAB=0: Interrupt Enable Register.
pub const IER: u8 = 1;
/// 1, DLAB=1: Divisor Latch, most significant byte.
pub const DLM: u8 = 1;
/// 2, read: Interrupt Identification Register.
pub const IIR: u8 = 2;
/// 2, write: FIFO Control Register (write-only).
pub const FCR: u8 = 2;
/// 3: Line Control Register.
pub const LCR: u8 = 3;
/// 4: Modem Control Register.
pub const MCR: u8 = 4;
/// 5: Line Status Register (writes are for factory test; ignored here).
pub const LSR: u8 = 5;
/// 6: Modem Status Register (writes ignored).
pub const MSR: u8 = 6;
/// 7: Scratch Register.
pub const SCR: u8 = 7;
/// Number of ports a 16550A decodes.
pub const PORT_COUNT: u16 = 8;

// ---- IER ----

/// IER0 ERBFI: enable received-data-available and character-timeout interrupts.
pub const IER_RDA: u8 = 0x01;
/// IER1 ETBEI: enable transmitter-holding-register-empty interrupt.
pub const IER_THRE: u8 = 0x02;
/// IER2 ELSI: enable receiver-line-status interrupt.
pub const IER_RLS: u8 = 0x04;
/// IER3 EDSSI: enable modem-status interrupt.
pub const IER_MS: u8 = 0x08;
/// IER4..7 are always 0 on the 16550A.
pub const IER_MASK: u8 = 0x0F;

// ---- IIR ----

/// IIR0: 1 = no interrupt pending.
pub const IIR_NO_INT: u8 = 0x01;
/// IIR3..1 = 011: receiver line status (priority 1, highest).
pub const IIR_RLS: u8 = 0x06;
/// IIR3..1 = 010: received data available (priority 2).
pub const IIR_RDA: u8 = 0x04;
/// IIR3..1 = 110: character timeout (priority 2, FIFO mode only).
pub const IIR_TIMEOUT: u8 = 0x0C;
/// IIR3..1 = 001: transmitter holding register empty (priority 3).
pub const IIR_THRE: u8 = 0x02;
/// IIR3..1 = 000: modem status (priority 4, lowest).
pub const IIR_MS: u8 = 0x00;
/// IIR7..6 = 11 when FCR0 = 1 (FIFOs enabled).
pub const IIR_FIFO_ENABLED: u8 = 0xC0;

// ---- FCR ----

/// FCR0: enable both FIFOs; changing it clears both FIFOs.
pub const FCR_ENABLE: u8 = 0x01;
/// FCR1: clear the RX FIFO (self-clearing).
pub const FCR_CLEAR_RX: u8 = 0x02;
/// FCR2: clear the TX FIFO (self-clearing).
pub const FCR_CLEAR_TX: u8 = 0x04;
/// FCR3: DMA mode select (kept, no DMA modelled).
pub const FCR_DMA_MODE: u8 = 0x08;
/// FCR7..6: RX FIFO trigger level (00=1, 01=4, 10=8, 11=14 bytes).
pub const FCR_TRIGGER_MASK: u8 = 0xC0;
/// FCR bits that are stored (FCR1/2 self-clear, FCR4/5 reserved).
pub const FCR_STORED_MASK: u8 = FCR_ENABLE | FCR_DMA_MODE | FCR_TRIGGER_MASK;

// ---- LCR ----

/// LCR1..0: word length, 00=5 … 11=8 bits.
pub const LCR_WORD_LEN_MASK: u8 = 0x03;
/// LCR7: Divisor Latch Access Bit.
pub const LCR_DLAB: u8 = 0x80;

// ---- MCR ----

/// MCR0: DTR (loopback: drives DSR).
pub const MCR_DTR: u8 = 0x01;
/// MCR1: RTS (loopback: drives CTS).
pub const MCR_RTS: u8 = 0x02;
/// MCR2: OUT1 (loopback: drives RI).
pub const MCR_OUT1: u8 = 0x04;
/// MCR3: OUT2; on a PC it gates the UART's interrupt onto the ISA IRQ line
/// (loopback: drives DCD, and the external pin is forced inactive).
pub const MCR_OUT2: u8 = 0x08;
/// MCR4: local loopback.
pub const MCR_LOOP: u8 = 0x10;
/// MCR7..5 are always 0 on the 16550A.
pub const MCR_MASK: u8 = 0x1F;

// ---- LSR ----

/// LSR0 DR: at least one character in RBR / the RX FIFO.
pub const LSR_DR: u8 = 0x01;
/// LSR1 OE: overrun error (cleared by reading LSR).
pub const LSR_OE: u8 = 0x02;
/// LSR2 PE: parity error (never raised: there is no physical line).
pub const LSR_PE: u8 = 0x04;
/// LSR3 FE: framing error (never raised: there is no physical line).
pub const LSR_FE: u8 = 0x08;
/// LSR4 BI: break interrupt (an owner's BREAK; the break's NUL is in RBR).
pub const LSR_BI: u8 = 0x10;
/// LSR5 THRE: THR / TX FIFO empty.
pub const LSR_THRE: u8 = 0x20;
/// LSR6 TEMT: THR / TX FIFO and transmitter shift register both empty.
pub const LSR_TEMT: u8 = 0x40;
/// LSR7: error in RX FIFO (a PE/FE/BI character is in it: here a break).
pub const LSR_FIFO_ERR: u8 = 0x80;
/// LSR bits that raise a receiver-line-status interrupt.
pub const LSR_ERRORS: u8 = LSR_OE | LSR_PE | LSR_FE | LSR_BI;

// ---- MSR ----

/// MSR0 DCTS: CTS changed since MSR was last read.
pub const MSR_DCTS: u8 = 0x01;
/// MSR1 DDSR: DSR changed since MSR was last read.
pub const MSR_DDSR: u8 = 0x02;
/// MSR2 TERI: RI went from asserted to deasserted.
pub const MSR_TERI: u8 = 0x04;
/// MSR3 DDCD: DCD changed since MSR was last read.
pub const MSR_DDCD: u8 = 0x08;
/// MSR3..0: the delta bits.
pub const MSR_DELTA_MASK: u8 = 0x0F;
/// MSR4 CTS (complement of the pin; loopback: = RTS).
pub const MSR_CTS: u8 = 0x10;
/// MSR5 DSR (loopback: = DTR).
pub const MSR_DSR: u8 = 0x20;
/// MSR6 RI (loopback: = OUT1).
pub const MSR_RI: u8 = 0x40;
/// MSR7 DCD (loopback: = OUT2).
pub const MSR_DCD: u8 = 0x80;
/// MSR7..4: the line states.
pub const MSR_LINES_MASK: u8 = 0xF0;

// ---- Sizes and reset values ----

/// Depth of each FIFO.
pub const FIFO_DEPTH: usize = 16;
/// Divisor a PC BIOS leaves for 9600 baud (115200 / 12). The datasheet
/// leaves DLL/DLM undefined after reset; a fixed value keeps state
/// deterministic.
pub const RESET_DIVISOR: u16 = 12;
/// Modem inputs of a connected virtual line: CTS, DSR, DCD asserted, RI not.
pub const DEFAULT_MODEM_INPUTS: u8 = MSR_CTS | MSR_DSR | MSR_DCD;
