//! `nested-ept`: EPT12 as L1 builds it (SDM Vol. 3C 29.3): 4 KiB and 2 MiB
//! leaves onto L1 pages of L1's choosing, EPT violations with their exit
//! qualification and addresses (28.2.1), permission changes
//! after INVEPT, misconfigurations (29.3.3.1), accessed/dirty flags
//! (29.3.5); VPID with each INVVPID type (29.4); two L2s with their own
//! EPT12 and registers, alternating; an L2 touching more memory than L0
//! keeps EPT02 tables for.

use crate::check::Checks;
use crate::hv::ept::{self, violation_qual, Ept, Size, R, RWX, W, X};
use crate::hv::fields::*;
use crate::hv::l2::{self as layout, backing, Mode, BIG, TEST, UNMAPPED, WINDOW};
use crate::hv::mem::{self, pg, PAGE};
use crate::hv::vm::{Exit, Vm};
use crate::hv::vmx::{self, rd, vmwrite};
use crate::hv::{l0_alive, no_exit, start, Hv};
use crate::{l2, msg};

const CHECKS: &[&str] = &[
    "vmxon",
    "ept-4k-read-write",
    "ept-2m-read-write",
    "ept-violation-read",
    "ept-violation-write",
    "ept-violation-fetch",
    "ept-violation-resolved",
    "ept-readonly-after-invept",
    "ept-exec-disabled",
    "ept-execute-only",
    "ept-misconfig",
    "ept-ad-bits",
    "ept-paging-structure-violation",
    "ept-pml-log",
    "ept-pml-full",
    "vpid-invvpid-individual-address",
    "vpid-invvpid-single-context",
    "vpid-invvpid-all-context",
    "vpid-invvpid-single-context-retaining-globals",
    "two-vms-alternate",
    "ept02-beyond-cap",
];

const T: [u64; 8] = [
    TEST,
    TEST + PAGE,
    TEST + 2 * PAGE,
    TEST + 3 * PAGE,
    TEST + 4 * PAGE,
    TEST + 5 * PAGE,
    TEST + 6 * PAGE,
    TEST + 7 * PAGE,
];

pub fn run() {
    static NAME: &str = "nested-ept";
    crate::set_current_test(&NAME);
    let mut c = Checks::new(NAME);
    if let Some(mut hv) = start(&mut c, CHECKS) {
        if hv.mode.ept() {
            mappings(&mut c, &mut hv);
            violations(&mut c, &mut hv);
            permissions(&mut c, &mut hv);
            ad_bits(&mut c, &mut hv);
            paging_structure(&mut c, &mut hv);
            pml(&mut c, &mut hv);
        } else {
            for n in &CHECKS[1..15] {
                c.skip(n, format_args!("EPT not offered"));
            }
        }
        vpid(&mut c, &hv);
        two_vms(&mut c, &mut hv);
        beyond_cap(&mut c, &mut hv);
    }
    l0_alive(&mut c);
    c.finish();
}

/// A fresh VMCS A at `rip` using a new EPT12 with `overrides`.
fn ept_vm(
    c: &mut Checks,
    hv: &mut Hv,
    name: &str,
    rip: u64,
    overrides: &[(u64, u64)],
) -> Option<(Vm, Ept)> {
    let e = hv.new_ept(overrides);
    let vm = hv.fresh(c, name, rip)?;
    let _ = vmwrite(EPT_POINTER, e.eptp(false));
    Some((vm, e))
}

/// The linear address at which L2 reaches L2-physical `gpa`: the same when
/// L2 does not page; through window page 2 when it does.
fn linear_for(hv: &Hv, gpa: u64) -> u64 {
    if hv.mode == Mode::Unpaged {
        gpa
    } else {
        layout::set_window(hv.mode, 2, Some(gpa & !(PAGE - 1)));
        WINDOW + 2 * PAGE + (gpa & (PAGE - 1))
    }
}

