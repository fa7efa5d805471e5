//! The test hypervisor's per-scenario state and its set-up.

use core::fmt::Write as _;
use core::sync::atomic::{AtomicU8, Ordering};

use super::caps::{self, Caps};
use super::cpu;
use super::ept::{self, Ept, Size, Tables};
use super::fields::*;
use super::l2::{self, Mode};
use super::mem::{self, pg};
use super::vm::Vm;
use super::vmcs::{self, Controls};
use super::vmx::{self, VmFail, VmResult};
use crate::check::Checks;
use crate::io::cpuid;

static FORCED_MODE: AtomicU8 = AtomicU8::new(0);

/// Applies `l2=paged` (EPT without unrestricted guest: L2 pages) or
/// `l2=noept` (no EPT: L2's page tables map it onto L1's pages) from the
/// command line; anything else keeps the mode the capabilities allow.
pub fn force_l2_mode(arg: Option<&str>) {
    let v = match arg {
        Some("paged") => 1,
        Some("noept") => 2,
        _ => 0,
    };
    FORCED_MODE.store(v, Ordering::Relaxed);
}

/// What runs below this guest, as CPUID tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Below {
    /// CPUID.1:ECX[31] set and "L0Hypervisor" at leaf 0x40000000.
    L0,
    /// Some other hypervisor announces itself.
    Other,
    /// No hypervisor bit: the (emulated) hardware itself, e.g. Bochs.
    Native,
}

pub fn below() -> Below {
    if cpuid(1, 0)[2] & (1 << 31) == 0 {
        return Below::Native;
    }
    let [_, b, c, d] = cpuid(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&b.to_le_bytes());
    sig[4..8].copy_from_slice(&c.to_le_bytes());
    sig[8..].copy_from_slice(&d.to_le_bytes());
    if &sig == b"L0Hypervisor" {
        Below::L0
    } else {
        Below::Other
    }
}

/// A check that only means something under L0: skipped natively.
pub fn l0_alive(c: &mut Checks) {
    if below() == Below::L0 {
        let [_, b, _, _] = cpuid(0x4000_0000, 0);
        c.check(
            "l0-alive",
            b == u32::from_le_bytes(*b"L0Hy"),
            format_args!("leaf 0x40000000 EBX {b:#x}"),
        );
    } else {
        c.skip("l0-alive", format_args!("running natively, no L0 below"));
    }
}

/// EPT12 paging structures from the pool pages.
pub struct PoolTables {
    next: usize,
}

impl Tables for PoolTables {
    fn alloc(&mut self) -> u64 {
        assert!(self.next < pg::EPT_POOL_PAGES, "EPT12 pool exhausted");
        let pa = mem::page(pg::EPT_POOL + self.next);
        self.next += 1;
        mem::zero_page(pa);
        pa
    }
    fn read(&self, pa: u64) -> u64 {
        mem::rd64(pa)
    }
    fn write(&mut self, pa: u64, v: u64) {
        mem::wr64(pa, v)
    }
}

/// The test hypervisor's state for one scenario.
pub struct Hv {
    pub caps: Caps,
    pub mode: Mode,
    pub tables: PoolTables,
    /// The standard EPT12 (L2's layout onto its pages), when EPT is offered.
    pub ept: Option<Ept>,
    pub ctls: Controls,
}

/// Formats into a fixed buffer (the guest has no allocator).
pub struct Msg {
    buf: [u8; 192],
    len: usize,
}

