//! Owner sessions in L0 (docs/console-protocol.md, "Owner sessions"): the
//! session logic of `owner_session::server` over the shadow registry, and
//! its two transports: the management line and the relay in the cloud VM
//! (`l0-relay`, through the `OWNER_RELAY` ultracall).

use alloc::string::String;
use alloc::vec::Vec;

use owner_session::line::{self, LineFrame};
use owner_session::message::Refusal;
use owner_session::noise::{Entropy, Identity};
use owner_session::server::{Channel, Consoles, EndReason, Outcome, OwnerSessions};
use shadow_devices::mgmt;
use shadow_devices::uart16550::history::{HistoryBudget, HISTORY_CAPACITY};
use ultracall_abi::{KeyAccess, OwnerKey, VmTag};

use crate::config::ConsoleMode;
use crate::shadow::identity::VmId;
use crate::shadow::Shadow;

/// The management line's transport number.
pub const LINE: u8 = 0;
/// The cloud VM's relay's transport number.
pub const RELAY: u8 = 1;

/// Sessions pushed out for a newer one whose clients have not heard it
/// yet (their next message is answered [`EndReason::Evicted`]): at most
/// one per session L0 can hold.
const EVICTED_REMEMBERED: usize = owner_session::server::MAX_SESSIONS;

/// The share of `l0_mem` the ports' output histories may take: a
/// quarter, which L0's heap holds on top of its own quarter (start.rs;
/// the shadow tables count on that one, shadow/limits.rs). Each used
/// port is charged its full [`HISTORY_CAPACITY`] when its first byte
/// comes: with the default `l0_mem=32M`, 7 used ports; more need more
/// `l0_mem` (docs/operations.md).
const HISTORY_SHARE_DIV: u64 = 4;

/// How many used ports may keep a history with `l0_mem`.
pub fn histories_for_l0_mem(l0_mem: u64) -> usize {
    (l0_mem / HISTORY_SHARE_DIV) as usize / HISTORY_CAPACITY
}

/// L0's heap for `l0_mem`: a quarter for L0 and its shadow tables, and
/// the histories' share.
pub fn heap_for_l0_mem(l0_mem: u64) -> u64 {
    l0_mem / 4 + l0_mem / HISTORY_SHARE_DIV
}

/// The histories' buffers this L0 may hold at once (set at boot from
/// `l0_mem`); every VM's histories, and the ones a restore brings, are
/// charged to it.
pub static HISTORIES: HistoryBudget = HistoryBudget::new(0);

fn no_entropy(_: &mut [u8]) -> bool {
    false
}

/// The owner sessions of this L0 and who may use the line.
pub struct Owners {
    sessions: OwnerSessions<VmId>,
    /// Whether the plain operator protocol is still taken.
    pub mode: ConsoleMode,
    /// Why sessions are off, when they are.
    off_reason: &'static str,
    /// What the ports' output histories are charged to.
    pub histories: &'static HistoryBudget,
    /// Relay sessions pushed out, not told yet (oldest first).
    relay_evicted: Vec<u32>,
    /// Whether the relay has been heard from (logged once).
    relay_seen: bool,
    /// What answering owners' reads costs L0 (the bench's comparison
    /// with the operator's frames).
    pub output_cost: crate::output_cost::OutputCost,
}

impl Default for Owners {
    fn default() -> Self {
        Owners {
            sessions: OwnerSessions::new(None, no_entropy),
            mode: ConsoleMode::Operator,
            off_reason: "no l0.identity module",
            histories: &HISTORIES,
            relay_evicted: Vec::new(),
            relay_seen: false,
            output_cost: Default::default(),
        }
    }
}

impl Owners {
    /// With L0's identity key from its boot module: None without the
    /// module, `Some(None)` when it was malformed.
    pub fn new(identity: Option<Option<[u8; 32]>>, entropy: Entropy, mode: ConsoleMode) -> Self {
        let (id, off_reason) = match identity {
            Some(Some(k)) => (Some(Identity::new(k)), ""),
            Some(None) => (
                None,
                "the l0.identity module is malformed (expected 64 hex digits or 32 bytes, once)",
            ),
            None => (None, "no l0.identity module"),
        };
        Owners {
            sessions: OwnerSessions::new(id, entropy),
            mode,
            off_reason,
            histories: &HISTORIES,
            relay_evicted: Vec::new(),
            relay_seen: false,
            output_cost: Default::default(),
        }
    }

    /// The line at boot: what owners pin, or why sessions are off.
    pub fn boot_line(&self) -> String {
        match self.sessions.identity() {
            Some(id) => alloc::format!(
                "owner sessions: on; L0 identity (owners pin this) {}",
                id.fingerprint()
            ),
            None => alloc::format!("owner sessions: off ({})", self.off_reason),
        }
    }

    /// What owners pin, as the relay passes it on: the identity in
    /// base64, or `off <why>`.
    pub fn relay_identity(&mut self) -> String {
        self.note_relay();
        match self.sessions.identity() {
            Some(id) => id.fingerprint(),
            None => alloc::format!("off {}", self.off_reason),
        }
    }

