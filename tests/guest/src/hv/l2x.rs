//! 64-bit L2s: the user VMs of the shadow-device scenarios.
//!
//! Ultracalls are recognised only from 64-bit code, and a user VM's driver
//! uses its UART as on hardware (LSR polling for output, receive by
//! interrupt), so these L2s run in IA-32e mode: CR0.PG|PE, CR4.PAE, EFER
//! LME|LMA, 4-level page tables identity-mapping their low 2 MiB with one
//! 2 MiB page, a GDT with a 64-bit code segment, a 64-bit IDT and a busy
//! 64-bit TSS.
//!
//! Each VM lives in its own *slot* of pool pages (`pg::X_FIRST`), reached
//! through its own EPT12, so two VMs share neither a page nor an EPT root.
//! Every slot has the same L2-physical layout; the code is one blob
//! (`l2x_*` entry points) copied into each slot. The blob addresses its
//! data page absolutely (the layout is fixed) and its strings relative to
//! RIP. L1 passes parameters in the data page (`D_*`) and reads results
//! there; the programs end in VMCALL with a non-magic RAX ([`EXIT_DONE`],
//! [`EXIT_YIELD`], [`EXIT_EXC`]; the cross-CPU bench's handler also
//! [`EXIT_EOI`]) so L0 reflects them to L1.
//!
//! Before every VMCALL to L1 the programs clear their general registers
//! (their state is on their own stack): whatever an L2 computed, L1 only
//! ever sees zeros in L2's registers.

use super::mem::{self, pg, PAGE};

pub const CODE: u64 = 0x1000;
pub const CODE_PAGES: u64 = 2;
/// Parameters and results (offsets `D_*`).
pub const DATA: u64 = 0x3000;
/// The fuzz call table (`l2x_fuzz`): [`FUZZ_ENTRIES`] entries of 256 bytes.
pub const TABLE: u64 = 0x4000;
pub const STACK_TOP: u64 = 0x7000;
/// GDT at +0, IDT at +0x100, TSS at +0x800.
pub const DESC: u64 = 0x7000;
pub const GDT: u64 = DESC;
pub const GDT_LIMIT: u64 = 5 * 8 - 1;
pub const IDT: u64 = DESC + 0x100;
pub const IDT_ENTRIES: u64 = 64;
pub const TSS: u64 = DESC + 0x800;
pub const PML4: u64 = 0x8000;
pub const PDPT: u64 = 0x9000;
pub const PD: u64 = 0xa000;

/// The slot's pages in pool order (`pg::X_FIRST + slot * X_SLOT_PAGES + i`).
pub const LAYOUT: [u64; pg::X_SLOT_PAGES] = [
    0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000, 0x8000, 0x9000, 0xa000,
];

pub const CODE_SEL: u64 = 0x08;
pub const DATA_SEL: u64 = 0x10;
pub const TSS_SEL: u64 = 0x18;

/// The vector L2's UART interrupt handler sits at (ISA IRQ 4 + 32).
pub const UART_VECTOR: u8 = 0x24;
/// RAX of the VMCALLs that hand control back to L1. None is the ultracall
/// magic, so L0 reflects them to L1.
pub const EXIT_DONE: u64 = 0x44;
pub const EXIT_YIELD: u64 = 0x59;
pub const EXIT_EXC: u64 = 0x45;
/// RAX of `l2x_isr_pi`'s VMCALL: L1 ends the interrupt in the virtual
/// APIC for it (clears its ISR bit and SVI), as KVM's EOI emulation would.
pub const EXIT_EOI: u64 = 0x4f;
/// The vector the cross-CPU bench's IOAPIC entry gives COM1's pin.
pub const PI_VECTOR: u8 = 0x28;
/// The waiting vCPU's stack (the sending one's is below `STACK_TOP`).
pub const PI_WAIT_STACK: u64 = 0x6000;
/// The registers `l2x_fuzz` loads before each call and must find again.
pub const SENTINELS: [(usize, u64); 6] = [
    (1, 0x0b0b_b0b0_0b0b_b0b0), // rbx
    (6, 0x0bbb_bbbb_5555_aaaa), // rbp
    (11, 0x1212_1212_1212_1212),
    (12, 0x1313_1313_1313_1313),
    (13, 0x1414_1414_1414_1414),
    (14, 0x1515_1515_1515_1515),
];
pub const FUZZ_ENTRIES: usize = 32;
/// Fuzz entry: inputs RAX, RCX, RDX, RSI, RDI, R8-R11 at words 0-8;
/// outputs at words 16-30 in [`OUT_REGS`] order.
pub const FUZZ_OUT: usize = 16;
pub const OUT_REGS: [&str; 15] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
    "r15",
];

