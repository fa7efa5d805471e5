//! The checks a VM entry makes on VMCS12 (SDM Vol. 3C 27.2-27.3), in the
//! SDM's order: VM-execution, VM-exit and VM-entry controls (failing with
//! VMfailValid 7), host state (VMfailValid 8), then guest state (a VM exit
//! with reason 33 and bit 31 set). Every failure names its check, like
//! KVM's `CC()`, so the log says what L1 got wrong.

use super::caps::NestedCaps;
use super::ept12::eptp_valid;
use super::vmcs12::Vmcs12;
use crate::regs::{
    AR_DB, AR_DPL_SHIFT, AR_G, AR_L, AR_P, AR_S, AR_TYPE, AR_UNUSABLE, CR0_PE, CR0_PG, CR4_PAE,
    EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE,
};
use crate::vmx::caps::{entry, exit, misc, pin, primary, secondary, Control};
use crate::vmx::exit::event_type;
use crate::vmx::fields::{seg, GUEST_SEGMENTS};
use crate::vmx::guest_cr::check_pdptes;
use crate::vmx::Field as F;

/// Why the entry failed, and which check said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryFailure {
    /// VMfailValid with this error number (7: controls, 8: host state).
    Fail { error: u32, check: &'static str },
    /// VM-entry failure exit: basic reason 33 (guest state) with this qualification.
    GuestState {
        qualification: u64,
        check: &'static str,
    },
}

macro_rules! cc {
    ($cond:expr, $fail:expr) => {
        if $cond {
            return Err($fail(stringify!($cond)));
        }
    };
}

fn control(check: &'static str) -> EntryFailure {
    EntryFailure::Fail { error: 7, check }
}
fn host(check: &'static str) -> EntryFailure {
    EntryFailure::Fail { error: 8, check }
}
fn guest(check: &'static str) -> EntryFailure {
    EntryFailure::GuestState {
        qualification: 0,
        check,
    }
}
fn link(check: &'static str) -> EntryFailure {
    EntryFailure::GuestState {
        qualification: 4,
        check,
    }
}
fn pdpte(check: &'static str) -> EntryFailure {
    EntryFailure::GuestState {
        qualification: 2,
        check,
    }
}

/// What the checks need to know beyond VMCS12.
pub struct CheckCtx<'a> {
    pub caps: &'a NestedCaps,
    pub maxphyaddr: u8,
    /// Whether L1 runs in IA-32e mode now (IA32_EFER.LMA).
    pub l1_long_mode: bool,
    /// Whether a page is L1's RAM: the APIC-access page must be (see
    /// `apic_access_ok`).
    pub is_l1_ram: &'a dyn Fn(u64, u64) -> bool,
    /// The revision of L1's VMCS regions, to check a VMCS link pointer.
    pub read_revision: &'a dyn Fn(u64) -> Option<u32>,
    /// Eight bytes at an L1-physical address as the processor reads them:
    /// all ones where no L1 RAM backs them (never L0's memory).
    pub read_u64: &'a dyn Fn(u64) -> u64,
}

impl CheckCtx<'_> {
    /// SDM 27.2.1.1-27.2.1.3: a structure's address must be aligned and
    /// it must end below MAXPHYADDR; any such address is accepted, backed
    /// or not (L0 then does what the hardware does with it).
    fn addr_ok(&self, a: u64, align: u64, len: u64) -> bool {
        a.is_multiple_of(align)
            && a.checked_add(len - 1)
                .is_some_and(|end| end >> self.maxphyaddr == 0)
    }
    /// The APIC-access page goes into VMCS02 as it is, and the processor
    /// recognizes it by the address EPT02 translates to, which is always
    /// L1's RAM: elsewhere it would never be recognized, so L0 asks for
    /// L1's RAM, stricter than the SDM.
    fn apic_access_ok(&self, a: u64) -> bool {
        self.addr_ok(a, 4096, 4096) && (self.is_l1_ram)(a, 4096)
    }
    fn canonical(&self, a: u64) -> bool {
        let top = a as i64 >> 47;
        top == 0 || top == -1
    }
}

fn pat_ok(pat: u64) -> bool {
    (0..8).all(|i| matches!((pat >> (8 * i)) & 0xff, 0 | 1 | 4 | 5 | 6 | 7))
}

