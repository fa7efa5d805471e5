//! Filling a VMCS: L1's state as the host state, L2's starting state as
//! the guest state, and the controls fitted to the capabilities.

use super::caps::Caps;
use super::cpu;
use super::fields::*;
use super::l2::{self, Mode};
use super::mem;
use super::vm;
use super::vmx::{vmwrite, VmFail, VmResult};

/// Wanted controls before fitting (SDM 25.6-25.8); `fit` applies the
/// capabilities.
#[derive(Clone, Copy, Debug, Default)]
pub struct Controls {
    pub pin: u32,
    pub proc: u32,
    pub proc2: u32,
    pub exit: u32,
    pub entry: u32,
}

/// VMWRITE that stops the caller at the first failure, naming the field.
pub fn w(field: u32, value: u64) -> Result<(), (u32, VmFail)> {
    vmwrite(field, value).map_err(|e| (field, e))
}

/// The host-state area (SDM 25.5, checked per 27.2.2-27.2.4): L1 as it
/// runs now, resuming at hv_exit. `host_cr3` lets a check load a copy.
pub fn write_host_state(caps: &Caps, host_cr3: u64) -> Result<(), (u32, VmFail)> {
    w(HOST_CR0, cpu::cr0())?;
    w(HOST_CR3, host_cr3)?;
    w(HOST_CR4, cpu::cr4())?;
    w(HOST_ES_SEL, cpu::DATA_SEL as u64)?;
    w(HOST_CS_SEL, cpu::CODE_SEL as u64)?;
    w(HOST_SS_SEL, cpu::DATA_SEL as u64)?;
    w(HOST_DS_SEL, cpu::DATA_SEL as u64)?;
    w(HOST_FS_SEL, 0)?;
    w(HOST_GS_SEL, 0)?;
    w(HOST_TR_SEL, cpu::TSS_SEL as u64)?;
    // SAFETY (rdmsr): architectural MSRs every VMX processor has.
    unsafe {
        w(HOST_FS_BASE, cpu::rdmsr(cpu::IA32_FS_BASE))?;
        w(HOST_GS_BASE, cpu::rdmsr(cpu::IA32_GS_BASE))?;
        w(HOST_SYSENTER_CS, cpu::rdmsr(cpu::IA32_SYSENTER_CS))?;
        w(HOST_SYSENTER_ESP, cpu::rdmsr(cpu::IA32_SYSENTER_ESP))?;
        w(HOST_SYSENTER_EIP, cpu::rdmsr(cpu::IA32_SYSENTER_EIP))?;
        if caps.exit.can_set(exit::LOAD_EFER) {
            w(HOST_IA32_EFER, cpu::rdmsr(cpu::IA32_EFER))?;
        }
        if caps.exit.can_set(exit::LOAD_PAT) {
            w(HOST_IA32_PAT, cpu::rdmsr(cpu::IA32_PAT))?;
        }
    }
    w(HOST_TR_BASE, cpu::tss_base())?;
    w(HOST_GDTR_BASE, cpu::sgdt().1)?;
    w(HOST_IDTR_BASE, cpu::sidt().1)?;
    w(HOST_RIP, vm::host_rip())?;
    Ok(())
}

/// Guest CR0 for `mode` (SDM 26.3.1.1: FIXED0/FIXED1, PE/PG exempt for an
/// unrestricted guest): PE, ET, NE, plus PG when L2 pages.
pub fn guest_cr0(caps: &Caps, mode: Mode) -> u64 {
    let paged = mode != Mode::Unpaged;
    let want = 0x31 | if paged { 1 << 31 } else { 0 };
    (want | caps.guest_cr0_must1(mode == Mode::Unpaged)) & caps.cr0_fixed1
}

/// Guest CR4: what FIXED0 demands (VMXE) and nothing else.
pub fn guest_cr4(caps: &Caps) -> u64 {
    caps.cr4_fixed0 & caps.cr4_fixed1
}

