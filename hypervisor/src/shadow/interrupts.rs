//! The user VMs' interrupts on their way out of L0: the edges their shadow
//! UARTs raised that nobody delivered yet, L1's relay vector, the routes
//! to post them by (a VMCS12's posted-interrupt descriptor), and what each
//! VM programmed into its IOAPIC (which vector a pin raises).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use super::identity::VmId;
use super::ioapic::{Destination, IoApic};

/// Where L0 posts a user VM's interrupts when its guest hypervisor runs it
/// with posted interrupts (KVM with APICv): VMCS12's descriptor and
/// notification vector, and its virtual-APIC page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PiRoute {
    pub desc: u64,
    pub nv: u8,
    pub vapic: u64,
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
    pi_routes: BTreeMap<u64, PiRoute>,
    /// The most routes kept (L0's VMCS12 bound; None: no bound). An L1
    /// that enters ever new VMCS12s without VMCLEARing them gets no route
    /// for those beyond it: their edges wait for the relay.
    route_cap: Option<usize>,
    /// What each VM programmed into its IOAPIC.
    ioapics: BTreeMap<VmId, IoApic>,
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

    /// Records (or forgets) the posted-interrupt route of a VMCS12.
    pub fn set_pi_route(&mut self, vmcs12: u64, route: Option<PiRoute>) {
        match route {
            Some(r) => {
                let full = self.route_cap.is_some_and(|c| self.pi_routes.len() >= c);
                if (!full || self.pi_routes.contains_key(&vmcs12))
                    && self.pi_routes.insert(vmcs12, r) != Some(r)
                {
                    self.retry_all = true;
                }
            }
            None => {
                self.pi_routes.remove(&vmcs12);
            }
        }
    }

    /// The route recorded for a VMCS12.
    pub fn pi_route(&self, vmcs12: u64) -> Option<PiRoute> {
        self.pi_routes.get(&vmcs12).copied()
    }

    /// A VM's IOAPIC register write; returns its routes encoded (they
    /// travel with the devices as a sealed blob's platform state).
    pub fn ioapic_write(&mut self, vm: VmId, offset: u64, value: u32) -> Vec<u8> {
        let io = self.ioapics.entry(vm).or_default();
        io.write(offset, value);
        io.encode()
    }

    /// The VM's IOAPIC as restored (or gone, `None`).
    pub fn set_ioapic(&mut self, vm: VmId, io: Option<IoApic>) {
        match io {
            Some(io) => self.ioapics.insert(vm, io),
            None => self.ioapics.remove(&vm),
        };
    }

    /// The vector and destination the VM's IOAPIC gives `pin`, if it routes.
    pub fn ioapic_route(&self, vm: VmId, pin: u8) -> Option<(u8, Destination)> {
        let io = self.ioapics.get(&vm)?;
        Some((io.vector(pin)?, io.destination(pin)?))
    }

    /// A VMCS12 was cleared: its route goes.
    pub fn forget_vmcs(&mut self, vmcs12: u64) {
        self.pi_routes.remove(&vmcs12);
    }

    /// L1 left VMX operation: every route goes.
    pub fn forget_all_routes(&mut self) {
        self.pi_routes.clear();
    }

    /// A VM ended: its edges and IOAPIC go.
    pub fn forget_vm(&mut self, vm: VmId) {
        self.pending.remove(&vm);
        self.fresh.remove(&vm);
        self.ioapics.remove(&vm);
    }
}
