//! The begin flow, the same on every engine: arguments and TTLs checked, a finished record
//! answered from the replay cache (its answer depends only on the clock), else the engine asked,
//! waiting for a key in flight if the caller asked to; the engine's decision turned into the
//! public [`Begin`].

use std::time::{Duration, Instant};

use super::replay_cache::ReplayCache;
use super::{BeginOptions, Store};
use crate::engine::{BeginRequest, Early, Seen};
use crate::error::{Error, Result};
use crate::idempotency::machine::{BeginDecision, begin as decide};
use crate::idempotency::{Begin, Digest, Fingerprint, IdempotencyKey, Lease, Replay};
use crate::observe::BeginOutcome;

impl Store {
    /// Starts (or replays, or refuses) the request identified by `key` with the store's default
    /// TTLs and no waiting. See [`Store::begin_with`].
    ///
    /// # Errors
    /// As for [`Store::begin_with`].
    pub fn begin(&self, key: &IdempotencyKey, fingerprint: &Fingerprint) -> Result<Begin> {
        self.begin_with(key, fingerprint, &BeginOptions::default())
    }

    /// Starts the request identified by `key`:
    /// - no record, or an expired one: [`Begin::Acquired`] with a fresh lease;
    /// - RUNNING under a live lease: [`Begin::InFlight`] (or, with `options.wait`, wait for it);
    /// - RUNNING under an expired lease, or one from before the store was last opened: taken over,
    ///   [`Begin::Acquired`] with [`Lease::recovered`] set;
    /// - COMPLETED or FAILED: [`Begin::Replay`];
    /// - any record whose fingerprint differs: [`Begin::Mismatch`].
    ///
    /// A lease is durable before it is returned. Replays, mismatches and in-flight answers for
    /// committed records are served from a read transaction, without the writer.
    ///
    /// # Errors
    /// - [`Error::CapacityExceeded`] if a new record would exceed `max_records`.
    /// - [`Error::InvalidArgument`] for a zero TTL in `options`.
    /// - [`Error::Corrupted`] if the stored record cannot be decoded.
    /// - [`Error::Closed`], [`Error::Poisoned`], [`Error::Storage`].
    pub fn begin_with(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: &BeginOptions,
    ) -> Result<Begin> {
        let request = self.begin_request(fingerprint, options)?;
        let digest = key.digest();
        let deadline = options.wait.map(|wait| Instant::now() + wait);
        loop {
            let seen = self.shared.notifier.generation();
            let outcome = self.begin_once(digest, request)?;
            match (outcome, deadline) {
                (Begin::InFlight { retry_after }, Some(deadline)) if Instant::now() < deadline => {
                    // Wake at the first of: a commit here, the lease's expiry, the caller's
                    // deadline, and the engine's poll (commits of other nodes wake nobody).
                    let mut wake = Instant::now()
                        .checked_add(retry_after)
                        .map_or(deadline, |expiry| expiry.min(deadline));
                    if let Some(poll) = self.shared.engine.records().wait_poll() {
                        wake = wake.min(Instant::now() + poll);
                    }
                    self.shared.notifier.wait_past(seen, wake);
                }
                (outcome, _) => return Ok(outcome),
            }
        }
    }

