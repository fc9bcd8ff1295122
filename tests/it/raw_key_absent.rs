//! The raw idempotency key (and its scope) and the raw rate subject never reach storage: records
//! are addressed by a digest, counters by a keyed hash. Keys and subjects can be guessable
//! secrets (an email, a card fingerprint); a leaked store file or database dump must not reveal
//! them. On every engine: the file's bytes, or every row of every table of the schema.

use crate::fixture;

use fixture::{Engine, Fixture, acquired, request, response};
use tollgate::idempotency::IdempotencyKey;
use tollgate::ratelimit::{Limit, Quota};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Everything the store keeps: the file, or the text of every row of every table of the schema
/// (bytes appear there in hex).
fn everything_stored(fixture: &Fixture) -> Vec<u8> {
    match &fixture.engine {
        Engine::Embedded => std::fs::read(fixture.path()).unwrap(),
        // The owner still runs: what it acknowledged may be in its log only.
        Engine::Shared => {
            let mut bytes = std::fs::read(fixture.path()).unwrap();
            bytes.extend(
                std::fs::read(tollgate::Store::log_path(fixture.path())).unwrap_or_default(),
            );
            bytes
        }
        Engine::Postgres { conn, schema } => {
            let mut client = postgres::Client::connect(conn, postgres::NoTls).unwrap();
            let tables: Vec<String> = client
                .query(
                    "SELECT tablename FROM pg_tables WHERE schemaname = $1",
                    &[schema],
                )
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
            assert!(tables.len() >= 5, "{tables:?}");
            let mut dump = Vec::new();
            for table in tables {
                for row in client
                    .query(
                        &format!("SELECT t::text FROM \"{schema}\".\"{table}\" t"),
                        &[],
                    )
                    .unwrap()
                {
                    let text: String = row.get(0);
                    dump.extend_from_slice(text.as_bytes());
                }
            }
            dump
        }
    }
}

fn absent(stored: &[u8], secret: &str) -> bool {
    !contains(stored, secret.as_bytes()) && !contains(stored, hex(secret.as_bytes()).as_bytes())
}

on_every_engine! {
    fn neither_key_nor_scope_nor_subject_appear_in_storage(fixture) {
        let raw_key = "RAW-KEY-f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
        let raw_scope = "SCOPE-tenant-acme-corporation";
        let raw_subject = "SUBJECT-alice@example.com";
        let body = "stored body is allowed on disk";
        let store = fixture.open();
        let limit = Limit::new("per-user", Quota::per_hour(100)).unwrap();
        for i in 0..20 {
            let key = IdempotencyKey::new(raw_scope, &format!("{raw_key}-{i}")).unwrap();
            let mut lease = acquired(store.begin(&key, &request("r")).unwrap());
            lease.save_checkpoint("step", b"progress").unwrap();
            lease.complete(response(body)).unwrap();
            assert!(store.check(&limit, &format!("{raw_subject}-{i}")).unwrap().allowed());
        }
        store.close().unwrap();

        let stored = everything_stored(&fixture);
        // The check can fail: the stored response does appear, so storage is searchable.
        assert!(!absent(&stored, body), "the search finds what is stored");
        assert!(absent(&stored, raw_key));
        assert!(absent(&stored, raw_scope));
        assert!(absent(&stored, raw_subject));
    }
}
