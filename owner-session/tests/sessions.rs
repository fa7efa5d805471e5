//! Owner sessions end to end on the host: the client's state machine and
//! a plain snow peer (std, OS randomness) against L0's session logic over
//! a fake set of consoles.

use owner_session::client::{ClientError, ClientSession};
use owner_session::message::{Answer, Refusal, Request};
use owner_session::noise::{self, Identity};
use owner_session::server::{Channel, Consoles, EndReason, Outcome, OwnerSessions, MAX_SESSIONS};
use ultracall_abi::{KeyAccess, OwnerKey, VmTag};

/// A counter through BLAKE-free mixing: deterministic test randomness.
fn test_entropy(buf: &mut [u8]) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    for b in buf.iter_mut() {
        let mut x = N.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        x ^= x >> 31;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        *b = x as u8;
    }
    true
}

fn no_entropy(_: &mut [u8]) -> bool {
    false
}

struct Vm {
    tag: VmTag,
    keys: Vec<(OwnerKey, KeyAccess)>,
    /// Output history: bytes from offset `start`.
    start: u64,
    history: Vec<u8>,
    typed: Vec<u8>,
    breaks: u32,
    frozen: bool,
    gone: bool,
    /// L0 had no memory for the port's history.
    no_history: bool,
}

impl Vm {
    /// A running VM tagged `tag` holding `keys`, with no output yet.
    fn new(tag: &[u8], keys: Vec<(OwnerKey, KeyAccess)>) -> Self {
        Vm {
            tag: VmTag::new(tag).unwrap(),
            keys,
            start: 0,
            history: Vec::new(),
            typed: Vec::new(),
            breaks: 0,
            frozen: false,
            gone: false,
            no_history: false,
        }
    }
}

#[derive(Default)]
struct Fake {
    vms: Vec<Vm>,
}

impl Consoles for Fake {
    type Vm = usize;
    fn knows_key(&self, key: &OwnerKey) -> bool {
        self.vms
            .iter()
            .any(|v| v.keys.iter().any(|(k, _)| k == key))
    }
    fn find(&self, tag: &VmTag) -> Option<usize> {
        self.vms.iter().position(|v| v.tag == *tag && !v.gone)
    }
    fn key_access(&self, vm: usize, key: &OwnerKey) -> Option<KeyAccess> {
        let v = self.vms.get(vm).filter(|v| !v.gone)?;
        v.keys.iter().find(|(k, _)| k == key).map(|&(_, a)| a)
    }
    fn has_port(&self, _vm: usize, port: u16) -> bool {
        [0x3f8, 0x2f8, 0x3e8, 0x2e8].contains(&port)
    }
    fn frozen(&self, vm: usize) -> bool {
        self.vms[vm].frozen
    }
    fn offsets(&mut self, vm: usize, _port: u16) -> (u64, u64) {
        let v = &self.vms[vm];
        (v.start, v.start + v.history.len() as u64)
    }
    fn read(
        &mut self,
        vm: usize,
        _port: u16,
        from: u64,
        out: &mut [u8],
    ) -> Option<(u64, usize, u64)> {
        let v = &self.vms[vm];
        if v.no_history {
            return None;
        }
        let end = v.start + v.history.len() as u64;
        let from = from.clamp(v.start, end);
        let at = (from - v.start) as usize;
        let n = out.len().min(v.history.len() - at);
        out[..n].copy_from_slice(&v.history[at..at + n]);
        Some((from, n, end))
    }
    fn input(&mut self, vm: usize, _port: u16, bytes: &[u8]) -> usize {
        self.vms[vm].typed.extend_from_slice(bytes);
        bytes.len()
    }
    fn has_owner_keys(&self, vm: usize) -> bool {
        !self.vms[vm].keys.is_empty()
    }
    fn send_break(&mut self, vm: usize, _port: u16, then: &[u8]) -> Option<usize> {
        self.vms[vm].breaks += 1;
        self.vms[vm].typed.extend_from_slice(then);
        Some(then.len())
    }
    fn remove_key(&mut self, vm: usize, key: &OwnerKey) -> Result<usize, Refusal> {
        let keys = &mut self.vms[vm].keys;
        let i = keys
            .iter()
            .position(|(k, _)| k == key)
            .ok_or(Refusal::NoSuchKey)?;
        if !keys
            .iter()
            .enumerate()
            .any(|(j, &(_, a))| j != i && a == KeyAccess::ReadWrite)
        {
            return Err(Refusal::LastRwKey);
        }
        keys.remove(i);
        Ok(keys.len())
    }
    fn add_key(&mut self, vm: usize, key: OwnerKey, access: KeyAccess) -> Option<usize> {
        let keys = &mut self.vms[vm].keys;
        if let Some(slot) = keys.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = access;
        } else if keys.len() == 8 {
            return None;
        } else {
            keys.push((key, access));
        }
        Some(keys.len())
    }
}

