//! The registry: every VM's shadow devices, keyed by L0's VM identity.
//!
//! `K` is whatever L0 uses to name a VM (`Ord + Copy`). A VM's device set
//! is created on first access from a [`DeviceFactory`] (by default the
//! four PC UARTs), so L0 never has to pre-register VMs; unknown keys in
//! read-only queries return `None`, never panic.
//!
//! It also carries the per-VM facts the ultracalls need — the VM tag
//! (unique across VMs, set once) and the *frozen* flag (set by a committed
//! save: the state has left, so the devices stop changing) — and the
//! save/restore flows that tie device state, sealing and the epoch ledger
//! together:
//!
//! - save is two-phase. [`Registry::prepare_save`] seals without changing
//!   anything; L0 copies the blob to the caller; only then
//!   [`Registry::commit_save`] freezes the devices and records the epoch.
//!   A buffer too small or a copy fault therefore costs nothing. Hold the
//!   registry lock from prepare to commit.
//! - [`Registry::restore_sealed`] opens, validates every device state,
//!   applies them all, then consumes the epoch and thaws the VM; on any
//!   error nothing changed. Typed input the saved VM had not read goes
//!   back only to that VM (a rollback of its own save, still frozen here):
//!   a restore into any other VM, a new one with the same tag here or on
//!   another host, drops it ([`Restored::input_dropped`]).
//! - a committed save ends the journal (see [`VmDevices`]): a rollback
//!   restores the sealed state alone and shows no output twice.
//!
//! Each VM's devices sit behind their own lock ([`VmCell`]): the holder
//! of the registry (L0's machine lock) reaches every VM through it, and a
//! CPU that holds a VM's cell serves that VM's port I/O without the
//! registry. Order: the registry's holder may lock a VM, never the
//! reverse; one VM at a time. A save seals and freezes under the VM's lock,
//! so no I/O on another CPU lands between the seal and the freeze.
//!
//! Device-set state (the sealed payload, class
//! [`ultracall_abi::DEVICE_CLASS_DEVICE_SET`]), format version 2, LE:
//! `u16 version, u16 device count, u32 platform length`, then per device
//! `u16 class, u16 first port, u32 state length, state bytes`, in the
//! order of the VM's devices, then the platform bytes: what the hypervisor
//! keeps about the VM's wiring of the devices (L0: the interrupt routes
//! the VM programmed into its IOAPIC), opaque here, at most
//! [`MAX_PLATFORM_STATE`] bytes. Version 3 appends the VM's owner keys
//! (`u8 count`, then per key `u8 access, 32 bytes`; crate::owner_keys).
//! Version 4 appends the ports' output histories (the newest bytes of
//! each with its end offset; crate::histories). Versions 3 (no
//! histories), 2 (no keys either) and 1 (no platform bytes either, that
//! field reserved 0) are still read; a set read from them restores no
//! key, and no history.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use ultracall_abi::list::{DeviceInfo, ListEncoder, VmInfo};
use ultracall_abi::{VmTag, DEVICE_CLASS_DEVICE_SET};

use crate::device::ShadowDevice;
use crate::epoch::EpochLedger;
use crate::error::Error;
use crate::histories::{self, SealedHistory};
use crate::owner_keys::OwnerKeys;
use crate::seal::{self, NonceSource, SealKey};
use crate::uart16550::history::HistoryBudget;
use crate::uart16550::ComPort;
use crate::wire::{Reader, Writer};

/// The device-set state format version.
pub const DEVICE_SET_VERSION: u16 = 4;

/// The largest platform state a device set carries.
pub const MAX_PLATFORM_STATE: usize = 512;

/// Builds a new VM's devices.
pub type DeviceFactory = fn() -> Vec<Box<dyn ShadowDevice>>;

/// The default factory: UARTs at COM1..COM4 (0x3F8/4, 0x2F8/3, 0x3E8/4, 0x2E8/3).
pub fn pc_uarts() -> Vec<Box<dyn ShadowDevice>> {
    ComPort::ALL
        .iter()
        .map(|p| Box::new(p.uart()) as Box<dyn ShadowDevice>)
        .collect()
}

/// How many guest writes a device set remembers until its first restore.
pub const JOURNAL_MAX: usize = 4096;

/// One VM's shadow devices and their migration state.
pub struct VmDevices {
    devices: Vec<Box<dyn ShadowDevice>>,
    tag: Option<VmTag>,
    frozen: bool,
    platform: Vec<u8>,
    /// The guest's port writes (port, value) from the set's creation until
    /// its first restore or save, while there are at most [`JOURNAL_MAX`]: a VM
    /// resumed on another host writes to fresh devices until its manager
    /// restores the sealed ones, and the restore replays these writes on
    /// the restored state, so output written meanwhile is kept and the
    /// driver's register writes (IER above all) still hold. A committed
    /// save ends it: the sealed state already holds those writes, and a
    /// rollback replaying them would send their output twice.
    journal: Option<Vec<(u16, u8)>>,
    /// Who may open the VM's consoles through an owner session.
    owner_keys: OwnerKeys,
    /// The epoch of this set's committed save, until a restore: a restore
    /// of that epoch is this VM's rollback, the only restore that keeps
    /// the saved VM's unread input.
    saved_epoch: Option<u64>,
}

impl core::fmt::Debug for VmDevices {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmDevices")
            .field("devices", &self.devices.len())
            .field("tag", &self.tag)
            .field("frozen", &self.frozen)
            .finish()
    }
}

impl VmDevices {
    /// A device set (as a factory builds it).
    pub fn new(devices: Vec<Box<dyn ShadowDevice>>) -> VmDevices {
        VmDevices {
            devices,
            tag: None,
            frozen: false,
            platform: Vec::new(),
            journal: Some(Vec::new()),
            owner_keys: OwnerKeys::default(),
            saved_epoch: None,
        }
    }

    /// The VM's owner keys.
    pub fn owner_keys(&self) -> &OwnerKeys {
        &self.owner_keys
    }

    /// The VM's owner keys, to add one.
    pub fn owner_keys_mut(&mut self) -> &mut OwnerKeys {
        &mut self.owner_keys
    }

    #[cfg(test)]
    pub(crate) fn freeze_for_test(&mut self) {
        self.frozen = true;
    }

