//! The VM owner's client on a management line: `cargo xtask console
//! --owner` and the `owner-console` scenario (docs/console-protocol.md,
//! "Owner sessions"; docs/operations.md).
//!
//! It pins L0's identity (the base64 public key L0 prints at boot),
//! opens a Noise IK session with the owner's key to exactly that key,
//! attaches to a VM by tag, and then reads output by offset, types, or
//! sends BREAK. One request is outstanding at a time; output is polled
//! (L0 never sends unasked, so a relay or a line carries only answers).
//! A client is a list of [`Step`]s; each says what it expects, so the
//! scenario's refusals (an ro key typing, an unknown key, a wrong pin)
//! are steps that pass when L0 refuses with the right reason.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use owner_session::client::ClientSession;
use owner_session::line::{self, LineFrame};
use owner_session::message::{Answer, Refusal, Request, MAX_OUTPUT};
use owner_session::noise;
use owner_session::server::EndReason;
use ultracall_abi::{KeyAccess, OwnerKey, VmTag};

use crate::console::{LineUser, Received};

/// How long an answer may take (the line is slow, L0 answers at its
/// next visit to the line).
const ANSWER_LIMIT: Duration = Duration::from_secs(30);
/// How long a wait for text may take.
const WAIT_LIMIT: Duration = Duration::from_secs(120);
/// How long L0's log may take to show a line: it may wait for a user VM
/// to end and another to boot (minutes under a loaded Bochs).
const LOG_WAIT_LIMIT: Duration = Duration::from_secs(300);

/// How long a pattern step may take (a megabyte through a Linux user
/// VM's UART under the emulator, then read through the relay).
const PATTERN_LIMIT: Duration = Duration::from_secs(900);

/// Bytes of one pattern line on the wire.
pub const PATTERN_LINE: u64 = 64;

/// Line `k` of the pattern a user VM prints (`awk` in the scenario), as
/// its tty sends it: `P`, seven digits, filler, CR LF — 64 bytes.
pub fn pattern_line(k: u64) -> Vec<u8> {
    let mut l = format!("P{k:07}-").into_bytes();
    while l.len() < PATTERN_LINE as usize - 2 {
        l.push(b'a' + (l.len() % 26) as u8);
    }
    l.extend_from_slice(b"\r\n");
    l
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a pattern step has seen.
#[derive(Default)]
struct PatternScan {
    /// The offset it began reading at.
    began: u64,
    /// Bytes read on.
    bytes: u64,
    /// Offset of line 0.
    first: Option<u64>,
    /// The last bytes read (a marker may straddle two reads).
    carry: Vec<u8>,
    /// Lines still to read back: (offset, bytes).
    checks: VecDeque<(u64, Vec<u8>)>,
    read_back: Vec<u64>,
}
/// Between two reads while waiting or following.
const POLL: Duration = Duration::from_millis(100);
/// How long a client waits before it takes silence for a dropped message.
const DROPPED_LIMIT: Duration = Duration::from_secs(15);

/// The client's randomness: the operating system's.
pub fn os_entropy(buf: &mut [u8]) -> bool {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
}

/// An owner key file: 64 hex digits of the X25519 private key.
pub fn read_key_file(path: &str) -> Result<[u8; 32], String> {
    let data = std::fs::read(path).map_err(|e| format!("reading the key file {path}: {e}"))?;
    noise::parse_private_key(&data)
        .ok_or_else(|| format!("{path}: not a key file (64 hex digits of an X25519 private key)"))
}

/// Writes a new key file; returns the public key to register.
pub fn generate_key_file(path: &str) -> Result<OwnerKey, String> {
    let (private, public) =
        noise::generate_keypair(os_entropy).ok_or("no randomness from /dev/urandom")?;
    let hex: String = private.iter().map(|b| format!("{b:02x}")).collect();
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600) // a private key: the owner's alone
        .open(path)
        .map_err(|e| format!("creating {path}: {e}"))?;
    writeln!(f, "{hex}").map_err(|e| format!("writing {path}: {e}"))?;
    Ok(OwnerKey(public))
}

/// A pinned fingerprint: L0's public key in base64.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    OwnerKey::from_base64(pin)
        .map(|k| k.0)
        .map_err(|_| format!("--pin {pin:?}: expected L0's identity as base64 of 32 bytes (44 characters), as L0 prints it at boot"))
}

/// What a step expects L0 to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Success.
    Ok,
    /// This refusal (the step passes when it comes).
    Refused(Refusal),
}

/// How a client notices what a hostile relay did to its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// L0 ends the session: the message failed authentication.
    L0Ended,
    /// The answer fails authentication at the client.
    ForgedAnswer,
    /// No answer comes ([`DROPPED_LIMIT`]).
    NoAnswer,
}

