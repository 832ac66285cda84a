//! The library's error: what went wrong, named, with a hint where a human
//! must act.

use std::fmt;
use std::path::PathBuf;

use crate::plan::{Refusal, TargetError};
pub use crate::remedy::{DirtyDetail, Remedy};
use crate::source::{Named, SourceError, Step};
use crate::url::UrlError;

/// Why a connection failed, as the driver tells from the server's error
/// code or from what the socket and TLS said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// Nothing answered, the connection was cut, or the server is not
    /// ready (starting up, out of connections); on SQLite the file's
    /// directory is not there: it may pass by itself.
    Unreachable,
    /// The server refused these credentials, or TLS did (a certificate):
    /// a person must act.
    Rejected,
    /// The server has no database of the URL's name.
    NoDatabase,
    /// Not a server's: a SQLite file that cannot be opened, a TLS file
    /// that cannot be read.
    Local,
}

/// Broad classes of failure; the CLI maps each to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A migration or a database operation failed (exit 1).
    Failed,
    /// Bad usage, configuration or migration file (exit 2).
    Usage,
    /// Refused: drift, dirty, out of order, missing down section (exit 4).
    Refused,
    /// The migration lock was not acquired (exit 3).
    LockBusy,
    /// The migration lock was lost during the run (exit 5).
    LockLost,
    /// The run was cancelled (by a signal, in the CLI: exit 130 or 143).
    Cancelled,
}

/// A message from the database engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbMessage {
    /// The engine's message.
    pub message: String,
    /// SQLSTATE on PostgreSQL, the extended result code name on SQLite.
    pub code: Option<String>,
    /// The engine's detail line.
    pub detail: Option<String>,
    /// The engine's hint.
    pub hint: Option<String>,
    /// Byte offset into the SQL that was sent, where the engine gives one.
    pub position: Option<usize>,
    /// What kind of failure it is, as the engine that sent it decides.
    pub class: DbClass,
}

/// What kind of failure an engine's message reports. Each engine decides it
/// from its own codes and texts; the rest of lockstep reads only this.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DbClass {
    /// Anything else.
    #[default]
    Other,
    /// A serialization failure or deadlock: the transaction was rolled back
    /// whole, and running it again is safe.
    Retryable,
    /// Another connection kept the database locked past the busy timeout
    /// (SQLite).
    Busy,
    /// A table the statement names does not exist.
    UndefinedTable,
    /// The connection was lost, or the server ended the session: a commit
    /// that was under way may or may not have happened.
    ConnectionLost,
    /// The statement cannot run inside a transaction.
    NeedsNoTransaction,
    /// The server takes no writes: it is read-only, or a replica.
    ReadOnly,
    /// The statement gave up waiting for a lock (PostgreSQL's
    /// `lock_timeout`, MariaDB/MySQL's lock wait timeouts): it, and its
    /// transaction, were rolled back.
    LockTimeout,
}

impl DbMessage {
    /// A message with nothing but text.
    pub fn plain(message: impl Into<String>) -> Self {
        DbMessage {
            message: message.into(),
            code: None,
            detail: None,
            hint: None,
            position: None,
            class: DbClass::Other,
        }
    }
}

impl DbMessage {
    /// A serialization failure or deadlock.
    pub(crate) fn is_retryable(&self) -> bool {
        self.class == DbClass::Retryable
    }
}

impl fmt::Display for DbMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        if let Some(detail) = &self.detail {
            write!(f, "\ndetail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\ndatabase hint: {hint}")?;
        }
        Ok(())
    }
}

/// Which way a migration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `upgrade`
    Up,
    /// `rollback`
    Down,
}

impl Direction {
    /// `upgrade` or `rollback`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "upgrade",
            Direction::Down => "rollback",
        }
    }
}

