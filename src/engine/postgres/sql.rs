//! tollgate's SQL, one file per statement family under `sql/`, with the schema's name put in.
//!
//! Each `.sql` file opens with what it reads, what it locks and in what order; the Rust side
//! (`batch/`, `node.rs`, `maintenance.rs`) only binds parameters and reads results. The writer's
//! batch is `lock.sql` and `write.sql` (a lone caller's change, one row, `lone.sql`), the schema `schema.sql` and `clock_stop.sql`, a node's
//! life `node.sql`, the reader connections' jobs `jobs.sql` and `compact.sql`. Only session
//! settings stay in Rust (a transaction's `statement_timeout`, `SELECT 1` as a probe). The schema
//! name is checked to be a plain identifier before it is put in, and is always quoted.

use crate::error::{Error, Result};

/// Longest schema name (PostgreSQL's identifier limit).
const MAX_SCHEMA_LEN: usize = 63;

/// Every statement, for one schema.
#[derive(Debug)]
pub(crate) struct Sql {
    /// The schema's name as given (for advisory-lock keys).
    pub schema_name: String,
    pub create: String,
    pub clock_stop: String,
    /// `lock.sql` in its three versions, by [`Tables`].
    pub lock: [String; 3],
    /// `write.sql` in its three versions, by [`Tables`].
    pub write: [String; 3],
    /// `lone.sql`: a lone caller's one round trip.
    pub lone: LoneStatements,
    pub compact: String,
    /// `node.sql`.
    pub node: NodeStatements,
    /// `jobs.sql`.
    pub jobs: JobStatements,
}

/// The statements of `node.sql`, by name.
#[derive(Debug)]
pub(crate) struct NodeStatements {
    pub lock_schema: String,
    pub has_schema: String,
    pub has_clock_stop: String,
    pub read_format: String,
    pub write_format: String,
    pub put_secret: String,
    pub read_secret: String,
    pub try_node_lock: String,
    pub bump_epoch: String,
    pub fold_counts: String,
}

/// The statements of `lone.sql`: for records and for counters, one per way of writing the row
/// (create, update, delete: the guard and the way's part put in the table's statement).
#[derive(Debug)]
pub(crate) struct LoneStatements {
    pub record: [String; 3],
    pub counter: [String; 3],
}

impl LoneStatements {
    fn from(mut file: Named) -> Result<Self> {
        let guard = file.take("guard")?;
        let mut each = |table: &str| -> Result<[String; 3]> {
            let statement = file.take(table)?.replace("{guard}", &guard);
            let mut way = |name: &str| -> Result<String> {
                Ok(statement.replace("{write}", &file.take(&format!("{table}_{name}"))?))
            };
            Ok([way("create")?, way("update")?, way("delete")?])
        };
        let statements = Self {
            record: each("record")?,
            counter: each("counter")?,
        };
        file.finish()?;
        Ok(statements)
    }
}

/// The statements of `jobs.sql`, by name.
#[derive(Debug)]
pub(crate) struct JobStatements {
    pub now: String,
    pub read_record: String,
    pub list_records: String,
    pub peek_counters: String,
    pub count_removed: String,
    pub counts: String,
    pub bulk_lock: String,
    pub bulk_write: String,
    pub bulk_count: String,
    /// Test support (read in every build, so that the file's names are checked in every build).
    #[cfg_attr(not(any(test, feature = "test-support")), allow(dead_code))]
    pub stop_clock: String,
    #[cfg_attr(not(any(test, feature = "test-support")), allow(dead_code))]
    pub advance_clock: String,
}

/// A file of named statements (each opens with `-- statement: NAME`), taken one by one.
struct Named {
    file: &'static str,
    statements: Vec<(String, String)>,
}

