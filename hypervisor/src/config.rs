//! L0's command line and the roles of its boot modules.
//!
//! L0: `serial=com2 loglevel=info l0_mem=32M shadow=on cpus=N iommu=on
//! ept02_tables=N aps=on console=operator`.
//! Modules say what they are with their first word:
//! - `l1=multiboot [ARGS]`: the cloud VM's kernel, a multiboot (v1) image,
//!   started with ARGS as its command line;
//! - `l1.module [ARGS]`: a module handed on to that kernel with ARGS.
//! - `l1=linux [ARGS]`: the cloud VM's kernel, a Linux bzImage started by
//!   the 64-bit boot protocol with ARGS as its command line;
//! - `l1.initrd`: that kernel's initrd (at most one).
//! - `l0.key`: the sealing key; `l0.identity`: L0's owner-session key.

use core::fmt;

use boot::cmdline::{parse_number, parse_size, split_first, words};

/// Where L0's management line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SerialChoice {
    Port(u16),
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub serial: SerialChoice,
    pub log_level: log::LevelFilter,
    /// Bytes of pool for L0's own use, besides its image and module copies.
    pub l0_mem: u64,
    /// Whether user VMs' COM ports are L0's shadow UARTs (`shadow=on`, the
    /// product) or left to the guest hypervisor (`shadow=off`: the
    /// baseline `cargo xtask bench` compares with).
    pub shadow: bool,
    /// At most this many CPUs, the boot CPU included (`cpus=N`; None: all
    /// the firmware lists).
    pub cpus: Option<u32>,
    /// Whether L0 takes the host's VT-d units to keep devices' DMA out of
    /// its pool (`iommu=on`, the default: L0's memory and key are what it
    /// exists to protect, and a host without VT-d only loses the line
    /// that says isolation is on). `iommu=off` leaves the units and the
    /// DMAR table to the cloud VM, for a host whose firmware's DMAR breaks
    /// its devices; L0 then says that DMA isolation is absent.
    pub iommu: bool,
    /// Whether L0 starts the other CPUs (`aps=on`, the default). `aps=off`
    /// leaves them as the firmware left them, for a host whose CPUs L0
    /// cannot start: the cloud VM runs on the boot CPU alone, and L0
    /// refuses the INIT and start-up IPIs that could start them
    /// (machine/ap_wait.rs).
    pub aps: bool,
    /// EPT02 tables each CPU keeps at most (`ept02_tables=N`; None: an
    /// eighth of `l0_mem` shared by the CPUs, `nested::ept02::default_cap`).
    pub ept02_tables: Option<usize>,
    /// Whether the management line still takes the plain operator
    /// protocol (`console=operator`, the default) or only owner sessions
    /// (`console=owners`); see [`ConsoleMode`].
    pub console: ConsoleMode,
}

/// Who may use the management line's consoles.
///
/// `operator` (the default): the operator's plain protocol and owner
/// sessions. The line is L0's physical port, and physical access to it
/// is already the operator's credential (threat-model.md); hosts cabled
/// straight to their operator lose nothing by it, and every tool that
/// reads the line keeps working. `owners`: only owner sessions (Noise,
/// end to end); plain operator commands are refused. For a host whose
/// line runs through equipment the provider runs (a serial concentrator,
/// a BMC's serial-over-LAN): there the bytes on the line are the
/// provider's to read, so they must be ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleMode {
    Operator,
    Owners,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            serial: SerialChoice::Port(COM2),
            log_level: log::LevelFilter::Info,
            l0_mem: 32 << 20,
            shadow: true,
            cpus: None,
            iommu: true,
            aps: true,
            ept02_tables: None,
            console: ConsoleMode::Operator,
        }
    }
}

pub const COM1: u16 = 0x3f8;
pub const COM2: u16 = 0x2f8;
pub const COM3: u16 = 0x3e8;
pub const COM4: u16 = 0x2e8;

