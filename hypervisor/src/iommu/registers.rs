//! A VT-d remapping unit's registers (VT-d specification 4.1, §11.4) and
//! the sequence that makes it translate through L0's tables: root-table
//! pointer, write-buffer flush, global context-cache and IOTLB
//! invalidation, then translation enable (§10.4.4's command protocol,
//! the order Linux's intel-iommu driver uses). Every wait for the unit
//! is a bounded poll: a unit that never answers is an error, not a hang.
//!
//! The registers are reached through [`UnitRegisters`]; the MMIO
//! implementation is `arch::iommu`, the tests' is a model of the spec.

use core::fmt;

/// A unit's register set, offsets in bytes.
pub trait UnitRegisters {
    /// Bytes of the register set (the DRHD's size).
    fn size(&self) -> u32;
    fn read32(&mut self, offset: u32) -> u32;
    fn write32(&mut self, offset: u32, value: u32);
    fn read64(&mut self, offset: u32) -> u64;
    fn write64(&mut self, offset: u32, value: u64);
}

/// Register offsets (§11.4, Table 52).
pub const CAP: u32 = 0x08;
pub const ECAP: u32 = 0x10;
pub const GCMD: u32 = 0x18;
pub const GSTS: u32 = 0x1c;
pub const RTADDR: u32 = 0x20;
pub const CCMD: u32 = 0x28;
pub const PMEN: u32 = 0x64;
/// IOTLB_REG: at ECAP.IRO × 16, plus 8 (after IVA_REG) (§11.4.8).
const IOTLB_AFTER_IVA: u32 = 8;

/// GCMD bits, and the GSTS bits that report them at the same positions
/// (§11.4.4, §11.4.5).
pub mod command {
    pub const TRANSLATION_ENABLE: u32 = 1 << 31;
    pub const SET_ROOT_TABLE_POINTER: u32 = 1 << 30;
    pub const WRITE_BUFFER_FLUSH: u32 = 1 << 27;
    pub const QUEUED_INVALIDATION: u32 = 1 << 26;
    /// The GSTS bits that are states, not one-shot commands: written back
    /// with every command so that it changes one thing only (§11.4.4:
    /// "status & 0x96FFFFFF").
    pub const PERSISTENT: u32 = 0x96ff_ffff;
}

/// CCMD_REG (§11.4.7): invalidate, global granularity.
pub const CCMD_ICC: u64 = 1 << 63;
pub const CCMD_GLOBAL: u64 = 1 << 61;
/// IOTLB_REG (§11.4.8.1): invalidate, global granularity, drain reads
/// and writes (each only where CAP says the unit can).
pub const IOTLB_IVT: u64 = 1 << 63;
pub const IOTLB_GLOBAL: u64 = 1 << 60;
pub const IOTLB_DRAIN_READS: u64 = 1 << 49;
pub const IOTLB_DRAIN_WRITES: u64 = 1 << 48;
/// PMEN_REG (§11.4.13): enable protected memory, and its status.
pub const PMEN_EPM: u32 = 1 << 31;
pub const PMEN_PRS: u32 = 1;

/// Polls of a status register before the unit counts as stuck: far more
/// than any unit needs (they answer within microseconds), and a second
/// or so of uncached reads at worst.
pub const MAX_POLLS: u32 = 1 << 20;

/// The capability registers L0 decides by (§11.4.2, §11.4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub cap: u64,
    pub ecap: u64,
}

impl Caps {
    pub fn read(u: &mut impl UnitRegisters) -> Self {
        Caps {
            cap: u.read64(CAP),
            ecap: u.read64(ECAP),
        }
    }
    /// SAGAW bit 1: 39-bit, 3-level tables.
    pub fn three_level(&self) -> bool {
        self.cap >> 8 & 0b10 != 0
    }
    /// SAGAW bit 2: 48-bit, 4-level tables.
    pub fn four_level(&self) -> bool {
        self.cap >> 8 & 0b100 != 0
    }
    /// SLLPS bit 0: 2 MiB second-level pages.
    pub fn pages_2m(&self) -> bool {
        self.cap >> 34 & 1 != 0
    }
    /// SLLPS bit 1: 1 GiB second-level pages.
    pub fn pages_1g(&self) -> bool {
        self.cap >> 35 & 1 != 0
    }
    /// RWBF: the write buffer must be flushed after table updates.
    pub fn needs_write_buffer_flush(&self) -> bool {
        self.cap >> 4 & 1 != 0
    }
    /// PLMR or PHMR: protected memory regions exist.
    pub fn has_protected_memory(&self) -> bool {
        self.cap >> 5 & 0b11 != 0
    }
    /// ECAP.C: the unit's table walks snoop the CPU caches. Without it,
    /// tables must be written back to memory before the unit reads them.
    pub fn coherent(&self) -> bool {
        self.ecap & 1 != 0
    }
    /// DRD and DWD: the drains the unit can do on an IOTLB invalidation.
    fn iotlb_drains(&self) -> u64 {
        let reads = if self.cap >> 55 & 1 != 0 {
            IOTLB_DRAIN_READS
        } else {
            0
        };
        let writes = if self.cap >> 54 & 1 != 0 {
            IOTLB_DRAIN_WRITES
        } else {
            0
        };
        reads | writes
    }
    fn iotlb_register(&self) -> u32 {
        ((self.ecap >> 8 & 0x3ff) as u32) * 16 + IOTLB_AFTER_IVA
    }
}

