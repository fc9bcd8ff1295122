//! The server forgets tollgate's code (`FUNCTION FLUSH`, `SCRIPT FLUSH`, as an operator or a
//! failover to a replica that never loaded it would) under a running store: the calls it refuses
//! did not run, so the store loads the code again and sends them once more. No check fails, and
//! none is counted twice.

use crate::fixture;

use std::time::Duration;

use tollgate::ratelimit::{Limit, Quota};
use tollgate::testing::redis::Server;

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn forgotten_code_is_loaded_again_and_nothing_is_counted_twice() {
    let _shared = require_redis!();
    let server = Server::spawn(&[]).unwrap();
    let store = fixture::redis::node(&server.url, &fixture::redis::unique_namespace("flush"));
    let limit = Limit::new("guesses", Quota::new(10, DAY)).unwrap();
    // From several threads, so that more than one connection has loaded the code.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| assert!(store.check(&limit, "user:42").unwrap().allowed()));
        }
    });
    let mut connection = server.connection().unwrap();
    let () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query(&mut connection)
        .unwrap();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut connection)
        .unwrap();
    let allowed = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    (0..5)
                        .filter(|_| store.check(&limit, "user:42").unwrap().allowed())
                        .count()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .sum::<usize>()
    });
    assert_eq!(allowed, 6, "4 of 10 were spent before the flush");
    store.close().unwrap();
}
