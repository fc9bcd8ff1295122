//! The owner of a shared store closes while its clients hold leases: a client takes the file over
//! at once, the others reconnect to it, and every client keeps its leases (its epoch is claimed
//! back within the new owner's grace window), past the window too; a lease of a process that
//! never came back is taken over once the window has passed. On a `ManualClock`, in one process
//! (each `open_shared` is a process of its own to the owner).

use crate::fixture;

use std::time::Duration;

use fixture::{Fixture, acquired, key, replay, request, response};
use tollgate::Store;
use tollgate::idempotency::Begin;

#[test]
fn clients_keep_their_leases_when_the_owner_goes_and_a_vanished_ones_are_taken_after_the_grace() {
    let fixture = Fixture::new();
    let open = || fixture.builder().open_shared(fixture.path()).unwrap();
    let first_owner = open();
    let b = open();
    let c = open();
    let b_lease = acquired(b.begin(&key("b"), &request("r")).unwrap());
    let mut c_lease = acquired(c.begin(&key("c"), &request("r")).unwrap());
    c_lease.save_checkpoint("step", b"1").unwrap();
    // The first owner's own lease: it is gone with its process.
    let _orphan = acquired(first_owner.begin(&key("a"), &request("r")).unwrap());
    first_owner.close().unwrap();

    // Whichever of b and c took the file over, the other one reconnected to it.
    assert_each_sees_the_others_lease_live(&b, &c, "right after the owner changed");
    // Past the grace window, the clients' leases are still theirs (they claimed their epochs),
    // and the first owner's, whose process never came back, is taken over.
    fixture
        .clock
        .advance(tollgate_grace() + Duration::from_secs(1));
    assert_each_sees_the_others_lease_live(&b, &c, "after the grace window");
    let taken = acquired(b.begin(&key("a"), &request("r")).unwrap());
    assert!(taken.recovered());
    taken.complete(response("a")).unwrap();

    c_lease.save_checkpoint("step", b"2").unwrap();
    c_lease.complete(response("c")).unwrap();
    b_lease.complete(response("b")).unwrap();
    for name in ["a", "b", "c"] {
        let store = if name == "b" { &c } else { &b };
        let replayed = replay(store.begin(&key(name), &request("r")).unwrap());
        assert_eq!(replayed.response().body, name.as_bytes());
    }
    b.close().unwrap();
    c.close().unwrap();
}

/// `b` holds the lease of key "b", `c` of "c": each sees the other's in flight.
fn assert_each_sees_the_others_lease_live(b: &Store, c: &Store, when: &str) {
    for (store, other) in [(b, "c"), (c, "b")] {
        assert!(
            matches!(
                store.begin(&key(other), &request("r")).unwrap(),
                Begin::InFlight { .. }
            ),
            "{other}'s lease {when}"
        );
    }
}

/// The new owner's grace window (`engine::shared::GRACE`).
fn tollgate_grace() -> Duration {
    Duration::from_secs(3)
}
