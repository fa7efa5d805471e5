//! Register-level conformance of the 16550A model, written from the
//! PC16550D datasheet (National Semiconductor, June 1995). One test per
//! behaviour; each drives the model only through its public register and
//! operator-side interface, as a guest driver and L0 would.

use shadow_devices::uart16550::registers::*;
use shadow_devices::{ComPort, Uart16550};

fn uart() -> Uart16550 {
    ComPort::Com1.uart()
}

/// FIFO mode with the given FCR trigger bits, all interrupts enabled, OUT2 on.
fn fifo_uart(trigger_bits: u8) -> Uart16550 {
    let mut u = uart();
    u.write(FCR, FCR_ENABLE | FCR_CLEAR_RX | FCR_CLEAR_TX | trigger_bits);
    u.write(LCR, 0x03);
    u.write(MCR, MCR_OUT2 | MCR_DTR | MCR_RTS);
    u
}

fn output(u: &mut Uart16550) -> Vec<u8> {
    let mut buf = vec![0u8; 8192];
    let n = u.pull_output(&mut buf);
    buf.truncate(n);
    buf
}

// ---------------------------------------------------------------- reset

#[test]
fn reset_values_match_the_datasheet() {
    let mut u = uart();
    assert_eq!(u.read(IER), 0x00);
    assert_eq!(u.read(IIR), IIR_NO_INT);
    assert_eq!(u.read(LCR), 0x00);
    assert_eq!(u.read(MCR), 0x00);
    assert_eq!(u.read(LSR), LSR_THRE | LSR_TEMT);
    // MSR3..0 reset to 0; MSR7..4 follow the inputs (a connected line).
    assert_eq!(u.read(MSR), MSR_CTS | MSR_DSR | MSR_DCD);
    assert!(!u.irq_line());
}

#[test]
fn master_reset_clears_control_registers_but_not_scr_or_divisor() {
    let mut u = fifo_uart(0xC0);
    u.write(IER, 0x0F);
    u.write(SCR, 0x77);
    u.write(LCR, LCR_DLAB);
    u.write(DLL, 0x01);
    u.write(LCR, 0x1B);
    u.reset();
    assert_eq!(u.read(IER), 0);
    assert_eq!(u.read(IIR), IIR_NO_INT, "FIFOs disabled, no interrupt");
    assert_eq!(u.read(LCR), 0);
    assert_eq!(u.read(MCR), 0);
    assert_eq!(u.read(SCR), 0x77);
    u.write(LCR, LCR_DLAB);
    assert_eq!(u.read(DLL), 0x01);
}

// ---------------------------------------------------------------- simple registers

#[test]
fn scratch_register_holds_every_value() {
    let mut u = uart();
    for v in 0..=255u8 {
        u.write(SCR, v);
        assert_eq!(u.read(SCR), v);
    }
}

#[test]
fn lcr_keeps_every_bit() {
    let mut u = uart();
    for v in [0x00, 0x03, 0x1B, 0x7F, 0xFF] {
        u.write(LCR, v);
        assert_eq!(u.read(LCR), v);
    }
}

#[test]
fn ier_bits_7_to_4_read_zero() {
    let mut u = uart();
    u.write(IER, 0xFF);
    assert_eq!(u.read(IER), 0x0F);
}

#[test]
fn mcr_bits_7_to_5_read_zero() {
    let mut u = uart();
    u.write(MCR, 0xEF);
    assert_eq!(u.read(MCR), 0x0F);
}

#[test]
fn dlab_selects_the_divisor_latches_at_offsets_0_and_1() {
    let mut u = uart();
    u.write(IER, 0x05);
    u.write(LCR, LCR_DLAB | 0x03);
    assert_eq!(u.read(DLL), 12, "reset divisor: 9600 baud");
    assert_eq!(u.read(DLM), 0);
    u.write(DLL, 0x01);
    u.write(DLM, 0x02);
    assert_eq!(u.read(DLL), 0x01);
    assert_eq!(u.read(DLM), 0x02);
    assert!(output(&mut u).is_empty(), "a DLL write is not a THR write");
    u.write(LCR, 0x03);
    assert_eq!(u.read(IER), 0x05, "IER untouched by DLM writes");
    u.write(LCR, LCR_DLAB);
    assert_eq!((u.read(DLL), u.read(DLM)), (0x01, 0x02));
}

