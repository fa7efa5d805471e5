//! The ports L0 keeps from every guest, L1 and each L2 alike, in every
//! configuration: its management UART (8 ports from the base the command
//! line chose) and the host's in-band BMC interfaces, through which the
//! cloud VM could reconfigure the BMC (serial-over-LAN taking the
//! management line's UART, users, the BMC's network). To a guest they are
//! absent devices: reads return all ones, writes are dropped. (The
//! emulator's shutdown port is L0's too, with behaviour of its own:
//! `machine::shutdown`.)

/// IPMI system interfaces at the I/O addresses the IPMI v2.0 specification
/// gives as defaults (SMBIOS type 38 and ACPI SPMI name the ones a board
/// uses): (first port, count, name).
pub const BMC_PORTS: [(u16, u16, &str); 3] = [
    (0xca2, 2, "IPMI KCS"),
    (0xca9, 3, "IPMI SMIC"),
    (0xe4, 3, "IPMI BT"),
];

/// Whether an access of `size` bytes at `port` touches a port L0 keeps,
/// the management UART at `mgmt` (if any) or a BMC interface.
pub fn touches(mgmt: Option<u16>, port: u16, size: u8) -> bool {
    let (a, b) = (port as u32, port as u32 + size as u32);
    let overlaps = |base: u16, n: u16| a < base as u32 + n as u32 && (base as u32) < b;
    mgmt.is_some_and(|base| overlaps(base, 8))
        || BMC_PORTS.iter().any(|&(base, n, _)| overlaps(base, n))
}

/// Every port L0 keeps, for the I/O bitmaps.
pub fn all(mgmt: Option<u16>) -> impl Iterator<Item = u16> {
    let uart = mgmt
        .into_iter()
        .flat_map(|base| base..base.saturating_add(8));
    let bmc = BMC_PORTS.iter().flat_map(|&(base, n, _)| base..base + n);
    uart.chain(bmc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uart_and_the_bmc_interfaces_are_l0s() {
        assert!(touches(Some(0x2f0), 0x2f0, 1) && touches(Some(0x2f0), 0x2f7, 1));
        assert!(touches(Some(0x2f0), 0x2ee, 4), "a wide access reaching in");
        assert!(!touches(Some(0x2f0), 0x2ec, 4) && !touches(Some(0x2f0), 0x2f8, 1));
        assert!(!touches(None, 0x2f8, 1));
        for p in [0xca2, 0xca3, 0xca9, 0xcab, 0xe4, 0xe6] {
            assert!(touches(None, p, 1), "{p:#x}");
        }
        assert!(!touches(None, 0xca4, 1) && !touches(None, 0xe7, 1));
        let ports: alloc::vec::Vec<u16> = all(Some(0x2f0)).collect();
        assert_eq!(ports.len(), 8 + 2 + 3 + 3);
        assert!(ports.iter().all(|&p| touches(Some(0x2f0), p, 1)));
    }
}
