//! The operator's end of L0's management line (docs/console-protocol.md):
//! the scenario harness follows every user VM's console through it, and
//! `cargo xtask console` / `cargo xtask run --console` let a person use it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};

use shadow_devices::mgmt::{self, Event};

/// What arrived on the line, one line at a time.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// L0's log text (not a frame).
    Log(String),
    /// A frame from L0.
    Event(Event),
    /// A frame damaged on the line, or one this tool does not know.
    Bad(String),
    /// An owner-session frame's body (crate::owner).
    Owner(String),
}

/// The management line over any non-blocking byte stream (a TCP
/// connection to the emulator's serial port, or a real serial device).
pub struct MgmtLine<S> {
    io: S,
    /// Everything received is copied here (the run's `com2.log`).
    log: Option<File>,
    /// Everything received, as text.
    pub text: String,
    partial: Vec<u8>,
    closed: bool,
}

impl<S: Read + Write> MgmtLine<S> {
    pub fn new(io: S, log: Option<File>) -> Self {
        MgmtLine {
            io,
            log,
            text: String::new(),
            partial: Vec::new(),
            closed: false,
        }
    }

    /// Whether the other end closed the line.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Reads what is there (without blocking) and returns the whole lines.
    pub fn poll(&mut self) -> Vec<Received> {
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        loop {
            match self.io.read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock, or the emulator went away
            }
        }
        if got.is_empty() {
            return Vec::new();
        }
        if let Some(f) = &mut self.log {
            let _ = f.write_all(&got);
            let _ = f.flush();
        }
        self.text.push_str(&String::from_utf8_lossy(&got));
        self.partial.extend_from_slice(&got);
        let mut out = Vec::new();
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            out.push(classify(&line));
        }
        out
    }

    /// Sends one command frame.
    pub fn send(&mut self, body: &str) -> io::Result<()> {
        let f = mgmt::frame(format_args!("{body}"));
        let mut rest = f.as_bytes();
        // The stream is non-blocking: a full socket buffer is waited out.
        while !rest.is_empty() {
            match self.io.write(rest) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => return Err(e),
            }
        }
        self.io.flush()
    }
}

fn classify(line: &str) -> Received {
    // The log and frames share the line; a frame may follow log text that
    // had no newline yet (a boot message cut short), so look for `@`.
    match mgmt::parse_frame(line) {
        Ok(body) if owner_session::line::is_owner_body(body) => Received::Owner(body.to_string()),
        Ok(body) => match mgmt::parse_event(body) {
            Some(e) => Received::Event(e),
            None => Received::Bad(format!("unknown frame: {line}")),
        },
        Err(mgmt::FrameError::NotAFrame) => Received::Log(line.to_string()),
        Err(e) => Received::Bad(format!("{e:?}: {line}")),
    }
}

/// The other end of the management line in a run: the harness's
/// [`Follower`], or a person's [`crate::operator::Operator`].
pub trait LineUser {
    /// One line from L0; returns the commands to send.
    fn received(&mut self, r: Received) -> Vec<String>;
    /// Called every few tens of milliseconds: commands of its own.
    fn tick(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Whether the user wants the run to end.
    fn quit(&self) -> bool {
        false
    }
    /// What the user VMs' consoles showed, for the judge.
    fn transcript(&self) -> &str;
    /// The run is over.
    fn finish(&mut self) {}
    /// What the user meant to do and did not, if anything.
    fn unfinished(&self) -> Option<String> {
        None
    }
}

/// Moves what is there between the line and its user.
pub fn serve<S: Read + Write>(line: &mut MgmtLine<S>, user: &mut dyn LineUser) {
    let mut cmds = user.tick();
    for r in line.poll() {
        cmds.extend(user.received(r));
    }
    for c in cmds {
        if let Err(e) = line.send(&c) {
            user.received(Received::Bad(format!("sending `{c}` to L0: {e}")));
        }
    }
}

static RAW_TERMINAL: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The line end for the terminal: a raw terminal needs the carriage return.
pub fn newline() -> &'static str {
    if RAW_TERMINAL.load(std::sync::atomic::Ordering::Relaxed) {
        "\r\n"
    } else {
        "\n"
    }
}

