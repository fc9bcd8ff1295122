//! A one-answer reply slot between a caller and a writer thread: the caller parks until the
//! answer is set (no spinning), and learns when the writer dropped the request unanswered.
//!
//! **A wake-up tree.** A writer that answers many callers at once (a committed batch) need not
//! wake each itself: [`deliver`] wakes two, and hands each woken caller half of the rest to
//! wake before it returns. Waking a parked thread is a system call and, on a virtual machine,
//! often an interrupt to another processor: a few microseconds each, which one thread would
//! otherwise spend in a row while the database or the disk waits for the next batch. A share
//! is handed only to a caller parked waiting for that very answer: one that is not waiting at
//! that moment (it waits for another of its answers first, or has stopped waiting) would hold
//! the share up, so the sender delivers it instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

enum State<T> {
    /// No answer yet, and the caller is not waiting for it at the moment.
    Waiting,
    /// No answer yet, and the caller is parked waiting for it: only such a caller is handed
    /// deliveries to make (one that is not waiting, say because it waits for another answer
    /// first, would hold them up).
    Parked,
    /// The answer, and the deliveries its caller makes before returning it.
    Answered(T, Vec<Delivery>),
    /// The reply was dropped without an answer, or the answer was taken.
    Gone,
    /// The caller stopped waiting: an answer sent now is dropped, its deliveries made by the
    /// sender.
    Abandoned,
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

/// One answer on its way, with its reply: made by [`deliver`] (or handed on to be made).
pub(crate) struct Delivery(Box<dyn FnOnce(Vec<Delivery>) + Send>);

/// Delivers every answer of `deliveries`: this thread wakes at most two callers, each of which
/// makes half of the rest before it returns (see the module's documentation).
pub(crate) fn deliver(mut deliveries: Vec<Delivery>) {
    if deliveries.is_empty() {
        return;
    }
    let second = deliveries.split_off(deliveries.len().div_ceil(2));
    for mut half in [deliveries, second] {
        if half.is_empty() {
            continue;
        }
        let head = half.swap_remove(0);
        (head.0)(half);
    }
}

impl<T: Send + 'static> Reply<T> {
    /// This reply's answer as a [`Delivery`], for [`deliver`].
    #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
    pub(crate) fn delivery(self, value: T) -> Delivery {
        Delivery(Box::new(move |rest| self.send_then(value, rest)))
    }
}

impl<T> Reply<T> {
    /// Sets the answer and wakes the caller (a caller that stopped waiting never sees it).
    pub(crate) fn send(&self, value: T) {
        self.send_then(value, Vec::new());
    }

    /// Sets the answer, with `rest` for the caller to deliver before it returns; if the caller
    /// has stopped waiting, delivers `rest` here.
    fn send_then(&self, value: T, rest: Vec<Delivery>) {
        let mut state = self.0.state.lock();
        match *state {
            State::Parked => {
                *state = State::Answered(value, rest);
                // Woken after the lock is released, so the caller does not wake only to wait
                // for it.
                drop(state);
                self.0.ready.notify_one();
            }
            State::Waiting => {
                *state = State::Answered(value, Vec::new());
                drop(state);
                deliver(rest);
            }
            State::Answered(..) | State::Gone | State::Abandoned => {
                drop(state);
                deliver(rest);
            }
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        if matches!(*state, State::Waiting | State::Parked) {
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
        self.wait_until(None)
    }

    /// Waits at most `timeout` for the answer.
    #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(dead_code))]
    pub(crate) fn wait(&self, timeout: Duration) -> Result<T, NoAnswer> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    /// Waits for the answer until `deadline` (`None`: however long it takes), then makes the
    /// deliveries it carries.
    fn wait_until(&self, deadline: Option<Instant>) -> Result<T, NoAnswer> {
        let mut state = self.0.state.lock();
        let mut timed_out = false;
        loop {
            if let Some((outcome, rest)) = take(&mut state) {
                drop(state);
                deliver(rest);
                return outcome;
            }
            if timed_out {
                // Nobody waits any more: a late answer's deliveries are its sender's to make.
                *state = State::Abandoned;
                return Err(NoAnswer::TimedOut);
            }
            *state = State::Parked;
            if let Some(deadline) = deadline {
                timed_out = self.0.ready.wait_until(&mut state, deadline).timed_out();
            } else {
                self.0.ready.wait(&mut state);
            }
        }
    }
}

impl<T> Drop for Answer<T> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        // An answer never taken (its caller stopped waiting first) still carries deliveries.
        let rest = match std::mem::replace(&mut *state, State::Abandoned) {
            State::Answered(_, rest) => rest,
            State::Gone => {
                *state = State::Gone;
                Vec::new()
            }
            State::Waiting | State::Parked | State::Abandoned => Vec::new(),
        };
        drop(state);
        deliver(rest);
    }
}

