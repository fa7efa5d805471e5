//! Physical address range arithmetic without allocation.
//!
//! L0 computes who owns which memory from the firmware map before it has a
//! heap: usable RAM, minus L0's image, boot information, modules and pool,
//! is the cloud VM's RAM. [`RangeSet`] keeps sorted, disjoint, non-adjacent
//! half-open ranges in a fixed array.

use core::fmt;

/// Page size used for ownership decisions.
pub const PAGE_SIZE: u64 = 4096;

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub const fn new(start: u64, end: u64) -> Self {
        Range { start, end }
    }
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
    pub const fn overlaps(&self, other: &Range) -> bool {
        self.start < other.end && other.start < self.end
    }
    /// The largest page-aligned range inside this one (empty if none).
    pub fn shrink_to_pages(&self) -> Range {
        let start = self.start.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        let end = self.end & !(PAGE_SIZE - 1);
        Range {
            start,
            end: end.max(start),
        }
    }
    /// The smallest page-aligned range covering this one.
    pub fn grow_to_pages(&self) -> Range {
        let start = self.start & !(PAGE_SIZE - 1);
        let end = self.end.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        Range { start, end }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start, self.end)
    }
}

/// The set ran out of slots (the firmware map is absurdly fragmented).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityExceeded;

impl fmt::Display for CapacityExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "more than {CAPACITY} disjoint memory ranges")
    }
}

/// Slots in a [`RangeSet`].
pub const CAPACITY: usize = 128;

/// A set of physical addresses as sorted disjoint ranges.
#[derive(Clone)]
pub struct RangeSet {
    ranges: [Range; CAPACITY],
    len: usize,
}

