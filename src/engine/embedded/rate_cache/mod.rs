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
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::ratelimit::charge::{self, OpKind, RateOutcome, Target};
use crate::ratelimit::{
    CounterKey, CounterKeys, Limit, RateState, Spec, covers, is_idle, most_restrictive,
    reservation_units, reserve,
};

const SHARDS: usize = 64;

/// A counter not charged for this long (in the store's time) is released: its true state is
/// written in place of its reservation. With the writer's timed flushes at most
/// [`RELEASE_EVERY`] apart (real time), a counter idle for a second before a crash has its true
/// state on disk.
pub(crate) const RELEASE_AFTER: u64 = 400_000_000;

/// The longest time between the writer's timed flushes under reservations (each releases idle
/// reservations and renews active ones), whatever `max_delay` says.
pub(crate) const RELEASE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

struct Entry {
    hash: u64,
    limit: Arc<str>,
    subject: Subject,
    key: CounterKey,
    spec: Spec,
    state: Option<RateState>,
    /// With reservations: a state the disk is known to hold at least (it covers `state`).
    durable: Option<RateState>,
    /// With reservations: the state the next flush writes (covers `state`).
    reserved: Option<RateState>,
    /// Bumped at every change of `reserved`; `floor` is the version of the last release.
    version: u32,
    floor: u32,
    /// When a charge last changed `state` (the store's time).
    charged_at: u64,
    dirty: bool,
    touched: bool,
}

impl Entry {
    /// Whether a reservation is outstanding (the disk may hold more than was spent).
    fn holds_reservation(&self) -> bool {
        self.reserved != self.state
    }

    /// Gives the reservation back: the true state is to be written, and until it is, the disk is
    /// only known to hold at least that. Returns whether it must be written.
    fn release(&mut self) -> bool {
        self.reserved = self.state;
        self.durable = self.state;
        self.version = self.version.wrapping_add(1);
        self.floor = self.version;
        !self.dirty
    }

    /// Renews the reservation ahead if less than half of one is left on disk (as of `now`), so
    /// that the next charges need not wait. Returns whether it must be written.
    fn renew(&mut self, now: u64) -> bool {
        let Some(state) = self.state else {
            return false;
        };
        let spec = self.spec;
        let half = (reservation_units(&spec) / 2).max(1);
        let ahead = reserve(&spec, state, half, now);
        !covers(&spec, self.durable, ahead, now) && self.reserve_for(&spec, state, now)
    }

    /// Raises `reserved` to cover `state` plus a reservation; returns whether it must be written.
    fn reserve_for(&mut self, spec: &Spec, state: RateState, now: u64) -> bool {
        let wanted = reserve(spec, state, reservation_units(spec), now);
        let reserved = most_restrictive(spec, self.reserved, wanted, now);
        if self.reserved != Some(reserved) {
            self.reserved = Some(reserved);
            self.version = self.version.wrapping_add(1);
        }
        !self.dirty
    }
}

/// A subject, inline when short (most are: IP addresses, ids), so that comparing it touches no
/// other cache line.
enum Subject {
    Inline {
        len: u8,
        bytes: [u8; INLINE_SUBJECT],
    },
    Heap(Box<str>),
}

const INLINE_SUBJECT: usize = 46;

impl Subject {
    fn new(subject: &str) -> Self {
        let mut bytes = [0; INLINE_SUBJECT];
        match (bytes.get_mut(..subject.len()), u8::try_from(subject.len())) {
            (Some(slot), Ok(len)) => {
                slot.copy_from_slice(subject.as_bytes());
                Subject::Inline { len, bytes }
            }
            _ => Subject::Heap(subject.into()),
        }
    }

    fn is(&self, subject: &str) -> bool {
        match self {
            Subject::Inline { len, bytes } => {
                bytes.get(..usize::from(*len)) == Some(subject.as_bytes())
            }
            Subject::Heap(boxed) => &**boxed == subject,
        }
    }
}

/// Whether `stored` names the same limit as `name`; limits share their name's allocation, so this
/// is usually a pointer comparison.
fn same_limit(stored: &Arc<str>, name: &str) -> bool {
    std::ptr::eq(stored.as_ptr(), name.as_ptr()) && stored.len() == name.len() || &**stored == name
}

/// Whether `kind` can only lower a counter (a refund, a reset).
fn lowers(kind: OpKind) -> bool {
    matches!(kind, OpKind::Refund { .. } | OpKind::Reset)
}