/// EFER bits a guest may hold: SCE, LME, LMA, NXE, SVME(no), LMSLE(no), FFXSR(no).
const EFER_VALID: u64 = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;

/// Exceptions that push an error code (SDM 27.2.1.3 lists them for the
/// "deliver error code" rule).
fn error_code_vector(v: u8) -> bool {
    matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21)
}

/// SDM 27.2.1: VM-execution, VM-exit and VM-entry control fields.
pub fn check_controls(v: &Vmcs12, c: &CheckCtx) -> Result<(), EntryFailure> {
    let caps = c.caps;
    let pinc = v.get(F::PIN_BASED_VM_EXEC_CONTROL) as u32;
    let proc1 = v.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32;
    let proc2 = v.secondary_controls();
    let exitc = v.get(F::VM_EXIT_CONTROLS) as u32;
    let entryc = v.get(F::VM_ENTRY_CONTROLS) as u32;

    cc!(!caps.control_ok(Control::Pin, pinc), control);
    cc!(!caps.control_ok(Control::Primary, proc1), control);
    cc!(
        proc1 & primary::ACTIVATE_SECONDARY != 0 && !caps.control_ok(Control::Secondary, proc2),
        control
    );
    cc!(
        v.get(F::CR3_TARGET_COUNT) > (caps.misc >> misc::CR3_TARGETS_SHIFT) & 0x1ff,
        control
    );
    if proc1 & primary::USE_IO_BITMAPS != 0 {
        cc!(!c.addr_ok(v.get(F::IO_BITMAP_A), 4096, 4096), control);
        cc!(!c.addr_ok(v.get(F::IO_BITMAP_B), 4096, 4096), control);
    }
    if proc1 & primary::USE_MSR_BITMAPS != 0 {
        cc!(!c.addr_ok(v.get(F::MSR_BITMAP), 4096, 4096), control);
    }
    let tpr_shadow = proc1 & primary::USE_TPR_SHADOW != 0;
    if tpr_shadow {
        cc!(
            !c.addr_ok(v.get(F::VIRTUAL_APIC_PAGE_ADDR), 4096, 4096),
            control
        );
        cc!(
            proc2 & secondary::VIRTUAL_INTERRUPT_DELIVERY == 0
                && v.get(F::TPR_THRESHOLD) & !0xf != 0,
            control
        );
        check_tpr_threshold(v, c)?;
    } else {
        cc!(
            proc2
                & (secondary::VIRTUALIZE_X2APIC
                    | secondary::APIC_REGISTER_VIRT
                    | secondary::VIRTUAL_INTERRUPT_DELIVERY)
                != 0,
            control
        );
    }
    cc!(
        proc2 & secondary::VIRTUALIZE_X2APIC != 0
            && proc2 & secondary::VIRTUALIZE_APIC_ACCESSES != 0,
        control
    );
    if pinc & pin::POSTED_INTERRUPTS != 0 {
        cc!(proc2 & secondary::VIRTUAL_INTERRUPT_DELIVERY == 0, control);
        cc!(exitc & exit::ACK_INTERRUPT_ON_EXIT == 0, control);
        cc!(v.get(F::POSTED_INTR_NV) & !0xff != 0, control);
        let desc = v.get(F::POSTED_INTR_DESC_ADDR);
        cc!(
            !desc.is_multiple_of(64) || desc >> c.maxphyaddr != 0,
            control
        );
    }
    let proc3 = if proc1 & primary::ACTIVATE_TERTIARY != 0 {
        v.get(F::TERTIARY_VM_EXEC_CONTROL)
    } else {
        0
    };
    cc!(proc3 & !caps.tertiary != 0, control);
    if proc3 & super::caps::TERTIARY_IPI_VIRT != 0 {
        cc!(!tpr_shadow, control);
        let table = v.get(F::PID_POINTER_TABLE);
        cc!(
            !table.is_multiple_of(8) || table >> c.maxphyaddr != 0,
            control
        );
    }
    cc!(
        proc2 & secondary::VIRTUAL_INTERRUPT_DELIVERY != 0
            && pinc & pin::EXTERNAL_INTERRUPT_EXITING == 0,
        control
    );
    cc!(
        pinc & pin::NMI_EXITING == 0 && pinc & pin::VIRTUAL_NMIS != 0,
        control
    );
    cc!(
        pinc & pin::VIRTUAL_NMIS == 0 && proc1 & primary::NMI_WINDOW_EXITING != 0,
        control
    );
    if proc2 & secondary::VIRTUALIZE_APIC_ACCESSES != 0 {
        cc!(!c.apic_access_ok(v.get(F::APIC_ACCESS_ADDR)), control);
    }
    cc!(
        proc2 & secondary::ENABLE_VPID != 0 && v.get(F::VIRTUAL_PROCESSOR_ID) == 0,
        control
    );
    cc!(
        proc2 & secondary::ENABLE_EPT != 0
            && !eptp_valid(v.get(F::EPT_POINTER), caps, c.maxphyaddr),
        control
    );
    cc!(
        proc2 & secondary::UNRESTRICTED_GUEST != 0 && proc2 & secondary::ENABLE_EPT == 0,
        control
    );
    // "Enable PML" needs EPT and a 4 KiB-aligned PML address below
    // MAXPHYADDR (SDM 27.2.1.1).
    if proc2 & secondary::ENABLE_PML != 0 {
        cc!(proc2 & secondary::ENABLE_EPT == 0, control);
        cc!(!c.addr_ok(v.get(F::PML_ADDRESS), 4096, 4096), control);
    }

    // VM-exit controls (SDM 27.2.1.2).
    cc!(!caps.control_ok(Control::Exit, exitc), control);
    cc!(
        pinc & pin::PREEMPTION_TIMER == 0 && exitc & exit::SAVE_PREEMPTION_TIMER != 0,
        control
    );
    for (count, addr) in [
        (F::VM_EXIT_MSR_STORE_COUNT, F::VM_EXIT_MSR_STORE_ADDR),
        (F::VM_EXIT_MSR_LOAD_COUNT, F::VM_EXIT_MSR_LOAD_ADDR),
    ] {
        let n = v.get(count);
        cc!(
            n > 512 || (n > 0 && !c.addr_ok(v.get(addr), 16, 16 * n)),
            control
        );
    }

    // VM-entry controls (SDM 27.2.1.3).
    cc!(!caps.control_ok(Control::Entry, entryc), control);
    let n = v.get(F::VM_ENTRY_MSR_LOAD_COUNT);
    cc!(
        n > 512 || (n > 0 && !c.addr_ok(v.get(F::VM_ENTRY_MSR_LOAD_ADDR), 16, 16 * n)),
        control
    );
    check_entry_event(v, c)
}

