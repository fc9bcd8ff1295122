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

    let fixture = Fixture::new();
    let (store, disk) = fixture::degraded_store(&fixture);
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
                DebugValue::Counter(n) if key.key().name() == "tollgate_degraded_total" => Some(*n),
                _ => None,
            })
            .sum()
    };
    let while_full = snapshotter.snapshot().into_vec();
    assert_eq!(gauge(&while_full), Some(1.0), "{while_full:?}");
    fixture::recover(&fixture, &store, &disk);
    let after = snapshotter.snapshot().into_vec();
    assert!(
        entered(&while_full) + entered(&after) >= 1,
        "{while_full:?}"
    );
    assert_eq!(gauge(&after), Some(0.0), "left the degraded state");
    store.close().unwrap();
}
