//! [`Health`]: what a store can tell about its ability to serve, for readiness probes.

use std::fmt;

/// Whether a store can serve now, as [`Store::health`](crate::Store::health) reports it.
///
/// Meant for a readiness probe: ready stores take traffic, others are taken out of rotation
/// until they are again. A liveness probe needs none of this (a process that answers is alive).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Serving reads and writes.
    Ready,
    /// Serving reads, refusing writes: the embedded engine after a write failed (no space left,
    /// a read-only file or filesystem, an I/O error), or opened on a file it could not write.
    /// Replays, `get`, `list_records`, peeks and `stats` answer from the last committed state;
    /// writes get the typed error of the cause ([`Error::StorageFull`](crate::Error::StorageFull),
    /// [`Error::ReadOnly`](crate::Error::ReadOnly), [`Error::Poisoned`](crate::Error::Poisoned)).
    /// The store tries to open for writing again at its next write (at most once a second), and
    /// is ready again once that works: nothing to do here but free the space.
    Degraded {
        /// Why writes are refused.
        reason: String,
    },
    /// Open, but it can serve neither reads nor writes (the embedded engine after a write
    /// failure, when its file could not be opened again even for reads). It keeps trying to
    /// open again at its next write, as when degraded.
    Failed {
        /// Why, as the operations' error says it.
        reason: String,
    },
    /// Its database server did not answer (the PostgreSQL engine). The store reconnects by
    /// itself: the next probe may say [`Health::Ready`] with nothing done here.
    Unreachable {
        /// The error of the probe's round trip.
        reason: String,
    },
    /// [`Store::close`](crate::Store::close) has run.
    Closed,
}

impl Health {
    /// Whether the store serves reads and writes now.
    pub fn is_ready(&self) -> bool {
        matches!(self, Health::Ready)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Ready => f.write_str("ready"),
            Health::Degraded { reason } => write!(f, "degraded (reads only): {reason}"),
            Health::Failed { reason } => write!(f, "failed: {reason}"),
            Health::Unreachable { reason } => write!(f, "database unreachable: {reason}"),
            Health::Closed => f.write_str("closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ready_is_ready_and_the_reason_is_shown() {
        assert!(Health::Ready.is_ready());
        let failed = Health::Failed {
            reason: "disk".into(),
        };
        assert!(!failed.is_ready());
        assert!(!Health::Closed.is_ready());
        assert_eq!(failed.to_string(), "failed: disk");
        let unreachable = Health::Unreachable {
            reason: "refused".into(),
        };
        assert!(!unreachable.is_ready());
        assert_eq!(unreachable.to_string(), "database unreachable: refused");
    }
}
