//! Database drivers: a small set of primitives that the run loop composes.
//!
//! A driver knows its engine's SQL and how to send it; it knows nothing of
//! plans, ordering or refusals. Each primitive is one transaction at most,
//! and on PostgreSQL one round trip where it can be.

use std::time::Duration;

use crate::error::{DbMessage, Error};
use crate::history::{Change, HistoryStore, TableName, FORMAT_VERSION, META_TABLE, TOOL_VERSION};
use crate::lock::{Fence, LockInfo, LockStore, LogEntry};
use crate::remedy::Remedy;
use crate::source::Section;
use crate::sql::Dialect;
use crate::url::{DatabaseUrl, Endpoint, SqliteTarget};
use crate::waits::{Finder, Limits};

mod mariadb;
pub(crate) mod postgres;
pub(crate) mod sqlite;
mod tables;

/// One migration inside a transaction: its SQL and the history change that
/// commits with it (none for a callback, which is not recorded).
pub(crate) struct TxStep<'a> {
    pub section: &'a Section,
    pub change: Option<Change<'a>>,
    /// The next migration's `started` row, when it runs outside a
    /// transaction: written with this one's change, it needs no commit of
    /// its own before that migration's first statement.
    pub ahead: Option<Change<'a>>,
}

/// What runs in one transaction: its steps, fenced when a fence is given.
#[derive(Clone, Copy)]
pub(crate) struct Transaction<'a> {
    /// A statement that commits by itself, run before the transaction
    /// begins: on MariaDB/MySQL, the last DDL statement of a migration
    /// whose statements after it run in this transaction. It goes in the
    /// round trip of the transaction's first statement where the engine
    /// can send both at once.
    pub lead: Option<&'a str>,
    pub steps: &'a [TxStep<'a>],
    pub fence: Option<&'a Fence>,
}

/// Told after each step of a transaction: its index and how long it took,
/// as its history change records it (whole milliseconds) when it records
/// one: the run prints what history keeps.
pub(crate) type Done<'a> = dyn FnMut(usize, Duration) + 'a;

/// A duration as history records it: whole milliseconds.
pub(crate) fn as_recorded(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Change<'_> {
    /// Whether the change records a duration the driver measures: an
    /// applied history row, or a repeatable migration's run, in the
    /// transaction that runs it.
    pub(crate) fn records_duration(&self) -> bool {
        matches!(
            self,
            Change::Insert(crate::history::NewRow { started: false, .. })
                | Change::Repeated {
                    duration_ms: None,
                    ..
                }
        )
    }
}

/// A step of a transaction failed.
#[derive(Debug)]
pub(crate) struct StepFailure {
    /// Which step.
    pub index: usize,
    /// The engine's message; `position` is a byte offset into the step's
    /// section when the engine pointed into it.
    pub db: Box<DbMessage>,
    /// The statement of the step's section that failed, where the engine
    /// can tell.
    pub statement: Option<StatementAt>,
    /// The fence failed: the lock's token is no longer this run's. Nothing
    /// of the transaction was committed.
    pub lost: bool,
    /// The transaction's lead statement failed: nothing after it ran.
    pub lead: bool,
}

impl StepFailure {
    /// A failure of step `index` outside its statements (beginning,
    /// recording, committing).
    pub fn at(index: usize, db: DbMessage) -> Self {
        StepFailure {
            index,
            db: Box::new(db),
            statement: None,
            lost: false,
            lead: false,
        }
    }

    /// The transaction's lead statement failed; nothing after it ran.
    pub fn lead(db: DbMessage) -> Self {
        StepFailure {
            lead: true,
            ..StepFailure::at(0, db)
        }
    }

    /// Step `index` found the lock no longer this run's; nothing of the
    /// transaction was committed.
    pub fn lost(index: usize) -> Self {
        StepFailure {
            lost: true,
            ..StepFailure::at(index, DbMessage::plain("lock lost"))
        }
    }
}

/// A statement of a section: its place among the section's statements,
/// from 0, and the byte offset of its first token in the section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatementAt {
    pub index: usize,
    pub offset: usize,
}

/// Cancels the statement a connection is running, from another thread.
pub(crate) type Canceller = Box<dyn Fn() + Send + Sync>;

/// What every engine offers: the lock's storage, the history's, and
/// running migrations.
pub(crate) trait Driver: LockStore<Error = Error> + HistoryStore<Error = Error> {
    /// The lexical rules of the engine's SQL.
    fn dialect(&self) -> Dialect;

