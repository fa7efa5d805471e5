//! A person at L0's management line: `cargo xtask console` (a running
//! Bochs/QEMU's line over TCP, or a host's real serial port) and
//! `cargo xtask run`, which shows L0's log and the operator's console.
//!
//! On a terminal, keystrokes go to the attached VM's UART as they are
//! typed (the terminal is raw, so Ctrl-C and line editing reach the VM's
//! shell); Ctrl-] opens a command prompt: `list`, `attach <vm|tag> [port]`,
//! `next`, `detach`, `quit`. With stdin not a terminal, stdin is a script:
//! `/command` lines as above, `/wait TEXT` (until the attached VM prints
//! TEXT, 120 s at most), `/wait-vm TAG` (until a VM with that tag is
//! there, 600 s at most), `/sleep MS`, and any other line is typed with a
//! carriage return. The scenario harness runs such scripts too
//! ([`Operator::scripted`]).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use shadow_devices::mgmt::{self, Event};

use crate::console::{newline, set_raw_terminal, LineUser, Received};

const ESCAPE: u8 = 0x1d; // Ctrl-]

pub struct Operator {
    keys: Receiver<Vec<u8>>,
    keys_done: bool,
    /// stdin gave script lines (so its end ends the session).
    had_script: bool,
    interactive: bool,
    /// The command line being typed after Ctrl-].
    prompt: Option<String>,
    /// Script lines not yet run, and what the script waits for.
    script: Vec<String>,
    waiting: Option<(Wait, Instant)>,
    sleeping: Option<Instant>,
    attached: Option<(u64, u16)>,
    vms: BTreeMap<u64, Option<String>>,
    /// The attached VM's output since the script's last wait.
    seen: String,
    show_log: bool,
    /// Scripts start once L0 said hello (a run's emulator boots first).
    l0_ready: bool,
    quit: bool,
    failed: Option<String>,
    typed: Vec<u8>,
    /// Everything shown to the operator (a scenario's `console.log`).
    transcript: String,
    /// Show it on stdout (not for a scenario's script).
    echo: bool,
    /// The script's end ends the session (not for a scenario: its run
    /// goes on until the logs say it is over).
    script_end_quits: bool,
    _raw: Option<RawTerminal>,
}

/// What a script waits for.
enum Wait {
    /// Text in the attached VM's output.
    Text(String),
    /// A VM with this tag, within this many seconds.
    Tag(String, u64),
}

/// How long `/wait-vm` waits unless told: user VMs boot in minutes under
/// an emulator.
const TAG_WAIT_SECS: u64 = 600;

impl Wait {
    fn limit(&self) -> Duration {
        match self {
            Wait::Text(_) => Duration::from_secs(120),
            Wait::Tag(_, secs) => Duration::from_secs(*secs),
        }
    }
}

/// The terminal in raw mode while it lives.
struct RawTerminal {
    saved: String,
}

