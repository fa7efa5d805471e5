//! The TSC's frequency, measured against the PIT before L1 starts.
//!
//! L0 runs with interrupts off, so it counts TSC ticks while PIT channel 2
//! (the speaker channel, which nothing else uses at this point) counts down
//! a known interval in mode 0 and raises its OUT pin, read through port
//! 0x61 bit 5 — the method of Linux's `pit_calibrate_tsc`. L1 is then told
//! this frequency through CPUID 0x15/0x16 (see `vcpu::cpuid`), so its clock
//! runs true even where the CPU's CPUID does not (Bochs claims 3.5 GHz and
//! ticks the TSC at its instruction rate, 100 MHz).

use super::cpu::{inb, outb, rdtsc};

/// The PIT's input clock (Hz).
pub const PIT_HZ: u64 = 1_193_182;
/// One round: 20 ms of PIT ticks (fits the 16-bit counter).
const ROUND_TICKS: u16 = 23_864;
const ROUNDS: usize = 3;
/// A round that takes longer than this many TSC ticks means there is no
/// working PIT (no gate on port 0x61, or none at all): give up.
const GIVE_UP_TICKS: u64 = 1 << 36;

const PORT_CH2: u16 = 0x42;
const PORT_MODE: u16 = 0x43;
const PORT_B: u16 = 0x61;
const GATE2: u8 = 1 << 0;
const SPEAKER: u8 = 1 << 1;
const OUT2: u8 = 1 << 5;
/// Channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count), binary.
const MODE_CH2_ONESHOT: u8 = 0b1011_0000;

/// TSC frequency from a TSC delta over `pit_ticks` PIT ticks.
pub fn hz_from(tsc_delta: u64, pit_ticks: u64) -> u64 {
    if pit_ticks == 0 {
        return 0;
    }
    (tsc_delta as u128 * PIT_HZ as u128 / pit_ticks as u128) as u64
}

/// One PIT round; None if OUT2 never rises.
fn round() -> Option<u64> {
    // SAFETY: PIT channel 2 and port 0x61 belong to L0 until L1 starts;
    // the speaker stays off (bit 1 clear), only the gate is raised.
    unsafe {
        let b = inb(PORT_B);
        outb(PORT_B, (b & !SPEAKER) | GATE2);
        outb(PORT_MODE, MODE_CH2_ONESHOT);
        outb(PORT_CH2, ROUND_TICKS as u8);
        outb(PORT_CH2, (ROUND_TICKS >> 8) as u8);
        let t0 = rdtsc();
        loop {
            let now = rdtsc();
            if inb(PORT_B) & OUT2 != 0 {
                outb(PORT_B, b);
                return Some(now - t0);
            }
            if now - t0 > GIVE_UP_TICKS {
                outb(PORT_B, b);
                return None;
            }
        }
    }
}

/// The TSC frequency in Hz, or None if the PIT does not answer. The
/// shortest of a few rounds: anything that steals time (SMIs, a hypervisor
/// below) only lengthens a round.
pub fn calibrate() -> Option<u64> {
    let mut best = u64::MAX;
    for _ in 0..ROUNDS {
        best = best.min(round()?);
    }
    Some(hz_from(best, ROUND_TICKS as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequency_from_a_round() {
        // Bochs: 100 M instructions a second, 20 ms.
        assert_eq!(hz_from(2_000_000, 23_864) / 1000, 99_998);
        assert_eq!(hz_from(3_000_000_000, PIT_HZ), 3_000_000_000);
        assert_eq!(hz_from(5, 0), 0);
    }
}
