//! Test support (feature `test-support`): not part of the stable API.
//!
//! - [`SimDisk`]: an in-memory disk that can lose power at a chosen sync or fail I/O from a chosen
//!   operation, for the power-loss tests; open a store on it with `StoreBuilder::open_simulated`.
//! - [`fuzz`]: the fuzz targets' logic as plain functions, so `cargo test` runs them over the
//!   committed seed corpus and `cargo +nightly fuzz` runs them over generated inputs.

// Test support reports violations by panicking: that is how fuzzers and tests see them.
#![allow(clippy::expect_used, clippy::panic)]

pub use crate::engine::embedded::storage::SimDisk;

#[cfg(feature = "redis")]
pub mod redis;
#[cfg(target_os = "linux")]
pub mod shared;
mod tls;

pub use tls::certificates;

/// A loopback TCP port that was free a moment ago (for a test's throwaway server).
///
/// # Errors
/// A message if no port can be bound.
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| e.to_string())
}

/// Says that `what` did not run and why, on the process's standard error itself.
///
/// A test's `eprintln!` goes to libtest's capture, which shows nothing for a test that passes: a
/// test that returned early for want of a server would look like one that ran. This writes past
/// the capture, once per skipped test, naming the test (libtest names each test's thread after
/// it), so that `cargo test` prints every skip. A failed write is ignored: there is nowhere left
/// to say it.
pub fn say_skipped(what: &str, why: &str) {
    use std::io::Write as _;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("(unnamed thread)");
    let _ = writeln!(
        std::io::stderr().lock(),
        "#### SKIPPED {test}: {what} did not run: {why}"
    );
}

/// How many panics inside redb (which it documents for damaged files) this process has caught
/// and turned into typed errors: lets a test show that the containment actually ran.
pub fn contained_panics() -> u64 {
    crate::engine::embedded::storage::contained_panics()
}

/// The writer's command queue of an open store (see `Store::command_queue_for_tests`).
pub struct CommandQueue(pub(crate) crossbeam_channel::Receiver<crate::engine::embedded::Command>);

impl CommandQueue {
    /// Commands waiting for the writer (including a `close`'s shutdown).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no command is waiting.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub mod fuzz;
mod harness;
mod model;

pub use harness::{Harness, Op, PowerCuts};
pub use model::{KEYS, LEASE_TTL, RATE_QUOTA, RATE_WINDOW, RECORD_TTL, SUBJECTS};