fn stty(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("stty")
        .args(args)
        .stdin(std::process::Stdio::inherit())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl RawTerminal {
    fn enter() -> Option<Self> {
        let saved = stty(&["-g"])?;
        stty(&["raw", "-echo"])?;
        set_raw_terminal(true);
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = stty(&[&self.saved]);
        set_raw_terminal(false);
    }
}

impl Operator {
    /// `booting`: the emulator is starting L0 (`cargo xtask run`): print
    /// L0's log lines too, and hold a script until L0 is up.
    pub fn new(booting: bool) -> Self {
        let interactive = std::io::stdin().is_terminal();
        let (tx, keys) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin().lock();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let raw = if interactive {
            RawTerminal::enter()
        } else {
            None
        };
        let mut o = Self::base(keys, interactive, booting, raw);
        if interactive {
            o.say("console: keys go to the attached VM; Ctrl-] for commands (list, attach, next, detach, quit)");
        }
        o
    }

    /// An operator who types `script` (lines as on stdin) once L0 is up,
    /// for a scenario: nothing goes to the terminal, everything shown is in
    /// [`LineUser::transcript`], and a failed wait stops the run.
    pub fn scripted(script: &str) -> Self {
        let (tx, keys) = mpsc::channel();
        let _ = tx.send(script.as_bytes().to_vec());
        Operator {
            show_log: false,
            l0_ready: false,
            echo: false,
            script_end_quits: false,
            ..Self::base(keys, false, false, None)
        }
    }

    fn base(
        keys: Receiver<Vec<u8>>,
        interactive: bool,
        booting: bool,
        raw: Option<RawTerminal>,
    ) -> Self {
        Operator {
            keys,
            keys_done: false,
            had_script: false,
            interactive,
            prompt: None,
            script: Vec::new(),
            waiting: None,
            sleeping: None,
            attached: None,
            vms: BTreeMap::new(),
            seen: String::new(),
            show_log: booting,
            l0_ready: !booting,
            quit: false,
            failed: None,
            typed: Vec::new(),
            transcript: String::new(),
            echo: true,
            script_end_quits: true,
            _raw: raw,
        }
    }

    /// Why a script failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn print(&mut self, s: &str) {
        self.show(s.as_bytes());
    }

    fn show(&mut self, b: &[u8]) {
        self.transcript.push_str(&String::from_utf8_lossy(b));
        if self.transcript.len() > 1 << 22 {
            // A console left open for days: keep the recent part.
            let cut = (self.transcript.len() - (1 << 21)..self.transcript.len())
                .find(|&i| self.transcript.is_char_boundary(i))
                .unwrap_or(0);
            self.transcript.drain(..cut);
        }
        if self.echo {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(b);
            let _ = out.flush();
        }
    }

    fn say(&mut self, s: &str) {
        self.print(&format!("{nl}[{s}]{nl}", nl = newline()));
    }

    fn attach(&mut self, target: &str, port: Option<&str>) -> Vec<String> {
        // One VM at a time here: L0 keeps the others' output as backlog.
        let mut c = Vec::new();
        if self.attached.is_some() {
            c.push("detach".to_string());
        }
        c.push(match port {
            Some(p) => format!("attach {target} {p}"),
            None => format!("attach {target}"),
        });
        c
    }

    /// A command typed after Ctrl-] or as a script's `/` line.
    fn command(&mut self, line: &str) -> Vec<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => Vec::new(),
            ["list" | "l"] => vec!["list".into()],
            ["attach" | "a", t] => self.attach(t, None),
            ["attach" | "a", t, p] => self.attach(t, Some(p)),
            ["next" | "n"] => {
                let cur = self.attached.map(|a| a.0);
                let next = self
                    .vms
                    .keys()
                    .copied()
                    .find(|&id| Some(id) > cur)
                    .or_else(|| self.vms.keys().copied().next());
                match next {
                    Some(id) => self.attach(&id.to_string(), None),
                    None => {
                        self.say("no VMs");
                        Vec::new()
                    }
                }
            }
            ["detach" | "d"] => vec!["detach".into()],
            ["ping"] => vec!["ping".into()],
            ["stats"] => vec!["stats".into()],
            ["quit" | "q"] => {
                self.quit = true;
                Vec::new()
            }
            ["ctrl-c"] => vec![format!("in {}", mgmt::hex(&[3]))],
            ["wait-vm", tag] => {
                self.waiting = Some((Wait::Tag(tag.to_string(), TAG_WAIT_SECS), Instant::now()));
                Vec::new()
            }
            ["wait-vm", tag, secs] => match secs.parse() {
                Ok(secs) => {
                    self.waiting = Some((Wait::Tag(tag.to_string(), secs), Instant::now()));
                    Vec::new()
                }
                Err(_) => {
                    self.say(&format!("`{line}`: the wait is a number of seconds"));
                    Vec::new()
                }
            },
            ["wait", ..] => {
                let text = line
                    .trim_start()
                    .trim_start_matches("wait")
                    .trim()
                    .to_string();
                self.waiting = Some((Wait::Text(text), Instant::now()));
                Vec::new()
            }
            ["sleep", ms] => {
                let ms = ms.parse().unwrap_or(0);
                self.sleeping = Some(Instant::now() + Duration::from_millis(ms));
                Vec::new()
            }
            _ => {
                self.say(&format!("unknown command `{line}`: list, attach <vm|tag> [port], next, detach, ping, quit"));
                Vec::new()
            }
        }
    }

    fn keystrokes(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut cmds = Vec::new();
        for &b in bytes {
            match &mut self.prompt {
                Some(p) => match b {
                    b'\r' | b'\n' => {
                        let line = std::mem::take(p);
                        self.prompt = None;
                        self.print(newline());
                        cmds.extend(self.command(&line));
                    }
                    0x7f | 0x08 => {
                        let erased = p.pop().is_some();
                        if erased {
                            self.print("\x08 \x08");
                        }
                    }
                    0x1b | 0x03 | ESCAPE => {
                        self.prompt = None;
                        self.print(&format!(" (cancelled){}", newline()));
                    }
                    b if b.is_ascii_graphic() || b == b' ' => {
                        p.push(b as char);
                        self.print(&(b as char).to_string());
                    }
                    _ => {}
                },
                None if b == ESCAPE => {
                    self.prompt = Some(String::new());
                    self.print(&format!("{}console> ", newline()));
                }
                None => self.typed.push(b),
            }
        }
        cmds
    }

    fn type_bytes(&mut self, bytes: &[u8]) -> Vec<String> {
        if self.attached.is_none() {
            if !bytes.is_empty() {
                self.say("not attached to a VM (Ctrl-] then `list`, `attach N`)");
            }
            return Vec::new();
        }
        bytes
            .chunks(mgmt::OUT_CHUNK)
            .map(|c| format!("in {}", mgmt::hex(c)))
            .collect()
    }

    /// The next script lines, up to the first wait.
    fn run_script(&mut self) -> Vec<String> {
        let mut cmds = Vec::new();
        loop {
            if let Some((wait, since)) = &self.waiting {
                let there = match wait {
                    Wait::Text(text) => self.seen.contains(text.as_str()),
                    Wait::Tag(tag, _) => self
                        .vms
                        .values()
                        .any(|t| t.as_deref() == Some(tag.as_str())),
                };
                if there {
                    if let Wait::Text(_) = wait {
                        self.seen.clear();
                    }
                    self.waiting = None;
                } else if since.elapsed() > wait.limit() {
                    self.failed = Some(match wait {
                        Wait::Text(t) => format!(
                            "waited {} s for {t:?} in the attached VM's output",
                            wait.limit().as_secs()
                        ),
                        Wait::Tag(t, _) => {
                            format!("waited {} s for a VM tagged {t:?}", wait.limit().as_secs())
                        }
                    });
                    self.quit = true;
                    return cmds;
                } else {
                    return cmds;
                }
            }
            if let Some(t) = self.sleeping {
                if Instant::now() < t {
                    return cmds;
                }
                self.sleeping = None;
            }
            if self.script.is_empty() {
                if self.keys_done && self.had_script && self.script_end_quits {
                    self.quit = true;
                }
                return cmds;
            }
            let line = self.script.remove(0);
            match line.strip_prefix('/') {
                Some(c) => cmds.extend(self.command(c)),
                None => {
                    let mut b = line.into_bytes();
                    b.push(b'\r');
                    cmds.extend(self.type_bytes(&b));
                }
            }
        }
    }
}