pub fn set_raw_terminal(raw: bool) {
    RAW_TERMINAL.store(raw, std::sync::atomic::Ordering::Relaxed);
}

/// Operator input a scenario types into one VM: when that VM's own
/// output (and its events, such as `tag=NAME`) since the previous input to
/// it shows `after`, attach `target` (a VM number or tag) and type `text`
/// (nothing for an empty text: attaching alone replays the backlog).
/// Inputs to one target go in order; different targets are independent.
/// An [`Input`] text that detaches the target instead of typing.
pub const DETACH: &str = "\0detach";

#[derive(Clone, Copy, Debug)]
pub struct Input {
    pub after: &'static str,
    pub target: &'static str,
    pub text: &'static str,
}

/// The inputs for one target and how far its VM's text was looked at.
struct Queue {
    target: &'static str,
    inputs: VecDeque<Input>,
    mark: usize,
}

/// Keeps a transcript of the user VMs' consoles (`vm<N>| <line>` per line
/// of output, and what happened) and types the scenario's input. With
/// `follow_all`, every VM is attached the moment L0 announces it;
/// otherwise only the targets of inputs are (so a VM can print without
/// the management line's pace).
pub struct Follower {
    pub transcript: String,
    follow_all: bool,
    queues: Vec<Queue>,
    tags: BTreeMap<String, u64>,
    /// Each VM's own text: its raw output and its events.
    own: BTreeMap<u64, String>,
    followed: BTreeSet<u64>,
    lines: BTreeMap<u64, Vec<u8>>,
}

impl Follower {
    pub fn new(inputs: &[Input], follow_all: bool) -> Self {
        let mut queues: Vec<Queue> = Vec::new();
        for i in inputs {
            match queues.iter_mut().find(|q| q.target == i.target) {
                Some(q) => q.inputs.push_back(*i),
                None => queues.push(Queue {
                    target: i.target,
                    inputs: VecDeque::from([*i]),
                    mark: 0,
                }),
            }
        }
        Follower {
            transcript: String::new(),
            follow_all,
            queues,
            tags: BTreeMap::new(),
            own: BTreeMap::new(),
            followed: BTreeSet::new(),
            lines: BTreeMap::new(),
        }
    }

    fn note(&mut self, s: std::fmt::Arguments) {
        self.transcript.push_str(&s.to_string());
        self.transcript.push('\n');
    }

