//! The MariaDB/MySQL driver, over the `mysql` crate's synchronous client:
//! a connection, the names of lockstep's tables in the URL's database, and
//! what the parts share (errors, values, the server's identity).
//!
//! - `connect`: connecting (TLS by rustls), and saying why it failed;
//! - `history`: lockstep's tables and the history's rows;
//! - `run`: running migrations, fenced, one statement at a time;
//! - `batch`: lockstep's own writes, one by one or several in one round trip;
//! - `lock`: the lock's row and log (the protocol is `crate::lock`'s);
//! - `blocked`: who blocks a session.
//!
//! Every DDL statement commits on these servers, so a migration that holds
//! one runs outside a transaction, recorded `started` first (see
//! `run.rs`). Values travel as statement parameters, or, in a batch of
//! several statements, as literals that read the same in every session
//! (see `batch.rs`): the server's `sql_mode` decides how a quoted literal
//! escapes, and a migration may change it.

mod batch;
mod blocked;
mod connect;
mod history;
mod lock;
mod run;

use std::borrow::Cow;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use mysql::prelude::Queryable;
use mysql::Row;

use crate::driver::tables::{self, Names};
use crate::error::{DbClass, DbMessage, Error};
use crate::history::TableName;
use crate::lock::Session;
use crate::url::{DatabaseUrl, MysqlTarget};
use crate::waits::Limits;

use batch::Failed;

pub(crate) struct MysqlDriver {
    conn: mysql::Conn,
    /// For the heartbeat's connection and cancel requests.
    opts: mysql::Opts,
    target: MysqlTarget,
    url: DatabaseUrl,
    table: TableName,
    /// lockstep's tables, quoted and qualified with the URL's database.
    tables: Names,
    /// This session's identity; known once the lock asks.
    session: Option<Session>,
    /// Which server this connection reached, for liveness: connection ids
    /// belong to one server, and to one run of it.
    server: String,
    /// A Galera cluster's node: reads are made causal.
    galera: bool,
    /// MariaDB, not MySQL: `max_statement_time` bounds a statement.
    mariadb: bool,
    /// Set by the canceller: the server does not always fail a statement it
    /// was asked to stop (`SLEEP` returns early, as if done), so a run
    /// looks after each statement.
    cancelled: Arc<AtomicBool>,
    /// A migration's SQL may have made temporary tables since lockstep
    /// last dropped those that would hide its own (`unshadow`).
    may_shadow: bool,
    /// The session may differ from what lockstep set up (see `execute`):
    /// the next migration starts from a reset.
    session_changed: bool,
    /// The server reports the changes a statement made to the session
    /// (`session_track_state_change`, on since the last reset).
    tracks_session: bool,
    /// The server's release can report them.
    can_track: bool,
    /// The bounds the session's statements have, as lockstep last set them.
    limits: Option<Limits>,
    /// This user sees every session in the process list (the `PROCESS`
    /// privilege): a holder missing from it is gone. Without it a missing
    /// holder may be another user's session, and only the lease decides.
    sees_all_sessions: bool,
    /// The history table's versions are text (table format 2), as its
    /// last read or widening found: a version is bound as text, else as a
    /// number (a number compared with a text column, or a text with a
    /// number column, is compared as a double).
    text_versions: bool,
}

/// An identifier in backticks, a backtick inside doubled.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// How a time column reads: RFC 3339 in UTC with milliseconds.
fn rfc3339(column: &str) -> String {
    format!("CONCAT(LEFT(DATE_FORMAT({column}, '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z')")
}

/// Milliseconds from `from` to `to`, by the server's clock.
fn millis_between(from: &str, to: &str) -> String {
    format!("(TIMESTAMPDIFF(MICROSECOND, {from}, {to}) DIV 1000)")
}

