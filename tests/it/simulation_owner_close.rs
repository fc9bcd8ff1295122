//! Every schedule of a shared store's owner closing while it finishes a request, explored with
//! shuttle on a small model of the code (`engine/shared/server.rs`: `Server::stop`, the anchor's
//! thread, a request's thread; `engine/processes.rs`: the live set).
//!
//! `stop` sets `closing`, then shuts every connection; an anchor's thread, woken by its
//! connection ending, ends its process's epoch only if the owner is not closing (the process
//! lives on and claims its epoch from the next owner); a request read before the close is still
//! decided, against the live set. The claim: that decision never finds a live client's epoch
//! ended, so it never takes a live client's lease over. Every interleaving (DFS); and the anchor
//! that ends the epoch regardless (the code before 2026-12-07, found by
//! `histories_records::linearizable::shared`) must fail.

use shuttle::sync::atomic::{AtomicBool, Ordering};
use shuttle::sync::{Arc, Mutex, mpsc};

struct Owner {
    closing: AtomicBool,
    /// `Processes`'s live set, reduced to the one client.
    client_live: Mutex<bool>,
}

fn schedule(heed_closing: bool) {
    let owner = Arc::new(Owner {
        closing: AtomicBool::new(false),
        client_live: Mutex::new(true),
    });
    // The anchor connection: its end is what the anchor's blocking read returns on (the client
    // itself stays alive).
    let (shut, anchor_read) = mpsc::channel::<()>();
    // `Server::stop`: closing first, then every connection shut.
    let stop = {
        let owner = Arc::clone(&owner);
        shuttle::thread::spawn(move || {
            owner.closing.store(true, Ordering::Release);
            drop(shut);
        })
    };
    // The anchor's thread: its read returns when the connection ends.
    let anchor = {
        let owner = Arc::clone(&owner);
        shuttle::thread::spawn(move || {
            let _ = anchor_read.recv();
            if !heed_closing || !owner.closing.load(Ordering::Acquire) {
                *owner.client_live.lock().unwrap() = false;
            }
        })
    };
    // A request another client sent just before the close: decided against the live set. The
    // client whose anchor closed is alive, so its lease must be seen live.
    let live = *owner.client_live.lock().unwrap();
    assert!(
        live,
        "a request took over a live client's lease while its owner closed"
    );
    stop.join().unwrap();
    anchor.join().unwrap();
}

#[test]
fn a_closing_owner_never_ends_a_live_clients_epoch() {
    shuttle::check_dfs(|| schedule(true), None);
}

#[test]
#[should_panic(expected = "took over a live client's lease")]
fn an_anchor_that_ends_the_epoch_on_any_close_loses_live_leases() {
    shuttle::check_dfs(|| schedule(false), None);
}
