//! The PostgreSQL driver.
//!
//! Everything goes through the simple query protocol with values quoted as
//! literals: one round trip for a migration, its history row and the
//! transaction around them, and nothing that a transaction-pooling PgBouncer
//! would lose between transactions (no named prepared statements, no
//! session state).

use std::time::{Duration, Instant};

use postgres::error::{ErrorPosition, SqlState};
use postgres::{Client, SimpleQueryMessage};

use super::{Change, Driver, StepFailure, TxStep};
use crate::error::{DbMessage, Error};
use crate::history::{HistoryRow, RowState, TableName, FORMAT_VERSION, META_TABLE, TOOL_VERSION};
use crate::sql::Dialect;
use crate::url::{DatabaseUrl, PgHost, PgTarget};

/// How long to wait for a server that does not answer the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The history row's duration, from the server's clock: the time since the
/// current query message arrived, i.e. this migration's round trip.
const SERVER_DURATION_MS: &str =
    "(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::bigint";

pub(crate) struct PgDriver {
    client: Client,
    table: TableName,
    /// The quoted, schema-qualified names, once the schema is known.
    history: String,
    meta: String,
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

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A PostgreSQL error as a message. With `sent` (the query text, and the byte
/// range of the section inside it) a position is turned into a byte offset
/// into the section, when it points there.
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

fn message_in(e: &postgres::Error, sent: Option<(&str, usize, usize)>) -> DbMessage {
    let Some(db) = e.as_db_error() else {
        let mut message = chain(e);
        if e.is_closed() && !message.contains("closed") {
            message.push_str(" (the connection is closed)");
        }
        return DbMessage::plain(message);
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
    }
}

fn message(e: &postgres::Error) -> DbMessage {
    message_in(e, None)
}

fn db_error(context: impl Into<String>, e: &postgres::Error) -> Error {
    Error::Database {
        context: context.into(),
        db: Box::new(message(e)),
    }
}

fn code(e: &postgres::Error) -> Option<&SqlState> {
    e.code()
}

impl PgDriver {
    pub(crate) fn connect(
        target: &PgTarget,
        url: &DatabaseUrl,
        table: &TableName,
        application_name: &str,
    ) -> Result<Self, Error> {
        let shown = url.to_string();
        let connect_error = |message: String, hint: Option<String>| Error::Connect {
            target: shown.clone(),
            message,
            hint,
        };
        let mut config = postgres::Config::new();
        config.user(&target.user);
        if let Some(password) = &target.password {
            config.password(password.expose());
        }
        config.dbname(&target.dbname);
        match &target.host {
            PgHost::Tcp(host) => config.host(host),
            PgHost::Socket(dir) => config.host_path(dir),
        };
        config
            .port(target.port)
            .connect_timeout(target.connect_timeout.unwrap_or(CONNECT_TIMEOUT))
            // A dead peer is noticed within about 10 + 3 * 2 seconds, also
            // while a long statement keeps the connection silent.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .application_name(
                target
                    .application_name
                    .as_deref()
                    .unwrap_or(application_name),
            );
        let (mode, tls) = super::tls::connector(target).map_err(|m| {
            connect_error(
                m,
                Some("see `sslmode` and `sslrootcert` in the README".into()),
            )
        })?;
        config.ssl_mode(mode);
        let client = config.connect(tls).map_err(|e| {
            let message = match e.as_db_error() {
                Some(db) => db.message().to_string(),
                None => chain(&e),
            };
            let hint = match code(&e) {
                Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                    Some("check the user name and password in the database URL".to_string())
                }
                Some(c) if *c == SqlState::INVALID_CATALOG_NAME => Some(format!(
                    "create the database first, e.g. `createdb {}`",
                    target.dbname
                )),
                Some(_) => None,
                None if message.contains("refused") || message.contains("No such file") => Some(match &target.host {
                    PgHost::Tcp(h) => format!("is PostgreSQL running and listening on {h}:{}?", target.port),
                    PgHost::Socket(d) => format!("is PostgreSQL running with its socket in {}?", d.display()),
                }),
                None if message.contains("timed out") || message.contains("timeout") => Some(
                    "the server did not answer; check the host, port and firewall (the wait is `connect_timeout` in the URL)"
                        .to_string(),
                ),
                None if message.contains("certificate") => Some(
                    "check `sslrootcert` (the CA that signed the server's certificate) and that the URL's host is named on the certificate; `sslmode=verify-ca` does not check the name"
                        .to_string(),
                ),
                None => None,
            };
            connect_error(message, hint)
        })?;
        let mut driver = PgDriver {
            client,
            table: table.clone(),
            history: String::new(),
            meta: String::new(),
        };
        driver.qualify(table.schema());
        Ok(driver)
    }