struct Owner {
    private: [u8; 32],
    public: OwnerKey,
}

fn owner(seed: u8) -> Owner {
    let private = [seed; 32];
    Owner {
        private,
        public: OwnerKey(noise::public_key(&private)),
    }
}

fn identity() -> Identity {
    Identity::new([0x42; 32])
}

fn setup() -> (OwnerSessions<usize>, Fake, Owner, Owner) {
    let rw = owner(1);
    let ro = owner(2);
    let mut f = Fake::default();
    f.vms.push(Vm {
        start: 100,
        history: b"login: root\r\n$ ".to_vec(),
        ..Vm::new(
            b"alpha",
            vec![
                (rw.public, KeyAccess::ReadWrite),
                (ro.public, KeyAccess::ReadOnly),
            ],
        )
    });
    (
        OwnerSessions::new(Some(identity()), test_entropy),
        f,
        rw,
        ro,
    )
}

const fn ch(id: u32) -> Channel {
    Channel { transport: 0, id }
}

fn reply(o: Outcome) -> Vec<u8> {
    match o {
        Outcome::Reply(m) => m,
        Outcome::End(e) => panic!("session ended: {e:?}"),
    }
}

/// Opens a session for `who` on channel `id`.
fn open(s: &mut OwnerSessions<usize>, f: &mut Fake, who: &Owner, id: u32) -> ClientSession {
    let (mut c, hello) =
        ClientSession::start(&who.private, identity().public(), test_entropy).unwrap();
    c.finish(&reply(s.receive(ch(id), &hello, f))).unwrap();
    c
}

fn ask(
    s: &mut OwnerSessions<usize>,
    f: &mut Fake,
    c: &mut ClientSession,
    id: u32,
    r: Request,
) -> Answer {
    let m = c.request(&r).unwrap();
    c.answer(&reply(s.receive(ch(id), &m, f))).unwrap()
}

fn attach() -> Request {
    Request::Attach {
        tag: VmTag::new(b"alpha").unwrap(),
        port: 0x3f8,
    }
}

