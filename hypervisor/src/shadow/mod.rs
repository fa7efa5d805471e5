//! Shadow devices in L0: each user VM's COM1-COM4 are 16550A models in L0
//! (`shadow_devices`), never L1's. This module keeps them per VM
//! ([`identity`]), serves the operator's console on L0's management line
//! (`shadow_devices::mgmt`), collects interrupt edges for L1's relay, and
//! carries out save/restore for the migration manager.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use shadow_devices::epoch::EpochLedger;
use shadow_devices::mgmt::{self, Command, Target};
use shadow_devices::registry::{Registry, Restored, Saved};
use shadow_devices::seal::{CounterNonce, SealKey};
use shadow_devices::Error;
use ultracall_abi::VmTag;

pub mod identity;
pub mod ioapic;

use identity::{Identities, VmId};
use ioapic::IoApic;

/// Where L0 posts a user VM's interrupts when its guest hypervisor runs it
/// with posted interrupts (KVM with APICv): VMCS12's descriptor and
/// notification vector, and its virtual-APIC page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PiRoute {
    pub desc: u64,
    pub nv: u8,
    pub vapic: u64,
}

/// Random bytes for nonces (RDSEED/RDRAND on hardware).
pub type RandomFn = fn(&mut [u8]) -> bool;

/// The COM port bases every user VM has.
pub const COM_PORTS: [u16; 4] = [0x3f8, 0x2f8, 0x3e8, 0x2e8];

/// Whether `port` is one of a user VM's COM1-COM4 registers.
pub fn is_com_port(port: u16) -> bool {
    COM_PORTS.iter().any(|&b| (b..b + 8).contains(&port))
}

/// A COM port the operator's console follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub vm: VmId,
    pub port: u16,
}

/// How many ports the console follows at once: the line is ~11 KB/s, a
/// few busy consoles fill it.
pub const MAX_SESSIONS: usize = 8;

pub struct Shadow {
    pub ids: Identities,
    pub devices: Registry<VmId>,
    key: Option<SealKey>,
    ledger: EpochLedger,
    nonces: CounterNonce<RandomFn>,
    /// L1's relay vector (ABI op SetIrqRelay).
    pub relay_vector: Option<u8>,
    /// Interrupt edges L1 has not taken yet, per VM.
    pending: BTreeMap<VmId, u16>,
    /// A relay interrupt for the pending edges reached L1.
    announced: bool,
    /// The ports the console follows; the last one attached takes input.
    /// Saves not yet logged (tag, epoch, blob length).
    pub saved_log: Vec<(VmTag, u64, usize)>,
    pub sessions: Vec<Session>,
    rx_line: Vec<u8>,
    /// Bytes of console input not yet accepted by the input port's device.
    input_backlog: Vec<u8>,
    /// Frames L0 sends unasked (a VM appeared, registered a tag, ended).
    notices: Frames,
    /// The operator asked for `stats`.
    pub stats_wanted: bool,
    /// User VMs' COM accesses are L0's (off: `shadow=off`, a baseline).
    pub intercept_com: bool,
    /// Posted-interrupt routes by VMCS12 (recorded at each VM entry).
    pi_routes: BTreeMap<u64, PiRoute>,
    /// What each VM programmed into its IOAPIC.
    ioapics: BTreeMap<VmId, IoApic>,
}

/// Frames to send to the operator.
pub type Frames = Vec<String>;

