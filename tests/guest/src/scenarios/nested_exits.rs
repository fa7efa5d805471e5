//! `nested-exits`: the exits L1 asks for and only those. Port I/O (I/O
//! bitmaps and unconditional I/O exiting), RDMSR/WRMSR (MSR bitmaps), CR
//! accesses (guest/host masks and read shadows, CR3 exiting and targets),
//! exceptions (exception bitmap, #PF error-code mask/match), event
//! injection into L2, and external interrupts while L2 runs.
//! SDM Vol. 3C 25.6, 26.1-26.2, 27.6, 28.2.

use crate::check::Checks;
use crate::faults::{TIMER_TAKEN, TIMER_VECTOR};
use crate::hv::fields::*;
use crate::hv::l2::{
    self as layout, clear_mailbox, mailbox, MB_COUNT, MB_CR2, MB_EIP, MB_ERROR, MB_VECTOR,
};
use crate::hv::mem::{self, pg};
use crate::hv::vm::Vm;
use crate::hv::vmx::{rd, vmwrite};
use crate::hv::{apic, cpu, exit_then_vmcall, l0_alive, no_exit, start, Hv};
use crate::{l2, msg};

const CHECKS: &[&str] = &[
    "vmxon",
    "io-bitmap-hit-in-imm",
    "io-bitmap-hit-out-dx",
    "io-bitmap-hit-string-rep",
    "io-bitmap-straddle",
    "io-bitmap-wrap",
    "io-bitmap-miss",
    "io-unconditional",
    "io-bitmaps-override-unconditional",
    "msr-bitmap-read-hit",
    "msr-bitmap-write-hit-high",
    "msr-bitmap-read-miss-high",
    "msr-bitmap-miss",
    "msr-outside-ranges-exit",
    "msr-no-bitmaps-exit",
    "cr0-shadow-read",
    "cr0-write-matching-shadow-no-exit",
    "cr0-write-against-shadow-exits",
    "cr0-unmasked-bit-no-exit",
    "clts-exit",
    "cr4-shadow-read",
    "cr4-write-matching-no-exit",
    "cr4-write-exits",
    "cr3-load-exiting",
    "cr3-load-no-exit",
    "cr3-store-exiting",
    "cr3-target-no-exit",
    "exc-bitmap-ud",
    "exc-not-in-bitmap-delivered",
    "pf-exit-all",
    "pf-mask-match-set",
    "pf-mask-match-clear",
    "pf-reflect-cr2",
    "inject-gp-error-code",
    "inject-external",
    "inject-soft-int-length",
    "extint-exit-ack",
    "extint-exit-noack",
    "extint-exit-l2-if0",
];

pub fn run() {
    static NAME: &str = "nested-exits";
    crate::set_current_test(&NAME);
    let mut c = Checks::new(NAME);
    if let Some(hv) = start(&mut c, CHECKS) {
        io(&mut c, &hv);
        msr(&mut c, &hv);
        cr(&mut c, &hv);
        exceptions(&mut c, &hv);
        injection(&mut c, &hv);
        external_interrupts(&mut c, &hv);
    }
    l0_alive(&mut c);
    c.finish();
}

// ---------------------------------------------------------------- I/O

/// Exit qualification for I/O instructions (SDM 28.2.1).
fn io_qual(port: u16, size: u64, input: bool, string: bool, rep: bool, imm: bool) -> u64 {
    (size - 1)
        | (input as u64) << 3
        | (string as u64) << 4
        | (rep as u64) << 5
        | (imm as u64) << 6
        | (port as u64) << 16
}

/// Uses I/O bitmaps A and B with exactly `ports` set (SDM 25.6.4).
fn io_bitmaps(hv: &Hv, ports: &[u16]) -> bool {
    let (a, b) = (mem::page(pg::IO_A), mem::page(pg::IO_B));
    mem::zero_page(a);
    mem::zero_page(b);
    for &p in ports {
        let page = if p < 0x8000 { a } else { b };
        let bit = p as u64 & 0x7fff;
        let byte = page + bit / 8;
        mem::wr8(byte, mem::rd8(byte) | 1 << (bit % 8));
    }
    let _ = vmwrite(IO_BITMAP_A, a);
    let _ = vmwrite(IO_BITMAP_B, b);
    hv.ctl(PROC_CONTROLS, proc::USE_IO_BITMAPS, proc::UNCOND_IO_EXITING)
}

fn io(c: &mut Checks, hv: &Hv) {
    if !hv.caps.proc.can_set(proc::USE_IO_BITMAPS) {
        for n in [
            "io-bitmap-hit-in-imm",
            "io-bitmap-hit-out-dx",
            "io-bitmap-hit-string-rep",
            "io-bitmap-straddle",
            "io-bitmap-wrap",
            "io-bitmap-miss",
            "io-bitmaps-override-unconditional",
        ] {
            c.skip(n, format_args!("I/O bitmaps not offered"));
        }
    } else {
        io_bitmap_checks(c, hv);
    }

    // Unconditional I/O exiting without bitmaps: every port exits (26.1.3).
    if let Some(mut vm) = hv.fresh(c, "io-unconditional", l2!(l2_in_dx)) {
        if hv.ctl(PROC_CONTROLS, proc::UNCOND_IO_EXITING, proc::USE_IO_BITMAPS) {
            vm.regs.rdx = 0x80;
            let (ok, m, _) = exit_then_vmcall(
                &mut vm,
                reason::IO,
                io_qual(0x80, 4, true, false, false, false),
                l2!(l2_in_dx),
                1,
            );
            c.check("io-unconditional", ok, format_args!("{}", m.as_str()));
        } else {
            c.skip(
                "io-unconditional",
                format_args!("unconditional I/O exiting cannot be set alone"),
            );
        }
    }
}

