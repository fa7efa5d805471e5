//! A user VM's COM1-COM4 accesses, which always exit to L0 whatever L1's
//! I/O bitmaps say: IN/OUT of every size and INS/OUTS (with REP), served by
//! that VM's shadow UARTs. L1 never sees the exit, the data or the port.

use super::{inject_exception, skip_instruction, Outcome, Platform, Vcpu};
use crate::arch::run::GuestRegs;
use crate::guest_mem::walk::{self, Access, PagingRegs};
use crate::guest_mem::{GuestMemory, MemError};
use crate::nested::caps::NestedCaps;
use crate::nested::ept12::{self, EptAccess};
use crate::nested::operand::InstrInfo;
use crate::nested::{reflect::ExitInfo, VmcsSet};
use crate::shadow::is_com_port;
use crate::vmx::exit::IoAccess;
use crate::vmx::{Field as F, Vmcs};

/// L2's guest-physical memory: through EPT12 (when L1 uses EPT) into L1's RAM.
pub struct L2Memory<'a, M: GuestMemory> {
    pub l1: &'a mut M,
    pub eptp12: Option<u64>,
    pub caps: &'a NestedCaps,
    pub maxphyaddr: u8,
}

impl<M: GuestMemory> L2Memory<'_, M> {
    fn translate(&self, gpa2: u64, write: bool) -> Result<u64, MemError> {
        let Some(eptp) = self.eptp12 else { return Ok(gpa2) };
        let access = EptAccess(if write { 2 } else { 1 });
        ept12::walk(&*self.l1, eptp, gpa2, access, self.caps, self.maxphyaddr)
            .map(|l| l.gpa)
            .map_err(|_| MemError::NotRam { gpa: gpa2, len: 1 })
    }

    fn each_page(&self, gpa2: u64, len: usize, write: bool, mut f: impl FnMut(u64, usize, usize) -> Result<(), MemError>) -> Result<(), MemError> {
        let mut done = 0;
        while done < len {
            let a = gpa2 + done as u64;
            let n = ((0x1000 - (a & 0xfff)) as usize).min(len - done);
            f(self.translate(a, write)?, done, n)?;
            done += n;
        }
        Ok(())
    }
}

impl<M: GuestMemory> GuestMemory for L2Memory<'_, M> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let mut pieces = [(0u64, 0usize, 0usize); 2];
        let mut count = 0;
        self.each_page(gpa, buf.len(), false, |g1, off, n| {
            if count < 2 {
                pieces[count] = (g1, off, n);
                count += 1;
                Ok(())
            } else {
                Err(MemError::NotRam { gpa, len: buf.len() as u64 })
            }
        })?;
        for &(g1, off, n) in &pieces[..count] {
            self.l1.read(g1, &mut buf[off..off + n])?;
        }
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemError> {
        let mut pieces = [(0u64, 0usize, 0usize); 2];
        let mut count = 0;
        self.each_page(gpa, data.len(), true, |g1, off, n| {
            if count < 2 {
                pieces[count] = (g1, off, n);
                count += 1;
                Ok(())
            } else {
                Err(MemError::NotRam { gpa, len: data.len() as u64 })
            }
        })?;
        for &(g1, off, n) in &pieces[..count] {
            self.l1.write(g1, &data[off..off + n])?;
        }
        Ok(())
    }
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), MemError> {
        self.write(gpa, &alloc::vec![0; len as usize])
    }
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        self.each_page(gpa, len as usize, false, |g1, _, n| if self.l1.is_ram(g1, n as u64) { Ok(()) } else { Err(MemError::NotRam { gpa, len }) })
            .is_ok()
    }
}

/// Iterations of a REP string instruction done per exit; the rest re-executes.
const REP_BATCH: u64 = 512;

/// Whether an access of `size` bytes at `port` touches a COM port.
pub fn touches_com(port: u16, size: u8) -> bool {
    (0..size as u16).any(|i| is_com_port(port.wrapping_add(i)))
}

impl Vcpu {
    /// The user VM of the current L2, by VMCS12 and EPT12 (shadow/identity.rs).
    pub(super) fn current_l2_vm(&mut self) -> Option<u64> {
        let vmcs12 = self.nested.vmx.current?;
        let eptp = self.eptp12();
        self.shadow.identify(vmcs12, eptp)
    }

    pub(super) fn eptp12(&self) -> Option<u64> {
        use crate::vmx::caps::{primary, secondary};
        let v12 = &self.nested.vmx.vmcs12;
        let p = v12.get(F::CPU_BASED_VM_EXEC_CONTROL) as u32;
        let s = if p & primary::ACTIVATE_SECONDARY != 0 { v12.get(F::SECONDARY_VM_EXEC_CONTROL) as u32 } else { 0 };
        (s & secondary::ENABLE_EPT != 0).then(|| v12.get(F::EPT_POINTER))
    }

    /// One byte of a COM access; bytes of a wide access outside COM ports
    /// read as an undecoded bus (all ones) and writes to them are dropped.
    fn com_byte(&mut self, vm: Option<u64>, port: u16, write: Option<u8>) -> u8 {
        match vm {
            Some(vm) if is_com_port(port) => self.shadow.io(vm, port, write),
            _ => 0xff,
        }
    }

