//! Posted interrupts and IPI virtualization for L2, done by L0 in software.
//!
//! L1 (KVM with APICv) gets "process posted interrupts" and IPI
//! virtualization although the CPU below may have neither (Bochs has
//! virtual-interrupt delivery only): VMCS02 runs L2 with the CPU's virtual-
//! interrupt delivery, and L0 does what the CPU would do with the posted-
//! interrupt descriptor (SDM Vol. 3C 30.6) and the PID-pointer table
//! (30.1.6 "IPI virtualization"). This is also how a shadow UART's
//! interrupt reaches an L2 that KVM runs: L0 posts its vector like a VT-d
//! device would (docs/shadow-devices.md).
//!
//! The descriptor (64 bytes, 64-byte aligned): PIR, one bit per vector, in
//! bytes 0..32; ON (bit 256) and SN (bit 257); NV in byte 34; NDST in bytes
//! 36..40. L1 on other CPUs changes a descriptor with locked instructions
//! while L0 posts into it (KVM's `pi_test_and_set_on`, its PIR `xchg`), so
//! every change L0 makes to a descriptor or to VIRR is an atomic update of
//! an aligned 64-bit word, as the CPU's and a VT-d unit's are.

use crate::guest_mem::{GuestMemory, MemError};

const CONTROL: u64 = 32;
const ON: u64 = 1 << 0;
const SN: u64 = 1 << 1;
const NV: u64 = 34;
const NDST: u64 = 36;
/// VIRR in the virtual-APIC page: eight 32-bit words, 16 bytes apart.
const VIRR: u64 = 0x200;
/// ICR in the virtual-APIC page (low and high words).
pub const ICR_LO: u64 = 0x300;
pub const ICR_HI: u64 = 0x310;

/// What posting a vector asks of the poster next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Posted {
    /// Recorded; a notification is already outstanding or suppressed.
    Queued,
    /// ON went from 0 to 1: send vector `nv` to APIC `ndst`.
    Notify { nv: u8, ndst: u32 },
}

/// Posts `vector` in the descriptor at `desc` (VT-d posting semantics):
/// PIR bit set; unless a notification is outstanding (ON) or suppressed
/// (SN), ON is set and the caller must notify.
pub fn post(mem: &mut impl GuestMemory, desc: u64, vector: u8) -> Result<Posted, MemError> {
    let bit = 1u64 << (vector % 64);
    mem.update_u64(desc + 8 * (vector / 64) as u64, |w| w | bit)?;
    // ON, SN, NV and NDST are one word: ON set only if both were clear.
    let control = mem.update_u64(desc + CONTROL, |c| match c & (ON | SN) {
        0 => c | ON,
        _ => c,
    })?;
    if control & (ON | SN) != 0 {
        return Ok(Posted::Queued);
    }
    Ok(Posted::Notify {
        nv: (control >> (8 * (NV - CONTROL))) as u8,
        ndst: (control >> (8 * (NDST - CONTROL))) as u32,
    })
}

/// Posted-interrupt processing (SDM 30.6 steps 3-5), as when the
/// notification vector arrives while L2 runs: ON cleared, PIR moved into
/// VIRR of the virtual-APIC page at `vapic`. Returns the highest vector
/// moved (RVI must become at least that), None if PIR was empty.
pub fn process(mem: &mut impl GuestMemory, desc: u64, vapic: u64) -> Result<Option<u8>, MemError> {
    mem.update_u64(desc + CONTROL, |c| c & !ON)?;
    let mut highest = None;
    for i in 0..4u64 {
        let pir = mem.update_u64(desc + 8 * i, |_| 0)?;
        for half in 0..2u64 {
            let word = (pir >> (32 * half)) as u32;
            if word == 0 {
                continue;
            }
            or_virr(mem, vapic, 2 * i + half, word)?;
            highest = Some((64 * i + 32 * half) as u8 + (31 - word.leading_zeros()) as u8);
        }
    }
    Ok(highest)
}

/// The highest vector set in a 256-bit APIC register (ISR, IRR, TMR, or
/// their virtual-APIC and PIR copies), given its eight 32-bit words.
pub fn highest_vector(mut word: impl FnMut(usize) -> u32) -> Option<u8> {
    (0..8).rev().find_map(|i| match word(i) {
        0 => None,
        w => Some((32 * i as u32 + 31 - w.leading_zeros()) as u8),
    })
}

/// The guest-interrupt-status field with RVI raised to at least `vector`.
pub fn raise_rvi(intr_status: u64, vector: u8) -> u64 {
    let rvi = (intr_status & 0xff).max(vector as u64);
    (intr_status & !0xff) | rvi
}