/// One thing the client does.
#[derive(Clone, Debug)]
pub enum Step {
    /// Asks L0's identity; the pin must match it (or, `false`, must not:
    /// the client then refuses to connect and says so).
    CheckPin {
        pin: [u8; 32],
        matches: bool,
    },
    /// Opens a session with `key` to the pinned L0; `refused`: L0 must
    /// end it with that reason instead.
    /// `tag`: named to L0 inside the handshake (what L0 says when no VM
    /// knows the key depends on it).
    Open {
        key: [u8; 32],
        pin: [u8; 32],
        tag: Option<VmTag>,
        refused: Option<EndReason>,
    },
    /// Attaches; `patient`: a VM not there yet (or not yet knowing the
    /// key) is asked again for [`WAIT_LIMIT`].
    Attach {
        tag: VmTag,
        port: u16,
        expect: Expect,
        patient: bool,
    },
    AddKey {
        key: OwnerKey,
        access: KeyAccess,
    },
    RemoveKey(OwnerKey),
    /// Reads on from the current offset until the output holds `text`.
    WaitFor(String),
    /// Reads on from this offset (attaching starts at the end).
    Seek(u64),
    Type {
        bytes: Vec<u8>,
        expect: Expect,
    },
    /// A BREAK, with `then` typed right behind it (a SysRq key).
    Break {
        then: Vec<u8>,
        expect: Expect,
    },
    /// Types through a relay that tampers with the message: the step
    /// passes when the client notices as `detect` says, and the session
    /// is over.
    TypeTampered {
        bytes: Vec<u8>,
        detect: Detection,
    },
    /// A new connection to the relay (after a session a relay spoiled).
    Reconnect,
    /// Waits until L0's log shows this (the harness passes L0's log on).
    WaitLog(String),
    /// Reads everything from `from` to the end L0 reports; the dump must
    /// hold `holds`, when given.
    Backlog {
        from: u64,
        holds: Option<String>,
    },
    /// Reads on, every byte by offset, until the output holds `end`,
    /// noting where a pattern of `lines` lines began (see
    /// [`pattern_line`]); then reads back its first, second, middle and
    /// last lines at their offsets: L0's history must hold it all.
    Pattern {
        lines: u64,
        end: String,
    },
    /// Reads on from the current offset until the output holds `text`,
    /// and says at which offset it begins (`mark "TEXT" at offset N`).
    Mark(String),
    /// Reads at offset `at`: the bytes there must be `text` (read from
    /// `at` exactly: nothing there is gone).
    ExpectAt {
        at: u64,
        text: String,
    },
    /// Reads everything from `from` to the end L0 reports; every byte
    /// must be there (no gap), and the dump must hold `texts` in this
    /// order, each once (no overlap).
    Continuous {
        from: u64,
        texts: Vec<String>,
    },
    /// Reads on for ever, typing what the keyboard gives (the CLI).
    Follow,
    Close,
}

#[derive(Debug)]
enum Pending {
    None,
    Id,
    Handshake,
    Answer,
}

/// The owner's client as a user of the line.
pub struct OwnerClient {
    steps: VecDeque<Step>,
    current: Option<Step>,
    pending: Pending,
    asked_at: Instant,
    step_began: Instant,
    next_poll: Instant,
    channel: u32,
    session: Option<ClientSession>,
    /// The next output offset to read.
    offset: u64,
    /// Output since the current wait began.
    seen: String,
    /// Backlog dump under way: what was read.
    dump: Vec<u8>,
    /// A pattern step under way.
    pattern: PatternScan,
    /// Offset of `dump[0]` in a mark step.
    mark_from: u64,
    /// Keys typed on the terminal, waiting to be sent.
    keys: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    typed: Vec<u8>,
    transcript: String,
    partial_line: String,
    /// Output to stdout as it comes (the CLI).
    echo: bool,
    failed: Option<String>,
    done: bool,
    /// Begin only once L0's log shows this (a run's emulator boots first).
    start_after: Option<&'static str>,
    /// A session refused for a key no VM knows yet is opened again (for
    /// [`WAIT_LIMIT`]): the VM may not have registered it yet.
    patient: bool,
    /// A retried step waits until then, and keeps its first start time.
    resume_at: Option<Instant>,
    retry_began: Option<Instant>,
    /// The transport should connect again (a relay's [`Step::Reconnect`]).
    reconnect: bool,
}

impl OwnerClient {
    pub fn new(steps: Vec<Step>, echo: bool) -> Self {
        let now = Instant::now();
        OwnerClient {
            steps: steps.into(),
            current: None,
            pending: Pending::None,
            asked_at: now,
            step_began: now,
            next_poll: now,
            channel: std::process::id() & 0xffff,
            session: None,
            offset: 0,
            seen: String::new(),
            dump: Vec::new(),
            pattern: PatternScan::default(),
            mark_from: 0,
            keys: None,
            typed: Vec::new(),
            transcript: String::new(),
            partial_line: String::new(),
            echo,
            failed: None,
            done: false,
            start_after: None,
            patient: false,
            resume_at: None,
            retry_began: None,
            reconnect: false,
        }
    }

    /// Whether the transport should connect again now (taken once).
    pub fn take_reconnect(&mut self) -> bool {
        std::mem::take(&mut self.reconnect)
    }

