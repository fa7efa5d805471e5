//! L2 port I/O that L0 carries out: a user VM's COM1-COM4 accesses, which
//! always exit to L0 whatever L1's I/O bitmaps say and are served by that
//! VM's shadow UARTs (L1 never sees the exit, the data or the port), and
//! accesses L1 lets through. IN/OUT of every size and INS/OUTS with REP.
//!
//! A COM access takes the VM's own lock, not the machine's: the vCPU
//! keeps the VM's cell while the identities' generation stays
//! (`machine/shared.rs`), so two VMs' bytes on two CPUs never wait for
//! each other. The interrupt edges the access raised are posted with the
//! VM's routes (`shadow/vm_irqs.rs`, a lock of the VM's own). The
//! machine's lock is taken after the VM's are let go, and only to find the
//! VM, to leave edges for L1's relay (a VM without posted-interrupt
//! routes), or (if no other CPU holds it) to pull an attached console's
//! output onto the line.

use super::{Outcome, Platform, Vcpu};
use crate::arch::run::GuestRegs;
use crate::guest_mem::walk::{self, Access};
use crate::machine::shared::MachineLock;
use crate::machine::Machine;
use crate::nested::ept12::L2Memory;
use crate::nested::operand::InstrInfo;
use crate::nested::VmcsSet;
use crate::regs::{AR_L, EFER_LMA, RFLAGS_DF};
use crate::shadow::identity::VmId;
use crate::shadow::is_com_port;
use crate::shadow::vm_irqs::VmIrqCell;
use crate::vmx::exit::{ExitInfo, IoAccess};
use crate::vmx::fields::GUEST_SEGMENTS;
use crate::vmx::guest_cr::paging_regs;
use crate::vmx::inject::{inject_exception, skip_instruction};
use crate::vmx::{Field as F, Vmcs};
use shadow_devices::{VmCell, VmDevices};

