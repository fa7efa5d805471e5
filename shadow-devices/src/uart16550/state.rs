//! The UART's saved state: format version 1, explicit little-endian.
//!
//! Layout (offsets in bytes):
//!
//! | off | size | field                                                   |
//! |-----|------|---------------------------------------------------------|
//! | 0   | 2    | format version (1)                                      |
//! | 2   | 1    | IER (bits 7..4 zero)                                    |
//! | 3   | 1    | LCR                                                     |
//! | 4   | 1    | MCR (bits 7..5 zero)                                    |
//! | 5   | 1    | FCR as stored: FIFO enable, DMA mode, trigger; 0 when FIFOs off |
//! | 6   | 1    | LSR sticky bits (only OE may be set)                    |
//! | 7   | 1    | MSR delta bits (bits 7..4 zero)                         |
//! | 8   | 1    | external modem inputs (bits 3..0 zero)                  |
//! | 9   | 1    | SCR                                                     |
//! | 10  | 1    | DLL                                                     |
//! | 11  | 1    | DLM                                                     |
//! | 12  | 1    | last byte delivered through RBR                         |
//! | 13  | 1    | flags: bit 0 THRE interrupt pending, bit 1 operator attached |
//! | 14  | 1    | RX FIFO length                                          |
//! | 15  | 1    | TX FIFO length                                          |
//! | 16  | 16   | RX FIFO, oldest first, unused bytes zero                |
//! | 32  | 16   | TX FIFO, oldest first, unused bytes zero                |
//! | 48  | 8    | bytes in                                                |
//! | 56  | 8    | bytes out                                               |
//! | 64  | 8    | output bytes dropped (no operator, backlog full)        |
//! | 72  | 8    | TX FIFO overflows                                       |
//! | 80  | 4    | output backlog length (≤ 4096)                          |
//! | 84  | 4    | input queue length (≤ 1024)                             |
//! | 88  | n    | output backlog, oldest first                            |
//! | …   | m    | input queue, oldest first                               |
//!
//! FIFOs and rings are stored in logical order, so there are no indices to
//! corrupt. Decoding checks every field and also the model's invariants
//! (a state the model could never reach is rejected, so a restored device
//! behaves like one that got there by itself):
//!
//! - FIFO lengths ≤ 16 in FIFO mode, ≤ 1 in 16450 mode;
//! - loopback ⇒ TX FIFO empty (loopback transmits instantly);
//! - TX FIFO non-empty ⇒ operator attached, backlog full, no THRE pending;
//! - not loopback and input queued ⇒ RX FIFO full (it is fed eagerly).
//!
//! The interrupt edge latch is not stored: after a restore it is set iff
//! the restored line is high, so L0 re-posts an interrupt whose cause is
//! really pending rather than losing it.

use alloc::vec::Vec;

use super::fifo::Fifo;
use super::model::{Uart16550, INPUT_CAPACITY, OUTPUT_CAPACITY};
use super::registers::*;
use crate::error::Error;
use crate::wire::Reader;

/// The state format version this code reads and writes.
pub const UART_STATE_VERSION: u16 = 1;
/// Length of the fixed part (before the rings).
pub const UART_STATE_FIXED_LEN: usize = 88;

const FLAG_THRE_PENDING: u8 = 0x01;
const FLAG_OPERATOR: u8 = 0x02;

/// A decoded, validated UART state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UartState {
    /// IER.
    pub ier: u8,
    /// LCR.
    pub lcr: u8,
    /// MCR.
    pub mcr: u8,
    /// Stored FCR bits.
    pub fcr: u8,
    /// Sticky LSR bits.
    pub lsr_sticky: u8,
    /// MSR deltas.
    pub msr_deltas: u8,
    /// External modem inputs.
    pub modem_inputs: u8,
    /// SCR.
    pub scr: u8,
    /// DLL.
    pub dll: u8,
    /// DLM.
    pub dlm: u8,
    /// Last byte through RBR.
    pub rbr: u8,
    /// THRE interrupt source pending.
    pub thre_pending: bool,
    /// Operator attached.
    pub operator_attached: bool,
    /// RX FIFO contents.
    pub rx: Vec<u8>,
    /// TX FIFO contents.
    pub tx: Vec<u8>,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
    /// Output bytes dropped.
    pub output_dropped: u64,
    /// TX FIFO overflows.
    pub tx_overflow: u64,
    /// Output backlog.
    pub output: Vec<u8>,
    /// Input queue.
    pub input: Vec<u8>,
}

