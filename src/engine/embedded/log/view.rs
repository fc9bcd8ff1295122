//! The state one command is applied to when the store writes through the log: the latest
//! acknowledged state (redb under the overlay), under the changes of the commands before it in
//! the batch, under its own. Its writes are collected (as log changes, and as values to publish),
//! not written: the writer keeps them, or drops them if the command was refused after writing.
//!
//! A sweep needs redb's expiry index, which the view does not have: the view records that the
//! command needs the B-tree (`needs_btree`), and the writer applies that command directly to
//! redb once the overlay is applied (`writer.rs`).

use std::sync::Arc;

use hashbrown::HashMap;

use super::change;
use super::overlay::Overlay;
use crate::engine::Swept;
use crate::engine::codec::{self, StoredRate};
use crate::engine::embedded::storage::{Backend, RecordCounts};
use crate::engine::embedded::txn::Txn;
use crate::error::Error;
use crate::idempotency::{Digest, Record};

/// Bytes of the counters change that ends every frame.
pub(crate) const COUNTERS_BYTES: usize = 1 + 16;

/// The changes of the commands of a batch kept so far, not yet in the log.
#[derive(Default)]
pub(crate) struct Staged {
    pub records: HashMap<Digest, Option<Arc<Record>>>,
    pub rates: HashMap<[u8; 16], Option<StoredRate>>,
    /// The frame's payload so far.
    pub payload: Vec<u8>,
    pub deltas: [i64; 3],
    /// Net records added.
    pub added: i64,
    /// Commands that changed something.
    pub writes: u64,
}

/// Room a batch's payload starts with: a batch of short requests fits without growing it.
const PAYLOAD_CAPACITY: usize = 64 * 1024;

impl Staged {
    /// An empty batch, its payload's room reserved.
    pub(crate) fn new() -> Self {
        Self {
            payload: Vec::with_capacity(PAYLOAD_CAPACITY),
            ..Self::default()
        }
    }

    /// Empties the batch after it was published, keeping the payload's room.
    pub(crate) fn clear(&mut self) {
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        *self = Self {
            payload,
            ..Self::default()
        };
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// Keeps one command's changes.
    pub(crate) fn keep(&mut self, changes: Changes) {
        self.payload.extend_from_slice(&changes.bytes);
        for (digest, value) in changes.records {
            self.records.insert(digest, value);
        }
        for (key, value) in changes.rates {
            self.rates.insert(key, value);
        }
        for (total, delta) in self.deltas.iter_mut().zip(changes.deltas) {
            *total += delta;
        }
        self.added += changes.added;
    }
}

/// One command's changes, as the view collected them.
#[derive(Default)]
pub(crate) struct Changes {
    records: Vec<(Digest, Option<Arc<Record>>)>,
    rates: Vec<([u8; 16], Option<StoredRate>)>,
    /// The changes, encoded for the log.
    pub bytes: Vec<u8>,
    deltas: [i64; 3],
    added: i64,
    /// A sweep was asked for: the command must be applied to redb directly.
    pub needs_btree: bool,
}

impl Changes {
    /// Whether the command wrote anything.
    pub(crate) fn wrote(&self) -> bool {
        !self.bytes.is_empty()
    }
}

/// The view one command is applied to.
pub(crate) struct View<'a> {
    overlay: &'a Overlay,
    backend: &'a Backend,
    staged: &'a Staged,
    /// Records stored before this command (redb and the overlay, and the batch's).
    records_before: u64,
    changes: Changes,
    /// A key the caller read as absent, and the overlay's generation before it looked.
    absent: Option<(Digest, u64)>,
}

impl<'a> View<'a> {
    pub(crate) fn new(
        overlay: &'a Overlay,
        backend: &'a Backend,
        staged: &'a Staged,
        records_before: u64,
    ) -> Self {
        Self {
            overlay,
            backend,
            staged,
            records_before,
            changes: Changes::default(),
            absent: None,
        }
    }

    pub(crate) fn finish(self) -> Changes {
        self.changes
    }
}

