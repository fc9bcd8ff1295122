//! A one-answer channel for a caller waiting on the writer: the waiting thread parks at once.
//!
//! crossbeam's channels spin and yield before they park, which pays off when the answer is
//! microseconds away; here it is a group commit (an fsync) away, and with many callers on few
//! cores the yields only take CPU from the writer and the applier.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

enum State<T> {
    Waiting,
    Sent(T),
    /// The sender was dropped without an answer.
    Gone,
    /// The answer was taken.
    Taken,
}

struct Slot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

/// The answering half: consumed by [`Sender::send`]; dropping it unanswered wakes the receiver
/// with an error.
pub(crate) struct Sender<T>(Arc<Slot<T>>);

/// The waiting half.
pub(crate) struct Receiver<T>(Arc<Slot<T>>);

/// The sender went without answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone;

/// A connected pair.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting),
        ready: Condvar::new(),
    });
    (Sender(Arc::clone(&slot)), Receiver(slot))
}

impl<T> Sender<T> {
    /// Delivers `value` (dropped if the receiver is gone).
    pub(crate) fn send(self, value: T) {
        let mut state = self.0.state.lock();
        if matches!(*state, State::Waiting) {
            *state = State::Sent(value);
        }
        drop(state);
        self.0.ready.notify_one();
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        if matches!(*state, State::Waiting) {
            *state = State::Gone;
            drop(state);
            self.0.ready.notify_one();
        }
    }
}

impl<T> Receiver<T> {
    /// Waits for the answer.
    ///
    /// # Errors
    /// [`Gone`] if the sender was dropped without answering.
    pub(crate) fn recv(self) -> Result<T, Gone> {
        let mut state = self.0.state.lock();
        loop {
            match std::mem::replace(&mut *state, State::Taken) {
                State::Sent(value) => return Ok(value),
                State::Gone | State::Taken => return Err(Gone),
                State::Waiting => {
                    *state = State::Waiting;
                    self.0.ready.wait(&mut state);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_sent_from_another_thread_arrives() {
        let (sender, receiver) = channel();
        let thread = std::thread::spawn(move || sender.send(7));
        assert_eq!(receiver.recv(), Ok(7));
        thread.join().unwrap();
    }

    #[test]
    fn a_sender_dropped_unanswered_wakes_the_receiver_with_an_error() {
        let (sender, receiver) = channel::<u8>();
        let thread = std::thread::spawn(move || drop(sender));
        assert_eq!(receiver.recv(), Err(Gone));
        thread.join().unwrap();
    }

    #[test]
    fn an_answer_to_a_receiver_gone_is_dropped_quietly() {
        let (sender, receiver) = channel();
        drop(receiver);
        sender.send(String::from("nobody listens"));
    }
}
