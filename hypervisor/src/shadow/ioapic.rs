//! What L0 learns of a user VM's IOAPIC: the redirection entries of the
//! pins its COM ports use (IRQ 4 for COM1/COM3, IRQ 3 for COM2/COM4).
//!
//! The IOAPIC itself is the guest hypervisor's (KVM's in-kernel one).
//! L2 programs it with MMIO writes that exit to L0 on their way to L1 (EPT12
//! does not map the IOAPIC page); L0 decodes them and keeps this copy, so
//! that it can post a shadow UART's interrupt with the vector L2 chose
//! (docs/shadow-devices.md). Only a fixed or lowest-priority, unmasked,
//! compatibility-format entry routes.

/// The IOAPIC's MMIO page in L2's physical space (QEMU's PC machines and
/// the MP/ACPI default; a VM whose firmware moves it is not followed).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// IOREGSEL and IOWIN offsets.
pub const IOREGSEL: u64 = 0x00;
pub const IOWIN: u64 = 0x10;
/// Redirection entries: 24 pins, registers 0x10 + 2n (low) and + 1 (high).
const PINS: usize = 24;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoApic {
    sel: u8,
    redir: [u64; PINS],
    /// Pins whose low word L2 has written since the VM (or its reset) began.
    written: u32,
}

impl IoApic {
    /// A 32-bit write at `offset` in the IOAPIC page.
    pub fn write(&mut self, offset: u64, value: u32) {
        match offset {
            IOREGSEL => self.sel = value as u8,
            IOWIN => {
                let Some(reg) = (self.sel as usize).checked_sub(0x10) else {
                    return;
                };
                let pin = reg / 2;
                if pin >= PINS {
                    return;
                }
                let e = &mut self.redir[pin];
                if reg % 2 == 0 {
                    *e = (*e & !0xffff_ffff) | value as u64;
                    self.written |= 1 << pin;
                } else {
                    *e = (*e & 0xffff_ffff) | (value as u64) << 32;
                }
            }
            _ => {}
        }
    }

    /// The programmed entries as they travel in a sealed blob's platform
    /// state (the VM's devices migrate; its IOAPIC, KVM's, migrates with
    /// QEMU, so the destination L0 never sees the writes): "IOA1", the
    /// written-pin mask (u32 LE), then each written pin's entry (u64 LE).
    pub fn encode(&self) -> alloc::vec::Vec<u8> {
        let mut v = alloc::vec::Vec::with_capacity(8 + 8 * PINS);
        v.extend_from_slice(b"IOA1");
        v.extend_from_slice(&self.written.to_le_bytes());
        for pin in 0..PINS {
            if self.written & 1 << pin != 0 {
                v.extend_from_slice(&self.redir[pin].to_le_bytes());
            }
        }
        v
    }

    /// The inverse of `encode`; None for anything else.
    pub fn decode(bytes: &[u8]) -> Option<IoApic> {
        let rest = bytes.strip_prefix(b"IOA1")?;
        let written = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
        if written >> PINS != 0 {
            return None;
        }
        let mut entries = rest[4..].chunks_exact(8);
        if entries.len() != written.count_ones() as usize || !entries.remainder().is_empty() {
            return None;
        }
        let mut a = IoApic {
            written,
            ..Default::default()
        };
        for pin in (0..PINS).filter(|p| written & 1 << p != 0) {
            a.redir[pin] = u64::from_le_bytes(entries.next()?.try_into().ok()?);
        }
        Some(a)
    }

    /// The vector `pin` raises, if its entry routes an edge at all.
    pub fn vector(&self, pin: u8) -> Option<u8> {
        let pin = pin as usize;
        if pin >= PINS || self.written & 1 << pin == 0 {
            return None;
        }
        let e = self.redir[pin];
        let vector = e as u8;
        let delivery = (e >> 8) & 7;
        let masked = e & (1 << 16) != 0;
        let remappable = e & (1 << 48) != 0;
        (!masked && !remappable && delivery <= 1 && vector >= 16).then_some(vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(a: &mut IoApic, pin: u8, low: u32, high: u32) {
        a.write(IOREGSEL, 0x10 + 2 * pin as u32);
        a.write(IOWIN, low);
        a.write(IOREGSEL, 0x11 + 2 * pin as u32);
        a.write(IOWIN, high);
    }

    #[test]
    fn routes_survive_encoding() {
        let mut a = IoApic::default();
        program(&mut a, 4, 0x24, 0);
        program(&mut a, 3, 0x1_0023, 0);
        let b = IoApic::decode(&a.encode()).unwrap();
        assert_eq!(
            (b.vector(4), b.vector(3), b.redir, b.written),
            (Some(0x24), None, a.redir, a.written)
        );
        let e = a.encode();
        assert!(IoApic::decode(&e[..e.len() - 1]).is_none());
        assert!(
            IoApic::decode(b"IOA1\x00\x00\x00\x01").is_none(),
            "pin 24 does not exist"
        );
        assert!(IoApic::decode(b"junk").is_none());
    }

    #[test]
    fn learns_the_com_vectors() {
        let mut a = IoApic::default();
        assert_eq!(a.vector(4), None, "nothing programmed yet");
        program(&mut a, 4, 0x0001_0024, 0); // Linux masks first...
        assert_eq!(a.vector(4), None);
        program(&mut a, 4, 0x0000_0024, 0); // ...then unmasks
        assert_eq!(a.vector(4), Some(0x24));
        program(&mut a, 3, 0x0000_0123, 0x0100_0000); // lowest priority, vector 0x23
        assert_eq!(a.vector(3), Some(0x23));
        program(&mut a, 3, 0x0000_0423, 0); // NMI delivery
        assert_eq!(a.vector(3), None);
        program(&mut a, 4, 0x24, 1 << 16); // remappable format
        assert_eq!(a.vector(4), None);
    }

    #[test]
    fn odd_writes_are_harmless() {
        let mut a = IoApic::default();
        for sel in [0u32, 1, 2, 0x0f, 0x40, 0x41, 0xff] {
            a.write(IOREGSEL, sel);
            a.write(IOWIN, 0xffff_ffff);
        }
        a.write(0x20, 5);
        assert!((0..24).all(|p| a.vector(p).is_none()));
    }
}
