//! Which processes' leases are alive: the rule that decides, for a RUNNING record, whether the
//! process that holds its lease still runs (then it is never taken over before it expires) or
//! has ended (then the next `begin` takes it over at once, `recovered()`).
//!
//! A lease carries the epoch of the process that took it. A store opened by one process has one
//! epoch, bumped durably at every open: a lease of an older epoch was left by a run that ended.
//! A store shared by the processes of a host (`StoreBuilder::open_shared`) gives each process an
//! epoch of its own, out of a block the owner reserved durably when it opened the file (the
//! stored epoch jumps by [`SHARED_EPOCH_BLOCK`], so that the next open of any kind is above every
//! epoch handed out). The owner keeps the set of epochs whose process is connected (its own,
//! each connected client's, and the one it had as a client before it took the file over): a
//! lease of an epoch in the set is live, any other has ended. After a takeover the new owner does
//! not know which processes still run: for [`Processes::grace`] it treats every older epoch as
//! live, so that a client that reconnects in time keeps its leases, and only then takes the
//! others over. This is the PostgreSQL engine's node rule with processes for nodes.
//!
//! The rule answers with the `owner_epoch` that `idempotency::machine::begin` compares a lease's
//! epoch with: the lease's own epoch while its process is live (not older, so not taken over
//! early), the one after it once its process has ended (older, so taken over at once).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::idempotency::{Record, RecordBody};

/// How far the stored epoch jumps when a shared store's owner opens the file: the owner takes
/// the first epoch of the block, its clients the next ones.
pub(crate) const SHARED_EPOCH_BLOCK: u64 = 1 << 32;

/// The epochs of the processes whose leases are live.
#[derive(Debug, Default)]
pub(crate) struct Processes {
    /// The epoch of this open (the store's own leases).
    own: AtomicU64,
    /// Whether other processes take leases through this store (a shared store's owner).
    shared: AtomicBool,
    others: RwLock<Others>,
}

#[derive(Debug, Default)]
struct Others {
    /// Epochs of connected processes (and this process's own former ones).
    live: HashSet<u64>,
    /// The next epoch to hand out, and the end of the block (exclusive).
    next: u64,
    end: u64,
    /// Until this store time (nanoseconds), every epoch older than `own` counts as live.
    grace_until: u64,
}

impl Processes {
    /// A store of one process, at `epoch`.
    pub(crate) fn single(epoch: u64) -> Processes {
        let processes = Processes::default();
        processes.own.store(epoch, Ordering::Release);
        processes
    }

    /// The epoch of this open's own leases.
    pub(crate) fn own(&self) -> u64 {
        self.own.load(Ordering::Acquire)
    }

    /// A (re)open at `epoch`; a shared store's owner hands out the epochs after it, up to `end`
    /// (exclusive). The epochs of processes still connected stay live.
    pub(crate) fn opened(&self, epoch: u64, end: u64) {
        let mut others = self.others.write();
        others.next = epoch.saturating_add(1);
        others.end = end;
        self.own.store(epoch, Ordering::Release);
    }

    /// Makes this a shared store's owner: from now on other processes take leases, and until
    /// store time `grace_until` every epoch older than this open's counts as live.
    pub(crate) fn share(&self, grace_until: u64) {
        self.others.write().grace_until = grace_until;
        self.shared.store(true, Ordering::Release);
    }

    /// A new process's epoch, live until [`Processes::ended`].
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the block this open reserved is used up (2³² connections).
    pub(crate) fn admit(&self) -> Result<u64> {
        let mut others = self.others.write();
        if others.next >= others.end {
            return Err(Error::Unavailable(
                "the store's owner has handed out every process epoch of its open: reopen it"
                    .into(),
            ));
        }
        let epoch = others.next;
        others.next += 1;
        others.live.insert(epoch);
        Ok(epoch)
    }

    /// A process that had `epoch` before this open (it reconnects after a takeover, or it is
    /// this process's own former client epoch) keeps it: `true` if it may, which is while the
    /// grace window lasts (`now` is the store time) or for this process's own (`always`).
    pub(crate) fn readmit(&self, epoch: u64, now: u64, always: bool) -> bool {
        let mut others = self.others.write();
        let older = epoch < self.own();
        if !older || others.live.contains(&epoch) || !(always || now < others.grace_until) {
            return false;
        }
        others.live.insert(epoch);
        true
    }