/// A command-line problem, with the offending word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError<'a> {
    BadValue {
        key: &'a str,
        value: &'a str,
        expected: &'static str,
    },
    MissingValue(&'a str),
    UnknownKey(&'a str),
}

impl fmt::Display for ConfigError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadValue {
                key,
                value,
                expected,
            } => write!(f, "`{key}={value}`: expected {expected}"),
            Self::MissingValue(k) => write!(f, "`{k}` needs a value (`{k}=...`)"),
            Self::UnknownKey(k) => write!(
                f,
                "unknown option `{k}` (known: serial, loglevel, l0_mem, shadow, cpus, iommu, ept02_tables, aps, console)"
            ),
        }
    }
}

const MIN_EPT02_TABLES: usize = crate::nested::ept02::MIN_TABLES;

/// Minimum pool for L0's own use: heap, VMCS, EPT tables.
const MIN_L0_MEM: u64 = 8 << 20;

/// Parses L0's command line. Every problem is collected, so the operator
/// sees all of them at once; the returned config holds the valid parts.
pub fn parse<'a>(cmdline: &'a str, mut problem: impl FnMut(ConfigError<'a>)) -> Config {
    let mut c = Config::default();
    for w in words(cmdline) {
        let Some(value) = w.value else {
            problem(ConfigError::MissingValue(w.key));
            continue;
        };
        let bad = |expected| ConfigError::BadValue {
            key: w.key,
            value,
            expected,
        };
        match w.key {
            "serial" => match parse_serial(value) {
                Some(s) => c.serial = s,
                None => problem(bad("com1..com4, an I/O port like 0x2f8, or none")),
            },
            "loglevel" => match value.parse() {
                Ok(l) => c.log_level = l,
                Err(_) => problem(bad("off, error, warn, info, debug or trace")),
            },
            "l0_mem" => match parse_size(value) {
                Ok(n) if n >= MIN_L0_MEM => c.l0_mem = n.next_multiple_of(2 << 20),
                _ => problem(bad("a size of at least 8M, like 32M")),
            },
            "shadow" => match value {
                "on" => c.shadow = true,
                "off" => c.shadow = false,
                _ => problem(bad("on or off")),
            },
            "iommu" => match value {
                "on" => c.iommu = true,
                "off" => c.iommu = false,
                _ => problem(bad("on or off")),
            },
            "aps" => match value {
                "on" => c.aps = true,
                "off" => c.aps = false,
                _ => problem(bad("on or off")),
            },
            "console" => match value {
                "operator" => c.console = ConsoleMode::Operator,
                "owners" => c.console = ConsoleMode::Owners,
                _ => problem(bad("operator or owners")),
            },
            "cpus" => match parse_number(value) {
                Ok(n) if (1..=u32::MAX as u64).contains(&n) => c.cpus = Some(n as u32),
                _ => problem(bad("a number of CPUs, at least 1")),
            },
            "ept02_tables" => match parse_number(value) {
                Ok(n) if (MIN_EPT02_TABLES as u64..=1 << 20).contains(&n) => {
                    c.ept02_tables = Some(n as usize)
                }
                _ => problem(bad("a number of tables per CPU, 8 to 1048576")),
            },
            _ => problem(ConfigError::UnknownKey(w.key)),
        }
    }
    c
}

fn parse_serial(v: &str) -> Option<SerialChoice> {
    Some(SerialChoice::Port(match v {
        "none" => return Some(SerialChoice::None),
        "com1" => COM1,
        "com2" => COM2,
        "com3" => COM3,
        "com4" => COM4,
        _ => parse_number(v).ok().filter(|&p| p > 0 && p <= 0xfff8)? as u16,
    }))
}

/// What a boot module is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleRole<'a> {
    /// The cloud VM's multiboot kernel and its command line.
    L1Multiboot(&'a str),
    /// A module for the cloud VM's kernel, with its command line.
    L1Module(&'a str),
    /// The cloud VM's Linux bzImage and its command line.
    L1Linux(&'a str),
    /// The initrd of that Linux kernel.
    L1Initrd,
    /// The 32-byte sealing key for shadow-device state (raw, or 64 hex
    /// digits); L0 reads it and wipes the module.
    L0Key,
    /// L0's identity for owner sessions: the X25519 private key (raw, or
    /// 64 hex digits); L0 reads it and wipes the module.
    L0Identity,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownModule<'a>(pub &'a str);

impl fmt::Display for UnknownModule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "module command line starts with `{}`; expected `l1=multiboot`, `l1=linux`, `l1.module`, `l1.initrd`, `l0.key` or `l0.identity`",
            self.0
        )
    }
}

