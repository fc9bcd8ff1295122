//! What the log has acknowledged and redb does not hold yet, in memory, for every read to see.
//!
//! The writer *publishes* a batch's changes after the log synced them (and before answering its
//! callers), each stamped with the log's end after the batch. The applier takes everything
//! published, writes it into redb in one transaction, and then *retires* each entry whose stamp is
//! still the one it applied (a newer write of the same key stays, for the next round). So a read
//! that finds a key here sees the latest acknowledged state, and a read that misses reads redb,
//! which then holds it: an entry leaves only after redb committed it.
//!
//! A *generation* counts the moments an entry may have left the overlay for redb, or redb
//! changed beside it: it moves before each retirement removes anything, and at each direct
//! commit. A caller that read the generation, then found a key in neither the overlay nor redb,
//! knows redb still lacks the key while the generation holds and the overlay has no entry for
//! it: the writer trusts that absence instead of reading redb again ([`crate::engine::Seen`]).
//! Generations of different overlays never meet (each starts at its own base).
//!
//! Bounded: the writer waits ([`Overlay::wait_for_room`]) while the entries hold more than the
//! limit's bytes, or while the log's ring has no room, until the applier catches up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::engine::codec::StoredRate;
use crate::error::Error;
use crate::idempotency::{Digest, Record, RecordBody};

const SHARDS: usize = 16;

/// Where the next overlay's generations start: far apart, so that no two overlays of a process
/// share one.
static NEXT_BASE: AtomicU64 = AtomicU64::new(1);

/// How long published changes wait for the applier, at most, when nobody needs them in redb
/// sooner: the longer, the more writes share each copied B-tree leaf, and the more begin/complete
/// pairs never reach the B-tree as RUNNING records.
pub(crate) const APPLY_DELAY: Duration = Duration::from_millis(100);

/// The applier starts a round early once the entries hold this fraction of the overlay's limit.
const EARLY_FRACTION: usize = 4;

/// The applier starts a round early once the log holds this many bytes redb lacks (a segment):
/// rounds larger than this buy little more sharing of leaves. What bounds the lag is the
/// overlay's cap (`log_memory`): writers wait beyond it. Acknowledged data takes room twice until
/// it is applied (in the log, then in redb), so that cap is also what a full disk must find room
/// for once space returns.
pub(crate) const EARLY_LAG_BYTES: u64 = 4 * 1024 * 1024;

/// Bytes an entry is charged beyond its response: the record's fields, the map's slot with its
/// key and stamp, and 64 for the `Arc`'s counts, the allocator's headers and the map's spare
/// capacity (measured: the resident memory of a store whose overlay sits at its cap is within a
/// few MiB of the cache plus the cap, `docs/BENCHMARKS.md`).
const ENTRY_OVERHEAD: usize =
    std::mem::size_of::<Record>() + std::mem::size_of::<(Digest, Slot<Arc<Record>>)>() + 64;

/// A published value: `None` is a deletion.
#[derive(Debug, Clone)]
struct Slot<V> {
    stamp: u64,
    value: Option<V>,
    bytes: usize,
}

/// The log positions the writer and the applier have reached.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    /// The log's end after the last published batch.
    pub published: u64,
    /// Everything before this position is in redb (committed by the applier).
    pub applied: u64,
    /// The writer's counters as of the last published batch: next lease token, clock mark.
    pub next_token: u64,
    pub clock: u64,
    /// Bytes the entries are charged.
    pub bytes: usize,
    /// The applier failed: nothing more is applied, writers waiting for room give up.
    pub failed: bool,
    /// The store is closing: the applier applies what is published and stops.
    pub stopping: bool,
    /// Test support: the applier waits (until released, or stopping).
    pub held: bool,
    /// Callers waiting for the applier (for redb to catch up, or for room): it starts at once.
    pub waiters: usize,
    /// When something was published while everything before was applied.
    pub pending_since: Option<Instant>,
}

