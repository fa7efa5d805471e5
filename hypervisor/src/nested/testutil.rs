//! A VMCS12 that passes every entry check, as a test hypervisor would
//! build it: a 64-bit L1 host, a 32-bit flat protected-mode L2 with
//! unrestricted guest and EPT, I/O and MSR bitmaps.

use super::caps::NestedCaps;
use super::vmcs12::Vmcs12;
use crate::vmx::caps::tests::bochs_skylake as bochs;
use crate::vmx::caps::{entry, exit, primary, secondary};
use crate::vmx::Field as F;

pub const IO_A: u64 = 0x30_0000;
pub const IO_B: u64 = 0x30_1000;
pub const MSR_BITMAP: u64 = 0x30_2000;
pub const EPT12_ROOT: u64 = 0x31_0000;

pub fn caps() -> NestedCaps {
    NestedCaps::new(&bochs())
}

pub fn valid_vmcs12() -> Vmcs12 {
    let c = caps();
    let fit = |msr: u64, want: u32| ((want | msr as u32) & (msr >> 32) as u32) as u64;
    let mut v = Vmcs12::default();
    v.set(F::PIN_BASED_VM_EXEC_CONTROL, fit(c.pin, 0));
    v.set(
        F::CPU_BASED_VM_EXEC_CONTROL,
        fit(
            c.primary,
            primary::USE_IO_BITMAPS
                | primary::USE_MSR_BITMAPS
                | primary::ACTIVATE_SECONDARY
                | primary::HLT_EXITING,
        ),
    );
    v.set(
        F::SECONDARY_VM_EXEC_CONTROL,
        fit(
            c.secondary,
            secondary::ENABLE_EPT | secondary::UNRESTRICTED_GUEST | secondary::ENABLE_VPID,
        ),
    );
    v.set(
        F::VM_EXIT_CONTROLS,
        fit(
            c.exit,
            exit::HOST_ADDRESS_SPACE_SIZE
                | exit::SAVE_EFER
                | exit::LOAD_EFER
                | exit::SAVE_PAT
                | exit::LOAD_PAT,
        ),
    );
    v.set(
        F::VM_ENTRY_CONTROLS,
        fit(c.entry, entry::LOAD_EFER | entry::LOAD_PAT),
    );
    v.set(F::IO_BITMAP_A, IO_A);
    v.set(F::IO_BITMAP_B, IO_B);
    v.set(F::MSR_BITMAP, MSR_BITMAP);
    v.set(F::EPT_POINTER, EPT12_ROOT | 6 | 3 << 3);
    v.set(F::VIRTUAL_PROCESSOR_ID, 1);
    v.set(F::VMCS_LINK_POINTER, u64::MAX);
    // Host: L1 in 64-bit mode.
    v.set(F::HOST_CR0, 0x8005_0033);
    v.set(F::HOST_CR3, 0x1000);
    v.set(F::HOST_CR4, 0x2020);
    v.set(F::HOST_CS_SELECTOR, 0x08);
    v.set(F::HOST_SS_SELECTOR, 0x10);
    v.set(F::HOST_DS_SELECTOR, 0x10);
    v.set(F::HOST_ES_SELECTOR, 0x10);
    v.set(F::HOST_TR_SELECTOR, 0x18);
    v.set(F::HOST_TR_BASE, 0x5000);
    v.set(F::HOST_GDTR_BASE, 0x6000);
    v.set(F::HOST_IDTR_BASE, 0x7000);
    v.set(F::HOST_IA32_EFER, 0xd00);
    v.set(F::HOST_IA32_PAT, 0x0007_0406_0007_0406);
    v.set(F::HOST_RIP, 0x10_1234);
    v.set(F::HOST_RSP, 0x20_0000);
    // Guest: 32-bit flat protected mode, paging off.
    v.set(F::GUEST_CR0, 0x31);
    v.set(F::GUEST_CR4, 0x2000);
    v.set(F::CR0_READ_SHADOW, 0x11);
    for (s, b, l, a, sel, ar) in [
        (
            F::GUEST_CS_SELECTOR,
            F::GUEST_CS_BASE,
            F::GUEST_CS_LIMIT,
            F::GUEST_CS_AR_BYTES,
            0x08,
            0xc09b,
        ),
        (
            F::GUEST_SS_SELECTOR,
            F::GUEST_SS_BASE,
            F::GUEST_SS_LIMIT,
            F::GUEST_SS_AR_BYTES,
            0x10,
            0xc093,
        ),
        (
            F::GUEST_DS_SELECTOR,
            F::GUEST_DS_BASE,
            F::GUEST_DS_LIMIT,
            F::GUEST_DS_AR_BYTES,
            0x10,
            0xc093,
        ),
        (
            F::GUEST_ES_SELECTOR,
            F::GUEST_ES_BASE,
            F::GUEST_ES_LIMIT,
            F::GUEST_ES_AR_BYTES,
            0x10,
            0xc093,
        ),
        (
            F::GUEST_FS_SELECTOR,
            F::GUEST_FS_BASE,
            F::GUEST_FS_LIMIT,
            F::GUEST_FS_AR_BYTES,
            0,
            0x1_0000,
        ),
        (
            F::GUEST_GS_SELECTOR,
            F::GUEST_GS_BASE,
            F::GUEST_GS_LIMIT,
            F::GUEST_GS_AR_BYTES,
            0,
            0x1_0000,
        ),
    ] {
        v.set(s, sel);
        v.set(b, 0);
        v.set(l, if ar == 0x1_0000 { 0 } else { 0xffff_ffff });
        v.set(a, ar);
    }
    v.set(F::GUEST_TR_AR_BYTES, 0x8b);
    v.set(F::GUEST_TR_LIMIT, 0xffff);
    v.set(F::GUEST_LDTR_AR_BYTES, 0x1_0000);
    v.set(F::GUEST_GDTR_LIMIT, 0x17);
    v.set(F::GUEST_IDTR_LIMIT, 0xfff);
    v.set(F::GUEST_RIP, 0x1000);
    v.set(F::GUEST_RSP, 0x8000);
    v.set(F::GUEST_RFLAGS, 0x2);
    v.set(F::GUEST_DR7, 0x400);
    v.set(F::GUEST_IA32_PAT, 0x0007_0406_0007_0406);
    v
}
