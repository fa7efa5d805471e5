//! L0's side of owner sessions, as plain logic over a [`Consoles`] trait:
//! the sessions, who may read and who may type, and what each request
//! does. Transports (the management line, a relay) hand it Noise messages
//! by channel and send back what it answers.
//!
//! Rules it keeps:
//! - a session opens with a Noise IK handshake to L0's identity; the
//!   owner's static key then decides, per VM, what the session may do:
//!   the VM holding the tag must have registered that key;
//! - many readers per port, one writer: the first `rw` session to attach
//!   types; others read until it detaches or its session ends;
//! - at most [`MAX_SESSIONS`] sessions at once (a documented bound: the
//!   readers of a port are among them); only a key some VM registered
//!   opens one, and when all are taken the one idle longest makes room,
//!   so sessions left behind by vanished clients never lock owners out;
//! - a message that fails authentication (altered, replayed, reordered,
//!   injected) ends its session, and nothing of it reaches a VM;
//! - a refused request changes nothing.

use alloc::vec;
use alloc::vec::Vec;

use snow::TransportState;
use ultracall_abi::{KeyAccess, OwnerKey, VmTag, MAX_TAG_LEN};

use crate::message::{Answer, Refusal, Request, MAX_NOISE_MESSAGE, MAX_OUTPUT, MAX_PLAINTEXT};
use crate::noise::{self, Entropy, Identity};

/// Most sessions L0 holds at once, over every transport.
pub const MAX_SESSIONS: usize = 16;

/// What the session layer needs of L0's shadow devices.
pub trait Consoles {
    /// L0's name of a VM.
    type Vm: Copy + Eq + core::fmt::Debug;
    /// The VM holding `tag`.
    fn find(&self, tag: &VmTag) -> Option<Self::Vm>;
    /// Whether any VM registered `key`.
    fn knows_key(&self, key: &OwnerKey) -> bool;
    /// Whether the VM registered any owner key.
    fn has_owner_keys(&self, vm: Self::Vm) -> bool;
    /// The access `key` has on `vm` (None: unknown key, or the VM is gone).
    fn key_access(&self, vm: Self::Vm, key: &OwnerKey) -> Option<KeyAccess>;
    /// Whether the VM has a COM port at `port`.
    fn has_port(&self, vm: Self::Vm, port: u16) -> bool;
    /// Whether the VM's devices are frozen (saved for a migration).
    fn frozen(&self, vm: Self::Vm) -> bool;
    /// The port's output offsets: (oldest byte held, end).
    fn offsets(&mut self, vm: Self::Vm, port: u16) -> (u64, u64);
    /// Output from `from` (or the oldest byte held, if later) into `out`:
    /// (offset of `out[0]`, bytes written, end); None when the port's
    /// history is unavailable.
    fn read(
        &mut self,
        vm: Self::Vm,
        port: u16,
        from: u64,
        out: &mut [u8],
    ) -> Option<(u64, usize, u64)>;
    /// Queues typed bytes; returns how many the port took.
    fn input(&mut self, vm: Self::Vm, port: u16, bytes: &[u8]) -> usize;
    /// A serial BREAK on the port, then `then` typed behind it: how many
    /// of those bytes the port took, or None (nothing done) when input
    /// typed before the break is still unread (the client sends it again).
    fn send_break(&mut self, vm: Self::Vm, port: u16, then: &[u8]) -> Option<usize>;
    /// Adds an owner key to the VM (or gives a known key `access`);
    /// returns how many it holds, None when it holds the most it may.
    fn add_key(&mut self, vm: Self::Vm, key: OwnerKey, access: KeyAccess) -> Option<usize>;
    /// Removes a key; how many are left, or why not.
    fn remove_key(&mut self, vm: Self::Vm, key: &OwnerKey) -> Result<usize, Refusal>;
}

/// A session's address: which transport, which of its channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channel {
    /// The transport (L0 numbers them: the line is 0).
    pub transport: u8,
    /// The transport's channel (chosen by the client side).
    pub id: u32,
}

