//! Where a shadow UART's interrupt goes when L2's guest hypervisor uses
//! posted interrupts (KVM with APICv): L0 learns the vector from L2's
//! IOAPIC programming and posts it (`nested/apicv.rs`), as a VT-d device
//! would. docs/shadow-devices.md tells the whole story. Posting needs only
//! the VM's own routes (`shadow/vm_irqs.rs`), so a COM access posts its
//! edges without the machine's lock.

use super::decode;
use super::{Platform, Vcpu};
use crate::arch::run::GuestRegs;
use crate::guest_mem::walk::{self, Access};
use crate::guest_mem::GuestMemory;
use crate::machine::Machine;
use crate::nested::ept12::L2Memory;
use crate::nested::VmcsSet;
use crate::shadow::ioapic::{LocalApic, IOAPIC_BASE, IOWIN};
use crate::shadow::vm_irqs::VmIrqs;
use crate::vmx::exit::ExitInfo;
use crate::vmx::guest_cr::paging_regs;
use crate::vmx::{Field as F, Vmcs};

/// The UART pins: IRQ 3 (COM2, COM4) and IRQ 4 (COM1, COM3).
const COM_PINS: [u8; 2] = [3, 4];

impl Vcpu {
    /// Delivers the shadow devices' interrupt edges the machine holds
    /// (those of VMs that had no route when they came, tried again once a
    /// route was recorded) for VMs whose guest hypervisor runs them with
    /// posted interrupts; the other VMs' edges stay for L1's relay
    /// (ultracall SetIrqRelay).
    pub(super) fn route_shadow_irqs<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
    ) {
        if !m.shadow.irqs.has_edges() {
            return; // the common case, at every COM access
        }
        for (vm, edges) in m.shadow.irqs.edges() {
            let Some(cell) = m.shadow.irqs.cell_of(vm).cloned() else {
                continue;
            };
            let left = self.post_vm_edges(&cell.lock(), vs, p, edges);
            m.shadow.irqs.take_edges(vm, edges & !left);
        }
    }

    /// Posts a VM's interrupt `edges` by its IOAPIC copy and its vCPUs'
    /// routes (`irqs`, under the VM's own lock: no machine lock needed),
    /// each into the descriptor of the vCPU the VM's IOAPIC entry names,
    /// wherever it runs (`nested/apicv.rs` notifies the CPU in the
    /// descriptor's NDST, or processes it at once if that vCPU is the L2
    /// running here). Returns the edges left for L1's relay: all of them
    /// when the VM has no route.
    pub(super) fn post_vm_edges<S: VmcsSet, P: Platform>(
        &mut self,
        irqs: &VmIrqs,
        vs: &mut S,
        p: &mut P,
        edges: u16,
    ) -> u16 {
        if !irqs.has_routes() {
            return edges;
        }
        let mut taken = 0;
        for pin in COM_PINS {
            if edges & 1 << pin == 0 {
                continue;
            }
            // A masked or unprogrammed edge-triggered pin drops the
            // edge, as the IOAPIC does.
            taken |= 1 << pin;
            let Some((vector, dest)) = irqs.pin_route(pin) else {
                continue;
            };
            // A destination no vCPU accepts (or whose APIC page L0
            // cannot read) goes to the vCPU L0 learnt of last rather
            // than nowhere: a lost UART interrupt stalls the console.
            let mut routes = irqs.routes();
            let first = routes.next().copied();
            let chosen = first
                .into_iter()
                .chain(routes.copied())
                .find(|r| local_apic(p.mem(), r.vapic).is_some_and(|a| dest.accepts(a)))
                .or(first);
            if let Some(route) = chosen {
                self.nested_ctx(vs, p).post(route.desc, vector);
            }
        }
        edges & !taken
    }

    /// An L2 write to an address EPT12 does not map, on its way to L1:
    /// if it is the IOAPIC's, learn what L2 programs there.
    pub(super) fn watch_ioapic<S: VmcsSet, P: Platform>(
        &mut self,
        m: &mut Machine,
        vs: &mut S,
        p: &mut P,
        e: &ExitInfo,
    ) {
        const WRITE: u64 = 1 << 1;
        let offset = e.guest_physical.wrapping_sub(IOAPIC_BASE);
        if e.qualification & WRITE == 0 || offset > IOWIN || !offset.is_multiple_of(0x10) {
            return;
        }
        let Some(eptp12) = self.nested.eptp12() else {
            return;
        };
        let v02 = vs.current();
        let paging = paging_regs(v02, self.host.maxphyaddr);
        let rip = v02
            .read(F::GUEST_CS_BASE)
            .wrapping_add(v02.read(F::GUEST_RIP));
        let rsp = v02.read(F::GUEST_RSP);
        let view = L2Memory {
            l1: p.mem(),
            eptp12: Some(eptp12),
            caps: &self.nested.vmx.caps,
            maxphyaddr: self.host.maxphyaddr,
        };
        let mut insn = [0u8; 15];
        // Up to the end of RIP's page and beyond if the instruction
        // crosses it; a shorter read is enough for short instructions.
        let got = (1..=15).rev().find(|&n| {
            walk::read_virt(
                &view,
                &paging,
                rip,
                &mut insn[..n],
                Access {
                    fetch: true,
                    ..Default::default()
                },
            )
            .is_ok()
        });
        let Some(n) = got else { return };
        let regs = self.regs.gpr;
        let reg = |i: usize| if i == GuestRegs::RSP { rsp } else { regs[i] };
        let Some(store) = decode::mov_store(&insn[..n], reg) else {
            log::warn!(
                "L2 wrote its IOAPIC with an instruction L0 does not decode ({:02x?})",
                &insn[..n.min(4)]
            );
            return;
        };
        if store.size == 4 {
            if let Some(vm) = self.current_l2_vm(m) {
                m.shadow.ioapic_write(vm, offset, store.value as u32);
            }
        }
    }
}

/// The APIC registers a virtual-APIC page holds that decide which
/// interrupts its vCPU accepts.
fn local_apic(mem: &impl GuestMemory, vapic: u64) -> Option<LocalApic> {
    let reg = |offset: u64| mem.read_u32(vapic + offset).ok();
    Some(LocalApic {
        id: reg(0x20)?,
        ldr: reg(0xd0)?,
        dfr: reg(0xe0)?,
    })
}