/// Everything published and not yet applied, as the applier takes it for one transaction.
pub(crate) struct Round {
    pub records: Vec<(Digest, u64, Option<Arc<Record>>)>,
    pub rates: Vec<([u8; 16], u64, Option<StoredRate>)>,
    pub published: u64,
    pub next_token: u64,
    pub clock: u64,
}

pub(crate) struct Overlay {
    records: Vec<RwLock<HashMap<Digest, Slot<Arc<Record>>>>>,
    rates: RwLock<HashMap<[u8; 16], Slot<StoredRate>>>,
    limit: usize,
    /// See the module's documentation.
    generation: AtomicU64,
    progress: Mutex<Progress>,
    /// Signalled when something is published, applied, or the overlay fails or stops.
    changed: Condvar,
}

fn record_bytes(record: Option<&Arc<Record>>) -> usize {
    let response = match record.map(|record| &record.body) {
        Some(RecordBody::Completed(response) | RecordBody::Failed(response)) => response.size(),
        Some(RecordBody::Running {
            checkpoint: Some(checkpoint),
            ..
        }) => checkpoint.data.len() + checkpoint.name.len(),
        _ => 0,
    };
    response + ENTRY_OVERHEAD
}

/// Where a round over entries of these (stamp, bytes) should stop, if they exceed `budget`: the
/// largest stamp such that the entries at or before it stay within the budget (the first stamp's
/// entries at least). Every frame ending at or before the cut is then applied: each key it wrote
/// is either in the round or was written again after the cut (and recovery from the cut replays
/// that).
fn round_cut(mut charged: Vec<(u64, usize)>, budget: usize) -> Option<u64> {
    let total = charged
        .iter()
        .fold(0usize, |sum, (_, bytes)| sum.saturating_add(*bytes));
    if total <= budget {
        return None;
    }
    charged.sort_unstable();
    let (mut sum, mut cut) = (0usize, None);
    for (stamp, bytes) in charged {
        if cut.is_some_and(|cut| stamp > cut) && sum.saturating_add(bytes) > budget {
            break;
        }
        sum = sum.saturating_add(bytes);
        cut = Some(stamp);
    }
    cut
}