// Data page fields.
pub const D_LETTER: u64 = 0x00;
pub const D_DIGIT: u64 = 0x01;
/// Bit 0: RDRAND may be used.
pub const D_FLAGS: u64 = 0x08;
/// Bytes printed between two yields to L1 (0: never yield).
pub const D_CHUNK: u64 = 0x10;
/// The tag `x_register_tag` registers (32 bytes, NUL-padded).
pub const D_TAG: u64 = 0x20;
pub const D_TAG_STATUS: u64 = 0x40;
pub const D_TAG_ID: u64 = 0x48;
/// UART set-up: IER, LCR, MCR, FCR, SCR, DLL, DLM (bytes).
pub const D_UART: u64 = 0x50;
pub const D_DONE: u64 = 0x58;
/// Runs of the UART interrupt handler, and the IIR it last read.
pub const D_ISR: u64 = 0x60;
pub const D_IIR: u64 = 0x68;
/// Received bytes in `D_RX`; where the line being typed starts; where it ended.
pub const D_RX_N: u64 = 0x70;
pub const D_RX_START: u64 = 0x78;
pub const D_TIMEOUT: u64 = 0x80;
/// Registers read back after a restore: LCR, IER, MCR, SCR, LSR, DLL, DLM, IIR.
pub const D_READ: u64 = 0x88;
/// Vector + 1 of an unexpected exception.
pub const D_EXC: u64 = 0x90;
pub const D_N: u64 = 0x98;
pub const D_I: u64 = 0xa0;
pub const D_T_TX: u64 = 0xa8;
pub const D_T_SCR: u64 = 0xb0;
pub const D_T_PING: u64 = 0xb8;
pub const D_CR: u64 = 0xc0;
pub const D_N2: u64 = 0xc8;
pub const D_P: u64 = 0xd0;
pub const D_SINCE: u64 = 0xd8;
/// An owner key `x_register_tag` registers after the tag (OWNER_KEY_ADD,
/// read-write) when it is not all zeros; the status and key count after.
pub const D_OWNER_KEY: u64 = 0xe0;
pub const D_OWNER_STATUS: u64 = 0x1f0;
pub const D_OWNER_COUNT: u64 = 0x1f8;
/// The line `l2x_console` builds from its own randomness.
/// The cross-CPU posted interrupt (`l2x_pi_send`, `l2x_pi_wait`,
/// `l2x_isr_pi`): the waiting vCPU is ready for the next round; the TSC
/// its handler read; the sending vCPU is done; the sum of the rounds'
/// ticks.
pub const D_PI_READY: u64 = 0x300;
pub const D_PI_T1: u64 = 0x308;
pub const D_PI_STOP: u64 = 0x310;
pub const D_T_PI: u64 = 0x318;
pub const D_LINE: u64 = 0x100;
pub const LINE_LEN: u64 = 27;
pub const D_RX: u64 = 0x200;
pub const RX_CAP: u64 = 256;