impl LineUser for Operator {
    fn received(&mut self, r: Received) -> Vec<String> {
        let mut cmds = Vec::new();
        match r {
            Received::Log(l) if self.show_log => self.print(&format!("{l}{}", newline())),
            Received::Log(_) | Received::Owner(_) => {}
            Received::Bad(m) => self.say(&format!("console: {m}")),
            Received::Event(e) => {
                match e {
                    Event::Out { id, port, bytes } if self.attached == Some((id, port)) => {
                        self.seen.push_str(&String::from_utf8_lossy(&bytes));
                        // Keep what a script may still wait for, within reason.
                        if self.seen.len() > 1 << 16 {
                            let cut = self.seen.len() - (1 << 15);
                            let cut = (cut..self.seen.len())
                                .find(|&i| self.seen.is_char_boundary(i))
                                .unwrap_or(0);
                            self.seen.drain(..cut);
                        }
                        self.show(&bytes);
                    }
                    Event::Out { .. } => {}
                    Event::Hello { version } => {
                        self.l0_ready = true;
                        self.say(&format!("L0 {version}"));
                    }
                    Event::Vm {
                        id,
                        tag,
                        frozen,
                        bytes_in,
                        bytes_out,
                    } => {
                        let new = !self.vms.contains_key(&id);
                        self.vms.insert(id, tag.clone());
                        let tag = tag.unwrap_or_else(|| "-".into());
                        self.say(&format!(
                            "vm {id} tag={tag} frozen={frozen} in={bytes_in} out={bytes_out}"
                        ));
                        // The first VM that appears is attached at once.
                        if new && self.attached.is_none() && self.interactive {
                            cmds.extend(self.attach(&id.to_string(), None));
                        }
                    }
                    Event::EndList { count } => self.say(&format!("{count} VM(s)")),
                    Event::Attached { id, port } => {
                        self.attached = Some((id, port));
                        self.seen.clear();
                        self.say(&format!("attached to vm {id} port {port:#x}"));
                    }
                    Event::Detached { id, port, reason } => {
                        if self.attached == Some((id, port)) {
                            self.attached = None;
                        }
                        self.say(&format!("detached from vm {id} port {port:#x}: {reason}"));
                    }
                    Event::Dropped { id, count, .. } => {
                        self.say(&format!("vm {id}: {count} bytes of output were lost"))
                    }
                    Event::Gone { id } => {
                        self.vms.remove(&id);
                        self.say(&format!("vm {id} ended"));
                    }
                    Event::Restore {
                        id,
                        tag,
                        ok,
                        detail,
                    } => {
                        let vm = id.map_or("no VM".to_string(), |i| format!("vm {i}"));
                        match ok {
                        true => self.say(&format!("console of {tag} ({vm}) restored from a migration ({detail})")),
                        false => self.say(&format!("restore of {tag}'s console ({vm}) refused: {detail}; it starts fresh")),
                    }
                    }
                    Event::Stats(l) => self.say(&format!("L0 stats: {l}")),
                    Event::Pong => self.say("pong"),
                    Event::Error(m) => self.say(&format!("L0: {m}")),
                }
            }
        }
        cmds
    }

