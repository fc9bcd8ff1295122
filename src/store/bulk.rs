//! The bulk-load helper: many completed records in one transaction.
//!
//! For benchmarks at scale (ten million records), migrations from another idempotency store, and
//! tests. Records are produced by the writer inside the transaction, so nothing is held in
//! memory beyond what the engine needs for the commit.

use std::time::Duration;

use super::Store;
use crate::clock::duration_to_nanos;
use crate::error::{Error, Result};
use crate::idempotency::{Fingerprint, IdempotencyKey, Record, RecordBody, StoredResponse};

impl Store {
    /// Writes `count` COMPLETED records in one durable transaction: all of them, or none if it
    /// fails. `make(i)` gives the `i`-th
    /// record's key, fingerprint and response; each is kept for `record_ttl` from now. An existing
    /// record with the same key is replaced. `max_records` applies as for `begin`.
    ///
    /// Meant for benchmarks, migrations and tests; a single large transaction holds the writer for
    /// its whole duration (about 1–2 µs per record) and needs memory for its dirty pages.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tollgate::{Store, idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse}};
    /// # let dir = tempfile::tempdir().map_err(|e| tollgate::Error::InvalidArgument(e.to_string()))?;
    /// let store = Store::open(dir.path().join("t.redb"))?;
    /// let written = store.bulk_load(1000, Duration::from_secs(3600), |i| {
    ///     let key = IdempotencyKey::new("bulk", &format!("key-{i}")).expect("valid key");
    ///     (key, Fingerprint::of(b"request"), StoredResponse::new(200, b"ok".to_vec()))
    /// })?;
    /// assert_eq!(written, 1000);
    /// let key = IdempotencyKey::new("bulk", "key-7")?;
    /// assert!(matches!(store.begin(&key, &Fingerprint::of(b"request"))?, Begin::Replay(_)));
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::CapacityExceeded`], [`Error::InvalidArgument`] for a zero TTL,
    /// [`Error::Corrupted`] if a record it would replace cannot be decoded, and any storage error.
    /// Nothing is written when it fails, except on [`Error::InDoubt`] (PostgreSQL: the connection
    /// was lost once the commit was sent): then the whole load or none of it was written, and
    /// loading it again is safe.
    pub fn bulk_load(
        &self,
        count: u64,
        record_ttl: Duration,
        mut make: impl FnMut(u64) -> (IdempotencyKey, Fingerprint, StoredResponse) + Send + 'static,
    ) -> Result<u64> {
        if record_ttl.is_zero() {
            return Err(Error::InvalidArgument(
                "record_ttl must be greater than zero".into(),
            ));
        }
        let ttl = duration_to_nanos(record_ttl);
        let records = Box::new(move |i: u64, now: u64| {
            (i < count).then(|| {
                let (key, fingerprint, response) = make(i);
                let record = Record {
                    fingerprint: fingerprint.0,
                    created_at: now,
                    expires_at: now.saturating_add(ttl),
                    attempts: 1,
                    record_ttl: ttl,
                    body: RecordBody::Completed(response),
                };
                (key.digest(), record)
            })
        });
        let loaded = self.shared.engine.records().bulk_load(count, records);
        // Replaced records must not be replayed from the cache.
        if let Some(cache) = &self.shared.replays {
            cache.clear();
        }
        loaded
    }
}
