//! `nested-vmx-instr`: the VMX instructions' own semantics, as L1 sees
//! them: #UD outside VMX operation, VMfailInvalid without a current VMCS,
//! VMfailValid with the VM-instruction error number otherwise (SDM Vol. 3C
//! 31.2-31.4, each instruction's pseudocode in 31.3), VMREAD/VMWRITE
//! widths (25.11.2, Appendix B), VMPTRST, launch state.

use crate::check::Checks;
use crate::hv::fields::*;
use crate::hv::mem::{self, pg};
use crate::hv::vm::{Entry, Vm};
use crate::hv::vmx::{
    self, guarded, vmread, vmwrite, VmFail, VmResult, LEN_INVEPT, LEN_VMCLEAR, LEN_VMPTRLD,
    LEN_VMPTRST, LEN_VMREAD, LEN_VMXOFF, LEN_VMXON,
};
use crate::hv::{cpu, l0_alive, vmcs, Hv};
use crate::l2;

const UD: u8 = 6;
const GP: u8 = 13;

const CHECKS: &[&str] = &[
    "vmxon-without-cr4-vmxe-ud",
    "vmx-insn-outside-vmx-ud",
    "vmxon-cr0-ne-clear-gp",
    "vmxon-bad-revision",
    "vmxon-misaligned",
    "vmxon-beyond-maxphyaddr",
    "vmxon",
    "vmxon-in-root-no-vmcs",
    "vmptrst-none",
    "vmread-no-current-vmcs",
    "vmwrite-no-current-vmcs",
    "vmlaunch-no-current-vmcs",
    "vmptrld-current",
    "vmxon-in-root-with-vmcs",
    "vmptrld-misaligned",
    "vmptrld-beyond-maxphyaddr",
    "vmptrld-vmxon-ptr",
    "vmptrld-bad-revision",
    "vmclear-misaligned",
    "vmclear-vmxon-ptr",
    "vmread-unsupported-field",
    "vmwrite-unsupported-field",
    "vmread-field-bits-63-32",
    "vmwrite-read-only-field",
    "vmrw-16bit",
    "vmrw-32bit",
    "vmrw-64bit",
    "vmrw-64bit-high",
    "vmrw-natural",
    "vmlaunch-launched",
    "vmresume-clear",
    "vmclear-relaunch",
    "vmclear-current-invalidates",
    "invept-bad-type",
    "invvpid-bad-type",
    "invvpid-vpid0",
    "invvpid-noncanonical",
    "vmxoff",
    "vmx-insn-after-vmxoff-ud",
];

pub fn run() {
    static NAME: &str = "nested-vmx-instr";
    crate::set_current_test(&NAME);
    let mut c = Checks::new(NAME);
    if let Some(hv) = Hv::prepare(&mut c, CHECKS) {
        checks(&mut c, &hv);
    }
    l0_alive(&mut c);
    c.finish();
}

fn vmxon_at(pa: u64) -> Result<VmResult, u8> {
    // SAFETY: `pa` is our VMXON page or an address chosen to fail.
    guarded(LEN_VMXON, || unsafe { vmx::vmxon(pa) })
}
fn vmptrld_at(pa: u64) -> Result<VmResult, u8> {
    // SAFETY: `pa` is a pool page or an address chosen to fail.
    guarded(LEN_VMPTRLD, || unsafe { vmx::vmptrld(pa) })
}
fn vmclear_at(pa: u64) -> Result<VmResult, u8> {
    // SAFETY: as above.
    guarded(LEN_VMCLEAR, || unsafe { vmx::vmclear(pa) })
}

/// CR0 writes of this scenario change only NE and FIXED0 bits.
fn write_cr0(v: u64) {
    // SAFETY: L1 stays in long mode with paging; NE only changes how x87
    // errors are reported and this guest uses no x87.
    unsafe { cpu::set_cr0(v) }
}

/// CR4 writes of this scenario change only VMXE and FIXED0 bits.
fn write_cr4(v: u64) {
    // SAFETY: VMXE (outside VMX operation) and the FIXED0 bits do not
    // change how L1 runs.
    unsafe { cpu::set_cr4(v) }
}