    /// Waits for the VM to register the key (see `patient`).
    pub fn patient(mut self) -> Self {
        self.patient = true;
        self
    }

    /// Waits for a line of L0's log before the first step.
    pub fn after_log(mut self, text: &'static str) -> Self {
        self.start_after = Some(text);
        self
    }

    /// Typing from stdin while following (the CLI).
    pub fn with_keyboard(mut self, keys: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        self.keys = Some(keys);
        self
    }

    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn say(&mut self, what: &str) {
        let line = format!("owner: {what}\n");
        if self.echo {
            eprint!("{}", line.replace('\n', crate::console::newline()));
        }
        self.transcript.push_str(&line);
    }

    fn fail(&mut self, why: String) {
        self.say(&format!("FAILED: {why}"));
        self.failed = Some(why);
        self.done = true;
    }

    /// The VM's output: to the screen, the transcript (`owner| ` lines).
    fn output(&mut self, bytes: &[u8]) {
        if self.echo {
            let mut out = std::io::stdout();
            let _ = out.write_all(bytes);
            let _ = out.flush();
        }
        let text = String::from_utf8_lossy(bytes);
        self.seen.push_str(&text);
        for ch in text.chars() {
            match ch {
                '\n' => {
                    let l = std::mem::take(&mut self.partial_line);
                    self.transcript
                        .push_str(&format!("owner| {}\n", l.trim_end_matches('\r')));
                }
                c => self.partial_line.push(c),
            }
        }
    }

    fn send_request(&mut self, r: &Request) -> Vec<String> {
        let Some(s) = &mut self.session else {
            self.fail("no session open".into());
            return Vec::new();
        };
        match s.request(r) {
            Ok(m) => {
                self.pending = Pending::Answer;
                self.asked_at = Instant::now();
                vec![line::message_body(self.channel, &m)]
            }
            Err(e) => {
                self.fail(e.to_string());
                Vec::new()
            }
        }
    }

    fn read_request(&mut self) -> Vec<String> {
        let r = Request::Read {
            from: self.offset,
            max: MAX_OUTPUT as u16,
        };
        self.send_request(&r)
    }

    /// Starts the next step: the frames it sends.
    fn begin(&mut self) -> Vec<String> {
        let Some(step) = self.steps.pop_front() else {
            self.done = true;
            return Vec::new();
        };
        self.step_began = self.retry_began.take().unwrap_or_else(Instant::now);
        self.current = Some(step.clone());
        match step {
            Step::CheckPin { .. } => {
                self.pending = Pending::Id;
                self.asked_at = Instant::now();
                vec!["owner-id".into()]
            }
            Step::Open { key, pin, tag, .. } => {
                self.channel = self.channel.wrapping_add(1);
                match ClientSession::start_for(&key, &pin, os_entropy, tag.as_ref()) {
                    Ok((s, hello)) => {
                        self.session = Some(s);
                        self.pending = Pending::Handshake;
                        self.asked_at = Instant::now();
                        vec![line::message_body(self.channel, &hello)]
                    }
                    Err(e) => {
                        self.fail(e.to_string());
                        Vec::new()
                    }
                }
            }
            Step::Attach { tag, port, .. } => {
                self.next_poll = Instant::now();
                self.send_request(&Request::Attach { tag, port })
            }
            Step::AddKey { key, access } => self.send_request(&Request::AddKey { key, access }),
            Step::RemoveKey(key) => self.send_request(&Request::RemoveKey(key)),
            Step::WaitFor(_) | Step::Follow => {
                self.seen.clear();
                self.read_request()
            }
            Step::Seek(at) => {
                self.offset = at;
                self.next();
                Vec::new()
            }
            Step::Type { bytes, .. } => self.send_request(&Request::Input(bytes)),
            Step::TypeTampered { bytes, .. } => {
                let shown = String::from_utf8_lossy(&bytes).trim_end().to_string();
                self.say(&format!("typing {shown:?} through a hostile relay"));
                self.send_request(&Request::Input(bytes))
            }
            Step::WaitLog(_) => Vec::new(),
            Step::Reconnect => {
                self.say("connecting to the relay again");
                self.session = None;
                self.reconnect = true;
                self.next();
                Vec::new()
            }
            Step::Break { then, .. } => self.send_request(&Request::Break(then)),
            Step::Backlog { from, .. } => {
                self.dump.clear();
                self.offset = from;
                self.read_request()
            }
            Step::Mark(_) => {
                self.dump.clear();
                self.mark_from = self.offset;
                self.read_request()
            }
            Step::ExpectAt { at, ref text } => self.send_request(&Request::Read {
                from: at,
                max: text.len() as u16,
            }),
            Step::Continuous { from, .. } => {
                self.dump.clear();
                self.offset = from;
                self.read_request()
            }
            Step::Pattern { .. } => {
                self.pattern = PatternScan {
                    began: self.offset,
                    ..PatternScan::default()
                };
                self.read_request()
            }
            Step::Close => self.send_request(&Request::Close),
        }
    }

