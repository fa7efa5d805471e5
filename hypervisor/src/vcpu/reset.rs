//! INIT and start-up IPIs for the cloud VM's vCPUs. L1 owns the local
//! APICs, so its INIT and SIPI reach the physical CPUs, where VMX turns
//! them into exits (SDM Vol. 3C 26.2, 27.4): INIT puts the vCPU into the
//! state after INIT (SDM Vol. 3A Table 10-1) waiting for a SIPI, which
//! starts it in real mode at the vector's page. The other vCPUs begin in
//! that waiting state, so L1 starts its APs as it would on bare metal.
//! A VMX abort (SDM 28.7) leaves a vCPU shut down for good.

use super::{Outcome, Platform, Vcpu};
use crate::arch::run::GuestRegs;
use crate::machine::Machine;
use crate::regs::{AR_UNUSABLE, CR0_CD, CR0_ET, CR0_NW};
use crate::vmx::caps::entry::IA32E_MODE_GUEST;
use crate::vmx::fields::{seg, GUEST_SEGMENTS};
use crate::vmx::guest_cr::{CrPolicy, CrState};
use crate::vmx::{Field as F, Vmcs};

/// GUEST_ACTIVITY_STATE values (SDM Vol. 3C 25.4.2).
pub const ACTIVE: u64 = 0;
pub const HLT: u64 = 1;
pub const SHUTDOWN: u64 = 2;
pub const WAIT_FOR_SIPI: u64 = 3;

/// Real-mode data segment, and code (present, S, accessed, writable or readable).
const AR_REAL_DATA: u64 = 0x93;
const AR_REAL_CODE: u64 = 0x9b;
/// A busy 32-bit TSS, as KVM resets TR: a 16-bit one would fault the
/// later switch to long mode (Bochs checks it there).
const AR_TSS_BUSY_32: u64 = 0x8b;

/// RDX after INIT: the processor signature (CPUID.1:EAX).
pub fn init_rdx(cpuid: impl Fn(u32, u32) -> [u32; 4]) -> u64 {
    u64::from(cpuid(1, 0)[0])
}

/// The guest state after INIT, waiting for a SIPI: real mode, caches
/// off, CS:IP = F000:FFF0 with CS base FFFF0000, flat 64 KiB segments,
/// EFER 0 (so the IA-32e mode guest entry control off). Unrestricted
/// guest lets VMX run it with PE and PG clear; CR0.NE and CR4.VMXE stay
/// set underneath, hidden by the read shadows.
pub fn write_init_state(v: &mut impl Vmcs, policy: &CrPolicy) {
    let cr = CrState {
        cr0: CR0_CD | CR0_NW | CR0_ET,
        ..Default::default()
    };
    v.write(F::GUEST_CR0, cr.cr0_actual(policy));
    v.write(F::CR0_READ_SHADOW, cr.cr0);
    v.write(F::GUEST_CR3, 0);
    v.write(F::GUEST_CR4, cr.cr4_actual(policy));
    v.write(F::CR4_READ_SHADOW, 0);
    v.write(F::GUEST_IA32_EFER, 0);
    v.clear_bits(F::VM_ENTRY_CONTROLS, IA32E_MODE_GUEST as u64);
    // All selectors 0 and limits 64 KiB; CS at F000:FFFF0000; TR a busy
    // TSS, LDTR unusable.
    for (i, f) in GUEST_SEGMENTS.iter().enumerate() {
        let (selector, base, ar) = match i {
            seg::CS => (0xf000, 0xffff_0000, AR_REAL_CODE),
            seg::TR => (0, 0, AR_TSS_BUSY_32),
            seg::LDTR => (0, 0, AR_UNUSABLE),
            _ => (0, 0, AR_REAL_DATA),
        };
        v.write(f.selector, selector);
        v.write(f.base, base);
        v.write(f.limit, 0xffff);
        v.write(f.ar, ar);
    }
    for (base, limit) in [
        (F::GUEST_GDTR_BASE, F::GUEST_GDTR_LIMIT),
        (F::GUEST_IDTR_BASE, F::GUEST_IDTR_LIMIT),
    ] {
        v.write(base, 0);
        v.write(limit, 0xffff);
    }
    v.write(F::GUEST_RIP, 0xfff0);
    v.write(F::GUEST_RSP, 0);
    v.write(F::GUEST_RFLAGS, 0x2);
    v.write(F::GUEST_DR7, 0x400);
    v.write(F::GUEST_IA32_DEBUGCTL, 0);
    v.write(F::GUEST_IA32_PAT, 0x0007_0406_0007_0406);
    v.write(F::GUEST_SYSENTER_CS, 0);
    v.write(F::GUEST_SYSENTER_ESP, 0);
    v.write(F::GUEST_SYSENTER_EIP, 0);
    v.write(F::GUEST_INTERRUPTIBILITY_INFO, 0);
    v.write(F::GUEST_PENDING_DBG_EXCEPTIONS, 0);
    v.write(F::VM_ENTRY_INTR_INFO_FIELD, 0);
    v.write(F::GUEST_ACTIVITY_STATE, WAIT_FOR_SIPI);
}

