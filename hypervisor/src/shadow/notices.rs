//! What the operator is told about the user VMs, queued until the
//! management line has room. A cloud VM can make and end user VMs far
//! faster than the line (~11 KB/s) carries their notices, so the queue
//! coalesces: one pending notice per VM (the frame is built from the VM's
//! state when it goes out), nothing at all for a VM that ended before it
//! was announced, and at most [`MAX_EVENTS`] restore and save events,
//! the oldest dropped and counted beyond. L0 never waits for the line to
//! announce a VM.

use alloc::collections::{BTreeSet, VecDeque};

use super::{Notice, VmId};

/// Restore and save events kept while the line is full.
pub const MAX_EVENTS: usize = 64;

#[derive(Default)]
pub struct Notices {
    queue: VecDeque<Notice>,
    /// VMs whose appearance went out and whose end did not yet.
    announced: BTreeSet<VmId>,
    events: usize,
    dropped: u64,
}

impl Notices {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// A VM appeared or changed (its tag): one pending notice says it.
    pub fn vm(&mut self, vm: VmId) {
        if !self.queue.contains(&Notice::Vm(vm)) {
            self.queue.push_back(Notice::Vm(vm));
        }
    }

    /// A VM ended: said only if its appearance was.
    pub fn gone(&mut self, vm: VmId) {
        self.queue.retain(|n| *n != Notice::Vm(vm));
        if self.announced.contains(&vm) && !self.queue.contains(&Notice::Gone(vm)) {
            self.queue.push_back(Notice::Gone(vm));
        }
    }

    /// A restore or save event; beyond [`MAX_EVENTS`] queued the oldest
    /// goes (counted).
    pub fn event(&mut self, n: Notice) {
        debug_assert!(matches!(n, Notice::Restore { .. } | Notice::Saved { .. }));
        if self.events == MAX_EVENTS {
            if let Some(i) = self.queue.iter().position(is_event) {
                self.queue.remove(i);
                self.events -= 1;
                self.dropped += 1;
            }
        }
        self.events += 1;
        self.queue.push_back(n);
    }

    /// The operator learnt of `vm` otherwise (a `list`, an attach): its
    /// end is said even if its own notice never went out.
    pub fn told(&mut self, vm: VmId) {
        self.announced.insert(vm);
    }

    /// The oldest pending notice, as it goes out.
    pub fn pop(&mut self) -> Option<Notice> {
        let n = self.queue.pop_front()?;
        match &n {
            Notice::Vm(vm) => {
                self.announced.insert(*vm);
            }
            Notice::Gone(vm) => {
                self.announced.remove(vm);
            }
            _ => self.events -= 1,
        }
        Some(n)
    }

    /// Restore and save events dropped so far for want of room.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

fn is_event(n: &Notice) -> bool {
    matches!(n, Notice::Restore { .. } | Notice::Saved { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ultracall_abi::VmTag;

    fn saved(epoch: u64) -> Notice {
        Notice::Saved {
            tag: VmTag::new(b"alpha").unwrap(),
            epoch,
            len: 1,
        }
    }

    #[test]
    fn a_vm_is_announced_once_and_ended_only_if_announced() {
        let mut q = Notices::default();
        q.vm(1);
        q.vm(1);
        q.vm(2);
        assert_eq!(q.len(), 2, "one pending notice per VM");
        assert_eq!(q.pop(), Some(Notice::Vm(1)));
        // 2 ends before it was announced: nothing of it goes out.
        q.gone(2);
        q.gone(1);
        q.gone(1);
        assert_eq!(q.pop(), Some(Notice::Gone(1)));
        assert_eq!(q.pop(), None);
        // Ended again after its end was said: nothing more.
        q.gone(1);
        assert!(q.is_empty(), "1's end was said already");
        // Known to the operator otherwise (listed, attached): its end is said.
        q.vm(3);
        q.told(3);
        q.gone(3);
        assert_eq!(q.pop(), Some(Notice::Gone(3)));
    }

    #[test]
    fn churn_while_the_line_is_full_stays_bounded() {
        let mut q = Notices::default();
        q.vm(0);
        q.pop();
        for vm in 1..100_000 {
            q.vm(vm);
            q.vm(vm);
            q.gone(vm);
        }
        assert!(
            q.is_empty(),
            "VMs that came and went unannounced: {}",
            q.len()
        );
        q.gone(0);
        for i in 0..1000 {
            q.event(saved(i));
        }
        assert_eq!(q.len(), 1 + MAX_EVENTS);
        assert_eq!(q.dropped(), 1000 - MAX_EVENTS as u64);
        assert_eq!(q.pop(), Some(Notice::Gone(0)));
        // The newest events are kept, oldest first.
        assert_eq!(q.pop(), Some(saved(1000 - MAX_EVENTS as u64)));
        while q.pop().is_some() {}
        q.event(saved(7));
        assert_eq!(q.len(), 1);
    }
}
