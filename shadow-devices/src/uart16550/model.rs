//! The 16550A register model and its console rings.
//!
//! What the model promises, and why:
//!
//! - **Nothing the guest reads is invented.** Bytes come only from the
//!   operator's input queue or from loopback; overrun (OE) happens only
//!   where real hardware would (loopback into a full receiver); PE/FE
//!   are never raised because there is no physical line. A BREAK comes
//!   only from an owner's session, and as the datasheet has it: a NUL
//!   character at the top of the RX FIFO with LSR.BI (and LSR7 in FIFO
//!   mode) set for it. An empty RBR reads the last byte received, as on
//!   hardware.
//! - **A BREAK keeps its place in the input**: it is taken only while the
//!   input queue and the RX FIFO are empty, so it can never be pinned to
//!   a byte typed before it (Linux's 8250 driver drops the character it
//!   reads with BI as the break, and with magic SysRq takes the next one
//!   as a SysRq command). Otherwise the sender is told to send it again
//!   once the guest has read what came first.
//! - **Transmission is instantaneous while the output backlog has room**:
//!   a THR write moves the byte straight into the backlog, so THRE/TEMT
//!   read set again at the next access. When the backlog is full and an
//!   operator is attached, bytes stay in the TX FIFO and THRE/TEMT read
//!   clear until L0 pulls output: a guest that honours LSR loses nothing.
//!   With no operator attached, the oldest backlog bytes are dropped and
//!   counted instead, so an unattended console never stalls the guest.
//!   Only a guest that writes THR into a full TX FIFO loses bytes (counted
//!   as `tx_overflow`), exactly as on hardware.
//! - **LCR is kept, not applied**: word length, parity and stop bits read
//!   back as written, but the virtual line carries whole bytes (as QEMU's
//!   model does). Masking to the word length would garble the output of
//!   guests that never program LCR, whose reset value means 5 data bits.
//! - **Input is fed as the guest drains it**: the input queue plays the
//!   wire. Bytes move into the RX FIFO while it has room, so the input
//!   queue never overruns the FIFO. In loopback the receiver is
//!   disconnected from the wire and the queue waits.
//! - **Character timeout is immediate** (chosen instead of a tick from L0):
//!   the condition "FIFO holds data below the trigger level and no more is
//!   arriving" is evaluated on every access. Since the FIFO is refilled
//!   eagerly, "no more arriving" means the input queue is empty, so a
//!   Linux 8250 driver with trigger 8 or 14 gets every typed byte at once,
//!   without L0 needing a timer. The cost: no batching of slow typing into
//!   fewer interrupts, which real hardware does only for 4 character times.
//! - **The interrupt output** is `OUT2 ∧ ¬loopback ∧ (an enabled cause)`:
//!   on a PC, OUT2 gates the UART's INTR onto the ISA line, and loopback
//!   forces the OUT pins inactive. Rising edges are latched for
//!   [`Uart16550::take_irq_edge`]; the level is sampled at the end of each
//!   public call, so a cause cleared and re-raised within one access (a THR
//!   write with room in the backlog) is not an edge — the guest's handler,
//!   which loops until IIR reads "no interrupt", sees the cause anyway.
//!
//! Interrupt priorities (IIR), highest first: receiver line status (OE),
//! received data at trigger level or character timeout, THR empty, modem
//! status. Reading IIR clears a THRE interrupt only when IIR reported it.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::fifo::{ByteRing, Fifo};
use super::history::{HistoryBudget, OutputHistory, HISTORY_SEALED_TAIL};
use super::registers::*;
use crate::device::{Console, PortRange, ShadowDevice, Traffic};
use crate::error::Error;

/// Capacity of the guest → operator output backlog.
pub const OUTPUT_CAPACITY: usize = 4096;
/// Capacity of the operator → guest input queue.
pub const INPUT_CAPACITY: usize = 1024;

/// A 16550A UART with its console rings.
///
/// A plain state machine: no I/O, no interior mutability. L0 holds it
/// behind its own lock.
#[derive(Clone, Debug)]
pub struct Uart16550 {
    pub(super) base: u16,
    pub(super) irq: u8,