fn io_bitmap_checks(c: &mut Checks, hv: &Hv) {
    // Bitmap A: `in al, 0xe0` exits; immediate operand, input, 1 byte.
    if let Some(mut vm) = hv.fresh(c, "io-bitmap-hit-in-imm", l2!(l2_in_imm)) {
        io_bitmaps(hv, &[0xe0]);
        let (ok, m, _) = exit_then_vmcall(
            &mut vm,
            reason::IO,
            io_qual(0xe0, 1, true, false, false, true),
            l2!(l2_in_imm),
            2,
        );
        c.check("io-bitmap-hit-in-imm", ok, format_args!("{}", m.as_str()));
    }
    // Bitmap B: `out dx, ax` to 0x9000; DX operand, output, 2 bytes.
    if let Some(mut vm) = hv.fresh(c, "io-bitmap-hit-out-dx", l2!(l2_out_dx)) {
        io_bitmaps(hv, &[0x9000]);
        vm.regs.rdx = 0x9000;
        vm.regs.rax = 0x1234;
        let (ok, m, _) = exit_then_vmcall(
            &mut vm,
            reason::IO,
            io_qual(0x9000, 2, false, false, false, false),
            l2!(l2_out_dx),
            2,
        );
        c.check("io-bitmap-hit-out-dx", ok, format_args!("{}", m.as_str()));
    }
    // `rep outsb`: string and REP bits, the guest-linear address of the
    // source (28.2.1), and with IA32_VMX_BASIC[54] the instruction
    // information: 32-bit address size (bits 9:7 = 1), segment DS (17:15 = 3).
    if let Some(mut vm) = hv.fresh(c, "io-bitmap-hit-string-rep", l2!(l2_rep_outsb)) {
        io_bitmaps(hv, &[0x9001]);
        vm.regs.rdx = 0x9001;
        vm.regs.rsi = layout::TEST + 0x10;
        vm.regs.rcx = 3;
        let e = vm.enter();
        let x = e.exit().copied().unwrap_or_default();
        let gla = rd(GUEST_LINEAR_ADDRESS);
        let info = rd(EXIT_INSTR_INFO) as u32;
        let info_ok = !hv.caps.ins_outs_info() || info & (7 << 7 | 7 << 15) == (1 << 7 | 3 << 15);
        let ok = x.is(reason::IO)
            && x.qual == io_qual(0x9001, 1, false, true, true, false)
            && x.len == 2
            && gla == layout::TEST + 0x10
            && info_ok
            && vm.regs.rcx == 3;
        c.check(
            "io-bitmap-hit-string-rep",
            ok,
            format_args!(
                "{e}, linear address {gla:#x}, instruction info {info:#x}, ECX {}",
                vm.regs.rcx
            ),
        );
    }
    // An access exits if the bit of any port it touches is set: a 4-byte
    // IN at 0x7ffe covers 0x7ffe-0x8001, only 0x8000 (bitmap B) is set.
    if let Some(mut vm) = hv.fresh(c, "io-bitmap-straddle", l2!(l2_in_dx)) {
        io_bitmaps(hv, &[0x8000]);
        vm.regs.rdx = 0x7ffe;
        let (ok, m, _) = exit_then_vmcall(
            &mut vm,
            reason::IO,
            io_qual(0x7ffe, 4, true, false, false, false),
            l2!(l2_in_dx),
            1,
        );
        c.check("io-bitmap-straddle", ok, format_args!("{}", m.as_str()));
    }
    // An access that wraps around the port space (0xffff and 0x0000)
    // exits whatever the bitmaps say (26.1.3).
    if let Some(mut vm) = hv.fresh(c, "io-bitmap-wrap", l2!(l2_out_dx)) {
        io_bitmaps(hv, &[]);
        vm.regs.rdx = 0xffff;
        let (ok, m, _) = exit_then_vmcall(
            &mut vm,
            reason::IO,
            io_qual(0xffff, 2, false, false, false, false),
            l2!(l2_out_dx),
            2,
        );
        c.check("io-bitmap-wrap", ok, format_args!("{}", m.as_str()));
    }
    // A clear bit lets L2 reach L1's port: a DMA page register (channel 3,
    // unused) keeps what L2 wrote, L2 reads it back, and so does L1
    // afterwards. Not a COM port: under L0 those are always the user VM's
    // shadow UARTs, never L1's.
    const SCRATCH: u16 = 0x82;
    for (name, uncond) in [
        ("io-bitmap-miss", false),
        ("io-bitmaps-override-unconditional", true),
    ] {
        let Some(mut vm) = hv.fresh(c, name, l2!(l2_out_in_dx)) else {
            continue;
        };
        io_bitmaps(hv, &[0xe0, 0x9000]);
        if uncond
            && !hv.ctl(
                PROC_CONTROLS,
                proc::UNCOND_IO_EXITING | proc::USE_IO_BITMAPS,
                0,
            )
        {
            c.skip(
                name,
                format_args!("unconditional I/O exiting cannot be set with bitmaps"),
            );
            continue;
        }
        let value = if uncond { 0xa5 } else { 0x5a };
        // SAFETY: the page register of an unused DMA channel.
        unsafe { crate::io::outb(SCRATCH, 0) };
        vm.regs.rdx = SCRATCH as u64;
        vm.regs.rax = value;
        let (ok, m) = no_exit(&mut vm, l2!(l2_out_in_dx) + 4);
        // SAFETY: as above.
        let l1_sees = unsafe { crate::io::inb(SCRATCH) };
        let l2_read = vm.regs.rax as u8;
        c.check(
            name,
            ok && l2_read == value as u8 && l1_sees == value as u8,
            format_args!(
                "{}; L2 read back {l2_read:#x}, L1 reads {l1_sees:#x}",
                m.as_str()
            ),
        );
    }
}