/// Why L0 ended a session (sent in clear: a relay could forge it, which
/// is no more than the denial of service it can do anyway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    /// A message failed authentication; nothing of it reached the VM.
    AuthFailed = 1,
    /// The first message was no handshake L0 could open: not encrypted to
    /// L0's identity (the client pinned another key) or damaged.
    HandshakeFailed = 2,
    /// A newer session needed the room and this one was idle longest.
    Evicted = 3,
    /// L0 has no identity key: owner sessions are off.
    Off = 4,
    /// L0 could not draw randomness for the handshake.
    NoEntropy = 5,
    /// No VM on this L0 registered the client's key (and the handshake
    /// named no tag, or one no VM holds).
    UnknownKey = 6,
    /// No VM on this L0 registered the client's key, and the VM holding
    /// the tag the handshake named registered no owner key at all: an
    /// impostor, or not the VM the owner registered the key in. (A VM
    /// with owner keys is answered [`EndReason::UnknownKey`]: whoever
    /// names its tag learns nothing of it; docs/threat-model.md.)
    TagWithoutKey = 7,
}

impl EndReason {
    /// From its code.
    pub fn from_code(c: u8) -> Option<EndReason> {
        use EndReason::*;
        [
            AuthFailed,
            HandshakeFailed,
            Evicted,
            Off,
            NoEntropy,
            UnknownKey,
            TagWithoutKey,
        ]
        .into_iter()
        .find(|r| *r as u8 == c)
    }

    /// What the client tells its user.
    pub fn text(self) -> &'static str {
        match self {
            EndReason::AuthFailed => {
                "a message failed authentication (altered, replayed, reordered or injected); the session is over and nothing of it reached the VM"
            }
            EndReason::HandshakeFailed => {
                "L0 could not open the handshake: it was not encrypted to L0's identity (wrong pinned fingerprint?) or was damaged"
            }
            EndReason::Off => "owner sessions are off on this L0 (no identity key)",
            EndReason::NoEntropy => "L0 could not draw randomness for the handshake",
            EndReason::UnknownKey => {
                "no VM on this L0 knows this key (the VM must register it: ultracall owner-key add)"
            }
            EndReason::TagWithoutKey => {
                "the VM does not know this key: a VM with the tag you named runs on this L0 but never registered your key (not the VM you registered it in: an impostor, or a VM that lost its keys)"
            }
            EndReason::Evicted => {
                "the session was idle longest when L0 needed room for another; open a new one"
            }
        }
    }
}

/// What L0 sends back for a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A Noise message for the channel.
    Reply(Vec<u8>),
    /// The session is over (or never began).
    End(EndReason),
}

#[derive(Clone, Copy, Debug)]
struct Attachment<V> {
    vm: V,
    port: u16,
    writer: bool,
}

struct Session<V> {
    channel: Channel,
    transport: TransportState,
    key: OwnerKey,
    attached: Option<Attachment<V>>,
    /// When it last sent a message (L0's message count).
    last_used: u64,
}

/// Every owner session of this L0.
pub struct OwnerSessions<V> {
    identity: Option<Identity>,
    entropy: Entropy,
    sessions: Vec<Session<V>>,
    /// Messages received: the clock of `last_used`.
    clock: u64,
    /// The channel the last new session pushed out.
    evicted: Option<Channel>,
}

impl<V: Copy + Eq + core::fmt::Debug> OwnerSessions<V> {
    /// With L0's identity (None: sessions are off and every handshake is
    /// answered [`EndReason::Off`]).
    pub fn new(identity: Option<Identity>, entropy: Entropy) -> Self {
        OwnerSessions {
            identity,
            entropy,
            sessions: Vec::new(),
            clock: 0,
            evicted: None,
        }
    }

    /// L0's identity, if it has one.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// How many sessions are attached to `vm`'s `port`.
    pub fn attached_to(&self, vm: V, port: u16) -> usize {
        self.sessions
            .iter()
            .filter(|s| s.attached.is_some_and(|a| a.vm == vm && a.port == port))
            .count()
    }

    /// Whether `channel` has a session.
    pub fn has(&self, channel: Channel) -> bool {
        self.sessions.iter().any(|s| s.channel == channel)
    }

    /// Forgets one channel's session (its connection went away).
    pub fn forget(&mut self, channel: Channel) {
        self.sessions.retain(|s| s.channel != channel);
    }

    /// Forgets every session of a transport (its connection went away).
    pub fn drop_transport(&mut self, transport: u8) {
        self.sessions.retain(|s| s.channel.transport != transport);
    }

    /// One Noise message from `channel`; what to send back, if anything.
    pub fn receive<C: Consoles<Vm = V>>(
        &mut self,
        channel: Channel,
        msg: &[u8],
        consoles: &mut C,
    ) -> Outcome {
        self.clock += 1;
        match self.sessions.iter().position(|s| s.channel == channel) {
            None => self.open(channel, msg, consoles),
            Some(i) => {
                self.sessions[i].last_used = self.clock;
                self.request(i, msg, consoles)
            }
        }
    }

