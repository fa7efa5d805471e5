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

    /// Where `pin`'s interrupt goes, if its entry routes an edge at all.
    pub fn destination(&self, pin: u8) -> Option<Destination> {
        self.vector(pin)?;
        let e = self.redir[pin as usize];
        let id = (e >> 56) as u8;
        Some(match e & (1 << 11) {
            0 => Destination::Physical(id),
            _ => Destination::Logical(id),
        })
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

/// A compatibility-format entry's destination field (bits 63:56) by its
/// destination mode (bit 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    Physical(u8),
    Logical(u8),
}

/// What a local APIC's registers say about which messages it accepts:
/// ID (offset 0x20), LDR (0xd0) and DFR (0xe0), as a virtual-APIC page
/// holds them. In xAPIC mode the ID is in bits 31:24; in x2APIC mode the
/// register holds the 32-bit x2APIC ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalApic {
    pub id: u32,
    pub ldr: u32,
    pub dfr: u32,
}

impl Destination {
    /// Whether the local APIC accepts an interrupt sent here (SDM Vol. 3A
    /// 11.6.2): physical by APIC ID, logical by the flat or cluster model
    /// of DFR. An x2APIC's logical ID (cluster in LDR bits 31:16) takes
    /// no 8-bit logical destination: an IOAPIC reaches x2APIC logical IDs
    /// only through interrupt remapping.
    pub fn accepts(self, apic: LocalApic) -> bool {
        match self {
            Destination::Physical(d) => {
                let xapic = apic.id & 0x00ff_ffff == 0 && apic.id >> 24 == d as u32;
                xapic || apic.id == d as u32
            }
            Destination::Logical(d) => {
                if apic.ldr & 0x00ff_ffff != 0 {
                    return false; // x2APIC format
                }
                let logical = (apic.ldr >> 24) as u8;
                match apic.dfr >> 28 {
                    0xf => logical & d != 0,
                    0x0 => logical >> 4 == d >> 4 && logical & d & 0xf != 0,
                    _ => false,
                }
            }
        }
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
    fn destinations_as_the_apics_accept_them() {
        let mut a = IoApic::default();
        program(&mut a, 4, 0x24, 0x0100_0000);
        program(&mut a, 3, 0x823, 0x0300_0000); // logical
        assert_eq!(a.destination(4), Some(Destination::Physical(1)));
        assert_eq!(a.destination(3), Some(Destination::Logical(3)));
        assert_eq!(a.destination(5), None, "not programmed");
        let xapic = |id: u32, ldr: u32, dfr: u32| LocalApic {
            id: id << 24,
            ldr: ldr << 24,
            dfr,
        };
        let p1 = Destination::Physical(1);
        assert!(p1.accepts(xapic(1, 0, !0)));
        assert!(!p1.accepts(xapic(0, 0, !0)));
        assert!(
            p1.accepts(LocalApic {
                id: 1,
                ldr: 0x1_0002,
                dfr: 0
            }),
            "x2APIC ID 1"
        );
        assert!(!p1.accepts(LocalApic {
            id: 0x101,
            ldr: 0,
            dfr: 0
        }));
        // Flat model: any common bit; cluster model: same cluster, a bit.
        let flat = Destination::Logical(0b0110);
        assert!(flat.accepts(xapic(5, 0b0100, !0)));
        assert!(!flat.accepts(xapic(5, 0b1001, !0)));
        let cluster = Destination::Logical(0x23);
        assert!(cluster.accepts(xapic(5, 0x21, 0x0fff_ffff)));
        assert!(!cluster.accepts(xapic(5, 0x31, 0x0fff_ffff)));
        assert!(!cluster.accepts(xapic(5, 0x24, 0x0fff_ffff)));
        assert!(!flat.accepts(LocalApic {
            id: 1,
            ldr: 0x1_0002,
            dfr: 0
        }));
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
