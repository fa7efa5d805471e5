//! The DMA Remapping Reporting table (Intel VT-d specification 4.1, §8):
//! the host's remapping units (DRHD structures) and the memory that
//! devices must keep reaching for the firmware (RMRR structures). Device
//! scopes are not read: L0 gives every device of every unit the same
//! translation, so which unit owns which device does not matter.
//!
//! Every length and address is checked before use; a table that fails is
//! refused whole (L0 then boots without DMA isolation and says so).

use alloc::vec::Vec;
use core::fmt;

use boot::memmap::Range;

use super::{u64_at, HEADER};

/// Where the remapping structures start (after the host address width,
/// flags and 10 reserved bytes, §8.1).
const STRUCTURES: usize = HEADER + 12;
const DRHD: u16 = 0;
const RMRR: u16 = 1;
/// DRHD flags bit 0: the unit covers every device of its segment not
/// named by another unit.
const INCLUDE_PCI_ALL: u8 = 1;
/// DRHD "Size" (§8.3, VT-d 3.0 on): the register set is 2^N pages. Real
/// units have 1 or 2; more than 16 pages is a corrupt table.
const MAX_SIZE_ORDER: u8 = 4;
/// More units than any host has: a corrupt table.
const MAX_UNITS: usize = 64;
/// L1's view of the table: Xen's choice, so tools know what it means.
pub const HIDDEN_SIGNATURE: [u8; 4] = *b"XMAR";

/// One remapping unit (a DRHD structure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemapUnit {
    /// Its register set: page aligned, one or more pages.
    pub registers: Range,
    pub segment: u16,
    pub include_pci_all: bool,
}

/// What L0 needs of the DMAR table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dmar {
    /// Highest DMA address bit + 1 the platform supports.
    pub host_address_width: u8,
    pub units: Vec<RemapUnit>,
    /// RMRR regions, page aligned: devices keep DMA access to them.
    pub reserved: Vec<Range>,
}

/// Why a DMAR table was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarError {
    /// The table could not be found or read whole.
    Table(super::AcpiError),
    /// The table is shorter than its fixed part.
    Short,
    /// A structure's length is below 4 or runs past the table's end.
    BadLength {
        offset: usize,
    },
    /// A DRHD whose register base is zero, unaligned, or whose size
    /// is implausible.
    BadUnit {
        offset: usize,
    },
    /// Two DRHDs with the same register base.
    DuplicateUnit {
        offset: usize,
    },
    /// An RMRR that is unaligned or ends before it starts.
    BadReserved {
        offset: usize,
    },
    TooManyUnits,
    NoUnits,
}

impl fmt::Display for DmarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Table(e) => write!(f, "{e}"),
            Self::Short => write!(f, "the DMAR table is too short"),
            Self::BadLength { offset } => {
                write!(f, "the DMAR structure at offset {offset} has a bad length")
            }
            Self::BadUnit { offset } => write!(
                f,
                "the DMAR remapping unit at offset {offset} has a bad register address or size"
            ),
            Self::DuplicateUnit { offset } => write!(
                f,
                "the DMAR remapping unit at offset {offset} repeats another's registers"
            ),
            Self::BadReserved { offset } => {
                write!(
                    f,
                    "the DMAR reserved region at offset {offset} is malformed"
                )
            }
            Self::TooManyUnits => write!(f, "the DMAR table lists more than {MAX_UNITS} units"),
            Self::NoUnits => write!(f, "the DMAR table lists no remapping unit"),
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn page_aligned(a: u64) -> bool {
    a.is_multiple_of(0x1000)
}