// ---------------------------------------------------------------- MSRs

/// Sets the MSR-bitmap bit for reads or writes of `msr` (SDM 25.6.9):
/// read-low at 0, read-high at 1 KiB, write-low at 2 KiB, write-high at 3 KiB.
fn msr_bit(write: bool, msr: u32) {
    let base = mem::page(pg::MSR_BITMAP)
        + if write { 2048 } else { 0 }
        + if msr >= 0xc000_0000 { 1024 } else { 0 };
    let bit = (msr & 0x1fff) as u64;
    let byte = base + bit / 8;
    mem::wr8(byte, mem::rd8(byte) | 1 << (bit % 8));
}

fn msr_bitmaps(hv: &Hv) -> bool {
    mem::zero_page(mem::page(pg::MSR_BITMAP));
    let _ = vmwrite(MSR_BITMAP, mem::page(pg::MSR_BITMAP));
    hv.ctl(PROC_CONTROLS, proc::USE_MSR_BITMAPS, 0)
}

fn msr(c: &mut Checks, hv: &Hv) {
    if !hv.caps.proc.can_set(proc::USE_MSR_BITMAPS) {
        for n in [
            "msr-bitmap-read-hit",
            "msr-bitmap-write-hit-high",
            "msr-bitmap-read-miss-high",
            "msr-bitmap-miss",
            "msr-outside-ranges-exit",
        ] {
            c.skip(n, format_args!("MSR bitmaps not offered"));
        }
    } else {
        msr_bitmap_checks(c, hv);
    }
    // Without MSR bitmaps every RDMSR exits (26.1.3).
    if let Some(mut vm) = hv.fresh(c, "msr-no-bitmaps-exit", l2!(l2_rdmsr)) {
        if hv.ctl(PROC_CONTROLS, 0, proc::USE_MSR_BITMAPS) {
            vm.regs.rcx = cpu::IA32_SYSENTER_ESP as u64;
            let (ok, m, _) = exit_then_vmcall(&mut vm, reason::RDMSR, 0, l2!(l2_rdmsr), 2);
            c.check(
                "msr-no-bitmaps-exit",
                ok && vm.regs.rcx == cpu::IA32_SYSENTER_ESP as u64,
                format_args!("{}", m.as_str()),
            );
        } else {
            c.skip(
                "msr-no-bitmaps-exit",
                format_args!("MSR bitmaps cannot be turned off"),
            );
        }
    }
}

