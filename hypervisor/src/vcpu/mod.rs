//! The cloud VM's virtual CPU: VMCS01 and one handler per exit reason.
//!
//! Handlers work on the [`Vmcs`] trait and a [`Platform`] for the few things
//! that touch hardware, so the whole dispatch runs on the host in tests.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::arch::run::GuestRegs;
use crate::guest_mem::GuestMemory;
use crate::mm::paging::TableMemory;
use crate::nested::{HostVmx, Nested, VmcsSet};
use crate::vmx::exit::{
    event_type, reason, reason_name, CrAccess, EptViolation, ExitReason, InterruptionInfo,
    IoAccess, VmExit,
};
use crate::vmx::{caps, Field as F, Vmcs};

mod apic_icr;
pub mod bios_memory;
mod com;
pub mod cpuid;
pub mod decode;
mod irq_route;
pub mod l0_ports;
mod l2;
pub mod msr;
mod perfmon;
pub mod report;
pub mod reset;
pub mod setup;
mod ultracall;
mod vmx_instr;

use crate::machine::ept01::Violation;
use crate::machine::shared::MachineLock;
use crate::machine::shutdown::{ShutdownFeed, SHUTDOWN, SHUTDOWN_PORT};
use crate::machine::Machine;
use crate::regs::{CR0_TS, CR4_OSXSAVE};
use crate::vmx::guest_cr::{self as cr, read_cr_state, write_cr_state, GeneralProtection};
use crate::vmx::inject::{inject_exception, reinject_interrupted_event, skip_instruction};
use msr::MtrrShadow;
use shadow_devices::mgmt;

/// TSC ticks per byte on the management line (115200 baud, 10 bits a
/// byte); a guess for a 3 GHz TSC when the frequency is unknown.
pub fn mgmt_byte_ticks(tsc_hz: u64) -> u64 {
    if tsc_hz == 0 {
        3_000_000_000 / 11_520
    } else {
        tsc_hz / 11_520
    }
}

/// The hardware operations exit handlers need.
pub trait Platform {
    type Tables: TableMemory;
    type Mem: GuestMemory;
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// XCR0 bits the CPU supports (CPUID.(EAX=0xD,ECX=0):EDX:EAX).
    fn xcr0_supported(&self) -> u64;
    fn set_xcr0(&mut self, value: u64);
    fn wbinvd(&mut self);
    /// Loads CR0.CD and CR0.NW (`bits`, only those two; never NW without
    /// CD) into this CPU's CR0: the guest's cache mode, which VM entry
    /// does not load (`guest_cr::Effects::cache_mode`).
    fn set_cache_mode(&mut self, bits: u64);
    /// Drops the TLB entries tagged with `vpid`.
    fn flush_vpid(&mut self, vpid: u16);
    /// Port I/O on a guest's behalf (1, 2 or 4 bytes).
    fn io_out(&mut self, port: u16, size: u8, value: u32);
    fn io_in(&mut self, port: u16, size: u8) -> u32;
    fn tables(&mut self) -> &mut Self::Tables;
    fn mem(&mut self) -> &mut Self::Mem;
    /// A page of L0's pool (bitmaps), by physical address.
    fn page(&mut self, phys: u64) -> &mut [u64; 512];
    /// Re-checks L0's code and read-only data against the boot-time checksum.
    fn l0_intact(&self) -> bool;
    /// Re-checks a page of L0's writable data that L0 never writes (a
    /// canary in `.data`) against what the link put there.
    fn l0_data_intact(&self) -> bool;
    /// RDMSR/WRMSR of a real MSR on a guest's behalf; None/false if the CPU
    /// refuses it (#GP).
    fn read_msr(&mut self, msr: u32) -> Option<u64>;
    fn write_msr(&mut self, msr: u32, value: u64) -> bool;
    /// Drops every EPT-derived translation (INVEPT all-context).
    fn invept_all(&mut self);
    /// CR2 for a #PF L0 injects (L0 itself never changes CR2 otherwise).
    fn set_cr2(&mut self, value: u64);
    /// Bytes the operator sent on the management line (non-blocking).
    fn mgmt_rx(&mut self, buf: &mut [u8]) -> usize;
    /// A protocol frame (one line) to the operator.
    fn mgmt_send(&mut self, line: &str);
    /// A fixed IPI through L1's local APIC (`dest` as a posted-interrupt
    /// descriptor's NDST); false if L1's APIC cannot take it.
    fn send_ipi(&mut self, dest: u32, vector: u8) -> bool;
    /// EOI to L1's local APIC for an interrupt L0 consumed.
    fn apic_eoi(&mut self) -> bool;
    /// A register of this CPU's xAPIC page (None in x2APIC mode), and a
    /// write of one on L1's behalf (false if not done).
    fn xapic_read(&mut self, offset: u64) -> Option<u32>;
    fn xapic_write(&mut self, offset: u64, value: u32) -> bool;
    /// L1's local APIC as the `stats` command shows it (diagnostics).
    fn apic_state(&mut self) -> String {
        String::from("-")
    }
}

