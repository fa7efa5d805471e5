//! Which MSR and I/O-port accesses of the cloud VM exit, and what L0 answers.
//!
//! L1 owns the machine's devices and most MSRs by pass-through. L0 traps only:
//! IA32_FEATURE_CONTROL and the VMX capability MSRs (VMX is L0's to give),
//! the MTRRs (with EPT the guest's MTRRs have no effect on its own memory
//! types, SDM Vol. 3C 29.3.7.2, but the real ones govern L0's accesses,
//! so L1 gets a shadow copy), the microcode-update trigger, the
//! performance-monitoring and trace MSRs (`perfmon::WITHHELD`: #GP), and
//! the writes of IA32_XSS and IA32_APIC_BASE, checked before they go to
//! the CPU (`cpu_write_allowed`).

use crate::vmx::caps::{
    FEATURE_CONTROL_LOCKED, FEATURE_CONTROL_VMX_OUTSIDE_SMX, IA32_FEATURE_CONTROL,
};

pub const IA32_BIOS_UPDT_TRIG: u32 = 0x79;
pub const IA32_MTRRCAP: u32 = 0xfe;
pub const IA32_MTRR_PHYSBASE0: u32 = 0x200;
pub const IA32_MTRR_FIX64K_00000: u32 = 0x250;
pub const IA32_MTRR_FIX16K_80000: u32 = 0x258;
pub const IA32_MTRR_FIX16K_A0000: u32 = 0x259;
pub const IA32_MTRR_FIX4K_C0000: u32 = 0x268;
pub const IA32_MTRR_FIX4K_F8000: u32 = 0x26f;
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const IA32_EFER: u32 = 0xc000_0080;
pub const IA32_PAT: u32 = 0x277;
pub const IA32_APIC_BASE: u32 = 0x1b;
/// IA32_APIC_BASE[51:12]: where the xAPIC's register page is.
const APIC_BASE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;
pub use crate::nested::caps::VMX_MSRS;

/// A 4 KiB VMX MSR bitmap (SDM Vol. 3C 25.6.9): read-low, read-high,
/// write-low, write-high, 1 KiB each; low = 0..0x1fff, high = 0xc000_0000..0xc000_1fff.
pub struct MsrBitmap(pub [u8; 4096]);

impl MsrBitmap {
    pub fn new() -> Self {
        MsrBitmap([0; 4096])
    }
    fn bit(msr: u32) -> Option<usize> {
        match msr {
            0..=0x1fff => Some(msr as usize),
            0xc000_0000..=0xc000_1fff => Some(1024 * 8 + (msr - 0xc000_0000) as usize),
            _ => None,
        }
    }
    /// Makes reads (and with `write`, writes) of `msr` exit. MSRs outside
    /// both ranges always exit.
    pub fn intercept(&mut self, msr: u32, read: bool, write: bool) {
        if let Some(b) = Self::bit(msr) {
            if read {
                self.0[b / 8] |= 1 << (b % 8);
            }
            if write {
                self.0[2048 + b / 8] |= 1 << (b % 8);
            }
        }
    }
    pub fn intercepts(&self, msr: u32, write: bool) -> bool {
        match Self::bit(msr) {
            Some(b) => self.0[if write { 2048 } else { 0 } + b / 8] & (1 << (b % 8)) != 0,
            None => true,
        }
    }
}

impl Default for MsrBitmap {
    fn default() -> Self {
        Self::new()
    }
}

/// The two 4 KiB I/O bitmaps (SDM Vol. 3C 25.6.4): A for ports 0..0x7fff, B above.
pub struct IoBitmaps(pub [u8; 8192]);

impl IoBitmaps {
    pub fn new() -> Self {
        IoBitmaps([0; 8192])
    }
    pub fn intercept(&mut self, port: u16) {
        self.0[port as usize / 8] |= 1 << (port % 8);
    }
    /// Whether an access of `size` bytes at `port` exits: any of its bytes
    /// trapped (SDM 26.1.3; a wrap past 0xffff always exits).
    pub fn intercepts(&self, port: u16, size: u8) -> bool {
        (0..size as u32).any(|i| {
            let p = port as u32 + i;
            p > 0xffff || self.0[p as usize / 8] & (1 << (p % 8)) != 0
        })
    }
}

