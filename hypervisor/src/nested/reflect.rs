//! Exits from L2: does L1 want this one (KVM's nested_vmx_l1_wants_exit),
//! and if so, the exit L1 sees — exit information and L2's state saved
//! into VMCS12, then L1's state loaded from VMCS12's host-state area (SDM
//! Vol. 3C 28.2-28.5).

use super::context::{NestedCtx, NestedHw};
use super::guest_state::GUEST_STATE;
use super::vmcs12::{slots, Slot, Vmcs12};
use super::VmcsSet;
use crate::arch::run::GuestRegs;
use crate::guest_mem::GuestMemory;
use crate::vmx::caps::{entry, exit, pin, primary, secondary};
use crate::vmx::exit::{
    event_type, reason, CrAccess, ExitInfo, InterruptionInfo, IoAccess, VmExit,
};
use crate::vmx::fields::{seg, GUEST_SEGMENTS};
use crate::vmx::guest_cr::{write_cr_state, CrPolicy, CrState};
use crate::vmx::{Field as F, Vmcs};

fn bit_set<M: GuestMemory>(mem: &M, bitmap: u64, bit: u64) -> bool {
    let mut b = [0u8; 1];
    // A bitmap that is not readable L1 RAM (checked at entry, so only if L1
    // changed its memory map under us) counts as "exit".
    mem.read(bitmap + bit / 8, &mut b)
        .map(|_| b[0] & (1 << (bit % 8)) != 0)
        .unwrap_or(true)
}

/// Whether L1's I/O controls make this access exit (SDM 26.1.3).
pub fn l1_wants_io<M: GuestMemory>(v12: &Vmcs12, mem: &M, io: &IoAccess) -> bool {
    let p = v12.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32;
    if p & primary::USE_IO_BITMAPS == 0 {
        return p & primary::UNCONDITIONAL_IO_EXITING != 0;
    }
    (0..io.size as u64).any(|i| {
        let port = io.port as u64 + i;
        match port {
            0..=0x7fff => bit_set(mem, v12.get(F::IO_BITMAP_A), port),
            0x8000..=0xffff => bit_set(mem, v12.get(F::IO_BITMAP_B), port - 0x8000),
            _ => true,
        }
    })
}

/// Whether L1's MSR bitmap makes this RDMSR/WRMSR exit (SDM 26.1.3).
pub fn l1_wants_msr<M: GuestMemory>(v12: &Vmcs12, mem: &M, msr: u32, write: bool) -> bool {
    if v12.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32 & primary::USE_MSR_BITMAPS == 0 {
        return true;
    }
    let base = v12.get(F::MSR_BITMAP) + if write { 2048 } else { 0 };
    match msr {
        0..=0x1fff => bit_set(mem, base, msr as u64),
        0xc000_0000..=0xc000_1fff => bit_set(mem, base + 1024, (msr - 0xc000_0000) as u64),
        _ => true,
    }
}