// ---------------------------------------------------------------------------
// The blob.
core::arch::global_asm!(
    r#"
    .section .rodata.l2xblob, "a"
    .balign 16
    .global l2x_blob_start
l2x_blob_start:

// ---- text ----
x_s_shadow:
    .ascii "shadow-"
    .byte 0
x_s_console:
    .ascii "shadow-console "
x_s_console_end:
x_s_line:
    .ascii " line "
x_s_line_end:
x_s_crlf:
    .ascii "\r\n"
x_s_ready:
    .ascii "shadow-input ready>"
x_s_ready_end:
x_s_again:
    .ascii "shadow-input again>"
x_s_again_end:
x_s_echo:
    .ascii "\r\necho: "
x_s_echo_end:
x_s_before:
    .ascii "alpha: before save, type now>"
x_s_before_end:
x_s_after:
    .ascii "alpha: after restore, got: "
x_s_after_end:
x_s_beta:
    .ascii "beta: standing by\r\n"
x_s_beta_end:

    .set x_n_ready, x_s_ready_end - x_s_ready
    .set x_n_again, x_s_again_end - x_s_again
    .set x_n_echo, x_s_echo_end - x_s_echo
    .set x_n_before, x_s_before_end - x_s_before
    .set x_n_after, x_s_after_end - x_s_after
    .set x_n_beta, x_s_beta_end - x_s_beta
    .set x_n_console, x_s_console_end - x_s_console
    .set x_n_line, x_s_line_end - x_s_line

// ---- programs ----

    // Two fixed lines around one made of randomness L2 drew itself; yields
    // to L1 every D_CHUNK bytes.
    .global l2x_console
l2x_console:
    call x_register_tag
    call x_uart_init
    mov edi, {d} + {d_line}
    lea rsi, [rip + x_s_shadow]
    mov ecx, 7
    rep movsb
    mov al, byte ptr [{d} + {d_letter}]
    stosb
    mov al, '-'
    stosb
    call x_random
    call x_hex64
    mov ax, 0x0a0d
    stosw
    mov byte ptr [{d} + {d_digit}], '1'
    call x_fixed_line
    mov esi, {d} + {d_line}
    mov ecx, {line_len}
    call x_print
    mov byte ptr [{d} + {d_digit}], '2'
    call x_fixed_line
    mov byte ptr [{d} + {d_digit}], '3'
    call x_fixed_line
    mov qword ptr [{d} + {d_done}], 1
    jmp x_done

    // A prompt, then a line typed by the operator, received by interrupt
    // while L2 halts (HLT exits to L1); echoed. Again, while L2 spins with
    // interrupts enabled instead of halting.
    .global l2x_input
l2x_input:
    call x_register_tag
    call x_uart_init
    lea rsi, [rip + x_s_ready]
    mov ecx, offset x_n_ready
    call x_print
1:  sti
    hlt
    cli
    call x_have_line
    jc 1b
    call x_echo
    lea rsi, [rip + x_s_again]
    mov ecx, offset x_n_again
    call x_print
    mov rcx, [{d} + {d_n}]
    sti
2:  call x_have_line
    jnc 3f
    pause
    dec rcx
    jnz 2b
    cli
    mov qword ptr [{d} + {d_timeout}], 1
    jmp x_done
3:  cli
    call x_echo
    mov qword ptr [{d} + {d_done}], 1
    jmp x_done

    // Save/restore, VM A: tag, a UART in a non-default state, a prompt.
    .global l2x_sr_a
l2x_sr_a:
    call x_register_tag
    call x_uart_init
    lea rsi, [rip + x_s_before]
    mov ecx, offset x_n_before
    call x_print
    jmp x_done

    // Console lines 0 to 9, each after D_N ultracalls L0 refuses (no such
    // operation): a flood of L0's log lines between console frames.
    .global l2x_flood
l2x_flood:
    call x_register_tag
    call x_uart_init
    mov byte ptr [{d} + {d_digit}], '0'
1:  mov rbx, [{d} + {d_n}]
2:  mov rax, {magic}
    mov ecx, 0xffff
    mov edx, {version}
    xor esi, esi
    xor edi, edi
    vmcall
    dec rbx
    jnz 2b
    call x_fixed_line
    inc byte ptr [{d} + {d_digit}]
    cmp byte ptr [{d} + {d_digit}], '9' + 1
    jne 1b
    mov qword ptr [{d} + {d_done}], 1
    jmp x_done

    .global l2x_tag_only
l2x_tag_only:
    call x_register_tag
    jmp x_done

    .global l2x_sr_b
l2x_sr_b:
    call x_register_tag
    call x_uart_init
    lea rsi, [rip + x_s_beta]
    mov ecx, offset x_n_beta
    call x_print
    jmp x_done

    // One THR write: held while the devices are frozen.
    .global l2x_held
l2x_held:
    mov dx, 0x3f8
    mov al, '!'
    .global l2x_held_out
l2x_held_out:
    out dx, al
    jmp x_done

    // After a restore: read the UART back as it is (no set-up), take the
    // input that was left unread, say what it got.
    .global l2x_sr_check
l2x_sr_check:
    mov dx, 0x3fb
    in al, dx
    mov byte ptr [{d} + {d_read}], al
    mov dx, 0x3f9
    in al, dx
    mov byte ptr [{d} + {d_read} + 1], al
    mov dx, 0x3fc
    in al, dx
    mov byte ptr [{d} + {d_read} + 2], al
    mov dx, 0x3ff
    in al, dx
    mov byte ptr [{d} + {d_read} + 3], al
    mov dx, 0x3fd
    in al, dx
    mov byte ptr [{d} + {d_read} + 4], al
    mov dx, 0x3fa
    in al, dx
    mov byte ptr [{d} + {d_read} + 7], al
    mov dx, 0x3fb
    mov al, byte ptr [{d} + {d_read}]
    or al, 0x80
    out dx, al
    mov dx, 0x3f8
    in al, dx
    mov byte ptr [{d} + {d_read} + 5], al
    mov dx, 0x3f9
    in al, dx
    mov byte ptr [{d} + {d_read} + 6], al
    mov dx, 0x3fb
    mov al, byte ptr [{d} + {d_read}]
    out dx, al
    call x_drain
    lea rsi, [rip + x_s_after]
    mov ecx, offset x_n_after
    call x_print
    mov esi, {d} + {d_rx}
    mov rcx, [{d} + {d_rx_n}]
    call x_print
    lea rsi, [rip + x_s_crlf]
    mov ecx, 2
    call x_print
    mov qword ptr [{d} + {d_done}], 1
    jmp x_done

    // LSR into D_READ + 4 (reading it clears BI and OE), then done; the
    // UART's interrupts off first (IER = 0): the break's NUL in RBR would
    // keep its receive interrupt up, and L1 only looks.
    .global l2x_lsr
l2x_lsr:
    mov dx, 0x3f9
    xor eax, eax
    out dx, al
    mov dx, 0x3fd
    in al, dx
    mov byte ptr [{d} + {d_read} + 4], al
    mov qword ptr [{d} + {d_done}], 1
    jmp x_done

    // D_N calls from the table at TABLE, each with the sentinels loaded;
    // every register after the call is stored back into the entry.
    .global l2x_fuzz
l2x_fuzz:
    mov qword ptr [{d} + {d_i}], 0
1:  mov rax, [{d} + {d_i}]
    cmp rax, [{d} + {d_n}]
    jae 9f
    shl rax, 8
    add rax, {table}
    mov [{d} + {d_p}], rax
    mov rbx, {s_rbx}
    mov rbp, {s_rbp}
    mov r12, {s_r12}
    mov r13, {s_r13}
    mov r14, {s_r14}
    mov r15, {s_r15}
    mov rcx, [rax + 8]
    mov rdx, [rax + 16]
    mov rsi, [rax + 24]
    mov rdi, [rax + 32]
    mov r8, [rax + 40]
    mov r9, [rax + 48]
    mov r10, [rax + 56]
    mov r11, [rax + 64]
    mov rax, [rax]
    vmcall
    push rax
    mov rax, [{d} + {d_p}]
    pop qword ptr [rax + 128]
    mov [rax + 136], rbx
    mov [rax + 144], rcx
    mov [rax + 152], rdx
    mov [rax + 160], rsi
    mov [rax + 168], rdi
    mov [rax + 176], rbp
    mov [rax + 184], r8
    mov [rax + 192], r9
    mov [rax + 200], r10
    mov [rax + 208], r11
    mov [rax + 216], r12
    mov [rax + 224], r13
    mov [rax + 232], r14
    mov [rax + 240], r15
    inc qword ptr [{d} + {d_i}]
    jmp 1b
9:  mov qword ptr [{d} + {d_done}], 1
    jmp x_done

    // Costs of the shadow path seen from L2: D_N bytes out with LSR
    // polling, D_N2 reads of the scratch register, D_N2 pings.
    .global l2x_bench
l2x_bench:
    call x_register_tag
    call x_uart_init
    call x_tsc
    mov r12, rax
    mov r13, [{d} + {d_n}]
1:  mov al, '.'
    call x_putc
    dec r13
    jnz 1b
    call x_tsc
    sub rax, r12
    mov [{d} + {d_t_tx}], rax
    lea rsi, [rip + x_s_crlf]
    mov ecx, 2
    call x_print
    call x_tsc
    mov r12, rax
    mov r13, [{d} + {d_n2}]
    mov dx, 0x3ff
2:  in al, dx
    dec r13
    jnz 2b
    call x_tsc
    sub rax, r12
    mov [{d} + {d_t_scr}], rax
    call x_tsc
    mov r12, rax
    mov r13, [{d} + {d_n2}]
3:  mov rax, {magic}
    mov ecx, 1
    mov edx, {version}
    xor esi, esi
    xor edi, edi
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    vmcall
    dec r13
    jnz 3b
    call x_tsc
    sub rax, r12
    mov [{d} + {d_t_ping}], rax
    mov qword ptr [{d} + {d_done}], 1
    jmp x_done

    // The cross-CPU posted interrupt, sending side: L2 programs its
    // IOAPIC pin 4 (vector PI_VECTOR, fixed, edge, physical APIC ID 1;
    // each write exits to L1, which steps past the 2-byte MOV), then D_N
    // rounds: wait for the other vCPU, read the TSC, raise COM1's
    // THR-empty edge (IER's THRI off, then on), wait for the TSC the
    // other vCPU's handler read. D_T_PI: the sum of the differences.
    .global l2x_pi_send
l2x_pi_send:
    mov eax, 0xfec00000
    mov esi, 0x18
    mov dword ptr [rax], esi
    mov eax, 0xfec00010
    mov esi, {pi_vector}
    mov dword ptr [rax], esi
    mov eax, 0xfec00000
    mov esi, 0x19
    mov dword ptr [rax], esi
    mov eax, 0xfec00010
    mov esi, 0x01000000
    mov dword ptr [rax], esi
    mov dx, 0x3f9
    xor eax, eax
    out dx, al
    mov dx, 0x3fc
    mov al, 0x08
    out dx, al
    xor r8d, r8d
    mov rcx, [{d} + {d_n}]
1:  mov r10d, 200000000
2:  cmp qword ptr [{d} + {d_pi_ready}], 0
    jne 3f
    pause
    dec r10
    jnz 2b
    jmp 6f
3:  mov qword ptr [{d} + {d_pi_ready}], 0
    mov qword ptr [{d} + {d_pi_t1}], 0
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r9, rax
    mov dx, 0x3f9
    mov al, 0x02
    out dx, al
    mov r10d, 200000000
4:  mov rax, [{d} + {d_pi_t1}]
    test rax, rax
    jnz 5f
    pause
    dec r10
    jnz 4b
    jmp 6f
5:  sub rax, r9
    add r8, rax
    mov dx, 0x3f9
    xor eax, eax
    out dx, al
    dec rcx
    jnz 1b
    mov [{d} + {d_t_pi}], r8
    mov qword ptr [{d} + {d_done}], 1
    mov qword ptr [{d} + {d_pi_stop}], 1
    jmp x_done
6:  mov qword ptr [{d} + {d_timeout}], 1
    mov qword ptr [{d} + {d_pi_stop}], 1
    jmp x_done

    // The cross-CPU posted interrupt, receiving side: interrupts on until
    // the sending vCPU is done.
    .global l2x_pi_wait
l2x_pi_wait:
    mov qword ptr [{d} + {d_pi_ready}], 1
    sti
1:  pause
    cmp qword ptr [{d} + {d_pi_stop}], 0
    je 1b
    cli
    jmp x_done

    // Its handler: the TSC, then L1 ends the interrupt (EXIT_EOI). The
    // waiting program keeps nothing in registers: L1 sees what it gave
    // and the TSC.
    .global l2x_isr_pi
l2x_isr_pi:
    push rax
    push rdx
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [{d} + {d_pi_t1}], rax
    mov eax, {exit_eoi}
    vmcall
    mov qword ptr [{d} + {d_pi_ready}], 1
    pop rdx
    pop rax
    iretq

// ---- subroutines ----

    // Back to L1 for good (L1 may enter again at another entry point).
x_done:
    call x_zero
    mov eax, {exit_done}
    vmcall
    jmp x_done

    // Hands the CPU to L1 and carries on when L1 resumes L2.
x_yield:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    call x_zero
    mov eax, {exit_yield}
    vmcall
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    ret

x_zero:
    xor eax, eax
    xor ebx, ebx
    xor ecx, ecx
    xor edx, edx
    xor esi, esi
    xor edi, edi
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    ret

    // REGISTER_TAG with the tag at D_TAG; status and VM number to D_TAG_*.
x_register_tag:
    mov rax, {magic}
    mov ecx, 2
    mov edx, {version}
    xor esi, esi
    xor edi, edi
    mov r8, [{d} + {d_tag}]
    mov r9, [{d} + {d_tag} + 8]
    mov r10, [{d} + {d_tag} + 16]
    mov r11, [{d} + {d_tag} + 24]
    vmcall
    mov [{d} + {d_tag_status}], rax
    mov [{d} + {d_tag_id}], rsi
    mov rax, [{d} + {d_owner_key}]
    or rax, [{d} + {d_owner_key} + 8]
    or rax, [{d} + {d_owner_key} + 16]
    or rax, [{d} + {d_owner_key} + 24]
    jz 1f
    mov rax, {magic}
    mov ecx, 8
    mov edx, {version}
    mov esi, 2
    xor edi, edi
    mov r8, [{d} + {d_owner_key}]
    mov r9, [{d} + {d_owner_key} + 8]
    mov r10, [{d} + {d_owner_key} + 16]
    mov r11, [{d} + {d_owner_key} + 24]
    vmcall
    mov [{d} + {d_owner_status}], rax
    mov [{d} + {d_owner_count}], rsi
1:  ret

    // COM1 as D_UART says: divisor, LCR, FCR, MCR, SCR, then IER.
x_uart_init:
    mov dx, 0x3fb
    mov al, 0x80
    out dx, al
    mov dx, 0x3f8
    mov al, byte ptr [{d} + {d_uart} + 5]
    out dx, al
    mov dx, 0x3f9
    mov al, byte ptr [{d} + {d_uart} + 6]
    out dx, al
    mov dx, 0x3fb
    mov al, byte ptr [{d} + {d_uart} + 1]
    out dx, al
    mov dx, 0x3fa
    mov al, byte ptr [{d} + {d_uart} + 3]
    out dx, al
    mov dx, 0x3fc
    mov al, byte ptr [{d} + {d_uart} + 2]
    out dx, al
    mov dx, 0x3ff
    mov al, byte ptr [{d} + {d_uart} + 4]
    out dx, al
    mov dx, 0x3f9
    mov al, byte ptr [{d} + {d_uart}]
    out dx, al
    ret

    // AL out on COM1 once LSR says the transmitter holding register is empty.
x_putc:
    push rax
1:  mov dx, 0x3fd
    in al, dx
    test al, 0x20
    jz 1b
    pop rax
    mov dx, 0x3f8
    out dx, al
    ret

    // RCX bytes at RSI out on COM1, yielding every D_CHUNK bytes (counted
    // across calls in D_SINCE).
x_print:
    test rcx, rcx
    jz 3f
    push rbx
2:  lodsb
    call x_putc
    mov rbx, [{d} + {d_since}]
    inc rbx
    mov [{d} + {d_since}], rbx
    cmp rbx, [{d} + {d_chunk}]
    jne 4f
    mov qword ptr [{d} + {d_since}], 0
    call x_yield
4:  dec rcx
    jnz 2b
    pop rbx
3:  ret

    // "shadow-console <letter> line <digit>"
x_fixed_line:
    lea rsi, [rip + x_s_console]
    mov ecx, offset x_n_console
    call x_print
    mov esi, {d} + {d_letter}
    mov ecx, 1
    call x_print
    lea rsi, [rip + x_s_line]
    mov ecx, offset x_n_line
    call x_print
    mov esi, {d} + {d_digit}
    mov ecx, 1
    call x_print
    lea rsi, [rip + x_s_crlf]
    mov ecx, 2
    call x_print
    ret

x_tsc:
    lfence
    rdtsc
    shl rdx, 32
    or rax, rdx
    ret

    // RAX = 64 random bits: RDRAND (when D_FLAGS allows) mixed with the TSC.
x_random:
    push rcx
    push rdx
    call x_tsc
    mov rdx, 0x1e3779b97f4a7c15
    imul rax, rdx
    mov rdx, rax
    test byte ptr [{d} + {d_flags}], 1
    jz 3f
    mov ecx, 32
1:  rdrand rax
    jc 2f
    dec ecx
    jnz 1b
    mov rax, rdx
    jmp 3f
2:  xor rax, rdx
3:  pop rdx
    pop rcx
    ret

    // RAX as 16 hex digits at RDI (advanced); RAX comes back unchanged.
x_hex64:
    push rcx
    push rdx
    mov ecx, 16
1:  rol rax, 4
    mov edx, eax
    and edx, 15
    cmp edx, 10
    jb 2f
    add edx, 39
2:  add edx, 48
    mov [rdi], dl
    inc rdi
    dec ecx
    jnz 1b
    pop rdx
    pop rcx
    ret

    // Receiver data into D_RX while LSR.DR says there is some.
x_drain:
    push rax
    push rcx
    push rdx
1:  mov dx, 0x3fd
    in al, dx
    test al, 1
    jz 2f
    mov dx, 0x3f8
    in al, dx
    mov rcx, [{d} + {d_rx_n}]
    cmp rcx, {rx_cap} - 1
    jae 1b
    mov byte ptr [rcx + {d} + {d_rx}], al
    inc rcx
    mov [{d} + {d_rx_n}], rcx
    jmp 1b
2:  pop rdx
    pop rcx
    pop rax
    ret

    // CF clear when a CR ended a line at or after D_RX_START (its index in D_CR).
x_have_line:
    push rcx
    mov rcx, [{d} + {d_rx_start}]
1:  cmp rcx, [{d} + {d_rx_n}]
    jae 3f
    cmp byte ptr [rcx + {d} + {d_rx}], 13
    je 2f
    inc rcx
    jmp 1b
2:  mov [{d} + {d_cr}], rcx
    pop rcx
    clc
    ret
3:  pop rcx
    stc
    ret

    // "echo: <the line>"; the next line starts after its CR.
x_echo:
    lea rsi, [rip + x_s_echo]
    mov ecx, offset x_n_echo
    call x_print
    mov rsi, [{d} + {d_rx_start}]
    add rsi, {d} + {d_rx}
    mov rcx, [{d} + {d_cr}]
    sub rcx, [{d} + {d_rx_start}]
    call x_print
    lea rsi, [rip + x_s_crlf]
    mov ecx, 2
    call x_print
    mov rax, [{d} + {d_cr}]
    inc rax
    mov [{d} + {d_rx_start}], rax
    xor eax, eax
    ret

    // The UART's interrupt (no EOI: L1 injected it, no APIC is involved).
    .global l2x_isr_uart
l2x_isr_uart:
    push rax
    push rdx
    mov dx, 0x3fa
    in al, dx
    mov byte ptr [{d} + {d_iir}], al
    call x_drain
    inc qword ptr [{d} + {d_isr}]
    pop rdx
    pop rax
    iretq

    // Unexpected exceptions: the vector to D_EXC, then to L1.
    .global l2x_exc_ud
l2x_exc_ud:
    mov qword ptr [{d} + {d_exc}], 7
    jmp x_exc
    .global l2x_exc_df
l2x_exc_df:
    mov qword ptr [{d} + {d_exc}], 9
    jmp x_exc
    .global l2x_exc_gp
l2x_exc_gp:
    mov qword ptr [{d} + {d_exc}], 14
    jmp x_exc
    .global l2x_exc_pf
l2x_exc_pf:
    mov qword ptr [{d} + {d_exc}], 15
x_exc:
    call x_zero
    mov eax, {exit_exc}
    vmcall
    jmp x_exc

    .global l2x_blob_end
l2x_blob_end:
"#,
    d = const DATA,
    table = const TABLE,
    d_letter = const D_LETTER,
    d_digit = const D_DIGIT,
    d_flags = const D_FLAGS,
    d_chunk = const D_CHUNK,
    d_tag = const D_TAG,
    d_tag_status = const D_TAG_STATUS,
    d_tag_id = const D_TAG_ID,
    d_owner_key = const D_OWNER_KEY,
    d_owner_status = const D_OWNER_STATUS,
    d_owner_count = const D_OWNER_COUNT,
    d_uart = const D_UART,
    d_done = const D_DONE,
    d_isr = const D_ISR,
    d_iir = const D_IIR,
    d_rx_n = const D_RX_N,
    d_rx_start = const D_RX_START,
    d_timeout = const D_TIMEOUT,
    d_read = const D_READ,
    d_exc = const D_EXC,
    d_n = const D_N,
    d_n2 = const D_N2,
    d_i = const D_I,
    d_p = const D_P,
    d_since = const D_SINCE,
    d_cr = const D_CR,
    d_t_tx = const D_T_TX,
    d_t_scr = const D_T_SCR,
    d_t_ping = const D_T_PING,
    d_line = const D_LINE,
    line_len = const LINE_LEN,
    d_rx = const D_RX,
    rx_cap = const RX_CAP,
    magic = const ultracall_abi::ULTRACALL_MAGIC,
    version = const ultracall_abi::ABI_VERSION.to_raw(),
    exit_done = const EXIT_DONE,
    exit_yield = const EXIT_YIELD,
    exit_exc = const EXIT_EXC,
    exit_eoi = const EXIT_EOI,
    pi_vector = const PI_VECTOR,
    d_pi_ready = const D_PI_READY,
    d_pi_t1 = const D_PI_T1,
    d_pi_stop = const D_PI_STOP,
    d_t_pi = const D_T_PI,
    s_rbx = const SENTINELS[0].1,
    s_rbp = const SENTINELS[1].1,
    s_r12 = const SENTINELS[2].1,
    s_r13 = const SENTINELS[3].1,
    s_r14 = const SENTINELS[4].1,
    s_r15 = const SENTINELS[5].1,
);