    /// The VM's tag, once registered.
    pub fn tag(&self) -> Option<VmTag> {
        self.tag
    }

    /// True after a committed save, until a restore.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// The devices.
    pub fn devices(&self) -> &[Box<dyn ShadowDevice>] {
        &self.devices
    }

    /// The devices, mutable (consoles, reset). Port I/O should go through
    /// [`VmDevices::io_read`]/[`VmDevices::io_write`], which honour freezing.
    pub fn devices_mut(&mut self) -> &mut [Box<dyn ShadowDevice>] {
        &mut self.devices
    }

    /// The device claiming `port`.
    pub fn device_at(&mut self, port: u16) -> Option<&mut (dyn ShadowDevice + 'static)> {
        self.devices
            .iter_mut()
            .find(|d| d.ports().contains(port))
            .map(|d| &mut **d)
    }

    /// True when a device claims `port` (L0 traps exactly these ports).
    pub fn claims(&self, port: u16) -> bool {
        self.devices.iter().any(|d| d.ports().contains(port))
    }

    /// A one-byte guest read; `None` if no device claims the port. A frozen
    /// VM reads 0xFF without side effects: its state has been sealed away.
    pub fn io_read(&mut self, port: u16) -> Option<u8> {
        let frozen = self.frozen;
        let dev = self.device_at(port)?;
        Some(if frozen { 0xFF } else { dev.io_read(port) })
    }

    /// A one-byte guest write; false if no device claims the port. Dropped
    /// while frozen.
    pub fn io_write(&mut self, port: u16, value: u8) -> bool {
        let frozen = self.frozen;
        let Some(dev) = self.device_at(port) else {
            return false;
        };
        if !frozen {
            dev.io_write(port, value);
            match &mut self.journal {
                Some(j) if j.len() < JOURNAL_MAX => j.push((port, value)),
                Some(_) => self.journal = None, // too long: a restore replaces
                None => {}
            }
        }
        true
    }

    /// ISA IRQs (bit n = IRQ n, n < 16) with a rising edge since the last
    /// call; L0 posts each once.
    pub fn take_irq_edges(&mut self) -> u16 {
        let mut edges = 0u16;
        for d in &mut self.devices {
            if d.take_irq_edge() {
                if let Some(irq) = d.isa_irq().filter(|&i| i < 16) {
                    edges |= 1 << irq;
                }
            }
        }
        edges
    }

    /// ISA IRQ levels (bit n = IRQ n), the OR of the devices sharing a line.
    pub fn irq_levels(&self) -> u16 {
        let mut levels = 0u16;
        for d in &self.devices {
            if d.irq_line() {
                if let Some(irq) = d.isa_irq().filter(|&i| i < 16) {
                    levels |= 1 << irq;
                }
            }
        }
        levels
    }

    /// Resets every device (the guest's platform reset).
    pub fn reset(&mut self) {
        for d in &mut self.devices {
            d.reset();
        }
    }

    /// The hypervisor's state about this VM's platform that travels with
    /// the devices (see the module docs).
    pub fn platform(&self) -> &[u8] {
        &self.platform
    }

    /// Sets the platform state; refused beyond [`MAX_PLATFORM_STATE`].
    pub fn set_platform(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if bytes.len() > MAX_PLATFORM_STATE {
            return Err(Error::StateField("platform state length"));
        }
        self.platform.clear();
        self.platform.extend_from_slice(bytes);
        Ok(())
    }

