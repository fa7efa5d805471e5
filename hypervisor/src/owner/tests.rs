//! Owner sessions through L0's line handling over real shadow devices:
//! the client's frames go in as management-line bytes, L0's answers come
//! back as frames, and the VM's UART sees what the session did.

use alloc::string::String;
use alloc::vec::Vec;

use owner_session::client::ClientSession;
use owner_session::line::{self, LineFrame};
use owner_session::message::{Answer, Request};
use owner_session::noise;
use owner_session::server::EndReason;
use shadow_devices::mgmt;
use shadow_devices::uart16550::registers::{LSR, LSR_BI, LSR_DR, RBR};
use ultracall_abi::{KeyAccess, OwnerKey, VmTag};

use super::Owners;
use crate::config::ConsoleMode;
use crate::console::Console;
use crate::shadow::Shadow;

const L0_PRIVATE: [u8; 32] = [0x42; 32];

fn entropy(buf: &mut [u8]) -> bool {
    use core::sync::atomic::{AtomicU8, Ordering};
    static N: AtomicU8 = AtomicU8::new(1);
    for b in buf.iter_mut() {
        *b = N.fetch_add(37, Ordering::Relaxed);
    }
    true
}

struct Host {
    sh: Shadow,
    con: Console,
}

fn host(mode: ConsoleMode, identity: Option<Option<[u8; 32]>>) -> Host {
    let mut con = Console::default();
    con.owners = Owners::new(identity, entropy, mode);
    // Room for one used port's history (each test its own budget).
    con.owners.histories = alloc::boxed::Box::leak(alloc::boxed::Box::new(
        shadow_devices::uart16550::history::HistoryBudget::new(1),
    ));
    Host {
        sh: Shadow::new(None, entropy),
        con,
    }
}

/// Sends one frame body; the bodies L0 answered.
fn send(h: &mut Host, body: &str) -> Vec<String> {
    let f = mgmt::frame(format_args!("{body}"));
    h.con
        .feed(&mut h.sh, f.as_bytes())
        .iter()
        .map(|l| String::from(mgmt::parse_frame(l).unwrap()))
        .collect()
}

/// Sends a Noise message on `channel`; L0's answer frame.
fn exchange(h: &mut Host, channel: u32, msg: &[u8]) -> LineFrame<'static> {
    let mut out = send(h, &line::message_body(channel, msg));
    assert_eq!(out.len(), 1, "{out:?}");
    let body: &'static str = alloc::boxed::Box::leak(out.remove(0).into_boxed_str());
    line::parse(body).unwrap()
}

fn open(h: &mut Host, private: &[u8; 32], channel: u32) -> ClientSession {
    let l0_public = noise::public_key(&L0_PRIVATE);
    let (mut c, hello) = ClientSession::start(private, &l0_public, entropy).unwrap();
    match exchange(h, channel, &hello) {
        LineFrame::Message { bytes, .. } => c.finish(&bytes).unwrap(),
        other => panic!("{other:?}"),
    }
    c
}

fn ask(h: &mut Host, c: &mut ClientSession, channel: u32, r: Request) -> Answer {
    let m = c.request(&r).unwrap();
    match exchange(h, channel, &m) {
        LineFrame::Message { bytes, .. } => c.answer(&bytes).unwrap(),
        other => panic!("{other:?}"),
    }
}

const ALPHA: u64 = 3;

/// A VM `alpha` whose owner registered `rw`'s key, and printed a prompt.
fn alpha(h: &mut Host, rw: &[u8; 32]) {
    h.sh.register_tag(ALPHA, VmTag::new(b"alpha").unwrap())
        .unwrap();
    let mut vm = h.sh.devices.vm(ALPHA);
    let key = OwnerKey(noise::public_key(rw));
    shadow_devices::owner_keys::register_first_key(&mut vm, key, KeyAccess::ReadWrite).unwrap();
    drop(vm);
    super::keep_history(&mut h.sh, ALPHA, h.con.owners.histories);
    for &b in b"alpha$ " {
        h.sh.io(ALPHA, 0x3f8, Some(b));
    }
}

fn attach() -> Request {
    Request::Attach {
        tag: VmTag::new(b"alpha").unwrap(),
        port: 0x3f8,
    }
}

