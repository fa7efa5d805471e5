//! What one user VM's interrupt edge needs on its way to a vCPU, behind a
//! lock of that VM's own ([`VmIrqCell`]): the VM's IOAPIC copy (which
//! vector and destination a pin raises) and its vCPUs' posted-interrupt
//! routes. A CPU that served the VM's COM ports posts the edges its UARTs
//! raised with this lock alone, never the machine's
//! (docs/architecture.md, "Who owns what").
//!
//! The machine writes it (under its own lock, then this one: the order is
//! machine, then VM), whenever what it derives from changes: an IOAPIC
//! write, a VMCS12's route recorded or forgotten, a VMCS12 that comes to
//! serve another VM. A VM that ends is emptied before it goes, so a CPU
//! still holding the cell posts nothing more.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;

use super::interrupts::PiRoute;
use super::ioapic::{Destination, IoApic};

/// One VM's routes, shared by the machine and the CPUs serving its ports.
pub type VmIrqCell = Arc<spin::Mutex<VmIrqs>>;

#[derive(Default)]
pub struct VmIrqs {
    /// What the VM programmed into its IOAPIC.
    ioapic: Option<IoApic>,
    /// The posted-interrupt routes of its vCPUs, by VMCS12.
    routes: BTreeMap<u64, PiRoute>,
    /// The VMCS12 whose route was recorded last: an edge whose destination
    /// no vCPU accepts goes there rather than nowhere.
    latest: Option<u64>,
}

impl VmIrqs {
    pub fn ioapic(&self) -> Option<&IoApic> {
        self.ioapic.as_ref()
    }

    pub fn set_ioapic(&mut self, io: Option<IoApic>) {
        self.ioapic = io;
    }

    /// The VM's IOAPIC, made on its first write.
    pub fn ioapic_mut(&mut self) -> &mut IoApic {
        self.ioapic.get_or_insert_with(IoApic::default)
    }

    /// The vector and destination the VM's IOAPIC gives `pin`, if it routes.
    pub fn pin_route(&self, pin: u8) -> Option<(u8, Destination)> {
        let io = self.ioapic.as_ref()?;
        Some((io.vector(pin)?, io.destination(pin)?))
    }

    /// Whether the VM's edges can be posted (else they wait for L1's relay).
    pub fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Every route, the one recorded last first.
    pub fn routes(&self) -> impl Iterator<Item = &PiRoute> {
        let latest = self.latest.and_then(|v| self.routes.get(&v));
        latest.into_iter().chain(
            self.routes
                .iter()
                .filter(move |(&v, _)| Some(v) != self.latest)
                .map(|(_, r)| r),
        )
    }

    pub fn insert_route(&mut self, vmcs12: u64, route: PiRoute) {
        self.routes.insert(vmcs12, route);
        self.latest = Some(vmcs12);
    }

    pub fn remove_route(&mut self, vmcs12: u64) {
        self.routes.remove(&vmcs12);
        if self.latest == Some(vmcs12) {
            self.latest = None;
        }
    }

    /// L1 left VMX operation: no vCPU of the VM runs any more.
    pub fn clear_routes(&mut self) {
        self.routes.clear();
        self.latest = None;
    }

    /// The VM ended: nothing routes any more.
    pub fn clear(&mut self) {
        *self = VmIrqs::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn route(desc: u64) -> PiRoute {
        PiRoute {
            desc,
            nv: 0xf2,
            vapic: desc + 0x1000,
        }
    }

    #[test]
    fn the_route_recorded_last_comes_first() {
        let mut v = VmIrqs::default();
        assert!(!v.has_routes());
        v.insert_route(0x3000, route(0x30_0000));
        v.insert_route(0x1000, route(0x10_0000));
        v.insert_route(0x2000, route(0x20_0000));
        let descs = |v: &VmIrqs| v.routes().map(|r| r.desc).collect::<alloc::vec::Vec<_>>();
        assert_eq!(descs(&v), [0x20_0000, 0x10_0000, 0x30_0000]);
        v.remove_route(0x2000);
        assert_eq!(descs(&v), [0x10_0000, 0x30_0000]);
        v.clear();
        assert!(!v.has_routes() && v.ioapic().is_none());
    }
}
