//! The embedded SQLite driver.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{Change, Driver, StepFailure, TxStep};
use crate::error::{DbMessage, Error};
use crate::history::{HistoryRow, RowState, TableName, FORMAT_VERSION, META_TABLE, TOOL_VERSION};
use crate::sql::Dialect;

/// How long a statement waits for another connection's write lock before it
/// fails with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's clock, formatted as the history table stores it.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

pub(crate) struct SqliteDriver {
    /// `None` when the file does not exist and must not be created: the
    /// database reads as empty.
    conn: Option<Connection>,
    path: PathBuf,
    table: TableName,
    history: String,
    meta: String,
}

impl SqliteDriver {
    pub(crate) fn open(path: &Path, table: &TableName, create: bool) -> Result<Self, Error> {
        let conn = if !create && !path.exists() {
            None
        } else {
            let flags = if create {
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
            } else {
                OpenFlags::SQLITE_OPEN_READ_ONLY
            } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(path, flags).map_err(|e| Error::Connect {
                target: format!("sqlite://{}", path.display()),
                message: message(&e).message,
                hint: path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty() && !p.exists())
                    .map(|p| format!("the directory `{}` does not exist", p.display())),
            })?;
            Some(conn)
        };
        Self::with(conn, path, table)
    }

    pub(crate) fn memory(table: &TableName) -> Result<Self, Error> {
        let conn = Connection::open_in_memory().map_err(|e| Error::Connect {
            target: "sqlite::memory:".into(),
            message: message(&e).message,
            hint: None,
        })?;
        Self::with(Some(conn), Path::new(":memory:"), table)
    }

    fn with(conn: Option<Connection>, path: &Path, table: &TableName) -> Result<Self, Error> {
        if let Some(conn) = &conn {
            conn.busy_timeout(BUSY_TIMEOUT)
                .map_err(|e| db_error("configuring the connection", &e))?;
        }
        // Always qualified: a migration that attaches a database or makes a
        // temporary table of the same name must not redirect lockstep's writes.
        let schema = table.schema().unwrap_or("main");
        Ok(SqliteDriver {
            conn,
            path: path.to_path_buf(),
            history: format!("\"{schema}\".\"{}\"", table.name()),
            meta: format!("\"{schema}\".\"{META_TABLE}\""),
            table: table.clone(),
        })
    }

    fn conn(&self) -> Result<&Connection, Error> {
        self.conn.as_ref().ok_or_else(|| Error::Database {
            context: format!("opening {}", self.path.display()),
            db: Box::new(DbMessage::plain("the database file does not exist")),
        })
    }

    fn apply_change(
        conn: &Connection,
        history: &str,
        change: &Change<'_>,
        elapsed: Duration,
    ) -> rusqlite::Result<()> {
        match change {
            Change::Insert(row) => {
                let state = if row.started {
                    RowState::Started
                } else {
                    RowState::Applied
                };
                let duration = if row.started { 0 } else { millis(elapsed) };
                conn.execute(
                    &format!(
                        "INSERT INTO {history} (version, name, checksum, state, applied_at, duration_ms, applied_by, lock_token, tool_version) \
                         VALUES (?1, ?2, ?3, ?4, {NOW}, ?5, ?6, ?7, ?8)"
                    ),
                    params![
                        row.version as i64,
                        row.name,
                        row.checksum,
                        state.as_str(),
                        duration,
                        row.applied_by,
                        row.lock_token,
                        TOOL_VERSION
                    ],
                )?;
            }
            Change::SetState {
                version,
                state,
                duration_ms: Some(duration_ms),
            } => {
                conn.execute(
                    &format!("UPDATE {history} SET state = ?2, applied_at = {NOW}, duration_ms = ?3 WHERE version = ?1"),
                    params![*version as i64, state.as_str(), duration_ms],
                )?;
            }
            Change::SetState {
                version,
                state,
                duration_ms: None,
            } => {
                conn.execute(
                    &format!("UPDATE {history} SET state = ?2 WHERE version = ?1"),
                    params![*version as i64, state.as_str()],
                )?;
            }
            Change::Delete { version } => {
                conn.execute(
                    &format!("DELETE FROM {history} WHERE version = ?1"),
                    params![*version as i64],
                )?;
            }
            Change::SetChecksum {
                version,
                name,
                checksum,
            } => {
                conn.execute(
                    &format!("UPDATE {history} SET checksum = ?2, name = ?3 WHERE version = ?1"),
                    params![*version as i64, checksum, name],
                )?;
            }
        }
        Ok(())
    }

    fn table_exists(conn: &Connection, schema_table: (&str, &str)) -> rusqlite::Result<bool> {
        let (schema, name) = schema_table;
        conn.query_row(
            &format!("SELECT 1 FROM \"{schema}\".sqlite_master WHERE type = 'table' AND name = ?1"),
            [name],
            |_| Ok(()),
        )
        .optional()
        .map(|r| r.is_some())
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// SQLite's name for a result code: the extended name for constraint
/// violations (which say which kind), the primary name otherwise.
fn code_name(e: &rusqlite::ffi::Error) -> String {
    let name = match e.extended_code {
        275 => "SQLITE_CONSTRAINT_CHECK",
        787 => "SQLITE_CONSTRAINT_FOREIGNKEY",
        1299 => "SQLITE_CONSTRAINT_NOTNULL",
        1555 => "SQLITE_CONSTRAINT_PRIMARYKEY",
        2067 => "SQLITE_CONSTRAINT_UNIQUE",
        code => match code & 0xff {
            1 => "SQLITE_ERROR",
            2 => "SQLITE_INTERNAL",
            3 => "SQLITE_PERM",
            4 => "SQLITE_ABORT",
            5 => "SQLITE_BUSY",
            6 => "SQLITE_LOCKED",
            7 => "SQLITE_NOMEM",
            8 => "SQLITE_READONLY",
            9 => "SQLITE_INTERRUPT",
            10 => "SQLITE_IOERR",
            11 => "SQLITE_CORRUPT",
            13 => "SQLITE_FULL",
            14 => "SQLITE_CANTOPEN",
            17 => "SQLITE_SCHEMA",
            18 => "SQLITE_TOOBIG",
            19 => "SQLITE_CONSTRAINT",
            20 => "SQLITE_MISMATCH",
            21 => "SQLITE_MISUSE",
            23 => "SQLITE_AUTH",
            25 => "SQLITE_RANGE",
            26 => "SQLITE_NOTADB",
            _ => return format!("SQLITE_{code}"),
        },
    };
    name.to_string()
}

/// An SQLite error as a message; a syntax error's offset is relative to the
/// whole of `sql` when `sql` is given.
fn message_in(e: &rusqlite::Error, sql: Option<&str>) -> DbMessage {
    match e {
        rusqlite::Error::SqliteFailure(err, msg) => DbMessage {
            message: msg.clone().unwrap_or_else(|| err.to_string()),
            code: Some(code_name(err)),
            detail: None,
            hint: None,
            position: None,
        },
        rusqlite::Error::SqlInputError {
            error,
            msg,
            sql: tail,
            offset,
        } => DbMessage {
            message: msg.clone(),
            code: Some(code_name(error)),
            detail: None,
            hint: None,
            // rusqlite reports the offset into the statement it was
            // preparing, which is a suffix of the batch.
            position: sql.and_then(|full| {
                let start = full.len().checked_sub(tail.len())?;
                usize::try_from(*offset).ok().map(|o| start + o)
            }),
        },
        other => DbMessage::plain(other.to_string()),
    }
}

fn message(e: &rusqlite::Error) -> DbMessage {
    message_in(e, None)
}

fn db_error(context: impl Into<String>, e: &rusqlite::Error) -> Error {
    Error::Database {
        context: context.into(),
        db: Box::new(message(e)),
    }
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

impl Driver for SqliteDriver {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn read_history(&mut self) -> Result<Option<Vec<HistoryRow>>, Error> {
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        let context = format!("reading history from {}", self.table);
        let schema = self.table.schema().unwrap_or("main");
        // One read transaction: the format and the rows from one snapshot.
        conn.execute_batch("BEGIN")
            .map_err(|e| db_error(&context, &e))?;
        let result = (|| -> Result<Option<Vec<HistoryRow>>, Error> {
            if !Self::table_exists(conn, (schema, self.table.name()))
                .map_err(|e| db_error(&context, &e))?
            {
                return Ok(None);
            }
            let format: Option<i64> = if Self::table_exists(conn, (schema, META_TABLE))
                .map_err(|e| db_error(&context, &e))?
            {
                conn.query_row(
                    &format!(
                        "SELECT format_version FROM {} WHERE table_name = ?1",
                        self.meta
                    ),
                    [self.table.name()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| db_error(&context, &e))?
            } else {
                None
            };
            check_format(&self.table, format)?;
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT version, name, checksum, state, applied_at, duration_ms, applied_by, lock_token, tool_version \
                     FROM {} ORDER BY version",
                    self.history
                ))
                .map_err(|e| match e {
                    rusqlite::Error::SqlInputError { .. } | rusqlite::Error::SqliteFailure(..) => Error::ForeignTable {
                        table: self.table.to_string(),
                        message: "exists but does not have the columns of lockstep's history table".into(),
                    },
                    e => db_error(&context, &e),
                })?;
            let rows = stmt
                .query_map([], |r| {
                    let state: String = r.get(3)?;
                    Ok(HistoryRow {
                        version: r.get::<_, i64>(0)? as u64,
                        name: r.get(1)?,
                        checksum: r.get(2)?,
                        state: RowState::parse(&state).unwrap_or(RowState::Started),
                        applied_at: r.get(4)?,
                        duration_ms: r.get(5)?,
                        applied_by: r.get(6)?,
                        lock_token: r.get(7)?,
                        tool_version: r.get(8)?,
                    })
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| db_error(&context, &e))?;
            Ok(Some(rows))
        })();
        let _ = conn.execute_batch("COMMIT");
        result
    }

    fn create_tables(&mut self) -> Result<(), Error> {
        let conn = self.conn()?;
        let context = format!("creating the history table {}", self.table);
        let sql = format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {meta} (
                 table_name TEXT PRIMARY KEY,
                 format_version INTEGER NOT NULL,
                 created_at TEXT NOT NULL,
                 created_by TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS {history} (
                 version INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 checksum TEXT NOT NULL,
                 state TEXT NOT NULL CHECK (state IN ('applied', 'started')),
                 applied_at TEXT NOT NULL,
                 duration_ms INTEGER NOT NULL,
                 applied_by TEXT NOT NULL,
                 lock_token INTEGER,
                 tool_version TEXT NOT NULL
             );
             INSERT OR IGNORE INTO {meta} (table_name, format_version, created_at, created_by)
                 VALUES ('{name}', {FORMAT_VERSION}, {NOW}, '{TOOL_VERSION}');
             COMMIT;",
            meta = self.meta,
            history = self.history,
            name = self.table.name(),
        );
        conn.execute_batch(&sql).map_err(|e| {
            rollback(conn);
            db_error(context, &e)
        })
    }

    fn run_transaction(
        &mut self,
        steps: &[TxStep<'_>],
        done: &mut dyn FnMut(usize, Duration),
    ) -> Result<(), StepFailure> {
        let conn = self
            .conn
            .as_ref()
            .expect("run_transaction needs an open database");
        let fail = |index: usize, db: DbMessage| {
            rollback(conn);
            StepFailure { index, db }
        };
        // IMMEDIATE takes the write lock now rather than at the first write,
        // so two writers cannot deadlock upgrading their read locks.
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| fail(0, message(&e)))?;
        for (i, step) in steps.iter().enumerate() {
            let start = Instant::now();
            if let Err(e) = conn.execute_batch(&step.section.sql) {
                return Err(fail(i, message_in(&e, Some(&step.section.sql))));
            }
            if conn.is_autocommit() {
                return Err(fail(
                    i,
                    DbMessage::plain("the migration ended lockstep's transaction (COMMIT or ROLLBACK in its SQL)"),
                ));
            }
            let elapsed = start.elapsed();
            if let Err(e) = Self::apply_change(conn, &self.history, &step.change, elapsed) {
                return Err(fail(i, message(&e)));
            }
            done(i, elapsed);
        }
        conn.execute_batch("COMMIT")
            .map_err(|e| fail(steps.len().saturating_sub(1), message(&e)))
    }

    fn run_statement(&mut self, sql: &str) -> Result<(), DbMessage> {
        let conn = self
            .conn
            .as_ref()
            .expect("run_statement needs an open database");
        conn.execute_batch(sql)
            .map_err(|e| message_in(&e, Some(sql)))
    }

    fn change_history(&mut self, changes: &[Change<'_>]) -> Result<(), Error> {
        let conn = self.conn()?;
        let context = format!("writing history to {}", self.table);
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| db_error(&context, &e))?;
        for change in changes {
            if let Err(e) = Self::apply_change(conn, &self.history, change, Duration::ZERO) {
                rollback(conn);
                return Err(db_error(&context, &e));
            }
        }
        conn.execute_batch("COMMIT").map_err(|e| {
            rollback(conn);
            db_error(&context, &e)
        })
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
            hint: Some("upgrade lockstep to the version that manages this database".into()),
        }),
        Some(_) => Ok(()),
    }
}
