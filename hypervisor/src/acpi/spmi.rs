//! The SPMI table (IPMI v2.0 Appendix C1, "Service Processor Management
//! Interface"): where the firmware says the host's in-band BMC interface
//! is, when it is not at the specification's default address. One table
//! per interface. L0 keeps what it names from the cloud VM
//! (`vcpu/l0_ports.rs` for I/O ports, L0's frames for a memory-mapped one).

use core::fmt;

/// Where the interface's registers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BmcSpace {
    /// `count` ports from `base`.
    Io { base: u16, count: u16 },
    /// `len` bytes of MMIO from `base`.
    Memory { base: u64, len: u64 },
}

/// One BMC interface the firmware describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BmcInterface {
    pub kind: &'static str,
    pub space: BmcSpace,
}

/// Why an SPMI table names nothing L0 can keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpmiError {
    /// Shorter than the 65 bytes the specification gives it.
    Short(usize),
    /// An interface type the specification does not define.
    UnknownInterface(u8),
    /// SSIF: an SMBus device, no registers in I/O or memory space.
    SmBus,
    /// Address space other than system memory or I/O, or address 0.
    BadAddress { space: u8, address: u64 },
    /// A register width that is not 8, 16, 32 or 64 bits.
    BadWidth(u8),
}

impl fmt::Display for SpmiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpmiError::Short(n) => write!(f, "the SPMI table is {n} bytes, short of 65"),
            SpmiError::UnknownInterface(t) => write!(f, "SPMI interface type {t} is unknown"),
            SpmiError::SmBus => f.write_str("the SPMI interface is SSIF (on SMBus)"),
            SpmiError::BadAddress { space, address } => write!(
                f,
                "SPMI address {address:#x} in address space {space} is not I/O or memory"
            ),
            SpmiError::BadWidth(w) => write!(f, "SPMI register width {w} bits"),
        }
    }
}

const INTERFACE_TYPE: usize = 36;
const BASE_ADDRESS: usize = 48;
const LEN: usize = 65;
const SPACE_MEMORY: u8 = 0;
const SPACE_IO: u8 = 1;

/// The interface an SPMI table (whole, header included) describes: its
/// registers, spaced by the address's register width as Linux's driver
/// reads them (one byte apart when the width is 0).
pub fn parse(t: &[u8]) -> Result<BmcInterface, SpmiError> {
    if t.len() < LEN {
        return Err(SpmiError::Short(t.len()));
    }
    let (kind, registers) = match t[INTERFACE_TYPE] {
        1 => ("IPMI KCS", 2u64),
        2 => ("IPMI SMIC", 3),
        3 => ("IPMI BT", 3),
        4 => return Err(SpmiError::SmBus),
        other => return Err(SpmiError::UnknownInterface(other)),
    };
    let gas = &t[BASE_ADDRESS..BASE_ADDRESS + 12];
    let (space, width) = (gas[0], gas[1]);
    let address = u64::from_le_bytes(gas[4..12].try_into().unwrap_or([0; 8]));
    let spacing = match width {
        0 => 1,
        8 | 16 | 32 | 64 => u64::from(width / 8),
        w => return Err(SpmiError::BadWidth(w)),
    };
    let len = registers * spacing;
    let bad = SpmiError::BadAddress { space, address };
    let space = match space {
        SPACE_IO if address != 0 && address + len <= 0x1_0000 => BmcSpace::Io {
            base: address as u16,
            count: len as u16,
        },
        SPACE_MEMORY if address != 0 && address.checked_add(len).is_some() => {
            BmcSpace::Memory { base: address, len }
        }
        _ => return Err(bad),
    };
    Ok(BmcInterface { kind, space })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SPMI table: interface type, address space, width, address.
    pub fn spmi(kind: u8, space: u8, width: u8, address: u64) -> alloc::vec::Vec<u8> {
        let mut t = alloc::vec![0u8; LEN];
        t[..4].copy_from_slice(b"SPMI");
        t[4..8].copy_from_slice(&(LEN as u32).to_le_bytes());
        t[INTERFACE_TYPE] = kind;
        t[37] = 1;
        t[BASE_ADDRESS] = space;
        t[BASE_ADDRESS + 1] = width;
        t[BASE_ADDRESS + 4..BASE_ADDRESS + 12].copy_from_slice(&address.to_le_bytes());
        t
    }

    #[test]
    fn io_and_memory_interfaces_with_their_spacing() {
        let io = |base, count| BmcSpace::Io { base, count };
        for (kind, width, address, name, space) in [
            (1, 8, 0xca2, "IPMI KCS", io(0xca2, 2)),
            (1, 0, 0xca8, "IPMI KCS", io(0xca8, 2)),
            (1, 32, 0xca0, "IPMI KCS", io(0xca0, 8)),
            (2, 8, 0xca9, "IPMI SMIC", io(0xca9, 3)),
            (3, 8, 0xe4, "IPMI BT", io(0xe4, 3)),
            (1, 8, 0xfffe, "IPMI KCS", io(0xfffe, 2)),
        ] {
            assert_eq!(
                parse(&spmi(kind, SPACE_IO, width, address)),
                Ok(BmcInterface { kind: name, space }),
                "{kind} {width} {address:#x}"
            );
        }
        assert_eq!(
            parse(&spmi(1, SPACE_MEMORY, 32, 0xfe00_0000)),
            Ok(BmcInterface {
                kind: "IPMI KCS",
                space: BmcSpace::Memory {
                    base: 0xfe00_0000,
                    len: 8
                }
            })
        );
    }

    #[test]
    fn what_names_no_interface_is_refused() {
        assert_eq!(
            parse(&spmi(1, SPACE_IO, 8, 0xca2)[..64]),
            Err(SpmiError::Short(64))
        );
        assert_eq!(
            parse(&spmi(0, SPACE_IO, 8, 0xca2)),
            Err(SpmiError::UnknownInterface(0))
        );
        assert_eq!(
            parse(&spmi(5, SPACE_IO, 8, 0xca2)),
            Err(SpmiError::UnknownInterface(5))
        );
        assert_eq!(parse(&spmi(4, 4, 8, 0x20)), Err(SpmiError::SmBus));
        assert_eq!(
            parse(&spmi(1, SPACE_IO, 12, 0xca2)),
            Err(SpmiError::BadWidth(12))
        );
        for (space, address) in [
            (SPACE_IO, 0),
            (SPACE_IO, 0xffff),
            (SPACE_IO, 0x1_0000),
            (SPACE_MEMORY, 0),
            (SPACE_MEMORY, u64::MAX - 1),
            (2, 0xca2),
        ] {
            assert_eq!(
                parse(&spmi(1, space, 8, address)),
                Err(SpmiError::BadAddress { space, address }),
                "{space} {address:#x}"
            );
        }
    }
}