/// A state's FIFOs and rings as the encoder reads them, each oldest first
/// in up to two runs: a device's own rings (a save allocates nothing), or
/// a state's vectors.
pub(super) struct Contents<'a> {
    pub rx: [&'a [u8]; 2],
    pub tx: [&'a [u8]; 2],
    pub output: [&'a [u8]; 2],
    pub input: [&'a [u8]; 2],
}

fn check(ok: bool, field: &'static str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::StateField(field))
    }
}

fn fifo_field<'a>(r: &mut Reader<'a>, len: usize, field: &'static str) -> Result<&'a [u8], Error> {
    let raw = r.take(FIFO_DEPTH)?;
    check(raw[len..].iter().all(|&b| b == 0), field)?;
    Ok(&raw[..len])
}

impl UartState {
    /// Encodes (always decodable: the model only produces valid states).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(UART_STATE_FIXED_LEN + self.output.len() + self.input.len());
        self.encode_into(&mut v);
        v
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let contents = Contents {
            rx: [&self.rx, &[]],
            tx: [&self.tx, &[]],
            output: [&self.output, &[]],
            input: [&self.input, &[]],
        };
        self.encode_with(&contents, out);
    }

    /// Appends the encoding of this state's registers and counters with
    /// `c` as its FIFOs and rings (this state's own are not read): the
    /// fixed part laid out in place, then the rings, a copy per run.
    pub(super) fn encode_with(&self, c: &Contents<'_>, out: &mut Vec<u8>) {
        let len = |runs: &[&[u8]; 2]| runs[0].len() + runs[1].len();
        let mut h = [0u8; UART_STATE_FIXED_LEN];
        h[0..2].copy_from_slice(&UART_STATE_VERSION.to_le_bytes());
        h[2..13].copy_from_slice(&[
            self.ier,
            self.lcr,
            self.mcr,
            self.fcr,
            self.lsr_sticky,
            self.msr_deltas,
            self.modem_inputs,
            self.scr,
            self.dll,
            self.dlm,
            self.rbr,
        ]);
        let mut flags = 0;
        if self.thre_pending {
            flags |= FLAG_THRE_PENDING;
        }
        if self.operator_attached {
            flags |= FLAG_OPERATOR;
        }
        h[13] = flags;
        // FIFO contents come from 16-byte FIFOs; saturate rather than panic.
        h[14] = u8::try_from(len(&c.rx)).unwrap_or(u8::MAX);
        h[15] = u8::try_from(len(&c.tx)).unwrap_or(u8::MAX);
        for (at, fifo) in [(16, &c.rx), (16 + FIFO_DEPTH, &c.tx)] {
            let mut at = at;
            let mut room = FIFO_DEPTH;
            for run in fifo {
                let n = run.len().min(room);
                h[at..at + n].copy_from_slice(&run[..n]);
                at += n;
                room -= n;
            }
        }
        let counters = [
            self.bytes_in,
            self.bytes_out,
            self.output_dropped,
            self.tx_overflow,
        ];
        for (i, count) in counters.iter().enumerate() {
            h[48 + 8 * i..56 + 8 * i].copy_from_slice(&count.to_le_bytes());
        }
        h[80..84].copy_from_slice(
            &u32::try_from(len(&c.output))
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        h[84..88].copy_from_slice(
            &u32::try_from(len(&c.input))
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        out.reserve(h.len() + len(&c.output) + len(&c.input));
        out.extend_from_slice(&h);
        for run in c.output.iter().chain(&c.input) {
            out.extend_from_slice(run);
        }
    }

    /// Decodes and validates every field and invariant.
    pub fn decode(bytes: &[u8]) -> Result<UartState, Error> {
        let (registers, c) = UartState::decode_parts(bytes)?;
        Ok(UartState {
            rx: c.rx[0].to_vec(),
            tx: c.tx[0].to_vec(),
            output: c.output[0].to_vec(),
            input: c.input[0].to_vec(),
            ..registers
        })
    }

    /// Decodes and validates every field and invariant, allocating
    /// nothing: the registers and counters (with empty FIFOs and rings)
    /// and the contents, borrowed from `bytes`.
    pub(super) fn decode_parts(bytes: &[u8]) -> Result<(UartState, Contents<'_>), Error> {
        let mut r = Reader::new(bytes);
        let version = r.u16()?;
        if version != UART_STATE_VERSION {
            return Err(Error::StateVersion { found: version });
        }
        let ier = r.u8()?;
        let lcr = r.u8()?;
        let mcr = r.u8()?;
        let fcr = r.u8()?;
        let lsr_sticky = r.u8()?;
        let msr_deltas = r.u8()?;
        let modem_inputs = r.u8()?;
        let scr = r.u8()?;
        let dll = r.u8()?;
        let dlm = r.u8()?;
        let rbr = r.u8()?;
        let flags = r.u8()?;
        let rx_len = usize::from(r.u8()?);
        let tx_len = usize::from(r.u8()?);

        check(ier & !IER_MASK == 0, "IER reserved bits")?;
        check(mcr & !MCR_MASK == 0, "MCR reserved bits")?;
        check(
            fcr & !FCR_STORED_MASK == 0,
            "FCR reserved or self-clearing bits",
        )?;
        check(
            fcr & FCR_ENABLE != 0 || fcr == 0,
            "FCR bits without FIFO enable",
        )?;
        check(
            lsr_sticky & !(LSR_OE | LSR_BI) == 0,
            "LSR bits other than OE and BI",
        )?;
        check(msr_deltas & !MSR_DELTA_MASK == 0, "MSR delta reserved bits")?;
        check(
            modem_inputs & !MSR_LINES_MASK == 0,
            "modem input reserved bits",
        )?;
        check(
            flags & !(FLAG_THRE_PENDING | FLAG_OPERATOR) == 0,
            "flags reserved bits",
        )?;
        let capacity = if fcr & FCR_ENABLE != 0 { FIFO_DEPTH } else { 1 };
        check(rx_len <= capacity, "RX FIFO length")?;
        check(tx_len <= capacity, "TX FIFO length")?;
        let rx = fifo_field(&mut r, rx_len, "RX FIFO unused bytes")?;
        let tx = fifo_field(&mut r, tx_len, "TX FIFO unused bytes")?;
        let bytes_in = r.u64()?;
        let bytes_out = r.u64()?;
        let output_dropped = r.u64()?;
        let tx_overflow = r.u64()?;
        let output_len = r.u32()? as usize;
        let input_len = r.u32()? as usize;
        check(output_len <= OUTPUT_CAPACITY, "output backlog length")?;
        check(input_len <= INPUT_CAPACITY, "input queue length")?;
        let output = r.take(output_len)?;
        let input = r.take(input_len)?;
        r.finish()?;

        let thre_pending = flags & FLAG_THRE_PENDING != 0;
        let operator_attached = flags & FLAG_OPERATOR != 0;
        let loopback = mcr & MCR_LOOP != 0;
        check(
            !loopback || tx.is_empty(),
            "TX FIFO holds bytes in loopback",
        )?;
        check(
            tx.is_empty() || (operator_attached && output_len == OUTPUT_CAPACITY && !thre_pending),
            "TX FIFO holds bytes without backpressure",
        )?;
        check(
            loopback || input.is_empty() || rx_len == capacity,
            "input queued while RX FIFO has room",
        )?;

        let registers = UartState {
            ier,
            lcr,
            mcr,
            fcr,
            lsr_sticky,
            msr_deltas,
            modem_inputs,
            scr,
            dll,
            dlm,
            rbr,
            thre_pending,
            operator_attached,
            rx: Vec::new(),
            tx: Vec::new(),
            bytes_in,
            bytes_out,
            output_dropped,
            tx_overflow,
            output: Vec::new(),
            input: Vec::new(),
        };
        let contents = Contents {
            rx: [rx, &[]],
            tx: [tx, &[]],
            output: [output, &[]],
            input: [input, &[]],
        };
        Ok((registers, contents))
    }
}

impl Uart16550 {
    /// Every register and counter, with empty FIFOs and rings (their
    /// contents come from [`Uart16550::contents`]).
    fn registers(&self) -> UartState {
        UartState {
            ier: self.ier,
            lcr: self.lcr,
            mcr: self.mcr,
            fcr: self.fcr,
            lsr_sticky: self.lsr_sticky,
            msr_deltas: self.msr_deltas,
            modem_inputs: self.modem_inputs,
            scr: self.scr,
            dll: self.dll,
            dlm: self.dlm,
            rbr: self.rbr,
            thre_pending: self.thre_pending,
            operator_attached: self.operator_attached,
            rx: Vec::new(),
            tx: Vec::new(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            output_dropped: self.output_dropped,
            tx_overflow: self.tx_overflow,
            output: Vec::new(),
            input: Vec::new(),
        }
    }

    /// The FIFOs and rings, in place.
    fn contents(&self) -> Contents<'_> {
        Contents {
            rx: self.rx.as_slices(),
            tx: self.tx.as_slices(),
            output: self.output.as_slices(),
            input: self.input.as_slices(),
        }
    }

    /// A snapshot of every register, FIFO, ring and counter.
    pub fn state(&self) -> UartState {
        UartState {
            rx: self.rx.to_vec(),
            tx: self.tx.to_vec(),
            output: self.output.to_vec(),
            input: self.input.to_vec(),
            ..self.registers()
        }
    }

    /// Appends the encoded state to `out`, reading the rings in place.
    pub fn save_state_into(&self, out: &mut Vec<u8>) {
        self.registers().encode_with(&self.contents(), out);
    }

    /// The encoded state.
    pub fn save_state(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.save_state_into(&mut v);
        v
    }

    /// Decodes, validates and applies a state; on error nothing changes.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let (s, c) = UartState::decode_parts(bytes)?;
        self.apply(&s, &c);
        Ok(())
    }

    /// Takes the registers and counters of `s` and the contents `c`
    /// (decoded: one run each).
    fn apply(&mut self, s: &UartState, c: &Contents<'_>) {
        self.ier = s.ier;
        self.lcr = s.lcr;
        self.mcr = s.mcr;
        self.fcr = s.fcr;
        self.lsr_sticky = s.lsr_sticky;
        self.msr_deltas = s.msr_deltas;
        self.modem_inputs = s.modem_inputs;
        self.scr = s.scr;
        self.dll = s.dll;
        self.dlm = s.dlm;
        self.rbr = s.rbr;
        self.thre_pending = s.thre_pending;
        self.operator_attached = s.operator_attached;
        self.rx = Fifo::from_slice(c.rx[0]);
        self.tx = Fifo::from_slice(c.tx[0]);
        self.bytes_in = s.bytes_in;
        self.bytes_out = s.bytes_out;
        self.output_dropped = s.output_dropped;
        self.tx_overflow = s.tx_overflow;
        // Refilled in place: a restore allocates no rings (it runs in the
        // migration's downtime, and allocations cost most under emulators).
        self.output.refill(c.output[0]);
        self.input.refill(c.input[0]);
        // Re-raise: a pending cause after restore is a fresh edge for L0.
        self.irq_level = false;
        self.edge = false;
        self.update_irq();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy_uart() -> Uart16550 {
        let mut u = Uart16550::new(0x3f8, 4);
        u.write(LCR, 0x83);
        u.write(DLL, 1);
        u.write(DLM, 0);
        u.write(LCR, 0x03);
        u.write(FCR, 0x87);
        u.write(IER, 0x0F);
        u.write(MCR, 0x0B);
        u.write(SCR, 0x5A);
        u.push_input(b"hello, world, this is more than sixteen bytes");
        for b in b"out" {
            u.write(THR, *b);
        }
        u
    }

    #[test]
    fn round_trip_preserves_everything() {
        let u = busy_uart();
        let bytes = u.save_state();
        let mut v = Uart16550::new(0x3f8, 4);
        v.restore_state(&bytes).unwrap();
        assert_eq!(v.state(), u.state());
        assert_eq!(v.save_state(), bytes);
    }

    #[test]
    fn encoding_is_little_endian_at_documented_offsets() {
        let u = busy_uart();
        let b = u.save_state();
        assert_eq!(&b[0..2], &[1, 0]);
        assert_eq!(b[2], 0x0F); // IER
        assert_eq!(b[3], 0x03); // LCR
        assert_eq!(b[5], 0x81); // FCR stored: enable + trigger 8
        assert_eq!(b[9], 0x5A); // SCR
        assert_eq!(b[10], 1); // DLL
        assert_eq!(b[14], 16); // RX FIFO full
        assert_eq!(&b[16..32], b"hello, world, th");
        assert_eq!(&b[56..64], &3u64.to_le_bytes()); // bytes out
        assert_eq!(&b[80..84], &3u32.to_le_bytes()); // backlog length
        assert_eq!(&b[88..91], b"out");
        assert_eq!(b.len(), 88 + 3 + (45 - 16));
    }

    #[test]
    fn restore_sets_the_edge_latch_for_a_pending_cause() {
        let u = busy_uart();
        assert!(u.irq_line());
        let mut v = Uart16550::new(0x3f8, 4);
        v.restore_state(&u.save_state()).unwrap();
        assert!(v.take_irq_edge());
        assert!(!v.take_irq_edge());
    }

    fn rejects(mutate: impl Fn(&mut Vec<u8>), expect: Error) {
        let u = busy_uart();
        let mut b = u.save_state();
        mutate(&mut b);
        let mut v = Uart16550::new(0x3f8, 4);
        v.push_input(b"x");
        let before = v.state();
        assert_eq!(v.restore_state(&b), Err(expect));
        assert_eq!(v.state(), before, "device untouched");
    }

    #[test]
    fn rejects_other_version() {
        rejects(|b| b[0] = 2, Error::StateVersion { found: 2 });
    }

    #[test]
    fn rejects_truncation_anywhere() {
        let full = busy_uart().save_state();
        for cut in 0..full.len() {
            assert_eq!(
                UartState::decode(&full[..cut]),
                Err(Error::StateTruncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn rejects_trailing_bytes() {
        rejects(|b| b.push(0), Error::StateTrailingBytes);
    }

    #[test]
    fn rejects_reserved_register_bits() {
        rejects(|b| b[2] |= 0x10, Error::StateField("IER reserved bits"));
        rejects(|b| b[4] |= 0x20, Error::StateField("MCR reserved bits"));
        rejects(
            |b| b[5] |= 0x02,
            Error::StateField("FCR reserved or self-clearing bits"),
        );
        rejects(
            |b| b[6] = LSR_FE,
            Error::StateField("LSR bits other than OE and BI"),
        );
        rejects(
            |b| b[7] = 0x10,
            Error::StateField("MSR delta reserved bits"),
        );
        rejects(
            |b| b[8] = 0x01,
            Error::StateField("modem input reserved bits"),
        );
        rejects(|b| b[13] = 0x04, Error::StateField("flags reserved bits"));
    }

    #[test]
    fn rejects_fcr_bits_without_enable() {
        rejects(
            |b| b[5] = 0x80,
            Error::StateField("FCR bits without FIFO enable"),
        );
    }

    #[test]
    fn rejects_fifo_lengths_and_garbage_past_them() {
        rejects(|b| b[14] = 17, Error::StateField("RX FIFO length"));
        rejects(|b| b[15] = 17, Error::StateField("TX FIFO length"));
        rejects(|b| b[32] = b'x', Error::StateField("TX FIFO unused bytes"));
        rejects(|b| b[14] = 15, Error::StateField("RX FIFO unused bytes"));
    }

    #[test]
    fn rejects_ring_lengths_over_capacity() {
        rejects(
            |b| b[80..84].copy_from_slice(&4097u32.to_le_bytes()),
            Error::StateField("output backlog length"),
        );
        rejects(
            |b| b[84..88].copy_from_slice(&1025u32.to_le_bytes()),
            Error::StateField("input queue length"),
        );
    }

    #[test]
    fn rejects_unreachable_combinations() {
        // Input queued while the RX FIFO has room.
        rejects(
            |b| {
                b[14] = 15;
                b[16 + 15] = 0;
            },
            Error::StateField("input queued while RX FIFO has room"),
        );
        // TX bytes held although nothing pushes back.
        let mut u = Uart16550::new(0x3f8, 4);
        u.write(FCR, 0x01);
        let mut b = u.save_state();
        b[15] = 1;
        b[32] = b'x';
        assert_eq!(
            UartState::decode(&b),
            Err(Error::StateField(
                "TX FIFO holds bytes without backpressure"
            ))
        );
        // TX bytes held in loopback.
        b[4] = MCR_LOOP;
        assert_eq!(
            UartState::decode(&b),
            Err(Error::StateField("TX FIFO holds bytes in loopback"))
        );
    }
}
