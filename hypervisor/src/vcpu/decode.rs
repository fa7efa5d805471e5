//! Just enough of an x86 decoder to read the value of an MMIO store: MOV
//! to memory from a register or an immediate (opcodes 88, 89, C6, C7), as
//! compilers emit for `writel()`/`writeb()`, and a 32-bit OR or AND into
//! memory (`reg |= bit`). L0 uses it to follow L2's IOAPIC programming on
//! its way to L1 (shadow/ioapic.rs) and to carry out L1's APIC writes
//! while it watches them (vcpu/apic_icr.rs); anything else is "not
//! understood".

/// The stored value, its width and the instruction's length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Store {
    pub value: u64,
    pub size: u8,
    pub len: u8,
}

/// An instruction with a memory operand, as far as both decoders need it.
struct MemOp {
    op: u8,
    /// ModRM's reg field with REX.R.
    reg: usize,
    /// The reg field alone (the opcode extension of 80-83, C6, C7).
    ext: u8,
    rex: u8,
    opsize16: bool,
    /// Bytes up to the immediate (prefixes, opcode, ModRM, SIB, displacement).
    len: usize,
}

/// Prefixes (segment overrides and 0x66, then at most one REX), a
/// one-byte opcode and a ModRM naming memory, with its addressing bytes.
fn mem_op(insn: &[u8]) -> Option<MemOp> {
    let mut i = 0;
    let mut opsize16 = false;
    let mut rex = 0u8;
    while let Some(&b) = insn.get(i) {
        match b {
            0x66 => opsize16 = true,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {}
            _ => break,
        }
        i += 1;
    }
    if let Some(&b) = insn.get(i) {
        if b & 0xf0 == 0x40 {
            rex = b;
            i += 1;
        }
    }
    let op = *insn.get(i)?;
    i += 1;
    let modrm = *insn.get(i)?;
    i += 1;
    let (md, r, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    if md == 3 {
        return None; // a register destination: not a store
    }
    if rm == 4 {
        let sib = *insn.get(i)?;
        i += 1;
        if md == 0 && sib & 7 == 5 {
            i += 4;
        }
    }
    i += match (md, rm) {
        (0, 5) => 4, // RIP-relative disp32
        (0, _) => 0,
        (1, _) => 1,
        _ => 4,
    };
    Some(MemOp {
        op,
        reg: (r | (rex & 4) << 1) as usize,
        ext: r,
        rex,
        opsize16,
        len: i,
    })
}

/// A 32-bit OR or AND into memory (09, 21, 81 /1 and /4, 83 /1 and /4),
/// as compilers emit for `reg |= bit` on a device register: the value it
/// stores when memory held `current`. None for anything else.
pub fn alu_store(insn: &[u8], reg: impl Fn(usize) -> u64, current: u32) -> Option<Store> {
    let m = mem_op(insn)?;
    if m.opsize16 || m.rex & 8 != 0 {
        return None;
    }
    let imm32 = |at: usize| {
        insn.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (or, operand, len) = match (m.op, m.ext) {
        (0x09, _) => (true, reg(m.reg) as u32, m.len),
        (0x21, _) => (false, reg(m.reg) as u32, m.len),
        (0x81, 1) => (true, imm32(m.len)?, m.len + 4),
        (0x81, 4) => (false, imm32(m.len)?, m.len + 4),
        (0x83, 1) => (true, *insn.get(m.len)? as i8 as i32 as u32, m.len + 1),
        (0x83, 4) => (false, *insn.get(m.len)? as i8 as i32 as u32, m.len + 1),
        _ => return None,
    };
    let value = if or {
        current | operand
    } else {
        current & operand
    };
    Some(Store {
        value: u64::from(value),
        size: 4,
        len: u8::try_from(len).ok().filter(|&n| n <= 15)?,
    })
}

/// Decodes the instruction at the start of `insn` (64-bit mode) and
/// returns what it stores; `reg(n)` gives general register n (0 = RAX ...
/// 15 = R15).
pub fn mov_store(insn: &[u8], reg: impl Fn(usize) -> u64) -> Option<Store> {
    let m = mem_op(insn)?;
    let (op, rex, opsize16, i, r) = (m.op, m.rex, m.opsize16, m.len, m.ext);
    let size = match op {
        0x88 | 0xc6 => 1,
        0x89 | 0xc7 if rex & 8 != 0 => 8,
        0x89 | 0xc7 if opsize16 => 2,
        0x89 | 0xc7 => 4,
        _ => return None,
    };
    let mask = if size == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    };
    let imm_len = match (op, size) {
        (0x88 | 0x89, _) => 0,
        (_, 1) => 1,
        (_, 2) => 2,
        _ => 4,
    };
    let len = u8::try_from(i + imm_len).ok().filter(|&n| n <= 15)?;
    let value = match op {
        0x88 | 0x89 => {
            let n = m.reg;
            if size == 1 && rex == 0 && (4..8).contains(&n) {
                reg(n - 4) >> 8 // AH, CH, DH, BH
            } else {
                reg(n)
            }
        }
        _ if r != 0 => return None, // C6/C7 with reg != 0 is not MOV
        _ => {
            let imm = match size {
                1 => *insn.get(i)? as u64,
                2 => u16::from_le_bytes(insn.get(i..i + 2)?.try_into().ok()?) as u64,
                // A 64-bit store sign-extends its 32-bit immediate.
                8 => i32::from_le_bytes(insn.get(i..i + 4)?.try_into().ok()?) as i64 as u64,
                _ => u32::from_le_bytes(insn.get(i..i + 4)?.try_into().ok()?) as u64,
            };
            imm
        }
    };
    Some(Store {
        value: value & mask,
        size,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(n: usize) -> u64 {
        0x1111_1111_0000_0000 | (n as u64 * 0x0101) | 0x8000
    }

    #[test]
    fn register_stores() {
        // mov %esi,(%rax)
        assert_eq!(
            mov_store(&[0x89, 0x30], regs),
            Some(Store {
                value: regs(6) & 0xffff_ffff,
                size: 4,
                len: 2
            })
        );
        // mov %r9d,0x10(%rdx)
        assert_eq!(
            mov_store(&[0x44, 0x89, 0x4a, 0x10], regs),
            Some(Store {
                value: regs(9) & 0xffff_ffff,
                size: 4,
                len: 4
            })
        );
        // mov %rax,(%rcx)  (REX.W)
        assert_eq!(
            mov_store(&[0x48, 0x89, 0x01], regs),
            Some(Store {
                value: regs(0),
                size: 8,
                len: 3
            })
        );
        // mov %ax,(%rbx)
        assert_eq!(mov_store(&[0x66, 0x89, 0x03], regs).unwrap().size, 2);
        // mov %ah,(%rdi) and, with REX, %spl
        assert_eq!(
            mov_store(&[0x88, 0x27], regs),
            Some(Store {
                value: (regs(0) >> 8) & 0xff,
                size: 1,
                len: 2
            })
        );
        assert_eq!(
            mov_store(&[0x40, 0x88, 0x27], regs),
            Some(Store {
                value: regs(4) & 0xff,
                size: 1,
                len: 3
            })
        );
        // mov %edx,0x10(%rax,%rcx,4): SIB with disp8
        assert_eq!(
            mov_store(&[0x89, 0x54, 0x88, 0x10], regs).unwrap().value,
            regs(2) & 0xffff_ffff
        );
    }

    #[test]
    fn or_and_and_into_memory() {
        // orl $0x100,0xf0(%r14)
        let s = alu_store(&[0x41, 0x81, 0x8e, 0xf0, 0, 0, 0, 0, 1, 0, 0], regs, 0xff).unwrap();
        assert_eq!((s.value, s.size, s.len), (0x1ff, 4, 11));
        // andl $-2,(%rax): 83 /4 with a sign-extended imm8
        let s = alu_store(&[0x83, 0x20, 0xfe], regs, 0x1ff).unwrap();
        assert_eq!((s.value, s.len), (0x1fe, 3));
        // orl $0x10,0x10(%rdx): 83 /1
        assert_eq!(
            alu_store(&[0x83, 0x4a, 0x10, 0x10], regs, 1).unwrap().value,
            0x11
        );
        // or %esi,(%rax) and and %esi,(%rax)
        assert_eq!(
            alu_store(&[0x09, 0x30], regs, 0).unwrap().value,
            regs(6) & 0xffff_ffff
        );
        assert_eq!(
            alu_store(&[0x21, 0x30], regs, 0xffff_ffff).unwrap().value,
            regs(6) & 0xffff_ffff
        );
        // Not understood: ADD, a 64-bit or 16-bit OR, a register destination.
        assert_eq!(alu_store(&[0x83, 0x00, 0x01], regs, 0), None);
        assert_eq!(alu_store(&[0x48, 0x83, 0x08, 0x01], regs, 0), None);
        assert_eq!(alu_store(&[0x66, 0x83, 0x08, 0x01], regs, 0), None);
        assert_eq!(alu_store(&[0x83, 0xc8, 0x01], regs, 0), None);
    }

    #[test]
    fn immediate_stores() {
        // movl $0x24,(%rax)
        assert_eq!(
            mov_store(&[0xc7, 0x00, 0x24, 0, 0, 0], regs),
            Some(Store {
                value: 0x24,
                size: 4,
                len: 6
            })
        );
        // movl $0x10018,0x10(%rdx)  disp8 then imm32
        assert_eq!(
            mov_store(&[0xc7, 0x42, 0x10, 0x18, 0x00, 0x01, 0x00], regs)
                .unwrap()
                .value,
            0x10018
        );
        // movl $1,0x12345678(%rip)
        let s = mov_store(&[0xc7, 0x05, 0x78, 0x56, 0x34, 0x12, 1, 0, 0, 0], regs).unwrap();
        assert_eq!((s.value, s.len), (1, 10));
        // movl $7,(,%rax,1)-style SIB with base 5 and mod 0: disp32
        let s = mov_store(&[0xc7, 0x04, 0x05, 0, 0, 0xc0, 0xfe, 7, 0, 0, 0], regs).unwrap();
        assert_eq!((s.value, s.len), (7, 11));
        // movb $0x5a,(%rcx)
        assert_eq!(
            mov_store(&[0xc6, 0x01, 0x5a], regs),
            Some(Store {
                value: 0x5a,
                size: 1,
                len: 3
            })
        );
        // movq $-1,(%rax) sign-extends
        assert_eq!(
            mov_store(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff], regs)
                .unwrap()
                .value,
            u64::MAX
        );
    }

    #[test]
    fn everything_else_is_not_understood() {
        assert_eq!(mov_store(&[0x89, 0xc0], regs), None, "register to register");
        assert_eq!(mov_store(&[0x8b, 0x00], regs), None, "a load");
        assert_eq!(mov_store(&[0xc7, 0x08, 1, 0, 0, 0], regs), None, "C7 /1");
        assert_eq!(mov_store(&[0xc7, 0x00, 1], regs), None, "truncated");
        assert_eq!(mov_store(&[], regs), None);
        assert_eq!(mov_store(&[0x66, 0x66, 0x66], regs), None);
    }
}
