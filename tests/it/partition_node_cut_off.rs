//! A node cut off from the network (its link down: no FIN, no RST) while it holds leases, on
//! PostgreSQL. Its callers get `Unavailable` or `InDoubt` within the store's bound, never a hang;
//! the other node sees its leases live until they expire, then takes them over (told
//! `recovered()`); once the link is back the cut-off node serves again by itself, and its late
//! completion of a key taken over is refused (`LeaseLost`: fenced), while what it acknowledged
//! before the cut is kept.
//!
//! Hosts and nodes: `fixture::partition` (network namespaces, each node this binary re-run).

#![cfg(feature = "postgres")]

use crate::fixture;

use std::time::Duration;

use fixture::partition::{Plan, start};

const TEST: &str = "a_node_cut_off_holding_leases_is_answered_in_time_then_fenced";
const LEASE: Duration = Duration::from_secs(5);

#[test]
fn a_node_cut_off_holding_leases_is_answered_in_time_then_fenced() {
    if fixture::node::serve_if_node() {
        return;
    }
    let Some(service) = start(&Plan {
        module: module_path!(),
        test: TEST,
        nodes: &["a", "b"],
        lease_ttl: LEASE,
        redis_limits: None,
        writers: None,
        redis_cluster: false,
        two_round_trips: false,
    }) else {
        return;
    };
    let (a, b) = (&service.nodes[0], &service.nodes[1]);
    assert_eq!(a.call("begin done r").kind(), "acquired");
    assert_eq!(a.call("complete done before-the-cut").kind(), "ok");
    for key in ["k1", "k2", "k3"] {
        assert_eq!(a.call(&format!("begin {key} r")).kind(), "acquired");
    }

    service.net.cut(&service.hosts[0]);
    // From the other side, a's leases are live until they expire (a dead node and a slow one
    // look the same).
    assert_eq!(b.call("begin k1 r").kind(), "inflight");
    let completion = a.send("complete k3 during-the-cut");
    let read = a.send("get done");
    let health = a.send("health");
    // b takes k1 over once a's lease has expired: the second attempt, a recovery.
    let mut takeover = None;
    fixture::wait_for("b to take k1 over", || {
        let reply = b.call("begin k1 r");
        match reply.kind() {
            "inflight" => false,
            _ => {
                takeover = Some(reply);
                true
            }
        }
    });
    assert_eq!(takeover.unwrap().words, ["acquired", "2", "1"]);

    let completion = completion.wait();
    let read = read.wait();
    let health = health.wait();
    println!(
        "cut off: completion {:?} after {:?}, read {:?} after {:?}, health {:?} after {:?}",
        completion.words, completion.took, read.words, read.took, health.words, health.took
    );
    assert!(completion.is_cut_off(), "{completion:?}");
    assert_eq!(read.error(), Some("Unavailable"), "{read:?}");
    assert_eq!(health.kind(), "unready");

    service.net.heal(&service.hosts[0]);
    fixture::wait_for("a to serve again by itself", || {
        a.call("health").kind() == "ready" && a.call("get done").kind() == "completed"
    });
    // Fenced: b's takeover made a's token for k1 stale, while b still executes.
    assert_eq!(a.call("complete k1 late").error(), Some("LeaseLost"));
    assert_eq!(b.call("complete k1 by-b").kind(), "ok");
    for node in [a, b] {
        assert_eq!(node.call("begin k1 r").words, ["replay", "by-b"]);
        assert_eq!(
            node.call("begin done r").words,
            ["replay", "before-the-cut"]
        );
    }
    // k2's lease expired but nobody took it over: a's late completion still counts.
    assert_eq!(a.call("complete k2 late").kind(), "ok");
    assert_eq!(b.call("begin k2 r").words, ["replay", "late"]);
    // k3's completion never reached the server (the link was down before it was sent): if a
    // was told Unavailable, nothing was written and the next begin is a recovery.
    let k3 = b.call("begin k3 r");
    if completion.error() == Some("Unavailable") {
        assert_eq!(k3.words, ["acquired", "2", "1"]);
    } else {
        assert!(
            k3.words == ["acquired", "2", "1"] || k3.words == ["replay", "during-the-cut"],
            "{k3:?}"
        );
    }
}
