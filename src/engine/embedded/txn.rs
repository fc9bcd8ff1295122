//! The seam between the sequencer and what it writes to: one command's reads and writes, on
//! redb's tables of one write transaction or on the write-ahead log's view of the latest state.

use super::storage::Tables;
use crate::engine::Swept;
use crate::engine::codec::StoredRate;
use crate::error::Error;
use crate::idempotency::{Digest, Record};

/// What a command reads and writes while it is applied: redb's tables of one write transaction
/// ([`Tables`]), or the write-ahead log's view of the latest state (`log::view`). Each keeps its
/// derived structures in step (expiry index, record counts).
pub(crate) trait Txn {
    /// The record as written so far.
    fn record(&mut self, digest: &Digest) -> Result<Option<Record>, Error>;
    /// Writes `new` in place of `old` (the record as read through this same view).
    fn put_record(
        &mut self,
        digest: &Digest,
        old: Option<&Record>,
        new: &Record,
    ) -> Result<(), Error>;
    /// Deletes `old` (the record as read through this same view).
    fn delete_record(&mut self, digest: &Digest, old: &Record) -> Result<(), Error>;
    /// The rate counter as written so far.
    fn rate(&mut self, key: &[u8; 16]) -> Result<Option<StoredRate>, Error>;
    /// Writes a rate counter (`None`: deletes it).
    fn put_rate(&mut self, key: &[u8; 16], rate: Option<&StoredRate>) -> Result<(), Error>;
    /// Records stored, expired or not.
    fn record_count(&mut self) -> Result<u64, Error>;
    /// Removes up to `limit` due records and idle counters.
    fn sweep(&mut self, now: u64, limit: usize) -> Result<Swept, Error>;
    /// The caller read `digest` as absent at the overlay's `generation`: a view may answer
    /// [`Txn::record`] from that while the generation holds, instead of reading redb again.
    fn absent_since(&mut self, _digest: &Digest, _generation: u64) {}
}

impl Txn for Tables<'_> {
    fn record(&mut self, digest: &Digest) -> Result<Option<Record>, Error> {
        Tables::record(self, digest)
    }

    fn put_record(
        &mut self,
        digest: &Digest,
        old: Option<&Record>,
        new: &Record,
    ) -> Result<(), Error> {
        Tables::put_record(self, digest, old, new)
    }

    fn delete_record(&mut self, digest: &Digest, old: &Record) -> Result<(), Error> {
        Tables::delete_record(self, digest, old)
    }

    fn rate(&mut self, key: &[u8; 16]) -> Result<Option<StoredRate>, Error> {
        Tables::rate(self, key)
    }

    fn put_rate(&mut self, key: &[u8; 16], rate: Option<&StoredRate>) -> Result<(), Error> {
        Tables::put_rate(self, key, rate)
    }

    fn record_count(&mut self) -> Result<u64, Error> {
        Tables::record_count(self)
    }

    fn sweep(&mut self, now: u64, limit: usize) -> Result<Swept, Error> {
        Tables::sweep(self, now, limit)
    }
}