    /// Qualifies lockstep's table names with a schema, so that a migration
    /// that changes `search_path` cannot redirect lockstep's own writes.
    fn qualify(&mut self, schema: Option<&str>) {
        let prefix = schema
            .map(|s| format!("{}.", quote_ident(s)))
            .unwrap_or_default();
        self.history = format!("{prefix}{}", quote_ident(self.table.name()));
        self.meta = format!("{prefix}{}", quote_ident(META_TABLE));
    }

    fn change_sql(&self, change: &Change<'_>) -> String {
        let history = &self.history;
        match change {
            Change::Insert(row) => {
                let (state, duration) = if row.started {
                    (RowState::Started, "0")
                } else {
                    (RowState::Applied, SERVER_DURATION_MS)
                };
                format!(
                    "INSERT INTO {history} (version, name, checksum, state, applied_at, duration_ms, applied_by, lock_token, tool_version) \
                     VALUES ({}, {}, {}, '{}', clock_timestamp(), {duration}, {}, {}, {})",
                    row.version,
                    literal(row.name),
                    literal(row.checksum),
                    state.as_str(),
                    literal(row.applied_by),
                    row.lock_token.map_or("NULL".to_string(), |t| t.to_string()),
                    literal(TOOL_VERSION),
                )
            }
            Change::SetState { version, state, duration_ms: Some(duration_ms) } => format!(
                "UPDATE {history} SET state = '{}', applied_at = clock_timestamp(), duration_ms = {duration_ms} WHERE version = {version}",
                state.as_str()
            ),
            Change::SetState { version, state, duration_ms: None } => format!(
                "UPDATE {history} SET state = '{}' WHERE version = {version}",
                state.as_str()
            ),
            Change::Delete { version } => format!("DELETE FROM {history} WHERE version = {version}"),
            Change::SetChecksum { version, name, checksum } => format!(
                "UPDATE {history} SET checksum = {}, name = {} WHERE version = {version}",
                literal(checksum),
                literal(name)
            ),
        }
    }

    fn rollback(&mut self) {
        if !self.client.is_closed() {
            let _ = self.client.simple_query("ROLLBACK");
        }
    }

