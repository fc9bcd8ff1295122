//! Histories under faults between machines, checked whole against the rules: two PostgreSQL
//! nodes on hosts of their own (`fixture::partition`), four workers (two per node) beginning and
//! completing requests on three keys, a clock stepping past every lease, and meanwhile node `a`
//! cut off from the network for a while, then healed. Answers during the cut are `Unavailable`
//! (removed from the history: nothing happened) or `InDoubt` (left in flight: it may or may not
//! have happened); everything is checked for linearizability against `fixture::record_model`
//! with stateright's tester (`fixture::history`), key by key.

#![cfg(feature = "postgres")]

use crate::fixture;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fixture::history::{Dice, Recorder, check, split};
use fixture::node::Node;
use fixture::partition::{Plan, start};
use fixture::record_model::{KeyModel, Op, Ret};

const TEST: &str = "histories_across_a_partition_are_linearizable";
/// Far longer than the test: leases expire only when the clock is stepped.
const LEASE: Duration = Duration::from_secs(600);
const KEYS: u8 = 2;
const STEPS: usize = 24;

/// Answers that said the node was cut off (`Unavailable`, `InDoubt`).
static CUT_ANSWERS: AtomicUsize = AtomicUsize::new(0);

/// Records `reply` as operation `id`'s answer, as `fixture::history` wants it.
fn record(log: &Recorder<Op, Ret>, id: usize, ret: Option<Ret>, reply: &fixture::node::Reply) {
    if reply.is_cut_off() {
        CUT_ANSWERS.fetch_add(1, Ordering::Relaxed);
    }
    match (ret, reply.error()) {
        (_, Some("Unavailable")) => log.void(id),
        (_, Some("InDoubt")) => {}
        (Some(ret), None) => log.returned(id, ret),
        (_, Some("LeaseLost")) => log.returned(id, Ret::LeaseLost),
        _ => panic!("unexpected answer {reply:?}"),
    }
}

fn work(node: &Node, worker: usize, log: &Recorder<Op, Ret>, names: &AtomicUsize) {
    let by = format!("w{worker}");
    let mut dice = Dice(0x5851_F42D_4C95_7F2D ^ (worker as u64 + 1));
    let mut held: Vec<(u8, usize)> = Vec::new();
    for _ in 0..STEPS {
        if !held.is_empty() && dice.roll(3) == 0 {
            let (key, lease) = held.remove(dice.roll(held.len() as u64) as usize);
            let body = names.fetch_add(1, Ordering::Relaxed);
            let id = log.invoke(&by, Op::Complete { key, lease, body });
            let reply = node.call(&format!("complete l{lease} {body}"));
            let ret = (reply.kind() == "ok").then_some(Ret::Done);
            record(log, id, ret, &reply);
            continue;
        }
        let key = dice.roll(u64::from(KEYS)) as u8;
        let request = u8::from(dice.roll(8) == 0);
        let lease = names.fetch_add(1, Ordering::Relaxed);
        let id = log.invoke(
            &by,
            Op::Begin {
                key,
                request,
                lease,
            },
        );
        let reply = node.call(&format!("begin k{key} {request} l{lease}"));
        let ret = match reply.kind() {
            "acquired" => {
                held.push((key, lease));
                Some(Ret::Acquired {
                    attempt: reply.words[1].parse().expect("an attempt"),
                    recovered: reply.words[2] == "1",
                })
            }
            "replay" => Some(Ret::Replay {
                body: reply.words[1].parse().expect("a body"),
            }),
            "inflight" => Some(Ret::InFlight),
            "mismatch" => Some(Ret::Mismatch),
            _ => None,
        };
        record(log, id, ret, &reply);
        // Some pause between steps, so that the cut falls among them.
        std::thread::sleep(Duration::from_millis(dice.roll(250)));
    }
}

#[test]
fn histories_across_a_partition_are_linearizable() {
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
    let log = Recorder::<Op, Ret>::default();
    let names = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let (node, log, names) = (&service.nodes[worker % 2], &log, &names);
            scope.spawn(move || work(node, worker, log, names));
        }
        // The clock, on b (which stays reachable): three steps past every lease.
        let (b, log) = (&service.nodes[1], &log);
        scope.spawn(move || {
            for _ in 0..8 {
                std::thread::sleep(Duration::from_millis(400));
                let id = log.invoke("clock", Op::Expire);
                let reply = b.call(&format!("advance {}", LEASE.as_secs() + 1));
                assert_eq!(reply.kind(), "ok", "{reply:?}");
                log.returned(id, Ret::Done);
            }
        });
        // The fault: a cut off for a while, in the middle of it all.
        // Longer than the writer's round-trip deadline (7 s), or TCP would deliver everything
        // late once healed and no call would notice.
        std::thread::sleep(Duration::from_millis(1000));
        service.net.cut(&service.hosts[0]);
        std::thread::sleep(Duration::from_secs(12));
        service.net.heal(&service.hosts[0]);
    });
    let events = log.finish();
    let by_key = split(&events, |op| match op {
        Op::Begin { key, .. } | Op::Complete { key, .. } => vec![*key],
        Op::Expire => (0..KEYS).collect(),
    });
    let mut operations = 0;
    let answers = |wanted: &dyn Fn(&Ret) -> bool| {
        events
            .iter()
            .filter(
                |event| matches!(event, fixture::history::Event::Return { ret, .. } if wanted(ret)),
            )
            .count()
    };
    let takeovers = answers(&|ret| {
        matches!(
            ret,
            Ret::Acquired {
                recovered: true,
                ..
            }
        )
    });
    let fenced = answers(&|ret| *ret == Ret::LeaseLost);
    for (key, events) in &by_key {
        match check(&KeyModel::default(), events) {
            Ok(checked) => operations += checked,
            Err(report) => panic!("key {key}: {report}"),
        }
    }
    let cut = CUT_ANSWERS.load(Ordering::Relaxed);
    println!(
        "across a partition: 1 history, {} per-key histories, {operations} operations checked \
         linearizable ({cut} answered Unavailable or InDoubt; {takeovers} takeovers, {fenced} \
         completions fenced)",
        by_key.len()
    );
    assert!(cut > 0, "the cut must have been felt");
}