#[test]
fn lsr_and_msr_writes_are_ignored() {
    let mut u = uart();
    u.write(LSR, 0xFF);
    u.write(MSR, 0xFF);
    assert_eq!(u.read(LSR), LSR_THRE | LSR_TEMT);
    assert_eq!(u.read(MSR), MSR_CTS | MSR_DSR | MSR_DCD);
}

#[test]
fn offsets_past_seven_read_ff_and_ignore_writes() {
    let mut u = uart();
    let before = u.save_state();
    u.write(8, 0x12);
    u.write(255, 0x34);
    assert_eq!(u.read(8), 0xFF);
    assert_eq!(u.read(200), 0xFF);
    assert_eq!(u.save_state(), before);
}

// ---------------------------------------------------------------- data paths

#[test]
fn thr_bytes_reach_the_operator_in_order() {
    let mut u = fifo_uart(0);
    for &b in b"hello" {
        u.write(THR, b);
    }
    assert_eq!(output(&mut u), b"hello");
    assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
}

#[test]
fn rbr_returns_operator_input_in_order_and_dr_follows() {
    let mut u = fifo_uart(0);
    assert_eq!(u.push_input(b"abc"), 3);
    let mut got = Vec::new();
    while u.read(LSR) & LSR_DR != 0 {
        got.push(u.read(RBR));
    }
    assert_eq!(got, b"abc");
    assert_eq!(u.read(LSR) & LSR_DR, 0);
}

#[test]
fn empty_rbr_reads_the_last_byte_received() {
    let mut u = uart();
    u.push_input(b"Z");
    assert_eq!(u.read(RBR), b'Z');
    assert_eq!(u.read(RBR), b'Z', "no invented byte, no fresh data");
    assert_eq!(u.read(LSR) & LSR_DR, 0);
}

#[test]
fn word_length_is_kept_but_the_virtual_line_carries_whole_bytes() {
    let mut u = uart();
    u.write(LCR, 0x00); // 5 data bits: kept, not applied (see the model docs)
    assert_eq!(u.read(LCR), 0x00);
    u.push_input(&[0xFF]);
    assert_eq!(u.read(RBR), 0xFF);
    u.write(THR, 0xE9);
    assert_eq!(output(&mut u), [0xE9]);
}

#[test]
fn in_16450_mode_the_receiver_holds_one_byte_and_refills_from_input() {
    let mut u = uart(); // FIFOs off after reset
    u.push_input(b"xyz");
    assert_eq!(u.read(IIR), IIR_NO_INT, "no IIR FIFO bits in 16450 mode");
    assert_eq!(u.read(RBR), b'x');
    assert_eq!(u.read(RBR), b'y');
    assert_eq!(u.read(RBR), b'z');
    assert_eq!(
        u.read(LSR) & (LSR_DR | LSR_OE),
        0,
        "fed as drained: no overrun"
    );
}

#[test]
fn fifo_enable_shows_in_iir_bits_7_and_6() {
    let mut u = uart();
    u.write(FCR, FCR_ENABLE);
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
    u.write(FCR, 0);
    assert_eq!(u.read(IIR), IIR_NO_INT);
}