impl Default for IoBitmaps {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether L0 emulates this MSR for its guests (it never reaches the CPU).
pub fn emulated_by_l0(msr: u32) -> bool {
    msr == IA32_FEATURE_CONTROL
        || msr == IA32_BIOS_UPDT_TRIG
        || VMX_MSRS.contains(&msr)
        || is_mtrr(msr)
        || super::perfmon::is_withheld_msr(msr)
}

fn is_mtrr(msr: u32) -> bool {
    matches!(msr, 0x200..=0x20f | IA32_MTRR_FIX64K_00000 | IA32_MTRR_FIX16K_80000 | IA32_MTRR_FIX16K_A0000
        | IA32_MTRR_FIX4K_C0000..=IA32_MTRR_FIX4K_F8000 | IA32_MTRR_DEF_TYPE)
}

/// The MSR bitmap for the cloud VM.
pub fn l1_msr_bitmap() -> MsrBitmap {
    let mut b = MsrBitmap::new();
    b.intercept(IA32_FEATURE_CONTROL, true, true);
    for m in VMX_MSRS {
        b.intercept(m, true, true);
    }
    for m in (0x200..=0x20f)
        .chain([
            IA32_MTRR_FIX64K_00000,
            IA32_MTRR_FIX16K_80000,
            IA32_MTRR_FIX16K_A0000,
        ])
        .chain(IA32_MTRR_FIX4K_C0000..=IA32_MTRR_FIX4K_F8000)
        .chain([IA32_MTRR_DEF_TYPE])
    {
        b.intercept(m, true, true);
    }
    b.intercept(IA32_BIOS_UPDT_TRIG, false, true);
    for m in super::perfmon::withheld_msrs() {
        b.intercept(m, true, true);
    }
    // Written to the CPU once checked (cpu_write_allowed).
    b.intercept(super::perfmon::IA32_XSS, false, true);
    b.intercept(IA32_APIC_BASE, false, true);
    b
}

/// Whether a guest's WRMSR that L0 carries out on the CPU may go ahead
/// (the withheld MSRs never get this far); `current` reads the MSR.
/// IA32_XSS may not name withheld components (vcpu/perfmon.rs).
/// IA32_APIC_BASE may switch the APIC's mode but not move its register
/// page: L0 watches the INIT and start-up IPIs L1 sends through that page
/// (machine/ap_wait.rs), and a page moved elsewhere would escape it. No
/// OS moves it; the SDM allows it, so this is where L0 differs.
pub fn cpu_write_allowed(msr: u32, value: u64, current: impl FnOnce() -> Option<u64>) -> bool {
    match msr {
        super::perfmon::IA32_XSS => super::perfmon::xss_allowed(value),
        IA32_APIC_BASE => current().is_some_and(|c| (c ^ value) & APIC_BASE_ADDRESS == 0),
        _ => true,
    }
}

/// Valid MTRR memory types (SDM Vol. 3A 12.11.4).
fn valid_type(t: u64) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// The guest's MTRRs: what it wrote, validated as the CPU would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtrrShadow {
    /// Variable pairs (base, mask), then the 11 fixed-range MSRs, then DEF_TYPE.
    pub variable: [u64; 16],
    pub fixed: [u64; 11],
    pub def_type: u64,
    /// Number of variable pairs (IA32_MTRRCAP[7:0], at most 8).
    pub vcnt: u32,
    pub maxphyaddr: u8,
}

fn fixed_index(msr: u32) -> Option<usize> {
    match msr {
        IA32_MTRR_FIX64K_00000 => Some(0),
        IA32_MTRR_FIX16K_80000 => Some(1),
        IA32_MTRR_FIX16K_A0000 => Some(2),
        IA32_MTRR_FIX4K_C0000..=IA32_MTRR_FIX4K_F8000 => {
            Some(3 + (msr - IA32_MTRR_FIX4K_C0000) as usize)
        }
        _ => None,
    }
}

/// Why an MSR access gets #GP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrFault;

