//! Owner frames on the management line, beside the operator's protocol
//! (docs/console-protocol.md): the bodies of `@... #xx` lines
//! (`shadow_devices::mgmt` adds and checks the checksum). A transport-
//! neutral frame is a channel number and a Noise message; the line
//! writes the message in hex.
//!
//! | body | direction | meaning |
//! |------|-----------|---------|
//! | `owner-id` | client → L0 | asks for L0's identity |
//! | `owner-id <base64>` / `owner-id off <why>` | L0 → client | the public key owners pin, or why sessions are off |
//! | `owner <channel> <hex>` | both | a Noise message of that channel's session |
//! | `owner-end <channel> <code> <text>` | L0 → client | L0 ended the channel's session |

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::server::EndReason;

/// One owner frame read from a line body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineFrame<'a> {
    /// `owner-id` (a question).
    IdQuery,
    /// `owner-id <base64>`.
    Id(&'a str),
    /// `owner-id off <why>`.
    IdOff(&'a str),
    /// `owner <channel> <hex>`.
    Message {
        /// The transport's channel number.
        channel: u32,
        /// The Noise message.
        bytes: Vec<u8>,
    },
    /// `owner-end <channel> <code> <text>`.
    End {
        /// The channel.
        channel: u32,
        /// Why, when the code is known.
        reason: Option<EndReason>,
    },
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `owner <channel> <hex>`.
pub fn message_body(channel: u32, bytes: &[u8]) -> String {
    alloc::format!("owner {channel} {}", hex(bytes))
}

/// `owner-end <channel> <code> <text>`.
pub fn end_body(channel: u32, reason: EndReason) -> String {
    alloc::format!("owner-end {channel} {} {}", reason as u8, reason.text())
}

/// Whether a frame body is an owner frame at all (so the operator's
/// parser never sees it).
pub fn is_owner_body(body: &str) -> bool {
    body == "owner-id" || body.starts_with("owner ") || body.starts_with("owner-")
}

/// Reads an owner frame body; None when it is malformed or not one.
pub fn parse(body: &str) -> Option<LineFrame<'_>> {
    if body == "owner-id" {
        return Some(LineFrame::IdQuery);
    }
    if let Some(rest) = body.strip_prefix("owner-id ") {
        return Some(match rest.strip_prefix("off ") {
            Some(why) => LineFrame::IdOff(why),
            None => LineFrame::Id(rest),
        });
    }
    if let Some(rest) = body.strip_prefix("owner-end ") {
        let mut w = rest.splitn(3, ' ');
        let channel = w.next()?.parse().ok()?;
        let code: u8 = w.next()?.parse().ok()?;
        return Some(LineFrame::End {
            channel,
            reason: EndReason::from_code(code),
        });
    }
    let rest = body.strip_prefix("owner ")?;
    let (channel, hex) = rest.split_once(' ')?;
    let bytes = unhex(hex)?;
    if bytes.is_empty() || bytes.len() > crate::message::MAX_NOISE_MESSAGE {
        return None;
    }
    Some(LineFrame::Message {
        channel: channel.parse().ok()?,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        let b = message_body(7, &[1, 2, 0xff]);
        assert_eq!(b, "owner 7 0102ff");
        assert_eq!(
            parse(&b),
            Some(LineFrame::Message {
                channel: 7,
                bytes: alloc::vec![1, 2, 0xff]
            })
        );
        let e = end_body(9, EndReason::AuthFailed);
        assert_eq!(
            parse(&e),
            Some(LineFrame::End {
                channel: 9,
                reason: Some(EndReason::AuthFailed)
            })
        );
        assert_eq!(parse("owner-id"), Some(LineFrame::IdQuery));
        assert_eq!(parse("owner-id abc="), Some(LineFrame::Id("abc=")));
        assert_eq!(
            parse("owner-id off no key"),
            Some(LineFrame::IdOff("no key"))
        );
        assert!(is_owner_body(&b) && is_owner_body("owner-id") && !is_owner_body("list"));
    }

    #[test]
    fn malformed_bodies_are_none() {
        let too_long = alloc::format!(
            "owner 1 {}",
            "00".repeat(crate::message::MAX_NOISE_MESSAGE + 1)
        );
        for b in [
            "owner",
            "owner 1",
            "owner x 00",
            "owner 1 0",
            "owner 1 zz",
            "owner 1 ",
            "owner -1 00",
            "owner-end 1",
            "owner-end x 1 y",
            too_long.as_str(),
        ] {
            assert_eq!(parse(b), None, "{b:?}");
        }
    }
}
