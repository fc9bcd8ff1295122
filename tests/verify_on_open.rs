//! A file damaged outside tollgate (here: bytes flipped in the middle of the file, where the
//! records' pages are) opens as `Error::Corrupted` with `verify_on_open`, instead of being trusted.
//! Without it the same open may succeed (redb checks checksums only after a crash), and later
//! reads may fail or, as the `open_corrupt` fuzz target found, make redb panic or abort.

mod fixture;

use fixture::{Fixture, acquired, key, request, response};
use tollgate::Error;

#[test]
fn verify_on_open_reports_a_damaged_file_as_corrupted() {
    let fixture = Fixture::new();
    let store = fixture.open();
    for i in 0..200 {
        let name = format!("key-{i}");
        acquired(store.begin(&key(&name), &request(&name)).unwrap())
            .complete(response(&"x".repeat(300)))
            .unwrap();
    }
    store.close().unwrap();

    // The undamaged file verifies.
    fixture
        .builder()
        .verify_on_open(true)
        .open(fixture.path())
        .unwrap()
        .close()
        .unwrap();

    let mut bytes = std::fs::read(fixture.path()).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle..middle + 4096] {
        *byte ^= 0x5A;
    }
    std::fs::write(fixture.path(), &bytes).unwrap();

    let opened = fixture.builder().verify_on_open(true).open(fixture.path());
    assert!(
        matches!(opened, Err(Error::Corrupted(_))),
        "expected Corrupted, got {opened:?}"
    );
}
