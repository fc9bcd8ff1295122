//! The crash policy for rate counters: how counters loaded from disk are adjusted after an
//! unclean Batched session.

use super::{CrashPolicy, RateState, Spec, most_restrictive};

/// How counters loaded from disk are adjusted after an unclean batched session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recovery {
    /// With `DrainOnRecovery` after an unclean shutdown: the recovery time.
    drain_from: Option<u64>,
}

impl Recovery {
    pub(crate) fn new(policy: CrashPolicy, recovered_at: Option<u64>) -> Self {
        Self {
            drain_from: match policy {
                CrashPolicy::DrainOnRecovery => recovered_at,
                // BoundedLoss: the disk holds each counter's reservation, at least as spent as it
                // was; TrustLastFlush: the last flush is believed.
                CrashPolicy::BoundedLoss | CrashPolicy::TrustLastFlush => None,
            },
        }
    }

    /// The counter as decisions may use it: at least as spent as "everything spent at recovery".
    /// Once a window (or a burst refill) has passed since recovery this changes nothing.
    pub(crate) fn on_load(
        &self,
        spec: &Spec,
        state: Option<RateState>,
        now: u64,
    ) -> Option<RateState> {
        match self.drain_from {
            Some(at) => Some(most_restrictive(spec, state, spec.drained(at), now)),
            None => state,
        }
    }
}
