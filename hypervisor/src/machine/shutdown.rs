//! The emulator's shutdown port: Bochs ends when "Shutdown" is written to
//! port 0x8900. L0 holds back a matching prefix so that it can log its
//! final report before passing the word on.

pub const SHUTDOWN_PORT: u16 = 0x8900;
pub const SHUTDOWN: &[u8] = b"Shutdown";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownWatch {
    matched: usize,
}

/// What to do with a byte written to the shutdown port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownFeed {
    /// Part of "Shutdown" so far: hold it.
    Hold,
    /// Not a shutdown: pass on the bytes held so far, then `byte` (None when
    /// `byte` starts a new match and is held).
    Forward {
        held: &'static [u8],
        byte: Option<u8>,
    },
    /// The whole word: report, then pass "Shutdown" on.
    Shutdown,
}

impl ShutdownWatch {
    pub fn feed(&mut self, b: u8) -> ShutdownFeed {
        if b == SHUTDOWN[self.matched] {
            self.matched += 1;
            if self.matched < SHUTDOWN.len() {
                return ShutdownFeed::Hold;
            }
            self.matched = 0;
            return ShutdownFeed::Shutdown;
        }
        let held = &SHUTDOWN[..self.matched];
        // A mismatch that is itself an 'S' starts over.
        self.matched = usize::from(b == SHUTDOWN[0]);
        ShutdownFeed::Forward {
            held,
            byte: (self.matched == 0).then_some(b),
        }
    }
}
