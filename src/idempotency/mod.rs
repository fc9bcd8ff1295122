//! Idempotency records: keys, fingerprints, leases and the state machine.
//!
//! A request carrying an idempotency key goes through [`Store::begin`](crate::Store::begin):
//!
//! - [`Begin::Acquired`]: execute it, then [`Lease::complete`], [`Lease::fail`] or
//!   [`Lease::release`];
//! - [`Begin::Replay`]: it already ran; send [`Replay::response`] again;
//! - [`Begin::InFlight`]: it is running elsewhere; answer 409 with `Retry-After`, or wait;
//! - [`Begin::Mismatch`]: the key was used for a different request; answer 422.
//!
//! The rules live in one pure module (`machine`); see `docs/DESIGN.md` for the state diagram and
//! the invariants.

mod fingerprint;
mod key;
mod lease;
pub(crate) mod machine;
mod record;

pub use fingerprint::{Fingerprint, RequestFingerprint};
pub use key::{Digest, IdempotencyKey, KeyError, MAX_KEY_LEN, MAX_SCOPE_LEN};
pub use lease::{Begin, Lease, Replay};
pub use record::{
    Checkpoint, MAX_CHECKPOINT_NAME_LEN, Outcome, RecordInfo, RecordState, StoredResponse,
};
pub(crate) use record::{Record, RecordBody};