    /// A step ended well: on to the next.
    fn next(&mut self) {
        self.current = None;
        self.pending = Pending::None;
    }

    fn check(&mut self, expect: Expect, got: &Answer, what: &str) {
        match (expect, got) {
            (Expect::Ok, Answer::Refused(r)) => self.fail(format!("{what}: refused: {}", r.text())),
            (Expect::Refused(want), Answer::Refused(r)) if want == *r => {
                self.say(&format!("{what}: refused as expected: {}", r.text()));
                self.next()
            }
            (Expect::Refused(want), a) => self.fail(format!(
                "{what}: L0 answered {a:?}, not the refusal {want:?}"
            )),
            (Expect::Ok, _) => self.next(),
        }
    }

    fn id_answer(&mut self, frame: LineFrame) {
        let Some(Step::CheckPin { pin, matches }) = self.current.clone() else {
            return;
        };
        let pinned = OwnerKey(pin);
        match frame {
            LineFrame::IdOff(why) => self.fail(format!("owner sessions are off on this L0: {why}")),
            LineFrame::Id(id) => {
                let same = OwnerKey::from_base64(id).is_ok_and(|k| k == pinned);
                match (same, matches) {
                    (true, true) => {
                        self.say(&format!("L0's identity is the pinned {pinned}"));
                        self.next()
                    }
                    (false, false) => {
                        self.say(&format!(
                            "refused to connect: L0's identity is {id}, not the pinned {pinned}"
                        ));
                        self.next()
                    }
                    (false, true) => self.fail(format!(
                        "refusing to connect: L0's identity is {id}, not the pinned {pinned} (another host, or someone in between)"
                    )),
                    (true, false) => {
                        self.fail(format!("L0's identity is {id}, which the step meant not to match"))
                    }
                }
            }
            _ => {}
        }
    }