    /// The device-set state (every device's state, then the platform's).
    pub fn save_set(&self) -> Vec<u8> {
        // One buffer for everything, large enough for the usual set with
        // its backlogs and a short history tail (a save that grows it
        // copies it; saves run under emulators too).
        let mut w = Writer::with_capacity(4096 + self.platform.len());
        w.u16(DEVICE_SET_VERSION);
        w.u16(u16::try_from(self.devices.len()).unwrap_or(u16::MAX));
        w.u32(self.platform.len() as u32);
        for d in &self.devices {
            w.u16(d.class());
            w.u16(d.ports().base);
            let at = w.buf.len();
            w.u32(0);
            d.save_state_into(&mut w.buf);
            let len = u32::try_from(w.buf.len() - at - 4).unwrap_or(u32::MAX);
            w.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        w.bytes(&self.platform);
        self.owner_keys.encode(&mut w);
        histories::encode(&self.devices, &mut w);
        w.buf
    }

    /// Splits a device-set state into per-device states and the platform
    /// state after checking the framing and that it describes exactly
    /// these devices.
    fn split_set<'a>(&self, bytes: &'a [u8]) -> Result<SplitSet<'a>, Error> {
        let mut r = Reader::new(bytes);
        let version = r.u16()?;
        if !(1..=DEVICE_SET_VERSION).contains(&version) {
            return Err(Error::StateVersion { found: version });
        }
        let count = usize::from(r.u16()?);
        let platform_len = r.u32()? as usize;
        if version == 1 && platform_len != 0 {
            return Err(Error::StateField("device set reserved field"));
        }
        if platform_len > MAX_PLATFORM_STATE {
            return Err(Error::StateField("platform state length"));
        }
        if count != self.devices.len() {
            return Err(Error::DeviceMismatch);
        }
        let mut states = Vec::with_capacity(count);
        for d in &self.devices {
            let class = r.u16()?;
            let base = r.u16()?;
            let len = r.u32()? as usize;
            if class != d.class() || base != d.ports().base {
                return Err(Error::DeviceMismatch);
            }
            states.push(r.take(len)?);
        }
        let platform = r.take(platform_len)?;
        let keys = if version >= 3 {
            OwnerKeys::decode(&mut r)?
        } else {
            OwnerKeys::default()
        };
        let histories = if version >= 4 {
            histories::decode(&mut r, &self.devices)?
        } else {
            Vec::new()
        };
        r.finish()?;
        Ok(SplitSet {
            states,
            platform,
            keys,
            histories,
        })
    }

    /// Checks a device-set state without applying it.
    pub fn validate_set(&self, bytes: &[u8]) -> Result<(), Error> {
        let states = self.split_set(bytes)?.states;
        for (d, s) in self.devices.iter().zip(&states) {
            d.validate_state(s)?;
        }
        Ok(())
    }

    /// Restores every device, all or nothing; then replays the guest's
    /// writes since the set was made (its first restore only; see
    /// [`JOURNAL_MAX`]). Whether an operator follows each console stays as
    /// it is here: that is this host's fact, not the VM's (a console the
    /// sealed state called followed, with nobody following it here, would
    /// push back on the guest once its backlog filled, for good). The
    /// ports' histories continue at their sealed offsets, their buffers
    /// charged to `budget` (a history it has no room for is unavailable;
    /// the restore still succeeds).
    pub fn restore_set(
        &mut self,
        bytes: &[u8],
        budget: &'static HistoryBudget,
    ) -> Result<(), Error> {
        let SplitSet {
            states,
            platform,
            keys,
            histories,
        } = self.split_set(bytes)?;
        let platform = platform.to_vec();
        for (d, s) in self.devices.iter().zip(&states) {
            d.validate_state(s)?;
        }
        let followed: Vec<bool> = self
            .devices
            .iter()
            .map(|d| d.console_ref().is_some_and(|c| c.operator_attached()))
            .collect();
        let backups: Vec<Vec<u8>> = self.devices.iter().map(|d| d.save_state()).collect();
        for (i, state) in states.iter().enumerate() {
            let Some(dev) = self.devices.get_mut(i) else {
                break;
            };
            if let Err(e) = dev.restore_state(state) {
                // Validation passed, so this is a device bug; still leave
                // every device as it was.
                for (d, b) in self.devices.iter_mut().zip(&backups).take(i) {
                    let _ = d.restore_state(b);
                }
                return Err(e);
            }
        }
        self.platform = platform;
        self.owner_keys = keys;
        for h in &histories {
            if let Some(c) = self.device_at(h.port).and_then(|d| d.console()) {
                c.continue_history(budget, h.end, h.tail);
            }
        }
        for (d, followed) in self.devices.iter_mut().zip(followed) {
            if let Some(c) = d.console() {
                c.set_operator_attached(followed);
            }
        }
        // What the guest wrote to the devices it had until now, on top.
        for (port, value) in self.journal.take().unwrap_or_default() {
            if let Some(d) = self.device_at(port) {
                d.io_write(port, value);
            }
        }
        Ok(())
    }

    /// A committed save: the devices stop changing and the journal ends.
    fn freeze(&mut self, epoch: u64) {
        self.frozen = true;
        self.journal = None;
        self.saved_epoch = Some(epoch);
    }

    /// Drops the unread operator input of every device; returns the count.
    fn drop_input(&mut self) -> usize {
        self.devices
            .iter_mut()
            .filter_map(|d| d.console())
            .map(|c| c.drop_input())
            .sum()
    }

    /// The devices as listed.
    pub fn device_infos(&self) -> Vec<DeviceInfo> {
        self.devices
            .iter()
            .map(|d| {
                let t = d.traffic();
                DeviceInfo {
                    class: d.class(),
                    port_base: d.ports().base,
                    port_count: d.ports().count,
                    isa_irq: d.isa_irq(),
                    operator_attached: d.console_ref().is_some_and(|c| c.operator_attached()),
                    bytes_in: t.bytes_in,
                    bytes_out: t.bytes_out,
                }
            })
            .collect()
    }
}

/// A device-set state taken apart and checked (`VmDevices::split_set`).
struct SplitSet<'a> {
    states: Vec<&'a [u8]>,
    platform: &'a [u8],
    keys: OwnerKeys,
    histories: Vec<SealedHistory<'a>>,
}

/// What a registry charges restored histories to until its holder says
/// otherwise (hosts tests and tools: no bound).
pub static UNBOUNDED_HISTORIES: HistoryBudget = HistoryBudget::new(usize::MAX);

/// A sealed save waiting for L0 to deliver it (see the module docs).
#[derive(Debug)]
pub struct PreparedSave<K> {
    vm: K,
    tag: VmTag,
    epoch: u64,
    plaintext: Vec<u8>,
    blob: Vec<u8>,
}

impl<K: Copy> PreparedSave<K> {
    /// The VM saved.
    pub fn vm(&self) -> K {
        self.vm
    }
    /// The blob's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// The blob to copy to the caller.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }
}

/// What a successful [`Registry::save_with`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved<K> {
    /// The VM saved (now frozen).
    pub vm: K,
    /// The blob's epoch.
    pub epoch: u64,
    /// The blob's length.
    pub len: usize,
}

/// What a successful restore did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restored<K> {
    /// The VM restored.
    pub vm: K,
    /// The blob's epoch (now consumed).
    pub epoch: u64,
    /// Unread operator input dropped: the VM is not the one that saved.
    pub input_dropped: usize,
}

/// One VM's devices behind their own lock, shared by the registry and the
/// CPUs that serve the VM's I/O.
pub type VmCell = Arc<spin::Mutex<VmDevices>>;

/// A VM's devices, locked.
pub type VmGuard<'a> = spin::MutexGuard<'a, VmDevices>;

/// Shadow devices of every VM, keyed by `K`.
pub struct Registry<K> {
    vms: BTreeMap<K, VmCell>,
    /// Who holds each tag: the ultracalls and the console find VMs by tag,
    /// and a scan of every VM would cost each call O(VMs).
    by_tag: BTreeMap<VmTag, K>,
    factory: DeviceFactory,
    /// What restored histories are charged to.
    histories: &'static HistoryBudget,
}

impl<K: Ord + Copy> Default for Registry<K> {
    fn default() -> Self {
        Registry::new(pc_uarts)
    }
}

impl<K: Ord + Copy> Registry<K> {
    /// An empty registry whose VMs get devices from `factory`.
    pub fn new(factory: DeviceFactory) -> Registry<K> {
        Registry {
            vms: BTreeMap::new(),
            by_tag: BTreeMap::new(),
            factory,
            histories: &UNBOUNDED_HISTORIES,
        }
    }

    /// Charges the histories a restore brings to `budget` (the one the
    /// holder enables histories with).
    pub fn set_history_budget(&mut self, budget: &'static HistoryBudget) {
        self.histories = budget;
    }

