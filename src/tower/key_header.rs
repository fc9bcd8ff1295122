//! Reading the `Idempotency-Key` header field.
//!
//! draft-ietf-httpapi-idempotency-key-header makes the field an RFC 8941 String
//! (`Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`); many clients send the bare
//! token instead (`Idempotency-Key: 8e03978e-...`), as Stripe documents it. Both are accepted. A
//! field sent more than once, a String that does not parse, or a bare value with spaces or
//! non-visible characters is malformed.

use http::HeaderMap;

/// The header field's name.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The key sent with a request: `Ok(None)` if absent, `Err` with a reason if malformed.
pub(crate) fn read(headers: &HeaderMap) -> Result<Option<String>, String> {
    let values: Vec<&[u8]> = headers
        .get_all(IDEMPOTENCY_KEY)
        .iter()
        .map(http::HeaderValue::as_bytes)
        .collect();
    parse_idempotency_key(&values)
}

/// The `Idempotency-Key` of a request from the values of its header field, each as sent:
/// `Ok(None)` when there is none, the key when it is an RFC 8941 String or a bare token, `Err`
/// with a reason a client may read when it is malformed or sent more than once. For adapters
/// outside tower (tollgate's Python middlewares use it), so that every adapter reads the field
/// alike.
///
/// ```
/// use tollgate::tower::parse_idempotency_key;
///
/// assert_eq!(parse_idempotency_key(&[b"\"order-17\""]), Ok(Some("order-17".to_owned())));
/// assert_eq!(parse_idempotency_key(&[b"order-17"]), Ok(Some("order-17".to_owned())));
/// assert_eq!(parse_idempotency_key(&[]), Ok(None));
/// assert!(parse_idempotency_key(&[b"a", b"b"]).is_err());
/// ```
///
/// # Errors
/// The reason, in words a client may see, when the field is malformed or sent more than once.
pub fn parse_idempotency_key(values: &[&[u8]]) -> Result<Option<String>, String> {
    let [value] = values else {
        return if values.is_empty() {
            Ok(None)
        } else {
            Err("the Idempotency-Key field appears more than once".into())
        };
    };
    let text = std::str::from_utf8(value)
        .ok()
        .filter(|text| {
            text.bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        })
        .ok_or_else(|| "the Idempotency-Key field is not visible ASCII".to_owned())?
        .trim_matches(' ');
    let key = if let Some(quoted) = text.strip_prefix('"') {
        parse_string(quoted)?
    } else {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the Idempotency-Key must be a quoted string or a token without spaces".into(),
            );
        }
        text.to_owned()
    };
    if key.is_empty() {
        return Err("the Idempotency-Key is empty".into());
    }
    Ok(Some(key))
}

/// The rest of an RFC 8941 String after its opening quote.
fn parse_string(rest: &str) -> Result<String, String> {
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                return if chars.as_str().is_empty() {
                    Ok(out)
                } else {
                    Err("characters after the Idempotency-Key's closing quote".into())
                };
            }
            '\\' => match chars.next() {
                Some(escaped @ ('"' | '\\')) => out.push(escaped),
                _ => return Err("a bad escape in the Idempotency-Key string".into()),
            },
            c if (' '..='~').contains(&c) => out.push(c),
            _ => return Err("a character the Idempotency-Key string cannot hold".into()),
        }
    }
    Err("the Idempotency-Key string has no closing quote".into())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn key(values: &[&str]) -> Result<Option<String>, String> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(IDEMPOTENCY_KEY, HeaderValue::from_str(value).unwrap());
        }
        read(&headers)
    }

    #[test]
    fn accepts_strings_and_bare_tokens() {
        assert_eq!(key(&[]), Ok(None));
        assert_eq!(key(&["\"abc-123\""]), Ok(Some("abc-123".into())));
        assert_eq!(key(&["abc-123"]), Ok(Some("abc-123".into())));
        assert_eq!(key(&[r#""a \"b\" \\c""#]), Ok(Some(r#"a "b" \c"#.into())));
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in ["\"", "\"abc", "\"abc\"x", "\"a\\nb\"", "a b", "\"\""] {
            assert!(key(&[bad]).is_err(), "{bad}");
        }
        assert!(key(&["a", "b"]).is_err());
    }

    #[test]
    fn the_reason_names_what_is_wrong() {
        // Control characters and bytes outside ASCII are not visible ASCII; a tab is (HTTP's
        // whitespace) but splits a token.
        for invisible in [&b"a\x01b"[..], b"a\x7fb", "caf\u{e9}".as_bytes()] {
            assert_eq!(
                parse_idempotency_key(&[invisible]),
                Err("the Idempotency-Key field is not visible ASCII".to_owned()),
                "{invisible:?}"
            );
        }
        // Nor may a quoted string hold one (RFC 8941 strings are visible ASCII and spaces).
        assert_eq!(
            parse_idempotency_key(&[b"\"a\tb\""]),
            Err("a character the Idempotency-Key string cannot hold".to_owned())
        );
        assert_eq!(
            parse_idempotency_key(&[b"a\tb"]),
            Err("the Idempotency-Key must be a quoted string or a token without spaces".to_owned())
        );
    }
}