    /// One message the relay carried on its `channel`: L0's answer.
    pub fn relay_message(&mut self, sh: &mut Shadow, channel: u32, bytes: &[u8]) -> Outcome {
        self.note_relay();
        let ch = Channel {
            transport: RELAY,
            id: channel,
        };
        if let Some(i) = self.relay_evicted.iter().position(|&c| c == channel) {
            self.relay_evicted.remove(i);
            if !self.sessions.has(ch) {
                return Outcome::End(EndReason::Evicted);
            }
        }
        let mut c = ShadowConsoles {
            sh,
            histories: self.histories,
            read_bytes: 0,
        };
        let t0 = crate::arch::cpu::rdtsc();
        let out = self.sessions.receive(ch, bytes, &mut c);
        if c.read_bytes > 0 {
            let ticks = crate::arch::cpu::rdtsc().wrapping_sub(t0);
            self.output_cost.add(ticks, c.read_bytes);
        }
        if let Outcome::End(r) = out {
            if r == EndReason::AuthFailed {
                log::info!("owner session {channel} on the relay ended: {}", r.text());
            } else {
                log::debug!("owner session {channel} on the relay: {}", r.text());
            }
        }
        if let Some(old) = self
            .sessions
            .take_evicted()
            .filter(|c| c.transport == RELAY)
        {
            if self.relay_evicted.len() == EVICTED_REMEMBERED {
                self.relay_evicted.remove(0);
            }
            self.relay_evicted.push(old.id);
        }
        out
    }

    /// The relay's connection for `channel` closed: its session ends.
    pub fn relay_forget(&mut self, channel: u32) {
        self.sessions.forget(Channel {
            transport: RELAY,
            id: channel,
        });
        self.relay_evicted.retain(|&c| c != channel);
    }

    fn note_relay(&mut self) {
        if !self.relay_seen {
            self.relay_seen = true;
            log::info!("owner relay: the cloud VM's l0-relay carries owner sessions");
        }
    }

    /// Handles a frame body from the line if it is an owner frame; the
    /// frames to send back (None: not an owner frame).
    pub fn line_frame(&mut self, sh: &mut Shadow, body: &str) -> Option<Vec<String>> {
        if !line::is_owner_body(body) {
            return None;
        }
        let out = match line::parse(body) {
            Some(LineFrame::IdQuery) => match self.sessions.identity() {
                Some(id) => mgmt::frame(format_args!("owner-id {}", id.fingerprint())),
                None => mgmt::frame(format_args!("owner-id off {}", self.off_reason)),
            },
            Some(LineFrame::Message { channel, bytes }) => {
                let ch = Channel {
                    transport: LINE,
                    id: channel,
                };
                let mut c = ShadowConsoles {
                    sh,
                    histories: self.histories,
                    read_bytes: 0,
                };
                let t0 = crate::arch::cpu::rdtsc();
                let answer = match self.sessions.receive(ch, &bytes, &mut c) {
                    Outcome::Reply(m) => {
                        mgmt::frame(format_args!("{}", line::message_body(channel, &m)))
                    }
                    Outcome::End(r) => {
                        // Handshakes anyone can send are not worth a log line each.
                        if r == EndReason::AuthFailed {
                            log::info!("owner session {channel} on the line ended: {}", r.text());
                        } else {
                            log::debug!("owner session {channel} on the line: {}", r.text());
                        }
                        mgmt::frame(format_args!("{}", line::end_body(channel, r)))
                    }
                };
                if c.read_bytes > 0 {
                    let ticks = crate::arch::cpu::rdtsc().wrapping_sub(t0);
                    self.output_cost.add(ticks, c.read_bytes);
                }
                // A session pushed out for this one hears why.
                let mut out = alloc::vec![answer];
                if let Some(old) = self.sessions.take_evicted().filter(|c| c.transport == LINE) {
                    out.push(mgmt::frame(format_args!(
                        "{}",
                        line::end_body(old.id, EndReason::Evicted)
                    )));
                }
                return Some(out);
            }
            // L0's own frames coming back, or damage: nothing to do.
            Some(_) | None => mgmt::frame(format_args!("err owner frame: malformed")),
        };
        Some(alloc::vec![out])
    }
}

/// Starts the history of one port: wanted from now on, its buffer
/// charged to `budget` when the port is first used (else the owner's
/// reads are refused as unavailable, and the port works on).
fn start_history(sh: &mut Shadow, vm: VmId, port: u16, budget: &'static HistoryBudget) {
    let Some(mut v) = sh.devices.get(&vm) else {
        return;
    };
    if let Some(c) = v.device_at(port).and_then(|d| d.console()) {
        c.enable_history(budget);
    }
}

/// From its first owner key on (or its keys' arrival in a restore), a
/// VM's ports keep their output by offset, so its owner can read what
/// was printed before attaching.
pub fn keep_history(sh: &mut Shadow, vm: VmId, budget: &'static HistoryBudget) {
    let ports: Vec<u16> = sh.devices.get(&vm).map_or(Vec::new(), |v| {
        v.devices().iter().map(|d| d.ports().base).collect()
    });
    for port in ports {
        start_history(sh, vm, port, budget);
    }
}