/// What an operation on the cache came to.
pub(crate) enum Step {
    /// Decided (and applied, if it charged).
    Done(RateOutcome),
    /// Applied, and to be answered once written (a refund or a reset under reservations):
    /// flush, then answer.
    Write(RateOutcome),
    /// Not applied: a counter needs a larger reservation first. Flush, then run it again.
    Reserve,
}

#[derive(Default)]
struct Shard {
    entries: HashTable<Entry>,
    /// Entries changed since the last flush, by (hash, storage key).
    dirty: Vec<(u64, CounterKey)>,
    /// Set by [`RateCache::close`]: operations are refused from then on.
    closed: bool,
}

/// One counter an operation asks for.
#[derive(Clone, Copy)]
pub(crate) struct Query<'a> {
    pub limit: &'a Limit,
    pub subject: &'a str,
}

/// Reads a counter that is not in memory.
pub(crate) trait Loader {
    fn load(&self, key: &CounterKey, spec: &Spec) -> Result<Option<RateState>>;
}

impl<F: Fn(&CounterKey, &Spec) -> Result<Option<RateState>>> Loader for F {
    fn load(&self, key: &CounterKey, spec: &Spec) -> Result<Option<RateState>> {
        self(key, spec)
    }
}

impl Shard {
    /// The counter's storage key, state, and what the disk is known to hold, loading it if it
    /// is not in memory.
    fn state(
        &mut self,
        hash: u64,
        query: Query<'_>,
        keys: &CounterKeys,
        loader: &impl Loader,
    ) -> Result<(CounterKey, Option<RateState>, Option<RateState>)> {
        let entry = Self::entry(&mut self.entries, hash, query, keys, loader)?;
        Ok((entry.key, entry.state, entry.durable))
    }

    /// The counter's entry, loaded into `entries` if it is not in memory; marked as used.
    fn entry<'e>(
        entries: &'e mut HashTable<Entry>,
        hash: u64,
        query: Query<'_>,
        keys: &CounterKeys,
        loader: &impl Loader,
    ) -> Result<&'e mut Entry> {
        let name = query.limit.name();
        let entry = match entries.entry(
            hash,
            |e| same_limit(&e.limit, name) && e.subject.is(query.subject),
            |e| e.hash,
        ) {
            hashbrown::hash_table::Entry::Occupied(occupied) => occupied.into_mut(),
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                let key = keys.key(name, query.subject)?;
                let state = loader.load(&key, &query.limit.spec)?;
                // What was loaded is what the disk holds.
                vacant
                    .insert(Entry {
                        hash,
                        limit: query.limit.shared_name(),
                        subject: Subject::new(query.subject),
                        key,
                        spec: query.limit.spec,
                        state,
                        durable: state,
                        reserved: state,
                        version: 0,
                        floor: 0,
                        charged_at: 0,
                        dirty: false,
                        touched: false,
                    })
                    .into_mut()
            }
        };
        entry.touched = true;
        Ok(entry)
    }

    fn find(&mut self, hash: u64, key: CounterKey) -> Option<&mut Entry> {
        self.entries.find_mut(hash, |e| e.key == key)
    }

    /// Applies a charge's new `state` (`reservations`: the caller checked it is covered).
    fn store(
        &mut self,
        hash: u64,
        target: &Target,
        state: Option<RateState>,
        now: u64,
        reservations: bool,
    ) {
        let Shard { entries, dirty, .. } = self;
        if let Some(entry) = entries.find_mut(hash, |e| e.key == target.key) {
            apply_charge(entry, dirty, target.spec, state, now, reservations);
        }
    }

    /// Gives back the reservation of the counter `hash`/`key` (its state is to be written).
    fn release(&mut self, hash: u64, key: CounterKey) {
        let Shard { entries, dirty, .. } = self;
        if let Some(entry) = entries.find_mut(hash, |e| e.key == key) {
            if entry.release() {
                entry.dirty = true;
                dirty.push((hash, key));
            }
        }
    }

    /// Raises the reservation of the counter `hash`/`key` to cover `state`.
    fn reserve(&mut self, hash: u64, key: CounterKey, spec: &Spec, state: RateState, now: u64) {
        let Shard { entries, dirty, .. } = self;
        if let Some(entry) = entries.find_mut(hash, |e| e.key == key) {
            if entry.reserve_for(spec, state, now) {
                entry.dirty = true;
                dirty.push((hash, key));
            }
        }
    }
}

