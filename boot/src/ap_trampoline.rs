//! The trampoline that takes an application processor from a start-up IPI
//! to long mode (SDM Vol. 3A 9.4.4), shared by L0 (`arch/ap_boot.rs`) and
//! the scenario guests' test hypervisor (`tests/guest/src/smp.rs`).
//!
//! The starting CPU copies the bytes between `ap_trampoline_start` and
//! `ap_trampoline_end` to a page below 1 MiB, leaves the [`param`]s in
//! that page and sends start-up IPIs naming it. The AP runs from real mode
//! (CS = vector << 8, IP = 0) to protected mode with the trampoline's flat
//! GDT, to long mode under the tables in [`param::CR3`], and jumps to
//! [`param::ENTRY`] with RBX = the page's address and no stack: each image
//! has its own 64-bit entry (L0 switches to its own tables before it
//! touches a stack its temporary tables do not map). EBX holds the page's
//! address throughout: the code runs wherever it is copied.

/// Offsets in the trampoline's page of what the starting CPU leaves for
/// one AP (the code stays below [`param::CR3`]).
pub mod param {
    /// The page tables to enter long mode under (below 4 GiB; they must
    /// identity-map the trampoline's page).
    pub const CR3: usize = 0xf00;
    /// The AP's stack top, for the image's entry.
    pub const STACK: usize = 0xf08;
    /// The argument of the AP's main function, for the image's entry.
    pub const ARG: usize = 0xf10;
    /// The image's 64-bit entry (mapped by [`CR3`]'s tables).
    pub const ENTRY: usize = 0xf18;
    /// Bits set in IA32_EFER besides LME (NXE where the tables use XD).
    pub const EFER: usize = 0xf20;
    /// Bits set in CR0 besides PG and PE (WP, NE: what the image needs).
    pub const CR0: usize = 0xf28;
    /// The first offset the image may use for itself.
    pub const FREE: usize = 0xf30;
}

/// IA32_EFER.LME, always set.
pub const EFER_LME: u64 = 1 << 8;
/// CR0.PG | CR0.PE, always set.
pub const CR0_PG_PE: u64 = 0x8000_0001;

/// Writes `value` at `offset` of a trampoline page being prepared.
pub fn put(page: &mut [u8], offset: usize, value: u64) {
    page[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .pushsection .rodata.ap_trampoline, "a"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .code16
ap_trampoline_start:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    movzwl %ax, %ebx
    shll $4, %ebx
    leal (ap_tr_gdt - ap_trampoline_start)(%ebx), %eax
    movl %eax, (ap_tr_gdtr - ap_trampoline_start + 2)
    leal (ap_tr_pm32 - ap_trampoline_start)(%ebx), %eax
    movl %eax, (ap_tr_far32 - ap_trampoline_start)
    lgdtl (ap_tr_gdtr - ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *(ap_tr_far32 - ap_trampoline_start)

    .code32
ap_tr_pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x20, %eax                 # PAE
    movl %eax, %cr4
    movl 0xf00(%ebx), %eax          # param::CR3
    movl %eax, %cr3
    movl $0xc0000080, %ecx          # IA32_EFER: LME and param::EFER
    rdmsr
    orl $0x100, %eax
    orl 0xf20(%ebx), %eax
    wrmsr
    movl %cr0, %eax
    andl $0x9fffffff, %eax          # caches on: INIT left CD and NW set
    orl $0x80000001, %eax           # PG, PE and param::CR0
    orl 0xf28(%ebx), %eax
    movl %eax, %cr0
    leal (ap_tr_lm64 - ap_trampoline_start)(%ebx), %eax
    movl %eax, (ap_tr_far64 - ap_trampoline_start)(%ebx)
    ljmpl *(ap_tr_far64 - ap_trampoline_start)(%ebx)

    .code64
ap_tr_lm64:
    movl %ebx, %ebx
    jmpq *0xf18(%rbx)               # param::ENTRY, RBX = the page

    .balign 8
ap_tr_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff        # 0x08: 32-bit code
    .quad 0x00cf92000000ffff        # 0x10: data
    .quad 0x00af9a000000ffff        # 0x18: 64-bit code
ap_tr_gdtr:
    .word 4 * 8 - 1
    .long 0
ap_tr_far32:
    .long 0
    .word 0x08
ap_tr_far64:
    .long 0
    .word 0x18
ap_trampoline_end:
    .popsection
"#,
    options(att_syntax)
);

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameters follow one another, 8 bytes each, in the page's
    /// last 256 bytes (the offsets the asm reads are these).
    #[test]
    fn parameters_sit_apart_at_the_end_of_the_page() {
        let all = [
            param::CR3,
            param::STACK,
            param::ARG,
            param::ENTRY,
            param::EFER,
            param::CR0,
            param::FREE,
        ];
        assert!(all.windows(2).all(|w| w[1] == w[0] + 8));
        assert_eq!(all, [0xf00, 0xf08, 0xf10, 0xf18, 0xf20, 0xf28, 0xf30]);
        let mut page = [0u8; 4096];
        put(&mut page, param::ENTRY, 0x1122_3344_5566_7788);
        assert_eq!(page[0xf18..0xf20], 0x1122_3344_5566_7788u64.to_le_bytes());
    }
}