/// The server's error codes that lockstep tells apart.
mod code {
    /// A deadlock, or on Galera a transaction that lost certification at
    /// commit: rolled back whole.
    pub const DEADLOCK: u16 = 1213;
    /// A transaction's snapshot is older than a table it reads (made by a
    /// racing run meanwhile): rolled back, to be tried again.
    pub const TABLE_DEF_CHANGED: u16 = 1412;
    /// `innodb_lock_wait_timeout` passed, or `NOWAIT` found a row locked.
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    /// MySQL 8's `NOWAIT` answer.
    pub const LOCK_NOWAIT: u16 = 3572;
    pub const NO_SUCH_TABLE: u16 = 1146;
    /// A subquery that should give one row gave more.
    pub const SUBQUERY_ROWS: u16 = 1242;
    /// An unknown column.
    pub const BAD_FIELD: u16 = 1054;
    pub const ACCESS_DENIED: u16 = 1045;
    /// The user may not use the URL's database.
    pub const DB_ACCESS_DENIED: u16 = 1044;
    /// The server takes no connection from this host.
    pub const HOST_NOT_ALLOWED: u16 = 1130;
    pub const BAD_DB: u16 = 1049;
    /// The server is shutting down, or killed this connection.
    pub const SERVER_SHUTDOWN: u16 = 1053;
    pub const CONNECTION_KILLED: u16 = 1927;
    /// An option of the server's forbids the statement: `read_only`, when
    /// the message says so.
    pub const READ_ONLY: u16 = 1290;
    /// A write in a `READ ONLY` transaction.
    pub const READ_ONLY_TRANSACTION: u16 = 1792;
}

/// The class of failure a server's error code says.
fn class_of(error_code: u16, message: &str) -> DbClass {
    match error_code {
        code::DEADLOCK | code::TABLE_DEF_CHANGED => DbClass::Retryable,
        code::NO_SUCH_TABLE => DbClass::UndefinedTable,
        code::LOCK_WAIT_TIMEOUT | code::LOCK_NOWAIT => DbClass::LockTimeout,
        code::SERVER_SHUTDOWN | code::CONNECTION_KILLED => DbClass::ConnectionLost,
        code::READ_ONLY if message.contains("read-only") || message.contains("read_only") => {
            DbClass::ReadOnly
        }
        code::READ_ONLY_TRANSACTION => DbClass::ReadOnly,
        _ => DbClass::Other,
    }
}

/// An error of the client or the server as a message.
fn message(e: &mysql::Error) -> DbMessage {
    match e {
        mysql::Error::MySqlError(server) => DbMessage {
            code: Some(server.code.to_string()),
            class: class_of(server.code, &server.message),
            ..DbMessage::plain(server.message.clone())
        },
        // No error code: the connection itself failed.
        other if other.is_connectivity_error() => DbMessage {
            class: DbClass::ConnectionLost,
            ..DbMessage::plain(connection_failure(other))
        },
        other => DbMessage::plain(other.to_string()),
    }
}

/// What broke a connection, in the words of the system: the client's own
/// wrapping (`CodecError { IO error: ... }`) says nothing more, and an end
/// of stream is the server closing the connection.
fn connection_failure(e: &mysql::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    match cause.downcast_ref::<std::io::Error>() {
        Some(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the server closed the connection".into()
        }
        Some(io) => io.to_string(),
        None => e.to_string(),
    }
}

fn db_error(context: impl Into<String>, e: &mysql::Error) -> Error {
    Error::Database {
        context: context.into(),
        db: Box::new(message(e)),
    }
}

/// The server's error code, when the server answered with one.
fn server_code(e: &mysql::Error) -> Option<u16> {
    match e {
        mysql::Error::MySqlError(server) => Some(server.code),
        _ => None,
    }
}

/// A row lock that was not granted at once.
fn lock_refused(e: &mysql::Error) -> bool {
    matches!(
        server_code(e),
        Some(code::LOCK_WAIT_TIMEOUT | code::LOCK_NOWAIT)
    )
}

impl MysqlDriver {
    /// Runs one statement of a migration's, reading every row of every
    /// result: a server may fail a statement after its first rows (a
    /// subquery that returns two rows; on Galera, a transaction aborted by
    /// a conflicting commit while it ran), and a result dropped unread
    /// would hide that failure.
    ///
    /// Notes whether the statement may have changed the session: the
    /// server says so for settings, temporary tables, prepared statements
    /// and the current database; what it does not report (user variables
    /// set by a query, named locks, the next transaction's
    /// characteristics, whatever a statement returning rows did) is
    /// assumed of every statement but plain DDL and DML without `@` or
    /// `GET_LOCK`. A failed statement may have changed anything.
    ///
    /// In the same round trip, before the statement: the `lead`, a
    /// statement that commits by itself, and then, when `begins`, the
    /// beginning of a transaction (on the statement's line: the server
    /// counts a statement's lines from its first, and its own line
    /// numbers stay the statement's). A failure says which of the query's
    /// statements failed (the lead, when there is one, is the first).
    fn execute(&mut self, sql: &str, lead: Option<&str>, begins: bool) -> Result<(), Failed> {
        let before = (self.may_shadow, self.session_changed);
        (self.may_shadow, self.session_changed) = (true, true);
        let mut query = String::new();
        if let Some(lead) = lead {
            query.push_str(lead.trim_end_matches(';'));
            query.push_str(";\n");
        }
        if begins {
            query.push_str("BEGIN; ");
        }
        let query = if query.is_empty() {
            Cow::Borrowed(sql)
        } else {
            query.push_str(sql);
            Cow::Owned(query)
        };
        let result = self
            .conn
            .query_iter(query)
            .map_err(|error| Failed { at: 0, error })?;
        let result_set = drain(result)?;
        let reported = self
            .conn
            .session_state_changes()
            .map_or(true, |changes| !changes.is_empty());
        let untracked = untracked_change(sql) || lead.is_some_and(untracked_change);
        if self.tracks_session && !reported && !result_set && !untracked {
            (self.may_shadow, self.session_changed) = before;
        }
        Ok(())
    }
}

