//! VMXON, VMXOFF, VMCLEAR, VMPTRLD, VMPTRST, VMREAD, VMWRITE, INVEPT and
//! INVVPID executed by L1 (SDM Vol. 3C chapter 31, each instruction's
//! "Operation"). Each handler starts with the checks common to VMX
//! instructions and ends in one [`Outcome`]; RFLAGS conventions are applied
//! in one place ([`rflags_after`]).

use alloc::boxed::Box;

use super::caps::NestedCaps;
use super::operand::{Fault, GuestCtx, InstrInfo, GP};
use super::vmcs12::{Vmcs12, REGION_BYTES};
use crate::guest_mem::walk::{self, Access, PagingRegs, WalkError};
use crate::guest_mem::GuestMemory;
use crate::regs::EFER_LMA;
use crate::vmx::caps::{ept_vpid, misc, primary, secondary, Control};
use crate::vmx::Field;

const UD: u8 = 6;

/// VM-instruction error numbers (SDM 31.4).
pub mod err {
    pub const VMCLEAR_INVALID_ADDRESS: u32 = 2;
    pub const VMCLEAR_VMXON_POINTER: u32 = 3;
    pub const VMLAUNCH_NONCLEAR: u32 = 4;
    pub const VMRESUME_NONLAUNCHED: u32 = 5;
    pub const ENTRY_INVALID_CONTROL: u32 = 7;
    pub const ENTRY_INVALID_HOST_STATE: u32 = 8;
    pub const VMPTRLD_INVALID_ADDRESS: u32 = 9;
    pub const VMPTRLD_VMXON_POINTER: u32 = 10;
    pub const VMPTRLD_WRONG_REVISION: u32 = 11;
    pub const VMXON_IN_VMX_ROOT: u32 = 15;
    pub const ENTRY_BLOCKED_BY_MOV_SS: u32 = 26;
    pub const INVALID_INVEPT_INVVPID_OPERAND: u32 = 28;
}

/// What the instruction did, for the caller to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeed,
    FailInvalid,
    FailValid(u32),
    /// Raise this exception in L1; the instruction does not complete.
    Fault(Fault),
    /// #PF at this linear address with this error code.
    PageFault {
        address: u64,
        error_code: u32,
    },
}

/// RFLAGS after a VMX instruction (SDM 31.2): CF, PF, AF, ZF, SF, OF
/// cleared, then CF for VMfailInvalid or ZF for VMfailValid.
pub fn rflags_after(rflags: u64, o: Outcome) -> u64 {
    let cleared = rflags & !(1 | 1 << 2 | 1 << 4 | 1 << 6 | 1 << 7 | 1 << 11);
    match o {
        Outcome::FailInvalid => cleared | 1,
        Outcome::FailValid(_) => cleared | 1 << 6,
        _ => cleared,
    }
}

/// L1's state as a VMX instruction sees it.
pub struct L1State {
    pub ctx: GuestCtx,
    pub paging: PagingRegs,
    pub cr0: u64,
    pub cr4: u64,
    pub rflags: u64,
    pub cpl: u8,
    pub info: InstrInfo,
    pub qualification: u64,
}

impl L1State {
    fn operand_bytes(&self) -> usize {
        if self.ctx.long_mode {
            8
        } else {
            4
        }
    }
    fn access(&self) -> Access {
        Access {
            write: false,
            fetch: false,
            user: self.cpl == 3,
            ac: self.rflags & (1 << 18) != 0,
        }
    }
}

/// L1's VMX state.
pub struct VmxState {
    pub caps: NestedCaps,
    /// The VMXON region, while L1 is in VMX operation.
    pub vmxon: Option<u64>,
    /// The current VMCS12 pointer, and its cached contents.
    pub current: Option<u64>,
    pub vmcs12: Box<Vmcs12>,
    pub maxphyaddr: u8,
    /// The pointer the last successful VMCLEAR cleared.
    pub cleared: Option<u64>,
}

/// A request the instruction makes of L0's nested machinery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidate {
    None,
    /// Drop EPT02s derived from this EPTP12 (single context) or all.
    Ept(Option<u64>),
    /// Flush L2 translations tagged with this VPID12 (or all).
    Vpid(Option<u16>),
}

