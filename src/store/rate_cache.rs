//! Rate counters in memory, for [`RateDurability::Batched`](crate::ratelimit::RateDurability).
//!
//! 64 shards, each a mutex over a map from counter key to entry; keys are SHA-256 digests, so the
//! first byte spreads them evenly. An operation locks the shards of all its counters in ascending
//! shard order (so `check_all` never deadlocks with another), loads any counter it does not hold
//! from disk, applies the pure `charge::apply`, and marks changed counters dirty. The writer thread
//! takes the dirty counters at least every `max_delay` and writes them in one transaction.
//!
//! # Memory bound
//! An entry leaves memory when it is clean (written) and either idle (indistinguishable from a
//! fresh counter) or untouched since the previous eviction pass. So memory holds the counters
//! used in about the last second, plus those not yet flushed.
//!
//! # Invariant
//! An entry is only dropped when clean, and the writer drops entries only between flushes, after
//! the previous flush committed: a reload from disk always sees the latest state.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use parking_lot::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::ratelimit::charge::{self, OpKind, RateOutcome, Target};
use crate::ratelimit::{CounterKey, PassThroughHasher, RateState, Spec, is_idle};

const SHARDS: usize = 64;

struct Entry {
    spec: Spec,
    state: Option<RateState>,
    dirty: bool,
    touched: bool,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<CounterKey, Entry, BuildHasherDefault<PassThroughHasher>>,
    dirty: Vec<CounterKey>,
}

impl Shard {
    /// The entry's state, loading it with `load` if it is not in memory.
    fn state(
        &mut self,
        target: &Target,
        load: &impl Fn(&CounterKey, &Spec) -> Result<Option<RateState>>,
    ) -> Result<Option<RateState>> {
        if let Some(entry) = self.entries.get_mut(&target.key) {
            entry.touched = true;
            return Ok(entry.state);
        }
        let state = load(&target.key, &target.spec)?;
        self.entries.insert(
            target.key,
            Entry {
                spec: target.spec,
                state,
                dirty: false,
                touched: true,
            },
        );
        Ok(state)
    }

    fn store(&mut self, target: &Target, state: Option<RateState>) {
        if let Some(entry) = self.entries.get_mut(&target.key) {
            entry.state = state;
            entry.spec = target.spec;
            if !entry.dirty {
                entry.dirty = true;
                self.dirty.push(target.key);
            }
        }
    }
}

/// A changed counter to write: `None` deletes it.
pub(crate) type DirtyCounter = (CounterKey, Spec, Option<RateState>);

pub(crate) struct RateCache {
    shards: Vec<Mutex<Shard>>,
}

impl Default for RateCache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

fn shard_of(key: &CounterKey) -> usize {
    // The PRF output's last byte: independent of the bits the maps hash on.
    usize::from(key.0[15]) % SHARDS
}

impl RateCache {
    /// Runs `kind` on `targets` at `now`. `load` reads a counter that is not in memory (from
    /// disk, with the crash policy applied).
    pub(crate) fn run(
        &self,
        kind: OpKind,
        targets: &[Target],
        now: u64,
        load: impl Fn(&CounterKey, &Spec) -> Result<Option<RateState>>,
    ) -> Result<RateOutcome> {
        if let [target] = targets {
            // The common case, without allocation: one counter, one lock.
            let mut shard = self.shards[shard_of(&target.key)].lock();
            let mut states = [shard.state(target, &load)?];
            let (outcome, changed) = charge::apply(kind, targets, &mut states, now);
            if changed {
                shard.store(target, states[0]);
            }
            return Ok(outcome);
        }
        // Several counters: lock their shards in ascending order (no deadlock with another
        // multi-counter operation), so the whole check is atomic.
        let mut order: Vec<usize> = targets.iter().map(|t| shard_of(&t.key)).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> = order
            .into_iter()
            .map(|index| (index, self.shards[index].lock()))
            .collect();
        let mut positions = Vec::with_capacity(targets.len());
        for target in targets {
            let index = shard_of(&target.key);
            let position = guards
                .iter()
                .position(|(i, _)| *i == index)
                .ok_or_else(|| Error::Corrupted("rate cache shard not locked".into()))?;
            positions.push(position);
        }
        let mut states = Vec::with_capacity(targets.len());
        for (target, &position) in targets.iter().zip(&positions) {
            states.push(guards[position].1.state(target, &load)?);
        }
        let (outcome, changed) = charge::apply(kind, targets, &mut states, now);
        if changed {
            for ((target, &position), state) in targets.iter().zip(&positions).zip(states) {
                guards[position].1.store(target, state);
            }
        }
        Ok(outcome)
    }

    /// Takes every changed counter, marking it clean.
    pub(crate) fn take_dirty(&self) -> Vec<DirtyCounter> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock();
            let Shard { entries, dirty } = &mut *shard;
            for key in dirty.drain(..) {
                if let Some(entry) = entries.get_mut(&key) {
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
            shard.lock().entries.retain(|_, entry| {
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
