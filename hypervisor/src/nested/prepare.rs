//! VMCS02 from VMCS12 (KVM's prepare_vmcs02): L2's guest state as L1 set
//! it, L0's host state, L1's controls plus what L0 needs, L1's structures
//! (identity-mapped L1 addresses are host addresses) and L0's EPT02/VPID02.

use super::guest_state::GUEST_STATE;
use super::vmcs12::{self, Vmcs12};
use crate::vmx::caps::{entry, exit, primary, secondary, Control, VmxCaps};
use crate::vmx::guest_cr::CrPolicy;
use crate::vmx::{Field as F, Vmcs};

/// Guest-state fields copied from VMCS12 to VMCS02 unchanged: the shared
/// list, the PDPTEs (VMCS02 needs them whenever L2 uses PAE paging under
/// EPT) and the preemption timer (prepare_timer adjusts it afterwards).
const GUEST_COPY: [u64; vmcs12::WORDS] = {
    let a = vmcs12::slot_mask(&GUEST_STATE);
    let b = vmcs12::slot_mask(&[
        F::GUEST_PDPTE0,
        F::GUEST_PDPTE1,
        F::GUEST_PDPTE2,
        F::GUEST_PDPTE3,
        F::VMX_PREEMPTION_TIMER_VALUE,
    ]);
    let mut m = [0; vmcs12::WORDS];
    let mut i = 0;
    while i < m.len() {
        m[i] = a[i] | b[i];
        i += 1;
    }
    m
};

/// Control fields copied unchanged (they mean the same to hardware).
const CONTROL_COPY: &[F] = &[
    F::EXCEPTION_BITMAP,
    F::PAGE_FAULT_ERROR_CODE_MASK,
    F::PAGE_FAULT_ERROR_CODE_MATCH,
    F::CR3_TARGET_COUNT,
    F::CR3_TARGET_VALUE0,
    F::CR3_TARGET_VALUE1,
    F::CR3_TARGET_VALUE2,
    F::CR3_TARGET_VALUE3,
    F::VM_ENTRY_INTR_INFO_FIELD,
    F::VM_ENTRY_EXCEPTION_ERROR_CODE,
    F::VM_ENTRY_INSTRUCTION_LEN,
    F::TPR_THRESHOLD,
    F::APIC_ACCESS_ADDR,
    F::PLE_GAP,
    F::PLE_WINDOW,
    F::XSS_EXIT_BITMAP,
];

/// The fields copied from VMCS12, as a slot mask.
const COPY_MASK: [u64; vmcs12::WORDS] = {
    let a = GUEST_COPY;
    let b = vmcs12::slot_mask(CONTROL_COPY);
    let mut m = [0; vmcs12::WORDS];
    let mut i = 0;
    while i < m.len() {
        m[i] = a[i] | b[i];
        i += 1;
    }
    m
};

/// VMCS02 fields that L0 derives and the hardware never changes: written
/// only when their value changes (`Derived` remembers them).
const DERIVED: [F; 23] = [
    F::PIN_BASED_VM_EXEC_CONTROL,
    F::CPU_BASED_VM_EXEC_CONTROL,
    F::SECONDARY_VM_EXEC_CONTROL,
    F::VM_EXIT_CONTROLS,
    F::VM_EXIT_MSR_STORE_COUNT,
    F::VM_EXIT_MSR_LOAD_COUNT,
    F::VM_ENTRY_MSR_LOAD_COUNT,
    F::IO_BITMAP_A,
    F::IO_BITMAP_B,
    F::MSR_BITMAP,
    F::EPT_POINTER,
    F::VIRTUAL_PROCESSOR_ID,
    F::TSC_OFFSET,
    F::VMCS_LINK_POINTER,
    F::CR0_GUEST_HOST_MASK,
    F::CR4_GUEST_HOST_MASK,
    F::CR0_READ_SHADOW,
    F::CR4_READ_SHADOW,
    F::EOI_EXIT_BITMAP0,
    F::EOI_EXIT_BITMAP1,
    F::EOI_EXIT_BITMAP2,
    F::EOI_EXIT_BITMAP3,
    F::VIRTUAL_APIC_PAGE_ADDR,
];

