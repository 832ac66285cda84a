//! Command-line arguments, parsed as they are given. `settings` merges them
//! with the environment and the config file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Plain-SQL database migrations with a safe, observable migration lock",
    long_about = "Plain-SQL database migrations with a safe, observable migration lock.\n\n\
        The database comes from --database-url, then LOCKSTEP_DATABASE_URL, then DATABASE_URL, \
        then `database_url` in lockstep.toml.\n\n\
        Exit codes: 0 success; 1 a migration or database operation failed; 2 usage, configuration \
        or migration-file error; 3 the migration lock was not acquired; 4 refused (drift, dirty, \
        missing rollback section, or `status --check` found work); 5 the migration lock was lost \
        during the run; 130/143 interrupted by SIGINT/SIGTERM.",
    after_help = "Run `lockstep init` to start, then `lockstep new NAME` and `lockstep upgrade`."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Database URL: sqlite://FILE or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE
    #[arg(short = 'd', long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Directory of migration files [default: migrations]
    #[arg(short = 'm', long, global = true, value_name = "DIR")]
    pub migrations: Option<PathBuf>,

    /// Config file [default: ./lockstep.toml, when it exists]
    #[arg(short = 'c', long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print one JSON document on stdout (see docs/json.md)
    #[arg(long, global = true)]
    pub json: bool,

    /// Print only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Print more about what is happening
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// When to color output (NO_COLOR turns `auto` off)
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,

    /// Name this executor (a CI job, a pod) in the lock and history [env: LOCKSTEP_OWNER] [default: <host>-<pid>-<random hex>]
    #[arg(long, global = true, value_name = "NAME")]
    pub owner: Option<String>,
}

/// How a command that writes takes the migration lock.
#[derive(Debug, Args, Default)]
pub struct LockArgs {
    /// Wait at most this long for the lock, e.g. 30s, 5m [config: [lock] timeout] [default: 5m]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_wait)]
    pub lock_timeout: Option<std::time::Duration>,

    /// Fail at once (exit 3) when another run holds the lock
    #[arg(long, global = true, conflicts_with = "lock_timeout")]
    pub no_wait: bool,

    /// Run WITHOUT the migration lock: nothing then stops a concurrent run from applying the same migrations
    #[arg(long, global = true, conflicts_with_all = ["lock_timeout", "no_wait"])]
    pub no_lock: bool,
}

/// How a command that runs migrations bounds their statements' waits for
/// table locks.
#[derive(Debug, Args, Default)]
pub struct StatementArgs {
    /// Let each migration statement wait at most this long for a table lock, then roll back and retry; 0: no bound [config: [statements] lock_timeout] [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = lockstep::parse_duration)]
    pub statement_lock_timeout: Option<std::time::Duration>,

    /// Let each migration statement run at most this long; 0: no bound [config: [statements] timeout] [default: 0]
    #[arg(long, value_name = "DURATION", value_parser = lockstep::parse_duration)]
    pub statement_timeout: Option<std::time::Duration>,

    /// Try a migration that gave up waiting for a table lock again at most this many times [config: [statements] lock_retries] [default: 10]
    #[arg(long, value_name = "N")]
    pub lock_retries: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create lockstep.toml and the migrations directory
    Init,

    /// Create the next migration file
    New(NewArgs),

    /// Apply pending migrations
    #[command(visible_aliases = ["migrate", "up"])]
    Upgrade(UpgradeArgs),

    /// Revert applied migrations (the newest one by default)
    #[command(visible_alias = "down")]
    Rollback(RollbackArgs),

    /// Show every migration and its state
    Status(StatusArgs),

    /// Show the applied migrations, in order
    History,

    /// Show the newest applied migration
    Current,

    /// Parse every migration file and compare checksums with the history
    Validate,

    /// Repair the history table after intended edits or interruptions
    Fix(FixArgs),

    /// Record the current checksums of applied migrations whose files were edited: `fix checksums`, in Flyway's and jetbase's word
    Repair(RepairArgs),

    /// Start managing a database that already has its schema: record the migrations up to VERSION as applied, without running them
    Baseline(BaselineArgs),

    /// Take over another tool's history: record what it applied as applied, leaving its table as it is
    Import(ImportArgs),

    /// Inspect or release the migration lock
    #[command(subcommand)]
    Lock(LockCommand),

    /// Create or drop the database the URL names
    #[command(subcommand)]
    Database(DatabaseCommand),

    /// Wait until the database server accepts connections: the first step of a container's start
    Wait(WaitArgs),

    /// Print a shell completion script, e.g. `lockstep completions bash > /etc/bash_completion.d/lockstep`
    Completions(CompletionsArgs),

    /// Print the manual page (`lockstep man | man -l -`), or a command's (`lockstep man upgrade`); `--dir DIR` writes them all
    Man(ManArgs),

    #[command(name = "lock-status", alias = "lock:status", hide = true)]
    LockStatus(LockStatusArgs),

    #[command(name = "lock-release", aliases = ["lock:release", "unlock"], hide = true)]
    LockRelease(LockReleaseArgs),

    #[command(name = "lock-log", alias = "lock:log", hide = true)]
    LockLog(LockLogArgs),
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Show who holds the lock: UNLOCKED, LOCKED or STALE (aliases: lock-status, lock:status)
    Status(LockStatusArgs),

    /// Free the lock; a live holder stops at its next migration with exit 5 (also `lockstep unlock`, lock-release, lock:release)
    #[command(alias = "unlock")]
    Release(LockReleaseArgs),

    /// Show the lock's audit log, newest first
    Log(LockLogArgs),
}