/// Applies a charge's new `state` to `entry`. Without reservations the state itself is what the
/// next flush writes; with them the reservation already on disk covers it.
fn apply_charge(
    entry: &mut Entry,
    dirty: &mut Vec<(u64, CounterKey)>,
    spec: Spec,
    state: Option<RateState>,
    now: u64,
    reservations: bool,
) {
    entry.state = state;
    entry.spec = spec;
    entry.charged_at = now;
    if reservations {
        // Nothing to write: the reservation on disk covers the state. The writer's timed flush
        // renews it ahead while the counter is charged (`take_dirty`); renewing from here too
        // changed nothing measurable (BENCHMARKS, eleventh session).
        let _ = dirty;
        return;
    }
    entry.reserved = state;
    if !entry.dirty {
        entry.dirty = true;
        dirty.push((entry.hash, entry.key));
    }
}

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

    /// Takes every changed counter, marking it clean.
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
mod tests {
    use super::*;
    use crate::ratelimit::Quota;
    use std::time::Duration;

    const SECOND: u64 = 1_000_000_000;
    const T0: u64 = 1_800_000_000 * SECOND;

    /// A fixed window of 16 an hour: reservations of 2 units.
    fn limit() -> Limit {
        Limit::new("w", Quota::fixed_window(16, Duration::from_secs(3600))).unwrap()
    }

    #[allow(clippy::unnecessary_wraps)] // a `Loader`
    fn fresh(_: &CounterKey, _: &Spec) -> Result<Option<RateState>> {
        Ok(None)
    }

    fn charge(cache: &RateCache, limit: &Limit, now: u64) -> Step {
        let query = Query {
            limit,
            subject: "s",
        };
        cache
            .run(OpKind::Charge { cost: 1 }, &[query], now, &fresh)
            .unwrap()
    }

    fn count(state: Option<RateState>) -> u64 {
        match state {
            Some(RateState::FixedWindow { count, .. }) => count,
            other => panic!("not a fixed window: {other:?}"),
        }
    }

    /// Until its reservation is written a charge changes nothing; once it is, the charge runs.
    #[test]
    fn a_charge_past_the_reservation_waits_for_its_write() {
        let cache = RateCache::new(CounterKeys::new((1, 2)), true);
        let limit = limit();
        assert!(matches!(charge(&cache, &limit, T0), Step::Reserve));
        assert!(matches!(charge(&cache, &limit, T0), Step::Reserve));
        let written = cache.take_dirty(None, false);
        assert_eq!(written.len(), 1);
        assert_eq!(
            count(written[0].state),
            3,
            "the charge's unit and two reserved"
        );
        cache.committed(&written);
        for left in [15, 14, 13] {
            let Step::Done(outcome) = charge(&cache, &limit, T0) else {
                panic!("a charge within the reservation waited");
            };
            assert_eq!(outcome.evaluation.remaining, left);
        }
        assert!(matches!(charge(&cache, &limit, T0), Step::Reserve));
    }

    /// A reservation written while the counter's release was taken must not count as what the
    /// disk holds: the release is written after it, and the disk ends up with the true state.
    #[test]
    fn a_release_after_a_reservation_was_taken_keeps_the_lower_state() {
        let cache = RateCache::new(CounterKeys::new((1, 2)), true);
        let limit = limit();
        assert!(matches!(charge(&cache, &limit, T0), Step::Reserve));
        cache.committed(&cache.take_dirty(None, false));
        for _ in 0..3 {
            assert!(matches!(charge(&cache, &limit, T0), Step::Done(_)));
        }
        // Spent 3, the disk holds 3; the fourth unit reserves 6, and that write is taken ...
        assert!(matches!(charge(&cache, &limit, T0), Step::Reserve));
        let in_flight = cache.take_dirty(None, false);
        assert_eq!(count(in_flight[0].state), 6);
        // ... then a second passes without a charge: the release (back to 3) is taken ...
        let released = cache.take_dirty(Some(T0 + SECOND), false);
        assert_eq!(count(released[0].state), 3);
        // ... and the reservation's commit lands first. The disk will hold 3 once the release
        // commits, so a fourth unit must still wait for a reservation.
        cache.committed(&in_flight);
        assert!(matches!(charge(&cache, &limit, T0 + SECOND), Step::Reserve));
        cache.committed(&released);
        assert!(matches!(charge(&cache, &limit, T0 + SECOND), Step::Reserve));
    }

    /// Without reservations (the other crash policies) every charge runs from memory and the
    /// state itself is what a flush writes.
    #[test]
    fn without_reservations_charges_run_at_once() {
        let cache = RateCache::new(CounterKeys::new((1, 2)), false);
        let limit = limit();
        for _ in 0..4 {
            assert!(matches!(charge(&cache, &limit, T0), Step::Done(_)));
        }
        let written = cache.take_dirty(Some(T0), true);
        assert_eq!(count(written[0].state), 4);
    }
}
