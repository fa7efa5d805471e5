//! Each check fails for the bad field it names, and the baseline passes.

use super::*;
use crate::nested::testutil::{caps, valid_vmcs12};

/// L1 RAM below 256 MiB, zero; all ones above, as unbacked memory reads.
fn zero_ram(a: u64) -> u64 {
    if a < 0x1000_0000 {
        0
    } else {
        u64::MAX
    }
}

fn run(v: &Vmcs12) -> Result<(), EntryFailure> {
    run_with(v, &zero_ram)
}

/// Every check of a VMLAUNCH, with L1's memory read through `mem`.
fn run_with(v: &Vmcs12, mem: &dyn Fn(u64) -> u64) -> Result<(), EntryFailure> {
    let c = caps();
    let ram = |a: u64, len: u64| a + len <= 0x1000_0000;
    let rev = |a: u64| (a == 0x40_0000).then_some(crate::nested::caps::VMCS12_REVISION);
    let ctx = CheckCtx {
        caps: &c,
        maxphyaddr: 39,
        l1_long_mode: true,
        is_l1_ram: &ram,
        read_revision: &rev,
        read_u64: mem,
    };
    check_controls(v, &ctx)?;
    check_host_state(v, &ctx)?;
    check_guest_state(v, &ctx)?;
    check_cr3_pdptes(v, &ctx).map(|_| ())
}

/// The light checks of a VMRESUME, memory read through `mem`.
fn run_light(v: &Vmcs12, mem: &dyn Fn(u64) -> u64) -> Result<(), EntryFailure> {
    let c = caps();
    let ram = |_: u64, _: u64| true;
    let rev = |_: u64| None;
    let ctx = CheckCtx {
        caps: &c,
        maxphyaddr: 39,
        l1_long_mode: true,
        is_l1_ram: &ram,
        read_revision: &rev,
        read_u64: mem,
    };
    check_light(v, &ctx)
}

fn with(f: F, value: u64) -> Vmcs12 {
    let mut v = valid_vmcs12();
    v.set(f, value);
    v
}

fn error_of(r: Result<(), EntryFailure>) -> Option<(u32, u64)> {
    match r {
        Ok(()) => None,
        Err(EntryFailure::Fail { error, .. }) => Some((error, 0)),
        Err(EntryFailure::GuestState { qualification, .. }) => Some((33, qualification)),
    }
}

#[test]
fn baseline_passes() {
    assert_eq!(run(&valid_vmcs12()), Ok(()));
}