#[test]
fn rw_owner_attaches_reads_types_and_breaks() {
    let (mut s, mut f, rw, _) = setup();
    let mut c = open(&mut s, &mut f, &rw, 1);
    assert_eq!(
        ask(&mut s, &mut f, &mut c, 1, attach()),
        Answer::Attached {
            access: KeyAccess::ReadWrite,
            writer: true,
            start: 100,
            end: 115
        }
    );
    assert_eq!(
        ask(
            &mut s,
            &mut f,
            &mut c,
            1,
            Request::Read { from: 107, max: 4 }
        ),
        Answer::Output {
            start: 107,
            end: 115,
            bytes: b"root".to_vec()
        }
    );
    // Older than what L0 holds: the answer starts at the oldest byte, so
    // the client knows it missed 100 - 0 bytes.
    assert_eq!(
        ask(&mut s, &mut f, &mut c, 1, Request::Read { from: 0, max: 5 }),
        Answer::Output {
            start: 100,
            end: 115,
            bytes: b"login".to_vec()
        }
    );
    assert_eq!(
        ask(
            &mut s,
            &mut f,
            &mut c,
            1,
            Request::Input(b"uname\r".to_vec())
        ),
        Answer::Taken(6)
    );
    assert_eq!(
        ask(&mut s, &mut f, &mut c, 1, Request::Break(Vec::new())),
        Answer::Taken(1)
    );
    assert_eq!(f.vms[0].typed, b"uname\r");
    assert_eq!(f.vms[0].breaks, 1);
    assert_eq!(
        ask(&mut s, &mut f, &mut c, 1, Request::Detach),
        Answer::Detached
    );
    assert_eq!(
        ask(&mut s, &mut f, &mut c, 1, Request::Input(b"x".to_vec())),
        Answer::Refused(Refusal::NotAttached)
    );
    assert_eq!(
        ask(&mut s, &mut f, &mut c, 1, Request::Close),
        Answer::Closed
    );
    assert!(s.is_empty());
}

#[test]
fn a_plain_snow_peer_with_std_opens_a_session() {
    let (mut s, mut f, rw, _) = setup();
    let params: snow::params::NoiseParams = noise::PATTERN.parse().unwrap();
    let mut hs = snow::Builder::new(params)
        .local_private_key(&rw.private)
        .unwrap()
        .remote_public_key(identity().public())
        .unwrap()
        .prologue(noise::PROLOGUE)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = hs.write_message(&[], &mut buf).unwrap();
    let r = reply(s.receive(ch(5), &buf[..n], &mut f));
    let mut p = [0u8; 1024];
    hs.read_message(&r, &mut p).unwrap();
    let mut t = hs.into_transport_mode().unwrap();
    let n = t.write_message(&attach().encode(), &mut buf).unwrap();
    let r = reply(s.receive(ch(5), &buf[..n], &mut f));
    let n = t.read_message(&r, &mut p).unwrap();
    assert!(matches!(
        Answer::decode(&p[..n]),
        Some(Answer::Attached {
            access: KeyAccess::ReadWrite,
            ..
        })
    ));
}

fn hello_naming(who: &Owner, tag: &[u8]) -> Vec<u8> {
    let tag = VmTag::new(tag).unwrap();
    ClientSession::start_for(&who.private, identity().public(), test_entropy, Some(&tag))
        .unwrap()
        .1
}

#[test]
fn an_unknown_key_naming_a_keyless_vms_tag_hears_the_vm_does_not_know_it() {
    let (mut s, mut f, _, _) = setup();
    f.vms.push(Vm::new(b"impostor", Vec::new()));
    let stranger = owner(9);
    let end = |s: &mut OwnerSessions<usize>, f: &mut Fake, hello: &[u8]| s.receive(ch(1), hello, f);
    // The VM holding the tag registered no owner key: say so.
    assert_eq!(
        end(&mut s, &mut f, &hello_naming(&stranger, b"impostor")),
        Outcome::End(EndReason::TagWithoutKey)
    );
    // alpha has owner keys: naming its tag tells nothing more than a tag
    // nobody holds, or none.
    for tag in [&b"alpha"[..], b"nobody"] {
        assert_eq!(
            end(&mut s, &mut f, &hello_naming(&stranger, tag)),
            Outcome::End(EndReason::UnknownKey),
            "{tag:?}"
        );
    }
    assert!(s.is_empty());
    // A known key naming a tag opens as without one.
    let (mut s, mut f, rw, _) = setup();
    let (mut c, hello) = ClientSession::start_for(
        &rw.private,
        identity().public(),
        test_entropy,
        Some(&VmTag::new(b"alpha").unwrap()),
    )
    .unwrap();
    c.finish(&reply(s.receive(ch(2), &hello, &mut f))).unwrap();
    assert!(matches!(
        ask(&mut s, &mut f, &mut c, 2, attach()),
        Answer::Attached { .. }
    ));
    assert_eq!(EndReason::from_code(7), Some(EndReason::TagWithoutKey));
}