/// Whether L1's CR controls make this access exit (SDM 26.1.3, KVM's
/// nested_vmx_exit_handled_cr).
pub fn l1_wants_cr(v12: &Vmcs12, access: CrAccess, value: u64) -> bool {
    let p = v12.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32;
    let (m0, s0) = (v12.get(F::CR0_GUEST_HOST_MASK), v12.get(F::CR0_READ_SHADOW));
    match access {
        CrAccess::MovToCr { cr: 0, .. } => (value ^ s0) & m0 != 0,
        CrAccess::MovToCr { cr: 4, .. } => {
            (value ^ v12.get(F::CR4_READ_SHADOW)) & v12.get(F::CR4_GUEST_HOST_MASK) != 0
        }
        CrAccess::MovToCr { cr: 3, .. } => {
            if p & primary::CR3_LOAD_EXITING == 0 {
                return false;
            }
            let targets = [
                F::CR3_TARGET_VALUE0,
                F::CR3_TARGET_VALUE1,
                F::CR3_TARGET_VALUE2,
                F::CR3_TARGET_VALUE3,
            ];
            let n = (v12.get(F::CR3_TARGET_COUNT) as usize).min(4);
            !targets[..n].iter().any(|&t| v12.get(t) == value)
        }
        CrAccess::MovToCr { cr: 8, .. } => p & primary::CR8_LOAD_EXITING != 0,
        CrAccess::MovFromCr { cr: 3, .. } => p & primary::CR3_STORE_EXITING != 0,
        CrAccess::MovFromCr { cr: 8, .. } => p & primary::CR8_STORE_EXITING != 0,
        CrAccess::Clts => m0 & s0 & (1 << 3) != 0,
        CrAccess::Lmsw { source } => {
            let src = source as u64;
            // LMSW writes CR0[3:0]; it can set PE but never clear it.
            (m0 & 0xe & (src ^ s0)) != 0 || (m0 & 1 != 0 && s0 & 1 == 0 && src & 1 != 0)
        }
        _ => true,
    }
}

/// Whether L1 wants this exception (SDM 26.2: exception bitmap, and for
/// #PF the error-code mask/match rule).
pub fn l1_wants_exception(v12: &Vmcs12, info: InterruptionInfo, error_code: u32) -> bool {
    if info.kind() == event_type::NMI {
        return v12.get(F::PIN_BASED_VM_EXEC_CONTROL) as u32 & pin::NMI_EXITING != 0;
    }
    let vector = info.vector();
    let in_bitmap = v12.get(F::EXCEPTION_BITMAP) & (1 << (vector & 31)) != 0;
    if vector == 14 {
        // Bit 14 set: exit iff PFEC & MASK == MATCH; clear: iff it differs.
        let mask = v12.get(F::PAGE_FAULT_ERROR_CODE_MASK) as u32;
        let matches = error_code & mask == v12.get(F::PAGE_FAULT_ERROR_CODE_MATCH) as u32;
        return in_bitmap == matches;
    }
    in_bitmap
}

/// Whether L1 asked for this exit with its controls. I/O, MSR, CR,
/// exception and EPT exits are decided by the caller with the helpers
/// above, since they need the access itself or guest memory.
pub fn l1_wants_by_controls(v12: &Vmcs12, basic: u16) -> bool {
    let pinc = v12.get(F::PIN_BASED_VM_EXEC_CONTROL) as u32;
    let p = v12.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32;
    let s = v12.secondary_controls();
    match basic {
        reason::EXTERNAL_INTERRUPT => pinc & pin::EXTERNAL_INTERRUPT_EXITING != 0,
        reason::PREEMPTION_TIMER => pinc & pin::PREEMPTION_TIMER != 0,
        reason::INTERRUPT_WINDOW => p & primary::INTERRUPT_WINDOW_EXITING != 0,
        reason::NMI_WINDOW => p & primary::NMI_WINDOW_EXITING != 0,
        reason::HLT => p & primary::HLT_EXITING != 0,
        reason::INVLPG => p & primary::INVLPG_EXITING != 0,
        reason::RDPMC => p & primary::RDPMC_EXITING != 0,
        reason::RDTSC | reason::RDTSCP => p & primary::RDTSC_EXITING != 0,
        reason::DR_ACCESS => p & primary::MOV_DR_EXITING != 0,
        reason::MWAIT => p & primary::MWAIT_EXITING != 0,
        reason::MONITOR => p & primary::MONITOR_EXITING != 0,
        reason::MONITOR_TRAP_FLAG => p & primary::MONITOR_TRAP_FLAG != 0,
        reason::PAUSE => p & primary::PAUSE_EXITING != 0 || s & secondary::PAUSE_LOOP_EXITING != 0,
        reason::TPR_BELOW_THRESHOLD => p & primary::USE_TPR_SHADOW != 0,
        reason::GDTR_IDTR | reason::LDTR_TR => s & secondary::DESCRIPTOR_TABLE_EXITING != 0,
        reason::WBINVD => s & secondary::WBINVD_EXITING != 0,
        reason::RDRAND => s & secondary::RDRAND_EXITING != 0,
        reason::RDSEED => s & secondary::RDSEED_EXITING != 0,
        reason::INVPCID => p & primary::INVLPG_EXITING != 0 && s & secondary::ENABLE_INVPCID != 0,
        // Exits that are unconditional in VMX non-root operation, or that
        // L1's APIC virtualization, XSS bitmap or events caused.
        _ => true,
    }
}

