//! Which versions had requests lately, for the loops that should cost what
//! had traffic rather than what is configured: a version's first request of
//! each second puts its id on a bounded queue (no lock, no allocation), and
//! the one reader (the guard) drains it each tick. Should the queue fill
//! (more versions started taking traffic within one tick than it holds), it
//! says so, and the reader visits everything once, as it would without it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

/// Ids queued between two drains before the reader falls back to a full
/// pass: 64 KB, far more versions than take their first request of a second
/// within one 100 ms tick on any install we know of.
const CAPACITY: usize = 8192;

pub struct Activity {
    queue: ArrayQueue<u64>,
    overflowed: AtomicBool,
    next_id: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            queue: ArrayQueue::new(CAPACITY),
            overflowed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        }
    }
}

/// What one drain found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Ids of the versions that had a request since the last drain (some
    /// may repeat).
    pub ids: Vec<u64>,
    /// Some were lost to a full queue: visit everything.
    pub overflowed: bool,
}

impl Activity {
    /// A fresh id for a new version's stats.
    pub fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Notes that version `id` had a request (request path: once per
    /// version per second).
    #[inline]
    pub fn note(&self, id: u64) {
        if self.queue.push(id).is_err() {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// Takes every id noted since the last drain into `into` (cleared
    /// first), and whether some were lost.
    pub fn drain(&self, into: &mut Drained) {
        into.ids.clear();
        into.overflowed = self.overflowed.swap(false, Ordering::Relaxed);
        while let Some(id) = self.queue.pop() {
            into.ids.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_takes_what_was_noted_and_a_full_queue_says_so() {
        let activity = Activity::default();
        let (a, b) = (activity.id(), activity.id());
        assert_ne!(a, b);
        activity.note(a);
        activity.note(b);
        let mut drained = Drained::default();
        activity.drain(&mut drained);
        assert_eq!(drained.ids, vec![a, b]);
        assert!(!drained.overflowed);
        activity.drain(&mut drained);
        assert!(drained.ids.is_empty());

        for _ in 0..=CAPACITY {
            activity.note(a);
        }
        activity.drain(&mut drained);
        assert_eq!(drained.ids.len(), CAPACITY);
        assert!(drained.overflowed, "one id was lost: a full pass is due");
        activity.drain(&mut drained);
        assert!(!drained.overflowed);
    }
}