/// After a VMX abort of L1's vCPU (SDM 28.7: the processor enters the
/// shutdown state, which only a reset leaves): the state after INIT,
/// which the CPU accepts whatever VMCS12 held, in the shutdown activity
/// state (HLT where VMX lacks it) with no event to deliver and interrupts
/// off. L1 is still in VMX operation, where INIT is blocked (L0 drops
/// it), so the vCPU never runs again; L0's preemption timer still brings
/// the CPU back to L0 to serve the management line.
pub fn write_shutdown_state(v: &mut impl Vmcs, policy: &CrPolicy, vmx_misc: u64) {
    write_init_state(v, policy);
    let shutdown_supported = vmx_misc & crate::vmx::caps::misc::ACTIVITY_SHUTDOWN != 0;
    v.write(
        F::GUEST_ACTIVITY_STATE,
        if shutdown_supported { SHUTDOWN } else { HLT },
    );
}

/// Blocking by SMI in the interruptibility state (SDM Vol. 3C 25.4.2).
pub const BLOCKING_BY_SMI: u64 = 1 << 2;

/// Clears blocking by SMI in the guest interruptibility state the last
/// exit saved. L0 never runs in SMM, and exits that end outside SMM save
/// that bit as 0 (SDM Vol. 3C 28.3.4); a processor that saves 1 anyway
/// (Bochs 2.7 after a SIPI exit) would fail the next entry (27.3.1.5).
pub fn clear_smi_blocking(v: &mut impl Vmcs) {
    let i = v.read(F::GUEST_INTERRUPTIBILITY_INFO);
    if i & BLOCKING_BY_SMI != 0 {
        v.write(F::GUEST_INTERRUPTIBILITY_INFO, i & !BLOCKING_BY_SMI);
    }
}

/// A SIPI with `vector`: the waiting vCPU starts at `vector << 12` in
/// real mode (CS = vector << 8, IP = 0), active, with nothing blocked.
/// The interruptibility the SIPI exit saved is not kept: a processor may
/// save the blocking it applies while waiting (Bochs 2.7 saves SMI and NMI
/// blocking), and blocking by SMI outside SMM fails the entry (SDM Vol. 3C
/// 27.3.1.5).
pub fn write_sipi_start(v: &mut impl Vmcs, vector: u8) {
    v.write(F::GUEST_CS_SELECTOR, u64::from(vector) << 8);
    v.write(F::GUEST_CS_BASE, u64::from(vector) << 12);
    v.write(F::GUEST_RIP, 0);
    v.write(F::GUEST_INTERRUPTIBILITY_INFO, 0);
    v.write(F::GUEST_ACTIVITY_STATE, ACTIVE);
}

impl Vcpu {
    /// Undoes what this CPU saved at the exit that no entry accepts (see
    /// [`clear_smi_blocking`]).
    pub fn fix_saved_state(&self, v: &mut impl Vmcs) {
        if self.saves_smi_blocking {
            clear_smi_blocking(v);
        }
    }

    /// INIT reached this CPU while L1 ran: the vCPU is reset and waits.
    /// In VMX operation (after L1's VMXON) INIT is blocked (SDM Vol. 3C
    /// 24.8): L0 drops it, where hardware would hold it until VMXOFF.
    pub(super) fn init_signal<P: Platform>(
        &mut self,
        m: &mut Machine,
        v: &mut impl Vmcs,
        p: &mut P,
    ) -> Outcome {
        if self.nested.vmx.vmxon.is_some() {
            return Outcome::Resume;
        }
        write_init_state(v, &self.host.policy);
        self.wait_for_sipi(m, p);
        let signature = init_rdx(|l, s| p.cpuid(l, s));
        self.regs = GuestRegs::default();
        self.regs.gpr[GuestRegs::RDX] = signature;
        self.cpuid.guest_cr4 = 0;
        Outcome::Resume
    }