impl MtrrShadow {
    /// Starts from the values `read` returns for the real MSRs.
    pub fn capture(mtrrcap: u64, maxphyaddr: u8, mut read: impl FnMut(u32) -> u64) -> Self {
        let vcnt = (mtrrcap as u32 & 0xff).min(8);
        let mut s = MtrrShadow {
            variable: [0; 16],
            fixed: [0; 11],
            def_type: read(IA32_MTRR_DEF_TYPE),
            vcnt,
            maxphyaddr,
        };
        for i in 0..2 * vcnt as usize {
            s.variable[i] = read(IA32_MTRR_PHYSBASE0 + i as u32);
        }
        if mtrrcap & (1 << 8) != 0 {
            for (i, v) in s.fixed.iter_mut().enumerate() {
                let msr = match i {
                    0 => IA32_MTRR_FIX64K_00000,
                    1 => IA32_MTRR_FIX16K_80000,
                    2 => IA32_MTRR_FIX16K_A0000,
                    _ => IA32_MTRR_FIX4K_C0000 + (i - 3) as u32,
                };
                *v = read(msr);
            }
        }
        s
    }

    pub fn read(&self, msr: u32) -> Result<u64, MsrFault> {
        if let Some(i) = fixed_index(msr) {
            return Ok(self.fixed[i]);
        }
        match msr {
            IA32_MTRR_DEF_TYPE => Ok(self.def_type),
            0x200..=0x20f if msr - 0x200 < 2 * self.vcnt => {
                Ok(self.variable[(msr - 0x200) as usize])
            }
            _ => Err(MsrFault),
        }
    }

    pub fn write(&mut self, msr: u32, v: u64) -> Result<(), MsrFault> {
        let phys_mask = !((1u64 << self.maxphyaddr) - 1);
        if let Some(i) = fixed_index(msr) {
            if (0..8).any(|b| !valid_type(v >> (8 * b) & 0xff)) {
                return Err(MsrFault);
            }
            self.fixed[i] = v;
            return Ok(());
        }
        match msr {
            IA32_MTRR_DEF_TYPE if v & !0xcff == 0 && valid_type(v & 0xff) => self.def_type = v,
            0x200..=0x20f if msr - 0x200 < 2 * self.vcnt => {
                let is_base = msr.is_multiple_of(2);
                let reserved = if is_base {
                    phys_mask | 0xf00
                } else {
                    phys_mask | 0x7ff
                };
                if v & reserved != 0 || (is_base && !valid_type(v & 0xff)) {
                    return Err(MsrFault);
                }
                self.variable[(msr - 0x200) as usize] = v;
            }
            _ => return Err(MsrFault),
        }
        Ok(())
    }
}

/// The answer to a trapped RDMSR, or #GP.
pub fn read(msr: u32, vmx_offered: bool, mtrr: &MtrrShadow) -> Result<u64, MsrFault> {
    match msr {
        // Locked: L1 cannot change it; VMX outside SMX only if offered.
        IA32_FEATURE_CONTROL => Ok(FEATURE_CONTROL_LOCKED
            | if vmx_offered {
                FEATURE_CONTROL_VMX_OUTSIDE_SMX
            } else {
                0
            }),
        m if is_mtrr(m) => mtrr.read(m),
        // Capability MSRs of a VMX L0 does not offer do not exist, nor
        // do the withheld performance-monitoring and trace MSRs.
        _ => Err(MsrFault),
    }
}

/// What a trapped WRMSR does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Done,
    /// Accepted and ignored (microcode updates are the platform's business).
    Ignored,
}

pub fn write(msr: u32, value: u64, mtrr: &mut MtrrShadow) -> Result<WriteOutcome, MsrFault> {
    match msr {
        IA32_BIOS_UPDT_TRIG => Ok(WriteOutcome::Ignored),
        m if is_mtrr(m) => mtrr.write(m, value).map(|_| WriteOutcome::Done),
        // IA32_FEATURE_CONTROL is locked; VMX capability MSRs are read-only;
        // performance-monitoring and trace MSRs are withheld.
        _ => Err(MsrFault),
    }
}

