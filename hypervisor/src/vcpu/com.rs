//! L2 port I/O that L0 carries out: a user VM's COM1-COM4 accesses, which
//! always exit to L0 whatever L1's I/O bitmaps say and are served by that
//! VM's shadow UARTs (L1 never sees the exit, the data or the port), and
//! accesses L1 lets through. IN/OUT of every size and INS/OUTS with REP.

use super::{Outcome, Platform, Vcpu};
use crate::arch::run::GuestRegs;
use crate::guest_mem::walk::{self, Access};
use crate::machine::Machine;
use crate::nested::ept12::L2Memory;
use crate::nested::operand::InstrInfo;
use crate::nested::VmcsSet;
use crate::regs::{AR_L, EFER_LMA, RFLAGS_DF};
use crate::shadow::is_com_port;
use crate::vmx::exit::{ExitInfo, IoAccess};
use crate::vmx::fields::GUEST_SEGMENTS;
use crate::vmx::guest_cr::paging_regs;
use crate::vmx::inject::{inject_exception, skip_instruction};
use crate::vmx::{Field as F, Vmcs};

/// Where an L2 port access goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ports {
    /// The user VM's shadow COM ports (None: a VM L0 could not track).
    Shadow(Option<u64>),
    /// The machine's ports, as L2 would reach them natively.
    Hardware,
    /// L0's own ports (`vcpu::l0_ports`): an absent device, as for L1.
    Absent,
}

/// Iterations of a REP string instruction done per exit; the rest re-executes.
const REP_BATCH: u64 = 512;

/// Whether an access of `size` bytes at `port` touches a COM port.
pub fn touches_com(port: u16, size: u8) -> bool {
    (0..size as u16).any(|i| is_com_port(port.wrapping_add(i)))
}

impl Vcpu {
    /// The user VM of the current L2, by VMCS12 and EPT12 (shadow/identity.rs).
    pub(super) fn current_l2_vm(&mut self, m: &mut Machine) -> Option<u64> {
        // Fixed from one entry into L2 to the next exit to L1 (identities
        // change only by what L1 does): looked up once per entry.
        if let Some(vm) = self.nested.cached_l2_vm() {
            return Some(vm);
        }
        let vmcs12 = self.nested.vmx.current?;
        let eptp = self.nested.eptp12();
        let vm = m.shadow.identify(vmcs12, eptp);
        self.nested.cache_l2_vm(vm);
        vm
    }

    /// One byte of a COM access; bytes of a wide access outside COM ports
    /// read as an undecoded bus (all ones) and writes to them are dropped.
    fn com_byte(&mut self, m: &mut Machine, vm: Option<u64>, port: u16, write: Option<u8>) -> u8 {
        match vm {
            Some(vm) if is_com_port(port) => m.shadow.io(vm, port, write),
            _ => 0xff,
        }
    }

    fn port_read<P: Platform>(
        &mut self,
        m: &mut Machine,
        p: &mut P,
        to: Ports,
        port: u16,
        size: u8,
    ) -> u32 {
        match to {
            Ports::Hardware => p.io_in(port, size),
            Ports::Absent => ((1u64 << (8 * size as u32)) - 1) as u32,
            Ports::Shadow(vm) => (0..size as u32).fold(0, |v, i| {
                v | (self.com_byte(m, vm, port.wrapping_add(i as u16), None) as u32) << (8 * i)
            }),
        }
    }

    fn port_write<P: Platform>(
        &mut self,
        m: &mut Machine,
        p: &mut P,
        to: Ports,
        port: u16,
        size: u8,
        value: u32,
    ) {
        match to {
            Ports::Hardware => p.io_out(port, size, value),
            Ports::Absent => {}
            Ports::Shadow(vm) => {
                for i in 0..size as u32 {
                    self.com_byte(
                        m,
                        vm,
                        port.wrapping_add(i as u16),
                        Some((value >> (8 * i)) as u8),
                    );
                }
            }
        }
    }