fn msr_bitmap_checks(c: &mut Checks, hv: &Hv) {
    // Read bitmap, low range: RDMSR 0x174 exits (reason 31), ECX names it.
    if let Some(mut vm) = hv.fresh(c, "msr-bitmap-read-hit", l2!(l2_rdmsr)) {
        msr_bitmaps(hv);
        msr_bit(false, cpu::IA32_SYSENTER_CS);
        vm.regs.rcx = cpu::IA32_SYSENTER_CS as u64;
        let (ok, m, _) = exit_then_vmcall(&mut vm, reason::RDMSR, 0, l2!(l2_rdmsr), 2);
        c.check(
            "msr-bitmap-read-hit",
            ok && vm.regs.rcx == 0x174,
            format_args!("{}", m.as_str()),
        );
    }
    // Write bitmap, high range: WRMSR 0xc0000102 exits (reason 32) with
    // ECX and EDX:EAX as L2 set them; the read of the same MSR does not
    // exit (its read bit is clear) and returns the MSR's value.
    // SAFETY: KERNEL_GS_BASE is unused by this guest; restored below.
    let saved = unsafe { cpu::rdmsr(cpu::IA32_KERNEL_GS_BASE) };
    if let Some(mut vm) = hv.fresh(c, "msr-bitmap-write-hit-high", l2!(l2_wrmsr)) {
        msr_bitmaps(hv);
        msr_bit(true, cpu::IA32_KERNEL_GS_BASE);
        // SAFETY: as above.
        unsafe { cpu::wrmsr(cpu::IA32_KERNEL_GS_BASE, 0x0000_1234_5678_9000) };
        vm.regs.rcx = cpu::IA32_KERNEL_GS_BASE as u64;
        vm.regs.rax = 0x1111_2000;
        vm.regs.rdx = 0x3333;
        let (ok, m, _) = exit_then_vmcall(&mut vm, reason::WRMSR, 0, l2!(l2_wrmsr), 2);
        let r = vm.regs;
        // SAFETY: as above.
        let now = unsafe { cpu::rdmsr(cpu::IA32_KERNEL_GS_BASE) };
        c.check(
            "msr-bitmap-write-hit-high",
            ok && r.rcx == 0xc000_0102
                && r.rax == 0x1111_2000
                && r.rdx == 0x3333
                && now == 0x0000_1234_5678_9000,
            format_args!(
                "{}, ECX {:#x} EDX:EAX {:#x}:{:#x}, MSR still {now:#x}",
                m.as_str(),
                r.rcx,
                r.rdx,
                r.rax
            ),
        );
        vm.regs.rcx = cpu::IA32_KERNEL_GS_BASE as u64;
        let (ok, m) = no_exit(vm.at(l2!(l2_rdmsr)), l2!(l2_rdmsr) + 2);
        let read = (vm.regs.rdx as u32 as u64) << 32 | vm.regs.rax as u32 as u64;
        c.check(
            "msr-bitmap-read-miss-high",
            ok && read == 0x0000_1234_5678_9000,
            format_args!("{}, L2 read {read:#x}", m.as_str()),
        );
    }
    // SAFETY: as above.
    unsafe { cpu::wrmsr(cpu::IA32_KERNEL_GS_BASE, saved) };
    // Clear bits, low range: L2's WRMSR of SYSENTER_CS and RDMSR of
    // SYSENTER_ESP act on L2's own values, which the VMCS guest fields
    // load on entry and save on exit (27.3.2.1, 28.3.3).
    if let Some(mut vm) = hv.fresh(c, "msr-bitmap-miss", l2!(l2_wrmsr)) {
        msr_bitmaps(hv);
        let _ = vmwrite(GUEST_SYSENTER_ESP, 0x5555_6000);
        vm.regs.rcx = cpu::IA32_SYSENTER_CS as u64;
        vm.regs.rax = 0x4321;
        vm.regs.rdx = 0;
        let (w_ok, wm) = no_exit(&mut vm, l2!(l2_wrmsr) + 2);
        let saved_cs = rd(GUEST_SYSENTER_CS);
        vm.regs.rcx = cpu::IA32_SYSENTER_ESP as u64;
        let (r_ok, rm) = no_exit(vm.at(l2!(l2_rdmsr)), l2!(l2_rdmsr) + 2);
        let esp = vm.regs.rax as u32;
        c.check(
            "msr-bitmap-miss",
            w_ok && r_ok && saved_cs == 0x4321 && esp == 0x5555_6000,
            format_args!(
                "{} / {}; guest SYSENTER_CS field {saved_cs:#x}, L2 read SYSENTER_ESP {esp:#x}",
                wm.as_str(),
                rm.as_str()
            ),
        );
    }
    // MSRs outside 0-0x1fff and 0xc0000000-0xc0001fff always exit (25.6.9).
    if let Some(mut vm) = hv.fresh(c, "msr-outside-ranges-exit", l2!(l2_rdmsr)) {
        msr_bitmaps(hv);
        vm.regs.rcx = 0x3000;
        let (ok, m, _) = exit_then_vmcall(&mut vm, reason::RDMSR, 0, l2!(l2_rdmsr), 2);
        c.check(
            "msr-outside-ranges-exit",
            ok && vm.regs.rcx == 0x3000,
            format_args!("{}", m.as_str()),
        );
    }
}

// ---------------------------------------------------------------- CRs

/// Exit qualification for control-register accesses (28.2.1).
fn cr_qual(cr: u64, access: u64, gpr: u64) -> u64 {
    cr | access << 4 | gpr << 8
}
const MOV_TO_CR: u64 = 0;
const MOV_FROM_CR: u64 = 1;
const CLTS: u64 = 2;
const EAX: u64 = 0;
const EBX: u64 = 3;
const TS: u64 = 1 << 3;
const WP: u64 = 1 << 16;
const CD_NW: u64 = 3 << 29;
const VMXE: u64 = 1 << 13;