fn mappings(c: &mut Checks, hv: &mut Hv) {
    // L2-physical T1 onto the L1 page behind T5: L2 reads what L1 planted
    // there and its write lands there, not in T1's usual page.
    let planted = 0x5eed_0000 | 0x71;
    mem::wr32(backing(T[5]) + 8, planted);
    mem::wr32(backing(T[5]) + 12, 0);
    mem::wr32(backing(T[1]) + 12, 0);
    if let Some((mut vm, _e)) = ept_vm(
        c,
        hv,
        "ept-4k-read-write",
        l2!(l2_read),
        &[(T[1], backing(T[5]))],
    ) {
        vm.regs.rsi = T[1] + 8;
        let (r_ok, rm) = no_exit(&mut vm, l2!(l2_read) + 2);
        let read = vm.regs.rax as u32;
        vm.regs.rsi = T[1] + 12;
        vm.regs.rdi = 0xabcd_0004;
        let (w_ok, wm) = no_exit(vm.at(l2!(l2_write)), l2!(l2_write) + 2);
        let (landed, elsewhere) = (mem::rd32(backing(T[5]) + 12), mem::rd32(backing(T[1]) + 12));
        c.check(
            "ept-4k-read-write",
            r_ok && w_ok && read == planted && landed == 0xabcd_0004 && elsewhere == 0,
            format_args!("{} / {}; L2 read {read:#x}, its write is in T5's page {landed:#x}, T1's page {elsewhere:#x}", rm.as_str(), wm.as_str()),
        );
    }
    // The 2 MiB leaf: both ends of the page.
    if !hv.caps.ept_2m() {
        c.skip(
            "ept-2m-read-write",
            format_args!("2 MiB EPT pages not offered"),
        );
        return;
    }
    let (lo, hi) = (BIG + 0x10, BIG + mem::BIG - 0x10);
    mem::wr32(backing(lo), 0x2000_0010);
    mem::wr32(backing(hi), 0x2000_fff0);
    if let Some((mut vm, e)) = ept_vm(c, hv, "ept-2m-read-write", l2!(l2_read), &[]) {
        let leaf = e.leaf(&hv.tables, BIG).map(mem::rd64).unwrap_or(0);
        let mut reads = [0u32; 2];
        let mut ok = leaf & ept::LARGE != 0;
        for (i, a) in [lo, hi].into_iter().enumerate() {
            vm.regs.rsi = a;
            let (r, _) = no_exit(vm.at(l2!(l2_read)), l2!(l2_read) + 2);
            reads[i] = vm.regs.rax as u32;
            ok &= r;
        }
        vm.regs.rsi = hi + 4;
        vm.regs.rdi = 0x2222_0004;
        let (w, _) = no_exit(vm.at(l2!(l2_write)), l2!(l2_write) + 2);
        let landed = mem::rd32(backing(hi + 4));
        c.check(
            "ept-2m-read-write",
            ok && w && reads == [0x2000_0010, 0x2000_fff0] && landed == 0x2222_0004,
            format_args!(
                "leaf {leaf:#x}; L2 read {:#x} and {:#x}, its write landed as {landed:#x}",
                reads[0], reads[1]
            ),
        );
    }
}

/// Exit 48 with `qual`, guest-physical `gpa`, guest-linear `gla`.
fn is_violation(x: &Exit, qual: u64, gpa: u64, gla: u64) -> bool {
    x.is(reason::EPT_VIOLATION)
        && x.qual & 0x1fff == qual
        && rd(GUEST_PHYSICAL_ADDRESS) == gpa
        && rd(GUEST_LINEAR_ADDRESS) == gla
}

fn violation_detail(x: &Exit) -> crate::hv::Msg {
    msg!(
        "{x}, guest-physical {:#x}, guest-linear {:#x}",
        rd(GUEST_PHYSICAL_ADDRESS),
        rd(GUEST_LINEAR_ADDRESS)
    )
}

