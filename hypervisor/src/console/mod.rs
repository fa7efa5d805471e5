//! The operator's console on L0's management line (docs/console-protocol.md):
//! command lines in (`shadow_devices::mgmt`), and out the followed ports'
//! output, the answers, and the shadow devices' notices. It follows user
//! VMs' ports through the shadow registry it is handed; it owns only the
//! sessions and the line.

use alloc::string::String;
use alloc::vec::Vec;

use shadow_devices::mgmt::{self, Command, Target};
use ultracall_abi::VmTag;

use crate::shadow::identity::VmId;
use crate::shadow::{Notice, RestoreDone, Shadow, COM_PORTS};

/// Frames to send to the operator.
pub type Frames = Vec<String>;

/// A COM port the operator's console follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub vm: VmId,
    pub port: u16,
}

/// How many ports the console follows at once: the line is ~11 KB/s, a
/// few busy consoles fill it.
pub const MAX_SESSIONS: usize = 8;

/// A `list` answer goes out at most this many VMs per visit to the line,
/// and only while the line's send queue has [`LIST_ROOM`] bytes free: the
/// list of 1024 VMs (~90 KB) then follows the line's pace (~11 KB/s)
/// instead of stopping L0 until the queue drains.
const LIST_BATCH: usize = 16;
const LIST_ROOM: usize = 4096;
/// Room on the line a notice waits for (its frame, and the detach frames
/// of a VM's end): notices never make L0 wait for the line.
const NOTICE_ROOM: usize = 512;

/// Send-queue room an output frame needs: `@out <vm> <port> <hex>` of a
/// full chunk. Output is pulled from a device only while the line has it,
/// so a frame never waits for the line (the guest's UART holds the bytes
/// and, with an operator attached, pushes back on the guest).
const OUT_FRAME_ROOM: usize = 2 * mgmt::OUT_CHUNK + 64;

#[derive(Default)]
pub struct Console {
    /// The ports the console follows; the last one attached takes input.
    pub sessions: Vec<Session>,
    rx_line: Vec<u8>,
    /// Bytes of console input not yet accepted by the input port's device.
    input_backlog: Vec<u8>,
    /// The operator asked for `stats` (the vCPU answers: it holds them).
    stats_wanted: bool,
    /// A `list` answer under way: the next VM to list, how many so far.
    listing: Option<(VmId, usize)>,
    /// Owner sessions on this line, and whether plain commands are taken.
    pub owners: crate::owner::Owners,
    /// What the `out` frames cost L0 (the bench's comparison with owners).
    pub output_cost: crate::output_cost::OutputCost,
}

impl Console {
    /// Whether a command line has begun but not ended.
    pub fn mid_line(&self) -> bool {
        !self.rx_line.is_empty()
    }

    /// Whether `stats` was asked for since the last call.
    pub fn take_stats_request(&mut self) -> bool {
        core::mem::take(&mut self.stats_wanted)
    }

