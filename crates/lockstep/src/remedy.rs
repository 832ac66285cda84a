//! What a human can do about an error, as data that each front end words
//! with its own commands.

use std::fmt;

use crate::version::Version;

/// What a human can do about an error, as data. The library names the
/// remedy; whoever shows it to a human words it with the commands that
/// human has (the CLI its commands and flags, an embedder its own). The
/// `Display` form words it in terms of this library's API.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Remedy {
    /// Something to do that needs no command: edit a file, fix a password.
    Text(String),
    /// The migrations directory does not exist: create it, or name another.
    CreateMigrations,
    /// Write the database URL in a form lockstep reads.
    FixUrl,
    /// The target is no migration's version: list the versions.
    ListVersions,
    /// The target is not applied: list the applied versions.
    ListApplied,
    /// The named migration is not dirty: list the dirty ones.
    ListDirty,
    /// An applied file changed: restore it, or accept its new checksum
    /// (which does not run the migration again).
    RestoreOrAcceptChecksums,
    /// An applied file is gone: restore it, or forget its history row.
    RestoreOrForget,
    /// A migration that ran outside a transaction did not finish, or was not
    /// recorded: repair the database by hand, then mark the migration
    /// applied or forget it.
    ResolveDirty {
        /// The migration's version.
        version: Version,
        /// How far it got, when the run saw it fail.
        progress: Option<DirtyDetail>,
    },
    /// A pending migration is older than the newest applied one: give it a
    /// newer version, or allow out-of-order runs.
    RenumberOrAllowOutOfOrder,
    /// A single-transaction run cannot include a no-transaction migration:
    /// stop before it, or run each migration in its own transaction.
    SplitSingleTransaction,
    /// The lock is held: see who holds it.
    SeeLockHolder {
        /// The holder looks dead: releasing the lock by force is safe (the
        /// next run would take it over anyway).
        looks_dead: bool,
        /// Waiting longer may help.
        wait_longer: bool,
    },
    /// A transaction outside lockstep holds what the lock needs: find it and
    /// end it, then run again.
    EndForeignTransaction,
    /// A migration's statement gave up waiting for a lock that another
    /// session holds: end that session's transaction (the statements that
    /// would, for a human to judge; lockstep never runs them), or let the
    /// migration wait longer; then run again.
    EndBlocker {
        /// `SELECT pg_terminate_backend(4242)`, `KILL 17`: one per blocker
        /// seen.
        terminate: Vec<String>,
    },
    /// A statement that gave up left something lockstep could not undo:
    /// run these statements, then forget the migration's `started` row.
    UndoLeftover {
        /// The migration's version.
        version: Version,
        /// The SQL that undoes what is left.
        statements: Vec<String>,
    },
    /// The lock was taken over or released by force: read the lock's log to
    /// see who, and the status for what is applied.
    SeeLockLog,
    /// The connection was lost while a migration committed: it committed with
    /// its history row or not at all; read the status, then run again.
    CheckStatusThenRunAgain,
    /// Another connection kept SQLite locked past the busy timeout, and the
    /// migration was rolled back: find it, then run again.
    FindBusyHolderThenRunAgain,
    /// The statement cannot run inside a transaction: mark the section
    /// `-- lockstep:no-transaction`.
    UseNoTransaction,
    /// The server takes no writes (read-only, or a replica): connect to the
    /// primary.
    UsePrimary,
    /// The history table's name is taken: name another, or the one given.
    ChooseHistoryTable {
        /// The name that would work, when there is a likely one.
        suggestion: Option<String>,
    },
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remedy::Text(text) => f.write_str(text),
            Remedy::CreateMigrations => f.write_str("create the migrations directory, or load another"),
            // No `USER:PASSWORD@` in it: the redaction of every error
            // would hide its middle.
            Remedy::FixUrl => f.write_str("use `sqlite://FILE`, `postgres://USER@HOST:PORT/DATABASE` or `mysql://USER@HOST:PORT/DATABASE` (a password follows the user, after a colon)"),
            Remedy::ListVersions => f.write_str("list the versions with `Migrator::validate`"),
            Remedy::ListApplied => f.write_str("list the applied versions with `Migrator::history`"),
            Remedy::ListDirty => f.write_str("list the dirty migrations with `Migrator::history`"),
            Remedy::RestoreOrAcceptChecksums => f.write_str("restore the applied file, or call `Migrator::fix_checksums` if the change was intended (it does not re-run the migration)"),
            Remedy::RestoreOrForget => f.write_str("restore the file, or call `Migrator::fix_missing` to forget its history row"),
            Remedy::ResolveDirty { version, .. } => write!(f, "repair the database by hand, then call `Migrator::fix_dirty` for {version} with `DirtyResolution::Applied` or `Forget`"),
            Remedy::RenumberOrAllowOutOfOrder => f.write_str("give it a version newer than the newest applied one, or set `UpgradeOptions::allow_out_of_order`"),
            Remedy::SplitSingleTransaction => f.write_str("apply up to the version before it, or run without `UpgradeOptions::single_transaction`"),
            Remedy::SeeLockHolder { looks_dead: true, .. } => f.write_str("the holder looks dead: `Migrator::force_release` frees the lock (the next run would take it over anyway)"),
            Remedy::SeeLockHolder { .. } => f.write_str("see the holder with `Migrator::lock_info`, or wait longer"),
            Remedy::EndForeignTransaction => f.write_str("a transaction outside lockstep (another tool, a long-running session, a stopped process) holds what the lock needs: find it and end it, then run again"),
            Remedy::EndBlocker { terminate } if terminate.is_empty() => f.write_str("another session holds a lock the migration needs: find it (a long transaction, a session idle in transaction) and end its transaction, or raise the migration's lock timeout; then run again"),
            Remedy::EndBlocker { terminate } => write!(f, "the session that holds it must end its transaction first; if you judge it safe, end it with `{}` (lockstep never does); or raise the migration's lock timeout; then run again", terminate.join("`, `")),
            Remedy::UndoLeftover { version, statements } => write!(f, "undo what the statement left with `{}`, then call `Migrator::fix_dirty` for {version} with `DirtyResolution::Forget`, and run again", statements.join(" ")),
            Remedy::SeeLockLog => f.write_str("another run took the lock over (or it was released by force): see who in `Migrator::lock_log`"),
            Remedy::CheckStatusThenRunAgain => f.write_str("the connection to the database was lost: the migration committed with its history row, or not at all; read `Migrator::history` to see which, then run again"),
            Remedy::FindBusyHolderThenRunAgain => f.write_str("another connection kept the database locked past the 5 s busy timeout, and the migration was rolled back: find what holds it (a long transaction, a stopped process), then run again"),
            Remedy::UseNoTransaction => f.write_str("this statement cannot run inside a transaction: put `-- lockstep:no-transaction` in the section"),
            Remedy::UsePrimary => f.write_str("the server takes no writes (read-only, or a replica): connect to the primary, or lift `read_only` if this server is meant to be written"),
            Remedy::ChooseHistoryTable { suggestion: Some(name) } => write!(f, "if that table is lockstep's history, set `Options::history_table` to `{name}`"),
            Remedy::ChooseHistoryTable { suggestion: None } => f.write_str("set `Options::history_table` to a name lockstep can own"),
        }
    }
}

/// How far a failed no-transaction migration got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyDetail {
    /// Statements that ran before the failing one.
    pub statements_done: usize,
    /// Statements in the section.
    pub statements_total: usize,
}
