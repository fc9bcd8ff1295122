//! The embedded engine's failure model: why a writer stopped writing ([`Cause`]), the flag every
//! later command and the engine read ([`Failure`]), and the guard that sets it when the thread
//! applying a batch unwinds ([`PoisonOnPanic`]).
//!
//! A storage error aborts the batch and marks the writer failed: a failed fsync is never retried
//! as if the earlier writes were safe; the engine stops this writer and reopens the file, reading
//! the next state back from it (`mod.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::storage::io_kind;
use crate::error::{Error, IoKind};

/// Why a writer stopped writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cause {
    /// No space left for the file.
    Full { path: PathBuf },
    /// The file or its filesystem cannot be written.
    ReadOnly { path: PathBuf, reason: String },
    /// Another I/O error (its message), or the thread applying a batch panicked.
    Failed { reason: String },
}

impl Cause {
    /// The cause of `error`, met by a write to the file at `path`.
    pub(crate) fn of(error: &Error, path: PathBuf) -> Self {
        match io_kind(error) {
            IoKind::Full => Cause::Full { path },
            IoKind::ReadOnly => Cause::ReadOnly {
                path,
                reason: error.to_string(),
            },
            IoKind::Other => Cause::Failed {
                reason: error.to_string(),
            },
        }
    }

    /// What a write refused for this cause reports.
    pub(crate) fn error(&self) -> Error {
        match self {
            Cause::Full { path } => Error::StorageFull { path: path.clone() },
            Cause::ReadOnly { path, reason } => Error::ReadOnly {
                path: path.clone(),
                reason: reason.clone(),
            },
            Cause::Failed { .. } => Error::Poisoned,
        }
    }

    /// The kind, for `stats()`.
    pub(crate) fn kind(&self) -> crate::DegradedCause {
        match self {
            Cause::Full { .. } => crate::DegradedCause::StorageFull,
            Cause::ReadOnly { .. } => crate::DegradedCause::ReadOnly,
            Cause::Failed { .. } => crate::DegradedCause::WriteFailed,
        }
    }

    /// Why, for `health()` and the logs.
    pub(crate) fn reason(&self) -> String {
        match self {
            Cause::Failed { reason } => format!("a write failed: {reason}"),
            other => other.error().to_string(),
        }
    }
}

/// Set once a write failed (or the thread applying a batch panicked): the writer refuses every
/// later command, and the engine, at its next operation, stops this writer and reopens the file.
pub(crate) struct Failure {
    failed: AtomicBool,
    cause: Mutex<Option<Cause>>,
    /// The engine's flag, raised with this one: the hot paths read it without a lock.
    alarm: Arc<AtomicBool>,
}

impl Failure {
    pub(crate) fn new(alarm: Arc<AtomicBool>) -> Self {
        Self {
            failed: AtomicBool::new(false),
            cause: Mutex::new(None),
            alarm,
        }
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Records the first cause (later ones are consequences of it).
    pub(crate) fn set(&self, cause: Cause) {
        let mut slot = self.cause.lock();
        if slot.is_none() {
            *slot = Some(cause);
        }
        self.failed.store(true, Ordering::Release);
        self.alarm.store(true, Ordering::Release);
    }

    pub(crate) fn cause(&self) -> Option<Cause> {
        self.cause.lock().clone()
    }

    /// What a command refused after the failure reports.
    pub(super) fn error(&self) -> Error {
        self.cause().map_or(Error::Poisoned, |cause| cause.error())
    }
}

/// Marks the writer failed if the thread applying a batch unwinds.
pub(super) struct PoisonOnPanic<'a>(pub(super) &'a Failure);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.set(Cause::Failed {
                reason: "the thread applying a batch panicked".into(),
            });
        }
    }
}