extern "C" {
    static l2x_blob_start: u8;
    static l2x_blob_end: u8;
}

/// The L2 address of blob symbol `sym`.
pub fn at(sym: *const u8) -> u64 {
    let start = core::ptr::addr_of!(l2x_blob_start) as u64;
    CODE + (sym as u64 - start)
}

/// The L2 address of a 64-bit blob entry point: `l2x!(l2x_console)`.
#[macro_export]
macro_rules! l2x {
    ($sym:ident) => {{
        extern "C" {
            static $sym: u8;
        }
        #[allow(unused_unsafe)]
        // SAFETY: only the address of the blob symbol is taken.
        let p = unsafe { core::ptr::addr_of!($sym) };
        $crate::hv::l2x::at(p)
    }};
}

/// The L1 page behind L2 address `a` of `slot`.
pub fn backing(slot: usize, a: u64) -> u64 {
    assert!(slot < pg::X_SLOTS);
    let i = LAYOUT
        .iter()
        .position(|&p| p == a & !(PAGE - 1))
        .unwrap_or_else(|| panic!("{a:#x} is not in the 64-bit L2 layout"));
    mem::page(pg::X_FIRST + slot * pg::X_SLOT_PAGES + i) + (a & (PAGE - 1))
}

/// The L1 address of data-page field `off` of `slot`.
pub fn data(slot: usize, off: u64) -> u64 {
    backing(slot, DATA + off)
}

