//! Time, injected.
//!
//! Every time-dependent behaviour of the store (lease expiry, record TTLs, takeovers) reads the time
//! from a [`Clock`]. Production code uses [`SystemClock`]; tests use [`ManualClock`] and move time by
//! hand, so no test ever sleeps.
//!
//! The clock is *wall-clock* time on purpose: a record's expiry is written to disk and must mean the
//! same instant after a restart, which a monotonic `Instant` cannot.
//!
//! # Time going backwards
//!
//! Wall clocks step backwards (NTP corrections, a VM restored from a snapshot). The store never
//! trusts such a step: it keeps a persisted high-water mark of the latest time it has used and treats
//! an earlier reading as "no time has passed" (see [`StoreTime`]). So a step backwards never shortens
//! a lease (which could let a second owner in early) and never re-opens an expired one; a step
//! forwards is honoured, because it cannot be told apart from time really passing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
///
/// Implement it to drive the store from your own time source. It must be cheap: the store reads it
/// on every operation.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The operating system's wall clock. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to. Clones share one time.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tollgate::{Clock, ManualClock};
///
/// let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let clock = ManualClock::new(start);
/// let shared = clock.clone();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(shared.now(), start + Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `start`. Times before 1970 are read as 1970; times past the year 2554
    /// saturate.
    pub fn new(start: SystemTime) -> Self {
        Self {
            nanos: Arc::new(AtomicU64::new(system_time_to_nanos(start))),
        }
    }

    /// Moves the time forwards by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let by = duration_to_nanos(by);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Sets the time to `to`, forwards or backwards.
    pub fn set(&self, to: SystemTime) {
        self.nanos.store(system_time_to_nanos(to), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        nanos_to_system_time(self.nanos.load(Ordering::SeqCst))
    }
}

/// The store's view of time: the clock, clamped to never run backwards.
///
/// Holds the high-water mark in nanoseconds since the Unix epoch. The writer persists it with every
/// commit and restores it at open, so the clamp also holds across restarts.
pub(crate) struct StoreTime {
    clock: Arc<dyn Clock>,
    high_water: AtomicU64,
}

impl StoreTime {
    pub(crate) fn new(clock: Arc<dyn Clock>, high_water: u64) -> Self {
        Self {
            clock,
            high_water: AtomicU64::new(high_water),
        }
    }

    /// Nanoseconds since the Unix epoch, never less than any value returned before.
    pub(crate) fn now(&self) -> u64 {
        let read = system_time_to_nanos(self.clock.now());
        let previous = self.high_water.fetch_max(read, Ordering::AcqRel);
        previous.max(read)
    }

    /// The latest time handed out, for persisting.
    pub(crate) fn high_water(&self) -> u64 {
        self.high_water.load(Ordering::Acquire)
    }
}

/// Nanoseconds since the Unix epoch, saturating at both ends.
pub(crate) fn system_time_to_nanos(time: SystemTime) -> u64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => duration_to_nanos(since),
        Err(_) => 0,
    }
}

pub(crate) fn nanos_to_system_time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// A duration in nanoseconds, saturating at `u64::MAX` (about 584 years).
pub(crate) fn duration_to_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time_and_can_step_back() {
        let start = UNIX_EPOCH + Duration::from_secs(100);
        let clock = ManualClock::new(start);
        let other = clock.clone();
        other.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), start + Duration::from_secs(1));
        clock.set(start - Duration::from_secs(50));
        assert_eq!(other.now(), start - Duration::from_secs(50));
    }

    #[test]
    fn store_time_treats_a_backwards_step_as_no_time_passed() {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(100));
        let time = StoreTime::new(Arc::new(clock.clone()), 0);
        let first = time.now();
        clock.set(UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(time.now(), first);
        clock.set(UNIX_EPOCH + Duration::from_secs(101));
        assert_eq!(time.now(), first + 1_000_000_000);
    }

    #[test]
    fn store_time_starts_from_the_persisted_high_water_mark() {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1));
        let time = StoreTime::new(Arc::new(clock), 5_000_000_000);
        assert_eq!(time.now(), 5_000_000_000);
    }

    #[test]
    fn conversions_saturate() {
        assert_eq!(system_time_to_nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(duration_to_nanos(Duration::MAX), u64::MAX);
    }
}