impl<S: super::VmcsSet, H: super::NestedHw> super::NestedCtx<'_, S, H> {
    /// Carries out what an INVEPT or INVVPID asked: EPT02s dropped, L2's
    /// translations flushed.
    pub fn invalidate(&mut self, inv: Invalidate) {
        match inv {
            Invalidate::None => {}
            Invalidate::Ept(which) => {
                if self.nested.ept02.invalidate(self.hw.tables(), which) {
                    self.hw.invept_all();
                }
            }
            Invalidate::Vpid(Some(v12)) => {
                if let Some(v02) = self.nested.vpids.lookup(v12) {
                    self.hw.flush_vpid(v02);
                }
            }
            Invalidate::Vpid(None) => {
                for v02 in self.nested.vpids.all() {
                    self.hw.flush_vpid(v02);
                }
            }
        }
    }
}

fn walk_fault(f: walk::VirtFault) -> Outcome {
    let address = f.address;
    match f.error {
        WalkError::PageFault { error_code } => Outcome::PageFault {
            address,
            error_code,
        },
        // Paging structures outside L1's RAM: L1 sees a reserved-bit fault.
        WalkError::TableNotRam { .. } => Outcome::PageFault {
            address,
            error_code: walk::pfec::PRESENT | walk::pfec::RSVD,
        },
    }
}

impl VmxState {
    pub fn new(caps: NestedCaps, maxphyaddr: u8) -> Self {
        VmxState {
            caps,
            vmxon: None,
            current: None,
            vmcs12: Box::default(),
            maxphyaddr,
            cleared: None,
        }
    }

    /// VMfailValid needs a current VMCS to hold the error; without one the
    /// failure is VMfailInvalid (SDM 31.2, "VMfail").
    pub fn fail_with(&mut self, error: u32) -> Outcome {
        self.fail(error)
    }

    fn fail(&mut self, error: u32) -> Outcome {
        match self.current {
            Some(_) => {
                self.vmcs12.set(Field::VM_INSTRUCTION_ERROR, error as u64);
                Outcome::FailValid(error)
            }
            None => Outcome::FailInvalid,
        }
    }

    /// Checks every VMX instruction but VMXON makes first.
    pub fn common_checks(&self, s: &L1State) -> Result<(), Outcome> {
        let ud = Outcome::Fault(Fault {
            vector: UD,
            error_code: 0,
        });
        let compat = s.paging.efer & EFER_LMA != 0 && !s.ctx.long_mode;
        if self.vmxon.is_none() || s.cr0 & 1 == 0 || s.rflags & (1 << 17) != 0 || compat {
            return Err(ud);
        }
        if s.cpl > 0 {
            return Err(Outcome::Fault(Fault {
                vector: GP,
                error_code: 0,
            }));
        }
        Ok(())
    }

    fn read_mem<M: GuestMemory>(
        &self,
        s: &L1State,
        mem: &M,
        buf: &mut [u8],
    ) -> Result<(), Outcome> {
        let la = s
            .ctx
            .linear_address(s.info, s.qualification, buf.len() as u64, false)
            .map_err(Outcome::Fault)?;
        walk::read_virt(mem, &s.paging, la, buf, s.access()).map_err(walk_fault)
    }

    fn write_mem<M: GuestMemory>(
        &self,
        s: &L1State,
        mem: &mut M,
        data: &[u8],
    ) -> Result<(), Outcome> {
        let la = s
            .ctx
            .linear_address(s.info, s.qualification, data.len() as u64, true)
            .map_err(Outcome::Fault)?;
        walk::write_virt(mem, &s.paging, la, data, s.access()).map_err(walk_fault)
    }

