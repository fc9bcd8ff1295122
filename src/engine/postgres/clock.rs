//! The database server's clock, as this node follows it between round trips.
//!
//! Every decision that writes is taken at the server's reading inside its own transaction
//! (`lock.sql`). Answers that need no round trip (a replay from the replay cache, `get`'s expiry
//! filter) use this estimate: the last reading plus the monotonic time elapsed since it, never
//! going back. Nodes whose wall clocks disagree by minutes still agree here, up to the drift of a
//! monotonic clock since the last round trip (microseconds).

use std::time::Instant;

use parking_lot::Mutex;

#[derive(Debug)]
pub(crate) struct ServerClock {
    /// The last reading and when it arrived.
    anchor: Mutex<(u64, Instant)>,
    /// The latest time handed out (the estimate never goes back).
    high_water: Mutex<u64>,
}

impl ServerClock {
    pub(crate) fn new(reading: u64) -> Self {
        Self {
            anchor: Mutex::new((reading, Instant::now())),
            high_water: Mutex::new(reading),
        }
    }

    /// A reading of the server's clock, taken just now.
    pub(crate) fn observe(&self, reading: u64) {
        *self.anchor.lock() = (reading, Instant::now());
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
}
