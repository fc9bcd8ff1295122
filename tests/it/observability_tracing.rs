//! With feature `tracing`, a takeover is an info event, a stale owner's refused write a warning,
//! a rate denial a debug event naming its limit, and no event carries a raw key or a rate subject:
//! keys appear only as a 16-hex-digit digest prefix, subjects not at all.

use crate::fixture;

use std::sync::{Arc, Mutex};

use fixture::{Fixture, LEASE_TTL, acquired, key, request, response};
use tollgate::ratelimit::{Limit, Quota};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[derive(Debug, Clone)]
struct Seen {
    level: Level,
    message: String,
    fields: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Seen>>>);

struct Fields(Vec<(String, String)>, String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.1 = format!("{value:?}");
        } else {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
    }
}

impl<S: Subscriber> Layer<S> for Collect {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields(Vec::new(), String::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(Seen {
            level: *event.metadata().level(),
            message: fields.1,
            fields: fields.0,
        });
    }
}

#[test]
fn takeovers_and_fencing_are_reported_without_raw_keys() {
    // A process of its own: the global subscriber this test installs would see every other test's events.
    if fixture::isolated(
        module_path!(),
        "takeovers_and_fencing_are_reported_without_raw_keys",
    ) {
        return;
    }
    let collect = Collect::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(collect.clone()))
        .unwrap();

    let fixture = Fixture::new();
    let store = fixture.open_without_compactor();
    let secret_key = "customer-secret-key-123";
    let stale = acquired(store.begin(&key(secret_key), &request("r")).unwrap());
    fixture.clock.advance(LEASE_TTL);
    let owner = acquired(store.begin(&key(secret_key), &request("r")).unwrap());
    assert!(owner.recovered());
    assert!(stale.complete(response("late")).is_err());
    owner.complete(response("done")).unwrap();
    let limit = Limit::new("per-ip", Quota::per_minute(1)).unwrap();
    let subject = "ip-203.0.113.99-secret-subject";
    assert!(store.check(&limit, subject).unwrap().allowed());
    assert!(!store.check(&limit, subject).unwrap().allowed());
    store.close().unwrap();

    let seen = collect.0.lock().unwrap().clone();
    let prefix = key(secret_key).digest().short_hex(8);
    let takeover = seen
        .iter()
        .find(|e| e.message.contains("takeover"))
        .expect("a takeover event");
    assert_eq!(takeover.level, Level::INFO);
    assert!(
        takeover.fields.contains(&("key".into(), prefix.clone())),
        "{takeover:?}"
    );
    let fenced = seen
        .iter()
        .find(|e| e.message.contains("fenced"))
        .expect("a fencing event");
    assert_eq!(fenced.level, Level::WARN);
    assert!(
        fenced
            .fields
            .iter()
            .any(|(name, value)| name == "kind" && value == "\"complete\"")
    );
    assert!(
        seen.iter().any(|e| e.message.contains("commit")),
        "writer batches are traced"
    );
    let denied = seen
        .iter()
        .find(|e| e.message.contains("rate_denied"))
        .expect("a rate denial event");
    assert!(
        denied
            .fields
            .contains(&("limit".into(), "\"per-ip\"".into())),
        "{denied:?}"
    );
    for event in &seen {
        let text = format!("{event:?}");
        assert!(!text.contains(secret_key), "a raw key leaked: {text}");
        assert!(!text.contains(subject), "a rate subject leaked: {text}");
    }
}

#[test]
fn entering_and_leaving_the_degraded_state_are_events() {
    // A process of its own: the global subscriber this test installs would see every other test's events.
    if fixture::isolated(
        module_path!(),
        "entering_and_leaving_the_degraded_state_are_events",
    ) {
        return;
    }
    let collect = Collect::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(collect.clone()))
        .unwrap();
    // Through the write-ahead log (the default for store files) and without it.
    for log in [false, true] {
        let fixture = Fixture::new();
        let (store, disk) = fixture::degraded_store_with_log(&fixture, log);
        fixture::recover(&fixture, &store, &disk);
        store.close().unwrap();

        let seen = std::mem::take(&mut *collect.0.lock().unwrap());
        let degraded = seen
            .iter()
            .find(|e| e.message.starts_with("degraded"))
            .expect("a degraded event");
        assert_eq!(degraded.level, Level::ERROR);
        assert!(
            degraded
                .fields
                .iter()
                .any(|(name, value)| name == "reason" && value.contains("no space")),
            "{degraded:?}"
        );
        let recovered = seen
            .iter()
            .find(|e| e.message.starts_with("recovered"))
            .expect("a recovered event");
        assert_eq!(recovered.level, Level::WARN);
    }
}
