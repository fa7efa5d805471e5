//! The `ultracall` command line (feature `std`): argument parsing, the
//! exit-code contract, and output formats. The binary is a thin `main`.
//!
//! Everything a script relies on is here and in docs/ultracall-abi.md:
//! exit codes ([`exit_code`]), the one-line messages, and `list`'s
//! tab-separated output.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::blob::{BlobHeader, DEVICE_CLASS_DEVICE_SET, DEVICE_CLASS_UART16550A};
use crate::call::{CallerLevel, MAX_BUFFER_LEN};
use crate::client::Client;
use crate::error::Error;
use crate::list::ListView;
use crate::owner_key::{KeyAccess, OwnerKey};
use crate::status::Status;
use crate::tag::VmTag;
use crate::version::ABI_VERSION;

/// Success.
pub const EXIT_OK: u8 = 0;
/// Bad command line.
pub const EXIT_USAGE: u8 = 1;
/// Not running under L0 (bare metal or another hypervisor): nothing was attempted.
pub const EXIT_NOT_UNDER_L0: u8 = 2;
/// L0 speaks another ABI major.
pub const EXIT_VERSION: u8 = 3;
/// A local failure: file I/O, mmap/mlock, bad blob file size.
pub const EXIT_LOCAL: u8 = 4;
/// L0 refused: operation not permitted from this level (L1/L2).
pub const EXIT_NOT_PERMITTED: u8 = 5;
/// No VM holds the tag.
pub const EXIT_UNKNOWN_TAG: u8 = 6;
/// The tag was refused: invalid, in use by another VM, or this VM has another.
pub const EXIT_TAG_REJECTED: u8 = 7;
/// The devices are frozen (already saved) or absent/mismatched.
pub const EXIT_DEVICE: u8 = 8;
/// The blob is malformed or failed authentication (tampered/corrupted).
pub const EXIT_BLOB_TAMPERED: u8 = 9;
/// The blob was sealed under another key.
pub const EXIT_BLOB_WRONG_KEY: u8 = 10;
/// The blob belongs to another VM tag.
pub const EXIT_BLOB_WRONG_TAG: u8 = 11;
/// The blob's epoch was already used here (replay).
pub const EXIT_BLOB_REPLAYED: u8 = 12;
/// Any other refusal or malfunction of L0 (internal, buffer errors, unknown status).
pub const EXIT_L0_ERROR: u8 = 13;
/// The owner key was refused: this VM already has other owner keys.
pub const EXIT_OWNER_KEYS_SET: u8 = 14;

/// The exit code for an error.
pub fn exit_code(err: &Error) -> u8 {
    match err {
        Error::NoHypervisor | Error::OtherHypervisor { .. } | Error::NotIntel { .. } => {
            EXIT_NOT_UNDER_L0
        }
        Error::VersionMismatch { .. } => EXIT_VERSION,
        Error::Os { .. } => EXIT_LOCAL,
        Error::TagInvalid | Error::OwnerKeyInvalid => EXIT_USAGE,
        Error::Status(s) => match s {
            Status::NotPermitted => EXIT_NOT_PERMITTED,
            Status::UnknownTag => EXIT_UNKNOWN_TAG,
            Status::TagInUse | Status::TagAlreadySet | Status::TagInvalid => EXIT_TAG_REJECTED,
            Status::DeviceFrozen | Status::NoDevice => EXIT_DEVICE,
            Status::BlobMalformed | Status::BlobAuthFailed => EXIT_BLOB_TAMPERED,
            Status::BlobWrongKey => EXIT_BLOB_WRONG_KEY,
            Status::BlobWrongTag => EXIT_BLOB_WRONG_TAG,
            Status::BlobReplayed => EXIT_BLOB_REPLAYED,
            Status::BadVersion => EXIT_VERSION,
            Status::OwnerKeysSet => EXIT_OWNER_KEYS_SET,
            Status::OwnerKeyInvalid => EXIT_USAGE,
            Status::Ok
            | Status::UnknownOp
            | Status::BufferFault
            | Status::BufferNotWritable
            | Status::BufferTooSmall
            | Status::BufferTooLarge
            | Status::StateRejected
            | Status::NoKey
            | Status::InvalidArgument
            | Status::Internal => EXIT_L0_ERROR,
        },
        Error::UnknownStatus(_) | Error::Malformed(_) | Error::BufferTooSmall { .. } => {
            EXIT_L0_ERROR
        }
        Error::Truncated | Error::BadMagic | Error::UnsupportedVersion { .. } => EXIT_BLOB_TAMPERED,
    }
}

