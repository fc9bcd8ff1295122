//! In-process wake-ups for callers waiting on an in-flight key.
//!
//! A single generation counter under a mutex, bumped by the writer after every commit that changed
//! records, with a condition variable. A waiter notes the generation, checks the record, and if it
//! must wait, sleeps until the generation moves or its deadline passes; then it checks again.
//! Noting the generation *before* checking means a commit between the check and the sleep is never
//! missed. Waking every waiter on every commit is simple and cheap while waiters are few (waiting is
//! opt-in); per-key wait lists are the upgrade if that changes.

use std::time::Instant;

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
pub(crate) struct Notifier {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Notifier {
    /// The current generation; pass it to [`Notifier::wait_past`].
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.lock()
    }

    /// Wakes every waiter.
    pub(crate) fn bump(&self) {
        let mut generation = self.generation.lock();
        *generation = generation.wrapping_add(1);
        self.changed.notify_all();
    }

    /// Sleeps until the generation differs from `seen` or `deadline` passes.
    pub(crate) fn wait_past(&self, seen: u64, deadline: Instant) {
        let mut generation = self.generation.lock();
        while *generation == seen {
            if self
                .changed
                .wait_until(&mut generation, deadline)
                .timed_out()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_bump_wakes_a_waiter_before_its_deadline() {
        let notifier = Arc::new(Notifier::default());
        let seen = notifier.generation();
        let waker = Arc::clone(&notifier);
        let thread = std::thread::spawn(move || waker.bump());
        // A deadline far away: the test only finishes because the bump wakes the waiter.
        notifier.wait_past(seen, Instant::now() + Duration::from_secs(3600));
        assert_ne!(notifier.generation(), seen);
        assert!(thread.join().is_ok());
    }

    #[test]
    fn a_missed_bump_is_not_slept_through() {
        let notifier = Notifier::default();
        let seen = notifier.generation();
        notifier.bump();
        notifier.wait_past(seen, Instant::now() + Duration::from_secs(3600));
        assert_eq!(notifier.generation(), seen + 1);
    }
}
