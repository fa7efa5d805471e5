//! Operands of VMX instructions that exited: the VM-exit instruction
//! information (SDM Vol. 3C 28.2.5, Tables 28-13/28-14) and the
//! displacement in the exit qualification give the register or memory
//! operand; for memory, the linear address with the segmentation checks
//! the CPU would have applied (SDM Vol. 3A 5.3, 3.4.5).

/// The instruction-information field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstrInfo(pub u32);

impl InstrInfo {
    pub fn scale(self) -> u64 {
        1 << (self.0 & 3)
    }
    /// The register of a register operand (VMREAD/VMWRITE r/m).
    pub fn reg1(self) -> u8 {
        ((self.0 >> 3) & 0xf) as u8
    }
    /// Address size in bytes: 2, 4 or 8.
    pub fn address_bytes(self) -> u64 {
        match (self.0 >> 7) & 7 {
            0 => 2,
            1 => 4,
            _ => 8,
        }
    }
    /// The mask of an address of the instruction's address size; outside
    /// 64-bit mode at most 32 bits.
    pub fn address_mask(self, long_mode: bool) -> u64 {
        let asize = if long_mode {
            self.address_bytes()
        } else {
            self.address_bytes().min(4)
        };
        if asize == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * asize)) - 1
        }
    }
    pub fn is_register(self) -> bool {
        self.0 & (1 << 10) != 0
    }
    pub fn segment(self) -> usize {
        ((self.0 >> 15) & 7) as usize
    }
    pub fn index(self) -> Option<u8> {
        (self.0 & (1 << 22) == 0).then_some(((self.0 >> 18) & 0xf) as u8)
    }
    pub fn base(self) -> Option<u8> {
        (self.0 & (1 << 27) == 0).then_some(((self.0 >> 23) & 0xf) as u8)
    }
    /// The second register operand (VMREAD/VMWRITE field, INVEPT/INVVPID type).
    pub fn reg2(self) -> u8 {
        ((self.0 >> 28) & 0xf) as u8
    }
}

/// Segment registers in the encoding order of the instruction information.
pub const ES: usize = 0;
pub const CS: usize = 1;
pub const SS: usize = 2;
pub const FS: usize = 4;
pub const GS: usize = 5;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    /// VMCS access-rights format (SDM 25.4.1).
    pub ar: u32,
}

const AR_UNUSABLE: u32 = 1 << 16;

/// What the operand decoder needs of the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestCtx {
    pub gpr: [u64; 16],
    /// ES, CS, SS, DS, FS, GS.
    pub segs: [Segment; 6],
    /// 64-bit mode: IA32_EFER.LMA and CS.L.
    pub long_mode: bool,
    /// 57-bit linear addresses (CR4.LA57).
    pub la57: bool,
}

/// A fault the access raises: vector and error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    pub error_code: u32,
}

pub const GP: u8 = 13;
pub const SS_FAULT: u8 = 12;

impl GuestCtx {
    fn fault(&self, seg: usize) -> Fault {
        Fault {
            vector: if seg == SS { SS_FAULT } else { GP },
            error_code: 0,
        }
    }

    pub fn is_canonical(&self, a: u64) -> bool {
        let bits = if self.la57 { 57 } else { 48 };
        let top = a as i64 >> (bits - 1);
        top == 0 || top == -1
    }

