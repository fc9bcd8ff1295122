//! The denial cache: "this counter denies a check of cost 1 until T", kept by the node that was
//! told so, so that a flood of denied requests (a password-guessing bot, a client that ignores
//! `Retry-After`) costs Redis one call per subject per [`CAP`] instead of one per request.
//!
//! **It never allows.** It only answers denials, each one that Redis itself gave: a check of
//! cost 1 on a single counter that Redis denied with a retry time. Until that time a check of
//! cost 1 is denied again (a GCRA, fixed or sliding counter that denies a cost now denies it at
//! every later instant before its retry time, however many others are charged meanwhile), with
//! the numbers Redis would give: remaining 0, and the retry and reset times counted down. The
//! times are those of the moment the reply arrived, a little after Redis decided, so a cached
//! denial lasts at most one round trip longer than Redis's own.
//!
//! **It can be stale the other way, boundedly.** After a `refund` or `reset` of that counter on
//! *another* node, Redis would allow sooner than the cache says. So an entry is used for at most
//! [`CAP`] after it was made, whatever the retry time; a `refund` or `reset` on this node drops
//! the counter's entry at once, and `peek` always asks Redis. Multi-limit checks always go to
//! Redis (which limit decides depends on every counter).
//!
//! **Bounded.** At most [`MAX_ENTRIES`] entries, over 16 shards; a full shard first drops its
//! expired entries and, if still full, takes no more.

use std::collections::HashMap;

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

/// The longest an entry is used after it was made (µs): the bound on a stale denial after a
/// refund or reset on another node.
pub(crate) const CAP: u64 = 1_000_000;
/// The most entries the cache holds.
pub(crate) const MAX_ENTRIES: usize = 65_536;
const SHARDS: usize = 16;

/// A denial Redis gave, in microseconds on the cache's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Denial {
    made: u64,
    /// `made + min(retry, CAP)`.
    until: u64,
    retry_at: u64,
    reset_at: u64,
}

/// What a cached denial answers at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    pub retry_after: u64,
    pub reset_after: u64,
}

impl Denial {
    /// Redis denied a check of cost 1 at `now`: retry after `retry`, reset after `reset`.
    pub(crate) fn new(now: u64, retry: u64, reset: u64) -> Denial {
        Denial {
            made: now,
            until: now.saturating_add(retry.min(CAP)),
            retry_at: now.saturating_add(retry),
            reset_at: now.saturating_add(reset),
        }
    }

    /// The answer at `now`, if the entry may answer then (made no later, and not past its
    /// validity: after it, Redis decides again).
    fn at(&self, now: u64) -> Option<Answer> {
        (self.made <= now && now < self.until).then(|| Answer {
            retry_after: self.retry_at - now,
            reset_after: self.reset_at.saturating_sub(now),
        })
    }
}

/// A counter, as the cache knows it: the keyed hash its Redis key is written from
/// (`Namespace::counter_key`), so that a lookup needs no string.
pub(crate) type Key = [u8; 16];

/// Denials by counter.
pub(crate) struct DenialCache {
    shards: Vec<Mutex<HashMap<Key, Denial>>>,
    /// Entries held (roughly): while none, lookups and forgets skip the locks.
    held: AtomicUsize,
}

impl DenialCache {
    pub(crate) fn new() -> DenialCache {
        DenialCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            held: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &Key) -> Option<&Mutex<HashMap<Key, Denial>>> {
        // The key is a keyed hash: any of its bytes spreads the keys evenly.
        self.shards.get(usize::from(key[15]) % SHARDS)
    }

    /// The cached answer for a check of cost 1 on `key` at `now`.
    pub(crate) fn answer(&self, key: &Key, now: u64) -> Option<Answer> {
        if self.held.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.shard(key)?.lock().get(key)?.at(now)
    }

    /// Keeps a denial Redis gave for `key`.
    pub(crate) fn insert(&self, key: &Key, denial: Denial) {
        let Some(shard) = self.shard(key) else { return };
        let mut shard = shard.lock();
        if shard.len() >= MAX_ENTRIES / SHARDS && !shard.contains_key(key) {
            let before = shard.len();
            shard.retain(|_, entry| entry.until > denial.made);
            self.held.fetch_sub(before - shard.len(), Ordering::Relaxed);
            if shard.len() >= MAX_ENTRIES / SHARDS {
                return;
            }
        }
        if shard.insert(*key, denial).is_none() {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets `key`'s denial (a refund or reset here, or an allowance).
    pub(crate) fn forget(&self, key: &Key) {
        if self.held.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(shard) = self.shard(key) {
            if shard.lock().remove(key).is_some() {
                self.held.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key as a keyed hash would give it, from `i`.
    fn key(i: usize) -> Key {
        let mut key = [0; 16];
        key[..8].copy_from_slice(&(i as u64).to_le_bytes());
        key[15] = u8::try_from(i % 251).unwrap_or(0);
        key
    }

    #[test]
    fn a_denial_counts_down_and_ends_at_its_retry_time_or_the_cap() {
        let cache = DenialCache::new();
        cache.insert(&key(0), Denial::new(1000, 300, 500));
        assert_eq!(cache.answer(&key(0), 999), None, "not before it was made");
        assert_eq!(
            cache.answer(&key(0), 1100),
            Some(Answer {
                retry_after: 200,
                reset_after: 400
            })
        );
        assert_eq!(
            cache.answer(&key(0), 1300),
            None,
            "Redis decides from the retry time"
        );
        // A long wait is used for CAP only.
        cache.insert(&key(1), Denial::new(0, 60 * CAP, 60 * CAP));
        assert_eq!(
            cache.answer(&key(1), CAP - 1).map(|a| a.retry_after),
            Some(59 * CAP + 1)
        );
        assert_eq!(cache.answer(&key(1), CAP), None);
        cache.forget(&key(0));
        assert_eq!(cache.answer(&key(0), 1100), None);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_expired_entries_first() {
        let cache = DenialCache::new();
        for i in 0..MAX_ENTRIES + 100 {
            cache.insert(&key(i), Denial::new(0, 10, 10));
        }
        assert!(cache.len() <= MAX_ENTRIES, "{}", cache.len());
        // Later the old entries have expired: as many new ones fit again, each answering.
        let fresh: Vec<Key> = (MAX_ENTRIES + 100..2 * MAX_ENTRIES + 100)
            .map(key)
            .collect();
        for key in &fresh {
            cache.insert(key, Denial::new(100, 10, 10));
        }
        let answered = fresh
            .iter()
            .filter(|key| cache.answer(key, 105).is_some())
            .count();
        // Shards fill unevenly: nearly all, not exactly all, fit.
        assert!(
            answered > MAX_ENTRIES * 9 / 10,
            "{answered} of {MAX_ENTRIES}"
        );
        assert!(cache.len() <= MAX_ENTRIES, "{}", cache.len());
    }
}
