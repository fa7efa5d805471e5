//! Running an ISO headless in Bochs (or QEMU/KVM) with a wall-clock limit,
//! the emulator in its own process group. COM1 goes to a file; COM2 (L0's
//! management line) is a TCP connection to us: we copy it to `com2.log`
//! and follow every user VM's console on it (`console.log`).

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::console::{LineUser, MgmtLine};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulator {
    Bochs,
    Qemu,
}

/// What a judge decides after looking at the serial output so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Stop,
}

pub struct Run {
    pub dir: PathBuf,
    pub com1: String,
    pub com2: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Run {
    pub fn emulator_log(&self) -> String {
        fs::read_to_string(self.dir.join("bochs.log")).unwrap_or_default()
    }
}

/// What the judge sees: the three logs so far.
pub struct Logs<'a> {
    pub com1: &'a str,
    pub com2: &'a str,
    pub console: &'a str,
}

/// The emulated host's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSize {
    pub memory_mib: u32,
    pub cpus: u32,
    /// A NIC (e1000, slirp) whose host port this is forwarded to the
    /// cloud VM's relay (10.0.2.15, crate::owner_relay::RELAY_PORT).
    pub nic: Option<u16>,
}

/// The cloud VM's address on slirp's network (its first DHCP address).
pub const GUEST_IP: &str = "10.0.2.15";

/// slirp's configuration (docs/testing.md): the guest's network and one
/// forwarding rule from the build host's `port` to the relay.
fn slirp_conf(port: u16) -> String {
    format!(
        "# slirp config\n\
         restricted = 0\n\
         net = 10.0.2.0\n\
         mask = 255.255.255.0\n\
         host = 10.0.2.2\n\
         dhcpstart = {GUEST_IP}\n\
         dns = 10.0.2.3\n\
         hostfwd = tcp:127.0.0.1:{port}-{GUEST_IP}:{}\n",
        crate::owner_relay::RELAY_PORT
    )
}

/// Bochs's fixed instructions per emulated second (`cpu: ips=`); with
/// `clock: sync=none` its TSC counts emulated instructions.
pub const BOCHS_IPS: u64 = 100_000_000;

fn bochsrc(iso: &Path, size: HostSize, com2_port: u16, disk: bool) -> String {
    let HostSize {
        memory_mib,
        cpus,
        nic,
    } = size;
    // The NIC in slot 1; slirp forwards the host's port to the relay.
    let (slot, nic) = match nic {
        Some(_) => (
            ", slot1=e1000",
            "e1000: enabled=1, mac=52:54:00:12:34:56, ethmod=slirp, script=slirp.conf\n",
        ),
        None => ("", ""),
    };
    // The migration disk (docs/testing.md) on the secondary channel; the
    // cloud VM drives it by polled PIO, so its IRQ is never raised.
    // Port 0xE9 answers (reads 0xE9; writes go to emulator.out): a device
    // outside COM1-COM4 for L0's management line (`l2-probes-l0-port-e9`).
    let disk = match disk {
        true => format!(
            "ata1: enabled=1, ioaddr1=0x170, ioaddr2=0x370, irq=15\n\
             ata1-master: type=disk, path=disk.img, mode=flat, cylinders={}, heads=16, spt=63\n",
            crate::scenario::DISK_CYLINDERS
        ),
        false => String::new(),
    };
    format!(
        "config_interface: textconfig\n\
         display_library: rfb, options=\"timeout=0\"\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
         memory: guest={memory_mib}, host={memory_mib}\n\
         cpu: model=corei7_skylake_x, count={cpus}, ips={BOCHS_IPS}, reset_on_triple_fault=0, ignore_bad_msrs=1\n\
         clock: sync=none, time0=local\n\
         pci: enabled=1, chipset=i440fx{slot}\n\
         {nic}\
         ata0-master: type=cdrom, path={}, status=inserted\n\
         boot: cdrom\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=ignore\n\
         debug: action=ignore\n\
         com1: enabled=1, mode=file, dev=com1.log\n\
         com2: enabled=1, mode=socket-client, dev=127.0.0.1:{com2_port}\n\
         port_e9_hack: enabled=1\n\
         {disk}\
         log: bochs.log\n\
         sound: driver=dummy\n",
        iso.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nic_is_an_e1000_on_slirp_forwarding_the_port_to_the_relay() {
        let size = |nic| HostSize {
            memory_mib: 512,
            cpus: 1,
            nic,
        };
        let plain = bochsrc(Path::new("b.iso"), size(None), 1, false);
        assert!(!plain.contains("e1000"));
        let rc = bochsrc(Path::new("b.iso"), size(Some(4321)), 1, false);
        assert!(rc.contains("pci: enabled=1, chipset=i440fx, slot1=e1000\n"));
        assert!(rc.contains("ethmod=slirp, script=slirp.conf"));
        let conf = slirp_conf(4321);
        assert!(
            conf.starts_with("# slirp config\n"),
            "Bochs wants this first line"
        );
        assert!(conf.contains("hostfwd = tcp:127.0.0.1:4321-10.0.2.15:7000\n"));
    }
}

/// Whether this host can run a VMX hypervisor under KVM.
pub fn qemu_nested_vmx() -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("no /dev/kvm on this host".into());
    }
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "vmx"))
    {
        return Err("this host's CPU shows no vmx flag (not Intel VT-x, or KVM's nested VMX is off above us)".into());
    }
    let nested = fs::read_to_string("/sys/module/kvm_intel/parameters/nested").unwrap_or_default();
    if !matches!(nested.trim(), "Y" | "1") {
        return Err(
            "kvm_intel is not loaded with nested=1 (see /sys/module/kvm_intel/parameters/nested)"
                .into(),
        );
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into());
    }
    Ok(())
}