/// The ports L0 takes from L1: its own (`vcpu::l0_ports`: the management
/// UART, the BMC interfaces) and the emulator's shutdown port.
pub fn l1_io_bitmap(ports: &super::l0_ports::L0Ports) -> IoBitmaps {
    let mut io = IoBitmaps::new();
    for p in ports.all() {
        io.intercept(p);
    }
    io.intercept(crate::machine::shutdown::SHUTDOWN_PORT);
    io
}

/// The ports L0 takes from every L2, whatever L1's bitmaps say: the user
/// VMs' COM1-COM4 (their shadow UARTs), L0's own as for L1 (wherever the
/// management UART is, and with shadow devices off) and the emulator's
/// shutdown port.
pub fn l2_io_bitmap(ports: &super::l0_ports::L0Ports) -> IoBitmaps {
    let mut io = l1_io_bitmap(ports);
    for base in crate::shadow::COM_PORTS {
        for p in base..base + 8 {
            io.intercept(p);
        }
    }
    io
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::l0_ports::L0Ports;

    #[test]
    fn io_bitmaps_take_l0s_ports_only() {
        let l1 = l1_io_bitmap(&L0Ports::new(Some(0x2f8)));
        assert!(l1.intercepts(0x2f8, 1) && l1.intercepts(0x2ff, 1));
        assert!(
            l1.intercepts(0xca2, 1) && l1.intercepts(0xca3, 1),
            "IPMI KCS"
        );
        assert!(l1.intercepts(0x8900, 2));
        assert!(!l1.intercepts(0x3f8, 1), "L1's own COM1 is L1's");
        assert!(!l1.intercepts(0x2f7, 1) && !l1.intercepts(0x300, 1));
        assert!(!l1_io_bitmap(&L0Ports::new(None)).intercepts(0x2f8, 1));
        let l2 = l2_io_bitmap(&L0Ports::new(Some(0x2f0)));
        for base in [0x3f8u16, 0x2f8, 0x3e8, 0x2e8, 0x2f0] {
            assert!((base..base + 8).all(|p| l2.intercepts(p, 1)), "{base:#x}");
        }
        assert!(l2.intercepts(0x8900, 1) && !l2.intercepts(0x80, 1));
        assert!(l2.intercepts(0xca2, 1) && l2.intercepts(0xe4, 1), "IPMI");
    }

    fn shadow() -> MtrrShadow {
        MtrrShadow::capture(
            0x508,
            39,
            |m| if m == IA32_MTRR_DEF_TYPE { 0xc06 } else { 0 },
        )
    }

    #[test]
    fn bitmap_layout() {
        let b = l1_msr_bitmap();
        assert!(b.intercepts(0x3a, false) && b.intercepts(0x3a, true));
        assert!(b.intercepts(0x480, false) && b.intercepts(0x492, true));
        assert!(!b.intercepts(0x493, false));
        assert!(!b.intercepts(IA32_EFER, false) && !b.intercepts(IA32_EFER, true));
        assert!(b.intercepts(0x79, true) && !b.intercepts(0x79, false));
        assert!(b.intercepts(0x2ff, true) && !b.intercepts(0xfe, false));
        assert!(
            b.intercepts(0x4000_0000, false),
            "outside both ranges always exits"
        );
        // Byte positions: read-low bit 0x3a at byte 7, write-high for 0xc0000080 at 3072 + 16.
        let mut x = MsrBitmap::new();
        x.intercept(0xc000_0080, false, true);
        assert_eq!(x.0[3072 + 0x80 / 8], 1);
        x.intercept(0x3a, true, false);
        assert_eq!(x.0[7], 1 << 2);
    }

    #[test]
    fn io_bitmaps() {
        let mut io = IoBitmaps::new();
        io.intercept(0x2f8);
        io.intercept(0x8900);
        assert!(io.intercepts(0x2f8, 1));
        assert!(
            io.intercepts(0x2f6, 4),
            "a wide access touching a trapped port"
        );
        assert!(!io.intercepts(0x2f9, 1));
        assert!(io.intercepts(0x8900, 2));
        assert_eq!(io.0[0x1000 + (0x8900 - 0x8000) / 8], 1);
        assert!(io.intercepts(0xffff, 2), "wrap-around");
    }

    #[test]
    fn feature_control_is_locked() {
        let m = shadow();
        assert_eq!(read(0x3a, false, &m), Ok(1));
        assert_eq!(read(0x3a, true, &m), Ok(5));
        assert_eq!(read(0x480, false, &m), Err(MsrFault));
        let mut m = shadow();
        assert_eq!(write(0x3a, 5, &mut m), Err(MsrFault));
        assert_eq!(write(0x481, 0, &mut m), Err(MsrFault));
        assert_eq!(write(0x79, 0x1234, &mut m), Ok(WriteOutcome::Ignored));
    }

    #[test]
    fn perfmon_and_trace_msrs_exit_and_fault() {
        let b = l1_msr_bitmap();
        let mut m = shadow();
        for msr in [0x600, 0x570, 0x3f1, 0x38f, 0xc1, 0x1c8, 0x14ce, 0x161f] {
            assert!(
                b.intercepts(msr, false) && b.intercepts(msr, true),
                "{msr:#x}"
            );
            assert!(emulated_by_l0(msr), "{msr:#x}: an L2's access is L0's too");
            assert_eq!(read(msr, true, &m), Err(MsrFault), "{msr:#x}");
            assert_eq!(write(msr, 0, &mut m), Err(MsrFault), "{msr:#x}");
        }
        assert!(!b.intercepts(0x1d9, true), "DEBUGCTL is L1's");
        assert!(
            b.intercepts(0xda0, true) && !b.intercepts(0xda0, false),
            "IA32_XSS writes"
        );
        assert!(!emulated_by_l0(0xda0), "the CPU's, once checked");
        assert!(b.intercepts(IA32_APIC_BASE, true) && !b.intercepts(IA32_APIC_BASE, false));
        assert!(!emulated_by_l0(IA32_APIC_BASE));
    }

    #[test]
    fn mtrr_shadow_validates_like_the_cpu() {
        let mut m = shadow();
        assert_eq!(read(0x2ff, false, &m), Ok(0xc06));
        write(0x200, 0x8000_0006, &mut m).unwrap();
        write(0x201, 0x7f_f000_0800, &mut m).unwrap();
        assert_eq!(m.read(0x201), Ok(0x7f_f000_0800));
        assert_eq!(
            write(0x200, 0x8000_0002, &mut m),
            Err(MsrFault),
            "type 2 is reserved"
        );
        assert_eq!(
            write(0x200, 1 << 40, &mut m),
            Err(MsrFault),
            "above MAXPHYADDR"
        );
        assert_eq!(write(0x210, 0, &mut m), Err(MsrFault), "only 8 pairs");
        assert_eq!(write(0x250, 0x0606_0606_0606_0607, &mut m), Err(MsrFault));
        write(0x250, 0x0606_0606_0606_0606, &mut m).unwrap();
        assert_eq!(read(0x250, false, &m), Ok(0x0606_0606_0606_0606));
        assert_eq!(write(0x2ff, 0x1006, &mut m), Err(MsrFault));
        assert_eq!(m.def_type, 0xc06, "unchanged after a fault");
    }

    #[test]
    fn the_apic_may_change_mode_but_not_move() {
        let now = || Some(0xfee0_0900); // enabled, xAPIC, boot CPU
        assert!(
            cpu_write_allowed(IA32_APIC_BASE, 0xfee0_0d00, now),
            "x2APIC on"
        );
        assert!(
            cpu_write_allowed(IA32_APIC_BASE, 0xfee0_0100, now),
            "disabled"
        );
        assert!(
            !cpu_write_allowed(IA32_APIC_BASE, 0xfed0_0900, now),
            "moved"
        );
        assert!(
            !cpu_write_allowed(IA32_APIC_BASE, 0x1_fee0_0900, now),
            "moved up"
        );
        assert!(
            !cpu_write_allowed(IA32_APIC_BASE, 0xfee0_0900, || None),
            "unreadable"
        );
        assert!(
            cpu_write_allowed(0x10, 5, || None),
            "others are not checked here"
        );
    }
}