impl Named {
    /// Splits `text` (the file `file`, the schema put in) at its `-- statement:` lines.
    fn parse(file: &'static str, text: &str) -> Named {
        let mut statements: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("-- statement: ") {
                statements.push((name.trim().to_string(), String::new()));
            } else if let Some((_, statement)) = statements.last_mut() {
                statement.push_str(line);
                statement.push('\n');
            }
        }
        for (_, statement) in &mut statements {
            let end = statement.trim_end().len();
            statement.truncate(end);
        }
        Named { file, statements }
    }

    /// The statement named `name`.
    fn take(&mut self, name: &str) -> Result<String> {
        let at = self
            .statements
            .iter()
            .position(|(found, _)| found == name)
            .ok_or_else(|| Error::Internal(format!("sql/{} has no statement {name}", self.file)))?;
        Ok(self.statements.swap_remove(at).1)
    }

    /// Refuses a statement nothing took (a name the Rust side does not know).
    fn finish(self) -> Result<()> {
        match self.statements.first() {
            None => Ok(()),
            Some((name, _)) => Err(Error::Internal(format!(
                "sql/{} has a statement nothing uses: {name}",
                self.file
            ))),
        }
    }
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
            lone: LoneStatements::from(Named::parse(
                "lone.sql",
                &put(include_str!("sql/lone.sql")),
            ))?,
            compact: put(include_str!("sql/compact.sql")),
            node: NodeStatements::from(Named::parse(
                "node.sql",
                &put(include_str!("sql/node.sql")),
            ))?,
            jobs: JobStatements::from(Named::parse(
                "jobs.sql",
                &put(include_str!("sql/jobs.sql")),
            ))?,
            schema_name: schema_name.to_string(),
        })
    }
}

impl NodeStatements {
    fn from(mut file: Named) -> Result<Self> {
        let statements = Self {
            lock_schema: file.take("lock_schema")?,
            has_schema: file.take("has_schema")?,
            has_clock_stop: file.take("has_clock_stop")?,
            read_format: file.take("read_format")?,
            write_format: file.take("write_format")?,
            put_secret: file.take("put_secret")?,
            read_secret: file.take("read_secret")?,
            try_node_lock: file.take("try_node_lock")?,
            bump_epoch: file.take("bump_epoch")?,
            fold_counts: file.take("fold_counts")?,
        };
        file.finish()?;
        Ok(statements)
    }
}

impl JobStatements {
    fn from(mut file: Named) -> Result<Self> {
        let statements = Self {
            now: file.take("now")?,
            read_record: file.take("read_record")?,
            list_records: file.take("list_records")?,
            peek_counters: file.take("peek_counters")?,
            count_removed: file.take("count_removed")?,
            counts: file.take("counts")?,
            bulk_lock: file.take("bulk_lock")?,
            bulk_write: file.take("bulk_write")?,
            bulk_count: file.take("bulk_count")?,
            stop_clock: file.take("stop_clock")?,
            advance_clock: file.take("advance_clock")?,
        };
        file.finish()?;
        Ok(statements)
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
        let lone = sql.lone.record.iter().chain(&sql.lone.counter);
        for statement in [&sql.create, &sql.compact]
            .into_iter()
            .chain(versions)
            .chain(lone)
        {
            assert!(!statement.contains("{write}") && !statement.contains("{guard}"));
            assert!(statement.contains("\"orders_idem\"."));
            assert!(!statement.contains("{s}"));
        }
        // The named statements that read tollgate's tables name them in the schema.
        let jobs = &sql.jobs;
        let node = &sql.node;
        for statement in [
            &jobs.now,
            &jobs.read_record,
            &jobs.list_records,
            &jobs.peek_counters,
            &jobs.count_removed,
            &jobs.counts,
            &jobs.bulk_lock,
            &jobs.bulk_write,
            &jobs.bulk_count,
            &jobs.stop_clock,
            &jobs.advance_clock,
            &node.read_format,
            &node.write_format,
            &node.put_secret,
            &node.read_secret,
            &node.bump_epoch,
            &node.fold_counts,
        ] {
            assert!(statement.contains("\"orders_idem\"."), "{statement}");
            assert!(!statement.contains("{s}"), "{statement}");
        }
    }

    #[test]
    fn named_statements_are_split_at_their_markers_and_every_one_is_taken() {
        let mut file = Named::parse(
            "x.sql",
            "-- header\n\n-- statement: a\n-- what a does\nSELECT 1\n\n-- statement: b\nSELECT\n  2\n",
        );
        assert_eq!(file.take("a").unwrap(), "-- what a does\nSELECT 1");
        assert!(matches!(file.take("c"), Err(Error::Internal(_))));
        assert!(matches!(
            Named::parse("y.sql", "-- statement: b\nSELECT 2").finish(),
            Err(Error::Internal(_))
        ));
        assert_eq!(file.take("b").unwrap(), "SELECT\n  2");
        assert!(file.finish().is_ok());
        // Every file's statements are all taken (Sql::new checks it): no name drifts.
        assert!(Sql::new("t").is_ok());
    }
}