    fn message(&mut self, bytes: &[u8]) {
        let step = self.current.clone();
        if let (Pending::Handshake, Some(Step::Open { refused, key, .. })) = (&self.pending, &step)
        {
            let Some(s) = &mut self.session else { return };
            match s.finish(bytes) {
                Ok(()) if refused.is_none() => {
                    let me = OwnerKey(noise::public_key(key));
                    self.say(&format!("session open as {me}"));
                    self.next()
                }
                Ok(()) => self.fail(format!(
                    "L0 opened a session it should have refused ({refused:?})"
                )),
                Err(e) => self.fail(e.to_string()),
            }
            return;
        }
        let Some(s) = &mut self.session else { return };
        let answer = match s.answer(bytes) {
            Ok(a) => a,
            Err(e) => {
                if let Some(Step::TypeTampered {
                    detect: Detection::ForgedAnswer,
                    ..
                }) = step
                {
                    return self.detected(&format!("{e}; the session is over"));
                }
                return self.fail(e.to_string());
            }
        };
        if let Some(Step::TypeTampered { .. }) = step {
            return self.fail(format!(
                "the relay tampered with the message and it was answered: {answer:?}"
            ));
        }
        self.pending = Pending::None;
        match (step, answer) {
            (Some(Step::Attach { patient: true, .. }), Answer::Refused(Refusal::UnknownKey))
                if self.step_began.elapsed() < WAIT_LIMIT =>
            {
                // Not there yet: ask again after a while.
                self.next_poll = Instant::now() + POLL * 10;
            }
            (
                Some(Step::Attach {
                    tag, port, expect, ..
                }),
                a,
            ) => {
                if let Answer::Attached {
                    access,
                    writer,
                    start,
                    end,
                } = a
                {
                    self.say(&format!(
                        "attached to {tag} port {port:#x} ({}{}); output offsets {start}..{end}",
                        access.name(),
                        if writer { ", writer" } else { "" }
                    ));
                    // Follow from what is there now; a backlog is read on request.
                    self.offset = end;
                }
                self.check(expect, &a, &format!("attach {tag}"));
            }
            (Some(Step::AddKey { key, access }), a) => {
                if let Answer::KeyAdded(n) = a {
                    self.say(&format!(
                        "added key {key} ({}); the VM holds {n}",
                        access.name()
                    ));
                }
                self.check(Expect::Ok, &a, "add key");
            }
            (Some(Step::RemoveKey(key)), a) => {
                if let Answer::KeyRemoved(n) = a {
                    self.say(&format!("removed key {key}; the VM holds {n}"));
                }
                self.check(Expect::Ok, &a, "remove key");
            }
            (Some(Step::Type { bytes, expect }), a) => {
                if let Answer::Taken(n) = a {
                    let shown = String::from_utf8_lossy(&bytes).trim_end().to_string();
                    self.say(&format!("typed {shown:?} ({n} bytes taken)"));
                }
                self.check(expect, &a, "type");
            }
            (Some(step @ Step::Break { .. }), Answer::Taken(0))
                if self.step_began.elapsed() < WAIT_LIMIT =>
            {
                // Input typed before it is still unread: send it again soon.
                let began = self.step_began;
                self.steps.push_front(step);
                self.next();
                self.resume_at = Some(Instant::now() + POLL);
                self.retry_began = Some(began);
            }
            (Some(Step::Break { then, expect }), a) => {
                if let Answer::Taken(n) = a {
                    if then.is_empty() {
                        self.say("sent BREAK");
                    } else {
                        let shown = String::from_utf8_lossy(&then).to_string();
                        self.say(&format!(
                            "sent BREAK then {shown:?} ({} of {} bytes taken)",
                            n.saturating_sub(1),
                            then.len()
                        ));
                    }
                }
                self.check(expect, &a, "BREAK");
            }
            (Some(Step::WaitFor(text)), Answer::Output { start, end, bytes }) => {
                self.took(start, end, &bytes);
                if self.seen.contains(&text) {
                    self.next();
                }
            }
            (Some(Step::Follow), Answer::Output { start, end, bytes }) => {
                self.took(start, end, &bytes);
            }
            (Some(Step::Backlog { holds, .. }), Answer::Output { start, end, bytes }) => {
                if start > self.offset {
                    self.say(&format!("backlog: bytes {}..{start} are gone", self.offset));
                }
                self.dump.extend_from_slice(&bytes);
                self.offset = start + bytes.len() as u64;
                if self.offset >= end || bytes.is_empty() {
                    let text = String::from_utf8_lossy(&self.dump).to_string();
                    self.say(&format!(
                        "backlog to offset {end}: {} bytes",
                        self.dump.len()
                    ));
                    let dump = std::mem::take(&mut self.dump);
                    self.output(&dump);
                    match holds {
                        Some(h) if !text.contains(&h) => {
                            self.fail(format!("the backlog does not hold {h:?}"))
                        }
                        _ => self.next(),
                    }
                }
            }
            (Some(Step::Mark(text)), Answer::Output { start, end, bytes }) => {
                if self.dump.is_empty() {
                    self.mark_from = start;
                } else if start != self.mark_from + self.dump.len() as u64 {
                    return self.fail(format!("output before offset {start} is gone"));
                }
                self.dump.extend_from_slice(&bytes);
                self.took(start, end, &bytes);
                if let Some(i) = find(&self.dump, text.as_bytes()) {
                    let at = self.mark_from + i as u64;
                    self.say(&format!("mark {text:?} at offset {at}"));
                    self.dump.clear();
                    self.next();
                }
            }
            (Some(Step::ExpectAt { at, text }), Answer::Output { start, end, bytes }) => {
                if start != at || bytes != text.as_bytes() {
                    return self.fail(format!(
                        "offset {at}: read {:?} from offset {start} (end {end}), expected {text:?}",
                        String::from_utf8_lossy(&bytes)
                    ));
                }
                self.say(&format!("offset {at} holds {text:?} (end {end})"));
                self.next();
            }
            (Some(Step::Continuous { from, texts }), Answer::Output { start, end, bytes }) => {
                if start != self.offset {
                    return self.fail(format!(
                        "a gap: bytes {}..{start} are not there",
                        self.offset
                    ));
                }
                self.dump.extend_from_slice(&bytes);
                self.offset = start + bytes.len() as u64;
                if self.offset >= end || bytes.is_empty() {
                    let dump = std::mem::take(&mut self.dump);
                    let mut at = 0;
                    for t in &texts {
                        let n = dump.windows(t.len()).filter(|w| *w == t.as_bytes()).count();
                        match find(&dump[at..], t.as_bytes()) {
                            Some(i) if n == 1 => at += i + t.len(),
                            _ => {
                                return self.fail(format!(
                                "offsets {from}..{end}: {t:?} appears {n} times, or out of order"
                            ))
                            }
                        }
                    }
                    self.say(&format!(
                        "continuous from offset {from} to {end}: {} bytes, {texts:?} in order, each once",
                        dump.len()
                    ));
                    self.next();
                }
            }
            (Some(Step::Pattern { lines, end: marker }), Answer::Output { start, end, bytes }) => {
                self.pattern_answer(lines, &marker, start, end, &bytes)
            }
            (Some(Step::Close), Answer::Closed) => {
                self.say("session closed");
                self.session = None;
                self.next()
            }
            (_, Answer::Refused(r)) => self.fail(format!("refused: {}", r.text())),
            (s, a) => self.fail(format!("unexpected answer {a:?} to {s:?}")),
        }
    }

    /// Output read while waiting or following.
    fn took(&mut self, start: u64, end: u64, bytes: &[u8]) {
        if start > self.offset {
            self.say(&format!(
                "missed output bytes {}..{start} (gone from L0's history)",
                self.offset
            ));
        }
        self.output(bytes);
        self.offset = start + bytes.len() as u64;
        // More waiting: read again at once; else after a pause.
        self.next_poll = if self.offset < end {
            Instant::now()
        } else {
            Instant::now() + POLL
        };
    }

    /// The next read of a pattern step: on from the offset while
    /// scanning, then the next line to read back.
    fn pattern_request(&mut self) -> Vec<String> {
        match self.pattern.checks.front() {
            Some(&(at, _)) => self.send_request(&Request::Read {
                from: at,
                max: PATTERN_LINE as u16,
            }),
            None => self.read_request(),
        }
    }

