//! Shadow devices in L0: each user VM's COM1-COM4 are 16550A models in L0
//! (`shadow_devices`), never L1's. This module keeps them per VM
//! ([`identity`]), collects their interrupt edges for L1's relay and the
//! routes to post them by, and carries out save/restore for the migration
//! manager. What the operator should hear of it (a VM appeared, ended,
//! was restored) it leaves as [`Notice`]s for the console (`crate::console`).

use alloc::vec::Vec;

use shadow_devices::epoch::EpochLedger;
use shadow_devices::registry::{Registry, Restored, Saved};
use shadow_devices::seal::{CounterNonce, SealKey};
use shadow_devices::{Error, VmCell};
use ultracall_abi::VmTag;

pub mod ending;
pub mod identity;
pub mod interrupts;
pub mod ioapic;
pub mod limits;
pub mod notices;
pub mod vm_irqs;

use identity::{Identities, VmId};
use interrupts::Interrupts;
use ioapic::IoApic;
use limits::Limits;
use vm_irqs::VmIrqCell;

/// Random bytes for nonces (RDSEED/RDRAND on hardware).
pub type RandomFn = fn(&mut [u8]) -> bool;

/// Bytes free in L0's heap now.
pub type HeapFreeFn = fn() -> usize;

/// The COM port bases every user VM has.
pub const COM_PORTS: [u16; 4] = [0x3f8, 0x2f8, 0x3e8, 0x2e8];

/// Whether `port` is one of a user VM's COM1-COM4 registers.
pub fn is_com_port(port: u16) -> bool {
    COM_PORTS.iter().any(|&b| (b..b + 8).contains(&port))
}

/// What a restore that succeeded brought, told at the line's next visit
/// (logging costs more than the restore, and the migration waits for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreDone {
    pub epoch: u64,
    /// Unread operator input dropped (the VM is not the one that saved).
    pub input_dropped: usize,
    /// Each carried history: its port, first kept offset and end offset.
    pub histories: Vec<(u16, u64, u64)>,
}

/// What happened to the user VMs that the operator is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A VM appeared, or registered its tag.
    Vm(VmId),
    /// A VM ended.
    Gone(VmId),
    /// A restore was tried for `tag` (`vm`: the VM holding it, if any).
    Restore {
        vm: Option<VmId>,
        tag: VmTag,
        result: Result<RestoreDone, Error>,
    },
    /// A VM's devices were sealed and frozen.
    Saved { tag: VmTag, epoch: u64, len: usize },
}

pub struct Shadow {
    pub ids: Identities,
    pub devices: Registry<VmId>,
    key: Option<SealKey>,
    ledger: EpochLedger,
    nonces: CounterNonce<RandomFn>,
    /// Edges not yet delivered, the relay, routes and IOAPICs.
    pub irqs: Interrupts,
    /// VMCLEARs not yet carried out for the identities.
    endings: ending::Endings,
    /// For the console, oldest first, coalesced while the line is full.
    notices: notices::Notices,
    heap_free: HeapFreeFn,
    /// A VM was refused since the last one admitted (logged once).
    refusing: bool,
}

impl Shadow {
    pub fn new(key: Option<SealKey>, random: RandomFn) -> Self {
        let mut s = Shadow {
            ids: Identities::default(),
            devices: Registry::default(),
            key,
            ledger: EpochLedger::new(),
            nonces: CounterNonce::new(random),
            irqs: Interrupts::default(),
            endings: ending::Endings::default(),
            notices: notices::Notices::default(),
            heap_free: || usize::MAX,
            refusing: false,
        };
        s.set_limits(Limits::MAX, || usize::MAX);
        s
    }

