//! `Store::list_records` pages through every record in digest order, expired ones included, with
//! their state.

use crate::fixture;

use fixture::{RECORD_TTL, acquired, key, request, response};
use tollgate::idempotency::RecordState;

on_every_engine! {
    fn pages_cover_every_record_once_in_digest_order(fixture) {
        let store = fixture.open_without_compactor();
        for i in 0..25 {
            let name = format!("k{i}");
            let lease = acquired(store.begin(&key(&name), &request("r")).unwrap());
            if i % 5 != 0 {
                lease.complete(response("ok")).unwrap();
            }
        }
        fixture.advance(&store, RECORD_TTL * 2); // all expired, none swept yet

        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_records(after.as_ref(), 10).unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 10);
            after = Some(page.last().unwrap().0);
            seen.extend(page);
        }
        assert_eq!(seen.len(), 25);
        assert!(
            seen.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "ascending digests"
        );
        let running = seen
            .iter()
            .filter(|(_, info)| info.as_ref().unwrap().state == RecordState::Running)
            .count();
        assert_eq!(running, 5);
        let digest = key("k3").digest();
        assert!(seen.iter().any(|(d, _)| *d == digest));
    }
}
