//! Owners through the cloud VM's relay in the scenarios: the cloud VM
//! has a NIC (Bochs's e1000 with slirp), `l0-relay` listens in it, and
//! the owner's client (crate::owner) connects from the build host through
//! the forwarded port, as an owner would over the internet. L0's line is
//! followed by the harness as in every scenario, beside it.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use owner_session::message::Refusal;
use owner_session::noise;
use owner_session::server::EndReason;
use ultracall_abi::{KeyAccess, OwnerKey, VmTag};

use crate::console::{Follower, LineUser, MgmtLine, Received};
use crate::owner::test_keys::*;
use crate::owner::{Detection, Expect, OwnerClient, Step};

/// The relay's port in the cloud VM (the slirp rule forwards to it).
pub const RELAY_PORT: u16 = 7000;

/// L0's log line when the relay first calls: it is listening by then.
pub const RELAY_UP: &str = "owner relay: the cloud VM's l0-relay carries owner sessions";
/// L0's log line when alpha has registered its owner's key (the client
/// begins then: a Linux user VM under Bochs takes a while to boot).
const KEY_SET: &str = " set owner key ";

/// L0's log line on host B when alpha's devices (and keys) are back.
const RESTORED: &str = "devices of alpha restored";

/// The scenarios whose cloud VM has a NIC, and their owner's story.
pub fn story(name: &str) -> Option<Vec<Step>> {
    match name {
        "owner-relay" => Some(owner_relay()),
        "relay-tamper" => Some(relay_tamper()),
        "migrate-source" => Some(migrate_source()),
        "owner-migrate" => Some(owner_migrate()),
        _ => None,
    }
}

/// What L0 logs when the owner's client may begin: alpha has its
/// owner's key (registered by alpha, or brought by a restore).
fn ready_line(name: &str) -> &'static str {
    match name {
        "owner-migrate" => RESTORED,
        _ => KEY_SET,
    }
}

/// The line host A's owner marks: where it sits in alpha's history is
/// where host B must still have it.
const HOST_A_LINE: &str = "owner-A-42-ok";

/// `migrate-source` (host A): the owner types through A's relay and
/// notes the offset of the answer; then the operator's story goes on.
fn migrate_source() -> Vec<Step> {
    vec![
        check_pin(),
        open(RW, None),
        attach(Expect::Ok, true),
        Step::Seek(0),
        Step::WaitFor("alpha# ".into()),
        typed("echo owner-A-$((6*7))-ok\r"),
        Step::Mark(HOST_A_LINE.into()),
        Step::Close,
    ]
}

