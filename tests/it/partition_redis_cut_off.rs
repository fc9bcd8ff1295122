//! Redis out of a node's reach in the middle of its charges, on hosts of their own: first cut
//! off in both directions (nothing it sends arrives), then deaf (its charges arrive and are
//! counted, the replies are lost). Every check answers within the Redis timeout, allowed, denied,
//! `Unavailable` (nothing charged: never a silent allow) or `InDoubt` (sent, answer lost); the
//! other node, which still reaches Redis, goes on; and when the node hears again nothing was
//! minted: the whole limit is spent by exactly the allowed checks plus the charges that arrived
//! unanswered, counted across both nodes.

#![cfg(all(feature = "postgres", feature = "redis"))]

use crate::fixture;

use std::time::Duration;

use fixture::node::Node;
use fixture::partition::{Plan, start};

const TEST: &str = "redis_out_of_reach_mid_charge_mints_nothing";
const LIMIT: u32 = 100;

/// Tallies of `check` answers.
#[derive(Default, Debug)]
struct Tally {
    allowed: u32,
    in_doubt: u32,
    unavailable: u32,
}

impl Tally {
    fn check(&mut self, node: &Node) -> String {
        let reply = node.call("check 1 subject");
        if reply.is_cut_off() {
            // Refused at once while the breaker is open: do not spin.
            std::thread::sleep(Duration::from_millis(20));
        }
        match (reply.kind(), reply.error()) {
            ("allowed", _) => self.allowed += 1,
            ("denied", _) => {}
            (_, Some("InDoubt")) => self.in_doubt += 1,
            (_, Some("Unavailable")) => self.unavailable += 1,
            _ => panic!("{reply:?}"),
        }
        reply.words.join(" ")
    }
}

/// Zero-cost checks from many threads at once, so that every connection of the node is open.
fn warm_up(node: &Node) {
    let pending: Vec<_> = (0..12).map(|_| node.send("check 0 subject")).collect();
    for reply in pending {
        assert_eq!(reply.wait().kind(), "allowed");
    }
}

#[test]
fn redis_out_of_reach_mid_charge_mints_nothing() {
    if fixture::node::serve_if_node() {
        return;
    }
    let Some(service) = start(&Plan {
        module: module_path!(),
        test: TEST,
        nodes: &["a", "b"],
        lease_ttl: Duration::from_secs(30),
        redis_limits: Some(&[("orders", LIMIT, Duration::from_secs(3600))]),
        writers: None,
        redis_cluster: false,
        two_round_trips: false,
    }) else {
        return;
    };
    let (a, b) = (&service.nodes[0], &service.nodes[1]);
    let a_host = &service.hosts[0];
    let mut tally = Tally::default();
    for _ in 0..4 {
        assert_eq!(tally.check(a), "allowed");
    }
    assert_eq!(tally.check(b), "allowed");

    // Cut off: what a sends never arrives.
    service.net.cut(a_host);
    let first = tally.check(a);
    assert!(first.starts_with("error"), "{first}");
    for _ in 0..3 {
        tally.check(a);
    }
    assert_eq!(tally.check(b), "allowed");
    let cut_in_doubt = tally.in_doubt;
    service.net.heal(a_host);
    fixture::wait_for("a to reach Redis again", || tally.check(a) == "allowed");

    // Deaf: what a sends arrives and is counted; the replies are lost. A charge goes out on an
    // established connection only (a store keeps several, each opened when first needed; one
    // still to open cannot, and its check is refused unsent), so the cut is tried until one
    // does.
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(
            attempts <= 20,
            "no charge went out on an established connection"
        );
        warm_up(a);
        service.net.cut_incoming(a_host);
        let sent = tally.check(a);
        for _ in 0..3 {
            tally.check(a);
        }
        assert_eq!(tally.check(b), "allowed");
        service.net.heal(a_host);
        fixture::wait_for("a to reach Redis again", || {
            !tally.check(a).starts_with("error")
        });
        match sent.as_str() {
            "error InDoubt" => break,
            "error Unavailable" => {}
            other => panic!("a deaf node's charge answered {other}"),
        }
    }
    let deaf_in_doubt = tally.in_doubt - cut_in_doubt;

    // Spend the rest from both nodes.
    while tally.check(b) == "allowed" {}
    assert_eq!(tally.check(a), "denied");
    println!(
        "{tally:?}: {cut_in_doubt} in doubt while cut off, {deaf_in_doubt} while deaf \
         ({attempts} cuts)"
    );
    // Unavailable checks were never sent. The deaf node's unanswered charges arrived and were
    // counted. The cut-off node's may have been too, late: the request waits in the kernel's
    // send buffer and is delivered by a retransmission once the link is back, after the store
    // gave up on it (seen here) — which is why it is InDoubt and not Unavailable. Either way no
    // quota was minted.
    assert!(tally.allowed <= LIMIT - deaf_in_doubt, "{tally:?}");
    assert!(tally.allowed >= LIMIT - tally.in_doubt, "{tally:?}");
}