/// A migration whose SQL failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationFailure {
    /// Which way it ran.
    pub direction: Direction,
    /// The migration.
    pub migration: Named,
    /// The file holding the section that failed.
    pub path: PathBuf,
    /// Line and column in that file, where the engine gave a position.
    pub line_col: Option<(usize, usize)>,
    /// The statement that failed, where the engine gave no position but
    /// lockstep knows which statement it ran.
    pub statement: Option<FailedStatement>,
    /// The engine's message.
    pub db: DbMessage,
    /// The migrations that completed before this one, in this run.
    pub completed: Vec<Step>,
    /// A no-transaction migration that failed after some of its statements
    /// ran: it is recorded as started, and `upgrade` refuses until
    /// `fix dirty` resolves it.
    pub dirty: Option<DirtyDetail>,
    /// In `--single-transaction` mode, everything in this run was rolled
    /// back, including `completed`.
    pub all_rolled_back: bool,
    /// How many times it was tried: more than one when its statements gave
    /// up waiting for a lock and it ran again.
    pub tries: u32,
    /// What the failed statement waited for, and who held it, when it gave
    /// up waiting for a lock and lockstep saw the wait.
    pub blocked: Option<crate::waits::Blocked>,
    /// What the failed statement left that lockstep could not undo, as the
    /// SQL that undoes it (an invalid index of a `CREATE INDEX
    /// CONCURRENTLY`).
    pub leftover: Vec<String>,
}

/// The statement of a migration that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedStatement {
    /// Its place in the section, from 1.
    pub number: usize,
    /// The section's statements.
    pub total: usize,
    /// The file line it starts on.
    pub line: usize,
    /// Its first line of text.
    pub first_line: String,
}

