//! L1's interrupt-command writes while one of its vCPUs waits for a SIPI,
//! or for good where L0 guards CPUs it does not hold (machine/ap_wait.rs
//! says why L0 looks at them, which INITs it keeps and which it refuses).
//! xAPIC: the register page is read-only in EPT01, so each write of it
//! exits; L0 decodes the store, keeps, refuses or forwards it, and steps
//! past it. x2APIC: the ICR's WRMSR exits through the MSR bitmap.

use super::{decode, GuestRegs, Outcome, Platform, Vcpu, GP};
use crate::cpus;
use crate::guest_mem::walk::{self, Access};
use crate::machine::ap_wait::{IcrWrite, X2APIC_ICR, XAPIC_ICR_HI, XAPIC_ICR_LO};
use crate::machine::Machine;
use crate::nested::bitmaps::msr_bit;
use crate::vmx::guest_cr::paging_regs;
use crate::vmx::inject::{inject_exception, skip_instruction};
use crate::vmx::{Field as F, Vmcs};

impl Vcpu {
    /// This vCPU waits for a SIPI: L0 watches L1's ICR writes from now
    /// until no vCPU waits.
    pub fn wait_for_sipi<P: Platform>(&mut self, m: &mut Machine, p: &mut P) {
        self.waiting_for_sipi = true;
        if m.ap_wait.wait(cpus::apic_id(|l, s| p.cpuid(l, s))) {
            self.watch_icr(m, p, true);
        }
    }

    /// Some CPU of the host is outside L0's hold (left out, or unknown
    /// without ACPI): from now on only INIT and start-up IPIs to the
    /// cloud VM's vCPUs (`vcpus`, APIC IDs) go out.
    pub fn guard_cpus<P: Platform>(
        &mut self,
        m: &mut Machine,
        p: &mut P,
        vcpus: alloc::collections::BTreeSet<u32>,
    ) {
        if m.ap_wait.guard(vcpus) {
            self.watch_icr(m, p, true);
        }
    }

    /// A SIPI started this vCPU.
    pub(super) fn no_longer_waits<P: Platform>(&mut self, m: &mut Machine, p: &mut P) {
        self.waiting_for_sipi = false;
        if m.ap_wait.started(cpus::apic_id(|l, s| p.cpuid(l, s))) {
            self.watch_icr(m, p, false);
        }
    }

    /// Makes L1's ICR writes exit (`on`) or go straight to the APIC. Other
    /// CPUs may hold the page's old EPT translation a while: a write
    /// that still exits is carried out all the same.
    fn watch_icr<P: Platform>(&mut self, m: &mut Machine, p: &mut P, on: bool) {
        m.ept.set_apic_writable(p.tables(), !on);
        p.invept_all();
        let bit = msr_bit(X2APIC_ICR, true);
        let bitmap = p.page(self.host.msr_bitmap01);
        if on {
            bitmap[bit / 64] |= 1 << (bit % 64);
        } else {
            bitmap[bit / 64] &= !(1 << (bit % 64));
        }
    }

    /// L1 wrote its xAPIC page at `offset` (the page is read-only while a
    /// vCPU waits). A store L0 cannot decode ends the watch: the page
    /// turns writable and the instruction runs again on its own.
    pub(super) fn l1_xapic_write<V: Vmcs, P: Platform>(
        &mut self,
        m: &mut Machine,
        v: &mut V,
        p: &mut P,
        offset: u64,
    ) -> Outcome {
        if !m.ap_wait.watching() {
            // A stale read-only translation of a page L0 no longer watches.
            p.invept_all();
        }
        let Some(store) = self.decode_store(v, p, offset).filter(|s| s.size == 4) else {
            if m.ap_wait.guarding() {
                // It could be an INIT to a CPU L0 does not hold.
                log::warn!("L1 wrote its APIC with an instruction L0 does not decode: #GP");
                inject_exception(v, GP, Some(0));
                return Outcome::Resume;
            }
            log::warn!("L1 wrote its APIC with an instruction L0 does not decode: no longer watching its INITs");
            m.ept.set_apic_writable(p.tables(), true);
            p.invept_all();
            return Outcome::Resume;
        };
        let value = store.value as u32;
        let write = match offset & 0xff0 {
            XAPIC_ICR_LO => {
                let dest = p.xapic_read(XAPIC_ICR_HI).unwrap_or(0) >> 24;
                m.ap_wait.icr_write(value, dest)
            }
            _ => IcrWrite::Send,
        };
        if write == IcrWrite::Send {
            p.xapic_write(offset, value);
        }
        let rip = v.read(F::GUEST_RIP);
        v.write(F::GUEST_RIP, rip.wrapping_add(u64::from(store.len)));
        Outcome::Resume
    }

    /// L1's WRMSR of the x2APIC ICR (it exits while a vCPU waits).
    pub(super) fn l1_x2apic_icr<V: Vmcs, P: Platform>(
        &mut self,
        m: &mut Machine,
        v: &mut V,
        p: &mut P,
    ) -> Outcome {
        let value = self.edx_eax();
        match m.ap_wait.icr_write(value as u32, (value >> 32) as u32) {
            IcrWrite::KeepInit(_) | IcrWrite::Refuse => skip_instruction(v),
            IcrWrite::Send if p.write_msr(X2APIC_ICR, value) => skip_instruction(v),
            IcrWrite::Send => inject_exception(v, GP, Some(0)),
        }
        Outcome::Resume
    }

    /// The store at L1's RIP, read through L1's own page tables: a MOV,
    /// or an OR/AND into the register at `offset` (its value read first).
    fn decode_store<V: Vmcs, P: Platform>(
        &self,
        v: &V,
        p: &mut P,
        offset: u64,
    ) -> Option<decode::Store> {
        let paging = paging_regs(v, self.host.maxphyaddr);
        let rip = v.read(F::GUEST_CS_BASE).wrapping_add(v.read(F::GUEST_RIP));
        let fetch = Access {
            fetch: true,
            ..Default::default()
        };
        let mut insn = [0u8; 15];
        // The longest read that succeeds: an instruction may end at a page
        // boundary with nothing mapped after it.
        let n = (1..=15)
            .rev()
            .find(|&n| walk::read_virt(p.mem(), &paging, rip, &mut insn[..n], fetch).is_ok())?;
        let rsp = v.read(F::GUEST_RSP);
        let regs = self.regs.gpr;
        let reg = |i: usize| if i == GuestRegs::RSP { rsp } else { regs[i] };
        decode::mov_store(&insn[..n], reg)
            .or_else(|| decode::alu_store(&insn[..n], reg, p.xapic_read(offset)?))
    }
}