fn vmxoff() -> VmResult {
    // SAFETY: leaving VMX operation is the point of the checks that call
    // this; nothing afterwards needs VMX until the next VMXON.
    unsafe { vmx::vmxoff() }
}

fn valid(n: u32) -> Result<VmResult, u8> {
    Ok(Err(VmFail::Valid(n)))
}
const INVALID: Result<VmResult, u8> = Ok(Err(VmFail::Invalid));
const OK: Result<VmResult, u8> = Ok(Ok(()));

fn checks(c: &mut Checks, hv: &Hv) {
    let caps = &hv.caps;
    let vmxon = mem::page(pg::VMXON);
    let s = mem::page(pg::VMCS_S);
    let x = mem::page(pg::VMCS_X);
    mem::zero_page(vmxon);
    mem::wr32(vmxon, caps.revision());

    write_cr0(cpu::cr0() | caps.cr0_fixed0);
    write_cr4(cpu::cr4() & !(1 << 13));
    // VMXON: "IF ... CR4.VMXE = 0 ... THEN #UD".
    let r = vmxon_at(vmxon);
    c.check(
        "vmxon-without-cr4-vmxe-ud",
        r == Err(UD),
        format_args!("{r:?}"),
    );

    write_cr4(cpu::cr4() | caps.cr4_fixed0 | 1 << 13);
    // Outside VMX operation every other VMX instruction is #UD.
    let outside = [
        vmptrld_at(s).err(),
        guarded(LEN_VMREAD, || vmread(GUEST_RIP).is_ok()).err(),
        vmclear_at(s).err(),
        guarded(LEN_VMPTRST, vmx::vmptrst).err(),
        guarded(LEN_VMXOFF, vmxoff).err(),
    ];
    c.check(
        "vmx-insn-outside-vmx-ud",
        outside.iter().all(|v| *v == Some(UD)),
        format_args!("VMPTRLD, VMREAD, VMCLEAR, VMPTRST, VMXOFF: {outside:?}"),
    );

    // VMXON: CR0 must satisfy IA32_VMX_CR0_FIXED0 (NE), else #GP(0).
    if caps.cr0_fixed0 & (1 << 5) != 0 {
        let cr0 = cpu::cr0();
        write_cr0(cr0 & !(1 << 5));
        let r = vmxon_at(vmxon);
        write_cr0(cr0);
        if r == OK {
            // Do not stay in VMX operation entered by mistake.
            let _ = vmxoff();
        }
        c.check("vmxon-cr0-ne-clear-gp", r == Err(GP), format_args!("{r:?}"));
    } else {
        c.skip(
            "vmxon-cr0-ne-clear-gp",
            format_args!("CR0.NE is not a FIXED0 bit here"),
        );
    }

    // VMXON: VMfailInvalid for a bad region (no VMCS to report in).
    mem::wr32(vmxon, caps.revision() ^ 1);
    let r = vmxon_at(vmxon);
    mem::wr32(vmxon, caps.revision());
    c.check("vmxon-bad-revision", r == INVALID, format_args!("{r:?}"));
    let r = vmxon_at(vmxon + 8);
    c.check("vmxon-misaligned", r == INVALID, format_args!("{r:?}"));
    let r = vmxon_at(vmxon | 1 << caps.maxphyaddr);
    c.check(
        "vmxon-beyond-maxphyaddr",
        r == INVALID,
        format_args!("{r:?} at {:#x}", vmxon | 1 << caps.maxphyaddr),
    );

    let r = vmxon_at(vmxon);
    c.check("vmxon", r == OK, format_args!("{r:?}"));
    if r != OK {
        for n in CHECKS.iter().skip_while(|n| **n != "vmxon").skip(1) {
            c.check(n, false, format_args!("VMXON failed"));
        }
        return;
    }

    // In VMX root without a current VMCS: VMfailInvalid.
    let r = vmxon_at(vmxon);
    c.check("vmxon-in-root-no-vmcs", r == INVALID, format_args!("{r:?}"));
    let p = vmx::vmptrst();
    c.check("vmptrst-none", p == u64::MAX, format_args!("{p:#x}"));
    let r = vmread(GUEST_RIP);
    c.check(
        "vmread-no-current-vmcs",
        r == Err(VmFail::Invalid),
        format_args!("{r:?}"),
    );
    let r = vmwrite(GUEST_RIP, 0);
    c.check(
        "vmwrite-no-current-vmcs",
        r == Err(VmFail::Invalid),
        format_args!("{r:?}"),
    );
    let mut nobody = Vm::new(s);
    let e = nobody.enter();
    c.check(
        "vmlaunch-no-current-vmcs",
        matches!(e, Entry::Fail(VmFail::Invalid)),
        format_args!("{e}"),
    );

    // A current VMCS: errors are now reported in it.
    let r = vmcs::init_region(caps, s).map(|_| vmptrld_at(s));
    let p = vmx::vmptrst();
    c.check(
        "vmptrld-current",
        r == Ok(OK) && p == s,
        format_args!("{r:?}, VMPTRST {p:#x} (want {s:#x})"),
    );
    let r = vmxon_at(vmxon);
    c.check(
        "vmxon-in-root-with-vmcs",
        r == valid(err::VMXON_IN_ROOT),
        format_args!("{r:?}"),
    );

    let r = vmptrld_at(x + 8);
    c.check(
        "vmptrld-misaligned",
        r == valid(err::VMPTRLD_INVALID_ADDR),
        format_args!("{r:?}"),
    );
    let r = vmptrld_at(x | 1 << caps.maxphyaddr);
    c.check(
        "vmptrld-beyond-maxphyaddr",
        r == valid(err::VMPTRLD_INVALID_ADDR),
        format_args!("{r:?}"),
    );
    let r = vmptrld_at(vmxon);
    c.check(
        "vmptrld-vmxon-ptr",
        r == valid(err::VMPTRLD_VMXON_PTR),
        format_args!("{r:?}"),
    );
    mem::zero_page(x);
    mem::wr32(x, caps.revision() ^ 1);
    let r = vmptrld_at(x);
    c.check(
        "vmptrld-bad-revision",
        r == valid(err::VMPTRLD_BAD_REVISION),
        format_args!("{r:?}"),
    );
    let p = vmx::vmptrst();
    if p != s {
        crate::println!(
            "guest: the current VMCS changed to {p:#x} after failed VMPTRLDs; reloading"
        );
        let _ = vmptrld_at(s);
    }

    let r = vmclear_at(x + 8);
    c.check(
        "vmclear-misaligned",
        r == valid(err::VMCLEAR_INVALID_ADDR),
        format_args!("{r:?}"),
    );
    let r = vmclear_at(vmxon);
    c.check(
        "vmclear-vmxon-ptr",
        r == valid(err::VMCLEAR_VMXON_PTR),
        format_args!("{r:?}"),
    );

    // VMREAD/VMWRITE of a component that does not exist: error 12.
    const NO_FIELD: u32 = 0x7ffe; // natural-width host-state, index 0x1ff
    let r = vmread(NO_FIELD);
    c.check(
        "vmread-unsupported-field",
        r == Err(VmFail::Valid(err::UNSUPPORTED_FIELD)),
        format_args!("field {NO_FIELD:#x}: {r:?}"),
    );
    let r = vmwrite(NO_FIELD, 0);
    c.check(
        "vmwrite-unsupported-field",
        r == Err(VmFail::Valid(err::UNSUPPORTED_FIELD)),
        format_args!("field {NO_FIELD:#x}: {r:?}"),
    );
    // In 64-bit mode the encoding is the whole register: bits 63:32 set
    // name no component (SDM 25.11.2).
    let r = vmx::vmread_raw(1 << 32 | GUEST_RIP as u64);
    c.check(
        "vmread-field-bits-63-32",
        r == Err(VmFail::Valid(err::UNSUPPORTED_FIELD)),
        format_args!("{r:?}"),
    );

    // A VM-exit information field: read-only unless IA32_VMX_MISC[29].
    let r = vmwrite(EXIT_REASON, 0x1234);
    if caps.vmwrite_exit_info() {
        let back = vmread(EXIT_REASON);
        c.check(
            "vmwrite-read-only-field",
            r.is_ok() && back == Ok(0x1234),
            format_args!("MISC[29] set: {r:?}, reads back {back:#x?}"),
        );
    } else {
        c.check(
            "vmwrite-read-only-field",
            r == Err(VmFail::Valid(err::VMWRITE_READ_ONLY)),
            format_args!("{r:?}"),
        );
    }

    // Widths (SDM 25.11.2): VMWRITE drops source bits beyond the field,
    // VMREAD zero-extends; the "high" encoding of a 64-bit field is its
    // bits 63:32.
    let rw = |f: u32, w: u64| vmwrite(f, w).and_then(|_| vmread(f));
    let r = rw(GUEST_ES_SEL, 0xffff_1234);
    c.check("vmrw-16bit", r == Ok(0x1234), format_args!("{r:#x?}"));
    let r = rw(GUEST_ES_LIMIT, 0x1_2345_6789);
    c.check("vmrw-32bit", r == Ok(0x2345_6789), format_args!("{r:#x?}"));
    let r = rw(VMCS_LINK_POINTER, 0x1122_3344_5566_7788);
    c.check(
        "vmrw-64bit",
        r == Ok(0x1122_3344_5566_7788),
        format_args!("{r:#x?}"),
    );
    let high = vmread(VMCS_LINK_POINTER_HIGH);
    let w = vmwrite(VMCS_LINK_POINTER_HIGH, 0xaabb_ccdd);
    let full = vmread(VMCS_LINK_POINTER);
    c.check(
        "vmrw-64bit-high",
        high == Ok(0x1122_3344) && w.is_ok() && full == Ok(0xaabb_ccdd_5566_7788),
        format_args!("high read {high:#x?}, high write {w:?}, full {full:#x?}"),
    );
    let _ = vmwrite(VMCS_LINK_POINTER, u64::MAX);
    let r = rw(GUEST_CR3, 0x1234_5678_9abc_d000);
    c.check(
        "vmrw-natural",
        r == Ok(0x1234_5678_9abc_d000),
        format_args!("{r:#x?}"),
    );

    launch_state(c, hv);

    // INVEPT/INVVPID with a type the capabilities do not list: error 28
    // (SDM 31.3 INVEPT/INVVPID). Needs a current VMCS for VMfailValid.
    let _ = vmcs::init_region(caps, s).map(|_| vmptrld_at(s));
    if caps.invept() {
        let bad = (0..4).find(|&t| !caps.invept_type(t)).unwrap_or(3);
        let r = guarded(LEN_INVEPT, || vmx::invept(bad, hv.eptp()));
        c.check(
            "invept-bad-type",
            r == valid(err::INVALID_INVEPT_INVVPID),
            format_args!("type {bad}: {r:?}"),
        );
    } else {
        c.skip("invept-bad-type", format_args!("INVEPT not offered"));
    }
    if caps.invvpid() {
        let r = guarded(LEN_INVEPT, || vmx::invvpid(4, 1, 0));
        c.check(
            "invvpid-bad-type",
            r == valid(err::INVALID_INVEPT_INVVPID),
            format_args!("type 4: {r:?}"),
        );
        // Types 0, 1, 3 with VPID 0: error 28.
        match [1, 0, 3].into_iter().find(|&t| caps.invvpid_type(t)) {
            Some(t) => {
                let r = guarded(LEN_INVEPT, || vmx::invvpid(t, 0, 0));
                c.check(
                    "invvpid-vpid0",
                    r == valid(err::INVALID_INVEPT_INVVPID),
                    format_args!("type {t}: {r:?}"),
                );
            }
            None => c.skip(
                "invvpid-vpid0",
                format_args!("only all-context INVVPID offered"),
            ),
        }
        // Individual-address with a non-canonical address: error 28.
        if caps.invvpid_type(0) {
            let r = guarded(LEN_INVEPT, || vmx::invvpid(0, 1, 0x0000_8000_0000_0000));
            c.check(
                "invvpid-noncanonical",
                r == valid(err::INVALID_INVEPT_INVVPID),
                format_args!("{r:?}"),
            );
        } else {
            c.skip(
                "invvpid-noncanonical",
                format_args!("individual-address INVVPID not offered"),
            );
        }
    } else {
        for n in ["invvpid-bad-type", "invvpid-vpid0", "invvpid-noncanonical"] {
            c.skip(n, format_args!("INVVPID not offered"));
        }
    }

    // VMXOFF leaves VMX operation: the instructions are #UD again.
    let r = guarded(LEN_VMXOFF, vmxoff);
    c.check("vmxoff", r == OK, format_args!("{r:?}"));
    let after = [
        vmptrld_at(s).err(),
        guarded(LEN_VMREAD, || vmread(GUEST_RIP).is_ok()).err(),
        guarded(LEN_VMPTRST, vmx::vmptrst).err(),
        guarded(LEN_VMXOFF, vmxoff).err(),
    ];
    c.check(
        "vmx-insn-after-vmxoff-ud",
        after.iter().all(|v| *v == Some(UD)),
        format_args!("VMPTRLD, VMREAD, VMPTRST, VMXOFF: {after:?}"),
    );
}

