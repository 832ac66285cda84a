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
        or migration-file error; 4 refused (drift, dirty, missing rollback section, or `status --check` found work).",
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

    /// Parse every migration file and compare checksums with the history
    Validate,

    /// Repair the history table after intended edits or interruptions
    #[command(visible_alias = "repair", subcommand)]
    Fix(FixCommand),
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
    pub to: Option<u64>,

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
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Revert every migration newer than this version (it stays applied)
    #[arg(long, value_name = "VERSION", value_parser = parse_version)]
    pub to: Option<u64>,

    /// Revert this many migrations [default: 1]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
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
#[command(group = clap::ArgGroup::new("resolution").required(true))]
pub struct FixDirtyArgs {
    /// The dirty migration's version
    #[arg(value_parser = parse_version)]
    pub version: u64,

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

fn parse_version(s: &str) -> Result<u64, String> {
    lockstep::source::parse_version(s)
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
            Command::Validate => "validate",
            Command::Fix(FixCommand::Checksums(_)) => "fix checksums",
            Command::Fix(FixCommand::Missing(_)) => "fix missing",
            Command::Fix(FixCommand::Dirty(_)) => "fix dirty",
        }
    }
}
