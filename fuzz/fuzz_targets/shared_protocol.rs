//! `shared_protocol`: see `tollgate::testing::fuzz::shared_protocol` (the same function runs over the committed
//! seeds in `cargo test`, through `tests/it/fuzz_seeds.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate::testing::fuzz::shared_protocol(data));