    fn parse_rows(messages: &[SimpleQueryMessage]) -> Result<Vec<HistoryRow>, String> {
        let mut rows = Vec::new();
        for message in messages {
            let SimpleQueryMessage::Row(r) = message else {
                continue;
            };
            let text = |i: usize| r.get(i).unwrap_or_default().to_string();
            let int = |i: usize| -> Result<i64, String> {
                text(i)
                    .parse()
                    .map_err(|_| format!("column {i} is not a number"))
            };
            rows.push(HistoryRow {
                version: int(0)? as u64,
                name: text(1),
                checksum: text(2),
                state: RowState::parse(&text(3)).unwrap_or(RowState::Started),
                applied_at: text(4),
                duration_ms: int(5)?,
                applied_by: text(6),
                lock_token: r.get(7).and_then(|t| t.parse().ok()),
                tool_version: text(8),
            });
        }
        Ok(rows)
    }
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

/// What one attempt at reading the history saw.
enum Read {
    Rows(Vec<HistoryRow>),
    /// No history table.
    Absent,
    /// A history table without lockstep's meta row: someone else's table,
    /// or lockstep's, created between two statements of the read.
    Unsure,
}

impl PgDriver {
    fn try_read_history(&mut self) -> Result<Read, Error> {
        let context = format!("reading history from {}", self.table);
        let schema = match self.table.schema() {
            Some(s) => literal(s),
            None => "current_schema()".to_string(),
        };
        // One round trip: the schema lockstep's tables resolve to, their
        // format, and the rows.
        let sql = format!(
            "SELECT {schema};
             SELECT format_version FROM {meta} WHERE table_name = {name};
             SELECT version, name, checksum, state,
                    to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                    duration_ms, applied_by, lock_token, tool_version
               FROM {history} ORDER BY version",
            meta = self.meta,
            history = self.history,
            name = literal(self.table.name()),
        );
        match self.client.simple_query(&sql) {
            Ok(messages) => {
                let parts = statements(&messages);
                if let Some(schema) = parts.first().and_then(|rows| first_value(rows)) {
                    let schema = schema.to_string();
                    self.qualify(Some(&schema));
                }
                let format = parts
                    .get(1)
                    .and_then(|rows| first_value(rows))
                    .and_then(|v| v.parse::<i64>().ok());
                if format.is_none() {
                    return Ok(Read::Unsure);
                }
                super::sqlite::check_format(&self.table, format)?;
                let rows =
                    Self::parse_rows(parts.get(2).copied().unwrap_or_default()).map_err(|m| {
                        Error::Database {
                            context: context.clone(),
                            db: Box::new(DbMessage::plain(m)),
                        }
                    })?;
                Ok(Read::Rows(rows))
            }
            Err(e) if code(&e) == Some(&SqlState::UNDEFINED_TABLE) => {
                // Either table may be the one missing: ask which.
                let probe = format!(
                    "SELECT to_regclass({}) IS NOT NULL, to_regclass({}) IS NOT NULL",
                    literal(&self.history),
                    literal(&self.meta)
                );
                let messages = self
                    .client
                    .simple_query(&probe)
                    .map_err(|e| db_error(&context, &e))?;
                let flags = messages.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => {
                        Some((r.get(0) == Some("t"), r.get(1) == Some("t")))
                    }
                    _ => None,
                });
                match flags {
                    // Both there now: created since the read; read again.
                    Some((true, true)) => Ok(Read::Unsure),
                    Some((true, false)) => {
                        super::sqlite::check_format(&self.table, None).map(|()| Read::Absent)
                    }
                    _ => Ok(Read::Absent),
                }
            }
            Err(e) if code(&e) == Some(&SqlState::UNDEFINED_COLUMN) => Err(Error::ForeignTable {
                table: self.table.to_string(),
                message: "exists but does not have the columns of lockstep's history table".into(),
            }),
            Err(e) => Err(db_error(context, &e)),
        }
    }
}

impl Driver for PgDriver {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn read_history(&mut self) -> Result<Option<Vec<HistoryRow>>, Error> {
        // Another process may create lockstep's tables while this reads: its
        // creation is atomic, but it can commit between two of the
        // statements below. Read again before calling a table foreign.
        for _ in 0..3 {
            match self.try_read_history()? {
                Read::Rows(rows) => return Ok(Some(rows)),
                Read::Absent => return Ok(None),
                Read::Unsure => continue,
            }
        }
        super::sqlite::check_format(&self.table, None).map(|()| None)
    }

