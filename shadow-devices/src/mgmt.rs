//! The management-line protocol between L0 and the operator's console tool
//! (docs/console-protocol.md). One definition for both ends: L0 encodes
//! frames and parses commands, `cargo xtask console` does the reverse.
//!
//! The line also carries L0's human-readable log (`L0 INFO ...`), so the
//! protocol is line-based: a frame is one ASCII line `@<body> #<xx>` where
//! `xx` is the two-digit hex sum (mod 256) of the bytes of `@<body>`. Lines
//! that do not start with `@` are log text. Payload bytes travel as hex.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};

/// Longest line either side accepts (a 512-byte payload in hex plus fields).
pub const MAX_LINE: usize = 1200;
/// Console bytes per `@out` frame.
pub const OUT_CHUNK: usize = 256;

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

/// `@body #xx\n`.
pub fn frame(body: fmt::Arguments) -> String {
    let mut s = String::from("@");
    let _ = s.write_fmt(body);
    let c = sum(s.as_bytes());
    let _ = writeln!(s, " #{c:02x}");
    s
}

/// Why a line is not a usable frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Log text, not a frame.
    NotAFrame,
    /// The checksum is missing or wrong: the line was damaged.
    BadChecksum,
    /// Longer than [`MAX_LINE`].
    TooLong,
}

/// The body of a frame line (without `@`, checksum or newline).
pub fn parse_frame(line: &str) -> Result<&str, FrameError> {
    let line = line.trim_end_matches(['\r', '\n']);
    if !line.starts_with('@') {
        return Err(FrameError::NotAFrame);
    }
    if line.len() > MAX_LINE {
        return Err(FrameError::TooLong);
    }
    let (head, tail) = line.rsplit_once(" #").ok_or(FrameError::BadChecksum)?;
    let c = u8::from_str_radix(tail, 16).map_err(|_| FrameError::BadChecksum)?;
    if tail.len() != 2 || sum(head.as_bytes()) != c {
        return Err(FrameError::BadChecksum);
    }
    Ok(&head[1..])
}

/// Lower-case hex of `bytes` (by table: the formatter costs some
/// hundred instructions a byte, and console output goes this way).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Bytes of a hex string, None if malformed.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Which VM an operator means: L0's number or the VM's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// L0's number of the VM.
    Id(u64),
    /// The tag the VM registered.
    Tag(&'a str),
}

/// Operator → L0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `@list`: every VM.
    List,
    /// `@attach <id|tag> [port]`: follow one COM port of a VM (default
    /// COM1) besides those already followed; typed input goes to it.
    Attach {
        /// The VM.
        target: Target<'a>,
        /// Its COM port base.
        port: Option<u16>,
    },
    /// `@detach [<id|tag> [port]]`: stop following one port, every port
    /// of one VM, or (no arguments) everything.
    Detach {
        /// The VM, or every followed VM.
        target: Option<Target<'a>>,
        /// One port of it, or all of them.
        port: Option<u16>,
    },
    /// `@in <hex>`: bytes typed into the port attached last.
    Input(Vec<u8>),
    /// `@ping`: L0 answers `@pong`.
    Ping,
    /// `@stats`: L0 answers with its exit statistics (`stats` events), to
    /// see what a machine that seems stuck is doing.
    Stats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// A command L0 cannot carry out as written.
pub enum CommandError {
    /// Not one of the verbs.
    Unknown,
    /// A verb with arguments of the wrong number or form.
    BadArgument,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => write!(f, "unknown command (list, attach, detach, in, ping, stats)"),
            Self::BadArgument => write!(f, "bad argument"),
        }
    }
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn target(s: &str) -> Target<'_> {
    match s.parse::<u64>() {
        Ok(id) => Target::Id(id),
        Err(_) => Target::Tag(s),
    }
}

