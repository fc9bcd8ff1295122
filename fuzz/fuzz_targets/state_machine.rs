//! `state_machine`: see `tollgate::testing::fuzz::state_machine` (the same function runs over the committed seeds
//! in `cargo test`, through `tests/it/fuzz_seeds.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::testing::fuzz::state_machine(data));