impl Overlay {
    /// An empty overlay holding at most about `limit` bytes, starting at log position `applied`
    /// (everything before it is in redb).
    pub(crate) fn new(limit: usize, applied: u64, next_token: u64, clock: u64) -> Self {
        Self {
            records: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            rates: RwLock::new(HashMap::new()),
            limit,
            generation: AtomicU64::new(NEXT_BASE.fetch_add(1, Ordering::Relaxed) << 32),
            progress: Mutex::new(Progress {
                published: applied,
                applied,
                next_token,
                clock,
                ..Progress::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn shard(&self, digest: &Digest) -> &RwLock<HashMap<Digest, Slot<Arc<Record>>>> {
        let index = usize::from(digest.as_bytes()[0]) % SHARDS;
        &self.records[index]
    }

    /// The latest acknowledged record of `digest` if redb may not have it yet: `Some(None)` if
    /// it was deleted, `None` if redb holds its latest state.
    #[allow(clippy::option_option)] // three answers: here, deleted here, or ask redb
    pub(crate) fn record(&self, digest: &Digest) -> Option<Option<Arc<Record>>> {
        self.shard(digest)
            .read()
            .get(digest)
            .map(|slot| slot.value.clone())
    }

    /// The current generation (see the module's documentation).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Moves the generation: entries are about to leave, or redb was written beside the overlay.
    pub(crate) fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// [`Overlay::record`] for a rate counter.
    #[allow(clippy::option_option)] // three answers: here, deleted here, or ask redb
    pub(crate) fn rate(&self, key: &[u8; 16]) -> Option<Option<StoredRate>> {
        self.rates.read().get(key).map(|slot| slot.value)
    }

    /// Every record published after `after` (in digest order is up to the caller), for listings.
    pub(crate) fn records_after(
        &self,
        after: Option<&Digest>,
    ) -> Vec<(Digest, Option<Arc<Record>>)> {
        let mut out = Vec::new();
        for shard in &self.records {
            for (digest, slot) in shard.read().iter() {
                if after.is_none_or(|after| digest.as_bytes() > after.as_bytes()) {
                    out.push((*digest, slot.value.clone()));
                }
            }
        }
        out
    }

    /// Makes a synced batch's changes visible, stamped with the log's end after it.
    pub(crate) fn publish(
        &self,
        records: impl IntoIterator<Item = (Digest, Option<Arc<Record>>)>,
        rates: impl IntoIterator<Item = ([u8; 16], Option<StoredRate>)>,
        end: u64,
        next_token: u64,
        clock: u64,
    ) {
        let (mut added, mut replaced) = (0usize, 0usize);
        for (digest, value) in records {
            let bytes = record_bytes(value.as_ref());
            let slot = Slot {
                stamp: end,
                value,
                bytes,
            };
            let old = self.shard(&digest).write().insert(digest, slot);
            added += bytes;
            replaced += old.map_or(0, |old| old.bytes);
        }
        {
            let mut map = self.rates.write();
            for (key, value) in rates {
                let slot = Slot {
                    stamp: end,
                    value,
                    bytes: ENTRY_OVERHEAD,
                };
                if map.insert(key, slot).is_none() {
                    added += ENTRY_OVERHEAD;
                }
            }
        }
        let mut progress = self.progress.lock();
        if progress.published <= progress.applied {
            progress.pending_since = Some(Instant::now());
        }
        progress.published = progress.published.max(end);
        progress.next_token = progress.next_token.max(next_token);
        progress.clock = progress.clock.max(clock);
        progress.bytes = progress
            .bytes
            .saturating_add(added)
            .saturating_sub(replaced);
        drop(progress);
        self.changed.notify_all();
    }

    /// Waits until something is published beyond what is applied and is due (it waited
    /// [`APPLY_DELAY`], the entries are a quarter of the limit, someone waits for redb, or the
    /// store is closing), and takes all of it. `None` once the overlay failed, or once it is
    /// stopping and everything is applied.
    pub(crate) fn next_round(&self) -> Option<Round> {
        let (published, next_token, clock) = {
            let mut progress = self.progress.lock();
            loop {
                if progress.failed {
                    return None;
                }
                let pending = progress.published > progress.applied;
                if pending && (!progress.held || progress.stopping) {
                    let since = progress
                        .pending_since
                        .map_or(APPLY_DELAY, |at| at.elapsed());
                    if progress.stopping
                        || progress.waiters > 0
                        || progress.bytes >= self.limit / EARLY_FRACTION
                        || progress.published.saturating_sub(progress.applied) >= EARLY_LAG_BYTES
                        || since >= APPLY_DELAY
                    {
                        break;
                    }
                    let _ = self
                        .changed
                        .wait_for(&mut progress, APPLY_DELAY.saturating_sub(since));
                    continue;
                }
                if progress.stopping {
                    return None;
                }
                self.changed.wait(&mut progress);
            }
            (progress.published, progress.next_token, progress.clock)
        };
        // Everything published up to `published` is in the maps now (published before the
        // position moved); entries published since are taken too, which is harmless.
        let mut records = Vec::new();
        let mut charged = Vec::new();
        for shard in &self.records {
            for (digest, slot) in shard.read().iter() {
                records.push((*digest, slot.stamp, slot.value.clone()));
                charged.push((slot.stamp, slot.bytes));
            }
        }
        let mut rates: Vec<_> = {
            let map = self.rates.read();
            charged.extend(map.values().map(|slot| (slot.stamp, slot.bytes)));
            map.iter()
                .map(|(key, slot)| (*key, slot.stamp, slot.value))
                .collect()
        };
        // At most a quarter of the cap per round: redb holds a transaction's dirty pages in
        // memory, and a round of a full overlay's random keys would dirty most of a large
        // tree's leaves.
        let published = match round_cut(charged, self.limit / EARLY_FRACTION) {
            Some(cut) => {
                records.retain(|(_, stamp, _)| *stamp <= cut);
                rates.retain(|(_, stamp, _)| *stamp <= cut);
                cut.min(published)
            }
            None => published,
        };
        Some(Round {
            records,
            rates,
            published,
            next_token,
            clock,
        })
    }

    /// After redb committed `round`: drops every entry still at the stamp applied, and moves the
    /// applied position.
    pub(crate) fn retire(&self, round: &Round) {
        // Before anything leaves: a reader that misses an entry removed below then sees the
        // new generation (the shard's lock orders the two).
        self.bump_generation();
        let mut freed = 0usize;
        for (digest, stamp, _) in &round.records {
            let mut shard = self.shard(digest).write();
            if shard.get(digest).is_some_and(|slot| slot.stamp == *stamp) {
                freed += shard.remove(digest).map_or(0, |slot| slot.bytes);
            }
        }
        {
            let mut map = self.rates.write();
            for (key, stamp, _) in &round.rates {
                if map.get(key).is_some_and(|slot| slot.stamp == *stamp) {
                    freed += map.remove(key).map_or(0, |slot| slot.bytes);
                }
            }
        }
        let mut progress = self.progress.lock();
        progress.applied = progress.applied.max(round.published);
        progress.bytes = progress.bytes.saturating_sub(freed);
        // What was published during the round has waited since it began.
        progress.pending_since = (progress.published > progress.applied).then(Instant::now);
        drop(progress);
        self.changed.notify_all();
    }

    /// Stops the applier for good (it failed): writers waiting give up.
    #[cfg(test)]
    pub(crate) fn fail(&self) {
        self.progress.lock().failed = true;
        self.changed.notify_all();
    }

    /// Called as the applier ends: if anything published was not applied, nothing will apply it,
    /// so writers waiting for room give up.
    pub(crate) fn fail_if_not_drained(&self) {
        let mut progress = self.progress.lock();
        if progress.published > progress.applied {
            progress.failed = true;
        }
        drop(progress);
        self.changed.notify_all();
    }

    /// Holds the applier (or releases it), for tests that need a log with frames to recover.
    #[cfg(any(test, feature = "test-support"))]
    pub(crate) fn hold(&self, hold: bool) {
        self.progress.lock().held = hold;
        self.changed.notify_all();
    }

    /// Asks the applier to apply what is published and stop.
    pub(crate) fn stop(&self) {
        self.progress.lock().stopping = true;
        self.changed.notify_all();
    }

    #[cfg(test)]
    pub(crate) fn progress(&self) -> Progress {
        *self.progress.lock()
    }

    /// Waits until `ready` holds for the progress (the applier moved), or the overlay failed.
    /// While it waits the applier does not delay its rounds.
    fn wait_until(&self, ready: impl Fn(&Progress) -> bool) -> Result<Progress, Error> {
        let mut progress = self.progress.lock();
        if ready(&progress) {
            return Ok(*progress);
        }
        progress.waiters += 1;
        self.changed.notify_all();
        let outcome = loop {
            if ready(&progress) {
                break Ok(*progress);
            }
            if progress.failed {
                break Err(Error::Poisoned);
            }
            self.changed.wait(&mut progress);
        };
        progress.waiters -= 1;
        outcome
    }

    /// Waits while the overlay holds more than its limit, or while `fits(applied)` says the log
    /// has no room behind the applied position.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if the applier failed meanwhile.
    pub(crate) fn wait_for_room(&self, fits: impl Fn(u64) -> bool) -> Result<Progress, Error> {
        self.wait_until(|progress| {
            (progress.bytes <= self.limit || progress.applied >= progress.published)
                && fits(progress.applied)
        })
    }

    /// Waits until redb holds everything published so far.
    ///
    /// # Errors
    /// [`Error::Poisoned`] if the applier failed meanwhile.
    pub(crate) fn wait_applied(&self) -> Result<Progress, Error> {
        let target = self.progress.lock().published;
        self.wait_until(|progress| progress.applied >= target)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::idempotency::StoredResponse;

    /// A completed record answering `body` (for the log's tests).
    pub(crate) fn record(body: &[u8]) -> Arc<Record> {
        Arc::new(Record {
            fingerprint: [1; 32],
            created_at: 1,
            expires_at: 2,
            attempts: 1,
            record_ttl: 1,
            body: RecordBody::Completed(StoredResponse::new(200, body.to_vec())),
        })
    }

    #[test]
    fn a_newer_write_survives_the_retirement_of_an_older_one() {
        let overlay = Overlay::new(1 << 20, 0, 1, 0);
        let digest = Digest([1; 32]);
        overlay.publish([(digest, Some(record(b"first")))], [], 100, 2, 5);
        let round = overlay.next_round().expect("published");
        assert_eq!(round.published, 100);
        // Written again before the first round was retired.
        overlay.publish([(digest, Some(record(b"second")))], [], 200, 3, 6);
        overlay.retire(&round);
        let kept = overlay.record(&digest).flatten().expect("still there");
        assert_eq!(kept.body, record(b"second").body);
        let round = overlay.next_round().expect("the second write");
        overlay.retire(&round);
        assert!(overlay.record(&digest).is_none());
        let progress = overlay.progress();
        assert_eq!((progress.applied, progress.bytes), (200, 0));
    }

    /// A round over more than a quarter of the cap stops at a frame boundary within it: the
    /// entries of later frames stay for the next round, the applied position is the cut, and
    /// the next round takes the rest.
    #[test]
    fn a_round_takes_at_most_a_quarter_of_the_cap_and_stops_at_a_frame() {
        let bytes = record_bytes(Some(&record(b"x")));
        let overlay = Overlay::new(8 * bytes, 0, 1, 0);
        for n in 0..6u8 {
            let digest = Digest([n; 32]);
            overlay.publish(
                [(digest, Some(record(b"x")))],
                [],
                100 * (u64::from(n) + 1),
                1,
                0,
            );
        }
        overlay.stop();
        let first = overlay.next_round().expect("a round");
        assert_eq!(
            first.published, 200,
            "two entries of {bytes} bytes fit 8 * {bytes} / 4"
        );
        assert_eq!(first.records.len(), 2);
        overlay.retire(&first);
        assert!(
            overlay.record(&Digest([2; 32])).is_some(),
            "later frames stay"
        );
        let second = overlay.next_round().expect("a round");
        assert_eq!((second.published, second.records.len()), (400, 2));
    }

    #[test]
    fn a_deletion_is_visible_until_applied() {
        let overlay = Overlay::new(1 << 20, 0, 1, 0);
        let digest = Digest([2; 32]);
        overlay.publish([(digest, None)], [([3; 16], None)], 64, 1, 0);
        assert_eq!(
            overlay.record(&digest).map(|value| value.is_none()),
            Some(true)
        );
        assert_eq!(overlay.rate(&[3; 16]), Some(None));
        let round = overlay.next_round().expect("published");
        overlay.retire(&round);
        assert!(overlay.record(&digest).is_none());
        assert!(overlay.rate(&[3; 16]).is_none());
    }

    #[test]
    fn stopping_ends_the_rounds_once_everything_is_applied_and_a_failure_wakes_waiters() {
        let overlay = Arc::new(Overlay::new(200, 0, 1, 0));
        overlay.publish([(Digest([4; 32]), Some(record(&[0; 500])))], [], 10, 1, 0);
        overlay.stop();
        let round = overlay
            .next_round()
            .expect("what was published before the stop");
        // Over the limit: a writer waits until the applier retires the round or fails.
        let waiter = {
            let overlay = Arc::clone(&overlay);
            std::thread::spawn(move || overlay.wait_for_room(|_| true).map(|p| p.applied))
        };
        overlay.retire(&round);
        assert_eq!(waiter.join().expect("joined").ok(), Some(10));
        assert!(overlay.next_round().is_none());
        overlay.publish([(Digest([5; 32]), Some(record(&[0; 500])))], [], 20, 1, 0);
        let waiter = {
            let overlay = Arc::clone(&overlay);
            std::thread::spawn(move || overlay.wait_for_room(|_| true).map(|p| p.applied))
        };
        overlay.fail();
        assert!(matches!(
            waiter.join().expect("joined"),
            Err(Error::Poisoned)
        ));
    }
}
