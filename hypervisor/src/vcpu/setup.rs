//! Building VMCS01: L0's host state, the controls L1 runs under, and L1's
//! first guest state (SDM Vol. 3C chapters 25-27).

use boot::loader::Entry;

use crate::regs::{
    AR_UNUSABLE, CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_PAE, CR4_SMXE, CR4_VMXE, EFER_LMA, EFER_LME,
    EFER_NXE,
};
use crate::vmx::caps::{self, Control, ControlError, VmxCaps};
use crate::vmx::fields::{seg, GUEST_SEGMENTS};
use crate::vmx::guest_cr::{CrPolicy, CrState};
use crate::vmx::{Field as F, Vmcs};

/// L0's own state to return to on every exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cs: u16,
    pub ds: u16,
    pub tr: u16,
    pub tr_base: u64,
    pub gdtr_base: u64,
    pub idtr_base: u64,
    pub efer: u64,
    pub pat: u64,
    pub rip: u64,
}

pub fn write_host_state(v: &mut impl Vmcs, h: &HostState) {
    v.write(F::HOST_CR0, h.cr0);
    v.write(F::HOST_CR3, h.cr3);
    v.write(F::HOST_CR4, h.cr4);
    v.write(F::HOST_CS_SELECTOR, h.cs as u64);
    for f in [
        F::HOST_SS_SELECTOR,
        F::HOST_DS_SELECTOR,
        F::HOST_ES_SELECTOR,
    ] {
        v.write(f, h.ds as u64);
    }
    v.write(F::HOST_FS_SELECTOR, 0);
    v.write(F::HOST_GS_SELECTOR, 0);
    v.write(F::HOST_TR_SELECTOR, h.tr as u64);
    v.write(F::HOST_FS_BASE, 0);
    v.write(F::HOST_GS_BASE, 0);
    v.write(F::HOST_TR_BASE, h.tr_base);
    v.write(F::HOST_GDTR_BASE, h.gdtr_base);
    v.write(F::HOST_IDTR_BASE, h.idtr_base);
    v.write(F::HOST_IA32_SYSENTER_CS, 0);
    v.write(F::HOST_IA32_SYSENTER_ESP, 0);
    v.write(F::HOST_IA32_SYSENTER_EIP, 0);
    v.write(F::HOST_IA32_EFER, h.efer);
    v.write(F::HOST_IA32_PAT, h.pat);
    v.write(F::HOST_RIP, h.rip);
}

/// What L1's controls turned out to be, for CPUID and later decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L1Controls {
    pub pin: u32,
    pub primary: u32,
    pub secondary: u32,
    pub exit: u32,
    pub entry: u32,
}

impl L1Controls {
    pub fn has_secondary(&self, bits: u32) -> bool {
        self.secondary & bits == bits
    }
}

/// The controls for L1: pass-through of devices and interrupts, EPT with
/// unrestricted guest, bitmaps for the few ports and MSRs L0 keeps, and
/// guest-state save/load of EFER, PAT and debug controls.
/// With `timer`, the VMX-preemption timer brings L0 back regularly (to serve
/// the management line) however long L1 runs without exiting.
pub fn l1_controls(c: &VmxCaps, vpid: bool, timer: bool) -> Result<L1Controls, ControlError> {
    use caps::{entry, exit, primary as p, secondary as s};
    let mut secondary_required = s::ENABLE_EPT | s::UNRESTRICTED_GUEST;
    if vpid {
        secondary_required |= s::ENABLE_VPID;
    }
    Ok(L1Controls {
        pin: c.adjust(
            Control::Pin,
            if timer {
                caps::pin::PREEMPTION_TIMER
            } else {
                0
            },
            0,
        )?,
        primary: c.adjust(
            Control::Primary,
            // RDPMC exits: L1 gets no counters (vcpu/perfmon.rs).
            p::USE_IO_BITMAPS | p::USE_MSR_BITMAPS | p::ACTIVATE_SECONDARY | p::RDPMC_EXITING,
            0,
        )?,
        // RDTSCP, INVPCID and XSAVES #UD in the guest unless enabled.
        secondary: c.adjust(
            Control::Secondary,
            secondary_required,
            s::ENABLE_RDTSCP | s::ENABLE_INVPCID | s::ENABLE_XSAVES,
        )?,
        exit: c.adjust(
            Control::Exit,
            exit::HOST_ADDRESS_SPACE_SIZE
                | exit::SAVE_PAT
                | exit::LOAD_PAT
                | exit::SAVE_EFER
                | exit::LOAD_EFER,
            exit::SAVE_DEBUG_CONTROLS,
        )?,
        entry: c.adjust(
            Control::Entry,
            entry::LOAD_PAT | entry::LOAD_EFER,
            entry::LOAD_DEBUG_CONTROLS,
        )?,
    })
}