/// Launch state (SDM 25.1, 31.3 VMLAUNCH/VMRESUME/VMCLEAR): VMLAUNCH needs
/// a clear VMCS (error 4), VMRESUME a launched one (error 5), VMCLEAR
/// makes it clear again; VMCLEAR of the current VMCS leaves none current.
fn launch_state(c: &mut Checks, hv: &Hv) {
    let mut vm = match hv.vm(pg::VMCS_A, l2!(l2_vmcall)) {
        Ok(vm) => vm,
        Err(m) => {
            for n in [
                "vmlaunch-launched",
                "vmresume-clear",
                "vmclear-relaunch",
                "vmclear-current-invalidates",
            ] {
                c.check(
                    n,
                    false,
                    format_args!("setting up the VMCS: {}", m.as_str()),
                );
            }
            return;
        }
    };
    let first = vm.enter();
    vm.launched = false;
    let again = vm.enter();
    c.check(
        "vmlaunch-launched",
        first.is(reason::VMCALL)
            && matches!(again, Entry::Fail(VmFail::Valid(err::VMLAUNCH_NONCLEAR))),
        format_args!("first {first}, second VMLAUNCH {again}"),
    );

    let _ = vmclear_at(vm.vmcs);
    let _ = vm.load();
    vm.launched = true;
    let e = vm.enter();
    c.check(
        "vmresume-clear",
        matches!(e, Entry::Fail(VmFail::Valid(err::VMRESUME_NONLAUNCHED))),
        format_args!("{e}"),
    );

    // The VMCS keeps its contents across VMCLEAR/VMPTRLD: VMLAUNCH works.
    let _ = vmclear_at(vm.vmcs);
    let _ = vm.load();
    vm.launched = false;
    let e = vm.enter();
    let resumed = if e.is(reason::VMCALL) {
        Some(vm.enter())
    } else {
        None
    };
    c.check(
        "vmclear-relaunch",
        e.is(reason::VMCALL) && resumed.is_some_and(|r| r.is(reason::VMCALL)),
        format_args!(
            "VMLAUNCH {e}, then VMRESUME {}",
            resumed
                .map_or(crate::msg!("-"), |r| crate::msg!("{r}"))
                .as_str()
        ),
    );

    let r = vmclear_at(vm.vmcs);
    let p = vmx::vmptrst();
    let read = vmread(GUEST_RIP);
    c.check(
        "vmclear-current-invalidates",
        r == OK && p == u64::MAX && read == Err(VmFail::Invalid),
        format_args!("VMCLEAR {r:?}, VMPTRST {p:#x}, VMREAD {read:?}"),
    );
}
