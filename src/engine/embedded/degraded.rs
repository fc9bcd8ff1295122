//! A store that cannot write: why ([`Degraded`]), and how it recovers. After a write failure
//! the engine stops the failed writer, closes the file (redb refuses every operation on a handle
//! after an I/O error) and opens it again: for writing, with a new epoch, if it can; else for
//! reads, serving replays and reads from the last committed state and refusing writes with the
//! cause's error. It tries to open for writing again at its next write, at most once every
//! [`REOPEN_INTERVAL`] on the store's clock: nothing to do for an operator but free the space.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::failure::{Cause, Failure};
use super::files::location_exists;
use super::log::recovery::{read_only_overlay, recover_log};
use super::storage::{Backend, io_kind};
use super::{Embedded, Running};
use crate::error::{Error, IoKind, Result};

/// How often a store that cannot write tries to reopen its file for writing, at most (on the
/// store's clock, at its next write).
pub(super) const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

pub(super) struct Degraded {
    pub(super) cause: Cause,
    /// When the last reopen for writing was tried, on the store's clock.
    pub(super) tried: SystemTime,
}

impl Embedded {
    fn time_to_reopen(&self, degraded: &Degraded) -> bool {
        !self.reopen.read_only
            && self
                .reopen
                .clock
                .now()
                .duration_since(degraded.tried)
                .map_or(true, |since| since >= REOPEN_INTERVAL)
    }

    /// After a write failure: stops the failed writer, closes the file (redb refuses every
    /// operation on a handle after an I/O error) and opens it again, for writing if it can, else
    /// for reads. `Ok` once the store can serve reads; `Closed` if it was closed.
    pub(super) fn settle(&self) -> Result<()> {
        if !self.alarm.load(Ordering::Acquire) {
            if self.degraded.load(Ordering::Acquire) {
                self.try_reopen();
            }
            return Ok(());
        }
        let mut running = self.running.write();
        let failure = Arc::clone(&self.failure.read());
        if !failure.is_failed() {
            return Ok(()); // another caller settled it
        }
        let Some(current) = running.take() else {
            return Err(Error::Closed);
        };
        let cause = failure.cause().unwrap_or(Cause::Failed {
            reason: "a write failed".into(),
        });
        crate::observe::degraded(&cause.reason());
        let _ = current.shut_down();
        // Settled: the failed writer is gone; a new writer gets a flag of its own.
        *self.failure.write() = Arc::new(Failure::new(Arc::clone(&self.alarm)));
        self.alarm.store(false, Ordering::Release);
        // A write refused for want of space (or by a read-only file or filesystem) is not
        // retried at once: an open for writing may well succeed (redb's epoch bump can fit where
        // the write-ahead log cannot grow) and every write would fail again behind a store that
        // says it is ready. The store serves reads and tries again at a write a second later.
        *running = Some(match cause {
            Cause::Full { .. } | Cause::ReadOnly { .. } => self.reads_only(cause),
            Cause::Failed { .. } => self.reopened(cause),
        });
        Ok(())
    }

    /// Tries to open the file for writing again (the store could not write), if the last try
    /// is [`REOPEN_INTERVAL`] old.
    fn try_reopen(&self) {
        let due = self.running.read().as_ref().is_some_and(|running| {
            running
                .degraded
                .as_ref()
                .is_some_and(|degraded| self.time_to_reopen(degraded))
        });
        if !due {
            return;
        }
        let mut running = self.running.write();
        let Some(current) = running.take() else {
            return;
        };
        // Checked again under the lock: another caller may have reopened it meanwhile.
        let due = current
            .degraded
            .as_ref()
            .is_some_and(|degraded| self.time_to_reopen(degraded));
        if !due {
            *running = Some(current);
            return;
        }
        let cause = current
            .degraded
            .as_ref()
            .map(|degraded| degraded.cause.clone());
        let _ = current.shut_down();
        *running = Some(self.reopened(cause.unwrap_or(Cause::Failed {
            reason: "a write failed".into(),
        })));
    }

    /// Opens the (closed) file again: for writing, with a new epoch, if it can; else for reads,
    /// remembering `cause` (or the new one) and the attempt.
    fn reopened(&self, cause: Cause) -> Running {
        // The options of the first open, continuing its session (its `now` decides nothing here:
        // a session's own reopen neither starts a rate recovery nor creates a file).
        let options = self.reopen.options;
        // A file that disappeared is not opened again: `open` would create a new, empty store
        // (new epochs and tokens from the start) under the same name.
        let attempt = if location_exists(&self.location) {
            Backend::open(&self.location, options)
        } else {
            Err(Error::storage(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is gone", self.location.path().display()),
            )))
        };
        let attempt = attempt.and_then(|(backend, mut persisted)| {
            let settings = self.reopen.log;
            let log = recover_log(
                &backend,
                &self.location,
                settings.geometry,
                settings.enabled,
                &mut persisted,
            )?;
            let records = persisted.record_counts;
            let running = self.start_writer(Arc::new(backend), persisted, log)?;
            Ok((running, records))
        });
        match attempt {
            Ok((running, records)) => {
                self.counters.set_records(records.as_array());
                // Whatever a failed flush took from the cache is written again.
                if let Some(cache) = &self.rate_cache {
                    cache.mark_all_dirty();
                }
                crate::observe::recovered();
                self.degraded.store(false, Ordering::Release);
                self.reopen.notifier.bump();
                running
            }
            Err(error) => {
                let cause = match io_kind(&error) {
                    IoKind::Other => cause,
                    _ => Cause::of(&error, self.location.path()),
                };
                self.reads_only(cause)
            }
        }
    }

    /// Opens the (closed) file for reads only, remembering `cause` and the attempt: the store
    /// serves reads and tries to write again at its next write once [`REOPEN_INTERVAL`] passed.
    fn reads_only(&self, cause: Cause) -> Running {
        let opened = Backend::open_for_reads(&self.location, self.reopen.options).ok();
        let overlay = opened
            .as_ref()
            .and_then(|(_, persisted)| read_only_overlay(&self.location, persisted).ok())
            .flatten();
        let backend = opened.map(|(backend, _)| Arc::new(backend));
        self.degraded.store(true, Ordering::Release);
        Running {
            backend,
            writer: None,
            degraded: Some(Degraded {
                cause,
                tried: self.reopen.clock.now(),
            }),
            overlay,
        }
    }
}

/// The error of an operation the store cannot serve: the cause of its degraded state.
pub(super) fn unreadable(running: &Running) -> Error {
    running
        .degraded
        .as_ref()
        .map_or(Error::Poisoned, |degraded| degraded.cause.error())
}
