//! A file damaged outside tollgate (here: bytes flipped in every page that holds a stored
//! response) opens as `Error::Corrupted` with `verify_on_open`, instead of being trusted.
//! Without it the same open may succeed (redb checks checksums only after a crash), and later
//! reads may fail or, as the `open_corrupt` fuzz target found, make redb panic or abort.

use crate::fixture;

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

    // The undamaged file verifies, with the offline check too.
    assert!(matches!(
        tollgate::Store::check_integrity(fixture.path()),
        Ok(true)
    ));
    fixture
        .builder()
        .verify_on_open(true)
        .open(fixture.path())
        .unwrap()
        .close()
        .unwrap();

    // Damage every 4 KiB page that holds a stored response (some are stale copies in free pages;
    // at least the live leaves are among them).
    let mut bytes = std::fs::read(fixture.path()).unwrap();
    let body = "x".repeat(300).into_bytes();
    let mut damaged = 0;
    for page in bytes.chunks_mut(4096) {
        if page
            .windows(body.len())
            .any(|window| window == body.as_slice())
        {
            for byte in page.iter_mut() {
                *byte ^= 0x5A;
            }
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no page holds a response");
    std::fs::write(fixture.path(), &bytes).unwrap();

    let opened = fixture.builder().verify_on_open(true).open(fixture.path());
    assert!(
        matches!(opened, Err(Error::Corrupted(_))),
        "expected Corrupted, got {opened:?}"
    );
    // The offline check (the CLI's `check`) does not call it intact either.
    let checked = tollgate::Store::check_integrity(fixture.path());
    assert!(
        matches!(checked, Ok(false) | Err(Error::Corrupted(_))),
        "expected damaged, got {checked:?}"
    );
}