    fn pattern_answer(&mut self, lines: u64, marker: &str, start: u64, end: u64, bytes: &[u8]) {
        if let Some((at, want)) = self.pattern.checks.pop_front() {
            if start != at || bytes != want.as_slice() {
                return self.fail(format!(
                    "pattern byte offset {at}: read {:?} from {start}, expected {:?}",
                    String::from_utf8_lossy(bytes),
                    String::from_utf8_lossy(&want)
                ));
            }
            self.pattern.read_back.push(at);
            if self.pattern.checks.is_empty() {
                let first = self.pattern.first.unwrap_or(0);
                self.say(&format!(
                    "pattern: {lines} lines, {} bytes from offset {first} read by offset; lines read back at offsets {:?} (end {end})",
                    lines * PATTERN_LINE,
                    self.pattern.read_back
                ));
                self.next();
            }
            return;
        }
        if start != self.offset {
            return self.fail(format!(
                "pattern: bytes {}..{start} are gone from L0's history",
                self.offset
            ));
        }
        self.pattern.bytes += bytes.len() as u64;
        // Where line 0 and the end marker are (either may straddle reads).
        let carry = self.pattern.carry.len() as u64;
        self.pattern.carry.extend_from_slice(bytes);
        let hay = std::mem::take(&mut self.pattern.carry);
        let hay_at = start - carry;
        if self.pattern.first.is_none() {
            if let Some(i) = find(&hay, &pattern_line(0)[..8]) {
                self.pattern.first = Some(hay_at + i as u64);
            }
        }
        let ended = self.pattern.first.is_some() && find(&hay, marker.as_bytes()).is_some();
        let keep = hay.len().min(64);
        self.pattern.carry = hay[hay.len() - keep..].to_vec();
        self.offset = start + bytes.len() as u64;
        self.next_poll = if self.offset < end {
            Instant::now()
        } else {
            Instant::now() + POLL
        };
        if ended {
            let first = self.pattern.first.unwrap_or(0);
            self.say(&format!(
                "pattern: printed from offset {first}, {} bytes read on from offset {}",
                self.pattern.bytes, self.pattern.began
            ));
            self.pattern.checks = [0, 1, lines / 2, lines - 1]
                .into_iter()
                .map(|k| (first + k * PATTERN_LINE, pattern_line(k)))
                .collect();
            self.next_poll = Instant::now();
        }
    }

    /// The tampering was noticed as the step expected: the session is over.
    fn detected(&mut self, what: &str) {
        self.say(&format!("tampering detected: {what}"));
        self.session = None;
        self.next();
    }

    fn ended(&mut self, reason: Option<EndReason>) {
        let text = reason.map_or("L0 ended the session", |r| r.text());
        match self.current.clone() {
            Some(Step::TypeTampered {
                detect: Detection::L0Ended,
                ..
            }) if reason == Some(EndReason::AuthFailed) => {
                self.detected(&format!("L0 ended the session: {text}"))
            }
            Some(step @ Step::Open { refused: None, .. })
                if self.patient
                    && matches!(
                        reason,
                        Some(EndReason::UnknownKey | EndReason::TagWithoutKey)
                    )
                    && self.step_began.elapsed() < WAIT_LIMIT =>
            {
                // Not registered yet (the VM may hold its tag already):
                // open again in a second.
                let began = self.step_began;
                self.steps.push_front(step);
                self.next();
                self.start_after = None;
                self.resume_at = Some(Instant::now() + POLL * 10);
                self.retry_began = Some(began);
            }
            Some(Step::Open {
                refused: Some(want),
                ..
            }) if reason == Some(want) => {
                self.say(&format!("session refused as expected: {text}"));
                self.session = None;
                self.next()
            }
            _ => self.fail(format!("L0 ended the session: {text}")),
        }
    }
}

impl LineUser for OwnerClient {
    fn received(&mut self, r: Received) -> Vec<String> {
        let body = match r {
            Received::Owner(body) => body,
            Received::Log(l) if self.start_after.is_some_and(|t| l.contains(t)) => {
                self.start_after = None;
                return Vec::new();
            }
            Received::Log(l) => {
                if let Some(Step::WaitLog(t)) = &self.current {
                    if l.contains(t.as_str()) {
                        let t = t.clone();
                        self.say(&format!("L0 logged {t:?}"));
                        self.next();
                    }
                }
                return Vec::new();
            }
            _ => return Vec::new(),
        };
        match line::parse(&body) {
            Some(f @ (LineFrame::Id(_) | LineFrame::IdOff(_)))
                if matches!(self.pending, Pending::Id) =>
            {
                self.id_answer(f)
            }
            Some(LineFrame::Message { channel, bytes }) if channel == self.channel => {
                self.message(&bytes)
            }
            Some(LineFrame::End { channel, reason }) if channel == self.channel => {
                self.ended(reason)
            }
            _ => {}
        }
        Vec::new()
    }

