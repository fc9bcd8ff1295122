//! The log's recovery, in one place: where a store's log lives (`<file>.log`) and how it is
//! opened, the check an open makes before writing anything (a log that is missing or another
//! store's), applying what the log holds to redb at a writable open ([`recover_log`]), and the
//! overlay a read-only open serves its unapplied frames from ([`read_only_overlay`]).
//!
//! Recovery applies the frames after the applied position in transactions of about
//! `RECOVERY_BYTES` each, each moving the applied position (a crash meanwhile resumes from
//! there); the frame rules that end the log are `Log::scan`'s (`mod.rs`).

use std::sync::Arc;

use super::change::{self, Change};
use super::overlay::Overlay;
use super::{Geometry, Log, LogFile, LogKey};
use crate::engine::embedded::storage::{
    self, Backend, Counters, Device, Location, LogState, Tables,
};
use crate::error::{Error, Result};

/// Bytes of frames recovery applies per transaction.
const RECOVERY_BYTES: usize = 256 * 1024;

/// The path of the log of the store file at `path`: `<path>.log`.
pub(crate) fn log_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".log");
    std::path::PathBuf::from(name)
}

/// How a log file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogAccess {
    /// For writes, created if missing.
    Create,
    /// For writes; it must exist.
    Existing,
    /// For reads; it must exist.
    ReadOnly,
}

/// The log's device for the store at `location`.
fn log_device(location: &Location, access: LogAccess) -> Result<Box<dyn storage::Device>> {
    let create = access == LogAccess::Create;
    let path = match location {
        Location::File(path) => path,
        #[cfg(any(test, feature = "test-support"))]
        Location::Simulated(disk) => {
            let log = disk.log_file();
            if !create && !log.has_bytes() {
                return Err(Error::Corrupted(
                    "the simulated disk's write-ahead log is missing".into(),
                ));
            }
            return Ok(Box::new(log));
        }
        Location::Memory(_) => {
            return Err(Error::Corrupted(
                "an in-memory store with a write-ahead log".into(),
            ));
        }
    };
    let log = log_path(path);
    if !create && !log.exists() {
        return Err(Error::Corrupted(format!(
            "the write-ahead log {} is missing: it may hold acknowledged changes",
            log.display()
        )));
    }
    let file =
        LogFile::open(&log, access != LogAccess::ReadOnly, create).map_err(Error::storage)?;
    if create {
        storage::sync_parent(&log)?;
    }
    Ok(Box::new(file))
}

/// Refuses a store whose log holds frames (its floor is set) but is missing, or belongs to another
/// store, without writing anything (the writable open's recovery would find the same, after
/// bumping the epoch).
pub(crate) fn check_log_before_writing(
    location: &Location,
    log: Option<storage::LogState>,
) -> Result<()> {
    let Some(state) = log.filter(|state| state.floor > 0) else {
        return Ok(());
    };
    let device = log_device(location, LogAccess::ReadOnly)?;
    Log::open(device, LogKey(state.key.0, state.key.1)).map(drop)
}

/// Applies what the log of a store opened for writing holds (if the store has a log) and returns
/// the log if this session writes through it.
pub(crate) fn recover_log(
    backend: &Backend,
    location: &Location,
    geometry: Geometry,
    enabled: bool,
    persisted: &mut storage::Counters,
) -> Result<Option<Log>> {
    if persisted.log.is_none() {
        return Ok(None);
    }
    let log = recover(
        backend,
        |create| {
            let access = if create {
                LogAccess::Create
            } else {
                LogAccess::Existing
            };
            log_device(location, access)
        },
        geometry,
        persisted,
    )?;
    Ok(enabled.then_some(log))
}

