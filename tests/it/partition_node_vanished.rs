//! A node's host vanishes (its link goes down, then its process dies: its connections' FIN and
//! RST never reach the server) while it holds a lease, and the node is restarted under the same
//! id on another host, as an orchestrator reschedules it. The server must see the dead sessions
//! go (tollgate asks it for TCP keepalives on each of its sessions) so that the node's lock is
//! released and the restart opens, within about the keepalives' bound instead of the kernel's
//! two hours; the restart's new epoch then frees the dead run's lease at once (`recovered()`).

#![cfg(feature = "postgres")]

use crate::fixture;

use std::time::Duration;

use fixture::partition::{Plan, start};

const TEST: &str = "a_node_whose_host_vanished_is_restarted_elsewhere_and_frees_its_lease";

#[test]
fn a_node_whose_host_vanished_is_restarted_elsewhere_and_frees_its_lease() {
    if fixture::node::serve_if_node() {
        return;
    }
    let plan = Plan {
        module: module_path!(),
        test: TEST,
        nodes: &["a", "b"],
        // Far longer than the test: only the restart's epoch can free the lease.
        lease_ttl: Duration::from_secs(600),
        redis_limits: None,
        writers: None,
        redis_cluster: false,
        two_round_trips: false,
    };
    let Some(mut service) = start(&plan) else {
        return;
    };
    let a = service.nodes.remove(0);
    assert_eq!(a.call("begin held r").kind(), "acquired");
    service.net.cut(&service.hosts[0]);
    drop(a); // SIGKILL: what its kernel sends on its behalf is lost with the link.
    assert_eq!(service.nodes[0].call("begin held r").kind(), "inflight");

    // Rescheduled elsewhere under the same id: refused (AlreadyOpen) while the server still
    // counts the vanished session as alive, opened once it has seen it die.
    let (_host, restarted) = service.start_node(&plan, "a", Duration::from_secs(90));
    println!("the restarted node opened after {:?}", restarted.opening);
    assert_eq!(restarted.epoch, 2);
    let b = &service.nodes[0];
    assert_eq!(b.call("begin held r").words, ["acquired", "2", "1"]);
    assert_eq!(b.call("complete held by-b").kind(), "ok");
    assert_eq!(restarted.call("begin held r").words, ["replay", "by-b"]);
}
