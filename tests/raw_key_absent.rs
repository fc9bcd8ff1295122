//! The raw idempotency key (and its scope) never reach the disk: records are addressed by a digest.
//! Keys can be guessable secrets; a leaked store file must not reveal them.

mod fixture;

use fixture::{Fixture, acquired, request, response};
use tollgate::idempotency::IdempotencyKey;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn neither_key_nor_scope_appear_in_the_file() {
    let fixture = Fixture::new();
    let raw_key = "RAW-KEY-f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
    let raw_scope = "SCOPE-tenant-acme-corporation";
    let store = fixture.open();
    for i in 0..20 {
        let key = IdempotencyKey::new(raw_scope, &format!("{raw_key}-{i}")).unwrap();
        let mut lease = acquired(store.begin(&key, &request("r")).unwrap());
        lease.save_checkpoint("step", b"progress").unwrap();
        lease
            .complete(response("stored body is allowed on disk"))
            .unwrap();
    }
    store.close().unwrap();

    let bytes = std::fs::read(fixture.path()).unwrap();
    // The check can fail: the stored response does appear, so the file is searchable.
    assert!(contains(&bytes, b"stored body is allowed on disk"));
    assert!(!contains(&bytes, raw_key.as_bytes()));
    assert!(!contains(&bytes, raw_scope.as_bytes()));
}
