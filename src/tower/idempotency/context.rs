//! What a handler behind [`IdempotencyLayer`](super::IdempotencyLayer) gets in its request's
//! extensions ([`IdempotencyContext`]): whether the request was recovered, its attempt and
//! fencing token, its checkpoint, and the lease itself, kept alive by a keeper task every third of
//! the store's `lease_ttl` while the handler runs ([`LeaseSlot`]).

use std::sync::Arc;
use std::time::Duration;

use super::blocking;
use crate::Error;
use crate::idempotency::{Checkpoint, Lease};

/// What the handler of a fresh or recovered execution learns, from the request's extensions
/// (in axum: `Extension<IdempotencyContext>`), and its way to the lease the layer holds for it.
///
/// The layer keeps the lease alive while the handler runs (it extends it every third of the
/// store's [`lease_ttl`](crate::StoreBuilder::lease_ttl)), so a handler slower than the lease
/// is never taken over by a retry. A handler that works in steps saves its progress with
/// [`IdempotencyContext::save_checkpoint`]; an execution that takes over from a crashed one
/// (`recovered`) finds the last checkpoint in `checkpoint`.
///
/// ```
/// # #[cfg(feature = "tower")] {
/// use tollgate::tower::IdempotencyContext;
///
/// // An axum handler: `async fn pay(Extension(context): Extension<IdempotencyContext>) -> ...`
/// async fn pay(context: IdempotencyContext) -> Result<String, tollgate::Error> {
///     let step = context.checkpoint.as_ref().map_or("start", |c| c.name.as_str());
///     if step == "start" {
///         // ... reserve the funds, then remember that it was done ...
///         context.save_checkpoint("reserved", b"hold_81").await?;
///     }
///     // ... capture, then answer; the layer stores the answer as the key's outcome.
///     Ok(format!("paid (attempt {}, recovered: {})", context.attempt, context.recovered))
/// }
/// # let _ = pay; }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IdempotencyContext {
    /// An earlier execution of this request may have run (its owner crashed or stalled).
    pub recovered: bool,
    /// 1 for the first execution, plus one per takeover.
    pub attempt: u32,
    /// The lease's fencing token, for downstream systems that reject stale owners.
    pub token: u64,
    /// The last checkpoint an earlier execution saved.
    pub checkpoint: Option<Checkpoint>,
    pub(super) lease: LeaseSlot,
}

impl IdempotencyContext {
    /// Saves progress that a later execution receives on takeover (in its `checkpoint`), as
    /// [`Lease::save_checkpoint`] does; durable on return. Runs on a blocking thread.
    ///
    /// # Errors
    /// As for [`Lease::save_checkpoint`]; [`Error::LeaseLost`] also once the layer found the
    /// lease lost, or after the handler's response was recorded.
    pub async fn save_checkpoint(&self, name: &str, data: &[u8]) -> crate::Result<()> {
        let slot = self.lease.clone();
        let (name, data) = (name.to_owned(), data.to_vec());
        blocking(move || slot.with_lease(|lease| lease.save_checkpoint(&name, &data))).await
    }

    /// Whether the lease was found lost while the handler ran (the record was taken over, e.g.
    /// after this process stalled past the lease): the handler's response will not be stored,
    /// and a handler that can should stop before further side effects.
    pub fn lease_lost(&self) -> bool {
        self.lease.is_lost()
    }
}

/// The lease of one execution, shared by the layer (which extends it, then resolves it) and the
/// handler (which saves checkpoints under it).
#[derive(Clone)]
pub(super) struct LeaseSlot {
    pub(super) inner: Arc<SlotInner>,
}

pub(super) struct SlotInner {
    /// `None` once the layer took the lease to resolve it.
    lease: parking_lot::Mutex<Option<Lease>>,
    /// The record's digest, for the logs (read without the lock an extension may hold).
    pub(super) digest: crate::idempotency::Digest,
    lost: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for LeaseSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseSlot")
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl LeaseSlot {
    pub(super) fn new(lease: Lease) -> Self {
        Self {
            inner: Arc::new(SlotInner {
                digest: lease.digest(),
                lease: parking_lot::Mutex::new(Some(lease)),
                lost: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    pub(super) fn is_lost(&self) -> bool {
        self.inner.lost.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Runs `work` on the lease (blocking: call it off the async workers); a lease found lost is
    /// remembered.
    pub(super) fn with_lease(
        &self,
        work: impl FnOnce(&mut Lease) -> crate::Result<()>,
    ) -> crate::Result<()> {
        let mut slot = self.inner.lease.lock();
        let Some(lease) = slot.as_mut() else {
            return Err(Error::LeaseLost);
        };
        if self.is_lost() {
            return Err(Error::LeaseLost);
        }
        let result = work(lease);
        if matches!(result, Err(Error::LeaseLost)) {
            self.inner
                .lost
                .store(true, std::sync::atomic::Ordering::Release);
        }
        result
    }

    /// Takes the lease out to resolve it (blocking: waits for an extension in progress).
    pub(super) fn take(&self) -> Option<Lease> {
        self.inner.lease.lock().take()
    }
}

/// Extends the lease in `slot` by `ttl` every `period` until the task is aborted or the lease is
/// found lost. An extension that fails for another reason (the store is unavailable) is tried
/// again at the next period: if the store stays away the lease lapses, and fencing refuses this
/// execution's later writes.
pub(super) async fn keep_alive(slot: LeaseSlot, period: Duration, ttl: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let extending = slot.clone();
        match blocking(move || extending.with_lease(|lease| lease.extend(ttl))).await {
            Ok(()) => {}
            Err(Error::LeaseLost) => {
                crate::observe::lease_lost_in_handler(&slot.inner.digest);
                return;
            }
            Err(error) => crate::observe::lease_extension_failed(&error),
        }
    }
}

/// How often a running handler's lease is extended: a third of its length, so two extensions
/// can fail before it lapses.
pub(super) fn keep_alive_period(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_extended_three_times_per_length_and_never_in_a_busy_loop() {
        // Two extensions can fail before the lease lapses.
        assert_eq!(
            keep_alive_period(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(
            keep_alive_period(Duration::from_millis(1)),
            Duration::from_millis(1)
        );
        assert_eq!(keep_alive_period(Duration::ZERO), Duration::from_millis(1));
    }
}