    /// L2 accessed a COM port (VMCS02 current).
    pub(super) fn l2_com_io<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
        io: IoAccess,
    ) -> Outcome {
        // None: a VM L0 refused (shadow::Shadow::identify logs it once).
        let vm = self.current_l2_vm(m);
        if vm.is_some_and(|vm| m.shadow.frozen(vm)) {
            // Saved away: the access is held (re-executed) until a restore
            // thaws the devices or the VM ends.
            return Outcome::Resume;
        }
        let o = self.l2_port_io(m, vs, p, e, io, Ports::Shadow(vm));
        for f in m.console.pump(&mut m.shadow) {
            p.mgmt_send(&f);
        }
        self.route_shadow_irqs(m, vs, p);
        o
    }

    /// L2's access to a port neither L0 nor L1 wants: carried out as L2
    /// would have done natively (L0 had to trap it to ask L1's bitmaps).
    /// L0's own ports stay L0's: where L2 would reach them, it finds the
    /// absent device L1 finds.
    pub(super) fn l2_passthrough_io<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
        io: IoAccess,
    ) -> Outcome {
        let to = if m.l0_ports.touches(io.port, io.size) {
            Ports::Absent
        } else {
            Ports::Hardware
        };
        self.l2_port_io(m, vs, p, e, io, to)
    }

    fn l2_port_io<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
        io: IoAccess,
        to: Ports,
    ) -> Outcome {
        let done = if io.string {
            self.string_io(m, vs, p, e, io, to)
        } else {
            let rax = self.regs.gpr[GuestRegs::RAX];
            if io.is_in {
                let value = self.port_read(m, p, to, io.port, io.size) as u64;
                // IN AL/AX keep the rest of RAX; IN EAX zero-extends.
                let mask = (1u64 << (8 * io.size as u32)) - 1;
                self.regs.gpr[GuestRegs::RAX] = if io.size == 4 {
                    value
                } else {
                    (rax & !mask) | value
                };
            } else {
                self.port_write(m, p, to, io.port, io.size, rax as u32);
            }
            true
        };
        if done {
            skip_instruction(vs.current());
        }
        Outcome::Resume
    }

    /// INS/OUTS: returns whether the instruction completed (a REP with
    /// iterations left re-executes).
    fn string_io<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
        io: IoAccess,
        to: Ports,
    ) -> bool {
        let v = vs.current();
        let info = InstrInfo(e.instr_info);
        let cs_l = v.read(F::GUEST_CS_AR_BYTES) & AR_L != 0;
        let efer = v.read(F::GUEST_IA32_EFER);
        let long = efer & EFER_LMA != 0 && cs_l;
        let amask = info.address_mask(long);
        let down = v.read(F::GUEST_RFLAGS) & RFLAGS_DF != 0;
        let (reg, seg_base) = if io.is_in {
            (
                GuestRegs::RDI,
                if long { 0 } else { v.read(F::GUEST_ES_BASE) },
            )
        } else {
            let seg = GUEST_SEGMENTS[info.segment().min(5)].base;
            let base = if long && !matches!(info.segment(), 4 | 5) {
                0
            } else {
                v.read(seg)
            };
            (GuestRegs::RSI, base)
        };
        let paging = paging_regs(v, self.host.maxphyaddr);
        let access = Access {
            write: io.is_in,
            fetch: false,
            user: (v.read(F::GUEST_SS_AR_BYTES) >> 5) & 3 == 3,
            ac: false,
        };
        let count_total = if io.rep {
            self.regs.gpr[GuestRegs::RCX] & amask
        } else {
            1
        };
        let step = io.size as u64;
        let eptp12 = self.nested.eptp12();
        let caps = self.nested.vmx.caps;
        let mut n = 0;
        while n < count_total.min(REP_BATCH) {
            let offset = self.regs.gpr[reg] & amask;
            let la = seg_base.wrapping_add(offset) & if long { u64::MAX } else { 0xffff_ffff };
            let size = io.size as usize;
            let r = if io.is_in {
                let bytes = self.port_read(m, p, to, io.port, io.size).to_le_bytes();
                let mut mem = L2Memory {
                    l1: p.mem(),
                    eptp12,
                    caps: &caps,
                    maxphyaddr: self.host.maxphyaddr,
                };
                walk::write_virt(&mut mem, &paging, la, &bytes[..size], access)
            } else {
                let mut bytes = [0u8; 4];
                let mem = L2Memory {
                    l1: p.mem(),
                    eptp12,
                    caps: &caps,
                    maxphyaddr: self.host.maxphyaddr,
                };
                let r = walk::read_virt(&mem, &paging, la, &mut bytes[..size], access);
                if r.is_ok() {
                    self.port_write(m, p, to, io.port, io.size, u32::from_le_bytes(bytes));
                }
                r
            };
            if let Err(f) = r {
                // The string operand is not mapped: #PF (or, past EPT12, #GP).
                log::info!(
                    "L2 string I/O on port {:#x} faulted at {:#x}",
                    io.port,
                    f.address
                );
                match f.error {
                    walk::WalkError::PageFault { error_code } => {
                        p.set_cr2(f.address);
                        inject_exception(vs.current(), 14, Some(error_code));
                    }
                    walk::WalkError::TableNotRam { .. } => {
                        inject_exception(vs.current(), 13, Some(0))
                    }
                }
                return false;
            }
            let next = if down {
                offset.wrapping_sub(step)
            } else {
                offset.wrapping_add(step)
            };
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