    pub(super) ier: u8,
    pub(super) lcr: u8,
    pub(super) mcr: u8,
    /// Stored FCR bits ([`FCR_STORED_MASK`]); FCR itself is write-only.
    pub(super) fcr: u8,
    pub(super) scr: u8,
    pub(super) dll: u8,
    pub(super) dlm: u8,
    /// Sticky LSR bits: OE, and BI while the break's NUL is unread.
    pub(super) lsr_sticky: u8,
    /// MSR delta bits (MSR3..0).
    pub(super) msr_deltas: u8,
    /// External modem inputs (MSR7..4 layout), used outside loopback.
    pub(super) modem_inputs: u8,
    /// The last byte delivered through RBR: what an empty RBR reads.
    pub(super) rbr: u8,
    /// THRE interrupt source: set when the THR/TX FIFO becomes empty or
    /// ETBEI is enabled while empty; cleared by a THR write or by an IIR
    /// read that reports it.
    pub(super) thre_pending: bool,
    pub(super) rx: Fifo,
    pub(super) tx: Fifo,

    pub(super) output: ByteRing,
    pub(super) input: ByteRing,
    pub(super) operator_attached: bool,

    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) output_dropped: u64,
    pub(super) tx_overflow: u64,

    /// Every byte sent, by offset, for owner sessions (not state; see
    /// `history.rs`); None until an owner may read the port.
    pub(super) history: Option<Box<OutputHistory>>,

    /// Interrupt level at the end of the last public call (not state).
    pub(super) irq_level: bool,
    /// A rising edge not yet taken by L0 (not state).
    pub(super) edge: bool,
}

impl Uart16550 {
    /// A UART at `base` driving ISA `irq`, in its power-on reset state,
    /// with empty console rings and no operator attached.
    pub fn new(base: u16, irq: u8) -> Uart16550 {
        let [dll, dlm] = RESET_DIVISOR.to_le_bytes();
        Uart16550 {
            base,
            irq,
            ier: 0,
            lcr: 0,
            mcr: 0,
            fcr: 0,
            scr: 0,
            dll,
            dlm,
            lsr_sticky: 0,
            msr_deltas: 0,
            modem_inputs: DEFAULT_MODEM_INPUTS,
            rbr: 0,
            thre_pending: false,
            rx: Fifo::default(),
            tx: Fifo::default(),
            output: ByteRing::new(OUTPUT_CAPACITY),
            input: ByteRing::new(INPUT_CAPACITY),
            operator_attached: false,
            bytes_in: 0,
            bytes_out: 0,
            output_dropped: 0,
            tx_overflow: 0,
            history: None,
            irq_level: false,
            edge: false,
        }
    }

    /// First port.
    pub fn base(&self) -> u16 {
        self.base
    }

    /// ISA IRQ.
    pub fn irq(&self) -> u8 {
        self.irq
    }

    // ---- derived state ----