/// Addresses of the structures the controls point at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlPages {
    pub io_bitmap_a: u64,
    pub io_bitmap_b: u64,
    pub msr_bitmap: u64,
    pub eptp: u64,
    pub vpid: u16,
}

pub fn write_controls(
    v: &mut impl Vmcs,
    ctl: &L1Controls,
    pages: &ControlPages,
    policy: &CrPolicy,
) {
    v.write(F::PIN_BASED_VM_EXEC_CONTROL, ctl.pin as u64);
    v.write(F::CPU_BASED_VM_EXEC_CONTROL, ctl.primary as u64);
    v.write(F::SECONDARY_VM_EXEC_CONTROL, ctl.secondary as u64);
    v.write(F::VM_EXIT_CONTROLS, ctl.exit as u64);
    v.write(F::VM_ENTRY_CONTROLS, ctl.entry as u64);
    v.write(F::EXCEPTION_BITMAP, 0);
    v.write(F::PAGE_FAULT_ERROR_CODE_MASK, 0);
    v.write(F::PAGE_FAULT_ERROR_CODE_MATCH, 0);
    v.write(F::CR3_TARGET_COUNT, 0);
    v.write(F::VM_EXIT_MSR_STORE_COUNT, 0);
    v.write(F::VM_EXIT_MSR_LOAD_COUNT, 0);
    v.write(F::VM_ENTRY_MSR_LOAD_COUNT, 0);
    v.write(F::VM_ENTRY_INTR_INFO_FIELD, 0);
    v.write(F::IO_BITMAP_A, pages.io_bitmap_a);
    v.write(F::IO_BITMAP_B, pages.io_bitmap_b);
    v.write(F::MSR_BITMAP, pages.msr_bitmap);
    v.write(F::EPT_POINTER, pages.eptp);
    if ctl.has_secondary(caps::secondary::ENABLE_VPID) {
        v.write(F::VIRTUAL_PROCESSOR_ID, pages.vpid as u64);
    }
    v.write(F::TSC_OFFSET, 0);
    v.write(F::CR0_GUEST_HOST_MASK, policy.cr0_forced);
    v.write(F::CR4_GUEST_HOST_MASK, policy.cr4_forced);
    v.write(F::VMCS_LINK_POINTER, u64::MAX);
}

/// L0's policy for L1's control registers: VMX operation forces CR0.NE
/// (PE and PG are free with unrestricted guest) and CR4.VMXE; L1 may set
/// any CR4 bit the CPU allows in VMX operation except VMXE (until nested
/// VMX is offered) and SMXE (GETSEC is not emulated).
pub fn l1_cr_policy(c: &VmxCaps, offer_vmx: bool) -> CrPolicy {
    let cr0_forced = c.cr0_fixed0 & CR0_NE;
    let cr4_forced = c.cr4_fixed0;
    let mut cr4_allowed = c.cr4_fixed1 & !CR4_SMXE;
    if !offer_vmx {
        cr4_allowed &= !CR4_VMXE;
    }
    CrPolicy {
        cr0_forced,
        cr4_forced,
        cr4_allowed,
    }
}

/// Flat segment access rights (SDM 25.4.1): G, D/B, P, S, type.
const AR_CODE32: u64 = 0xc09b;
const AR_DATA32: u64 = 0xc093;
const AR_TSS_BUSY: u64 = 0x8b;

const AR_CODE64: u64 = 0xa09b;

