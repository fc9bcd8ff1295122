//! tollgate's integration tests, one scenario per module, all in one test binary: tollgate and
//! its dependencies are linked once instead of once per scenario (docs/TESTING.md has the
//! before-and-after times of `.ci/run`).
//!
//! A test that needs the process to itself (it installs a global recorder or subscriber, counts
//! the process's threads, or crashes the shared PostgreSQL server) runs in a child process of
//! this binary through [`fixture::isolated`]; tests that kill a child re-run this binary the
//! same way. Names stay those of the files: `cargo test --test it rate_model::` runs one.

// Declared first: its `require_postgres!` and `require_redis!` macros are used below.
#[macro_use]
mod fixture;
#[cfg(feature = "tower")]
mod web;

mod answers_from_memory;
mod batch_isolation;
#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "cli")]
mod cli_read_only;
mod clock_steps_back;
mod close_semantics;
mod compaction_close;
mod compaction_expiry;
mod compaction_race;
mod concurrent_duplicates;
#[cfg(all(feature = "tower", feature = "metrics"))]
mod demo_server;
mod expiry;
mod format_fixtures;
mod full_disk;
mod full_disk_real;
mod fuzz_seeds;
mod histories_counters;
mod histories_records;
#[cfg(feature = "tower")]
mod http_broken_body;
#[cfg(feature = "tower")]
mod http_concurrent_duplicates;
#[cfg(feature = "tower")]
mod http_coverage;
#[cfg(feature = "tower")]
mod http_fast_path;
#[cfg(feature = "tower")]
mod http_full_disk;
#[cfg(feature = "tower")]
mod http_policies;
#[cfg(all(feature = "tower", feature = "redis"))]
mod http_redis_down;
#[cfg(feature = "tower")]
mod http_restart_replay;
#[cfg(feature = "tower")]
mod http_slow_handler;
#[cfg(feature = "tower")]
mod http_statuses;
mod http_two_nodes;
#[cfg(feature = "tower")]
mod http_unidentified_callers;
mod in_memory;
mod interrupted_creation;
mod kill_cycles;
mod limits_and_bad_input;
mod list_records;
mod log_missing_or_foreign;
#[cfg(feature = "metrics")]
mod observability_metrics;
#[cfg(feature = "tracing")]
mod observability_tracing;
mod operations_are_atomic;
mod partition_database_cut_off;
mod partition_histories;
mod partition_node_cut_off;
mod partition_node_deaf;
mod partition_node_paused;
mod partition_node_vanished;
mod partition_redis_cluster;
mod partition_redis_cut_off;
mod postgres_commit_in_doubt;
mod postgres_lone_round_trip;
mod postgres_node_killed;
mod postgres_nodes;
mod postgres_restart_first_write;
mod postgres_schema_addition;
mod postgres_server_crash;
mod postgres_stalled_server;
mod postgres_tls;
mod power_loss;
mod quick_repair;
mod rate_bad_input;
mod rate_check_all;
mod rate_close_race;
mod rate_concurrency;
mod rate_crash_policy;
mod rate_headers;
mod rate_model;
mod rate_operations;
mod rate_persistence;
mod rate_reservations;
mod raw_key_absent;
mod reads_do_not_wait_for_the_writer;
mod reclaim_space;
#[cfg(feature = "redis")]
mod redis_charge_in_doubt;
#[cfg(feature = "redis")]
mod redis_cluster;
#[cfg(feature = "redis")]
mod redis_counters;
#[cfg(feature = "redis")]
mod redis_data_loss;
#[cfg(feature = "redis")]
mod redis_script_flush;
#[cfg(feature = "redis")]
mod redis_tls_and_auth;
#[cfg(feature = "redis")]
mod redis_unavailable;
mod refused_open_changes_nothing;
mod replay_cache;
mod restart_durability;
#[cfg(target_os = "linux")]
mod shared_owner_change;
#[cfg(target_os = "linux")]
mod shared_processes;
#[cfg(target_os = "linux")]
mod shared_read_only;
#[cfg(all(feature = "tower", target_os = "linux"))]
mod shared_rolling_restart;
mod simulation_owner_close;
mod simulation_rate_flush;
mod simulation_wakeup;
mod state_machine_model;
mod stats_counts_writes;
mod takeover_and_fencing;
mod verify_on_open;
mod waiting;
