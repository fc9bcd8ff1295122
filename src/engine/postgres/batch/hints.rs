//! What a node's writers last saw of the rows they wrote and read, for a lone caller's one round
//! trip (`speculate.rs`): the RUNNING records this node wrote (a completion needs the lease's
//! record as stored), the counters it wrote or read, and a spare lease token.
//!
//! A hint is only ever a guess: the one-round-trip statement locks each row and compares it with
//! the hint's bytes before anything is written, so a hint that another node or writer made stale
//! costs a round trip, never a wrong decision. Bounded: at most [`MAX_RECORDS`] records of at
//! most [`MAX_RECORD_BYTES`] each and [`MAX_COUNTERS`] counters (an arbitrary one is dropped to
//! make room).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most record hints kept.
pub(crate) const MAX_RECORDS: usize = 16_384;
/// A record whose stored value is larger is not kept (a RUNNING record is about 100 bytes with
/// no checkpoint).
pub(crate) const MAX_RECORD_BYTES: usize = 1024;
/// Most counter hints kept (a counter's value is 26 bytes).
pub(crate) const MAX_COUNTERS: usize = 65_536;
/// A spare token older than this is not used: a lease's token is drawn from the schema's
/// sequence at most this long before the lease is granted, so tokens follow the order of grants
/// as closely as a batch's own do.
pub(crate) const SPARE_TOKEN_AGE: Duration = Duration::from_secs(1);
/// After this many lone changes in a row found their hints stale, the writers stop trying for
/// up to this many (doubling from 1): rows that other nodes change all the time cost no extra
/// round trip for long.
const MAX_BACKOFF: u32 = 64;

/// A record as this node's writers last stored it.
#[derive(Debug, Clone)]
pub(crate) struct RecordHint {
    /// The stored value, byte for byte.
    pub value: Vec<u8>,
    /// Its owner's epoch as the batch path would read it (this node's own, for its leases).
    pub owner_epoch: u64,
}

/// A node's hints, shared by its writers. Disabled (`postgres_one_round_trip(false)`), they keep
/// nothing and the batches feed them nothing.
#[derive(Debug)]
pub(crate) struct Hints {
    enabled: bool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<[u8; 32], RecordHint>,
    counters: HashMap<[u8; 16], Vec<u8>>,
    spare: Option<(u64, Instant)>,
    /// Lone changes still to run through the batch path before trying again, and the next
    /// penalty.
    skip: u32,
    penalty: u32,
}