/// The guest-state area (SDM 25.4, checked per 27.3.1): flat 32-bit
/// protected mode at `rip`, stack at the top of L2's stack page, L2's
/// GDT/IDT, a busy 32-bit TSS, LDTR unusable, no events blocked.
pub fn write_guest_state(caps: &Caps, mode: Mode, rip: u64) -> Result<(), (u32, VmFail)> {
    w(GUEST_CR0, guest_cr0(caps, mode))?;
    w(
        GUEST_CR3,
        if mode == Mode::Unpaged {
            0
        } else {
            l2::phys(mode, l2::PD)
        },
    )?;
    w(GUEST_CR4, guest_cr4(caps))?;
    w(GUEST_DR7, 0x400)?;
    let segs = [
        (GUEST_ES_SEL, GUEST_ES_BASE, GUEST_ES_LIMIT, GUEST_ES_AR),
        (GUEST_SS_SEL, GUEST_SS_BASE, GUEST_SS_LIMIT, GUEST_SS_AR),
        (GUEST_DS_SEL, GUEST_DS_BASE, GUEST_DS_LIMIT, GUEST_DS_AR),
        (GUEST_FS_SEL, GUEST_FS_BASE, GUEST_FS_LIMIT, GUEST_FS_AR),
        (GUEST_GS_SEL, GUEST_GS_BASE, GUEST_GS_LIMIT, GUEST_GS_AR),
    ];
    for (sel, base, limit, ar) in segs {
        w(sel, l2::DATA_SEL)?;
        w(base, 0)?;
        w(limit, 0xffff_ffff)?;
        w(ar, 0xc093)?; // data, read/write, accessed, DPL 0, present, 4 KiB granular, 32-bit
    }
    w(GUEST_CS_SEL, l2::CODE_SEL)?;
    w(GUEST_CS_BASE, 0)?;
    w(GUEST_CS_LIMIT, 0xffff_ffff)?;
    w(GUEST_CS_AR, 0xc09b)?; // code, execute/read, accessed, 32-bit
    w(GUEST_LDTR_SEL, 0)?;
    w(GUEST_LDTR_BASE, 0)?;
    w(GUEST_LDTR_LIMIT, 0)?;
    w(GUEST_LDTR_AR, 0x1_0000)?; // unusable
    w(GUEST_TR_SEL, l2::TSS_SEL)?;
    w(GUEST_TR_BASE, l2::TSS)?;
    w(GUEST_TR_LIMIT, 0x67)?;
    w(GUEST_TR_AR, 0x8b)?; // busy 32-bit TSS, present
    w(GUEST_GDTR_BASE, l2::GDT)?;
    w(GUEST_GDTR_LIMIT, l2::GDT_LIMIT)?;
    w(GUEST_IDTR_BASE, l2::IDT)?;
    w(GUEST_IDTR_LIMIT, l2::IDT_ENTRIES * 8 - 1)?;
    w(GUEST_RSP, l2::STACK_TOP)?;
    w(GUEST_RIP, rip)?;
    w(GUEST_RFLAGS, 0x2)?;
    w(GUEST_INTERRUPTIBILITY, 0)?;
    w(GUEST_ACTIVITY_STATE, 0)?;
    w(GUEST_PENDING_DBG, 0)?;
    w(VMCS_LINK_POINTER, u64::MAX)?;
    w(GUEST_IA32_DEBUGCTL, 0)?;
    w(GUEST_SYSENTER_CS, 0)?;
    w(GUEST_SYSENTER_ESP, 0)?;
    w(GUEST_SYSENTER_EIP, 0)?;
    if caps.entry.can_set(entry::LOAD_EFER) {
        w(GUEST_IA32_EFER, 0)?;
    }
    if caps.entry.can_set(entry::LOAD_PAT) {
        w(GUEST_IA32_PAT, 0x0007_0406_0007_0406)?;
    }
    Ok(())
}

/// The guest-state area of a 64-bit L2 (`l2x`, SDM 25.4, checked per
/// 27.3.1): IA-32e mode with paging through its own 4-level tables, a
/// 64-bit code segment, flat data segments, a busy 64-bit TSS, LDTR
/// unusable, no events blocked. The caller sets the IA-32e mode guest
/// entry control; EFER.LME|LMA come from the EFER field when the entry
/// loads it, else from that control (27.3.2.1).
pub fn write_guest_state64(caps: &Caps, rip: u64) -> Result<(), (u32, VmFail)> {
    use super::l2x;
    // PE, ET, NE, PG (26.3.1.1: IA-32e mode needs PG, and so PAE).
    w(GUEST_CR0, (0x8000_0031 | caps.cr0_fixed0) & caps.cr0_fixed1)?;
    w(GUEST_CR3, l2x::PML4)?;
    w(GUEST_CR4, (1 << 5 | caps.cr4_fixed0) & caps.cr4_fixed1)?;
    w(GUEST_DR7, 0x400)?;
    let segs = [
        (GUEST_ES_SEL, GUEST_ES_BASE, GUEST_ES_LIMIT, GUEST_ES_AR),
        (GUEST_SS_SEL, GUEST_SS_BASE, GUEST_SS_LIMIT, GUEST_SS_AR),
        (GUEST_DS_SEL, GUEST_DS_BASE, GUEST_DS_LIMIT, GUEST_DS_AR),
        (GUEST_FS_SEL, GUEST_FS_BASE, GUEST_FS_LIMIT, GUEST_FS_AR),
        (GUEST_GS_SEL, GUEST_GS_BASE, GUEST_GS_LIMIT, GUEST_GS_AR),
    ];
    for (sel, base, limit, ar) in segs {
        w(sel, l2x::DATA_SEL)?;
        w(base, 0)?;
        w(limit, 0xffff_ffff)?;
        w(ar, 0xc093)?;
    }
    w(GUEST_CS_SEL, l2x::CODE_SEL)?;
    w(GUEST_CS_BASE, 0)?;
    w(GUEST_CS_LIMIT, 0xffff_ffff)?;
    w(GUEST_CS_AR, 0xa09b)?; // code, execute/read, accessed, L=1, D=0, 4 KiB granular
    w(GUEST_LDTR_SEL, 0)?;
    w(GUEST_LDTR_BASE, 0)?;
    w(GUEST_LDTR_LIMIT, 0)?;
    w(GUEST_LDTR_AR, 0x1_0000)?;
    w(GUEST_TR_SEL, l2x::TSS_SEL)?;
    w(GUEST_TR_BASE, l2x::TSS)?;
    w(GUEST_TR_LIMIT, 0x67)?;
    w(GUEST_TR_AR, 0x8b)?; // busy 64-bit TSS (type 11), present
    w(GUEST_GDTR_BASE, l2x::GDT)?;
    w(GUEST_GDTR_LIMIT, l2x::GDT_LIMIT)?;
    w(GUEST_IDTR_BASE, l2x::IDT)?;
    w(GUEST_IDTR_LIMIT, l2x::IDT_ENTRIES * 16 - 1)?;
    w(GUEST_RSP, l2x::STACK_TOP)?;
    w(GUEST_RIP, rip)?;
    w(GUEST_RFLAGS, 0x2)?;
    w(GUEST_INTERRUPTIBILITY, 0)?;
    w(GUEST_ACTIVITY_STATE, 0)?;
    w(GUEST_PENDING_DBG, 0)?;
    w(VMCS_LINK_POINTER, u64::MAX)?;
    w(GUEST_IA32_DEBUGCTL, 0)?;
    w(GUEST_SYSENTER_CS, 0)?;
    w(GUEST_SYSENTER_ESP, 0)?;
    w(GUEST_SYSENTER_EIP, 0)?;
    if caps.entry.can_set(entry::LOAD_EFER) {
        w(GUEST_IA32_EFER, 1 << 8 | 1 << 10)?; // LME | LMA
    }
    if caps.entry.can_set(entry::LOAD_PAT) {
        w(GUEST_IA32_PAT, 0x0007_0406_0007_0406)?;
    }
    Ok(())
}