/// Whether a notification is outstanding (ON).
pub fn outstanding(mem: &impl GuestMemory, desc: u64) -> bool {
    let mut c = [0u8];
    mem.read(desc + CONTROL, &mut c)
        .is_ok_and(|_| c[0] as u64 & ON != 0)
}

/// Whether a descriptor has anything for L2: ON, or PIR bits L1 has not
/// yet moved (a posting while SN was set).
pub fn pending(mem: &impl GuestMemory, desc: u64) -> bool {
    let mut d = [0u8; 33];
    mem.read(desc, &mut d)
        .is_ok_and(|_| d.iter().any(|&b| b != 0))
}

/// What a write of ICR means under IPI virtualization (SDM 30.1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipi {
    /// A fixed, physical-destination IPI without shorthand whose target has
    /// a valid PID-pointer entry: post `vector` in the descriptor at `desc`.
    Post { desc: u64, vector: u8 },
    /// A fixed IPI to itself by shorthand: self-IPI virtualization.
    SelfIpi { vector: u8 },
    /// Anything else: an APIC-write VM exit to L1 (offset ICR_LO).
    ApicWriteExit,
}

/// Decides what the CPU would do with an ICR write (`icr` = high << 32 |
/// low), given the PID-pointer table (`table`, entries up to
/// `last_index`). `x2apic`: the destination is ICR[63:32], else ICR[63:56].
pub fn ipi(mem: &impl GuestMemory, icr: u64, x2apic: bool, table: u64, last_index: u16) -> Ipi {
    let vector = icr as u8;
    let delivery = (icr >> 8) & 7;
    let logical = icr & (1 << 11) != 0;
    let shorthand = (icr >> 18) & 3;
    if delivery != 0 || vector < 16 {
        return Ipi::ApicWriteExit;
    }
    match (shorthand, logical) {
        (1, _) => return Ipi::SelfIpi { vector },
        (0, false) => {}
        _ => return Ipi::ApicWriteExit,
    }
    let dest = if x2apic { icr >> 32 } else { icr >> 56 };
    if dest > last_index as u64 {
        return Ipi::ApicWriteExit;
    }
    match mem.read_u64(table + 8 * dest) {
        Ok(e) if e & 1 != 0 => Ipi::Post {
            desc: e & !0x3f & 0x000f_ffff_ffff_ffff,
            vector,
        },
        _ => Ipi::ApicWriteExit,
    }
}

/// Sets `vector` in VIRR (self-IPI virtualization, SDM 30.1.5).
pub fn set_virr(mem: &mut impl GuestMemory, vapic: u64, vector: u8) -> Result<(), MemError> {
    or_virr(mem, vapic, (vector / 32) as u64, 1 << (vector % 32))
}

