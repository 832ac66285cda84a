//! Database drivers: a small set of primitives that the run loop composes.
//!
//! A driver knows its engine's SQL and how to send it; it knows nothing of
//! plans, ordering or refusals. Each primitive is one transaction at most,
//! and on PostgreSQL one round trip where it can be.

use std::time::Duration;

use crate::error::{DbMessage, Error};
use crate::history::{HistoryRow, RowState, TableName};
use crate::source::Section;
use crate::sql::Dialect;
use crate::url::{DatabaseUrl, SqliteTarget};

pub(crate) mod postgres;
pub(crate) mod sqlite;
mod tls;

/// A row to insert into the history table. The driver fills in
/// `applied_at` and `duration_ms` from the clock it trusts.
#[derive(Debug, Clone)]
pub(crate) struct NewRow<'a> {
    pub version: u64,
    pub name: &'a str,
    pub checksum: &'a str,
    pub started: bool,
    pub applied_by: &'a str,
    pub lock_token: Option<i64>,
}

/// A change to the history table.
#[derive(Debug, Clone)]
pub(crate) enum Change<'a> {
    /// Record a migration as applied (in its own transaction) or started
    /// (before a no-transaction migration runs).
    Insert(NewRow<'a>),
    /// Set a row's state. With a duration, also record it and stamp
    /// `applied_at` with the current time: a no-transaction migration that
    /// finished.
    SetState {
        version: u64,
        state: RowState,
        duration_ms: Option<i64>,
    },
    /// Forget a row: a rollback, `fix missing`, `fix dirty --forget`.
    Delete { version: u64 },
    /// Record the file's current checksum and name: `fix checksums`.
    SetChecksum {
        version: u64,
        name: &'a str,
        checksum: &'a str,
    },
}

/// One migration inside a transaction: its SQL and the history change that
/// commits with it.
pub(crate) struct TxStep<'a> {
    pub section: &'a Section,
    pub change: Change<'a>,
}

/// A step of a transaction failed.
#[derive(Debug)]
pub(crate) struct StepFailure {
    /// Which step.
    pub index: usize,
    /// The engine's message; `position` is a byte offset into the step's
    /// section when the engine pointed into it.
    pub db: DbMessage,
}

/// What every engine offers.
pub(crate) trait Driver: Send {
    /// The lexical rules of the engine's SQL.
    fn dialect(&self) -> Dialect;

    /// The history rows ordered by version, or `None` when the history table
    /// does not exist. Creates nothing.
    fn read_history(&mut self) -> Result<Option<Vec<HistoryRow>>, Error>;

    /// Creates lockstep's tables when they do not exist. Safe when many
    /// processes do it at once.
    fn create_tables(&mut self) -> Result<(), Error>;

    /// Runs the steps in one transaction, each step's SQL followed by its
    /// history change, calling `done` after each step with its duration.
    /// On failure the whole transaction is rolled back.
    fn run_transaction(
        &mut self,
        steps: &[TxStep<'_>],
        done: &mut dyn FnMut(usize, Duration),
    ) -> Result<(), StepFailure>;

    /// Runs one statement outside any transaction.
    fn run_statement(&mut self, sql: &str) -> Result<(), DbMessage>;

    /// Applies history changes in one transaction of their own.
    fn change_history(&mut self, changes: &[Change<'_>]) -> Result<(), Error>;
}

/// Opens a driver for a URL. With `create` false an SQLite file that does not
/// exist is not created: it reads as a database without history.
pub(crate) fn open(
    url: &DatabaseUrl,
    table: &TableName,
    application_name: &str,
    create: bool,
) -> Result<Box<dyn Driver>, Error> {
    match url {
        DatabaseUrl::Sqlite(target) => {
            if table.schema().is_some_and(|s| s != "main") {
                return Err(Error::Config {
                    message: format!(
                        "history table `{table}`: SQLite has no schema `{}`",
                        table.schema().unwrap_or_default()
                    ),
                    hint: Some("drop the schema prefix (or use `main.`) on SQLite".into()),
                });
            }
            let driver = match target {
                SqliteTarget::Memory => sqlite::SqliteDriver::memory(table)?,
                SqliteTarget::File(path) => sqlite::SqliteDriver::open(path, table, create)?,
            };
            Ok(Box::new(driver))
        }
        DatabaseUrl::Postgres(target) => Ok(Box::new(postgres::PgDriver::connect(
            target,
            url,
            table,
            application_name,
        )?)),
    }
}
