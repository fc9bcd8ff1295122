//! The shared engine's two halves of the seam: each operation runs on the engine if this process
//! owns the file, else as one request to the owner (`Inner::call`), its answer checked for the
//! request's kind of reply.

use std::time::Duration;

use super::message::{self, Begun, Reply, Request, WireBegin, WireLimit};
use super::{Kind, Role, Shared, WAIT_POLL};
use crate::engine::{BeginRequest, BulkRecords, CounterEngine, Early, RecordEngine, Seen};
use crate::error::{Error, Result};
use crate::idempotency::machine::{BeginDecision, Resolution};
use crate::idempotency::{Digest, Record};
use crate::ratelimit::Limit;
use crate::ratelimit::charge::{OpKind, RateOutcome};

impl RecordEngine for Shared {
    fn now(&self) -> u64 {
        match &*self.inner.role.read() {
            Role::Owner(owner) => owner.engine.now(),
            Role::Client(_) | Role::Lost(_) => self.inner.time.now(),
        }
    }

    fn read(&self, digest: &Digest) -> Result<Option<Record>> {
        let request = Request::Read { digest: digest.0 };
        self.inner.call(
            Kind::Read,
            |engine| engine.read(digest),
            &request,
            |reply| match reply {
                Reply::Record(record) => Some(record),
                _ => None,
            },
        )
    }

    fn begin_without_writing(&self, digest: &Digest, request: BeginRequest) -> Result<Early> {
        // An owner's engine reads first as it always does; a client's begin is one request
        // that reads first and writes if it must (a read-only client's only reads).
        let (digest_bytes, wire_request) = (digest.0, WireBegin::of(request));
        let (wire, kind) = if self.inner.options.read_only {
            let wire = Request::BeginRead {
                digest: digest_bytes,
                request: wire_request,
            };
            (wire, Kind::Read)
        } else {
            let wire = Request::Begin {
                digest: digest_bytes,
                request: wire_request,
            };
            (wire, Kind::Write)
        };
        self.inner.call(
            kind,
            |engine| engine.begin_without_writing(digest, request),
            &wire,
            |reply| match reply {
                Reply::Begun(Begun::Read(decision, record)) => {
                    Some(Early::Answer(decision, record))
                }
                Reply::Begun(Begun::Written(decision)) => Some(Early::Written(decision)),
                Reply::Begun(Begun::MustWrite) => Some(Early::Write(Seen::Nothing)),
                _ => None,
            },
        )
    }

    fn begin(&self, digest: Digest, request: BeginRequest, seen: Seen) -> Result<BeginDecision> {
        self.refuse_if_read_only()?;
        let wire = Request::Begin {
            digest: digest.0,
            request: WireBegin::of(request),
        };
        self.inner.call(
            Kind::Write,
            |engine| engine.begin(digest, request, seen),
            &wire,
            |reply| match reply {
                Reply::Begun(Begun::Read(decision, _) | Begun::Written(decision)) => Some(decision),
                _ => None,
            },
        )
    }

    fn resolve(&self, digest: Digest, token: u64, resolution: Resolution) -> Result<Option<u64>> {
        self.refuse_if_read_only()?;
        let request = Request::Resolve {
            digest: digest.0,
            token,
            resolution: resolution.clone(),
        };
        self.inner.call(
            Kind::Write,
            |engine| engine.resolve(digest, token, resolution.clone()),
            &request,
            |reply| match reply {
                Reply::Resolved(expiry) => Some(expiry),
                _ => None,
            },
        )
    }

    fn list(&self, after: Option<&Digest>, limit: usize) -> Result<Vec<(Digest, Result<Record>)>> {
        if let Role::Owner(owner) = &*self.inner.role.read() {
            return owner.engine.list(after, limit);
        }
        let mut found = Vec::new();
        let mut after = after.copied();
        while found.len() < limit {
            let request = Request::List {
                after: after.map(|digest| digest.0),
                limit: u32::try_from(limit - found.len()).unwrap_or(u32::MAX),
            };
            // An owner lists above; a client that becomes the owner meanwhile lists here.
            let (records, end) = self.inner.call(
                Kind::Read,
                |engine| {
                    let records = engine.list(after.as_ref(), limit)?;
                    Ok((
                        records
                            .into_iter()
                            .map(|(digest, record)| {
                                (
                                    digest.0,
                                    record.map_err(|error| message::WireError::of(&error)),
                                )
                            })
                            .collect(),
                        true,
                    ))
                },
                &request,
                |reply| match reply {
                    Reply::Listed { records, end } => Some((records, end)),
                    _ => None,
                },
            )?;
            let got = records.len();
            for (digest, record) in records {
                after = Some(Digest(digest));
                found.push((
                    Digest(digest),
                    record.map_err(|error| error.into_error(&self.inner.options.path)),
                ));
            }
            if end || got == 0 {
                break;
            }
        }
        found.truncate(limit);
        Ok(found)
    }

    fn bulk_load(&self, count: u64, records: BulkRecords) -> Result<u64> {
        self.refuse_if_read_only()?;
        if let Role::Owner(owner) = &*self.inner.role.read() {
            return owner.engine.bulk_load(count, records);
        }
        // A client makes the records here and sends them in one request: one transaction on
        // the owner, as anywhere else, within one frame.
        let mut records = records;
        let now = self.inner.time.now();
        let mut made = Vec::new();
        while let Some((digest, record)) = records(made.len() as u64, now) {
            made.push((digest.0, record));
        }
        let request = Request::Bulk { records: made };
        self.inner.call(
            Kind::Write,
            |_| {
                Err(Error::Unavailable(
                    "this process took the shared store over during a bulk load; nothing was loaded: retry"
                        .into(),
                ))
            },
            &request,
            |reply| match reply {
                Reply::Loaded(loaded) => Some(loaded),
                _ => None,
            },
        )
    }

    fn wait_poll(&self) -> Option<Duration> {
        Some(WAIT_POLL)
    }
}

impl CounterEngine for Shared {
    fn run(&self, kind: OpKind, checks: &[(&Limit, &str)]) -> Result<RateOutcome> {
        if kind.writes() {
            self.refuse_if_read_only()?;
        }
        let request = Request::Rate {
            kind,
            checks: checks
                .iter()
                .map(|(limit, subject)| (WireLimit::of(limit), (*subject).to_owned()))
                .collect(),
        };
        let kind_of_call = if kind.writes() {
            Kind::Write
        } else {
            Kind::Read
        };
        self.inner.call(
            kind_of_call,
            |engine| engine.run(kind, checks),
            &request,
            |reply| match reply {
                Reply::Rate(outcome) => Some(outcome),
                _ => None,
            },
        )
    }

    fn run_in_memory(
        &self,
        kind: OpKind,
        checks: &[(&Limit, &str)],
    ) -> Result<Option<RateOutcome>> {
        match &*self.inner.role.read() {
            Role::Owner(owner) => owner.engine.run_in_memory(kind, checks),
            Role::Client(_) | Role::Lost(_) => Ok(None),
        }
    }

    fn flush(&self) -> Result<()> {
        // A read-only client changed nothing: nothing of its own to make durable.
        if self.inner.options.read_only {
            return Ok(());
        }
        self.inner.call(
            Kind::Write,
            CounterEngine::flush,
            &Request::Flush,
            |reply| matches!(reply, Reply::Done).then_some(()),
        )
    }
}