    pub(super) fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_ENABLE != 0
    }

    /// Usable depth of each FIFO: 16 in FIFO mode, 1 (the THR/RBR) otherwise.
    pub(super) fn fifo_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_DEPTH
        } else {
            1
        }
    }

    fn trigger_level(&self) -> usize {
        match self.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    pub(super) fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// MSR7..4 as the receiver sees them.
    fn modem_lines(&self) -> u8 {
        if self.loopback() {
            let m = self.mcr;
            let mut lines = 0;
            if m & MCR_RTS != 0 {
                lines |= MSR_CTS;
            }
            if m & MCR_DTR != 0 {
                lines |= MSR_DSR;
            }
            if m & MCR_OUT1 != 0 {
                lines |= MSR_RI;
            }
            if m & MCR_OUT2 != 0 {
                lines |= MSR_DCD;
            }
            lines
        } else {
            self.modem_inputs
        }
    }

    /// Latches MSR delta bits for a change of the modem lines.
    fn note_line_change(&mut self, old: u8, new: u8) {
        let changed = old ^ new;
        if changed & MSR_CTS != 0 {
            self.msr_deltas |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            self.msr_deltas |= MSR_DDSR;
        }
        // TERI: trailing edge only (RI asserted → deasserted).
        if old & MSR_RI != 0 && new & MSR_RI == 0 {
            self.msr_deltas |= MSR_TERI;
        }
        if changed & MSR_DCD != 0 {
            self.msr_deltas |= MSR_DDCD;
        }
    }

    fn data_at_trigger(&self) -> bool {
        if self.fifo_enabled() {
            self.rx.len() >= self.trigger_level()
        } else {
            !self.rx.is_empty()
        }
    }

    fn char_timeout(&self) -> bool {
        let more_coming = !self.loopback() && !self.input.is_empty();
        self.fifo_enabled()
            && !self.rx.is_empty()
            && self.rx.len() < self.trigger_level()
            && !more_coming
    }

    /// The highest-priority enabled interrupt cause, as its IIR code.
    fn pending_cause(&self) -> Option<u8> {
        if self.ier & IER_RLS != 0 && self.lsr_sticky & LSR_ERRORS != 0 {
            Some(IIR_RLS)
        } else if self.ier & IER_RDA != 0 && self.data_at_trigger() {
            Some(IIR_RDA)
        } else if self.ier & IER_RDA != 0 && self.char_timeout() {
            Some(IIR_TIMEOUT)
        } else if self.ier & IER_THRE != 0 && self.thre_pending {
            Some(IIR_THRE)
        } else if self.ier & IER_MS != 0 && self.msr_deltas != 0 {
            Some(IIR_MS)
        } else {
            None
        }
    }

    fn lsr_value(&self) -> u8 {
        let mut lsr = self.lsr_sticky;
        if !self.rx.is_empty() {
            lsr |= LSR_DR;
        }
        if self.fifo_enabled() && lsr & LSR_BI != 0 {
            // LSR7: a character with an error (the break's NUL) is in the FIFO.
            lsr |= LSR_FIFO_ERR;
        }
        if self.tx.is_empty() {
            // No shift register is modelled: an empty FIFO means the
            // byte has been accepted by the operator side.
            lsr |= LSR_THRE | LSR_TEMT;
        }
        lsr
    }

    // ---- data paths ----

    /// A character arrives at the receiver (from the wire or loopback).
    fn receive(&mut self, byte: u8) {
        if !self.rx.push(byte, self.fifo_capacity()) {
            self.lsr_sticky |= LSR_OE;
            if !self.fifo_enabled() {
                // 16450 mode: the new character overwrites RBR.
                self.rx.overwrite_newest(byte);
            }
            // FIFO mode: the character in the shift register is lost.
        }
    }

    /// Moves queued operator input into the RX FIFO while it has room.
    fn feed_rx(&mut self) {
        if self.loopback() {
            return;
        }
        while self.rx.len() < self.fifo_capacity() {
            let Some(b) = self.input.pop() else { break };
            self.receive(b);
            self.bytes_in = self.bytes_in.saturating_add(1);
        }
    }

    /// Transmits what the TX FIFO holds, as far as the output side accepts.
    fn drain_tx(&mut self) {
        let was_busy = !self.tx.is_empty();
        while let Some(b) = self.tx.peek() {
            let sent = !self.loopback() && (!self.output.is_full() || !self.operator_attached);
            if let (true, Some(h)) = (sent, &mut self.history) {
                h.push(b);
            }
            if self.loopback() {
                self.receive(b);
            } else if !self.output.is_full() {
                self.output.push(b);
                self.bytes_out = self.bytes_out.saturating_add(1);
            } else if !self.operator_attached {
                // Nobody will read the backlog soon: keep the newest output
                // (what an operator attaching later wants to see) and count.
                self.output.pop();
                self.output_dropped = self.output_dropped.saturating_add(1);
                self.output.push(b);
                self.bytes_out = self.bytes_out.saturating_add(1);
            } else {
                break; // backpressure: THRE/TEMT stay clear
            }
            self.tx.pop();
        }
        if was_busy && self.tx.is_empty() {
            self.thre_pending = true;
        }
    }

    /// Samples the interrupt output at the end of a public call.
    pub(super) fn update_irq(&mut self) {
        let level = self.irq_line();
        if level && !self.irq_level {
            self.edge = true;
        }
        self.irq_level = level;
    }

    /// A serial BREAK on the line, as a 16550A receives one: a NUL
    /// character enters the RX FIFO with LSR.BI set for it (until the
    /// guest reads LSR), and the receiver-line-status interrupt rises if
    /// IER enables it. Linux's 8250 driver counts a break and, with magic
    /// SysRq, takes the next key as a SysRq command.
    ///
    /// Returns false, changing nothing, while bytes typed earlier wait in
    /// the input queue or the RX FIFO (the break would be pinned to them)
    /// or the receiver is in loopback (it does not hear the line): the
    /// sender tries again once the guest has read them.
    pub fn send_break(&mut self) -> bool {
        if self.loopback() || !self.input.is_empty() || !self.rx.is_empty() {
            return false;
        }
        self.receive(0);
        self.lsr_sticky |= LSR_BI;
        self.update_irq();
        true
    }

    /// Starts keeping every byte sent by offset (owner sessions), its
    /// buffer charged to `budget` when the first byte comes; the backlog
    /// not yet pulled seeds it. Once on, it stays on.
    pub fn enable_history(&mut self, budget: &'static HistoryBudget) {
        if self.history.is_none() {
            let mut h = OutputHistory::new(budget);
            for b in self.output.to_vec() {
                h.push(b);
            }
            self.history = Some(Box::new(h));
        }
    }

    /// The history a sealed save carries: appends the newest
    /// [`HISTORY_SEALED_TAIL`] bytes to `out`, returns the end offset;
    /// None without a history.
    pub fn history_tail_into(&self, out: &mut Vec<u8>) -> Option<u64> {
        let h = self.history.as_ref()?;
        h.tail_into(HISTORY_SEALED_TAIL, out);
        Some(h.offsets().1)
    }

    /// Continues a sealed history: `tail` ends at offset `end`. A history
    /// here that already ends there with those bytes (this host's own, on
    /// a rollback) is kept whole.
    pub fn continue_history(&mut self, budget: &'static HistoryBudget, end: u64, tail: &[u8]) {
        match &mut self.history {
            Some(h) if h.offsets().1 == end && h.ends_with(tail) => {}
            Some(h) => h.reset_to(end, tail),
            None => self.history = Some(Box::new(OutputHistory::continuing(budget, end, tail))),
        }
    }

    // ---- register access ----

    /// Guest read of register `offset` (0..=7 from the base port). Reads
    /// have side effects (RBR pops, LSR clears OE, MSR clears deltas, IIR
    /// clears a reported THRE). Offsets past 7 read 0xFF.
    pub fn read(&mut self, offset: u8) -> u8 {
        let value = match offset {
            RBR if !self.dlab() => {
                if let Some(b) = self.rx.pop() {
                    self.rbr = b;
                    self.feed_rx();
                }
                self.rbr
            }
            DLL => self.dll,
            IER if !self.dlab() => self.ier,
            DLM => self.dlm,
            IIR => {
                let cause = self.pending_cause();
                if cause == Some(IIR_THRE) {
                    self.thre_pending = false;
                }
                let fifo = if self.fifo_enabled() {
                    IIR_FIFO_ENABLED
                } else {
                    0
                };
                cause.unwrap_or(IIR_NO_INT) | fifo
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let v = self.lsr_value();
                self.lsr_sticky = 0;
                v
            }
            MSR => {
                let v = self.modem_lines() | self.msr_deltas;
                self.msr_deltas = 0;
                v
            }
            SCR => self.scr,
            _ => 0xFF,
        };
        self.update_irq();
        value
    }

    /// Guest write of register `offset` (0..=7). Writes to LSR, MSR and
    /// offsets past 7 are ignored.
    pub fn write(&mut self, offset: u8, value: u8) {
        match offset {
            THR if !self.dlab() => {
                self.thre_pending = false;
                if !self.tx.push(value, self.fifo_capacity()) {
                    self.tx_overflow = self.tx_overflow.saturating_add(1);
                }
                self.drain_tx();
            }
            DLL => self.dll = value,
            IER if !self.dlab() => {
                let old = self.ier;
                self.ier = value & IER_MASK;
                // Enabling ETBEI with the THR empty raises THRE at once
                // (what Linux's UART_BUG_THRE probe checks for).
                if self.ier & IER_THRE != 0 && old & IER_THRE == 0 && self.tx.is_empty() {
                    self.thre_pending = true;
                }
            }
            DLM => self.dlm = value,
            FCR => self.write_fcr(value),
            LCR => self.lcr = value,
            MCR => {
                let old_lines = self.modem_lines();
                self.mcr = value & MCR_MASK;
                let new_lines = self.modem_lines();
                self.note_line_change(old_lines, new_lines);
                // Entering loopback routes held TX bytes to RX; leaving it
                // reconnects the receiver to the input queue.
                self.drain_tx();
                self.feed_rx();
            }
            SCR => self.scr = value,
            _ => {}
        }
        self.update_irq();
    }

    fn clear_tx(&mut self) {
        if !self.tx.is_empty() {
            self.tx.clear();
            self.thre_pending = true;
        }
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_ENABLE != 0;
        if enable != self.fifo_enabled() {
            // Switching between 16450 and FIFO mode clears both FIFOs.
            self.rx.clear();
            self.clear_tx();
        }
        if !enable {
            // "FCR0 must be 1 when other FCR bits are written to or they
            // will not be programmed."
            self.fcr = 0;
        } else {
            if value & FCR_CLEAR_RX != 0 {
                self.rx.clear();
            }
            if value & FCR_CLEAR_TX != 0 {
                self.clear_tx();
            }
            self.fcr = value & FCR_STORED_MASK;
        }
        self.feed_rx();
    }

    // ---- interrupt output ----

    /// The level of the ISA interrupt line.
    pub fn irq_line(&self) -> bool {
        self.mcr & MCR_OUT2 != 0 && !self.loopback() && self.pending_cause().is_some()
    }

    /// True once per rising edge of [`Uart16550::irq_line`] since the last call.
    pub fn take_irq_edge(&mut self) -> bool {
        core::mem::take(&mut self.edge)
    }

    // ---- operator side ----

    /// See [`Console::set_operator_attached`].
    pub fn set_operator_attached(&mut self, attached: bool) {
        self.operator_attached = attached;
        self.drain_tx();
        self.update_irq();
    }

    /// See [`Console::pull_output`].
    pub fn pull_output(&mut self, out: &mut [u8]) -> usize {
        let n = self.output.pop_into(out);
        self.drain_tx();
        self.update_irq();
        n
    }

    /// See [`Console::push_input`].
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let mut n = 0;
        for &b in bytes {
            if self.input.is_full() {
                // Let the wire advance into the RX FIFO before refusing.
                self.feed_rx();
            }
            if !self.input.push(b) {
                break;
            }
            n += 1;
        }
        self.feed_rx();
        self.update_irq();
        n
    }

    /// See [`Console::drop_input`]. In loopback the receiver holds the
    /// guest's own bytes, not the operator's: it is left alone.
    pub fn drop_input(&mut self) -> usize {
        let mut n = self.input.len();
        while self.input.pop().is_some() {}
        if !self.loopback() {
            n += self.rx.len();
            self.rx.clear();
            self.rbr = 0;
        }
        self.update_irq();
        n
    }

    /// Sets the external modem inputs (MSR7..4 layout: CTS, DSR, RI, DCD).
    /// Default: CTS, DSR and DCD asserted — a connected virtual line.
    /// Outside loopback, changes latch the MSR delta bits.
    pub fn set_modem_inputs(&mut self, lines: u8) {
        let old = self.modem_lines();
        self.modem_inputs = lines & MSR_LINES_MASK;
        let new = self.modem_lines();
        self.note_line_change(old, new);
        self.update_irq();
    }

    /// Master reset: IER, IIR, FCR, LCR, MCR, LSR and MSR3..0 reset, FIFOs
    /// cleared; RBR, SCR and the divisor are unaffected (datasheet
    /// Table III). The console rings are the wire and survive.
    pub fn reset(&mut self) {
        self.ier = 0;
        self.fcr = 0;
        self.lcr = 0;
        self.mcr = 0;
        self.lsr_sticky = 0;
        self.msr_deltas = 0;
        self.thre_pending = false;
        self.rx.clear();
        self.tx.clear();
        self.feed_rx();
        self.update_irq();
    }

    /// Bytes waiting in the output backlog.
    pub fn output_pending(&self) -> usize {
        self.output.len()
    }

    /// Free room in the input queue.
    pub fn input_space(&self) -> usize {
        self.input.capacity() - self.input.len()
    }

    /// Backlog bytes dropped with no operator attached.
    pub fn output_dropped(&self) -> u64 {
        self.output_dropped
    }

    /// Bytes the guest wrote into a full TX FIFO (lost, as on hardware).
    pub fn tx_overflow(&self) -> u64 {
        self.tx_overflow
    }

    /// Traffic counters.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }
}