#[test]
fn loopback_rx_fifo_holds_sixteen_bytes_then_overruns() {
    let mut u = fifo_uart(0xC0);
    u.write(MCR, MCR_LOOP);
    for b in 0..17u8 {
        u.write(THR, b);
    }
    let lsr = u.read(LSR);
    assert_eq!(lsr & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
    assert_eq!(u.read(LSR) & LSR_OE, 0, "reading LSR clears OE");
    let got: Vec<u8> = (0..16).map(|_| u.read(RBR)).collect();
    assert_eq!(got, (0..16).collect::<Vec<u8>>(), "the 17th byte is lost");
    assert_eq!(u.read(LSR) & LSR_DR, 0);
}

#[test]
fn overrun_in_16450_mode_overwrites_rbr() {
    let mut u = uart();
    u.write(MCR, MCR_LOOP);
    u.write(THR, b'1');
    u.write(THR, b'2');
    assert_ne!(u.read(LSR) & LSR_OE, 0);
    assert_eq!(u.read(RBR), b'2');
    assert_eq!(u.read(LSR) & LSR_DR, 0);
}

#[test]
fn fcr_rx_reset_clears_the_rx_fifo() {
    let mut u = fifo_uart(0);
    u.write(MCR, MCR_LOOP);
    u.write(THR, 1);
    u.write(THR, 2);
    u.write(FCR, FCR_ENABLE | FCR_CLEAR_RX);
    assert_eq!(u.read(LSR) & LSR_DR, 0);
}

#[test]
fn fcr_tx_reset_discards_held_bytes_and_sets_thre() {
    let mut u = fifo_uart(0);
    u.set_operator_attached(true);
    for _ in 0..4096 {
        u.write(THR, b'.');
    }
    u.write(THR, b'!'); // held in the TX FIFO: the backlog is full
    assert_eq!(u.read(LSR) & LSR_THRE, 0);
    u.write(FCR, FCR_ENABLE | FCR_CLEAR_TX);
    assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
    assert_eq!(
        output(&mut u),
        vec![b'.'; 4096],
        "the discarded byte never arrives"
    );
    assert!(output(&mut u).is_empty());
}

#[test]
fn changing_fifo_enable_clears_both_fifos() {
    let mut u = fifo_uart(0);
    u.write(MCR, MCR_LOOP);
    u.write(THR, 9);
    assert_ne!(u.read(LSR) & LSR_DR, 0);
    u.write(FCR, 0);
    assert_eq!(u.read(LSR) & LSR_DR, 0);
}

#[test]
fn fcr_bits_are_not_programmed_without_fcr0() {
    let mut u = uart();
    u.write(FCR, FCR_ENABLE | 0xC0); // trigger 14
    u.write(FCR, 0x40); // FCR0 = 0: FIFOs off, trigger bits ignored
    assert_eq!(u.read(IIR) & IIR_FIFO_ENABLED, 0);
    u.write(FCR, FCR_ENABLE); // trigger bits 00 → 1 byte
    u.write(IER, IER_RDA);
    u.push_input(b"a");
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_RDA);
}

#[test]
fn rx_trigger_levels_are_1_4_8_14() {
    for (bits, level) in [(0x00u8, 1usize), (0x40, 4), (0x80, 8), (0xC0, 14)] {
        let mut u = fifo_uart(bits);
        u.write(IER, IER_RDA);
        if level > 1 {
            u.push_input(&vec![b'x'; level - 1]);
            assert_eq!(
                u.read(IIR),
                IIR_FIFO_ENABLED | IIR_TIMEOUT,
                "level {level}: below trigger"
            );
        }
        u.push_input(b"y");
        assert_eq!(
            u.read(IIR),
            IIR_FIFO_ENABLED | IIR_RDA,
            "level {level}: at trigger"
        );
    }
}

#[test]
fn received_data_interrupt_drops_below_the_trigger_level() {
    let mut u = fifo_uart(0x40); // 4
    u.write(IER, IER_RDA);
    u.push_input(b"abcd");
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_RDA);
    u.read(RBR);
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_TIMEOUT);
}

#[test]
fn character_timeout_is_immediate_and_clears_when_the_fifo_empties() {
    let mut u = fifo_uart(0xC0); // 14
    u.write(IER, IER_RDA);
    u.push_input(b"ls\n");
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_TIMEOUT);
    assert!(u.irq_line());
    for _ in 0..3 {
        u.read(RBR);
    }
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
    assert!(!u.irq_line());
}

#[test]
fn no_character_timeout_in_16450_mode() {
    let mut u = uart();
    u.write(IER, IER_RDA);
    u.push_input(b"a");
    assert_eq!(u.read(IIR), IIR_RDA, "16450: data available, never timeout");
}

// ---------------------------------------------------------------- interrupts

