//! A node that is heard but cannot hear (what it sends arrives; nothing comes back to it), on
//! PostgreSQL. Its completion's first round trip (`BEGIN` and the row lock) reaches the server,
//! which opens a transaction and locks the key's row; no answer gets back, so the `COMMIT` is
//! never sent. The node is told `Unavailable` (nothing changed: the write was never sent) or
//! `InDoubt` within the store's bound; and the transaction it left open on the server must not
//! hold the key's row for long: the server ends that session (its TCP user timeout, which
//! tollgate asks for, or `idle_in_transaction_session_timeout`), and the other node, refused
//! with `Unavailable` meanwhile, then finds the record as it was: still RUNNING under the deaf
//! node's lease, nothing written.
//!
//! The nodes take every change in two round trips (`postgres_one_round_trip(false)`): a lone
//! completion in one round trip sends its `COMMIT` with its write, so the server commits it and
//! there is no transaction left open to test (`postgres_commit_in_doubt` covers that path).

#![cfg(feature = "postgres")]

use crate::fixture;

use std::time::{Duration, Instant};

use fixture::partition::{Plan, start};

const TEST: &str = "a_node_that_cannot_hear_leaves_nothing_locked_for_long";

#[test]
fn a_node_that_cannot_hear_leaves_nothing_locked_for_long() {
    if fixture::node::serve_if_node() {
        return;
    }
    let Some(service) = start(&Plan {
        module: module_path!(),
        test: TEST,
        nodes: &["a", "b"],
        lease_ttl: Duration::from_secs(120),
        redis_limits: None,
        // One writer, whose connection the first begin opens: the completion then goes out
        // on an established connection (a second writer would first have to connect, and
        // its handshake's answer would be lost).
        writers: Some(1),
        redis_cluster: false,
        two_round_trips: true,
    }) else {
        return;
    };
    let (a, b) = (&service.nodes[0], &service.nodes[1]);
    assert_eq!(a.call("begin paid r").kind(), "acquired");

    service.net.cut_incoming(&service.hosts[0]);
    let completion = a.call("complete paid charged");
    println!(
        "deaf: completion {:?} after {:?}",
        completion.words, completion.took
    );
    assert!(completion.is_cut_off(), "{completion:?}");
    // While the dead transaction holds the row, the other node is refused, never kept waiting
    // past its bound; then it sees the record untouched.
    let refused_since = Instant::now();
    let mut seen = None;
    fixture::wait_for("the deaf node's transaction to end on the server", || {
        let reply = b.call("begin paid r");
        assert!(
            reply.kind() == "inflight" || reply.is_cut_off(),
            "{reply:?}"
        );
        let done = reply.kind() == "inflight";
        seen = Some(reply);
        done
    });
    println!(
        "the other node was refused for {:?}",
        refused_since.elapsed()
    );
    if completion.error() == Some("Unavailable") {
        assert_eq!(b.call("get paid").kind(), "running");
    }

    service.net.heal(&service.hosts[0]);
    fixture::wait_for("a to serve again by itself", || {
        a.call("health").kind() == "ready"
    });
    assert_eq!(a.call("begin after r").kind(), "acquired");
    assert_eq!(a.call("complete after ok").kind(), "ok");
    assert_eq!(b.call("begin after r").words, ["replay", "ok"]);
}