/// L2 touches an L2-physical page EPT12 does not map (29.3.3.2): exit 48,
/// qualification = the access (read 0, write 1, fetch 2), what the entry
/// allowed (none), linear address valid (7) and the access was to the
/// translated address (8); guest-physical and guest-linear addresses.
fn violations(c: &mut Checks, hv: &mut Hv) {
    let gpa = UNMAPPED + 0x24;
    for (name, rip, access) in [
        ("ept-violation-read", l2!(l2_read), R),
        ("ept-violation-write", l2!(l2_write), W),
    ] {
        let Some((mut vm, _e)) = ept_vm(c, hv, name, rip, &[]) else {
            continue;
        };
        let gla = linear_for(hv, gpa);
        vm.regs.rsi = gla;
        let e = vm.enter();
        let x = e.exit().copied().unwrap_or_default();
        let want = violation_qual(access, 0, true, true);
        let ok = is_violation(&x, want, gpa, gla) && x.rip == rip;
        let d = violation_detail(&x);
        let after = vm.enter_at(rip + 2);
        c.check(
            name,
            ok && after.is(reason::VMCALL),
            format_args!(
                "{} (want qualification {want:#x}, {gpa:#x}); then {after}",
                d.as_str()
            ),
        );
    }
    if let Some((mut vm, _e)) = ept_vm(c, hv, "ept-violation-fetch", l2!(l2_jmp), &[]) {
        let gla = linear_for(hv, UNMAPPED);
        vm.regs.rsi = gla;
        let e = vm.enter();
        let x = e.exit().copied().unwrap_or_default();
        let want = violation_qual(X, 0, true, true);
        let ok = is_violation(&x, want, UNMAPPED, gla) && x.rip == gla;
        let d = violation_detail(&x);
        let after = vm.enter_at(l2!(l2_vmcall));
        c.check(
            "ept-violation-fetch",
            ok && after.is(reason::VMCALL),
            format_args!(
                "{} (want qualification {want:#x}, RIP {gla:#x}); then {after}",
                d.as_str()
            ),
        );
    }
    // L1 maps the page (an EPT12 change, then INVEPT) and resumes: the
    // read L2 retries succeeds and sees L1's data.
    if let Some((mut vm, mut e)) = ept_vm(c, hv, "ept-violation-resolved", l2!(l2_read), &[]) {
        let gla = linear_for(hv, gpa);
        vm.regs.rsi = gla;
        mem::wr32(backing(T[6]) + 0x24, 0x600d_0024);
        let first = vm.enter();
        e.map(&mut hv.tables, UNMAPPED, backing(T[6]), Size::K4, RWX);
        let inv = if hv.caps.invept() {
            hv.invept(e.eptp(false))
        } else {
            Ok(())
        };
        let second = vm.enter();
        let read = vm.regs.rax as u32;
        c.check(
            "ept-violation-resolved",
            first.is(reason::EPT_VIOLATION)
                && inv.is_ok()
                && second.is(reason::VMCALL)
                && read == 0x600d_0024,
            format_args!("{first}; INVEPT {inv:?}; {second}, L2 read {read:#x}"),
        );
    }
}