/// Everything that can go wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A migration file is malformed.
    Source(SourceError),
    /// The database URL is malformed.
    Url(UrlError),
    /// A setting is wrong (a table name, an engine limit).
    Config {
        /// What is wrong.
        message: String,
        /// What to do.
        remedy: Option<Remedy>,
    },
    /// The target of `--to` does not exist.
    Target(TargetError),
    /// The plan was refused.
    Refused(Refusal),
    /// No connection could be made.
    Connect {
        /// The URL, without its password.
        target: String,
        /// Why.
        message: String,
        /// What to check.
        remedy: Option<Remedy>,
        /// What kind of failure, as the server's code or the socket tells.
        failure: ConnectFailure,
    },
    /// A database operation of lockstep's own failed.
    Database {
        /// What lockstep was doing, as "reading history from lockstep_history".
        context: String,
        /// The engine's message.
        db: Box<DbMessage>,
    },
    /// A migration failed.
    Migration(Box<MigrationFailure>),
    /// The lock is held by someone else, and waiting was not allowed or
    /// timed out.
    LockBusy(Box<crate::lock::LockBusy>),
    /// The lock's token stopped being this run's: it was taken over or
    /// released by force. Nothing was recorded after that.
    LockLost(Box<crate::lock::LockLost>),
    /// The run was cancelled (`CancelHandle::cancel`) and stopped between
    /// migrations, or cancelled the migration it was running.
    Cancelled {
        /// The migrations completed before it stopped.
        completed: Vec<Step>,
    },
    /// The system refused lockstep something it needs to run safely (a
    /// thread for the lock's heartbeat).
    System {
        /// What lockstep was doing.
        context: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The history table exists but was not made by lockstep, or by a newer
    /// lockstep.
    ForeignTable {
        /// The table.
        table: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    /// A serialization failure or deadlock: the transaction was rolled back
    /// whole, and running it again is safe.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, Error::Database { db, .. } if db.is_retryable())
    }

    /// A connection failed in a way that waiting may mend: the server is
    /// not up yet (refused, no socket, no answer, starting up), or has not
    /// made the database yet; not a wrong password or certificate.
    pub(crate) fn is_retryable_connect(&self) -> bool {
        matches!(
            self,
            Error::Connect {
                failure: ConnectFailure::Unreachable | ConnectFailure::NoDatabase,
                ..
            }
        )
    }

    /// Another connection kept the database locked (SQLite's busy timeout).
    pub(crate) fn is_busy(&self) -> bool {
        matches!(self, Error::Database { db, .. } if db.class == DbClass::Busy)
    }

    /// A table lockstep needs does not exist.
    pub(crate) fn is_undefined_table(&self) -> bool {
        matches!(self, Error::Database { db, .. } if db.class == DbClass::UndefinedTable)
    }

    /// The class of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Source(_) | Error::Url(_) | Error::Config { .. } | Error::Target(_) => {
                ErrorKind::Usage
            }
            Error::ForeignTable { .. } => ErrorKind::Usage,
            Error::Refused(_) => ErrorKind::Refused,
            Error::LockBusy(_) => ErrorKind::LockBusy,
            Error::LockLost(_) => ErrorKind::LockLost,
            Error::Cancelled { .. } => ErrorKind::Cancelled,
            Error::Connect { .. }
            | Error::Database { .. }
            | Error::Migration(_)
            | Error::System { .. } => ErrorKind::Failed,
        }
    }

    /// A short stable name for the error, used as `error.code` in JSON.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Source(_) => "migration_file",
            Error::Url(_) => "database_url",
            Error::Config { .. } => "config",
            Error::Target(_) => "unknown_target",
            Error::Refused(r) => match r {
                Refusal::Modified(_) => "modified",
                Refusal::Missing(_) => "missing",
                Refusal::Dirty(_) => "dirty",
                Refusal::OutOfOrder { .. } => "out_of_order",
                Refusal::NoDown(_) => "no_rollback_section",
            },
            Error::Connect { .. } => "connect",
            Error::Database { .. } => "database",
            Error::Migration(f) if f.db.class == DbClass::LockTimeout => "migration_lock_timeout",
            Error::Migration(_) => "migration_failed",
            Error::LockBusy(b) if b.no_wait => "lock_busy",
            Error::LockBusy(_) => "lock_timeout",
            Error::LockLost(_) => "lock_lost",
            Error::Cancelled { .. } => "cancelled",
            Error::ForeignTable { .. } => "foreign_table",
            Error::System { .. } => "system",
        }
    }

    /// What a human should do next, when there is something to do.
    pub fn remedy(&self) -> Option<Remedy> {
        match self {
            Error::Source(e) => e.remedy.clone(),
            // A parameter's error names the values it takes.
            Error::Url(e) if e.is_in_parameter() => None,
            Error::Url(_) => Some(Remedy::FixUrl),
            Error::Config { remedy, .. } | Error::Connect { remedy, .. } => remedy.clone(),
            Error::Target(TargetError::UnknownVersion(_)) => Some(Remedy::ListVersions),
            Error::Target(TargetError::NotApplied(_)) => Some(Remedy::ListApplied),
            Error::Target(TargetError::NotDirty(_)) => Some(Remedy::ListDirty),
            Error::Refused(r) => Some(match r {
                Refusal::Modified(_) => Remedy::RestoreOrAcceptChecksums,
                Refusal::Missing(_) => Remedy::RestoreOrForget,
                Refusal::Dirty(items) => Remedy::ResolveDirty {
                    version: items[0].version,
                    progress: None,
                },
                Refusal::OutOfOrder { .. } => Remedy::RenumberOrAllowOutOfOrder,
                Refusal::NoDown(m) => Remedy::Text(format!(
                    "add a `-- rollback` section (or a `.down.sql` file) to migration {m}, then run `lockstep fix checksums`: the rollback is part of the migration's checksum; or roll back to a version after it"
                )),
            }),
            Error::Database { db, .. } if db.class == DbClass::ReadOnly => Some(Remedy::UsePrimary),
            Error::Database { .. } | Error::Cancelled { .. } | Error::System { .. } => None,
            Error::Migration(f) => migration_remedy(f),
            Error::LockBusy(b) if b.holder.owner.is_none() && b.holder.migrating => {
                Some(Remedy::EndForeignTransaction)
            }
            Error::LockBusy(b) => Some(Remedy::SeeLockHolder {
                looks_dead: !b.holder.holder_alive() || b.holder.session_alive == Some(false),
                wait_longer: !b.no_wait,
            }),
            Error::LockLost(l) => Some(match (&l.at, l.unrecorded) {
                (Some(m), true) => Remedy::ResolveDirty {
                    version: m.version,
                    progress: None,
                },
                _ => Remedy::SeeLockLog,
            }),
            Error::ForeignTable { .. } => Some(Remedy::ChooseHistoryTable { suggestion: None }),
        }
    }
}

/// An applied migration that changed: its file and both checksums, and
/// its old name when the file was renamed.
fn changed(c: &crate::plan::Changed) -> String {
    let renamed = c
        .recorded_name
        .as_ref()
        .map(|old| format!(", renamed from `{old}`"))
        .unwrap_or_default();
    format!(
        "{} ({} is {}, history recorded {}{renamed})",
        c.migration,
        c.file.display(),
        c.checksum.short(),
        c.recorded.short()
    )
}

