//! The user VMs' interrupts on their way out of L0: the edges their shadow
//! UARTs raised that nobody delivered yet, L1's relay vector, the routes
//! to post them by (a VMCS12's posted-interrupt descriptor), and each VM's
//! [`VmIrqCell`]: what it programmed into its IOAPIC and its vCPUs' routes,
//! which a CPU serving its ports reaches without the machine.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::identity::VmId;
use super::ioapic::IoApic;
use super::vm_irqs::VmIrqCell;

/// Where L0 posts a user VM's interrupts when its guest hypervisor runs it
/// with posted interrupts (KVM with APICv): VMCS12's descriptor and
/// notification vector, and its virtual-APIC page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PiRoute {
    pub desc: u64,
    pub nv: u8,
    pub vapic: u64,
}

/// A VMCS12's route, and the VM whose cell holds it.
struct Recorded {
    route: PiRoute,
    vm: Option<VmId>,
}

#[derive(Default)]
pub struct Interrupts {
    /// L1's relay vector (ABI op SetIrqRelay).
    pub relay_vector: Option<u8>,
    /// Interrupt edges not yet delivered, per VM.
    pending: BTreeMap<VmId, u16>,
    /// VMs with edges since the last routing pass ([`Interrupts::edges`]):
    /// a pass tries only these, so edges that wait for L1's relay cost
    /// later exits nothing.
    fresh: BTreeSet<VmId>,
    /// A route was recorded or changed since the last routing pass: then
    /// every waiting edge is tried again.
    retry_all: bool,
    /// A relay interrupt for the pending edges reached L1.
    announced: bool,
    /// Posted-interrupt routes by VMCS12 (recorded at each VM entry).
    pi_routes: BTreeMap<u64, Recorded>,
    /// The most routes kept (L0's VMCS12 bound; None: no bound). An L1
    /// that enters ever new VMCS12s without VMCLEARing them gets no route
    /// for those beyond it: their edges wait for the relay.
    route_cap: Option<usize>,
    /// Each VM's IOAPIC and routes, behind the VM's own lock.
    vms: BTreeMap<VmId, VmIrqCell>,
}

impl Interrupts {
    /// Edges a VM's devices raised.
    pub fn note_edges(&mut self, vm: VmId, edges: u16) {
        if edges != 0 {
            *self.pending.entry(vm).or_insert(0) |= edges;
            self.fresh.insert(vm);
        }
    }

    /// Whether L1 is owed a relay interrupt: edges are pending that no
    /// relay interrupt has announced yet. L1's handler takes them all with
    /// TakeIrqs; new edges after that announce themselves again.
    pub fn irq_pending(&self) -> bool {
        self.relay_vector.is_some() && !self.pending.is_empty() && !self.announced
    }

    /// The relay interrupt reached L1.
    pub fn relay_delivered(&mut self) {
        self.announced = true;
    }

    /// L1 drains (TakeIrqs): edges from now on need a new announcement.
    /// The oldest VM's edges, taken.
    pub fn take_next(&mut self) -> Option<(VmId, u16)> {
        self.announced = false;
        let (&vm, &edges) = self.pending.iter().next()?;
        self.pending.remove(&vm);
        Some((vm, edges))
    }

    /// Whether a routing pass has edges to try (see [`Interrupts::edges`]).
    pub fn has_edges(&self) -> bool {
        !self.fresh.is_empty() || (self.retry_all && !self.pending.is_empty())
    }

    /// The undelivered edges a routing pass tries to post, by VM: those of
    /// VMs with new edges since the last pass, or every VM's after a route
    /// changed. The rest wait for L1's relay (TakeIrqs).
    pub fn edges(&mut self) -> Vec<(VmId, u16)> {
        let all = core::mem::take(&mut self.retry_all);
        let fresh = core::mem::take(&mut self.fresh);
        match all {
            true => self.pending.iter().map(|(&vm, &e)| (vm, e)).collect(),
            false => fresh
                .into_iter()
                .filter_map(|vm| Some((vm, *self.pending.get(&vm)?)))
                .collect(),
        }
    }

    /// Edges delivered by other means than L1's relay.
    pub fn take_edges(&mut self, vm: VmId, mask: u16) {
        if let Some(e) = self.pending.get_mut(&vm) {
            *e &= !mask;
            if *e == 0 {
                self.pending.remove(&vm);
            }
        }
    }