#[test]
fn interrupt_priority_is_line_status_then_data_then_thre_then_modem() {
    let mut u = fifo_uart(0);
    u.write(MCR, MCR_LOOP);
    u.write(IER, IER_RDA | IER_THRE | IER_RLS | IER_MS);
    for b in 0..17u8 {
        u.write(THR, b); // overrun (RLS) + data (RDA); TX drained (THRE)
    }
    u.write(MCR, MCR_LOOP | MCR_RTS); // CTS changes: modem status
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_RLS);
    u.read(LSR);
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_RDA);
    for _ in 0..16 {
        u.read(RBR);
    }
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_THRE);
    assert_eq!(
        u.read(IIR),
        IIR_FIFO_ENABLED | IIR_MS,
        "reading IIR cleared THRE"
    );
    u.read(MSR);
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
}

#[test]
fn reading_iir_clears_thre_only_when_iir_reports_it() {
    let mut u = fifo_uart(0);
    u.write(IER, IER_RDA | IER_THRE);
    u.push_input(b"a");
    assert_eq!(
        u.read(IIR),
        IIR_FIFO_ENABLED | IIR_RDA,
        "data outranks THRE"
    );
    u.read(RBR);
    assert_eq!(
        u.read(IIR),
        IIR_FIFO_ENABLED | IIR_THRE,
        "THRE survived the first IIR read"
    );
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
}

#[test]
fn enabling_etbei_with_an_empty_thr_raises_thre() {
    let mut u = fifo_uart(0);
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
    u.write(IER, IER_THRE);
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_THRE);
    u.write(IER, IER_THRE); // no 0→1 change: nothing new
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
}

#[test]
fn linux_uart_bug_thre_probe_sees_a_working_uart() {
    // serial8250_do_startup: IER=THRI, read IIR, IER=0, IER=THRI, read IIR.
    let mut u = fifo_uart(0);
    u.write(IER, IER_THRE);
    let iir1 = u.read(IIR);
    u.write(IER, 0);
    u.write(IER, IER_THRE);
    let iir = u.read(IIR);
    u.write(IER, 0);
    assert_eq!(iir1 & IIR_NO_INT, 0);
    assert_eq!(iir & IIR_NO_INT, 0, "THRE re-raised: no UART_BUG_THRE");
}

#[test]
fn thr_write_clears_the_thre_interrupt_until_the_byte_is_accepted() {
    let mut u = fifo_uart(0);
    u.set_operator_attached(true);
    for _ in 0..4096 {
        u.write(THR, b'.');
    }
    u.write(IER, IER_THRE);
    u.read(IIR); // consume the THRE raised by enabling ETBEI
    u.write(THR, b'x'); // held: backlog full
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
    let mut one = [0u8; 1];
    u.pull_output(&mut one);
    assert_eq!(
        u.read(IIR),
        IIR_FIFO_ENABLED | IIR_THRE,
        "byte accepted: THR empty again"
    );
}

#[test]
fn line_status_interrupt_needs_elsi_and_clears_on_lsr_read() {
    let mut u = fifo_uart(0xC0);
    u.write(MCR, MCR_LOOP);
    for b in 0..17u8 {
        u.write(THR, b);
    }
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_NO_INT, "ELSI off");
    u.write(IER, IER_RLS);
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_RLS);
    u.read(LSR);
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
}

#[test]
fn modem_status_interrupt_needs_edssi_and_clears_on_msr_read() {
    let mut u = fifo_uart(0);
    u.set_modem_inputs(MSR_DSR | MSR_DCD); // CTS dropped
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_NO_INT, "EDSSI off");
    u.write(IER, IER_MS);
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_MS);
    assert_eq!(u.read(MSR), MSR_DSR | MSR_DCD | MSR_DCTS);
    assert_eq!(u.read(IIR), IIR_FIFO_ENABLED | IIR_NO_INT);
}

#[test]
fn msr_delta_bits_latch_changes_and_teri_only_the_trailing_edge_of_ri() {
    let mut u = uart();
    u.set_modem_inputs(MSR_CTS | MSR_DSR | MSR_DCD | MSR_RI); // RI rises
    assert_eq!(u.read(MSR) & MSR_DELTA_MASK, 0, "RI rising is not TERI");
    u.set_modem_inputs(0); // everything drops
    assert_eq!(u.read(MSR), MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD);
    assert_eq!(u.read(MSR), 0, "deltas cleared by the read");
}