fn spawn(
    emu: Emulator,
    dir: &Path,
    iso: &Path,
    size: HostSize,
    com2_port: u16,
) -> Result<Child, String> {
    let disk = dir.join("disk.img").exists();
    let mut cmd = match emu {
        Emulator::Bochs => {
            let rc = bochsrc(iso, size, com2_port, disk);
            fs::write(dir.join("bochsrc"), rc).map_err(|e| e.to_string())?;
            if let Some(port) = size.nic {
                fs::write(dir.join("slirp.conf"), slirp_conf(port)).map_err(|e| e.to_string())?;
            }
            // Debian's Bochs has the internal debugger: tell it to run and quit.
            fs::write(dir.join("dbg.rc"), "continue\nquit\n").map_err(|e| e.to_string())?;
            let mut c = Command::new("bochs-bin");
            c.args(["-q", "-f", "bochsrc", "-rc", "dbg.rc"]);
            c
        }
        Emulator::Qemu => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-enable-kvm", "-cpu", "host,+vmx", "-m"])
                .arg(size.memory_mib.to_string())
                .arg("-smp")
                .arg(size.cpus.to_string())
                // The ISO on the primary master, the migration disk (if
                // any) on the secondary master, as under Bochs.
                .arg("-drive")
                .arg(format!("file={},media=cdrom,if=ide,index=0", iso.display()))
                .args([
                    "-display",
                    "none",
                    "-no-reboot",
                    "-serial",
                    "file:com1.log",
                    "-serial",
                ])
                .arg(format!("tcp:127.0.0.1:{com2_port}"))
                // The guest's "Shutdown" on port 0x8900 ends QEMU as it ends Bochs.
                .args(["-device", "isa-debug-exit,iobase=0x8900,iosize=1"]);
            if disk {
                c.args(["-drive", "file=disk.img,format=raw,if=ide,index=2"]);
            }
            if let Some(port) = size.nic {
                c.args(["-device", "e1000,netdev=n0", "-netdev"])
                    .arg(format!(
                        "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:{port}-{GUEST_IP}:{}",
                        crate::owner_relay::RELAY_PORT
                    ));
            }
            c
        }
    };
    for f in ["com1.log", "com2.log", "bochs.log"] {
        let _ = fs::remove_file(dir.join(f));
    }
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("emulator.out")).map_err(|e| e.to_string())?)
        .stderr(fs::File::create(dir.join("emulator.err")).map_err(|e| e.to_string())?)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting {emu:?}: {e}"))
}

fn kill_group(child: &mut Child) {
    let pgid = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
    for _ in 0..20 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
    let _ = child.wait();
}

/// Prints what is new in a log, line by line with `prefix`.
struct Streamer {
    printed: usize,
    prefix: &'static str,
}