/// SDM 27.2.1.1: with "use TPR shadow" and neither "virtualize APIC
/// accesses" nor "virtual-interrupt delivery", TPR threshold[3:0] may not
/// exceed VTPR[7:4]. VTPR is in the virtual-APIC page, which L2 (CR8
/// writes) and L1 change without a VMWRITE, so every entry checks it.
pub fn check_tpr_threshold(v: &Vmcs12, c: &CheckCtx) -> Result<(), EntryFailure> {
    let proc1 = v.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32;
    let proc2 = v.secondary_controls();
    let apic_virt = secondary::VIRTUALIZE_APIC_ACCESSES | secondary::VIRTUAL_INTERRUPT_DELIVERY;
    if proc1 & primary::USE_TPR_SHADOW != 0 && proc2 & apic_virt == 0 {
        // (A VMRESUME's light checks come here without the address check:
        // an address past 2^64 reads as unbacked memory, all ones.)
        let vtpr = v
            .get(F::VIRTUAL_APIC_PAGE_ADDR)
            .checked_add(0x80)
            .map_or(u8::MAX, |a| (c.read_u64)(a) as u8);
        cc!(v.get(F::TPR_THRESHOLD) & 0xf > (vtpr >> 4) as u64, control);
    }
    Ok(())
}

/// SDM 27.3.1.6: an entry into PAE paging without EPT loads the PDPTEs
/// from CR3 (the processor's reads: all ones where no L1 RAM backs them),
/// and fails with qualification 2 if a present one has reserved bits.
/// Memory, not VMCS12, holds them: every entry reads and checks them.
/// Returns what VMCS02 (always with EPT) must hold, or None when the
/// entry loads no PDPTEs from memory.
pub fn check_cr3_pdptes(v: &Vmcs12, c: &CheckCtx) -> Result<Option<[u64; 4]>, EntryFailure> {
    let (cr0, cr4) = (v.get(F::GUEST_CR0), v.get(F::GUEST_CR4));
    let ia32e = v.get(F::VM_ENTRY_CONTROLS) as u32 & entry::IA32E_MODE_GUEST != 0;
    let pae = cr0 & CR0_PG != 0 && cr4 & CR4_PAE != 0 && !ia32e;
    if !pae || v.secondary_controls() & secondary::ENABLE_EPT != 0 {
        return Ok(None);
    }
    let base = v.get(F::GUEST_CR3) & 0xffff_ffe0;
    let pdptes = [0, 1, 2, 3].map(|i| (c.read_u64)(base + 8 * i));
    cc!(check_pdptes(&pdptes, c.maxphyaddr).is_err(), pdpte);
    Ok(Some(pdptes))
}

