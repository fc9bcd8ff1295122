//! The database server's clock, as this node follows it between round trips.
//!
//! Every decision that writes is taken at the server's reading inside its own transaction
//! (`lock.sql`). Answers that need no round trip (a replay from the replay cache, `get`'s expiry
//! filter) use this estimate: the last reading plus the monotonic time elapsed since it, never
//! going back. Nodes whose wall clocks disagree by minutes still agree here, up to the drift of a
//! monotonic clock since the last round trip (microseconds).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A lone caller's decision is not taken ahead of the server's clock: its time is the estimate
/// less this, and less a thousandth of the time since the last reading (a monotonic clock and a
/// wall clock being slewed drift apart by up to 500 ppm).
const DECISION_MARGIN: Duration = Duration::from_micros(200);
/// The estimate is not used for a decision this long after the last reading.
const DECISION_MAX_AGE: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct ServerClock {
    /// The last reading and when it arrived.
    anchor: Mutex<(u64, Instant)>,
    /// The latest time handed out (the estimate never goes back).
    high_water: Mutex<u64>,
    /// Whether the last reading was of a stopped clock (test support stops it).
    stopped: AtomicBool,
}

impl ServerClock {
    pub(crate) fn new(reading: u64) -> Self {
        Self {
            anchor: Mutex::new((reading, Instant::now())),
            high_water: Mutex::new(reading),
            stopped: AtomicBool::new(false),
        }
    }

    /// A reading of the server's clock, taken just now.
    pub(crate) fn observe(&self, reading: u64) {
        *self.anchor.lock() = (reading, Instant::now());
    }

    /// Whether the server's clock was found stopped (the last reading stands still until moved).
    pub(crate) fn set_stopped(&self, stopped: bool) {
        self.stopped.store(stopped, Ordering::Relaxed);
    }

    /// A time for a lone caller's decision (`batch/lone.rs`), which its statement checks to
    /// be no later than the server's reading and at most a bound behind it: the estimate less a
    /// margin for drift, never before the last reading; exactly the last reading while the
    /// clock is stopped. `None` long after the last reading (the estimate may have drifted).
    pub(crate) fn decision_time(&self) -> Option<u64> {
        let (reading, at) = *self.anchor.lock();
        if self.stopped.load(Ordering::Relaxed) {
            return Some(reading);
        }
        let elapsed = at.elapsed();
        if elapsed > DECISION_MAX_AGE {
            return None;
        }
        let margin = DECISION_MARGIN + elapsed / 1000;
        let ahead = u64::try_from(elapsed.saturating_sub(margin).as_nanos()).unwrap_or(u64::MAX);
        Some(reading.saturating_add(ahead))
    }

    /// The server's time now, as estimated from the last reading.
    pub(crate) fn now(&self) -> u64 {
        let (reading, at) = *self.anchor.lock();
        let elapsed = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let estimate = reading.saturating_add(elapsed);
        let mut high = self.high_water.lock();
        *high = (*high).max(estimate);
        *high
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_readings_and_never_goes_back() {
        let clock = ServerClock::new(1_000);
        assert!(clock.now() >= 1_000);
        clock.observe(5_000_000_000);
        assert!(clock.now() >= 5_000_000_000);
        clock.observe(10);
        assert!(
            clock.now() >= 5_000_000_000,
            "a reading behind the estimate is not followed back"
        );
    }

    #[test]
    fn a_decision_is_not_ahead_of_the_estimate_and_exact_on_a_stopped_clock() {
        let clock = ServerClock::new(1_000_000_000);
        let time = clock.decision_time().unwrap();
        assert!((1_000_000_000..=clock.now()).contains(&time));
        clock.set_stopped(true);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(clock.decision_time(), Some(1_000_000_000));
        clock.set_stopped(false);
        let time = clock.decision_time().unwrap();
        // 2 ms or more since the reading, less a margin of about 200 µs: past the reading,
        // never past the estimate.
        assert!(time > 1_000_000_000 && time <= clock.now());
    }
}