#[test]
fn a_handshake_payload_neither_empty_nor_a_tag_does_not_open() {
    let (mut s, mut f, rw, _) = setup();
    let padded_bad_tag = [b' '; 32];
    for payload in [&b"alpha"[..], &padded_bad_tag] {
        let l0 = identity();
        let mut hs = noise::builder(test_entropy)
            .local_private_key(&rw.private)
            .and_then(|b| b.remote_public_key(l0.public()))
            .and_then(|b| b.prologue(noise::PROLOGUE))
            .and_then(|b| b.build_initiator())
            .unwrap();
        let mut hello = vec![0u8; 600];
        let n = hs.write_message(payload, &mut hello).unwrap();
        assert_eq!(
            s.receive(ch(1), &hello[..n], &mut f),
            Outcome::End(EndReason::HandshakeFailed),
            "{payload:?}"
        );
    }
    assert!(s.is_empty());
}

#[test]
fn an_unknown_key_or_tag_is_refused_alike() {
    // A key no VM registered holds no session at all.
    let (mut s, mut f, _, _) = setup();
    let stranger = owner(9);
    let (_, hello) =
        ClientSession::start(&stranger.private, identity().public(), test_entropy).unwrap();
    assert_eq!(
        s.receive(ch(1), &hello, &mut f),
        Outcome::End(EndReason::UnknownKey)
    );
    assert!(s.is_empty());
    // A key another VM registered: alpha does not know it, and a tag
    // nobody holds gets the same answer.
    let (mut s, mut f, rw, _) = setup();
    let other = owner(10);
    f.vms.push(Vm::new(
        b"gamma",
        vec![(other.public, KeyAccess::ReadWrite)],
    ));
    let mut g = open(&mut s, &mut f, &other, 7);
    assert_eq!(
        ask(&mut s, &mut f, &mut g, 7, attach()),
        Answer::Refused(Refusal::UnknownKey)
    );
    let mut c = open(&mut s, &mut f, &rw, 1);
    let other = Request::Attach {
        tag: VmTag::new(b"beta").unwrap(),
        port: 0x3f8,
    };
    assert_eq!(
        ask(&mut s, &mut f, &mut c, 1, other),
        Answer::Refused(Refusal::UnknownKey)
    );
    assert_eq!(
        ask(
            &mut s,
            &mut f,
            &mut c,
            1,
            Request::Attach {
                tag: VmTag::new(b"alpha").unwrap(),
                port: 0x80
            }
        ),
        Answer::Refused(Refusal::NoPort)
    );
}

#[test]
fn a_read_only_key_cannot_type_or_break() {
    let (mut s, mut f, _, ro) = setup();
    let mut c = open(&mut s, &mut f, &ro, 1);
    assert!(matches!(
        ask(&mut s, &mut f, &mut c, 1, attach()),
        Answer::Attached {
            access: KeyAccess::ReadOnly,
            writer: false,
            ..
        }
    ));
    for r in [
        Request::Input(b"rm -rf /\r".to_vec()),
        Request::Break(b"b".to_vec()),
    ] {
        assert_eq!(
            ask(&mut s, &mut f, &mut c, 1, r),
            Answer::Refused(Refusal::ReadOnly)
        );
    }
    assert!(f.vms[0].typed.is_empty());
    assert_eq!(f.vms[0].breaks, 0);
    assert!(matches!(
        ask(
            &mut s,
            &mut f,
            &mut c,
            1,
            Request::Read {
                from: 100,
                max: 100
            }
        ),
        Answer::Output { .. }
    ));
}