    /// [`Store::begin`] if memory can answer it, without waiting for any I/O: `Some` with the
    /// answer `begin` would give, or `None` when the answer needs the disk or the network.
    /// Memory answers a replay or a mismatch for a finished record in the replay cache
    /// ([`StoreBuilder::replay_cache_size`](super::StoreBuilder::replay_cache_size)); a begin that would take a lease, or a key the cache
    /// does not hold, answers `None`. Never writes.
    ///
    /// For callers on an async executor: answer on the worker when this says `Some`, hand
    /// `begin` to a blocking thread otherwise (the tower [`IdempotencyLayer`] does).
    ///
    /// ```
    /// use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
    /// use tollgate::{BeginOptions, Store};
    ///
    /// let store = Store::in_memory()?;
    /// let (key, request) = (IdempotencyKey::new("user:1", "k")?, Fingerprint::of(b"pay 10"));
    /// let options = BeginOptions::default();
    /// // A new key needs a lease, which is a write: memory cannot answer.
    /// assert!(store.try_begin(&key, &request, &options)?.is_none());
    /// if let Begin::Acquired(lease) = store.begin(&key, &request)? {
    ///     lease.complete(StoredResponse::new(201, b"paid".to_vec()))?;
    /// }
    /// store.begin(&key, &request)?; // the first replay reads the record and caches it
    /// let Some(Begin::Replay(replay)) = store.try_begin(&key, &request, &options)? else {
    ///     panic!("a cached replay is answered from memory");
    /// };
    /// assert_eq!(replay.response().body, b"paid");
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`Store::begin_with`].
    ///
    /// [`IdempotencyLayer`]: crate::tower::IdempotencyLayer
    pub fn try_begin(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: &BeginOptions,
    ) -> Result<Option<Begin>> {
        let request = self.begin_request(fingerprint, options)?;
        let digest = key.digest();
        Ok(match self.begin_from_cache(digest, request)? {
            FromCache::Answer(decision) => Some(self.to_begin(digest, decision)),
            FromCache::MustWrite | FromCache::NotCached => None,
        })
    }

    /// A begin of `fingerprint` with `options`' TTLs (or the store's defaults).
    fn begin_request(
        &self,
        fingerprint: &Fingerprint,
        options: &BeginOptions,
    ) -> Result<BeginRequest> {
        let (lease_ttl, record_ttl) = self.shared.settings.ttls(options)?;
        Ok(BeginRequest {
            fingerprint: fingerprint.0,
            lease_ttl,
            record_ttl,
            holder: None,
        })
    }

    /// What the replay cache says about a begin of `digest`.
    fn begin_from_cache(&self, digest: Digest, request: BeginRequest) -> Result<FromCache> {
        let Some(cached) = self.shared.replays.as_ref().and_then(|c| c.get(&digest)) else {
            return Ok(FromCache::NotCached);
        };
        if self.shared.engine.is_closed() {
            return Err(Error::Closed);
        }
        self.shared.engine.check_usable()?;
        let epoch = self.shared.engine.epoch();
        let params = request.params(self.shared.engine.records().now(), epoch, epoch, 0);
        Ok(match decide(Some(&cached), &params) {
            BeginDecision::Acquired { .. } => FromCache::MustWrite,
            decision => FromCache::Answer(decision),
        })
    }

    fn begin_once(&self, digest: Digest, request: BeginRequest) -> Result<Begin> {
        let records = self.shared.engine.records();
        // Fast path: a finished record in the replay cache is answered from memory (its answer
        // depends on nothing but the clock), then the engine may answer without writing.
        let cached = self.begin_from_cache(digest, request)?;
        if let FromCache::Answer(decision) = cached {
            return Ok(self.to_begin(digest, decision));
        }
        if let FromCache::NotCached = cached {
            let generation = self.shared.replays.as_ref().map(ReplayCache::generation);
            match records.begin_without_writing(&digest, request)? {
                Early::Answer(decision, record) => {
                    if let (Some(cache), Some(generation)) = (&self.shared.replays, generation) {
                        if matches!(decision, BeginDecision::Replay { .. }) {
                            cache.insert(digest, record, generation);
                        }
                    }
                    return Ok(self.to_begin(digest, decision));
                }
                Early::Write(seen) => {
                    let decision = records.begin(digest, request, seen)?;
                    return Ok(self.to_begin(digest, decision));
                }
                Early::Written(decision) => return Ok(self.to_begin(digest, decision)),
            }
        }
        let decision = records.begin(digest, request, Seen::Nothing)?;
        Ok(self.to_begin(digest, decision))
    }

    fn to_begin(&self, digest: Digest, decision: BeginDecision) -> Begin {
        let (outcome, attempt) = match &decision {
            BeginDecision::Acquired { grant, .. } if grant.recovered => {
                (BeginOutcome::Takeover, grant.attempt)
            }
            BeginDecision::Acquired { grant, .. } => (BeginOutcome::Acquired, grant.attempt),
            BeginDecision::Replay { .. } => (BeginOutcome::Replay, 0),
            BeginDecision::InFlight { .. } => (BeginOutcome::InFlight, 0),
            BeginDecision::Mismatch => (BeginOutcome::Mismatch, 0),
        };
        crate::observe::begin(&digest, outcome, attempt);
        match decision {
            BeginDecision::Acquired { grant, .. } => Begin::Acquired(Lease {
                store: self.clone(),
                digest,
                token: grant.token,
                attempt: grant.attempt,
                recovered: grant.recovered,
                checkpoint: grant.checkpoint,
                expires_at: grant.lease_expires_at,
            }),
            BeginDecision::Replay { outcome, response } => {
                Begin::Replay(Replay { outcome, response })
            }
            BeginDecision::InFlight { retry_after } => Begin::InFlight {
                retry_after: Duration::from_nanos(retry_after),
            },
            BeginDecision::Mismatch => Begin::Mismatch,
        }
    }
}

/// What the replay cache says about a begin.
// Returned once per begin and matched at once: boxing the answer would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum FromCache {
    /// The begin's answer (a replay or a mismatch), decided on the cached finished record.
    Answer(BeginDecision),
    /// The cached record has expired: the begin takes a new lease, through the engine's writer.
    MustWrite,
    /// The cache does not hold the key.
    NotCached,
}
