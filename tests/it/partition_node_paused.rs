//! A node paused (SIGSTOP: a long GC pause, a frozen VM) past its lease, on PostgreSQL. Its
//! connections stay open (its kernel still answers), so nothing tells the others it is gone: they
//! see its lease live until it expires, then take it over (`recovered()`). When the node
//! resumes while the taker is still executing, believing it still owns the key, its completion
//! is refused (`LeaseLost`: fenced by the token the takeover replaced), and the taker's response
//! is the one every node replays. A
//! key it held that nobody took over is completed late, as an expired lease may be.

#![cfg(feature = "postgres")]

use crate::fixture;

use std::time::Duration;

use fixture::partition::{Plan, start};

const TEST: &str = "a_node_paused_past_its_lease_is_fenced_when_it_resumes";

#[test]
fn a_node_paused_past_its_lease_is_fenced_when_it_resumes() {
    if fixture::node::serve_if_node() {
        return;
    }
    let Some(service) = start(&Plan {
        module: module_path!(),
        test: TEST,
        nodes: &["a", "b"],
        lease_ttl: Duration::from_secs(3),
        redis_limits: None,
        writers: None,
        redis_cluster: false,
        two_round_trips: false,
    }) else {
        return;
    };
    let (a, b) = (&service.nodes[0], &service.nodes[1]);
    assert_eq!(a.call("begin taken r").kind(), "acquired");
    assert_eq!(a.call("begin untouched r").kind(), "acquired");

    a.pause();
    // Sent while paused: the node reads it only when it resumes, and then completes a key it
    // no longer owns.
    let late = a.send("complete taken late-from-a");
    let mut takeover = None;
    fixture::wait_for("b to take the paused node's key over", || {
        let reply = b.call("begin taken r");
        let done = reply.kind() != "inflight";
        takeover = Some(reply);
        done
    });
    assert_eq!(takeover.unwrap().words, ["acquired", "2", "1"]);

    // a wakes while b is still executing: its completion must not land on b's lease.
    a.resume();
    assert_eq!(late.wait().error(), Some("LeaseLost"));
    assert_eq!(b.call("complete taken by-b").kind(), "ok");
    for node in [a, b] {
        assert_eq!(node.call("begin taken r").words, ["replay", "by-b"]);
    }
    assert_eq!(a.call("complete untouched late").kind(), "ok");
    assert_eq!(b.call("begin untouched r").words, ["replay", "late"]);
}