#[test]
fn irq_line_requires_out2() {
    let mut u = uart();
    u.write(IER, IER_THRE);
    assert_eq!(u.read(IIR) & IIR_NO_INT, 0, "cause pending");
    u.write(IER, 0);
    u.write(IER, IER_THRE);
    assert!(!u.irq_line(), "OUT2 clear: line gated");
    u.write(MCR, MCR_OUT2);
    assert!(u.irq_line());
}

#[test]
fn irq_line_is_gated_in_loopback() {
    let mut u = fifo_uart(0);
    u.write(IER, IER_THRE);
    assert!(u.irq_line());
    u.write(MCR, MCR_OUT2 | MCR_LOOP);
    assert!(!u.irq_line(), "loopback forces the OUT pins inactive");
    assert_eq!(
        u.read(IIR),
        IIR_FIFO_ENABLED | IIR_THRE,
        "INTR itself still works"
    );
}

#[test]
fn rising_edge_is_reported_once() {
    let mut u = fifo_uart(0);
    assert!(!u.take_irq_edge());
    u.write(IER, IER_RDA);
    u.push_input(b"a");
    assert!(u.irq_line());
    assert!(u.take_irq_edge());
    assert!(!u.take_irq_edge(), "one edge, one report");
    u.push_input(b"b"); // line stays high: no new edge
    assert!(!u.take_irq_edge());
    u.read(RBR);
    u.read(RBR);
    assert!(!u.irq_line());
    u.push_input(b"c");
    assert!(u.take_irq_edge(), "low then high again: a new edge");
}

#[test]
fn no_edge_without_a_cause() {
    let mut u = fifo_uart(0);
    u.write(IER, 0x0F);
    u.take_irq_edge();
    u.read(IIR); // clears the THRE raised by enabling ETBEI
    assert!(!u.irq_line());
    for off in 0..8u8 {
        if off != THR && off != FCR && off != MCR && off != IER {
            u.read(off);
        }
    }
    u.write(SCR, 1);
    u.write(LCR, 0x03);
    assert!(!u.take_irq_edge());
}

#[test]
fn thr_write_with_room_is_not_a_spurious_edge() {
    let mut u = fifo_uart(0);
    u.write(IER, IER_THRE);
    assert!(u.take_irq_edge());
    u.write(THR, b'a'); // THRE cleared and re-raised within the access
    assert!(u.irq_line());
    assert!(!u.take_irq_edge());
}

// ---------------------------------------------------------------- loopback

#[test]
fn loopback_maps_mcr_outputs_onto_msr_inputs() {
    let mut u = uart();
    // Linux autoconfig's loopback test: MCR = LOOP|OUT2|RTS → MSR = DCD|CTS.
    u.write(MCR, MCR_LOOP | 0x0A);
    assert_eq!(u.read(MSR) & MSR_LINES_MASK, 0x90);
    u.write(MCR, MCR_LOOP | MCR_DTR | MCR_RTS | MCR_OUT1 | MCR_OUT2);
    assert_eq!(u.read(MSR) & MSR_LINES_MASK, 0xF0);
    u.write(MCR, MCR_LOOP);
    assert_eq!(u.read(MSR), MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD);
}

#[test]
fn loopback_routes_tx_to_rx_and_not_to_the_operator() {
    let mut u = fifo_uart(0);
    u.write(MCR, MCR_LOOP);
    u.write(THR, b'Q');
    assert_eq!(u.read(RBR), b'Q');
    assert!(output(&mut u).is_empty());
    assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
}

#[test]
fn loopback_disconnects_the_receiver_from_operator_input() {
    let mut u = fifo_uart(0);
    u.write(MCR, MCR_LOOP);
    u.push_input(b"typed");
    assert_eq!(u.read(LSR) & LSR_DR, 0);
    u.write(MCR, 0);
    assert_eq!(
        u.read(RBR),
        b't',
        "input waits on the wire until loopback ends"
    );
}

// ---------------------------------------------------------------- a Linux-like probe

