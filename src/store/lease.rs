//! What a [`Lease`](crate::idempotency::Lease) resolves through: its completion, failure,
//! release, extension or checkpoint, sent to the engine with the lease's fencing token.

use super::Store;
use crate::error::{Error, Result};
use crate::idempotency::Digest;
use crate::idempotency::machine::Resolution;

impl Store {
    pub(crate) fn resolve(
        &self,
        digest: Digest,
        token: u64,
        resolution: Resolution,
    ) -> Result<Option<u64>> {
        let kind = match &resolution {
            Resolution::Complete(_) => "complete",
            Resolution::Fail(_) => "fail",
            Resolution::Release => "release",
            Resolution::Extend(_) => "extend",
            Resolution::SaveCheckpoint(_) => "checkpoint",
        };
        let resolved = self
            .shared
            .engine
            .records()
            .resolve(digest, token, resolution);
        match resolved {
            Ok(expiry) => {
                crate::observe::resolution(&digest, kind, token, false);
                Ok(expiry)
            }
            Err(Error::LeaseLost) => {
                crate::observe::resolution(&digest, kind, token, true);
                Err(Error::LeaseLost)
            }
            Err(error) => Err(error),
        }
    }
}
