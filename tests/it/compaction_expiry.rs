//! On every engine, with a ManualClock (on PostgreSQL, the schema's clock moved by the test): records and idle rate counters expire on time and a sweep removes them;
//! an expired key can be begun afresh before and after removal; a sweep never removes anything
//! live, including a RUNNING record whose lease was extended past its first expiry.

use crate::fixture;

use std::time::Duration;

use fixture::{LEASE_TTL, RECORD_TTL, acquired, key, replay, request, response, wait_for};
use tollgate::ratelimit::{Limit, Quota, RateDurability};

on_every_engine! {
    fn a_sweep_removes_exactly_the_expired_records(fixture) {
        let store = fixture.open_without_compactor();
        for i in 0..10 {
            acquired(
                store
                    .begin(&key(&format!("old-{i}")), &request("r"))
                    .unwrap(),
            )
            .complete(response("old"))
            .unwrap();
        }
        fixture.advance(&store, Duration::from_secs(10));
        acquired(store.begin(&key("young"), &request("r")).unwrap())
            .complete(response("young"))
            .unwrap();
        let mut extended = acquired(store.begin(&key("extended"), &request("r")).unwrap());

        // The old records expire; the young one has 10 s left.
        fixture.advance(&store, RECORD_TTL - Duration::from_secs(10));
        // An expired key behaves as absent before removal ...
        acquired(store.begin(&key("old-0"), &request("other")).unwrap())
            .release()
            .unwrap();
        let stats = store.stats().unwrap();
        assert_eq!(
            (stats.completed, stats.running),
            (10, 1),
            "old-0 was released, 9 old + young"
        );

        // The extended lease outlives its first expiry (and its first record expiry).
        extended.extend(RECORD_TTL + LEASE_TTL * 2).unwrap();
        let report = store.compact_now().unwrap();
        assert_eq!(report.removed_records, 9);
        assert!(report.batches >= 1);
        assert_eq!(store.stats().unwrap().last_compaction, Some(report));

        // ... and after.
        assert!(!acquired(store.begin(&key("old-1"), &request("r")).unwrap()).recovered());
        replay(store.begin(&key("young"), &request("r")).unwrap());
        fixture.advance(&store, RECORD_TTL + LEASE_TTL);
        store.compact_now().unwrap();
        // Still live: its lease was extended well past both first expiries.
        extended.complete(response("late but owned")).unwrap();
        replay(store.begin(&key("extended"), &request("r")).unwrap());
        assert_eq!(store.get(&key("young")).unwrap(), None);
    }
}

on_every_engine! {
    fn small_batches_sweep_everything_in_several_steps(fixture) {
        let store = fixture
            .open_with(fixture.builder().background_compaction(false).compaction_batch(7))
            .unwrap();
        store
            .bulk_load(100, Duration::from_secs(1), |i| {
                (key(&format!("k{i}")), request("r"), response("x"))
            })
            .unwrap();
        fixture.advance(&store, Duration::from_secs(1));
        let report = store.compact_now().unwrap();
        assert_eq!(report.removed_records, 100);
        // No step removes more than the batch (steps shrink further while the store is busy).
        assert!(report.batches >= 15, "{report:?}");
        let stats = store.stats().unwrap();
        assert_eq!((stats.completed, stats.running, stats.failed), (0, 0, 0));
        assert_eq!(store.compact_now().unwrap().removed_records, 0);
    }
}

on_every_engine! {
    fn idle_rate_counters_are_swept_from_disk_and_busy_ones_kept(fixture) {
        let modes: &[RateDurability] = if fixture.is_postgres() {
            &[RateDurability::Immediate]
        } else {
            &[RateDurability::Immediate, RateDurability::default()]
        };
        for &durability in modes {
            let _ = std::fs::remove_file(fixture.path());
            let store = fixture
                .open_with(
                    fixture
                        .builder()
                        .background_compaction(false)
                        .rate_durability(durability),
                )
                .unwrap();
            let quick = Limit::new("quick", Quota::per_second(10)).unwrap();
            // A day-long window, which the test's few seconds cannot cross on a real clock.
            let slow =
                Limit::new("slow", Quota::fixed_window(10, Duration::from_secs(86_400))).unwrap();
            for subject in 0..20 {
                store.check(&quick, &format!("s{subject}")).unwrap();
            }
            store.check(&slow, "busy").unwrap();
            store.flush().unwrap();
            assert_eq!(store.stats().unwrap().rate_states, 21, "{durability:?}");
            // After a second the quick counters have refilled: idle, the same as fresh. Their index
            // time is rounded up to a granule of about a second (`algorithm::idle_at`): on the
            // real clock of PostgreSQL that can be a second later, so step three.
            fixture.advance(&store, Duration::from_secs(3));
            let report = store.compact_now().unwrap();
            assert_eq!(report.removed_rate_states, 20, "{durability:?}");
            assert_eq!(store.stats().unwrap().rate_states, 1);
            assert_eq!(store.peek(&slow, "busy").unwrap().remaining(), 9);
            assert_eq!(store.peek(&quick, "s3").unwrap().remaining(), 10);
            store.close().unwrap();
        }
    }
}

on_every_engine! {
    fn the_background_thread_sweeps_on_its_interval(fixture) {
        let store = fixture
            .open_with(fixture.builder().compaction_interval(Duration::from_millis(5)))
            .unwrap();
        acquired(store.begin(&key("k"), &request("r")).unwrap())
            .complete(response("x"))
            .unwrap();
        assert_eq!(store.stats().unwrap().completed, 1);
        fixture.advance(&store, RECORD_TTL);
        // Wait for the thread to remove it and report (a few intervals), not for a fixed time.
        // Each sweep replaces `last_compaction`, so the one that removed the record is followed
        // within 5 ms by one that removed nothing: the record's count, not that report's number,
        // is what to wait for.
        wait_for("the background sweep to remove the record", || {
            let stats = store.stats().unwrap();
            stats.completed == 0 && stats.last_compaction.is_some()
        });
        let stats = store.stats().unwrap();
        assert_eq!(stats.running + stats.completed + stats.failed, 0);
        store.close().unwrap();
    }
}