#[test]
fn an_owner_session_over_the_line_reads_types_and_breaks() {
    let mut h = host(ConsoleMode::Owners, Some(Some(L0_PRIVATE)));
    let rw = [1u8; 32];
    alpha(&mut h, &rw);
    let mut c = open(&mut h, &rw, 7);
    assert!(matches!(
        ask(&mut h, &mut c, 7, attach()),
        Answer::Attached {
            access: KeyAccess::ReadWrite,
            writer: true,
            start: 0,
            end: 7
        }
    ));
    assert_eq!(
        ask(&mut h, &mut c, 7, Request::Read { from: 0, max: 100 }),
        Answer::Output {
            start: 0,
            end: 7,
            bytes: b"alpha$ ".to_vec()
        }
    );
    assert_eq!(
        ask(&mut h, &mut c, 7, Request::Input(b"l".to_vec())),
        Answer::Taken(1)
    );
    assert_ne!(h.sh.io(ALPHA, 0x3fd, None) & LSR_DR, 0);
    assert_eq!(h.sh.io(ALPHA, 0x3f8 + RBR as u16, None), b'l');
    // The break: a NUL in RBR with LSR.BI set for it.
    assert_eq!(
        ask(&mut h, &mut c, 7, Request::Break(Vec::new())),
        Answer::Taken(1)
    );
    assert_eq!(
        h.sh.io(ALPHA, 0x3f8 + LSR as u16, None) & (LSR_BI | LSR_DR),
        LSR_BI | LSR_DR
    );
    assert_eq!(h.sh.io(ALPHA, 0x3f8 + RBR as u16, None), 0);
    // Behind a typed byte the guest has not read, a break is not taken
    // (it would be pinned to that byte): the client sends it again.
    assert_eq!(
        ask(&mut h, &mut c, 7, Request::Input(b"x".to_vec())),
        Answer::Taken(1)
    );
    assert_eq!(
        ask(&mut h, &mut c, 7, Request::Break(Vec::new())),
        Answer::Taken(0)
    );
    assert_eq!(h.sh.io(ALPHA, 0x3f8 + LSR as u16, None) & LSR_BI, 0);
    // Once read, a break with a SysRq key behind it: the NUL with BI,
    // then the key (1 for the break, 1 for the key).
    assert_eq!(h.sh.io(ALPHA, 0x3f8 + RBR as u16, None), b'x');
    assert_eq!(
        ask(&mut h, &mut c, 7, Request::Break(b"h".to_vec())),
        Answer::Taken(2)
    );
    assert_ne!(h.sh.io(ALPHA, 0x3f8 + LSR as u16, None) & LSR_BI, 0);
    assert_eq!(h.sh.io(ALPHA, 0x3f8 + RBR as u16, None), 0);
    assert_eq!(h.sh.io(ALPHA, 0x3f8 + RBR as u16, None), b'h');
    // In console=owners the plain protocol is refused.
    let out = send(&mut h, "list");
    assert!(out[0].contains("operator protocol is off"), "{out:?}");
}

#[test]
fn the_line_says_who_l0_is_or_why_sessions_are_off() {
    let mut h = host(ConsoleMode::Operator, Some(Some(L0_PRIVATE)));
    let fp = alloc::format!("{}", OwnerKey(noise::public_key(&L0_PRIVATE)));
    assert_eq!(send(&mut h, "owner-id"), [alloc::format!("owner-id {fp}")]);
    assert!(h.con.owners.boot_line().ends_with(&fp));
    let mut off = host(ConsoleMode::Operator, Some(None));
    assert!(off.con.owners.boot_line().contains("malformed"));
    let out = send(&mut off, "owner-id");
    assert!(out[0].starts_with("owner-id off "), "{out:?}");
    let rw = [1u8; 32];
    let (_, hello) = ClientSession::start(&rw, &noise::public_key(&L0_PRIVATE), entropy).unwrap();
    assert_eq!(
        exchange(&mut off, 1, &hello),
        LineFrame::End {
            channel: 1,
            reason: Some(EndReason::Off)
        }
    );
    let none = host(ConsoleMode::Operator, None);
    assert!(none
        .con
        .owners
        .boot_line()
        .contains("no l0.identity module"));
}