#[test]
fn control_failures() {
    let base = valid_vmcs12();
    let cases = [
        (
            "reserved pin bit",
            F::PIN_BASED_VM_EXEC_CONTROL,
            base.get(F::PIN_BASED_VM_EXEC_CONTROL) | 1 << 7,
        ),
        ("default1 pin bit cleared", F::PIN_BASED_VM_EXEC_CONTROL, 0),
        ("I/O bitmap misaligned", F::IO_BITMAP_A, 0x30_0800),
        ("MSR bitmap beyond MAXPHYADDR", F::MSR_BITMAP, 1 << 40),
        ("VPID 0", F::VIRTUAL_PROCESSOR_ID, 0),
        ("bad EPTP", F::EPT_POINTER, 0x31_0000 | 6 | 2 << 3),
        ("CR3 target count", F::CR3_TARGET_COUNT, 5),
        ("MSR load count huge", F::VM_ENTRY_MSR_LOAD_COUNT, 513),
        (
            "entry event: reserved type",
            F::VM_ENTRY_INTR_INFO_FIELD,
            0x8000_0100,
        ),
        (
            "entry event: NMI not vector 2",
            F::VM_ENTRY_INTR_INFO_FIELD,
            0x8000_0203,
        ),
        (
            "entry event: #GP without error code in protected mode",
            F::VM_ENTRY_INTR_INFO_FIELD,
            0x8000_030d,
        ),
        (
            "entry event: #UD with an error code",
            F::VM_ENTRY_INTR_INFO_FIELD,
            0x8000_0b06,
        ),
    ];
    for (what, f, value) in cases {
        assert_eq!(error_of(run(&with(f, value))), Some((7, 0)), "{what}");
    }
    // A software interrupt longer than an instruction can be (Bochs allows
    // length 0: IA32_VMX_MISC[30]).
    let mut v = with(F::VM_ENTRY_INTR_INFO_FIELD, 0x8000_0480);
    v.set(F::VM_ENTRY_INSTRUCTION_LEN, 16);
    assert_eq!(error_of(run(&v)), Some((7, 0)));
    // Unrestricted guest needs EPT.
    let mut v = valid_vmcs12();
    v.set(
        F::SECONDARY_VM_EXEC_CONTROL,
        secondary::UNRESTRICTED_GUEST as u64,
    );
    assert_eq!(error_of(run(&v)), Some((7, 0)));
    // Save preemption timer without the timer.
    let mut v = valid_vmcs12();
    v.set_bits_for_test(F::VM_EXIT_CONTROLS, exit::SAVE_PREEMPTION_TIMER as u64);
    assert_eq!(error_of(run(&v)), Some((7, 0)));
    // Virtual NMIs need NMI exiting.
    let mut v = valid_vmcs12();
    v.set_bits_for_test(F::PIN_BASED_VM_EXEC_CONTROL, pin::VIRTUAL_NMIS as u64);
    assert_eq!(error_of(run(&v)), Some((7, 0)));
    // Valid injections pass.
    for info in [0x8000_0b0du64, 0x8000_0306, 0x8000_0030, 0x8000_0202] {
        let mut v = with(F::VM_ENTRY_INTR_INFO_FIELD, info);
        v.set(F::GUEST_RFLAGS, 0x202);
        assert_eq!(run(&v), Ok(()), "{info:#x}");
    }
}

#[test]
fn host_state_failures() {
    let cases = [
        ("CR0 without PG", F::HOST_CR0, 0x0005_0033),
        ("CR4 without VMXE", F::HOST_CR4, 0x20),
        ("CS selector 0", F::HOST_CS_SELECTOR, 0),
        ("TR selector 0", F::HOST_TR_SELECTOR, 0),
        ("selector with RPL", F::HOST_DS_SELECTOR, 0x13),
        ("non-canonical RIP", F::HOST_RIP, 0x0000_8000_0000_0000),
        (
            "non-canonical GS base",
            F::HOST_GS_BASE,
            0x0001_0000_0000_0000,
        ),
        (
            "EFER LMA clear with a 64-bit host",
            F::HOST_IA32_EFER,
            0x100,
        ),
        ("bad PAT type", F::HOST_IA32_PAT, 0x0007_0406_0007_0402),
        ("CR3 beyond MAXPHYADDR", F::HOST_CR3, 1 << 40),
    ];
    for (what, f, value) in cases {
        assert_eq!(error_of(run(&with(f, value))), Some((8, 0)), "{what}");
    }
    // A 32-bit host while L1 runs 64-bit code.
    let mut v = valid_vmcs12();
    v.clear_bits_for_test(F::VM_EXIT_CONTROLS, exit::HOST_ADDRESS_SPACE_SIZE as u64);
    v.set(F::HOST_IA32_EFER, 0);
    assert_eq!(error_of(run(&v)), Some((8, 0)));
}

