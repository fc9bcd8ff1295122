//! Connections to PostgreSQL can use TLS with libpq's `sslmode` semantics: `verify-full` against
//! the test server's self-signed certificate works (by IP address and by host name), a wrong
//! root certificate is refused, and the server confirms that the store's connections are
//! encrypted (and that with `sslmode=disable` they are not, so the check can fail).

#![cfg(feature = "postgres")]

use crate::fixture;

use fixture::postgres::unique_schema;
use fixture::{acquired, key, request, response};
use tollgate::{Error, StoreBuilder};

/// How many of the server's connections named `application` use TLS, and how many do not.
fn encrypted(conn: &str, application: &str) -> (i64, i64) {
    let mut client = postgres::Client::connect(conn, postgres::NoTls).unwrap();
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&application],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn verify_full_connects_over_tls_and_a_wrong_root_is_refused() {
    let server = require_postgres!();
    let Some(certificate) = server.certificate() else {
        assert!(
            std::env::var("TOLLGATE_REQUIRE_POSTGRES").is_err(),
            "TOLLGATE_REQUIRE_POSTGRES=1 but the test server has no certificate (openssl missing?)"
        );
        tollgate::testing::say_skipped(
            "the PostgreSQL TLS test",
            "the test server offers no TLS (no openssl, or an external server)",
        );
        return;
    };
    let schema = unique_schema("tls");
    for (host, application) in [("127.0.0.1", "tls-by-ip"), ("localhost", "tls-by-name")] {
        let conn = format!(
            "{} host={host} application_name={application} sslmode=verify-full sslrootcert={}",
            server.conn,
            certificate.display()
        );
        let store = StoreBuilder::default()
            .postgres_schema(&schema)
            .open_postgres(&conn)
            .unwrap();
        acquired(store.begin(&key(application), &request("r")).unwrap())
            .complete(response("over tls"))
            .unwrap();
        let (tls, plain) = encrypted(&server.conn, application);
        assert!(tls >= 1, "{host}: no encrypted connection");
        assert_eq!(plain, 0, "{host}: a connection without TLS");
        store.close().unwrap();
    }

    // The check can fail: without TLS the server reports plain connections.
    let plain_conn = format!("{} application_name=no-tls sslmode=disable", server.conn);
    let store = StoreBuilder::default()
        .postgres_schema(&schema)
        .open_postgres(&plain_conn)
        .unwrap();
    store.get(&key("x")).unwrap();
    assert_eq!(encrypted(&server.conn, "no-tls").0, 0);
    store.close().unwrap();

    // A root that did not sign the server's certificate is refused, in verify-ca as well.
    let dir = tempfile::tempdir().unwrap();
    assert!(
        tollgate::testing::certificates(dir.path()).unwrap(),
        "openssl made a CA"
    );
    let other = dir.path().join("root.crt");
    for mode in ["verify-full", "verify-ca"] {
        let conn = format!(
            "{} sslmode={mode} sslrootcert={}",
            server.conn,
            other.display()
        );
        let refused = StoreBuilder::default()
            .postgres_schema(&schema)
            .open_postgres(&conn);
        assert!(
            matches!(refused, Err(Error::Unavailable(_))),
            "{mode}: {refused:?}"
        );
    }
    // verify-full without a root certificate is a configuration error.
    let missing = StoreBuilder::default()
        .postgres_schema(&schema)
        .open_postgres(&format!(
            "{} sslmode=verify-full sslrootcert=/nonexistent.crt",
            server.conn
        ));
    assert!(
        matches!(missing, Err(Error::InvalidArgument(_))),
        "{missing:?}"
    );
}