pub fn module_role(cmdline: &str) -> Result<ModuleRole<'_>, UnknownModule<'_>> {
    let (first, rest) = split_first(cmdline);
    match first {
        "l1=multiboot" => Ok(ModuleRole::L1Multiboot(rest)),
        "l1.module" => Ok(ModuleRole::L1Module(rest)),
        "l1=linux" => Ok(ModuleRole::L1Linux(rest)),
        // An initrd has no arguments; anything after the word is ignored.
        "l1.initrd" => Ok(ModuleRole::L1Initrd),
        "l0.key" => Ok(ModuleRole::L0Key),
        "l0.identity" => Ok(ModuleRole::L0Identity),
        _ => Err(UnknownModule(first)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(s: &str) -> (Config, Vec<ConfigError<'_>>) {
        let mut errs = Vec::new();
        let c = parse(s, |e| errs.push(e));
        (c, errs)
    }

    #[test]
    fn defaults() {
        assert_eq!(parse_all(""), (Config::default(), vec![]));
        assert_eq!(Config::default().serial, SerialChoice::Port(0x2f8));
    }

    #[test]
    fn parses_every_option() {
        let (c, e) = parse_all("serial=com1 loglevel=debug l0_mem=64M cpus=4 ept02_tables=16");
        assert!(e.is_empty());
        assert_eq!(
            c,
            Config {
                serial: SerialChoice::Port(0x3f8),
                log_level: log::LevelFilter::Debug,
                l0_mem: 64 << 20,
                shadow: true,
                cpus: Some(4),
                iommu: true,
                aps: true,
                ept02_tables: Some(16),
                console: ConsoleMode::Operator,
            }
        );
        assert_eq!(parse_all("console=owners").0.console, ConsoleMode::Owners);
        assert_eq!(
            parse_all("console=operator").0.console,
            ConsoleMode::Operator
        );
        let (c, e) = parse_all("console=nobody");
        assert_eq!(
            c.console,
            ConsoleMode::Operator,
            "a bad value keeps the default"
        );
        assert!(matches!(
            e[..],
            [ConfigError::BadValue { key: "console", .. }]
        ));
        for bad in [
            "ept02_tables=7",
            "ept02_tables=lots",
            "ept02_tables=2000000",
        ] {
            let (c, e) = parse_all(bad);
            assert_eq!(c.ept02_tables, None, "{bad}");
            assert!(
                matches!(
                    e[..],
                    [ConfigError::BadValue {
                        key: "ept02_tables",
                        ..
                    }]
                ),
                "{bad}"
            );
        }
        assert!(!parse_all("iommu=off").0.iommu);
        assert!(!parse_all("aps=off").0.aps);
        assert!(parse_all("aps=on").0.aps && parse_all("").0.aps);
        assert!(parse_all("iommu=on").0.iommu);
        let (c, e) = parse_all("iommu=no");
        assert!(c.iommu, "a bad value keeps the default");
        assert!(matches!(
            e[..],
            [ConfigError::BadValue { key: "iommu", .. }]
        ));
        assert!(!parse_all("shadow=off").0.shadow);
        assert_eq!(parse_all("shadow=maybe").1.len(), 1);
        assert_eq!(
            parse_all("serial=0x3e8").0.serial,
            SerialChoice::Port(0x3e8)
        );
        assert_eq!(parse_all("serial=none").0.serial, SerialChoice::None);
        assert_eq!(parse_all("l0_mem=9M").0.l0_mem, 10 << 20);
        for bad in ["cpus=0", "cpus=many", "cpus=0x100000000"] {
            let (c, e) = parse_all(bad);
            assert_eq!(c.cpus, None, "{bad}");
            assert!(
                matches!(e[..], [ConfigError::BadValue { key: "cpus", .. }]),
                "{bad}"
            );
        }
    }

    #[test]
    fn reports_every_problem_and_keeps_the_rest() {
        let (c, e) = parse_all("serial=com9 loglevel=loud l0_mem=1M verbose foo=1 serial=com3");
        assert_eq!(c.serial, SerialChoice::Port(COM3));
        assert_eq!(c.l0_mem, 32 << 20);
        assert_eq!(e.len(), 5);
        assert!(matches!(
            e[0],
            ConfigError::BadValue {
                key: "serial",
                value: "com9",
                ..
            }
        ));
        assert!(matches!(
            e[1],
            ConfigError::BadValue {
                key: "loglevel",
                ..
            }
        ));
        assert!(matches!(e[2], ConfigError::BadValue { key: "l0_mem", .. }));
        assert_eq!(e[3], ConfigError::MissingValue("verbose"));
        assert_eq!(e[4], ConfigError::UnknownKey("foo"));
        assert!(e[4].to_string().contains("unknown option `foo`"));
    }

    #[test]
    fn module_roles() {
        assert_eq!(
            module_role("l1=multiboot test=boot x"),
            Ok(ModuleRole::L1Multiboot("test=boot x"))
        );
        assert_eq!(module_role("l1=multiboot"), Ok(ModuleRole::L1Multiboot("")));
        assert_eq!(
            module_role("l1.module env"),
            Ok(ModuleRole::L1Module("env"))
        );
        assert_eq!(module_role("l0.key"), Ok(ModuleRole::L0Key));
        assert_eq!(module_role("l0.identity"), Ok(ModuleRole::L0Identity));
        assert_eq!(module_role(""), Err(UnknownModule("")));
        assert_eq!(module_role("initrd"), Err(UnknownModule("initrd")));
        assert_eq!(
            module_role("l1=linux console=ttyS0,115200 l0test=boot"),
            Ok(ModuleRole::L1Linux("console=ttyS0,115200 l0test=boot"))
        );
        assert_eq!(module_role("l1.initrd"), Ok(ModuleRole::L1Initrd));
        assert_eq!(module_role("l1=linuxx"), Err(UnknownModule("l1=linuxx")));
        assert!(UnknownModule("x").to_string().contains("l1=linux"));
    }
}

/// Why a key module was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadKey(pub usize);

impl fmt::Display for BadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key module has {} bytes: expected 32 raw bytes or 64 hex digits",
            self.0
        )
    }
}