#[test]
fn a_port_without_its_history_is_refused_by_name_and_still_takes_input() {
    let (mut s, mut f, rw, _) = setup();
    f.vms[0].no_history = true;
    let mut c = open(&mut s, &mut f, &rw, 1);
    assert!(matches!(
        ask(&mut s, &mut f, &mut c, 1, attach()),
        Answer::Attached { .. }
    ));
    let read = Request::Read { from: 0, max: 100 };
    assert_eq!(
        ask(&mut s, &mut f, &mut c, 1, read),
        Answer::Refused(Refusal::NoHistory)
    );
    assert!(Refusal::NoHistory.text().contains("history is unavailable"));
    assert_eq!(
        ask(&mut s, &mut f, &mut c, 1, Request::Input(b"ls\r".to_vec())),
        Answer::Taken(3)
    );
}

#[test]
fn an_rw_session_adds_keys_and_an_ro_one_cannot() {
    let (mut s, mut f, rw, ro) = setup();
    let newcomer = owner(7);
    let mut r = open(&mut s, &mut f, &ro, 2);
    assert!(matches!(
        ask(&mut s, &mut f, &mut r, 2, attach()),
        Answer::Attached { .. }
    ));
    let add = Request::AddKey {
        key: newcomer.public,
        access: KeyAccess::ReadOnly,
    };
    assert_eq!(
        ask(&mut s, &mut f, &mut r, 2, add.clone()),
        Answer::Refused(Refusal::ReadOnly)
    );
    let mut w = open(&mut s, &mut f, &rw, 1);
    assert_eq!(
        ask(&mut s, &mut f, &mut w, 1, add.clone()),
        Answer::Refused(Refusal::NotAttached)
    );
    assert!(matches!(
        ask(&mut s, &mut f, &mut w, 1, attach()),
        Answer::Attached { .. }
    ));
    assert_eq!(ask(&mut s, &mut f, &mut w, 1, add), Answer::KeyAdded(3));
    let mut n = open(&mut s, &mut f, &newcomer, 3);
    assert!(matches!(
        ask(&mut s, &mut f, &mut n, 3, attach()),
        Answer::Attached {
            access: KeyAccess::ReadOnly,
            ..
        }
    ));
}

#[test]
fn keys_rotate_through_an_rw_session() {
    let (mut s, mut f, rw, ro) = setup();
    let next = owner(8);
    let mut w = open(&mut s, &mut f, &rw, 1);
    assert!(matches!(
        ask(&mut s, &mut f, &mut w, 1, attach()),
        Answer::Attached { .. }
    ));
    assert_eq!(
        ask(&mut s, &mut f, &mut w, 1, Request::RemoveKey(rw.public)),
        Answer::Refused(Refusal::LastRwKey)
    );
    assert_eq!(
        ask(
            &mut s,
            &mut f,
            &mut w,
            1,
            Request::RemoveKey(owner(9).public)
        ),
        Answer::Refused(Refusal::NoSuchKey)
    );
    let add = Request::AddKey {
        key: next.public,
        access: KeyAccess::ReadWrite,
    };
    assert_eq!(ask(&mut s, &mut f, &mut w, 1, add), Answer::KeyAdded(3));
    assert_eq!(
        ask(&mut s, &mut f, &mut w, 1, Request::RemoveKey(rw.public)),
        Answer::KeyRemoved(2)
    );
    // The old key's session can do nothing more.
    assert_eq!(
        ask(&mut s, &mut f, &mut w, 1, Request::Read { from: 0, max: 1 }),
        Answer::Refused(Refusal::VmGone)
    );
    // An ro key removes nothing.
    let mut r = open(&mut s, &mut f, &ro, 2);
    assert!(matches!(
        ask(&mut s, &mut f, &mut r, 2, attach()),
        Answer::Attached { .. }
    ));
    assert_eq!(
        ask(&mut s, &mut f, &mut r, 2, Request::RemoveKey(next.public)),
        Answer::Refused(Refusal::ReadOnly)
    );
    let mut n = open(&mut s, &mut f, &next, 3);
    assert!(matches!(
        ask(&mut s, &mut f, &mut n, 3, attach()),
        Answer::Attached {
            access: KeyAccess::ReadWrite,
            ..
        }
    ));
}