    /// Bytes from the management line: complete lines are commands.
    pub fn feed(&mut self, sh: &mut Shadow, bytes: &[u8]) -> Frames {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let line = core::mem::take(&mut self.rx_line);
                if let Ok(line) = core::str::from_utf8(&line) {
                    out.extend(self.line(sh, line));
                }
            } else if self.rx_line.len() < mgmt::MAX_LINE {
                self.rx_line.push(b);
            }
        }
        out
    }

    fn line(&mut self, sh: &mut Shadow, line: &str) -> Frames {
        let body = match mgmt::parse_frame(line) {
            Ok(b) => b,
            Err(mgmt::FrameError::NotAFrame) => return Vec::new(),
            Err(e) => return alloc::vec![mgmt::frame(format_args!("err frame: {e:?}"))],
        };
        if let Some(out) = self.owners.line_frame(sh, body) {
            return out;
        }
        if self.owners.mode == crate::config::ConsoleMode::Owners {
            return alloc::vec![mgmt::frame(format_args!(
                "err the operator protocol is off on this line (console=owners)"
            ))];
        }
        match mgmt::parse_command(body) {
            Ok(c) => self.command(sh, c),
            Err(e) => alloc::vec![mgmt::frame(format_args!("err {e}"))],
        }
    }

    fn command(&mut self, sh: &mut Shadow, c: Command) -> Frames {
        let mut out = Vec::new();
        match c {
            Command::Ping => out.push(mgmt::frame(format_args!("pong"))),
            Command::Stats => self.stats_wanted = true,
            Command::List => {
                // (A list asked for again starts over.)
                self.listing = Some((0, 0));
                out.extend(self.list_more(sh));
            }
            Command::Attach { target, port } => {
                let port = port.unwrap_or(COM_PORTS[0]);
                match find(sh, target) {
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
                            let mut v = sh.devices.vm(vm);
                            if let Some(c) = v.device_at(port).and_then(|d| d.console()) {
                                c.set_operator_attached(true);
                            }
                        }
                        // The newest session takes input; typed-ahead bytes
                        // for the previous one are not redirected.
                        self.sessions.retain(|&o| o != s);
                        self.sessions.push(s);
                        sh.told(vm);
                        self.input_backlog.clear();
                        out.push(mgmt::frame(format_args!("attached {vm} {port:x}")));
                        // The backlog follows at the next pump.
                    }
                    None => out.push(mgmt::frame(format_args!("err no such VM"))),
                }
            }
            Command::Detach { target, port } => {
                let vm = match target.map(|t| find(sh, t)) {
                    Some(None) => return alloc::vec![mgmt::frame(format_args!("err no such VM"))],
                    Some(vm) => vm,
                    None => None,
                };
                let f = self.detach(
                    sh,
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
                    out.extend(self.pump(sh));
                }
                None => out.push(mgmt::frame(format_args!("err not attached"))),
            },
        }
        out
    }

    /// Ends the sessions `which` selects.
    fn detach(&mut self, sh: &mut Shadow, which: impl Fn(&Session) -> bool, why: &str) -> Frames {
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
            if let Some(mut v) = sh.devices.get(&s.vm) {
                if let Some(c) = v.device_at(s.port).and_then(|d| d.console()) {
                    c.set_operator_attached(false);
                }
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

    /// The shadow devices' notices as frames (a VM that ended also ends
    /// its sessions); a save is logged, not framed. As many as the line
    /// has room for: the rest wait, coalesced (`shadow/notices.rs`).
    pub fn notices(&mut self, sh: &mut Shadow) -> Frames {
        if !sh.has_notices() {
            return Vec::new(); // the usual case, at every COM access
        }
        self.notices_within(sh, crate::logger::tx_room())
    }

    /// [`Console::notices`] with `room` bytes free on the line.
    pub fn notices_within(&mut self, sh: &mut Shadow, mut room: usize) -> Frames {
        let mut out: Frames = Vec::new();
        while room >= NOTICE_ROOM {
            let Some(n) = sh.pop_notice() else { break };
            let before = out.len();
            match n {
                // (A VM that already ended has its Gone notice next.)
                Notice::Vm(vm) if sh.devices.get(&vm).is_some() => out.push(vm_frame(sh, vm)),
                Notice::Vm(_) => {}
                Notice::Gone(vm) => {
                    out.push(mgmt::frame(format_args!("gone {vm}")));
                    out.extend(self.detach(sh, |s| s.vm == vm, "the VM ended"));
                }
                Notice::Restore { vm, tag, result } => {
                    let t = tag.as_str();
                    log_restore(vm, t, &result);
                    out.push(match (result.map(|done| done.epoch), vm) {
                        (Ok(epoch), Some(vm)) => {
                            mgmt::frame(format_args!("restore {vm} {t} ok epoch={epoch}"))
                        }
                        (Ok(epoch), None) => {
                            mgmt::frame(format_args!("restore - {t} ok epoch={epoch}"))
                        }
                        (Err(e), Some(vm)) => {
                            mgmt::frame(format_args!("restore {vm} {t} refused {e}"))
                        }
                        (Err(e), None) => mgmt::frame(format_args!("restore - {t} refused {e}")),
                    });
                }
                Notice::Saved { tag, epoch, len } => log::info!(
                    "devices of {} saved (epoch {epoch}, {len} bytes) and frozen",
                    tag.as_str()
                ),
            }
            room = room.saturating_sub(out[before..].iter().map(|f| f.len()).sum());
        }
        out
    }

    /// The next part of a `list` answer under way, as the line has room.
    fn list_more(&mut self, sh: &mut Shadow) -> Frames {
        let mut out = Vec::new();
        let Some((from, listed)) = self.listing else {
            return out;
        };
        if crate::logger::tx_room() < LIST_ROOM {
            return out;
        }
        let (batch, next) = {
            let mut vms = sh.devices.iter_from(from).map(|(&id, _)| id);
            let batch: Vec<VmId> = vms.by_ref().take(LIST_BATCH).collect();
            (batch, vms.next())
        };
        for &id in &batch {
            out.push(vm_frame(sh, id));
            sh.told(id);
        }
        let listed = listed + out.len();
        self.listing = match next {
            Some(next) => Some((next, listed)),
            None => {
                out.push(mgmt::frame(format_args!("end-list {listed}")));
                None
            }
        };
        out
    }

    /// Moves console bytes both ways for the followed ports: the guests'
    /// output to the operator (at most `mgmt::OUT_CHUNK` per frame, a few
    /// frames per call), the operator's input into the device as it takes
    /// it, neither for a frozen (saved) VM; the notices go first, then the
    /// next part of a `list` answer.
    pub fn pump(&mut self, sh: &mut Shadow) -> Frames {
        let mut out = self.notices(sh);
        out.extend(self.list_more(sh));
        let input = self.sessions.last().copied();
        // Sessions of VMs that ended without a VMCLEAR/VMXOFF notice.
        self.sessions.retain(|s| sh.devices.get(&s.vm).is_some());
        // (By index: this runs at every COM access, and allocating costs.)
        for i in 0..self.sessions.len() {
            let s = self.sessions[i];
            let Some(mut vm) = sh.devices.get(&s.vm) else {
                continue;
            };
            if vm.is_frozen() {
                // Saved away: its console stands still until a restore, so
                // a rollback brings back exactly what was sealed (no output
                // shown twice, no typed byte lost); input waits here.
                continue;
            }
            if let Some(c) = vm.device_at(s.port).and_then(|d| d.console()) {
                if Some(s) == input && !self.input_backlog.is_empty() {
                    let n = c.push_input(&self.input_backlog);
                    self.input_backlog.drain(..n);
                }
                let mut buf = [0u8; mgmt::OUT_CHUNK];
                for _ in 0..4 {
                    if crate::logger::tx_room() < OUT_FRAME_ROOM {
                        break;
                    }
                    let t0 = crate::arch::cpu::rdtsc();
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
                    let ticks = crate::arch::cpu::rdtsc().wrapping_sub(t0);
                    self.output_cost.add(ticks, n);
                }
            }
            // Pulling output frees the transmitter and input fills the
            // receiver: both can raise the UART's interrupt.
            let edges = vm.take_irq_edges();
            sh.irqs.note_edges(s.vm, edges);
        }
        out
    }
}

/// A restore's outcome in L0's log, and where each history it brought
/// continues.
fn log_restore(vm: Option<VmId>, tag: &str, result: &Result<RestoreDone, shadow_devices::Error>) {
    match result {
        Ok(done) => {
            log::info!(
                "devices of {tag} restored (epoch {}; {} bytes of the saved VM's unread input dropped)",
                done.epoch,
                done.input_dropped
            );
            let vm = vm.unwrap_or(0);
            for &(port, start, end) in &done.histories {
                log::info!(
                    "user VM {vm} port {port:#x}: output history continues at offset {end} (kept from {start})"
                );
            }
        }
        Err(e) => log::warn!("restore for {tag} refused: {e}"),
    }
}

fn find(sh: &Shadow, t: Target) -> Option<VmId> {
    match t {
        Target::Id(id) => sh.devices.get(&id).map(|_| id),
        Target::Tag(t) => VmTag::new(t.as_bytes())
            .ok()
            .and_then(|t| sh.devices.find_by_tag(&t)),
    }
}

/// `@vm ...` for one VM (the `list` answer, and the notice when a VM
/// appears or registers its tag).
fn vm_frame(sh: &Shadow, id: VmId) -> String {
    let Some(vm) = sh.devices.get(&id) else {
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

#[cfg(test)]
mod tests;
