//! An acknowledged completion survives the process letting go of the store without `close`, and a
//! reopened store replays it. Guards the core promise: a retry after a restart is not executed again.

use crate::fixture;

use fixture::{acquired, key, replay, request, response};
use tollgate::idempotency::{Outcome, RecordState, StoredResponse};

on_every_engine! {
    fn completed_and_failed_records_replay_after_drop_and_reopen(fixture) {
        let store = fixture.open();
        let first_epoch = store.epoch();
        let done = acquired(store.begin(&key("done"), &request("a")).unwrap());
        done.complete(response("paid").with_header("content-type", "text/plain"))
            .unwrap();
        let failed = acquired(store.begin(&key("failed"), &request("b")).unwrap());
        failed
            .fail(StoredResponse::new(402, b"card declined".to_vec()))
            .unwrap();
        // No close: dropping the last handle is what a process exit does to the file lock.
        drop(store);

        let store = fixture.open();
        assert_eq!(store.epoch(), first_epoch + 1);
        let again = replay(store.begin(&key("done"), &request("a")).unwrap());
        assert_eq!(again.outcome(), Outcome::Completed);
        assert_eq!(
            again.response(),
            &response("paid").with_header("content-type", "text/plain")
        );
        let again = replay(store.begin(&key("failed"), &request("b")).unwrap());
        assert_eq!(again.outcome(), Outcome::Failed);
        assert_eq!(again.response().status, 402);
        let info = store.get(&key("done")).unwrap().unwrap();
        assert_eq!(info.state, RecordState::Completed);
        assert_eq!(info.attempts, 1);
        store.close().unwrap();
    }
}

on_every_engine! {
    fn close_then_reopen_at_once_keeps_everything(fixture) {
        let store = fixture.open();
        for i in 0..50 {
            let lease = acquired(store.begin(&key(&format!("k{i}")), &request("r")).unwrap());
            lease.complete(response(&format!("body {i}"))).unwrap();
        }
        store.close().unwrap();
        let store = fixture.open();
        for i in 0..50 {
            let again = replay(store.begin(&key(&format!("k{i}")), &request("r")).unwrap());
            assert_eq!(again.response().body, format!("body {i}").as_bytes());
        }
    }
}