/// Why a unit could not be made to translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitError {
    /// The unit did not report the step done within [`MAX_POLLS`] reads.
    Timeout(&'static str),
    /// ECAP puts the IOTLB registers beyond the register set the DMAR
    /// declares.
    IotlbOutside(u32),
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(step) => write!(f, "the unit did not complete {step}"),
            Self::IotlbOutside(at) => write!(
                f,
                "its IOTLB registers (offset {at:#x}) lie outside its register set"
            ),
        }
    }
}

fn wait(step: &'static str, mut done: impl FnMut() -> bool) -> Result<(), UnitError> {
    for _ in 0..MAX_POLLS {
        if done() {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err(UnitError::Timeout(step))
}

/// Sets or clears one GCMD command, keeping the other states, and waits
/// until GSTS reports it (§10.4.4).
fn command(
    u: &mut impl UnitRegisters,
    bit: u32,
    on: bool,
    step: &'static str,
) -> Result<(), UnitError> {
    let states = u.read32(GSTS) & command::PERSISTENT;
    u.write32(GCMD, if on { states | bit } else { states & !bit });
    wait(step, || (u.read32(GSTS) & bit != 0) == on)
}

/// Makes the unit translate every DMA through the root table at `root`
/// (legacy mode: RTADDR.TTM = 0). Whatever the firmware left on that
/// stands in the way goes off first: translation (so the new root is
/// taken from a clean state), queued invalidation (register-based
/// invalidation, used here, is defined only without it, §6.5) and the
/// protected memory regions (they would block DMA the tables allow;
/// Linux turns them off too).
pub fn enable(u: &mut impl UnitRegisters, root: u64) -> Result<(), UnitError> {
    use command::*;
    let caps = Caps::read(u);
    let iotlb = caps.iotlb_register();
    if iotlb + 8 > u.size() {
        return Err(UnitError::IotlbOutside(iotlb));
    }
    let status = u.read32(GSTS);
    if status & TRANSLATION_ENABLE != 0 {
        command(
            u,
            TRANSLATION_ENABLE,
            false,
            "disabling the firmware's translation",
        )?;
    }
    if status & QUEUED_INVALIDATION != 0 {
        command(
            u,
            QUEUED_INVALIDATION,
            false,
            "disabling queued invalidation",
        )?;
    }
    if caps.has_protected_memory() && u.read32(PMEN) & PMEN_EPM != 0 {
        u.write32(PMEN, 0);
        wait("disabling protected memory", || {
            u.read32(PMEN) & PMEN_PRS == 0
        })?;
    }
    u.write64(RTADDR, root);
    command(u, SET_ROOT_TABLE_POINTER, true, "setting the root table")?;
    if caps.needs_write_buffer_flush() {
        // WBF is a command whose status (WBFS) clears when it is done.
        let states = u.read32(GSTS) & PERSISTENT;
        u.write32(GCMD, states | WRITE_BUFFER_FLUSH);
        wait("the write-buffer flush", || {
            u.read32(GSTS) & WRITE_BUFFER_FLUSH == 0
        })?;
    }
    u.write64(CCMD, CCMD_ICC | CCMD_GLOBAL);
    wait("the context-cache invalidation", || {
        u.read64(CCMD) & CCMD_ICC == 0
    })?;
    u.write64(iotlb, IOTLB_IVT | IOTLB_GLOBAL | caps.iotlb_drains());
    wait("the IOTLB invalidation", || {
        u.read64(iotlb) & IOTLB_IVT == 0
    })?;
    command(u, TRANSLATION_ENABLE, true, "enabling translation")
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// A unit as the spec describes its registers: commands take effect
    /// at once (or never, with `stuck`), and every write is logged.
    pub struct ModelUnit {
        pub cap: u64,
        pub ecap: u64,
        pub gsts: u32,
        pub pmen: u32,
        pub rtaddr: u64,
        /// The root table the unit latched with SRTP.
        pub root_in_use: Option<u64>,
        pub writes: Vec<(u32, u64)>,
        /// A GCMD bit the unit never acknowledges.
        pub stuck: u32,
        pub context_invalidations: u32,
        pub iotlb_invalidations: u32,
    }

    /// CAP of a unit: SAGAW 39 and 48 bits, 2 MiB and 1 GiB pages,
    /// RWBF, read and write drains; ECAP: coherent, IOTLB registers at 0x100.
    pub const CAP: u64 = 0b110 << 8 | 0b11 << 34 | 1 << 4 | 0b11 << 54;
    pub const ECAP: u64 = 1 | 0x10 << 8;

    impl Default for ModelUnit {
        fn default() -> Self {
            Self::new()
        }
    }

    impl ModelUnit {
        pub fn new() -> Self {
            ModelUnit {
                cap: CAP,
                ecap: ECAP,
                gsts: 0,
                pmen: 0,
                rtaddr: 0,
                root_in_use: None,
                writes: Vec::new(),
                stuck: 0,
                context_invalidations: 0,
                iotlb_invalidations: 0,
            }
        }
        fn iotlb(&self) -> u32 {
            Caps {
                cap: self.cap,
                ecap: self.ecap,
            }
            .iotlb_register()
        }
    }

    impl UnitRegisters for ModelUnit {
        fn size(&self) -> u32 {
            0x1000
        }
        fn read32(&mut self, offset: u32) -> u32 {
            match offset {
                GSTS => self.gsts,
                PMEN => self.pmen,
                _ => panic!("32-bit read of {offset:#x}"),
            }
        }
        fn write32(&mut self, offset: u32, value: u32) {
            self.writes.push((offset, value as u64));
            match offset {
                GCMD => {
                    use command::*;
                    let keep = PERSISTENT & !(TRANSLATION_ENABLE | QUEUED_INVALIDATION);
                    assert_eq!(value & keep, self.gsts & keep, "other states written back");
                    let one_shot = value & (SET_ROOT_TABLE_POINTER | WRITE_BUFFER_FLUSH);
                    assert!(one_shot.count_ones() <= 1, "one command per write");
                    if value & SET_ROOT_TABLE_POINTER != 0
                        && self.stuck & SET_ROOT_TABLE_POINTER == 0
                    {
                        self.root_in_use = Some(self.rtaddr);
                        self.gsts |= SET_ROOT_TABLE_POINTER;
                    }
                    for state in [TRANSLATION_ENABLE, QUEUED_INVALIDATION] {
                        if self.stuck & state == 0 {
                            self.gsts = self.gsts & !state | value & state;
                        }
                    }
                    if value & WRITE_BUFFER_FLUSH != 0 {
                        self.gsts |= self.stuck & WRITE_BUFFER_FLUSH;
                    }
                }
                PMEN => self.pmen = value,
                _ => panic!("32-bit write of {offset:#x}"),
            }
        }
        fn read64(&mut self, offset: u32) -> u64 {
            match offset {
                super::CAP => self.cap,
                super::ECAP => self.ecap,
                CCMD | RTADDR => 0,
                o if o == self.iotlb() => 0,
                _ => panic!("64-bit read of {offset:#x}"),
            }
        }
        fn write64(&mut self, offset: u32, value: u64) {
            self.writes.push((offset, value));
            match offset {
                RTADDR => self.rtaddr = value,
                CCMD => {
                    assert!(self.root_in_use.is_some(), "invalidate after SRTP");
                    self.context_invalidations += 1
                }
                o if o == self.iotlb() => self.iotlb_invalidations += 1,
                _ => panic!("64-bit write of {offset:#x}"),
            }
        }
    }

    #[test]
    fn register_layout_is_the_specs() {
        // §11.4: offsets; §11.4.4: GCMD.TE bit 31, SRTP bit 30, WBF 27.
        assert_eq!(
            (super::CAP, super::ECAP, GCMD, GSTS, RTADDR, CCMD),
            (8, 0x10, 0x18, 0x1c, 0x20, 0x28)
        );
        assert_eq!(command::TRANSLATION_ENABLE, 0x8000_0000);
        assert_eq!(command::SET_ROOT_TABLE_POINTER, 0x4000_0000);
        assert_eq!(command::WRITE_BUFFER_FLUSH, 0x0800_0000);
        assert_eq!(CCMD_ICC | CCMD_GLOBAL, 0xa000_0000_0000_0000);
        assert_eq!(
            IOTLB_IVT | IOTLB_GLOBAL | IOTLB_DRAIN_READS | IOTLB_DRAIN_WRITES,
            0x9003_0000_0000_0000
        );
        // CAP and ECAP as Linux logs them for a client platform's unit
        // ("cap 1c0000c40660462 ecap 19e2ff0505e").
        let c = Caps {
            cap: 0x1c0_000c_4066_0462,
            ecap: 0x19e_2ff0_505e,
        };
        assert!(c.four_level() && !c.three_level(), "SAGAW 0b00100");
        assert!(c.pages_2m() && c.pages_1g(), "SLLPS 0b11");
        assert!(!c.coherent() && !c.needs_write_buffer_flush());
        assert_eq!(
            c.iotlb_drains(),
            IOTLB_DRAIN_READS | IOTLB_DRAIN_WRITES,
            "DRD, DWD"
        );
        assert_eq!(c.iotlb_register(), 0x500 + 8, "IRO 0x50");
    }

    #[test]
    fn enable_follows_the_spec_order() {
        let mut u = ModelUnit::new();
        enable(&mut u, 0x1234_5000).unwrap();
        assert_eq!(u.root_in_use, Some(0x1234_5000));
        assert_eq!(
            u.gsts & command::TRANSLATION_ENABLE,
            command::TRANSLATION_ENABLE
        );
        assert_eq!((u.context_invalidations, u.iotlb_invalidations), (1, 1));
        let order: Vec<(u32, u64)> = u.writes.clone();
        assert_eq!(
            order,
            [
                (RTADDR, 0x1234_5000),
                (GCMD, 0x4000_0000),
                (GCMD, 0x0800_0000),
                (CCMD, CCMD_ICC | CCMD_GLOBAL),
                (0x108, 0x9003_0000_0000_0000),
                (GCMD, 0x8000_0000),
            ]
        );
    }

    #[test]
    fn drains_only_where_the_unit_has_them() {
        let mut u = ModelUnit::new();
        u.cap &= !(0b11 << 54);
        enable(&mut u, 0x8000).unwrap();
        assert!(u.writes.contains(&(0x108, 0x9000_0000_0000_0000)));
    }

    #[test]
    fn firmware_state_is_undone_first_and_kept_states_survive() {
        let mut u = ModelUnit::new();
        u.cap |= 1 << 5; // PLMR
        u.gsts = command::TRANSLATION_ENABLE | command::QUEUED_INVALIDATION | 1 << 25; // + IRES
        u.pmen = PMEN_EPM | PMEN_PRS;
        u.cap &= !(1 << 4);
        enable(&mut u, 0x8000).unwrap();
        assert_eq!(
            u.writes[0],
            (GCMD, (command::QUEUED_INVALIDATION | 1 << 25) as u64)
        );
        assert_eq!(u.writes[1], (GCMD, 1 << 25), "QI off, IRE kept");
        assert_eq!(u.writes[2], (PMEN, 0));
        assert_eq!(u.pmen, 0);
        assert_eq!(
            u.writes.last(),
            Some(&(GCMD, (command::TRANSLATION_ENABLE | 1 << 25) as u64))
        );
    }

    #[test]
    fn a_unit_that_never_answers_is_an_error() {
        for (bit, step) in [
            (command::SET_ROOT_TABLE_POINTER, "setting the root table"),
            (command::WRITE_BUFFER_FLUSH, "the write-buffer flush"),
            (command::TRANSLATION_ENABLE, "enabling translation"),
        ] {
            let mut u = ModelUnit::new();
            u.stuck = bit;
            assert_eq!(enable(&mut u, 0x8000), Err(UnitError::Timeout(step)));
        }
        let mut u = ModelUnit::new();
        u.ecap |= 0x3ff << 8;
        assert_eq!(enable(&mut u, 0x8000), Err(UnitError::IotlbOutside(0x3ff8)));
        assert!(u.writes.is_empty());
    }
}