/// `--help` text.
pub const HELP: &str = "\
ultracall - talk to the L0 hypervisor from a guest

USAGE:
    ultracall ping                              L0's ABI version and our level
    ultracall tag NAME                          (in a user VM) register this VM as NAME
    ultracall save --tag NAME --out FILE        (in the cloud VM) seal NAME's devices into FILE
    ultracall restore --tag NAME --in FILE      (in the cloud VM) restore NAME's devices from FILE
              [--force]                         (send a blob whose header names another tag: L0 decides)
    ultracall list                              (in the cloud VM) list the VMs L0 knows
    ultracall owner-key add KEY [rw|ro]         (in a user VM) the owner key that may open this
                                                VM's consoles in L0 (default rw)
    ultracall --help | --version

FILE may be '-' for stdout/stdin. NAME: 1-32 bytes of [A-Za-z0-9._-], first a
letter or digit. `save` freezes the VM's devices; a blob restores once.
KEY: base64 of a 32-byte X25519 public key (44 characters). The first key is
final (the same key again is fine); more keys come only through an owner
session opened with an rw key.

list prints one tab-separated line per device (a VM without devices gets one
line with '-' in the device columns), after a header line starting with '#':
    vm_id tag state class port irq operator bytes_in bytes_out

EXIT CODES:
    0   success
    1   usage error (bad arguments or invalid tag)
    2   not running under L0 (no hypervisor, another one, or not an Intel CPU); nothing attempted
    3   ABI version mismatch between this tool and L0
    4   local error (file I/O, mmap/mlock, blob file too large)
    5   not permitted from this level (save/restore/list need the cloud VM, tag a user VM)
    6   unknown tag: no VM holds it
    7   tag rejected: invalid, held by another VM, or this VM already has a tag
    8   devices frozen (already saved) or no matching device
    9   blob malformed or failed authentication (tampered or corrupted)
    10  blob sealed under a different key
    11  blob belongs to another VM tag
    12  blob replayed: its epoch was already used
    13  other L0 error (internal, buffer fault, unknown status)
    14  owner key refused: this VM already has other owner keys
Errors are one line on stderr: 'ultracall: error: ...'.
";

/// Where a blob goes or comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    /// `-`: stdout or stdin.
    Std,
    /// A file.
    Path(PathBuf),
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `--help`.
    Help,
    /// `--version`.
    Version,
    /// `ping`.
    Ping,
    /// `tag NAME`.
    Tag(VmTag),
    /// `save --tag NAME --out FILE`.
    Save {
        /// VM tag.
        tag: VmTag,
        /// Destination.
        out: Stream,
    },
    /// `restore --tag NAME --in FILE [--force]`.
    Restore {
        /// VM tag.
        tag: VmTag,
        /// Source.
        input: Stream,
        /// Send the blob even if its header names another tag.
        force: bool,
    },
    /// `list`.
    List,
    /// `owner-key add KEY [rw|ro]`.
    OwnerKeyAdd(OwnerKey, KeyAccess),
}

fn parse_tag(s: &OsString) -> Result<VmTag, String> {
    let bytes = s.as_encoded_bytes();
    VmTag::new(bytes).map_err(|e| format!("{e}: {:?}", s))
}

fn parse_stream(s: OsString) -> Stream {
    if s == "-" {
        Stream::Std
    } else {
        Stream::Path(PathBuf::from(s))
    }
}

