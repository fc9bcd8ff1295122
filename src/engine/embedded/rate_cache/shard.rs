//! One shard of the rate cache: a hash table of entries found by *(limit name, subject)*, each
//! holding its counter's state in memory and, with reservations, what the disk holds for it
//! (`durable`) and what is being written (`reserved`); the charge applied under the shard locks.

use std::sync::Arc;

use hashbrown::HashTable;

use crate::error::Result;
use crate::ratelimit::charge::{OpKind, RateOutcome, Target};
use crate::ratelimit::{
    CounterKey, CounterKeys, Limit, RateState, Spec, covers, most_restrictive, reservation_units,
    reserve,
};

pub(super) struct Entry {
    pub(super) hash: u64,
    pub(super) limit: Arc<str>,
    pub(super) subject: Subject,
    pub(super) key: CounterKey,
    pub(super) spec: Spec,
    pub(super) state: Option<RateState>,
    /// With reservations: a state the disk is known to hold at least (it covers `state`).
    pub(super) durable: Option<RateState>,
    /// With reservations: the state the next flush writes (covers `state`).
    pub(super) reserved: Option<RateState>,
    /// Bumped at every change of `reserved`; `floor` is the version of the last release.
    pub(super) version: u32,
    pub(super) floor: u32,
    /// When a charge last changed `state` (the store's time).
    pub(super) charged_at: u64,
    pub(super) dirty: bool,
    pub(super) touched: bool,
}

impl Entry {
    /// Whether a reservation is outstanding (the disk may hold more than was spent).
    pub(super) fn holds_reservation(&self) -> bool {
        self.reserved != self.state
    }

    /// Gives the reservation back: the true state is to be written, and until it is, the disk is
    /// only known to hold at least that. Returns whether it must be written.
    pub(super) fn release(&mut self) -> bool {
        self.reserved = self.state;
        self.durable = self.state;
        self.version = self.version.wrapping_add(1);
        self.floor = self.version;
        !self.dirty
    }

    /// Renews the reservation ahead if less than half of one is left on disk (as of `now`), so
    /// that the next charges need not wait. Returns whether it must be written.
    pub(super) fn renew(&mut self, now: u64) -> bool {
        let Some(state) = self.state else {
            return false;
        };
        let spec = self.spec;
        let half = (reservation_units(&spec) / 2).max(1);
        let ahead = reserve(&spec, state, half, now);
        !covers(&spec, self.durable, ahead, now) && self.reserve_for(&spec, state, now)
    }

    /// Raises `reserved` to cover `state` plus a reservation; returns whether it must be written.
    pub(super) fn reserve_for(&mut self, spec: &Spec, state: RateState, now: u64) -> bool {
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
pub(super) enum Subject {
    Inline {
        len: u8,
        bytes: [u8; INLINE_SUBJECT],
    },
    Heap(Box<str>),
}

pub(super) const INLINE_SUBJECT: usize = 46;

impl Subject {
    pub(super) fn new(subject: &str) -> Self {
        let mut bytes = [0; INLINE_SUBJECT];
        match (bytes.get_mut(..subject.len()), u8::try_from(subject.len())) {
            (Some(slot), Ok(len)) => {
                slot.copy_from_slice(subject.as_bytes());
                Subject::Inline { len, bytes }
            }
            _ => Subject::Heap(subject.into()),
        }
    }

    pub(super) fn is(&self, subject: &str) -> bool {
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
pub(super) fn same_limit(stored: &Arc<str>, name: &str) -> bool {
    std::ptr::eq(stored.as_ptr(), name.as_ptr()) && stored.len() == name.len() || &**stored == name
}

/// Whether `kind` can only lower a counter (a refund, a reset).
pub(super) fn lowers(kind: OpKind) -> bool {
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
pub(super) struct Shard {
    pub(super) entries: HashTable<Entry>,
    /// Entries changed since the last flush, by (hash, storage key).
    pub(super) dirty: Vec<(u64, CounterKey)>,
    /// Set by [`RateCache::close`]: operations are refused from then on.
    pub(super) closed: bool,
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
    pub(super) fn state(
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
    pub(super) fn entry<'e>(
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

    pub(super) fn find(&mut self, hash: u64, key: CounterKey) -> Option<&mut Entry> {
        self.entries.find_mut(hash, |e| e.key == key)
    }

    /// Applies a charge's new `state` (`reservations`: the caller checked it is covered).
    pub(super) fn store(
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
    pub(super) fn release(&mut self, hash: u64, key: CounterKey) {
        let Shard { entries, dirty, .. } = self;
        if let Some(entry) = entries.find_mut(hash, |e| e.key == key) {
            if entry.release() {
                entry.dirty = true;
                dirty.push((hash, key));
            }
        }
    }

    /// Raises the reservation of the counter `hash`/`key` to cover `state`.
    pub(super) fn reserve(
        &mut self,
        hash: u64,
        key: CounterKey,
        spec: &Spec,
        state: RateState,
        now: u64,
    ) {
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
pub(super) fn apply_charge(
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
