//! The messages inside an owner session (plaintext of Noise transport
//! messages), one request from the client, one answer from L0. Binary,
//! little-endian, the first byte names the message; docs/console-protocol.md
//! lists them. Every decoder is total: bad input is `None`, never a panic.

use alloc::vec::Vec;

use ultracall_abi::{KeyAccess, OwnerKey, VmTag, MAX_TAG_LEN};

/// Largest Noise message on any transport (the line's 1200-byte frames
/// carry it in hex).
pub const MAX_NOISE_MESSAGE: usize = ultracall_abi::MAX_RELAY_MESSAGE;
/// Noise's authentication tag.
pub const TAG_LEN: usize = 16;
/// Largest plaintext of a transport message.
pub const MAX_PLAINTEXT: usize = MAX_NOISE_MESSAGE - TAG_LEN;
/// Most console bytes one `Output` answer carries.
pub const MAX_OUTPUT: usize = MAX_PLAINTEXT - 1 - 8 - 8;
/// Most bytes one `Input` request carries.
pub const MAX_INPUT: usize = 256;
/// A `Read` request's size on the wire (its plaintext and Noise's tag):
/// every read has it, so whoever carries the messages can tell reading
/// from typing by size (docs/threat-model.md, "The owner path").
pub const READ_MESSAGE_LEN: usize = 1 + 8 + 2 + TAG_LEN;
/// An `Attach` request's size on the wire, as fixed as a read's.
pub const ATTACH_MESSAGE_LEN: usize = 1 + 2 + MAX_TAG_LEN + TAG_LEN;

/// Client → L0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Attach to a COM port of the VM holding `tag`.
    Attach {
        /// The VM's tag.
        tag: VmTag,
        /// The COM port's base (0x3f8, 0x2f8, 0x3e8, 0x2e8).
        port: u16,
    },
    /// Output from byte offset `from`, at most `max` bytes.
    Read {
        /// The first byte wanted (offsets count every byte the port ever sent).
        from: u64,
        /// At most this many (capped at [`MAX_OUTPUT`]).
        max: u16,
    },
    /// Bytes typed into the port (rw key, the port's writer).
    Input(Vec<u8>),
    /// A serial BREAK on the port (rw key, the port's writer), then
    /// these bytes (at most [`MAX_INPUT`]; often none) typed right behind
    /// it: a magic SysRq key arrives with its break, so Linux's 5 s
    /// SysRq window holds whatever the carrier's delay.
    Break(Vec<u8>),
    /// Leave the port; the session stays open.
    Detach,
    /// End the session.
    Close,
    /// Give the VM another owner key, or a known key another access
    /// (rw key only). The VM's own first registration cannot be changed
    /// from inside the VM: this is how keys are added and rotated.
    AddKey {
        /// The key.
        key: OwnerKey,
        /// What it may do.
        access: KeyAccess,
    },
    /// Remove one of the VM's keys (rw key only; never its last rw key).
    RemoveKey(OwnerKey),
}

/// Why L0 refused a request. The code travels; the text is the client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// No VM with this tag knows the session's key (an unknown tag gives
    /// the same answer, so a key cannot probe which tags exist).
    UnknownKey = 1,
    /// The key is read-only: no input, no BREAK.
    ReadOnly = 2,
    /// Another session is the port's writer.
    WriterBusy = 3,
    /// The session is not attached to a port.
    NotAttached = 4,
    /// The VM has no such COM port.
    NoPort = 5,
    /// The request did not decode.
    Malformed = 6,
    /// The VM ended (or left this host); attach again after it is back.
    VmGone = 7,
    /// The VM's devices are frozen for a migration.
    Frozen = 8,
    /// The VM holds the most keys it may.
    KeysFull = 9,
    /// The VM does not know the key to remove.
    NoSuchKey = 10,
    /// The key is the VM's last rw key.
    LastRwKey = 11,
    /// The port's output history is unavailable: L0 had no memory for it
    /// (the port itself works; input still goes through).
    NoHistory = 12,
}

impl Refusal {
    /// From its code.
    pub fn from_code(c: u8) -> Option<Refusal> {
        use Refusal::*;
        [
            UnknownKey,
            ReadOnly,
            WriterBusy,
            NotAttached,
            NoPort,
            Malformed,
            VmGone,
            Frozen,
            KeysFull,
            NoSuchKey,
            LastRwKey,
            NoHistory,
        ]
        .into_iter()
        .find(|r| *r as u8 == c)
    }