#[test]
fn guest_state_failures() {
    let cases = [
        ("PG without PE", F::GUEST_CR0, 0x8000_0030),
        ("CR0.NE clear", F::GUEST_CR0, 0x11),
        ("CR4.VMXE clear", F::GUEST_CR4, 0),
        ("RFLAGS bit 1 clear", F::GUEST_RFLAGS, 0),
        ("RFLAGS reserved bit 3", F::GUEST_RFLAGS, 0xa),
        ("RIP above 4 GiB in 32-bit mode", F::GUEST_RIP, 1 << 32),
        ("activity state shutdown", F::GUEST_ACTIVITY_STATE, 2),
        ("STI and MOV SS blocking", F::GUEST_INTERRUPTIBILITY_INFO, 3),
        (
            "STI blocking with IF clear",
            F::GUEST_INTERRUPTIBILITY_INFO,
            1,
        ),
        ("CS type data read-only", F::GUEST_CS_AR_BYTES, 0xc091),
        ("CS not present", F::GUEST_CS_AR_BYTES, 0xc01b),
        ("TR unusable", F::GUEST_TR_AR_BYTES, 0x1_008b),
        ("TR not busy", F::GUEST_TR_AR_BYTES, 0x89),
        ("limit needs G", F::GUEST_DS_LIMIT, 0x0010_0000),
        ("GDTR limit above 16 bits", F::GUEST_GDTR_LIMIT, 0x1_0000),
        (
            "pending debug reserved",
            F::GUEST_PENDING_DBG_EXCEPTIONS,
            1 << 20,
        ),
        ("LMA without IA-32e entry", F::GUEST_IA32_EFER, 0x500),
    ];
    for (what, f, value) in cases {
        assert_eq!(error_of(run(&with(f, value))), Some((33, 0)), "{what}");
    }
    assert_eq!(
        error_of(run(&with(F::VMCS_LINK_POINTER, 0x12_3000))),
        Some((33, 4)),
        "link pointer, wrong revision"
    );
    assert_eq!(
        error_of(run(&with(F::VMCS_LINK_POINTER, 0x40_0008))),
        Some((33, 4)),
        "link pointer misaligned"
    );
    assert_eq!(
        run(&with(F::VMCS_LINK_POINTER, 0x40_0000)),
        Ok(()),
        "a valid VMCS as link pointer"
    );
    // HLT activity state is supported (with SS.DPL 0).
    assert_eq!(run(&with(F::GUEST_ACTIVITY_STATE, 1)), Ok(()));
    // Real mode with unrestricted guest.
    let mut v = with(F::GUEST_CR0, 0x30);
    v.set(F::GUEST_CS_AR_BYTES, 0x9b);
    v.set(F::GUEST_CS_LIMIT, 0xffff);
    for f in [
        F::GUEST_SS_AR_BYTES,
        F::GUEST_DS_AR_BYTES,
        F::GUEST_ES_AR_BYTES,
    ] {
        v.set(f, 0x93);
    }
    for f in [F::GUEST_SS_LIMIT, F::GUEST_DS_LIMIT, F::GUEST_ES_LIMIT] {
        v.set(f, 0xffff);
    }
    assert_eq!(run(&v), Ok(()), "real mode");
    // PAE paging with EPT: PDPTE reserved bits fail with qualification 2.
    let mut v = with(F::GUEST_CR0, 0x8000_0031);
    v.set(F::GUEST_CR4, 0x2020);
    v.set(F::GUEST_PDPTE1, 0x5000 | 1 | 1 << 5);
    assert_eq!(error_of(run(&v)), Some((33, 2)));
}

#[test]
fn long_mode_guest() {
    let mut v = valid_vmcs12();
    v.set_bits_for_test(F::VM_ENTRY_CONTROLS, entry::IA32E_MODE_GUEST as u64);
    v.set(F::GUEST_CR0, 0x8000_0031);
    v.set(F::GUEST_CR4, 0x2020);
    v.set(F::GUEST_IA32_EFER, 0x500);
    v.set(F::GUEST_CS_AR_BYTES, 0xa09b);
    v.set(F::GUEST_RIP, 0xffff_ffff_8000_0000);
    assert_eq!(run(&v), Ok(()));
    v.set(F::GUEST_RIP, 0x0000_8000_0000_0000);
    assert_eq!(error_of(run(&v)), Some((33, 0)), "non-canonical RIP");
    v.set(F::GUEST_RIP, 0x1000);
    v.set(F::GUEST_CR4, 0x2000);
    assert_eq!(error_of(run(&v)), Some((33, 0)), "IA-32e without PAE");
}

