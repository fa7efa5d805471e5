//! Guest state for the management line: printed on every fatal or
//! unexpected exit so a failure says what went wrong, and the answer to
//! the operator's `stats`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use shadow_devices::mgmt;

use super::{Platform, Vcpu};
use crate::guest_mem::GuestMemory;

use crate::arch::run::GuestRegs;
use crate::vmx::exit::{reason_name, ExitReason};
use crate::vmx::{Field as F, Vmcs};

/// Writes the exit information and guest state of `v` to `out`.
pub fn guest_state(out: &mut impl Write, v: &impl Vmcs, regs: &GuestRegs) -> fmt::Result {
    let r = |f| v.read_raw(f as u32).unwrap_or(0xdead_dead_dead_dead);
    let reason = ExitReason(r(F::VM_EXIT_REASON) as u32);
    writeln!(
        out,
        "  exit reason {:#x} ({}{}), qualification {:#x}, instruction length {}",
        reason.0,
        if reason.entry_failed() {
            "entry failure: "
        } else {
            ""
        },
        reason_name(reason.basic()),
        r(F::EXIT_QUALIFICATION),
        r(F::VM_EXIT_INSTRUCTION_LEN)
    )?;
    writeln!(
        out,
        "  guest-physical {:#x}, guest-linear {:#x}, interruption info {:#x} (error {:#x}), IDT-vectoring {:#x}",
        r(F::GUEST_PHYSICAL_ADDRESS),
        r(F::GUEST_LINEAR_ADDRESS),
        r(F::VM_EXIT_INTR_INFO),
        r(F::VM_EXIT_INTR_ERROR_CODE),
        r(F::IDT_VECTORING_INFO_FIELD)
    )?;
    writeln!(
        out,
        "  RIP {:#018x} RSP {:#018x} RFLAGS {:#x}",
        r(F::GUEST_RIP),
        r(F::GUEST_RSP),
        r(F::GUEST_RFLAGS)
    )?;
    writeln!(
        out,
        "  CR0 {:#x} (shadow {:#x}) CR3 {:#x} CR4 {:#x} (shadow {:#x}) EFER {:#x}",
        r(F::GUEST_CR0),
        r(F::CR0_READ_SHADOW),
        r(F::GUEST_CR3),
        r(F::GUEST_CR4),
        r(F::CR4_READ_SHADOW),
        r(F::GUEST_IA32_EFER)
    )?;
    for (name, sel, base, limit, ar) in [
        (
            "CS",
            F::GUEST_CS_SELECTOR,
            F::GUEST_CS_BASE,
            F::GUEST_CS_LIMIT,
            F::GUEST_CS_AR_BYTES,
        ),
        (
            "SS",
            F::GUEST_SS_SELECTOR,
            F::GUEST_SS_BASE,
            F::GUEST_SS_LIMIT,
            F::GUEST_SS_AR_BYTES,
        ),
        (
            "DS",
            F::GUEST_DS_SELECTOR,
            F::GUEST_DS_BASE,
            F::GUEST_DS_LIMIT,
            F::GUEST_DS_AR_BYTES,
        ),
        (
            "TR",
            F::GUEST_TR_SELECTOR,
            F::GUEST_TR_BASE,
            F::GUEST_TR_LIMIT,
            F::GUEST_TR_AR_BYTES,
        ),
    ] {
        writeln!(
            out,
            "  {name} {:#06x} base {:#x} limit {:#x} ar {:#x}",
            r(sel),
            r(base),
            r(limit),
            r(ar)
        )?;
    }
    writeln!(
        out,
        "  GDTR {:#x}/{:#x} IDTR {:#x}/{:#x} interruptibility {:#x} activity {}",
        r(F::GUEST_GDTR_BASE),
        r(F::GUEST_GDTR_LIMIT),
        r(F::GUEST_IDTR_BASE),
        r(F::GUEST_IDTR_LIMIT),
        r(F::GUEST_INTERRUPTIBILITY_INFO),
        r(F::GUEST_ACTIVITY_STATE)
    )?;
    const NAMES: [&str; 16] = [
        "RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI", "R8", "R9", "R10", "R11", "R12",
        "R13", "R14", "R15",
    ];
    for row in NAMES.chunks(4).zip(regs.gpr.chunks(4)) {
        write!(out, " ")?;
        for (n, val) in row.0.iter().zip(row.1) {
            if *n != "RSP" {
                write!(out, " {n:>3} {val:#018x}")?;
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

impl Vcpu {
    /// The `stats` answer: where the vCPU is, L2's and L1's interrupt
    /// state, and the exit counts of each level (docs/console-protocol.md).
    pub(super) fn stats_frames<P: Platform>(
        &self,
        user_vms: usize,
        cpus: &[&crate::machine::cpu_counts::CpuCounts],
        v: &impl Vmcs,
        p: &mut P,
    ) -> Vec<String> {
        let l2 = if self.nested.in_l2() {
            "in L2"
        } else {
            "in L1"
        };
        let v12 = &self.nested.vmx.vmcs12;
        let vapic = match self.nested.vmx.current.is_some() {
            true => {
                let a = v12.get(F::VIRTUAL_APIC_PAGE_ADDR);
                let mut reg = |off: u64| p.mem().read_u32(a + off).unwrap_or(u32::MAX);
                let mut top = |base: u64| {
                    crate::nested::posted::highest_vector(|i| reg(base + 16 * i as u64))
                };
                let (isr, irr) = (top(0x100), top(0x200));
                alloc::format!(
                    "; VMCS12 rip={:#x} rflags={:#x} intr-state={:#x} intr-status={:#x} timer={:#x} pin={:#x} vapic tpr={:#x} ppr={:#x} isr-top={isr:x?} irr-top={irr:x?}",
                    v12.get(F::GUEST_RIP),
                    v12.get(F::GUEST_RFLAGS),
                    v12.get(F::GUEST_INTERRUPTIBILITY_INFO),
                    v12.get(F::GUEST_INTR_STATUS),
                    v12.get(F::VMX_PREEMPTION_TIMER_VALUE),
                    v12.get(F::PIN_BASED_VM_EXEC_CONTROL),
                    reg(0x80),
                    reg(0xa0)
                )
            }
            false => String::new(),
        };
        let now = alloc::format!(
            "rip={:#x} rflags={:#x} intr-state={:#x} activity={} entry-event={:#x} intr-status={:#x} timer={:#x}{vapic}; L1 APIC {}",
            v.read(F::GUEST_RIP),
            v.read(F::GUEST_RFLAGS),
            v.read(F::GUEST_INTERRUPTIBILITY_INFO),
            v.read(F::GUEST_ACTIVITY_STATE),
            v.read(F::VM_ENTRY_INTR_INFO_FIELD),
            if self.nested.in_l2() { v.read(F::GUEST_INTR_STATUS) } else { 0 },
            v.read(F::VMX_PREEMPTION_TIMER_VALUE),
            p.apic_state()
        );
        let mut frames = alloc::vec![
            mgmt::frame(format_args!("stats now {l2}, {} user VMs: {now}", user_vms)),
            mgmt::frame(format_args!("stats l1 {}", self.stats)),
            mgmt::frame(format_args!("stats l1-recent {}", self.stats.recent())),
            mgmt::frame(format_args!(
                "stats l1-vmcs-exits {}",
                self.stats.vmcs_fields()
            )),
            mgmt::frame(format_args!("stats l2 {}", self.l2_stats)),
            mgmt::frame(format_args!("stats l2-recent {}", self.l2_stats.recent())),
            {
                let (dropped, suppressed) = crate::logger::lines_not_sent();
                mgmt::frame(format_args!(
                    "stats log dropped={dropped} suppressed={suppressed}"
                ))
            },
        ];
        frames.extend(
            cpus.iter()
                .map(|c| mgmt::frame(format_args!("stats cpu {c}"))),
        );
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::fake::FakeVmcs;

    #[test]
    fn names_the_exit_and_the_state() {
        let mut v = FakeVmcs::default();
        v.write(F::VM_EXIT_REASON, 0x8000_0021);
        v.write(F::GUEST_RIP, 0x10_0000);
        v.write(F::GUEST_CR0, 0x31);
        let mut regs = GuestRegs::default();
        regs.gpr[GuestRegs::RBX] = 0x9000;
        regs.gpr[GuestRegs::RSP] = 0x4444;
        v.write(F::GUEST_RSP, 0x8888);
        let mut s = String::new();
        guest_state(&mut s, &v, &regs).unwrap();
        assert!(
            s.contains("entry failure: VM entry failure: invalid guest state"),
            "{s}"
        );
        assert!(s.contains("RIP 0x0000000000100000"));
        assert!(s.contains("CR0 0x31"));
        assert!(s.contains("RBX 0x0000000000009000"));
        assert!(s.contains("RSP 0x0000000000008888"));
        assert!(
            !s.contains("4444"),
            "RSP comes from the VMCS, not the GPR array"
        );
    }
}
