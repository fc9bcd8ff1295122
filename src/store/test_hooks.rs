//! Hooks for tests (`test-support`): the writer's queue, the log applier held, the database
//! clock moved, Redis call counts. Hidden from the docs; not part of the stable API.

use std::time::Duration;

use super::Store;
use crate::engine::Engine;
use crate::error::Result;

impl Store {
    /// A view of the writer's command queue that outlives `close` (test support: lets a test see
    /// commands queued behind a held commit). `None` once closed. Drop it once the test has seen
    /// what it waited for: while it lives the queue stays connected, so a command sent after the
    /// writer stopped would wait for an answer instead of getting `Closed`.
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn command_queue_for_tests(&self) -> Option<crate::testing::CommandQueue> {
        match &self.shared.engine {
            Engine::Embedded(engine) => engine.command_queue().map(crate::testing::CommandQueue),
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => None,
            #[cfg(target_os = "linux")]
            Engine::Shared(_) => None,
        }
    }

    /// Holds (or releases) the embedded engine's log applier (test support): while held, what
    /// the write-ahead log acknowledges stays in the log and the overlay, out of redb, so a copy
    /// of the files is a crash image with a log to recover. Returns whether the store has a log.
    /// While held, whatever waits for redb to catch up waits too (`stats`, compaction, bulk
    /// loads, a full overlay); `close` releases it (and applies everything first).
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn hold_log_applier_for_tests(&self, hold: bool) -> bool {
        match &self.shared.engine {
            Engine::Embedded(engine) => engine.hold_applier(hold),
            #[cfg(feature = "postgres")]
            Engine::Postgres(_) => false,
            #[cfg(target_os = "linux")]
            Engine::Shared(_) => false,
        }
    }

    /// Moves the store's clock forward by `by` (test support): on the embedded engine, nothing
    /// (move the builder's `ManualClock`); on PostgreSQL, the schema's clock, for every node;
    /// for counters on Redis, the time this store's scripts decide at.
    ///
    /// # Errors
    /// [`Error::Closed`]; on PostgreSQL, [`Error::Unavailable`].
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn advance_database_clock_for_tests(&self, by: Duration) -> Result<()> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.shared.redis {
            redis.advance_clock_for_tests(by);
        }
        match &self.shared.engine {
            Engine::Embedded(_) => {
                let _ = by;
                Ok(())
            }
            #[cfg(target_os = "linux")]
            Engine::Shared(_) => Ok(()),
            #[cfg(feature = "postgres")]
            Engine::Postgres(engine) => engine.advance_clock(by),
        }
    }

    /// Stops the store's clock at `at` (test support): on the embedded engine, nothing (set the
    /// builder's `ManualClock`); on PostgreSQL, the schema's clock, for every node, until it is
    /// set or advanced again; for counters on Redis, the time this store's scripts decide at. It may go back; the store's own estimate between round trips does
    /// not.
    ///
    /// # Errors
    /// [`Error::Closed`]; on PostgreSQL, [`Error::Unavailable`].
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn set_database_clock_for_tests(&self, at: std::time::SystemTime) -> Result<()> {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.shared.redis {
            redis.set_clock_for_tests(crate::clock::system_time_to_nanos(at));
        }
        match &self.shared.engine {
            Engine::Embedded(_) => {
                let _ = at;
                Ok(())
            }
            #[cfg(target_os = "linux")]
            Engine::Shared(_) => Ok(()),
            #[cfg(feature = "postgres")]
            Engine::Postgres(engine) => engine.set_clock(crate::clock::system_time_to_nanos(at)),
        }
    }

    /// Script calls and pipelines this store sent to Redis (test support: shows that concurrent
    /// checks share them). `None` without counters on Redis.
    #[cfg(all(feature = "redis", any(test, feature = "test-support")))]
    #[doc(hidden)]
    pub fn redis_calls_for_tests(&self) -> Option<(u64, u64)> {
        self.shared
            .redis
            .as_ref()
            .map(crate::engine::redis::Redis::counts)
    }
}