    /// The bounds L0's heap sets (`limits::Limits::for_heap`), and how to
    /// learn what of it is free when a VM is created.
    pub fn set_limits(&mut self, limits: Limits, heap_free: HeapFreeFn) {
        self.ids.set_limits(limits);
        self.irqs.set_route_cap(limits.vmcs);
        self.heap_free = heap_free;
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// Moves on when a VMCS12 or EPT root may name another VM than before
    /// (`Identities::changes`): a VM's cell found at one generation is
    /// still that VM's, and still in the registry, while it stays.
    pub fn generation(&self) -> u64 {
        self.ids.changes()
    }

    /// The VM of an L2 exit with its devices' cell and its interrupt
    /// routes' cell, for a CPU to serve the VM's ports and post their
    /// edges without the machine (as [`Shadow::identify`]).
    pub fn identify_cell(
        &mut self,
        vmcs12: u64,
        eptp12: Option<u64>,
    ) -> Option<(VmId, VmCell, VmIrqCell)> {
        let vm = self.identify(vmcs12, eptp12)?;
        let devices = self.devices.cell(&vm)?;
        Some((vm, devices, self.irqs.cell(vm)))
    }

    /// Edges VM `vm`'s devices raised while a CPU served its ports without
    /// the machine: kept for delivery unless the VM ended meanwhile.
    pub fn note_edges(&mut self, vm: VmId, edges: u16) {
        if self.devices.contains(&vm) {
            self.irqs.note_edges(vm, edges);
        }
    }

    /// A one-byte access by VM `vm` to a COM port; `None` for a write.
    pub fn io(&mut self, vm: VmId, port: u16, write: Option<u8>) -> u8 {
        let mut v = self.devices.vm(vm);
        let r = match write {
            Some(b) => {
                v.io_write(port, b);
                0
            }
            None => v.io_read(port).unwrap_or(0xff),
        };
        let edges = v.take_irq_edges();
        self.irqs.note_edges(vm, edges);
        r
    }

    pub fn has_notices(&self) -> bool {
        !self.notices.is_empty()
    }

    /// Restore and save notices dropped while the line was full.
    pub fn notices_dropped(&self) -> u64 {
        self.notices.dropped()
    }

    /// The operator learnt of `vm` from a `list` or an attach.
    pub fn told(&mut self, vm: VmId) {
        self.notices.told(vm);
    }

    /// The oldest notice not yet told, as it goes out.
    pub fn pop_notice(&mut self) -> Option<Notice> {
        self.notices.pop()
    }

    /// Every pending notice, as if the line had room for all.
    #[cfg(test)]
    pub fn take_notices(&mut self) -> Vec<Notice> {
        core::iter::from_fn(|| self.pop_notice()).collect()
    }

    /// A save to log at L0's next visit to the line (not in the call's time).
    pub fn note_saved(&mut self, tag: VmTag, epoch: u64, len: usize) {
        self.notices.event(Notice::Saved { tag, epoch, len });
    }

    /// Whether the VM's devices were saved away (their I/O is held).
    pub fn frozen(&self, vm: VmId) -> bool {
        self.devices.get(&vm).is_some_and(|d| d.is_frozen())
    }

    /// TakeIrqs: one VM's new edges (and their VMCS pointer, and levels).
    pub fn take_irqs(&mut self) -> Option<(u64, u16, u16)> {
        while let Some((vm, edges)) = self.irqs.take_next() {
            let (Some(vmcs), Some(devs)) = (self.ids.vmcs_of(vm), self.devices.get(&vm)) else {
                continue; // the VM ended meanwhile
            };
            return Some((vmcs, edges, devs.irq_levels()));
        }
        None
    }

    /// The posted-interrupt routes of VM `vm`'s vCPUs (one per VMCS12 it
    /// entered with posted interrupts), the last one L0 learnt of first.
    pub fn pi_routes_of(&self, vm: VmId) -> Vec<interrupts::PiRoute> {
        match self.irqs.cell_of(vm) {
            Some(c) => c.lock().routes().copied().collect(),
            None => Vec::new(),
        }
    }

    /// Records (or forgets) a VMCS12's posted-interrupt route, in the
    /// cell of the VM it serves.
    pub fn set_pi_route(&mut self, vmcs12: u64, route: Option<interrupts::PiRoute>) {
        self.irqs.set_pi_route(vmcs12, route);
        self.irqs.place(vmcs12, self.ids.vm_of_vmcs(vmcs12));
    }

    /// Runs `f`, which may make `vmcs12` serve another VM; its route
    /// follows it to that VM's cell.
    fn keeping_route<T>(&mut self, vmcs12: u64, f: impl FnOnce(&mut Self) -> T) -> T {
        let changes = self.ids.changes();
        let r = f(self);
        if self.ids.changes() != changes {
            self.irqs.place(vmcs12, self.ids.vm_of_vmcs(vmcs12));
        }
        r
    }

    /// L2 wrote its IOAPIC (`offset` in the page).
    pub fn ioapic_write(&mut self, vm: VmId, offset: u64, value: u32) {
        let bytes = self.irqs.ioapic_write(vm, offset, value);
        let _ = self.devices.vm(vm).set_platform(&bytes);
    }

    /// L2 reset itself: its IOAPIC starts over.
    pub fn ioapic_reset(&mut self, vm: VmId) {
        self.irqs.set_ioapic(vm, None);
        let _ = self.devices.vm(vm).set_platform(&[]);
    }

    /// The VM of an L2 exit, creating its identity and devices on first
    /// use. None when a new VM is beyond the bounds or the heap cannot
    /// hold its worst case: it has no devices (its COM ports read as
    /// absent), nothing changed, and L0 says so once.
    pub fn identify(&mut self, vmcs12: u64, eptp12: Option<u64>) -> Option<VmId> {
        let vm = self.keeping_route(vmcs12, |s| match s.ids.lookup(vmcs12, eptp12) {
            Some(vm) => Some(vm),
            None => s.admit(vmcs12, eptp12),
        })?;
        if !self.devices.contains(&vm) {
            drop(self.devices.vm(vm));
            self.notices.vm(vm);
        }
        Some(vm)
    }

    /// A new VM, if the bounds and the heap hold its worst case.
    fn admit(&mut self, vmcs12: u64, eptp12: Option<u64>) -> Option<VmId> {
        let heap = (self.heap_free)();
        let vm = match heap >= Limits::vm_reserve() {
            true => self.ids.create(vmcs12, eptp12),
            false => None,
        };
        if vm.is_some() {
            self.refusing = false;
        } else if !core::mem::replace(&mut self.refusing, true) {
            let l = self.ids.limits();
            log::warn!(
                "user VM refused: {} of {} VMs, {} of {} VMCS12s, {} KiB of heap free; its COM ports stay absent",
                self.ids.len(),
                l.vms,
                self.ids.vmcs_count(),
                l.vmcs,
                heap >> 10
            );
        }
        vm
    }

    /// An entry into L2 with `vmcs12` and `eptp12`: the identities kept
    /// current, and a pending VMCLEAR of it void (the vCPU moved) or
    /// carried out now (the page serves another VM; ending.rs).
    pub fn note_entry(&mut self, vmcs12: u64, eptp12: Option<u64>) {
        let root = eptp12.map(identity::root_address);
        if self.endings.reentry(vmcs12, root) == ending::Reentry::Reused {
            self.vmclear_now(vmcs12);
        }
        self.keeping_route(vmcs12, |s| s.ids.note_entry(vmcs12, eptp12));
    }

    /// L1 VMCLEARed a VMCS12: carried out at `deadline` (TSC) unless it is
    /// entered again first (ending.rs); its posted-interrupt route goes now.
    pub fn vmclear(&mut self, vmcs12: u64, deadline: u64) {
        self.irqs.forget_vmcs(vmcs12);
        if let Some(root) = self.ids.root_of_vmcs(vmcs12) {
            self.endings.defer(vmcs12, root, deadline);
        }
    }

    /// Carries out the VMCLEARs whose deadline has passed at `now`.
    pub fn expire(&mut self, now: u64) {
        for vmcs12 in self.endings.due(now) {
            self.vmclear_now(vmcs12);
        }
    }

    /// A VMCLEAR for the identities: if that ended a VM, its devices go too.
    fn vmclear_now(&mut self, vmcs12: u64) {
        if let Some(vm) = self.keeping_route(vmcs12, |s| s.ids.vmclear(vmcs12)) {
            self.drop_vm(vm);
        }
    }

    /// L1 left VMX operation.
    pub fn vmxoff(&mut self) {
        self.endings.clear();
        self.irqs.forget_all_routes();
        for vm in self.ids.clear_all() {
            self.drop_vm(vm);
        }
    }

    fn drop_vm(&mut self, vm: VmId) {
        self.devices.remove(&vm);
        self.irqs.forget_vm(vm);
        log::info!("user VM {vm} ended");
        self.notices.gone(vm);
    }

    /// Binds `tag` to `vm`. Ok(true) when it is new; the same tag again is
    /// Ok(false) and says nothing (an agent may repeat it: a migrated VM is
    /// new to the destination's L0).
    pub fn register_tag(&mut self, vm: VmId, tag: VmTag) -> Result<bool, Error> {
        if self.devices.vm(vm).tag() == Some(tag) {
            return Ok(false);
        }
        self.devices.register_tag(vm, tag)?;
        self.notices.vm(vm);
        Ok(true)
    }

    pub fn list(&self, out: &mut [u8]) -> Result<usize, Error> {
        self.devices.encode_list(|&id| id, out)
    }

    pub fn vm_count(&self) -> usize {
        self.devices.len()
    }

    /// Seals the devices of the VM holding `tag`, hands the blob to
    /// `deliver` and freezes them once it took it (`Registry::save_with`).
    pub fn save_with<E>(
        &mut self,
        tag: &VmTag,
        deliver: impl FnOnce(&[u8]) -> Result<(), E>,
    ) -> Result<Result<Saved<VmId>, E>, Error> {
        let key = self.key.as_ref().ok_or(Error::NoKey)?;
        self.devices
            .save_with(tag, key, &mut self.ledger, &mut self.nonces, deliver)
    }

    /// Restores the devices of the VM holding `tag`. The operator hears
    /// the outcome either way (`restore` event): after a refusal the VM
    /// keeps the devices it had, and the console says why.
    pub fn restore(&mut self, tag: &VmTag, blob: &[u8]) -> Result<Restored<VmId>, Error> {
        let r = match self.key.as_ref() {
            Some(key) => self
                .devices
                .restore_sealed(tag, key, &mut self.ledger, blob),
            None => Err(Error::NoKey),
        };
        let mut result = r.as_ref().map_err(|e| *e).map(|ok| RestoreDone {
            epoch: ok.epoch,
            input_dropped: ok.input_dropped,
            histories: Vec::new(),
        });
        if let (Ok(ok), Ok(done)) = (&r, &mut result) {
            if let Some(d) = self.devices.get(&ok.vm) {
                // The routes the VM programmed on the source host.
                self.irqs.set_ioapic(ok.vm, IoApic::decode(d.platform()));
                done.histories = d
                    .devices()
                    .iter()
                    .filter_map(|dev| {
                        let (start, end) = dev.console_ref()?.history_offsets()?;
                        (end > 0).then_some((dev.ports().base, start, end))
                    })
                    .collect();
            }
        }
        self.notices.event(Notice::Restore {
            vm: match &r {
                Ok(ok) => Some(ok.vm),
                Err(_) => self.devices.find_by_tag(tag),
            },
            tag: *tag,
            result,
        });
        r
    }
}

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod tests;
