//! tollgate's SQL, one file per statement family under `sql/`, with the schema's name put in.
//!
//! Each `.sql` file opens with what it reads, what it locks and in what order; the Rust side
//! (`batch.rs`, `node.rs`, `maintenance.rs`) only binds parameters and reads results. The schema
//! name is checked to be a plain identifier before it is put in, and is always quoted.

use crate::error::{Error, Result};

/// Longest schema name (PostgreSQL's identifier limit).
const MAX_SCHEMA_LEN: usize = 63;

/// Every statement, for one schema.
#[derive(Debug)]
pub(crate) struct Sql {
    /// The quoted schema name.
    pub schema: String,
    /// The schema's name as given (for advisory-lock keys).
    pub schema_name: String,
    pub create: String,
    pub clock_stop: String,
    pub lock: String,
    pub write: String,
    pub compact: String,
    pub list_records: String,
    pub now: String,
}

/// Checks that `name` is a plain lower-case identifier, so that it is the same quoted or not.
pub(crate) fn check_schema(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let valid_rest = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid_start && valid_rest && name.len() <= MAX_SCHEMA_LEN {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "postgres_schema {name:?} must be 1 to {MAX_SCHEMA_LEN} characters of a-z, 0-9 and _, \
             not starting with a digit"
        )))
    }
}

impl Sql {
    pub(crate) fn new(schema_name: &str) -> Result<Self> {
        check_schema(schema_name)?;
        let schema = format!("\"{schema_name}\"");
        let put = |template: &str| template.replace("{s}", &schema);
        Ok(Self {
            create: put(include_str!("sql/schema.sql")),
            clock_stop: put(include_str!("sql/clock_stop.sql")),
            lock: put(include_str!("sql/lock.sql")),
            write: put(include_str!("sql/write.sql")),
            compact: put(include_str!("sql/compact.sql")),
            list_records: put(
                "SELECT digest, value FROM {s}.records WHERE digest > $1 ORDER BY digest LIMIT $2",
            ),
            now: put("SELECT {s}.now_ns()"),
            schema,
            schema_name: schema_name.to_string(),
        })
    }

    /// `template` with the schema put in (for statements built at run time).
    pub(crate) fn put(&self, template: &str) -> String {
        template.replace("{s}", &self.schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_schema_names() {
        for good in ["tollgate", "_x", "t_1", &"a".repeat(63)] {
            assert!(check_schema(good).is_ok(), "{good}");
        }
        for bad in ["", "1a", "Tollgate", "a-b", "a\"b", "a b", &"a".repeat(64)] {
            assert!(
                matches!(check_schema(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_statement_names_the_schema_quoted() {
        let sql = Sql::new("orders_idem").unwrap();
        for statement in [&sql.create, &sql.lock, &sql.write, &sql.compact] {
            assert!(statement.contains("\"orders_idem\"."));
            assert!(!statement.contains("{s}"));
        }
    }
}