#[test]
fn a_damaged_frame_ends_the_session_and_nothing_reaches_the_vm() {
    let mut h = host(ConsoleMode::Operator, Some(Some(L0_PRIVATE)));
    let rw = [1u8; 32];
    alpha(&mut h, &rw);
    let mut c = open(&mut h, &rw, 2);
    assert!(matches!(
        ask(&mut h, &mut c, 2, attach()),
        Answer::Attached { .. }
    ));
    let mut m = c.request(&Request::Input(b"reboot\r".to_vec())).unwrap();
    m[5] ^= 0x80;
    assert_eq!(
        exchange(&mut h, 2, &m),
        LineFrame::End {
            channel: 2,
            reason: Some(EndReason::AuthFailed)
        }
    );
    assert_eq!(
        h.sh.io(ALPHA, 0x3fd, None) & LSR_DR,
        0,
        "no input reached the UART"
    );
    // A key no VM registered opens no session.
    let (_, hello) =
        ClientSession::start(&[9u8; 32], &noise::public_key(&L0_PRIVATE), entropy).unwrap();
    assert_eq!(
        exchange(&mut h, 3, &hello),
        LineFrame::End {
            channel: 3,
            reason: Some(EndReason::UnknownKey)
        }
    );
    // In console=operator the plain protocol still works beside it.
    assert!(send(&mut h, "ping")[0] == "pong");
    // A malformed owner frame is answered, never acted on.
    assert_eq!(send(&mut h, "owner 1 zz"), ["err owner frame: malformed"]);
}

#[test]
fn histories_stay_within_their_share_of_l0_mem() {
    // l0_mem=32M: a 16 MiB heap, 8 MiB of it for 7 used ports' histories.
    assert_eq!(super::histories_for_l0_mem(32 << 20), 7);
    assert_eq!(super::heap_for_l0_mem(32 << 20), 16 << 20);
    let mut h = host(ConsoleMode::Operator, Some(Some(L0_PRIVATE)));
    let rw = [1u8; 32];
    alpha(&mut h, &rw); // its prompt on COM1 takes the budget of 1
    assert_eq!(h.con.owners.histories.left(), 0);
    const BETA: u64 = 4;
    h.sh.register_tag(BETA, VmTag::new(b"beta").unwrap())
        .unwrap();
    let key = OwnerKey(noise::public_key(&rw));
    let mut vm = h.sh.devices.vm(BETA);
    shadow_devices::owner_keys::register_first_key(&mut vm, key, KeyAccess::ReadWrite).unwrap();
    drop(vm);
    super::keep_history(&mut h.sh, BETA, h.con.owners.histories);
    for &b in b"beta$ " {
        h.sh.io(BETA, 0x3f8, Some(b));
    }
    // Beta's owner still attaches and types; its reads are refused by name.
    let mut c = open(&mut h, &rw, 9);
    let beta = Request::Attach {
        tag: VmTag::new(b"beta").unwrap(),
        port: 0x3f8,
    };
    assert!(matches!(
        ask(&mut h, &mut c, 9, beta),
        Answer::Attached {
            access: KeyAccess::ReadWrite,
            writer: true,
            ..
        }
    ));
    assert_eq!(
        ask(&mut h, &mut c, 9, Request::Read { from: 0, max: 64 }),
        Answer::Refused(owner_session::message::Refusal::NoHistory)
    );
    assert_eq!(
        ask(&mut h, &mut c, 9, Request::Input(b"x".to_vec())),
        Answer::Taken(1)
    );
    assert_ne!(h.sh.io(BETA, 0x3fd, None) & LSR_DR, 0, "beta got it");
    // Alpha's history is whole.
    let mut a = open(&mut h, &rw, 10);
    assert!(matches!(
        ask(&mut h, &mut a, 10, attach()),
        Answer::Attached { .. }
    ));
    assert_eq!(
        ask(&mut h, &mut a, 10, Request::Read { from: 0, max: 64 }),
        Answer::Output {
            start: 0,
            end: 7,
            bytes: b"alpha$ ".to_vec()
        }
    );
}