    /// Whether `epoch`'s process is connected.
    pub(crate) fn is_live(&self, epoch: u64) -> bool {
        epoch == self.own() || self.others.read().live.contains(&epoch)
    }

    /// `epoch`'s process has ended (its connection closed): its leases are taken over at once.
    pub(crate) fn ended(&self, epoch: u64) {
        self.others.write().live.remove(&epoch);
    }

    /// The `owner_epoch` a begin at store time `now` compares a lease of `lease_epoch` with:
    /// `lease_epoch` itself while its process is live, the epoch after it once it has ended.
    pub(crate) fn owner_epoch(&self, lease_epoch: u64, now: u64) -> u64 {
        let own = self.own();
        if lease_epoch == own {
            return own;
        }
        if !self.shared.load(Ordering::Acquire) {
            // One process: every other epoch is of a run that ended.
            return own.max(lease_epoch.saturating_add(1));
        }
        let others = self.others.read();
        let live =
            others.live.contains(&lease_epoch) || (lease_epoch < own && now < others.grace_until);
        if live {
            lease_epoch
        } else {
            lease_epoch.saturating_add(1)
        }
    }
}

/// The `owner_epoch` a begin at `now` by a process at `epoch` is decided with, for `existing`:
/// its lease's process's, by [`Processes::owner_epoch`] (any value serves when there is no lease).
pub(crate) fn owner_epoch(
    processes: &Processes,
    existing: Option<&Record>,
    epoch: u64,
    now: u64,
) -> u64 {
    match existing.map(|record| &record.body) {
        Some(RecordBody::Running {
            epoch: lease_epoch, ..
        }) => processes.owner_epoch(*lease_epoch, now),
        _ => epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = 100;

    fn taken_over(processes: &Processes, lease_epoch: u64, now: u64) -> bool {
        lease_epoch < processes.owner_epoch(lease_epoch, now)
    }

    #[test]
    fn one_process_takes_over_every_lease_of_another_epoch() {
        let processes = Processes::single(5);
        assert!(!taken_over(&processes, 5, 0));
        assert!(taken_over(&processes, 4, 0));
        assert!(taken_over(&processes, 1, 0));
    }

    #[test]
    fn a_connected_process_keeps_its_leases_and_an_ended_one_loses_them_at_once() {
        let processes = Processes::single(0);
        processes.opened(10, 10 + BLOCK);
        processes.share(0);
        let client = processes.admit().expect("an epoch");
        assert_eq!(client, 11);
        assert!(processes.is_live(client));
        assert!(!taken_over(&processes, client, 1));
        processes.ended(client);
        assert!(taken_over(&processes, client, 1));
        assert!(!processes.is_live(client));
        // A previous owner's epoch, after the grace window.
        assert!(taken_over(&processes, 3, 1));
    }

    #[test]
    fn after_a_takeover_older_epochs_are_live_until_the_grace_window_ends() {
        let processes = Processes::single(0);
        processes.opened(200, 200 + BLOCK);
        processes.share(1_000);
        assert!(!taken_over(&processes, 150, 999));
        assert!(taken_over(&processes, 150, 1_000));
        // An epoch not older than this open's was never handed out: no grace for it.
        assert!(taken_over(&processes, 250, 999));
        // A client that reconnects in the window keeps its epoch, and its leases after it.
        assert!(processes.readmit(120, 500, false));
        assert!(!taken_over(&processes, 120, 5_000));
        // Twice is refused (another connection holds it), as is a claim after the window.
        assert!(!processes.readmit(120, 500, false));
        assert!(!processes.readmit(130, 1_000, false));
        assert!(processes.readmit(130, 1_000, true));
        assert!(!processes.readmit(300, 0, true));
    }

    #[test]
    fn the_block_runs_out_with_a_typed_error() {
        let processes = Processes::single(0);
        processes.opened(10, 12);
        processes.share(0);
        assert_eq!(processes.admit().expect("the one epoch"), 11);
        assert!(matches!(processes.admit(), Err(Error::Unavailable(_))));
    }
}
