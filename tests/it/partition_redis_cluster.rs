//! A partition inside a Redis Cluster: three masters on hosts of their own, one of them cut off
//! (link down) while a node charges pairs of limits (`check_all` of two limits on one subject,
//! whose keys share a slot) on thirty subjects spread over the masters. The subjects served by
//! the cut master answer `Unavailable` or `InDoubt` within the Redis timeout, the others go on
//! (the breaker is per master); and once the master is back, every pair was all or nothing: for
//! each subject, both limits were charged by exactly the same number of pair checks, between the
//! allowed ones and those plus the ones in doubt, and the pairs denied (the first limit spent)
//! charged neither. Red with `counters.lua` charging the limits that fit on a denied pair.

#![cfg(all(feature = "postgres", feature = "redis"))]

use crate::fixture;

use std::time::Duration;

use fixture::node::Node;
use fixture::partition::{Plan, start};

const TEST: &str = "a_partitioned_cluster_master_keeps_every_check_all_or_nothing";
/// The first limit runs out within the test: the last pair checks of each subject are denied,
/// and must charge the second limit nothing either.
const QUOTAS: [u32; 2] = [5, 60];
const SUBJECTS: usize = 30;

/// What the pair checks of one subject answered.
#[derive(Default, Debug, Clone, Copy)]
struct Pairs {
    allowed: u32,
    in_doubt: u32,
    unavailable: u32,
}

fn subject(i: usize) -> String {
    format!("{{t{i}}}")
}

fn pair(node: &Node, subject: &str, pairs: &mut Pairs) -> &'static str {
    let reply = node.call(&format!("check 1 {subject} {subject}"));
    match (reply.kind(), reply.error()) {
        ("allowed", _) => {
            pairs.allowed += 1;
            "allowed"
        }
        ("denied", _) => "denied",
        (_, Some("InDoubt")) => {
            pairs.in_doubt += 1;
            "error"
        }
        (_, Some("Unavailable")) => {
            pairs.unavailable += 1;
            std::thread::sleep(Duration::from_millis(20));
            "error"
        }
        _ => panic!("a pair check answered {reply:?}"),
    }
}

/// Charges one limit alone on `subject` until denied; how many were allowed.
fn spend(node: &Node, command: &str) -> u32 {
    let mut allowed = 0;
    loop {
        let reply = node.call(command);
        match reply.kind() {
            "allowed" => allowed += 1,
            "denied" => return allowed,
            _ => panic!("{command}: {reply:?}"),
        }
    }
}

#[test]
fn a_partitioned_cluster_master_keeps_every_check_all_or_nothing() {
    if fixture::node::serve_if_node() {
        return;
    }
    let hour = Duration::from_secs(3600);
    let Some(service) = start(&Plan {
        module: module_path!(),
        test: TEST,
        nodes: &["a"],
        lease_ttl: Duration::from_secs(30),
        redis_limits: Some(&[("first", QUOTAS[0], hour), ("second", QUOTAS[1], hour)]),
        writers: None,
        redis_cluster: true,
        two_round_trips: false,
    }) else {
        return;
    };
    let node = &service.nodes[0];
    let mut pairs = vec![Pairs::default(); SUBJECTS];
    for (i, pairs) in pairs.iter_mut().enumerate() {
        assert_eq!(pair(node, &subject(i), pairs), "allowed");
    }

    let (cut_host, _) = &service.cluster[1];
    service.net.cut(cut_host);
    let mut failed = 0;
    for (i, pairs) in pairs.iter_mut().enumerate() {
        if pair(node, &subject(i), pairs) == "error" {
            failed += 1;
        }
    }
    // The cut master's subjects failed; the other masters' went on.
    assert!(
        failed > 0 && failed < SUBJECTS,
        "{failed} of {SUBJECTS} subjects failed"
    );
    service.net.heal(cut_host);
    for (i, pairs) in pairs.iter_mut().enumerate() {
        fixture::wait_for("every master to answer again", || {
            pair(node, &subject(i), pairs) != "error"
        });
        // Past the first limit's quota: the last of these are denied.
        for _ in 0..QUOTAS[0] {
            assert_ne!(pair(node, &subject(i), pairs), "error");
        }
    }

    let (mut in_doubt, mut landed_in_doubt) = (0, 0);
    for (i, pairs) in pairs.iter().enumerate() {
        let subject = subject(i);
        let first = spend(node, &format!("check 1 {subject} -"));
        let second = spend(node, &format!("check 1 - {subject}"));
        let landed_first = QUOTAS[0] - pairs.allowed - first;
        let landed_second = QUOTAS[1] - pairs.allowed - second;
        assert_eq!(
            landed_first, landed_second,
            "{subject}: a pair charged one limit and not the other ({pairs:?})"
        );
        assert!(landed_first <= pairs.in_doubt, "{subject}: {pairs:?}");
        in_doubt += pairs.in_doubt;
        landed_in_doubt += landed_first;
    }
    println!(
        "cluster partition: {failed} of {SUBJECTS} subjects on the cut master; {in_doubt} pair \
         checks in doubt, {landed_in_doubt} of them charged both limits, none only one"
    );
}