    /// The 64-bit physical-address operand of VMXON/VMPTRLD/VMCLEAR.
    pub(super) fn pointer_operand<M: GuestMemory>(
        &self,
        s: &L1State,
        mem: &M,
    ) -> Result<u64, Outcome> {
        let mut b = [0u8; 8];
        self.read_mem(s, mem, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A VMCS or VMXON pointer is usable: 4 KiB aligned, within MAXPHYADDR,
    /// and (L0's rule) a page of L1's RAM.
    fn pointer_ok<M: GuestMemory>(&self, mem: &M, p: u64) -> bool {
        p & 0xfff == 0 && p >> self.maxphyaddr == 0 && mem.is_ram(p, 4096)
    }

    fn read_revision<M: GuestMemory>(mem: &M, p: u64) -> u32 {
        mem.read_u32(p).unwrap_or(u32::MAX)
    }

    /// Writes the cached VMCS12 back into L1's region.
    pub fn flush_current<M: GuestMemory>(&mut self, mem: &mut M) {
        if let Some(p) = self.current {
            // The pointer was checked to be L1 RAM when it was loaded.
            let _ = mem.write(p, &self.vmcs12.to_region());
        }
    }

    pub fn vmxon<M: GuestMemory>(&mut self, s: &L1State, mem: &mut M) -> Outcome {
        let ud = Outcome::Fault(Fault {
            vector: UD,
            error_code: 0,
        });
        let gp = Outcome::Fault(Fault {
            vector: GP,
            error_code: 0,
        });
        let compat = s.paging.efer & EFER_LMA != 0 && !s.ctx.long_mode;
        if s.cr4 & (1 << 13) == 0 || s.cr0 & 1 == 0 || s.rflags & (1 << 17) != 0 || compat {
            return ud;
        }
        if self.vmxon.is_some() {
            if s.cpl > 0 {
                return gp;
            }
            return self.fail(err::VMXON_IN_VMX_ROOT);
        }
        let c = &self.caps;
        let cr0_ok = s.cr0 & c.cr0_fixed0 == c.cr0_fixed0 && s.cr0 & !c.cr0_fixed1 == 0;
        let cr4_ok = s.cr4 & c.cr4_fixed0 == c.cr4_fixed0 && s.cr4 & !c.cr4_fixed1 == 0;
        if s.cpl > 0 || !cr0_ok || !cr4_ok {
            return gp;
        }
        let p = match self.pointer_operand(s, mem) {
            Ok(p) => p,
            Err(o) => return o,
        };
        if !self.pointer_ok(mem, p)
            || Self::read_revision(mem, p) != self.caps.basic as u32 & 0x7fff_ffff
        {
            return Outcome::FailInvalid;
        }
        self.vmxon = Some(p);
        self.current = None;
        Outcome::Succeed
    }

    pub fn vmxoff<M: GuestMemory>(&mut self, s: &L1State, mem: &mut M) -> Outcome {
        if let Err(o) = self.common_checks(s) {
            return o;
        }
        self.flush_current(mem);
        self.vmxon = None;
        self.current = None;
        Outcome::Succeed
    }

    /// `elsewhere`: whether the VMCS at this address is current on another
    /// CPU (asked once the operand is read and checked, and only for an
    /// address that is not this CPU's current VMCS): then VMfailValid with
    /// the error of an address the instruction cannot use.
    pub fn vmptrld<M: GuestMemory>(
        &mut self,
        s: &L1State,
        mem: &mut M,
        elsewhere: &mut dyn FnMut(u64) -> bool,
    ) -> Outcome {
        if let Err(o) = self.common_checks(s) {
            return o;
        }
        let p = match self.pointer_operand(s, mem) {
            Ok(p) => p,
            Err(o) => return o,
        };
        if !self.pointer_ok(mem, p) {
            return self.fail(err::VMPTRLD_INVALID_ADDRESS);
        }
        if Some(p) == self.vmxon {
            return self.fail(err::VMPTRLD_VMXON_POINTER);
        }
        if self.current != Some(p) && elsewhere(p) {
            return self.fail(err::VMPTRLD_INVALID_ADDRESS);
        }
        // Bit 31 (shadow VMCS) must be 0: VMCS shadowing is not offered.
        if Self::read_revision(mem, p) != self.caps.basic as u32 & 0x7fff_ffff {
            return self.fail(err::VMPTRLD_WRONG_REVISION);
        }
        if self.current != Some(p) {
            self.flush_current(mem);
            let mut region = [0u8; REGION_BYTES];
            if mem.read(p, &mut region).is_err() {
                return self.fail(err::VMPTRLD_INVALID_ADDRESS);
            }
            *self.vmcs12 = Vmcs12::from_region(&region);
            self.current = Some(p);
        }
        Outcome::Succeed
    }

    pub fn vmptrst<M: GuestMemory>(&mut self, s: &L1State, mem: &mut M) -> Outcome {
        if let Err(o) = self.common_checks(s) {
            return o;
        }
        let p = self.current.unwrap_or(u64::MAX);
        match self.write_mem(s, mem, &p.to_le_bytes()) {
            Ok(()) => Outcome::Succeed,
            Err(o) => o,
        }
    }

    /// `elsewhere` as for [`Vmx::vmptrld`].
    pub fn vmclear<M: GuestMemory>(
        &mut self,
        s: &L1State,
        mem: &mut M,
        elsewhere: &mut dyn FnMut(u64) -> bool,
    ) -> Outcome {
        if let Err(o) = self.common_checks(s) {
            return o;
        }
        let p = match self.pointer_operand(s, mem) {
            Ok(p) => p,
            Err(o) => return o,
        };
        if !self.pointer_ok(mem, p) {
            return self.fail(err::VMCLEAR_INVALID_ADDRESS);
        }
        if Some(p) == self.vmxon {
            return self.fail(err::VMCLEAR_VMXON_POINTER);
        }
        if self.current != Some(p) && elsewhere(p) {
            return self.fail(err::VMCLEAR_INVALID_ADDRESS);
        }
        self.cleared = Some(p);
        if self.current == Some(p) {
            self.vmcs12.launched = false;
            self.flush_current(mem);
            self.current = None;
        } else {
            let mut region = [0u8; REGION_BYTES];
            if mem.read(p, &mut region).is_ok() {
                let mut v = Vmcs12::from_region(&region);
                v.launched = false;
                let _ = mem.write(p, &v.to_region());
            }
        }
        Outcome::Succeed
    }

    /// VMREAD: `gpr` are L1's registers (the destination may be one).
    pub fn vmread<M: GuestMemory>(
        &mut self,
        s: &L1State,
        mem: &mut M,
        gpr: &mut [u64; 16],
    ) -> Outcome {
        if let Err(o) = self.common_checks(s) {
            return o;
        }
        if self.current.is_none() {
            return Outcome::FailInvalid;
        }
        let Some(field) = field_operand(s, gpr) else {
            return self.fail(super::vmcs12::ERR_UNSUPPORTED_FIELD);
        };
        let value = match self.vmcs12.vmread(field, s.ctx.long_mode) {
            Ok(v) => v,
            Err(e) => return self.fail(e),
        };
        if s.info.is_register() {
            gpr[s.info.reg1() as usize] = value;
            Outcome::Succeed
        } else {
            let n = s.operand_bytes();
            match self.write_mem(s, mem, &value.to_le_bytes()[..n]) {
                Ok(()) => Outcome::Succeed,
                Err(o) => o,
            }
        }
    }

    pub fn vmwrite<M: GuestMemory>(&mut self, s: &L1State, mem: &M, gpr: &[u64; 16]) -> Outcome {
        if let Err(o) = self.common_checks(s) {
            return o;
        }
        if self.current.is_none() {
            return Outcome::FailInvalid;
        }
        let value = if s.info.is_register() {
            gpr[s.info.reg1() as usize]
        } else {
            let mut b = [0u8; 8];
            let n = s.operand_bytes();
            if let Err(o) = self.read_mem(s, mem, &mut b[..n]) {
                return o;
            }
            u64::from_le_bytes(b)
        };
        let Some(field) = field_operand(s, gpr) else {
            return self.fail(super::vmcs12::ERR_UNSUPPORTED_FIELD);
        };
        let any = self.caps.misc & misc::VMWRITE_ANY_FIELD != 0;
        match self.vmcs12.vmwrite(field, value, s.ctx.long_mode, any) {
            Ok(()) => Outcome::Succeed,
            Err(e) => self.fail(e),
        }
    }

    /// INVEPT and INVVPID's common part (SDM 31.3): #UD unless the
    /// instruction is offered (the secondary control `enable` allowed and
    /// `offered` in IA32_VMX_EPT_VPID_CAP), the common checks, then the
    /// type from the register operand and the 16-byte descriptor.
    fn invalidation_operands<M: GuestMemory>(
        &mut self,
        s: &L1State,
        mem: &M,
        gpr: &[u64; 16],
        enable: u32,
        offered: u64,
    ) -> Result<(u64, [u8; 16]), Outcome> {
        let c = &self.caps;
        if !c.allows(Control::Primary, primary::ACTIVATE_SECONDARY)
            || !c.allows(Control::Secondary, enable)
            || c.ept_vpid & offered == 0
        {
            return Err(Outcome::Fault(Fault {
                vector: UD,
                error_code: 0,
            }));
        }
        self.common_checks(s)?;
        let kind = if s.ctx.long_mode {
            gpr[s.info.reg2() as usize]
        } else {
            gpr[s.info.reg2() as usize] & 0xffff_ffff
        };
        let mut d = [0u8; 16];
        self.read_mem(s, mem, &mut d)?;
        Ok((kind, d))
    }

    /// INVEPT (SDM 31.3): returns the outcome and what to invalidate.
    pub fn invept<M: GuestMemory>(
        &mut self,
        s: &L1State,
        mem: &M,
        gpr: &[u64; 16],
    ) -> (Outcome, Invalidate) {
        let (kind, d) = match self.invalidation_operands(
            s,
            mem,
            gpr,
            secondary::ENABLE_EPT,
            ept_vpid::INVEPT,
        ) {
            Ok(operands) => operands,
            Err(o) => return (o, Invalidate::None),
        };
        let eptp = u64::from_le_bytes(d[..8].try_into().unwrap());
        match kind {
            1 if self.caps.ept_vpid & ept_vpid::INVEPT_SINGLE_CONTEXT != 0 => {
                if !super::ept12::eptp_valid(eptp, &self.caps, self.maxphyaddr) {
                    return (
                        self.fail(err::INVALID_INVEPT_INVVPID_OPERAND),
                        Invalidate::None,
                    );
                }
                (Outcome::Succeed, Invalidate::Ept(Some(eptp)))
            }
            2 if self.caps.ept_vpid & ept_vpid::INVEPT_ALL_CONTEXT != 0 => {
                (Outcome::Succeed, Invalidate::Ept(None))
            }
            _ => (
                self.fail(err::INVALID_INVEPT_INVVPID_OPERAND),
                Invalidate::None,
            ),
        }
    }

    /// INVVPID (SDM 31.3).
    pub fn invvpid<M: GuestMemory>(
        &mut self,
        s: &L1State,
        mem: &M,
        gpr: &[u64; 16],
    ) -> (Outcome, Invalidate) {
        let (kind, d) = match self.invalidation_operands(
            s,
            mem,
            gpr,
            secondary::ENABLE_VPID,
            ept_vpid::INVVPID,
        ) {
            Ok(operands) => operands,
            Err(o) => return (o, Invalidate::None),
        };
        let low = u64::from_le_bytes(d[..8].try_into().unwrap());
        let addr = u64::from_le_bytes(d[8..].try_into().unwrap());
        let vpid = low as u16;
        let supported = kind < 4 && self.caps.ept_vpid & ept_vpid::invvpid_type(kind) != 0;
        let bad = low >> 16 != 0
            || !supported
            || (kind != 2 && vpid == 0)
            || (kind == 0 && !s.ctx.is_canonical(addr));
        if bad {
            return (
                self.fail(err::INVALID_INVEPT_INVVPID_OPERAND),
                Invalidate::None,
            );
        }
        (
            Outcome::Succeed,
            Invalidate::Vpid(if kind == 2 { None } else { Some(vpid) }),
        )
    }
}

/// The field encoding of VMREAD/VMWRITE: the whole register in 64-bit
/// mode, where bits 63:32 set name no field (SDM 25.11.2).
fn field_operand(s: &L1State, gpr: &[u64; 16]) -> Option<u32> {
    let r = gpr[s.info.reg2() as usize];
    if s.ctx.long_mode && r >> 32 != 0 {
        return None;
    }
    Some(r as u32)
}

#[cfg(test)]
mod tests;