/// ORs `bits` into VIRR word `k` of the virtual-APIC page at `vapic`,
/// atomically: the 64-bit word holds it and 4 of the 12 reserved bytes
/// after it.
fn or_virr(mem: &mut impl GuestMemory, vapic: u64, k: u64, bits: u32) -> Result<(), MemError> {
    mem.update_u64(vapic + VIRR + 16 * k, |w| w | bits as u64)
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_mem::fake::VecMemory;

    const DESC: u64 = 0x1000;
    const VAPIC: u64 = 0x2000;
    const TABLE: u64 = 0x3000;

    fn mem() -> VecMemory {
        let mut m = VecMemory::new(0, 0x4000);
        m.write(DESC + NV, &[0xf2]).unwrap();
        m.write(DESC + NDST, &0x0100u32.to_le_bytes()).unwrap();
        m
    }

    fn irr_word(m: &VecMemory, i: u64) -> u32 {
        let mut b = [0u8; 4];
        m.read(VAPIC + VIRR + 16 * i, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn posting_notifies_once_then_queues() {
        let mut m = mem();
        assert_eq!(
            post(&mut m, DESC, 0x24).unwrap(),
            Posted::Notify {
                nv: 0xf2,
                ndst: 0x100
            }
        );
        assert_eq!(
            post(&mut m, DESC, 0x31).unwrap(),
            Posted::Queued,
            "ON outstanding"
        );
        assert!(pending(&m, DESC));
        assert_eq!(process(&mut m, DESC, VAPIC).unwrap(), Some(0x31));
        assert_eq!(
            irr_word(&m, 1),
            1 << 4 | 1 << 17,
            "0x24 and 0x31 in VIRR word 1"
        );
        assert!(!pending(&m, DESC), "PIR cleared, ON cleared");
        assert_eq!(process(&mut m, DESC, VAPIC).unwrap(), None);
        assert_eq!(
            post(&mut m, DESC, 0x24).unwrap(),
            Posted::Notify {
                nv: 0xf2,
                ndst: 0x100
            },
            "ON armed again"
        );
    }

    /// Each PIR word holds two VIRR words: vectors in the upper half of the
    /// last one land in VIRR word 7, and the highest is found.
    #[test]
    fn every_pir_word_reaches_its_virr_words() {
        let mut m = mem();
        for v in [0x20, 0x5f, 0x60, 0x9a, 0xc1, 0xfe] {
            post(&mut m, DESC, v).unwrap();
        }
        assert_eq!(process(&mut m, DESC, VAPIC).unwrap(), Some(0xfe));
        let words: Vec<u32> = (0..8).map(|i| irr_word(&m, i)).collect();
        assert_eq!(
            words,
            [0, 1, 1 << 31, 1, 1 << 26, 0, 1 << 1, 1 << 30],
            "vectors 0x20, 0x5f, 0x60, 0x9a, 0xc1, 0xfe"
        );
        assert!(!pending(&m, DESC));
    }

    #[test]
    fn a_misaligned_descriptor_is_refused() {
        let mut m = mem();
        assert_eq!(
            post(&mut m, DESC + 4, 0x24),
            Err(MemError::Misaligned { gpa: DESC + 4 })
        );
    }

    #[test]
    fn suppressed_notification_still_records() {
        let mut m = mem();
        m.write(DESC + CONTROL, &[SN as u8]).unwrap();
        assert_eq!(post(&mut m, DESC, 0xec).unwrap(), Posted::Queued);
        assert!(pending(&m, DESC), "the PIR bit waits for L1 to move it");
        let mut c = [0u8];
        m.read(DESC + CONTROL, &mut c).unwrap();
        assert_eq!(c[0] as u64, SN, "ON stays clear while SN is set");
    }

    #[test]
    fn rvi_only_rises() {
        assert_eq!(raise_rvi(0x3020, 0x31), 0x3031);
        assert_eq!(raise_rvi(0x3040, 0x31), 0x3040);
    }

    #[test]
    fn ipi_decisions() {
        let mut m = mem();
        m.write(TABLE + 8, &(DESC | 1).to_le_bytes()).unwrap();
        let fixed = |v: u64, dest: u64| dest << 56 | v;
        assert_eq!(
            ipi(&m, fixed(0x40, 1), false, TABLE, 3),
            Ipi::Post {
                desc: DESC,
                vector: 0x40
            }
        );
        assert_eq!(
            ipi(&m, 0x1_0000_0040, true, TABLE, 3),
            Ipi::Post {
                desc: DESC,
                vector: 0x40
            },
            "x2APIC: dest in bits 63:32"
        );
        assert_eq!(
            ipi(&m, fixed(0x40, 2), false, TABLE, 3),
            Ipi::ApicWriteExit,
            "invalid entry"
        );
        assert_eq!(
            ipi(&m, fixed(0x40, 4), false, TABLE, 3),
            Ipi::ApicWriteExit,
            "beyond the last index"
        );
        assert_eq!(
            ipi(&m, fixed(0x40, 1) | 1 << 11, false, TABLE, 3),
            Ipi::ApicWriteExit,
            "logical"
        );
        assert_eq!(
            ipi(&m, fixed(0x40, 1) | 4 << 8, false, TABLE, 3),
            Ipi::ApicWriteExit,
            "NMI"
        );
        assert_eq!(
            ipi(&m, 0x4_0040, false, TABLE, 3),
            Ipi::SelfIpi { vector: 0x40 }
        );
        assert_eq!(
            ipi(&m, 0x8_0040, false, TABLE, 3),
            Ipi::ApicWriteExit,
            "all including self"
        );
        assert_eq!(
            ipi(&m, fixed(0x0f, 1), false, TABLE, 3),
            Ipi::ApicWriteExit,
            "illegal vector"
        );
        set_virr(&mut m, VAPIC, 0x40).unwrap();
        assert_eq!(irr_word(&m, 2), 1);
    }

    #[test]
    fn descriptor_outside_ram_is_an_error() {
        let mut m = mem();
        assert!(post(&mut m, 0x10_0000, 0x24).is_err());
        assert!(process(&mut m, 0x10_0000, VAPIC).is_err());
        assert_eq!(
            ipi(&m, 1 << 56 | 0x40, false, 0x10_0000, 3),
            Ipi::ApicWriteExit
        );
    }
}