    fn tick(&mut self) -> Vec<String> {
        if self.done || self.start_after.is_some() {
            return Vec::new();
        }
        if self.resume_at.is_some_and(|t| Instant::now() < t) {
            return Vec::new();
        }
        self.resume_at = None;
        if let Some(keys) = &self.keys {
            while let Ok(k) = keys.try_recv() {
                self.typed.extend(k);
            }
        }
        if !matches!(self.pending, Pending::None) {
            let dropped = matches!(
                self.current,
                Some(Step::TypeTampered {
                    detect: Detection::NoAnswer,
                    ..
                })
            );
            if dropped && self.asked_at.elapsed() > DROPPED_LIMIT {
                self.detected(&format!(
                    "no answer within {} s: the message was lost on the way (dropped by the relay?); the session is over",
                    DROPPED_LIMIT.as_secs()
                ));
            } else if self.asked_at.elapsed() > ANSWER_LIMIT {
                self.fail(format!(
                    "no answer from L0 within {} s",
                    ANSWER_LIMIT.as_secs()
                ));
            }
            return Vec::new();
        }
        match &self.current {
            None => self.begin(),
            Some(Step::WaitFor(text)) | Some(Step::Mark(text)) => {
                if self.step_began.elapsed() > WAIT_LIMIT {
                    let t = text.clone();
                    self.fail(format!(
                        "the VM never printed {t:?} (waited {} s)",
                        WAIT_LIMIT.as_secs()
                    ));
                    return Vec::new();
                }
                if Instant::now() < self.next_poll {
                    return Vec::new();
                }
                self.read_request()
            }
            Some(Step::WaitLog(text)) => {
                if self.step_began.elapsed() > LOG_WAIT_LIMIT {
                    let t = text.clone();
                    self.fail(format!(
                        "L0 never logged {t:?} (waited {} s)",
                        LOG_WAIT_LIMIT.as_secs()
                    ));
                }
                Vec::new()
            }
            Some(Step::Attach { tag, port, .. }) => {
                if Instant::now() < self.next_poll {
                    return Vec::new();
                }
                let r = Request::Attach {
                    tag: *tag,
                    port: *port,
                };
                self.send_request(&r)
            }
            Some(Step::Follow) if !self.typed.is_empty() => {
                let n = self.typed.len().min(owner_session::message::MAX_INPUT);
                let bytes: Vec<u8> = self.typed.drain(..n).collect();
                self.send_request(&Request::Input(bytes))
            }
            Some(Step::Follow) | Some(Step::Backlog { .. }) | Some(Step::Continuous { .. }) => {
                if Instant::now() < self.next_poll {
                    return Vec::new();
                }
                self.read_request()
            }
            Some(Step::Pattern { .. }) => {
                if self.step_began.elapsed() > PATTERN_LIMIT {
                    self.fail(format!(
                        "the pattern did not end within {} s",
                        PATTERN_LIMIT.as_secs()
                    ));
                    return Vec::new();
                }
                if Instant::now() < self.next_poll {
                    return Vec::new();
                }
                self.pattern_request()
            }
            // A step whose answer was taken without moving on cannot
            // happen: answers either call next() or fail.
            Some(_) => Vec::new(),
        }
    }

    fn quit(&self) -> bool {
        // In a scenario the run goes on until the guest's verdict.
        self.done && (self.echo || self.failed.is_some())
    }

    fn transcript(&self) -> &str {
        &self.transcript
    }

    /// A last line the VM printed without its newline yet.
    fn finish(&mut self) {
        let l = std::mem::take(&mut self.partial_line);
        if !l.is_empty() {
            self.transcript
                .push_str(&format!("owner| {}\n", l.trim_end_matches('\r')));
        }
    }

    fn unfinished(&self) -> Option<String> {
        if let Some(f) = &self.failed {
            return Some(format!("the owner's client: {f}"));
        }
        match (&self.current, self.steps.front()) {
            (None, None) => None,
            (c, n) => Some(format!(
                "the owner's client did not finish: at {c:?}, next {n:?}"
            )),
        }
    }
}

/// The keys of the `owner-console` scenario (test keys, never secrets):
/// L0's identity, alpha's rw owner (registered by alpha itself), an ro
/// owner (added through the rw owner's session), a stranger, and the key
/// a wrong pin names.
pub mod test_keys {
    pub const L0_IDENTITY_HEX: &str =
        "4040404040404040404040404040404040404040404040404040404040404040\n";
    pub const L0_IDENTITY: [u8; 32] = [0x40; 32];
    pub const RW: [u8; 32] = [0x11; 32];
    pub const RO: [u8; 32] = [0x22; 32];
    pub const STRANGER: [u8; 32] = [0x33; 32];
    pub const OTHER_L0: [u8; 32] = [0x44; 32];
    /// RW's public key in base64, on the guest's command line (a host
    /// test keeps it in step with RW).
    pub const RW_PUBLIC_B64: &str = "e06Qm75//kTEZaIgA31gjuNYl9Me+XLwf3SJLLD3PxM=";
    /// RO's, as L0 logs it when added, and L0's identity as it prints it
    /// (the scenario's markers hold them; a host test checks).
    #[cfg(test)]
    pub const RO_PUBLIC_B64: &str = "D6poTtKIZ7l/Smot7l34zpdOdrcBjj8iocTPJnhXDyA=";
    #[cfg(test)]
    pub const L0_PUBLIC_B64: &str = "17XoHTNuV4sTuNcG6C0GHjA4yWvOZs3PUNVmuW3buhA=";
}