#[test]
fn random_owner_frames_change_nothing_and_never_panic() {
    let mut h = host(ConsoleMode::Owners, Some(Some(L0_PRIVATE)));
    let rw = [1u8; 32];
    alpha(&mut h, &rw);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // An open session whose channel the junk also hits.
    let mut c = open(&mut h, &rw, 5);
    assert!(matches!(
        ask(&mut h, &mut c, 5, attach()),
        Answer::Attached { .. }
    ));
    for _ in 0..500 {
        let len = (next() % 600) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let channel = (next() % 8) as u32;
        let body = match next() % 4 {
            0 => line::message_body(channel, &bytes),
            1 => alloc::format!("owner {channel} {}", String::from_utf8_lossy(&bytes)),
            2 => alloc::format!("owner-end {channel} {}", next() % 9),
            _ => String::from_utf8_lossy(&bytes).into_owned(),
        };
        let _ = h
            .con
            .feed(&mut h.sh, mgmt::frame(format_args!("{body}")).as_bytes());
        let _ = h.con.feed(&mut h.sh, &bytes);
    }
    assert_eq!(
        h.sh.io(ALPHA, 0x3fd, None) & LSR_DR,
        0,
        "nothing typed reached alpha"
    );
    assert_eq!(h.sh.devices.get(&ALPHA).unwrap().owner_keys().len(), 1);
}

/// A Noise message through the relay's path; L0's outcome.
fn relay(h: &mut Host, channel: u32, msg: &[u8]) -> owner_session::server::Outcome {
    h.con.owners.relay_message(&mut h.sh, channel, msg)
}

fn open_on_relay(h: &mut Host, private: &[u8; 32], channel: u32) -> ClientSession {
    use owner_session::server::Outcome;
    let l0_public = noise::public_key(&L0_PRIVATE);
    let (mut c, hello) = ClientSession::start(private, &l0_public, entropy).unwrap();
    match relay(h, channel, &hello) {
        Outcome::Reply(bytes) => c.finish(&bytes).unwrap(),
        other => panic!("{other:?}"),
    }
    c
}