    /// What the client tells its user.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::UnknownKey => {
                "the VM does not know this key (no VM with this tag registered it)"
            }
            Refusal::ReadOnly => "this key is read-only: it cannot type or send BREAK",
            Refusal::WriterBusy => "another session is typing into this port",
            Refusal::NotAttached => "not attached to a port",
            Refusal::NoPort => "the VM has no such COM port",
            Refusal::Malformed => "L0 could not read the request",
            Refusal::VmGone => "the VM is gone from this host, or no longer knows this key",
            Refusal::Frozen => "the VM's console is frozen for a migration",
            Refusal::KeysFull => "the VM holds the most owner keys it may (8)",
            Refusal::NoSuchKey => "the VM does not know that key",
            Refusal::LastRwKey => {
                "that is the VM's last read-write key: add another before removing it"
            }
            Refusal::NoHistory => {
                "the port's output history is unavailable (L0 had no memory for it; the port still works)"
            }
        }
    }
}

/// L0 → client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Attached: the key's access, whether this session is the port's
    /// writer, and the port's output offsets (oldest kept, end).
    Attached {
        /// The key's access.
        access: KeyAccess,
        /// This session may type.
        writer: bool,
        /// Offset of the oldest byte L0 still holds.
        start: u64,
        /// Offset after the newest byte.
        end: u64,
    },
    /// Output: the bytes from `start` (≥ the offset asked for when older
    /// bytes are gone: the client sees what it missed), and the end now.
    Output {
        /// Offset of `bytes[0]`.
        start: u64,
        /// Offset after the newest byte the port has sent.
        end: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Input or BREAK taken: how many bytes the port took (the rest did
    /// not fit its queue; send them again). For a BREAK 1 plus the bytes
    /// taken behind it, or 0 (nothing done) while input typed before it
    /// is unread: send it again.
    Taken(u16),
    /// Detached.
    Detached,
    /// Closed: L0 forgot the session.
    Closed,
    /// The key was added (or its access changed): the VM now holds this many.
    KeyAdded(u8),
    /// The key was removed: the VM now holds this many.
    KeyRemoved(u8),
    /// Refused; nothing changed.
    Refused(Refusal),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl Request {
    /// The plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        match self {
            Request::Attach { tag, port } => {
                v.push(1);
                v.extend_from_slice(&port.to_le_bytes());
                v.extend_from_slice(tag.padded());
            }
            Request::Read { from, max } => {
                v.push(2);
                v.extend_from_slice(&from.to_le_bytes());
                v.extend_from_slice(&max.to_le_bytes());
            }
            Request::Input(bytes) => {
                v.push(3);
                v.extend_from_slice(bytes);
            }
            Request::Break(then) => {
                v.push(4);
                v.extend_from_slice(then);
            }
            Request::Detach => v.push(5),
            Request::Close => v.push(6),
            Request::AddKey { key, access } => {
                v.extend_from_slice(&[7, access.raw()]);
                v.extend_from_slice(&key.0);
            }
            Request::RemoveKey(key) => {
                v.push(8);
                v.extend_from_slice(&key.0);
            }
        }
        v
    }

    /// Reads a plaintext; None if it is no request.
    pub fn decode(b: &[u8]) -> Option<Request> {
        let (&kind, rest) = b.split_first()?;
        let r = match kind {
            1 if rest.len() == 2 + MAX_TAG_LEN => {
                let padded: &[u8; MAX_TAG_LEN] = rest[2..].try_into().ok()?;
                Request::Attach {
                    port: u16_at(rest, 0)?,
                    tag: VmTag::from_padded(padded).ok()?,
                }
            }
            2 if rest.len() == 10 => Request::Read {
                from: u64_at(rest, 0)?,
                max: u16_at(rest, 8)?,
            },
            3 if !rest.is_empty() && rest.len() <= MAX_INPUT => Request::Input(rest.to_vec()),
            4 if rest.len() <= MAX_INPUT => Request::Break(rest.to_vec()),
            5 if rest.is_empty() => Request::Detach,
            6 if rest.is_empty() => Request::Close,
            7 if rest.len() == 33 => Request::AddKey {
                access: KeyAccess::from_raw(u64::from(rest[0]))?,
                key: OwnerKey::from_bytes(rest[1..].try_into().ok()?).ok()?,
            },
            8 if rest.len() == 32 => {
                Request::RemoveKey(OwnerKey::from_bytes(rest.try_into().ok()?).ok()?)
            }
            _ => return None,
        };
        Some(r)
    }
}