/// Parses the arguments after the program name. The error is the usage
/// message to print.
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, String> {
    let mut args = args.into_iter();
    let Some(cmd) = args.next() else {
        return Err("missing command (try --help)".into());
    };
    let cmd = cmd.to_str().ok_or("command is not UTF-8")?.to_owned();
    let rest: Vec<OsString> = args.collect();
    let no_args = |c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(format!("'{cmd}' takes no arguments"))
        }
    };
    match cmd.as_str() {
        "-h" | "--help" | "help" => no_args(Command::Help),
        "-V" | "--version" => no_args(Command::Version),
        "ping" => no_args(Command::Ping),
        "list" => no_args(Command::List),
        "tag" => match rest.as_slice() {
            [name] => Ok(Command::Tag(parse_tag(name)?)),
            _ => Err("usage: ultracall tag NAME".into()),
        },
        "save" | "restore" => {
            let file_opt = if cmd == "save" { "--out" } else { "--in" };
            let mut tag = None;
            let mut file = None;
            let mut force = false;
            let mut it = rest.into_iter();
            while let Some(arg) = it.next() {
                let s = arg
                    .to_str()
                    .ok_or_else(|| format!("unexpected argument {arg:?}"))?
                    .to_owned();
                if cmd == "restore" && s == "--force" && !force {
                    force = true;
                    continue;
                }
                let (key, inline) = match s.split_once('=') {
                    Some((k, v)) if k.starts_with("--") => (k.to_owned(), Some(OsString::from(v))),
                    _ => (s.clone(), None),
                };
                if key != "--tag" && key != file_opt {
                    return Err(format!("unexpected argument '{s}' for '{cmd}'"));
                }
                let value = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| format!("{key} needs a value"))?,
                };
                let slot_taken = if key == "--tag" {
                    tag.replace(parse_tag(&value)?).is_some()
                } else {
                    file.replace(parse_stream(value)).is_some()
                };
                if slot_taken {
                    return Err(format!("{key} given twice"));
                }
            }
            let usage = format!("usage: ultracall {cmd} --tag NAME {file_opt} FILE");
            let (Some(tag), Some(file)) = (tag, file) else {
                return Err(usage);
            };
            Ok(if cmd == "save" {
                Command::Save { tag, out: file }
            } else {
                Command::Restore {
                    tag,
                    input: file,
                    force,
                }
            })
        }
        "owner-key" => {
            let usage = || "usage: ultracall owner-key add KEY [rw|ro]".to_owned();
            let words: Vec<&str> = rest
                .iter()
                .map(|a| a.to_str())
                .collect::<Option<_>>()
                .ok_or_else(usage)?;
            let (key, access) = match words.as_slice() {
                ["add", key] => (key, KeyAccess::ReadWrite),
                ["add", key, access] => (key, KeyAccess::parse(access).ok_or_else(usage)?),
                _ => return Err(usage()),
            };
            let key = OwnerKey::from_base64(key).map_err(|e| format!("{e}: {key:?}"))?;
            Ok(Command::OwnerKeyAdd(key, access))
        }
        other => Err(format!("unknown command '{other}' (try --help)")),
    }
}

/// A failure of `run`: exit code and one-line message.
struct Failure(u8, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure(exit_code(&e), e.to_string())
    }
}

fn local(what: &str, e: io::Error) -> Failure {
    Failure(EXIT_LOCAL, format!("{what}: {e}"))
}

fn class_name(class: u16) -> String {
    match class {
        DEVICE_CLASS_UART16550A => "uart16550a".into(),
        DEVICE_CLASS_DEVICE_SET => "device-set".into(),
        c => format!("{c:#06x}"),
    }
}

/// Formats a decoded list as documented in [`HELP`].
pub fn format_list(view: &ListView<'_>, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "#vm_id\ttag\tstate\tclass\tport\tirq\toperator\tbytes_in\tbytes_out"
    )?;
    for vm in view.vms() {
        let tag = vm
            .info
            .tag
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into());
        let state = if vm.info.frozen { "frozen" } else { "live" };
        let mut any = false;
        for d in vm.devices() {
            any = true;
            let irq = d
                .isa_irq
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into());
            let op = if d.operator_attached {
                "attached"
            } else {
                "absent"
            };
            writeln!(
                out,
                "{}\t{tag}\t{state}\t{}\t{:#x}\t{irq}\t{op}\t{}\t{}",
                vm.info.vm_id,
                class_name(d.class),
                d.port_base,
                d.bytes_in,
                d.bytes_out
            )?;
        }
        if !any {
            writeln!(out, "{}\t{tag}\t{state}\t-\t-\t-\t-\t-\t-", vm.info.vm_id)?;
        }
    }
    Ok(())
}