/// How every owner story begins: with a wrong pin the client refuses to
/// connect, and a session encrypted to the wrong key does not open either.
pub fn wrong_pin_refused() -> [Step; 2] {
    use test_keys::*;
    let other = noise::public_key(&OTHER_L0);
    [
        Step::CheckPin {
            pin: other,
            matches: false,
        },
        Step::Open {
            key: RW,
            pin: other,
            tag: None,
            refused: Some(EndReason::HandshakeFailed),
        },
    ]
}

/// The `owner-console` scenario's client: its story, step by step.
pub fn scenario_client() -> OwnerClient {
    use test_keys::*;
    let pk = |k: &[u8; 32]| noise::public_key(k);
    let l0 = pk(&L0_IDENTITY);
    let alpha = VmTag::new(b"alpha").unwrap();
    let attach = |expect, patient| Step::Attach {
        tag: alpha,
        port: 0x3f8,
        expect,
        patient,
    };
    let mut steps = wrong_pin_refused().to_vec();
    steps.extend([
        // The owner with alpha's rw key.
        Step::CheckPin {
            pin: l0,
            matches: true,
        },
        Step::Open {
            key: RW,
            pin: l0,
            tag: None,
            refused: None,
        },
        attach(Expect::Ok, true),
        // From the first byte alpha printed (before anyone attached).
        Step::Seek(0),
        Step::WaitFor("shadow-input ready>".into()),
        Step::Type {
            bytes: b"hello-L2\r".to_vec(),
            expect: Expect::Ok,
        },
        Step::WaitFor("shadow-input again>".into()),
        Step::Type {
            bytes: b"second-L2\r".to_vec(),
            expect: Expect::Ok,
        },
        Step::WaitFor("echo: second-L2".into()),
        // alpha's L1 reads LSR from L2 until BI shows.
        Step::Break {
            then: Vec::new(),
            expect: Expect::Ok,
        },
        // Everything from offset 0: the prompt printed before attaching.
        Step::Backlog {
            from: 0,
            holds: Some("shadow-input ready>\r\necho: hello-L2\r\nshadow-input again>".into()),
        },
        Step::AddKey {
            key: OwnerKey(pk(&RO)),
            access: KeyAccess::ReadOnly,
        },
        Step::Close,
        // The ro owner follows the same port and cannot type or BREAK.
        Step::Open {
            key: RO,
            pin: l0,
            tag: None,
            refused: None,
        },
        attach(Expect::Ok, false),
        Step::Backlog {
            from: 0,
            holds: Some("echo: second-L2".into()),
        },
        Step::Type {
            bytes: b"rm -rf /\r".to_vec(),
            expect: Expect::Refused(Refusal::ReadOnly),
        },
        Step::Break {
            then: Vec::new(),
            expect: Expect::Refused(Refusal::ReadOnly),
        },
        Step::Close,
        // A key no VM registered: no session at all.
        Step::Open {
            key: STRANGER,
            pin: l0,
            tag: None,
            refused: Some(EndReason::UnknownKey),
        },
    ]);
    OwnerClient::new(steps, false)
        .after_log("starting the cloud VM")
        .patient()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_is_given_the_rw_owners_public_key() {
        let b64 = OwnerKey(noise::public_key(&test_keys::RW)).to_string();
        assert_eq!(test_keys::RW_PUBLIC_B64, b64);
        let pk = |k| OwnerKey(noise::public_key(k)).to_string();
        assert_eq!(test_keys::RO_PUBLIC_B64, pk(&test_keys::RO));
        assert_eq!(test_keys::L0_PUBLIC_B64, pk(&test_keys::L0_IDENTITY));
        let all = crate::scenario::all();
        let s = all.iter().find(|s| s.name == "owner-console").unwrap();
        for k in [
            test_keys::RW_PUBLIC_B64,
            test_keys::RO_PUBLIC_B64,
            test_keys::L0_PUBLIC_B64,
        ] {
            assert!(s.com2.iter().any(|m| m.contains(k)), "{k}");
        }
        assert_eq!(
            noise::parse_private_key(test_keys::L0_IDENTITY_HEX.as_bytes()),
            Some(test_keys::L0_IDENTITY)
        );
    }

    #[test]
    fn pins_parse_or_say_what_a_pin_is() {
        let k = OwnerKey([5; 32]).to_string();
        assert_eq!(parse_pin(&k), Ok([5; 32]));
        assert!(parse_pin("abc").unwrap_err().contains("base64"));
    }
}