/// SDM 27.3.1.3: the event to inject on VM entry.
pub fn check_entry_event(v: &Vmcs12, c: &CheckCtx) -> Result<(), EntryFailure> {
    let caps = c.caps;
    let info = v.get(F::VM_ENTRY_INTR_INFO_FIELD) as u32;
    if info & (1 << 31) != 0 {
        let proc2 = v.secondary_controls();
        let vector = info as u8;
        let kind = ((info >> 8) & 7) as u8;
        let mtf = caps.allows(Control::Primary, primary::MONITOR_TRAP_FLAG);
        cc!(kind == 1, control);
        cc!(kind == event_type::OTHER && (!mtf || vector != 0), control);
        cc!(kind == event_type::NMI && vector != 2, control);
        cc!(
            kind == event_type::HARDWARE_EXCEPTION && vector > 31,
            control
        );
        let protected = v.get(F::GUEST_CR0) & 1 != 0;
        let unrestricted = proc2 & secondary::UNRESTRICTED_GUEST != 0;
        let wants_code = kind == event_type::HARDWARE_EXCEPTION
            && error_code_vector(vector)
            && (protected || !unrestricted);
        let has_code = info & (1 << 11) != 0;
        cc!(has_code != wants_code, control);
        cc!(info & 0x7fff_f000 != 0, control);
        cc!(
            has_code && v.get(F::VM_ENTRY_EXCEPTION_ERROR_CODE) & 0xffff_8000 != 0,
            control
        );
        if matches!(
            kind,
            event_type::SOFTWARE_INTERRUPT
                | event_type::PRIV_SOFTWARE_EXCEPTION
                | event_type::SOFTWARE_EXCEPTION
        ) {
            let len = v.get(F::VM_ENTRY_INSTRUCTION_LEN);
            let zero_ok = caps.misc & misc::ZERO_LENGTH_INJECTION != 0;
            cc!(len > 15 || (len == 0 && !zero_ok), control);
        }
    }
    Ok(())
}