impl Streamer {
    fn show(&mut self, log: &str) {
        let new = &log[self.printed.min(log.len())..];
        // Only whole lines; the rest waits for its newline.
        if let Some(end) = new.rfind('\n') {
            let mut out = std::io::stdout().lock();
            for line in new[..end].split('\n') {
                let _ = write!(
                    out,
                    "{}{}{}",
                    self.prefix,
                    line.trim_end_matches('\r'),
                    crate::console::newline()
                );
            }
            self.printed += end + 1;
        }
    }
}

/// Waits for the emulator to connect its COM2.
fn accept(listener: &TcpListener, child: &mut Child, dir: &Path) -> Result<TcpStream, String> {
    let start = Instant::now();
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true).map_err(|e| e.to_string())?;
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("accepting the emulator's COM2 connection: {e}")),
        }
        if matches!(child.try_wait(), Ok(Some(_))) || start.elapsed() > Duration::from_secs(30) {
            kill_group(child);
            let err = fs::read_to_string(dir.join("emulator.err")).unwrap_or_default();
            return Err(format!(
                "the emulator never connected its COM2 (see {}/bochs.log): {}",
                dir.display(),
                err.trim()
            ));
        }
        sleep(Duration::from_millis(20));
    }
}

const STALL: Duration = Duration::from_secs(45);

/// Runs `iso` until `judge` says stop, the emulator exits, `user` quits,
/// or `limit` passes; `user` is the other end of L0's management line.
#[allow(clippy::too_many_arguments)]
pub fn run(
    emu: Emulator,
    dir: &Path,
    iso: &Path,
    size: HostSize,
    limit: Duration,
    stream_com1: bool,
    user: &mut dyn LineUser,
    mut judge: impl FnMut(&Logs) -> Verdict,
) -> Result<Run, String> {
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("a port for COM2: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let mut child = spawn(emu, dir, iso, size, port)?;
    let start = Instant::now();
    let log = fs::File::create(dir.join("com2.log")).map_err(|e| e.to_string())?;
    let mut line = MgmtLine::new(accept(&listener, &mut child, dir)?, Some(log));
    let mut com1 = Streamer {
        printed: 0,
        prefix: "COM1 | ",
    };
    let read = |name: &str| {
        String::from_utf8_lossy(&fs::read(dir.join(name)).unwrap_or_default()).into_owned()
    };
    let mut timed_out = false;
    let mut last_judged = Instant::now();
    // A run whose logs stand still is asked what it is doing: L0's
    // `stats` answer lands in com2.log.
    let (mut progress, mut seen) = (Instant::now(), (0, 0));
    loop {
        // Short steps for a person typing; the logs are judged at 10 Hz.
        sleep(Duration::from_millis(20));
        crate::console::serve(&mut line, user);
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || user.quit() {
            break;
        }
        if last_judged.elapsed() < Duration::from_millis(100) {
            continue;
        }
        last_judged = Instant::now();
        let c1 = read("com1.log");
        if stream_com1 {
            com1.show(&c1);
        }
        if (c1.len(), line.text.len()) != seen {
            (progress, seen) = (Instant::now(), (c1.len(), line.text.len()));
        } else if progress.elapsed() > STALL && !stream_com1 {
            eprintln!(
                "xtask: {}: no output for {} s; asking L0 for its stats (com2.log)",
                dir.file_name().unwrap_or_default().to_string_lossy(),
                STALL.as_secs()
            );
            let _ = line.send("stats");
            progress = Instant::now();
        }
        if judge(&Logs {
            com1: &c1,
            com2: &line.text,
            console: user.transcript(),
        }) == Verdict::Stop
        {
            break;
        }
        if start.elapsed() > limit {
            timed_out = true;
            break;
        }
    }
    if !matches!(child.try_wait(), Ok(Some(_))) {
        kill_group(&mut child);
    }
    // What the emulator wrote before it went.
    crate::console::serve(&mut line, user);
    user.finish();
    let com1_text = read("com1.log");
    if stream_com1 {
        // Flush a last line that has no newline yet.
        com1.show(&if com1_text.ends_with('\n') {
            com1_text.clone()
        } else {
            format!("{com1_text}\n")
        });
    }
    Ok(Run {
        dir: dir.to_path_buf(),
        com1: com1_text,
        com2: line.text.clone(),
        elapsed: start.elapsed(),
        timed_out,
    })
}
