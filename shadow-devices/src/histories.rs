//! The device set's history section (device-set format version 4): what
//! a sealed save carries of each port's output history, so the history
//! continues at the same offsets on the host that restores it.
//!
//! Layout, little-endian, after the owner keys:
//!
//! | size | field                                                        |
//! |------|--------------------------------------------------------------|
//! | 1    | count: ports with a history (at most one per console device) |
//! | per port: |                                                       |
//! | 2    | the device's first port                                      |
//! | 8    | end offset: bytes the port sent since its history began      |
//! | 4    | tail length (≤ `HISTORY_SEALED_TAIL`, ≤ end)                 |
//! | n    | the tail: the bytes just before the end offset, oldest first |
//!
//! Decoding checks every field against the set's devices (a port named
//! twice, a port with no console, a tail longer than the bound or than
//! the offsets allow are refused) before anything is applied.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::device::ShadowDevice;
use crate::error::Error;
use crate::uart16550::history::HISTORY_SEALED_TAIL;
use crate::wire::{Reader, Writer};

/// One port's sealed history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedHistory<'a> {
    /// The device's first port.
    pub port: u16,
    /// Offset after the newest byte.
    pub end: u64,
    /// The newest bytes, ending at `end`.
    pub tail: &'a [u8],
}

/// Writes the section for `devices`, each tail straight from its ring.
pub(crate) fn encode(devices: &[Box<dyn ShadowDevice>], w: &mut Writer) {
    let count_at = w.buf.len();
    w.bytes(&[0]);
    let mut count = 0u8;
    for d in devices {
        let Some(c) = d.console_ref() else { continue };
        let at = w.buf.len();
        w.u16(d.ports().base);
        w.bytes(&[0; 12]); // end offset and tail length, once known
        let Some(end) = c.history_tail_into(&mut w.buf) else {
            w.buf.truncate(at);
            continue;
        };
        let len = (w.buf.len() - at - 14) as u32;
        w.buf[at + 2..at + 10].copy_from_slice(&end.to_le_bytes());
        w.buf[at + 10..at + 14].copy_from_slice(&len.to_le_bytes());
        count += 1;
    }
    w.buf[count_at] = count;
}