#[test]
fn many_readers_one_writer() {
    let (mut s, mut f, rw, ro) = setup();
    let mut a = open(&mut s, &mut f, &rw, 1);
    let mut b = open(&mut s, &mut f, &rw, 2);
    let mut r = open(&mut s, &mut f, &ro, 3);
    assert!(matches!(
        ask(&mut s, &mut f, &mut a, 1, attach()),
        Answer::Attached { writer: true, .. }
    ));
    assert!(matches!(
        ask(&mut s, &mut f, &mut b, 2, attach()),
        Answer::Attached { writer: false, .. }
    ));
    assert!(matches!(
        ask(&mut s, &mut f, &mut r, 3, attach()),
        Answer::Attached { writer: false, .. }
    ));
    assert_eq!(s.attached_to(0, 0x3f8), 3);
    assert_eq!(
        ask(&mut s, &mut f, &mut b, 2, Request::Input(b"b".to_vec())),
        Answer::Refused(Refusal::WriterBusy)
    );
    assert_eq!(
        ask(&mut s, &mut f, &mut a, 1, Request::Input(b"a".to_vec())),
        Answer::Taken(1)
    );
    assert_eq!(
        ask(&mut s, &mut f, &mut a, 1, Request::Detach),
        Answer::Detached
    );
    // The writer left: the other rw session takes over when it types.
    assert_eq!(
        ask(&mut s, &mut f, &mut b, 2, Request::Input(b"b".to_vec())),
        Answer::Taken(1)
    );
    assert_eq!(f.vms[0].typed, b"ab");
}

#[test]
fn tampered_replayed_reordered_or_injected_messages_end_the_session() {
    type Attack = fn(&[Vec<u8>]) -> Vec<u8>;
    let attacks: [Attack; 4] = [
        |m| {
            let mut x = m[0].clone();
            x[3] ^= 0x10;
            x
        },
        |m| m[0].clone(),   // replay of a message already taken
        |m| m[1].clone(),   // the second before the first
        |_| vec![0x5a; 40], // injected
    ];
    for (n, attack) in attacks.iter().enumerate() {
        let (mut s, mut f, rw, _) = setup();
        let mut c = open(&mut s, &mut f, &rw, 1);
        assert!(matches!(
            ask(&mut s, &mut f, &mut c, 1, attach()),
            Answer::Attached { .. }
        ));
        let first = c.request(&Request::Input(b"one\r".to_vec())).unwrap();
        let second = c.request(&Request::Input(b"two\r".to_vec())).unwrap();
        let msgs = [first, second];
        if n == 1 {
            // Deliver the first, then replay it.
            reply(s.receive(ch(1), &msgs[0], &mut f));
            f.vms[0].typed.clear();
        }
        let bad = attack(&msgs);
        assert_eq!(
            s.receive(ch(1), &bad, &mut f),
            Outcome::End(EndReason::AuthFailed),
            "attack {n}"
        );
        assert!(
            f.vms[0].typed.is_empty(),
            "attack {n}: something reached the VM"
        );
        assert!(s.is_empty(), "attack {n}: the session lives on");
        // The genuine message after that opens nothing: a new handshake is due.
        assert_eq!(
            s.receive(ch(1), &msgs[1], &mut f),
            Outcome::End(EndReason::HandshakeFailed)
        );
        assert!(f.vms[0].typed.is_empty());
    }
}

#[test]
fn an_altered_answer_is_detected_by_the_client() {
    let (mut s, mut f, rw, _) = setup();
    let mut c = open(&mut s, &mut f, &rw, 1);
    let m = c.request(&attach()).unwrap();
    let mut r = reply(s.receive(ch(1), &m, &mut f));
    r[0] ^= 1;
    assert_eq!(c.answer(&r), Err(ClientError::AuthFailed));
}