impl Console for Uart16550 {
    fn set_operator_attached(&mut self, attached: bool) {
        Uart16550::set_operator_attached(self, attached)
    }
    fn operator_attached(&self) -> bool {
        self.operator_attached
    }
    fn pull_output(&mut self, out: &mut [u8]) -> usize {
        Uart16550::pull_output(self, out)
    }
    fn output_pending(&self) -> usize {
        Uart16550::output_pending(self)
    }
    fn push_input(&mut self, bytes: &[u8]) -> usize {
        Uart16550::push_input(self, bytes)
    }
    fn input_space(&self) -> usize {
        Uart16550::input_space(self)
    }
    fn output_dropped(&self) -> u64 {
        self.output_dropped
    }
    fn enable_history(&mut self, budget: &'static HistoryBudget) {
        Uart16550::enable_history(self, budget)
    }
    fn history_offsets(&self) -> Option<(u64, u64)> {
        let h = self.history.as_ref()?;
        h.unavailable().is_none().then(|| h.offsets())
    }
    fn history_read(&self, from: u64, out: &mut [u8]) -> Option<(u64, usize, u64)> {
        self.history.as_ref()?.read(from, out)
    }
    fn history_tail_into(&self, out: &mut Vec<u8>) -> Option<u64> {
        Uart16550::history_tail_into(self, out)
    }
    fn continue_history(&mut self, budget: &'static HistoryBudget, end: u64, tail: &[u8]) {
        Uart16550::continue_history(self, budget, end, tail)
    }
    fn send_break(&mut self) -> bool {
        Uart16550::send_break(self)
    }
    fn drop_input(&mut self) -> usize {
        Uart16550::drop_input(self)
    }
}