impl<S: VmcsSet, H: NestedHw> NestedCtx<'_, S, H> {
    /// Whether L1's controls, bitmaps and masks claim this exit of L2
    /// (KVM's nested_vmx_l1_wants_exit).
    pub fn l1_wants(&mut self, exit: VmExit, e: &ExitInfo) -> bool {
        let v12 = &self.nested.vmx.vmcs12;
        match exit {
            VmExit::Io(io) => l1_wants_io(v12, self.hw.mem(), &io),
            VmExit::Msr { index, write } => l1_wants_msr(v12, self.hw.mem(), index, write),
            VmExit::VirtualizedEoi { vector } => {
                // VMCS02 makes every EOI exit (prepare.rs); L1 gets those
                // its EOI-exit bitmap names.
                let bitmap = [
                    F::EOI_EXIT_BITMAP0,
                    F::EOI_EXIT_BITMAP1,
                    F::EOI_EXIT_BITMAP2,
                    F::EOI_EXIT_BITMAP3,
                ][vector as usize / 64];
                v12.get(bitmap) & 1 << (vector % 64) != 0
            }
            VmExit::Cr(access) => {
                let value = match access {
                    CrAccess::MovToCr { gpr, .. } if gpr as usize == GuestRegs::RSP => {
                        self.vs.current().read(F::GUEST_RSP)
                    }
                    CrAccess::MovToCr { gpr, .. } => self.regs.gpr[gpr as usize],
                    _ => 0,
                };
                l1_wants_cr(v12, access, value)
            }
            VmExit::Exception { info, error_code } => l1_wants_exception(v12, info, error_code),
            _ => l1_wants_by_controls(v12, e.basic()),
        }
    }
}

/// Saves L2's state and the exit information into VMCS12 (SDM 28.2-28.3).
pub fn sync_vmcs12(v02: &impl Vmcs, v12: &mut Vmcs12, exit_info: &ExitInfo, cr_policy: &CrPolicy) {
    const SAVED: [Slot; GUEST_STATE.len()] = slots(GUEST_STATE);
    for &s in &SAVED {
        v12.set_at(s, v02.read(s.field));
    }
    // L2's control registers: real values, except that bits only L0 forces
    // are whatever L1 put there (they are fixed to 1 for L1 too).
    v12.set(
        F::GUEST_CR0,
        v02.read(F::GUEST_CR0) & !cr_policy.cr0_forced
            | v12.get(F::GUEST_CR0) & cr_policy.cr0_forced,
    );
    v12.set(
        F::GUEST_CR4,
        v02.read(F::GUEST_CR4) & !cr_policy.cr4_forced
            | v12.get(F::GUEST_CR4) & cr_policy.cr4_forced,
    );
    let x12 = v12.get(F::VM_EXIT_CONTROLS) as u32;
    if x12 & exit::SAVE_DEBUG_CONTROLS != 0 {
        v12.set(F::GUEST_DR7, v02.read(F::GUEST_DR7));
        v12.set(F::GUEST_IA32_DEBUGCTL, v02.read(F::GUEST_IA32_DEBUGCTL));
    }
    if x12 & exit::SAVE_PAT != 0 {
        v12.set(F::GUEST_IA32_PAT, v02.read(F::GUEST_IA32_PAT));
    }
    if x12 & exit::SAVE_EFER != 0 {
        v12.set(F::GUEST_IA32_EFER, v02.read(F::GUEST_IA32_EFER));
    }
    if x12 & exit::SAVE_PREEMPTION_TIMER != 0 {
        v12.set(
            F::VMX_PREEMPTION_TIMER_VALUE,
            v02.read(F::VMX_PREEMPTION_TIMER_VALUE),
        );
    }
    let ept12 = v12.secondary_controls() & secondary::ENABLE_EPT != 0;
    if ept12 {
        for f in [
            F::GUEST_PDPTE0,
            F::GUEST_PDPTE1,
            F::GUEST_PDPTE2,
            F::GUEST_PDPTE3,
        ] {
            v12.set(f, v02.read(f));
        }
    }
    // "IA-32e mode guest" follows L2's EFER.LMA (SDM 28.2).
    let lma = v02.read(F::VM_ENTRY_CONTROLS) & entry::IA32E_MODE_GUEST as u64;
    v12.set(
        F::VM_ENTRY_CONTROLS,
        v12.get(F::VM_ENTRY_CONTROLS) & !(entry::IA32E_MODE_GUEST as u64) | lma,
    );
    write_exit_info(v12, exit_info);
}