/// Opens the store's log (creating it if the store never had one) and applies to redb every
/// change it holds after the applied position, in one transaction that also moves the applied
/// position to the log's end under this session's `epoch`. Updates `persisted` (counters and
/// record counts) to what redb then holds, and returns the log, positioned at its end.
///
/// # Errors
/// [`Error::Corrupted`] if a store that had a log has lost it, or the log is another store's;
/// the log's and redb's I/O errors.
fn recover(
    backend: &Backend,
    device: impl FnOnce(bool) -> Result<Box<dyn Device>, Error>,
    geometry: Geometry,
    persisted: &mut Counters,
) -> Result<Log, Error> {
    let Some(state) = persisted.log else {
        return Err(Error::Corrupted("the store has no log key".into()));
    };
    let key = LogKey(state.key.0, state.key.1);
    let epoch = persisted.epoch;
    let mut log = if state.floor == 0 {
        // Never created (or its creation was interrupted): nothing in it was acknowledged.
        Log::create(device(true)?, geometry, key)?
    } else {
        Log::open(device(false)?, key)?
    };
    // In transactions of about RECOVERY_BYTES of frames each, so that applying a full log
    // needs no more free space than a round of the applier; each commit moves the applied
    // position (a crash meanwhile resumes from there).
    let mut base = *persisted;
    let (mut applied, mut floor) = (state.applied, state.floor);
    loop {
        let (scanned, counts, next_token, clock) = backend.write(|tables| {
            let (mut next_token, mut clock) = (base.next_token, base.clock_high_water);
            let mut budget = RECOVERY_BYTES;
            let scanned = log.scan_some(applied, floor, epoch, |_, _, payload| {
                budget = budget.saturating_sub(payload.len());
                for change in change::decode(payload)? {
                    match change {
                        Change::PutRecord(digest, record) => {
                            let old = readable_record(tables, &digest)?;
                            tables.put_record(&digest, old.as_ref(), &record)?;
                        }
                        Change::DeleteRecord(digest) => {
                            if let Some(old) = readable_record(tables, &digest)? {
                                tables.delete_record(&digest, &old)?;
                            }
                        }
                        Change::PutRate(key, rate) => tables.put_rate(&key, Some(&rate))?,
                        Change::DeleteRate(key) => tables.put_rate(&key, None)?,
                        Change::Counters {
                            next_token: token,
                            clock: mark,
                        } => {
                            next_token = next_token.max(token);
                            clock = clock.max(mark);
                        }
                    }
                }
                Ok(budget > 0)
            })?;
            let counts = base.record_counts.plus(tables.count_deltas());
            tables.save_counters(next_token, clock, counts)?;
            // Once the end is reached, this session's frames follow: its epoch is the floor.
            let floor = if scanned.complete {
                epoch
            } else {
                scanned.floor
            };
            tables.save_log_position(scanned.end, floor)?;
            Ok((scanned, counts, next_token, clock))
        })?;
        base.record_counts = counts;
        base.next_token = next_token;
        base.clock_high_water = clock;
        applied = scanned.end;
        floor = scanned.floor;
        if scanned.complete {
            break;
        }
    }
    let counts = base.record_counts;
    let (next_token, clock) = (base.next_token, base.clock_high_water);
    persisted.record_counts = counts;
    persisted.next_token = next_token;
    persisted.clock_high_water = clock;
    persisted.log = Some(LogState {
        applied: log.end(),
        floor: epoch,
        ..state
    });
    Ok(log)
}

/// The record redb holds for `digest`, or `None` if its value does not decode: the new state
/// replaces it (the stale index entry it leaves is dropped by a sweep, which checks entries
/// against their records).
pub(crate) fn readable_record(
    tables: &mut Tables<'_>,
    digest: &crate::idempotency::Digest,
) -> Result<Option<crate::idempotency::Record>, Error> {
    match tables.record(digest) {
        Err(Error::Corrupted(_)) => Ok(None),
        other => other,
    }
}

/// For a store opened for reads only: the log's unapplied frames, for reads to see.
pub(crate) fn read_only_overlay(
    location: &Location,
    persisted: &storage::Counters,
) -> Result<Option<Arc<Overlay>>> {
    if persisted.log.is_none_or(|state| state.floor == 0) {
        return Ok(None);
    }
    overlay_of(log_device(location, LogAccess::ReadOnly)?, persisted)
}

