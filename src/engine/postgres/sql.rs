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
    /// `lock.sql` in its three versions, by [`Tables`].
    pub lock: [String; 3],
    /// `write.sql` in its three versions, by [`Tables`].
    pub write: [String; 3],
    pub compact: String,
    pub list_records: String,
    pub now: String,
}

/// The tables a write batch touches, which picks the version of its two statements: the parts
/// of `lock.sql` and `write.sql` marked for the other table (`-- records {` or `-- counters {`,
/// to `-- } else STUB`) are replaced by their stub, so that a batch neither plans nor starts
/// what it cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tables {
    Records = 0,
    Counters = 1,
    Both = 2,
}

impl Tables {
    const ALL: [Tables; 3] = [Tables::Records, Tables::Counters, Tables::Both];

    /// The version for a batch that touches records and/or counters. (A batch that touches
    /// neither, which the writer never runs, gets the whole statement.)
    pub(crate) fn of(records: bool, counters: bool) -> Tables {
        match (records, counters) {
            (true, false) => Tables::Records,
            (false, true) => Tables::Counters,
            _ => Tables::Both,
        }
    }

    /// `template` with the parts this version leaves out replaced by their stubs.
    fn version(self, template: &str) -> String {
        let keeps = |part: &str| match part {
            "records" => self != Tables::Counters,
            "counters" => self != Tables::Records,
            _ => true,
        };
        let mut out = String::with_capacity(template.len());
        // Inside a part: whether it is kept.
        let mut inside: Option<bool> = None;
        for line in template.lines() {
            let marker = line.trim_start();
            if let Some(part) = marker
                .strip_prefix("-- ")
                .and_then(|rest| rest.strip_suffix(" {"))
            {
                inside = Some(keeps(part));
            } else if let (Some(keep), Some(stub)) = (inside, marker.strip_prefix("-- } else ")) {
                if !keep {
                    out.push_str("    ");
                    out.push_str(stub);
                    out.push('\n');
                }
                inside = None;
            } else if inside != Some(false) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
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
            lock: Tables::ALL.map(|tables| put(&tables.version(include_str!("sql/lock.sql")))),
            write: Tables::ALL.map(|tables| put(&tables.version(include_str!("sql/write.sql")))),
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
    fn each_version_leaves_out_the_other_tables_parts() {
        let sql = Sql::new("t").unwrap();
        for statement in [&sql.lock, &sql.write] {
            let [records, counters, both] = statement;
            assert!(records.contains("\"t\".records") && !records.contains("\"t\".rates"));
            assert!(counters.contains("\"t\".rates") && !counters.contains("\"t\".records"));
            assert!(both.contains("\"t\".rates") && both.contains("\"t\".records"));
            for version in statement {
                assert!(
                    !version.contains(" {\n") && !version.contains("-- }"),
                    "{version}"
                );
            }
        }
        assert!(sql.lock[0].contains("NULL::bytea AS key, NULL::bytea AS value WHERE false"));
        let stubs = |version: &str| {
            version
                .lines()
                .filter(|l| *l == "    SELECT WHERE false")
                .count()
        };
        assert_eq!(stubs(&sql.write[0]), 3);
        assert_eq!(stubs(&sql.write[1]), 3);
        assert_eq!(stubs(&sql.write[2]), 0);
        assert_eq!(Tables::of(true, false), Tables::Records);
        assert_eq!(Tables::of(false, true), Tables::Counters);
        assert_eq!(Tables::of(true, true), Tables::Both);
    }

    #[test]
    fn every_statement_names_the_schema_quoted() {
        let sql = Sql::new("orders_idem").unwrap();
        let versions = sql.lock.iter().chain(&sql.write);
        for statement in [&sql.create, &sql.compact].into_iter().chain(versions) {
            assert!(statement.contains("\"orders_idem\"."));
            assert!(!statement.contains("{s}"));
        }
    }
}
