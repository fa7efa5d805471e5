//! The ports L0 keeps from every guest, L1 and each L2 alike, in every
//! configuration: its management UART (8 ports from the base the command
//! line chose) and the host's in-band BMC interfaces, through which the
//! cloud VM could reconfigure the BMC (serial-over-LAN taking the
//! management line's UART, users, the BMC's network). To a guest they are
//! absent devices: reads return all ones, writes are dropped. (The
//! emulator's shutdown port is L0's too, with behaviour of its own:
//! `machine::shutdown`.)

use alloc::vec::Vec;

/// IPMI system interfaces at the I/O addresses the IPMI v2.0 specification
/// gives as defaults (a board's ACPI SPMI tables may name others:
/// `L0Ports::add_bmc`): (first port, count, name).
pub const BMC_PORTS: [(u16, u16, &str); 3] = [
    (0xca2, 2, "IPMI KCS"),
    (0xca9, 3, "IPMI SMIC"),
    (0xe4, 3, "IPMI BT"),
];

/// The ports L0 keeps: the management UART (8 ports from `mgmt`, if
/// any), the BMC interfaces at the default addresses, and those the
/// firmware's SPMI tables name elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L0Ports {
    pub mgmt: Option<u16>,
    /// (first port, count, name) beyond [`BMC_PORTS`].
    pub bmc: Vec<(u16, u16, &'static str)>,
}

impl L0Ports {
    pub fn new(mgmt: Option<u16>) -> Self {
        L0Ports {
            mgmt,
            bmc: Vec::new(),
        }
    }

    /// Adds a BMC interface the firmware names (once, however often named).
    pub fn add_bmc(&mut self, base: u16, count: u16, name: &'static str) {
        let known = BMC_PORTS
            .iter()
            .chain(&self.bmc)
            .any(|&(b, n, _)| (b, n) == (base, count));
        if !known {
            self.bmc.push((base, count, name));
        }
    }

    fn bmcs(&self) -> impl Iterator<Item = &(u16, u16, &'static str)> {
        BMC_PORTS.iter().chain(&self.bmc)
    }

    /// Whether an access of `size` bytes at `port` touches a port L0 keeps.
    pub fn touches(&self, port: u16, size: u8) -> bool {
        let (a, b) = (port as u32, port as u32 + size as u32);
        let overlaps = |base: u16, n: u16| a < base as u32 + n as u32 && (base as u32) < b;
        self.mgmt.is_some_and(|base| overlaps(base, 8))
            || self.bmcs().any(|&(base, n, _)| overlaps(base, n))
    }

    /// Every port L0 keeps, for the I/O bitmaps.
    pub fn all(&self) -> impl Iterator<Item = u16> + '_ {
        let run = |base: u16, n: u16| (0..n).filter_map(move |i| base.checked_add(i));
        let uart = self.mgmt.into_iter().flat_map(move |base| run(base, 8));
        uart.chain(self.bmcs().flat_map(move |&(base, n, _)| run(base, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uart_and_the_bmc_interfaces_are_l0s() {
        let (uart, none) = (L0Ports::new(Some(0x2f0)), L0Ports::new(None));
        assert!(uart.touches(0x2f0, 1) && uart.touches(0x2f7, 1));
        assert!(uart.touches(0x2ee, 4), "a wide access reaching in");
        assert!(!uart.touches(0x2ec, 4) && !uart.touches(0x2f8, 1));
        assert!(!none.touches(0x2f8, 1));
        for p in [0xca2, 0xca3, 0xca9, 0xcab, 0xe4, 0xe6] {
            assert!(none.touches(p, 1), "{p:#x}");
        }
        assert!(!none.touches(0xca4, 1) && !none.touches(0xe7, 1));
        let ports: Vec<u16> = uart.all().collect();
        assert_eq!(ports.len(), 8 + 2 + 3 + 3);
        assert!(ports.iter().all(|&p| uart.touches(p, 1)));
    }

    #[test]
    fn bmc_interfaces_the_firmware_names_are_kept_too() {
        let mut p = L0Ports::new(None);
        p.add_bmc(0xca8, 8, "IPMI KCS");
        p.add_bmc(0xca8, 8, "IPMI KCS");
        p.add_bmc(0xca2, 2, "IPMI KCS");
        assert_eq!(
            p.bmc,
            [(0xca8, 8, "IPMI KCS")],
            "each once, defaults not again"
        );
        assert!(p.touches(0xca8, 1) && p.touches(0xcaf, 1) && p.touches(0xcae, 4));
        assert!(!p.touches(0xcb0, 1));
        assert_eq!(p.all().count(), 2 + 3 + 3 + 8);
        // The last port of the I/O space: no overflow.
        p.add_bmc(0xfffe, 2, "IPMI KCS");
        assert!(p.touches(0xffff, 1));
        assert!(p.all().any(|x| x == 0xffff));
    }
}
