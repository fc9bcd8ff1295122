//! Rate counters in memory, for [`RateDurability::Batched`](crate::ratelimit::RateDurability).
//!
//! 64 shards, each a mutex over a hash table of entries found by *(limit name, subject)* with a
//! randomly seeded fast hash (foldhash, hashbrown's default). The storage key (a keyed `SipHash` of
//! the same pair, see `ratelimit::key`) is computed only when a counter is first loaded, and kept
//! in the entry for flushing: on the hot path a check costs one short hash and one probe.
//!
//! An operation locks the shards of all its counters in ascending shard order (so `check_all`
//! never deadlocks with another), loads any counter it does not hold from disk, applies the pure
//! `charge::apply`, and marks changed counters dirty. The writer thread takes the dirty counters
//! at least every `max_delay` and writes them in one transaction. The shard locks are the only
//! shared state a check touches (no store-wide lock): closing marks every shard closed, under its
//! lock, before the final flush.
//!
//! Hash flooding: subjects are client-chosen, and foldhash is seeded per process but not a
//! cryptographic PRF. A flood of colliding subjects could only slow lookups in one shard (equality
//! still decides), never merge two counters: on disk, counters are keyed by SipHash-128.
//!
//! # Memory bound
//! An entry leaves memory when it is clean (written) and either idle (indistinguishable from a
//! fresh counter) or untouched since the previous eviction pass. So memory holds the counters
//! used in about the last second, plus those not yet flushed.
//!
//! # Reservations (the default crash policy, `BoundedLoss`)
//! A charge is answered from memory only while the disk already holds a state at least as spent
//! as the one it leaves (`durable` covers it, `algorithm::covers`). A charge that would go past
//! it reserves instead: the entry's `reserved` state becomes the new state plus
//! `algorithm::reservation_units` (an eighth of the burst, at least one), the operation is not
//! applied, and the caller flushes (one group commit) and runs it again. The writer's timed flush
//! renews ahead, without anyone waiting, the reservation of every counter charged in the last
//! [`RELEASE_AFTER`] that has less than half of one left on disk: steady checks of a busy
//! counter stay in memory; after a crash the disk holds at most one reservation more than was
//! really spent. A counter not charged for
//! [`RELEASE_AFTER`] is released: its true state is written, so that a crash then costs it
//! nothing. With the other policies nothing is reserved: charges apply in memory and the state is
//! flushed within `max_delay`.
//!
//! # Invariant
//! An entry is only dropped when clean (and released), and the writer drops entries only between
//! flushes, after the previous flush committed: a reload from disk always sees the latest state.
//! With reservations, what the disk holds always covers the state in memory (`durable` is lowered
//! when a release is taken, before it is written, and raised only by a commit of what it says).

use std::hash::BuildHasher;

use hashbrown::DefaultHashBuilder;
use parking_lot::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::ratelimit::charge::{self, OpKind, Target};
use crate::ratelimit::{CounterKey, CounterKeys, RateState, Spec, covers, is_idle};

mod shard;

pub(crate) use shard::{Loader, Query, Step};
use shard::{Shard, apply_charge, lowers};

const SHARDS: usize = 64;

/// A counter not charged for this long (in the store's time) is released: its true state is
/// written in place of its reservation. With the writer's timed flushes at most
/// [`RELEASE_EVERY`] apart (real time), a counter idle for a second before a crash has its true
/// state on disk.
pub(crate) const RELEASE_AFTER: u64 = 400_000_000;

/// The longest time between the writer's timed flushes under reservations (each releases idle
/// reservations and renews active ones), whatever `max_delay` says.
pub(crate) const RELEASE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// A changed counter to write: `state` `None` deletes it. `hash` and `version` find the entry
/// again once the write committed ([`RateCache::committed`]).
pub(crate) struct DirtyCounter {
    pub key: CounterKey,
    pub spec: Spec,
    pub state: Option<RateState>,
    hash: u64,
    version: u32,
}

pub(crate) struct RateCache {
    shards: Vec<Mutex<Shard>>,
    hasher: DefaultHashBuilder,
    keys: CounterKeys,
    /// Whether charges go only as far as a reservation on disk (the `BoundedLoss` policy).
    reservations: bool,
}

impl RateCache {
    pub(crate) fn new(keys: CounterKeys, reservations: bool) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: DefaultHashBuilder::default(),
            keys,
            reservations,
        }
    }

    fn hash(&self, query: Query<'_>) -> u64 {
        self.hasher.hash_one((query.limit.name(), query.subject))
    }
}