    /// Takes one event; returns the commands to send.
    pub fn event(&mut self, e: &Event) -> Vec<String> {
        let mut cmds = Vec::new();
        match e {
            Event::Vm { id, tag, .. } => {
                if self.followed.insert(*id) {
                    self.note(format_args!("vm {id} appeared"));
                    if self.follow_all {
                        cmds.push(format!("attach {id}"));
                    }
                }
                if let Some(t) = tag {
                    // A tag moves to a new VM when the old one is gone (a
                    // restore after migration): report each binding once.
                    if self.tags.insert(t.clone(), *id) != Some(*id) {
                        self.note(format_args!("vm {id} tag={t}"));
                        self.own
                            .entry(*id)
                            .or_default()
                            .push_str(&format!("\ntag={t}\n"));
                    }
                }
            }
            Event::Out { id, bytes, .. } => {
                // NULs (a guest flooding its port with zeros) say nothing.
                let bytes: Vec<u8> = bytes.iter().copied().filter(|&b| b != 0).collect();
                self.own
                    .entry(*id)
                    .or_default()
                    .push_str(&String::from_utf8_lossy(&bytes));
                let buf = self.lines.entry(*id).or_default();
                buf.extend_from_slice(&bytes);
                let mut done = Vec::new();
                while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                    let l: Vec<u8> = buf.drain(..=i).collect();
                    done.push(
                        String::from_utf8_lossy(&l)
                            .trim_end_matches(['\r', '\n'])
                            .to_string(),
                    );
                }
                for l in done {
                    self.note(format_args!("vm{id}| {l}"));
                }
            }
            Event::Gone { id } => {
                self.flush(*id);
                self.followed.remove(id);
                self.tags.retain(|_, v| v != id);
                self.note(format_args!("vm {id} gone"));
            }
            Event::Dropped { id, count, .. } => {
                self.note(format_args!("vm {id} dropped {count} bytes"))
            }
            Event::Restore {
                id,
                tag,
                ok,
                detail,
            } => {
                let what = if *ok { "restored" } else { "restore-refused" };
                self.note(format_args!("{tag} {what} {detail}"));
                if let Some(id) = id {
                    self.own
                        .entry(*id)
                        .or_default()
                        .push_str(&format!("\n{what}\n"));
                }
            }
            Event::Error(m) => self.note(format_args!("L0 err {m}")),
            Event::Hello { .. }
            | Event::Stats(_)
            | Event::EndList { .. }
            | Event::Attached { .. }
            | Event::Detached { .. }
            | Event::Pong => {}
        }
        cmds.extend(self.due_input());
        cmds
    }

    /// A partial line, as it stands (at the end, or when the VM goes).
    fn flush(&mut self, id: u64) {
        if let Some(l) = self.lines.remove(&id).filter(|l| !l.is_empty()) {
            let l = String::from_utf8_lossy(&l).to_string();
            self.note(format_args!("vm{id}| {l}"));
        }
    }

    fn flush_all(&mut self) {
        let ids: Vec<u64> = self.lines.keys().copied().collect();
        for id in ids {
            self.flush(id);
        }
    }

    /// Inputs whose trigger appeared in their VM's text.
    fn due_input(&mut self) -> Vec<String> {
        let mut cmds = Vec::new();
        let mut typed = Vec::new();
        for q in &mut self.queues {
            let vm = q
                .target
                .parse::<u64>()
                .ok()
                .or_else(|| self.tags.get(q.target).copied());
            let Some(text) = vm.and_then(|v| self.own.get(&v)) else {
                continue;
            };
            while let Some(next) = q.inputs.front().copied() {
                if !text[q.mark.min(text.len())..].contains(next.after) {
                    break;
                }
                q.inputs.pop_front();
                q.mark = text.len();
                if next.text == DETACH {
                    cmds.push(format!("detach {}", next.target));
                } else {
                    cmds.push(format!("attach {}", next.target));
                    if !next.text.is_empty() {
                        cmds.push(format!("in {}", mgmt::hex(next.text.as_bytes())));
                    }
                }
                typed.push(next);
            }
        }
        for t in typed {
            match t.text {
                "" => self.note(format_args!("attached to {}", t.target)),
                DETACH => self.note(format_args!("detached from {}", t.target)),
                text => self.note(format_args!("typed into {}: {text:?}", t.target)),
            }
        }
        cmds
    }

    /// Inputs whose trigger never appeared.
    pub fn untyped(&self) -> Vec<Input> {
        self.queues
            .iter()
            .flat_map(|q| q.inputs.iter().copied())
            .collect()
    }
}

