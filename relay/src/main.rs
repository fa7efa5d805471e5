//! `l0-relay [--listen ADDR:PORT] [--tamper MODES]`: the owner-session
//! relay of the cloud VM (see the library's documentation and
//! docs/operations.md). One thread per connection blocks on its socket;
//! one thread owns the ultracall client and its locked buffer, so the
//! relay wakes only when a client sends: idle, it costs L1 nothing.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use l0_relay::{Connection, L0Link, LinkAnswer, Tamper};
use ultracall_abi::client::{Client, LockedBuffer, RelayAnswer};

/// Most client connections at once.
const MAX_CONNECTIONS: usize = 32;
/// The longest line a client may send (the line's own bound).
const MAX_LINE: usize = shadow_devices::mgmt::MAX_LINE;

const USAGE: &str = "usage: l0-relay [--listen ADDR:PORT] [--tamper flip,replay,reorder,drop,inject|all]\n\
    Carries owner sessions (ciphertext) between TCP clients and L0. Default --listen 0.0.0.0:7000.\n\
    --tamper (tests only): the first connections each meet one hostile mode, in order.";

/// What the relay cost L0 so far: ultracalls, and the relayed messages'
/// count and TSC ticks (each VMCALL alone, as this vCPU saw it).
#[derive(Default)]
struct Stats {
    calls: AtomicU32,
    messages: AtomicU64,
    message_ticks: AtomicU64,
}

impl Stats {
    fn line(&self) -> String {
        let n = self.messages.load(Ordering::Relaxed);
        let ticks = self.message_ticks.load(Ordering::Relaxed);
        format!(
            "{} ultracalls so far; {n} relayed messages averaging {} TSC ticks in L0",
            self.calls.load(Ordering::Relaxed),
            ticks.checked_div(n).unwrap_or(0)
        )
    }
}

enum Job {
    Identity(Sender<Result<String, String>>),
    Message(u32, Vec<u8>, Sender<Result<LinkAnswer, String>>),
    Forget(u32),
}

/// The connections' side of the L0 thread.
struct ToL0(Sender<Job>);

impl L0Link for ToL0 {
    fn identity(&mut self) -> Result<String, String> {
        let (tx, rx) = channel();
        let _ = self.0.send(Job::Identity(tx));
        rx.recv().map_err(|_| "the L0 thread ended".to_string())?
    }
    fn message(&mut self, ch: u32, msg: &[u8]) -> Result<LinkAnswer, String> {
        let (tx, rx) = channel();
        let _ = self.0.send(Job::Message(ch, msg.to_vec(), tx));
        rx.recv().map_err(|_| "the L0 thread ended".to_string())?
    }
    fn forget(&mut self, ch: u32) {
        let _ = self.0.send(Job::Forget(ch));
    }
}

/// The thread that makes every ultracall (the client and its locked
/// buffer stay on it).
fn l0_thread(client: Client, jobs: std::sync::mpsc::Receiver<Job>, stats: Arc<Stats>) {
    let mut buf = match LockedBuffer::new(ultracall_abi::MAX_RELAY_MESSAGE) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("l0-relay: no locked buffer for L0: {e}");
            std::process::exit(1)
        }
    };
    for job in jobs {
        stats.calls.fetch_add(1, Ordering::Relaxed);
        match job {
            Job::Identity(tx) => {
                let _ = tx.send(client.owner_identity().map_err(|e| e.to_string()));
            }
            Job::Message(ch, msg, tx) => {
                let r = client
                    .owner_relay(&mut buf, ch, &msg)
                    .map(|a| match a {
                        RelayAnswer::Message(m) => LinkAnswer::Message(m),
                        RelayAnswer::Ended(c) => LinkAnswer::Ended(c),
                    })
                    .map_err(|e| e.to_string());
                stats.messages.fetch_add(1, Ordering::Relaxed);
                stats
                    .message_ticks
                    .fetch_add(client.last_call_ticks(), Ordering::Relaxed);
                let _ = tx.send(r);
            }
            Job::Forget(ch) => {
                let _ = client.owner_relay(&mut buf, ch, &[]);
            }
        }
    }
}

fn serve(mut stream: TcpStream, mut conn: Connection, mut link: ToL0, channels: &AtomicU32) {
    let _ = stream.set_nodelay(true);
    let mut partial: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut next_channel = || channels.fetch_add(1, Ordering::Relaxed);
    'read: loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        partial.extend_from_slice(&buf[..n]);
        while let Some(i) = partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = partial.drain(..=i).collect();
            let text = String::from_utf8_lossy(&raw);
            let out = conn.line(&text, &mut link, &mut next_channel);
            for note in conn.take_notes() {
                println!("l0-relay: {note}");
            }
            if stream.write_all(out.concat().as_bytes()).is_err() {
                break 'read;
            }
        }
        if partial.len() > MAX_LINE + 2 {
            let _ = stream.write_all(
                shadow_devices::mgmt::frame(format_args!("err frame: TooLong")).as_bytes(),
            );
            break;
        }
    }
    conn.close(&mut link);
}

fn main() {
    let mut listen = "0.0.0.0:7000".to_string();
    let mut tamper: Vec<Tamper> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("l0-relay: {a} needs a value\n{USAGE}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--listen" => listen = value(),
            "--tamper" => {
                tamper = Tamper::parse_list(&value()).unwrap_or_else(|e| {
                    eprintln!("l0-relay: {e}");
                    std::process::exit(2)
                })
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("l0-relay: unknown argument {other}\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    let client = Client::detect().unwrap_or_else(|e| {
        eprintln!("l0-relay: {e}");
        std::process::exit(1)
    });
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("l0-relay: listening on {listen}: {e}");
        std::process::exit(1)
    });
    let stats = Arc::new(Stats::default());
    let (jobs, rx) = channel();
    {
        let stats = stats.clone();
        std::thread::spawn(move || l0_thread(client, rx, stats));
    }
    match ToL0(jobs.clone()).identity() {
        Ok(id) => println!("l0-relay: listening on {listen}; L0 identity {id}"),
        Err(e) => {
            eprintln!("l0-relay: L0 does not relay owner sessions: {e}");
            std::process::exit(1)
        }
    }
    let channels = Arc::new(AtomicU32::new(1));
    let open = Arc::new(AtomicUsize::new(0));
    let mut number = 0u32;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            let _ = stream.write_all(
                shadow_devices::mgmt::frame(format_args!(
                    "err {MAX_CONNECTIONS} connections already; try again later"
                ))
                .as_bytes(),
            );
            continue;
        }
        number += 1;
        let mode = tamper.get(number as usize - 1).copied();
        let conn = Connection::new(number, mode);
        let (link, channels, open, stats) = (
            ToL0(jobs.clone()),
            channels.clone(),
            open.clone(),
            stats.clone(),
        );
        open.fetch_add(1, Ordering::Relaxed);
        println!("l0-relay: connection {number} opened");
        std::thread::spawn(move || {
            serve(stream, conn, link, &channels);
            open.fetch_sub(1, Ordering::Relaxed);
            println!("l0-relay: connection {number} closed; {}", stats.line());
        });
    }
}