impl Default for RangeSet {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl RangeSet {
    pub const fn new() -> Self {
        RangeSet {
            ranges: [Range::new(0, 0); CAPACITY],
            len: 0,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Range> + '_ {
        self.ranges[..self.len].iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total bytes in the set.
    pub fn total(&self) -> u64 {
        self.iter().map(|r| r.len()).sum()
    }

    /// The highest address in the set plus one (0 if empty).
    pub fn end(&self) -> u64 {
        if self.len == 0 {
            0
        } else {
            self.ranges[self.len - 1].end
        }
    }

    /// Adds `r`, merging with neighbours it touches.
    pub fn insert(&mut self, r: Range) -> Result<(), CapacityExceeded> {
        if r.is_empty() {
            return Ok(());
        }
        // First range that ends at or after r.start (may touch it).
        let first = self.ranges[..self.len].partition_point(|x| x.end < r.start);
        // One past the last range that starts at or before r.end.
        let last = self.ranges[..self.len].partition_point(|x| x.start <= r.end);
        if first == last {
            if self.len == CAPACITY {
                return Err(CapacityExceeded);
            }
            self.ranges.copy_within(first..self.len, first + 1);
            self.ranges[first] = r;
            self.len += 1;
        } else {
            let merged = Range::new(
                r.start.min(self.ranges[first].start),
                r.end.max(self.ranges[last - 1].end),
            );
            self.ranges[first] = merged;
            self.ranges.copy_within(last..self.len, first + 1);
            self.len -= last - first - 1;
        }
        Ok(())
    }

    /// Removes `r` from the set, splitting a range if `r` falls inside it.
    pub fn remove(&mut self, r: Range) -> Result<(), CapacityExceeded> {
        if r.is_empty() {
            return Ok(());
        }
        let mut i = 0;
        while i < self.len {
            let x = self.ranges[i];
            if !x.overlaps(&r) {
                i += 1;
                continue;
            }
            let left = Range::new(x.start, r.start);
            let right = Range::new(r.end, x.end);
            match (left.is_empty(), right.is_empty()) {
                (true, true) => {
                    self.ranges.copy_within(i + 1..self.len, i);
                    self.len -= 1;
                }
                (false, true) => {
                    self.ranges[i] = left;
                    i += 1;
                }
                (true, false) => {
                    self.ranges[i] = right;
                    i += 1;
                }
                (false, false) => {
                    if self.len == CAPACITY {
                        return Err(CapacityExceeded);
                    }
                    self.ranges.copy_within(i + 1..self.len, i + 2);
                    self.ranges[i] = left;
                    self.ranges[i + 1] = right;
                    self.len += 1;
                    i += 2;
                }
            }
        }
        Ok(())
    }

    /// Whether every address of `r` is in the set.
    pub fn contains_range(&self, r: Range) -> bool {
        r.is_empty() || self.iter().any(|x| x.start <= r.start && r.end <= x.end)
    }

    /// Whether any address of `r` is in the set.
    pub fn overlaps(&self, r: Range) -> bool {
        self.iter().any(|x| x.overlaps(&r))
    }

    /// Whether `addr` is in the set.
    pub fn contains(&self, addr: u64) -> bool {
        self.iter().any(|x| x.contains(addr))
    }

    /// Lowest `align`-aligned range of `size` bytes inside the set at or above `min`.
    pub fn find_lowest(&self, size: u64, align: u64, min: u64) -> Option<Range> {
        self.iter().find_map(|x| {
            let start = align_up(x.start.max(min), align)?;
            let end = start.checked_add(size)?;
            (end <= x.end).then_some(Range::new(start, end))
        })
    }

    /// Highest `align`-aligned range of `size` bytes inside the set ending at or below `max`.
    pub fn find_highest(&self, size: u64, align: u64, max: u64) -> Option<Range> {
        self.ranges[..self.len].iter().rev().find_map(|x| {
            let top = x.end.min(max);
            let start = top.checked_sub(size)? & !(align - 1);
            (start >= x.start).then_some(Range::new(start, start + size))
        })
    }
}

/// Rounds `x` up to a multiple of the power of two `align`.
pub fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(rs: &[(u64, u64)]) -> RangeSet {
        let mut s = RangeSet::new();
        for &(a, b) in rs {
            s.insert(Range::new(a, b)).unwrap();
        }
        s
    }

    fn list(s: &RangeSet) -> Vec<(u64, u64)> {
        s.iter().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn insert_merges_overlapping_and_adjacent() {
        let s = set(&[(10, 20), (30, 40), (20, 25), (50, 60), (35, 55)]);
        assert_eq!(list(&s), [(10, 25), (30, 60)]);
        let s = set(&[(30, 40), (0, 5), (5, 30)]);
        assert_eq!(list(&s), [(0, 40)]);
    }

    #[test]
    fn insert_keeps_order() {
        let s = set(&[(50, 60), (10, 20), (30, 40)]);
        assert_eq!(list(&s), [(10, 20), (30, 40), (50, 60)]);
    }

    #[test]
    fn remove_splits_trims_and_deletes() {
        let mut s = set(&[(0, 100), (200, 300)]);
        s.remove(Range::new(10, 20)).unwrap();
        assert_eq!(list(&s), [(0, 10), (20, 100), (200, 300)]);
        s.remove(Range::new(90, 250)).unwrap();
        assert_eq!(list(&s), [(0, 10), (20, 90), (250, 300)]);
        s.remove(Range::new(0, 10)).unwrap();
        assert_eq!(list(&s), [(20, 90), (250, 300)]);
        s.remove(Range::new(0, 1000)).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn queries() {
        let s = set(&[(0x1000, 0x5000), (0x10000, 0x20000)]);
        assert!(s.contains_range(Range::new(0x1000, 0x5000)));
        assert!(!s.contains_range(Range::new(0x4000, 0x11000)));
        assert!(s.overlaps(Range::new(0x4fff, 0x6000)));
        assert!(!s.overlaps(Range::new(0x5000, 0x10000)));
        assert_eq!(s.total(), 0x4000 + 0x10000);
        assert_eq!(s.end(), 0x20000);
    }

    #[test]
    fn find_fits() {
        let s = set(&[(0x1000, 0x5000), (0x10000, 0x20000)]);
        assert_eq!(
            s.find_lowest(0x2000, 0x2000, 0),
            Some(Range::new(0x2000, 0x4000))
        );
        assert_eq!(
            s.find_lowest(0x5000, 0x1000, 0),
            Some(Range::new(0x10000, 0x15000))
        );
        assert_eq!(s.find_lowest(0x1000, 0x1000, 0x1f800), None);
        assert_eq!(
            s.find_highest(0x3000, 0x1000, u64::MAX),
            Some(Range::new(0x1d000, 0x20000))
        );
        assert_eq!(
            s.find_highest(0x3000, 0x1000, 0x10000),
            Some(Range::new(0x2000, 0x5000))
        );
        assert_eq!(s.find_highest(0x20000, 0x1000, u64::MAX), None);
    }

    #[test]
    fn capacity_is_reported_not_overrun() {
        let mut s = RangeSet::new();
        for i in 0..CAPACITY as u64 {
            s.insert(Range::new(i * 10, i * 10 + 5)).unwrap();
        }
        assert_eq!(s.insert(Range::new(10_000, 10_005)), Err(CapacityExceeded));
        assert_eq!(s.remove(Range::new(1, 2)), Err(CapacityExceeded));
        assert_eq!(s.iter().count(), CAPACITY);
    }

    #[test]
    fn page_rounding() {
        assert_eq!(
            Range::new(0x1001, 0x3fff).shrink_to_pages(),
            Range::new(0x2000, 0x3000)
        );
        assert!(Range::new(0x1001, 0x1fff).shrink_to_pages().is_empty());
        assert_eq!(
            Range::new(0x1001, 0x3001).grow_to_pages(),
            Range::new(0x1000, 0x4000)
        );
    }

    #[test]
    fn matches_a_bitmap_model() {
        // Random inserts/removes against a plain bitmap over 0..256.
        let mut x = 0x9e37_79b9u32;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut s = RangeSet::new();
        let mut model = [false; 256];
        for _ in 0..2000 {
            let a = (rnd() % 256) as u64;
            let b = (a + (rnd() % 40) as u64).min(256);
            if rnd() % 3 == 0 {
                s.remove(Range::new(a, b)).unwrap();
                model[a as usize..b as usize].fill(false);
            } else {
                s.insert(Range::new(a, b)).unwrap();
                model[a as usize..b as usize].fill(true);
            }
            for (i, &m) in model.iter().enumerate() {
                assert_eq!(s.contains(i as u64), m, "addr {i}");
            }
            let v = list(&s);
            assert!(
                v.windows(2).all(|w| w[0].1 < w[1].0),
                "not disjoint/non-adjacent: {v:?}"
            );
        }
    }
}