    fn create_tables(&mut self) -> Result<(), Error> {
        let context = format!("creating the history table {}", self.table);
        let create_schema = match self.table.schema() {
            Some(s) => format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(s)),
            None => String::new(),
        };
        let sql = format!(
            "{create_schema}
             CREATE TABLE IF NOT EXISTS {meta} (
                 table_name text PRIMARY KEY,
                 format_version integer NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now(),
                 created_by text NOT NULL
             );
             CREATE TABLE IF NOT EXISTS {history} (
                 version bigint PRIMARY KEY,
                 name text NOT NULL,
                 checksum text NOT NULL,
                 state text NOT NULL CHECK (state IN ('applied', 'started')),
                 applied_at timestamptz NOT NULL,
                 duration_ms bigint NOT NULL,
                 applied_by text NOT NULL,
                 lock_token bigint,
                 tool_version text NOT NULL
             );
             INSERT INTO {meta} (table_name, format_version, created_by)
                 VALUES ({name}, {FORMAT_VERSION}, {version})
                 ON CONFLICT (table_name) DO NOTHING;",
            meta = self.meta,
            history = self.history,
            name = literal(self.table.name()),
            version = literal(TOOL_VERSION),
        );
        // Two sessions creating the same table at once can collide in the
        // catalog even with IF NOT EXISTS (23505 on pg_type's index, 42P07,
        // or 42710 for the table's row type): the other one created it, and
        // the next attempt sees it.
        let mut attempt = 0;
        loop {
            match self.client.simple_query(&sql) {
                Ok(_) => return Ok(()),
                Err(e)
                    if attempt < 5
                        && matches!(code(&e), Some(c) if *c == SqlState::UNIQUE_VIOLATION
                            || *c == SqlState::DUPLICATE_TABLE
                            || *c == SqlState::DUPLICATE_OBJECT
                            || *c == SqlState::DUPLICATE_SCHEMA
                            || *c == SqlState::T_R_SERIALIZATION_FAILURE) =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10 * attempt));
                }
                Err(e) => return Err(db_error(context, &e)),
            }
        }
    }

    fn run_transaction(
        &mut self,
        steps: &[TxStep<'_>],
        done: &mut dyn FnMut(usize, Duration),
    ) -> Result<(), StepFailure> {
        let last = steps.len().saturating_sub(1);
        for (i, step) in steps.iter().enumerate() {
            // The migration, its history row and the transaction around them
            // go in one query string: one round trip. The section was checked
            // to end outside any quote or comment, so what follows it is SQL.
            let mut query = String::with_capacity(step.section.sql.len() + 512);
            if i == 0 {
                query.push_str("BEGIN;\n");
            }
            let start_of_section = query.len();
            query.push_str(&step.section.sql);
            query.push_str("\n;\n");
            query.push_str(&self.change_sql(&step.change));
            query.push_str(";\n");
            if i == last {
                query.push_str("COMMIT;");
            }
            let started = Instant::now();
            if let Err(e) = self.client.simple_query(&query) {
                let db = message_in(&e, Some((&query, start_of_section, step.section.sql.len())));
                self.rollback();
                return Err(StepFailure { index: i, db });
            }
            done(i, started.elapsed());
        }
        Ok(())
    }

    fn run_statement(&mut self, sql: &str) -> Result<(), DbMessage> {
        self.client
            .simple_query(sql)
            .map(drop)
            .map_err(|e| message_in(&e, Some((sql, 0, sql.len()))))
    }

    fn change_history(&mut self, changes: &[Change<'_>]) -> Result<(), Error> {
        let mut sql = String::from("BEGIN;\n");
        for change in changes {
            sql.push_str(&self.change_sql(change));
            sql.push_str(";\n");
        }
        sql.push_str("COMMIT;");
        self.client.simple_query(&sql).map(drop).map_err(|e| {
            self.rollback();
            db_error(format!("writing history to {}", self.table), &e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal("plain"), "E'plain'");
        assert_eq!(literal("it's"), "E'it''s'");
        assert_eq!(
            literal("a\\'; DROP TABLE x; --"),
            "E'a\\\\''; DROP TABLE x; --'"
        );
    }
}