fn read_blob(input: &Stream) -> Result<Vec<u8>, Failure> {
    // Read at most one byte more than the limit, to tell "too large" apart.
    let limit = MAX_BUFFER_LEN as u64 + 1;
    let mut blob = Vec::new();
    match input {
        Stream::Std => io::stdin().lock().take(limit).read_to_end(&mut blob),
        Stream::Path(p) => fs::File::open(p).and_then(|f| f.take(limit).read_to_end(&mut blob)),
    }
    .map_err(|e| local("reading the blob", e))?;
    if blob.len() > MAX_BUFFER_LEN {
        return Err(Failure(
            EXIT_LOCAL,
            format!("blob file larger than {MAX_BUFFER_LEN} bytes"),
        ));
    }
    Ok(blob)
}

/// Writes the blob so that FILE appears complete or not at all: a
/// temporary file in the same directory, fsync, rename.
struct BlobSink {
    target: Stream,
    tmp: Option<(PathBuf, fs::File)>,
}

impl BlobSink {
    /// Opened *before* the save so that an unwritable destination is found
    /// before L0 freezes the devices.
    fn open(target: &Stream) -> Result<BlobSink, Failure> {
        let tmp = match target {
            Stream::Std => None,
            Stream::Path(p) => {
                let mut name = p
                    .file_name()
                    .map(|n| n.to_os_string())
                    .unwrap_or_else(|| "blob".into());
                name.push(format!(".ultracall-tmp.{}", std::process::id()));
                let tmp_path = p.with_file_name(name);
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp_path)
                    .map_err(|e| local(&format!("creating {}", tmp_path.display()), e))?;
                Some((tmp_path, f))
            }
        };
        Ok(BlobSink {
            target: target.clone(),
            tmp,
        })
    }

    fn commit(mut self, blob: &[u8]) -> io::Result<()> {
        match (&self.target, self.tmp.take()) {
            (Stream::Path(p), Some((tmp_path, mut f))) => {
                let r = f
                    .write_all(blob)
                    .and_then(|_| f.sync_all())
                    .and_then(|_| fs::rename(&tmp_path, p));
                if r.is_err() {
                    let _ = fs::remove_file(&tmp_path);
                }
                r
            }
            _ => {
                let mut out = io::stdout().lock();
                out.write_all(blob).and_then(|_| out.flush())
            }
        }
    }
}

impl Drop for BlobSink {
    fn drop(&mut self) {
        if let Some((tmp_path, _)) = self.tmp.take() {
            let _ = fs::remove_file(tmp_path);
        }
    }
}

