//! What L0 spends sending a VM's console output to its reader, in TSC
//! ticks per KiB, for `cargo xtask bench`: the operator's plain `out`
//! frames (read the UART's backlog, hex, checksum) against owner
//! sessions (open the sealed read request, read the history, seal the
//! answer; on the line also hex it). Writing to the line or copying to
//! the relay is outside both. L0 logs both when the cloud VM shuts down.

/// Ticks and bytes summed over every piece of output sent one way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputCost {
    ticks: u64,
    bytes: u64,
}

impl OutputCost {
    /// One piece of output: `bytes` sent for `ticks` of L0's work.
    pub fn add(&mut self, ticks: u64, bytes: usize) {
        self.ticks = self.ticks.saturating_add(ticks);
        self.bytes = self.bytes.saturating_add(bytes as u64);
    }

    /// Ticks per KiB, once at least a KiB went this way (less says little).
    pub fn ticks_per_kib(&self) -> Option<u64> {
        (self.bytes >= 1024).then(|| self.ticks.saturating_mul(1024) / self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_per_kib_needs_a_kib_and_scales() {
        let mut c = OutputCost::default();
        c.add(1000, 512);
        assert_eq!(c.ticks_per_kib(), None);
        c.add(3000, 1536);
        assert_eq!(c.ticks_per_kib(), Some(2000));
    }
}