#[test]
fn a_wrong_pin_fails_the_handshake() {
    let (mut s, mut f, rw, _) = setup();
    let other_l0 = Identity::new([0x43; 32]);
    let (_, hello) = ClientSession::start(&rw.private, other_l0.public(), test_entropy).unwrap();
    assert_eq!(
        s.receive(ch(1), &hello, &mut f),
        Outcome::End(EndReason::HandshakeFailed)
    );
    assert!(s.is_empty());
    // And a client that pinned L0 rightly rejects an impostor's answer.
    let mut impostor = OwnerSessions::new(Some(other_l0.clone()), test_entropy);
    let (mut c, hello) =
        ClientSession::start(&rw.private, other_l0.public(), test_entropy).unwrap();
    let r = reply(impostor.receive(ch(1), &hello, &mut f));
    let (mut c2, _) = ClientSession::start(&rw.private, identity().public(), test_entropy).unwrap();
    assert_eq!(c2.finish(&r), Err(ClientError::BadHandshakeReply));
    c.finish(&r).unwrap();
}

#[test]
fn without_identity_or_entropy_or_room_no_session_opens() {
    let (_, mut f, rw, _) = setup();
    let (_, hello) = ClientSession::start(&rw.private, identity().public(), test_entropy).unwrap();
    let mut off = OwnerSessions::<usize>::new(None, test_entropy);
    assert_eq!(
        off.receive(ch(1), &hello, &mut f),
        Outcome::End(EndReason::Off)
    );
    let mut dry = OwnerSessions::<usize>::new(Some(identity()), no_entropy);
    assert_eq!(
        dry.receive(ch(1), &hello, &mut f),
        Outcome::End(EndReason::NoEntropy)
    );
    assert!(dry.is_empty());
    assert_eq!(dry.take_evicted(), None);
}

#[test]
fn a_full_l0_makes_room_by_ending_the_session_idle_longest() {
    let (mut s, mut f, rw, _) = setup();
    let mut clients: Vec<ClientSession> = (0..MAX_SESSIONS as u32)
        .map(|i| open(&mut s, &mut f, &rw, i))
        .collect();
    // Channel 0 was opened first but has just been used: 1 is idle longest.
    assert!(matches!(
        ask(&mut s, &mut f, &mut clients[0], 0, attach()),
        Answer::Attached { .. }
    ));
    let newest = open(&mut s, &mut f, &rw, 999);
    assert_eq!(s.len(), MAX_SESSIONS);
    assert_eq!(s.take_evicted(), Some(ch(1)));
    assert_eq!(s.take_evicted(), None);
    let m = clients[1]
        .request(&Request::Read { from: 0, max: 1 })
        .unwrap();
    assert_eq!(
        s.receive(ch(1), &m, &mut f),
        Outcome::End(EndReason::HandshakeFailed),
        "the evicted session is gone"
    );
    drop(newest);
    s.drop_transport(0);
    assert!(s.is_empty());
}

#[test]
fn malformed_requests_frozen_and_gone_vms_are_refused() {
    let (mut s, mut f, rw, _) = setup();
    let mut c = open(&mut s, &mut f, &rw, 1);
    assert!(matches!(
        ask(&mut s, &mut f, &mut c, 1, attach()),
        Answer::Attached { .. }
    ));
    f.vms[0].frozen = true;
    assert_eq!(
        ask(&mut s, &mut f, &mut c, 1, Request::Input(b"x".to_vec())),
        Answer::Refused(Refusal::Frozen)
    );
    f.vms[0].frozen = false;
    f.vms[0].gone = true;
    assert_eq!(
        ask(
            &mut s,
            &mut f,
            &mut c,
            1,
            Request::Read { from: 0, max: 10 }
        ),
        Answer::Refused(Refusal::VmGone)
    );
    assert!(f.vms[0].typed.is_empty());
    assert_eq!(s.len(), 1, "refusals keep the session");
}