impl Answer {
    /// The plaintext.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        match self {
            Answer::Attached {
                access,
                writer,
                start,
                end,
            } => {
                v.extend_from_slice(&[0x81, access.raw(), *writer as u8]);
                v.extend_from_slice(&start.to_le_bytes());
                v.extend_from_slice(&end.to_le_bytes());
            }
            Answer::Output { start, end, bytes } => {
                v.push(0x82);
                v.extend_from_slice(&start.to_le_bytes());
                v.extend_from_slice(&end.to_le_bytes());
                v.extend_from_slice(bytes);
            }
            Answer::Taken(n) => {
                v.push(0x83);
                v.extend_from_slice(&n.to_le_bytes());
            }
            Answer::Detached => v.push(0x84),
            Answer::Closed => v.push(0x85),
            Answer::KeyAdded(n) => v.extend_from_slice(&[0x87, *n]),
            Answer::KeyRemoved(n) => v.extend_from_slice(&[0x88, *n]),
            Answer::Refused(r) => v.extend_from_slice(&[0x86, *r as u8]),
        }
        v
    }

    /// Reads a plaintext; None if it is no answer.
    pub fn decode(b: &[u8]) -> Option<Answer> {
        let (&kind, rest) = b.split_first()?;
        let a = match kind {
            0x81 if rest.len() == 18 => Answer::Attached {
                access: KeyAccess::from_raw(u64::from(rest[0]))?,
                writer: match rest[1] {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
                start: u64_at(rest, 2)?,
                end: u64_at(rest, 10)?,
            },
            0x82 if rest.len() >= 16 && rest.len() - 16 <= MAX_OUTPUT => Answer::Output {
                start: u64_at(rest, 0)?,
                end: u64_at(rest, 8)?,
                bytes: rest[16..].to_vec(),
            },
            0x83 if rest.len() == 2 => Answer::Taken(u16_at(rest, 0)?),
            0x84 if rest.is_empty() => Answer::Detached,
            0x85 if rest.is_empty() => Answer::Closed,
            0x87 if rest.len() == 1 => Answer::KeyAdded(rest[0]),
            0x88 if rest.len() == 1 => Answer::KeyRemoved(rest[0]),
            0x86 if rest.len() == 1 => Answer::Refused(Refusal::from_code(rest[0])?),
            _ => return None,
        };
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> VmTag {
        VmTag::new(b"alpha").unwrap()
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Attach {
                tag: tag(),
                port: 0x3f8,
            },
            Request::Read {
                from: 1 << 40,
                max: 300,
            },
            Request::Input(b"ls\r".to_vec()),
            Request::Break(Vec::new()),
            Request::Break(b"h".to_vec()),
            Request::Detach,
            Request::Close,
            Request::AddKey {
                key: OwnerKey([4; 32]),
                access: KeyAccess::ReadOnly,
            },
            Request::RemoveKey(OwnerKey([5; 32])),
        ] {
            assert_eq!(Request::decode(&r.encode()), Some(r.clone()), "{r:?}");
        }
    }

    #[test]
    fn answers_round_trip() {
        for a in [
            Answer::Attached {
                access: KeyAccess::ReadOnly,
                writer: false,
                start: 3,
                end: 9,
            },
            Answer::Output {
                start: 7,
                end: 100,
                bytes: alloc::vec![0x55; MAX_OUTPUT],
            },
            Answer::Taken(12),
            Answer::Detached,
            Answer::Closed,
            Answer::KeyAdded(2),
            Answer::KeyRemoved(1),
            Answer::Refused(Refusal::WriterBusy),
        ] {
            assert_eq!(Answer::decode(&a.encode()), Some(a.clone()), "{a:?}");
        }
        for code in 1..=12 {
            assert_eq!(Refusal::from_code(code).map(|r| r as u8), Some(code));
        }
        assert_eq!(Refusal::from_code(0), None);
    }

    #[test]
    fn malformed_requests_decode_to_none() {
        let attach = Request::Attach {
            tag: tag(),
            port: 0x3f8,
        }
        .encode();
        let mut bad_tag = attach.clone();
        bad_tag[3] = b' ';
        for b in [
            &[][..],
            &[0],
            &[7],
            &attach[..attach.len() - 1],
            &bad_tag,
            &[2, 0, 0],
            &[3],
            &[6, 6],
            &[[7u8, 3].as_slice(), &[1; 32]].concat(),
            &[[7u8, 1].as_slice(), &[0; 32]].concat(),
        ] {
            assert_eq!(Request::decode(b), None, "{b:?}");
        }
        for kind in [3u8, 4] {
            let long = [&[kind][..], &[b'x'; MAX_INPUT + 1]].concat();
            assert_eq!(Request::decode(&long), None, "{kind}");
        }
    }

    #[test]
    fn the_largest_output_fits_a_noise_message() {
        let a = Answer::Output {
            start: 0,
            end: 0,
            bytes: alloc::vec![0; MAX_OUTPUT],
        };
        assert_eq!(a.encode().len() + TAG_LEN, MAX_NOISE_MESSAGE);
        let read = Request::Read { from: 9, max: 1 };
        assert_eq!(read.encode().len() + TAG_LEN, READ_MESSAGE_LEN);
        let attach = Request::Attach {
            tag: VmTag::new(b"a").unwrap(),
            port: 0x3f8,
        };
        assert_eq!(attach.encode().len() + TAG_LEN, ATTACH_MESSAGE_LEN);
    }
}
