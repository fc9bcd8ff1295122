//! The main job, end to end, on a store file in the working directory (`tollgate-demo.redb`, or the
//! path given as the first argument).
//!
//! A payments endpoint receives a charge with an idempotency key, a retry of it, a different
//! request reusing the key, and a charge whose handler "crashes" mid-way and is recovered after a
//! restart. Run it twice: the second run replays the first run's charge from disk.
//!
//! ```text
//! cargo run --example demo
//! ```

use std::time::Duration;

use tollgate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
use tollgate::{Result, Store};

fn charge_request(amount: u32) -> Fingerprint {
    Fingerprint::request()
        .method("POST")
        .path("/v1/charges")
        .header("content-type", "application/json")
        .body(format!(r#"{{"amount":{amount},"currency":"eur"}}"#).as_bytes())
        .finish()
}

/// The endpoint: runs the charge at most once per key, answers retries from the store.
fn handle(store: &Store, key: &IdempotencyKey, amount: u32) -> Result<String> {
    Ok(match store.begin(key, &charge_request(amount))? {
        Begin::Acquired(lease) => {
            let id = format!("ch_{}", lease.token());
            let body = format!(r#"{{"id":"{id}","amount":{amount}}}"#);
            lease.complete(StoredResponse::new(201, body.clone().into_bytes()))?;
            format!("201 executed charge {id}: {body}")
        }
        Begin::Replay(replay) => format!(
            "{} replayed from the store: {}",
            replay.response().status,
            String::from_utf8_lossy(&replay.response().body)
        ),
        Begin::InFlight { retry_after } => format!("409 in flight, retry after {retry_after:?}"),
        Begin::Mismatch => "422 this key was used for a different request".to_owned(),
    })
}

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tollgate-demo.redb".to_owned());
    let store = Store::builder()
        .lease_ttl(Duration::from_secs(30))
        .open(&path)?;
    println!("store {path}, boot epoch {}", store.epoch());

    let key = IdempotencyKey::new("customer:cus_42", "demo-charge-1")?;
    println!("request         -> {}", handle(&store, &key, 1000)?);
    println!("retry           -> {}", handle(&store, &key, 1000)?);
    println!("other request   -> {}", handle(&store, &key, 9999)?);

    // A handler that dies after charging but before recording the outcome.
    let crash_key =
        IdempotencyKey::new("customer:cus_42", &format!("demo-crash-{}", store.epoch()))?;
    if let Begin::Acquired(mut lease) = store.begin(&crash_key, &charge_request(500))? {
        lease.save_checkpoint("charged", b"ch_upstream_77")?;
        println!("crash key       -> charged upstream, checkpoint saved, then the process dies");
        drop(lease);
    }
    drop(store);

    let store = Store::open(&path)?;
    println!("reopened, boot epoch {}", store.epoch());
    match store.begin(&crash_key, &charge_request(500))? {
        Begin::Acquired(lease) => {
            let checkpoint = lease
                .checkpoint()
                .map(|c| String::from_utf8_lossy(&c.data).into_owned());
            println!(
                "crash key retry -> recovered={} attempt={} checkpoint={checkpoint:?}: finish without charging again",
                lease.recovered(),
                lease.attempt()
            );
            lease.complete(StoredResponse::new(
                201,
                b"{\"id\":\"ch_upstream_77\"}".to_vec(),
            ))?;
        }
        other => println!("crash key retry -> {other:?}"),
    }
    println!("retry           -> {}", handle(&store, &key, 1000)?);
    store.close()
}