    fn tick(&mut self) -> Vec<String> {
        let mut cmds = Vec::new();
        loop {
            match self.keys.try_recv() {
                Ok(bytes) if self.interactive => cmds.extend(self.keystrokes(&bytes)),
                Ok(bytes) => {
                    self.typed.extend_from_slice(&bytes);
                    // Whole lines become script lines.
                    while let Some(i) = self.typed.iter().position(|&b| b == b'\n') {
                        let l: Vec<u8> = self.typed.drain(..=i).collect();
                        self.script.push(
                            String::from_utf8_lossy(&l)
                                .trim_end_matches(['\r', '\n'])
                                .to_string(),
                        );
                        self.had_script = true;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if !self.keys_done && !self.typed.is_empty() && !self.interactive {
                        let rest =
                            String::from_utf8_lossy(&std::mem::take(&mut self.typed)).to_string();
                        self.script.push(rest);
                        self.had_script = true;
                    }
                    self.keys_done = true;
                    break;
                }
            }
        }
        if self.interactive {
            let typed = std::mem::take(&mut self.typed);
            cmds.extend(self.type_bytes(&typed));
        } else if self.l0_ready {
            cmds.extend(self.run_script());
        }
        cmds
    }

    fn quit(&self) -> bool {
        self.quit
    }

    fn transcript(&self) -> &str {
        &self.transcript
    }

    fn unfinished(&self) -> Option<String> {
        if let Some(f) = &self.failed {
            return Some(format!("console script: {f}"));
        }
        match (&self.waiting, self.script.first()) {
            (Some((Wait::Text(t), _)), _) => {
                Some(format!("console script still waiting for {t:?}"))
            }
            (Some((Wait::Tag(t, _), _)), _) => Some(format!(
                "console script still waiting for a VM tagged {t:?}"
            )),
            (None, Some(l)) => Some(format!("console script never ran {l:?}")),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(o: &mut Operator, e: Event) -> Vec<String> {
        o.received(Received::Event(e))
    }

    /// A scripted operator that heard L0's hello and ran its script up to
    /// the first wait.
    fn greeted(script: &str) -> Operator {
        let mut o = Operator::scripted(script);
        ev(
            &mut o,
            Event::Hello {
                version: "1".into(),
            },
        );
        o.tick();
        o
    }

    /// Moves the wait under way `secs` into the past; false on a machine
    /// up for less than that (the test cannot say anything there).
    fn age_wait(o: &mut Operator, secs: u64) -> bool {
        let since = &mut o.waiting.as_mut().unwrap().1;
        match since.checked_sub(Duration::from_secs(secs)) {
            Some(earlier) => {
                *since = earlier;
                true
            }
            None => false,
        }
    }

    #[test]
    fn script_waits_for_l0_a_tag_and_text() {
        let mut o =
            Operator::scripted("/wait-vm web\n/list\n/attach web\n/wait web# \nls\x7f\n/ctrl-c\n");
        assert!(o.tick().is_empty(), "nothing before L0's hello");
        ev(
            &mut o,
            Event::Hello {
                version: "1".into(),
            },
        );
        assert!(o.tick().is_empty(), "no VM tagged web yet");
        ev(
            &mut o,
            Event::Vm {
                id: 4,
                tag: None,
                frozen: false,
                bytes_in: 0,
                bytes_out: 0,
            },
        );
        assert!(o.tick().is_empty(), "untagged");
        ev(
            &mut o,
            Event::Vm {
                id: 4,
                tag: Some("web".into()),
                frozen: false,
                bytes_in: 0,
                bytes_out: 0,
            },
        );
        assert_eq!(o.tick(), vec!["list".to_string(), "attach web".to_string()]);
        ev(&mut o, Event::Attached { id: 4, port: 0x3f8 });
        ev(
            &mut o,
            Event::Out {
                id: 5,
                port: 0x3f8,
                bytes: b"web# ".to_vec(),
            },
        );
        assert!(o.tick().is_empty(), "another VM's output");
        assert!(o.unfinished().unwrap().contains("web#"));
        ev(
            &mut o,
            Event::Out {
                id: 4,
                port: 0x3f8,
                bytes: b"\r\nweb# ".to_vec(),
            },
        );
        assert_eq!(
            o.tick(),
            vec![
                format!("in {}", mgmt::hex(b"ls\x7f\r")),
                format!("in {}", mgmt::hex(&[3]))
            ]
        );
        assert_eq!(o.unfinished(), None);
        assert!(!o.quit(), "a scenario's run goes on after the script");
        assert!(o.transcript().contains("attached to vm 4 port 0x3f8"));
        assert!(o.transcript().contains("\r\nweb# "));
    }

    #[test]
    fn a_failed_wait_says_what_it_waited_for() {
        let mut o = greeted("/wait never\nls\n");
        if !age_wait(&mut o, 121) {
            return;
        }
        o.tick();
        assert!(o.quit());
        assert!(o
            .unfinished()
            .unwrap()
            .contains("waited 120 s for \"never\""));
    }

    #[test]
    fn a_tag_wait_takes_its_own_limit() {
        let mut o = greeted("/wait-vm slow 2400\n");
        if !age_wait(&mut o, 601) {
            return;
        }
        o.tick();
        assert!(!o.quit(), "600 s is within its 2400");
        if !age_wait(&mut o, 1800) {
            return;
        }
        o.tick();
        assert!(o.quit());
        assert!(o
            .unfinished()
            .unwrap()
            .contains("waited 2400 s for a VM tagged \"slow\""));
    }

    #[test]
    fn a_tag_wait_without_a_number_is_refused() {
        let o = greeted("/wait-vm bad x\n");
        assert!(o.waiting.is_none());
        assert!(o.transcript().contains("the wait is a number of seconds"));
    }
}