    /// The session idle longest, when all are taken.
    fn evict(&mut self) -> Option<Channel> {
        if self.sessions.len() < MAX_SESSIONS {
            return None;
        }
        let (i, _) = self
            .sessions
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.last_used)?;
        Some(self.sessions.remove(i).channel)
    }

    /// The channel a new session pushed out, to tell its client
    /// ([`EndReason::Evicted`]); taken once.
    pub fn take_evicted(&mut self) -> Option<Channel> {
        self.evicted.take()
    }

    fn open<C: Consoles<Vm = V>>(&mut self, channel: Channel, msg: &[u8], c: &mut C) -> Outcome {
        let Some(identity) = &self.identity else {
            return Outcome::End(EndReason::Off);
        };
        let hs = noise::builder(self.entropy)
            .local_private_key(identity.private())
            .and_then(|b| b.prologue(noise::PROLOGUE))
            .and_then(|b| b.build_responder());
        let Ok(mut hs) = hs else {
            return Outcome::End(EndReason::HandshakeFailed);
        };
        let mut payload = [0u8; MAX_NOISE_MESSAGE];
        let Ok(n) = hs.read_message(msg, &mut payload) else {
            return Outcome::End(EndReason::HandshakeFailed);
        };
        // The tag the owner means to open, if named: empty, or padded.
        let named = match n {
            0 => None,
            MAX_TAG_LEN => {
                let mut padded = [0u8; MAX_TAG_LEN];
                padded.copy_from_slice(&payload[..n]);
                match VmTag::from_padded(&padded) {
                    Ok(t) => Some(t),
                    Err(_) => return Outcome::End(EndReason::HandshakeFailed),
                }
            }
            _ => return Outcome::End(EndReason::HandshakeFailed),
        };
        let key = hs
            .get_remote_static()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .and_then(|k| OwnerKey::from_bytes(k).ok());
        let Some(key) = key else {
            return Outcome::End(EndReason::HandshakeFailed);
        };
        // Only a key some VM registered holds a session (and its room).
        if !c.knows_key(&key) {
            let keyless_vm = named
                .and_then(|t| c.find(&t))
                .is_some_and(|vm| !c.has_owner_keys(vm));
            return Outcome::End(if keyless_vm {
                EndReason::TagWithoutKey
            } else {
                EndReason::UnknownKey
            });
        }
        let mut reply = vec![0u8; MAX_NOISE_MESSAGE];
        let n = match hs.write_message(&[], &mut reply) {
            Ok(n) => n,
            Err(snow::Error::Rng) => return Outcome::End(EndReason::NoEntropy),
            Err(_) => return Outcome::End(EndReason::HandshakeFailed),
        };
        reply.truncate(n);
        let Ok(transport) = hs.into_transport_mode() else {
            return Outcome::End(EndReason::HandshakeFailed);
        };
        self.evicted = self.evict();
        self.sessions.push(Session {
            channel,
            transport,
            key,
            attached: None,
            last_used: self.clock,
        });
        Outcome::Reply(reply)
    }

    fn request<C: Consoles<Vm = V>>(&mut self, i: usize, msg: &[u8], c: &mut C) -> Outcome {
        let mut plain = [0u8; MAX_NOISE_MESSAGE];
        let n = match self.sessions[i].transport.read_message(msg, &mut plain) {
            Ok(n) => n,
            Err(_) => {
                // Nothing of it is used: the session ends here.
                self.sessions.remove(i);
                return Outcome::End(EndReason::AuthFailed);
            }
        };
        let answer = match Request::decode(&plain[..n]) {
            None => Answer::Refused(Refusal::Malformed),
            Some(Request::Close) => {
                let a = self.seal(i, &Answer::Closed);
                self.sessions.remove(i);
                return a;
            }
            Some(r) => self.answer(i, r, c),
        };
        self.seal(i, &answer)
    }

    fn seal(&mut self, i: usize, a: &Answer) -> Outcome {
        let plain = a.encode();
        debug_assert!(plain.len() <= MAX_PLAINTEXT);
        let mut out = vec![0u8; MAX_NOISE_MESSAGE];
        match self.sessions[i].transport.write_message(&plain, &mut out) {
            Ok(n) => {
                out.truncate(n);
                Outcome::Reply(out)
            }
            // Only a nonce exhausted after 2^64 messages gets here.
            Err(_) => {
                self.sessions.remove(i);
                Outcome::End(EndReason::AuthFailed)
            }
        }
    }

    fn writer_elsewhere(&self, i: usize, vm: V, port: u16) -> bool {
        self.sessions.iter().enumerate().any(|(j, s)| {
            j != i
                && s.attached
                    .is_some_and(|a| a.vm == vm && a.port == port && a.writer)
        })
    }

    fn answer<C: Consoles<Vm = V>>(&mut self, i: usize, r: Request, c: &mut C) -> Answer {
        let key = self.sessions[i].key;
        if let Request::Attach { tag, port } = r {
            let found = c
                .find(&tag)
                .and_then(|vm| Some((vm, c.key_access(vm, &key)?)));
            let Some((vm, access)) = found else {
                return Answer::Refused(Refusal::UnknownKey);
            };
            if !c.has_port(vm, port) {
                return Answer::Refused(Refusal::NoPort);
            }
            let writer = access == KeyAccess::ReadWrite && !self.writer_elsewhere(i, vm, port);
            self.sessions[i].attached = Some(Attachment { vm, port, writer });
            let (start, end) = c.offsets(vm, port);
            return Answer::Attached {
                access,
                writer,
                start,
                end,
            };
        }
        let Some(a) = self.sessions[i].attached else {
            return Answer::Refused(Refusal::NotAttached);
        };
        // The VM may have ended, or its keys changed by a restore.
        let Some(access) = c.key_access(a.vm, &key) else {
            self.sessions[i].attached = None;
            return Answer::Refused(Refusal::VmGone);
        };
        match r {
            Request::Attach { .. } | Request::Close => Answer::Refused(Refusal::Malformed),
            Request::AddKey { .. } | Request::RemoveKey(_) if access != KeyAccess::ReadWrite => {
                Answer::Refused(Refusal::ReadOnly)
            }
            // A frozen VM's keys have left in its blob: a change now would not travel.
            Request::AddKey { .. } | Request::RemoveKey(_) if c.frozen(a.vm) => {
                Answer::Refused(Refusal::Frozen)
            }
            Request::RemoveKey(key) => match c.remove_key(a.vm, &key) {
                Ok(n) => Answer::KeyRemoved(n as u8),
                Err(r) => Answer::Refused(r),
            },
            Request::AddKey { key, access } => match c.add_key(a.vm, key, access) {
                Some(n) => Answer::KeyAdded(n as u8),
                None => Answer::Refused(Refusal::KeysFull),
            },
            Request::Detach => {
                self.sessions[i].attached = None;
                Answer::Detached
            }
            Request::Read { from, max } => {
                let mut buf = [0u8; MAX_OUTPUT];
                let want = usize::from(max).min(MAX_OUTPUT);
                let Some((start, n, end)) = c.read(a.vm, a.port, from, &mut buf[..want]) else {
                    return Answer::Refused(Refusal::NoHistory);
                };
                Answer::Output {
                    start,
                    end,
                    bytes: buf[..n].to_vec(),
                }
            }
            Request::Input(_) | Request::Break(_) if access != KeyAccess::ReadWrite => {
                Answer::Refused(Refusal::ReadOnly)
            }
            Request::Input(_) | Request::Break(_) if !a.writer => {
                // The writer left: the first rw reader to type takes over.
                if self.writer_elsewhere(i, a.vm, a.port) {
                    return Answer::Refused(Refusal::WriterBusy);
                }
                if let Some(at) = &mut self.sessions[i].attached {
                    at.writer = true;
                }
                self.write(r, a, c)
            }
            Request::Input(_) | Request::Break(_) => self.write(r, a, c),
        }
    }

    fn write<C: Consoles<Vm = V>>(&self, r: Request, a: Attachment<V>, c: &mut C) -> Answer {
        if c.frozen(a.vm) {
            return Answer::Refused(Refusal::Frozen);
        }
        match r {
            Request::Input(bytes) => Answer::Taken(c.input(a.vm, a.port, &bytes) as u16),
            Request::Break(then) => Answer::Taken(
                c.send_break(a.vm, a.port, &then)
                    .map_or(0, |n| 1 + n as u16),
            ),
            _ => Answer::Refused(Refusal::Malformed),
        }
    }
}