/// The sealing key from an `l0.key` module: 32 raw bytes, or 64 hex digits
/// (surrounding whitespace allowed).
pub fn parse_key(data: &[u8]) -> Result<[u8; 32], BadKey> {
    if data.len() == 32 {
        return Ok(data.try_into().unwrap());
    }
    // Digit by digit on the bytes: slicing the text two bytes at a time
    // would split a multi-byte character (a panic, not an error).
    let text = data.trim_ascii();
    let digit = |b: u8| (b as char).to_digit(16).ok_or(BadKey(data.len()));
    if text.len() != 64 {
        return Err(BadKey(data.len()));
    }
    let mut key = [0u8; 32];
    for (k, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
        *k = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Ok(key)
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(parse_key(&[7; 32]), Ok([7; 32]));
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        let k = parse_key(hex.as_bytes()).unwrap();
        assert_eq!((k[0], k[1], k[31]), (0x00, 0x11, 0xff));
        assert_eq!(parse_key(b"short"), Err(BadKey(5)));
        assert_eq!(parse_key(&[b'z'; 64]), Err(BadKey(64)));
        // 64 bytes of two-byte characters: refused, not a panic.
        assert_eq!(parse_key("é".repeat(32).as_bytes()), Err(BadKey(64)));
        // A character across the first pair of digits.
        let mixed = alloc::format!("aé{}", &hex[..61]);
        assert_eq!(parse_key(mixed.as_bytes()), Err(BadKey(64)));
        assert_eq!(parse_key(&[0xff; 64]), Err(BadKey(64)), "not UTF-8");
    }
}
