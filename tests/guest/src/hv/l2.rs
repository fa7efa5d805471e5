//! L2: its memory layout, its code, its descriptor tables and page tables.
//!
//! L2 runs 32-bit protected-mode code (one blob, copied to `CODE`), flat
//! segments, at fixed L2 addresses. With EPT and unrestricted guest, paging
//! is off and EPT12 is the only translation (L2-virtual = L2-physical). The
//! same L2 page tables serve checks that need paging (#PF, INVVPID) and the
//! fallbacks when the capabilities lack unrestricted guest (L2 paged,
//! identity) or EPT (L2 paged, L2 addresses mapped straight to L1 pages).
//! So the blob may use fixed addresses (its mailbox) and otherwise only
//! relative jumps; operands come in registers L1 sets.

use super::mem::{self, pg, PAGE};

pub const CODE: u64 = 0x1000;
pub const CODE_PAGES: u64 = 2;
/// The handlers' record of the last event L2 took (offsets `MB_*`).
pub const MAILBOX: u64 = 0x3000;
pub const STACK: u64 = 0x4000;
pub const STACK_TOP: u64 = 0x5000;
/// GDT at +0, IDT at +0x100, TSS at +0x800.
pub const TABLES: u64 = 0x5000;
pub const GDT: u64 = TABLES;
pub const GDT_LIMIT: u64 = 4 * 8 - 1;
pub const IDT: u64 = TABLES + 0x100;
pub const IDT_ENTRIES: u64 = 64;
pub const TSS: u64 = TABLES + 0x800;
/// Eight pages the checks use as data (T0 = `TEST`).
pub const TEST: u64 = 0x6000;
pub const TEST_PAGES: u64 = 8;
/// 32-bit paging: page directory, the table for 0-4 MiB, the table for
/// the test window at `WINDOW`.
pub const PD: u64 = 0x1_0000;
pub const PT_LOW: u64 = 0x1_1000;
pub const PT_WIN: u64 = 0x1_2000;
pub const SPARE: u64 = 0x1_3000;
/// The 2 MiB page (an EPT12 2 MiB leaf when the capabilities offer it).
pub const BIG: u64 = 0x20_0000;
/// Linear addresses through `PT_WIN` (PD entry 1) when L2 pages.
pub const WINDOW: u64 = 0x40_0000;
/// Never mapped by EPT12.
pub const UNMAPPED: u64 = 0x80_0000;

pub const CODE_SEL: u64 = 0x08;
pub const DATA_SEL: u64 = 0x10;
pub const TSS_SEL: u64 = 0x18;

/// Mailbox fields, written by L2's interrupt handlers.
pub const MB_COUNT: u64 = 0;
pub const MB_VECTOR: u64 = 4;
/// 0xffffffff when the vector pushes no error code.
pub const MB_ERROR: u64 = 8;
/// The return EIP the handler found on its stack.
pub const MB_EIP: u64 = 12;
pub const MB_CR2: u64 = 16;
/// Set by L1: bytes the handler adds to the return EIP (to step over a
/// faulting instruction).
pub const MB_SKIP: u64 = 20;

/// L2's 4 KiB pages in pool order (`pg::L2_FIRST + i`).
pub const LAYOUT: [u64; pg::L2_PAGES] = [
    CODE,
    CODE + PAGE,
    MAILBOX,
    STACK,
    TABLES,
    TEST,
    TEST + PAGE,
    TEST + 2 * PAGE,
    TEST + 3 * PAGE,
    TEST + 4 * PAGE,
    TEST + 5 * PAGE,
    TEST + 6 * PAGE,
    TEST + 7 * PAGE,
    PD,
    PT_LOW,
    PT_WIN,
    SPARE,
    SPARE + PAGE,
];

/// How L2 runs, from the capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// EPT + unrestricted guest: paging off, EPT12 the only translation.
    Unpaged,
    /// EPT without unrestricted guest: L2 pages through identity tables.
    PagedEpt,
    /// No EPT: L2's page tables map its addresses to L1's pages.
    PagedNoEpt,
}

impl Mode {
    pub fn ept(self) -> bool {
        self != Mode::PagedNoEpt
    }
}