fn ask_on_relay(h: &mut Host, c: &mut ClientSession, channel: u32, r: Request) -> Answer {
    use owner_session::server::Outcome;
    let m = c.request(&r).unwrap();
    match relay(h, channel, &m) {
        Outcome::Reply(bytes) => c.answer(&bytes).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_relay_carries_sessions_apart_from_the_lines() {
    use owner_session::server::Outcome;
    let mut h = host(ConsoleMode::Owners, Some(Some(L0_PRIVATE)));
    let fp = alloc::format!("{}", OwnerKey(noise::public_key(&L0_PRIVATE)));
    assert_eq!(h.con.owners.relay_identity(), fp);
    let rw = [1u8; 32];
    alpha(&mut h, &rw);
    // Channel 4 on the line and channel 4 on the relay are two sessions.
    let mut on_line = open(&mut h, &rw, 4);
    let mut on_relay = open_on_relay(&mut h, &rw, 4);
    assert!(matches!(
        ask_on_relay(&mut h, &mut on_relay, 4, attach()),
        Answer::Attached { writer: true, .. }
    ));
    assert!(matches!(
        ask(&mut h, &mut on_line, 4, attach()),
        Answer::Attached { writer: false, .. }
    ));
    assert_eq!(
        ask_on_relay(&mut h, &mut on_relay, 4, Request::Input(b"x".to_vec())),
        Answer::Taken(1)
    );
    assert_eq!(h.sh.io(ALPHA, 0x3f8 + RBR as u16, None), b'x');
    // A flipped bit on the relay ends the relay's session alone, and
    // nothing of it reaches the VM.
    let mut m = on_relay.request(&Request::Input(b"y".to_vec())).unwrap();
    m[3] ^= 1;
    assert_eq!(relay(&mut h, 4, &m), Outcome::End(EndReason::AuthFailed));
    assert_eq!(h.sh.io(ALPHA, 0x3fd, None) & LSR_DR, 0);
    assert!(matches!(
        ask(&mut h, &mut on_line, 4, Request::Read { from: 0, max: 10 }),
        Answer::Output { .. }
    ));
    // The relay's connection closes: L0 forgets its session; the
    // channel's next message is a handshake again.
    let mut again = open_on_relay(&mut h, &rw, 5);
    h.con.owners.relay_forget(5);
    let m = again.request(&Request::Read { from: 0, max: 10 }).unwrap();
    assert_eq!(
        relay(&mut h, 5, &m),
        Outcome::End(EndReason::HandshakeFailed)
    );
}

#[test]
fn a_relay_session_pushed_out_hears_why_at_its_next_message() {
    use owner_session::server::{Outcome, MAX_SESSIONS};
    let mut h = host(ConsoleMode::Owners, Some(Some(L0_PRIVATE)));
    let off = h.con.owners.relay_identity();
    assert!(!off.starts_with("off "), "{off}");
    let rw = [1u8; 32];
    alpha(&mut h, &rw);
    let mut first = open_on_relay(&mut h, &rw, 100);
    for ch in 0..MAX_SESSIONS as u32 {
        let _ = open_on_relay(&mut h, &rw, ch);
    }
    let m = first.request(&Request::Read { from: 0, max: 10 }).unwrap();
    assert_eq!(relay(&mut h, 100, &m), Outcome::End(EndReason::Evicted));
    // Told once; after that the channel is a new handshake.
    assert_eq!(
        relay(&mut h, 100, &m),
        Outcome::End(EndReason::HandshakeFailed)
    );
    let mut no_identity = host(ConsoleMode::Owners, None);
    assert_eq!(
        no_identity.con.owners.relay_identity(),
        "off no l0.identity module"
    );
}

#[test]
fn an_owners_history_continues_at_its_offsets_on_the_host_a_vm_migrates_to() {
    use shadow_devices::SealKey;
    let keyed = |h: &mut Host| h.sh = Shadow::new(Some(SealKey::new(&[9; 32])), entropy);
    let rw = [1u8; 32];
    let mut a = host(ConsoleMode::Operator, Some(Some(L0_PRIVATE)));
    keyed(&mut a);
    alpha(&mut a, &rw); // "alpha$ " at offsets 0..7
    let tag = VmTag::new(b"alpha").unwrap();
    let mut blob = Vec::new();
    a.sh.save_with(&tag, |b| {
        blob = b.to_vec();
        Ok::<(), ()>(())
    })
    .unwrap()
    .unwrap();
    // Host B: the resumed VM registers its tag and prints before its
    // devices are restored; then the restore brings the key and history.
    let mut b = host(ConsoleMode::Operator, Some(Some(L0_PRIVATE)));
    keyed(&mut b);
    const RESUMED: u64 = 7;
    b.sh.register_tag(RESUMED, tag).unwrap();
    b.sh.io(RESUMED, 0x3f8, Some(b'!'));
    let r = b.sh.restore(&tag, &blob).unwrap();
    super::restored(&mut b.sh, r.vm, b.con.owners.histories);
    // The operator hears, at the line's next visit, where it continues.
    let told = b.sh.take_notices();
    let restore = told
        .iter()
        .find_map(|n| match n {
            crate::shadow::Notice::Restore { vm, result, .. } => Some((*vm, result.clone())),
            _ => None,
        })
        .expect("a restore notice");
    assert_eq!(restore.0, Some(RESUMED));
    assert_eq!(restore.1.unwrap().histories, vec![(0x3f8, 0, 8)]);
    let mut c = open(&mut b, &rw, 4);
    assert!(matches!(
        ask(&mut b, &mut c, 4, attach()),
        Answer::Attached {
            start: 0,
            end: 8,
            ..
        }
    ));
    // A's bytes at their old offsets, the window's byte right after.
    assert_eq!(
        ask(&mut b, &mut c, 4, Request::Read { from: 0, max: 64 }),
        Answer::Output {
            start: 0,
            end: 8,
            bytes: b"alpha$ !".to_vec()
        }
    );
    // New output follows.
    b.sh.io(RESUMED, 0x3f8, Some(b'x'));
    assert_eq!(
        ask(&mut b, &mut c, 4, Request::Read { from: 8, max: 64 }),
        Answer::Output {
            start: 8,
            end: 9,
            bytes: b"x".to_vec()
        }
    );
}