impl LineUser for Follower {
    fn received(&mut self, r: Received) -> Vec<String> {
        match r {
            Received::Event(e) => self.event(&e),
            Received::Bad(m) => {
                self.note(format_args!("harness: {m}"));
                Vec::new()
            }
            Received::Log(_) | Received::Owner(_) => Vec::new(),
        }
    }
    fn transcript(&self) -> &str {
        &self.transcript
    }
    fn finish(&mut self) {
        self.flush_all()
    }
    fn unfinished(&self) -> Option<String> {
        self.untyped().first().map(|i| {
            format!(
                "the consoles never showed {:?}, so {:?} was not typed",
                i.after, i.text
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Loop {
        rx: io::Cursor<Vec<u8>>,
        tx: Vec<u8>,
    }
    impl Read for Loop {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            match self.rx.read(b)? {
                0 => Err(ErrorKind::WouldBlock.into()),
                n => Ok(n),
            }
        }
    }
    impl Write for Loop {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.tx.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frame(body: &str) -> String {
        mgmt::frame(format_args!("{body}"))
    }

    #[test]
    fn line_splits_log_and_frames() {
        let mut text = String::from("L0 INFO  hi\n");
        text += &frame("pong");
        text += &frame("pong").replace("pong", "pang");
        text += "partial";
        let mut l = MgmtLine::new(
            Loop {
                rx: io::Cursor::new(text.into_bytes()),
                tx: Vec::new(),
            },
            None,
        );
        let got = l.poll();
        assert_eq!(got[0], Received::Log("L0 INFO  hi".into()));
        assert_eq!(got[1], Received::Event(Event::Pong));
        assert!(matches!(got[2], Received::Bad(_)));
        assert_eq!(got.len(), 3, "the partial line waits");
        l.send("list").unwrap();
        assert_eq!(String::from_utf8(l.io.tx.clone()).unwrap(), frame("list"));
    }

    #[test]
    fn follower_attaches_transcribes_and_types() {
        let mut f = Follower::new(
            &[Input {
                after: "login:",
                target: "web",
                text: "root\r",
            }],
            true,
        );
        let vm = |id, tag: Option<&str>| Event::Vm {
            id,
            tag: tag.map(Into::into),
            frozen: false,
            bytes_in: 0,
            bytes_out: 0,
        };
        assert_eq!(f.event(&vm(3, None)), vec!["attach 3".to_string()]);
        assert_eq!(
            f.event(&vm(3, Some("web"))),
            Vec::<String>::new(),
            "followed already; the trigger is not there yet"
        );
        assert!(f
            .event(&Event::Out {
                id: 3,
                port: 0x3f8,
                bytes: b"hello\r\nweb log".to_vec()
            })
            .is_empty());
        let cmds = f.event(&Event::Out {
            id: 3,
            port: 0x3f8,
            bytes: b"in:".to_vec(),
        });
        assert_eq!(
            cmds,
            vec![
                "attach web".to_string(),
                format!("in {}", mgmt::hex(b"root\r"))
            ]
        );
        f.event(&Event::Gone { id: 3 });
        assert!(f.untyped().is_empty());
        assert!(f.transcript.contains("vm3| hello\n"));
        assert!(f.transcript.contains("vm3| web login:\nvm 3 gone\n"));
    }

    #[test]
    fn inputs_per_vm_are_independent_and_in_order() {
        let inputs = [
            Input {
                after: "tag=a",
                target: "a",
                text: "",
            },
            Input {
                after: "a# ",
                target: "a",
                text: "one\r",
            },
            Input {
                after: "a# ",
                target: "a",
                text: "two\r",
            },
            Input {
                after: "b# ",
                target: "b",
                text: "x\r",
            },
        ];
        let mut f = Follower::new(&inputs, false);
        let vm = |id, tag: Option<&str>| Event::Vm {
            id,
            tag: tag.map(Into::into),
            frozen: false,
            bytes_in: 0,
            bytes_out: 0,
        };
        let out = |id, b: &[u8]| Event::Out {
            id,
            port: 0x3f8,
            bytes: b.to_vec(),
        };
        assert!(f.event(&vm(1, None)).is_empty(), "not following every VM");
        assert!(f.event(&vm(2, Some("b"))).is_empty());
        assert_eq!(
            f.event(&out(2, b"b# ")),
            vec!["attach b".to_string(), format!("in {}", mgmt::hex(b"x\r"))]
        );
        assert_eq!(
            f.event(&vm(1, Some("a"))),
            vec!["attach a".to_string()],
            "attach only"
        );
        assert_eq!(f.event(&out(1, b"a# ")).len(), 2);
        assert!(
            f.event(&out(1, b"one\r\n")).is_empty(),
            "the same prompt again is needed"
        );
        assert_eq!(f.event(&out(1, b"a# ")).len(), 2);
        assert!(f.untyped().is_empty());
    }
}
