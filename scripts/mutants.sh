#!/usr/bin/env bash
# Mutation testing with cargo-mutants over a chosen group of files, each group with the tests
# that claim to check it, as test-name filters (running every test per mutant would take hours
# on 2 cores).
#
#   scripts/mutants.sh rules        # the pure rules: idempotency machine and record, rate algorithm and charge
#   scripts/mutants.sh write-path   # writer (and its log commit, commands), sequencer, compaction sweep, tables, codec
#   scripts/mutants.sh postgres     # the PostgreSQL engine (batch, workers, sessions, node, maintenance)
#   scripts/mutants.sh redis        # the Redis counter engine (links, denial cache, namespaces, topology)
#   scripts/mutants.sh log          # the embedded engine's write-ahead log
#   scripts/mutants.sh layers       # the tower layers
#   scripts/mutants.sh FILE...      # any files, against every test
#   SURVIVORS=1 scripts/mutants.sh rules|write-path
#                                   # only the mutants a previous run of the group did not catch
#                                   # (cargo-mutants --iterate), against every test
#
# Builds with the `mutants` profile (opt-level 1, no debug info: the crash and model tests run in
# seconds, a rebuild after each mutant stays short). Results go to
# target/mutants-out/<group>/mutants.out (caught.txt, missed.txt, timeout.txt, unviable.txt).
# docs/TESTING.md lists the score and why each surviving mutant is harmless. Installs
# cargo-mutants if it is missing. Not part of .ci/run: see TESTING for what it costs.
# MUTANTS_JOBS sets parallel jobs (default 1); extra arguments after the group go to cargo-mutants
# (for example --re 'sweep' to test only matching mutants).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked

group=${1:?usage: scripts/mutants.sh rules|write-path|postgres|redis|log|layers|FILE...}
shift
files=()
tests=()
# The server groups need their servers (the tests start throwaway ones) and, for the partition
# scenarios, network namespaces (root): missing ones fail rather than skip.
export TOLLGATE_REQUIRE_POSTGRES=1 TOLLGATE_REQUIRE_REDIS=1 TOLLGATE_REQUIRE_NETNS=1
features=test-support
case "$group" in
rules)
    files=(src/idempotency/machine.rs src/idempotency/record.rs src/ratelimit/algorithm.rs
        src/ratelimit/reservation.rs src/ratelimit/charge.rs src/ratelimit/crash_policy.rs)
    # The lib's unit tests of these files and the scenarios of the `it` test binary that claim
    # them, as name filters (a filter selects tests in both binaries).
    tests=(--lib --test=it -- idempotency:: ratelimit:: state_machine_model:: rate_model::
        takeover_and_fencing:: expiry:: rate_check_all:: rate_headers:: rate_bad_input::
        limits_and_bad_input:: waiting::)
    ;;
write-path)
    files=(src/engine/embedded/writer.rs src/engine/embedded/wal_commit.rs
        src/engine/embedded/command.rs src/engine/embedded/sequencer.rs
        src/engine/embedded/counters.rs src/engine/compactor.rs
        src/engine/embedded/storage/tables.rs src/engine/codec.rs)
    tests=(--lib --test=it -- engine:: store:: state_machine_model:: rate_model:: close_semantics::
        batch_isolation:: power_loss:: rate_crash_policy:: compaction_expiry:: compaction_race::
        compaction_close:: stats_counts_writes:: format_fixtures:: fuzz_seeds:: rate_persistence::
        restart_durability:: limits_and_bad_input:: concurrent_duplicates:: kill_cycles::
        rate_close_race:: takeover_and_fencing::)
    ;;
postgres)
    files=(src/engine/postgres/batch/mod.rs src/engine/postgres/batch/lock.rs
        src/engine/postgres/batch/decide.rs src/engine/postgres/batch/write.rs
        src/engine/postgres/worker.rs src/engine/postgres/session.rs src/engine/postgres/pipe.rs
        src/engine/postgres/node.rs src/engine/postgres/maintenance.rs
        src/engine/postgres/clock.rs)
    features=test-support,postgres
    # Every test whose path names PostgreSQL (the engine's unit tests, the postgres_ scenarios,
    # every on_every_engine! scenario's ::postgres variant, the histories), and the partitions.
    tests=(--lib --test=it -- postgres partition_)
    ;;
redis)
    files=(src/engine/redis/link.rs src/engine/redis/denials.rs src/engine/redis/namespace.rs
        src/engine/redis/server.rs src/engine/redis/topology.rs src/engine/redis/script.rs
        src/engine/redis/mod.rs)
    features=test-support,redis,postgres
    tests=(--lib --test=it -- redis partition_redis)
    ;;
log)
    files=(src/engine/embedded/log/change.rs src/engine/embedded/log/file.rs
        src/engine/embedded/log/frame.rs src/engine/embedded/log/overlay.rs
        src/engine/embedded/log/recovery.rs src/engine/embedded/log/view.rs
        src/engine/embedded/log/mod.rs src/engine/embedded/wal_commit.rs)
    tests=(--lib --test=it -- engine::embedded power_loss:: kill_cycles:: full_disk
        restart_durability:: log_missing_or_foreign:: quick_repair:: format_fixtures::
        fuzz_seeds:: cli_read_only:: reclaim_space:: verify_on_open:: interrupted_creation::)
    features=test-support,cli
    ;;
layers)
    files=(src/tower/rate_limit.rs src/tower/key_header.rs src/tower/problem.rs
        src/tower/idempotency/mod.rs src/tower/idempotency/context.rs
        src/tower/idempotency/execute.rs)
    features=test-support,tower,metrics,tracing,redis
    tests=(--lib --test=it -- tower:: http_ demo_server:: observability_)
    ;;
*)
    files=("$group" "$@")
    set --
    group=custom
    ;;
esac

mkdir -p target/mutants-out
args=()
for file in "${files[@]}"; do args+=(--file "$file"); done
if [ -n "${SURVIVORS:-}" ]; then
    tests=()
    args+=(--iterate)
fi
for test in "${tests[@]}"; do args+=(--cargo-test-arg="$test"); done
# RUST_BACKTRACE makes every contained redb panic in the seeds print a backtrace: slow, useless here.
RUST_BACKTRACE=0 exec cargo mutants "${args[@]}" --output "target/mutants-out/$group" \
    --jobs "${MUTANTS_JOBS:-1}" --profile mutants --features "$features" \
    --minimum-test-timeout 120 "$@"