/// Where an L2 port access goes.
pub enum Ports<'a> {
    /// The user VM's shadow COM ports, locked (None: a VM L0 could not
    /// track).
    Shadow(Option<&'a mut VmDevices>),
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

/// The user VM whose COM ports this vCPU served last and its devices'
/// cell, found by the VMCS12 and EPTP12 it ran on at the identities'
/// `generation`: still that VM's while the generation stays.
pub(super) struct ComVm {
    vmcs12: u64,
    eptp12: Option<u64>,
    generation: u64,
    vm: VmId,
    cell: VmCell,
    /// The VM's IOAPIC copy and routes: its edges are posted with these.
    irqs: VmIrqCell,
}

/// Whether the operator follows one of the VM's ports that has output
/// waiting for the management line.
fn operator_output_waits(devices: &VmDevices) -> bool {
    devices.devices().iter().any(|d| {
        d.console_ref()
            .is_some_and(|c| c.operator_attached() && c.output_pending() > 0)
    })
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

    /// The VM this vCPU keeps the cells of, if it is still the current
    /// L2's: the same VMCS12 and EPTP12 at the same identities' generation.
    fn kept_com_vm(&self, generation: u64) -> Option<&ComVm> {
        let vmcs12 = self.nested.vmx.current?;
        let eptp12 = self.nested.eptp12();
        self.com_vm
            .as_ref()
            .filter(|c| c.vmcs12 == vmcs12 && c.eptp12 == eptp12 && c.generation == generation)
    }

    /// The id of the VM whose cells this vCPU keeps.
    pub(super) fn com_vm_id(&self) -> Option<VmId> {
        self.com_vm.as_ref().map(|c| c.vm)
    }

    /// RegisterTag of the tag the current L2's VM holds already (an agent
    /// repeating it), answered under the VM's lock alone when this vCPU
    /// keeps that VM's cells; anything else needs the machine.
    pub(super) fn tag_held_already(
        &self,
        m: &MachineLock<'_>,
        req: &ultracall_abi::Request,
    ) -> bool {
        let Some(com) = self.kept_com_vm(m.vm_generation()) else {
            return false;
        };
        req.tag.is_some() && com.cell.lock().tag() == req.tag
    }

    /// The current L2's VM with its devices' cell in `self.com_vm`: the
    /// one kept if the VMCS12, EPTP12 and identities' generation are as
    /// when it was found, else found again under the machine's lock.
    /// None: a VM L0 refused (shadow::Shadow::identify logs it once).
    fn find_com_vm(&mut self, m: &mut MachineLock<'_>) {
        let Some(vmcs12) = self.nested.vmx.current else {
            self.com_vm = None;
            return;
        };
        let eptp12 = self.nested.eptp12();
        if self.kept_com_vm(m.vm_generation()).is_some() {
            return;
        }
        self.com_vm = None;
        let found = m.shadow.identify_cell(vmcs12, eptp12);
        let generation = m.vm_generation();
        self.com_vm = found.map(|(vm, cell, irqs)| ComVm {
            vmcs12,
            eptp12,
            generation,
            vm,
            cell,
            irqs,
        });
    }

    /// Lets go of the cells of the VM this vCPU served last once the
    /// identities moved on (that VM may have ended): checked at every
    /// exit (an atomic load), so an ended VM's devices leave L0's heap
    /// with each CPU's next exit (the preemption timer bounds it to 2 ms),
    /// not at that CPU's next COM access, if ever. A VM that lives on is
    /// found again at its next COM access, as it would have been anyway.
    pub(super) fn drop_stale_com_vm(&mut self, generation: u64) {
        if self
            .com_vm
            .as_ref()
            .is_some_and(|c| c.generation != generation)
        {
            self.com_vm = None;
        }
    }

    /// One byte of a COM access; bytes of a wide access outside COM ports
    /// read as an undecoded bus (all ones) and writes to them are dropped.
    fn com_byte(devices: &mut Option<&mut VmDevices>, port: u16, write: Option<u8>) -> u8 {
        match devices {
            Some(d) if is_com_port(port) => match write {
                Some(b) => {
                    d.io_write(port, b);
                    0
                }
                None => d.io_read(port).unwrap_or(0xff),
            },
            _ => 0xff,
        }
    }

    fn port_read<P: Platform>(p: &mut P, to: &mut Ports<'_>, port: u16, size: u8) -> u32 {
        match to {
            Ports::Hardware => p.io_in(port, size),
            Ports::Absent => ((1u64 << (8 * size as u32)) - 1) as u32,
            Ports::Shadow(devices) => (0..size as u32).fold(0, |v, i| {
                v | (Self::com_byte(devices, port.wrapping_add(i as u16), None) as u32) << (8 * i)
            }),
        }
    }

    fn port_write<P: Platform>(p: &mut P, to: &mut Ports<'_>, port: u16, size: u8, value: u32) {
        match to {
            Ports::Hardware => p.io_out(port, size, value),
            Ports::Absent => {}
            Ports::Shadow(devices) => {
                for i in 0..size as u32 {
                    let byte = Some((value >> (8 * i)) as u8);
                    Self::com_byte(devices, port.wrapping_add(i as u16), byte);
                }
            }
        }
    }

    /// L2 accessed a COM port (VMCS02 current): served under the VM's own
    /// lock; the machine's only after it (module comment).
    pub(super) fn l2_com_io<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut MachineLock<'_>,
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
        io: IoAccess,
    ) -> Outcome {
        self.find_com_vm(m);
        let Some(com) = self.com_vm.take() else {
            return self.l2_port_io(vs, p, e, io, Ports::Shadow(None));
        };
        let mut devices = com.cell.lock();
        // Frozen: saved away, the access is held (re-executed) until a
        // restore thaws the devices or the VM ends. The save froze them
        // under this lock, so no byte lands after the seal.
        let (o, edges, output) = match devices.is_frozen() {
            true => (Outcome::Resume, 0, false),
            false => {
                let o = self.l2_port_io(vs, p, e, io, Ports::Shadow(Some(&mut devices)));
                (o, devices.take_irq_edges(), operator_output_waits(&devices))
            }
        };
        drop(devices);
        // Posted under the VM's routes' lock alone; only edges of a VM
        // without routes go to the machine, for L1's relay.
        let left = match edges {
            0 => 0,
            _ => self.post_vm_edges(&com.irqs.lock(), vs, p, edges),
        };
        let vm = com.vm;
        self.com_vm = Some(com);
        if left != 0 {
            m.shadow.note_edges(vm, left);
        }
        // Output waits at most until the console CPU's next visit when
        // another CPU has the machine now.
        if m.taken() || (output && m.try_take()) {
            let mm = &mut **m;
            for f in mm.console.pump(&mut mm.shadow) {
                p.mgmt_send(&f);
            }
            self.route_shadow_irqs(mm, vs, p);
        }
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
        self.l2_port_io(vs, p, e, io, to)
    }

    fn l2_port_io<S: VmcsSet, P: Platform>(
        &mut self,
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
        io: IoAccess,
        mut to: Ports<'_>,
    ) -> Outcome {
        let done = if io.string {
            self.string_io(vs, p, e, io, &mut to)
        } else {
            let rax = self.regs.gpr[GuestRegs::RAX];
            if io.is_in {
                let value = Self::port_read(p, &mut to, io.port, io.size) as u64;
                // IN AL/AX keep the rest of RAX; IN EAX zero-extends.
                let mask = (1u64 << (8 * io.size as u32)) - 1;
                self.regs.gpr[GuestRegs::RAX] = if io.size == 4 {
                    value
                } else {
                    (rax & !mask) | value
                };
            } else {
                Self::port_write(p, &mut to, io.port, io.size, rax as u32);
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
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
        io: IoAccess,
        to: &mut Ports<'_>,
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
                let bytes = Self::port_read(p, to, io.port, io.size).to_le_bytes();
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
                    Self::port_write(p, to, io.port, io.size, u32::from_le_bytes(bytes));
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
