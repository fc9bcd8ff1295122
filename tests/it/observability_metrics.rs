//! With feature `metrics`, the documented counters and histograms are recorded through the
//! `metrics` facade: begins by outcome, resolutions (fenced ones apart), rate decisions, writer
//! batch sizes, commit latency and removed records.

use crate::fixture;

use std::collections::HashMap;

use fixture::{Fixture, LEASE_TTL, RECORD_TTL, acquired, key, request, response};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tollgate::ratelimit::{Limit, Quota};

#[test]
fn the_documented_metrics_are_recorded() {
    // A process of its own: the global recorder this test installs would count every other test's metrics.
    if fixture::isolated(module_path!(), "the_documented_metrics_are_recorded") {
        return;
    }
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let fixture = Fixture::new();
    let store = fixture.open_without_compactor();
    let lease = acquired(store.begin(&key("a"), &request("r")).unwrap());
    let _ = store.begin(&key("a"), &request("r")).unwrap(); // in flight
    let _ = store.begin(&key("a"), &request("other")).unwrap(); // mismatch
    fixture.clock.advance(LEASE_TTL);
    let owner = acquired(store.begin(&key("a"), &request("r")).unwrap()); // takeover
    assert!(lease.complete(response("late")).is_err()); // fenced
    owner.complete(response("done")).unwrap();
    let _ = store.begin(&key("a"), &request("r")).unwrap(); // replay
    let limit = Limit::new("m", Quota::per_minute(1)).unwrap();
    assert!(store.check(&limit, "s").unwrap().allowed());
    assert!(!store.check(&limit, "s").unwrap().allowed());
    fixture.clock.advance(RECORD_TTL * 2);
    assert_eq!(store.compact_now().unwrap().removed_records, 1);
    store.close().unwrap();

    let mut counters: HashMap<String, u64> = HashMap::new();
    let mut histograms: HashMap<String, usize> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let mut name = key.name().to_owned();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        if !labels.is_empty() {
            name = format!("{name}{{{}}}", labels.join(","));
        }
        match value {
            DebugValue::Counter(n) => {
                *counters.entry(name).or_default() += n;
            }
            DebugValue::Histogram(values) => {
                *histograms.entry(name).or_default() += values.len();
            }
            DebugValue::Gauge(_) => {}
        }
    }
    let count = |name: &str| counters.get(name).copied().unwrap_or(0);
    assert_eq!(
        count("tollgate_begins_total{outcome=acquired}"),
        1,
        "{counters:?}"
    );
    assert_eq!(count("tollgate_begins_total{outcome=in_flight}"), 1);
    assert_eq!(count("tollgate_begins_total{outcome=mismatch}"), 1);
    assert_eq!(count("tollgate_begins_total{outcome=takeover}"), 1);
    assert_eq!(count("tollgate_begins_total{outcome=replay}"), 1);
    assert_eq!(
        count("tollgate_resolutions_total{kind=complete,result=fenced}"),
        1
    );
    assert_eq!(
        count("tollgate_resolutions_total{kind=complete,result=ok}"),
        1
    );
    assert_eq!(
        count("tollgate_rate_checks_total{decision=allowed,limit=m}"),
        1
    );
    assert_eq!(
        count("tollgate_rate_checks_total{decision=denied,limit=m}"),
        1
    );
    assert_eq!(count("tollgate_removed_records_total"), 1);
    assert!(
        histograms
            .get("tollgate_writer_batch_size")
            .copied()
            .unwrap_or(0)
            >= 3,
        "{histograms:?}"
    );
    assert!(
        histograms
            .get("tollgate_commit_seconds")
            .copied()
            .unwrap_or(0)
            >= 3
    );
}

