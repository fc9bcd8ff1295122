//! `open_corrupt`: see `tollgate::testing::fuzz::open_corrupt` (the same function runs over the
//! committed seeds in `cargo test`, through `tests/it/fuzz_seeds.rs`).
//!
//! redb documents that a damaged file may make it panic; tollgate catches such panics and turns
//! them into typed errors. libFuzzer's panic hook would abort on any panic, caught or not, so this
//! target's hook aborts only on panics raised outside dependencies (tollgate's own code, or one
//! that escapes to the fuzzer); a dependency's panic is printed and left to tollgate to contain.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        std::panic::set_hook(Box::new(|info| {
            let in_dependency = info
                .location()
                .is_some_and(|location| location.file().contains(".cargo/registry"));
            eprintln!("{info}");
            if !in_dependency {
                std::process::abort();
            }
        }));
    },
    |data: &[u8]| tollgate::testing::fuzz::open_corrupt(data)
);