/// Where host A's owner saw [`HOST_A_LINE`], from its transcript
/// (`owner: mark "…" at offset N`).
pub fn host_a_offset(transcript: &str) -> Option<u64> {
    let prefix = format!("owner: mark {HOST_A_LINE:?} at offset ");
    transcript
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// `owner-migrate` (host B, alpha resumed from migrate-source's disk):
/// the owner reconnects through B's relay with the same key (it came in
/// the blob), finds host A's line at its offset, the same shell answers,
/// and the output from that line on is continuous: A's bytes, the line
/// written while nobody followed, B's answer, each once, no gap.
fn owner_migrate() -> Vec<Step> {
    let a = crate::scenario::scenario_dir("migrate-source").join("console.log");
    let Some(at) = std::fs::read_to_string(&a)
        .ok()
        .and_then(|t| host_a_offset(&t))
    else {
        // Not a step that can pass: the run says why.
        return vec![Step::WaitLog(format!(
            "(host A's offset of {HOST_A_LINE}: not in {})",
            a.display()
        ))];
    };
    vec![
        check_pin(),
        open(RW, None),
        attach(Expect::Ok, true),
        Step::ExpectAt {
            at,
            text: HOST_A_LINE.into(),
        },
        typed("[ \"$p\" = \"$$\" ] && echo owner-same-shell-$((6*7))\r"),
        Step::WaitFor("owner-same-shell-42\r\n".into()),
        Step::Continuous {
            from: at,
            texts: vec![
                HOST_A_LINE.into(),
                "A-late-42".into(),
                "owner-same-shell-42".into(),
            ],
        },
        typed("exit\r"),
        Step::Close,
    ]
}

fn alpha() -> VmTag {
    VmTag::new(b"alpha").unwrap()
}

fn attach(expect: Expect, patient: bool) -> Step {
    Step::Attach {
        tag: alpha(),
        port: 0x3f8,
        expect,
        patient,
    }
}

fn pk(k: &[u8; 32]) -> [u8; 32] {
    noise::public_key(k)
}

/// Opens a session naming alpha in the handshake.
fn open(key: [u8; 32], refused: Option<EndReason>) -> Step {
    Step::Open {
        key,
        pin: pk(&L0_IDENTITY),
        tag: Some(alpha()),
        refused,
    }
}

fn check_pin() -> Step {
    Step::CheckPin {
        pin: pk(&L0_IDENTITY),
        matches: true,
    }
}

fn typed(text: &str) -> Step {
    Step::Type {
        bytes: text.as_bytes().to_vec(),
        expect: Expect::Ok,
    }
}

/// The owner's first line: the run's console marker as a no-op command,
/// 16 bytes. L1's spy waits for 40 typed bytes (this line, the echo
/// after it, the SysRq key sent once the echo came back), then looks for
/// the marker in everything the provider can see.
fn marker_line() -> String {
    format!(": {}\r", crate::linux::console_marker())
}

/// `owner-relay`: what owner-console does on the line, through the relay;
/// and the BREAK: with a SysRq key behind it, alpha's kernel runs its
/// SysRq handler (which an ro key may not).
fn owner_relay() -> Vec<Step> {
    let mut steps = crate::owner::wrong_pin_refused().to_vec();
    steps.extend([
        check_pin(),
        open(RW, None),
        attach(Expect::Ok, true),
        Step::Seek(0),
        Step::WaitFor("alpha# ".into()),
        typed(&marker_line()),
        typed("echo relay-$((6*7))-ok\r"),
        // The whole line, so the transcript holds it.
        Step::WaitFor("relay-42-ok\r\n".into()),
        // BREAK, then `h` in the same message (Linux's SysRq window is
        // 5 s of the VM's time): the kernel prints its SysRq help on the
        // console, and its log holds it.
        Step::Break {
            then: b"h".to_vec(),
            expect: Expect::Ok,
        },
        Step::WaitFor("sysrq: HELP".into()),
        typed("dmesg | grep -q 'sysrq: HELP' && echo sysrq-$((6*7))-in-dmesg\r"),
        Step::WaitFor("sysrq-42-in-dmesg\r\n".into()),
        // For `cargo xtask bench`, in alpha's time (its TSC): from printing
        // a prompt to reading the key its owner types on seeing it — the
        // output's way out through the relay and a keystroke's way in.
        typed("s=$(probe tsc); echo key-$((6*7))-please; read -r k; e=$(probe tsc); echo BENCH owner-keystroke-round-trip-ticks $((e - s)); echo rtt-$((6*7))-done\r"),
        Step::WaitFor("key-42-please\r\n".into()),
        typed("k\r"),
        Step::WaitFor("rtt-42-done".into()),
        Step::AddKey {
            key: OwnerKey(pk(&RO)),
            access: KeyAccess::ReadOnly,
        },
        Step::Close,
        // The ro owner follows the same port and cannot type.
        open(RO, None),
        attach(Expect::Ok, false),
        Step::Backlog {
            from: 0,
            holds: Some("relay-42-ok".into()),
        },
        Step::Type {
            bytes: b"echo ro-$((6*7))-typed\r".to_vec(),
            expect: Expect::Refused(Refusal::ReadOnly),
        },
        Step::Break {
            then: b"h".to_vec(),
            expect: Expect::Refused(Refusal::ReadOnly),
        },
        Step::Close,
        // A key no VM registered.
        open(STRANGER, Some(EndReason::UnknownKey)),
        // More than a mebibyte of output, read on by offset as alpha
        // prints it and read back at known offsets; then the owner ends
        // alpha's shell.
        open(RW, None),
        attach(Expect::Ok, false),
        typed(&pattern_command()),
        Step::Pattern {
            lines: PATTERN_LINES,
            end: "pattern-42-end".into(),
        },
        typed("exit\r"),
        Step::Close,
        // The connection closes: the relay reports what it cost L0.
        Step::Reconnect,
        // An impostor: L1 starts another user VM that takes alpha's tag
        // but never registered the owner's key; the owner's key does not
        // open it, and L0 says that VM does not know it.
        Step::WaitLog("registered tag alpha".into()),
        check_pin(),
        open(RW, Some(EndReason::TagWithoutKey)),
    ]);
    steps
}

/// Lines of the pattern alpha prints: 16 500 x 64 bytes = 1 056 000,
/// more than a mebibyte, within L0's history with alpha's boot log.
const PATTERN_LINES: u64 = 16_500;

/// What the owner types into alpha's shell: the lines of
/// [`crate::owner::pattern_line`] (the filler is the same on every line),
/// then a marker.
fn pattern_command() -> String {
    let line = crate::owner::pattern_line(0);
    let filler = String::from_utf8_lossy(&line[9..line.len() - 2]).into_owned();
    format!(
        "awk 'BEGIN{{for(i=0;i<{PATTERN_LINES};i++)printf \"P%07d-{filler}\\n\",i}}'; echo pattern-$((6*7))-end\r"
    )
}

/// `relay-tamper`: the relay (`--tamper all`) spoils the first typed
/// message of each of its first five connections, one way each; the
/// client notices every time and connects again; the sixth is honest.
fn relay_tamper() -> Vec<Step> {
    let mut steps = Vec::new();
    for (mode, detect) in [
        ("flip", Detection::L0Ended),
        ("replay", Detection::L0Ended),
        ("reorder", Detection::ForgedAnswer),
        ("drop", Detection::NoAnswer),
        ("inject", Detection::L0Ended),
    ] {
        steps.extend([
            check_pin(),
            open(RW, None),
            attach(Expect::Ok, true),
            // A read first, so the relay has an answer to misplace.
            Step::Seek(0),
            Step::WaitFor("alpha# ".into()),
            Step::TypeTampered {
                bytes: format!("echo tamper-$((1+1))-{mode}\r").into_bytes(),
                detect,
            },
            Step::Reconnect,
        ]);
    }
    steps.extend([
        check_pin(),
        open(RW, None),
        attach(Expect::Ok, false),
        typed("echo relay-$((6*7))-ok\r"),
        // The whole line, so the transcript holds it.
        Step::WaitFor("relay-42-ok\r\n".into()),
        typed("exit\r"),
        Step::Close,
    ]);
    steps
}

/// The harness's side of a networked run: the line's follower, and the
/// owner's client on a TCP connection to the forwarded port, opened once
/// L0 says the relay is up and alpha has its owner's key (slirp accepts
/// on the host side at once, so a connection alone proves nothing).
pub struct RelayUser {
    line: Follower,
    client: OwnerClient,
    port: u16,
    tcp: Option<MgmtLine<TcpStream>>,
    relay_up: bool,
    /// The log line after which the client may begin.
    ready: &'static str,
    key_set: bool,
    transcript: String,
    connect_failed_at: Option<Instant>,
}

impl RelayUser {
    pub fn new(line: Follower, scenario: &str, port: u16) -> Self {
        RelayUser {
            line,
            client: OwnerClient::new(story(scenario).unwrap_or_default(), false).patient(),
            port,
            tcp: None,
            relay_up: false,
            ready: ready_line(scenario),
            key_set: false,
            transcript: String::new(),
            connect_failed_at: None,
        }
    }

    fn connect(&mut self) {
        if self
            .connect_failed_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        match TcpStream::connect(("127.0.0.1", self.port)) {
            Ok(s) if s.set_nonblocking(true).is_ok() => {
                let _ = s.set_nodelay(true);
                self.tcp = Some(MgmtLine::new(s, None));
            }
            _ => self.connect_failed_at = Some(Instant::now()),
        }
    }

    fn update_transcript(&mut self) {
        self.transcript = format!("{}{}", self.line.transcript(), self.client.transcript());
    }
}

impl LineUser for RelayUser {
    fn received(&mut self, r: Received) -> Vec<String> {
        if let Received::Log(l) = &r {
            self.relay_up |= l.contains(RELAY_UP);
            self.key_set |= l.contains(self.ready);
            // The client waits for some of L0's log lines.
            self.client.received(Received::Log(l.clone()));
        }
        self.line.received(r)
    }

    fn tick(&mut self) -> Vec<String> {
        if self.client.take_reconnect() {
            self.tcp = None;
        }
        if self.relay_up && self.key_set && self.tcp.is_none() {
            self.connect();
        }
        if let Some(tcp) = &mut self.tcp {
            for r in tcp.poll() {
                if let Received::Owner(_) | Received::Bad(_) = r {
                    self.client.received(r);
                }
            }
            let out = self.client.tick();
            for body in out {
                if tcp.send(&body).is_err() {
                    break;
                }
            }
            if tcp.closed() {
                self.tcp = None;
            }
        }
        self.update_transcript();
        self.line.tick()
    }

    fn transcript(&self) -> &str {
        &self.transcript
    }

    fn finish(&mut self) {
        self.line.finish();
        self.client.finish();
        self.update_transcript();
    }

    fn unfinished(&self) -> Option<String> {
        self.client.unfinished().or_else(|| self.line.unfinished())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_more_than_a_mebibyte_of_lines_the_client_knows() {
        use crate::owner::{pattern_line, PATTERN_LINE};
        assert!(PATTERN_LINES * PATTERN_LINE > 1 << 20);
        assert!(
            PATTERN_LINES * PATTERN_LINE + (48 << 10)
                <= shadow_devices::uart16550::history::HISTORY_CAPACITY as u64
        );
        let l = pattern_line(16_499);
        assert_eq!(l.len() as u64, PATTERN_LINE);
        assert!(l.starts_with(b"P0016499-jklm") && l.ends_with(b"ghij\r\n"));
        let cmd = pattern_command();
        assert!(
            cmd.len() <= owner_session::message::MAX_INPUT,
            "typed in one message"
        );
        assert!(cmd.contains(
            "printf \"P%07d-jklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghij\\n\",i"
        ));
    }

    #[test]
    fn host_b_finds_the_offset_host_a_noted() {
        let t = "owner| x\nowner: mark \"owner-A-42-ok\" at offset 31337\nowner: session closed\n";
        assert_eq!(host_a_offset(t), Some(31337));
        assert_eq!(host_a_offset("owner: session closed\n"), None);
    }

    #[test]
    fn the_readiness_line_is_the_one_l0_logs() {
        let src = std::fs::read_to_string(crate::build::root().join("hypervisor/src/owner/mod.rs"))
            .unwrap();
        assert!(src.contains(RELAY_UP), "L0 no longer logs {RELAY_UP:?}");
        let ultracalls =
            std::fs::read_to_string(crate::build::root().join("hypervisor/src/vcpu/ultracall.rs"))
                .unwrap();
        assert!(ultracalls.contains("user VM {vm} set owner key {key}"));
        let console =
            std::fs::read_to_string(crate::build::root().join("hypervisor/src/console/mod.rs"))
                .unwrap();
        assert!(console.contains("\"devices of {tag} restored"));
    }

    #[test]
    fn l1_waits_for_the_typed_bytes_up_to_the_sysrq_key() {
        let init = std::fs::read_to_string(crate::build::root().join("tests/linux/init")).unwrap();
        assert!(init.contains("\"$(vm_col alpha 8)\" -ge 40"));
        let story = owner_relay();
        let typed: Vec<usize> = story
            .iter()
            .filter_map(|s| match s {
                Step::Type { bytes, .. } => Some(bytes.len()),
                Step::Break { then, .. } if !then.is_empty() => Some(then.len()),
                _ => None,
            })
            .take(3)
            .collect();
        assert_eq!(typed, [16, 23, 1]);
        assert_eq!(marker_line().len(), 16);
    }

    #[test]
    fn networked_scenarios_have_a_story_and_the_tamper_one_detects_five_ways() {
        for s in crate::scenario::all() {
            let networked = story(s.name).is_some();
            assert_eq!(
                networked,
                matches!(
                    s.name,
                    "owner-relay" | "relay-tamper" | "migrate-source" | "owner-migrate"
                ),
                "{}",
                s.name
            );
        }
        let tampered = relay_tamper()
            .iter()
            .filter(|s| matches!(s, Step::TypeTampered { .. }))
            .count();
        let reconnects = relay_tamper()
            .iter()
            .filter(|s| matches!(s, Step::Reconnect))
            .count();
        assert_eq!((tampered, reconnects), (5, 5));
    }
}