impl Txn for View<'_> {
    fn record(&mut self, digest: &Digest) -> Result<Option<Record>, Error> {
        let mine = self.changes.records.iter().rev().find(|(d, _)| d == digest);
        if let Some((_, value)) = mine {
            return Ok(value.as_deref().cloned());
        }
        if let Some(value) = self.staged.records.get(digest) {
            return Ok(value.as_deref().cloned());
        }
        if let Some(value) = self.overlay.record(digest) {
            return Ok(value.as_deref().cloned());
        }
        // Not in the overlay now, and no entry left it since the caller found the key in
        // neither the overlay nor redb: redb still lacks it (only the writer adds entries, and
        // an entry reaches redb only before it leaves the overlay).
        if self
            .absent
            .is_some_and(|(d, generation)| d == *digest && self.overlay.generation() == generation)
        {
            return Ok(None);
        }
        self.backend.read_record(digest)
    }

    fn absent_since(&mut self, digest: &Digest, generation: u64) {
        self.absent = Some((*digest, generation));
    }

    fn put_record(
        &mut self,
        digest: &Digest,
        old: Option<&Record>,
        new: &Record,
    ) -> Result<(), Error> {
        let encoded = codec::encode_record(new)?;
        change::put_record(&mut self.changes.bytes, digest, &encoded);
        match old {
            Some(old) => self.changes.deltas[RecordCounts::slot(old)] -= 1,
            None => self.changes.added += 1,
        }
        self.changes.deltas[RecordCounts::slot(new)] += 1;
        self.changes
            .records
            .push((*digest, Some(Arc::new(new.clone()))));
        Ok(())
    }

    fn delete_record(&mut self, digest: &Digest, old: &Record) -> Result<(), Error> {
        change::delete_record(&mut self.changes.bytes, digest);
        self.changes.deltas[RecordCounts::slot(old)] -= 1;
        self.changes.added -= 1;
        self.changes.records.push((*digest, None));
        Ok(())
    }

    fn rate(&mut self, key: &[u8; 16]) -> Result<Option<StoredRate>, Error> {
        let mine = self.changes.rates.iter().rev().find(|(k, _)| k == key);
        if let Some((_, value)) = mine {
            return Ok(*value);
        }
        if let Some(value) = self.staged.rates.get(key) {
            return Ok(*value);
        }
        if let Some(value) = self.overlay.rate(key) {
            return Ok(value);
        }
        self.backend.read_rate(key)
    }

    fn put_rate(&mut self, key: &[u8; 16], rate: Option<&StoredRate>) -> Result<(), Error> {
        change::put_rate(&mut self.changes.bytes, key, rate);
        self.changes.rates.push((*key, rate.copied()));
        Ok(())
    }

    fn record_count(&mut self) -> Result<u64, Error> {
        let net = self.staged.added + self.changes.added;
        Ok(self.records_before.saturating_add_signed(net))
    }

    fn sweep(&mut self, _now: u64, _limit: usize) -> Result<Swept, Error> {
        self.changes.needs_btree = true;
        Ok(Swept::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::embedded::log::overlay::Round;
    use crate::engine::embedded::storage::test_backend as backend;
    use crate::idempotency::{RecordBody, StoredResponse};

    fn completed() -> Record {
        Record {
            fingerprint: [3; 32],
            created_at: 1,
            expires_at: u64::MAX / 2,
            attempts: 1,
            record_ttl: 1,
            body: RecordBody::Completed(StoredResponse::new(201, b"done".to_vec())),
        }
    }

    /// A caller finds the key absent; before the writer gets to its begin, another begin of the
    /// key is published, applied to redb and retired from the overlay. The writer must see the
    /// record (reading redb), not trust the stale absence: the double execution the hint risks.
    #[test]
    fn an_absence_read_before_an_entry_left_the_overlay_is_not_trusted() {
        let (overlay, backend, staged) =
            (Overlay::new(1 << 20, 0, 1, 0), backend(), Staged::default());
        let digest = Digest([9; 32]);
        let seen = overlay.generation();
        assert!(overlay.record(&digest).is_none());
        assert!(backend.read_record(&digest).expect("read").is_none());

        let record = Arc::new(completed());
        overlay.publish([(digest, Some(Arc::clone(&record)))], [], 100, 1, 0);
        backend
            .write(|tables| tables.put_record(&digest, None, &record))
            .expect("apply");
        overlay.retire(&Round {
            records: vec![(digest, 100, Some(Arc::clone(&record)))],
            rates: Vec::new(),
            published: 100,
            next_token: 1,
            clock: 0,
        });
        assert!(overlay.record(&digest).is_none(), "retired");

        let mut view = View::new(&overlay, &backend, &staged, 1);
        view.absent_since(&digest, seen);
        let found = view.record(&digest).expect("read");
        assert_eq!(
            found.as_ref(),
            Some(&*record),
            "the stale absence was trusted"
        );
    }

    /// While nothing left the overlay, the view answers the absence without reading redb: shown
    /// by a record written into redb behind the overlay's back (which no engine path does), that
    /// the view does not see. Publishing (of another key) leaves the generation alone; the
    /// overlay still answers first.
    #[test]
    fn an_absence_is_trusted_while_no_entry_left_the_overlay() {
        let (overlay, backend, staged) =
            (Overlay::new(1 << 20, 0, 1, 0), backend(), Staged::default());
        let (digest, other) = (Digest([9; 32]), Digest([8; 32]));
        let seen = overlay.generation();
        overlay.publish([(other, Some(Arc::new(completed())))], [], 100, 1, 0);
        assert_eq!(overlay.generation(), seen, "publishing moves no generation");
        backend
            .write(|tables| tables.put_record(&digest, None, &completed()))
            .expect("behind the overlay's back");
        let mut view = View::new(&overlay, &backend, &staged, 1);
        view.absent_since(&digest, seen);
        assert_eq!(view.record(&digest).expect("read"), None, "redb was read");
        assert!(
            view.record(&other).expect("read").is_some(),
            "the overlay answers first"
        );
        // Another key's absence is not this one's.
        let mut view = View::new(&overlay, &backend, &staged, 1);
        view.absent_since(&other, seen);
        assert!(view.record(&digest).expect("read").is_some());
    }
}