/// A VMCS12 with "use TPR shadow", its virtual-APIC page at 0x30_3000
/// and TPR threshold `threshold`; `apic_virt` secondary controls on.
fn tpr_shadow(threshold: u64, secondary_on: u32) -> Vmcs12 {
    let mut v = valid_vmcs12();
    v.set_bits_for_test(F::CPU_BASED_VM_EXEC_CONTROL, primary::USE_TPR_SHADOW as u64);
    v.set_bits_for_test(F::SECONDARY_VM_EXEC_CONTROL, secondary_on as u64);
    v.set(F::VIRTUAL_APIC_PAGE_ADDR, 0x30_3000);
    v.set(F::TPR_THRESHOLD, threshold);
    v
}

/// Memory whose VTPR (at 0x30_3080) is `vtpr`.
fn vtpr_is(vtpr: u8) -> impl Fn(u64) -> u64 {
    move |a| {
        if a == 0x30_3080 {
            vtpr as u64
        } else {
            zero_ram(a)
        }
    }
}

#[test]
fn tpr_threshold_against_vtpr() {
    // SDM 27.2.1.1: threshold[3:0] <= VTPR[7:4], boundary values.
    assert_eq!(run_with(&tpr_shadow(0xe, 0), &vtpr_is(0xe0)), Ok(()));
    assert_eq!(run_with(&tpr_shadow(0xe, 0), &vtpr_is(0xef)), Ok(()));
    assert_eq!(
        error_of(run_with(&tpr_shadow(0xf, 0), &vtpr_is(0xe0))),
        Some((7, 0)),
        "threshold 0xf over VTPR class 0xe"
    );
    assert_eq!(
        error_of(run_with(&tpr_shadow(0x1, 0), &vtpr_is(0x0f))),
        Some((7, 0)),
        "VTPR[3:0] does not count"
    );
    assert_eq!(run_with(&tpr_shadow(0, 0), &vtpr_is(0)), Ok(()));
    // Secondary controls off: the checked case even with the bits set.
    let mut v = tpr_shadow(0xf, secondary::VIRTUALIZE_APIC_ACCESSES);
    v.set(F::APIC_ACCESS_ADDR, 0x30_4000);
    assert_eq!(
        run_with(&v, &vtpr_is(0)),
        Ok(()),
        "virtualize APIC accesses"
    );
    v.set(
        F::CPU_BASED_VM_EXEC_CONTROL,
        v.get(F::CPU_BASED_VM_EXEC_CONTROL) & !(primary::ACTIVATE_SECONDARY as u64),
    );
    v.set(F::GUEST_CR0, 0x8000_0031);
    v.set(F::GUEST_CR3, 0x1000);
    assert_eq!(
        error_of(run_with(&v, &vtpr_is(0))),
        Some((7, 0)),
        "secondary controls off: as if all 0"
    );
    // L2 lowers VTPR between exits: the light VMRESUME checks catch it.
    let v = tpr_shadow(0x8, 0);
    assert_eq!(run_light(&v, &vtpr_is(0x80)), Ok(()));
    assert_eq!(error_of(run_light(&v, &vtpr_is(0x70))), Some((7, 0)));
}

/// A PAE-paging L2 without EPT, CR3 = 0x5020 (32-byte aligned).
fn pae_without_ept() -> Vmcs12 {
    let mut v = valid_vmcs12();
    let s = v.get(F::SECONDARY_VM_EXEC_CONTROL);
    let off = (secondary::ENABLE_EPT | secondary::UNRESTRICTED_GUEST) as u64;
    v.set(F::SECONDARY_VM_EXEC_CONTROL, s & !off);
    v.set(F::GUEST_CR0, 0x8000_0031);
    v.set(F::GUEST_CR4, 0x2020);
    v.set(F::GUEST_CR3, 0x5020);
    // The VMCS12 fields are not used without EPT.
    v.set(F::GUEST_PDPTE0, 1 << 5 | 1);
    v
}