/// Why L1 cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    TripleFault,
    /// VM entry failed with an exit reason that has bit 31 set.
    EntryFailure(ExitReason),
    /// An exit L0 never asked for.
    Unexpected(ExitReason),
    /// L0 could not carry out what the exit needed.
    Internal(&'static str),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::TripleFault => write!(f, "the cloud VM triple-faulted"),
            Stop::EntryFailure(r) => write!(f, "VM entry failed: {}", reason_name(r.basic())),
            Stop::Unexpected(r) => write!(
                f,
                "unexpected VM exit {} ({})",
                r.basic(),
                reason_name(r.basic())
            ),
            Stop::Internal(m) => write!(f, "{m}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Resume,
    Stop(Stop),
    /// L1's vCPU took a VMX abort with this indicator (VMCS01 current):
    /// `Vcpu::settle` shuts it down, and L0 goes on.
    VmxAbort(u32),
}

/// Exit counts by basic reason, the TSC ticks L0 spent handling them, and
/// the last few exits (reason, guest RIP) for the `stats` command.
#[derive(Clone, Debug)]
pub struct ExitStats {
    pub by_reason: [u64; 80],
    pub ticks_by_reason: [u64; 80],
    recent: [(u16, u64); RECENT],
    next: usize,
    /// VMREAD/VMWRITE exits by field: what VMCS shadowing let through to
    /// L0 (key: encoding, bit 31 set for VMWRITE).
    pub vmcs_fields: alloc::collections::BTreeMap<u32, u64>,
}

const RECENT: usize = 8;

impl Default for ExitStats {
    fn default() -> Self {
        ExitStats {
            by_reason: [0; 80],
            ticks_by_reason: [0; 80],
            recent: [(0, 0); RECENT],
            next: 0,
            vmcs_fields: alloc::collections::BTreeMap::new(),
        }
    }
}

impl ExitStats {
    pub fn total(&self) -> u64 {
        self.by_reason.iter().sum()
    }

    pub fn record(&mut self, reason: u16, rip: u64) {
        self.recent[self.next % RECENT] = (reason, rip);
        self.next = self.next.wrapping_add(1);
    }

    /// The fields of the most frequent VMREAD/VMWRITE exits:
    /// `VMREAD:0x4402=n VMWRITE:0x6820=n ...`, most first.
    pub fn vmcs_fields(&self) -> String {
        let mut v: Vec<(u32, u64)> = self.vmcs_fields.iter().map(|(&k, &n)| (k, n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1));
        v.iter()
            .take(12)
            .map(|&(k, n)| {
                let op = if k & 1 << 31 != 0 {
                    "VMWRITE"
                } else {
                    "VMREAD"
                };
                alloc::format!("{op}:{:#x}={n}", k & !(1 << 31))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The recent exits, oldest first: `REASON@RIP ...`.
    pub fn recent(&self) -> String {
        let n = self.next.min(RECENT);
        (self.next - n..self.next)
            .map(|i| self.recent[i % RECENT])
            .map(|(r, rip)| alloc::format!("{}@{rip:#x}", reason_name(r)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for ExitStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} exits", self.total())?;
        for (r, &n) in self.by_reason.iter().enumerate().filter(|(_, &n)| n > 0) {
            write!(
                f,
                ", {} {n} (~{} ticks)",
                reason_name(r as u16),
                self.ticks_by_reason[r] / n
            )?;
        }
        Ok(())
    }
}

/// The cloud VM's CPU.
pub struct Vcpu {
    regs: GuestRegs,
    launched: bool,
    cpuid: cpuid::CpuidContext,
    mtrr: MtrrShadow,
    /// L0's VMX setup of this CPU (L1's VPID, VMCS regions, CR policy...).
    host: HostVmx,
    /// Exits of L1, and of L2.
    stats: ExitStats,
    l2_stats: ExitStats,
    /// The kind of L1's last access to L0's memory, for the log.
    last_l0_touch: &'static str,
    nested: Nested,
    /// TSC ticks between L0's visits to the management line.
    poll_ticks: u64,
    /// L0 asked for an interrupt window in VMCS01 (to deliver the relay).
    window_requested: bool,
    /// L0 put the vCPU in the wait-for-SIPI state (at creation or on
    /// INIT) and no SIPI has started it since. L0's own record: not every
    /// processor saves wait-for-SIPI in the activity-state field at a SIPI
    /// exit (Bochs 2.7 saves "active").
    waiting_for_sipi: bool,
    /// This CPU saved blocking by SMI at its SIPI exit, outside SMM:
    /// Bochs 2.7 keeps SMI (and NMI) masked after a SIPI exit and saves
    /// that at every later exit, and an entry with it fails. L0 clears the
    /// bit after each exit on this CPU (`reset::clear_smi_blocking`).
    saves_smi_blocking: bool,
    /// This CPU's exit counts as the other CPUs see them.
    counts: Option<&'static crate::machine::cpu_counts::CpuCounts>,
    /// What this vCPU's last entry into L2 noted in the machine.
    noted_entry: Option<l2::NotedEntry>,
    /// The user VM whose COM ports this vCPU served last, with its cell.
    com_vm: Option<com::ComVm>,
    /// This CPU owns the management line (one CPU does: two would split
    /// the operator's bytes between them) and the relay interrupt.
    serves_console: bool,
}

const ACTIVITY_HLT: u64 = 1;

const UD: u8 = 6;
const GP: u8 = 13;

impl Vcpu {
    /// The vCPU as bring-up leaves it: L1 about to be launched.
    pub fn new(
        regs: GuestRegs,
        cpuid: cpuid::CpuidContext,
        mtrr: MtrrShadow,
        host: HostVmx,
        nested: Nested,
        poll_ticks: u64,
    ) -> Self {
        Vcpu {
            regs,
            launched: false,
            cpuid,
            mtrr,
            host,
            stats: ExitStats::default(),
            l2_stats: ExitStats::default(),
            last_l0_touch: "",
            nested,
            poll_ticks,
            window_requested: false,
            waiting_for_sipi: false,
            saves_smi_blocking: false,
            counts: None,
            noted_entry: None,
            com_vm: None,
            serves_console: false,
        }
    }

    /// Makes this vCPU's CPU the one that serves the management line.
    pub fn serve_console(&mut self) {
        self.serves_console = true;
    }

    pub fn serves_console(&self) -> bool {
        self.serves_console
    }

    /// The APIC ID of the CPU this vCPU runs on (0 until registered).
    fn apic_id(&self) -> u32 {
        self.counts.map_or(0, |c| c.apic_id)
    }

    /// Registers this CPU with the machine (its counts in `stats`).
    pub fn register(&mut self, m: &mut Machine, apic_id: u32) {
        self.counts = Some(m.register_cpu(apic_id));
    }

    /// L1's general-purpose registers (L2's while L2 runs).
    pub fn regs(&self) -> &GuestRegs {
        &self.regs
    }

    pub fn regs_mut(&mut self) -> &mut GuestRegs {
        &mut self.regs
    }

    /// VMCS01, VMCS02 and shadow-VMCS regions.
    pub fn vmcs_phys(&self) -> [u64; 3] {
        self.host.vmcs_phys
    }

    /// Whether L2 runs (VMCS02 is entered next).
    pub fn in_l2(&self) -> bool {
        self.nested.in_l2()
    }

    /// Whether VMCS02 (`l2`) or VMCS01 has been launched (VMRESUME enters it).
    pub fn launched(&self, l2: bool) -> bool {
        if l2 {
            self.nested.vmcs02_launched()
        } else {
            self.launched
        }
    }

    /// VMCS02 (`l2`) or VMCS01 was entered.
    pub fn note_launched(&mut self, l2: bool) {
        if l2 {
            self.nested.note_vmcs02_launched();
        } else {
            self.launched = true;
        }
    }

    /// An exit of L2 (`l2`) or L1 with its reason, the guest's RIP and the
    /// TSC ticks its handling took.
    pub fn account_exit(&mut self, l2: bool, basic: usize, rip: u64, ticks: u64) {
        if let Some(c) = self.counts {
            c.count(l2, basic as u16, rip);
        }
        let stats = if l2 {
            &mut self.l2_stats
        } else {
            &mut self.stats
        };
        stats.record(basic as u16, rip);
        if let Some(t) = stats.ticks_by_reason.get_mut(basic) {
            *t += ticks;
        }
    }

    /// The exit statistics of L1 and of L2.
    pub fn exit_stats(&self) -> (&ExitStats, &ExitStats) {
        (&self.stats, &self.l2_stats)
    }

    /// TSC ticks between L0's visits to the management line.
    pub fn poll_ticks(&self) -> u64 {
        self.poll_ticks
    }

    fn gpr(&self, v: &impl Vmcs, n: u8) -> u64 {
        if n as usize == GuestRegs::RSP {
            v.read(F::GUEST_RSP)
        } else {
            self.regs.gpr[n as usize]
        }
    }

    fn set_gpr(&mut self, v: &mut impl Vmcs, n: u8, value: u64) {
        if n as usize == GuestRegs::RSP {
            v.write(F::GUEST_RSP, value);
        } else {
            self.regs.gpr[n as usize] = value;
        }
    }

    fn set_edx_eax(&mut self, value: u64) {
        self.regs.gpr[GuestRegs::RAX] = value & 0xffff_ffff;
        self.regs.gpr[GuestRegs::RDX] = value >> 32;
    }

    fn edx_eax(&self) -> u64 {
        (self.regs.gpr[GuestRegs::RDX] & 0xffff_ffff) << 32
            | (self.regs.gpr[GuestRegs::RAX] & 0xffff_ffff)
    }

    /// Handles the exit that just happened on the current VMCS.
    pub fn handle_exit<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut MachineLock<'_>,
        vs: &mut S,
        p: &mut P,
    ) -> Outcome {
        let o = self.dispatch_exit(m, vs, p);
        self.drop_stale_com_vm(m.vm_generation());
        self.settle(vs, o)
    }

    /// What the run loop gets of an outcome: a VMX abort of L1's vCPU
    /// (SDM 28.7) shuts that vCPU down and L0 goes on; never L0's stop.
    fn settle<S: VmcsSet>(&mut self, vs: &mut S, o: Outcome) -> Outcome {
        match o {
            Outcome::VmxAbort(_) => {
                let v = vs.current();
                reset::write_shutdown_state(v, &self.host.policy, self.host.caps.misc);
                v.clear_bits(
                    F::CPU_BASED_VM_EXEC_CONTROL,
                    caps::primary::INTERRUPT_WINDOW_EXITING as u64,
                );
                self.window_requested = false;
                Outcome::Resume
            }
            o => o,
        }
    }

    fn dispatch_exit<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut MachineLock<'_>,
        vs: &mut S,
        p: &mut P,
    ) -> Outcome {
        let r = ExitReason(vs.current().read(F::VM_EXIT_REASON) as u32);
        let stats = if self.nested.in_l2() {
            &mut self.l2_stats
        } else {
            &mut self.stats
        };
        if let Some(n) = stats.by_reason.get_mut(r.basic() as usize) {
            *n += 1;
        }
        if self.nested.in_l2() {
            return self.l2_exit(m, vs, p);
        }
        // The CPU refusing the state VMCS12's host area gave L1 is the
        // SDM's "VMCS corrupted" abort for L1, not a failure of L0's.
        let from_host_area = self.nested.take_l1_from_host_area();
        if from_host_area && r.0 & (1 << 31) != 0 {
            log::warn!(
                "the cloud VM's state from VMCS12's host area was refused (exit reason {:#x})",
                r.0
            );
            return self
                .nested_ctx(vs, p)
                .vmx_abort(
                    crate::nested::vmexit::abort::VMCS_CORRUPTED,
                    "the CPU refused the state VMCS12's host area gave",
                )
                .into();
        }
        let v = vs.current();
        let exit = VmExit::read(
            v,
            r,
            self.regs.gpr[GuestRegs::RAX],
            self.regs.gpr[GuestRegs::RCX],
        );
        match exit {
            VmExit::EntryFailed { .. } => return Outcome::Stop(Stop::EntryFailure(r)),
            VmExit::VmxInstruction(basic) if self.cpuid.vmx => {
                return self.l1_vmx_instruction(m, vs, p, basic)
            }
            VmExit::PreemptionTimer => self.poll_console(m, vs, p),
            VmExit::Cpuid { .. } => self.cpuid(v, p),
            VmExit::Io(io) => return self.io(m, v, p, io),
            VmExit::Msr {
                index,
                write: false,
            } => self.rdmsr(v, index),
            VmExit::Msr {
                index: crate::machine::ap_wait::X2APIC_ICR,
                write: true,
            } => return self.l1_x2apic_icr(m, v, p),
            VmExit::Msr {
                index: index @ (perfmon::IA32_XSS | msr::IA32_APIC_BASE),
                write: true,
            } => self.wrmsr_checked(v, p, index),
            VmExit::Msr { index, write: true } => self.wrmsr(v, index),
            VmExit::Cr(access) => return self.cr_access(v, p, access),
            VmExit::Xsetbv => self.xsetbv(v, p),
            VmExit::Invd => {
                // Dropping dirty lines could lose L0's data: write them back.
                p.wbinvd();
                skip_instruction(v);
            }
            VmExit::Hlt => {
                skip_instruction(v);
                v.write(F::GUEST_ACTIVITY_STATE, ACTIVITY_HLT);
            }
            VmExit::EptViolation { access, gpa } => {
                let o = self.ept_violation(m, v, p, access, gpa);
                let (info, err, len) = (
                    v.read(F::IDT_VECTORING_INFO_FIELD),
                    v.read(F::IDT_VECTORING_ERROR_CODE),
                    v.read(F::VM_EXIT_INSTRUCTION_LEN),
                );
                reinject_interrupted_event(v, info as u32, err as u32, len as u32);
                return o;
            }
            VmExit::TripleFault => return Outcome::Stop(Stop::TripleFault),
            VmExit::Init => return self.init_signal(m, v, p),
            VmExit::Sipi { vector } => return self.sipi(m, v, p, vector),
            VmExit::Vmcall if self.is_ultracall() => {
                self.ultracall(m, vs, p, ultracall_abi::CallerLevel::L1)
            }
            VmExit::Vmcall if self.at_bios_stub(m, v) => self.bios_memory(m, v, p),
            VmExit::InterruptWindow => {
                // Opened for the relay interrupt, delivered before the entry.
                v.clear_bits(
                    F::CPU_BASED_VM_EXEC_CONTROL,
                    caps::primary::INTERRUPT_WINDOW_EXITING as u64,
                );
                self.window_requested = false;
            }
            // VMX when not offered, SMX, VMFUNC, and VMCALL without an
            // ultracall: #UD, as on a CPU without them.
            VmExit::Vmcall
            | VmExit::VmxInstruction(_)
            | VmExit::Other(reason::VMFUNC | reason::GETSEC) => inject_exception(v, UD, None),
            // No performance counters are offered (vcpu/perfmon.rs): as on
            // a CPU with none, RDPMC of any counter is #GP.
            VmExit::Other(reason::RDPMC) => inject_exception(v, GP, Some(0)),
            VmExit::EptMisconfig { .. } => {
                return Outcome::Stop(Stop::Internal("EPT misconfiguration in EPT01 (an L0 bug)"))
            }
            _ => return Outcome::Stop(Stop::Unexpected(r)),
        }
        Outcome::Resume
    }

    /// Serves the management line: operator commands in, console output
    /// out (on the CPU that serves it; elsewhere nothing).
    /// Whether L1 is in real mode at the stub of the BIOS memory services.
    fn at_bios_stub(&self, m: &Machine, v: &impl Vmcs) -> bool {
        let real = v.read(F::GUEST_CR0) & crate::regs::CR0_PE == 0;
        let rip = v.read(F::GUEST_CS_BASE).wrapping_add(v.read(F::GUEST_RIP));
        m.bios.as_ref().is_some_and(|b| b.is_stub(real, rip))
    }

    /// INT 15h through the stub (`bios_memory`): answered, then the stub's
    /// IRET; or on to the firmware's handler, as a far jump there.
    fn bios_memory<P: Platform>(&mut self, m: &Machine, v: &mut impl Vmcs, p: &mut P) {
        let Some(b) = m.bios.as_ref() else { return };
        let r = &self.regs.gpr;
        if r[GuestRegs::RAX] as u32 == 0xe820 && r[GuestRegs::RBX] as u32 == 0 {
            log::info!(
                "the cloud VM reads its memory map through INT 15h E820h ({} entries, L0's pool reserved)",
                b.map.len()
            );
        }
        let mut call = bios_memory::Call {
            regs: &mut self.regs,
            es_base: v.read(F::GUEST_ES_BASE),
            ss_base: v.read(F::GUEST_SS_BASE),
            sp: v.read(F::GUEST_RSP),
        };
        match b.call(&mut call, p.mem()) {
            bios_memory::Answer::Done => skip_instruction(v),
            bios_memory::Answer::Firmware(seg, off) => {
                v.write(F::GUEST_CS_SELECTOR, u64::from(seg));
                v.write(F::GUEST_CS_BASE, u64::from(seg) << 4);
                v.write(F::GUEST_RIP, u64::from(off));
            }
        }
    }

    pub fn poll_console<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut MachineLock<'_>,
        vs: &mut S,
        p: &mut P,
    ) {
        if !self.serves_console {
            return;
        }
        // A command arrives at the line's pace, a byte every ~87 µs at
        // 115200 baud, and a UART holds only 16: once a command has begun,
        // L0 stays until its line is complete or the line falls quiet for
        // a few byte times, rather than taking what the FIFO holds per
        // visit (and losing the rest). The other CPUs have the machine
        // while this one waits for bytes.
        let byte = mgmt_byte_ticks(self.cpuid.tsc_hz);
        let mut buf = [0u8; 64];
        let mut last = crate::arch::cpu::rdtsc();
        let start = last;
        m.shadow.expire(start);
        let mut midline = m.console.mid_line();
        loop {
            let n = p.mgmt_rx(&mut buf);
            let now = crate::arch::cpu::rdtsc();
            if n > 0 {
                last = now;
                let mm = &mut **m;
                for f in mm.console.feed(&mut mm.shadow, &buf[..n]) {
                    p.mgmt_send(&f);
                }
                midline = mm.console.mid_line();
                continue;
            }
            if !midline
                || now.wrapping_sub(last) > 8 * byte
                || now.wrapping_sub(start) > 2 * mgmt::MAX_LINE as u64 * byte
            {
                break;
            }
            m.release();
            core::hint::spin_loop();
        }
        let m = &mut **m;
        if m.console.take_stats_request() {
            for f in self.stats_frames(m.shadow.vm_count(), &m.cpus, vs.current(), p) {
                p.mgmt_send(&f);
            }
        }
        for f in m.console.pump(&mut m.shadow) {
            p.mgmt_send(&f);
        }
        self.route_shadow_irqs(m, vs, p);
    }

    /// What L0 does before each VM entry into L1: raise the relay
    /// interrupt when edges are pending and L1 can take an interrupt, or
    /// ask for the window in which it can.
    pub fn before_l1_entry(&mut self, m: &mut MachineLock<'_>, v: &mut impl Vmcs) {
        if !m.relay_owed() {
            return;
        }
        let Some(vector) = m.shadow.irqs.relay_vector else {
            return;
        };
        let can = v.read(F::GUEST_RFLAGS) & (1 << 9) != 0
            && v.read(F::GUEST_INTERRUPTIBILITY_INFO) & 3 == 0
            && v.read(F::VM_ENTRY_INTR_INFO_FIELD) & InterruptionInfo::VALID as u64 == 0;
        if can {
            // An external interrupt that no interrupt controller delivered:
            // L1's relay must not EOI it (docs/shadow-devices.md).
            v.write(
                F::VM_ENTRY_INTR_INFO_FIELD,
                InterruptionInfo::new(vector, event_type::EXTERNAL_INTERRUPT, false).0 as u64,
            );
            if v.read(F::GUEST_ACTIVITY_STATE) == ACTIVITY_HLT {
                v.write(F::GUEST_ACTIVITY_STATE, 0);
            }
            m.shadow.irqs.relay_delivered();
        } else if !self.window_requested {
            v.set_bits(
                F::CPU_BASED_VM_EXEC_CONTROL,
                caps::primary::INTERRUPT_WINDOW_EXITING as u64,
            );
            self.window_requested = true;
        }
    }

    /// What L0 does before each VM entry into L2 (VMCS02 current): the
    /// virtual-interrupt evaluation Bochs leaves out (`nested/apicv.rs`).
    pub fn before_l2_entry<V: Vmcs, M: GuestMemory>(&mut self, v: &mut V, mem: &mut M) {
        self.nested.before_l2_entry(v, mem);
    }

    /// RDMSR of an MSR L0 emulates.
    fn read_l0_msr(&self, m: u32) -> Result<u64, msr::MsrFault> {
        if msr::VMX_MSRS.contains(&m) {
            return match self.cpuid.vmx {
                true => self.nested.vmx.caps.msr(m).ok_or(msr::MsrFault),
                false => Err(msr::MsrFault),
            };
        }
        msr::read(m, self.cpuid.vmx, &self.mtrr)
    }

    fn cpuid<V: Vmcs, P: Platform>(&mut self, v: &mut V, p: &mut P) {
        let leaf = self.regs.gpr[GuestRegs::RAX] as u32;
        let sub = self.regs.gpr[GuestRegs::RCX] as u32;
        let raw = if cpuid::is_synthetic(leaf) {
            [0; 4]
        } else {
            p.cpuid(leaf, sub)
        };
        self.cpuid.guest_cr4 = read_cr_state(v).cr4;
        let out = cpuid::guest_view(leaf, sub, raw, &self.cpuid);
        for (reg, val) in [
            GuestRegs::RAX,
            GuestRegs::RBX,
            GuestRegs::RCX,
            GuestRegs::RDX,
        ]
        .into_iter()
        .zip(out)
        {
            self.regs.gpr[reg] = val as u64;
        }
        skip_instruction(v);
    }

    /// Whether the access touches a port L0 keeps from every guest.
    fn owns_port(&self, m: &Machine, io: &IoAccess) -> bool {
        m.l0_ports.touches(io.port, io.size)
    }

    fn io<V: Vmcs, P: Platform>(
        &mut self,
        m: &mut Machine,
        v: &mut V,
        p: &mut P,
        io: IoAccess,
    ) -> Outcome {
        let mask = (1u64 << (8 * io.size as u32)) - 1;
        if io.string {
            // String I/O to L0's ports: no effect (documented in docs/).
            log::warn!("L1 string I/O to port {:#x} ignored", io.port);
            if io.rep {
                self.regs.gpr[GuestRegs::RCX] = 0;
            }
        } else if self.owns_port(m, &io) {
            // The management line and the BMC interfaces are L0's: to L1
            // they are absent devices.
            if io.is_in {
                let rax = &mut self.regs.gpr[GuestRegs::RAX];
                *rax = (*rax & !mask) | mask;
            }
        } else if io.port == SHUTDOWN_PORT {
            if io.is_in {
                let value = p.io_in(io.port, io.size) as u64;
                let rax = &mut self.regs.gpr[GuestRegs::RAX];
                *rax = (*rax & !mask) | value;
            } else {
                let value = self.regs.gpr[GuestRegs::RAX];
                for i in 0..io.size {
                    self.shutdown_byte(m, p, (value >> (8 * i)) as u8);
                }
            }
        } else {
            let r = ExitReason(reason::IO_INSTRUCTION as u32);
            return Outcome::Stop(Stop::Unexpected(r));
        }
        skip_instruction(v);
        Outcome::Resume
    }

    fn shutdown_byte<P: Platform>(&mut self, m: &mut Machine, p: &mut P, b: u8) {
        match m.shutdown.feed(b) {
            ShutdownFeed::Hold => {}
            ShutdownFeed::Forward { held, byte } => {
                for &h in held.iter().chain(&byte) {
                    p.io_out(SHUTDOWN_PORT, 1, h as u32);
                }
            }
            ShutdownFeed::Shutdown => {
                // The report waits for room (log lines do not): the run
                // ends here anyway.
                crate::logger::drain();
                log::info!("cloud VM requested shutdown: L1 {}", self.stats);
                // What console output cost L0, both ways (`cargo xtask bench`).
                for (who, cost) in [
                    ("operator", m.console.output_cost),
                    ("owner", m.console.owners.output_cost),
                ] {
                    if let Some(t) = cost.ticks_per_kib() {
                        log::info!("BENCH {who}-output-ticks-per-kib {t}");
                    }
                }
                if m.cpus.len() > 1 {
                    for c in &m.cpus {
                        log::info!("{c}");
                    }
                }
                if !self.stats.vmcs_fields.is_empty() {
                    log::info!(
                        "L1 VMREAD/VMWRITE exits by field: {}",
                        self.stats.vmcs_fields()
                    );
                }
                if self.l2_stats.total() > 0 {
                    log::info!(
                        "L2: {}; {} handled in L0, {} reflected to L1",
                        self.l2_stats,
                        self.nested.exit_counts().0,
                        self.nested.exit_counts().1
                    );
                }
                log::info!("L1 touched L0 memory {} times", m.ept.l0_touches);
                let (dropped, suppressed) = crate::logger::lines_not_sent();
                log::info!(
                    "log lines not sent: {dropped} dropped (the line was full), {suppressed} over their call site's limit; {} restore/save notices dropped",
                    m.shadow.notices_dropped()
                );
                if p.l0_intact() {
                    log::info!("L0 integrity OK");
                } else {
                    log::error!("L0 FATAL: L0 code or read-only data changed while L1 ran");
                }
                if p.l0_data_intact() {
                    log::info!("L0 data intact");
                } else {
                    log::error!("L0 FATAL: L0 data (its canary page) changed while L1 ran");
                }
                crate::logger::drain();
                for &c in SHUTDOWN {
                    p.io_out(SHUTDOWN_PORT, 1, c as u32);
                }
            }
        }
    }

    fn rdmsr<V: Vmcs>(&mut self, v: &mut V, m: u32) {
        match self.read_l0_msr(m) {
            Ok(value) => {
                self.set_edx_eax(value);
                skip_instruction(v);
            }
            Err(_) => inject_exception(v, GP, Some(0)),
        }
    }

    fn wrmsr<V: Vmcs>(&mut self, v: &mut V, m: u32) {
        match msr::write(m, self.edx_eax(), &mut self.mtrr) {
            Ok(msr::WriteOutcome::Done) => skip_instruction(v),
            Ok(msr::WriteOutcome::Ignored) => {
                log::info!("L1 wrote MSR {m:#x}: ignored");
                skip_instruction(v);
            }
            Err(_) => inject_exception(v, GP, Some(0)),
        }
    }

    /// WRMSR of an MSR L0 traps only to check the value: to the CPU.
    fn wrmsr_checked<V: Vmcs, P: Platform>(&mut self, v: &mut V, p: &mut P, m: u32) {
        let value = self.edx_eax();
        if msr::cpu_write_allowed(m, value, || p.read_msr(m)) && p.write_msr(m, value) {
            skip_instruction(v);
        } else {
            inject_exception(v, GP, Some(0));
        }
    }

    fn cr_access<V: Vmcs, P: Platform>(
        &mut self,
        v: &mut V,
        p: &mut P,
        access: CrAccess,
    ) -> Outcome {
        let mut s = read_cr_state(v);
        // Outside 64-bit code MOV CR uses 32-bit operands.
        let width = if s.ia32e() && s.cs_long {
            u64::MAX
        } else {
            0xffff_ffff
        };
        let result = match access {
            CrAccess::MovToCr { cr: 0, gpr } => cr::write_cr0(&mut s, self.gpr(v, gpr) & width),
            CrAccess::MovToCr { cr: 3, gpr } => {
                cr::write_cr3(&mut s, self.gpr(v, gpr) & width, self.host.maxphyaddr)
            }
            CrAccess::MovToCr { cr: 4, gpr } => {
                cr::write_cr4(&mut s, self.gpr(v, gpr) & width, &self.host.policy)
            }
            CrAccess::MovFromCr { cr: 3, gpr } => {
                let value = s.cr3;
                self.set_gpr(v, gpr, value);
                skip_instruction(v);
                return Outcome::Resume;
            }
            CrAccess::Clts => {
                let value = s.cr0 & !CR0_TS;
                cr::write_cr0(&mut s, value)
            }
            // LMSW loads CR0[3:0] but cannot clear PE.
            CrAccess::Lmsw { source } => {
                let value = (s.cr0 & !0xe) | (source as u64 & 0xf);
                cr::write_cr0(&mut s, value)
            }
            _ => {
                let r = ExitReason(reason::CR_ACCESS as u32);
                return Outcome::Stop(Stop::Unexpected(r));
            }
        };
        let effects = match result {
            Ok(e) => e,
            Err(GeneralProtection) => {
                inject_exception(v, GP, Some(0));
                return Outcome::Resume;
            }
        };
        if let Some(bits) = effects.cache_mode {
            p.set_cache_mode(bits);
        }
        if effects.load_pdptes {
            let mut raw = [0u8; 32];
            let mut pdptes = [0u64; 4];
            if p.mem().read(s.cr3 & 0xffff_ffe0, &mut raw).is_err() {
                inject_exception(v, GP, Some(0));
                return Outcome::Resume;
            }
            for (i, e) in pdptes.iter_mut().enumerate() {
                *e = u64::from_le_bytes(raw[8 * i..8 * i + 8].try_into().unwrap());
            }
            if cr::check_pdptes(&pdptes, self.host.maxphyaddr).is_err() {
                inject_exception(v, GP, Some(0));
                return Outcome::Resume;
            }
            for (f, e) in [
                F::GUEST_PDPTE0,
                F::GUEST_PDPTE1,
                F::GUEST_PDPTE2,
                F::GUEST_PDPTE3,
            ]
            .into_iter()
            .zip(pdptes)
            {
                v.write(f, e);
            }
        }
        write_cr_state(v, &s, &self.host.policy);
        if effects.flush_tlb && self.host.vpid != 0 {
            p.flush_vpid(self.host.vpid);
        }
        skip_instruction(v);
        Outcome::Resume
    }

    fn xsetbv<V: Vmcs, P: Platform>(&mut self, v: &mut V, p: &mut P) {
        let cpl = (v.read(F::GUEST_SS_AR_BYTES) >> 5) & 3;
        let value = self.edx_eax();
        if read_cr_state(v).cr4 & CR4_OSXSAVE == 0 {
            return inject_exception(v, UD, None);
        }
        let ok = cpl == 0
            && self.regs.gpr[GuestRegs::RCX] as u32 == 0
            && xcr0_valid(value, p.xcr0_supported());
        if !ok {
            return inject_exception(v, GP, Some(0));
        }
        p.set_xcr0(value);
        skip_instruction(v);
    }

    fn ept_violation<V: Vmcs, P: Platform>(
        &mut self,
        m: &mut Machine,
        v: &mut V,
        p: &mut P,
        q: EptViolation,
        gpa: u64,
    ) -> Outcome {
        if q.write && Some(gpa & !0xfff) == m.ept.apic_page {
            return self.l1_xapic_write(m, v, p, gpa & 0xfff);
        }
        if q.allowed != 0 {
            // Everything EPT01 maps allows everything (but the APIC page,
            // above): L0 bug.
            return Outcome::Stop(Stop::Internal("EPT violation on a present EPT01 entry"));
        }
        match m.ept.resolve(p.tables(), gpa) {
            Ok(Violation::L0Frame) => {
                let n = m.ept.l0_touches;
                let kind = if q.write {
                    "wrote"
                } else if q.fetch {
                    "fetched from"
                } else {
                    "read"
                };
                // Rate-limited: the first few, powers of two, and each change of kind.
                if n <= 8 || n.is_power_of_two() || kind != self.last_l0_touch {
                    log::warn!(
                        "L1 {kind} L0 memory at {gpa:#x} (RIP {:#x}); backed by a scratch page ({n} so far)",
                        v.read(F::GUEST_RIP)
                    );
                }
                self.last_l0_touch = kind;
                Outcome::Resume
            }
            Ok(Violation::Mmio { size, reset }) => {
                // Rate-limited: the first few, then powers of two.
                let n = m.ept.mmio_maps;
                if n <= 8 || n.is_power_of_two() {
                    log::info!(
                        "L1 touched {gpa:#x} beyond the memory map: mapped as MMIO ({} KiB page, {n} so far)",
                        size.bytes() >> 10
                    );
                }
                if reset {
                    let r = m.ept.mmio.resets;
                    if r <= 4 || r.is_power_of_two() {
                        log::info!("EPT01 mappings beyond the memory map dropped to reuse their tables ({r} times so far)");
                    }
                }
                Outcome::Resume
            }
            Ok(Violation::Resolved) => Outcome::Resume,
            Err(_) => Outcome::Stop(Stop::Internal("out of memory for EPT01 tables")),
        }
    }
}

/// Whether XSETBV may load `value` into XCR0 (SDM Vol. 1 13.3).
pub fn xcr0_valid(value: u64, supported: u64) -> bool {
    let x87 = value & 1 != 0;
    let sse = value & 2 != 0;
    let avx = value & 4 != 0;
    let mpx = (value >> 3) & 3;
    let avx512 = (value >> 5) & 7;
    x87 && value & !supported == 0
        && (!avx || sse)
        && (mpx == 0 || mpx == 3)
        && (avx512 == 0 || (avx512 == 7 && avx))
}

#[cfg(test)]
mod tests;