/// Permission changes (29.3.3.2, 29.4.3.1): after L1 makes a page
/// read-only and executes INVEPT, L2's write exits with write access and
/// "readable" in the qualification; a page without X faults on fetch; an
/// execute-only page on read (when offered); write-only is a
/// misconfiguration (29.3.3.1), exit 49.
fn permissions(c: &mut Checks, hv: &mut Hv) {
    let gpa = T[2] + 0x40;
    if !hv.caps.invept() {
        c.skip(
            "ept-readonly-after-invept",
            format_args!("INVEPT not offered"),
        );
    } else if let Some((mut vm, e)) = ept_vm(c, hv, "ept-readonly-after-invept", l2!(l2_write), &[])
    {
        let gla = linear_for(hv, gpa);
        vm.regs.rsi = gla;
        vm.regs.rdi = 1;
        // First write: allowed, and the translation is now cached.
        let first = vm.enter();
        e.set_perms(&mut hv.tables, T[2], R | X);
        let inv = hv.invept(e.eptp(false));
        vm.regs.rdi = 2;
        let second = vm.enter_at(l2!(l2_write));
        let x = second.exit().copied().unwrap_or_default();
        let want = violation_qual(W, R | X, true, true);
        let exited = is_violation(&x, want, gpa, gla);
        let d = violation_detail(&x);
        let before_fix = mem::rd32(backing(gpa));
        e.set_perms(&mut hv.tables, T[2], RWX);
        let _ = hv.invept(e.eptp(false));
        let third = vm.enter();
        let after_fix = mem::rd32(backing(gpa));
        c.check(
            "ept-readonly-after-invept",
            first.is(reason::VMCALL) && inv.is_ok() && exited && before_fix == 1 && third.is(reason::VMCALL) && after_fix == 2,
            format_args!("{first}; INVEPT {inv:?}; {} (want {want:#x}); memory {before_fix} then {after_fix} after RWX", d.as_str()),
        );
    }
    // Fetch from a page without X: a VMCALL placed there never runs.
    if let Some((mut vm, e)) = ept_vm(c, hv, "ept-exec-disabled", l2!(l2_jmp), &[]) {
        mem::copy_in(backing(T[3]), &[0x0f, 0x01, 0xc1]);
        e.set_perms(&mut hv.tables, T[3], R | W);
        let gla = linear_for(hv, T[3]);
        vm.regs.rsi = gla;
        let ex = vm.enter();
        let x = ex.exit().copied().unwrap_or_default();
        let want = violation_qual(X, R | W, true, true);
        let d = violation_detail(&x);
        c.check(
            "ept-exec-disabled",
            is_violation(&x, want, T[3], gla) && x.rip == gla,
            format_args!("{} (want {want:#x})", d.as_str()),
        );
    }
    if !hv.caps.ept_execute_only() {
        c.skip(
            "ept-execute-only",
            format_args!("execute-only EPT entries not offered"),
        );
    } else if let Some((mut vm, e)) = ept_vm(c, hv, "ept-execute-only", l2!(l2_read), &[]) {
        e.set_perms(&mut hv.tables, T[4], X);
        let gla = linear_for(hv, T[4] + 8);
        vm.regs.rsi = gla;
        let ex = vm.enter();
        let x = ex.exit().copied().unwrap_or_default();
        let want = violation_qual(R, X, true, true);
        let d = violation_detail(&x);
        c.check(
            "ept-execute-only",
            is_violation(&x, want, T[4] + 8, gla),
            format_args!("{} (want {want:#x})", d.as_str()),
        );
    }
    if let Some((mut vm, e)) = ept_vm(c, hv, "ept-misconfig", l2!(l2_read), &[]) {
        e.set_perms(&mut hv.tables, T[4], W);
        let gla = linear_for(hv, T[4] + 8);
        vm.regs.rsi = gla;
        let ex = vm.enter();
        let x = ex.exit().copied().unwrap_or_default();
        let gpa_f = rd(GUEST_PHYSICAL_ADDRESS);
        c.check(
            "ept-misconfig",
            x.is(reason::EPT_MISCONFIG) && gpa_f == T[4] + 8,
            format_args!("{ex}, guest-physical {gpa_f:#x}"),
        );
    }
}