    /// The VM's devices, created on first access, locked.
    pub fn vm(&mut self, key: K) -> VmGuard<'_> {
        let factory = self.factory;
        self.vms
            .entry(key)
            .or_insert_with(|| Arc::new(spin::Mutex::new(VmDevices::new(factory()))))
            .lock()
    }

    /// The VM's devices, locked (the guard gives mutable access), if it
    /// exists.
    pub fn get(&self, key: &K) -> Option<VmGuard<'_>> {
        self.vms.get(key).map(|c| c.lock())
    }

    /// The VM's cell: its devices for a CPU that serves the VM's I/O
    /// without holding the registry.
    pub fn cell(&self, key: &K) -> Option<VmCell> {
        self.vms.get(key).cloned()
    }

    /// Whether the VM exists.
    pub fn contains(&self, key: &K) -> bool {
        self.vms.contains_key(key)
    }

    /// Forgets a VM (it was destroyed); its tag becomes free. A CPU that
    /// still holds its cell changes only the forgotten devices.
    pub fn remove(&mut self, key: &K) -> Option<VmCell> {
        let vm = self.vms.remove(key)?;
        if let Some(t) = &vm.lock().tag {
            self.by_tag.remove(t);
        }
        Some(vm)
    }

    /// VM keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.vms.keys()
    }

    /// VMs in key order, each locked while the caller holds it.
    pub fn iter(&self) -> impl Iterator<Item = (&K, VmGuard<'_>)> {
        self.vms.iter().map(|(k, c)| (k, c.lock()))
    }

    /// VMs in key order from `key` on (a listing resumed where it stopped).
    pub fn iter_from(&self, key: K) -> impl Iterator<Item = (&K, VmGuard<'_>)> {
        self.vms.range(key..).map(|(k, c)| (k, c.lock()))
    }

    /// Number of VMs.
    pub fn len(&self) -> usize {
        self.vms.len()
    }

    /// True when there is no VM.
    pub fn is_empty(&self) -> bool {
        self.vms.is_empty()
    }

    /// The VM holding `tag`.
    pub fn find_by_tag(&self, tag: &VmTag) -> Option<K> {
        self.by_tag.get(tag).copied()
    }

    /// Binds `tag` to the VM (created if new). Idempotent for the same
    /// tag; a VM's tag is set once.
    pub fn register_tag(&mut self, key: K, tag: VmTag) -> Result<(), Error> {
        match self.find_by_tag(&tag) {
            Some(holder) if holder == key => return Ok(()),
            Some(_) => return Err(Error::TagInUse),
            None => {}
        }
        let mut vm = self.vm(key);
        if vm.tag.is_some() {
            return Err(Error::TagAlreadySet);
        }
        vm.tag = Some(tag);
        drop(vm);
        self.by_tag.insert(tag, key);
        Ok(())
    }

    /// Guest read of `port` in VM `key` (device set created on first access).
    pub fn io_read(&mut self, key: K, port: u16) -> Option<u8> {
        self.vm(key).io_read(port)
    }

    /// Guest write of `port` in VM `key`.
    pub fn io_write(&mut self, key: K, port: u16, value: u8) -> bool {
        self.vm(key).io_write(port, value)
    }

    /// Phase 1 of save: seals the devices of the VM holding `tag` with the
    /// next epoch. Changes nothing but the nonce source.
    pub fn prepare_save(
        &self,
        tag: &VmTag,
        key: &SealKey,
        ledger: &EpochLedger,
        nonces: &mut dyn NonceSource,
    ) -> Result<PreparedSave<K>, Error> {
        let vm_key = self.find_by_tag(tag).ok_or(Error::UnknownTag)?;
        let vm = self.get(&vm_key).ok_or(Error::UnknownTag)?;
        if vm.frozen {
            return Err(Error::Frozen);
        }
        let epoch = ledger.next_save_epoch(tag)?;
        let plaintext = vm.save_set();
        let blob = seal::seal(key, DEVICE_CLASS_DEVICE_SET, tag, epoch, &plaintext, nonces)?;
        Ok(PreparedSave {
            vm: vm_key,
            tag: *tag,
            epoch,
            plaintext,
            blob,
        })
    }

    /// Phase 2 of save, after the blob reached the caller: freezes the
    /// devices and records the epoch. Refuses ([`Error::StaleSave`]) if the
    /// VM, its tag, its devices or the ledger changed since phase 1.
    pub fn commit_save(
        &mut self,
        prepared: PreparedSave<K>,
        ledger: &mut EpochLedger,
    ) -> Result<(), Error> {
        if ledger.next_save_epoch(&prepared.tag) != Ok(prepared.epoch) {
            return Err(Error::StaleSave);
        }
        let mut vm = self.get(&prepared.vm).ok_or(Error::StaleSave)?;
        if vm.tag != Some(prepared.tag) || vm.frozen || vm.save_set() != prepared.plaintext {
            return Err(Error::StaleSave);
        }
        vm.freeze(prepared.epoch);
        ledger.record_save(&prepared.tag, prepared.epoch);
        Ok(())
    }

    /// Both phases of save for a caller that holds the registry from the
    /// seal to the freeze (L0, within one exit): seals, hands the blob to
    /// `deliver`, and only if that takes it freezes the devices and
    /// records the epoch, all under the VM's lock (`deliver` must not
    /// lock it). Nothing can change in between, so unlike
    /// [`Registry::commit_save`] this need not serialize the devices a
    /// second time to prove it. On `Err` from `deliver` nothing changed but
    /// the nonce source.
    pub fn save_with<E>(
        &mut self,
        tag: &VmTag,
        key: &SealKey,
        ledger: &mut EpochLedger,
        nonces: &mut dyn NonceSource,
        deliver: impl FnOnce(&[u8]) -> Result<(), E>,
    ) -> Result<Result<Saved<K>, E>, Error> {
        let vm_key = self.find_by_tag(tag).ok_or(Error::UnknownTag)?;
        let mut vm = self.get(&vm_key).ok_or(Error::UnknownTag)?;
        if vm.frozen {
            return Err(Error::Frozen);
        }
        let epoch = ledger.next_save_epoch(tag)?;
        let blob = seal::seal(
            key,
            DEVICE_CLASS_DEVICE_SET,
            tag,
            epoch,
            &vm.save_set(),
            nonces,
        )?;
        if let Err(e) = deliver(&blob) {
            return Ok(Err(e));
        }
        vm.freeze(epoch);
        ledger.record_save(tag, epoch);
        Ok(Ok(Saved {
            vm: vm_key,
            epoch,
            len: blob.len(),
        }))
    }

    /// Restores the devices of the VM holding `tag` from a blob; consumes
    /// the blob's epoch and thaws the VM. All or nothing.
    pub fn restore_sealed(
        &mut self,
        tag: &VmTag,
        key: &SealKey,
        ledger: &mut EpochLedger,
        blob: &[u8],
    ) -> Result<Restored<K>, Error> {
        let vm_key = self.find_by_tag(tag).ok_or(Error::UnknownTag)?;
        let opened = seal::open(key, DEVICE_CLASS_DEVICE_SET, tag, ledger, blob)?;
        let budget = self.histories;
        let mut vm = self.get(&vm_key).ok_or(Error::UnknownTag)?;
        let epoch = opened.header.epoch;
        let own_rollback = vm.frozen && vm.saved_epoch == Some(epoch);
        vm.restore_set(&opened.plaintext, budget)?;
        let input_dropped = if own_rollback { 0 } else { vm.drop_input() };
        vm.frozen = false;
        vm.saved_epoch = None;
        ledger.record_restore(tag, epoch);
        Ok(Restored {
            vm: vm_key,
            epoch,
            input_dropped,
        })
    }

    /// Encodes the VM list ([`ultracall_abi::list`]) into `out`; `vm_id`
    /// gives each VM's identity number. Returns the length, or
    /// [`Error::BufferTooSmall`] with the length needed.
    pub fn encode_list(&self, vm_id: impl Fn(&K) -> u64, out: &mut [u8]) -> Result<usize, Error> {
        let mut enc = ListEncoder::new(out);
        for (k, vm) in self.iter() {
            let info = VmInfo {
                vm_id: vm_id(k),
                tag: vm.tag,
                frozen: vm.frozen,
            };
            enc.push_vm(&info, &vm.device_infos());
        }
        enc.finish().map_err(|e| match e {
            ultracall_abi::Error::BufferTooSmall { needed } => Error::BufferTooSmall { needed },
            _ => Error::PayloadTooLarge,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::CounterNonce;
    use crate::uart16550::registers::*;
    use ultracall_abi::list::ListView;

    fn tag(s: &str) -> VmTag {
        VmTag::new(s.as_bytes()).unwrap()
    }

    fn rng() -> impl FnMut(&mut [u8]) -> bool {
        let mut x = 88172645463325252u64;
        move |buf: &mut [u8]| {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            true
        }
    }

    #[test]
    fn device_set_created_on_first_access_with_four_uarts() {
        let mut r: Registry<u32> = Registry::default();
        assert!(r.get(&1).is_none());
        assert_eq!(r.io_read(1, 0x3f8 + LSR as u16), Some(LSR_THRE | LSR_TEMT));
        let vm = r.get(&1).unwrap();
        let ports: Vec<u16> = vm.devices().iter().map(|d| d.ports().base).collect();
        assert_eq!(ports, [0x3f8, 0x2f8, 0x3e8, 0x2e8]);
        let irqs: Vec<Option<u8>> = vm.devices().iter().map(|d| d.isa_irq()).collect();
        assert_eq!(irqs, [Some(4), Some(3), Some(4), Some(3)]);
    }

    #[test]
    fn unclaimed_ports_are_not_handled() {
        let mut r: Registry<u32> = Registry::default();
        assert_eq!(r.io_read(1, 0x60), None);
        assert!(!r.io_write(1, 0x60, 0));
        assert!(r.io_write(1, 0x2ff, 0x55));
        assert_eq!(r.io_read(1, 0x2ff), Some(0x55));
    }

    #[test]
    fn unknown_keys_never_panic_and_remove_forgets() {
        let mut r: Registry<u32> = Registry::default();
        assert!(r.get(&9).is_none());
        assert!(r.remove(&9).is_none());
        r.vm(9);
        assert_eq!(r.len(), 1);
        assert!(r.remove(&9).is_some());
        assert!(r.is_empty());
    }

    #[test]
    fn iterates_in_key_order() {
        let mut r: Registry<u32> = Registry::default();
        for k in [5, 1, 3] {
            r.vm(k);
        }
        assert_eq!(r.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [1, 3, 5]);
    }

    #[test]
    fn tags_are_unique_and_set_once() {
        let mut r: Registry<u32> = Registry::default();
        r.register_tag(1, tag("a")).unwrap();
        assert_eq!(r.register_tag(1, tag("a")), Ok(()));
        assert_eq!(r.register_tag(2, tag("a")), Err(Error::TagInUse));
        assert_eq!(r.register_tag(1, tag("b")), Err(Error::TagAlreadySet));
        assert_eq!(r.find_by_tag(&tag("a")), Some(1));
        r.remove(&1);
        assert_eq!(r.register_tag(2, tag("a")), Ok(()));
    }

    #[test]
    fn edges_are_reported_per_isa_irq() {
        let mut r: Registry<u32> = Registry::default();
        let mut vm = r.vm(1);
        vm.io_write(0x2f8 + MCR as u16, MCR_OUT2);
        vm.io_write(0x2f8 + IER as u16, IER_THRE);
        assert_eq!(vm.irq_levels(), 1 << 3);
        assert_eq!(vm.take_irq_edges(), 1 << 3);
        assert_eq!(vm.take_irq_edges(), 0);
    }

    #[test]
    fn two_phase_save_then_restore_elsewhere() {
        let key = SealKey::new(&[1; 32]);
        let mut nonces = CounterNonce::new(rng());
        let (mut src_ledger, mut dst_ledger) = (EpochLedger::new(), EpochLedger::new());
        let mut src: Registry<u32> = Registry::default();
        src.register_tag(7, tag("web")).unwrap();
        src.io_write(7, 0x3f8 + SCR as u16, 0xAB);

        let prepared = src
            .prepare_save(&tag("web"), &key, &src_ledger, &mut nonces)
            .unwrap();
        assert_eq!(prepared.epoch(), 1);
        assert!(!src.get(&7).unwrap().is_frozen(), "prepare changes nothing");
        let blob = prepared.blob().to_vec();
        src.commit_save(prepared, &mut src_ledger).unwrap();
        assert!(src.get(&7).unwrap().is_frozen());
        assert_eq!(
            src.io_read(7, 0x3f8 + SCR as u16),
            Some(0xFF),
            "frozen reads float"
        );
        assert_eq!(
            src.prepare_save(&tag("web"), &key, &src_ledger, &mut nonces)
                .err(),
            Some(Error::Frozen)
        );

        let mut dst: Registry<u64> = Registry::default();
        assert_eq!(
            dst.restore_sealed(&tag("web"), &key, &mut dst_ledger, &blob)
                .err(),
            Some(Error::UnknownTag)
        );
        dst.register_tag(100, tag("web")).unwrap();
        let restored = dst
            .restore_sealed(&tag("web"), &key, &mut dst_ledger, &blob)
            .unwrap();
        assert_eq!(
            restored,
            Restored {
                vm: 100,
                epoch: 1,
                input_dropped: 0
            }
        );
        assert_eq!(dst.io_read(100, 0x3f8 + SCR as u16), Some(0xAB));
        assert_eq!(
            dst.restore_sealed(&tag("web"), &key, &mut dst_ledger, &blob)
                .err(),
            Some(Error::Replayed { epoch: 1, high: 1 })
        );
    }

    #[test]
    fn commit_refuses_a_stale_save() {
        let key = SealKey::new(&[1; 32]);
        let mut nonces = CounterNonce::new(rng());
        let mut ledger = EpochLedger::new();
        let mut r: Registry<u32> = Registry::default();
        r.register_tag(1, tag("vm")).unwrap();
        let prepared = r
            .prepare_save(&tag("vm"), &key, &ledger, &mut nonces)
            .unwrap();
        r.io_write(1, 0x3f8 + SCR as u16, 1); // the guest ran in between
        assert_eq!(r.commit_save(prepared, &mut ledger), Err(Error::StaleSave));
        assert!(!r.get(&1).unwrap().is_frozen());
        assert_eq!(ledger.high_water(&tag("vm")), None);
    }

    #[test]
    fn save_with_freezes_only_when_the_blob_was_delivered() {
        let key = SealKey::new(&[1; 32]);
        let mut nonces = CounterNonce::new(rng());
        let mut ledger = EpochLedger::new();
        let mut r: Registry<u32> = Registry::default();
        r.register_tag(1, tag("vm")).unwrap();
        let refused = r
            .save_with(&tag("vm"), &key, &mut ledger, &mut nonces, |_| {
                Err("buffer fault")
            })
            .unwrap();
        assert_eq!(refused, Err("buffer fault"));
        assert!(!r.get(&1).unwrap().is_frozen());
        assert_eq!(ledger.high_water(&tag("vm")), None);
        let mut got = Vec::new();
        let saved = r
            .save_with(&tag("vm"), &key, &mut ledger, &mut nonces, |b| {
                got = b.to_vec();
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
        assert_eq!((saved.vm, saved.epoch, saved.len), (1, 1, got.len()));
        assert!(r.get(&1).unwrap().is_frozen());
        assert_eq!(ledger.high_water(&tag("vm")), Some(1));
        assert_eq!(
            r.save_with(
                &tag("vm"),
                &key,
                &mut ledger,
                &mut nonces,
                |_| Ok::<(), ()>(())
            )
            .err(),
            Some(Error::Frozen)
        );
        // The blob restores elsewhere like a two-phase one.
        let mut dst: Registry<u32> = Registry::default();
        dst.register_tag(2, tag("vm")).unwrap();
        assert_eq!(
            dst.restore_sealed(&tag("vm"), &key, &mut EpochLedger::new(), &got)
                .unwrap()
                .epoch,
            1
        );
    }

    #[test]
    fn failed_restore_changes_nothing() {
        let key = SealKey::new(&[1; 32]);
        let mut nonces = CounterNonce::new(rng());
        let mut ledger = EpochLedger::new();
        let mut src: Registry<u32> = Registry::default();
        src.register_tag(1, tag("vm")).unwrap();
        let p = src
            .prepare_save(&tag("vm"), &key, &ledger, &mut nonces)
            .unwrap();
        let mut blob = p.blob().to_vec();
        let last = blob.len() - 1;
        blob[last] ^= 0x80;

        let mut dst: Registry<u32> = Registry::default();
        dst.register_tag(2, tag("vm")).unwrap();
        dst.io_write(2, 0x3f8 + SCR as u16, 0x42);
        let before = dst.get(&2).unwrap().save_set();
        assert_eq!(
            dst.restore_sealed(&tag("vm"), &key, &mut ledger, &blob)
                .err(),
            Some(Error::AuthFailed)
        );
        assert_eq!(dst.get(&2).unwrap().save_set(), before);
        assert!(ledger.is_empty());
    }

    #[test]
    fn restore_replays_what_the_vm_wrote_to_its_fresh_devices() {
        let (thr, ier) = (0x3f8, 0x3f9);
        let out = |r: &mut Registry<u32>, k: u32| {
            let mut buf = [0u8; 64];
            let mut vm = r.vm(k);
            let c = vm.device_at(thr).and_then(|d| d.console()).unwrap();
            let n = c.pull_output(&mut buf);
            buf[..n].to_vec()
        };
        let mut a: Registry<u32> = Registry::default();
        for &b in b"before " {
            a.io_write(1, thr, b);
        }
        let set = a.vm(1).save_set();
        // Host B: the resumed VM prints and enables the THR interrupt on
        // the fresh UART before its manager restores the sealed one.
        let mut b: Registry<u32> = Registry::default();
        for &v in b"after" {
            b.io_write(2, thr, v);
        }
        b.io_write(2, ier, 0x02);
        b.vm(2).restore_set(&set, &UNBOUNDED_HISTORIES).unwrap();
        assert_eq!(out(&mut b, 2), b"before after");
        assert_eq!(b.io_read(2, ier), Some(0x02), "the driver's IER stands");
        // Only the first restore replays; a VM that wrote too much before
        // it gets plain restores.
        b.io_write(2, thr, b'x');
        b.vm(2).restore_set(&set, &UNBOUNDED_HISTORIES).unwrap();
        assert_eq!(out(&mut b, 2), b"before ");
        let mut c: Registry<u32> = Registry::default();
        for _ in 0..=JOURNAL_MAX {
            c.io_write(3, 0x3ff, 0); // the scratch register
        }
        c.io_write(3, thr, b'y');
        c.vm(3).restore_set(&set, &UNBOUNDED_HISTORIES).unwrap();
        assert_eq!(out(&mut c, 3), b"before ");
    }

    /// Registry with VM `k` tagged "vm" that printed `out` (already pulled
    /// by the operator) and has `typed` unread input; then saved.
    fn saved_vm(k: u32, out: &[u8], typed: &[u8]) -> (Registry<u32>, EpochLedger, Vec<u8>) {
        let key = SealKey::new(&[1; 32]);
        let mut nonces = CounterNonce::new(rng());
        let mut ledger = EpochLedger::new();
        let mut r: Registry<u32> = Registry::default();
        r.register_tag(k, tag("vm")).unwrap();
        for &b in out {
            r.io_write(k, 0x3f8, b);
        }
        let mut vm = r.vm(k);
        let c = vm.device_at(0x3f8).and_then(|d| d.console()).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(c.pull_output(&mut buf), out.len());
        assert_eq!(c.push_input(typed), typed.len());
        drop(vm);
        let mut blob = Vec::new();
        r.save_with(&tag("vm"), &key, &mut ledger, &mut nonces, |b| {
            blob = b.to_vec();
            Ok::<(), ()>(())
        })
        .unwrap()
        .unwrap();
        (r, ledger, blob)
    }

    fn pending_output(r: &mut Registry<u32>, k: u32) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let mut vm = r.vm(k);
        let c = vm.device_at(0x3f8).and_then(|d| d.console()).unwrap();
        let n = c.pull_output(&mut buf);
        buf[..n].to_vec()
    }

    /// What the guest reads from COM1's receiver (LSR.DR, then RBR).
    fn unread_input(r: &mut Registry<u32>, k: u32) -> Vec<u8> {
        let mut got = Vec::new();
        while r.io_read(k, 0x3f8 + LSR as u16).unwrap() & LSR_DR != 0 {
            got.push(r.io_read(k, 0x3f8).unwrap());
        }
        got
    }

    #[test]
    fn a_rollback_after_a_save_shows_no_output_twice() {
        let key = SealKey::new(&[1; 32]);
        let (mut r, mut ledger, blob) = saved_vm(1, b"hello", b"");
        let restored = r
            .restore_sealed(&tag("vm"), &key, &mut ledger, &blob)
            .unwrap();
        assert_eq!(restored.epoch, 1);
        assert_eq!(
            pending_output(&mut r, 1),
            b"",
            "the journal went with the save"
        );
        // After the rollback the VM writes on as usual.
        r.io_write(1, 0x3f8, b'!');
        assert_eq!(pending_output(&mut r, 1), b"!");
    }

    #[test]
    fn unread_input_returns_only_to_the_vm_that_saved() {
        let key = SealKey::new(&[1; 32]);
        // A rollback into the frozen VM that saved: its input is back.
        let (mut r, mut ledger, blob) = saved_vm(1, b"", b"secret");
        let restored = r
            .restore_sealed(&tag("vm"), &key, &mut ledger, &blob)
            .unwrap();
        assert_eq!(restored.input_dropped, 0);
        assert_eq!(unread_input(&mut r, 1), b"secret");
        // The same host after the VM ended: a new VM with the same tag.
        let (mut r, mut ledger, blob) = saved_vm(1, b"", b"secret");
        r.remove(&1);
        r.register_tag(2, tag("vm")).unwrap();
        let restored = r
            .restore_sealed(&tag("vm"), &key, &mut ledger, &blob)
            .unwrap();
        assert_eq!((restored.vm, restored.input_dropped), (2, 6));
        assert_eq!(unread_input(&mut r, 2), b"");
        assert_eq!(r.io_read(2, 0x3f8), Some(0), "not even RBR's last byte");
        // Another host.
        let (_, _, blob) = saved_vm(1, b"", b"secret");
        let mut dst: Registry<u32> = Registry::default();
        dst.register_tag(9, tag("vm")).unwrap();
        let restored = dst
            .restore_sealed(&tag("vm"), &key, &mut EpochLedger::new(), &blob)
            .unwrap();
        assert_eq!(restored.input_dropped, 6);
        assert_eq!(unread_input(&mut dst, 9), b"");
    }

    #[test]
    fn whether_an_operator_follows_is_this_hosts_fact() {
        let attached = |r: &mut Registry<u32>, k: u32| {
            let mut vm = r.vm(k);
            let c = vm.device_at(0x3f8).and_then(|d| d.console()).unwrap();
            c.operator_attached()
        };
        let mut a: Registry<u32> = Registry::default();
        a.vm(1)
            .device_at(0x3f8)
            .and_then(|d| d.console())
            .unwrap()
            .set_operator_attached(true);
        let set = a.vm(1).save_set();
        // Nobody follows the VM on host B: its console does not push back.
        let mut b: Registry<u32> = Registry::default();
        b.vm(2).restore_set(&set, &UNBOUNDED_HISTORIES).unwrap();
        assert!(!attached(&mut b, 2));
        for _ in 0..100_000 {
            b.io_write(2, 0x3f8, b'x');
        }
        assert_ne!(b.io_read(2, 0x3fd).unwrap() & LSR_THRE, 0, "output flows");
        // Someone follows it on host C before the restore: still followed.
        let mut c: Registry<u32> = Registry::default();
        c.vm(3)
            .device_at(0x3f8)
            .and_then(|d| d.console())
            .unwrap()
            .set_operator_attached(true);
        c.vm(3).restore_set(&set, &UNBOUNDED_HISTORIES).unwrap();
        assert!(attached(&mut c, 3));
    }

    #[test]
    fn device_mismatch_is_detected() {
        fn one_uart() -> Vec<Box<dyn ShadowDevice>> {
            alloc::vec![Box::new(ComPort::Com1.uart()) as Box<dyn ShadowDevice>]
        }
        let four: Registry<u32> = Registry::default();
        let mut r4 = four;
        let set = r4.vm(1).save_set();
        let mut r1: Registry<u32> = Registry::new(one_uart);
        assert_eq!(
            r1.vm(1).restore_set(&set, &UNBOUNDED_HISTORIES),
            Err(Error::DeviceMismatch)
        );
    }

    #[test]
    fn platform_state_travels_with_the_devices() {
        let mut a: Registry<u32> = Registry::default();
        let mut b: Registry<u32> = Registry::default();
        a.vm(1).set_platform(b"routes").unwrap();
        assert!(a.vm(1).set_platform(&[0; MAX_PLATFORM_STATE + 1]).is_err());
        assert_eq!(
            a.vm(1).platform(),
            b"routes",
            "a refused platform state changes nothing"
        );
        let set = a.vm(1).save_set();
        b.vm(2).restore_set(&set, &UNBOUNDED_HISTORIES).unwrap();
        assert_eq!(b.vm(2).platform(), b"routes");
        // A version-1 set (no platform field) still restores, platform empty.
        let mut v1 = Registry::<u32>::default().vm(3).save_set();
        v1[0] = 1;
        v1.pop(); // the history count of version 4
        v1.pop(); // the owner-key count of version 3
        b.vm(2).restore_set(&v1, &UNBOUNDED_HISTORIES).unwrap();
        assert_eq!(b.vm(2).platform(), b"");
    }

    #[test]
    fn owner_keys_travel_with_the_devices() {
        use ultracall_abi::{KeyAccess, OwnerKey};
        let mut a: Registry<u32> = Registry::default();
        let mut b: Registry<u32> = Registry::default();
        let key = OwnerKey([7; 32]);
        a.vm(1)
            .owner_keys_mut()
            .add_first(key, KeyAccess::ReadWrite)
            .unwrap();
        let set = a.vm(1).save_set();
        // The destination's own registration in the window is replaced.
        b.vm(2)
            .owner_keys_mut()
            .add_first(OwnerKey([8; 32]), KeyAccess::ReadWrite)
            .unwrap();
        b.vm(2).restore_set(&set, &UNBOUNDED_HISTORIES).unwrap();
        assert_eq!(
            b.vm(2).owner_keys().access_of(&key),
            Some(KeyAccess::ReadWrite)
        );
        assert_eq!(b.vm(2).owner_keys().len(), 1);
        // A refused set leaves the keys alone.
        let mut bad = set.clone();
        let at = bad.len() - 34; // before the key and the history count
        bad[at] = 9; // the key's access
        assert_eq!(
            b.vm(2).restore_set(&bad, &UNBOUNDED_HISTORIES),
            Err(Error::StateField("owner key access"))
        );
        assert_eq!(b.vm(2).owner_keys().len(), 1);
        // A version-2 set (no keys) restores with none.
        let mut v2 = Registry::<u32>::default().vm(3).save_set();
        v2[0] = 2;
        v2.pop();
        v2.pop();
        b.vm(2).restore_set(&v2, &UNBOUNDED_HISTORIES).unwrap();
        assert!(b.vm(2).owner_keys().is_empty());
    }

    #[test]
    fn set_framing_errors() {
        let mut r: Registry<u32> = Registry::default();
        let mut vm = r.vm(1);
        let good = vm.save_set();
        let mut b = good.clone();
        b[0] = 5;
        assert_eq!(
            vm.restore_set(&b, &UNBOUNDED_HISTORIES),
            Err(Error::StateVersion { found: 5 })
        );
        b[0] = 0;
        assert_eq!(
            vm.restore_set(&b, &UNBOUNDED_HISTORIES),
            Err(Error::StateVersion { found: 0 })
        );
        let mut b = good.clone();
        b[0] = 1;
        b[4] = 1;
        assert_eq!(
            vm.restore_set(&b, &UNBOUNDED_HISTORIES),
            Err(Error::StateField("device set reserved field"))
        );
        let mut b = good.clone();
        b[4..8].copy_from_slice(&(MAX_PLATFORM_STATE as u32 + 1).to_le_bytes());
        assert_eq!(
            vm.restore_set(&b, &UNBOUNDED_HISTORIES),
            Err(Error::StateField("platform state length"))
        );
        let mut b = good.clone();
        b[4] = 1; // one platform byte announced, none there
        assert_eq!(
            vm.restore_set(&b, &UNBOUNDED_HISTORIES),
            Err(Error::StateTruncated)
        );
        let mut b = good.clone();
        b.push(0);
        assert_eq!(
            vm.restore_set(&b, &UNBOUNDED_HISTORIES),
            Err(Error::StateTrailingBytes)
        );
        assert_eq!(
            vm.restore_set(&good[..good.len() - 1], &UNBOUNDED_HISTORIES),
            Err(Error::StateTruncated)
        );
        let mut b = good;
        b[10] = 0xf9; // first device's port base
        assert_eq!(
            vm.restore_set(&b, &UNBOUNDED_HISTORIES),
            Err(Error::DeviceMismatch)
        );
    }

    #[test]
    fn list_encodes_every_vm() {
        let mut r: Registry<u32> = Registry::default();
        r.register_tag(2, tag("b")).unwrap();
        r.vm(1).io_write(0x3f8, b'x');
        let mut buf = [0u8; 16];
        let needed = match r.encode_list(|k| u64::from(*k) * 10, &mut buf) {
            Err(Error::BufferTooSmall { needed }) => needed,
            other => panic!("{other:?}"),
        };
        let mut buf = alloc::vec![0u8; needed];
        let n = r.encode_list(|k| u64::from(*k) * 10, &mut buf).unwrap();
        assert_eq!(n, needed);
        let view = ListView::parse(&buf).unwrap();
        let vms: Vec<_> = view.vms().collect();
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0].info.vm_id, 10);
        assert_eq!(vms[0].info.tag, None);
        assert_eq!(vms[0].devices().next().unwrap().bytes_out, 1);
        assert_eq!(vms[1].info.tag, Some(tag("b")));
        assert_eq!(vms[1].devices().count(), 4);
    }
}
