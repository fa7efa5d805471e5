//! What the next VM entry delivers or skips (SDM Vol. 3C 26.6, 28.2.4):
//! an exception to inject, an event whose delivery an exit interrupted,
//! and RIP moved past an instruction L0 carried out.

use super::exit::{event_type, InterruptionInfo};
use super::{Field as F, Vmcs};
use crate::regs::CR0_PE;

/// Blocking by STI and by MOV SS (interruptibility state bits 0 and 1).
const INTERRUPTIBILITY_STI_MOVSS: u64 = 3;

/// Queues a hardware exception for the next VM entry.
pub fn inject_exception(v: &mut impl Vmcs, vector: u8, error_code: Option<u32>) {
    // In real mode exceptions push no error code (SDM 26.2.1.3).
    let protected = v.read(F::GUEST_CR0) & CR0_PE != 0;
    let code = error_code.filter(|_| protected);
    v.write(
        F::VM_ENTRY_INTR_INFO_FIELD,
        InterruptionInfo::new(vector, event_type::HARDWARE_EXCEPTION, code.is_some()).0 as u64,
    );
    if let Some(c) = code {
        v.write(F::VM_ENTRY_EXCEPTION_ERROR_CODE, c as u64);
    }
}

/// Re-queues an event whose delivery the exit interrupted, when L0 handled
/// the exit itself (SDM 28.2.4: IDT-vectoring information).
pub fn reinject_interrupted_event(
    v: &mut impl Vmcs,
    idt_info: u32,
    idt_error: u32,
    instr_len: u32,
) {
    if idt_info & (1 << 31) == 0 {
        return;
    }
    // Bit 12 is undefined in IDT-vectoring information and reserved on entry.
    v.write(F::VM_ENTRY_INTR_INFO_FIELD, (idt_info & !(1 << 12)) as u64);
    if idt_info & (1 << 11) != 0 {
        v.write(F::VM_ENTRY_EXCEPTION_ERROR_CODE, idt_error as u64);
    }
    v.write(F::VM_ENTRY_INSTRUCTION_LEN, instr_len as u64);
}

/// Moves past the instruction that exited, as executing it would.
pub fn skip_instruction(v: &mut impl Vmcs) {
    let rip = v
        .read(F::GUEST_RIP)
        .wrapping_add(v.read(F::VM_EXIT_INSTRUCTION_LEN));
    v.write(F::GUEST_RIP, rip);
    let i = v.read(F::GUEST_INTERRUPTIBILITY_INFO);
    if i & INTERRUPTIBILITY_STI_MOVSS != 0 {
        v.write(
            F::GUEST_INTERRUPTIBILITY_INFO,
            i & !INTERRUPTIBILITY_STI_MOVSS,
        );
    }
}