/// With EPTP bit 6, the processor sets the accessed flag (bit 8) of the
/// EPT12 entries it uses and the dirty flag (bit 9) of a leaf it writes
/// through (29.3.5). L1 reads them in its own memory.
fn ad_bits(c: &mut Checks, hv: &mut Hv) {
    if !hv.caps.ept_ad() {
        return c.skip(
            "ept-ad-bits",
            format_args!("EPT accessed/dirty flags not offered"),
        );
    }
    let Some((mut vm, e)) = ept_vm(c, hv, "ept-ad-bits", l2!(l2_read), &[]) else {
        return;
    };
    let _ = vmwrite(EPT_POINTER, e.eptp(true));
    let leaf = |hv: &Hv, a: u64| e.leaf(&hv.tables, a).map_or(0, mem::rd64);
    let before = (leaf(hv, T[0]), leaf(hv, T[1]));
    vm.regs.rsi = linear_for(hv, T[0]);
    let r = vm.enter();
    let after_read = leaf(hv, T[0]);
    vm.regs.rsi = linear_for(hv, T[1]);
    vm.regs.rdi = 7;
    let w = vm.enter_at(l2!(l2_write));
    let after_write = leaf(hv, T[1]);
    let flags = |v: u64| v & (ept::ACCESSED | ept::DIRTY);
    let ok = r.is(reason::VMCALL)
        && w.is(reason::VMCALL)
        && flags(before.0) == 0
        && flags(before.1) == 0
        && flags(after_read) == ept::ACCESSED
        && flags(after_write) == ept::ACCESSED | ept::DIRTY;
    c.check(
        "ept-ad-bits",
        ok,
        format_args!(
            "{r} / {w}; read leaf {:#x} -> {after_read:#x}, written leaf {:#x} -> {after_write:#x}",
            before.0, before.1
        ),
    );
}

/// What L1's page-modification log holds: the log page, filled with
/// [`UNUSED`] before L2 runs.
struct Log(u64);

/// A log entry never written.
const UNUSED: u64 = u64::MAX;

impl Log {
    fn index() -> u64 {
        rd(GUEST_PML_INDEX)
    }
    /// Entries `from` down to above the current index, as pages (Bochs
    /// 2.7 logs the address with its page offset; the SDM clears bits
    /// 11:0); None if one of them was never written.
    fn pages_since(&self, from: u64) -> Option<([u64; 16], usize)> {
        let now = Self::index();
        let mut pages = [0; 16];
        let mut n = 0;
        let mut i = from;
        while i != now && n < pages.len() {
            let e = mem::rd64(self.0 + 8 * (i & 0x1ff));
            if e == UNUSED {
                return None;
            }
            pages[n] = e & !(PAGE - 1);
            n += 1;
            i = i.wrapping_sub(1) & 0xffff;
        }
        (i == now).then_some((pages, n))
    }
}