#[test]
fn entering_and_leaving_the_degraded_state_is_recorded() {
    // A process of its own: the global recorder this test installs would count every other test's metrics.
    if fixture::isolated(
        module_path!(),
        "entering_and_leaving_the_degraded_state_is_recorded",
    ) {
        return;
    }
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    // Through the write-ahead log (the default for store files) and without it.
    for log in [false, true] {
        let fixture = Fixture::new();
        let (store, disk) = fixture::degraded_store_with_log(&fixture, log);
        // A snapshot drains the counters: what each one saw is added up.
        type Snapshot = Vec<(
            metrics_util::CompositeKey,
            Option<metrics::Unit>,
            Option<metrics::SharedString>,
            DebugValue,
        )>;
        let gauge = |snapshot: &Snapshot| {
            snapshot.iter().find_map(|(key, _, _, value)| match value {
                DebugValue::Gauge(level) if key.key().name() == "tollgate_degraded" => {
                    Some(level.into_inner())
                }
                _ => None,
            })
        };
        let entered = |snapshot: &Snapshot| -> u64 {
            snapshot
                .iter()
                .filter_map(|(key, _, _, value)| match value {
                    DebugValue::Counter(n) if key.key().name() == "tollgate_degraded_total" => {
                        Some(*n)
                    }
                    _ => None,
                })
                .sum()
        };
        let while_full = snapshotter.snapshot().into_vec();
        assert_eq!(gauge(&while_full), Some(1.0), "log {log}: {while_full:?}");
        fixture::recover(&fixture, &store, &disk);
        let after = snapshotter.snapshot().into_vec();
        assert!(
            entered(&while_full) + entered(&after) >= 1,
            "{while_full:?}"
        );
        assert_eq!(gauge(&after), Some(0.0), "left the degraded state");
        store.close().unwrap();
    }
}

/// Counters on Redis: a loss found is counted by scope, and each request a `RateLimitLayer`
/// decided without its counters is counted by what it decided (fail open: allowed; fail closed:
/// denied).
#[cfg(all(feature = "redis", feature = "tower"))]
#[test]
fn redis_losses_and_unavailable_decisions_are_recorded() {
    // A process of its own: the global recorder this test installs would count every other test's metrics.
    if fixture::isolated(
        module_path!(),
        "redis_losses_and_unavailable_decisions_are_recorded",
    ) {
        return;
    }
    if tollgate::testing::redis::server().is_none() {
        return;
    }
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let redis = tollgate::testing::redis::Server::spawn(&[]).unwrap();
    let namespace = fixture::redis::unique_namespace("metrics");
    let store = tollgate::Store::builder()
        .rate_counters_redis(&redis.url)
        .redis_namespace(&namespace)
        .redis_timeout(std::time::Duration::from_millis(200))
        .open_in_memory()
        .unwrap();
    let limit = tollgate::ratelimit::Limit::new("api", tollgate::ratelimit::Quota::per_second(100))
        .unwrap();
    assert!(store.check(&limit, "user:1").unwrap().allowed());
    redis.delete(&format!("{namespace}:")).unwrap();
    assert!(!store.check(&limit, "user:1").unwrap().allowed(), "drained");

    redis.pause();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use axum::routing::post;
        let open = tollgate::tower::RateLimitLayer::new(store.clone(), [limit.clone()])
            .when_unavailable(tollgate::tower::WhenUnavailable::FailOpen);
        let closed = tollgate::tower::RateLimitLayer::new(store.clone(), [limit.clone()]);
        let app = axum::Router::new()
            .route("/open", post(|| async { "served" }).layer(open))
            .route("/closed", post(|| async { "served" }).layer(closed));
        let server = crate::web::Server::start(app).await;
        let client = crate::web::client();
        for (path, status) in [("/open", 200), ("/closed", 503), ("/closed", 503)] {
            let answer = crate::web::send(
                &client,
                crate::web::post_json(&server.url(path), None, "{}"),
            )
            .await;
            assert_eq!(answer.status, status, "{path}: {}", answer.body);
        }
        server.stop().await;
    });
    redis.resume();
    // A snapshot drains the counters: everything is read from one.
    let snapshot = snapshotter.snapshot().into_vec();
    let counted = |name: &str, label: (&str, &str)| -> u64 {
        snapshot
            .iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Counter(n)
                    if key.key().name() == name
                        && key
                            .key()
                            .labels()
                            .any(|l| l.key() == label.0 && l.value() == label.1) =>
                {
                    Some(*n)
                }
                _ => None,
            })
            .sum()
    };
    let lost = counted("tollgate_redis_data_lost_total", ("scope", "bucket"));
    assert!(lost >= 1, "{snapshot:?}");
    let unavailable = |decision| counted("tollgate_rate_unavailable_total", ("decision", decision));
    assert_eq!(
        (unavailable("allowed"), unavailable("denied")),
        (1, 2),
        "{snapshot:?}"
    );
    store.close().unwrap();
}