/// A restore brought the VM's owner keys and the histories its ports
/// had: with keys, every port keeps its history from now on.
pub fn restored(sh: &mut Shadow, vm: VmId, budget: &'static HistoryBudget) {
    let has_keys = sh
        .devices
        .get(&vm)
        .is_some_and(|v| !v.owner_keys().is_empty());
    if has_keys {
        keep_history(sh, vm, budget);
    }
}

/// The session logic's view of the shadow registry.
struct ShadowConsoles<'a> {
    sh: &'a mut Shadow,
    /// Output bytes read for the message being answered.
    read_bytes: usize,
    histories: &'static HistoryBudget,
}

impl ShadowConsoles<'_> {
    /// `f` on the port's console (locked meanwhile), its history kept
    /// from now on.
    fn with_console<R>(
        &mut self,
        vm: VmId,
        port: u16,
        f: impl FnOnce(&mut dyn shadow_devices::Console) -> R,
    ) -> Option<R> {
        start_history(self.sh, vm, port, self.histories);
        let mut v = self.sh.devices.get(&vm)?;
        Some(f(v.device_at(port)?.console()?))
    }

    /// Input and BREAK can raise the UART's interrupt: relay the edge.
    fn note_edges(&mut self, vm: VmId) {
        let edges = self.sh.devices.get(&vm).map(|mut v| v.take_irq_edges());
        if let Some(edges) = edges {
            self.sh.irqs.note_edges(vm, edges);
        }
    }
}

impl Consoles for ShadowConsoles<'_> {
    type Vm = VmId;

    fn find(&self, tag: &VmTag) -> Option<VmId> {
        self.sh.devices.find_by_tag(tag)
    }

    fn knows_key(&self, key: &OwnerKey) -> bool {
        self.sh
            .devices
            .iter()
            .any(|(_, v)| v.owner_keys().access_of(key).is_some())
    }

    fn has_owner_keys(&self, vm: VmId) -> bool {
        self.sh
            .devices
            .get(&vm)
            .is_some_and(|v| !v.owner_keys().is_empty())
    }

    fn key_access(&self, vm: VmId, key: &OwnerKey) -> Option<KeyAccess> {
        self.sh.devices.get(&vm)?.owner_keys().access_of(key)
    }

    fn has_port(&self, vm: VmId, port: u16) -> bool {
        self.sh.devices.get(&vm).is_some_and(|v| {
            v.devices()
                .iter()
                .any(|d| d.ports().base == port && d.console_ref().is_some())
        })
    }

    fn frozen(&self, vm: VmId) -> bool {
        self.sh.devices.get(&vm).is_none_or(|v| v.is_frozen())
    }

    fn offsets(&mut self, vm: VmId, port: u16) -> (u64, u64) {
        self.with_console(vm, port, |c| c.history_offsets())
            .flatten()
            .unwrap_or((0, 0))
    }

    fn read(
        &mut self,
        vm: VmId,
        port: u16,
        from: u64,
        out: &mut [u8],
    ) -> Option<(u64, usize, u64)> {
        let r = self
            .with_console(vm, port, |c| c.history_read(from, out))
            .flatten();
        self.read_bytes += r.map_or(0, |r| r.1);
        r
    }

    fn input(&mut self, vm: VmId, port: u16, bytes: &[u8]) -> usize {
        let n = self
            .with_console(vm, port, |c| c.push_input(bytes))
            .unwrap_or(0);
        self.note_edges(vm);
        n
    }

    fn add_key(&mut self, vm: VmId, key: OwnerKey, access: KeyAccess) -> Option<usize> {
        let n = {
            let mut v = self.sh.devices.get(&vm)?;
            v.owner_keys_mut().add_more(key, access).ok()?
        };
        log::info!(
            "user VM {vm}: owner key {key} ({}) added by an owner",
            access.name()
        );
        Some(n)
    }

    fn remove_key(&mut self, vm: VmId, key: &OwnerKey) -> Result<usize, Refusal> {
        use shadow_devices::owner_keys::OwnerKeyError;
        let removed = self
            .sh
            .devices
            .get(&vm)
            .ok_or(Refusal::VmGone)?
            .owner_keys_mut()
            .remove(key);
        match removed {
            Ok(n) => {
                log::info!("user VM {vm}: owner key {key} removed by an owner");
                Ok(n)
            }
            Err(OwnerKeyError::LastReadWrite) => Err(Refusal::LastRwKey),
            Err(_) => Err(Refusal::NoSuchKey),
        }
    }

    fn send_break(&mut self, vm: VmId, port: u16, then: &[u8]) -> Option<usize> {
        let taken = self.with_console(vm, port, |c| c.send_break().then(|| c.push_input(then)));
        self.note_edges(vm);
        taken.flatten()
    }
}

#[cfg(test)]
mod tests;