/// Page-modification logging (SDM 29.3.6) with EPT A/D flags: each page
/// whose EPT12 dirty flag L2's write sets from 0 to 1 goes into L1's log
/// at the PML index, which counts down; a read or a second write to a
/// dirty page logs nothing. With the index outside 0..=511 a page to
/// dirty is a page-modification-log-full exit (reason 62) instead, the
/// write not done and the flag not set; L1 empties the log and resumes,
/// and the write happens. (L2's page-table pages are logged too when L2
/// pages: the processor's walks count as writes.)
fn pml(c: &mut Checks, hv: &mut Hv) {
    if !hv.caps.ept_ad() || !hv.caps.pml() {
        c.skip(
            "ept-pml-log",
            format_args!("EPT A/D flags or PML not offered"),
        );
        return c.skip(
            "ept-pml-full",
            format_args!("EPT A/D flags or PML not offered"),
        );
    }
    let Some((mut vm, e)) = ept_vm(c, hv, "ept-pml-log", l2!(l2_read), &[]) else {
        return;
    };
    let log = Log(mem::page(pg::VMCS_X));
    mem::fill(log.0, PAGE, 0xff);
    let _ = vmwrite(EPT_POINTER, e.eptp(true));
    let _ = vmwrite(
        PROC2_CONTROLS,
        rd(PROC2_CONTROLS) | proc2::ENABLE_PML as u64,
    );
    let _ = vmwrite(PML_ADDRESS, log.0);
    let _ = vmwrite(GUEST_PML_INDEX, 511);
    let write = |vm: &mut Vm, hv: &Hv, gpa: u64| {
        vm.regs.rsi = linear_for(hv, gpa + 0x18);
        vm.regs.rdi = 0x5eed;
        vm.enter_at(l2!(l2_write))
    };
    let leaf = |hv: &Hv, a: u64| e.leaf(&hv.tables, a).map_or(0, mem::rd64);
    // Two pages written, one read, one written twice.
    let w1 = write(&mut vm, hv, T[2]);
    let w2 = write(&mut vm, hv, T[3]);
    vm.regs.rsi = linear_for(hv, T[4]);
    let r = vm.enter_at(l2!(l2_read));
    let w3 = write(&mut vm, hv, T[2]);
    let logged = log.pages_since(511);
    let has = |p: u64| logged.is_some_and(|(l, n)| l[..n].contains(&p));
    let once =
        |p: u64| logged.is_some_and(|(l, n)| l[..n].iter().filter(|&&x| x == p).count() == 1);
    let ok = [&w1, &w2, &r, &w3].iter().all(|x| x.is(reason::VMCALL))
        && once(T[2])
        && once(T[3])
        && !has(T[4])
        && leaf(hv, T[4]) & ept::DIRTY == 0;
    let (pages, n) = logged.unwrap_or(([0; 16], 0));
    c.check(
        "ept-pml-log",
        ok,
        format_args!(
            "{w1} / {w2} / {r} / {w3}; index 511 -> {:#x}, pages {:x?}",
            Log::index(),
            &pages[..n]
        ),
    );
    // The last entry: index 0, then 0xffff; the next page to dirty is a
    // log-full exit.
    let _ = vmwrite(GUEST_PML_INDEX, 0);
    mem::wr32(backing(T[6]) + 0x18, 0);
    let w0 = write(&mut vm, hv, T[5]);
    let at0 = mem::rd64(log.0) & !(PAGE - 1);
    let after0 = Log::index();
    let full = write(&mut vm, hv, T[6]);
    let flags = leaf(hv, T[6]) & (ept::ACCESSED | ept::DIRTY);
    let written = mem::rd32(backing(T[6]) + 0x18);
    // L1 empties its log and resumes L2 at the write.
    mem::fill(log.0, PAGE, 0xff);
    let _ = vmwrite(GUEST_PML_INDEX, 511);
    let resumed = vm.enter();
    let ok = w0.is(reason::VMCALL)
        && at0 == T[5]
        && after0 == 0xffff
        && full.is(reason::PML_FULL)
        && flags & ept::DIRTY == 0
        && written != 0x5eed
        && resumed.is(reason::VMCALL)
        && mem::rd32(backing(T[6]) + 0x18) == 0x5eed
        && log
            .pages_since(511)
            .is_some_and(|(l, n)| l[..n].contains(&T[6]));
    c.check(
        "ept-pml-full",
        ok,
        format_args!(
            "{w0}, logged {at0:#x} at 0, index {after0:#x}; {full}, leaf flags {flags:#x}; resumed: {resumed}, index {:#x}",
            Log::index()
        ),
    );
}

/// L2 pages, and EPT12 does not map the page table its walk needs: the
/// violation is on the paging-structure access, so the qualification has
/// "linear address valid" (7) but not "translated access" (8), and the
/// guest-physical address is the PTE's (28.2.1).
fn paging_structure(c: &mut Checks, hv: &mut Hv) {
    let Some((mut vm, e)) = ept_vm(c, hv, "ept-paging-structure-violation", l2!(l2_read), &[])
    else {
        return;
    };
    hv.page_l2();
    layout::set_window(hv.mode, 0, Some(T[0]));
    e.unmap(&mut hv.tables, layout::PT_WIN);
    vm.regs.rsi = WINDOW + 0x20;
    let ex = vm.enter();
    let x = ex.exit().copied().unwrap_or_default();
    let want = violation_qual(R, 0, true, false);
    let d = violation_detail(&x);
    c.check(
        "ept-paging-structure-violation",
        is_violation(&x, want, layout::PT_WIN, WINDOW + 0x20),
        format_args!(
            "{} (want {want:#x} at the PTE {:#x})",
            d.as_str(),
            layout::PT_WIN
        ),
    );
}