fn cr(c: &mut Checks, hv: &Hv) {
    // CR0: TS owned by L1 (mask), L2 is shown TS = 1 (shadow), really 0.
    let cr0_setup = |hv: &Hv, c: &mut Checks, name: &str, rip: u64| -> Option<(Vm, u64)> {
        let vm = hv.fresh(c, name, rip)?;
        let cr0 = rd(GUEST_CR0) & !TS;
        let _ = vmwrite(GUEST_CR0, cr0);
        let _ = vmwrite(CR0_GUEST_HOST_MASK, TS);
        let _ = vmwrite(CR0_READ_SHADOW, cr0 | TS);
        Some((vm, cr0))
    };
    // MOV from CR0 reads the shadow for masked bits (25.6.6). CD and NW
    // are left out: VM entry does not load them (27.3.2.1), L2 runs with
    // L1's (Bochs's BIOS leaves both set).
    if let Some((mut vm, cr0)) = cr0_setup(hv, c, "cr0-shadow-read", l2!(l2_read_cr0)) {
        let (ok, m) = no_exit(&mut vm, l2!(l2_read_cr0) + 3);
        let seen = vm.regs.rax as u32 as u64;
        c.check(
            "cr0-shadow-read",
            ok && seen & !CD_NW == (cr0 | TS) & !CD_NW,
            format_args!(
                "{}, L2 read {seen:#x} (want {:#x} apart from CD/NW; L1's CR0 {:#x})",
                m.as_str(),
                cr0 | TS,
                cpu::cr0()
            ),
        );
    }
    // MOV to CR0 that agrees with the shadow on masked bits: no exit,
    // masked bits of the real CR0 unchanged (26.1.3).
    if let Some((mut vm, cr0)) = cr0_setup(
        hv,
        c,
        "cr0-write-matching-shadow-no-exit",
        l2!(l2_write_cr0),
    ) {
        vm.regs.rbx = cr0 | TS;
        let (ok, m) = no_exit(&mut vm, l2!(l2_write_cr0) + 3);
        let real = rd(GUEST_CR0);
        c.check(
            "cr0-write-matching-shadow-no-exit",
            ok && real == cr0,
            format_args!("{}, guest CR0 {real:#x}", m.as_str()),
        );
    }
    // ... and one that differs from the shadow exits: CR 0, MOV to CR, EBX.
    if let Some((mut vm, cr0)) =
        cr0_setup(hv, c, "cr0-write-against-shadow-exits", l2!(l2_write_cr0))
    {
        vm.regs.rbx = cr0;
        let (ok, m, _) = exit_then_vmcall(
            &mut vm,
            reason::CR_ACCESS,
            cr_qual(0, MOV_TO_CR, EBX),
            l2!(l2_write_cr0),
            3,
        );
        c.check(
            "cr0-write-against-shadow-exits",
            ok,
            format_args!("{}", m.as_str()),
        );
    }
    // A bit outside the mask (WP) changes without an exit.
    if let Some((mut vm, cr0)) = cr0_setup(hv, c, "cr0-unmasked-bit-no-exit", l2!(l2_write_cr0)) {
        vm.regs.rbx = cr0 | TS | WP;
        let (ok, m) = no_exit(&mut vm, l2!(l2_write_cr0) + 3);
        let real = rd(GUEST_CR0);
        c.check(
            "cr0-unmasked-bit-no-exit",
            ok && real == cr0 | WP,
            format_args!("{}, guest CR0 {real:#x}", m.as_str()),
        );
    }
    // CLTS exits when TS is set in both mask and shadow (26.1.3).
    if let Some((mut vm, _)) = cr0_setup(hv, c, "clts-exit", l2!(l2_clts)) {
        let (ok, m, _) = exit_then_vmcall(
            &mut vm,
            reason::CR_ACCESS,
            cr_qual(0, CLTS, 0),
            l2!(l2_clts),
            2,
        );
        c.check("clts-exit", ok, format_args!("{}", m.as_str()));
    }

    // CR4: VMXE owned by L1 and hidden from L2 (shadow 0).
    let cr4_setup = |hv: &Hv, c: &mut Checks, name: &str, rip: u64| -> Option<(Vm, u64)> {
        let vm = hv.fresh(c, name, rip)?;
        let cr4 = rd(GUEST_CR4);
        let _ = vmwrite(CR4_GUEST_HOST_MASK, VMXE);
        let _ = vmwrite(CR4_READ_SHADOW, cr4 & !VMXE);
        Some((vm, cr4))
    };
    if let Some((mut vm, cr4)) = cr4_setup(hv, c, "cr4-shadow-read", l2!(l2_read_cr4)) {
        let (ok, m) = no_exit(&mut vm, l2!(l2_read_cr4) + 3);
        let seen = vm.regs.rax as u32 as u64;
        c.check(
            "cr4-shadow-read",
            ok && seen == cr4 & !VMXE && cr4 & VMXE != 0,
            format_args!("{}, L2 read {seen:#x}, real {cr4:#x}", m.as_str()),
        );
    }
    if let Some((mut vm, cr4)) = cr4_setup(hv, c, "cr4-write-matching-no-exit", l2!(l2_write_cr4)) {
        vm.regs.rbx = cr4 & !VMXE;
        let (ok, m) = no_exit(&mut vm, l2!(l2_write_cr4) + 3);
        let real = rd(GUEST_CR4);
        c.check(
            "cr4-write-matching-no-exit",
            ok && real == cr4,
            format_args!("{}, guest CR4 {real:#x}", m.as_str()),
        );
    }
    if let Some((mut vm, cr4)) = cr4_setup(hv, c, "cr4-write-exits", l2!(l2_write_cr4)) {
        vm.regs.rbx = cr4;
        let (ok, m, _) = exit_then_vmcall(
            &mut vm,
            reason::CR_ACCESS,
            cr_qual(4, MOV_TO_CR, EBX),
            l2!(l2_write_cr4),
            3,
        );
        c.check("cr4-write-exits", ok, format_args!("{}", m.as_str()));
    }

    // CR3 (25.6.2, 26.1.3). Unpaged, L2 may load any CR3; paged, it
    // reloads its own.
    let new_cr3 = if hv.mode == layout::Mode::Unpaged {
        0x7000
    } else {
        layout::phys(hv.mode, layout::PD)
    };
    if let Some(mut vm) = hv.fresh(c, "cr3-load-exiting", l2!(l2_write_cr3)) {
        if hv.ctl(PROC_CONTROLS, proc::CR3_LOAD_EXITING, 0) {
            vm.regs.rbx = new_cr3;
            let (ok, m, _) = exit_then_vmcall(
                &mut vm,
                reason::CR_ACCESS,
                cr_qual(3, MOV_TO_CR, EBX),
                l2!(l2_write_cr3),
                3,
            );
            c.check("cr3-load-exiting", ok, format_args!("{}", m.as_str()));
        } else {
            c.skip(
                "cr3-load-exiting",
                format_args!("CR3-load exiting cannot be set"),
            );
        }
    }
    if let Some(mut vm) = hv.fresh(c, "cr3-load-no-exit", l2!(l2_write_cr3)) {
        if hv.ctl(PROC_CONTROLS, 0, proc::CR3_LOAD_EXITING) {
            vm.regs.rbx = new_cr3;
            let (ok, m) = no_exit(&mut vm, l2!(l2_write_cr3) + 3);
            let got = rd(GUEST_CR3);
            c.check(
                "cr3-load-no-exit",
                ok && got == new_cr3,
                format_args!("{}, guest CR3 {got:#x}", m.as_str()),
            );
        } else {
            c.skip(
                "cr3-load-no-exit",
                format_args!("CR3-load exiting cannot be cleared"),
            );
        }
    }
    if let Some(mut vm) = hv.fresh(c, "cr3-store-exiting", l2!(l2_read_cr3)) {
        if hv.ctl(PROC_CONTROLS, proc::CR3_STORE_EXITING, 0) {
            let (ok, m, _) = exit_then_vmcall(
                &mut vm,
                reason::CR_ACCESS,
                cr_qual(3, MOV_FROM_CR, EAX),
                l2!(l2_read_cr3),
                3,
            );
            c.check("cr3-store-exiting", ok, format_args!("{}", m.as_str()));
        } else {
            c.skip(
                "cr3-store-exiting",
                format_args!("CR3-store exiting cannot be set"),
            );
        }
    }
    // A MOV to CR3 of one of the CR3-target values does not exit.
    if hv.caps.cr3_targets() == 0 {
        c.skip(
            "cr3-target-no-exit",
            format_args!("no CR3-target values (IA32_VMX_MISC[24:16] = 0)"),
        );
    } else if let Some(mut vm) = hv.fresh(c, "cr3-target-no-exit", l2!(l2_write_cr3)) {
        if hv.ctl(PROC_CONTROLS, proc::CR3_LOAD_EXITING, 0) {
            let _ = vmwrite(CR3_TARGET_COUNT, 1);
            let _ = vmwrite(CR3_TARGET0, new_cr3);
            vm.regs.rbx = new_cr3;
            let (ok, m) = no_exit(&mut vm, l2!(l2_write_cr3) + 3);
            c.check("cr3-target-no-exit", ok, format_args!("{}", m.as_str()));
        } else {
            c.skip(
                "cr3-target-no-exit",
                format_args!("CR3-load exiting cannot be set"),
            );
        }
    }
}

