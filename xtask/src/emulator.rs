//! Running an ISO headless in Bochs (or QEMU/KVM) with a wall-clock limit,
//! COM1 and COM2 captured to files, the emulator in its own process group.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

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

fn bochsrc(iso: &Path, memory_mib: u32) -> String {
    format!(
        "config_interface: textconfig\n\
         display_library: rfb, options=\"timeout=0\"\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
         memory: guest={memory_mib}, host={memory_mib}\n\
         cpu: model=corei7_skylake_x, count=1, ips=100000000, reset_on_triple_fault=0, ignore_bad_msrs=1\n\
         clock: sync=none, time0=local\n\
         pci: enabled=1, chipset=i440fx\n\
         ata0-master: type=cdrom, path={}, status=inserted\n\
         boot: cdrom\n\
         panic: action=fatal\n\
         error: action=report\n\
         info: action=ignore\n\
         debug: action=ignore\n\
         com1: enabled=1, mode=file, dev=com1.log\n\
         com2: enabled=1, mode=file, dev=com2.log\n\
         log: bochs.log\n\
         sound: driver=dummy\n",
        iso.display()
    )
}

/// Whether this host can run a VMX hypervisor under KVM.
pub fn qemu_nested_vmx() -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("no /dev/kvm on this host".into());
    }
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpuinfo.lines().any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "vmx")) {
        return Err("this host's CPU shows no vmx flag (not Intel VT-x, or KVM's nested VMX is off above us)".into());
    }
    let nested = fs::read_to_string("/sys/module/kvm_intel/parameters/nested").unwrap_or_default();
    if !matches!(nested.trim(), "Y" | "1") {
        return Err("kvm_intel is not loaded with nested=1 (see /sys/module/kvm_intel/parameters/nested)".into());
    }
    if Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
        return Err("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into());
    }
    Ok(())
}

fn spawn(emu: Emulator, dir: &Path, iso: &Path, memory_mib: u32) -> Result<Child, String> {
    let mut cmd = match emu {
        Emulator::Bochs => {
            fs::write(dir.join("bochsrc"), bochsrc(iso, memory_mib)).map_err(|e| e.to_string())?;
            // Debian's Bochs has the internal debugger: tell it to run and quit.
            fs::write(dir.join("dbg.rc"), "continue\nquit\n").map_err(|e| e.to_string())?;
            let mut c = Command::new("bochs-bin");
            c.args(["-q", "-f", "bochsrc", "-rc", "dbg.rc"]);
            c
        }
        Emulator::Qemu => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-enable-kvm", "-cpu", "host,+vmx", "-m"])
                .arg(memory_mib.to_string())
                .arg("-cdrom")
                .arg(iso)
                .args(["-display", "none", "-no-reboot", "-serial", "file:com1.log", "-serial", "file:com2.log"])
                // The guest's "Shutdown" on port 0x8900 ends QEMU as it ends Bochs.
                .args(["-device", "isa-debug-exit,iobase=0x8900,iosize=1"]);
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
                let _ = writeln!(out, "{}{}", self.prefix, line.trim_end_matches('\r'));
            }
            self.printed += end + 1;
        }
    }
}

/// Runs `iso` until `judge` says stop, the emulator exits, or `limit` passes.
pub fn run(
    emu: Emulator,
    dir: &Path,
    iso: &Path,
    memory_mib: u32,
    limit: Duration,
    stream: bool,
    mut judge: impl FnMut(&str, &str) -> Verdict,
) -> Result<Run, String> {
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut child = spawn(emu, dir, iso, memory_mib)?;
    let start = Instant::now();
    let mut streams = (Streamer { printed: 0, prefix: "COM1 | " }, Streamer { printed: 0, prefix: "" });
    let read = |name: &str| String::from_utf8_lossy(&fs::read(dir.join(name)).unwrap_or_default()).into_owned();
    let mut timed_out = false;
    loop {
        sleep(Duration::from_millis(100));
        let (c1, c2) = (read("com1.log"), read("com2.log"));
        if stream {
            streams.1.show(&c2);
            streams.0.show(&c1);
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited {
            break;
        }
        if judge(&c1, &c2) == Verdict::Stop {
            kill_group(&mut child);
            break;
        }
        if start.elapsed() > limit {
            timed_out = true;
            kill_group(&mut child);
            break;
        }
    }
    let (com1, com2) = (read("com1.log"), read("com2.log"));
    if stream {
        // Flush a last line that has no newline yet.
        let whole = |s: &str| if s.ends_with('\n') { s.to_string() } else { format!("{s}\n") };
        streams.1.show(&whole(&com2));
        streams.0.show(&whole(&com1));
    }
    Ok(Run { dir: dir.to_path_buf(), com1, com2, elapsed: start.elapsed(), timed_out })
}
