//! DESIGN, durability rules: reads (replays, `get`, the fast path of `begin`, peeks, `stats`) use a
//! read transaction and never wait for the writer. The writer is parked inside a commit (the
//! simulated disk holds its sync) while another thread makes each read; each must answer with
//! the committed state before the commit is let go.

use crate::fixture;

use std::sync::mpsc;
use std::time::Duration;

use fixture::{Fixture, WAIT_DEADLINE, acquired, key, request, response, wait_for};
use tollgate::idempotency::Begin;
use tollgate::ratelimit::{Limit, Quota, RateDurability};
use tollgate::testing::SimDisk;

#[test]
fn replays_gets_peeks_and_stats_answer_while_a_commit_is_in_flight() {
    for durability in [
        RateDurability::Immediate,
        RateDurability::Batched {
            max_delay: Duration::from_secs(3600),
        },
    ] {
        let fixture = Fixture::new();
        let disk = SimDisk::new();
        let store = fixture
            .builder()
            .rate_durability(durability)
            .background_compaction(false)
            .open_simulated(&disk)
            .unwrap();
        let limit = Limit::new("reads", Quota::per_minute(5)).unwrap();
        acquired(store.begin(&key("done"), &request("r")).unwrap())
            .complete(response("done"))
            .unwrap();
        assert!(store.check(&limit, "subject").unwrap().allowed());
        store.flush().unwrap();
        // Enough earlier commits that the held one reuses freed pages: a commit that must grow
        // the file syncs inside redb's allocator, under a lock that `begin_read` also takes.
        for i in 0..200 {
            acquired(
                store
                    .begin(&key(&format!("warm-{i}")), &request("r"))
                    .unwrap(),
            )
            .complete(response("w"))
            .unwrap();
        }

        disk.hold_syncs();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || store.begin(&key("new"), &request("r")).map(drop))
        };
        wait_for("the commit to reach its sync", || disk.syncs_waiting() == 1);

        let (sender, answers) = mpsc::channel();
        let reader = {
            let store = store.clone();
            let limit = limit.clone();
            std::thread::spawn(move || {
                let replayed = matches!(
                    store.begin(&key("done"), &request("r")),
                    Ok(Begin::Replay(_))
                );
                let got = store.get(&key("done")).is_ok_and(|info| info.is_some());
                let remaining = store.peek(&limit, "subject").map(|d| d.remaining());
                let stats = store.stats().map(|s| s.completed);
                let _ = sender.send((replayed, got, remaining, stats));
            })
        };
        let answer = answers.recv_timeout(WAIT_DEADLINE);
        disk.release_syncs();
        reader.join().unwrap();
        writer.join().unwrap().unwrap();
        let (replayed, got, remaining, stats) = answer
            .unwrap_or_else(|_| panic!("{durability:?}: a read waited for the commit in flight"));
        assert!(replayed && got, "{durability:?}");
        assert_eq!(remaining.unwrap(), 4, "{durability:?}");
        assert_eq!(stats.unwrap(), 201, "{durability:?}");
        store.close().unwrap();
    }
}
