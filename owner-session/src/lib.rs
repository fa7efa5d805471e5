//! Owner console sessions: how a VM's owner reaches its consoles through
//! L0 with nobody on the way able to read or forge the bytes
//! (docs/console-protocol.md, "Owner sessions").
//!
//! - [`noise`]: the Noise IK pattern (through `snow`, built without std),
//!   randomness given by the embedder, L0's identity key;
//! - [`message`]: the requests and answers inside a session;
//! - [`server`]: L0's session logic over a [`server::Consoles`] trait;
//! - [`client`]: the owner's side;
//! - [`line`]: owner frames on the management line.
//!
//! The session layer knows no transport: a frame is a channel number and
//! a Noise message, which the management line carries in hex and a relay
//! can carry as they are.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs, unsafe_code)]

extern crate alloc;

pub mod client;
pub mod line;
pub mod message;
pub mod noise;
pub mod server;

pub use snow;
