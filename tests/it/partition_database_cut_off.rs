//! PostgreSQL cut off from every node (its host's link down) in the middle of a load, then back,
//! with nothing done to the nodes. Every call answers within its bound, either as usual or with
//! `Unavailable`/`InDoubt`; `health()` says unready during the cut and ready after; the nodes
//! serve again by themselves; and every completion acknowledged before, during or after the cut
//! replays on both nodes (no acknowledged change lost).

#![cfg(feature = "postgres")]

use crate::fixture;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fixture::node::Node;
use fixture::partition::{Plan, start};
use parking_lot::Mutex;

const TEST: &str = "a_database_cut_off_and_back_loses_nothing_acknowledged";

/// What one worker saw.
#[derive(Default)]
struct Seen {
    /// Keys whose completion was acknowledged, with the body.
    acknowledged: Vec<(String, String)>,
    /// Errors, by variant name.
    errors: Vec<String>,
}

/// Begins and completes fresh keys on `node` until `stop`; `worker` names the keys.
fn work(node: &Node, worker: &str, stop: &AtomicBool, seen: &Mutex<Seen>) {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("{worker}-{n}");
        let begun = node.call(&format!("begin {key} r"));
        if let Some(error) = begun.error() {
            seen.lock().errors.push(error.to_owned());
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        assert_eq!(begun.kind(), "acquired", "{begun:?}");
        let body = format!("body-of-{key}");
        let completed = node.call(&format!("complete {key} {body}"));
        match completed.error() {
            None => seen.lock().acknowledged.push((key, body)),
            Some(error) => seen.lock().errors.push(error.to_owned()),
        }
    }
}

#[test]
fn a_database_cut_off_and_back_loses_nothing_acknowledged() {
    if fixture::node::serve_if_node() {
        return;
    }
    let Some(service) = start(&Plan {
        module: module_path!(),
        test: TEST,
        nodes: &["a", "b"],
        lease_ttl: Duration::from_secs(30),
        redis_limits: None,
        writers: None,
        redis_cluster: false,
        two_round_trips: false,
    }) else {
        return;
    };
    let stop = AtomicBool::new(false);
    let seen = Mutex::new(Seen::default());
    let (acknowledged_before_cut, acknowledged_after_heal) = std::thread::scope(|scope| {
        for (i, node) in service.nodes.iter().enumerate() {
            for w in 0..2 {
                let (stop, seen) = (&stop, &seen);
                scope.spawn(move || work(node, &format!("n{i}w{w}"), stop, seen));
            }
        }
        fixture::wait_for("some completions before the cut", || {
            seen.lock().acknowledged.len() >= 20
        });
        service.net.cut(&service.db);
        let before_cut = seen.lock().acknowledged.len();
        // Health answers within its bound and says so.
        fixture::wait_for("health to say unready on every node", || {
            service
                .nodes
                .iter()
                .all(|node| node.call("health").kind() == "unready")
        });
        std::thread::sleep(Duration::from_secs(12));
        service.net.heal(&service.db);
        let at_heal = seen.lock().acknowledged.len();
        fixture::wait_for("every node to serve again by itself", || {
            service
                .nodes
                .iter()
                .all(|node| node.call("health").kind() == "ready")
        });
        fixture::wait_for("20 more completions after the cut", || {
            seen.lock().acknowledged.len() >= at_heal + 20
        });
        stop.store(true, Ordering::Relaxed);
        (before_cut, seen.lock().acknowledged.len() - at_heal)
    });
    let seen = seen.into_inner();
    println!(
        "acknowledged: {} ({acknowledged_before_cut} before the cut, {acknowledged_after_heal} \
         after the heal); errors: {:?}",
        seen.acknowledged.len(),
        seen.errors
    );
    assert!(
        !seen.errors.is_empty(),
        "the cut must have been felt by the load"
    );
    for error in &seen.errors {
        assert!(
            matches!(error.as_str(), "Unavailable" | "InDoubt"),
            "{error}"
        );
    }
    for (key, body) in &seen.acknowledged {
        for node in &service.nodes {
            assert_eq!(
                node.call(&format!("begin {key} r")).words,
                ["replay", body.as_str()],
                "{key} on {}",
                node.name
            );
        }
    }
}
