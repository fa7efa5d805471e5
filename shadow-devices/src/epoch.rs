//! The replay rule: "a blob restores once".
//!
//! Every blob carries `(VM tag, epoch)` in its authenticated header. Each
//! L0 keeps, per tag, the highest epoch it has **issued** (by saving) or
//! **accepted** (by restoring):
//!
//! - save: epoch = high + 1, and high becomes that epoch;
//! - restore: accepted iff epoch > high, and high becomes that epoch —
//!   with one exception: the blob this L0 itself issued last for the tag,
//!   while no newer one has been seen, may be restored here once (rolling
//!   back an aborted migration onto the frozen source).
//!
//! So on any one L0 an epoch is consumed at most once, a source cannot be
//! fed back an older state, and a destination cannot be fed the same
//! blob twice. Limits, documented in docs/ultracall-abi.md: the ledger
//! lives in L0's memory (a reboot forgets it), and a host that never saw
//! the tag accepts any authentic blob for it once; fleet-wide uniqueness
//! needs the migration manager.
//!
//! The ledger is checked by [`crate::seal::open`] (read-only) and updated
//! only after the devices were restored, so a failed restore consumes
//! nothing.

use alloc::collections::BTreeMap;

use ultracall_abi::VmTag;

use crate::error::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    high: u64,
    /// `high` was issued by a save here and not consumed since.
    own_save_pending: bool,
}

/// Per-tag epoch high-water marks of one L0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochLedger {
    entries: BTreeMap<VmTag, Entry>,
}

impl EpochLedger {
    /// An empty ledger (fresh boot).
    pub fn new() -> EpochLedger {
        EpochLedger::default()
    }

    /// Highest epoch issued or accepted for `tag`.
    pub fn high_water(&self, tag: &VmTag) -> Option<u64> {
        self.entries.get(tag).map(|e| e.high)
    }

    /// The epoch the next save of `tag` will carry.
    pub fn next_save_epoch(&self, tag: &VmTag) -> Result<u64, Error> {
        match self.entries.get(tag) {
            None => Ok(1),
            Some(e) => e.high.checked_add(1).ok_or(Error::EpochExhausted),
        }
    }

    /// Records a committed save.
    pub fn record_save(&mut self, tag: &VmTag, epoch: u64) {
        self.entries.insert(
            *tag,
            Entry {
                high: epoch,
                own_save_pending: true,
            },
        );
    }

    /// Would a blob for `tag` with `epoch` be accepted?
    pub fn check_restore(&self, tag: &VmTag, epoch: u64) -> Result<(), Error> {
        match self.entries.get(tag) {
            None => Ok(()),
            Some(e) if epoch > e.high => Ok(()),
            Some(e) if epoch == e.high && e.own_save_pending => Ok(()),
            Some(e) => Err(Error::Replayed {
                epoch,
                high: e.high,
            }),
        }
    }

    /// Records a completed restore; its epoch is consumed.
    pub fn record_restore(&mut self, tag: &VmTag, epoch: u64) {
        self.entries.insert(
            *tag,
            Entry {
                high: epoch,
                own_save_pending: false,
            },
        );
    }

    /// Number of tags remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no tag is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> VmTag {
        VmTag::new(b"vm").unwrap()
    }

    #[test]
    fn first_save_is_epoch_one_and_epochs_increase() {
        let mut l = EpochLedger::new();
        assert_eq!(l.next_save_epoch(&t()), Ok(1));
        l.record_save(&t(), 1);
        assert_eq!(l.next_save_epoch(&t()), Ok(2));
        l.record_restore(&t(), 7);
        assert_eq!(l.next_save_epoch(&t()), Ok(8));
    }

    #[test]
    fn destination_accepts_a_blob_once() {
        let mut l = EpochLedger::new();
        assert_eq!(l.check_restore(&t(), 3), Ok(()));
        l.record_restore(&t(), 3);
        assert_eq!(
            l.check_restore(&t(), 3),
            Err(Error::Replayed { epoch: 3, high: 3 })
        );
        assert_eq!(
            l.check_restore(&t(), 2),
            Err(Error::Replayed { epoch: 2, high: 3 })
        );
        assert_eq!(l.check_restore(&t(), 4), Ok(()));
    }

    #[test]
    fn source_may_roll_back_its_own_last_blob_once() {
        let mut l = EpochLedger::new();
        l.record_save(&t(), 5);
        assert_eq!(l.check_restore(&t(), 5), Ok(()));
        assert_eq!(
            l.check_restore(&t(), 4),
            Err(Error::Replayed { epoch: 4, high: 5 })
        );
        l.record_restore(&t(), 5);
        assert_eq!(
            l.check_restore(&t(), 5),
            Err(Error::Replayed { epoch: 5, high: 5 })
        );
    }

    #[test]
    fn round_trip_between_two_hosts_rejects_every_old_blob() {
        let (mut a, mut b) = (EpochLedger::new(), EpochLedger::new());
        let e1 = a.next_save_epoch(&t()).unwrap();
        a.record_save(&t(), e1);
        b.check_restore(&t(), e1).unwrap();
        b.record_restore(&t(), e1);
        let e2 = b.next_save_epoch(&t()).unwrap();
        b.record_save(&t(), e2);
        a.check_restore(&t(), e2).unwrap();
        a.record_restore(&t(), e2);
        assert!(a.check_restore(&t(), e1).is_err());
        assert!(a.check_restore(&t(), e2).is_err());
        assert!(b.check_restore(&t(), e1).is_err());
        // The documented exception: B may roll back the blob it issued
        // last (its devices are still frozen with that very state).
        assert!(b.check_restore(&t(), e2).is_ok());
    }

    #[test]
    fn exhausted_epoch_is_an_error_not_a_wrap() {
        let mut l = EpochLedger::new();
        l.record_restore(&t(), u64::MAX);
        assert_eq!(l.next_save_epoch(&t()), Err(Error::EpochExhausted));
    }
}