impl Hints {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            inner: Mutex::default(),
        }
    }

    /// Whether lone changes use the hints (and batches keep them).
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn record(&self, digest: &[u8; 32]) -> Option<RecordHint> {
        self.inner.lock().records.get(digest).cloned()
    }

    pub(crate) fn counter(&self, key: &[u8; 16]) -> Option<Vec<u8>> {
        self.inner.lock().counters.get(key).cloned()
    }

    /// Remembers what a committed batch left in its rows, under one lock: each record's stored
    /// value (`None`: no row, or not worth keeping) and each counter's (`None`: no row).
    pub(crate) fn learn(
        &self,
        records: impl IntoIterator<Item = ([u8; 32], Option<RecordHint>)>,
        counters: impl IntoIterator<Item = ([u8; 16], Option<Vec<u8>>)>,
    ) {
        if !self.enabled {
            return;
        }
        let mut inner = self.inner.lock();
        for (digest, hint) in records {
            match hint {
                Some(hint) if hint.value.len() <= MAX_RECORD_BYTES => {
                    make_room(&mut inner.records, &digest, MAX_RECORDS);
                    inner.records.insert(digest, hint);
                }
                _ => {
                    inner.records.remove(&digest);
                }
            }
        }
        for (key, value) in counters {
            match value {
                Some(value) => {
                    make_room(&mut inner.counters, &key, MAX_COUNTERS);
                    inner.counters.insert(key, value);
                }
                None => {
                    inner.counters.remove(&key);
                }
            }
        }
    }

    /// Forgets what is known of these rows (their change's outcome is unknown, or they were not
    /// as hinted).
    pub(crate) fn forget(&self, records: &[[u8; 32]], counters: &[[u8; 16]]) {
        let mut inner = self.inner.lock();
        for digest in records {
            inner.records.remove(digest);
        }
        for key in counters {
            inner.counters.remove(key);
        }
    }

    /// A spare lease token drawn less than [`SPARE_TOKEN_AGE`] ago, taken.
    pub(crate) fn take_spare(&self) -> Option<u64> {
        let (token, drawn) = self.inner.lock().spare.take()?;
        (drawn.elapsed() < SPARE_TOKEN_AGE).then_some(token)
    }

    /// Whether a spare token is held (a fresh one).
    pub(crate) fn has_spare(&self) -> bool {
        self.inner
            .lock()
            .spare
            .is_some_and(|(_, drawn)| drawn.elapsed() < SPARE_TOKEN_AGE)
    }

    pub(crate) fn put_spare(&self, token: u64) {
        if !self.enabled {
            return;
        }
        self.inner.lock().spare = Some((token, Instant::now()));
    }

    /// Whether to try the next lone change in one round trip (false while backing off).
    pub(crate) fn should_try(&self) -> bool {
        let mut inner = self.inner.lock();
        if inner.skip == 0 {
            return true;
        }
        inner.skip -= 1;
        false
    }

    /// A lone change's hints held.
    pub(crate) fn held(&self) {
        self.inner.lock().penalty = 0;
    }

    /// A lone change's hints were stale: back off for a while.
    pub(crate) fn stale(&self) {
        let mut inner = self.inner.lock();
        inner.penalty = (inner.penalty.saturating_mul(2)).clamp(1, MAX_BACKOFF);
        inner.skip = inner.penalty;
    }
}

/// Drops an arbitrary entry of a full `map` that has no `key` yet.
fn make_room<K: std::hash::Hash + Eq + Copy, V>(map: &mut HashMap<K, V>, key: &K, max: usize) {
    if map.len() >= max
        && !map.contains_key(key)
        && let Some(victim) = map.keys().next().copied()
    {
        map.remove(&victim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_bounded_and_large_records_are_not_kept() {
        let hints = Hints::new(true);
        let counters = (0..(MAX_COUNTERS + 10)).map(|i| {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            (key, Some(vec![1; 26]))
        });
        hints.learn([], counters);
        assert_eq!(hints.inner.lock().counters.len(), MAX_COUNTERS);
        let big = RecordHint {
            value: vec![0; MAX_RECORD_BYTES + 1],
            owner_epoch: 1,
        };
        hints.learn([([1; 32], Some(big))], []);
        assert!(hints.record(&[1; 32]).is_none());
        let small = RecordHint {
            value: vec![0; 100],
            owner_epoch: 1,
        };
        hints.learn([([1; 32], Some(small))], []);
        assert!(hints.record(&[1; 32]).is_some());
        hints.forget(&[[1; 32]], &[]);
        assert!(hints.record(&[1; 32]).is_none());
    }

    #[test]
    fn a_spare_token_is_used_once_and_stale_hints_back_off_doubling() {
        let hints = Hints::new(true);
        assert_eq!(hints.take_spare(), None);
        hints.put_spare(7);
        assert!(hints.has_spare());
        assert_eq!(hints.take_spare(), Some(7));
        assert_eq!(hints.take_spare(), None);

        assert!(hints.should_try());
        hints.stale();
        assert!(!hints.should_try());
        assert!(hints.should_try());
        hints.stale();
        assert!(!hints.should_try() && !hints.should_try());
        assert!(hints.should_try());
        hints.held();
        hints.stale();
        assert!(!hints.should_try());
        assert!(hints.should_try());
    }

    #[test]
    fn disabled_hints_keep_nothing() {
        let hints = Hints::new(false);
        hints.learn(
            [(
                [1; 32],
                Some(RecordHint {
                    value: vec![0; 10],
                    owner_epoch: 1,
                }),
            )],
            [],
        );
        hints.put_spare(7);
        assert!(hints.record(&[1; 32]).is_none() && !hints.has_spare());
    }
}