/// The shard of a hash: bits 32..38, independent of the bits the tables use (the low bits pick a
/// bucket, the top seven are the control byte).
fn shard_of(hash: u64) -> usize {
    usize::try_from((hash >> 32) % SHARDS as u64).unwrap_or(0)
}

impl RateCache {
    /// Runs `kind` on `queries` at `now`. `loader` reads a counter that is not in memory (from
    /// disk, with the crash policy applied).
    /// With reservations, a charge that needs a larger one is not applied: the answer is
    /// [`Step::Reserve`], and the caller flushes and runs it again.
    pub(crate) fn run(
        &self,
        kind: OpKind,
        queries: &[Query<'_>],
        now: u64,
        loader: &impl Loader,
    ) -> Result<Step> {
        if let [query] = queries {
            // The common case, without allocation: one counter, one lock, one table lookup.
            let hash = self.hash(*query);
            let mut shard = self.shards[shard_of(hash)].lock();
            let Shard {
                entries,
                dirty,
                closed,
            } = &mut *shard;
            if *closed {
                return Err(Error::Closed);
            }
            let entry = Shard::entry(entries, hash, *query, &self.keys, loader)?;
            let targets = [Target {
                key: entry.key,
                spec: query.limit.spec,
            }];
            let mut states = [entry.state];
            let (outcome, changed) = charge::apply(kind, &targets, &mut states, now);
            if changed {
                let spec = query.limit.spec;
                if self.reservations && lowers(kind) {
                    // A refund or a reset: applied, and written before it is answered, so that a
                    // crash cannot undo it (the reservation on disk would).
                    apply_charge(entry, dirty, spec, states[0], now, true);
                    if entry.release() {
                        entry.dirty = true;
                        dirty.push((hash, entry.key));
                    }
                    return Ok(Step::Write(outcome));
                }
                if let (true, Some(state)) = (self.reservations, states[0]) {
                    if !covers(&spec, entry.durable, state, now) {
                        if entry.reserve_for(&spec, state, now) {
                            entry.dirty = true;
                            dirty.push((hash, entry.key));
                        }
                        return Ok(Step::Reserve);
                    }
                }
                apply_charge(entry, dirty, spec, states[0], now, self.reservations);
            }
            return Ok(Step::Done(outcome));
        }
        self.run_several(kind, queries, now, loader)
    }

    /// [`RateCache::run`] of several counters: their shards locked in ascending order (no
    /// deadlock with another multi-counter operation), so the whole check is atomic.
    fn run_several(
        &self,
        kind: OpKind,
        queries: &[Query<'_>],
        now: u64,
        loader: &impl Loader,
    ) -> Result<Step> {
        let hashes: Vec<u64> = queries.iter().map(|q| self.hash(*q)).collect();
        let mut order: Vec<usize> = hashes.iter().map(|h| shard_of(*h)).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> = order
            .into_iter()
            .map(|index| (index, self.shards[index].lock()))
            .collect();
        if guards.iter().any(|(_, shard)| shard.closed) {
            return Err(Error::Closed);
        }
        let mut positions = Vec::with_capacity(queries.len());
        for hash in &hashes {
            let index = shard_of(*hash);
            let position = guards
                .iter()
                .position(|(i, _)| *i == index)
                .ok_or_else(|| Error::Corrupted("rate cache shard not locked".into()))?;
            positions.push(position);
        }
        let mut targets = Vec::with_capacity(queries.len());
        let mut states = Vec::with_capacity(queries.len());
        let mut durable = Vec::with_capacity(queries.len());
        for ((query, hash), &position) in queries.iter().zip(&hashes).zip(&positions) {
            let (key, state, on_disk) = guards[position]
                .1
                .state(*hash, *query, &self.keys, loader)?;
            targets.push(Target {
                key,
                spec: query.limit.spec,
            });
            states.push(state);
            durable.push(on_disk);
        }
        let (outcome, changed) = charge::apply(kind, &targets, &mut states, now);
        if !changed {
            return Ok(Step::Done(outcome));
        }
        if self.reservations {
            // All or nothing: if any counter needs a larger reservation, none is charged.
            let mut short = false;
            for ((((target, hash), &position), state), on_disk) in targets
                .iter()
                .zip(&hashes)
                .zip(&positions)
                .zip(&states)
                .zip(&durable)
            {
                if let Some(state) = state {
                    if !covers(&target.spec, *on_disk, *state, now) {
                        guards[position]
                            .1
                            .reserve(*hash, target.key, &target.spec, *state, now);
                        short = true;
                    }
                }
            }
            if short {
                return Ok(Step::Reserve);
            }
        }
        let release = self.reservations && lowers(kind);
        for (((target, hash), &position), state) in
            targets.iter().zip(&hashes).zip(&positions).zip(states)
        {
            let shard = &mut guards[position].1;
            shard.store(*hash, target, state, now, self.reservations);
            if release {
                shard.release(*hash, target.key);
            }
        }
        Ok(if release {
            Step::Write(outcome)
        } else {
            Step::Done(outcome)
        })
    }

    /// Refuses every later operation with [`Error::Closed`]. An operation that holds a shard is
    /// waited for, so once this returns every change is either in `take_dirty`'s reach or refused:
    /// the final flush after it misses nothing.
    pub(crate) fn close(&self) {
        for shard in &self.shards {
            shard.lock().closed = true;
        }
    }

    /// Marks every counter in memory changed, so that the next flush writes them all (after a
    /// flush failed: what it took is written again).
    pub(crate) fn mark_all_dirty(&self) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            let Shard { entries, dirty, .. } = &mut *shard;
            for entry in entries.iter_mut() {
                if !entry.dirty {
                    entry.dirty = true;
                    dirty.push((entry.hash, entry.key));
                }
            }
        }
    }

