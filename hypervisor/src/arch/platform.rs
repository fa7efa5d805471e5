//! The hardware behind `vcpu::Platform` and `nested::VmcsSet`: L1's RAM,
//! L0's pool tables, MSRs, ports, INVEPT/INVVPID, the local APIC, the
//! management line, and the three VMCSs one CPU switches between.

use alloc::string::String;
use core::sync::atomic::{AtomicBool, Ordering};

use log::warn;

use super::cpu::{self, cpuid};
use super::fault::fatal;
use super::l1_ram::L1Ram;
use super::pool::PoolTables;
use super::vmx::{self as vmxi, CurrentVmcs};
use crate::logger;
use crate::nested::{Level, VmcsSet};
use crate::regs::{CR0_CD, CR0_NW};
use crate::vcpu::Platform;

/// The machine as the exit handlers see it (`vcpu::Platform`); each CPU
/// has its own copy.
#[derive(Clone)]
pub struct Hardware {
    pub tables: PoolTables,
    pub mem: L1Ram,
    /// L0's image checksum at boot.
    pub checksum: u64,
    pub xcr0_supported: u64,
}

impl Platform for Hardware {
    type Tables = PoolTables;
    type Mem = L1Ram;
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        cpuid(leaf, subleaf)
    }
    fn xcr0_supported(&self) -> u64 {
        self.xcr0_supported
    }
    fn set_xcr0(&mut self, value: u64) {
        // SAFETY: validated against CPUID by the caller; L0 itself keeps no
        // extended state.
        unsafe { cpu::xsetbv(0, value) }
    }
    fn wbinvd(&mut self) {
        cpu::wbinvd()
    }
    fn set_cache_mode(&mut self, bits: u64) {
        let cache_bits = CR0_CD | CR0_NW;
        // SAFETY: CD and NW select how the CPU caches memory, not what
        // L0 reads or writes; NW without CD never comes (the guest's write
        // faulted first).
        unsafe { cpu::write_cr0(cpu::read_cr0() & !cache_bits | bits & cache_bits) }
    }
    fn flush_vpid(&mut self, vpid: u16) {
        // SAFETY: VMX root; single-context INVVPID is supported (checked at boot).
        if let Err(e) = unsafe { vmxi::invvpid(1, vpid, 0) } {
            warn!("INVVPID failed: {e}");
        }
    }
    fn io_out(&mut self, port: u16, size: u8, value: u32) {
        // SAFETY: a port the guest may reach on its own (its I/O would go
        // there natively); never L0's management UART (handled before).
        unsafe { cpu::out_sized(port, size, value) }
    }
    fn io_in(&mut self, port: u16, size: u8) -> u32 {
        // SAFETY: as io_out.
        unsafe { cpu::in_sized(port, size) }
    }
    fn tables(&mut self) -> &mut PoolTables {
        &mut self.tables
    }
    fn mem(&mut self) -> &mut L1Ram {
        &mut self.mem
    }
    fn l0_intact(&self) -> bool {
        super::image::checksum() == self.checksum
    }
    fn l0_data_intact(&self) -> bool {
        super::image::data_intact()
    }
    fn page(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: callers pass L0's bitmap pages (pool frames, identity-mapped).
        unsafe { &mut *(phys as *mut [u64; 512]) }
    }
    fn read_msr(&mut self, msr: u32) -> Option<u64> {
        cpu::rdmsr_safe(msr)
    }
    fn write_msr(&mut self, msr: u32, value: u64) -> bool {
        // SAFETY: the MSRs L0 runs on (EFER, PAT, FS/GS base, ...) are
        // switched by the VMCS and never reach here (msr_lists::home).
        unsafe { cpu::wrmsr_safe(msr, value) }
    }
    fn invept_all(&mut self) {
        // SAFETY: VMX root; all-context INVEPT is supported (checked at boot).
        if let Err(e) = unsafe { vmxi::invept(2, 0) } {
            warn!("INVEPT failed: {e}");
        }
    }
    fn set_cr2(&mut self, value: u64) {
        // SAFETY: CR2 is the guest's; L0 takes no page faults.
        unsafe { cpu::write_cr2(value) }
    }
    fn mgmt_rx(&mut self, buf: &mut [u8]) -> usize {
        logger::recv(buf)
    }
    fn mgmt_send(&mut self, line: &str) {
        logger::send_line(line);
    }
    fn send_ipi(&mut self, dest: u32, vector: u8) -> bool {
        report_apic(super::apic::send_ipi(dest, vector))
    }
    fn apic_eoi(&mut self) -> bool {
        report_apic(super::apic::eoi())
    }
    fn xapic_read(&mut self, offset: u64) -> Option<u32> {
        super::apic::xapic_read(offset).ok()
    }
    fn xapic_write(&mut self, offset: u64, value: u32) -> bool {
        super::apic::xapic_write(offset, value).is_ok()
    }
    fn apic_state(&mut self) -> String {
        match super::apic::state() {
            Ok(s) => s,
            Err(e) => alloc::format!("{e:?}"),
        }
    }
}

/// Logs (once) why L0 cannot use L1's local APIC.
fn report_apic(r: Result<(), super::apic::ApicError>) -> bool {
    static SAID: AtomicBool = AtomicBool::new(false);
    match r {
        Ok(()) => true,
        Err(e) => {
            if !SAID.swap(true, Ordering::Relaxed) {
                log::warn!("cannot use L1's local APIC for posted-interrupt notifications: {e:?}");
            }
            false
        }
    }
}

/// Random bytes for nonces: RDSEED, else RDRAND; false if the CPU has neither.
pub fn hw_random(buf: &mut [u8]) -> bool {
    for chunk in buf.chunks_mut(8) {
        let Some(v) = cpu::rdseed64().or_else(cpu::rdrand64) else {
            return false;
        };
        chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
    }
    true
}

/// VMCS01, VMCS02 and the shadow VMCS; VMPTRLD switches between them.
pub struct HwVmcsSet {
    phys: [u64; 3],
    cur: Level,
    v: CurrentVmcs,
}

impl HwVmcsSet {
    /// # Safety
    /// VMCS01 (`phys[0]`) is current, and only this set switches VMCSs.
    pub unsafe fn new(phys: [u64; 3]) -> Self {
        HwVmcsSet {
            phys,
            cur: Level::L1,
            // SAFETY: VMCS01 is current (the caller).
            v: unsafe { CurrentVmcs::new() },
        }
    }
}

impl VmcsSet for HwVmcsSet {
    type V = CurrentVmcs;
    fn current(&mut self) -> &mut CurrentVmcs {
        &mut self.v
    }
    fn select(&mut self, which: Level) {
        if which != self.cur {
            let p = self.phys[which as usize];
            // SAFETY: both are L0's VMCS regions, set up at boot.
            if let Err(e) = unsafe { vmxi::vmptrld(p) } {
                fatal(format_args!("VMPTRLD {p:#x}: {e}"));
            }
            self.cur = which;
        }
    }
    fn selected(&self) -> Level {
        self.cur
    }
}
