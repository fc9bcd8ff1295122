//! A one-answer reply slot between a caller and a writer thread: the caller parks until the
//! answer is set (no spinning), and learns when the writer dropped the request unanswered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

enum State<T> {
    Waiting,
    Answered(T),
    /// The reply was dropped without an answer, or the answer was taken.
    Gone,
}

struct Slot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// The writer's half: [`Reply::send`] once; dropping it unsent wakes the caller with nothing.
pub(crate) struct Reply<T>(Arc<Slot<T>>);

/// The caller's half.
pub(crate) struct Answer<T>(Arc<Slot<T>>);

/// A new reply slot.
pub(crate) fn channel<T>() -> (Reply<T>, Answer<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting),
        ready: Condvar::new(),
    });
    (Reply(Arc::clone(&slot)), Answer(slot))
}

impl<T> Reply<T> {
    /// Sets the answer and wakes the caller (a caller that stopped waiting never sees it).
    pub(crate) fn send(&self, value: T) {
        let mut state = self.0.state.lock();
        if matches!(*state, State::Waiting) {
            *state = State::Answered(value);
            // Woken after the lock is released, so the caller does not wake only to wait for it.
            drop(state);
            self.0.ready.notify_one();
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        if matches!(*state, State::Waiting) {
            *state = State::Gone;
            drop(state);
            self.0.ready.notify_one();
        }
    }
}

/// Why [`Answer::wait`] returned without an answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoAnswer {
    /// (Only the server engines' calls have timeouts.)
    #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
    TimedOut,
    /// The writer dropped the request.
    Dropped,
}

impl<T> Answer<T> {
    /// Waits for the answer, however long it takes (a writer that answers after its commit).
    ///
    /// # Errors
    /// [`NoAnswer::Dropped`] if the writer dropped the request unanswered.
    pub(crate) fn recv(self) -> Result<T, NoAnswer> {
        let mut state = self.0.state.lock();
        loop {
            if let Some(outcome) = take(&mut state) {
                return outcome;
            }
            self.0.ready.wait(&mut state);
        }
    }

    /// Waits at most `timeout` for the answer.
    #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
    pub(crate) fn wait(&self, timeout: Duration) -> Result<T, NoAnswer> {
        let deadline = Instant::now() + timeout;
        let mut state = self.0.state.lock();
        loop {
            if let Some(outcome) = take(&mut state) {
                return outcome;
            }
            if self.0.ready.wait_until(&mut state, deadline).timed_out() {
                return take(&mut state).unwrap_or(Err(NoAnswer::TimedOut));
            }
        }
    }
}

/// The answer if it is there (or that there will be none), leaving the slot empty; `None` while
/// it is still awaited.
fn take<T>(state: &mut State<T>) -> Option<Result<T, NoAnswer>> {
    match std::mem::replace(state, State::Gone) {
        State::Answered(value) => Some(Ok(value)),
        State::Gone => Some(Err(NoAnswer::Dropped)),
        State::Waiting => {
            *state = State::Waiting;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_arrives_across_threads() {
        let (reply, answer) = channel();
        let writer = std::thread::spawn(move || reply.send(7));
        assert_eq!(answer.wait(Duration::from_secs(10)), Ok(7));
        writer.join().unwrap();
    }

    #[test]
    fn an_untimed_wait_gets_the_answer_or_learns_it_was_dropped() {
        let (reply, answer) = channel();
        let writer = std::thread::spawn(move || reply.send(7));
        assert_eq!(answer.recv(), Ok(7));
        writer.join().unwrap();
        let (reply, answer) = channel::<u8>();
        let writer = std::thread::spawn(move || drop(reply));
        assert_eq!(answer.recv(), Err(NoAnswer::Dropped));
        writer.join().unwrap();
    }

    #[test]
    fn a_dropped_reply_is_told_apart_from_a_timeout() {
        let (reply, answer) = channel::<u8>();
        drop(reply);
        assert_eq!(answer.wait(Duration::from_secs(10)), Err(NoAnswer::Dropped));
        let (_reply, answer) = channel::<u8>();
        assert_eq!(
            answer.wait(Duration::from_millis(1)),
            Err(NoAnswer::TimedOut)
        );
    }

    #[test]
    fn a_late_answer_is_dropped_with_the_slot() {
        let (reply, answer) = channel::<Vec<u8>>();
        assert_eq!(
            answer.wait(Duration::from_millis(1)),
            Err(NoAnswer::TimedOut)
        );
        // The caller gave up: the slot no longer waits, so the answer is not kept.
        drop(answer);
        reply.send(vec![1]);
    }
}