/// Parses a DMAR table whose header (signature, length, checksum) was
/// already checked (`acpi::find`).
pub fn parse(t: &[u8]) -> Result<Dmar, DmarError> {
    if t.len() < STRUCTURES {
        return Err(DmarError::Short);
    }
    let mut d = Dmar {
        host_address_width: t[HEADER].saturating_add(1),
        units: Vec::new(),
        reserved: Vec::new(),
    };
    let mut o = STRUCTURES;
    while o < t.len() {
        if o + 4 > t.len() {
            return Err(DmarError::BadLength { offset: o });
        }
        let (kind, len) = (u16_at(t, o), u16_at(t, o + 2) as usize);
        if len < 4 || o + len > t.len() {
            return Err(DmarError::BadLength { offset: o });
        }
        let s = &t[o..o + len];
        match kind {
            DRHD => {
                let unit = unit_of(s).ok_or(DmarError::BadUnit { offset: o })?;
                if d.units
                    .iter()
                    .any(|u| u.registers.start == unit.registers.start)
                {
                    return Err(DmarError::DuplicateUnit { offset: o });
                }
                if d.units.len() == MAX_UNITS {
                    return Err(DmarError::TooManyUnits);
                }
                d.units.push(unit);
            }
            RMRR => d
                .reserved
                .push(reserved_of(s).ok_or(DmarError::BadReserved { offset: o })?),
            // ATSR, RHSA, ANDD, SATC, SIDP: nothing L0 acts on.
            _ => {}
        }
        o += len;
    }
    if d.units.is_empty() {
        return Err(DmarError::NoUnits);
    }
    Ok(d)
}

/// DRHD: type, length, flags, size, segment, register base (§8.3).
fn unit_of(s: &[u8]) -> Option<RemapUnit> {
    if s.len() < 16 {
        return None;
    }
    let base = u64_at(s, 8);
    let order = s[5] & 0xf;
    if base == 0 || !page_aligned(base) || order > MAX_SIZE_ORDER {
        return None;
    }
    let end = base.checked_add(0x1000 << order)?;
    Some(RemapUnit {
        registers: Range::new(base, end),
        segment: u16_at(s, 6),
        include_pci_all: s[4] & INCLUDE_PCI_ALL != 0,
    })
}

/// RMRR: type, length, reserved, segment, base, inclusive limit (§8.4).
fn reserved_of(s: &[u8]) -> Option<Range> {
    if s.len() < 24 {
        return None;
    }
    let (base, limit) = (u64_at(s, 8), u64_at(s, 16));
    let end = limit.checked_add(1)?;
    if !page_aligned(base) || !page_aligned(end) || end <= base {
        return None;
    }
    Some(Range::new(base, end))
}

/// Renames the table in place so that the cloud VM's ACPI code does not
/// find it (the units are L0's), keeping its checksum valid.
pub fn hide(table: &mut [u8]) {
    table[..4].copy_from_slice(&HIDDEN_SIGNATURE);
    super::fix_checksum(table);
}

/// The bytes of a DMAR structure list, for tests and the fake tables of
/// other modules' tests.
#[cfg(test)]
pub mod build {
    use alloc::vec::Vec;