    /// L2 accessed a COM port (VMCS02 current).
    pub(super) fn l2_com_io<S: VmcsSet, P: Platform>(&mut self, vs: &mut S, p: &mut P, e: &ExitInfo, io: IoAccess) -> Outcome {
        let vm = self.current_l2_vm();
        if vm.is_none() {
            log::warn!("too many user VMs: a new VM's COM ports stay absent");
        }
        if vm.is_some_and(|vm| self.shadow.frozen(vm)) {
            // Saved away: the access is held (re-executed) until a restore
            // thaws the devices or the VM ends.
            return Outcome::Resume;
        }
        let done = if io.string { self.com_string(vs, p, e, io, vm) } else { self.com_in_out(io, vm) };
        if done {
            skip_instruction(vs.current());
        }
        for f in self.shadow.pump() {
            p.mgmt_send(&f);
        }
        Outcome::Resume
    }

    fn com_in_out(&mut self, io: IoAccess, vm: Option<u64>) -> bool {
        let rax = self.regs.gpr[GuestRegs::RAX];
        let mut value = 0u64;
        for i in 0..io.size as u64 {
            let port = io.port.wrapping_add(i as u16);
            if io.is_in {
                value |= (self.com_byte(vm, port, None) as u64) << (8 * i);
            } else {
                self.com_byte(vm, port, Some((rax >> (8 * i)) as u8));
            }
        }
        if io.is_in {
            // IN AL/AX keep the rest of RAX; IN EAX zero-extends.
            let mask = (1u64 << (8 * io.size as u32)) - 1;
            self.regs.gpr[GuestRegs::RAX] = if io.size == 4 { value } else { (rax & !mask) | value };
        }
        true
    }

    /// INS/OUTS: returns whether the instruction completed (a REP with
    /// iterations left re-executes).
    fn com_string<S: VmcsSet, P: Platform>(&mut self, vs: &mut S, p: &mut P, e: &ExitInfo, io: IoAccess, vm: Option<u64>) -> bool {
        let v = vs.current();
        let info = InstrInfo(e.instr_info);
        let cs_l = v.read(F::GUEST_CS_AR_BYTES) & (1 << 13) != 0;
        let efer = v.read(F::GUEST_IA32_EFER);
        let long = efer & (1 << 10) != 0 && cs_l;
        let asize = if long { info.address_bytes() } else { info.address_bytes().min(4) };
        let amask = if asize == 8 { u64::MAX } else { (1u64 << (8 * asize)) - 1 };
        let down = v.read(F::GUEST_RFLAGS) & (1 << 10) != 0;
        let (reg, seg_base) = if io.is_in {
            (GuestRegs::RDI, if long { 0 } else { v.read(F::GUEST_ES_BASE) })
        } else {
            let seg = [F::GUEST_ES_BASE, F::GUEST_CS_BASE, F::GUEST_SS_BASE, F::GUEST_DS_BASE, F::GUEST_FS_BASE, F::GUEST_GS_BASE]
                [info.segment().min(5)];
            let base = if long && !matches!(info.segment(), 4 | 5) { 0 } else { v.read(seg) };
            (GuestRegs::RSI, base)
        };
        let paging = PagingRegs {
            cr0: v.read(F::GUEST_CR0),
            cr3: v.read(F::GUEST_CR3),
            cr4: v.read(F::GUEST_CR4),
            efer,
            pdptes: [F::GUEST_PDPTE0, F::GUEST_PDPTE1, F::GUEST_PDPTE2, F::GUEST_PDPTE3].map(|f| v.read(f)),
            maxphyaddr: self.maxphyaddr,
        };
        let access = Access { write: io.is_in, fetch: false, user: (v.read(F::GUEST_SS_AR_BYTES) >> 5) & 3 == 3, ac: false };
        let count_total = if io.rep { self.regs.gpr[GuestRegs::RCX] & amask } else { 1 };
        let step = io.size as u64;
        let eptp12 = self.eptp12();
        let caps = self.nested.vmx.caps;
        let mut n = 0;
        while n < count_total.min(REP_BATCH) {
            let offset = self.regs.gpr[reg] & amask;
            let la = seg_base.wrapping_add(offset) & if long { u64::MAX } else { 0xffff_ffff };
            let mut bytes = [0u8; 4];
            let size = io.size as usize;
            let mut mem = L2Memory { l1: p.mem(), eptp12, caps: &caps, maxphyaddr: self.maxphyaddr };
            let r = if io.is_in {
                for (i, b) in bytes[..size].iter_mut().enumerate() {
                    *b = self.com_byte(vm, io.port.wrapping_add(i as u16), None);
                }
                walk::write_virt(&mut mem, &paging, la, &bytes[..size], access)
            } else {
                walk::read_virt(&mem, &paging, la, &mut bytes[..size], access).inspect(|_| {
                    for (i, &b) in bytes[..size].iter().enumerate() {
                        self.com_byte(vm, io.port.wrapping_add(i as u16), Some(b));
                    }
                })
            };
            if let Err(f) = r {
                // The string operand is not mapped: #PF (or, past EPT12, #GP).
                log::info!("L2 string I/O on port {:#x} faulted at {:#x}", io.port, f.address);
                match f.error {
                    walk::WalkError::PageFault { error_code } => {
                        p.set_cr2(f.address);
                        inject_exception(vs.current(), 14, Some(error_code));
                    }
                    walk::WalkError::TableNotRam { .. } => inject_exception(vs.current(), 13, Some(0)),
                }
                return false;
            }
            let next = if down { offset.wrapping_sub(step) } else { offset.wrapping_add(step) };
            self.regs.gpr[reg] = (self.regs.gpr[reg] & !amask) | (next & amask);
            n += 1;
            if io.rep {
                let c = self.regs.gpr[GuestRegs::RCX];
                self.regs.gpr[GuestRegs::RCX] = (c & !amask) | (c.wrapping_sub(1) & amask);
            }
        }
        n == count_total
    }
}