impl ShadowDevice for Uart16550 {
    fn class(&self) -> u16 {
        ultracall_abi::DEVICE_CLASS_UART16550A
    }
    fn ports(&self) -> PortRange {
        PortRange {
            base: self.base,
            count: PORT_COUNT,
        }
    }
    fn isa_irq(&self) -> Option<u8> {
        Some(self.irq)
    }
    fn io_read(&mut self, port: u16) -> u8 {
        match self.ports().offset(port) {
            Some(off) => self.read(off),
            None => 0xFF,
        }
    }
    fn io_write(&mut self, port: u16, value: u8) {
        if let Some(off) = self.ports().offset(port) {
            self.write(off, value);
        }
    }
    fn irq_line(&self) -> bool {
        Uart16550::irq_line(self)
    }
    fn take_irq_edge(&mut self) -> bool {
        Uart16550::take_irq_edge(self)
    }
    fn save_state(&self) -> Vec<u8> {
        Uart16550::save_state(self)
    }
    fn save_state_into(&self, out: &mut Vec<u8>) {
        Uart16550::save_state_into(self, out)
    }
    fn validate_state(&self, state: &[u8]) -> Result<(), Error> {
        super::state::UartState::decode_parts(state).map(|_| ())
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), Error> {
        Uart16550::restore_state(self, state)
    }
    fn traffic(&self) -> Traffic {
        Uart16550::traffic(self)
    }
    fn reset(&mut self) {
        Uart16550::reset(self)
    }
    fn console(&mut self) -> Option<&mut dyn Console> {
        Some(self)
    }
    fn console_ref(&self) -> Option<&dyn Console> {
        Some(self)
    }
}