    /// Lets go of what the connection holds in memory and can build again,
    /// until its next statement: SQLite's parsed schema, which the next
    /// statement parses anew. Nothing on PostgreSQL, whose server holds it.
    fn rest(&mut self) {}

    /// Runs the transaction's lead, then the steps in one transaction, each
    /// step's SQL followed by its history change, calling `done` after each
    /// step with its duration (on MariaDB/MySQL, the only engine with
    /// leads, the first's includes the lead's). With a fence, the
    /// transaction checks the fence's token (row-locking the lock row) and
    /// renews the lease before it commits; PostgreSQL and SQLite check it
    /// when it begins too. On failure the whole transaction is rolled back
    /// (the lead, which committed by itself, stays).
    fn run_steps(&mut self, tx: Transaction<'_>, done: &mut Done) -> Result<(), StepFailure>;

    /// Runs one statement outside any transaction.
    fn run_statement(&mut self, sql: &str) -> Result<(), DbMessage>;

    /// How long the lease of the fence's token has left by the database's
    /// clock (zero once it ran out), read without writing or locking
    /// anything; `None` when the token is no longer this run's.
    fn lease_left(&mut self, fence: &Fence) -> Result<Option<Duration>, Error>;

    /// Before each migration: the session forgets what the migrations
    /// before it changed (settings, SQLite's pragmas), so that each starts
    /// as if it ran alone, as each file does in its own `psql` or `sqlite3`
    /// run. Lockstep's own session settings stay, and the migration's
    /// statements get its `limits` (SQLite, whose only lock is the one
    /// lockstep's lock already holds, has none to bound).
    fn fresh_session(&mut self, limits: Limits) -> Result<(), Error>;

    /// The rows of a query of another tool's table, each value as text
    /// (NULL as `None`); `None` when the table does not exist. For
    /// `import`, which reads another tool's history.
    fn read_table(&mut self, sql: &str) -> Result<Option<Vec<Vec<Option<String>>>>, Error>;

    /// The invalid indexes on `table` (as a statement names it), or only the
    /// one named `index` (as a statement names it, in the table's schema):
    /// qualified and quoted, for a `DROP INDEX`. Only PostgreSQL leaves
    /// invalid indexes.
    fn invalid_indexes(
        &mut self,
        _table: &str,
        _index: Option<&str>,
    ) -> Result<Vec<String>, DbMessage> {
        Ok(Vec::new())
    }

    /// What the lock holder's session does right now, when it runs a
    /// statement and this connection can see it.
    fn holder_activity(&mut self, _scope: &str) -> Option<crate::waits::Activity> {
        None
    }

    /// What looks up who blocks this connection's statements, from another
    /// thread on a connection of its own. `None` where the engine cannot
    /// tell, or this session cannot be found from another (behind a
    /// pooler).
    fn blocked_finder(&mut self) -> Option<Finder> {
        None
    }

    /// Whether reads wait for another writer (the busy timeout) or answer
    /// at once: before this run holds the lock, waiting is the lock's
    /// business, bounded by its timeout and reported. Only SQLite, whose
    /// readers a writer can lock out, needs this.
    fn patient(&mut self, _patient: bool) {}

    /// A handle that cancels the statement this connection is running.
    fn canceller(&self) -> Canceller;

    /// Between migrations, for a holder: if a forced release is waiting
    /// for the database, let it in. Only SQLite needs this: its single write
    /// lock passes from one migration's transaction to the next without a
    /// gap that a waiting writer could use.
    fn yield_to_release(&mut self) {}
}

/// The history table as its engine names it, its default schema
/// (PostgreSQL's `public`, SQLite's `main`) left unwritten: however it is
/// spelled, one table is one lock scope.
pub(crate) fn canonical(url: &DatabaseUrl, table: &TableName) -> TableName {
    match url.endpoint() {
        Endpoint::Sqlite(_) => table.without_schema("main"),
        Endpoint::Postgres(_) => table.without_schema(postgres::DEFAULT_SCHEMA),
        Endpoint::Mysql(target) => table.without_schema(&target.database),
    }
}

/// Opens a driver for a URL. With `create` false an SQLite file that does not
/// exist is not created: it reads as a database without history.
pub(crate) fn open(
    url: &DatabaseUrl,
    table: &TableName,
    application_name: &str,
    create: bool,
) -> Result<Box<dyn Driver>, Error> {
    match url.endpoint() {
        Endpoint::Sqlite(target) => {
            if table.schema().is_some_and(|s| s != "main") {
                return Err(Error::Config {
                    message: format!(
                        "history table `{table}`: SQLite has no schema `{}`",
                        table.schema().unwrap_or_default()
                    ),
                    remedy: Some(Remedy::Text(
                        "drop the schema prefix (or use `main.`) on SQLite".into(),
                    )),
                });
            }
            let driver = match target {
                SqliteTarget::Memory => sqlite::SqliteDriver::memory(table)?,
                SqliteTarget::File(path) => sqlite::SqliteDriver::open(path, table, create)?,
            };
            Ok(Box::new(driver))
        }
        Endpoint::Mysql(target) => Ok(Box::new(mariadb::MysqlDriver::connect(target, url, table)?)),
        Endpoint::Postgres(target) if create && target.session_attrs.wants_no_writes() => {
            Err(Error::Config {
                message: format!(
                    "target_session_attrs={} asks for a server that takes no writes, and this command writes",
                    target.session_attrs.as_str()
                ),
                remedy: Some(Remedy::Text(
                    "use `target_session_attrs=read-write` (or `primary`) for commands that write; a standby serves `status`, `history` and `lock status`".into(),
                )),
            })
        }
        Endpoint::Postgres(target) => Ok(Box::new(postgres::PgDriver::connect(
            target,
            url,
            table,
            application_name,
        )?)),
    }
}

/// The lock row as the server engines read it: the same twelve columns in
/// order (token, owner, host, pid, command, tool version, the three times,
/// and the three ages), and whether the holder's session is alive.
pub(crate) fn lock_info(
    scope: &str,
    text: impl Fn(usize) -> Option<String>,
    int: impl Fn(usize) -> Option<i64>,
    session_alive: Option<bool>,
) -> LockInfo {
    LockInfo {
        scope: scope.to_string(),
        token: int(0).unwrap_or_default(),
        owner: text(1),
        host: text(2),
        pid: int(3),
        command: text(4),
        tool_version: text(5),
        acquired_at: text(6),
        heartbeat_at: text(7),
        expires_at: text(8),
        held_ms: int(9),
        heartbeat_age_ms: int(10),
        expires_in_ms: int(11),
        session_alive,
        migrating: false,
        blocker: None,
        activity: None,
    }
}

/// A row of the lock log as the server engines read it: id, time, event,
/// token, owner, host, pid, command, previous owner, detail.
pub(crate) fn log_entry(
    text: impl Fn(usize) -> Option<String>,
    int: impl Fn(usize) -> Option<i64>,
) -> LogEntry {
    LogEntry {
        id: int(0).unwrap_or_default(),
        at: text(1).unwrap_or_default(),
        event: text(2).unwrap_or_default(),
        token: int(3).unwrap_or_default(),
        owner: text(4),
        host: text(5),
        pid: int(6),
        command: text(7),
        previous_owner: text(8),
        detail: text(9),
    }
}

/// What a freed lock row clears: everything but its scope and token.
pub(crate) const FREE: &str = "owner = NULL, host = NULL, pid = NULL, command = NULL, tool_version = NULL, \
    session_pid = NULL, session_start = NULL, acquired_at = NULL, heartbeat_at = NULL, expires_at = NULL";

/// Whether TLS refused the connection (rustls's error, directly or inside
/// the I/O error a TLS stream reports it as): a certificate, a protocol
/// the server will not speak.
pub(crate) fn tls_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if e.is::<rustls::Error>() || inner.is_some_and(|i| i.is::<rustls::Error>()) {
            return true;
        }
        next = inner.or_else(|| e.source());
    }
    false
}

/// A history row whose version lockstep cannot read: a hand edit.
pub(crate) fn unreadable_version(table: &TableName, version: &str) -> Error {
    Error::Config {
        message: format!(
            "table {table} holds version `{version}`, which is not a version lockstep reads"
        ),
        remedy: Some(Remedy::Text(
            "versions are whole numbers or dotted ones such as `1.2.3`: correct the row by hand"
                .into(),
        )),
    }
}

/// Refuses tables that lockstep did not make, or that a newer lockstep made.
pub(crate) fn check_format(table: &TableName, format: Option<i64>) -> Result<(), Error> {
    match format {
        None => Err(Error::ForeignTable {
            table: table.to_string(),
            message: format!("exists but was not created by lockstep (no row for it in {META_TABLE})"),
        }),
        Some(f) if f > FORMAT_VERSION => Err(Error::Config {
            message: format!(
                "table {table} was written by a newer lockstep (table format {f}; this lockstep {TOOL_VERSION} knows format {FORMAT_VERSION})"
            ),
            remedy: Some(Remedy::Text(
                "upgrade lockstep to the version that manages this database".into(),
            )),
        }),
        Some(_) => Ok(()),
    }
}
