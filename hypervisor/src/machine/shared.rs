//! The one handle through which CPUs reach the machine: the `Machine`
//! behind its lock, taken only by an exit that needs it, and the facts
//! published at each unlock so that the exits that only ask need no lock
//! (docs/architecture.md, "Who owns what").
//!
//! Most exits never touch machine-wide state: an L2's CPUID round trip
//! through L1 is an exit reflected to L1 and a VMRESUME of an unchanged
//! VMCS12; a user VM's COM access goes to that VM's own lock (its
//! `shadow_devices::VmCell`, which the vCPU keeps while the user VMs'
//! identities stay as they were: `vm_generation`). They read the published
//! facts instead; everything that changes the machine happens under the
//! lock, and the lock's release publishes.
//!
//! Lock order: the machine, then one user VM's devices; never a VM's
//! devices and then the machine (a CPU that holds a VM's lock lets it go
//! before it takes the machine's).

use core::cell::OnceCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::Machine;

pub struct SharedMachine {
    machine: spin::Mutex<Machine>,
    /// Whether L1 is owed a relay interrupt (`Interrupts::irq_pending`).
    relay_owed: AtomicBool,
    /// EPT01's generation (`Ept01::generation`).
    ept01_generation: AtomicU64,
    /// The user VMs' identities' generation (`Shadow::generation`): a
    /// vCPU's VM cell found at generation `g` is that VM's while it is `g`.
    vm_generation: AtomicU64,
    /// User VMs' COM accesses are L0's (`shadow=off`: L1's), for good.
    intercept_com: bool,
    /// Counts the releases of the lock after which the machine may differ:
    /// a vCPU that noted something at epoch `e` need not note it again
    /// while the epoch is still `e`.
    epoch: AtomicU64,
}

impl SharedMachine {
    pub fn new(machine: Machine) -> Self {
        let owed = machine.shadow.irqs.irq_pending();
        let generation = machine.ept.generation;
        let vms = machine.shadow.generation();
        SharedMachine {
            machine: spin::Mutex::new(machine),
            relay_owed: AtomicBool::new(owed),
            ept01_generation: AtomicU64::new(generation),
            vm_generation: AtomicU64::new(vms),
            intercept_com: true,
            epoch: AtomicU64::new(0),
        }
    }

    /// The machine for one exit's handling, locked at its first use.
    pub fn lock(&self) -> MachineLock<'_> {
        MachineLock {
            shared: self,
            guard: OnceCell::new(),
        }
    }

    /// The machine without a lock, where nothing else can hold it.
    pub fn get_mut(&mut self) -> &mut Machine {
        self.machine.get_mut()
    }

    /// Whether L0 serves the user VMs' COM ports (`shadow=`), set before
    /// any CPU runs a guest.
    pub fn set_intercept_com(&mut self, on: bool) {
        self.intercept_com = on;
    }

    pub fn relay_owed(&self) -> bool {
        self.relay_owed.load(Ordering::Acquire)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// EPT01's generation: a CPU that saw an older one drops its
    /// EPT-derived translations before its next entry.
    pub fn ept01_generation(&self) -> u64 {
        self.ept01_generation.load(Ordering::Acquire)
    }
}

/// The machine as one exit reaches it: the lock is taken by the first
/// dereference and released with the exit's end.
pub struct MachineLock<'a> {
    shared: &'a SharedMachine,
    guard: OnceCell<spin::MutexGuard<'a, Machine>>,
}

impl MachineLock<'_> {
    /// Whether this exit took the lock.
    pub fn taken(&self) -> bool {
        self.guard.get().is_some()
    }

    /// Whether L1 is owed a relay interrupt, without taking the lock.
    pub fn relay_owed(&self) -> bool {
        match self.guard.get() {
            Some(m) => m.shadow.irqs.irq_pending(),
            None => self.shared.relay_owed(),
        }
    }

    /// The current epoch, without taking the lock.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch()
    }

    /// The user VMs' identities' generation, without taking the lock
    /// (under it, the machine's own count).
    pub fn vm_generation(&self) -> u64 {
        match self.guard.get() {
            Some(m) => m.shadow.generation(),
            None => self.shared.vm_generation.load(Ordering::Acquire),
        }
    }

    /// Whether L0 serves the user VMs' COM ports.
    pub fn intercept_com(&self) -> bool {
        self.shared.intercept_com
    }

    /// Takes the lock if no other CPU holds it (or this exit already
    /// does), without waiting: for work any later visit can do as well
    /// (pulling a console's output onto the management line).
    pub fn try_take(&mut self) -> bool {
        if self.taken() {
            return true;
        }
        match self.shared.machine.try_lock() {
            Some(g) => self.guard.set(g).is_ok(),
            None => false,
        }
    }

    /// The epoch at which what this exit does under the lock is published:
    /// only releases bump the epoch, and only the holder releases.
    pub fn epoch_after(&mut self) -> u64 {
        let _ = &mut **self;
        self.shared.epoch() + 1
    }

    /// Unlocks until the next use, publishing as at the exit's end: for an
    /// exit that waits (the management line's poll).
    pub fn release(&mut self) {
        self.publish();
        self.guard.take();
    }

    fn publish(&self) {
        if let Some(m) = self.guard.get() {
            let s = self.shared;
            s.relay_owed
                .store(m.shadow.irqs.irq_pending(), Ordering::Release);
            s.ept01_generation
                .store(m.ept.generation, Ordering::Release);
            s.vm_generation
                .store(m.shadow.generation(), Ordering::Release);
            s.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Deref for MachineLock<'_> {
    type Target = Machine;
    fn deref(&self) -> &Machine {
        self.guard.get_or_init(|| self.shared.machine.lock())
    }
}

impl DerefMut for MachineLock<'_> {
    fn deref_mut(&mut self) -> &mut Machine {
        let _ = self.guard.get_or_init(|| self.shared.machine.lock());
        self.guard.get_mut().expect("taken just now")
    }
}

impl Drop for MachineLock<'_> {
    fn drop(&mut self) {
        // Published while still held: the guard is dropped after this body.
        self.publish();
    }
}
