//! `stats()` counts every durable change once, and never more commits than changes: the numbers
//! that show group commit working are themselves right.

mod fixture;

use fixture::{Fixture, acquired, key, request, response};
use tollgate::Error;

#[test]
fn writes_are_counted_exactly_and_reads_are_not() {
    let fixture = Fixture::new();
    let store = fixture.open();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let lease = acquired(
                        store
                            .begin(&key(&format!("{t}-{i}")), &request("r"))
                            .unwrap(),
                    );
                    lease.complete(response("ok")).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = store.stats().unwrap();
    assert_eq!(stats.writes, 8 * 25 * 2);
    assert!(stats.commits >= 1 && stats.commits <= stats.writes);

    // Replays, in-flight answers, mismatches and fenced resolutions write nothing.
    let _ = store.begin(&key("0-0"), &request("r")).unwrap();
    let _ = store.begin(&key("0-0"), &request("other")).unwrap();
    let held = acquired(store.begin(&key("held"), &request("r")).unwrap());
    let _ = store.begin(&key("held"), &request("r")).unwrap();
    let before = store.stats().unwrap();
    assert_eq!(before.writes, stats.writes + 1);
    drop(held);
    store.clone().close().unwrap();
    assert!(matches!(store.stats(), Err(Error::Closed)));
}
