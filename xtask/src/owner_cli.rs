//! `cargo xtask console --owner`: a VM owner's session over a management
//! line or through the cloud VM's relay (`--relay HOST:PORT`), from the
//! command line (docs/console-protocol.md, "Owner
//! sessions"; the client itself is crate::owner).

use std::process::Command;

use crate::{console, owner, serial_line, USAGE};

/// `cargo xtask console --owner`: one owner session over the line.
pub fn owner_console(args: &[&str]) -> Result<(), String> {
    use owner::{Expect, Step};
    let mut it = args.iter().copied();
    let (mut tcp, mut serial, mut key, mut pin, mut tag) = (None, None, None, None, None);
    let mut relay = None;
    let (mut port, mut from, mut follow, mut brk, mut gen) = (0x3f8u16, None, false, false, None);
    // Typed right behind the BREAK, in the same message (--sysrq KEY).
    let mut sysrq = Vec::new();
    let mut changes = Vec::new();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a {
            "--owner" => {}
            "--tcp" => tcp = Some(value()?),
            // A relay speaks the line's owner frames on TCP: the same client.
            "--relay" => relay = Some(value()?),
            "--serial" => serial = Some(value()?),
            "--key" => key = Some(value()?),
            "--pin" => pin = Some(value()?),
            "--tag" => tag = Some(value()?),
            "--gen-key" => gen = Some(value()?),
            "--port" => {
                let v = value()?;
                let p = v.trim_start_matches("0x");
                port = u16::from_str_radix(p, 16)
                    .map_err(|_| format!("--port {v}: a COM port in hex, like 0x3f8"))?;
            }
            "--from" => {
                let v = value()?;
                from = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("--from {v}: a byte offset"))?,
                );
            }
            "--add-key" => {
                let v = value()?;
                let k = ultracall_abi::OwnerKey::from_base64(v)
                    .map_err(|e| format!("--add-key: {e}"))?;
                changes.push(Step::AddKey {
                    key: k,
                    access: ultracall_abi::KeyAccess::ReadWrite,
                });
            }
            "--add-ro-key" => {
                let v = value()?;
                let k = ultracall_abi::OwnerKey::from_base64(v)
                    .map_err(|e| format!("--add-ro-key: {e}"))?;
                changes.push(Step::AddKey {
                    key: k,
                    access: ultracall_abi::KeyAccess::ReadOnly,
                });
            }
            "--remove-key" => {
                let v = value()?;
                let k = ultracall_abi::OwnerKey::from_base64(v)
                    .map_err(|e| format!("--remove-key: {e}"))?;
                changes.push(Step::RemoveKey(k));
            }
            "--follow" => follow = true,
            "--break" => brk = true,
            "--sysrq" => {
                let v = value()?;
                let &[k] = v.as_bytes() else {
                    return Err(format!("--sysrq {v}: one key, like h (help) or m (memory)"));
                };
                brk = true;
                sysrq = vec![k];
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if let Some(path) = gen {
        let public = owner::generate_key_file(path)?;
        println!("{public}");
        eprintln!("owner key written to {path}; register it inside the VM: ultracall owner-key add {public}");
        return Ok(());
    }
    fn need<'a>(v: Option<&'a str>, what: &str) -> Result<&'a str, String> {
        v.ok_or(format!("--owner needs {what}\n{USAGE}"))
    }
    if relay.is_some() && tcp.is_some() {
        return Err(format!("give --relay or --tcp, not both\n{USAGE}"));
    }
    let tcp = tcp.or(relay);
    let key = owner::read_key_file(need(key, "--key FILE")?)?;
    let pin = owner::parse_pin(need(pin, "--pin FINGERPRINT")?)?;
    let tag_s = need(tag, "--tag T")?;
    let tag =
        ultracall_abi::VmTag::new(tag_s.as_bytes()).map_err(|e| format!("--tag {tag_s}: {e}"))?;
    let mut steps = vec![
        Step::CheckPin { pin, matches: true },
        Step::Open {
            key,
            pin,
            tag: Some(tag),
            refused: None,
        },
        Step::Attach {
            tag,
            port,
            expect: Expect::Ok,
            patient: false,
        },
    ];
    let changing = !changes.is_empty();
    steps.extend(changes);
    if let Some(from) = from {
        steps.push(Step::Backlog { from, holds: None });
    }
    if brk {
        steps.push(Step::Break {
            then: sysrq,
            expect: Expect::Ok,
        });
    }
    if follow || (from.is_none() && !brk && !changing) {
        steps.push(Step::Follow);
    } else {
        steps.push(Step::Close);
    }
    let mut client = owner::OwnerClient::new(steps, true);
    let interactive = follow && std::io::IsTerminal::is_terminal(&std::io::stdin());
    if follow {
        // Keys (a terminal in raw mode: Ctrl-] leaves) or script lines.
        let (tx, rx) = std::sync::mpsc::channel();
        let raw = interactive.then(|| {
            let saved = Command::new("stty").arg("-g").output().ok();
            let _ = Command::new("stty").args(["raw", "-echo"]).status();
            console::set_raw_terminal(true);
            saved
        });
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 256];
            loop {
                match std::io::Read::read(&mut stdin, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut bytes = buf[..n].to_vec();
                        if bytes.contains(&0x1d) {
                            let _ = tx.send(Vec::new());
                            break;
                        }
                        if !interactive {
                            bytes = bytes
                                .iter()
                                .map(|&b| if b == b'\n' { b'\r' } else { b })
                                .collect();
                        }
                        if tx.send(bytes).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        client = client.with_keyboard(rx);
        let r = run_owner(&mut client, tcp, serial);
        if let Some(Some(saved)) = raw {
            let s = String::from_utf8_lossy(&saved.stdout).trim().to_string();
            let _ = Command::new("stty").arg(s).status();
            console::set_raw_terminal(false);
        }
        r?;
    } else {
        run_owner(&mut client, tcp, serial)?;
    }
    match client.failure() {
        Some(f) => Err(f.to_string()),
        None => Ok(()),
    }
}

fn run_owner(
    client: &mut owner::OwnerClient,
    tcp: Option<&str>,
    serial: Option<&str>,
) -> Result<(), String> {
    fn pump<S: std::io::Read + std::io::Write>(
        mut line: console::MgmtLine<S>,
        c: &mut owner::OwnerClient,
    ) {
        while !console::LineUser::quit(c) && !line.closed() {
            console::serve(&mut line, c);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    match (tcp, serial) {
        (Some(addr), None) => {
            let s = std::net::TcpStream::connect(addr)
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            pump(console::MgmtLine::new(s, None), client);
        }
        (None, Some(dev)) => pump(console::MgmtLine::new(serial_line(dev)?, None), client),
        _ => {
            return Err(format!(
                "give the way to L0: --relay HOST:PORT, --tcp HOST:PORT or --serial DEVICE\n{USAGE}"
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_or_line_is_asked_plainly() {
        let both = owner_console(&["--owner", "--relay", "127.0.0.1:1", "--tcp", "127.0.0.1:2"]);
        assert!(both.unwrap_err().contains("--relay or --tcp, not both"));
        let no_key = owner_console(&["--owner", "--relay", "127.0.0.1:1"]);
        assert!(no_key.unwrap_err().contains("--key FILE"));
        let no_value = owner_console(&["--owner", "--relay"]);
        assert!(no_value.unwrap_err().contains("--relay needs a value"));
    }
}