/// SDM 27.2.2-27.2.3: host-state area (L1's state after the exit).
pub fn check_host_state(v: &Vmcs12, c: &CheckCtx) -> Result<(), EntryFailure> {
    let caps = c.caps;
    let exitc = v.get(F::VM_EXIT_CONTROLS) as u32;
    let cr0 = v.get(F::HOST_CR0);
    let cr4 = v.get(F::HOST_CR4);
    cc!(
        cr0 & caps.cr0_fixed0 != caps.cr0_fixed0 || cr0 & !caps.cr0_fixed1 != 0,
        host
    );
    cc!(
        cr4 & caps.cr4_fixed0 != caps.cr4_fixed0 || cr4 & !caps.cr4_fixed1 != 0,
        host
    );
    cc!(v.get(F::HOST_CR3) >> c.maxphyaddr != 0, host);
    cc!(
        !c.canonical(v.get(F::HOST_IA32_SYSENTER_ESP))
            || !c.canonical(v.get(F::HOST_IA32_SYSENTER_EIP)),
        host
    );
    cc!(
        exitc & exit::LOAD_PAT != 0 && !pat_ok(v.get(F::HOST_IA32_PAT)),
        host
    );
    let long = exitc & exit::HOST_ADDRESS_SPACE_SIZE != 0;
    if exitc & exit::LOAD_EFER != 0 {
        let efer = v.get(F::HOST_IA32_EFER);
        cc!(efer & !EFER_VALID != 0, host);
        cc!(
            (efer & EFER_LMA != 0) != long || (efer & EFER_LME != 0) != long,
            host
        );
    }
    for f in [
        F::HOST_ES_SELECTOR,
        F::HOST_CS_SELECTOR,
        F::HOST_SS_SELECTOR,
        F::HOST_DS_SELECTOR,
        F::HOST_FS_SELECTOR,
        F::HOST_GS_SELECTOR,
        F::HOST_TR_SELECTOR,
    ] {
        cc!(v.get(f) & 7 != 0, host);
    }
    cc!(v.get(F::HOST_CS_SELECTOR) == 0, host);
    cc!(v.get(F::HOST_TR_SELECTOR) == 0, host);
    cc!(!long && v.get(F::HOST_SS_SELECTOR) == 0, host);
    for f in [
        F::HOST_FS_BASE,
        F::HOST_GS_BASE,
        F::HOST_GDTR_BASE,
        F::HOST_IDTR_BASE,
        F::HOST_TR_BASE,
    ] {
        cc!(!c.canonical(v.get(f)), host);
    }
    // SDM 27.2.3: the host address-space size follows L1's mode now.
    cc!(c.l1_long_mode != long, host);
    if long {
        cc!(cr4 & (1 << 5) == 0, host);
        cc!(!c.canonical(v.get(F::HOST_RIP)), host);
    } else {
        cc!(
            v.get(F::VM_ENTRY_CONTROLS) as u32 & entry::IA32E_MODE_GUEST != 0,
            host
        );
        cc!(cr4 & (1 << 17) != 0, host);
        cc!(v.get(F::HOST_RIP) >> 32 != 0, host);
    }
    Ok(())
}

// Access-rights bits (SDM 25.4.1).
const AR_RESERVED: u64 = 0xf00 | 0xfffe_0000;

fn dpl(ar: u64) -> u64 {
    (ar >> AR_DPL_SHIFT) & 3
}

/// Limit/granularity consistency (SDM 27.3.1.2).
fn granularity_ok(limit: u64, ar: u64) -> bool {
    (limit & 0xfff == 0xfff || ar & AR_G == 0) && (limit & 0xfff0_0000 == 0 || ar & AR_G != 0)
}

