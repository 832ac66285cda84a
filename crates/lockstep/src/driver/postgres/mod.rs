//! The PostgreSQL driver, over lockstep's small blocking client: a
//! connection, the names of lockstep's tables in their schema, and what the
//! parts share (literals, errors, reading a simple query's answers).
//!
//! - `connect`: connecting, and saying why a connection failed;
//! - `history`: lockstep's tables and the history's rows;
//! - `run`: running migrations, each with its fence, history row and
//!   commit in one round trip;
//! - `lock`: the lock's row and log (the protocol is `crate::lock`'s);
//! - `blocked`: who blocks a session, and invalid indexes;
//! - `client`, `tls`: the blocking client over `tokio-postgres`, and
//!   rustls.

mod blocked;
mod client;
mod connect;
mod history;
mod lock;
mod look;
mod run;
#[cfg(test)]
mod tests;
mod tls;

use std::time::Duration;

use tokio_postgres::error::{ErrorPosition, SqlState};
use tokio_postgres::SimpleQueryMessage;

use crate::driver::tables::{quote_ident, Names};
use crate::error::{DbClass, DbMessage, Error};
use crate::history::TableName;
use crate::lock::Session;
use crate::url::{DatabaseUrl, PgTarget};
use crate::waits::Limits;

use client::Client;
use tls::MakeRustls;

/// Where lockstep keeps its tables when the history table names no schema.
pub(crate) const DEFAULT_SCHEMA: &str = "public";

pub(crate) struct PgDriver {
    client: Client,
    /// For the heartbeat's connection and cancel requests.
    target: PgTarget,
    url: DatabaseUrl,
    application_name: String,
    tls: MakeRustls,
    table: TableName,
    /// The schema of lockstep's tables: the history table's, `public` when
    /// it names none. Never `search_path`'s: a database-level or
    /// per-session `search_path` must not move lockstep's tables or hide
    /// them.
    schema: String,
    /// lockstep's tables, quoted and qualified with their schema.
    tables: Names,
    /// This session's identity; known once the lock asks.
    session: Option<Session>,
    /// A pooler or proxy stands between lockstep and the server: sessions
    /// are not what they seem, so liveness comes from the lease alone and
    /// waiters poll instead of listening. Known from the server's port,
    /// which every look at the lock and the session's identity report;
    /// `None` until then.
    pooled: Option<bool>,
    /// The server has `client_connection_check_interval` (14+), which
    /// lockstep sets for its session: set again after every reset.
    check_interval: bool,
    /// A migration begins: the next statement sent outside a transaction
    /// first resets the session.
    reset_pending: bool,
    /// The bounds of the migration's statements.
    limits: Limits,
    /// The repeatables table was seen (or made) on this connection: later
    /// reads need no look for it first.
    repeatable_table_seen: bool,
    /// The history table holds text versions (table format 2), as its last
    /// read or widening found: widening again is nothing to do.
    text_versions: bool,
}

/// A string literal that is safe whatever `standard_conforming_strings` is.
pub(crate) fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An error and its causes, `: `-separated: "error performing TLS
/// handshake: invalid peer certificate: UnknownIssuer".
fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// A PostgreSQL error as a message. With `sent` (the query text, and the byte
/// range of the section inside it) a position is turned into a byte offset
/// into the section, when it points there.
fn message_in(e: &tokio_postgres::Error, sent: Option<(&str, usize, usize)>) -> DbMessage {
    let Some(db) = e.as_db_error() else {
        let mut message = chain(e);
        if e.is_closed() && !message.contains("closed") {
            message.push_str(" (the connection is closed)");
        }
        // No SQLSTATE: the connection itself failed.
        let lost = ["connection", "closed", "broken pipe", "reset by peer"]
            .iter()
            .any(|w| message.to_lowercase().contains(w));
        return DbMessage {
            class: if lost {
                DbClass::ConnectionLost
            } else {
                DbClass::Other
            },
            ..DbMessage::plain(message)
        };
    };
    let position = match (db.position(), sent) {
        (Some(ErrorPosition::Original(pos)), Some((query, start, len))) => {
            // The position counts characters from 1.
            query
                .char_indices()
                .nth((*pos as usize).saturating_sub(1))
                .map(|(byte, _)| byte)
                .filter(|&byte| byte >= start && byte < start + len)
                .map(|byte| byte - start)
        }
        _ => None,
    };
    DbMessage {
        message: db.message().to_string(),
        code: Some(db.code().code().to_string()),
        detail: db.detail().map(str::to_string),
        hint: db.hint().map(str::to_string),
        position,
        class: class_of(db.code()),
    }
}