/// VPID (29.1): L2 pages with VPID 1 and reads a window page (the
/// translation may now be cached under VPID 1). L1 points the PTE at
/// another page and executes INVVPID of the type under test; L2's next
/// read must see the new page (29.4.3.3). Each type the caps advertise.
fn vpid(c: &mut Checks, hv: &Hv) {
    const TYPES: [(&str, u64); 4] = [
        ("vpid-invvpid-individual-address", 0),
        ("vpid-invvpid-single-context", 1),
        ("vpid-invvpid-all-context", 2),
        ("vpid-invvpid-single-context-retaining-globals", 3),
    ];
    for (name, t) in TYPES {
        if !hv.caps.vpid() {
            c.skip(name, format_args!("VPID not offered"));
            continue;
        }
        if !hv.caps.invvpid_type(t) {
            c.skip(name, format_args!("INVVPID type {t} not offered"));
            continue;
        }
        let Some(mut vm) = hv.fresh(c, name, l2!(l2_read2)) else {
            continue;
        };
        hv.page_l2();
        hv.ctl(PROC2_CONTROLS, proc2::VPID, 0);
        let _ = vmwrite(VPID, 1);
        mem::wr32(backing(T[0]), 0xaaaa_0000 | t as u32);
        mem::wr32(backing(T[1]), 0xbbbb_0000 | t as u32);
        layout::set_window(hv.mode, 0, Some(T[0]));
        vm.regs.rsi = WINDOW;
        let first = vm.enter();
        let old = vm.regs.rax as u32;
        layout::set_window(hv.mode, 0, Some(T[1]));
        let inv = vmx::invvpid(t, 1, WINDOW);
        let second = first.exit().map(|x| vm.skip_and_enter(x));
        let new = vm.regs.rbx as u32;
        layout::set_window(hv.mode, 0, Some(T[0]));
        c.check(
            name,
            first.is(reason::VMCALL)
                && second.is_some_and(|s| s.is(reason::VMCALL))
                && inv.is_ok()
                && old == 0xaaaa_0000 | t as u32
                && new == 0xbbbb_0000 | t as u32,
            format_args!("{first}: L2 read {old:#x}; INVVPID {inv:?}; then L2 read {new:#x}"),
        );
    }
}