#[test]
fn pae_pdptes_come_from_cr3_without_ept() {
    let c = caps();
    let ram = |_: u64, _: u64| true;
    let rev = |_: u64| None;
    let table = |bad: u64| {
        move |a: u64| match a {
            0x5020 => 0x6001,
            0x5028 => 0,
            0x5030 => 0x7001 | bad,
            0x5038 => 0x8000, // not present: anything goes
            _ => u64::MAX,
        }
    };
    let good = table(0);
    let ctx = |mem: &'_ dyn Fn(u64) -> u64| -> Result<Option<[u64; 4]>, EntryFailure> {
        let x = CheckCtx {
            caps: &c,
            maxphyaddr: 39,
            l1_long_mode: true,
            is_l1_ram: &ram,
            read_revision: &rev,
            read_u64: mem,
        };
        check_cr3_pdptes(&pae_without_ept(), &x)
    };
    assert_eq!(ctx(&good), Ok(Some([0x6001, 0, 0x7001, 0x8000])));
    assert_eq!(run_with(&pae_without_ept(), &good), Ok(()));
    // Reserved bits 2:1, 8:5 and MAXPHYADDR..63 of a present PDPTE.
    for bad in [1 << 1, 1 << 2, 1 << 5, 1 << 8, 1 << 39, 1 << 62] {
        assert_eq!(
            error_of(run_with(&pae_without_ept(), &table(bad))),
            Some((33, 2)),
            "bit {:#x}",
            bad
        );
    }
    assert_eq!(
        run_with(&pae_without_ept(), &table(1 << 9 | 1 << 38)),
        Ok(()),
        "bits 11:9 and below MAXPHYADDR are not reserved"
    );
    // CR3 where no RAM is: all ones, present with reserved bits.
    let mut v = pae_without_ept();
    v.set(F::GUEST_CR3, 0x2000_0000);
    assert_eq!(error_of(run_with(&v, &zero_ram)), Some((33, 2)));
    // With EPT the VMCS fields count, not memory.
    let mut v = pae_without_ept();
    v.set_bits_for_test(F::SECONDARY_VM_EXEC_CONTROL, secondary::ENABLE_EPT as u64);
    v.set(F::GUEST_PDPTE0, 0x6001);
    assert_eq!(run_with(&v, &table(1 << 5)), Ok(()));
    // IA-32e mode and 32-bit paging load no PDPTEs.
    let mut v = pae_without_ept();
    v.set(F::GUEST_CR4, 0x2000);
    assert_eq!(run_with(&v, &table(1 << 5)), Ok(()));
}

#[test]
fn structure_addresses_need_only_alignment_and_maxphyaddr() {
    // SDM 27.2.1.1-27.2.1.3: RAM or not; the last byte below 2^39 here.
    let top = 1u64 << 39;
    let accepted = [
        ("I/O bitmap A beyond RAM", F::IO_BITMAP_A, 0x2000_0000),
        ("I/O bitmap B at the top", F::IO_BITMAP_B, top - 4096),
        ("MSR bitmap at the top", F::MSR_BITMAP, top - 4096),
    ];
    for (what, f, value) in accepted {
        assert_eq!(run(&with(f, value)), Ok(()), "{what}");
    }
    let refused = [
        ("I/O bitmap B past the top", F::IO_BITMAP_B, top),
        ("MSR bitmap past the top", F::MSR_BITMAP, top),
    ];
    for (what, f, value) in refused {
        assert_eq!(error_of(run(&with(f, value))), Some((7, 0)), "{what}");
    }
    // MSR lists: 16-byte aligned, the list's last byte below MAXPHYADDR.
    for (count_f, addr_f) in [
        (F::VM_EXIT_MSR_STORE_COUNT, F::VM_EXIT_MSR_STORE_ADDR),
        (F::VM_EXIT_MSR_LOAD_COUNT, F::VM_EXIT_MSR_LOAD_ADDR),
        (F::VM_ENTRY_MSR_LOAD_COUNT, F::VM_ENTRY_MSR_LOAD_ADDR),
    ] {
        let list = |addr: u64, n: u64| {
            let mut v = with(addr_f, addr);
            v.set(count_f, n);
            error_of(run(&v))
        };
        assert_eq!(list(top - 48, 2), None, "the issue's example");
        assert_eq!(list(top - 48, 3), None, "ends on the last byte");
        assert_eq!(list(top - 48, 4), Some((7, 0)), "one entry too many");
        assert_eq!(list(0x2000_0008, 1), Some((7, 0)), "misaligned");
        assert_eq!(list(u64::MAX - 15, 2), Some((7, 0)), "wraps around");
        assert_eq!(list(top - 48, 0), None, "no list, no check");
    }
    // The virtual-APIC page beyond RAM reads as all ones: VTPR class 0xf.
    let mut v = tpr_shadow(0xf, 0);
    v.set(F::VIRTUAL_APIC_PAGE_ADDR, 0x2000_0000);
    assert_eq!(run(&v), Ok(()));
    v.set(F::VIRTUAL_APIC_PAGE_ADDR, top);
    assert_eq!(error_of(run(&v)), Some((7, 0)));
    // The APIC-access page must be L1's RAM (L0 is stricter here).
    let mut v = tpr_shadow(0, secondary::VIRTUALIZE_APIC_ACCESSES);
    v.set(F::APIC_ACCESS_ADDR, 0x30_4000);
    assert_eq!(run(&v), Ok(()));
    v.set(F::APIC_ACCESS_ADDR, 0x2000_0000);
    assert_eq!(error_of(run(&v)), Some((7, 0)));
}

