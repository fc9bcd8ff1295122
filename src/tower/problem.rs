//! `application/problem+json` responses (RFC 9457) for what the layers refuse.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// A problem response: status, a short title, and a detail for the client.
pub(crate) fn problem<B: From<Bytes>>(
    status: StatusCode,
    title: &str,
    detail: &str,
) -> Response<B> {
    let body = format!(
        "{{\"type\":\"about:blank\",\"title\":{},\"status\":{},\"detail\":{}}}",
        json_string(title),
        status.as_u16(),
        json_string(detail)
    );
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// How long a client should wait before retrying after the store's database was unavailable.
const UNAVAILABLE_RETRY_AFTER: &str = "1";

/// The answer when the store could not serve a request: 503 with `Retry-After` when the failure
/// is temporary (the database is unavailable, a commit's outcome is unknown, the store is full;
/// a retry later is safe), otherwise 500.
/// Whether a retry later can work: the database or Redis comes back, the disk gets space, the
/// store reopens its file for writing by itself.
pub(crate) fn is_temporary(error: &crate::Error) -> bool {
    use crate::Error;
    matches!(
        error,
        Error::Unavailable(_)
            | Error::InDoubt(_)
            | Error::CapacityExceeded { .. }
            | Error::StorageFull { .. }
            | Error::ReadOnly { .. }
            | Error::Poisoned
    )
}

///
/// The body says what a client may know, in fixed words: never the error's own text, which can
/// hold a file path, an operating system's message or a database server's. The cause goes to
/// `tracing` (a `store_error` event) and to `tollgate_http_store_errors_total` only.
pub(crate) fn unavailable<B: From<Bytes>>(title: &str, error: &crate::Error) -> Response<B> {
    let temporary = is_temporary(error);
    crate::observe::store_error_answered(title, temporary, error);
    if temporary {
        let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, title, TEMPORARY_DETAIL);
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(UNAVAILABLE_RETRY_AFTER),
        );
        response
    } else {
        problem(StatusCode::INTERNAL_SERVER_ERROR, title, LASTING_DETAIL)
    }
}

/// The detail of a 503: all a client may know, and what to do.
const TEMPORARY_DETAIL: &str = "the service cannot record this request right now; retry later";

/// The detail of a 500 for a store failure.
const LASTING_DETAIL: &str = "the service failed to process this request";

/// A JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_bodies_are_json_with_escaped_strings() {
        let response: Response<Bytes> =
            problem(StatusCode::BAD_REQUEST, "Bad \"key\"", "line\nbreak\\");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(
            response.body(),
            &Bytes::from_static(
                br#"{"type":"about:blank","title":"Bad \"key\"","status":400,"detail":"line\u000abreak\\"}"#
            )
        );
    }

    /// Every error the store can answer a layer with, each carrying a path, an OS message and a
    /// server message where its variant can: none of them reaches the body.
    #[test]
    fn error_bodies_carry_no_paths_nor_server_or_os_text() {
        let secret_path = "/srv/secret-dir/orders.redb";
        let server_text = "FATAL: terminating connection due to administrator command";
        let os_text = "Read-only file system (os error 30)";
        let errors = vec![
            crate::Error::Unavailable(format!("{server_text} at {secret_path}")),
            crate::Error::InDoubt(server_text.into()),
            crate::Error::StorageFull {
                path: secret_path.into(),
            },
            crate::Error::ReadOnly {
                path: secret_path.into(),
                reason: os_text.into(),
            },
            crate::Error::Corrupted(format!("record at {secret_path}")),
            crate::Error::NotAStore(secret_path.into()),
            crate::Error::InvalidArgument(secret_path.into()),
            crate::Error::storage(std::io::Error::other(format!("{os_text}: {secret_path}"))),
            crate::Error::Poisoned,
            crate::Error::Closed,
            crate::Error::AlreadyOpen,
            crate::Error::Superseded,
            crate::Error::CapacityExceeded { limit: 10 },
            crate::Error::Internal(format!("{server_text} at {secret_path}")),
        ];
        for error in &errors {
            let response: Response<Bytes> = unavailable("Store unavailable", error);
            let body = String::from_utf8_lossy(response.body());
            for secret in [secret_path, "secret-dir", server_text, os_text, "os error"] {
                assert!(
                    !body.contains(secret),
                    "the answer to {error:?} shows {secret:?}: {body}"
                );
            }
            assert!(
                body.contains(TEMPORARY_DETAIL) || body.contains(LASTING_DETAIL),
                "{body}"
            );
        }
    }

    #[test]
    fn a_store_that_can_come_back_is_a_503_to_retry_and_other_failures_a_500() {
        for temporary in [
            crate::Error::Unavailable("down".into()),
            crate::Error::InDoubt("cut during the commit".into()),
            crate::Error::StorageFull {
                path: "/var/lib/app/store.redb".into(),
            },
            crate::Error::ReadOnly {
                path: "/var/lib/app/store.redb".into(),
                reason: "read-only filesystem".into(),
            },
            crate::Error::Poisoned,
        ] {
            let response: Response<Bytes> = unavailable("Store unavailable", &temporary);
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        }
        for lasting in [
            crate::Error::Closed,
            crate::Error::Corrupted("a bad record".into()),
            crate::Error::Internal("a batch's record was not locked".into()),
        ] {
            let response: Response<Bytes> = unavailable("Store unavailable", &lasting);
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert!(response.headers().get(header::RETRY_AFTER).is_none());
        }
    }
}