fn run_inner(cmd: Command, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), Failure> {
    let say = |out: &mut dyn Write, msg: String| {
        writeln!(out, "{msg}").map_err(|e| local("writing output", e))
    };
    match cmd {
        Command::Help => return say(out, HELP.trim_end().to_owned()),
        Command::Version => {
            return say(
                out,
                format!(
                    "ultracall {} (ultracall ABI {ABI_VERSION})",
                    env!("CARGO_PKG_VERSION")
                ),
            )
        }
        _ => {}
    }
    // Nothing below may run before detection: it is what keeps `vmcall`
    // from raising SIGILL on bare metal.
    let client = Client::detect()?;
    match cmd {
        Command::Help | Command::Version => Ok(()),
        Command::Ping => {
            let p = client.ping()?;
            let level = match p.level {
                Some(CallerLevel::L1) => "L1 (cloud VM)",
                Some(CallerLevel::L2) => "L2 (user VM)",
                None => "unknown",
            };
            say(
                out,
                format!("L0 ABI {}; caller level {level}", p.l0_version),
            )
        }
        Command::Tag(tag) => {
            let id = client.register_tag(&tag)?;
            say(out, format!("registered tag {tag} for VM {id}"))
        }
        Command::Save { tag, out: target } => {
            let sink = BlobSink::open(&target)?;
            let saved = client.save(&tag)?;
            let len = saved.blob.len();
            sink.commit(&saved.blob).map_err(|e| {
                Failure(
                    EXIT_LOCAL,
                    format!(
                        "L0 sealed {len} bytes (epoch {}) and froze {tag}'s devices, but writing the blob failed: {e}",
                        saved.epoch
                    ),
                )
            })?;
            let msg = format!(
                "saved {tag}: {len} bytes, epoch {} ({} TSC ticks in L0)",
                saved.epoch,
                client.last_call_ticks()
            );
            // Keep stdout clean when it carries the blob.
            if target == Stream::Std {
                say(err, msg)
            } else {
                say(out, msg)
            }
        }
        Command::Restore { tag, input, force } => {
            let blob = read_blob(&input)?;
            // A quick local look at the header gives a precise message for
            // the common mistakes; L0 checks everything again.
            let header = BlobHeader::decode(&blob)
                .map_err(|e| Failure(EXIT_BLOB_TAMPERED, format!("not a sealed blob: {e}")))?;
            if header.vm_tag != tag && !force {
                return Err(Failure(
                    EXIT_BLOB_WRONG_TAG,
                    format!("blob belongs to VM tag {}, not {tag}", header.vm_tag),
                ));
            }
            let epoch = client.restore(&tag, &blob)?;
            say(
                out,
                format!(
                    "restored {tag}: epoch {epoch} ({} TSC ticks in L0)",
                    client.last_call_ticks()
                ),
            )
        }
        Command::OwnerKeyAdd(key, access) => {
            let count = client.owner_key_add(key, access)?;
            say(
                out,
                format!(
                    "owner key {key} ({}) set; the VM holds {count}",
                    access.name()
                ),
            )
        }
        Command::List => {
            let bytes = client.list()?;
            let view = ListView::parse(&bytes)?;
            format_list(&view, out).map_err(|e| local("writing output", e))
        }
    }
}

/// Runs a parsed command; returns the exit code. Messages go to `out`
/// (results) and `err` (one `ultracall: error: ...` line on failure).
pub fn run(cmd: Command, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match run_inner(cmd, out, err) {
        Ok(()) => EXIT_OK,
        Err(Failure(code, msg)) => {
            let _ = writeln!(err, "ultracall: error: {msg}");
            code
        }
    }
}

