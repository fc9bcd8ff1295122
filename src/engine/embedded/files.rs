//! Opening the store's files: the backend for writing, or for reads only when an existing file
//! cannot be written (or for good, `open_read_only`), what would refuse an open found before
//! anything is written, and the guard that removes a file an open created if that open fails;
//! the offline operations on a closed file.

use super::failure::Cause;
use std::sync::Arc;

use super::LogSettings;
use super::log::Log;
use super::log::overlay::Overlay;
use super::log::recovery::{check_log_before_writing, log_path, read_only_overlay, recover_log};
use super::storage::{self, Backend, Location, OpenOptions, io_kind};
use crate::error::{Error, IoKind, Result};

/// Opens the existing store file at `location` for reads only, for good: the backend, its
/// counters, and the degraded state that refuses every write (never retried).
pub(super) fn open_read_view(
    location: &Location,
    options: OpenOptions,
) -> Result<(Backend, storage::Counters, Option<Cause>, CreatedHere)> {
    let Location::File(path) = location else {
        return Err(Error::InvalidArgument(
            "only a store file can be opened read-only".into(),
        ));
    };
    if !path.is_file() {
        return Err(Error::storage(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{}: no such store file", path.display()),
        )));
    }
    let (backend, persisted) = Backend::open_read_view(path, options)?;
    let cause = Cause::ReadOnly {
        path: path.clone(),
        reason: "opened read-only".into(),
    };
    Ok((backend, persisted, Some(cause), CreatedHere(None)))
}

/// Opens the backend for `location`: for writing, or for reads only when the existing file
/// cannot be written (the cause returned). What would refuse the open is found first, without
/// writing anything; a store this open creates is removed again if the open fails after all
/// (disarm the guard returned once it succeeded).
pub(super) fn open_backend(
    location: &Location,
    options: OpenOptions,
) -> Result<(Backend, storage::Counters, Option<Cause>, CreatedHere)> {
    let existed = location_exists(location);
    if let (Location::File(path), true) = (location, existed) {
        if let Some(log) = Backend::check_before_writing(path)? {
            check_log_before_writing(location, Some(log))?;
        }
    }
    let (backend, persisted, degraded) = match Backend::open(location, options) {
        Ok((backend, persisted)) => (backend, persisted, None),
        Err(error) if io_kind(&error) != IoKind::Other && existed => {
            let (backend, persisted, cause) = for_reads_after(location, options, &error)?;
            (backend, persisted, Some(cause))
        }
        // A creation refused by a full disk or a read-only filesystem says so, with its path.
        Err(error) if io_kind(&error) != IoKind::Other => {
            return Err(Cause::of(&error, location.path()).error());
        }
        Err(error) => return Err(error),
    };
    let created = CreatedHere(match location {
        Location::File(path) if !existed => Some(path.clone()),
        _ => None,
    });
    Ok((backend, persisted, degraded, created))
}

/// Opens the existing store at `location` for reads only after its open for writing was
/// refused by `error` (no space, a read-only file or filesystem): the backend, its counters and
/// the cause the store is degraded by. If even that open fails, the cause's error.
fn for_reads_after(
    location: &Location,
    options: OpenOptions,
    error: &crate::Error,
) -> Result<(Backend, storage::Counters, Cause)> {
    let cause = Cause::of(error, location.path());
    let (backend, persisted) =
        Backend::open_for_reads(location, options).map_err(|_| cause.error())?;
    crate::observe::degraded(&cause.reason());
    Ok((backend, persisted, cause))
}

/// A store file (and its log) created by an open that has not succeeded yet: removed on drop
/// unless the open disarmed it by taking the path. Unlinking while redb still has the file open
/// is fine on Unix; another process that opens the path meanwhile creates a store of its own.
pub(super) struct CreatedHere(pub(super) Option<std::path::PathBuf>);

impl Drop for CreatedHere {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(log_path(&path));
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Whether the store's bytes exist already (a new file cannot be created for reads).
// The other locations (memory, and the simulated disk with `test-support`) vary by feature.
#[allow(clippy::match_wildcard_for_single_variants)]
pub(super) fn location_exists(location: &Location) -> bool {
    match location {
        Location::File(path) => path.exists(),
        _ => true,
    }
}

/// Runs redb's integrity check on the file of a closed store (`Store::check_integrity`).
pub(crate) fn check_integrity(path: &std::path::Path) -> Result<bool> {
    Backend::check_integrity(path)
}

/// Rewrites the file of a closed store to hold only live pages (`Store::reclaim_space`): its
/// size before and after.
pub(crate) fn reclaim(path: &std::path::Path) -> Result<(u64, u64)> {
    Backend::reclaim(path)
}

/// A store's file opened, with what its log holds applied (or, for reads, overlaid).
pub(super) struct Opened {
    pub backend: Backend,
    /// Its counters, with the log's changes in.
    pub persisted: storage::Counters,
    /// Why it serves reads only, if it does.
    pub degraded: Option<Cause>,
    /// The file this open created, removed if the open fails after all.
    pub created: CreatedHere,
    /// The log this session writes through (a writable open with the log on).
    pub session_log: Option<Log>,
    /// The log's unapplied frames, for a store that serves reads only.
    pub read_overlay: Option<Arc<Overlay>>,
}

/// Opens the store at `location` (for writing, else for reads; or as a read view for good with
/// `read_only`) and applies what its log holds before anything reads the counters. An existing
/// store whose log cannot be applied for want of space, or because the file or its filesystem
/// cannot be written (redb's epoch bump fit, the log's changes did not), opens for reads, as
/// when its own open cannot write (DESIGN, D2).
pub(super) fn open_and_recover(
    location: &Location,
    open: OpenOptions,
    read_only: bool,
    log: LogSettings,
) -> Result<Opened> {
    let (backend, mut persisted, degraded, created) = if read_only {
        open_read_view(location, open)?
    } else {
        open_backend(location, open)?
    };
    if degraded.is_some() {
        let read_overlay = read_only_overlay(location, &persisted)?;
        return Ok(Opened {
            backend,
            persisted,
            degraded,
            created,
            session_log: None,
            read_overlay,
        });
    }
    match recover_log(
        &backend,
        location,
        log.geometry,
        log.enabled,
        &mut persisted,
    ) {
        Ok(session_log) => Ok(Opened {
            backend,
            persisted,
            degraded,
            created,
            session_log,
            read_overlay: None,
        }),
        Err(error) if io_kind(&error) != IoKind::Other && created.0.is_none() => {
            let _ = backend.close();
            let (backend, persisted, cause) = for_reads_after(location, open, &error)?;
            let read_overlay = read_only_overlay(location, &persisted)?;
            Ok(Opened {
                backend,
                persisted,
                degraded: Some(cause),
                created,
                session_log: None,
                read_overlay,
            })
        }
        Err(error) => Err(error),
    }
}
