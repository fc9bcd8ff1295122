//! The shared store (`open_shared`): a client's operations against the owner's own, in one run.
//! The client is a second `open_shared` in the same process, so every client operation crosses
//! the Unix socket and the owner's connection thread exactly as from another process.
//!
//! - `replay`: a finished key replayed (the client's replay cache answers, no round trip).
//! - `in_flight`: a begin of a key another lease holds (not cacheable: one round trip for the
//!   client): the added latency of a client call.
//! - `batched_check`: a rate check in Batched mode (in memory on the owner; one round trip for the
//!   client).
//!
//! ```text
//! cargo bench --bench shared
//! ```

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::Store;
use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
use tollgate::ratelimit::{Limit, Quota};

fn shared(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.redb");
    let owner = Store::builder().open_shared(&path).expect("the owner");
    let client = Store::builder().open_shared(&path).expect("a client");
    let request = Fingerprint::of(b"r");
    let done = IdempotencyKey::new("bench", "done").expect("key");
    if let Begin::Acquired(lease) = owner.begin(&done, &request).expect("begin") {
        lease
            .complete(StoredResponse::new(200, b"ok".to_vec()))
            .expect("complete");
    }
    let held = IdempotencyKey::new("bench", "held").expect("key");
    let Begin::Acquired(lease) = owner.begin(&held, &request).expect("begin") else {
        panic!("a fresh key")
    };
    let limit = Limit::new("bench", Quota::per_second(1_000_000_000)).expect("limit");

    for (name, store) in [("owner", &owner), ("client", &client)] {
        let mut group = c.benchmark_group(format!("shared_{name}"));
        group.bench_function("replay", |b| {
            b.iter(|| assert!(matches!(store.begin(&done, &request), Ok(Begin::Replay(_)))));
        });
        group.bench_function("in_flight", |b| {
            b.iter(|| {
                assert!(matches!(
                    store.begin(&held, &request),
                    Ok(Begin::InFlight { .. })
                ));
            });
        });
        group.bench_function("batched_check", |b| {
            b.iter(|| assert!(store.check(&limit, "subject").expect("check").allowed()));
        });
        group.finish();
    }
    lease.release().expect("release");
    client.close().expect("close the client");
    owner.close().expect("close the owner");
}

criterion_group!(benches, shared);
criterion_main!(benches);