/// Reads and checks the section against `devices`.
pub(crate) fn decode<'a>(
    r: &mut Reader<'a>,
    devices: &[Box<dyn ShadowDevice>],
) -> Result<Vec<SealedHistory<'a>>, Error> {
    let n = usize::from(r.u8()?);
    let consoles = devices.iter().filter(|d| d.console_ref().is_some()).count();
    if n > consoles {
        return Err(Error::StateField("history count"));
    }
    let mut out: Vec<SealedHistory<'a>> = Vec::with_capacity(n);
    for _ in 0..n {
        let port = r.u16()?;
        let end = r.u64()?;
        let len = r.u32()? as usize;
        let has_console = devices
            .iter()
            .any(|d| d.ports().base == port && d.console_ref().is_some());
        if !has_console {
            return Err(Error::StateField("history port"));
        }
        if out.iter().any(|h| h.port == port) {
            return Err(Error::StateField("history port repeated"));
        }
        if len > HISTORY_SEALED_TAIL || len as u64 > end {
            return Err(Error::StateField("history tail length"));
        }
        out.push(SealedHistory {
            port,
            end,
            tail: r.take(len)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{pc_uarts, VmDevices};
    use crate::uart16550::history::{HistoryBudget, HISTORY_CAPACITY};

    const COM1: u16 = 0x3f8;

    fn budget(n: usize) -> &'static HistoryBudget {
        Box::leak(Box::new(HistoryBudget::new(n)))
    }

    /// The byte a guest prints at offset `o` (a known pattern).
    fn byte(o: u64) -> u8 {
        b'a' + (o % 23) as u8
    }

    /// A VM whose COM1 keeps a history and printed `n` bytes.
    fn printed(n: u64, b: &'static HistoryBudget) -> VmDevices {
        let mut vm = VmDevices::new(pc_uarts());
        vm.device_at(COM1)
            .unwrap()
            .console()
            .unwrap()
            .enable_history(b);
        for o in 0..n {
            vm.io_write(COM1, byte(o));
        }
        vm
    }

    fn offsets(vm: &mut VmDevices) -> Option<(u64, u64)> {
        vm.device_at(COM1)?.console()?.history_offsets()
    }

    fn read(vm: &mut VmDevices, from: u64, n: usize) -> (u64, Vec<u8>) {
        let mut out = alloc::vec![0u8; n];
        let c = vm.device_at(COM1).unwrap().console().unwrap();
        let (at, got, _) = c.history_read(from, &mut out).unwrap();
        out.truncate(got);
        (at, out)
    }

    #[test]
    fn the_tail_continues_at_the_same_offsets_on_the_restoring_host() {
        let total = 100_000u64;
        let mut a = printed(total, budget(1));
        assert_eq!(offsets(&mut a), Some((0, total)));
        let set = a.save_set();
        let mut b = VmDevices::new(pc_uarts());
        b.restore_set(&set, budget(1)).unwrap();
        let first = total - HISTORY_SEALED_TAIL as u64;
        assert_eq!(offsets(&mut b), Some((first, total)));
        // Asked from before the tail: the answer starts where it does.
        let (at, bytes) = read(&mut b, 0, 8);
        assert_eq!(at, first);
        assert!(bytes
            .iter()
            .enumerate()
            .all(|(i, &x)| x == byte(first + i as u64)));
        // New output follows at the next offsets: no gap, no overlap.
        b.io_write(COM1, b'!');
        assert_eq!(
            read(&mut b, total - 2, 8),
            (
                total - 2,
                alloc::vec![byte(total - 2), byte(total - 1), b'!']
            )
        );
        // Ports without a history on A have none on B.
        assert_eq!(
            b.device_at(0x2f8)
                .unwrap()
                .console()
                .unwrap()
                .history_offsets(),
            None
        );
    }

    #[test]
    fn a_short_history_travels_whole_and_a_rollback_keeps_this_hosts_own() {
        let b1 = budget(2);
        let mut a = printed(HISTORY_CAPACITY as u64 / 2, b1);
        let set = a.save_set();
        // Restored into itself (a rollback): its own megabyte stays whole.
        a.restore_set(&set, b1).unwrap();
        assert_eq!(offsets(&mut a), Some((0, HISTORY_CAPACITY as u64 / 2)));
        assert_eq!(b1.left(), 1, "no second buffer");
        let mut small = printed(5, budget(1));
        let mut b = VmDevices::new(pc_uarts());
        b.restore_set(&small.save_set(), budget(1)).unwrap();
        assert_eq!(read(&mut b, 0, 10), (0, b"abcde".to_vec()));
        assert_eq!(offsets(&mut small), offsets(&mut b));
    }

    #[test]
    fn no_room_on_the_restoring_host_still_restores_the_vm() {
        let set = printed(10, budget(1)).save_set();
        let mut b = VmDevices::new(pc_uarts());
        b.restore_set(&set, budget(0)).unwrap();
        assert_eq!(offsets(&mut b), None, "history unavailable");
        let c = b.device_at(COM1).unwrap().console().unwrap();
        assert_eq!(c.history_read(0, &mut [0u8; 4]), None);
        assert_eq!(c.output_pending(), 10, "the console itself came back");
    }

    #[test]
    fn a_set_of_version_3_restores_without_histories() {
        let mut set = VmDevices::new(pc_uarts()).save_set();
        assert_eq!(set.pop(), Some(0), "an empty history section");
        set[..2].copy_from_slice(&3u16.to_le_bytes());
        let mut b = VmDevices::new(pc_uarts());
        b.restore_set(&set, budget(1)).unwrap();
        assert_eq!(offsets(&mut b), None);
    }

    /// A VM on host B with a history of its own, and what it looks like.
    fn host_b() -> (VmDevices, Vec<u8>) {
        let b = printed(3, budget(1));
        let before = b.save_set();
        (b, before)
    }

    #[test]
    fn malformed_history_sections_are_refused_with_nothing_changed() {
        let set = printed(5, budget(1)).save_set();
        // The section: count, then port, end, length, the 5 bytes.
        let at = set.len() - (1 + 2 + 8 + 4 + 5);
        assert_eq!(set[at], 1);
        let patched = |off: usize, bytes: &[u8]| {
            let mut s = set.clone();
            s[at + off..at + off + bytes.len()].copy_from_slice(bytes);
            s
        };
        let cases: Vec<(&str, Vec<u8>, Error)> = alloc::vec![
            (
                "truncated in the tail",
                set[..set.len() - 2].to_vec(),
                Error::StateTruncated
            ),
            (
                "truncated in the header",
                set[..at + 5].to_vec(),
                Error::StateTruncated
            ),
            (
                "trailing bytes",
                [set.as_slice(), &[0]].concat(),
                Error::StateTrailingBytes
            ),
            (
                "count past the consoles",
                patched(0, &[5]),
                Error::StateField("history count")
            ),
            (
                "a port with no console",
                patched(1, &0x1234u16.to_le_bytes()),
                Error::StateField("history port")
            ),
            (
                "a tail longer than the offsets",
                patched(3, &4u64.to_le_bytes()),
                Error::StateField("history tail length")
            ),
            (
                "a tail over the bound",
                patched(11, &(HISTORY_SEALED_TAIL as u32 + 1).to_le_bytes()),
                Error::StateField("history tail length"),
            ),
        ];
        for (what, bad, err) in cases {
            let (mut b, before) = host_b();
            assert_eq!(b.restore_set(&bad, budget(1)), Err(err), "{what}");
            assert_eq!(b.save_set(), before, "{what}: nothing changed");
            assert_eq!(offsets(&mut b), Some((0, 3)), "{what}");
        }
        // The same port twice.
        let mut twice = set[..at].to_vec();
        twice.push(2);
        let entry = &set[at + 1..];
        twice.extend_from_slice(entry);
        twice.extend_from_slice(entry);
        let (mut b, before) = host_b();
        assert_eq!(
            b.restore_set(&twice, budget(1)),
            Err(Error::StateField("history port repeated"))
        );
        assert_eq!(b.save_set(), before);
    }
}