    /// The linear address of a memory operand of `size` bytes.
    pub fn linear_address(
        &self,
        info: InstrInfo,
        displacement: u64,
        size: u64,
        write: bool,
    ) -> Result<u64, Fault> {
        let amask = info.address_mask(self.long_mode);
        let mut ea = displacement;
        if let Some(b) = info.base() {
            ea = ea.wrapping_add(self.gpr[b as usize]);
        }
        if let Some(i) = info.index() {
            ea = ea.wrapping_add(self.gpr[i as usize].wrapping_mul(info.scale()));
        }
        let ea = ea & amask;
        let seg = info.segment().min(5);
        let s = self.segs[seg];
        if self.long_mode {
            let base = if seg == FS || seg == GS { s.base } else { 0 };
            let la = base.wrapping_add(ea);
            if !self.is_canonical(la) || !self.is_canonical(la.wrapping_add(size - 1)) {
                return Err(self.fault(seg));
            }
            return Ok(la);
        }
        // Protected mode: usable, right type, within the limit.
        if s.ar & AR_UNUSABLE != 0 {
            return Err(self.fault(seg));
        }
        let code = s.ar & (1 << 3) != 0;
        let rw = s.ar & (1 << 1) != 0;
        if (write && (code || !rw)) || (!write && code && !rw) {
            return Err(self.fault(seg));
        }
        let last = ea.wrapping_add(size - 1);
        let expand_down = !code && s.ar & (1 << 2) != 0;
        let ok = if expand_down {
            let top = if s.ar & (1 << 14) != 0 {
                0xffff_ffff
            } else {
                0xffff
            };
            ea > s.limit as u64 && last <= top && last >= ea
        } else {
            last <= s.limit as u64 && last >= ea
        };
        if !ok {
            return Err(self.fault(seg));
        }
        Ok((s.base.wrapping_add(ea)) & 0xffff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(scale: u32, asize: u32, seg: u32, index: Option<u32>, base: Option<u32>) -> InstrInfo {
        let mut v = scale | asize << 7 | seg << 15;
        v |= match index {
            Some(i) => i << 18,
            None => 1 << 22,
        };
        v |= match base {
            Some(b) => b << 23,
            None => 1 << 27,
        };
        InstrInfo(v)
    }

    fn long() -> GuestCtx {
        let mut g = GuestCtx {
            long_mode: true,
            ..Default::default()
        };
        g.gpr[3] = 0x1000; // rbx
        g.gpr[6] = 0x10; // rsi
        g.segs[GS].base = 0xffff_8000_0000_0000;
        g.segs[DS_FOR_TEST].base = 0x5000_0000; // ignored in 64-bit mode
        g
    }
    const DS_FOR_TEST: usize = 3;

    #[test]
    fn fields() {
        let i = InstrInfo(0x7000_0000 | 1 << 10 | 5 << 3 | 2 << 7);
        assert!(i.is_register());
        assert_eq!((i.reg1(), i.reg2(), i.address_bytes()), (5, 7, 8));
        let m = info(3, 2, 3, Some(6), Some(3));
        assert_eq!(
            (m.scale(), m.index(), m.base(), m.segment()),
            (8, Some(6), Some(3), 3)
        );
    }

    #[test]
    fn long_mode_addresses() {
        let g = long();
        // [rbx + rsi*8 + 0x20] in DS: segment base ignored.
        assert_eq!(
            g.linear_address(info(3, 2, 3, Some(6), Some(3)), 0x20, 8, false),
            Ok(0x10a0)
        );
        // gs:[rbx]: GS base counts.
        assert_eq!(
            g.linear_address(info(0, 2, 5, None, Some(3)), 0, 8, false),
            Ok(0xffff_8000_0000_1000)
        );
        // Negative displacement wraps.
        assert_eq!(
            g.linear_address(info(0, 2, 3, None, Some(3)), (-0x10i64) as u64, 8, false),
            Ok(0xff0)
        );
        // 32-bit address size (67h) truncates the effective address.
        let mut h = long();
        h.gpr[3] = 0x1_0000_1000;
        assert_eq!(
            h.linear_address(info(0, 1, 3, None, Some(3)), 0, 8, false),
            Ok(0x1000)
        );
    }

    #[test]
    fn non_canonical_faults() {
        let mut g = long();
        g.gpr[3] = 0x0000_8000_0000_0000;
        assert_eq!(
            g.linear_address(info(0, 2, 3, None, Some(3)), 0, 8, false),
            Err(Fault {
                vector: GP,
                error_code: 0
            })
        );
        assert_eq!(
            g.linear_address(info(0, 2, SS as u32, None, Some(3)), 0, 8, false),
            Err(Fault {
                vector: SS_FAULT,
                error_code: 0
            })
        );
        g.gpr[3] = 0x0000_7fff_ffff_fffc;
        assert!(
            g.linear_address(info(0, 2, 3, None, Some(3)), 0, 8, false)
                .is_err(),
            "operand crosses the hole"
        );
        g.la57 = true;
        assert!(g
            .linear_address(info(0, 2, 3, None, Some(3)), 0, 8, false)
            .is_ok());
    }

    #[test]
    fn protected_mode_segments() {
        let mut g = GuestCtx::default();
        g.gpr[0] = 0xff8;
        g.segs[3] = Segment {
            base: 0x10_0000,
            limit: 0xfff,
            ar: 0x93,
        };
        assert_eq!(
            g.linear_address(info(0, 1, 3, None, Some(0)), 0, 8, false),
            Ok(0x10_0ff8)
        );
        assert!(
            g.linear_address(info(0, 1, 3, None, Some(0)), 4, 8, false)
                .is_err(),
            "beyond the limit"
        );
        // Read-only data segment: write faults, read works.
        g.segs[3].ar = 0x91;
        assert!(g
            .linear_address(info(0, 1, 3, None, Some(0)), 0, 8, true)
            .is_err());
        assert!(g
            .linear_address(info(0, 1, 3, None, Some(0)), 0, 8, false)
            .is_ok());
        // Unusable segment.
        g.segs[3].ar = AR_UNUSABLE;
        assert!(g
            .linear_address(info(0, 1, 3, None, Some(0)), 0, 8, false)
            .is_err());
        // Expand-down: offsets above the limit are valid.
        g.segs[3] = Segment {
            base: 0,
            limit: 0xfff,
            ar: 0x4097,
        };
        assert!(g
            .linear_address(info(0, 1, 3, None, Some(0)), 0x10, 8, false)
            .is_ok());
        assert!(g
            .linear_address(info(0, 1, 3, None, Some(0)), 0, 8, false)
            .is_err());
    }
}