/// Writes L1's first guest state for `entry`; returns the GPRs it sets
/// (index into `GuestRegs::gpr`, value).
pub fn write_entry_state(v: &mut impl Vmcs, entry: &Entry, policy: &CrPolicy) -> [(usize, u64); 2] {
    match *entry {
        Entry::Multiboot { eip, ebx } => write_multiboot_state(v, eip, ebx, policy),
        Entry::Linux {
            rip,
            rsi,
            rsp,
            cr3,
            gdt_base,
            gdt_limit,
        } => write_linux_state(
            v,
            LinuxEntry {
                rip,
                rsi,
                rsp,
                cr3,
                gdt_base,
                gdt_limit,
            },
            policy,
        ),
    }
}

/// The "IA-32e mode guest" entry control must equal the guest's EFER.LMA;
/// after the first exit the CPU keeps it in step.
fn set_ia32e_entry(v: &mut impl Vmcs, on: bool) {
    let bit = caps::entry::IA32E_MODE_GUEST as u64;
    let ctl = v.read(F::VM_ENTRY_CONTROLS);
    v.write(
        F::VM_ENTRY_CONTROLS,
        if on { ctl | bit } else { ctl & !bit },
    );
}

struct LinuxEntry {
    rip: u64,
    rsi: u64,
    rsp: u64,
    cr3: u64,
    gdt_base: u64,
    gdt_limit: u16,
}

/// Linux's 64-bit entry (boot.rst): long mode, paging on through the
/// loader's identity map, __BOOT_CS (0x10) 64-bit code and __BOOT_DS (0x18)
/// flat data from the loader's GDT, interrupts off, RSI = boot_params.
/// EFER.NXE is on, as firmware leaves it: page-table entries with NX set
/// are then valid rather than reserved-bit faults.
fn write_linux_state(v: &mut impl Vmcs, e: LinuxEntry, policy: &CrPolicy) -> [(usize, u64); 2] {
    let cr = CrState {
        cr0: CR0_PE | CR0_ET | CR0_PG,
        cr4: CR4_PAE,
        ..Default::default()
    };
    v.write(F::GUEST_CR0, cr.cr0_actual(policy));
    v.write(F::CR0_READ_SHADOW, cr.cr0);
    v.write(F::GUEST_CR3, e.cr3);
    v.write(F::GUEST_CR4, cr.cr4_actual(policy));
    v.write(F::CR4_READ_SHADOW, cr.cr4);
    v.write(F::GUEST_IA32_EFER, EFER_LME | EFER_LMA | EFER_NXE);
    set_ia32e_entry(v, true);
    write_common(v, AR_CODE64, e.gdt_base, e.gdt_limit, e.rip, e.rsp);
    [(6, e.rsi), (0, 0)]
}

/// Flat segments (selectors as GRUB and the Linux boot protocol have them:
/// 0x10 code with access rights `cs_ar`, 0x18 data), TR, LDTR, descriptor
/// tables, RIP/RSP/RFLAGS and the MSRs and state fields both entries set
/// the same way.
fn write_common(v: &mut impl Vmcs, cs_ar: u64, gdt_base: u64, gdt_limit: u16, rip: u64, rsp: u64) {
    for (i, seg) in GUEST_SEGMENTS[..=seg::GS].iter().enumerate() {
        let (s, a) = if i == seg::CS {
            (0x10, cs_ar)
        } else {
            (0x18, AR_DATA32)
        };
        v.write(seg.selector, s);
        v.write(seg.base, 0);
        v.write(seg.limit, 0xffff_ffff);
        v.write(seg.ar, a);
    }
    v.write(F::GUEST_TR_SELECTOR, 0);
    v.write(F::GUEST_TR_BASE, 0);
    v.write(F::GUEST_TR_LIMIT, 0xffff);
    v.write(F::GUEST_TR_AR_BYTES, AR_TSS_BUSY);
    v.write(F::GUEST_LDTR_SELECTOR, 0);
    v.write(F::GUEST_LDTR_BASE, 0);
    v.write(F::GUEST_LDTR_LIMIT, 0);
    v.write(F::GUEST_LDTR_AR_BYTES, AR_UNUSABLE);
    v.write(F::GUEST_GDTR_BASE, gdt_base);
    v.write(F::GUEST_GDTR_LIMIT, gdt_limit as u64);
    v.write(F::GUEST_IDTR_BASE, 0);
    v.write(F::GUEST_IDTR_LIMIT, 0);
    v.write(F::GUEST_RIP, rip);
    v.write(F::GUEST_RSP, rsp);
    v.write(F::GUEST_RFLAGS, 0x2);
    v.write(F::GUEST_DR7, 0x400);
    v.write(F::GUEST_IA32_DEBUGCTL, 0);
    v.write(F::GUEST_IA32_PAT, 0x0007_0406_0007_0406); // the power-on value
    v.write(F::GUEST_SYSENTER_CS, 0);
    v.write(F::GUEST_SYSENTER_ESP, 0);
    v.write(F::GUEST_SYSENTER_EIP, 0);
    v.write(F::GUEST_INTERRUPTIBILITY_INFO, 0);
    v.write(F::GUEST_ACTIVITY_STATE, 0);
    v.write(F::GUEST_PENDING_DBG_EXCEPTIONS, 0);
}