fn list(items: &[Named]) -> String {
    let shown: Vec<String> = items.iter().take(10).map(Named::to_string).collect();
    let mut s = shown.join(", ");
    if items.len() > 10 {
        s.push_str(&format!(" and {} more", items.len() - 10));
    }
    s
}

fn migration_remedy(f: &MigrationFailure) -> Option<Remedy> {
    if !f.leftover.is_empty() {
        return Some(Remedy::UndoLeftover {
            version: f.migration.version,
            statements: f.leftover.clone(),
        });
    }
    if let Some(dirty) = &f.dirty {
        return Some(Remedy::ResolveDirty {
            version: f.migration.version,
            progress: Some(dirty.clone()),
        });
    }
    match f.db.class {
        // A transaction cannot commit without its client, but the commit's
        // answer may be what got lost.
        DbClass::ConnectionLost => Some(Remedy::CheckStatusThenRunAgain),
        DbClass::Busy => Some(Remedy::FindBusyHolderThenRunAgain),
        DbClass::NeedsNoTransaction => Some(Remedy::UseNoTransaction),
        DbClass::ReadOnly => Some(Remedy::UsePrimary),
        DbClass::LockTimeout => Some(Remedy::EndBlocker {
            terminate: f
                .blocked
                .iter()
                .flat_map(|b| &b.blockers)
                .map(|b| b.terminate.clone())
                .collect(),
        }),
        _ => None,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Source(e) => write!(f, "{e}"),
            Error::Url(e) => write!(f, "{e}"),
            Error::Config { message, .. } => f.write_str(message),
            Error::Target(TargetError::UnknownVersion(v)) => {
                write!(f, "no migration has version {v}")
            }
            Error::Target(TargetError::NotApplied(v)) => {
                write!(
                    f,
                    "version {v} is not applied, so it cannot be the rollback target"
                )
            }
            Error::Target(TargetError::NotDirty(v)) => {
                write!(f, "migration {v} is not dirty")
            }
            Error::Refused(r) => refused(f, r),
            Error::Connect {
                target, message, ..
            } => {
                write!(f, "cannot connect to {target}: {message}")
            }
            Error::Database { context, .. } => f.write_str(context),
            Error::Migration(m) => migration_failed(f, m),
            Error::ForeignTable { table, message } => write!(f, "table {table} {message}"),
            Error::System { context, .. } => f.write_str(context),
            Error::LockBusy(b) => {
                if b.no_wait {
                    write!(f, "the migration lock is held by {}", b.holder.describe())
                } else {
                    write!(
                        f,
                        "timed out after {:.0}s waiting for the migration lock held by {}",
                        b.waited.as_secs_f64(),
                        b.holder.describe()
                    )
                }
            }
            Error::LockLost(l) => lock_lost(f, l),
            Error::Cancelled { completed } => {
                write!(f, "cancelled")?;
                if completed.is_empty() {
                    write!(f, "; nothing was applied")
                } else {
                    write!(
                        f,
                        "; the {} migration{} completed before it stayed applied",
                        completed.len(),
                        plural(completed.len())
                    )
                }
            }
        }
    }
}

/// Why a plan was refused.
fn refused(f: &mut fmt::Formatter<'_>, r: &Refusal) -> fmt::Result {
    match r {
        Refusal::Modified(items) => {
            let shown: Vec<String> = items.iter().take(10).map(changed).collect();
            write!(
                f,
                "applied migration{} changed since {} applied: {}",
                plural(items.len()),
                if items.len() == 1 {
                    "it was"
                } else {
                    "they were"
                },
                shown.join("; ")
            )?;
            if items.len() > 10 {
                write!(f, "; and {} more", items.len() - 10)?;
            }
            Ok(())
        }
        Refusal::Missing(items) => write!(
            f,
            "applied migration{} missing from the migrations directory: {}",
            plural(items.len()),
            list(items)
        ),
        Refusal::Dirty(items) => write!(
            f,
            "migration {} is dirty: it started outside a transaction and never finished",
            list(items)
        ),
        Refusal::OutOfOrder {
            pending,
            newest_applied,
        } => write!(
            f,
            "pending migration{} older than the newest applied one ({newest_applied}): {}",
            plural(pending.len()),
            list(pending)
        ),
        Refusal::NoDown(m) => write!(
            f,
            "migration {m} has no rollback section; nothing was rolled back"
        ),
    }
}