/// The class of failure a SQLSTATE says.
fn class_of(code: &SqlState) -> DbClass {
    let text = code.code();
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        DbClass::Retryable
    } else if *code == SqlState::UNDEFINED_TABLE {
        DbClass::UndefinedTable
    } else if *code == SqlState::ACTIVE_SQL_TRANSACTION {
        DbClass::NeedsNoTransaction
    } else if *code == SqlState::LOCK_NOT_AVAILABLE {
        DbClass::LockTimeout
    } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        // A hot standby, or `default_transaction_read_only`.
        DbClass::ReadOnly
    } else if text.starts_with("57P") || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT {
        // Class 57 but 57014 (a cancelled statement): the server ended the
        // session (pg_terminate_backend, a shutdown), and so does 25P03,
        // its idle-in-transaction timeout. Which of the two a client sees
        // is a race: the server's FATAL message and the closed socket can
        // arrive in one read, and the driver then reports only the latter.
        DbClass::ConnectionLost
    } else {
        DbClass::Other
    }
}

fn message(e: &tokio_postgres::Error) -> DbMessage {
    message_in(e, None)
}

fn db_error(context: impl Into<String>, e: &tokio_postgres::Error) -> Error {
    Error::Database {
        context: context.into(),
        db: Box::new(message(e)),
    }
}

fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

/// Splits a simple query's messages into the rows of each statement.
fn statements(messages: &[SimpleQueryMessage]) -> Vec<&[SimpleQueryMessage]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, m) in messages.iter().enumerate() {
        if let SimpleQueryMessage::CommandComplete(_) = m {
            out.push(&messages[start..i]);
            start = i + 1;
        }
    }
    out
}

fn first_value(rows: &[SimpleQueryMessage]) -> Option<&str> {
    rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0),
        _ => None,
    })
}

/// Whether the last statement of a simple query answered `true` (a
/// boolean cast to text) in its first row.
fn says_true(messages: &[SimpleQueryMessage]) -> bool {
    statements(messages)
        .last()
        .and_then(|rows| first_value(rows))
        == Some("true")
}

/// How PostgreSQL formats lockstep's timestamps: RFC 3339 in UTC.
const TIME_FORMAT: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";

/// Serialization failures and deadlocks: the transaction was rolled back
/// whole and can run again.
fn is_retryable(e: &tokio_postgres::Error) -> bool {
    code(e).is_some_and(|c| class_of(c) == DbClass::Retryable)
}

fn interval(d: Duration) -> String {
    format!("interval '{} milliseconds'", d.as_millis())
}

fn text(r: &tokio_postgres::SimpleQueryRow, i: usize) -> Option<String> {
    r.get(i).map(str::to_string)
}

fn int(r: &tokio_postgres::SimpleQueryRow, i: usize) -> Option<i64> {
    r.get(i).and_then(|v| v.parse().ok())
}

impl PgDriver {
    /// Qualifies lockstep's table names with their schema, so that neither
    /// `search_path` nor a migration that changes it can move them.
    pub(super) fn qualify(&mut self) {
        self.tables = Names::in_schema(&self.schema, self.table.name(), quote_ident);
    }

    pub(super) fn rollback(&mut self) {
        if !self.client.is_closed() {
            let _ = self.client.simple_query("ROLLBACK");
        }
    }
}