impl Msg {
    pub fn new() -> Msg {
        Msg {
            buf: [0; 192],
            len: 0,
        }
    }
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl core::fmt::Display for Msg {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for Msg {
    fn default() -> Self {
        Msg::new()
    }
}

impl core::fmt::Write for Msg {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// `format!` into a [`Msg`].
#[macro_export]
macro_rules! msg {
    ($($arg:tt)*) => {{
        let mut m = $crate::hv::Msg::new();
        let _ = core::fmt::Write::write_fmt(&mut m, format_args!($($arg)*));
        m
    }};
}

impl Hv {
    /// Everything before VMXON: finds out what is below, whether VMX is
    /// offered (if not, every check in `names` fails with that reason),
    /// reads the capabilities, installs L1's GDT/TSS, masks the PICs and
    /// lays out L2's memory. Does not set CR4.VMXE.
    pub fn prepare(c: &mut Checks, names: &[&str]) -> Option<Hv> {
        match below() {
            Below::L0 => {
                crate::println!("guest: running under L0 (\"L0Hypervisor\" at CPUID 0x40000000)")
            }
            Below::Other => crate::println!("guest: running under a hypervisor that is not L0"),
            Below::Native => {
                crate::println!("guest: no hypervisor bit in CPUID.1:ECX[31]: running natively")
            }
        }
        let fail_all = |c: &mut Checks, why: &str| {
            for n in names {
                c.check(n, false, format_args!("{why}"));
            }
        };
        if cpuid(1, 0)[2] & (1 << 5) == 0 {
            fail_all(c, "VMX not offered (CPUID.1:ECX[5] clear)");
            return None;
        }
        // SDM 24.7: VMXON needs IA32_FEATURE_CONTROL locked with bit 2
        // (VMX outside SMX). Lock it ourselves if the firmware did not.
        let mut fc = 0;
        // SAFETY (the MSR accesses below): IA32_FEATURE_CONTROL and the VMX
        // capability MSRs; a fault is caught and turned into a failed check.
        let fault = crate::faults::expect_fault(2, || {
            fc = unsafe { cpu::rdmsr(caps::IA32_FEATURE_CONTROL) }
        });
        if fault.is_none() && fc & 1 == 0 {
            let _ = crate::faults::expect_fault(2, || unsafe {
                cpu::wrmsr(caps::IA32_FEATURE_CONTROL, fc | 5)
            });
            let _ = crate::faults::expect_fault(2, || {
                fc = unsafe { cpu::rdmsr(caps::IA32_FEATURE_CONTROL) }
            });
        }
        if fault.is_some() || fc & 5 != 5 {
            fail_all(
                c,
                msg!("VMX not offered: IA32_FEATURE_CONTROL {fc:#x} (fault {fault:?})").as_str(),
            );
            return None;
        }
        let mut bad_msr = None;
        let caps = Caps::read(
            |m| {
                let mut v = 0;
                // SAFETY: as above.
                if crate::faults::expect_fault(2, || v = unsafe { cpu::rdmsr(m) }).is_some() {
                    bad_msr.get_or_insert(m);
                }
                v
            },
            cpu::maxphyaddr(),
        );
        if let Some(m) = bad_msr {
            fail_all(
                c,
                msg!("VMX not offered: capability MSR {m:#x} faults").as_str(),
            );
            return None;
        }
        crate::println!(
            "guest: VMX basic {:#x} pin {:#x}/{:#x} proc {:#x}/{:#x} proc2 {:#x}/{:#x} exit {:#x}/{:#x} entry {:#x}/{:#x}",
            caps.basic,
            caps.pin.must1,
            caps.pin.may1,
            caps.proc.must1,
            caps.proc.may1,
            caps.proc2.must1,
            caps.proc2.may1,
            caps.exit.must1,
            caps.exit.may1,
            caps.entry.must1,
            caps.entry.may1
        );
        crate::println!(
            "guest: VMX misc {:#x} cr0 fixed {:#x}/{:#x} cr4 fixed {:#x}/{:#x} ept/vpid {:#x} maxphyaddr {}",
            caps.misc,
            caps.cr0_fixed0,
            caps.cr0_fixed1,
            caps.cr4_fixed0,
            caps.cr4_fixed1,
            caps.ept_vpid,
            caps.maxphyaddr
        );
        let by_caps = if caps.unrestricted_guest() {
            Mode::Unpaged
        } else if caps.ept() {
            Mode::PagedEpt
        } else {
            Mode::PagedNoEpt
        };
        // `l2=paged` / `l2=noept` on the command line try the fallbacks on
        // a machine that would not need them.
        let mode = match (FORCED_MODE.load(Ordering::Relaxed), by_caps) {
            (1, Mode::Unpaged) => Mode::PagedEpt,
            (2, _) => Mode::PagedNoEpt,
            _ => by_caps,
        };
        crate::println!(
            "guest: L2 runs {mode:?}{}",
            if mode != by_caps {
                " (forced by the command line)"
            } else {
                ""
            }
        );
        cpu::install_gdt();
        cpu::mask_pic();
        l2::setup(mode);
        let ctls = vmcs::default_controls(&caps, mode);
        let mut hv = Hv {
            caps,
            mode,
            tables: PoolTables { next: 0 },
            ept: None,
            ctls,
        };
        if mode.ept() {
            let e = hv.new_ept(&[]);
            hv.ept = Some(e);
        }
        Some(hv)
    }

    /// Sets CR0/CR4 as VMX operation requires (FIXED0 bits, which include
    /// CR4.VMXE; SDM 24.8) and executes VMXON.
    pub fn enable(&self) -> VmResult {
        self.fix_cr0_cr4();
        let pa = mem::page(pg::VMXON);
        mem::zero_page(pa);
        mem::wr32(pa, self.caps.revision());
        // SAFETY: the VMXON region is our page with the revision identifier.
        unsafe { vmx::vmxon(pa) }
    }

    pub fn fix_cr0_cr4(&self) {
        // SAFETY: FIXED0 bits (PE, NE, PG, VMXE) are already set or harmless
        // in long mode; FIXED1 is not narrowed here.
        unsafe {
            cpu::set_cr0(cpu::cr0() | self.caps.cr0_fixed0);
            cpu::set_cr4(cpu::cr4() | self.caps.cr4_fixed0);
        }
    }

    /// A new EPT12 for L2's layout: every layout page onto its L1 page
    /// (RWX, 4 KiB), the 2 MiB page with a 2 MiB leaf when the caps offer
    /// one. `overrides` replaces the L1 page behind some L2 pages.
    pub fn new_ept(&mut self, overrides: &[(u64, u64)]) -> Ept {
        let mut e = Ept::new(&mut self.tables, self.caps.ept_memtype());
        for &a in l2::LAYOUT.iter() {
            let hpa = overrides
                .iter()
                .find(|o| o.0 == a)
                .map_or(l2::backing(a), |o| o.1);
            e.map(&mut self.tables, a, hpa, Size::K4, ept::RWX);
        }
        if self.caps.ept_2m() {
            e.map(&mut self.tables, l2::BIG, mem::big(), Size::M2, ept::RWX);
        } else {
            for i in 0..512 {
                e.map(
                    &mut self.tables,
                    l2::BIG + i * mem::PAGE,
                    mem::big() + i * mem::PAGE,
                    Size::K4,
                    ept::RWX,
                );
            }
        }
        e
    }

    /// A 64-bit L2 (`l2x`) in `slot` on VMCS `page`, starting at `rip`:
    /// the slot laid out with `p`, a new EPT12 of its own mapping the
    /// slot's pages (so each VM has its own EPT root), the default
    /// controls with the IA-32e mode guest entry control. The VMCS is
    /// left current. Needs EPT.
    #[allow(clippy::result_large_err)]
    pub fn vm64(
        &mut self,
        slot: usize,
        page: usize,
        rip: u64,
        p: &super::l2x::Params,
    ) -> Result<(Vm, Ept), Msg> {
        use super::l2x;
        if !self.mode.ept() {
            return Err(msg!("the 64-bit L2s need EPT (mode {:?})", self.mode));
        }
        if !self.caps.entry.can_set(entry::IA32E_MODE_GUEST) {
            return Err(msg!("the IA-32e mode guest entry control is not offered"));
        }
        l2x::setup(slot, p);
        let mut e = Ept::new(&mut self.tables, self.caps.ept_memtype());
        for &a in l2x::LAYOUT.iter() {
            e.map(
                &mut self.tables,
                a,
                l2x::backing(slot, a),
                Size::K4,
                ept::RWX,
            );
        }
        let pa = mem::page(page);
        vmcs::init_region(&self.caps, pa).map_err(|e| msg!("VMCLEAR: {e:?}"))?;
        let vm = Vm::new(pa);
        vm.load().map_err(|e| msg!("VMPTRLD: {e:?}"))?;
        let mut ctls = self.ctls;
        ctls.entry |= entry::IA32E_MODE_GUEST;
        let fill = || -> Result<(), (u32, VmFail)> {
            vmcs::write_host_state(&self.caps, cpu::cr3())?;
            vmcs::write_guest_state64(&self.caps, rip)?;
            vmcs::write_controls(&self.caps, &ctls)?;
            vmcs::w(EPT_POINTER, e.eptp(false))
        };
        fill().map_err(|(f, e)| msg!("VMWRITE {f:#x}: {e:?}"))?;
        Ok((vm, e))
    }

    /// The standard EPTP (A/D flags off).
    pub fn eptp(&self) -> u64 {
        self.ept.as_ref().map_or(0, |e| e.eptp(false))
    }

    /// Initializes VMCS `page` (a `pg::VMCS_*`), makes it current and fills
    /// it for an L2 that starts at `rip` with the default controls.
    // The error is a formatted line for a CHECK, once per set-up: its size
    // does not matter.
    #[allow(clippy::result_large_err)]
    pub fn vm(&self, page: usize, rip: u64) -> Result<Vm, Msg> {
        let pa = mem::page(page);
        vmcs::init_region(&self.caps, pa).map_err(|e| msg!("VMCLEAR: {e:?}"))?;
        let vm = Vm::new(pa);
        vm.load().map_err(|e| msg!("VMPTRLD: {e:?}"))?;
        self.fill(rip)
            .map_err(|(f, e)| msg!("VMWRITE {f:#x}: {e:?}"))?;
        Ok(vm)
    }

    /// Fills the current VMCS (host, guest, default controls, EPTP).
    pub fn fill(&self, rip: u64) -> Result<(), (u32, VmFail)> {
        vmcs::write_host_state(&self.caps, cpu::cr3())?;
        vmcs::write_guest_state(&self.caps, self.mode, rip)?;
        vmcs::write_controls(&self.caps, &self.ctls)?;
        if self.mode.ept() {
            vmcs::w(EPT_POINTER, self.eptp())?;
        }
        Ok(())
    }

    fn ctl_caps(&self, field: u32) -> caps::Ctl {
        match field {
            PIN_CONTROLS => self.caps.pin,
            PROC_CONTROLS => self.caps.proc,
            PROC2_CONTROLS => self.caps.proc2,
            EXIT_CONTROLS => self.caps.exit,
            ENTRY_CONTROLS => self.caps.entry,
            _ => panic!("{field:#x} is not a control field"),
        }
    }

    /// Sets and clears bits of a control field of the current VMCS, fitted
    /// to the capabilities; true if the result has exactly what was asked.
    /// Setting a secondary control also activates the secondary controls.
    pub fn ctl(&self, field: u32, set: u32, clear: u32) -> bool {
        if field == PROC2_CONTROLS && set != 0 && !self.ctl(PROC_CONTROLS, proc::SECONDARY, 0) {
            return false;
        }
        let cap = self.ctl_caps(field);
        let cur = vmx::rd(field) as u32;
        let v = cap.adjust((cur | set) & !clear);
        let _ = vmx::vmwrite(field, v as u64);
        v & set == set && v & clear == 0
    }

    /// Whether `bits` of control `field` can be 1.
    pub fn can(&self, field: u32, bits: u32) -> bool {
        if field == PROC2_CONTROLS && !self.caps.secondary() {
            return false;
        }
        self.ctl_caps(field).can_set(bits)
    }

    /// INVEPT for `eptp` with the narrowest type the caps offer.
    pub fn invept(&self, eptp: u64) -> VmResult {
        if self.caps.invept_type(1) {
            vmx::invept(1, eptp)
        } else if self.caps.invept_type(2) {
            vmx::invept(2, eptp)
        } else {
            Err(VmFail::Invalid)
        }
    }
}

/// Prints a line (used for informational output).
pub fn info(args: core::fmt::Arguments) {
    let mut m = Msg::new();
    let _ = m.write_fmt(args);
    crate::println!("guest: {}", m.as_str());
}

/// The usual start of a nested scenario: [`Hv::prepare`], then VMXON as
/// check `vmxon`. `None` (with every check failed and why) if VMX cannot
/// be used.
pub fn start(c: &mut Checks, names: &[&str]) -> Option<Hv> {
    let hv = Hv::prepare(c, names)?;
    let r = hv.enable();
    c.check("vmxon", r.is_ok(), format_args!("{r:?}"));
    if r.is_err() {
        for n in names.iter().filter(|n| **n != "vmxon") {
            c.check(n, false, format_args!("VMXON failed: {r:?}"));
        }
        return None;
    }
    Some(hv)
}

impl Hv {
    /// [`Hv::vm`] on VMCS A; a set-up failure fails `check`.
    pub fn fresh(&self, c: &mut Checks, check: &str, rip: u64) -> Option<Vm> {
        match self.vm(pg::VMCS_A, rip) {
            Ok(vm) => Some(vm),
            Err(m) => {
                c.check(
                    check,
                    false,
                    format_args!("setting up the VMCS: {}", m.as_str()),
                );
                None
            }
        }
    }

    /// Turns on L2 paging (32-bit, through `l2::PD`) in the current VMCS
    /// when L2 runs unpaged; paged modes already page.
    pub fn page_l2(&self) {
        if self.mode == Mode::Unpaged {
            let _ = vmx::vmwrite(GUEST_CR0, vmx::rd(GUEST_CR0) | 1 << 31 | 1);
            let _ = vmx::vmwrite(GUEST_CR3, l2::phys(self.mode, l2::PD));
        }
    }
}

/// Enters `vm`; the first exit must be `reason` with qualification `qual`
/// at `rip` with instruction length `len` (an exception exit has no
/// length: pass the instruction's own, L1 skips it); after L1 skips the
/// instruction, L2 must reach its VMCALL.
pub fn exit_then_vmcall(
    vm: &mut Vm,
    reason: u32,
    qual: u64,
    rip: u64,
    len: u64,
) -> (bool, Msg, Option<super::vm::Exit>) {
    let e = vm.enter();
    let Some(x) = e.exit().copied() else {
        return (false, msg!("{e}"), None);
    };
    let exc = reason == super::fields::reason::EXCEPTION_NMI;
    if x.reason != reason || x.qual != qual || x.rip != rip || (!exc && x.len != len) {
        return (
            false,
            msg!("{x} (want reason {reason:#x} qual {qual:#x} rip {rip:#x} len {len})"),
            Some(x),
        );
    }
    let n = vm.enter_at(x.rip + len);
    (
        n.is(super::fields::reason::VMCALL),
        msg!("{x}; then {n}"),
        Some(x),
    )
}

/// Enters `vm` and expects no exit before L2's VMCALL at `vmcall_rip`.
pub fn no_exit(vm: &mut Vm, vmcall_rip: u64) -> (bool, Msg) {
    let e = vm.enter();
    let ok = e
        .exit()
        .is_some_and(|x| x.is(super::fields::reason::VMCALL) && x.rip == vmcall_rip);
    (ok, msg!("{e} (want only the VMCALL at {vmcall_rip:#x})"))
}
