//! Which log lines L0 sends. A guest triggers many of L0's log lines at
//! will (an entry that fails its checks, a refused restore, a string I/O
//! to L0's port), and the management line carries ~11 KB/s shared with the
//! operator's consoles: a flood must cost neither a console frame nor L0's
//! time. Two limits, both decided here:
//!
//! - per call site, a token bucket: [`BURST`] lines at once, then
//!   [`PER_SECOND`] a second; a line that goes out after some were
//!   suppressed says how many;
//! - in the send queue, log lines may fill only what [`FRAME_RESERVE`]
//!   leaves: a line that does not fit is dropped (and counted), never
//!   waited for. Console frames may use the whole queue, so a log flood
//!   never stands between the operator and a console.

/// Lines a call site may send at once: enough for the events an operator
/// follows one by one in a busy moment (the 50 `user VM N ended` of
/// `linux-vm-churn`).
pub const BURST: u32 = 64;
/// Lines a second a call site may send after its burst.
pub const PER_SECOND: u64 = 8;
/// Call sites tracked; beyond, sites share slots (and their budget).
const SITES: usize = 64;

/// Bytes of the send queue that log lines leave to console frames.
pub const FRAME_RESERVE: usize = 16 * 1024;

/// Whether a log line of `line` bytes fits a queue of `capacity` bytes
/// holding `queued`, leaving [`FRAME_RESERVE`] to frames.
pub fn log_fits(capacity: usize, queued: usize, line: usize) -> bool {
    queued + line + FRAME_RESERVE <= capacity
}

/// A call site: its file's address and its line.
pub type Site = (usize, u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the line; `suppressed` lines of this site were not sent since
    /// its last one.
    Send { suppressed: u32 },
    /// Over the site's budget: counted, not sent.
    Suppress,
}

#[derive(Clone, Copy)]
struct Bucket {
    site: Site,
    tokens: u32,
    /// TSC of the last refill.
    at: u64,
    suppressed: u32,
}

const EMPTY: Bucket = Bucket {
    site: (0, 0),
    tokens: BURST,
    at: 0,
    suppressed: 0,
};

pub struct SiteLimits {
    buckets: [Bucket; SITES],
    /// TSC ticks per token; 0 until [`SiteLimits::start`]: L0's own boot
    /// lines, before any guest runs, are never limited.
    ticks_per_token: u64,
}

impl SiteLimits {
    pub const fn new() -> SiteLimits {
        SiteLimits {
            buckets: [EMPTY; SITES],
            ticks_per_token: 0,
        }
    }

    /// Limits from now on, the TSC ticking `tsc_hz` a second.
    pub fn start(&mut self, tsc_hz: u64) {
        self.ticks_per_token = (tsc_hz / PER_SECOND).max(1);
    }

    /// Whether a line of `site` goes out at TSC `now`.
    pub fn admit(&mut self, site: Site, now: u64) -> Verdict {
        if self.ticks_per_token == 0 {
            return Verdict::Send { suppressed: 0 };
        }
        let per = self.ticks_per_token;
        let b = self.bucket(site, now);
        let earned = now.saturating_sub(b.at) / per;
        if earned > 0 {
            b.tokens = (b.tokens as u64 + earned).min(BURST as u64) as u32;
            b.at = b.at.saturating_add(earned * per);
        }
        if b.tokens == 0 {
            b.suppressed = b.suppressed.saturating_add(1);
            return Verdict::Suppress;
        }
        b.tokens -= 1;
        Verdict::Send {
            suppressed: core::mem::take(&mut b.suppressed),
        }
    }

    /// The site's bucket: its own, a free one (full), or the one its hash
    /// names when all are taken.
    fn bucket(&mut self, site: Site, now: u64) -> &mut Bucket {
        let i = match self.buckets.iter().position(|b| b.site == site) {
            Some(i) => i,
            None => {
                let free = self.buckets.iter().position(|b| b.site == (0, 0));
                let i = free.unwrap_or((site.0 ^ site.1 as usize) % SITES);
                if free.is_some() {
                    self.buckets[i] = Bucket {
                        site,
                        at: now,
                        ..EMPTY
                    };
                }
                i
            }
        };
        &mut self.buckets[i]
    }
}

impl Default for SiteLimits {
    fn default() -> Self {
        SiteLimits::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 1_000_000;

    fn sent(v: Verdict) -> bool {
        matches!(v, Verdict::Send { .. })
    }

    #[test]
    fn a_flooding_site_gets_its_burst_then_its_rate() {
        let mut l = SiteLimits::new();
        l.start(HZ);
        let flood = (0x1000, 7);
        let sent_at_once = (0..1000).filter(|_| sent(l.admit(flood, 10))).count();
        assert_eq!(sent_at_once, BURST as usize);
        // One second later: PER_SECOND more, the first says how many were
        // suppressed.
        let later = 10 + HZ;
        assert_eq!(
            l.admit(flood, later),
            Verdict::Send {
                suppressed: 1000 - BURST
            }
        );
        let more = (0..1000).filter(|_| sent(l.admit(flood, later))).count();
        assert_eq!(more, PER_SECOND as usize - 1);
        // Another site is not touched by the flood.
        assert_eq!(l.admit((0x2000, 7), later), Verdict::Send { suppressed: 0 });
        // A quiet site earns back its burst, no more.
        let much_later = later + 100 * HZ;
        let n = (0..1000)
            .filter(|_| sent(l.admit(flood, much_later)))
            .count();
        assert_eq!(n, BURST as usize);
    }

    #[test]
    fn boot_lines_are_not_limited_and_sites_beyond_the_table_share() {
        let mut l = SiteLimits::new();
        assert!((0..1000).all(|_| sent(l.admit((1, 1), 0))));
        l.start(HZ);
        for s in 0..(2 * SITES) {
            let _ = l.admit((0x100 + s, 1), 0);
        }
        // Every site is still limited, sharing or not.
        for s in 0..(2 * SITES) {
            let site = (0x100 + s, 1);
            let n = (0..1000).filter(|_| sent(l.admit(site, 0))).count();
            assert!(n < BURST as usize, "{site:?}: {n}");
        }
    }

    #[test]
    fn log_lines_leave_the_frames_their_reserve() {
        let cap = 32 * 1024;
        assert!(log_fits(cap, 0, 100));
        assert!(log_fits(cap, cap - FRAME_RESERVE - 100, 100));
        assert!(!log_fits(cap, cap - FRAME_RESERVE - 99, 100));
        assert!(!log_fits(cap, cap, 1));
    }
}