/// The exit-information fields, and the entry event marked delivered.
pub fn write_exit_info(v12: &mut Vmcs12, e: &ExitInfo) {
    v12.set(F::VM_EXIT_REASON, e.reason as u64);
    v12.set(F::EXIT_QUALIFICATION, e.qualification);
    v12.set(F::VM_EXIT_INTR_INFO, e.intr_info as u64);
    v12.set(F::VM_EXIT_INTR_ERROR_CODE, e.intr_error as u64);
    v12.set(F::IDT_VECTORING_INFO_FIELD, e.idt_info as u64);
    v12.set(F::IDT_VECTORING_ERROR_CODE, e.idt_error as u64);
    v12.set(F::VM_EXIT_INSTRUCTION_LEN, e.instr_len as u64);
    v12.set(F::VMX_INSTRUCTION_INFO, e.instr_info as u64);
    v12.set(F::GUEST_LINEAR_ADDRESS, e.guest_linear);
    v12.set(F::GUEST_PHYSICAL_ADDRESS, e.guest_physical);
    v12.set(F::IO_RCX, e.io_rcx);
    v12.set(F::IO_RSI, e.io_rsi);
    v12.set(F::IO_RDI, e.io_rdi);
    v12.set(F::IO_RIP, e.io_rip);
    // SDM 28.2.5: VM exits clear the valid bit of the entry event.
    let info = v12.get(F::VM_ENTRY_INTR_INFO_FIELD);
    v12.set(F::VM_ENTRY_INTR_INFO_FIELD, info & !(1 << 31));
}