impl Shadow {
    pub fn new(key: Option<SealKey>, random: RandomFn) -> Self {
        Shadow {
            ids: Identities::new(),
            devices: Registry::default(),
            key,
            ledger: EpochLedger::new(),
            nonces: CounterNonce::new(random),
            relay_vector: None,
            pending: BTreeMap::new(),
            announced: false,
            saved_log: Vec::new(),
            sessions: Vec::new(),
            rx_line: Vec::new(),
            input_backlog: Vec::new(),
            notices: Vec::new(),
            stats_wanted: false,
            intercept_com: true,
            pi_routes: BTreeMap::new(),
            ioapics: BTreeMap::new(),
        }
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// A one-byte access by VM `vm` to a COM port; `None` for a write.
    pub fn io(&mut self, vm: VmId, port: u16, write: Option<u8>) -> u8 {
        let v = self.devices.vm(vm);
        let r = match write {
            Some(b) => {
                v.io_write(port, b);
                0
            }
            None => v.io_read(port).unwrap_or(0xff),
        };
        let edges = v.take_irq_edges();
        if edges != 0 {
            *self.pending.entry(vm).or_insert(0) |= edges;
        }
        r
    }

    /// Whether the VM's devices were saved away (their I/O is held).
    pub fn frozen(&self, vm: VmId) -> bool {
        self.devices.get(&vm).is_some_and(|d| d.is_frozen())
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

    /// TakeIrqs: one VM's new edges (and their VMCS pointer, and levels).
    pub fn take_irqs(&mut self) -> Option<(u64, u16, u16)> {
        // L1 is draining: edges from now on need a new announcement.
        self.announced = false;
        while let Some((&vm, &edges)) = self.pending.iter().next() {
            self.pending.remove(&vm);
            let (Some(vmcs), Some(devs)) = (self.ids.vmcs_of(vm), self.devices.get(&vm)) else {
                continue; // the VM ended meanwhile
            };
            return Some((vmcs, edges, devs.irq_levels()));
        }
        None
    }

    /// Records (or forgets) the posted-interrupt route of a VMCS12.
    pub fn set_pi_route(&mut self, vmcs12: u64, route: Option<PiRoute>) {
        match route {
            Some(r) => self.pi_routes.insert(vmcs12, r),
            None => self.pi_routes.remove(&vmcs12),
        };
    }

    /// The route of VM `vm` (through the VMCS12 it ran with last).
    pub fn pi_route_of(&self, vm: VmId) -> Option<PiRoute> {
        self.pi_routes.get(&self.ids.vmcs_of(vm)?).copied()
    }

    /// L2 wrote its IOAPIC (`offset` in the page).
    pub fn ioapic_write(&mut self, vm: VmId, offset: u64, value: u32) {
        let io = self.ioapics.entry(vm).or_default();
        io.write(offset, value);
        // The routes travel with the devices (a sealed blob's platform state).
        let bytes = io.encode();
        let _ = self.devices.vm(vm).set_platform(&bytes);
    }

    /// L2 reset itself: its IOAPIC starts over.
    pub fn ioapic_reset(&mut self, vm: VmId) {
        self.ioapics.remove(&vm);
        let _ = self.devices.vm(vm).set_platform(&[]);
    }

    /// The vector the VM's IOAPIC gives `pin`, if it routes.
    pub fn ioapic_vector(&self, vm: VmId, pin: u8) -> Option<u8> {
        self.ioapics.get(&vm)?.vector(pin)
    }

    /// Whether any VM has interrupt edges not yet delivered.
    pub fn has_edges(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Every VM with interrupt edges not yet delivered, and the edges.
    pub fn edges(&self) -> Vec<(VmId, u16)> {
        self.pending.iter().map(|(&vm, &e)| (vm, e)).collect()
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

    /// The VM of an L2 exit, creating its identity on first use.
    pub fn identify(&mut self, vmcs12: u64, eptp12: Option<u64>) -> Option<VmId> {
        let vm = self.ids.identify(vmcs12, eptp12)?;
        if self.devices.get(&vm).is_none() {
            self.devices.vm(vm);
            self.notices.push(self.vm_frame(vm));
        }
        Some(vm)
    }

    /// `@vm ...` for one VM (the `list` answer, and the notice when a VM
    /// appears or registers its tag).
    fn vm_frame(&self, id: VmId) -> String {
        let Some(vm) = self.devices.get(&id) else {
            return mgmt::frame(format_args!("gone {id}"));
        };
        let infos = vm.device_infos();
        let (bin, bout) = infos
            .iter()
            .fold((0, 0), |(i, o), d| (i + d.bytes_in, o + d.bytes_out));
        let ports: Vec<String> = infos
            .iter()
            .map(|d| alloc::format!("{:x}", d.port_base))
            .collect();
        let tag = vm.tag();
        mgmt::frame(format_args!(
            "vm {id} tag={} frozen={} ports={} in={bin} out={bout}",
            tag.as_ref().map_or("-", |t| t.as_str()),
            vm.is_frozen() as u8,
            ports.join(",")
        ))
    }

    /// L1 VMCLEARed a VMCS12: if that ended a VM, its devices go too.
    pub fn vmclear(&mut self, vmcs12: u64) -> Frames {
        self.pi_routes.remove(&vmcs12);
        match self.ids.vmclear(vmcs12) {
            Some(vm) => self.drop_vm(vm),
            None => Vec::new(),
        }
    }

    /// L1 left VMX operation.
    pub fn vmxoff(&mut self) -> Frames {
        self.pi_routes.clear();
        self.ids
            .clear_all()
            .into_iter()
            .flat_map(|vm| self.drop_vm(vm))
            .collect()
    }

    fn drop_vm(&mut self, vm: VmId) -> Frames {
        self.devices.remove(&vm);
        self.pending.remove(&vm);
        self.ioapics.remove(&vm);
        log::info!("user VM {vm} ended");
        let mut out = alloc::vec![mgmt::frame(format_args!("gone {vm}"))];
        out.extend(self.detach(|s| s.vm == vm, "the VM ended"));
        out
    }

    /// Binds `tag` to `vm`. Ok(true) when it is new; the same tag again is
    /// Ok(false) and says nothing (an agent may repeat it: a migrated VM is
    /// new to the destination's L0).
    pub fn register_tag(&mut self, vm: VmId, tag: VmTag) -> Result<bool, Error> {
        if self.devices.vm(vm).tag() == Some(tag) {
            return Ok(false);
        }
        self.devices.register_tag(vm, tag)?;
        self.notices.push(self.vm_frame(vm));
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
        if let Ok(ok) = &r {
            // The routes the VM programmed on the source host.
            match self
                .devices
                .get(&ok.vm)
                .and_then(|d| IoApic::decode(d.platform()))
            {
                Some(io) => self.ioapics.insert(ok.vm, io),
                None => self.ioapics.remove(&ok.vm),
            };
        }
        let t = tag.as_str();
        self.notices.push(match &r {
            Ok(ok) => mgmt::frame(format_args!("restore {} {t} ok epoch={}", ok.vm, ok.epoch)),
            Err(e) => match self.devices.find_by_tag(tag) {
                Some(vm) => mgmt::frame(format_args!("restore {vm} {t} refused {e}")),
                None => mgmt::frame(format_args!("restore - {t} refused {e}")),
            },
        });
        r
    }

    /// Whether a command line has begun but not ended.
    pub fn mid_line(&self) -> bool {
        !self.rx_line.is_empty()
    }

    /// Bytes from the management line: complete lines are commands.
    pub fn feed(&mut self, bytes: &[u8]) -> Frames {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let line = core::mem::take(&mut self.rx_line);
                if let Ok(line) = core::str::from_utf8(&line) {
                    out.extend(self.line(line));
                }
            } else if self.rx_line.len() < mgmt::MAX_LINE {
                self.rx_line.push(b);
            }
        }
        out
    }

    fn line(&mut self, line: &str) -> Frames {
        let body = match mgmt::parse_frame(line) {
            Ok(b) => b,
            Err(mgmt::FrameError::NotAFrame) => return Vec::new(),
            Err(e) => return alloc::vec![mgmt::frame(format_args!("err frame: {e:?}"))],
        };
        match mgmt::parse_command(body) {
            Ok(c) => self.command(c),
            Err(e) => alloc::vec![mgmt::frame(format_args!("err {e}"))],
        }
    }

    fn command(&mut self, c: Command) -> Frames {
        let mut out = Vec::new();
        match c {
            Command::Ping => out.push(mgmt::frame(format_args!("pong"))),
            // The vCPU holds the statistics: it answers after this line.
            Command::Stats => self.stats_wanted = true,
            Command::List => {
                out.extend(self.devices.iter().map(|(&id, _)| self.vm_frame(id)));
                out.push(mgmt::frame(format_args!("end-list {}", self.devices.len())));
            }
            Command::Attach { target, port } => {
                let port = port.unwrap_or(COM_PORTS[0]);
                match self.find(target) {
                    Some(_) if !COM_PORTS.contains(&port) => {
                        out.push(mgmt::frame(format_args!("err no COM port {port:#x}")))
                    }
                    Some(vm) => {
                        let s = Session { vm, port };
                        if !self.sessions.contains(&s) {
                            if self.sessions.len() == MAX_SESSIONS {
                                out.push(mgmt::frame(format_args!(
                                    "err {MAX_SESSIONS} ports followed already; detach one"
                                )));
                                return out;
                            }
                            if let Some(c) = self
                                .devices
                                .vm(vm)
                                .device_at(port)
                                .and_then(|d| d.console())
                            {
                                c.set_operator_attached(true);
                            }
                        }
                        // The newest session takes input; typed-ahead bytes
                        // for the previous one are not redirected.
                        self.sessions.retain(|&o| o != s);
                        self.sessions.push(s);
                        self.input_backlog.clear();
                        out.push(mgmt::frame(format_args!("attached {vm} {port:x}")));
                        // The backlog follows at the next pump.
                    }
                    None => out.push(mgmt::frame(format_args!("err no such VM"))),
                }
            }
            Command::Detach { target, port } => {
                let vm = match target.map(|t| self.find(t)) {
                    Some(None) => return alloc::vec![mgmt::frame(format_args!("err no such VM"))],
                    Some(vm) => vm,
                    None => None,
                };
                let f = self.detach(
                    |s| vm.is_none_or(|v| v == s.vm) && port.is_none_or(|p| p == s.port),
                    "operator detached",
                );
                if f.is_empty() {
                    out.push(mgmt::frame(format_args!("err not attached")));
                }
                out.extend(f);
            }
            Command::Input(bytes) => match self.sessions.last() {
                Some(_) => {
                    self.input_backlog.extend_from_slice(&bytes);
                    out.extend(self.pump());
                }
                None => out.push(mgmt::frame(format_args!("err not attached"))),
            },
        }
        out
    }

    fn find(&self, t: Target) -> Option<VmId> {
        match t {
            Target::Id(id) => self.devices.get(&id).map(|_| id),
            Target::Tag(t) => VmTag::new(t.as_bytes())
                .ok()
                .and_then(|t| self.devices.find_by_tag(&t)),
        }
    }

    /// Ends the sessions `which` selects.
    fn detach(&mut self, which: impl Fn(&Session) -> bool, why: &str) -> Frames {
        let mut out = Vec::new();
        let input = self.sessions.last().copied();
        let mut i = 0;
        while i < self.sessions.len() {
            let s = self.sessions[i];
            if !which(&s) {
                i += 1;
                continue;
            }
            self.sessions.remove(i);
            if let Some(c) = self
                .devices
                .get_mut(&s.vm)
                .and_then(|v| v.device_at(s.port))
                .and_then(|d| d.console())
            {
                c.set_operator_attached(false);
            }
            out.push(mgmt::frame(format_args!(
                "detached {} {:x} {why}",
                s.vm, s.port
            )));
        }
        if self.sessions.last().copied() != input {
            self.input_backlog.clear();
        }
        out
    }

    /// Moves console bytes both ways for the attached port: the guest's
    /// output to the operator (at most `mgmt::OUT_CHUNK` per frame, a few
    /// frames per call), the operator's input into the device as it takes it.
    pub fn pump(&mut self) -> Frames {
        let mut out = core::mem::take(&mut self.notices);
        let input = self.sessions.last().copied();
        // Sessions of VMs that ended without a VMCLEAR/VMXOFF notice.
        self.sessions.retain(|s| self.devices.get(&s.vm).is_some());
        // (By index: this runs at every COM access, and allocating costs.)
        for i in 0..self.sessions.len() {
            let s = self.sessions[i];
            let Some(vm) = self.devices.get_mut(&s.vm) else {
                continue;
            };
            if let Some(c) = vm.device_at(s.port).and_then(|d| d.console()) {
                if Some(s) == input && !self.input_backlog.is_empty() {
                    let n = c.push_input(&self.input_backlog);
                    self.input_backlog.drain(..n);
                }
                let mut buf = [0u8; mgmt::OUT_CHUNK];
                for _ in 0..4 {
                    let n = c.pull_output(&mut buf);
                    if n == 0 {
                        break;
                    }
                    out.push(mgmt::frame(format_args!(
                        "out {} {:x} {}",
                        s.vm,
                        s.port,
                        mgmt::hex(&buf[..n])
                    )));
                }
            }
            // Pulling output frees the transmitter and input fills the
            // receiver: both can raise the UART's interrupt.
            let edges = vm.take_irq_edges();
            if edges != 0 {
                *self.pending.entry(s.vm).or_insert(0) |= edges;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