/// What VMCS02 holds of [`DERIVED`] (None: unknown).
#[derive(Clone, Copy, Debug, Default)]
pub struct Derived([Option<u64>; DERIVED.len()]);

impl Derived {
    pub fn put(&mut self, v02: &mut impl Vmcs, f: F, value: u64) {
        let i = DERIVED
            .iter()
            .position(|&d| d == f)
            .expect("a derived field");
        if self.0[i] != Some(value) {
            v02.write(f, value);
            self.0[i] = Some(value);
        }
    }
}

/// What L0 contributes to VMCS02.
pub struct L0Part<'a> {
    pub caps: &'a VmxCaps,
    pub cr_policy: &'a CrPolicy,
    /// EPTP02: the shadow for EPT12, or EPT01 when L1 does not use EPT.
    pub eptp: u64,
    /// VPID02, 0 for none.
    pub vpid: u16,
    pub io_bitmap_a: u64,
    pub io_bitmap_b: u64,
    pub msr_bitmap: u64,
    /// VMCS12's virtual-APIC page if L1's RAM, else L0's stand-in for
    /// unbacked memory (never another address).
    pub virtual_apic: u64,
    /// L1's state where L2 inherits it (no load control in VMCS12).
    pub l1_efer: u64,
    pub l1_pat: u64,
    pub l1_debugctl: u64,
    pub l1_dr7: u64,
    /// L0's own VMX-preemption timer value, used when L1 does not time L2.
    pub l0_timer: Option<u64>,
    /// L0 waits for L2's interrupt window (to deliver a virtual interrupt).
    pub window: bool,
}

/// The VMCS02 controls: L1's, with L0's bitmaps and EPT/VPID always on,
/// unconditional I/O exiting replaced by the bitmaps, and guest EFER, PAT
/// and debug state always switched by hardware.
pub fn controls02(v12: &Vmcs12, l0: &L0Part) -> (u32, u32, u32, u32, u32) {
    let fit = |c: Control, want: u32| {
        let msr = match c {
            Control::Pin => l0.caps.pin,
            Control::Primary => l0.caps.primary,
            Control::Secondary => l0.caps.secondary,
            Control::Exit => l0.caps.exit,
            Control::Entry => l0.caps.entry,
        };
        (want | msr as u32) & (msr >> 32) as u32
    };
    // Posted-interrupt processing and IPI virtualization are L0's, in
    // software (nested/posted.rs), even on a CPU that has them.
    let mut pin =
        v12.get(F::PIN_BASED_VM_EXEC_CONTROL) as u32 & !crate::vmx::caps::pin::POSTED_INTERRUPTS;
    if l0.l0_timer.is_some() {
        pin |= crate::vmx::caps::pin::PREEMPTION_TIMER;
    }
    let p12 = v12.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32;
    let s12 = v12.secondary_controls();
    let window = if l0.window {
        primary::INTERRUPT_WINDOW_EXITING
    } else {
        0
    };
    let p02 = (p12 & !(primary::UNCONDITIONAL_IO_EXITING | primary::ACTIVATE_TERTIARY))
        | window
        | primary::USE_IO_BITMAPS
        | primary::USE_MSR_BITMAPS
        // L2 gets no counters either (vcpu/perfmon.rs): L1's if it asks.
        | primary::RDPMC_EXITING
        | primary::ACTIVATE_SECONDARY;
    // L1's page-modification log is kept by L0 (ept_ad.rs): the CPU
    // would log the dirty flags it sets in EPT02, not EPT12's.
    let mut s02 = (s12 | secondary::ENABLE_EPT) & !secondary::ENABLE_PML;
    if l0.vpid != 0 {
        s02 |= secondary::ENABLE_VPID;
    } else {
        s02 &= !secondary::ENABLE_VPID;
    }
    let x12 = v12.get(F::VM_EXIT_CONTROLS) as u32;
    // L1's VMX-preemption timer counts while L2 runs, across the exits L0
    // handles itself: VMCS02 saves what is left at every exit, so L0's
    // resume goes on counting instead of reloading L1's full value (a VM
    // whose exits L0 keeps, as a frozen one retrying its COM access, would
    // never see L1's timer fire).
    let l1_timer =
        v12.get(F::PIN_BASED_VM_EXEC_CONTROL) as u32 & crate::vmx::caps::pin::PREEMPTION_TIMER != 0;
    let save_timer = if l1_timer {
        exit::SAVE_PREEMPTION_TIMER
    } else {
        0
    };
    let x02 = (x12 & (exit::ACK_INTERRUPT_ON_EXIT | exit::SAVE_PREEMPTION_TIMER))
        | save_timer
        | exit::HOST_ADDRESS_SPACE_SIZE
        | exit::SAVE_EFER
        | exit::LOAD_EFER
        | exit::SAVE_PAT
        | exit::LOAD_PAT
        | exit::SAVE_DEBUG_CONTROLS;
    let e12 = v12.get(F::VM_ENTRY_CONTROLS) as u32;
    let e02 = (e12 & entry::IA32E_MODE_GUEST)
        | entry::LOAD_EFER
        | entry::LOAD_PAT
        | entry::LOAD_DEBUG_CONTROLS;
    (
        fit(Control::Pin, pin),
        fit(Control::Primary, p02),
        fit(Control::Secondary, s02),
        fit(Control::Exit, x02),
        fit(Control::Entry, e02),
    )
}

