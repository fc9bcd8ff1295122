//! The shared store (`open_shared`): a client's operations against the owner's own, in one run.
//! The client is a second `open_shared` in the same process, so every client operation crosses
//! the Unix socket and the owner's connection thread exactly as from another process.
//!
//! - `replay`: a finished key replayed (the client's replay cache answers, no round trip).
//! - `in_flight`: a begin of a key another lease holds (not cacheable: one round trip for the
//!   client): the added latency of a client call.
//! - `batched_check`: a rate check in Batched mode (in memory on the owner; one round trip for the
//!   client); `batched_check_8_threads`: the same from 8 threads at once (time per check).
//!
//! - `unix_socket_round_trip`: the floor, 8 bytes each way between two threads over a socket
//!   pair.
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
    // The held key's lease must outlive the whole run.
    let builder = Store::builder().lease_ttl(std::time::Duration::from_secs(3600));
    let owner = builder.clone().open_shared(&path).expect("the owner");
    let client = builder.open_shared(&path).expect("a client");
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
        group.bench_function("batched_check_8_threads", |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(8);
                let start = std::time::Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..8 {
                        let (store, limit) = (store, &limit);
                        scope.spawn(move || {
                            let subject = format!("subject-{t}");
                            for _ in 0..per_thread {
                                assert!(store.check(limit, &subject).expect("check").allowed());
                            }
                        });
                    }
                });
                // Time per check: the run's wall time over the checks made.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_thread * 8) as f64)
            });
        });
        group.finish();
    }
    lease.release().expect("release");
    client.close().expect("close the client");
    owner.close().expect("close the owner");
}

/// The floor under a client's round trip: 8 bytes each way between two threads over a Unix
/// socket pair, nothing else.
fn socket_floor(c: &mut Criterion) {
    use std::io::{Read, Write};
    let (mut ours, mut theirs) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    let echo = std::thread::spawn(move || {
        let mut buffer = [0u8; 8];
        while theirs.read_exact(&mut buffer).is_ok() {
            if theirs.write_all(&buffer).is_err() {
                return;
            }
        }
    });
    let mut buffer = [0u8; 8];
    c.bench_function("unix_socket_round_trip", |b| {
        b.iter(|| {
            ours.write_all(&[1; 8]).expect("write");
            ours.read_exact(&mut buffer).expect("read");
        });
    });
    drop(ours);
    echo.join().expect("the echo thread");
}

criterion_group!(benches, shared, socket_floor);
criterion_main!(benches);
