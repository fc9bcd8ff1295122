//! `tollgate`: look inside a store, compact it, check it (feature `cli`).
//!
//! ```text
//! tollgate stats    STORE                      records by state, counters, file size
//! tollgate inspect  STORE --scope S --key K    one record, found by hashing the key as the store does
//! tollgate list     STORE [--limit N] [--json] records by digest prefix: state, attempts, expiry
//! tollgate compact  STORE                      remove expired records and idle counters now
//! tollgate check    STORE                      verify every page checksum (redb's integrity check)
//! tollgate reclaim  STORE                      rewrite the file to hold only live data
//! ```
//!
//! `stats`, `inspect` and `list` only read: a store file is opened read-only
//! (`StoreBuilder::open_read_only`: no epoch bumped, nothing written, byte for byte). `compact`,
//! `check` and `reclaim` write.
//!
//! `stats`, `inspect`, `list` and `compact` also work on PostgreSQL: `--postgres CONN
//! [--schema S]` instead of `STORE` (with the `postgres` feature). A schema that does not exist is
//! an error that names it (nothing is created); the command joins the schema as a node of its own
//! (a random id, so no epoch of a server changes) while servers run.
//!
//! A store file must not be open for writing elsewhere (a running server holds it): every command
//! says so instead of waiting. Output into a pipe closed early (`| head`) ends the program
//! quietly. Raw keys are never printed: the store holds only their digests.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tollgate::idempotency::{IdempotencyKey, RecordInfo, RecordState};
use tollgate::ratelimit::RateDurability;
use tollgate::{Error, Store};

/// Why a command stopped: a message for the operator, or its output pipe closed (`| head`),
/// which ends it quietly.
enum Failure {
    Message(String),
    ClosedPipe,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Message(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::Message(message.to_owned())
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::ClosedPipe
        } else {
            Failure::Message(format!("cannot write the output: {error}"))
        }
    }
}

