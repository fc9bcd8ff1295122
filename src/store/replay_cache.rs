//! Finished records (COMPLETED or FAILED) by digest, so that a replay skips redb.
//!
//! A finished record never changes until it expires (the state machine has no transition out of
//! a final state, sweeps remove only expired records, and time never runs backwards), so a cached
//! copy stays exactly the record on disk for as long as it matters: a lookup that finds an expired
//! copy treats it as a miss and the caller goes to the store. The only other writer of a final
//! record is `bulk_load`, which replaces records and then clears the cache; a generation number
//! keeps a reader that read the old record before the clear from caching it after.
//!
//! Bounded by bytes (the record's encoded size, roughly): 16 shards, each holding at most a
//! sixteenth of the budget; when a shard is full it evicts arbitrary entries (hash order) until the
//! new one fits. Cost of a hit: one foldhash of the digest, one uncontended mutex, one `Arc` clone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::idempotency::{Digest, Record, RecordBody};

const SHARDS: usize = 16;

/// A per-shard budget below this is no cache at all.
const MIN_SHARD_BYTES: usize = 4096;

pub(crate) struct ReplayCache {
    shards: Vec<Mutex<Shard>>,
    shard_bytes: usize,
    /// Bumped by `clear`: a record read before a clear is not inserted after it.
    generation: AtomicU64,
}

#[derive(Default)]
struct Shard {
    records: HashMap<Digest, (Arc<Record>, usize)>,
    bytes: usize,
}

/// Bytes a cached record is charged: its response plus a fixed overhead.
fn charge(record: &Record) -> usize {
    let response = match &record.body {
        RecordBody::Completed(response) | RecordBody::Failed(response) => response.size(),
        RecordBody::Running { .. } => 0,
    };
    response.saturating_add(128)
}

impl ReplayCache {
    /// A cache of at most `bytes`; `None` if that is too small to be worth a lookup.
    pub(crate) fn new(bytes: usize) -> Option<Self> {
        let shard_bytes = bytes / SHARDS;
        (shard_bytes >= MIN_SHARD_BYTES).then(|| Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_bytes,
            generation: AtomicU64::new(0),
        })
    }

    fn shard(&self, digest: &Digest) -> &Mutex<Shard> {
        // The digest is a SHA-256 output: any byte is as good a shard index as a hash.
        &self.shards[usize::from(digest.0[31]) % SHARDS]
    }

    pub(crate) fn get(&self, digest: &Digest) -> Option<Arc<Record>> {
        self.shard(digest)
            .lock()
            .records
            .get(digest)
            .map(|(record, _)| Arc::clone(record))
    }

    /// The generation to pass to `insert` for a record about to be read from the store.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches `record` if it is finished and small enough, and no `clear` happened since
    /// `generation` was taken (before the record was read).
    pub(crate) fn insert(&self, digest: Digest, record: Record, generation: u64) {
        if matches!(record.body, RecordBody::Running { .. }) {
            return;
        }
        let size = charge(&record);
        if size > self.shard_bytes / 4 {
            return;
        }
        let mut shard = self.shard(&digest).lock();
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        while shard.bytes + size > self.shard_bytes {
            let Some(victim) = shard.records.keys().next().copied() else {
                break;
            };
            if let Some((_, freed)) = shard.records.remove(&victim) {
                shard.bytes -= freed;
            }
        }
        if let Some((_, replaced)) = shard.records.insert(digest, (Arc::new(record), size)) {
            shard.bytes -= replaced;
        }
        shard.bytes += size;
    }

    /// Forgets everything (after records were replaced in bulk).
    pub(crate) fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            let mut shard = shard.lock();
            shard.records.clear();
            shard.bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::StoredResponse;

    fn finished(body_len: usize) -> Record {
        Record {
            fingerprint: [1; 32],
            created_at: 0,
            expires_at: 100,
            attempts: 1,
            record_ttl: 100,
            body: RecordBody::Completed(StoredResponse::new(200, vec![0; body_len])),
        }
    }

    #[test]
    fn caches_finished_records_only_and_stays_within_its_budget() {
        let cache = ReplayCache::new(SHARDS * 8192).unwrap();
        let mut running = finished(0);
        running.body = RecordBody::Running {
            token: 1,
            epoch: 1,
            lease_expires_at: 10,
            checkpoint: None,
        };
        cache.insert(Digest([0; 32]), running, 0);
        assert!(cache.get(&Digest([0; 32])).is_none());

        for i in 0..200u8 {
            cache.insert(Digest([i; 32]), finished(1000), 0);
        }
        for shard in &cache.shards {
            assert!(shard.lock().bytes <= 8192);
        }
        let kept = (0..200u8)
            .filter(|i| cache.get(&Digest([*i; 32])).is_some())
            .count();
        assert!(kept > 0 && kept < 200, "{kept} kept");
        let before = cache.generation();
        cache.clear();
        assert!((0..200u8).all(|i| cache.get(&Digest([i; 32])).is_none()));
        // A record read before the clear is not cached after it.
        cache.insert(Digest([7; 32]), finished(10), before);
        assert!(cache.get(&Digest([7; 32])).is_none());
        cache.insert(Digest([7; 32]), finished(10), cache.generation());
        assert!(cache.get(&Digest([7; 32])).is_some());
    }

    #[test]
    fn a_tiny_budget_is_no_cache() {
        assert!(ReplayCache::new(1000).is_none());
        assert!(ReplayCache::new(0).is_none());
    }
}