fn port(s: Option<&&str>) -> Result<Option<u16>, CommandError> {
    match s {
        Some(p) => Ok(Some(
            number(p)
                .filter(|&p| p <= 0xffff)
                .ok_or(CommandError::BadArgument)? as u16,
        )),
        None => Ok(None),
    }
}

/// Decodes a frame body the operator sent.
pub fn parse_command(body: &str) -> Result<Command<'_>, CommandError> {
    let mut words = body.split_ascii_whitespace();
    let verb = words.next().ok_or(CommandError::Unknown)?;
    let args: Vec<&str> = words.collect();
    match (verb, args.as_slice()) {
        ("list", []) => Ok(Command::List),
        ("detach", []) => Ok(Command::Detach {
            target: None,
            port: None,
        }),
        ("detach", [t, rest @ ..]) if rest.len() <= 1 => Ok(Command::Detach {
            target: Some(target(t)),
            port: port(rest.first())?,
        }),
        ("ping", []) => Ok(Command::Ping),
        ("stats", []) => Ok(Command::Stats),
        ("in", [h]) => unhex(h)
            .map(Command::Input)
            .ok_or(CommandError::BadArgument),
        ("attach", [t, rest @ ..]) if rest.len() <= 1 => Ok(Command::Attach {
            target: target(t),
            port: port(rest.first())?,
        }),
        ("list" | "detach" | "ping" | "stats" | "in" | "attach", _) => {
            Err(CommandError::BadArgument)
        }
        _ => Err(CommandError::Unknown),
    }
}

/// L0 → operator, as the console tool decodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // Each variant is the frame of the same name (docs/console-protocol.md).
pub enum Event {
    Hello {
        version: String,
    },
    Vm {
        id: u64,
        tag: Option<String>,
        frozen: bool,
        bytes_in: u64,
        bytes_out: u64,
    },
    EndList {
        count: u64,
    },
    Attached {
        id: u64,
        port: u16,
    },
    Detached {
        id: u64,
        port: u16,
        reason: String,
    },
    Out {
        id: u64,
        port: u16,
        bytes: Vec<u8>,
    },
    Dropped {
        id: u64,
        port: u16,
        count: u64,
    },
    Gone {
        id: u64,
    },
    /// A restore for `tag` (of VM `id`, if one holds the tag) succeeded
    /// (`ok`) or was refused; `detail` is the epoch or the reason.
    Restore {
        id: Option<u64>,
        tag: String,
        ok: bool,
        detail: String,
    },
    /// One line of L0's answer to `stats`.
    Stats(String),
    Pong,
    Error(String),
}

fn kv<'a>(args: &[&'a str], key: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
}