/// The controls every L2 starts with: external interrupts and NMIs exit
/// (nothing reaches L2 behind L1's back), HLT exits, all port I/O exits
/// (unconditional I/O exiting), every MSR access exits (no bitmaps), EPT
/// and unrestricted guest per `mode`, a 64-bit host, L2's EFER swapped.
pub fn default_controls(caps: &Caps, mode: Mode) -> Controls {
    let mut c = Controls {
        pin: pin::EXT_INTR_EXITING | pin::NMI_EXITING,
        proc: proc::HLT_EXITING | proc::UNCOND_IO_EXITING,
        proc2: 0,
        exit: exit::HOST_ADDR_SPACE_SIZE,
        entry: 0,
    };
    if mode.ept() {
        c.proc |= proc::SECONDARY;
        c.proc2 |= proc2::EPT;
    }
    if mode == Mode::Unpaged {
        c.proc2 |= proc2::UNRESTRICTED_GUEST;
    }
    if caps.exit_load_efer() {
        c.exit |= exit::SAVE_EFER | exit::LOAD_EFER;
        c.entry |= entry::LOAD_EFER;
    }
    if caps.exit.can_set(exit::LOAD_PAT | exit::SAVE_PAT) && caps.entry.can_set(entry::LOAD_PAT) {
        c.exit |= exit::LOAD_PAT | exit::SAVE_PAT;
        c.entry |= entry::LOAD_PAT;
    }
    c
}

/// Writes `c` fitted to the capabilities: (wanted | allowed-0) & allowed-1.
pub fn write_controls(caps: &Caps, c: &Controls) -> Result<(), (u32, VmFail)> {
    w(PIN_CONTROLS, caps.pin.adjust(c.pin) as u64)?;
    w(PROC_CONTROLS, caps.proc.adjust(c.proc) as u64)?;
    if caps.secondary() {
        w(PROC2_CONTROLS, caps.proc2.adjust(c.proc2) as u64)?;
    }
    w(EXIT_CONTROLS, caps.exit.adjust(c.exit) as u64)?;
    w(ENTRY_CONTROLS, caps.entry.adjust(c.entry) as u64)?;
    w(EXCEPTION_BITMAP, 0)?;
    w(PF_ERROR_MASK, 0)?;
    w(PF_ERROR_MATCH, 0)?;
    w(CR3_TARGET_COUNT, 0)?;
    w(CR0_GUEST_HOST_MASK, 0)?;
    w(CR4_GUEST_HOST_MASK, 0)?;
    w(CR0_READ_SHADOW, 0)?;
    w(CR4_READ_SHADOW, 0)?;
    w(EXIT_MSR_STORE_COUNT, 0)?;
    w(EXIT_MSR_LOAD_COUNT, 0)?;
    w(ENTRY_MSR_LOAD_COUNT, 0)?;
    w(ENTRY_INTR_INFO, 0)?;
    Ok(())
}

/// Prepares a VMCS region for VMPTRLD (SDM 25.2): revision identifier in
/// bits 30:0 of the first word, shadow-VMCS indicator clear, then VMCLEAR.
pub fn init_region(caps: &Caps, pa: u64) -> VmResult {
    mem::zero_page(pa);
    mem::wr32(pa, caps.revision());
    // SAFETY: `pa` is a pool page reserved for VMCS regions.
    unsafe { super::vmx::vmclear(pa) }
}
