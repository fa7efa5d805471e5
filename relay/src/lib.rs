//! `l0-relay`: the cloud VM's relay for owner sessions
//! (docs/console-protocol.md, "Through the cloud VM's relay").
//!
//! Owners' clients connect over TCP and speak the management line's
//! owner frames (`@owner-id #xx`, `@owner <channel> <hex> #xx`); the relay
//! hands each Noise message to L0 by the `OWNER_RELAY` ultracall and sends
//! back L0's answer. It sees ciphertext and sizes, nothing else. Every
//! session of every connection gets a channel of its own towards L0, so
//! connections never meet; a connection that closes makes L0 forget its
//! sessions. L0 answers each message at once (one request, one answer),
//! so the relay never polls: with no traffic it makes no ultracall.
//!
//! The logic here is plain code over an [`L0Link`]; `main.rs` adds the
//! sockets and the ultracalls. [`Tamper`] is a hostile relay for the
//! `relay-tamper` scenario: it shows what a relay can try and that each
//! attempt ends the session without reaching the VM.

use owner_session::line::{self, LineFrame};
use owner_session::message::{ATTACH_MESSAGE_LEN, READ_MESSAGE_LEN};
use owner_session::server::EndReason;
use shadow_devices::mgmt;

/// Most sessions one connection may hold (L0 holds 16 in all).
pub const SESSIONS_PER_CONNECTION: usize = 16;

/// What L0 answered to a relayed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkAnswer {
    /// A Noise message for the client.
    Message(Vec<u8>),
    /// L0 ended the session: the `owner-end` code.
    Ended(u8),
}

/// The relay's way to L0 (ultracalls in the cloud VM; a fake in tests).
pub trait L0Link {
    /// What owners pin: L0's identity in base64, or `off <why>`.
    fn identity(&mut self) -> Result<String, String>;
    /// One message on a channel.
    fn message(&mut self, channel: u32, msg: &[u8]) -> Result<LinkAnswer, String>;
    /// The channel's connection closed.
    fn forget(&mut self, channel: u32);
}

/// What a hostile relay does to the first message of a session that is
/// neither the handshake, an attach nor a read (typing, BREAK, a key
/// change, detach or close: reads and attaches have sizes of their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Flips one bit of the message.
    Flip,
    /// Sends L0 the session's previous message again instead.
    Replay,
    /// Holds the message back and hands the client L0's previous answer.
    Reorder,
    /// Drops the message; the client hears nothing.
    Drop,
    /// Sends L0 a message of its own first, and drops the client's.
    Inject,
}

impl Tamper {
    /// Every mode, in the order `--tamper all` uses them.
    pub const ALL: [Tamper; 5] = [
        Tamper::Flip,
        Tamper::Replay,
        Tamper::Reorder,
        Tamper::Drop,
        Tamper::Inject,
    ];

    /// The mode's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Tamper::Flip => "flip",
            Tamper::Replay => "replay",
            Tamper::Reorder => "reorder",
            Tamper::Drop => "drop",
            Tamper::Inject => "inject",
        }
    }

    /// `flip,replay,...` or `all`: the modes of the first connections,
    /// one each.
    pub fn parse_list(s: &str) -> Result<Vec<Tamper>, String> {
        if s == "all" {
            return Ok(Tamper::ALL.to_vec());
        }
        s.split(',')
            .map(|w| {
                Tamper::ALL
                    .into_iter()
                    .find(|t| t.name() == w)
                    .ok_or_else(|| {
                        format!("--tamper {w}: one of flip, replay, reorder, drop, inject, all")
                    })
            })
            .collect()
    }
}

/// One owner session carried by a connection.
struct Session {
    /// The client's channel number.
    client: u32,
    /// The relay's channel towards L0.
    relay: u32,
    /// Messages the client sent on it (the handshake is the first).
    sent: usize,
    previous_message: Vec<u8>,
    previous_answer: Option<Vec<u8>>,
}

/// One client connection.
pub struct Connection {
    /// The connection's number (for the log), from 1.
    pub number: u32,
    sessions: Vec<Session>,
    tamper: Option<Tamper>,
    /// What the hostile mode did, for the relay's log.
    notes: Vec<String>,
}

fn frame(body: &str) -> String {
    mgmt::frame(format_args!("{body}"))
}

impl Connection {
    pub fn new(number: u32, tamper: Option<Tamper>) -> Connection {
        Connection {
            number,
            sessions: Vec::new(),
            tamper,
            notes: Vec::new(),
        }
    }