/// L2's EFER when VMCS12 does not load it: L1's, with LMA/LME following
/// the "IA-32e mode guest" control (SDM 26.3.2.1).
fn efer02(v12: &Vmcs12, l0: &L0Part) -> u64 {
    let e12 = v12.get(F::VM_ENTRY_CONTROLS) as u32;
    if e12 & entry::LOAD_EFER != 0 {
        return v12.get(F::GUEST_IA32_EFER);
    }
    let lm = 1 << 8 | 1 << 10;
    let mut efer = l0.l1_efer & !lm;
    if e12 & entry::IA32E_MODE_GUEST != 0 {
        efer |= lm;
    }
    efer
}

/// Writes VMCS02 (its host state never changes): the fields copied from
/// VMCS12 only where L1 wrote them since VMCS02 last held this VMCS12's
/// values (`Vmcs12::is_dirty`), the derived ones only when they change.
pub fn write_vmcs02(v02: &mut impl Vmcs, v12: &Vmcs12, l0: &L0Part, d: &mut Derived) {
    for f in v12.dirty_in(&COPY_MASK) {
        v02.write(f, v12.get(f));
    }
    let (pin, p, s, x, e) = controls02(v12, l0);
    d.put(v02, F::PIN_BASED_VM_EXEC_CONTROL, pin as u64);
    d.put(v02, F::CPU_BASED_VM_EXEC_CONTROL, p as u64);
    d.put(v02, F::SECONDARY_VM_EXEC_CONTROL, s as u64);
    d.put(v02, F::VM_EXIT_CONTROLS, x as u64);
    // The hardware updates "IA-32e mode guest" on exits: always written.
    v02.write(F::VM_ENTRY_CONTROLS, e as u64);
    // Lists are carried out by L0 in software.
    d.put(v02, F::VM_EXIT_MSR_STORE_COUNT, 0);
    d.put(v02, F::VM_EXIT_MSR_LOAD_COUNT, 0);
    d.put(v02, F::VM_ENTRY_MSR_LOAD_COUNT, 0);
    d.put(v02, F::IO_BITMAP_A, l0.io_bitmap_a);
    d.put(v02, F::IO_BITMAP_B, l0.io_bitmap_b);
    d.put(v02, F::MSR_BITMAP, l0.msr_bitmap);
    d.put(v02, F::VIRTUAL_APIC_PAGE_ADDR, l0.virtual_apic);
    d.put(v02, F::EPT_POINTER, l0.eptp);
    if l0.vpid != 0 {
        d.put(v02, F::VIRTUAL_PROCESSOR_ID, l0.vpid as u64);
    }
    // Every virtualized EOI exits to L0, which evaluates pending virtual
    // interrupts itself (apicv.rs `before_l2_entry`): Bochs 2.7
    // delivers a virtual interrupt it found pending at an EOI even while
    // L2 has IF = 0, as soon as any interrupt for L1 arrives (its
    // InterruptAcknowledge tests the event pending, not unmasked). The
    // exits L1 asked for are still L1's (reflect.rs).
    if s & secondary::VIRTUAL_INTERRUPT_DELIVERY != 0 {
        for f in [
            F::EOI_EXIT_BITMAP0,
            F::EOI_EXIT_BITMAP1,
            F::EOI_EXIT_BITMAP2,
            F::EOI_EXIT_BITMAP3,
        ] {
            d.put(v02, f, u64::MAX);
        }
    }
    let p12 = v12.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32;
    d.put(
        v02,
        F::TSC_OFFSET,
        if p12 & primary::USE_TSC_OFFSETTING != 0 {
            v12.get(F::TSC_OFFSET)
        } else {
            0
        },
    );
    d.put(v02, F::VMCS_LINK_POINTER, u64::MAX);
    let l1_timer =
        v12.get(F::PIN_BASED_VM_EXEC_CONTROL) as u32 & crate::vmx::caps::pin::PREEMPTION_TIMER != 0;
    match (l1_timer, l0.l0_timer) {
        // Each of L1's entries starts L1's timer afresh (SDM 27.7.4);
        // VMCS02 holds what was left of the previous run.
        (true, _) => v02.write(
            F::VMX_PREEMPTION_TIMER_VALUE,
            v12.get(F::VMX_PREEMPTION_TIMER_VALUE),
        ),
        (false, Some(t)) => v02.write(F::VMX_PREEMPTION_TIMER_VALUE, t),
        (false, None) => {}
    }

    // CR0/CR4: L1's masks plus the bits VMX forces; for bits only L0
    // masks, L2 reads its real value.
    for (real, mask, shadow, forced) in [
        (
            F::GUEST_CR0,
            F::CR0_GUEST_HOST_MASK,
            F::CR0_READ_SHADOW,
            l0.cr_policy.cr0_forced,
        ),
        (
            F::GUEST_CR4,
            F::CR4_GUEST_HOST_MASK,
            F::CR4_READ_SHADOW,
            l0.cr_policy.cr4_forced,
        ),
    ] {
        let m12 = v12.get(mask);
        let value = v12.get(real);
        v02.write(real, value | forced);
        d.put(v02, mask, m12 | forced);
        d.put(v02, shadow, (v12.get(shadow) & m12) | (value & !m12));
    }
    let e12 = v12.get(F::VM_ENTRY_CONTROLS) as u32;
    v02.write(F::GUEST_IA32_EFER, efer02(v12, l0));
    v02.write(
        F::GUEST_IA32_PAT,
        if e12 & entry::LOAD_PAT != 0 {
            v12.get(F::GUEST_IA32_PAT)
        } else {
            l0.l1_pat
        },
    );
    let load_debug = e12 & entry::LOAD_DEBUG_CONTROLS != 0;
    v02.write(
        F::GUEST_DR7,
        if load_debug {
            v12.get(F::GUEST_DR7)
        } else {
            l0.l1_dr7
        },
    );
    v02.write(
        F::GUEST_IA32_DEBUGCTL,
        if load_debug {
            v12.get(F::GUEST_IA32_DEBUGCTL)
        } else {
            l0.l1_debugctl
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nested::testutil::valid_vmcs12;
    use crate::vmx::caps::tests::bochs_skylake as bochs;
    use crate::vmx::fake::FakeVmcs;

    fn l0part<'a>(caps: &'a VmxCaps, policy: &'a CrPolicy) -> L0Part<'a> {
        L0Part {
            caps,
            cr_policy: policy,
            eptp: 0x7700_0000 | 0x1e,
            vpid: 5,
            io_bitmap_a: 0x7800_0000,
            io_bitmap_b: 0x7800_1000,
            msr_bitmap: 0x7800_2000,
            virtual_apic: 0x7800_3000,
            l1_efer: 0xd01,
            l1_pat: 0x0606_0606_0606_0606,
            l1_debugctl: 0,
            l1_dr7: 0x400,
            l0_timer: None,
            window: false,
        }
    }

    const POLICY: CrPolicy = CrPolicy {
        cr0_forced: 0x20,
        cr4_forced: 0x2000,
        cr4_allowed: 0x37_07ff,
    };

    #[test]
    fn guest_state_and_l0_structures() {
        let caps = bochs();
        let l0 = l0part(&caps, &POLICY);
        let mut v12 = valid_vmcs12();
        v12.set(F::CR0_GUEST_HOST_MASK, 0x8);
        v12.set(F::CR0_READ_SHADOW, 0x8);
        let mut v02 = FakeVmcs::default();
        write_vmcs02(&mut v02, &v12, &l0, &mut Derived::default());
        assert_eq!(v02.read(F::GUEST_RIP), 0x1000);
        assert_eq!(v02.read(F::GUEST_CS_AR_BYTES), 0xc09b);
        assert_eq!(v02.read(F::EPT_POINTER), 0x7700_001e);
        assert_eq!(v02.read(F::VIRTUAL_PROCESSOR_ID), 5);
        assert_eq!(v02.read(F::MSR_BITMAP), 0x7800_2000);
        assert_eq!(v02.read(F::VMCS_LINK_POINTER), u64::MAX);
        // CR0: L1's mask (TS) and VMX's NE; NE reads as L2's real value.
        assert_eq!(v02.read(F::CR0_GUEST_HOST_MASK), 0x28);
        assert_eq!(v02.read(F::CR0_READ_SHADOW), 0x8 | 0x31);
        assert_eq!(v02.read(F::GUEST_IA32_EFER), 0, "VMCS12 loads EFER (0)");
        assert_eq!(v02.read(F::VM_ENTRY_MSR_LOAD_COUNT), 0);
    }

    #[test]
    fn controls_keep_l1s_and_add_l0s() {
        let caps = bochs();
        let l0 = l0part(&caps, &POLICY);
        let mut v12 = valid_vmcs12();
        let p = v12.get(F::CPU_BASED_VM_EXEC_CONTROL) | primary::UNCONDITIONAL_IO_EXITING as u64;
        v12.set(
            F::CPU_BASED_VM_EXEC_CONTROL,
            p & !(primary::USE_IO_BITMAPS as u64),
        );
        let (_, p02, s02, x02, e02) = controls02(&v12, &l0);
        assert_eq!(
            p02 & primary::UNCONDITIONAL_IO_EXITING,
            0,
            "replaced by bitmaps"
        );
        assert_ne!(p02 & primary::USE_IO_BITMAPS, 0);
        assert_ne!(p02 & primary::HLT_EXITING, 0, "L1's HLT exiting kept");
        assert_ne!(p02 & primary::RDPMC_EXITING, 0, "L0 withholds the counters");
        assert_ne!(s02 & secondary::ENABLE_EPT, 0);
        assert_ne!(s02 & secondary::UNRESTRICTED_GUEST, 0);
        assert_ne!(x02 & exit::HOST_ADDRESS_SPACE_SIZE, 0);
        assert_eq!(e02 & entry::IA32E_MODE_GUEST, 0);
        // No VPID02: the control is off even if L1 asked.
        let no_vpid = L0Part {
            vpid: 0,
            ..l0part(&caps, &POLICY)
        };
        assert_eq!(controls02(&v12, &no_vpid).2 & secondary::ENABLE_VPID, 0);
    }

    /// L1's timer keeps counting across exits L0 handles (VMCS02 saves
    /// what is left) and restarts from VMCS12 at each of L1's entries.
    #[test]
    fn l1_preemption_timer_survives_exits_l0_handles() {
        use crate::vmx::caps::pin;
        let caps = bochs();
        let l0 = L0Part {
            l0_timer: Some(0x4000),
            ..l0part(&caps, &POLICY)
        };
        let mut v12 = valid_vmcs12();
        let (_, _, _, x02, _) = controls02(&v12, &l0);
        assert_eq!(
            x02 & exit::SAVE_PREEMPTION_TIMER,
            0,
            "L0's own timer restarts at each resume"
        );
        let mut v02 = FakeVmcs::default();
        write_vmcs02(&mut v02, &v12, &l0, &mut Derived::default());
        assert_eq!(v02.read(F::VMX_PREEMPTION_TIMER_VALUE), 0x4000);

        v12.set(
            F::PIN_BASED_VM_EXEC_CONTROL,
            v12.get(F::PIN_BASED_VM_EXEC_CONTROL) | pin::PREEMPTION_TIMER as u64,
        );
        v12.set(F::VMX_PREEMPTION_TIMER_VALUE, 5000);
        let (pin02, _, _, x02, _) = controls02(&v12, &l0);
        assert_ne!(pin02 & pin::PREEMPTION_TIMER, 0);
        assert_ne!(
            x02 & exit::SAVE_PREEMPTION_TIMER,
            0,
            "L1 did not ask to save, L0 does"
        );
        let mut d = Derived::default();
        write_vmcs02(&mut v02, &v12, &l0, &mut d);
        assert_eq!(v02.read(F::VMX_PREEMPTION_TIMER_VALUE), 5000);
        // The hardware saved what was left at an exit; L1 enters again
        // without writing the field: the timer starts from L1's value.
        v02.write(F::VMX_PREEMPTION_TIMER_VALUE, 17);
        v12.clean();
        write_vmcs02(&mut v02, &v12, &l0, &mut d);
        assert_eq!(v02.read(F::VMX_PREEMPTION_TIMER_VALUE), 5000);
    }

    #[test]
    fn inherited_efer_follows_ia32e_control() {
        let caps = bochs();
        let l0 = l0part(&caps, &POLICY);
        let mut v12 = valid_vmcs12();
        v12.set(
            F::VM_ENTRY_CONTROLS,
            (v12.get(F::VM_ENTRY_CONTROLS) & !(entry::LOAD_EFER as u64))
                | entry::IA32E_MODE_GUEST as u64,
        );
        let mut v02 = FakeVmcs::default();
        write_vmcs02(&mut v02, &v12, &l0, &mut Derived::default());
        assert_eq!(v02.read(F::GUEST_IA32_EFER), 0xd01);
        v12.set(
            F::VM_ENTRY_CONTROLS,
            v12.get(F::VM_ENTRY_CONTROLS) & !(entry::IA32E_MODE_GUEST as u64),
        );
        write_vmcs02(&mut v02, &v12, &l0, &mut Derived::default());
        assert_eq!(v02.read(F::GUEST_IA32_EFER), 0x801);
        assert_eq!(
            v02.read(F::GUEST_IA32_PAT),
            0x0007_0406_0007_0406,
            "VMCS12 loads PAT"
        );
    }
}
