//! Counters on a Redis that wants a password, and on one that speaks TLS only (`rediss://`,
//! a certificate signed by a private CA given with `redis_ca_certificate`): both serve checks;
//! a wrong password, an untrusted certificate and plain text to a TLS port are typed errors at
//! open, and no error message repeats the password.

use crate::fixture;

use fixture::redis::unique_namespace;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::testing::redis::Server;
use tollgate::{Error, Store};

#[test]
fn a_password_protected_server_serves_checks_and_a_wrong_password_is_refused() {
    let _shared = require_redis!();
    let server = Server::spawn(&["--requirepass", "s3cret-pass"]).unwrap();
    let url = format!("redis://:s3cret-pass@127.0.0.1:{}", server.port);
    let store = Store::builder()
        .rate_counters_redis(&url)
        .redis_namespace(&unique_namespace("auth"))
        .open_in_memory()
        .unwrap();
    let limit = Limit::new("api", Quota::per_minute(2)).unwrap();
    assert!(store.check(&limit, "user:1").unwrap().allowed());
    assert_eq!(store.peek(&limit, "user:1").unwrap().remaining(), 1);
    store.close().unwrap();
    for wrong in [
        format!("redis://:wrong-pass@127.0.0.1:{}", server.port),
        format!("redis://127.0.0.1:{}", server.port),
    ] {
        let refused = Store::builder()
            .rate_counters_redis(&wrong)
            .open_in_memory();
        let Err(error) = refused else {
            panic!("opened with {wrong}")
        };
        assert!(
            matches!(error, Error::Storage(_) | Error::Unavailable(_)),
            "{error:?}"
        );
        assert!(!error.to_string().contains("pass"), "{error}");
    }
}

#[test]
fn a_tls_server_serves_checks_when_its_ca_is_trusted() {
    let _shared = require_redis!();
    let server = match Server::spawn_tls(&[]) {
        Ok(server) => server,
        Err(why) => {
            assert!(
                std::env::var("TOLLGATE_REQUIRE_REDIS").is_err(),
                "TOLLGATE_REQUIRE_REDIS=1 but no TLS Redis: {why}"
            );
            tollgate::testing::say_skipped("the Redis TLS test", &why);
            return;
        }
    };
    let ca = server.root_certificate.clone().unwrap();
    let store = Store::builder()
        .rate_counters_redis(&server.url)
        .redis_ca_certificate(ca)
        .redis_namespace(&unique_namespace("tls"))
        .open_in_memory()
        .unwrap();
    let limit = Limit::new("api", Quota::per_minute(2)).unwrap();
    assert!(store.check(&limit, "user:1").unwrap().allowed());
    assert!(store.check(&limit, "user:1").unwrap().allowed());
    assert!(!store.check(&limit, "user:1").unwrap().allowed());
    store.close().unwrap();

    // The system's trust store does not know the private CA.
    let untrusted = Store::builder()
        .rate_counters_redis(&server.url)
        .open_in_memory();
    assert!(
        matches!(untrusted, Err(Error::Storage(_) | Error::Unavailable(_))),
        "{untrusted:?}"
    );
    // Plain text to the TLS port.
    let plain = Store::builder()
        .rate_counters_redis(&format!("redis://127.0.0.1:{}", server.port))
        .redis_timeout(std::time::Duration::from_millis(300))
        .open_in_memory();
    assert!(
        matches!(plain, Err(Error::Storage(_) | Error::Unavailable(_))),
        "{plain:?}"
    );
}
