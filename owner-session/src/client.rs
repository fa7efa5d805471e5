//! The owner's side of a session (the client's state machine; the
//! transport is the caller's): the IK handshake to the pinned L0 key,
//! then one request, one answer.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use snow::{HandshakeState, TransportState};
use ultracall_abi::VmTag;

use crate::message::{Answer, Request, MAX_NOISE_MESSAGE};
use crate::noise::{self, Entropy};

/// What went wrong on the client's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// snow refused to build the handshake (a bad key length).
    Setup,
    /// L0's handshake answer did not open: it does not hold the pinned key.
    BadHandshakeReply,
    /// An answer failed authentication (altered, replayed or reordered on
    /// the way): the session cannot go on.
    AuthFailed,
    /// An answer decrypted but is no answer of this protocol.
    Malformed,
    /// Used out of order (a request before the handshake finished).
    State,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientError::Setup => "could not set up the Noise handshake",
            ClientError::BadHandshakeReply => {
                "L0's handshake answer did not open: the other side does not hold the pinned key"
            }
            ClientError::AuthFailed => {
                "an answer failed authentication (altered, replayed or reordered on the way)"
            }
            ClientError::Malformed => "L0's answer is not one of this protocol",
            ClientError::State => "the session is not open",
        })
    }
}

enum State {
    Handshake(alloc::boxed::Box<HandshakeState>),
    Open(TransportState),
    Broken,
}

/// One session, from the owner's side.
pub struct ClientSession {
    state: State,
}

impl ClientSession {
    /// Starts a session with the owner's private key to L0's public key;
    /// returns the first message to send.
    pub fn start(
        own_private: &[u8; 32],
        l0_public: &[u8; 32],
        entropy: Entropy,
    ) -> Result<(ClientSession, Vec<u8>), ClientError> {
        Self::start_for(own_private, l0_public, entropy, None)
    }

    /// [`ClientSession::start`], naming (encrypted to L0, inside the
    /// handshake) the tag of the VM the owner means to open: when no VM
    /// on L0 knows the key, L0 then says whether a VM with that tag runs
    /// there ([`crate::server::EndReason::TagWithoutKey`]).
    pub fn start_for(
        own_private: &[u8; 32],
        l0_public: &[u8; 32],
        entropy: Entropy,
        tag: Option<&VmTag>,
    ) -> Result<(ClientSession, Vec<u8>), ClientError> {
        let mut hs = noise::builder(entropy)
            .local_private_key(own_private)
            .and_then(|b| b.remote_public_key(l0_public))
            .and_then(|b| b.prologue(noise::PROLOGUE))
            .and_then(|b| b.build_initiator())
            .map_err(|_| ClientError::Setup)?;
        let mut msg = vec![0u8; MAX_NOISE_MESSAGE];
        let payload = tag.map_or(&[][..], |t| &t.padded()[..]);
        let n = hs
            .write_message(payload, &mut msg)
            .map_err(|_| ClientError::Setup)?;
        msg.truncate(n);
        Ok((
            ClientSession {
                state: State::Handshake(alloc::boxed::Box::new(hs)),
            },
            msg,
        ))
    }

    /// L0's handshake answer: the session is open after it.
    pub fn finish(&mut self, reply: &[u8]) -> Result<(), ClientError> {
        let State::Handshake(hs) = core::mem::replace(&mut self.state, State::Broken) else {
            return Err(ClientError::State);
        };
        let mut hs = *hs;
        let mut payload = [0u8; MAX_NOISE_MESSAGE];
        hs.read_message(reply, &mut payload)
            .map_err(|_| ClientError::BadHandshakeReply)?;
        let t = hs
            .into_transport_mode()
            .map_err(|_| ClientError::BadHandshakeReply)?;
        self.state = State::Open(t);
        Ok(())
    }

    /// A request, sealed.
    pub fn request(&mut self, r: &Request) -> Result<Vec<u8>, ClientError> {
        let State::Open(t) = &mut self.state else {
            return Err(ClientError::State);
        };
        let mut out = vec![0u8; MAX_NOISE_MESSAGE];
        let n = t
            .write_message(&r.encode(), &mut out)
            .map_err(|_| ClientError::State)?;
        out.truncate(n);
        Ok(out)
    }

    /// An answer, opened.
    pub fn answer(&mut self, msg: &[u8]) -> Result<Answer, ClientError> {
        let State::Open(t) = &mut self.state else {
            return Err(ClientError::State);
        };
        let mut plain = [0u8; MAX_NOISE_MESSAGE];
        let n = match t.read_message(msg, &mut plain) {
            Ok(n) => n,
            Err(_) => {
                self.state = State::Broken;
                return Err(ClientError::AuthFailed);
            }
        };
        Answer::decode(&plain[..n]).ok_or(ClientError::Malformed)
    }
}