/// The whole program: parse, run, exit code.
pub fn main_with_args<I: IntoIterator<Item = OsString>>(args: I) -> u8 {
    let mut stdout = io::stdout();
    let mut stderr = io::stderr();
    match parse_args(args) {
        Ok(cmd) => run(cmd, &mut stdout, &mut stderr),
        Err(msg) => {
            let _ = writeln!(stderr, "ultracall: error: {msg}");
            EXIT_USAGE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list::{DeviceInfo, ListEncoder, VmInfo};

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    fn tag(s: &str) -> VmTag {
        VmTag::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn parses_each_command() {
        assert_eq!(parse_args(args(&["ping"])), Ok(Command::Ping));
        assert_eq!(parse_args(args(&["list"])), Ok(Command::List));
        assert_eq!(parse_args(args(&["--help"])), Ok(Command::Help));
        assert_eq!(parse_args(args(&["-V"])), Ok(Command::Version));
        assert_eq!(
            parse_args(args(&["tag", "vm-1"])),
            Ok(Command::Tag(tag("vm-1")))
        );
        assert_eq!(
            parse_args(args(&["save", "--tag", "vm-1", "--out", "/tmp/b"])),
            Ok(Command::Save {
                tag: tag("vm-1"),
                out: Stream::Path("/tmp/b".into())
            })
        );
        assert_eq!(
            parse_args(args(&["restore", "--in=-", "--tag=vm-1"])),
            Ok(Command::Restore {
                tag: tag("vm-1"),
                input: Stream::Std,
                force: false
            })
        );
        assert_eq!(
            parse_args(args(&["restore", "--force", "--in=-", "--tag=vm-1"])),
            Ok(Command::Restore {
                tag: tag("vm-1"),
                input: Stream::Std,
                force: true
            })
        );
        assert!(parse_args(args(&["save", "--force", "--out=-", "--tag=vm-1"])).is_err());
        assert!(parse_args(args(&[
            "restore",
            "--force",
            "--force",
            "--in=-",
            "--tag=vm-1"
        ]))
        .is_err());
    }

    #[test]
    fn parses_owner_key_add() {
        let key = OwnerKey([3; 32]);
        let b64 = key.to_string();
        assert_eq!(
            parse_args(args(&["owner-key", "add", &b64])),
            Ok(Command::OwnerKeyAdd(key, KeyAccess::ReadWrite))
        );
        assert_eq!(
            parse_args(args(&["owner-key", "add", &b64, "ro"])),
            Ok(Command::OwnerKeyAdd(key, KeyAccess::ReadOnly))
        );
        for bad in [
            &["owner-key", "add"][..],
            &["owner-key", "add", &b64, "rx"],
            &["owner-key", "del", &b64],
            &["owner-key", "add", "not-base64"],
        ] {
            assert!(parse_args(args(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            exit_code(&Error::Status(Status::OwnerKeysSet)),
            EXIT_OWNER_KEYS_SET
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        for bad in [
            &[][..],
            &["frobnicate"],
            &["ping", "extra"],
            &["tag"],
            &["tag", "bad name"],
            &["tag", "-x"],
            &["save", "--tag", "a"],
            &["save", "--tag", "a", "--in", "f"],
            &["save", "--tag", "a", "--tag", "b", "--out", "f"],
            &["restore", "--tag"],
            &["restore", "--tag", "a", "--in", "f", "junk"],
        ] {
            assert!(parse_args(args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exit_codes_distinguish_blob_failures() {
        let codes: Vec<u8> = [
            Status::BlobAuthFailed,
            Status::BlobWrongKey,
            Status::BlobWrongTag,
            Status::BlobReplayed,
        ]
        .iter()
        .map(|&s| exit_code(&Error::Status(s)))
        .collect();
        assert_eq!(
            codes,
            vec![
                EXIT_BLOB_TAMPERED,
                EXIT_BLOB_WRONG_KEY,
                EXIT_BLOB_WRONG_TAG,
                EXIT_BLOB_REPLAYED
            ]
        );
        assert_eq!(exit_code(&Error::NoHypervisor), EXIT_NOT_UNDER_L0);
        assert_eq!(
            exit_code(&Error::OtherHypervisor { signature: [0; 12] }),
            EXIT_NOT_UNDER_L0
        );
        assert_eq!(
            exit_code(&Error::NotIntel {
                vendor: *b"AuthenticAMD"
            }),
            EXIT_NOT_UNDER_L0
        );
    }

    #[test]
    fn help_documents_every_exit_code() {
        for code in 0..=EXIT_OWNER_KEYS_SET {
            assert!(
                HELP.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "exit code {code}"
            );
        }
    }

    #[test]
    fn list_output_is_tab_separated() {
        let mut buf = vec![0u8; 1024];
        let mut enc = ListEncoder::new(&mut buf);
        enc.push_vm(
            &VmInfo {
                vm_id: 3,
                tag: Some(tag("web")),
                frozen: false,
            },
            &[DeviceInfo {
                class: DEVICE_CLASS_UART16550A,
                port_base: 0x3f8,
                port_count: 8,
                isa_irq: Some(4),
                operator_attached: true,
                bytes_in: 5,
                bytes_out: 6,
            }],
        );
        enc.push_vm(
            &VmInfo {
                vm_id: 4,
                tag: None,
                frozen: true,
            },
            &[],
        );
        let n = enc.finish().unwrap();
        let mut out = Vec::new();
        format_list(&ListView::parse(&buf[..n]).unwrap(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "3\tweb\tlive\tuart16550a\t0x3f8\t4\tattached\t5\t6"
        );
        assert_eq!(lines[2], "4\t-\tfrozen\t-\t-\t-\t-\t-\t-");
    }
}
