//! Every schedule of a waiting `begin` against the completion that wakes it, explored with
//! shuttle on a small model of the code (`engine/notify.rs`, `store/begin.rs`'s wait loop).
//!
//! The protocol: the writer commits a change to the record, then bumps the notifier's
//! generation under its mutex and wakes every waiter. A waiter notes the generation *before* it
//! looks at the record; if the record is still in flight it sleeps until the generation moves
//! past what it noted, then looks again. A commit between its look and its sleep moved the
//! generation already, so the sleep returns at once: no wake-up is lost. The model's waiter has
//! no deadline, so a lost wake-up is a sleep for ever, which shuttle reports as a deadlock.
//!
//! Checked exhaustively (shuttle's DFS over every interleaving of the two threads, a few hundred);
//! and the same model with the generation noted *after* the look must fail: the test that shows
//! the exploration reaches the losing schedule.

use shuttle::sync::{Arc, Condvar, Mutex};

/// `engine/notify.rs`: a generation under a mutex, with a condition variable.
#[derive(Default)]
struct Notifier {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Notifier {
    fn generation(&self) -> u64 {
        *self.generation.lock().unwrap()
    }

    fn bump(&self) {
        let mut generation = self.generation.lock().unwrap();
        *generation += 1;
        self.changed.notify_all();
    }

    /// `wait_past` without a deadline.
    fn wait_past(&self, seen: u64) {
        let mut generation = self.generation.lock().unwrap();
        while *generation == seen {
            generation = self.changed.wait(generation).unwrap();
        }
    }
}

/// A record in flight, then finished by the writer's commit.
#[derive(Default)]
struct Store {
    finished: Mutex<bool>,
    notifier: Notifier,
}

/// One schedule: a writer finishes the record while a waiter waits for it. `note_first`: the
/// waiter notes the generation before looking (the code) or after (the bug).
fn schedule(note_first: bool) {
    let store = Arc::new(Store::default());
    let writer = {
        let store = Arc::clone(&store);
        shuttle::thread::spawn(move || {
            *store.finished.lock().unwrap() = true; // the commit
            store.notifier.bump();
        })
    };
    loop {
        let noted = note_first.then(|| store.notifier.generation());
        let finished = *store.finished.lock().unwrap();
        if finished {
            break;
        }
        let seen = noted.unwrap_or_else(|| store.notifier.generation());
        store.notifier.wait_past(seen);
    }
    writer.join().unwrap();
}

#[test]
fn a_waiting_begin_never_misses_the_completion_that_wakes_it() {
    shuttle::check_dfs(|| schedule(true), None);
}

#[test]
#[should_panic(expected = "deadlock")]
fn noting_the_generation_after_the_look_loses_a_wake_up() {
    shuttle::check_dfs(|| schedule(false), None);
}
