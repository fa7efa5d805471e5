//! The 32-bit entry shared by L0 (multiboot2, started by GRUB) and the
//! scenario guests (multiboot v1, started by L0): check for long mode, map
//! the first 4 GiB twice (identity, and the top 2 GiB window for kernels
//! linked at -2 GiB), enter 64-bit mode and call
//! `kernel_main(magic: u32, info: u32) -> !` on `__boot_stack_top`.
//!
//! Each image's linker script places `.text.boot`, `.rodata.boot` and
//! `.bss.boot` at identity addresses below 4 GiB and defines
//! `__boot_stack_top` (which may be a high address).

/// Puts a multiboot2 header (specification 3.1) into the calling image:
/// magic, architecture 0 (i386), length, checksum, a module-alignment tag
/// (page-aligned modules) and the end tag. The image's linker script keeps
/// `.multiboot2_header` in the first 32 KiB.
#[macro_export]
macro_rules! multiboot2_header {
    () => {
        core::arch::global_asm!(
            r#"
            .section .multiboot2_header, "a"
            .balign 8
        mb2_header:
            .long 0xe85250d6
            .long 0
            .long mb2_header_end - mb2_header
            .long -(0xe85250d6 + (mb2_header_end - mb2_header))
            .balign 8
            .short 6, 0
            .long 8
            .balign 8
            .short 0, 0
            .long 8
        mb2_header_end:
        "#,
            options(att_syntax)
        );
    };
}

/// Puts a multiboot (v1) header (specification 3.1.1) into the calling
/// image: flags 0 (page-align modules) and 1 (memory information), no
/// a.out kludge, so the loader uses the ELF headers.
#[macro_export]
macro_rules! multiboot1_header {
    () => {
        core::arch::global_asm!(
            r#"
            .section .multiboot1_header, "a"
            .balign 4
            .long 0x1badb002
            .long 0x3
            .long -(0x1badb002 + 0x3)
        "#,
            options(att_syntax)
        );
    };
}

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .code32
    .global _start
_start:
    cli
    cld
    mov %eax, %ebp              # boot magic
    mov %ebx, %esi              # boot information

    mov $0x80000000, %eax       # long mode needs CPUID 0x80000001.EDX[29]
    cpuid
    cmp $0x80000001, %eax
    jb .Lno_long_mode
    mov $0x80000001, %eax
    cpuid
    bt $29, %edx
    jnc .Lno_long_mode

    # The loader need not zero this section.
    mov $boot_pml4, %edi
    xor %eax, %eax
    mov $(7 * 1024), %ecx
    rep stosl
    # 2048 2-MiB identity pages: the first 4 GiB.
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax              # present, writable, 2 MiB
    mov %eax, boot_pd(,%ecx,8)
    movl $0, boot_pd+4(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 1b
    mov $boot_pd + 3, %eax
    mov %eax, boot_pdpt
    add $0x1000, %eax
    mov %eax, boot_pdpt + 8
    add $0x1000, %eax
    mov %eax, boot_pdpt + 16
    add $0x1000, %eax
    mov %eax, boot_pdpt + 24
    # PML4[511] -> PDPT[510] -> the first GiB: the -2 GiB kernel window.
    mov $boot_pd + 3, %eax
    mov %eax, boot_pdpt_high + 510 * 8
    mov $boot_pdpt + 3, %eax
    mov %eax, boot_pml4
    mov $boot_pdpt_high + 3, %eax
    mov %eax, boot_pml4 + 511 * 8

    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $(1 << 5), %eax          # PAE
    mov %eax, %cr4
    mov $0xc0000080, %ecx       # IA32_EFER.LME
    rdmsr
    or $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax        # PG | PE
    mov %eax, %cr0
    lgdt boot_gdt_pointer
    ljmp $0x08, $.Llong_mode

.Lno_long_mode:
    # No stack, no UART set-up: write straight to COM1 and COM2.
    mov $boot_no_long_mode, %esi
2:  movb (%esi), %al
    test %al, %al
    jz 3f
    mov $0x3f8, %dx
    outb %al, %dx
    mov $0x2f8, %dx
    outb %al, %dx
    inc %esi
    jmp 2b
3:  cli
    hlt
    jmp 3b

    .code64
.Llong_mode:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    movabs $__boot_stack_top, %rsp
    mov %ebp, %edi              # first argument, zero-extended: upper
    mov %esi, %esi              # halves are undefined after the switch
    movabs $kernel_main, %rax
    call *%rax
4:  cli
    hlt
    jmp 4b

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    # 0x08: 64-bit code
    .quad 0x00cf92000000ffff    # 0x10: data
boot_gdt_pointer:
    .short boot_gdt_pointer - boot_gdt - 1
    .long boot_gdt
boot_no_long_mode:
    .asciz "boot: this CPU has no long mode (CPUID 0x80000001.EDX[29]); halted\r\n"

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:      .skip 4096
boot_pdpt:      .skip 4096
boot_pdpt_high: .skip 4096
boot_pd:        .skip 4 * 4096
"#,
    options(att_syntax)
);
