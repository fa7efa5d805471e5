//! `boot`: the cloud VM starts as a multiboot kernel, sees L0's CPUID
//! signature, and finds the machine as L0 promises it.

use crate::check::Checks;
use crate::faults::expect_fault;
use crate::io::{cpuid, rdmsr, read_cr4, write_cr4, wrmsr};
use crate::mb1::{arg, Identity, Info};

const GP: u8 = 13;

pub fn run(magic: u32, mbi: &Info<Identity>) {
    static NAME: &str = "boot";
    crate::set_current_test(&NAME);
    let mut c = Checks::new(NAME);

    c.check(
        "multiboot-magic",
        magic == 0x2bad_b002,
        format_args!("{magic:#x}"),
    );
    c.check(
        "cmdline",
        arg(mbi.cmdline(), "test") == Some("boot"),
        format_args!("\"{}\"", mbi.cmdline()),
    );

    let [_, _, ecx, _] = cpuid(1, 0);
    c.check(
        "cpuid-hypervisor-bit",
        ecx & (1 << 31) != 0,
        format_args!("CPUID.1:ECX={ecx:#x}"),
    );
    let [max, b, cc, d] = cpuid(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&b.to_le_bytes());
    sig[4..8].copy_from_slice(&cc.to_le_bytes());
    sig[8..].copy_from_slice(&d.to_le_bytes());
    c.check(
        "cpuid-signature",
        &sig == b"L0Hypervisor" && max >= 0x4000_0001,
        format_args!(
            "\"{}\" max leaf {max:#x}",
            core::str::from_utf8(&sig).unwrap_or("?")
        ),
    );

    // The guest tools' own detection, on what L0 shows the cloud VM.
    let found = ultracall_abi::cpuid::detect(|leaf| {
        let [eax, ebx, ecx, edx] = cpuid(leaf, 0);
        ultracall_abi::cpuid::CpuidRegs { eax, ebx, ecx, edx }
    });
    c.check(
        "cpuid-detect",
        found == Ok(ultracall_abi::ABI_VERSION),
        format_args!("{found:?}"),
    );

    // IA32_FEATURE_CONTROL is locked, so writing it faults.
    let mut fc = 0;
    let read_fault = expect_fault(2, || fc = unsafe { rdmsr(0x3a) });
    c.check(
        "feature-control-locked",
        read_fault.is_none() && fc & 1 == 1,
        format_args!("{fc:#x}"),
    );
    let write_fault = expect_fault(2, || unsafe { wrmsr(0x3a, fc) });
    c.check(
        "feature-control-write-faults",
        write_fault == Some(GP),
        format_args!("{write_fault:?}"),
    );

    // VMX as CPUID says: absent means CR4.VMXE and the VMX MSRs fault.
    let vmx = ecx & (1 << 5) != 0;
    let cr4 = read_cr4();
    let vmxe = expect_fault(3, || unsafe { write_cr4(cr4 | 1 << 13) });
    let basic = expect_fault(2, || {
        unsafe { rdmsr(0x480) };
    });
    if vmx {
        c.check(
            "vmx-consistent",
            fc & 4 != 0 && basic.is_none(),
            format_args!("VMX offered"),
        );
        if vmxe.is_none() {
            // SAFETY: restores the CR4 the guest ran with.
            unsafe { write_cr4(cr4) };
        }
    } else {
        c.check(
            "vmx-consistent",
            vmxe == Some(GP) && basic == Some(GP) && read_cr4() == cr4,
            format_args!("VMX hidden: CR4.VMXE {vmxe:?}, IA32_VMX_BASIC {basic:?}"),
        );
    }

    // The MTRRs are L1's to read and write back (a shadow under EPT).
    let mut def = 0;
    let r = expect_fault(2, || def = unsafe { rdmsr(0x2ff) });
    let w = expect_fault(2, || unsafe { wrmsr(0x2ff, def) });
    let mut again = 0;
    expect_fault(2, || again = unsafe { rdmsr(0x2ff) });
    c.check(
        "mtrr-shadow",
        r.is_none() && w.is_none() && again == def,
        format_args!("MTRR_DEF_TYPE {def:#x}"),
    );

    // No performance monitoring or trace (L0 withholds them): CPUID says
    // so, and their MSRs fault, the ones that aim stores at memory first.
    let [_, _, ecx1, edx1] = cpuid(1, 0);
    let [_, ebx7, _, edx7] = cpuid(7, 0);
    let [pmu_version, ..] = cpuid(0xa, 0);
    c.check(
        "cpuid-no-perfmon-or-trace",
        edx1 & (1 << 21) == 0
            && ecx1 & (1 << 2 | 1 << 4 | 1 << 15) == 0
            && ebx7 & (1 << 25) == 0
            && edx7 & (1 << 19) == 0
            && pmu_version & 0xff == 0,
        format_args!(
            "1:ECX={ecx1:#x} EDX={edx1:#x} 7:EBX={ebx7:#x} EDX={edx7:#x} 0xA:EAX={pmu_version:#x}"
        ),
    );
    let ds_area = expect_fault(2, || {
        unsafe { rdmsr(0x600) };
    });
    let rtit_ctl = expect_fault(2, || unsafe { wrmsr(0x570, 1) });
    let pebs = expect_fault(2, || unsafe { wrmsr(0x3f1, 1) });
    let global_ctrl = expect_fault(2, || {
        unsafe { rdmsr(0x38f) };
    });
    c.check(
        "perfmon-msrs-fault",
        [ds_area, rtit_ctl, pebs, global_ctrl] == [Some(GP); 4],
        format_args!(
            "DS_AREA read {ds_area:?}, RTIT_CTL write {rtit_ctl:?}, \
             PEBS_ENABLE write {pebs:?}, PERF_GLOBAL_CTRL read {global_ctrl:?}"
        ),
    );
    let rdpmc = expect_fault(2, || {
        unsafe { crate::io::rdpmc(0) };
    });
    c.check("rdpmc-faults", rdpmc == Some(GP), format_args!("{rdpmc:?}"));

    // Low memory is the cloud VM's: RAM from 1 MiB on, L0 only at the top.
    let upper = mbi.mem_upper_kib().unwrap_or(0);
    let at_1m = mbi
        .memory_map()
        .find(|e| e.base <= 0x10_0000 && 0x10_0000 < e.base + e.len);
    c.check(
        "low-memory-is-l1s",
        at_1m.is_some_and(|e| e.kind == 1) && upper >= 64 * 1024,
        format_args!("mem_upper {upper} KiB, entry at 1 MiB {at_1m:?}"),
    );
    ram_zeroed(&mut c, mbi);
    c.finish();
}