#[test]
fn addresses_near_2_pow_64_fail_checks_not_l0() {
    // A VMRESUME's light checks read VTPR without the address check: the
    // page's VTPR past 2^64 reads as all ones (class 0xf), no overflow.
    let mut v = tpr_shadow(0xf, 0);
    v.set(F::VIRTUAL_APIC_PAGE_ADDR, u64::MAX - 0x3f);
    assert_eq!(run_light(&v, &zero_ram), Ok(()));
    // The full checks refuse such an address, and MSR lists ending past
    // 2^64, as VMfail 7.
    assert_eq!(error_of(run(&v)), Some((7, 0)));
    for (count_f, addr_f) in [
        (F::VM_EXIT_MSR_STORE_COUNT, F::VM_EXIT_MSR_STORE_ADDR),
        (F::VM_ENTRY_MSR_LOAD_COUNT, F::VM_ENTRY_MSR_LOAD_ADDR),
    ] {
        let mut v = with(addr_f, u64::MAX - 15);
        v.set(count_f, 512);
        assert_eq!(error_of(run(&v)), Some((7, 0)));
    }
}

/// "Enable PML" (SDM 27.2.1.1): EPT on, and the PML address 4 KiB-aligned
/// with its page below MAXPHYADDR (39 here); any such address passes,
/// L1 RAM or not. EPTP bit 6 (A/D flags) is offered.
#[test]
fn pml_needs_ept_and_an_aligned_address_below_maxphyaddr() {
    let pml = |addr: u64, ept: bool| {
        let mut v = valid_vmcs12();
        v.set_bits_for_test(F::SECONDARY_VM_EXEC_CONTROL, secondary::ENABLE_PML as u64);
        if !ept {
            v.clear_bits_for_test(F::SECONDARY_VM_EXEC_CONTROL, secondary::ENABLE_EPT as u64);
        }
        v.set(F::PML_ADDRESS, addr);
        error_of(run(&v))
    };
    let cases = [
        (0x30_0000, true, None),
        ((1 << 39) - 0x1000, true, None),
        (0x2000_0000, true, None),
        (0x30_0000, false, Some((7, 0))),
        (0x30_0800, true, Some((7, 0))),
        (0x30_0008, true, Some((7, 0))),
        (1 << 39, true, Some((7, 0))),
    ];
    for (addr, ept, want) in cases {
        assert_eq!(pml(addr, ept), want, "PML address {addr:#x}, EPT {ept}");
    }
    let eptp = valid_vmcs12().get(F::EPT_POINTER);
    assert_eq!(run(&with(F::EPT_POINTER, eptp | 1 << 6)), Ok(()));
}
