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
//! # Invariant
//! An entry is only dropped when clean, and the writer drops entries only between flushes, after
//! the previous flush committed: a reload from disk always sees the latest state.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::ratelimit::charge::{self, OpKind, RateOutcome, Target};
use crate::ratelimit::{CounterKey, CounterKeys, Limit, RateState, Spec, is_idle};

const SHARDS: usize = 64;

struct Entry {
    hash: u64,
    limit: Arc<str>,
    subject: Subject,
    key: CounterKey,
    spec: Spec,
    state: Option<RateState>,
    dirty: bool,
    touched: bool,
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
    /// The counter's storage key and state, loading it if it is not in memory.
    fn state(
        &mut self,
        hash: u64,
        query: Query<'_>,
        keys: &CounterKeys,
        loader: &impl Loader,
    ) -> Result<(CounterKey, Option<RateState>)> {
        let entry = Self::entry(&mut self.entries, hash, query, keys, loader)?;
        Ok((entry.key, entry.state))
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
                vacant
                    .insert(Entry {
                        hash,
                        limit: query.limit.shared_name(),
                        subject: Subject::new(query.subject),
                        key,
                        spec: query.limit.spec,
                        state,
                        dirty: false,
                        touched: false,
                    })
                    .into_mut()
            }
        };
        entry.touched = true;
        Ok(entry)
    }

    fn store(&mut self, hash: u64, target: &Target, state: Option<RateState>) {
        if let Some(entry) = self.entries.find_mut(hash, |e| e.key == target.key) {
            entry.state = state;
            entry.spec = target.spec;
            if !entry.dirty {
                entry.dirty = true;
                self.dirty.push((hash, target.key));
            }
        }
    }
}

/// A changed counter to write: `None` deletes it.
pub(crate) type DirtyCounter = (CounterKey, Spec, Option<RateState>);

pub(crate) struct RateCache {
    shards: Vec<Mutex<Shard>>,
    hasher: DefaultHashBuilder,
    keys: CounterKeys,
}

impl RateCache {
    pub(crate) fn new(keys: CounterKeys) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: DefaultHashBuilder::default(),
            keys,
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
    pub(crate) fn run(
        &self,
        kind: OpKind,
        queries: &[Query<'_>],
        now: u64,
        loader: &impl Loader,
    ) -> Result<RateOutcome> {
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
                entry.state = states[0];
                entry.spec = query.limit.spec;
                if !entry.dirty {
                    entry.dirty = true;
                    dirty.push((hash, entry.key));
                }
            }
            return Ok(outcome);
        }
        // Several counters: lock their shards in ascending order (no deadlock with another
        // multi-counter operation), so the whole check is atomic.
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
        for ((query, hash), &position) in queries.iter().zip(&hashes).zip(&positions) {
            let (key, state) = guards[position]
                .1
                .state(*hash, *query, &self.keys, loader)?;
            targets.push(Target {
                key,
                spec: query.limit.spec,
            });
            states.push(state);
        }
        let (outcome, changed) = charge::apply(kind, &targets, &mut states, now);
        if changed {
            for (((target, hash), &position), state) in
                targets.iter().zip(&hashes).zip(&positions).zip(states)
            {
                guards[position].1.store(*hash, target, state);
            }
        }
        Ok(outcome)
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

    pub(crate) fn take_dirty(&self) -> Vec<DirtyCounter> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock();
            let Shard { entries, dirty, .. } = &mut *shard;
            for (hash, key) in dirty.drain(..) {
                if let Some(entry) = entries.find_mut(hash, |e| e.key == key) {
                    entry.dirty = false;
                    out.push((key, entry.spec, entry.state));
                }
            }
        }
        out
    }

    /// Drops clean entries that are idle at `now` or were not used since the last pass. Call only
    /// after the latest flush committed.
    pub(crate) fn evict(&self, now: u64) {
        for shard in &self.shards {
            shard.lock().entries.retain(|entry| {
                let keep = entry.dirty
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