/// SDM 27.3.1: guest-state area.
pub fn check_guest_state(v: &Vmcs12, c: &CheckCtx) -> Result<(), EntryFailure> {
    let caps = c.caps;
    let proc2 = v.secondary_controls();
    let entryc = v.get(F::VM_ENTRY_CONTROLS) as u32;
    let unrestricted = proc2 & secondary::UNRESTRICTED_GUEST != 0;
    let ia32e = entryc & entry::IA32E_MODE_GUEST != 0;

    // 27.3.1.1 control registers, debug registers, MSRs.
    let cr0 = v.get(F::GUEST_CR0);
    let cr4 = v.get(F::GUEST_CR4);
    let fixed0 = if unrestricted {
        caps.cr0_fixed0 & !(1 | 1 << 31)
    } else {
        caps.cr0_fixed0
    };
    cc!(cr0 & fixed0 != fixed0 || cr0 & !caps.cr0_fixed1 != 0, guest);
    cc!(cr0 & CR0_PG != 0 && cr0 & CR0_PE == 0, guest);
    cc!(
        cr4 & caps.cr4_fixed0 != caps.cr4_fixed0 || cr4 & !caps.cr4_fixed1 != 0,
        guest
    );
    if entryc & entry::LOAD_DEBUG_CONTROLS != 0 {
        cc!(v.get(F::GUEST_DR7) >> 32 != 0, guest);
    }
    if ia32e {
        cc!(cr0 & (1 << 31) == 0 || cr4 & (1 << 5) == 0, guest);
    } else {
        cc!(cr4 & (1 << 17) != 0, guest);
    }
    cc!(v.get(F::GUEST_CR3) >> c.maxphyaddr != 0, guest);
    cc!(
        !c.canonical(v.get(F::GUEST_SYSENTER_ESP)) || !c.canonical(v.get(F::GUEST_SYSENTER_EIP)),
        guest
    );
    cc!(
        entryc & entry::LOAD_PAT != 0 && !pat_ok(v.get(F::GUEST_IA32_PAT)),
        guest
    );
    if entryc & entry::LOAD_EFER != 0 {
        let efer = v.get(F::GUEST_IA32_EFER);
        cc!(efer & !EFER_VALID != 0, guest);
        cc!((efer & EFER_LMA != 0) != ia32e, guest);
        cc!(
            cr0 & CR0_PG != 0 && (efer & EFER_LMA != 0) != (efer & EFER_LME != 0),
            guest
        );
    }

    // 27.3.1.2 segment registers.
    let rflags = v.get(F::GUEST_RFLAGS);
    let v86 = rflags & (1 << 17) != 0;
    let sel = |f| v.get(f);
    let (cs_sel, ss_sel) = (sel(F::GUEST_CS_SELECTOR), sel(F::GUEST_SS_SELECTOR));
    let (cs_ar, ss_ar) = (v.get(F::GUEST_CS_AR_BYTES), v.get(F::GUEST_SS_AR_BYTES));
    cc!(sel(F::GUEST_TR_SELECTOR) & 4 != 0, guest);
    let ldtr_ar = v.get(F::GUEST_LDTR_AR_BYTES);
    cc!(
        ldtr_ar & AR_UNUSABLE == 0 && sel(F::GUEST_LDTR_SELECTOR) & 4 != 0,
        guest
    );
    cc!(!v86 && !unrestricted && ss_sel & 3 != cs_sel & 3, guest);
    let data_segs = [seg::SS, seg::DS, seg::ES, seg::FS, seg::GS].map(|i| GUEST_SEGMENTS[i]);
    if v86 {
        let all = [GUEST_SEGMENTS[seg::CS]].into_iter().chain(data_segs);
        for g in all {
            cc!(
                v.get(g.base) != v.get(g.selector) << 4
                    || v.get(g.limit) != 0xffff
                    || v.get(g.ar) != 0xf3,
                guest
            );
        }
    } else {
        // CS.
        let cs_type = cs_ar & AR_TYPE;
        cc!(
            !matches!(cs_type, 9 | 11 | 13 | 15) && !(unrestricted && cs_type == 3),
            guest
        );
        cc!(
            cs_ar & AR_S == 0 || cs_ar & AR_P == 0 || cs_ar & AR_RESERVED != 0,
            guest
        );
        cc!(cs_type == 3 && dpl(cs_ar) != 0, guest);
        cc!(matches!(cs_type, 9 | 11) && dpl(cs_ar) != dpl(ss_ar), guest);
        cc!(matches!(cs_type, 13 | 15) && dpl(cs_ar) > dpl(ss_ar), guest);
        cc!(ia32e && cs_ar & AR_L != 0 && cs_ar & AR_DB != 0, guest);
        cc!(!granularity_ok(v.get(F::GUEST_CS_LIMIT), cs_ar), guest);
        // SS.
        if ss_ar & AR_UNUSABLE == 0 {
            cc!(!matches!(ss_ar & AR_TYPE, 3 | 7), guest);
            cc!(!unrestricted && dpl(ss_ar) != ss_sel & 3, guest);
        }
        cc!((cs_type == 3 || cr0 & 1 == 0) && dpl(ss_ar) != 0, guest);
        // DS, ES, FS, GS (and SS) when usable.
        for g in data_segs {
            let (s, l) = (g.selector, g.limit);
            let ar = v.get(g.ar);
            if ar & AR_UNUSABLE != 0 {
                continue;
            }
            cc!(ar & 1 == 0, guest);
            cc!(ar & (1 << 3) != 0 && ar & 2 == 0, guest);
            cc!(
                ar & AR_S == 0 || ar & AR_P == 0 || ar & AR_RESERVED != 0,
                guest
            );
            cc!(
                !unrestricted
                    && ar & AR_TYPE <= 11
                    && s != F::GUEST_SS_SELECTOR
                    && dpl(ar) < v.get(s) & 3,
                guest
            );
            cc!(!granularity_ok(v.get(l), ar), guest);
        }
    }
    // Bases.
    for f in [F::GUEST_TR_BASE, F::GUEST_FS_BASE, F::GUEST_GS_BASE] {
        cc!(!c.canonical(v.get(f)), guest);
    }
    cc!(
        ldtr_ar & AR_UNUSABLE == 0 && !c.canonical(v.get(F::GUEST_LDTR_BASE)),
        guest
    );
    cc!(v.get(F::GUEST_CS_BASE) >> 32 != 0, guest);
    for (b, a) in [
        (F::GUEST_SS_BASE, F::GUEST_SS_AR_BYTES),
        (F::GUEST_DS_BASE, F::GUEST_DS_AR_BYTES),
        (F::GUEST_ES_BASE, F::GUEST_ES_AR_BYTES),
    ] {
        cc!(v.get(a) & AR_UNUSABLE == 0 && v.get(b) >> 32 != 0, guest);
    }
    // TR.
    let tr_ar = v.get(F::GUEST_TR_AR_BYTES);
    let tr_type = tr_ar & AR_TYPE;
    cc!(tr_type != 11 && !(tr_type == 3 && !ia32e), guest);
    cc!(
        tr_ar & AR_S != 0
            || tr_ar & AR_P == 0
            || tr_ar & AR_RESERVED != 0
            || tr_ar & AR_UNUSABLE != 0,
        guest
    );
    cc!(!granularity_ok(v.get(F::GUEST_TR_LIMIT), tr_ar), guest);
    // LDTR.
    if ldtr_ar & AR_UNUSABLE == 0 {
        cc!(
            ldtr_ar & AR_TYPE != 2
                || ldtr_ar & AR_S != 0
                || ldtr_ar & AR_P == 0
                || ldtr_ar & AR_RESERVED != 0,
            guest
        );
        cc!(!granularity_ok(v.get(F::GUEST_LDTR_LIMIT), ldtr_ar), guest);
    }

    // 27.3.1.3 descriptor tables.
    cc!(
        !c.canonical(v.get(F::GUEST_GDTR_BASE)) || !c.canonical(v.get(F::GUEST_IDTR_BASE)),
        guest
    );
    cc!(
        v.get(F::GUEST_GDTR_LIMIT) >> 16 != 0 || v.get(F::GUEST_IDTR_LIMIT) >> 16 != 0,
        guest
    );

    check_volatile_guest_state(v, c)?;
    let link_ptr = v.get(F::VMCS_LINK_POINTER);
    if link_ptr != u64::MAX {
        cc!(link_ptr & 0xfff != 0 || link_ptr >> c.maxphyaddr != 0, link);
        cc!(
            (c.read_revision)(link_ptr) != Some(caps.basic as u32 & 0x7fff_ffff),
            link
        );
    }

    // 27.3.1.6 PDPTEs for PAE paging with EPT.
    let pae = cr0 & CR0_PG != 0 && cr4 & CR4_PAE != 0 && !ia32e;
    if pae && proc2 & secondary::ENABLE_EPT != 0 {
        for f in [
            F::GUEST_PDPTE0,
            F::GUEST_PDPTE1,
            F::GUEST_PDPTE2,
            F::GUEST_PDPTE3,
        ] {
            let e = v.get(f);
            cc!(check_pdptes(&[e, 0, 0, 0], c.maxphyaddr).is_err(), pdpte);
        }
    }
    Ok(())
}