// ---------------------------------------------------------------- exceptions

const UD: u32 = 6;
const GP: u32 = 13;
const PF: u32 = 14;
const HW_EXC: u32 = intr::VALID | intr::TYPE_HW_EXCEPTION;

fn exceptions(c: &mut Checks, hv: &Hv) {
    // #UD with its exception-bitmap bit set exits (reason 0) with the
    // interruption information: vector 6, hardware exception, no error
    // code (26.2, 28.2.2).
    if let Some(mut vm) = hv.fresh(c, "exc-bitmap-ud", l2!(l2_ud2)) {
        let _ = vmwrite(EXCEPTION_BITMAP, 1 << UD);
        let (ok, m, x) = exit_then_vmcall(&mut vm, reason::EXCEPTION_NMI, 0, l2!(l2_ud2), 2);
        let info = x.map_or(0, |x| x.intr_info);
        c.check(
            "exc-bitmap-ud",
            ok && info == HW_EXC | UD,
            format_args!("{}", m.as_str()),
        );
    }
    // Without its bit, #UD is delivered through L2's IDT.
    if let Some(mut vm) = hv.fresh(c, "exc-not-in-bitmap-delivered", l2!(l2_ud2)) {
        clear_mailbox(2);
        let (ok, m) = no_exit(&mut vm, l2!(l2_ud2) + 2);
        let (n, v, eip) = (
            mailbox(MB_COUNT),
            mailbox(MB_VECTOR),
            mailbox(MB_EIP) as u64,
        );
        c.check(
            "exc-not-in-bitmap-delivered",
            ok && n == 1 && v == UD && eip == l2!(l2_ud2),
            format_args!(
                "{}; L2's handler ran {n} time(s): vector {v}, EIP {eip:#x}",
                m.as_str()
            ),
        );
    }
    page_faults(c, hv);
}

