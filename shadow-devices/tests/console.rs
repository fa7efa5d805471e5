//! The console rings: guest → operator backlog and operator → guest input,
//! with backpressure, drop accounting and interrupt delivery as L0 sees them.

use shadow_devices::uart16550::registers::*;
use shadow_devices::{ComPort, Console, ShadowDevice, Uart16550, INPUT_CAPACITY, OUTPUT_CAPACITY};

fn linux_like() -> Uart16550 {
    let mut u = ComPort::Com1.uart();
    u.write(FCR, FCR_ENABLE | FCR_CLEAR_RX | FCR_CLEAR_TX | 0xC0); // trigger 14
    u.write(LCR, 0x03);
    u.write(MCR, MCR_OUT2 | MCR_DTR | MCR_RTS);
    u.write(IER, IER_RDA);
    u
}

/// A guest that polls LSR.THRE before each byte, giving up after `spins`.
fn polite_write(u: &mut Uart16550, byte: u8, spins: usize) -> bool {
    for _ in 0..spins {
        if u.read(LSR) & LSR_THRE != 0 {
            u.write(THR, byte);
            return true;
        }
    }
    false
}

fn drain(u: &mut Uart16550) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = u.pull_output(&mut buf);
        if n == 0 {
            return all;
        }
        all.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn absent_operator_keeps_the_newest_output_and_counts_drops() {
    let mut u = linux_like();
    for i in 0..(OUTPUT_CAPACITY + 10) {
        assert!(
            polite_write(&mut u, i as u8, 1),
            "never blocks without an operator"
        );
    }
    assert_eq!(u.output_dropped(), 10);
    let out = drain(&mut u);
    assert_eq!(out.len(), OUTPUT_CAPACITY);
    assert_eq!(out[0], 10u8, "oldest bytes went first");
    assert_eq!(*out.last().unwrap(), (OUTPUT_CAPACITY + 9) as u8);
}

#[test]
fn nothing_is_dropped_while_the_backlog_has_room() {
    let mut u = linux_like();
    for i in 0..OUTPUT_CAPACITY {
        u.write(THR, i as u8);
    }
    assert_eq!(u.output_dropped(), 0);
    assert_eq!(u.output_pending(), OUTPUT_CAPACITY);
}

#[test]
fn attached_operator_pushes_back_and_a_polite_guest_loses_nothing() {
    let mut u = linux_like();
    u.set_operator_attached(true);
    let text: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut received = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if polite_write(&mut u, text[i], 4) {
            i += 1;
        } else {
            // THRE stayed clear: the operator is slow. Let it read a bit.
            assert_eq!(u.read(LSR) & (LSR_THRE | LSR_TEMT), 0);
            let mut buf = [0u8; 100];
            let n = u.pull_output(&mut buf);
            received.extend_from_slice(&buf[..n]);
        }
    }
    received.extend(drain(&mut u));
    assert_eq!(received, text);
    assert_eq!(u.output_dropped(), 0);
    assert_eq!(u.tx_overflow(), 0);
}

#[test]
fn a_guest_ignoring_lsr_overflows_the_tx_fifo_and_it_is_counted() {
    let mut u = linux_like();
    u.set_operator_attached(true);
    for _ in 0..(OUTPUT_CAPACITY + 16 + 5) {
        u.write(THR, b'x');
    }
    assert_eq!(u.tx_overflow(), 5);
    assert_eq!(u.output_dropped(), 0);
    assert_eq!(drain(&mut u).len(), OUTPUT_CAPACITY + 16);
}

#[test]
fn detaching_the_operator_releases_held_output() {
    let mut u = linux_like();
    u.set_operator_attached(true);
    for _ in 0..(OUTPUT_CAPACITY + 3) {
        u.write(THR, b'y');
    }
    assert_eq!(u.read(LSR) & LSR_THRE, 0);
    u.set_operator_attached(false);
    assert_eq!(u.read(LSR) & LSR_THRE, LSR_THRE);
    assert_eq!(u.output_dropped(), 3);
}