/// Decodes a frame body L0 sent.
pub fn parse_event(body: &str) -> Option<Event> {
    let mut words = body.split_ascii_whitespace();
    let verb = words.next()?;
    let args: Vec<&str> = words.collect();
    let id = || args.first().and_then(|s| s.parse().ok());
    let port = |i: usize| {
        args.get(i)
            .and_then(|s| u16::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    };
    Some(match verb {
        "hello" => Event::Hello {
            version: args.join(" "),
        },
        "vm" => Event::Vm {
            id: id()?,
            tag: kv(&args, "tag").filter(|t| *t != "-").map(String::from),
            frozen: kv(&args, "frozen")? == "1",
            bytes_in: kv(&args, "in")?.parse().ok()?,
            bytes_out: kv(&args, "out")?.parse().ok()?,
        },
        "end-list" => Event::EndList { count: id()? },
        "attached" => Event::Attached {
            id: id()?,
            port: port(1)?,
        },
        "detached" => Event::Detached {
            id: id()?,
            port: port(1)?,
            reason: args[2..].join(" "),
        },
        "out" => Event::Out {
            id: id()?,
            port: port(1)?,
            bytes: unhex(args.get(2)?)?,
        },
        "dropped" => Event::Dropped {
            id: id()?,
            port: port(1)?,
            count: args.get(2)?.parse().ok()?,
        },
        "gone" => Event::Gone { id: id()? },
        "restore" => Event::Restore {
            id: id(),
            tag: String::from(*args.get(1)?),
            ok: match *args.get(2)? {
                "ok" => true,
                "refused" => false,
                _ => return None,
            },
            detail: args[3..].join(" "),
        },
        "stats" => Event::Stats(args.join(" ")),
        "pong" => Event::Pong,
        "err" => Event::Error(args.join(" ")),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lower_case_digits_a_byte_and_round_trips() {
        assert_eq!(hex(&[0x0f, 0xa0, 0x00, 0xff]), "0fa000ff");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&hex(&all)), Some(all));
    }

    #[test]
    fn frames_round_trip_and_detect_corruption() {
        let f = frame(format_args!("out 3 3f8 {}", hex(b"hi\n")));
        assert!(f.ends_with('\n') && f.starts_with("@out 3 3f8 68690a #"));
        assert_eq!(parse_frame(&f), Ok("out 3 3f8 68690a"));
        let bad = f.replacen("3f8", "3f9", 1);
        assert_eq!(parse_frame(&bad), Err(FrameError::BadChecksum));
        assert_eq!(parse_frame("L0 INFO  hello"), Err(FrameError::NotAFrame));
        assert_eq!(parse_frame("@list"), Err(FrameError::BadChecksum));
        assert_eq!(
            parse_frame(&"@x".repeat(MAX_LINE)),
            Err(FrameError::TooLong)
        );
    }

    #[test]
    fn commands() {
        assert_eq!(parse_command("list"), Ok(Command::List));
        assert_eq!(parse_command("stats"), Ok(Command::Stats));
        assert_eq!(parse_command("stats 1"), Err(CommandError::BadArgument));
        assert_eq!(
            parse_command("attach 3"),
            Ok(Command::Attach {
                target: Target::Id(3),
                port: None
            })
        );
        assert_eq!(
            parse_command("attach web-1 0x2f8"),
            Ok(Command::Attach {
                target: Target::Tag("web-1"),
                port: Some(0x2f8)
            })
        );
        assert_eq!(
            parse_command("detach"),
            Ok(Command::Detach {
                target: None,
                port: None
            })
        );
        assert_eq!(
            parse_command("detach web-1"),
            Ok(Command::Detach {
                target: Some(Target::Tag("web-1")),
                port: None
            })
        );
        assert_eq!(
            parse_command("detach 2 760"),
            Ok(Command::Detach {
                target: Some(Target::Id(2)),
                port: Some(760)
            })
        );
        assert_eq!(
            parse_command("detach 2 3f8"),
            Err(CommandError::BadArgument)
        );
        assert_eq!(parse_command("in 6869"), Ok(Command::Input(b"hi".to_vec())));
        assert_eq!(parse_command("in 686"), Err(CommandError::BadArgument));
        assert_eq!(parse_command("attach"), Err(CommandError::BadArgument));
        assert_eq!(
            parse_command("attach a 0x10000"),
            Err(CommandError::BadArgument)
        );
        assert_eq!(parse_command("reboot"), Err(CommandError::Unknown));
    }

    #[test]
    fn events() {
        let e = parse_event("vm 2 tag=alpha frozen=0 ports=3f8,2f8 in=4 out=100").unwrap();
        assert_eq!(
            e,
            Event::Vm {
                id: 2,
                tag: Some("alpha".into()),
                frozen: false,
                bytes_in: 4,
                bytes_out: 100
            }
        );
        assert_eq!(
            parse_event("out 2 3f8 4142"),
            Some(Event::Out {
                id: 2,
                port: 0x3f8,
                bytes: b"AB".to_vec()
            })
        );
        assert_eq!(
            parse_event("attached 2 2f8"),
            Some(Event::Attached { id: 2, port: 0x2f8 })
        );
        assert_eq!(
            parse_event("restore 4 alpha ok epoch=1"),
            Some(Event::Restore {
                id: Some(4),
                tag: "alpha".into(),
                ok: true,
                detail: "epoch=1".into()
            })
        );
        assert_eq!(
            parse_event("restore - beta refused the blob was sealed for another VM"),
            Some(Event::Restore {
                id: None,
                tag: "beta".into(),
                ok: false,
                detail: "the blob was sealed for another VM".into()
            })
        );
        assert_eq!(parse_event("restore 4 alpha maybe"), None);
        assert_eq!(
            parse_event("detached 2 2f8 the VM ended"),
            Some(Event::Detached {
                id: 2,
                port: 0x2f8,
                reason: "the VM ended".into()
            })
        );
        assert_eq!(parse_event("vm x"), None);
        assert_eq!(parse_event("gone 9"), Some(Event::Gone { id: 9 }));
    }

    #[test]
    fn garbage_is_refused_with_the_right_error() {
        // Lines: log text is not a frame; a damaged or missing checksum is
        // BadChecksum; an over-long line is TooLong.
        let long = alloc::format!("@{} #00", "x".repeat(MAX_LINE));
        for (line, want) in [
            ("", FrameError::NotAFrame),
            ("L0 INFO  hello", FrameError::NotAFrame),
            (" @list #00", FrameError::NotAFrame),
            ("@", FrameError::BadChecksum),
            ("@ #", FrameError::BadChecksum),
            ("@ #zz", FrameError::BadChecksum),
            ("@list", FrameError::BadChecksum),
            ("@list #", FrameError::BadChecksum),
            ("@list #0", FrameError::BadChecksum),
            ("@list #000", FrameError::BadChecksum),
            (long.as_str(), FrameError::TooLong),
        ] {
            assert_eq!(parse_frame(line), Err(want), "{line:?}");
        }
        let damaged = frame(format_args!("list")).replace("list", "lisT");
        assert_eq!(parse_frame(&damaged), Err(FrameError::BadChecksum));
        // Bodies as commands: an unknown verb, or a known one with the
        // wrong arguments.
        for (body, want) in [
            ("", CommandError::Unknown),
            ("   ", CommandError::Unknown),
            ("reboot", CommandError::Unknown),
            ("LIST", CommandError::Unknown),
            ("out 1 3f8 41", CommandError::Unknown),
            ("list extra", CommandError::BadArgument),
            ("ping 1", CommandError::BadArgument),
            ("stats now", CommandError::BadArgument),
            ("attach", CommandError::BadArgument),
            ("attach 1 2 3", CommandError::BadArgument),
            ("attach 1 zz", CommandError::BadArgument),
            ("detach 1 2 3", CommandError::BadArgument),
            ("in", CommandError::BadArgument),
            ("in zz", CommandError::BadArgument),
            ("in 4", CommandError::BadArgument),
            ("in 41 42", CommandError::BadArgument),
        ] {
            // Framed and checksummed, the body reaches the command parser.
            let f = frame(format_args!("{body}"));
            assert_eq!(parse_frame(&f), Ok(body), "{body:?}");
            assert_eq!(parse_command(body).err(), Some(want), "{body:?}");
        }
        // Bodies as events: a verb the console does not know, or a known
        // one with missing or malformed fields, is no event.
        for body in [
            "",
            "nonsense 1 2",
            "out",
            "out 1",
            "out 1 zz",
            "out x 3f8 41",
            "out 1 3f8 4",
            "attached 1",
            "attached one 3f8",
            "detached",
            "detached 1",
            "dropped 1 3f8",
            "dropped 1 3f8 many",
            "vm 1 tag=a",
            "vm 1 tag=a frozen=0 in=x out=0",
            "end-list",
            "gone",
            "gone x",
        ] {
            assert_eq!(parse_event(body), None, "{body:?}");
        }
    }
}