/// The L1 page behind L2 address `a`.
pub fn backing(a: u64) -> u64 {
    if (BIG..BIG + mem::BIG).contains(&a) {
        return mem::big() + (a - BIG);
    }
    let i = LAYOUT
        .iter()
        .position(|&p| p == a & !(PAGE - 1))
        .unwrap_or_else(|| panic!("{a:#x} is not in L2's layout"));
    mem::page(pg::L2_FIRST + i) + (a & (PAGE - 1))
}

/// What L2's page tables hold for L2 address `a`: the L2-physical address
/// (identity under EPT12) or, without EPT, the L1 page itself.
pub fn phys(mode: Mode, a: u64) -> u64 {
    if mode.ept() {
        a
    } else {
        backing(a)
    }
}

// ---------------------------------------------------------------------------
// The blob. Entry points are `l2_*` symbols; `at()` turns one into an L2
// address. Each ends in VMCALL (an unconditional exit, SDM 26.1.2) so L1
// knows the payload ran to completion.
core::arch::global_asm!(
    r#"
    .section .rodata.l2blob, "a"
    .balign 16
    .code32
    .global l2_blob_start
l2_blob_start:

    .global l2_vmcall
l2_vmcall:
    vmcall

    .global l2_cpuid
l2_cpuid:
    cpuid
    mov esi, eax
    mov edi, ebx
    vmcall

    .global l2_regs
l2_regs:
    not eax
    not ebx
    not ecx
    not edx
    not esi
    not edi
    not ebp
    vmcall

    .global l2_hlt
l2_hlt:
    hlt
    vmcall

    .global l2_rdtsc
l2_rdtsc:
    rdtsc
    vmcall

    .global l2_rdmsr
l2_rdmsr:
    rdmsr
    vmcall

    .global l2_wrmsr
l2_wrmsr:
    wrmsr
    vmcall

    .global l2_wrmsr_rdmsr
l2_wrmsr_rdmsr:
    wrmsr
    xor eax, eax
    xor edx, edx
    rdmsr
    vmcall

    .global l2_state
l2_state:
    mov esp, ebp
    stc
    std
    vmcall

    .global l2_vmx
l2_vmx:
    vmxon qword ptr [eax]
    vmptrld qword ptr [eax]
    vmread ebx, ecx
    vmcall

    .global l2_in_imm
l2_in_imm:
    in al, 0xe0
    vmcall

    .global l2_in_dx
l2_in_dx:
    in eax, dx
    vmcall

    .global l2_in_al_dx
l2_in_al_dx:
    in al, dx
    vmcall

    .global l2_out_dx
l2_out_dx:
    out dx, ax
    vmcall

    .global l2_rep_outsb
l2_rep_outsb:
    rep outsb
    vmcall

    .global l2_out_in_dx
l2_out_in_dx:
    out dx, al
    mov al, 0
    in al, dx
    vmcall

    .global l2_read_cr0
l2_read_cr0:
    mov eax, cr0
    vmcall

    .global l2_write_cr0
l2_write_cr0:
    mov cr0, ebx
    vmcall

    .global l2_clts
l2_clts:
    clts
    vmcall

    .global l2_read_cr4
l2_read_cr4:
    mov eax, cr4
    vmcall

    .global l2_write_cr4
l2_write_cr4:
    mov cr4, ebx
    vmcall

    .global l2_read_cr3
l2_read_cr3:
    mov eax, cr3
    vmcall

    .global l2_write_cr3
l2_write_cr3:
    mov cr3, ebx
    vmcall

    .global l2_ud2
l2_ud2:
    ud2
    vmcall

    .global l2_read
l2_read:
    mov eax, [esi]
    vmcall

    .global l2_write
l2_write:
    mov [esi], edi
    vmcall

    .global l2_jmp
l2_jmp:
    jmp esi

    .global l2_read2
l2_read2:
    mov eax, [esi]
    vmcall
    mov ebx, [esi]
    vmcall

    .global l2_counter
l2_counter:
    mov eax, [{t0}]
    inc eax
    mov [{t0}], eax
    inc ebx
    vmcall
    jmp l2_counter

    // Touches one page in each of ECX strides of EDX bytes from ESI:
    // writes i at ESI + i*EDX + i*4, then reads them all back; EBX = how
    // many read back wrong.
    .global l2_touch_strided
l2_touch_strided:
    xor eax, eax
    mov edi, esi
.Ltouch_write:
    mov [edi + eax*4], eax
    add edi, edx
    inc eax
    cmp eax, ecx
    jb .Ltouch_write
    xor eax, eax
    xor ebx, ebx
    mov edi, esi
.Ltouch_read:
    cmp [edi + eax*4], eax
    je .Ltouch_same
    inc ebx
.Ltouch_same:
    add edi, edx
    inc eax
    cmp eax, ecx
    jb .Ltouch_read
    .global l2_touch_done
l2_touch_done:
    vmcall

    .global l2_cli_spin
l2_cli_spin:
    cli
    jmp l2_spin

    .global l2_spin
l2_spin:
    inc ecx
    cmp ecx, edx
    jb l2_spin
    vmcall

    .global l2_cpuid_loop
l2_cpuid_loop:
    xor eax, eax
    cpuid
    dec edi
    jnz l2_cpuid_loop
    vmcall

    // Two L2s on two CPUs meet: ESI = this L2's counter, EDI = the other
    // L2's, EBX = this L2's "seen" flag, EBP = the other's, ECX = how far
    // the other counter must advance, EDX = the most iterations. Each
    // iteration counts; once the other counter moved ECX past its value
    // at the start, the flag is raised; the loop ends when both flags are
    // up (so the other L2 keeps counting until it has seen this one) or
    // EDX runs out (EDX = 0). EAX = the other counter at the start.
    .global l2_meet
l2_meet:
    mov eax, [edi]
    push eax
.Lmeet_loop:
    lock inc dword ptr [esi]
    mov eax, [edi]
    sub eax, [esp]
    cmp eax, ecx
    jb .Lmeet_check
    mov dword ptr [ebx], 1
.Lmeet_check:
    cmp dword ptr [ebx], 0
    je .Lmeet_next
    cmp dword ptr [ebp], 0
    jne .Lmeet_done
.Lmeet_next:
    dec edx
    jnz .Lmeet_loop
.Lmeet_done:
    pop eax
    .global l2_meet_vmcall
l2_meet_vmcall:
    vmcall

    // Interrupt handlers: record vector, error code, return EIP and CR2
    // in the mailbox, count, add MB_SKIP to the return EIP, return.
    .global l2_h_ud
l2_h_ud:
    push 6
    jmp l2_h_noerr
    .global l2_h_gp
l2_h_gp:
    push 13
    jmp l2_h_err
    .global l2_h_pf
l2_h_pf:
    push 14
    jmp l2_h_err
    .global l2_h_30
l2_h_30:
    push 0x30
    jmp l2_h_noerr
    .global l2_h_31
l2_h_31:
    push 0x31
    jmp l2_h_noerr

l2_h_noerr:
    push eax
    mov eax, [esp + 4]
    mov [{mb} + 4], eax
    mov dword ptr [{mb} + 8], 0xffffffff
    mov eax, [esp + 8]
    mov [{mb} + 12], eax
    mov eax, [{mb} + 20]
    add [esp + 8], eax
    mov eax, cr2
    mov [{mb} + 16], eax
    inc dword ptr [{mb}]
    pop eax
    add esp, 4
    iretd

l2_h_err:
    push eax
    mov eax, [esp + 4]
    mov [{mb} + 4], eax
    mov eax, [esp + 8]
    mov [{mb} + 8], eax
    mov eax, [esp + 12]
    mov [{mb} + 12], eax
    mov eax, [{mb} + 20]
    add [esp + 12], eax
    mov eax, cr2
    mov [{mb} + 16], eax
    inc dword ptr [{mb}]
    pop eax
    add esp, 8
    iretd

    .global l2_blob_end
l2_blob_end:
    .code64
"#,
    mb = const MAILBOX,
    t0 = const TEST,
);