fn write_multiboot_state(
    v: &mut impl Vmcs,
    eip: u32,
    ebx: u32,
    policy: &CrPolicy,
) -> [(usize, u64); 2] {
    let cr = CrState {
        cr0: CR0_PE | CR0_ET,
        ..Default::default()
    };
    v.write(F::GUEST_CR0, cr.cr0_actual(policy));
    v.write(F::CR0_READ_SHADOW, cr.cr0);
    v.write(F::GUEST_CR3, 0);
    v.write(F::GUEST_CR4, cr.cr4_actual(policy));
    v.write(F::CR4_READ_SHADOW, cr.cr4);
    v.write(F::GUEST_IA32_EFER, 0);
    set_ia32e_entry(v, false);
    write_common(v, AR_CODE32, 0, 0, eip as u64, 0);
    [
        (0, boot::loader::multiboot::BOOTLOADER_MAGIC as u64),
        (3, ebx as u64),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::fake::FakeVmcs;

    use crate::vmx::caps::tests::bochs_skylake as caps;

    #[test]
    fn l1_controls_on_bochs() {
        let c = l1_controls(&caps(), true, false).unwrap();
        assert_eq!(c.pin, 0x16, "no interrupt or NMI exiting: L1 owns them");
        assert_eq!(l1_controls(&caps(), true, true).unwrap().pin, 0x56);
        assert_eq!(c.primary & caps::primary::HLT_EXITING, 0);
        assert_eq!(
            c.primary & (caps::primary::CR3_LOAD_EXITING | caps::primary::CR3_STORE_EXITING),
            0
        );
        assert!(c.has_secondary(
            caps::secondary::ENABLE_EPT
                | caps::secondary::UNRESTRICTED_GUEST
                | caps::secondary::ENABLE_VPID
        ));
        assert!(c.has_secondary(caps::secondary::ENABLE_RDTSCP | caps::secondary::ENABLE_XSAVES));
        assert_ne!(c.exit & caps::exit::LOAD_EFER, 0);
        let mut no_ug = caps();
        no_ug.secondary &= !((caps::secondary::UNRESTRICTED_GUEST as u64) << 32);
        assert_eq!(
            l1_controls(&no_ug, true, false).unwrap_err(),
            ControlError {
                control: Control::Secondary,
                missing: caps::secondary::UNRESTRICTED_GUEST
            }
        );
    }

    #[test]
    fn multiboot_entry_state() {
        let policy = l1_cr_policy(&caps(), false);
        assert_eq!(policy.cr0_forced, CR0_NE);
        assert_eq!(policy.cr4_allowed & (CR4_VMXE | CR4_SMXE), 0);
        let mut v = FakeVmcs::default();
        let regs = write_entry_state(
            &mut v,
            &Entry::Multiboot {
                eip: 0x10_0000,
                ebx: 0x9000,
            },
            &policy,
        );
        assert_eq!(regs, [(0, 0x2bad_b002), (3, 0x9000)]);
        assert_eq!(v.read(F::GUEST_CR0), 0x31);
        assert_eq!(v.read(F::CR0_READ_SHADOW), 0x11);
        assert_eq!(v.read(F::GUEST_CR4), 0x2000);
        assert_eq!(v.read(F::CR4_READ_SHADOW), 0);
        assert_eq!(v.read(F::GUEST_RIP), 0x10_0000);
        assert_eq!(v.read(F::GUEST_CS_AR_BYTES), 0xc09b);
        assert_eq!(v.read(F::GUEST_LDTR_AR_BYTES), 1 << 16);
        assert_eq!(v.read(F::GUEST_RFLAGS), 2);
    }

    #[test]
    fn linux_entry_state() {
        let policy = l1_cr_policy(&caps(), true);
        let mut v = FakeVmcs::default();
        let c = l1_controls(&caps(), true, false).unwrap();
        v.write(F::VM_ENTRY_CONTROLS, c.entry as u64);
        let e = Entry::Linux {
            rip: 0x100_0200,
            rsi: 0x10_0000,
            rsp: 0x10_9000,
            cr3: 0x10_1000,
            gdt_base: 0x10_7000,
            gdt_limit: 31,
        };
        let regs = write_entry_state(&mut v, &e, &policy);
        assert_eq!(regs, [(6, 0x10_0000), (0, 0)]);
        assert_eq!(v.read(F::GUEST_CR0), 0x8000_0031, "PE, ET, NE (forced), PG");
        assert_eq!(v.read(F::CR0_READ_SHADOW), 0x8000_0011);
        assert_eq!(v.read(F::GUEST_CR4), 0x2020, "PAE and the forced VMXE");
        assert_eq!(v.read(F::CR4_READ_SHADOW), 0x20);
        assert_eq!(v.read(F::GUEST_CR3), 0x10_1000);
        assert_eq!(v.read(F::GUEST_IA32_EFER), 0xd00, "LME, LMA, NXE");
        assert_ne!(
            v.read(F::VM_ENTRY_CONTROLS) & caps::entry::IA32E_MODE_GUEST as u64,
            0
        );
        assert_eq!(v.read(F::GUEST_CS_SELECTOR), 0x10);
        assert_eq!(v.read(F::GUEST_CS_AR_BYTES), 0xa09b, "L set, D clear");
        assert_eq!(v.read(F::GUEST_DS_SELECTOR), 0x18);
        assert_eq!(v.read(F::GUEST_SS_AR_BYTES), 0xc093);
        assert_eq!(
            (v.read(F::GUEST_GDTR_BASE), v.read(F::GUEST_GDTR_LIMIT)),
            (0x10_7000, 31)
        );
        assert_eq!(
            (v.read(F::GUEST_RIP), v.read(F::GUEST_RSP)),
            (0x100_0200, 0x10_9000)
        );
        assert_eq!(v.read(F::GUEST_RFLAGS), 2, "interrupts off");
        // A multiboot entry afterwards clears the control again.
        write_entry_state(
            &mut v,
            &Entry::Multiboot {
                eip: 0x10_0000,
                ebx: 0,
            },
            &policy,
        );
        assert_eq!(
            v.read(F::VM_ENTRY_CONTROLS) & caps::entry::IA32E_MODE_GUEST as u64,
            0
        );
        assert_eq!(v.read(F::GUEST_IA32_EFER), 0);
    }

    #[test]
    fn controls_are_written() {
        let c = l1_controls(&caps(), true, false).unwrap();
        let pages = ControlPages {
            io_bitmap_a: 0x1000,
            io_bitmap_b: 0x2000,
            msr_bitmap: 0x3000,
            eptp: 0x401e,
            vpid: 1,
        };
        let mut v = FakeVmcs::default();
        write_controls(&mut v, &c, &pages, &l1_cr_policy(&caps(), false));
        assert_eq!(v.read(F::EPT_POINTER), 0x401e);
        assert_eq!(v.read(F::VIRTUAL_PROCESSOR_ID), 1);
        assert_eq!(v.read(F::VMCS_LINK_POINTER), u64::MAX);
        assert_eq!(v.read(F::CR4_GUEST_HOST_MASK), 0x2000);
        assert_eq!(v.read(F::SECONDARY_VM_EXEC_CONTROL), c.secondary as u64);
    }
}
