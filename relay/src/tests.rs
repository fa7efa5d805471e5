//! The relay's logic against a fake L0 that, like Noise, takes each
//! session's messages only in order, unaltered and from its own client.

use std::collections::HashMap;

use super::*;

/// Messages are `[n, payload.., sum]`; L0 wants n = 0, 1, 2, ... per
/// channel and the right sum, and answers `[n, 0xaa]`.
#[derive(Default)]
struct FakeL0 {
    next: HashMap<u32, u8>,
    taken: Vec<(u32, Vec<u8>)>,
    forgotten: Vec<u32>,
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0, |a, x| a.wrapping_add(*x))
}

fn msg(n: u8, len: usize) -> Vec<u8> {
    let mut m = vec![n; len - 1];
    let s = sum(&m);
    m.push(s);
    m
}

impl L0Link for FakeL0 {
    fn identity(&mut self) -> Result<String, String> {
        Ok("SGVsbG8=".into())
    }
    fn message(&mut self, channel: u32, m: &[u8]) -> Result<LinkAnswer, String> {
        let want = self.next.entry(channel).or_insert(0);
        let (body, s) = m.split_at(m.len() - 1);
        if m[0] != *want || sum(body) != s[0] {
            self.next.remove(&channel);
            return Ok(LinkAnswer::Ended(1));
        }
        *want += 1;
        self.taken.push((channel, m.to_vec()));
        Ok(LinkAnswer::Message(vec![m[0], 0xaa]))
    }
    fn forget(&mut self, channel: u32) {
        self.forgotten.push(channel);
        self.next.remove(&channel);
    }
}

fn send(c: &mut Connection, l0: &mut FakeL0, next: &mut u32, ch: u32, m: &[u8]) -> String {
    let mut alloc = || {
        *next += 1;
        *next
    };
    let out = c.line(&frame(&line::message_body(ch, m)), l0, &mut alloc);
    out.concat()
}

fn answer(n: u8, ch: u32) -> String {
    frame(&line::message_body(ch, &[n, 0xaa]))
}

/// A session: handshake, attach, two reads, then typing.
fn story() -> Vec<Vec<u8>> {
    vec![
        msg(0, 48),
        msg(1, ATTACH_MESSAGE_LEN),
        msg(2, READ_MESSAGE_LEN),
        msg(3, READ_MESSAGE_LEN),
        msg(4, 30),
        msg(5, READ_MESSAGE_LEN),
    ]
}

#[test]
fn an_honest_relay_carries_every_message_and_keeps_connections_apart() {
    let (mut l0, mut next) = (FakeL0::default(), 0);
    let mut a = Connection::new(1, None);
    let mut b = Connection::new(2, None);
    for (n, m) in story().iter().enumerate() {
        // Both clients chose channel 7: L0 sees two channels.
        assert_eq!(send(&mut a, &mut l0, &mut next, 7, m), answer(n as u8, 7));
        assert_eq!(send(&mut b, &mut l0, &mut next, 7, m), answer(n as u8, 7));
    }
    assert_eq!(l0.taken.len(), 12);
    assert_eq!(next, 2);
    a.close(&mut l0);
    assert_eq!(l0.forgotten, [1]);
}

#[test]
fn damaged_and_foreign_frames_are_answered_and_change_nothing() {
    let (mut l0, mut next) = (FakeL0::default(), 0);
    let mut c = Connection::new(1, None);
    let mut alloc = || {
        next += 1;
        next
    };
    assert_eq!(
        c.line(&frame("owner-id"), &mut l0, &mut alloc),
        [frame("owner-id SGVsbG8=")]
    );
    assert_eq!(
        c.line("@owner-id #ff", &mut l0, &mut alloc),
        [frame("err frame: BadChecksum")]
    );
    assert_eq!(
        c.line(&frame("list"), &mut l0, &mut alloc),
        [frame("err this relay carries owner sessions only")]
    );
    assert_eq!(
        c.line(&frame("owner 1 zz"), &mut l0, &mut alloc),
        [frame("err owner frame: malformed")]
    );
    assert!(c.line("just text", &mut l0, &mut alloc).is_empty());
    assert!(l0.taken.is_empty());
    assert_eq!(next, 0);
}

#[test]
fn each_hostile_mode_ends_only_its_session_and_the_typing_never_reaches_l0() {
    for t in Tamper::ALL {
        let (mut l0, mut next) = (FakeL0::default(), 0);
        let mut bad = Connection::new(1, Some(t));
        let mut good = Connection::new(2, None);
        let s = story();
        let mut outs = Vec::new();
        for (n, m) in s.iter().enumerate().take(5) {
            outs.push(send(&mut bad, &mut l0, &mut next, 3, m));
            assert_eq!(
                send(&mut good, &mut l0, &mut next, 3, m),
                answer(n as u8, 3)
            );
        }
        // Reads and the attach passed untouched.
        assert_eq!(
            outs[..4],
            [answer(0, 3), answer(1, 3), answer(2, 3), answer(3, 3)]
        );
        let typed = &outs[4];
        let typing_reached_l0 = l0
            .taken
            .iter()
            .filter(|(ch, m)| *ch == 1 && m[0] == 4)
            .count();
        assert_eq!(typing_reached_l0, 0, "{t:?}");
        match t {
            Tamper::Flip | Tamper::Replay | Tamper::Inject => {
                assert_eq!(
                    *typed,
                    frame(&line::end_body(3, EndReason::AuthFailed)),
                    "{t:?}"
                )
            }
            Tamper::Reorder => assert_eq!(*typed, answer(3, 3)),
            Tamper::Drop => assert!(typed.is_empty()),
        }
        assert_eq!(bad.take_notes().len(), 1, "{t:?}");
        // The good connection's session goes on.
        assert_eq!(send(&mut good, &mut l0, &mut next, 3, &s[5]), answer(5, 3));
        // Once per connection: its next session is carried honestly.
        for (n, m) in s.iter().enumerate() {
            assert_eq!(
                send(&mut bad, &mut l0, &mut next, 4, m),
                answer(n as u8, 4),
                "{t:?}"
            );
        }
    }
}

#[test]
fn tamper_lists_parse_or_say_what_they_take() {
    assert_eq!(Tamper::parse_list("all").unwrap().len(), 5);
    assert_eq!(
        Tamper::parse_list("drop,flip"),
        Ok(vec![Tamper::Drop, Tamper::Flip])
    );
    assert!(Tamper::parse_list("flip,melt")
        .unwrap_err()
        .contains("melt"));
}

#[test]
fn a_connection_holds_a_bounded_number_of_sessions() {
    let (mut l0, mut next) = (FakeL0::default(), 0);
    let mut c = Connection::new(1, None);
    for ch in 0..SESSIONS_PER_CONNECTION as u32 {
        assert_eq!(
            send(&mut c, &mut l0, &mut next, ch, &msg(0, 48)),
            answer(0, ch)
        );
    }
    let out = send(&mut c, &mut l0, &mut next, 999, &msg(0, 48));
    assert!(out.contains("sessions on this connection already"), "{out}");
    c.close(&mut l0);
    assert_eq!(l0.forgotten.len(), SESSIONS_PER_CONNECTION);
}