pub fn rd(slot: usize, off: u64) -> u64 {
    mem::rd64(data(slot, off))
}

pub fn wr(slot: usize, off: u64, v: u64) {
    mem::wr64(data(slot, off), v)
}

pub fn rd8(slot: usize, off: u64) -> u8 {
    mem::rd8(data(slot, off))
}

/// A 64-bit interrupt gate (SDM Vol. 3A 6.14.1): DPL 0, present, IST 0.
fn gate(handler: u64) -> [u64; 2] {
    [
        (handler & 0xffff) | CODE_SEL << 16 | 0x8e00 << 32 | (handler & 0xffff_0000) << 32,
        handler >> 32,
    ]
}

/// What an L2 program needs before it runs.
#[derive(Clone, Copy)]
pub struct Params<'a> {
    pub letter: u8,
    pub tag: &'a [u8],
    /// IER, LCR, MCR, FCR, SCR, DLL, DLM.
    pub uart: [u8; 7],
    pub chunk: u64,
}

/// The UART as a plain polled console would set it up: 115200 8N1, FIFOs
/// on, DTR|RTS, no interrupts.
pub const UART_POLLED: [u8; 7] = [0x00, 0x03, 0x03, 0x07, 0x00, 0x01, 0x00];

/// Lays out `slot`: zeroed pages, the blob, GDT/IDT/TSS, the page tables
/// and the parameters.
pub fn setup(slot: usize, p: &Params) {
    for &a in LAYOUT.iter() {
        mem::zero_page(backing(slot, a));
    }
    // SAFETY: only addresses are taken; the blob is read-only image data.
    let blob = unsafe {
        let s = core::ptr::addr_of!(l2x_blob_start);
        let e = core::ptr::addr_of!(l2x_blob_end);
        core::slice::from_raw_parts(s, e as usize - s as usize)
    };
    assert!(blob.len() as u64 <= CODE_PAGES * PAGE);
    for (i, chunk) in blob.chunks(PAGE as usize).enumerate() {
        mem::copy_in(backing(slot, CODE + i as u64 * PAGE), chunk);
    }
    // GDT: null, 64-bit code (L=1, D=0), data, busy 64-bit TSS (16 bytes).
    let tss_lo = 0x67 | (TSS & 0xff_ffff) << 16 | 0x8b << 40 | (TSS >> 24 & 0xff) << 56;
    for (i, d) in [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        tss_lo,
        TSS >> 32,
    ]
    .into_iter()
    .enumerate()
    {
        mem::wr64(backing(slot, GDT + 8 * i as u64), d);
    }
    let gates = [
        (6, l2x!(l2x_exc_ud)),
        (8, l2x!(l2x_exc_df)),
        (13, l2x!(l2x_exc_gp)),
        (14, l2x!(l2x_exc_pf)),
        (UART_VECTOR as u64, l2x!(l2x_isr_uart)),
        (PI_VECTOR as u64, l2x!(l2x_isr_pi)),
    ];
    for (v, h) in gates {
        let [lo, hi] = gate(h);
        mem::wr64(backing(slot, IDT + 16 * v), lo);
        mem::wr64(backing(slot, IDT + 16 * v + 8), hi);
    }
    // 4-level paging (SDM Vol. 3A 4.5): PML4[0] -> PDPT[0] -> PD[0], a
    // 2 MiB page at 0. L2-physical addresses: EPT12 maps them.
    mem::wr64(backing(slot, PML4), PDPT | 3);
    mem::wr64(backing(slot, PDPT), PD | 3);
    mem::wr64(backing(slot, PD), 0x83);
    // 3-4 GiB in one 1 GiB page, for the IOAPIC's page at 0xfec00000
    // (EPT12 does not map it: L2's writes there exit to L1).
    mem::wr64(backing(slot, PDPT + 3 * 8), 0xc000_0000 | 0x83);

    let d = |off| data(slot, off);
    mem::wr8(d(D_LETTER), p.letter);
    let rdrand = crate::io::cpuid(1, 0)[2] & (1 << 30) != 0;
    mem::wr64(d(D_FLAGS), rdrand as u64);
    mem::wr64(d(D_CHUNK), p.chunk);
    assert!(p.tag.len() <= 32);
    mem::copy_in(d(D_TAG), p.tag);
    for (i, &b) in p.uart.iter().enumerate() {
        mem::wr8(d(D_UART) + i as u64, b);
    }
}