    pub fn drhd(flags: u8, size: u8, segment: u16, base: u64) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&0u16.to_le_bytes());
        e.extend_from_slice(&16u16.to_le_bytes());
        e.extend_from_slice(&[flags, size]);
        e.extend_from_slice(&segment.to_le_bytes());
        e.extend_from_slice(&base.to_le_bytes());
        e
    }

    pub fn rmrr(base: u64, limit: u64) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&1u16.to_le_bytes());
        e.extend_from_slice(&24u16.to_le_bytes());
        e.extend_from_slice(&[0; 4]);
        e.extend_from_slice(&base.to_le_bytes());
        e.extend_from_slice(&limit.to_le_bytes());
        e
    }

    /// A whole DMAR table (valid header and checksum) around `structures`.
    pub fn table(haw: u8, structures: &[Vec<u8>]) -> Vec<u8> {
        let mut t = Vec::from(&b"DMAR"[..]);
        t.resize(super::HEADER, 0);
        t.push(haw);
        t.push(1); // INTR_REMAP: L0 does not act on it
        t.resize(super::STRUCTURES, 0);
        for s in structures {
            t.extend_from_slice(s);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        super::super::fix_checksum(&mut t);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn sum(t: &[u8]) -> u8 {
        t.iter().fold(0u8, |s, &b| s.wrapping_add(b))
    }

    #[test]
    fn a_typical_table() {
        // Two units (the graphics one, then the catch-all) and one RMRR,
        // with an ATSR in between that L0 skips.
        let atsr = [2u8, 0, 8, 0, 0, 0, 0, 0];
        let t = table(
            38,
            &[
                drhd(0, 0, 0, 0xfed9_0000),
                atsr.to_vec(),
                drhd(1, 1, 0, 0xfed9_1000),
                rmrr(0x7c80_0000, 0x7fff_ffff),
            ],
        );
        let d = parse(&t).unwrap();
        assert_eq!(d.host_address_width, 39);
        assert_eq!(
            d.units,
            [
                RemapUnit {
                    registers: Range::new(0xfed9_0000, 0xfed9_1000),
                    segment: 0,
                    include_pci_all: false
                },
                RemapUnit {
                    registers: Range::new(0xfed9_1000, 0xfed9_3000),
                    segment: 0,
                    include_pci_all: true
                }
            ]
        );
        assert_eq!(d.reserved, [Range::new(0x7c80_0000, 0x8000_0000)]);
    }

    #[test]
    fn malformed_tables_are_refused_with_the_offset() {
        let unit = drhd(1, 0, 0, 0xfed9_0000);
        let first = STRUCTURES;
        let mut short = table(38, &[]);
        short.truncate(HEADER + 4);
        assert_eq!(parse(&short), Err(DmarError::Short));
        assert_eq!(parse(&table(38, &[])), Err(DmarError::NoUnits));
        // A structure running past the end, one of length 0 (which would
        // loop forever if followed), and a 3-byte tail.
        let mut long = unit.clone();
        long[2] = 40;
        assert_eq!(
            parse(&table(38, &[long])),
            Err(DmarError::BadLength { offset: first })
        );
        let zero = [9u8, 0, 0, 0].to_vec();
        assert_eq!(
            parse(&table(38, &[unit.clone(), zero])),
            Err(DmarError::BadLength { offset: first + 16 })
        );
        assert_eq!(
            parse(&table(38, &[unit.clone(), [0u8; 3].to_vec()])),
            Err(DmarError::BadLength { offset: first + 16 })
        );
        // A DRHD too short to hold its base; zero, unaligned and
        // wrapping bases; an absurd size.
        let mut stub = unit.clone();
        stub.truncate(12);
        stub[2] = 12;
        for bad in [
            stub,
            drhd(1, 0, 0, 0),
            drhd(1, 0, 0, 0xfed9_0800),
            drhd(1, 0, 0, !0xfff),
            drhd(1, 9, 0, 0xfed9_0000),
        ] {
            assert_eq!(
                parse(&table(38, core::slice::from_ref(&bad))),
                Err(DmarError::BadUnit { offset: first }),
                "{bad:x?}"
            );
        }
        assert_eq!(
            parse(&table(38, &[unit.clone(), unit.clone()])),
            Err(DmarError::DuplicateUnit { offset: first + 16 })
        );
        // RMRRs: unaligned base, limit not at a page's last byte, limit
        // before base, limit at 2^64 - 1 (end overflows).
        for bad in [
            rmrr(0x7c80_0800, 0x7fff_ffff),
            rmrr(0x7c80_0000, 0x7fff_fffe),
            rmrr(0x8000_0000, 0x7fff_ffff),
            rmrr(0, u64::MAX),
        ] {
            assert_eq!(
                parse(&table(38, &[unit.clone(), bad.clone()])),
                Err(DmarError::BadReserved { offset: first + 16 }),
                "{bad:x?}"
            );
        }
        let many: Vec<Vec<u8>> = (0..=MAX_UNITS as u64)
            .map(|i| drhd(0, 0, 0, 0xf000_0000 + 0x1000 * i))
            .collect();
        assert_eq!(parse(&table(38, &many)), Err(DmarError::TooManyUnits));
        assert!(DmarError::BadUnit { offset: 48 }
            .to_string()
            .contains("offset 48"));
    }

    #[test]
    fn hiding_keeps_the_checksum() {
        let mut t = table(38, &[drhd(1, 0, 0, 0xfed9_0000)]);
        assert_eq!(sum(&t), 0);
        hide(&mut t);
        assert_eq!(&t[..4], b"XMAR");
        assert_eq!(sum(&t), 0, "still a valid table, under another name");
        assert!(parse(&t).is_ok(), "the body is unchanged");
    }
}