/// Reads every row of every result set; whether there was one (a
/// statement that returns rows, even none). A failure says which
/// statement of the query failed.
fn drain(mut result: mysql::QueryResult<'_, '_, '_, mysql::Text>) -> Result<bool, Failed> {
    let mut columns = false;
    let mut at = 0;
    while let Some(rows) = result.iter() {
        columns |= !rows.columns().as_ref().is_empty();
        for row in rows {
            row.map_err(|error| Failed { at, error })?;
        }
        at += 1;
    }
    Ok(columns)
}

/// Whether a statement may change the session in a way the server does
/// not report: all but DDL and DML, and those with a user variable or a
/// named lock.
fn untracked_change(sql: &str) -> bool {
    let first = sql
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let plain = matches!(
        first.as_str(),
        "CREATE"
            | "ALTER"
            | "DROP"
            | "RENAME"
            | "TRUNCATE"
            | "INSERT"
            | "UPDATE"
            | "DELETE"
            | "REPLACE"
    );
    let named_lock = sql
        .as_bytes()
        .windows(b"GET_LOCK".len())
        .any(|w| w.eq_ignore_ascii_case(b"GET_LOCK"));
    !plain || sql.contains('@') || named_lock
}

/// Values bound to a statement, as the `mysql` crate binds them.
fn params(values: impl IntoIterator<Item = tables::Value>) -> mysql::Params {
    mysql::Params::Positional(self::values(values))
}

/// lockstep's values as the `mysql` crate's.
fn values(values: impl IntoIterator<Item = tables::Value>) -> Vec<mysql::Value> {
    values
        .into_iter()
        .map(|value| match value {
            tables::Value::Text(Some(s)) => mysql::Value::from(s),
            tables::Value::Int(Some(i)) => mysql::Value::Int(i),
            tables::Value::Text(None) | tables::Value::Int(None) => mysql::Value::NULL,
        })
        .collect()
}

fn text(row: &Row, i: usize) -> Option<String> {
    row.get_opt::<Option<String>, _>(i)
        .and_then(Result::ok)
        .flatten()
}

fn int(row: &Row, i: usize) -> Option<i64> {
    row.get_opt::<Option<i64>, _>(i)
        .and_then(Result::ok)
        .flatten()
}

impl MysqlDriver {
    /// lockstep's tables in the URL's database, next to the history table.
    fn qualify(&mut self) {
        let database = self
            .table
            .schema()
            .unwrap_or(&self.target.database)
            .to_string();
        self.tables = Names::in_schema(&database, self.table.name(), quote_ident);
    }

    /// Ends the open transaction, if any; a broken connection is the next
    /// statement's error.
    fn rollback(&mut self) {
        let _ = self.conn.query_drop("ROLLBACK");
    }
}

#[cfg(test)]
mod tests {
    use super::untracked_change;

    #[test]
    fn only_plain_ddl_and_dml_leave_no_unreported_change() {
        for plain in [
            "CREATE TABLE t (id int)",
            "alter table t add column v int",
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET v = 2",
            "DROP TABLE t",
        ] {
            assert!(!untracked_change(plain), "{plain}");
        }
        for untracked in [
            "SELECT 5 INTO @v",
            "INSERT INTO t SELECT @n := @n + 1",
            "DO GET_LOCK('x', 0)",
            "INSERT INTO t SELECT get_lock('x', 0)",
            "SET TRANSACTION READ ONLY",
            "HANDLER t OPEN",
            "CALL p()",
            "USE other",
        ] {
            assert!(untracked_change(untracked), "{untracked}");
        }
    }
}