    /// Whether charges go only as far as a reservation on disk.
    pub(crate) fn reserves(&self) -> bool {
        self.reservations
    }

    /// Takes every changed counter, marking it clean: the state each must be written with (its
    /// reservation, or its state without reservations). With `release` (the store's time now),
    /// the reservations of counters not charged for [`RELEASE_AFTER`] (with `release_all`, of
    /// every counter) are released first: the true state is written, and `durable` lowered to
    /// it at once; those of counters charged since are renewed if less than half is left (a
    /// GCRA reservation runs out with time even when nothing is charged).
    pub(crate) fn take_dirty(&self, release: Option<u64>, release_all: bool) -> Vec<DirtyCounter> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock();
            let Shard { entries, dirty, .. } = &mut *shard;
            if let (true, Some(now)) = (self.reservations, release) {
                for entry in entries.iter_mut() {
                    let idle = now.saturating_sub(entry.charged_at) >= RELEASE_AFTER;
                    let write = if release_all || idle {
                        entry.holds_reservation() && entry.release()
                    } else {
                        entry.renew(now)
                    };
                    if write {
                        entry.dirty = true;
                        dirty.push((entry.hash, entry.key));
                    }
                }
            }
            for (hash, key) in dirty.drain(..) {
                if let Some(entry) = entries.find_mut(hash, |e| e.key == key) {
                    entry.dirty = false;
                    out.push(DirtyCounter {
                        key,
                        spec: entry.spec,
                        state: entry.reserved,
                        hash,
                        version: entry.version,
                    });
                }
            }
        }
        out
    }

    /// `written` is durable: each counter not released since it was taken is known to hold it.
    pub(crate) fn committed(&self, written: &[DirtyCounter]) {
        if !self.reservations {
            return;
        }
        for counter in written {
            let mut shard = self.shards[shard_of(counter.hash)].lock();
            if let Some(entry) = shard.find(counter.hash, counter.key) {
                // Versions wrap; a release since the take is a floor ahead of the written version.
                let ahead = entry.floor.wrapping_sub(counter.version);
                let released_since = ahead != 0 && ahead < u32::MAX / 2;
                if !released_since {
                    entry.durable = counter.state;
                }
            }
        }
    }

    /// Drops clean entries that are idle at `now` or were not used since the last pass, and hold
    /// no reservation. Call only after the latest flush committed.
    pub(crate) fn evict(&self, now: u64) {
        for shard in &self.shards {
            shard.lock().entries.retain(|entry| {
                let keep = entry.dirty
                    || entry.holds_reservation()
                    || (entry.touched
                        && entry
                            .state
                            .is_some_and(|state| !is_idle(&entry.spec, state, now)));
                entry.touched = false;
                keep
            });
        }
    }

    /// Entries in memory.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().entries.len())
            .sum()
    }
}

#[cfg(test)]
mod tests;
