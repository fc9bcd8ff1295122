//! Random sequences of begin / complete / fail / release / extend / checkpoint / rate checks /
//! compaction / clock moves / reopen / injected I/O failures / power cuts across a few keys, run
//! against a real store on a simulated disk and against a plain in-memory reference model
//! (`tollgate::testing::Harness`, shared with the `state_machine` fuzz target). Every answer
//! (acquired with which token, attempt, recovery flag and checkpoint; replay of which response; in
//! flight for how long; mismatch; lease lost; rate decision) and every record and counter must
//! agree with the model, or, after an operation whose commit failed, with one of "it happened"
//! and "it did not".
//!
//! The model is written from the rules in docs/DESIGN.md, not from the implementation: a map of
//! keys to records, times in whole seconds. Failing seeds are kept in
//! `state_machine_model.proptest-regressions` and replayed first on every run.
//! `PROPTEST_CASES` runs more cases (the default is 64).
//!
//! `on_postgres` runs the same sequences against a store on PostgreSQL (feature `postgres`), each
//! case on a fresh schema: there the disk operations leave the database alone and a power cut is
//! the node's process dying (see `Harness::postgres`).

use crate::fixture;

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use tollgate::testing::{Harness, KEYS, Op, SUBJECTS};

fn op() -> impl Strategy<Value = Op> {
    let lease = 0..4usize;
    prop_oneof![
        6 => (0..KEYS, 0..2u8, prop::option::weighted(0.2, 1..60u64))
            .prop_map(|(key, fingerprint, lease_ttl)| Op::Begin { key, fingerprint, lease_ttl }),
        3 => (lease.clone(), 200..204u16).prop_map(|(lease, status)| Op::Complete { lease, status }),
        1 => (lease.clone(), 400..404u16).prop_map(|(lease, status)| Op::Fail { lease, status }),
        1 => lease.clone().prop_map(|lease| Op::Release { lease }),
        1 => (lease.clone(), 0..90u64).prop_map(|(lease, by)| Op::Extend { lease, by }),
        1 => (lease.clone(), 0..3u8).prop_map(|(lease, name)| Op::Checkpoint { lease, name }),
        1 => lease.prop_map(|lease| Op::DropLease { lease }),
        3 => prop_oneof![0..5u64, 25..35u64, 95..140u64].prop_map(|seconds| Op::Advance { seconds }),
        1 => (1..50u64).prop_map(|seconds| Op::StepBack { seconds }),
        2 => (0..SUBJECTS, 0..7u32).prop_map(|(subject, cost)| Op::Rate { subject, cost }),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::DropAndReopen),
        1 => (0..40u16).prop_map(|after| Op::InjectFailure { after }),
        1 => any::<u64>().prop_map(|seed| Op::PowerCut { seed }),
        2 => (0..4u8, any::<u64>()).prop_map(|(after, seed)| Op::CutPowerDuringSync { after, seed }),
    ]
}

/// The same sequences against a store on PostgreSQL, with the schema's clock set to the model's
/// before every step.
#[cfg(feature = "postgres")]
#[test]
fn on_postgres() {
    let server = require_postgres!();
    let config = fixture::proptest_config(file!(), 48);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        let schema = fixture::postgres::unique_schema("model");
        let mut harness = Harness::postgres(&server.conn, &schema);
        ops.iter()
            .try_for_each(|op| harness.apply(op).map_err(TestCaseError::fail))
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}

#[test]
fn store_agrees_with_the_reference_model() {
    agrees_with_the_reference_model(Harness::new, 512);
}

/// The same through the write-ahead log: the applier writes redb in the background, so a failure
/// or a power cut meets the log's writes or the applier's, and reads must see the overlay.
#[test]
fn store_through_the_log_agrees_with_the_reference_model() {
    agrees_with_the_reference_model(Harness::with_write_ahead_log, 256);
}

fn agrees_with_the_reference_model(harness: fn() -> Harness, cases: u32) {
    let config = fixture::proptest_config(file!(), cases);
    let mut runner = TestRunner::new(config);
    let cuts = AtomicU64::new(0);
    let torn = AtomicU64::new(0);
    let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        let mut harness = harness();
        let outcome = ops
            .iter()
            .try_for_each(|op| harness.apply(op).map_err(TestCaseError::fail));
        let seen = harness.power_cuts();
        cuts.fetch_add(seen.total, Ordering::Relaxed);
        torn.fetch_add(seen.with_unsynced_writes, Ordering::Relaxed);
        outcome
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    // Cuts inside commits leave that commit's writes unsynced, so the crash images really tear
    // or drop writes (cuts between operations find everything synced).
    let (cuts, torn) = (cuts.into_inner(), torn.into_inner());
    eprintln!("{cuts} power cuts, {torn} with unsynced writes");
    assert!(
        torn > 0,
        "no power cut found unsynced writes to tear ({cuts} cuts)"
    );
}