    /// A SIPI while the vCPU waits for one (the only time VMX reports
    /// it). Whether it waits is L0's record, not the activity state the
    /// exit saved (see [`Vcpu::waiting_for_sipi`]); a SIPI to a running
    /// vCPU changes nothing.
    pub(super) fn sipi<P: Platform>(
        &mut self,
        m: &mut Machine,
        v: &mut impl Vmcs,
        p: &mut P,
        vector: u8,
    ) -> Outcome {
        if self.waiting_for_sipi {
            if v.read(F::GUEST_INTERRUPTIBILITY_INFO) & BLOCKING_BY_SMI != 0 {
                self.saves_smi_blocking = true;
            }
            write_sipi_start(v, vector);
            self.no_longer_waits(m, p);
        }
        Outcome::Resume
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::checks::{self, CheckCtx};
    use crate::nested::testutil::{caps, valid_vmcs12};
    use crate::nested::vmcs12::Vmcs12;
    use crate::regs::{CR0_NE, CR4_VMXE};

    fn policy() -> CrPolicy {
        CrPolicy {
            cr0_forced: CR0_NE,
            cr4_forced: CR4_VMXE,
            cr4_allowed: !0,
        }
    }

    /// The SDM's entry checks of guest state (nested/checks.rs), as L1's
    /// VMCS would meet them with unrestricted guest.
    fn entry_checks(v: &Vmcs12) -> Result<(), checks::EntryFailure> {
        let c = caps();
        let ram = |a: u64, len: u64| a + len <= 0x1000_0000;
        let rev = |_| None;
        let ctx = CheckCtx {
            caps: &c,
            maxphyaddr: 39,
            l1_long_mode: true,
            is_l1_ram: &ram,
            read_revision: &rev,
            read_u64: &|_| u64::MAX,
        };
        checks::check_guest_state(v, &ctx)?;
        checks::check_volatile_guest_state(v, &ctx)
    }

    #[test]
    fn after_init_a_vcpu_waits_in_real_mode_at_the_reset_vector() {
        let mut v = valid_vmcs12();
        v.set(
            F::VM_ENTRY_CONTROLS,
            v.get(F::VM_ENTRY_CONTROLS) | IA32E_MODE_GUEST as u64,
        );
        write_init_state(&mut v, &policy());
        assert_eq!(v.get(F::GUEST_ACTIVITY_STATE), WAIT_FOR_SIPI);
        assert_eq!(v.get(F::VM_ENTRY_CONTROLS) & IA32E_MODE_GUEST as u64, 0);
        assert_eq!(v.get(F::GUEST_CS_BASE) + v.get(F::GUEST_RIP), 0xffff_fff0);
        // The guest sees the reset CR0; VMX gets NE and VMXE underneath.
        assert_eq!(v.get(F::CR0_READ_SHADOW), 0x6000_0010);
        assert_eq!(v.get(F::GUEST_CR0), 0x6000_0030);
        assert_eq!(v.get(F::GUEST_CR4), CR4_VMXE);
        assert_eq!(init_rdx(|_, _| [0x0005_0654, 0, 0, 0]), 0x5_0654);
    }

    #[test]
    fn a_sipi_starts_it_at_the_vector_page_in_a_state_vmx_accepts() {
        let mut v = valid_vmcs12();
        write_init_state(&mut v, &policy());
        // What a SIPI exit may save (Bochs 2.7): SMI and NMI blocked.
        v.set(F::GUEST_INTERRUPTIBILITY_INFO, 0xc);
        write_sipi_start(&mut v, 0x9a);
        assert_eq!(v.get(F::GUEST_ACTIVITY_STATE), ACTIVE);
        assert_eq!(v.get(F::GUEST_INTERRUPTIBILITY_INFO), 0);
        assert_eq!(v.get(F::GUEST_CS_SELECTOR), 0x9a00);
        assert_eq!(v.get(F::GUEST_CS_BASE), 0x9_a000);
        assert_eq!(v.get(F::GUEST_RIP), 0);
        assert_eq!(entry_checks(&v), Ok(()));
        // Later exits on that CPU may save it again: L0 clears it alone.
        v.set(F::GUEST_INTERRUPTIBILITY_INFO, 0xc);
        assert!(entry_checks(&v).is_err());
        clear_smi_blocking(&mut v);
        assert_eq!(v.get(F::GUEST_INTERRUPTIBILITY_INFO), 0x8);
        assert_eq!(entry_checks(&v), Ok(()));
    }
}