extern "C" {
    static l2_blob_start: u8;
    static l2_blob_end: u8;
}

/// The L2 address of blob symbol `sym`.
pub fn at(sym: *const u8) -> u64 {
    let start = core::ptr::addr_of!(l2_blob_start) as u64;
    CODE + (sym as u64 - start)
}

/// The L2 address of a blob entry point: `l2!(l2_cpuid)`.
#[macro_export]
macro_rules! l2 {
    ($sym:ident) => {{
        extern "C" {
            static $sym: u8;
        }
        #[allow(unused_unsafe)]
        // SAFETY: only the address of the blob symbol is taken.
        let p = unsafe { core::ptr::addr_of!($sym) };
        $crate::hv::l2::at(p)
    }};
}

fn gate(handler: u64) -> u64 {
    // A 32-bit interrupt gate (SDM Vol. 3A 6.11): DPL 0, present.
    (handler & 0xffff) | CODE_SEL << 16 | ((handler & 0xffff_0000) | 0x8e00) << 32
}

/// Lays out L2's memory: code, zeroed mailbox and stack, GDT/IDT/TSS, and
/// the page tables (used by paged modes and by the checks that page).
pub fn setup(mode: Mode) {
    for &a in LAYOUT.iter() {
        mem::zero_page(backing(a));
    }
    // SAFETY: only addresses are taken; the blob is read-only image data.
    let blob = unsafe {
        let s = core::ptr::addr_of!(l2_blob_start);
        let e = core::ptr::addr_of!(l2_blob_end);
        core::slice::from_raw_parts(s, e as usize - s as usize)
    };
    assert!(blob.len() as u64 <= CODE_PAGES * PAGE);
    for (i, chunk) in blob.chunks(PAGE as usize).enumerate() {
        mem::copy_in(backing(CODE + i as u64 * PAGE), chunk);
    }

    // GDT: null, flat 32-bit code, flat data, busy 32-bit TSS.
    let tss_desc = 0x67 | (TSS & 0xff_ffff) << 16 | 0x8b << 40 | (TSS >> 24 & 0xff) << 56;
    for (i, d) in [0, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff, tss_desc]
        .into_iter()
        .enumerate()
    {
        mem::wr64(backing(GDT + 8 * i as u64), d);
    }
    let gates = [
        (6, l2!(l2_h_ud)),
        (13, l2!(l2_h_gp)),
        (14, l2!(l2_h_pf)),
        (0x30, l2!(l2_h_30)),
        (0x31, l2!(l2_h_31)),
    ];
    for (v, h) in gates {
        mem::wr64(backing(IDT + 8 * v), gate(h));
    }

    // 32-bit paging (SDM Vol. 3A 4.3): PD[0] -> PT_LOW maps 0-4 MiB as L2
    // sees it; PD[1] -> PT_WIN is the window the paging checks edit.
    const P_RW: u64 = 3;
    mem::wr32(backing(PD), (phys(mode, PT_LOW) | P_RW) as u32);
    mem::wr32(backing(PD + 4), (phys(mode, PT_WIN) | P_RW) as u32);
    for &a in LAYOUT.iter() {
        mem::wr32(
            backing(PT_LOW + 4 * (a >> 12)),
            (phys(mode, a) | P_RW) as u32,
        );
    }
    for i in 0..512 {
        let a = BIG + i * PAGE;
        mem::wr32(
            backing(PT_LOW + 4 * (a >> 12)),
            (phys(mode, a) | P_RW) as u32,
        );
    }
    set_window(mode, 0, Some(TEST));
}

/// Points window page `i` (linear `WINDOW + i * 4 KiB`) at L2 address
/// `target`, or makes it not present.
pub fn set_window(mode: Mode, i: u64, target: Option<u64>) {
    let pte = target.map_or(0, |t| phys(mode, t) | 3);
    mem::wr32(backing(PT_WIN + 4 * i), pte as u32);
}

/// Resets the mailbox (and the skip count the handlers apply).
pub fn clear_mailbox(skip: u32) {
    mem::fill(backing(MAILBOX), 64, 0);
    mem::wr32(backing(MAILBOX + MB_SKIP), skip);
}

pub fn mailbox(field: u64) -> u32 {
    mem::rd32(backing(MAILBOX + field))
}