/// For a store opened for reads only: the log's frames after the applied position, in an
/// overlay that reads consult (redb cannot be written to apply them). `None` if the store has no
/// log or the log cannot be read.
fn overlay_of(
    device: Box<dyn Device>,
    persisted: &Counters,
) -> Result<Option<Arc<Overlay>>, Error> {
    let Some(state) = persisted.log.filter(|state| state.floor > 0) else {
        return Ok(None);
    };
    let mut log = Log::open(device, LogKey(state.key.0, state.key.1))?;
    let overlay = Overlay::new(usize::MAX, state.applied, persisted.next_token, 0);
    log.scan(
        state.applied,
        state.floor,
        // A store opened for reads does not bump the epoch: frames of the last session are at it.
        persisted.epoch,
        |_, _, payload| {
            let mut records = Vec::new();
            let mut rates = Vec::new();
            for change in change::decode(payload)? {
                match change {
                    Change::PutRecord(digest, record) => {
                        records.push((digest, Some(Arc::new(record))));
                    }
                    Change::DeleteRecord(digest) => records.push((digest, None)),
                    Change::PutRate(key, rate) => rates.push((key, Some(rate))),
                    Change::DeleteRate(key) => rates.push((key, None)),
                    Change::Counters { .. } => {}
                }
            }
            overlay.publish(records, rates, state.applied, 0, 0);
            Ok(())
        },
    )?;
    Ok(Some(Arc::new(overlay)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::codec;
    use crate::engine::embedded::log::overlay::tests::record;
    use crate::engine::embedded::storage::{RecordCounts, SimDisk};
    use crate::idempotency::{Digest, RecordBody};

    const KEY: LogKey = LogKey(21, 22);

    /// What the redb file says after an unclean end of the session at `epoch`: its log's
    /// frames from `applied` on are not in redb.
    fn persisted(epoch: u64, applied: u64, floor: u64) -> Counters {
        Counters {
            epoch,
            epoch_end: epoch,
            next_token: 1,
            clock_high_water: 0,
            rate_recovery_at: None,
            rate_secret: (1, 2),
            record_counts: RecordCounts::default(),
            log: Some(LogState {
                key: (KEY.0, KEY.1),
                applied,
                floor,
            }),
        }
    }

    /// A store opened for reads only (no epoch bump: the last session's frames are at its
    /// epoch) serves what the last session's frames hold past the applied position, and only
    /// that: a frame before it is in redb already.
    #[test]
    fn a_read_only_overlay_holds_the_last_sessions_frames_after_the_applied_position() {
        let disk = SimDisk::new();
        let device = disk.log_file();
        let mut log = Log::create(
            Box::new(device.clone()),
            Geometry::new(4096, 3).unwrap(),
            KEY,
        )
        .unwrap();
        let frame = |digest: Digest, body: &[u8], epoch: u64, log: &mut Log| {
            let mut payload = Vec::new();
            let encoded = codec::encode_record(&record(body)).unwrap();
            change::put_record(&mut payload, &digest, &encoded);
            log.append(epoch, &payload, 0).unwrap();
            log.sync().unwrap();
        };
        // Session 4 wrote a frame the applier copied into redb; session 5 (the last) one it
        // did not.
        frame(Digest([1; 32]), b"applied", 4, &mut log);
        let applied = log.end();
        frame(Digest([2; 32]), b"only in the log", 5, &mut log);

        let overlay = overlay_of(Box::new(device.clone()), &persisted(5, applied, 4))
            .unwrap()
            .expect("an overlay");
        let kept = overlay
            .record(&Digest([2; 32]))
            .flatten()
            .expect("the last frame");
        assert!(matches!(&kept.body, RecordBody::Completed(r) if r.body == b"only in the log"));
        assert!(
            overlay.record(&Digest([1; 32])).is_none(),
            "before the applied position"
        );

        // A store that never created its log (floor 0) has no overlay.
        assert!(
            overlay_of(Box::new(device), &persisted(5, 0, 0))
                .unwrap()
                .is_none()
        );
    }
}