    /// What the hostile mode did since last asked.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// One line from the client: the framed lines to send back.
    /// `new_channel` gives an unused channel towards L0.
    pub fn line(
        &mut self,
        text: &str,
        link: &mut dyn L0Link,
        new_channel: &mut dyn FnMut() -> u32,
    ) -> Vec<String> {
        let body = match mgmt::parse_frame(text) {
            Ok(b) => b,
            // Text that is no frame is ignored, as L0 ignores it on the line.
            Err(mgmt::FrameError::NotAFrame) => return Vec::new(),
            Err(e) => return vec![frame(&format!("err frame: {e:?}"))],
        };
        if !line::is_owner_body(body) {
            return vec![frame("err this relay carries owner sessions only")];
        }
        match line::parse(body) {
            Some(LineFrame::IdQuery) => match link.identity() {
                Ok(id) => vec![frame(&format!("owner-id {id}"))],
                Err(e) => vec![frame(&format!(
                    "owner-id off the relay cannot reach L0: {e}"
                ))],
            },
            Some(LineFrame::Message { channel, bytes }) => {
                self.message(channel, bytes, link, new_channel)
            }
            Some(_) | None => vec![frame("err owner frame: malformed")],
        }
    }

    fn message(
        &mut self,
        client: u32,
        msg: Vec<u8>,
        link: &mut dyn L0Link,
        new_channel: &mut dyn FnMut() -> u32,
    ) -> Vec<String> {
        let i = match self.sessions.iter().position(|s| s.client == client) {
            Some(i) => i,
            None if self.sessions.len() >= SESSIONS_PER_CONNECTION => {
                return vec![frame(&format!(
                    "err {SESSIONS_PER_CONNECTION} sessions on this connection already"
                ))]
            }
            None => {
                self.sessions.push(Session {
                    client,
                    relay: new_channel(),
                    sent: 0,
                    previous_message: Vec::new(),
                    previous_answer: None,
                });
                self.sessions.len() - 1
            }
        };
        let s = &mut self.sessions[i];
        s.sent += 1;
        // The handshake, attaches and reads pass; the first other message
        // (typing, mostly) meets the hostile mode, once per connection.
        let target = s.sent > 1 && msg.len() != READ_MESSAGE_LEN && msg.len() != ATTACH_MESSAGE_LEN;
        let mode = if target { self.tamper.take() } else { None };
        let relay = s.relay;
        let result = match mode {
            None => link.message(relay, &msg),
            Some(t) => {
                self.notes.push(format!(
                    "tampering ({}) with connection {}'s message {} of channel {client}",
                    t.name(),
                    self.number,
                    s.sent
                ));
                match t {
                    Tamper::Flip => {
                        let mut m = msg.clone();
                        let at = m.len() / 2;
                        m[at] ^= 0x04;
                        link.message(relay, &m)
                    }
                    Tamper::Replay => link.message(relay, &s.previous_message),
                    Tamper::Reorder => {
                        let old = s.previous_answer.clone().unwrap_or_default();
                        return vec![frame(&line::message_body(client, &old))];
                    }
                    Tamper::Drop => return Vec::new(),
                    Tamper::Inject => {
                        let forged: Vec<u8> = (0..msg.len())
                            .map(|i| (i as u8).wrapping_mul(151) ^ 0x5a)
                            .collect();
                        link.message(relay, &forged)
                    }
                }
            }
        };
        let s = &mut self.sessions[i];
        s.previous_message = msg;
        match result {
            Ok(LinkAnswer::Message(a)) => {
                s.previous_answer = Some(a.clone());
                vec![frame(&line::message_body(client, &a))]
            }
            Ok(LinkAnswer::Ended(code)) => {
                self.sessions.remove(i);
                vec![frame(&end_body(client, code))]
            }
            Err(e) => {
                let s = self.sessions.remove(i);
                link.forget(s.relay);
                vec![frame(&format!("err the relay cannot reach L0: {e}"))]
            }
        }
    }

    /// The client went away: L0 forgets its sessions.
    pub fn close(&mut self, link: &mut dyn L0Link) {
        for s in self.sessions.drain(..) {
            link.forget(s.relay);
        }
    }
}

/// `owner-end` for a code L0 gave (unknown codes pass as they are).
fn end_body(channel: u32, code: u8) -> String {
    match EndReason::from_code(code) {
        Some(r) => line::end_body(channel, r),
        None => format!("owner-end {channel} {code} L0 ended the session"),
    }
}

#[cfg(test)]
mod tests;