/// Two L2s, each with its own VMCS, EPT12 (the same L2-physical page onto
/// different L1 pages) and VPID when offered, entered alternately with
/// VMPTRLD + VMRESUME: each counts in its own memory and registers only.
fn two_vms(c: &mut Checks, hv: &mut Hv) {
    let marker = [0x0a00_0000u32, 0x0b00_0000];
    let pages = [backing(T[0]), backing(T[7])];
    let mut vms: [Option<Vm>; 2] = [None, None];
    for i in 0..2 {
        mem::wr32(pages[i], marker[i]);
        let page = if i == 0 { pg::VMCS_A } else { pg::VMCS_B };
        let vm = match hv.vm(page, l2!(l2_counter)) {
            Ok(vm) => vm,
            Err(m) => {
                return c.check(
                    "two-vms-alternate",
                    false,
                    format_args!("setting up VMCS {i}: {}", m.as_str()),
                )
            }
        };
        if hv.mode.ept() {
            let e = hv.new_ept(&[(T[0], pages[i])]);
            let _ = vmwrite(EPT_POINTER, e.eptp(false));
        } else {
            // Without EPT, L2's own page tables choose the page: both L2s
            // share them, so this check needs EPT12.
            return c.skip("two-vms-alternate", format_args!("EPT not offered"));
        }
        if hv.caps.vpid() {
            hv.ctl(PROC2_CONTROLS, proc2::VPID, 0);
            let _ = vmwrite(VPID, 1 + i as u64);
        }
        vms[i] = Some(vm);
    }
    let [Some(mut a), Some(mut b)] = vms else {
        return;
    };
    let mut bad = crate::hv::Msg::new();
    const ROUNDS: u32 = 4;
    for round in 1..=ROUNDS {
        for (i, vm) in [&mut a, &mut b].into_iter().enumerate() {
            if let Err(e) = vm.load() {
                let _ = core::fmt::Write::write_fmt(&mut bad, format_args!("VMPTRLD {i}: {e:?} "));
                continue;
            }
            if vm.launched {
                let _ = vmwrite(GUEST_RIP, rd(GUEST_RIP) + 3);
            }
            let e = vm.enter();
            let (eax, ebx, memv) = (vm.regs.rax as u32, vm.regs.rbx as u32, mem::rd32(pages[i]));
            if !e.is(reason::VMCALL)
                || ebx != round
                || eax != marker[i] + round
                || memv != marker[i] + round
            {
                let _ = core::fmt::Write::write_fmt(
                    &mut bad,
                    format_args!(
                        "round {round} VM {i}: {e}, EAX {eax:#x} EBX {ebx} memory {memv:#x}; "
                    ),
                );
            }
        }
    }
    c.check(
        "two-vms-alternate",
        bad.as_str().is_empty(),
        format_args!(
            "{ROUNDS} rounds each, final memory {:#x} / {:#x}; {}",
            mem::rd32(pages[0]),
            mem::rd32(pages[1]),
            bad.as_str()
        ),
    );
}

/// L2 touches one page in each 2 MiB of L2-physical 1 GiB to 4 GiB: 1536
/// pages, each needing an EPT02 table of its own in L0 (4 KiB leaves),
/// more than L0 keeps per CPU at the default `l0_mem=32M` (1024), so L0
/// reclaims while L2 runs. EPT12 maps them all onto L1's big page; L2
/// writes each page's number at its own offset there and reads them all
/// back, across the reclaims.
fn beyond_cap(c: &mut Checks, hv: &mut Hv) {
    const FIRST: u64 = 1 << 30;
    const STRIDE: u64 = 2 << 20;
    const COUNT: u64 = 1536;
    const NAME: &str = "ept02-beyond-cap";
    if hv.mode != Mode::Unpaged || !hv.caps.ept_2m() {
        c.skip(NAME, format_args!("needs L2 unpaged and 2 MiB EPT pages"));
        return;
    }
    for i in 0..COUNT {
        mem::wr32(mem::big() + 4 * i, 0xffff_ffff);
    }
    let Some((mut vm, mut e)) = ept_vm(c, hv, NAME, l2!(l2_touch_strided), &[]) else {
        return;
    };
    for i in 0..COUNT {
        e.map(
            &mut hv.tables,
            FIRST + i * STRIDE,
            mem::big(),
            Size::M2,
            RWX,
        );
    }
    vm.regs.rsi = FIRST;
    vm.regs.rdx = STRIDE;
    vm.regs.rcx = COUNT;
    vm.regs.rbx = u64::MAX;
    let (ok, m) = no_exit(&mut vm, l2!(l2_touch_done));
    let wrong_in_l2 = vm.regs.rbx;
    let wrong_in_l1 = (0..COUNT)
        .filter(|&i| mem::rd32(mem::big() + 4 * i) != i as u32)
        .count();
    c.check(
        NAME,
        ok && wrong_in_l2 == 0 && wrong_in_l1 == 0,
        format_args!(
            "{}; {COUNT} pages 2 MiB apart: {wrong_in_l2} read back wrong in L2, {wrong_in_l1} wrong in L1's page",
            m.as_str()
        ),
    );
}