/// #PF and the page-fault error-code mask/match (SDM 26.2): with bit 14
/// of the exception bitmap set, a #PF exits iff (PFEC & mask) == match;
/// with it clear, iff they differ. L2 pages; the window's second page is
/// not present, so a read faults with PFEC 0 and a write with PFEC 2.
fn page_faults(c: &mut Checks, hv: &Hv) {
    let fault_at = layout::WINDOW + 0x1010;
    layout::set_window(hv.mode, 1, None);
    let pf_vm =
        |c: &mut Checks, name: &str, rip: u64, bit14: bool, mask: u32, matchv: u32| -> Option<Vm> {
            let mut vm = hv.fresh(c, name, rip)?;
            hv.page_l2();
            let _ = vmwrite(EXCEPTION_BITMAP, if bit14 { 1 << PF } else { 0 });
            let _ = vmwrite(PF_ERROR_MASK, mask as u64);
            let _ = vmwrite(PF_ERROR_MATCH, matchv as u64);
            vm.regs.rsi = fault_at;
            clear_mailbox(2);
            Some(vm)
        };
    let pf_exit = |x: Option<crate::hv::vm::Exit>, pfec: u32| {
        x.is_some_and(|x| {
            x.intr_info == HW_EXC | intr::ERROR_CODE | PF
                && x.intr_error == pfec
                && x.qual == fault_at
        })
    };
    let delivered = |pfec: u32, rip: u64| {
        mailbox(MB_COUNT) == 1
            && mailbox(MB_VECTOR) == PF
            && mailbox(MB_ERROR) == pfec
            && mailbox(MB_CR2) as u64 == fault_at
            && mailbox(MB_EIP) as u64 == rip
    };
    let mb = || {
        msg!(
            "L2 handler count {} vector {} error {:#x} CR2 {:#x}",
            mailbox(MB_COUNT),
            mailbox(MB_VECTOR),
            mailbox(MB_ERROR),
            mailbox(MB_CR2)
        )
    };

    // Mask = match = 0 with bit 14 set: every #PF exits; the exit
    // qualification is the faulting linear address (28.2.1) and CR2 is
    // not written (26.2 footnote: no CR2 update on a #PF exit).
    if let Some(mut vm) = pf_vm(c, "pf-exit-all", l2!(l2_read), true, 0, 0) {
        let (ok, m, x) =
            exit_then_vmcall(&mut vm, reason::EXCEPTION_NMI, fault_at, l2!(l2_read), 2);
        c.check(
            "pf-exit-all",
            ok && pf_exit(x, 0),
            format_args!("{}", m.as_str()),
        );
    }
    // Bit 14 set, mask = match = W: the write fault exits, the read fault
    // goes to L2's handler.
    if let Some(mut vm) = pf_vm(c, "pf-mask-match-set", l2!(l2_read), true, 2, 2) {
        let (read_ok, rm) = no_exit(&mut vm, l2!(l2_read) + 2);
        let read_delivered = delivered(0, l2!(l2_read));
        let mbr = mb();
        vm.regs.rsi = fault_at;
        let (write_ok, wm, x) = exit_then_vmcall(
            vm.at(l2!(l2_write)),
            reason::EXCEPTION_NMI,
            fault_at,
            l2!(l2_write),
            2,
        );
        c.check(
            "pf-mask-match-set",
            read_ok && read_delivered && write_ok && pf_exit(x, 2),
            format_args!(
                "read: {} ({}); write: {}",
                rm.as_str(),
                mbr.as_str(),
                wm.as_str()
            ),
        );
    }
    // Bit 14 clear, mask = match = W: the read fault (no match) exits,
    // the write fault (match) goes to L2's handler.
    if let Some(mut vm) = pf_vm(c, "pf-mask-match-clear", l2!(l2_read), false, 2, 2) {
        let (read_ok, rm, x) =
            exit_then_vmcall(&mut vm, reason::EXCEPTION_NMI, fault_at, l2!(l2_read), 2);
        let read_exit = pf_exit(x, 0);
        vm.regs.rsi = fault_at;
        clear_mailbox(2);
        let (write_ok, wm) = no_exit(vm.at(l2!(l2_write)), l2!(l2_write) + 2);
        let write_delivered = delivered(2, l2!(l2_write));
        c.check(
            "pf-mask-match-clear",
            read_ok && read_exit && write_ok && write_delivered,
            format_args!(
                "read: {}; write: {} ({})",
                rm.as_str(),
                wm.as_str(),
                mb().as_str()
            ),
        );
    }
    // Reflecting a #PF exit the way a hypervisor does: L1 loads CR2 (the
    // VMCS has no CR2; L2 runs with the CR2 L1 leaves) and injects #PF
    // with the error code; L2's handler sees vector, error code and CR2.
    if let Some(mut vm) = pf_vm(c, "pf-reflect-cr2", l2!(l2_read), true, 0, 0) {
        let e = vm.enter();
        let x = e.exit().copied();
        let ok_exit = pf_exit(x, 0);
        if let Some(x) = x {
            let _ = vmwrite(ENTRY_INTR_INFO, x.intr_info as u64);
            let _ = vmwrite(ENTRY_EXCEPTION_ERROR, x.intr_error as u64);
            // SAFETY: CR2 is only read by page-fault handlers; L1 takes none.
            unsafe { cpu::set_cr2(x.qual) };
        }
        let (ok, m) = no_exit(&mut vm, l2!(l2_read) + 2);
        c.check(
            "pf-reflect-cr2",
            ok_exit && ok && delivered(0, l2!(l2_read)),
            format_args!("{e}; after injection {} ({})", m.as_str(), mb().as_str()),
        );
    }
    layout::set_window(hv.mode, 1, None);
}

// ---------------------------------------------------------------- injection

