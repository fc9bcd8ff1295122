//! Connection strings: what tollgate reads itself before the `postgres` client parses the rest.
//!
//! The client understands libpq's keyword/value strings and URLs, but not every libpq keyword:
//! `sslmode=verify-ca` / `verify-full` and `sslrootcert` it refuses. Those are taken out here (in
//! either form) and applied by tollgate's TLS setup (`tls.rs`), and so is `tcp_user_timeout`,
//! which libpq reads in milliseconds and the client in seconds; everything else goes to the
//! client as written. A missing `connect_timeout`, and missing TCP keepalive and user timeout
//! settings, get tollgate's defaults (`session.rs` `apply_defaults`).

use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    /// `allow` and `prefer`: TLS if the server offers it, without verification.
    Prefer,
    /// TLS, without verifying the certificate (unless a root certificate is given: then as
    /// `verify-ca`, as libpq does).
    Require,
    /// TLS, the certificate chain verified against the root certificate.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

/// A connection string with tollgate's keywords taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnInfo {
    /// What the `postgres` client parses.
    pub rest: String,
    pub ssl_mode: SslMode,
    pub ssl_root_cert: Option<String>,
    pub has_connect_timeout: bool,
    /// Whether the string sets `keepalives_idle` (the client's getter cannot tell a value set to
    /// its default from one not set).
    pub has_keepalives_idle: bool,
    /// `tcp_user_timeout` in milliseconds, as libpq reads it (the Rust client would read seconds),
    /// `0` for the kernel's default; `None` if the string does not set it.
    pub tcp_user_timeout_ms: Option<u64>,
}

impl ConnInfo {
    /// Splits `conn` (keyword/value or URL form).
    pub(crate) fn parse(conn: &str) -> Result<ConnInfo> {
        let trimmed = conn.trim();
        let pairs = if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            None
        } else {
            Some(keyword_pairs(trimmed)?)
        };
        let mut info = ConnInfo {
            rest: String::new(),
            ssl_mode: SslMode::Prefer,
            ssl_root_cert: None,
            has_connect_timeout: false,
            has_keepalives_idle: false,
            tcp_user_timeout_ms: None,
        };
        if let Some(pairs) = pairs {
            let mut kept = Vec::new();
            for (key, value) in pairs {
                if !info.take(&key, &value)? {
                    kept.push(format!("{key}='{}'", quote(&value)));
                }
            }
            info.rest = kept.join(" ");
        } else {
            let (base, query) = trimmed.split_once('?').unwrap_or((trimmed, ""));
            let mut kept = Vec::new();
            for part in query.split('&').filter(|part| !part.is_empty()) {
                let (key, value) = part.split_once('=').unwrap_or((part, ""));
                if !info.take(key, &percent_decode(value)?)? {
                    kept.push(part.to_string());
                }
            }
            info.rest = if kept.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", kept.join("&"))
            };
        }
        Ok(info)
    }

    /// Applies `key` if it is one of tollgate's; returns whether it was.
    fn take(&mut self, key: &str, value: &str) -> Result<bool> {
        match key {
            "sslmode" => {
                self.ssl_mode = match value {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "sslmode={other} is not one of disable, allow, prefer, require, \
                             verify-ca, verify-full"
                        )));
                    }
                };
                Ok(true)
            }
            "sslrootcert" => {
                self.ssl_root_cert = Some(value.to_string());
                Ok(true)
            }
            "connect_timeout" => {
                self.has_connect_timeout = true;
                Ok(false)
            }
            "keepalives_idle" => {
                self.has_keepalives_idle = true;
                Ok(false)
            }
            "tcp_user_timeout" => {
                let ms = value.trim().parse::<u64>().map_err(|_| {
                    Error::InvalidArgument(format!(
                        "tcp_user_timeout={value} is not a number of milliseconds"
                    ))
                })?;
                self.tcp_user_timeout_ms = Some(ms);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// libpq keyword/value pairs: `key=value` separated by spaces, values optionally single-quoted
/// with `\'` and `\\` escapes.
fn keyword_pairs(conn: &str) -> Result<Vec<(String, String)>> {
    let bad = |what: &str| Error::InvalidArgument(format!("bad connection string: {what}"));
    let mut pairs = Vec::new();
    let mut chars = conn.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(bad(&format!("`{key}` has no `=`")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or_else(|| bad("a trailing `\\`"))?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(bad("an unterminated quote")),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.push(chars.next().ok_or_else(|| bad("a trailing `\\`"))?);
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        pairs.push((key, value));
    }
}

fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

fn percent_decode(value: &str) -> Result<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| {
                    Error::InvalidArgument("bad percent-encoding in the connection URL".into())
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::InvalidArgument("the connection URL is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_strings_lose_only_tollgates_keywords() {
        let info = ConnInfo::parse(
            "host=db port=5432 sslmode=verify-full sslrootcert='/etc/ca dir/root.crt' user=app",
        )
        .unwrap();
        assert_eq!(info.ssl_mode, SslMode::VerifyFull);
        assert_eq!(info.ssl_root_cert.as_deref(), Some("/etc/ca dir/root.crt"));
        assert_eq!(info.rest, "host='db' port='5432' user='app'");
        assert!(!info.has_connect_timeout);
    }

    #[test]
    fn quoted_values_keep_their_escapes() {
        let info = ConnInfo::parse(r"password='it\'s \\ secret' connect_timeout=3").unwrap();
        assert_eq!(info.rest, r"password='it\'s \\ secret' connect_timeout='3'");
        assert!(info.has_connect_timeout);
        assert!(!info.has_keepalives_idle);
        assert_eq!(info.ssl_mode, SslMode::Prefer);
        assert!(
            ConnInfo::parse("keepalives_idle=30")
                .unwrap()
                .has_keepalives_idle
        );
        assert!(
            ConnInfo::parse("postgres://db/x?keepalives_idle=30")
                .unwrap()
                .has_keepalives_idle
        );
    }

    #[test]
    fn urls_lose_only_tollgates_parameters() {
        let info = ConnInfo::parse(
            "postgresql://app:pw@db:5432/orders?sslmode=require&application_name=x&sslrootcert=%2Fca.pem",
        )
        .unwrap();
        assert_eq!(info.ssl_mode, SslMode::Require);
        assert_eq!(info.ssl_root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(
            info.rest,
            "postgresql://app:pw@db:5432/orders?application_name=x"
        );
        let bare = ConnInfo::parse("postgres://db/orders?sslmode=disable").unwrap();
        assert_eq!(bare.rest, "postgres://db/orders");
        assert_eq!(bare.ssl_mode, SslMode::Disable);
    }

    #[test]
    fn bad_strings_are_typed_errors() {
        for bad in [
            "host",
            "host='db",
            "sslmode=sometimes",
            "tcp_user_timeout=10s",
            "postgres://db?sslrootcert=%zz",
        ] {
            assert!(
                matches!(ConnInfo::parse(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }
}