/// SDM 27.3.1.4-27.3.1.5: the guest state a VMRESUME after an exit
/// typically changes (RIP, RSP, RFLAGS, interruptibility, activity,
/// pending debug exceptions), with the entry event.
pub fn check_volatile_guest_state(v: &Vmcs12, c: &CheckCtx) -> Result<(), EntryFailure> {
    let caps = c.caps;
    let ia32e = v.get(F::VM_ENTRY_CONTROLS) as u32 & entry::IA32E_MODE_GUEST != 0;
    let cr0 = v.get(F::GUEST_CR0);
    let cs_ar = v.get(F::GUEST_CS_AR_BYTES);
    let ss_ar = v.get(F::GUEST_SS_AR_BYTES);
    let rflags = v.get(F::GUEST_RFLAGS);
    let v86 = rflags & (1 << 17) != 0;

    // 27.3.1.4 RIP and RFLAGS.
    let rip = v.get(F::GUEST_RIP);
    if ia32e && cs_ar & AR_L != 0 {
        cc!(!c.canonical(rip), guest);
    } else {
        cc!(rip >> 32 != 0, guest);
    }
    cc!(
        rflags & (0xffff_ffff_ffc0_0000 | 1 << 15 | 1 << 5 | 1 << 3) != 0 || rflags & 2 == 0,
        guest
    );
    cc!((ia32e || cr0 & 1 == 0) && v86, guest);
    let intr = v.get(F::VM_ENTRY_INTR_INFO_FIELD) as u32;
    let event = (intr & (1 << 31) != 0).then_some(((intr >> 8) & 7) as u8);
    cc!(
        event == Some(event_type::EXTERNAL_INTERRUPT) && rflags & (1 << 9) == 0,
        guest
    );

    // 27.3.1.5 non-register state.
    let activity = v.get(F::GUEST_ACTIVITY_STATE);
    let supported_activity =
        activity == 0 || (activity == 1 && caps.misc & misc::ACTIVITY_HLT != 0);
    cc!(!supported_activity, guest);
    cc!(activity == 1 && dpl(ss_ar) != 0, guest);
    let istate = v.get(F::GUEST_INTERRUPTIBILITY_INFO);
    cc!(istate & !0xf != 0, guest);
    cc!(istate & 3 == 3, guest);
    cc!(rflags & (1 << 9) == 0 && istate & 1 != 0, guest);
    cc!(
        event == Some(event_type::EXTERNAL_INTERRUPT) && istate & 3 != 0,
        guest
    );
    cc!(event == Some(event_type::NMI) && istate & 2 != 0, guest);
    cc!(istate & 4 != 0, guest);
    let pinc = v.get(F::PIN_BASED_VM_EXEC_CONTROL) as u32;
    if event == Some(event_type::NMI) && pinc & pin::VIRTUAL_NMIS != 0 {
        cc!(istate & 8 != 0, guest);
    }
    let pending = v.get(F::GUEST_PENDING_DBG_EXCEPTIONS);
    cc!(pending & !(0xf | 1 << 12 | 1 << 14 | 1 << 16) != 0, guest);
    Ok(())
}