#[test]
fn linux_autoconfig_identifies_a_16550a() {
    let mut u = uart();
    // Scratch test.
    u.write(SCR, 0xA5);
    assert_eq!(u.read(SCR), 0xA5);
    // IER test: write 0, read 0; write 0x0F, read 0x0F.
    u.write(IER, 0);
    assert_eq!(u.read(IER) & 0x0F, 0);
    u.write(IER, 0x0F);
    assert_eq!(u.read(IER) & 0x0F, 0x0F);
    u.write(IER, 0);
    // FIFO probe: FCR = ENABLE → IIR bits 7..6 = 11 means 16550A.
    u.write(FCR, FCR_ENABLE);
    assert_eq!(u.read(IIR) >> 6, 3);
    // 16750 probe: LCR=0xBF with FCR bit 5 must not make a 64-byte FIFO.
    u.write(LCR, 0x80);
    u.write(FCR, FCR_ENABLE | 0x20);
    assert_eq!(u.read(IIR) & 0x20, 0);
}

// ---------------------------------------------------------------- break

/// What Linux's 8250 driver does on an interrupt (8250_port.c,
/// serial8250_handle_irq → serial8250_rx_chars → serial8250_read_char):
/// read LSR; while it shows DR or BI, read RBR when DR is set (else take
/// a NUL) and pair the character with its LSR; read LSR again.
fn linux_rx_chars(u: &mut Uart16550) -> Vec<(u8, bool)> {
    let mut got = Vec::new();
    let mut lsr = u.read(LSR);
    while lsr & (LSR_DR | LSR_BI) != 0 {
        let ch = if lsr & LSR_DR != 0 { u.read(RBR) } else { 0 };
        got.push((ch, lsr & LSR_BI != 0));
        lsr = u.read(LSR);
    }
    got
}

#[test]
fn a_break_is_a_nul_in_rbr_with_bi_and_a_line_status_interrupt() {
    let mut u = fifo_uart(0x80);
    u.write(IER, IER_RDA | IER_RLS);
    assert!(u.send_break());
    assert!(u.irq_line());
    assert_eq!(u.read(IIR) & 0x0f, IIR_RLS, "line status outranks data");
    assert_eq!(
        u.read(LSR),
        LSR_DR | LSR_BI | LSR_FIFO_ERR | LSR_THRE | LSR_TEMT
    );
    assert_eq!(u.read(RBR), 0, "the break character is a NUL");
    assert_eq!(u.read(LSR), LSR_THRE | LSR_TEMT, "read once, then gone");
    assert!(!u.irq_line());
}

#[test]
fn in_16450_mode_a_break_sets_bi_but_not_the_fifo_error_bit() {
    let mut u = uart();
    u.write(MCR, MCR_OUT2);
    u.write(IER, IER_RLS);
    assert!(u.send_break());
    assert_eq!(u.read(IIR) & 0x0f, IIR_RLS);
    assert_eq!(u.read(LSR), LSR_DR | LSR_BI | LSR_THRE | LSR_TEMT);
}

#[test]
fn linux_sees_the_break_and_then_the_sysrq_key_as_a_plain_character() {
    let mut u = fifo_uart(0x80);
    u.write(IER, IER_RDA | IER_RLS);
    assert!(u.send_break());
    assert!(u.take_irq_edge());
    assert_eq!(linux_rx_chars(&mut u), [(0, true)]);
    assert_eq!(u.read(IIR) & 0x0f, IIR_NO_INT);
    assert_eq!(u.push_input(b"h"), 1);
    assert!(u.take_irq_edge(), "the key raises its own interrupt");
    assert_eq!(linux_rx_chars(&mut u), [(b'h', false)]);
}

#[test]
fn a_break_waits_until_input_typed_before_it_is_read() {
    let mut u = fifo_uart(0x80);
    u.write(IER, IER_RDA | IER_RLS);
    u.push_input(b"ab");
    assert!(!u.send_break(), "it would be pinned to 'a'");
    assert_eq!(linux_rx_chars(&mut u), [(b'a', false), (b'b', false)]);
    assert!(u.send_break());
    assert_eq!(linux_rx_chars(&mut u), [(0, true)]);
}

#[test]
fn a_receiver_in_loopback_does_not_hear_a_break() {
    let mut u = fifo_uart(0x80);
    u.write(MCR, MCR_LOOP);
    assert!(!u.send_break());
    assert_eq!(u.read(LSR) & (LSR_BI | LSR_DR), 0);
}