    /// Bounds the routes kept.
    pub fn set_route_cap(&mut self, cap: usize) {
        self.route_cap = Some(cap);
    }

    /// Records (or forgets) the posted-interrupt route of a VMCS12; a
    /// new one reaches a VM's cell with [`Interrupts::place`].
    pub fn set_pi_route(&mut self, vmcs12: u64, route: Option<PiRoute>) {
        let Some(r) = route else {
            return self.forget_vmcs(vmcs12);
        };
        let full = self.route_cap.is_some_and(|c| self.pi_routes.len() >= c);
        match self.pi_routes.get_mut(&vmcs12) {
            Some(rec) if rec.route == r => {}
            Some(rec) => {
                rec.route = r;
                self.retry_all = true;
                if let Some(c) = rec.vm.and_then(|vm| self.vms.get(&vm)) {
                    c.lock().insert_route(vmcs12, r);
                }
            }
            None if !full => {
                self.pi_routes
                    .insert(vmcs12, Recorded { route: r, vm: None });
                self.retry_all = true;
            }
            None => {}
        }
    }

    /// The route recorded for a VMCS12.
    pub fn pi_route(&self, vmcs12: u64) -> Option<PiRoute> {
        self.pi_routes.get(&vmcs12).map(|r| r.route)
    }

    /// VM `vm`'s cell, made at its first use (the caller knows the VM).
    pub fn cell(&mut self, vm: VmId) -> VmIrqCell {
        self.vms.entry(vm).or_default().clone()
    }

    /// VM `vm`'s cell if it has one.
    pub fn cell_of(&self, vm: VmId) -> Option<&VmIrqCell> {
        self.vms.get(&vm)
    }

    /// Puts a VMCS12's route into the cell of the VM it serves now (`vm`;
    /// None: no VM), out of the one that held it before.
    pub fn place(&mut self, vmcs12: u64, vm: Option<VmId>) {
        let Some(rec) = self.pi_routes.get_mut(&vmcs12) else {
            return;
        };
        if rec.vm == vm {
            return;
        }
        if let Some(c) = rec.vm.take().and_then(|old| self.vms.get(&old)) {
            c.lock().remove_route(vmcs12);
        }
        if let Some(vm) = vm {
            let c = self.vms.entry(vm).or_default();
            c.lock().insert_route(vmcs12, rec.route);
            rec.vm = Some(vm);
        }
    }

    /// A VM's IOAPIC register write; returns its routes encoded (they
    /// travel with the devices as a sealed blob's platform state).
    pub fn ioapic_write(&mut self, vm: VmId, offset: u64, value: u32) -> Vec<u8> {
        let cell = self.cell(vm);
        let mut irqs = cell.lock();
        let io = irqs.ioapic_mut();
        io.write(offset, value);
        io.encode()
    }

    /// The VM's IOAPIC as restored (or gone, `None`).
    pub fn set_ioapic(&mut self, vm: VmId, io: Option<IoApic>) {
        self.cell(vm).lock().set_ioapic(io);
    }

    /// The vector and destination the VM's IOAPIC gives `pin`, if it routes.
    pub fn ioapic_route(&self, vm: VmId, pin: u8) -> Option<(u8, super::ioapic::Destination)> {
        self.vms.get(&vm)?.lock().pin_route(pin)
    }

    /// A VMCS12 was cleared: its route goes, from its VM's cell too.
    pub fn forget_vmcs(&mut self, vmcs12: u64) {
        let Some(rec) = self.pi_routes.remove(&vmcs12) else {
            return;
        };
        if let Some(c) = rec.vm.and_then(|vm| self.vms.get(&vm)) {
            c.lock().remove_route(vmcs12);
        }
    }

    /// L1 left VMX operation: every route goes.
    pub fn forget_all_routes(&mut self) {
        self.pi_routes.clear();
        for c in self.vms.values() {
            c.lock().clear_routes();
        }
    }

    /// A VM ended: its edges, IOAPIC and routes go; a CPU still holding
    /// its cell finds it empty.
    pub fn forget_vm(&mut self, vm: VmId) {
        self.pending.remove(&vm);
        self.fresh.remove(&vm);
        if let Some(c) = self.vms.remove(&vm) {
            c.lock().clear();
        }
    }

    /// VMs with a cell (each VM's IOAPIC and routes).
    #[cfg(test)]
    pub fn cells(&self) -> usize {
        self.vms.len()
    }
}