/// `println!` that reports a closed pipe instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*)?
    };
}

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Inspect, compact and check tollgate store files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which store a command works on: a file, or a PostgreSQL schema.
#[derive(Args, Clone)]
struct Target {
    /// The store file.
    #[arg(required_unless_present = "postgres", conflicts_with = "postgres")]
    store: Option<PathBuf>,
    /// A PostgreSQL connection string or URL, instead of a file.
    #[arg(long, value_name = "CONN")]
    postgres: Option<String>,
    /// The PostgreSQL schema (default `tollgate`).
    #[arg(long, requires = "postgres", value_name = "S")]
    schema: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Records by state, rate counters, size, last compaction.
    Stats {
        #[command(flatten)]
        target: Target,
    },
    /// One record, found by hashing the scope and key exactly as the store does.
    Inspect {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        scope: String,
        #[arg(long)]
        key: String,
    },
    /// Records in digest order: digest prefix, state, attempts, expiry.
    List {
        #[command(flatten)]
        target: Target,
        /// The most records to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove expired records and idle rate counters now.
    Compact {
        #[command(flatten)]
        target: Target,
    },
    /// Verify every page checksum; repair what can be repaired.
    Check { store: PathBuf },
    /// Rewrite the file so that it holds only live data, and shrink it.
    Reclaim { store: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).and_then(|code| {
        std::io::stdout().flush()?;
        Ok(code)
    }) {
        Ok(code) => code,
        Err(Failure::ClosedPipe) => ExitCode::SUCCESS,
        Err(Failure::Message(message)) => {
            eprintln!("tollgate: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode, Failure> {
    match command {
        Command::Stats { target } => stats(&target),
        Command::Inspect { target, scope, key } => inspect(&target, &scope, &key),
        Command::List {
            target,
            limit,
            json,
        } => list(&target, limit, json),
        Command::Compact { target } => compact(&target),
        Command::Check { store } => check(&store),
        Command::Reclaim { store } => reclaim(&store),
    }
}

/// Says what went wrong with the store named `shown` in words an operator can act on.
fn explain(shown: &dyn std::fmt::Display, error: &Error) -> String {
    match error {
        Error::AlreadyOpen => format!(
            "{shown} is open for writing in another process (a running server?) that does not \
             share it: stop it and try again, or open it there with open_shared, whose stores \
             this command reads while they run"
        ),
        Error::Unavailable(reason) => format!("{shown}: the database is unavailable ({reason})"),
        Error::NotAStore(reason) => format!("{shown} is not a tollgate store ({reason})"),
        Error::IncompatibleFormat { found, supported } => format!(
            "{shown} has format {found}; this tollgate reads up to {supported}: upgrade tollgate"
        ),
        Error::Corrupted(reason) => format!("{shown} is damaged: {reason}"),
        other => format!("{shown}: {other}"),
    }
}

fn must_exist(path: &Path) -> Result<(), String> {
    if path.is_file() {
        Ok(())
    } else if path.is_dir() {
        Err(format!(
            "{} is a directory: name the store file in it",
            path.display()
        ))
    } else {
        Err(format!("{}: no such store file", path.display()))
    }
}

/// Opens an existing store for a command that writes (no background sweeps; rate checks are not
/// needed).
fn open(path: &Path) -> Result<Store, String> {
    must_exist(path)?;
    Store::builder()
        .background_compaction(false)
        .rate_durability(RateDurability::Immediate)
        .open(path)
        .map_err(|error| explain(&path.display(), &error))
}

/// Opens an existing store for a command that only reads: nothing is written.
fn open_read_only(path: &Path) -> Result<Store, String> {
    must_exist(path)?;
    Store::builder()
        .rate_durability(RateDurability::Immediate)
        .open_read_only(path)
        .map_err(|error| explain(&path.display(), &error))
}

impl Target {
    /// How the store is named in messages.
    fn name(&self) -> String {
        match (&self.store, &self.schema) {
            (Some(path), _) => path.display().to_string(),
            (None, Some(schema)) => format!("PostgreSQL schema {schema}"),
            (None, None) => "PostgreSQL schema tollgate".to_string(),
        }
    }

    /// Opens the store for a command (no background sweeps), read-only for one that only reads.
    fn open(&self, reads_only: bool) -> Result<Store, String> {
        match (&self.store, &self.postgres) {
            (Some(path), _) if reads_only => open_read_only(path),
            (Some(path), _) => open(path),
            (None, Some(conn)) => open_postgres(conn, self.schema.as_deref(), &self.name()),
            (None, None) => Err("name a store file, or --postgres CONN".into()),
        }
    }
}

#[cfg(feature = "postgres")]
fn open_postgres(conn: &str, schema: Option<&str>, name: &str) -> Result<Store, String> {
    // A schema that does not exist is an error naming it, never a new schema.
    let mut builder = Store::builder()
        .background_compaction(false)
        .postgres_create_schema(false);
    if let Some(schema) = schema {
        builder = builder.postgres_schema(schema);
    }
    builder
        .open_postgres(conn)
        .map_err(|error| explain(&name, &error))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(_conn: &str, _schema: Option<&str>, _name: &str) -> Result<Store, String> {
    Err("this tollgate was built without the postgres feature".into())
}

fn stats(target: &Target) -> Result<ExitCode, Failure> {
    let name = target.name();
    let store = target.open(true)?;
    let stats = store.stats().map_err(|e| explain(&name, &e))?;
    say!("store          {name} ({})", store.engine_name());
    say!("size           {} bytes", stats.file_bytes);
    say!("running        {}", stats.running);
    say!("completed      {}", stats.completed);
    say!("failed         {}", stats.failed);
    say!("rate counters  {}", stats.rate_states);
    if target.store.is_some() {
        say!(
            "epoch          {} (grows with every open for writing)",
            store.epoch()
        );
    }
    store.close().map_err(|e| explain(&name, &e))?;
    Ok(ExitCode::SUCCESS)
}

fn state_name(state: RecordState) -> &'static str {
    match state {
        RecordState::Running => "running",
        RecordState::Completed => "completed",
        RecordState::Failed => "failed",
    }
}

/// "in 3h02m" or "4m10s ago", relative to now.
fn relative(time: SystemTime) -> String {
    let format = |d: Duration| {
        let s = d.as_secs();
        match s {
            0..60 => format!("{s}s"),
            60..3600 => format!("{}m{:02}s", s / 60, s % 60),
            3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
            _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
        }
    };
    match time.duration_since(SystemTime::now()) {
        Ok(ahead) => format!("in {}", format(ahead)),
        Err(behind) => format!("{} ago", format(behind.duration())),
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn inspect(target: &Target, scope: &str, key: &str) -> Result<ExitCode, Failure> {
    let key = IdempotencyKey::new(scope, key).map_err(|e| format!("bad key: {e}"))?;
    let name = target.name();
    let store = target.open(true)?;
    let found = store.get(&key).map_err(|e| explain(&name, &e))?;
    say!("digest   {}", key.digest());
    match found {
        None => say!("state    absent (never used, expired, or released)"),
        Some(info) => print_info(&info)?,
    }
    store.close().map_err(|e| explain(&name, &e))?;
    Ok(ExitCode::SUCCESS)
}

fn print_info(info: &RecordInfo) -> Result<(), Failure> {
    say!("state    {}", state_name(info.state));
    say!("attempts {}", info.attempts);
    say!(
        "created  {} ({})",
        unix_seconds(info.created_at),
        relative(info.created_at)
    );
    say!(
        "expires  {} ({})",
        unix_seconds(info.expires_at),
        relative(info.expires_at)
    );
    if let Some(lease) = info.lease_expires_at {
        say!(
            "lease    until {} ({})",
            unix_seconds(lease),
            relative(lease)
        );
    }
    Ok(())
}

fn list(target: &Target, limit: usize, json: bool) -> Result<ExitCode, Failure> {
    let name = target.name();
    let store = target.open(true)?;
    let mut after = None;
    let mut printed = 0;
    if !json {
        say!(
            "{:<18} {:<10} {:>8}  expires",
            "digest",
            "state",
            "attempts"
        );
    }
    while printed < limit {
        let page = store
            .list_records(after.as_ref(), (limit - printed).min(1000))
            .map_err(|e| explain(&name, &e))?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(*last);
        for (digest, info) in page {
            printed += 1;
            let prefix = digest.short_hex(8);
            match (info, json) {
                (Ok(info), true) => say!(
                    "{}",
                    serde_json::json!({
                        "digest_prefix": prefix,
                        "state": state_name(info.state),
                        "attempts": info.attempts,
                        "created_at": unix_seconds(info.created_at),
                        "expires_at": unix_seconds(info.expires_at),
                        "lease_expires_at": info.lease_expires_at.map(unix_seconds),
                    })
                ),
                (Ok(info), false) => say!(
                    "{prefix:<18} {:<10} {:>8}  {}",
                    state_name(info.state),
                    info.attempts,
                    relative(info.expires_at)
                ),
                (Err(error), true) => say!(
                    "{}",
                    serde_json::json!({"digest_prefix": prefix, "error": error.to_string()})
                ),
                (Err(error), false) => say!("{prefix:<18} undecodable: {error}"),
            }
        }
    }
    store.close().map_err(|e| explain(&name, &e))?;
    Ok(ExitCode::SUCCESS)
}

fn compact(target: &Target) -> Result<ExitCode, Failure> {
    let name = target.name();
    let store = target.open(false)?;
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let report = store
        .compact_with_progress(|so_far| {
            bar.set_message(format!(
                "removed {} records, {} rate counters",
                so_far.removed_records, so_far.removed_rate_states
            ));
            bar.tick();
        })
        .map_err(|e| explain(&name, &e))?;
    bar.finish_and_clear();
    say!(
        "removed {} expired records and {} idle rate counters in {} steps ({:.1?})",
        report.removed_records,
        report.removed_rate_states,
        report.batches,
        report.elapsed
    );
    store.close().map_err(|e| explain(&name, &e))?;
    Ok(ExitCode::SUCCESS)
}

fn check(path: &Path) -> Result<ExitCode, Failure> {
    must_exist(path)?;
    match Store::check_integrity(path) {
        Ok(true) => {
            say!("{}: intact", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(false) => {
            say!("{}: damaged, and repaired", path.display());
            Ok(ExitCode::from(3))
        }
        Err(error) => Err(explain(&path.display(), &error).into()),
    }
}

fn reclaim(path: &Path) -> Result<ExitCode, Failure> {
    must_exist(path)?;
    let reclaimed = Store::reclaim_space(path).map_err(|e| explain(&path.display(), &e))?;
    say!(
        "{}: {} bytes -> {} bytes",
        path.display(),
        reclaimed.before_bytes,
        reclaimed.after_bytes
    );
    Ok(ExitCode::SUCCESS)
}