extern "C" {
    static __guest_start: u8;
    static __guest_end: u8;
}

/// Every byte of the RAM this guest owns (the map's usable entries below
/// 4 GiB) is zero but what L0's loader put there (this kernel from its
/// image to the end of its .bss and stack, its multiboot information) and
/// what the guest wrote since (only in its .bss and stack): nothing GRUB
/// or the firmware left, GRUB's copy of `l0.key` included. Every word is
/// read.
fn ram_zeroed(c: &mut Checks, mbi: &Info<Identity>) {
    let image = (
        core::ptr::addr_of!(__guest_start) as u64,
        core::ptr::addr_of!(__guest_end) as u64,
    );
    // The information, its command line and memory map: a page or two each.
    let loader = mbi
        .loader_addrs()
        .map(|a| (a & !0xfff, (a & !0xfff) + 0x2000));
    // Page 0: the real-mode vectors and the BIOS data area, which L0
    // leaves as the firmware wrote them (L1's kernel may read them).
    let skipped = |a: u64| {
        a == 0
            || (image.0..image.1).contains(&a)
            || loader.iter().any(|&(s, e)| a != 0 && (s..e).contains(&a))
    };
    let (mut words, mut nonzero) = (0u64, 0u64);
    let mut first = None;
    for e in mbi.memory_map().filter(|e| e.kind == 1) {
        let end = (e.base + e.len).min(1 << 32) & !0xfff;
        let mut page = e.base.next_multiple_of(0x1000);
        while page < end {
            if !skipped(page) && !page_is_zero(page) {
                // SAFETY: usable RAM below 4 GiB, identity-mapped, read only.
                let p = unsafe { core::slice::from_raw_parts(page as *const u64, 512) };
                for (i, &w) in p.iter().enumerate() {
                    if w != 0 {
                        nonzero += 1;
                        first.get_or_insert((page + 8 * i as u64, w));
                    }
                }
            }
            if !skipped(page) {
                words += 512;
            }
            page += 0x1000;
        }
    }
    c.check(
        "ram-zeroed-for-l1",
        nonzero == 0 && words > 1 << 20,
        format_args!(
            "{} MiB read outside this kernel and its multiboot information: {nonzero} words not zero (first {first:x?})",
            words >> 17,
        ),
    );
}

/// Whether the 4 KiB page at `page` holds only zeros (one OR over its
/// words: the fewest instructions per word an emulator runs).
fn page_is_zero(page: u64) -> bool {
    // SAFETY: usable RAM below 4 GiB, identity-mapped, read only.
    let p = unsafe { core::slice::from_raw_parts(page as *const u64, 512) };
    p.iter().fold(0, |a, &w| a | w) == 0
}
