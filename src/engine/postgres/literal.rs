//! SQL literals for statements sent in the simple protocol.
//!
//! A batch sends its statements as text (two round trips per transaction: `BEGIN` with the lock,
//! and the writes with `COMMIT`), so its values are written into the SQL. Only values whose text
//! cannot carry SQL go in: bytes as hex (`'\x…'::bytea`, with `standard_conforming_strings` on),
//! integers, and node ids checked to a safe alphabet (`node::check_node_id`). Nothing a caller
//! wrote (a key, a subject, a response) reaches the SQL other than as hex.

use std::fmt::Write as _;

use crate::error::{Error, Result};

/// `bytes` as a `bytea` literal.
pub(crate) fn bytea(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(12 + bytes.len() * 2);
    out.push_str("'\\x");
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out.push_str("'::bytea");
    out
}

/// An array literal of `items` (already literals) of SQL type `element`.
pub(crate) fn array(items: &[String], element: &str) -> String {
    if items.is_empty() {
        format!("'{{}}'::{element}[]")
    } else {
        format!("ARRAY[{}]::{element}[]", items.join(","))
    }
}

/// A text literal of `text`, which must be a checked node id (no quote, no backslash).
pub(crate) fn safe_text(text: &str) -> String {
    debug_assert!(!text.contains(['\'', '\\']));
    format!("'{}'", text.replace('\'', "''"))
}

/// `template` with `$1`, `$2`, … replaced by `values[0]`, `values[1]`, ….
pub(crate) fn bind(template: &str, values: &[String]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(String::len).sum::<usize>());
    let mut chars = template.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c == '$' {
            let mut number = 0usize;
            let mut digits = 0;
            while let Some(&(_, d)) = chars.peek() {
                match d.to_digit(10) {
                    Some(d) => {
                        number = number * 10 + d as usize;
                        digits += 1;
                        chars.next();
                    }
                    None => break,
                }
            }
            match (digits, number.checked_sub(1).and_then(|i| values.get(i))) {
                (0, _) => out.push('$'),
                (_, Some(value)) => out.push_str(value),
                (_, None) => {
                    let _ = write!(out, "${number}");
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Bytes from `bytea`'s hex output (`\x0a0b…`).
pub(crate) fn parse_bytea(text: &str) -> Result<Vec<u8>> {
    let bad = || {
        Error::Corrupted(format!(
            "the server sent a bytea that is not hex: {text:.40}"
        ))
    };
    let hex = text.strip_prefix("\\x").ok_or_else(bad)?;
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_through_hex() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff, b'\'', b'\\'];
        assert_eq!(bytea(&bytes), "'\\x00017f80ff275c'::bytea");
        let text = bytea(&bytes);
        let output = &text[1..text.len() - "'::bytea".len()];
        assert_eq!(parse_bytea(output).unwrap(), bytes);
        for bad in ["00", "\\x0", "\\xzz"] {
            assert!(
                matches!(parse_bytea(bad), Err(Error::Corrupted(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn arrays_and_binding() {
        assert_eq!(array(&[], "bytea"), "'{}'::bytea[]");
        assert_eq!(
            array(&["1".into(), "2".into()], "bigint"),
            "ARRAY[1,2]::bigint[]"
        );
        assert_eq!(
            bind("SELECT $1, $2, $10, $3, $$x$$", &["a".into(), "b".into()]),
            "SELECT a, b, $10, $3, $$x$$"
        );
        let ten: Vec<String> = (1..=11).map(|i| format!("v{i}")).collect();
        assert_eq!(bind("$1 $11 $10", &ten), "v1 v11 v10");
    }
}