/// A migration whose SQL failed: which, where in its file, and why.
fn migration_failed(f: &mut fmt::Formatter<'_>, m: &MigrationFailure) -> fmt::Result {
    let verb = match m.direction {
        Direction::Up => "migration",
        Direction::Down => "rollback of migration",
    };
    if m.db.class == DbClass::LockTimeout {
        write!(f, "{verb} {} gave up waiting for a lock", m.migration)?;
        if m.tries > 1 {
            write!(f, " {} times", m.tries)?;
        }
    } else {
        write!(f, "{verb} {} failed", m.migration)?;
    }
    write!(f, " ({}", m.path.display())?;
    match (m.line_col, &m.statement) {
        (Some((line, col)), _) => write!(f, ":{line}:{col}")?,
        (None, Some(s)) => write!(
            f,
            ":{}, statement {} of {}: `{}`",
            s.line, s.number, s.total, s.first_line
        )?,
        (None, None) => {}
    }
    f.write_str(")")?;
    if let Some(blocked) = &m.blocked {
        write!(f, ": it waited for {blocked}")?;
    }
    Ok(())
}

/// A lock lost during the run: where the run stopped, and what stayed.
fn lock_lost(f: &mut fmt::Formatter<'_>, l: &crate::lock::LockLost) -> fmt::Result {
    write!(
        f,
        "lost the migration lock (token {} is no longer current)",
        l.token
    )?;
    match (&l.at, l.unrecorded) {
        (Some(m), true) => write!(
            f,
            "; migration {m} ran outside a transaction but could not be recorded"
        ),
        (Some(m), false) => {
            write!(f, "; stopped before migration {m}, which was not applied")
        }
        (None, _) => Ok(()),
    }?;
    if !l.completed.is_empty() {
        write!(
            f,
            "; the {} migration{} before it stayed applied",
            l.completed.len(),
            plural(l.completed.len())
        )?;
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The engine's message is the cause of a failed database operation or
/// migration; the `Display` of those errors says only what lockstep did.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Database { db, .. } => Some(db.as_ref()),
            Error::Migration(m) => Some(&m.db),
            Error::System { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl std::error::Error for DbMessage {}

impl crate::lock::StoreError for Error {
    fn is_retryable(&self) -> bool {
        Error::is_retryable(self)
    }
}

impl From<crate::lock::Stop> for Error {
    fn from(stop: crate::lock::Stop) -> Self {
        use crate::lock::Stop;
        match stop {
            Stop::Busy(busy) => Error::LockBusy(busy),
            Stop::Lost(lost) => Error::LockLost(lost),
            Stop::Cancelled => Error::Cancelled {
                completed: Vec::new(),
            },
            Stop::NoHeartbeat(source) => Error::System {
                context: "starting the lock's heartbeat thread".into(),
                source,
            },
        }
    }
}

impl From<SourceError> for Error {
    fn from(e: SourceError) -> Self {
        Error::Source(e)
    }
}

impl From<UrlError> for Error {
    fn from(e: UrlError) -> Self {
        Error::Url(e)
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::Refused(r)
    }
}

impl From<crate::plan::PlanError> for Error {
    fn from(e: crate::plan::PlanError) -> Self {
        match e {
            crate::plan::PlanError::Refused(r) => Error::Refused(r),
            crate::plan::PlanError::Target(t) => Error::Target(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_of_the_system_is_a_failure_not_bad_usage() {
        let e = Error::System {
            context: "starting the lock's heartbeat thread".into(),
            source: std::io::Error::from_raw_os_error(11),
        };
        assert_eq!((e.kind(), e.code()), (ErrorKind::Failed, "system"));
        assert_eq!(e.to_string(), "starting the lock's heartbeat thread");
        let cause = std::error::Error::source(&e).map(ToString::to_string);
        assert!(cause.is_some_and(|c| c.starts_with("Resource temporarily unavailable")));
    }
}