/// Loads L1's state from VMCS12's host-state area into VMCS01 (SDM 28.5).
/// Returns L1's CR state so the caller can reload PDPTEs if needed.
pub fn load_host_state(v12: &Vmcs12, v01: &mut impl Vmcs, cr_policy: &CrPolicy) -> CrState {
    let x12 = v12.get(F::VM_EXIT_CONTROLS) as u32;
    let long = x12 & exit::HOST_ADDRESS_SPACE_SIZE != 0;
    let lm = 1u64 << 8 | 1 << 10;
    let efer = if x12 & exit::LOAD_EFER != 0 {
        v12.get(F::HOST_IA32_EFER)
    } else {
        let old = v01.read(F::GUEST_IA32_EFER) & !lm;
        if long {
            old | lm
        } else {
            old
        }
    };
    let cr = CrState {
        cr0: v12.get(F::HOST_CR0),
        cr3: v12.get(F::HOST_CR3),
        cr4: v12.get(F::HOST_CR4),
        efer,
        cs_long: long,
    };
    write_cr_state(v01, &cr, cr_policy);
    if x12 & exit::LOAD_PAT != 0 {
        v01.write(F::GUEST_IA32_PAT, v12.get(F::HOST_IA32_PAT));
    }
    v01.write(F::GUEST_DR7, 0x400);
    v01.write(F::GUEST_IA32_DEBUGCTL, 0);
    v01.write(F::GUEST_SYSENTER_CS, v12.get(F::HOST_IA32_SYSENTER_CS));
    v01.write(F::GUEST_SYSENTER_ESP, v12.get(F::HOST_IA32_SYSENTER_ESP));
    v01.write(F::GUEST_SYSENTER_EIP, v12.get(F::HOST_IA32_SYSENTER_EIP));
    // Segments (SDM 28.5.2).
    let cs_ar = if long { 0xa09b } else { 0xc09b };
    v01.write(F::GUEST_CS_SELECTOR, v12.get(F::HOST_CS_SELECTOR));
    v01.write(F::GUEST_CS_BASE, 0);
    v01.write(F::GUEST_CS_LIMIT, 0xffff_ffff);
    v01.write(F::GUEST_CS_AR_BYTES, cs_ar);
    for (i, hsel, hbase) in [
        (seg::SS, F::HOST_SS_SELECTOR, None),
        (seg::DS, F::HOST_DS_SELECTOR, None),
        (seg::ES, F::HOST_ES_SELECTOR, None),
        (seg::FS, F::HOST_FS_SELECTOR, Some(F::HOST_FS_BASE)),
        (seg::GS, F::HOST_GS_SELECTOR, Some(F::HOST_GS_BASE)),
    ] {
        let g = &GUEST_SEGMENTS[i];
        let s = v12.get(hsel);
        v01.write(g.selector, s);
        v01.write(g.base, hbase.map_or(0, |b| v12.get(b)));
        v01.write(g.limit, 0xffff_ffff);
        // A null selector leaves the register unusable (SS stays usable in
        // 64-bit mode for the CPL, as hardware does).
        let unusable = s == 0 && !(i == seg::SS && long);
        v01.write(g.ar, if unusable { 0x1_c093 } else { 0xc093 });
    }
    v01.write(F::GUEST_TR_SELECTOR, v12.get(F::HOST_TR_SELECTOR));
    v01.write(F::GUEST_TR_BASE, v12.get(F::HOST_TR_BASE));
    v01.write(F::GUEST_TR_LIMIT, 0x67);
    v01.write(F::GUEST_TR_AR_BYTES, 0x8b);
    v01.write(F::GUEST_LDTR_SELECTOR, 0);
    v01.write(F::GUEST_LDTR_BASE, 0);
    v01.write(F::GUEST_LDTR_LIMIT, 0);
    v01.write(F::GUEST_LDTR_AR_BYTES, 0x1_0000);
    v01.write(F::GUEST_GDTR_BASE, v12.get(F::HOST_GDTR_BASE));
    v01.write(F::GUEST_GDTR_LIMIT, 0xffff);
    v01.write(F::GUEST_IDTR_BASE, v12.get(F::HOST_IDTR_BASE));
    v01.write(F::GUEST_IDTR_LIMIT, 0xffff);
    v01.write(F::GUEST_RIP, v12.get(F::HOST_RIP));
    v01.write(F::GUEST_RSP, v12.get(F::HOST_RSP));
    v01.write(F::GUEST_RFLAGS, 0x2);
    v01.write(F::GUEST_INTERRUPTIBILITY_INFO, 0);
    v01.write(F::GUEST_ACTIVITY_STATE, 0);
    v01.write(F::GUEST_PENDING_DBG_EXCEPTIONS, 0);
    v01.write(F::VM_ENTRY_INTR_INFO_FIELD, 0);
    cr
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_mem::fake::VecMemory;
    use crate::nested::testutil::{valid_vmcs12, IO_A, MSR_BITMAP};
    use crate::vmx::fake::FakeVmcs;

    const POLICY: CrPolicy = CrPolicy {
        cr0_forced: 0x20,
        cr4_forced: 0x2000,
        cr4_allowed: 0x37_07ff,
    };

    #[test]
    fn io_routing_follows_l1_bitmaps() {
        let mut m = VecMemory::new(0, 0x40_0000);
        m.write(IO_A + 0x3f8 / 8, &[1]).unwrap(); // port 0x3f8
        let v = valid_vmcs12();
        let io = |port, size| IoAccess {
            port,
            size,
            is_in: false,
            string: false,
            rep: false,
        };
        assert!(l1_wants_io(&v, &m, &io(0x3f8, 1)));
        assert!(!l1_wants_io(&v, &m, &io(0x3f9, 1)));
        assert!(
            l1_wants_io(&v, &m, &io(0x3f6, 4)),
            "a wide access touching the trapped port"
        );
        let mut u = valid_vmcs12();
        let p = u.get(F::CPU_BASED_VM_EXEC_CONTROL) & !(primary::USE_IO_BITMAPS as u64);
        u.set(
            F::CPU_BASED_VM_EXEC_CONTROL,
            p | primary::UNCONDITIONAL_IO_EXITING as u64,
        );
        assert!(l1_wants_io(&u, &m, &io(0x80, 1)));
        u.set(F::CPU_BASED_VM_EXEC_CONTROL, p);
        assert!(
            !l1_wants_io(&u, &m, &io(0x80, 1)),
            "neither: L2 owns the port"
        );
    }

    #[test]
    fn msr_routing_follows_l1_bitmap() {
        let mut m = VecMemory::new(0, 0x40_0000);
        m.write(MSR_BITMAP + 0x174 / 8, &[1 << (0x174 % 8)])
            .unwrap(); // read of SYSENTER_CS
        m.write(MSR_BITMAP + 3072 + 0x80 / 8, &[1]).unwrap(); // write of EFER
        let v = valid_vmcs12();
        assert!(l1_wants_msr(&v, &m, 0x174, false));
        assert!(!l1_wants_msr(&v, &m, 0x174, true));
        assert!(l1_wants_msr(&v, &m, 0xc000_0080, true));
        assert!(!l1_wants_msr(&v, &m, 0xc000_0080, false));
        assert!(
            l1_wants_msr(&v, &m, 0x4000_0000, false),
            "outside both ranges"
        );
    }

    #[test]
    fn cr_routing() {
        let mut v = valid_vmcs12();
        v.set(F::CR0_GUEST_HOST_MASK, 0x8000_0001);
        v.set(F::CR0_READ_SHADOW, 0x8000_0001);
        let to_cr0 = CrAccess::MovToCr { cr: 0, gpr: 0 };
        assert!(
            !l1_wants_cr(&v, to_cr0, 0x8000_0031),
            "masked bits as in the shadow"
        );
        assert!(
            l1_wants_cr(&v, to_cr0, 0x31),
            "clears PG against the shadow"
        );
        assert!(
            !l1_wants_cr(&v, CrAccess::MovToCr { cr: 3, gpr: 0 }, 0x1000),
            "no CR3-load exiting"
        );
        v.set(
            F::CPU_BASED_VM_EXEC_CONTROL,
            v.get(F::CPU_BASED_VM_EXEC_CONTROL) | primary::CR3_LOAD_EXITING as u64,
        );
        v.set(F::CR3_TARGET_COUNT, 1);
        v.set(F::CR3_TARGET_VALUE0, 0x1000);
        assert!(
            !l1_wants_cr(&v, CrAccess::MovToCr { cr: 3, gpr: 0 }, 0x1000),
            "a CR3 target"
        );
        assert!(l1_wants_cr(&v, CrAccess::MovToCr { cr: 3, gpr: 0 }, 0x2000));
        assert!(
            !l1_wants_cr(&v, CrAccess::Lmsw { source: 1 }, 0),
            "PE already set in the shadow"
        );
        v.set(F::CR0_READ_SHADOW, 0);
        assert!(
            l1_wants_cr(&v, CrAccess::Lmsw { source: 1 }, 0),
            "LMSW setting a masked PE"
        );
    }

    #[test]
    fn page_fault_mask_match() {
        let mut v = valid_vmcs12();
        v.set(F::EXCEPTION_BITMAP, 1 << 14);
        let pf = InterruptionInfo::new(14, event_type::HARDWARE_EXCEPTION, true);
        v.set(F::PAGE_FAULT_ERROR_CODE_MASK, 2);
        v.set(F::PAGE_FAULT_ERROR_CODE_MATCH, 2);
        assert!(l1_wants_exception(&v, pf, 3), "write faults match");
        assert!(!l1_wants_exception(&v, pf, 1));
        v.set(F::EXCEPTION_BITMAP, 0);
        assert!(
            !l1_wants_exception(&v, pf, 3),
            "bit 14 clear inverts: matching #PF do not exit"
        );
        assert!(l1_wants_exception(&v, pf, 1));
        let ud = InterruptionInfo::new(6, event_type::HARDWARE_EXCEPTION, false);
        assert!(!l1_wants_exception(&v, ud, 0));
        v.set(F::EXCEPTION_BITMAP, 1 << 6);
        assert!(l1_wants_exception(&v, ud, 0));
    }

    #[test]
    fn reflection_saves_l2_and_loads_l1() {
        let mut v12 = valid_vmcs12();
        v12.set(F::VM_ENTRY_INTR_INFO_FIELD, 0x8000_0030);
        let mut v02 = FakeVmcs::default();
        v02.write(F::GUEST_RIP, 0x1002);
        v02.write(F::GUEST_RSP, 0x7ff0);
        v02.write(F::GUEST_CR0, 0x31);
        v02.write(F::GUEST_IA32_EFER, 0);
        let e = ExitInfo {
            reason: 10,
            instr_len: 2,
            ..Default::default()
        };
        sync_vmcs12(&v02, &mut v12, &e, &POLICY);
        assert_eq!(
            (v12.get(F::GUEST_RIP), v12.get(F::GUEST_RSP)),
            (0x1002, 0x7ff0)
        );
        assert_eq!(
            (
                v12.get(F::VM_EXIT_REASON),
                v12.get(F::VM_EXIT_INSTRUCTION_LEN)
            ),
            (10, 2)
        );
        assert_eq!(
            v12.get(F::VM_ENTRY_INTR_INFO_FIELD),
            0x30,
            "valid bit cleared"
        );
        let mut v01 = FakeVmcs::default();
        v01.write(F::CR0_GUEST_HOST_MASK, 0x20);
        let cr = load_host_state(&v12, &mut v01, &POLICY);
        assert_eq!(v01.read(F::GUEST_RIP), 0x10_1234);
        assert_eq!(v01.read(F::GUEST_RSP), 0x20_0000);
        assert_eq!(v01.read(F::GUEST_RFLAGS), 2);
        assert_eq!(v01.read(F::GUEST_CS_AR_BYTES), 0xa09b);
        assert_eq!(v01.read(F::GUEST_TR_LIMIT), 0x67);
        assert_eq!(
            v01.read(F::GUEST_FS_AR_BYTES) & 0x1_0000,
            0x1_0000,
            "null FS unusable"
        );
        assert_eq!(v01.read(F::GUEST_IA32_EFER), 0xd00);
        assert_ne!(
            v01.read(F::VM_ENTRY_CONTROLS) & entry::IA32E_MODE_GUEST as u64,
            0
        );
        assert_eq!((cr.cr0, cr.cr3), (0x8005_0033, 0x1000));
        assert_eq!(v01.read(F::GUEST_CR0), 0x8005_0033);
    }
}