/// The answer if it is there (or that there will be none) with the deliveries it carries,
/// leaving the slot empty; `None` while it is still awaited.
fn take<T>(state: &mut State<T>) -> Option<(Result<T, NoAnswer>, Vec<Delivery>)> {
    match std::mem::replace(state, State::Gone) {
        State::Answered(value, rest) => Some((Ok(value), rest)),
        State::Gone | State::Abandoned => Some((Err(NoAnswer::Dropped), Vec::new())),
        State::Waiting => {
            *state = State::Waiting;
            None
        }
        State::Parked => {
            *state = State::Parked;
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

    /// `n` callers waiting on their own threads; returns their answers (None: no answer).
    fn callers(
        n: usize,
    ) -> (
        Vec<Reply<usize>>,
        Vec<std::thread::JoinHandle<Option<usize>>>,
    ) {
        let (replies, answers): (Vec<_>, Vec<_>) = (0..n).map(|_| channel::<usize>()).unzip();
        let threads = answers
            .into_iter()
            .map(|answer| std::thread::spawn(move || answer.wait(Duration::from_secs(10)).ok()))
            .collect();
        (replies, threads)
    }

    /// Delivers to each reply its index, as one tree.
    fn deliver_indexes(replies: Vec<Reply<usize>>) {
        deliver(
            replies
                .into_iter()
                .enumerate()
                .map(|(i, reply)| reply.delivery(i))
                .collect(),
        );
    }

    #[test]
    fn a_delivered_tree_answers_every_caller_once() {
        for n in [0, 1, 2, 3, 7, 64, 100] {
            let (replies, threads) = callers(n);
            deliver_indexes(replies);
            let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert_eq!(answers, (0..n).map(Some).collect::<Vec<_>>(), "{n} callers");
        }
    }

    #[test]
    fn callers_that_stopped_waiting_do_not_strand_their_share() {
        // Half the callers have given up (timed out, or dropped their answer) before the tree is
        // delivered; every caller still waiting gets its answer, whichever callers were to
        // hand it on.
        let n = 32;
        let mut replies = Vec::new();
        let mut waiting = Vec::new();
        for i in 0..n {
            let (reply, answer) = channel::<usize>();
            replies.push(reply);
            if i % 2 == 0 {
                assert_eq!(
                    answer.wait(Duration::from_millis(1)),
                    Err(NoAnswer::TimedOut)
                );
                if i % 4 == 0 {
                    drop(answer);
                }
                // Kept but no longer waiting (abandoned by its timeout): its sender makes its
                // share, and its answer is dropped.
                else {
                    waiting.push((i, None, Some(answer)));
                }
            } else {
                waiting.push((
                    i,
                    Some(std::thread::spawn(move || {
                        answer.wait(Duration::from_secs(10)).ok()
                    })),
                    None,
                ));
            }
        }
        deliver_indexes(replies);
        for (i, thread, idle) in waiting {
            if let Some(thread) = thread {
                assert_eq!(thread.join().unwrap(), Some(i));
            }
            drop(idle);
        }
    }

    #[test]
    fn a_caller_not_waiting_is_handed_no_share() {
        // A caller with two answers to come waits for the second first: the first's answer
        // arrives while it is not waiting, so its sender makes the share itself; handed to the
        // first answer, the share would wait until the caller came to it.
        let (first, later) = channel::<usize>();
        let (second, answer) = channel::<usize>();
        let waiter = std::thread::spawn(move || answer.wait(Duration::from_secs(2)).ok());
        first.send_then(1, vec![second.delivery(2)]);
        assert_eq!(waiter.join().unwrap(), Some(2));
        assert_eq!(later.wait(Duration::from_secs(1)), Ok(1));
    }
}