/// Event injection through the VM-entry interruption-information field
/// (SDM 27.6): delivered through L2's IDT as if it occurred at the guest
/// RIP, with the error code for a hardware exception that has one, and
/// with the return address RIP + VM-entry instruction length for a
/// software interrupt. Every VM exit clears the field's valid bit (25.8.3).
fn injection(c: &mut Checks, hv: &Hv) {
    let inject = |c: &mut Checks,
                  name: &str,
                  rip: u64,
                  info: u32,
                  error: u32,
                  len: u64,
                  rflags: u64|
     -> Option<(bool, crate::hv::Msg)> {
        let mut vm = hv.fresh(c, name, rip)?;
        clear_mailbox(0);
        let _ = vmwrite(ENTRY_INTR_INFO, info as u64);
        let _ = vmwrite(ENTRY_EXCEPTION_ERROR, error as u64);
        let _ = vmwrite(ENTRY_INSTR_LEN, len);
        let _ = vmwrite(GUEST_RFLAGS, rflags);
        let e = vm.enter();
        let still = rd(ENTRY_INTR_INFO) as u32 & intr::VALID;
        Some((
            e.is(reason::VMCALL) && still == 0,
            msg!(
                "{e}, entry info valid bit after exit {still:#x}; {}",
                mailbox_line().as_str()
            ),
        ))
    };
    let got = |v: u32, err: u32, eip: u64| {
        mailbox(MB_COUNT) == 1
            && mailbox(MB_VECTOR) == v
            && mailbox(MB_ERROR) == err
            && mailbox(MB_EIP) as u64 == eip
    };

    if let Some((ok, m)) = inject(
        c,
        "inject-gp-error-code",
        l2!(l2_vmcall),
        HW_EXC | intr::ERROR_CODE | GP,
        0x1230,
        0,
        2,
    ) {
        c.check(
            "inject-gp-error-code",
            ok && got(GP, 0x1230, l2!(l2_vmcall)),
            format_args!("{}", m.as_str()),
        );
    }
    // External interrupts need RFLAGS.IF = 1 to be injected (27.3.1.4).
    if let Some((ok, m)) = inject(
        c,
        "inject-external",
        l2!(l2_vmcall),
        intr::VALID | intr::TYPE_EXTERNAL | 0x30,
        0,
        0,
        0x202,
    ) {
        c.check(
            "inject-external",
            ok && got(0x30, u32::MAX, l2!(l2_vmcall)),
            format_args!("{}", m.as_str()),
        );
    }
    // INT 0x31 "executed" by the injection at the UD2: the handler returns
    // past it (length 2) to the VMCALL, never running the UD2.
    if let Some((ok, m)) = inject(
        c,
        "inject-soft-int-length",
        l2!(l2_ud2),
        intr::VALID | intr::TYPE_SW_INTERRUPT | 0x31,
        0,
        2,
        2,
    ) {
        c.check(
            "inject-soft-int-length",
            ok && got(0x31, u32::MAX, l2!(l2_ud2) + 2),
            format_args!("{}", m.as_str()),
        );
    }
}

fn mailbox_line() -> crate::hv::Msg {
    msg!(
        "L2 handler count {} vector {:#x} error {:#x} return EIP {:#x}",
        mailbox(MB_COUNT),
        mailbox(MB_VECTOR),
        mailbox(MB_ERROR),
        mailbox(MB_EIP)
    )
}

// ---------------------------------------------------------------- interrupts

/// An interrupt that arrives while L2 runs with external-interrupt exiting
/// exits to L1 (reason 1, SDM 26.2) whatever L2's RFLAGS.IF; with
/// "acknowledge interrupt on exit" the exit carries the vector (28.2.2) and
/// the interrupt is L1's to EOI, without it the interrupt stays pending
/// for L1 to take. The source: L1's LAPIC timer, one shot.
fn external_interrupts(c: &mut Checks, hv: &Hv) {
    const NAMES: [&str; 3] = ["extint-exit-ack", "extint-exit-noack", "extint-exit-l2-if0"];
    if let Err(why) = apic::usable() {
        for n in NAMES {
            c.skip(n, format_args!("{why}"));
        }
        return;
    }
    if !hv.caps.pin.can_set(pin::EXT_INTR_EXITING) {
        for n in NAMES {
            c.skip(n, format_args!("external-interrupt exiting not offered"));
        }
        return;
    }
    apic::enable();
    const BOUND: u64 = 30_000_000;
    const COUNT: u32 = 20_000;
    for (name, ack, cli) in [
        (NAMES[0], true, false),
        (NAMES[1], false, false),
        (NAMES[2], true, true),
    ] {
        let entry = if cli { l2!(l2_cli_spin) } else { l2!(l2_spin) };
        let Some(mut vm) = hv.fresh(c, name, entry) else {
            continue;
        };
        let acked = if ack {
            hv.ctl(EXIT_CONTROLS, exit::ACK_INTR_ON_EXIT, 0)
        } else {
            hv.ctl(EXIT_CONTROLS, 0, exit::ACK_INTR_ON_EXIT)
        };
        if !acked {
            c.skip(
                name,
                format_args!(
                    "acknowledge interrupt on exit cannot be {}",
                    if ack { "set" } else { "cleared" }
                ),
            );
            continue;
        }
        let _ = vmwrite(GUEST_RFLAGS, 0x202);
        clear_mailbox(0);
        vm.regs.rcx = 0;
        vm.regs.rdx = BOUND;
        let before = TIMER_TAKEN.load(core::sync::atomic::Ordering::SeqCst);
        apic::oneshot(TIMER_VECTOR, COUNT);
        let e = vm.enter();
        let spins = vm.regs.rcx;
        let x = e.exit().copied().unwrap_or_default();
        let mut pending = false;
        let mut taken = 0;
        if ack {
            if x.is(reason::EXTERNAL_INTERRUPT) {
                apic::eoi();
            }
        } else {
            pending = apic::pending(TIMER_VECTOR);
            // SAFETY: L1's IDT has the timer vector; one instruction window.
            unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
            taken = TIMER_TAKEN.load(core::sync::atomic::Ordering::SeqCst) - before;
        }
        apic::stop();
        let if_at_exit = x.rflags & 0x200;
        let info_ok = if ack {
            x.intr_info == intr::VALID | intr::TYPE_EXTERNAL | TIMER_VECTOR as u32
        } else {
            x.intr_info & intr::VALID == 0
        };
        let l1_ok = ack || (pending && taken == 1);
        let in_l2 = mailbox(MB_COUNT);
        c.check(
            name,
            x.is(reason::EXTERNAL_INTERRUPT) && info_ok && l1_ok && in_l2 == 0 && spins < BOUND && (if_at_exit == 0) == cli,
            format_args!("{e} after {spins} L2 loops, L2's IF {}; pending in L1's IRR {pending}, L1 took it {taken} time(s); delivered to L2 {in_l2} time(s)", if_at_exit >> 9),
        );
    }
}