/// Fields whose changes alone need only [`check_entry_event`] and
/// [`check_volatile_guest_state`]: a VMCS12 that passed every check at its
/// last entry, with L1 having written nothing else since, cannot fail any
/// other check (the rest of its guest state was saved by the hardware on
/// the exit, or is as it was).
pub const VOLATILE: &[F] = &[
    F::GUEST_RIP,
    F::GUEST_RSP,
    F::GUEST_RFLAGS,
    F::GUEST_INTERRUPTIBILITY_INFO,
    F::GUEST_ACTIVITY_STATE,
    F::GUEST_PENDING_DBG_EXCEPTIONS,
    F::VM_ENTRY_INTR_INFO_FIELD,
    F::VM_ENTRY_EXCEPTION_ERROR_CODE,
    F::VM_ENTRY_INSTRUCTION_LEN,
    F::VMX_PREEMPTION_TIMER_VALUE,
    // No check applies to the host RSP.
    F::HOST_RSP,
    // Exit information (writable with IA32_VMX_MISC[29]) is never checked.
    F::VM_EXIT_REASON,
    F::EXIT_QUALIFICATION,
    F::VM_EXIT_INSTRUCTION_LEN,
    F::VMX_INSTRUCTION_INFO,
    F::VM_EXIT_INTR_INFO,
    F::VM_EXIT_INTR_ERROR_CODE,
    F::IDT_VECTORING_INFO_FIELD,
    F::IDT_VECTORING_ERROR_CODE,
    F::GUEST_LINEAR_ADDRESS,
    F::GUEST_PHYSICAL_ADDRESS,
    F::VM_INSTRUCTION_ERROR,
];

/// The checks for a VMRESUME whose VMCS12 only changed in [`VOLATILE`]
/// (memory may have changed: the TPR threshold is checked again).
pub fn check_light(v: &Vmcs12, c: &CheckCtx) -> Result<(), EntryFailure> {
    check_entry_event(v, c)?;
    check_tpr_threshold(v, c)?;
    check_volatile_guest_state(v, c)
}

#[cfg(test)]
mod tests;