#[derive(Debug, Args)]
pub struct LockStatusArgs {
    /// Exit 3 when the lock is held (for health checks)
    #[arg(long)]
    pub check: bool,

    /// Output format; `prometheus` prints metrics for a node-exporter textfile
    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Text,
    Prometheus,
}

#[derive(Debug, Args)]
pub struct LockReleaseArgs {
    /// Release even though the holder looks alive
    #[arg(long)]
    pub force: bool,

    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Wait at most this long for a running migration of the holder to commit [default: the lock timeout]
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub lock_timeout: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct LockLogArgs {
    /// How many events to show
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub limit: u64,
}

#[derive(Debug, Args)]
pub struct FixArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    #[command(subcommand)]
    pub command: FixCommand,
}

#[derive(Debug, Subcommand)]
pub enum DatabaseCommand {
    /// Create the database (nothing when it exists); on SQLite, the file
    Create,

    /// Drop the database and everything in it (asks first on a terminal); on SQLite, the file
    Drop(DropArgs),
}

#[derive(Debug, Args)]
pub struct DropArgs {
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Give up after this long, e.g. 30s, 2m
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = lockstep::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// A command, e.g. `upgrade` or `lock status`
    pub command: Vec<String>,

    /// Write `lockstep.1` and one page per command into this directory
    #[arg(long, value_name = "DIR", conflicts_with = "command")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Print what would change and change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The migration's name: lowercase letters, digits and `_`
    pub name: String,
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Apply up to and including this version
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub to: Option<lockstep::Version>,

    /// Apply at most this many migrations
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Apply all pending migrations in one transaction
    #[arg(long)]
    pub single_transaction: bool,

    /// Apply pending migrations older than the newest applied one
    #[arg(long)]
    pub allow_out_of_order: bool,

    #[command(flatten)]
    pub lock: LockArgs,

    #[command(flatten)]
    pub statements: StatementArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Revert every migration newer than this version (it stays applied)
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub to: Option<lockstep::Version>,

    /// Revert this many migrations [default: 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Revert every applied migration (asks first on a terminal)
    #[arg(long, conflicts_with_all = ["to", "count"])]
    pub all: bool,

    /// With --all: do not ask for confirmation
    #[arg(long, short = 'y', requires = "all")]
    pub yes: bool,

    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub lock: LockArgs,

    #[command(flatten)]
    pub statements: StatementArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Exit 4 when any migration is not applied
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Subcommand)]
pub enum FixCommand {
    /// Record the current checksums of applied migrations whose files were edited
    Checksums(DryRun),

    /// Forget history rows whose migration files are gone
    Missing(DryRun),

    /// Resolve a no-transaction migration that was interrupted
    Dirty(FixDirtyArgs),
}

#[derive(Debug, Args)]
pub struct DryRun {
    /// Print what would change and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The tool whose history table to read: golang-migrate, dbmate, goose, sqlx, diesel, flyway, jetbase, dbwarden, yoyo
    #[arg(value_parser = parse_tool)]
    pub tool: lockstep::Tool,

    /// Print what would be recorded and change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub lock: LockArgs,
}

fn parse_tool(name: &str) -> Result<lockstep::Tool, String> {
    lockstep::Tool::parse(name).ok_or_else(|| {
        format!(
            "unknown tool `{name}`; use one of {}",
            lockstep::Tool::NAMES.join(", ")
        )
    })
}

#[derive(Debug, Args)]
pub struct BaselineArgs {
    /// The newest migration the database already has
    #[arg(value_parser = parse_version)]
    pub version: lockstep::Version,

    /// Print what would be recorded and change nothing
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("resolution").required(true))]
pub struct FixDirtyArgs {
    /// The dirty migration's version
    #[arg(value_parser = parse_version)]
    pub version: lockstep::Version,

    /// Its effects are complete: record it as applied
    #[arg(long, group = "resolution")]
    pub applied: bool,

    /// Its effects are undone: forget it, so that `upgrade` runs it again
    #[arg(long, group = "resolution")]
    pub forget: bool,

    /// Print what would change and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_version(s: &str) -> Result<lockstep::Version, String> {
    lockstep::Migration::parse_version(s)
}

/// A wait for the lock: a duration of at most 24h.
fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    let wait = lockstep::parse_duration(s)?;
    lockstep::LockOptions::check_timeout(wait).map(|()| wait)
}

impl Command {
    /// The command's name, as JSON documents report it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Init => "init",
            Command::New(_) => "new",
            Command::Upgrade(_) => "upgrade",
            Command::Rollback(_) => "rollback",
            Command::Status(_) => "status",
            Command::History => "history",
            Command::Current => "current",
            Command::Baseline(_) => "baseline",
            Command::Import(_) => "import",
            Command::Validate => "validate",
            Command::Fix(f) => match f.command {
                FixCommand::Checksums(_) => "fix checksums",
                FixCommand::Missing(_) => "fix missing",
                FixCommand::Dirty(_) => "fix dirty",
            },
            Command::Repair(_) => "repair",
            Command::Database(DatabaseCommand::Create) => "database create",
            Command::Database(DatabaseCommand::Drop(_)) => "database drop",
            Command::Wait(_) => "wait",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
            Command::Lock(LockCommand::Status(_)) | Command::LockStatus(_) => "lock status",
            Command::Lock(LockCommand::Release(_)) | Command::LockRelease(_) => "lock release",
            Command::Lock(LockCommand::Log(_)) | Command::LockLog(_) => "lock log",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits() {
        assert!(parse_wait("24h").is_ok());
        assert!(parse_wait("24h1s").is_err());
    }
}
