//! The fuzz targets' logic over the committed seed corpus (`fuzz/seeds/<target>/`), so a
//! regression that a fuzz run once found shows up in `cargo test`, without nightly or cargo-fuzz.
//! Inputs a fuzz run finds worth keeping (crashes, once fixed) are added to the same directories.
//!
//! `TOLLGATE_WRITE_SEEDS=1 cargo test --test fuzz_seeds` rewrites the generated starting inputs.

use std::path::PathBuf;

use tollgate::testing::fuzz;

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

fn run(target: &str, generated: Vec<Vec<u8>>, check: fn(&[u8])) {
    if std::env::var_os("TOLLGATE_WRITE_SEEDS").is_some() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/seeds")
            .join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in generated.iter().enumerate() {
            std::fs::write(dir.join(format!("generated-{i:02}")), seed).unwrap();
        }
    }
    let inputs = seeds(target);
    assert!(
        inputs.len() >= generated.len(),
        "{target}: the seed corpus is committed"
    );
    for (path, bytes) in inputs {
        eprintln!("{target}: {}", path.display());
        check(&bytes);
    }
}

#[test]
fn decode_record_seeds() {
    run(
        "decode_record",
        fuzz::decode_record_seeds(),
        fuzz::decode_record,
    );
}

#[test]
fn state_machine_seeds() {
    run(
        "state_machine",
        fuzz::state_machine_seeds(),
        fuzz::state_machine,
    );
}

#[test]
fn open_corrupt_seeds() {
    run(
        "open_corrupt",
        fuzz::open_corrupt_seeds(),
        fuzz::open_corrupt,
    );
}

/// The same seeds without `verify_on_open`, so damage reaches redb: every `contained-*` seed makes
/// redb panic (the image is the same in every process, so the flips hit the same bytes), and each
/// panic must come back as a typed error. `abort-*` seeds make redb panic while unwinding, which
/// aborts the process whatever tollgate does; they run only verified (above).
#[test]
fn open_corrupt_seeds_without_verification_contain_every_redb_panic() {
    let mut contained_seeds = 0;
    for (path, bytes) in seeds("open_corrupt") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("abort-") {
            continue;
        }
        eprintln!("open_corrupt unverified: {name}");
        let before = tollgate::testing::contained_panics();
        fuzz::open_corrupt_unverified(&bytes);
        let caught = tollgate::testing::contained_panics() - before;
        if name.starts_with("contained-") {
            assert!(
                caught > 0,
                "{name}: redb no longer panics on this damage; pick a new seed (the containment \
                 must be exercised)"
            );
            contained_seeds += 1;
        }
    }
    assert!(contained_seeds >= 5, "the contained-* seeds are committed");
}

#[test]
fn log_recovery_seeds() {
    run(
        "log_recovery",
        fuzz::log_recovery_seeds(),
        fuzz::log_recovery,
    );
}

#[test]
fn shared_protocol_seeds() {
    run(
        "shared_protocol",
        fuzz::shared_protocol_seeds(),
        fuzz::shared_protocol,
    );
}