#[test]
fn pulling_output_wakes_a_guest_waiting_for_thre() {
    let mut u = linux_like();
    u.set_operator_attached(true);
    for _ in 0..OUTPUT_CAPACITY {
        u.write(THR, b'z');
    }
    u.write(IER, IER_RDA | IER_THRE);
    u.read(IIR);
    u.write(THR, b'!'); // held
    u.take_irq_edge();
    assert!(!u.irq_line());
    let mut buf = [0u8; 64];
    u.pull_output(&mut buf);
    assert!(u.irq_line());
    assert!(u.take_irq_edge(), "L0 posts the THRE interrupt");
}

#[test]
fn input_queue_is_bounded_and_reports_what_it_took() {
    let mut u = linux_like();
    let typed = vec![b'k'; INPUT_CAPACITY + 100];
    // 16 go straight into the RX FIFO, the queue holds the rest.
    assert_eq!(u.push_input(&typed), INPUT_CAPACITY + 16);
    assert_eq!(u.input_space(), 0);
    assert_eq!(u.push_input(b"more"), 0);
}

#[test]
fn input_feeds_the_rx_fifo_as_the_guest_drains_it() {
    let mut u = linux_like();
    let typed: Vec<u8> = (0..600u32).map(|i| (i % 97) as u8 + 32).collect();
    assert_eq!(u.push_input(&typed), typed.len());
    let mut got = Vec::new();
    while u.read(LSR) & LSR_DR != 0 {
        got.push(u.read(RBR));
    }
    assert_eq!(got, typed);
    assert_eq!(u.read(LSR) & LSR_OE, 0, "never an overrun from the queue");
}

#[test]
fn linux_like_driver_gets_each_keystroke_promptly() {
    // A handler that runs on each posted edge: read IIR, drain RX while DR.
    let mut u = linux_like();
    let mut got = Vec::new();
    for &key in b"root\n" {
        u.push_input(&[key]);
        assert!(
            u.take_irq_edge(),
            "one keystroke, one edge, trigger 14 notwithstanding"
        );
        let iir = u.read(IIR);
        assert_eq!(iir & IIR_NO_INT, 0);
        while u.read(LSR) & LSR_DR != 0 {
            got.push(u.read(RBR));
        }
        assert_eq!(
            u.read(IIR) & IIR_NO_INT,
            IIR_NO_INT,
            "handler leaves no cause behind"
        );
        assert!(!u.irq_line());
    }
    assert_eq!(got, b"root\n");
}

#[test]
fn a_pasted_burst_arrives_through_trigger_and_timeout_interrupts() {
    let mut u = linux_like();
    let paste: Vec<u8> = (0..100u8).collect();
    u.push_input(&paste);
    let mut got = Vec::new();
    let mut edges = 0;
    while u.take_irq_edge() || u.irq_line() {
        edges += 1;
        loop {
            let iir = u.read(IIR);
            if iir & IIR_NO_INT != 0 {
                break;
            }
            // An 8250 driver reads up to 256 characters per pass; model a
            // short pass of 16 to cross FIFO refills.
            for _ in 0..16 {
                if u.read(LSR) & LSR_DR == 0 {
                    break;
                }
                got.push(u.read(RBR));
            }
        }
        assert!(edges < 1000);
    }
    assert_eq!(got, paste);
}

#[test]
fn traffic_counts_bytes_in_and_out_but_not_loopback() {
    let mut u = linux_like();
    u.push_input(b"abc");
    for _ in 0..3 {
        u.read(RBR);
    }
    u.write(THR, b'1');
    u.write(THR, b'2');
    u.write(MCR, MCR_LOOP);
    u.write(THR, b'3');
    let t = u.traffic();
    assert_eq!((t.bytes_in, t.bytes_out), (3, 2));
}

#[test]
fn console_is_reachable_through_the_device_trait() {
    let mut dev: Box<dyn ShadowDevice> = Box::new(linux_like());
    dev.io_write(0x3f8, b'h');
    let console: &mut dyn Console = dev.console().expect("a UART has a console");
    let mut buf = [0u8; 4];
    assert_eq!(console.pull_output(&mut buf), 1);
    assert_eq!(buf[0], b'h');
    console.set_operator_attached(true);
    assert!(dev.console_ref().unwrap().operator_attached());
}
