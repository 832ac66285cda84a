//! The PostgreSQL driver.
//!
//! Everything goes through the simple query protocol with values quoted as
//! literals: one round trip for a migration, its history row and the
//! transaction around them, and nothing that a transaction-pooling PgBouncer
//! would lose between transactions (no named prepared statements, no
//! session state).

use std::time::{Duration, Instant};

use tokio_postgres::error::{ErrorPosition, SqlState};
use tokio_postgres::SimpleQueryMessage;

use super::pg_client::{self, Client};

use super::tls::MakeRustls;
use super::{Canceller, Driver, StepFailure, TxStep, FREE};
use crate::error::{DbMessage, Error};
use crate::history::{
    shared, Change, HistoryRead, HistoryRow, HistoryStore, RowState, TableName, Timestamp,
    FORMAT_VERSION, META_TABLE, TOOL_VERSION,
};
use crate::lock::{
    Actor, Fence, LockInfo, LockMark, LockStore, LogEntry, LogEvent, Probe, Renewal, Session, Take,
    LOCK_LOG_INDEX, LOCK_LOG_TABLE, LOCK_TABLE, LOG_RETENTION,
};
use crate::source::Checksum;
use crate::sql::Dialect;
use crate::url::{DatabaseUrl, PgHost, PgTarget};

/// Where lockstep keeps its tables when the history table names no schema.
pub(crate) const DEFAULT_SCHEMA: &str = "public";

/// How long to wait for a server that does not answer the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first key of lockstep's advisory locks ("lkst"), so that they do
/// not meet an application's one-key locks; the second is the hash of the
/// history table's name.
const ADVISORY_NAMESPACE: i32 = 0x6c6b_7374;

/// The history row's duration, from the server's clock: the time since the
/// current query message arrived, i.e. this migration's round trip.
const SERVER_DURATION_MS: &str =
    "(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::bigint";

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
    /// The quoted, schema-qualified names.
    history: String,
    meta: String,
    lock: String,
    log: String,
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
}

/// A session as it was when it began: what `psql` gives each file. The
/// authorization first, which `RESET ALL` leaves alone (a `SET ROLE` would
/// survive it).
const RESET_SESSION: &str = "SET SESSION AUTHORIZATION DEFAULT;\nRESET ALL;\n";

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

fn message_in(e: &tokio_postgres::Error, sent: Option<(&str, usize, usize)>) -> DbMessage {
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

impl PgDriver {
    /// Whether `all_there` (the look at lockstep's tables) says they exist
    /// and this history table's format row is in the meta table: what
    /// `create_tables` makes. Outside any transaction.
    fn tables_made(&mut self, all_there: &str) -> Result<bool, tokio_postgres::Error> {
        if !says_true(&self.client.simple_query(all_there)?) {
            return Ok(false);
        }
        let registered = format!(
            "SELECT EXISTS (SELECT 1 FROM {meta} WHERE table_name = {name})::text",
            meta = self.meta,
            name = literal(self.table.name()),
        );
        Ok(says_true(&self.client.simple_query(&registered)?))
    }

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
        let mut config = tokio_postgres::Config::new();
        config.user(&target.user);
        if let Some(password) = &target.password {
            config.password(password.expose());
        }
        config.dbname(&target.dbname);
        match &target.host {
            PgHost::Tcp(host) => config.host(host),
            PgHost::Socket(dir) => config.host_path(dir),
        };
        let timeout = target.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
        config
            .port(target.port)
            .connect_timeout(timeout)
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
        let client = match Client::connect(&config, &tls, timeout) {
            Ok(Some(client)) => client,
            Ok(None) => {
                return Err(connect_error(
                    format!(
                        "timed out after {}s setting up the connection: the server accepted it but did not answer",
                        timeout.as_secs_f64()
                    ),
                    Some(
                        "check that the host and port are PostgreSQL's (or a pooler's in front of it), and whether the server is overloaded; the wait is `connect_timeout` in the URL"
                            .into(),
                    ),
                ))
            }
            Err(e) => {
                let (message, hint) = why_refused(&e, target);
                return Err(connect_error(message, hint));
            }
        };
        let mut driver = PgDriver {
            client,
            target: target.clone(),
            url: url.clone(),
            application_name: application_name.to_string(),
            tls,
            table: table.clone(),
            schema: table.schema().unwrap_or(DEFAULT_SCHEMA).to_string(),
            history: String::new(),
            meta: String::new(),
            lock: String::new(),
            log: String::new(),
            session: None,
            pooled: None,
            check_interval: false,
            reset_pending: false,
        };
        driver.qualify();
        Ok(driver)
    }

    /// Qualifies lockstep's table names with their schema, so that neither
    /// `search_path` nor a migration that changes it can move them.
    fn qualify(&mut self) {
        let prefix = format!("{}.", quote_ident(&self.schema));
        self.history = format!("{prefix}{}", quote_ident(self.table.name()));
        self.meta = format!("{prefix}{}", quote_ident(META_TABLE));
        self.lock = format!("{prefix}{}", quote_ident(LOCK_TABLE));
        self.log = format!("{prefix}{}", quote_ident(LOCK_LOG_TABLE));
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
                    literal(&row.checksum.to_string()),
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
                literal(&checksum.to_string()),
                literal(name)
            ),
        }
    }

    fn rollback(&mut self) {
        if !self.client.is_closed() {
            let _ = self.client.simple_query("ROLLBACK");
        }
    }
}

/// Why a connection failed, and what to check: the message, and a hint.
fn why_refused(e: &tokio_postgres::Error, target: &PgTarget) -> (String, Option<String>) {
    let message = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => chain(e),
    };
    let hint = match code(e) {
        Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            Some("check the user name and password in the database URL".to_string())
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => Some(format!(
            "create the database first, e.g. `createdb {}`",
            target.dbname
        )),
        Some(_) => None,
        None if message.contains("refused") || message.contains("No such file") => Some(match &target.host {
            PgHost::Tcp(h) => format!(
                "is PostgreSQL running and listening on {}?",
                crate::url::host_port(h, target.port)
            ),
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
    (message, hint)
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

/// What one attempt at reading the history saw.
enum Read {
    /// The rows, and the lock in the same snapshot.
    Rows(Vec<HistoryRow>, Option<LockMark>),
    /// No history table.
    Absent,
    /// A history table without lockstep's meta row: someone else's table,
    /// or lockstep's, created between two statements of the read.
    Unsure,
    /// History and meta tables, but no lock table (dropped by hand): read
    /// again without the lock's token.
    NoLockTable,
}

impl PgDriver {
    fn try_read_history(&mut self, with_token: bool) -> Result<Read, Error> {
        let context = format!("reading history from {}", self.table);
        // One statement: the format of lockstep's tables on every row, then
        // the history (one row of NULLs when it is empty). A fleet starting
        // against an up-to-date database costs the server this and nothing
        // else. Rows are decoded as they arrive, not gathered first. The
        // server neither formats times nor sorts: a fresh session's first
        // query is cheaper without either, and the client does both. The
        // lock comes in the same snapshot (see `HistoryRead::lock`):
        // one lookup of the lock row, joined to every history row.
        let lock_row = if with_token {
            format!(
                "LEFT JOIN {lock} AS l ON l.scope = {scope}",
                lock = self.lock,
                scope = literal(&self.table.to_string()),
            )
        } else {
            "LEFT JOIN (SELECT NULL::bigint AS token, NULL::text AS owner) AS l ON true".to_string()
        };
        let sql = format!(
            "SELECT (SELECT format_version FROM {meta} WHERE table_name = {name})::bigint,
                    h.version::bigint, h.name::text, h.checksum::text, h.state::text,
                    h.applied_at::timestamptz,
                    h.duration_ms::bigint, h.applied_by::text, h.lock_token::bigint, h.tool_version::text,
                    l.token::bigint, (l.owner IS NOT NULL)::bool
               FROM (SELECT 1) AS one {lock_row} LEFT JOIN {history} AS h ON true",
            meta = self.meta,
            history = self.history,
            name = literal(self.table.name()),
        );
        let mut head = None;
        let mut rows: Vec<HistoryRow> = Vec::new();
        let read = self.client.for_each_row(&sql, |row| {
            if head.is_none() {
                head = Some((
                    row.try_get::<_, Option<i64>>(0)?,
                    row.try_get::<_, Option<i64>>(10)?,
                    row.try_get::<_, Option<bool>>(11)?,
                ));
            }
            if let Some(version) = row.try_get::<_, Option<i64>>(1)? {
                rows.push(HistoryRow {
                    version: version as u64,
                    name: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                    checksum: Checksum::parse(
                        row.try_get::<_, Option<&str>>(3)?.unwrap_or_default(),
                    ),
                    state: RowState::parse(row.try_get::<_, Option<&str>>(4)?.unwrap_or_default())
                        .unwrap_or(RowState::Started),
                    applied_at: row
                        .try_get::<_, Option<std::time::SystemTime>>(5)?
                        .map_or_else(|| Timestamp::new(""), Timestamp::from),
                    duration_ms: row.try_get::<_, Option<i64>>(6)?.unwrap_or_default(),
                    applied_by: shared(
                        rows.last().map(|r| &r.applied_by),
                        row.try_get::<_, Option<&str>>(7)?.unwrap_or_default(),
                    ),
                    lock_token: row.try_get(8)?,
                    tool_version: shared(
                        rows.last().map(|r| &r.tool_version),
                        row.try_get::<_, Option<&str>>(9)?.unwrap_or_default(),
                    ),
                });
            }
            Ok(())
        });
        // Nearly always in order already: linear. Unstable (the version is
        // the key), so no scratch copy of the rows.
        rows.sort_unstable_by_key(|r| r.version);
        let read = read.map(|()| (head, rows));
        match read {
            Ok((head, rows)) => {
                let (format, token, held) = head.unwrap_or_default();
                if format.is_none() {
                    return Ok(Read::Unsure);
                }
                super::check_format(&self.table, format)?;
                // No lock row yet: the lock was never taken.
                let mark = with_token.then(|| LockMark {
                    token: token.unwrap_or(0),
                    held: held.unwrap_or(false),
                });
                Ok(Read::Rows(rows, mark))
            }
            Err(e) if code(&e) == Some(&SqlState::UNDEFINED_TABLE) => {
                // Any of the tables may be the one missing: ask which, and
                // where `search_path` finds a table of the history table's
                // name (lockstep once followed it).
                let probe = format!(
                    "SELECT to_regclass({}) IS NOT NULL, to_regclass({}) IS NOT NULL, to_regclass({}) IS NOT NULL,
                            (SELECT n.nspname::text FROM pg_catalog.pg_class c
                               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                              WHERE c.oid = to_regclass(quote_ident({})))",
                    literal(&self.history),
                    literal(&self.meta),
                    literal(&self.lock),
                    literal(self.table.name()),
                );
                let messages = self
                    .client
                    .simple_query(&probe)
                    .map_err(|e| db_error(&context, &e))?;
                let flags = messages.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some((
                        r.get(0) == Some("t"),
                        r.get(1) == Some("t"),
                        r.get(2) == Some("t"),
                    )),
                    _ => None,
                });
                let found_in = messages.iter().find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(3).map(str::to_string),
                    _ => None,
                });
                if flags.is_some_and(|(history, ..)| !history) {
                    if let Some(elsewhere) = found_in.filter(|s| *s != self.schema) {
                        return Err(self.found_elsewhere(&elsewhere));
                    }
                }
                match flags {
                    // All there now: created since the read; read again.
                    Some((true, true, true)) => Ok(Read::Unsure),
                    Some((true, true, false)) if with_token => Ok(Read::NoLockTable),
                    Some((true, true, false)) => Ok(Read::Unsure),
                    Some((true, false, _)) => {
                        super::check_format(&self.table, None).map(|()| Read::Absent)
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

impl PgDriver {
    /// The history table is not in lockstep's schema, but `search_path`
    /// finds one of its name in another: where a lockstep that followed
    /// `search_path` made it.
    fn found_elsewhere(&self, schema: &str) -> Error {
        Error::Config {
            message: format!(
                "there is no table {} in schema `{}`, but `search_path` finds one in schema `{schema}`",
                self.table.name(),
                self.schema
            ),
            hint: Some(format!(
                "lockstep keeps its tables in one schema whatever `search_path` says (`public` unless `history_table` names one): if that table is lockstep's history, set `history_table = \"{schema}.{}\"` in lockstep.toml",
                self.table.name()
            )),
        }
    }
}

impl Driver for PgDriver {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn run_transaction(
        &mut self,
        steps: &[TxStep<'_>],
        fence: Option<&Fence>,
        done: &mut dyn FnMut(usize, Duration),
    ) -> Result<(), StepFailure> {
        let last = steps.len().saturating_sub(1);
        for (i, step) in steps.iter().enumerate() {
            // The fence, the migration, its history row and the transaction
            // around them go in one query string: one round trip. The
            // section was checked to end outside any quote or comment, so
            // what follows it is SQL.
            let mut query = String::with_capacity(step.section.sql.len() + 1024);
            if i == 0 {
                query.push_str(&self.begin(fence, true));
            }
            let start_of_section = query.len();
            query.push_str(&step.section.sql);
            query.push_str("\n;\n");
            query.push_str(&self.change_sql(&step.change));
            query.push_str(";\n");
            if i == last {
                query.push_str(&self.commit(fence));
            }
            let started = Instant::now();
            if let Err(failed) = self.client.simple_query_counted(&query) {
                let e = &failed.error;
                let db = message_in(e, Some((&query, start_of_section, step.section.sql.len())));
                self.rollback();
                let before = statements_in(&query[..start_of_section]);
                let Some(ran) = failed.completed.checked_sub(before) else {
                    // The beginning failed: with a fence, that is the lock.
                    return Err(StepFailure {
                        lost: fence.is_some() && fence_failed(e),
                        ..StepFailure::at(i, db)
                    });
                };
                return Err(StepFailure {
                    statement: statement_at(&step.section.sql, ran),
                    ..StepFailure::at(i, db)
                });
            }
            done(i, started.elapsed());
        }
        self.reset_pending = false;
        Ok(())
    }

    fn run_statement(&mut self, sql: &str) -> Result<(), DbMessage> {
        if self.reset_pending {
            // A round trip of its own: sent with the statement, it would
            // make one implicit transaction of both, which statements such
            // as `CREATE INDEX CONCURRENTLY` refuse.
            let reset = self.reset_session();
            self.client.simple_query(&reset).map_err(|e| message(&e))?;
            self.reset_pending = false;
        }
        self.client
            .simple_query(sql)
            .map(drop)
            .map_err(|e| message_in(&e, Some((sql, 0, sql.len()))))
    }

    fn fresh_session(&mut self) -> Result<(), Error> {
        self.reset_pending = true;
        Ok(())
    }

    fn canceller(&self) -> Canceller {
        let token = self.client.cancel_token();
        let tls = self.tls.clone();
        Box::new(move || pg_client::cancel(&token, &tls))
    }
}

impl HistoryStore for PgDriver {
    fn read_history(&mut self) -> Result<Option<HistoryRead>, Error> {
        // Another process may create lockstep's tables while this reads: its
        // creation is atomic, but it can commit between two of the
        // statements below. Read again before calling a table foreign.
        let mut with_token = true;
        for _ in 0..3 {
            match self.try_read_history(with_token)? {
                Read::Rows(rows, lock) => return Ok(Some(HistoryRead { rows, lock })),
                Read::Absent => return Ok(None),
                Read::Unsure => continue,
                Read::NoLockTable => with_token = false,
            }
        }
        super::check_format(&self.table, None).map(|()| None)
    }

    fn create_tables(&mut self) -> Result<(), Error> {
        let context = format!("creating the history table {}", self.table);
        let create_schema = match self.table.schema() {
            Some(s) => format!("CREATE SCHEMA IF NOT EXISTS {};", quote_ident(s)),
            None => String::new(),
        };
        // One transaction, whose advisory lock queues the processes of a
        // fleet starting on an empty database behind the first: no catalog
        // collisions, no retries, no errors in the server's log. Each one
        // behind the first then finds the tables made and creates nothing:
        // at 50 processes, 40-odd of them used to send the whole script,
        // each statement a catalog lookup and a notice under the lock.
        // The look reads pg_class, with the statement's own snapshot, taken
        // after the wait for the advisory lock. to_regclass would answer
        // from the session's catalog cache as it stood when the transaction
        // began, before the wait (negative entries from this run's own
        // failed history read included): "not there" to every process
        // queued behind the first, each of which would send the script.
        let all_there = format!(
            "SELECT (count(*) = 5)::text FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = {schema} AND c.relname IN ({meta}, {history}, {lock}, {log}, {index})",
            schema = literal(&self.schema),
            meta = literal(META_TABLE),
            history = literal(self.table.name()),
            lock = literal(LOCK_TABLE),
            log = literal(LOCK_LOG_TABLE),
            index = literal(LOCK_LOG_INDEX),
        );
        // Most of such a fleet gets here after the first has made the
        // tables: a look without the lock (and, the tables there, at this
        // history table's format row) ends it in two plain reads.
        if self.tables_made(&all_there).unwrap_or(false) {
            return Ok(());
        }
        // Read committed whatever the server's default: a snapshot per
        // statement, so the look sees what the one before it made.
        let look = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED;
             SELECT pg_advisory_xact_lock({ADVISORY_NAMESPACE}, hashtext({qualified}));
             {all_there}",
            qualified = literal(&self.history),
        );
        let register = format!(
            "INSERT INTO {meta} (table_name, format_version, created_by)
                 VALUES ({name}, {FORMAT_VERSION}, {version})
                 ON CONFLICT (table_name) DO NOTHING;
             COMMIT;",
            meta = self.meta,
            name = literal(self.table.name()),
            version = literal(TOOL_VERSION),
        );
        let create = format!(
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
             CREATE TABLE IF NOT EXISTS {lock} (
                 scope text PRIMARY KEY,
                 token bigint NOT NULL DEFAULT 0,
                 owner text,
                 host text,
                 pid bigint,
                 command text,
                 tool_version text,
                 session_pid bigint,
                 session_start text,
                 acquired_at timestamptz,
                 heartbeat_at timestamptz,
                 expires_at timestamptz
             );
             CREATE TABLE IF NOT EXISTS {log} (
                 id bigserial PRIMARY KEY,
                 scope text NOT NULL,
                 at timestamptz NOT NULL,
                 event text NOT NULL,
                 token bigint NOT NULL,
                 owner text,
                 host text,
                 pid bigint,
                 command text,
                 previous_owner text,
                 detail text
             );
             CREATE INDEX IF NOT EXISTS {log_index} ON {log} (scope, id);
             {register}",
            meta = self.meta,
            history = self.history,
            lock = self.lock,
            log = self.log,
            log_index = quote_ident(LOCK_LOG_INDEX),
        );
        // Two sessions creating the same table at once can collide in the
        // catalog even with IF NOT EXISTS (23505 on pg_type's index, 42P07,
        // or 42710 for the table's row type): the other one created it, and
        // the next attempt sees it. The advisory lock above prevents this
        // among lockstep processes; the retries remain for anything else
        // that creates the same tables.
        let mut attempt = 0;
        loop {
            let made = self.client.simple_query(&look).and_then(|messages| {
                let found = says_true(&messages);
                self.client
                    .simple_query(if found { &register } else { &create })
                    .map(drop)
            });
            if made.is_err() {
                self.rollback();
            }
            match made {
                Ok(()) => return Ok(()),
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

    fn change_history(
        &mut self,
        changes: &[Change<'_>],
        fence: Option<&Fence>,
    ) -> Result<(), Error> {
        let mut sql = self.begin(fence, false);
        let begun = sql.len();
        for change in changes {
            sql.push_str(&self.change_sql(change));
            sql.push_str(";\n");
        }
        sql.push_str(&self.commit(fence));
        self.client
            .simple_query_counted(&sql)
            .map(drop)
            .map_err(|failed| {
                self.rollback();
                let in_fence = failed.completed < statements_in(&sql[..begun]);
                match fence {
                    Some(fence) if in_fence && fence_failed(&failed.error) => fence.lost(),
                    _ => db_error(format!("writing history to {}", self.table), &failed.error),
                }
            })
    }
}

impl LockStore for PgDriver {
    fn session(&mut self) -> Result<Session, Error> {
        if let Some(session) = &self.session {
            return Ok(session.clone());
        }
        // The server notices a client that died in the middle of a long
        // statement within a quarter of a second (PostgreSQL 14+), and
        // ends the statement, releasing the lock row for the next holder:
        // with a waiter's poll, a SIGKILLed holder is replaced within a
        // second. One statement; the setting exists from PostgreSQL 14 on.
        let sql = "SELECT pg_backend_pid(),
                          (SELECT (extract(epoch FROM backend_start) * 1000000)::bigint
                             FROM pg_stat_activity WHERE pid = pg_backend_pid()),
                          current_setting('port'),
                          (SELECT set_config(name, '250', false) FROM pg_settings
                            WHERE name = 'client_connection_check_interval')";
        let messages = self
            .client
            .simple_query(sql)
            .map_err(|e| db_error("reading this session's identity", &e))?;
        let row = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).and_then(|v| v.parse::<i64>().ok()),
                r.get(1).map(str::to_string),
                r.get(2).and_then(|v| v.parse::<u16>().ok()),
                r.get(3).is_some(),
            )),
            _ => None,
        });
        let (pid, start, server_port, check_interval) = row.unwrap_or_default();
        self.check_interval = check_interval;
        let pooled = self.note_server_port(server_port);
        let session = if pooled {
            Session::default()
        } else {
            Session { pid, start }
        };
        self.session = Some(session.clone());
        Ok(session)
    }

    fn probe_lock(&mut self, scope: &str) -> Result<Probe, Error> {
        let context = format!("acquiring the migration lock for {scope}");
        let select = format!("{} FOR UPDATE OF l NOWAIT", self.lock_select(scope));
        // Under serializable isolation a concurrent renewal can fail the
        // row lock with 40001: try again at once, a few times.
        for _ in 0..5 {
            let mut result = self.client.simple_query(&format!("BEGIN;\n{select}"));
            if matches!(&result, Ok(m) if lock_row(m).is_none()) {
                // First use of this scope: create its row, then lock it.
                result = self.client.simple_query(&format!(
                    "INSERT INTO {lock} (scope, token) VALUES ({s}, {high}) ON CONFLICT (scope) DO NOTHING;\n{select}",
                    lock = self.lock,
                    s = literal(scope),
                    high = self.token_high_mark(scope),
                ));
            }
            match result {
                Ok(messages) => match lock_row(&messages) {
                    Some(row) => return Ok(Probe::Row(parse_lock(scope, row))),
                    None => {
                        self.rollback();
                        return Err(Error::Database {
                            context,
                            db: Box::new(DbMessage::plain("the lock row vanished")),
                        });
                    }
                },
                Err(e) if code(&e) == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    self.rollback();
                    let seen = self.read_lock(scope).ok().flatten();
                    return Ok(Probe::Busy(seen));
                }
                Err(e) if is_retryable(&e) => {
                    self.rollback();
                    continue;
                }
                Err(e) => {
                    self.rollback();
                    return Err(db_error(context, &e));
                }
            }
        }
        self.rollback();
        Ok(Probe::Busy(self.read_lock(scope).ok().flatten()))
    }

    fn take_lock(&mut self, take: &Take<'_>) -> Result<i64, Error> {
        let scope = literal(take.scope);
        let sql = format!(
            "UPDATE {lock} SET token = token + 1, owner = {owner}, host = {host}, pid = {pid},
                    command = {command}, tool_version = {version}, session_pid = {session_pid},
                    session_start = {session_start}, acquired_at = now(), heartbeat_at = now(),
                    expires_at = now() + {ttl}
              WHERE scope = {scope} RETURNING token;
             {log};
             DELETE FROM {log_table} WHERE scope = {scope} AND id < (
                 SELECT min(id) FROM (SELECT id FROM {log_table} WHERE scope = {scope}
                                       ORDER BY id DESC LIMIT {LOG_RETENTION}) AS kept);
             COMMIT;",
            lock = self.lock,
            owner = literal(take.actor.owner),
            host = literal(take.actor.host),
            pid = take.actor.pid,
            command = literal(take.actor.command),
            version = literal(TOOL_VERSION),
            session_pid = take.session.pid.map_or("NULL".into(), |p| p.to_string()),
            session_start = take.session.start.as_deref().map_or("NULL".into(), literal),
            ttl = interval(take.ttl),
            log = self.log_insert(
                take.scope,
                take.event,
                &format!("(SELECT token FROM {} WHERE scope = {scope})", self.lock),
                take.actor,
            ),
            log_table = self.log,
        );
        match self.client.simple_query(&sql) {
            Ok(messages) => statements(&messages)
                .first()
                .and_then(|rows| first_value(rows))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::Database {
                    context: format!("acquiring the migration lock for {}", take.scope),
                    db: Box::new(DbMessage::plain("no token returned")),
                }),
            Err(e) => {
                self.rollback();
                Err(db_error(
                    format!("acquiring the migration lock for {}", take.scope),
                    &e,
                ))
            }
        }
    }

    fn abandon(&mut self) {
        self.rollback();
    }

    fn renew_lock(&mut self, fence: &Fence) -> Result<Renewal, Error> {
        // A short lock timeout: while the holder's own migration has the
        // row locked, waiting would only delay the next beat.
        let sql = format!(
            "BEGIN;
             SET LOCAL lock_timeout = '1s';
             UPDATE {} SET heartbeat_at = now(), expires_at = now() + {}
              WHERE scope = {} AND owner = {} AND token = {} RETURNING token;
             COMMIT;",
            self.lock,
            interval(fence.ttl),
            literal(&fence.scope),
            literal(&fence.owner),
            fence.token
        );
        match self.client.simple_query(&sql) {
            Ok(messages) => {
                let renewed = statements(&messages)
                    .get(2)
                    .is_some_and(|rows| first_value(rows).is_some());
                Ok(if renewed {
                    Renewal::Renewed
                } else {
                    Renewal::Lost
                })
            }
            Err(e) if code(&e) == Some(&SqlState::LOCK_NOT_AVAILABLE) || is_retryable(&e) => {
                self.rollback();
                Ok(Renewal::Busy)
            }
            // The lock's table dropped by hand: the lock is gone.
            Err(e) if code(&e) == Some(&SqlState::UNDEFINED_TABLE) => {
                self.rollback();
                Ok(Renewal::Lost)
            }
            Err(e) => {
                self.rollback();
                Err(db_error("renewing the migration lock", &e))
            }
        }
    }

    fn release_lock(&mut self, fence: &Fence, who: &Actor<'_>) -> Result<bool, Error> {
        let scope = literal(&fence.scope);
        let sql = format!(
            "BEGIN;
             WITH freed AS (
                 UPDATE {lock} SET {FREE}
                  WHERE scope = {scope} AND owner = {owner} AND token = {token} RETURNING token)
             INSERT INTO {log} (scope, at, event, token, owner, host, pid, command)
             SELECT {scope}, clock_timestamp(), {event}, token, {owner}, {host}, {pid}, {command} FROM freed
             RETURNING token;
             NOTIFY {channel};
             COMMIT;",
            lock = self.lock,
            log = self.log,
            owner = literal(&fence.owner),
            token = fence.token,
            event = literal(LogEvent::Released.name()),
            host = literal(who.host),
            pid = who.pid,
            command = literal(who.command),
            channel = channel(&fence.scope),
        );
        for attempt in 0.. {
            match self.client.simple_query(&sql) {
                Ok(messages) => {
                    return Ok(statements(&messages)
                        .get(1)
                        .is_some_and(|rows| first_value(rows).is_some()))
                }
                Err(e) if is_retryable(&e) && attempt < 5 => self.rollback(),
                Err(e) => {
                    self.rollback();
                    return Err(db_error(
                        format!("releasing the migration lock for {}", fence.scope),
                        &e,
                    ));
                }
            }
        }
        unreachable!()
    }

    fn log_lost(&mut self, fence: &Fence, who: &Actor<'_>, detail: &str) -> Result<(), Error> {
        let sql = self.log_insert(
            &fence.scope,
            LogEvent::Lost { detail },
            &fence.token.to_string(),
            who,
        );
        self.client
            .simple_query(&sql)
            .map(drop)
            .map_err(|e| db_error("logging the lost lock", &e))
    }

    fn read_lock(&mut self, scope: &str) -> Result<Option<LockInfo>, Error> {
        let context = format!("reading the migration lock for {scope}");
        let messages = match self.client.simple_query(&self.lock_select(scope)) {
            Ok(m) => m,
            Err(e) if code(&e) == Some(&SqlState::UNDEFINED_TABLE) => return Ok(None),
            Err(e) => return Err(db_error(context, &e)),
        };
        let Some(row) = lock_row(&messages) else {
            return Ok(None);
        };
        self.note_server_port(int(row, PORT_COLUMN).and_then(|p| u16::try_from(p).ok()));
        let mut info = parse_lock(scope, row);
        // An expired lease with no sign of the holder may still be a long
        // migration that blocks its own heartbeat: it has the row locked.
        // Look without waiting.
        if info.is_held() && info.is_expired() && info.session_alive != Some(true) {
            info.migrating = self.holder_busy(scope);
        }
        Ok(Some(info))
    }

    fn inspect_lock(&mut self, scope: &str) -> Result<Option<LockInfo>, Error> {
        let mut info = self.read_lock(scope)?;
        if let Some(info) = info.as_mut().filter(|i| i.is_held() && !i.migrating) {
            info.migrating = self.holder_busy(scope);
        }
        Ok(info)
    }

    fn force_release(
        &mut self,
        scope: &str,
        expected: &LockInfo,
        who: &Actor<'_>,
        wait: Duration,
    ) -> Result<bool, Error> {
        let context = format!("releasing the migration lock for {scope}");
        let s = literal(scope);
        let event = LogEvent::ForceReleased {
            previous: expected.owner.as_deref(),
        };
        let sql = format!(
            "BEGIN;
             SET LOCAL lock_timeout = '{wait_ms}ms';
             WITH freed AS (
                 UPDATE {lock} SET token = token + 1, {FREE}
                  WHERE scope = {s} AND token = {token} RETURNING token)
             INSERT INTO {log} (scope, at, event, token, owner, host, pid, command, previous_owner)
             SELECT {s}, clock_timestamp(), {event}, token, {owner}, {host}, {pid}, {command}, {previous} FROM freed
             RETURNING token;
             NOTIFY {channel};
             COMMIT;",
            wait_ms = wait.as_millis().max(1),
            lock = self.lock,
            log = self.log,
            token = expected.token,
            owner = literal(who.owner),
            host = literal(who.host),
            pid = who.pid,
            command = literal(who.command),
            event = literal(event.name()),
            previous = event.previous_owner().map_or("NULL".into(), literal),
            channel = channel(scope),
        );
        match self.client.simple_query(&sql) {
            Ok(messages) => Ok(statements(&messages)
                .get(2)
                .is_some_and(|rows| first_value(rows).is_some())),
            Err(e) if code(&e) == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                self.rollback();
                Err(Error::Database {
                    context,
                    db: Box::new(DbMessage::plain(format!(
                        "a migration of the holder kept the lock row for {}s; nothing was released",
                        wait.as_secs()
                    ))),
                })
            }
            Err(e) => {
                self.rollback();
                Err(db_error(context, &e))
            }
        }
    }

    fn read_lock_log(&mut self, scope: &str, limit: usize) -> Result<Vec<LogEntry>, Error> {
        let sql = format!(
            "SELECT id, to_char(at AT TIME ZONE 'UTC', {TIME_FORMAT}), event, token, owner, host, pid,
                    command, previous_owner, detail
               FROM {} WHERE scope = {} ORDER BY id DESC LIMIT {limit}",
            self.log,
            literal(scope)
        );
        let messages = match self.client.simple_query(&sql) {
            Ok(m) => m,
            Err(e) if code(&e) == Some(&SqlState::UNDEFINED_TABLE) => return Ok(Vec::new()),
            Err(e) => return Err(db_error(format!("reading the lock log for {scope}"), &e)),
        };
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(LogEntry {
                    id: int(r, 0).unwrap_or_default(),
                    at: text(r, 1).unwrap_or_default(),
                    event: text(r, 2).unwrap_or_default(),
                    token: int(r, 3).unwrap_or_default(),
                    owner: text(r, 4),
                    host: text(r, 5),
                    pid: int(r, 6),
                    command: text(r, 7),
                    previous_owner: text(r, 8),
                    detail: text(r, 9),
                }),
                _ => None,
            })
            .collect())
    }

    fn can_notify(&self) -> bool {
        self.pooled == Some(false)
    }

    fn listen(&mut self, scope: &str) -> Result<bool, Error> {
        self.client
            .simple_query(&format!("LISTEN {}", channel(scope)))
            .map(|_| true)
            .map_err(|e| db_error("listening for lock releases", &e))
    }

    fn unlisten(&mut self) {
        let _ = self.client.simple_query("UNLISTEN *");
    }

    fn wait_for_notification(&mut self, timeout: Duration) -> Result<bool, Error> {
        // Only releases (plain and forced) notify the scope's channel.
        match self.client.wait_for_notification(timeout) {
            Err(e) => Err(db_error("waiting for the lock", &e)),
            Ok(n) => Ok(n.is_some()),
        }
    }

    fn poll_interval(&self) -> Duration {
        // With notifications, polling only catches expired leases and
        // holders whose session ended: half a second, so that a killed
        // holder is replaced within a second (the server needs up to a
        // quarter to notice), for one cheap read per waiter per poll.
        Duration::from_millis(500)
    }

    fn heartbeat_store(&self) -> Result<Box<dyn LockStore>, Error> {
        let driver =
            PgDriver::connect(&self.target, &self.url, &self.table, &self.application_name)?;
        Ok(Box::new(driver))
    }
}

/// How PostgreSQL formats lockstep's timestamps: RFC 3339 in UTC.
const TIME_FORMAT: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";

/// The message the fence raises when the token is no longer current.
const LOST_MARKER: &str = "lockstep-lock-lost";

fn is_fence_failure(e: &tokio_postgres::Error) -> bool {
    code(e) == Some(&SqlState::INVALID_TEXT_REPRESENTATION)
        && e.as_db_error()
            .is_some_and(|db| db.message().contains(LOST_MARKER))
}

/// Whether an error in a fenced transaction's beginning means the lock is
/// lost: the token changed, or the lock's table is gone (dropped by hand).
fn fence_failed(e: &tokio_postgres::Error) -> bool {
    is_fence_failure(e) || code(e) == Some(&SqlState::UNDEFINED_TABLE)
}

/// How many statements a query string of lockstep's own holds: each
/// completes with a message of its own.
fn statements_in(sql: &str) -> usize {
    crate::sql::split(sql, Dialect::Postgres).map_or(0, |statements| statements.len())
}

/// The section's statement that failed after `ran` of them completed;
/// `None` when all of them had: what failed came after the section.
fn statement_at(section: &str, ran: usize) -> Option<super::StatementAt> {
    let statements = crate::sql::split(section, Dialect::Postgres).ok()?;
    statements.get(ran).map(|s| super::StatementAt {
        index: ran,
        offset: s.range.start,
    })
}

/// Serialization failures and deadlocks: the transaction was rolled back
/// whole and can run again.
fn is_retryable(e: &tokio_postgres::Error) -> bool {
    matches!(code(e), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

fn interval(d: Duration) -> String {
    format!("interval '{} milliseconds'", d.as_millis())
}

/// The notification channel of a scope: an identifier of at most 63 bytes.
fn channel(scope: &str) -> String {
    let name = format!("lockstep:{scope}");
    if name.len() <= 63 {
        quote_ident(&name)
    } else {
        // FNV-1a: stable across runs and machines, which is all it needs.
        let hash = scope.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        quote_ident(&format!("lockstep:{hash:016x}"))
    }
}

fn lock_row(messages: &[SimpleQueryMessage]) -> Option<&tokio_postgres::SimpleQueryRow> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    })
}

fn text(r: &tokio_postgres::SimpleQueryRow, i: usize) -> Option<String> {
    r.get(i).map(str::to_string)
}

fn int(r: &tokio_postgres::SimpleQueryRow, i: usize) -> Option<i64> {
    r.get(i).and_then(|v| v.parse().ok())
}

/// The column of `lock_select` with the server's port.
const PORT_COLUMN: usize = 13;

fn parse_lock(scope: &str, r: &tokio_postgres::SimpleQueryRow) -> LockInfo {
    LockInfo {
        scope: scope.to_string(),
        token: int(r, 0).unwrap_or_default(),
        owner: text(r, 1),
        host: text(r, 2),
        pid: int(r, 3),
        command: text(r, 4),
        tool_version: text(r, 5),
        acquired_at: text(r, 6),
        heartbeat_at: text(r, 7),
        expires_at: text(r, 8),
        held_ms: int(r, 9),
        heartbeat_age_ms: int(r, 10),
        expires_in_ms: int(r, 11),
        session_alive: r.get(12).map(|v| v == "t"),
        migrating: false,
        blocker: None,
    }
}

impl PgDriver {
    /// Whether a pooler or proxy is in between, from the port the server
    /// says it listens on: another port than the one connected to means
    /// one is. Its server sessions outlive the clients that use them, so
    /// they prove nothing about liveness. A port that cannot be read
    /// counts as a proxy: the safe side.
    fn note_server_port(&mut self, server_port: Option<u16>) -> bool {
        let pooled = server_port != Some(self.target.port);
        self.pooled = Some(pooled);
        pooled
    }

    /// The lock row with its ages by the server's clock, and whether the
    /// holder's session still exists: a backend with its pid and start time.
    fn lock_select(&self, scope: &str) -> String {
        format!(
            "SELECT l.token, l.owner, l.host, l.pid, l.command, l.tool_version,
                    to_char(l.acquired_at AT TIME ZONE 'UTC', {TIME_FORMAT}),
                    to_char(l.heartbeat_at AT TIME ZONE 'UTC', {TIME_FORMAT}),
                    to_char(l.expires_at AT TIME ZONE 'UTC', {TIME_FORMAT}),
                    (extract(epoch FROM now() - l.acquired_at) * 1000)::bigint,
                    (extract(epoch FROM now() - l.heartbeat_at) * 1000)::bigint,
                    (extract(epoch FROM l.expires_at - now()) * 1000)::bigint,
                    CASE WHEN l.session_pid IS NULL THEN NULL ELSE (
                        SELECT CASE WHEN count(*) = 0 THEN false
                                    WHEN bool_and(a.backend_start IS NULL) THEN NULL
                                    ELSE bool_or((extract(epoch FROM a.backend_start) * 1000000)::bigint::text = l.session_start)
                               END
                          FROM pg_stat_activity a WHERE a.pid = l.session_pid)
                    END,
                    current_setting('port')
               FROM {} AS l WHERE l.scope = {}",
            self.lock,
            literal(scope)
        )
    }

    /// The highest token the scope ever had, for a lock row made anew:
    /// from the lock log and the history, which a deleted lock row does not
    /// take with it. Tokens never repeat: a holder paused while its row was
    /// deleted by hand cannot pass its fence beside a new holder.
    fn token_high_mark(&self, scope: &str) -> String {
        format!(
            "greatest((SELECT max(token) FROM {log} WHERE scope = {s}), (SELECT max(lock_token) FROM {history}), 0)",
            log = self.log,
            s = literal(scope),
            history = self.history,
        )
    }

    /// Whether the holder is busy with a migration right now, looked at
    /// without waiting: a transaction of its has the lock row locked (a
    /// migration in a transaction), or its session runs a statement (one
    /// outside a transaction, such as `CREATE INDEX CONCURRENTLY`; not seen
    /// behind a pooler, where the session is not the holder's).
    fn holder_busy(&mut self, scope: &str) -> bool {
        let s = literal(scope);
        let probe = format!(
            "BEGIN;
             SELECT 1 FROM {lock} WHERE scope = {s} FOR UPDATE SKIP LOCKED;
             SELECT EXISTS (
                 SELECT 1 FROM {lock} AS l JOIN pg_stat_activity AS a ON a.pid = l.session_pid
                  WHERE l.scope = {s} AND a.state = 'active'
                    AND (extract(epoch FROM a.backend_start) * 1000000)::bigint::text = l.session_start)::text;
             ROLLBACK;",
            lock = self.lock,
        );
        match self.client.simple_query(&probe) {
            Ok(messages) => {
                let results = statements(&messages);
                let row_locked = results
                    .get(1)
                    .is_some_and(|rows| first_value(rows).is_none());
                let running = results.get(2).and_then(|rows| first_value(rows)) == Some("true");
                row_locked || running
            }
            Err(_) => {
                self.rollback();
                false
            }
        }
    }

    /// An INSERT into the lock log; `token` is an SQL expression.
    fn log_insert(&self, scope: &str, event: LogEvent<'_>, token: &str, who: &Actor<'_>) -> String {
        format!(
            "INSERT INTO {} (scope, at, event, token, owner, host, pid, command, previous_owner, detail)
             VALUES ({}, clock_timestamp(), {}, {token}, {}, {}, {}, {}, {}, {})",
            self.log,
            literal(scope),
            literal(event.name()),
            literal(who.owner),
            literal(who.host),
            who.pid,
            literal(who.command),
            event.previous_owner().map_or("NULL".into(), literal),
            event.detail().map_or("NULL".into(), literal),
        )
    }

    /// Statements that return the session to how it began, lockstep's own
    /// settings kept.
    fn reset_session(&self) -> String {
        let mut sql = RESET_SESSION.to_string();
        if self.check_interval {
            sql.push_str("SET client_connection_check_interval = 250;\n");
        }
        sql
    }

    /// Opens a transaction; with a fence, checks the token first. The fence's
    /// UPDATE row-locks the lock row until commit, so no takeover or forced
    /// release can interleave with what follows: they wait for the commit
    /// and land before the next fence, or (when that fence reaches the row
    /// first) after the next migration's commit; either way the fence after
    /// them fails.
    /// With `reset`, the session is first returned to how it began (inside
    /// the transaction: rolled back with it, and sent again with the next
    /// attempt; before lockstep's own `SET LOCAL`, which `RESET ALL` would
    /// undo).
    fn begin(&self, fence: Option<&Fence>, reset: bool) -> String {
        let reset = if reset {
            self.reset_session()
        } else {
            String::new()
        };
        let Some(fence) = fence else {
            return format!("BEGIN;\n{reset}");
        };
        format!(
            "BEGIN;
             {reset}
             SET LOCAL idle_in_transaction_session_timeout = '{idle}ms';
             WITH fence AS (
                 UPDATE {lock} SET heartbeat_at = now()
                  WHERE scope = {scope} AND owner = {owner} AND token = {token} RETURNING 1)
             SELECT CAST(CASE WHEN count(*) = 1 THEN '1' ELSE '{LOST_MARKER}' END AS integer) FROM fence;\n",
            // A holder gone silent inside this transaction (frozen host,
            // partition) must not pin the lock row forever.
            idle = fence.ttl.as_millis().max(1000),
            lock = self.lock,
            scope = literal(&fence.scope),
            owner = literal(&fence.owner),
            token = fence.token,
        )
    }

    /// Commits; with a fence, first renews the lease from the commit's
    /// clock: the holder just proved it is alive.
    fn commit(&self, fence: Option<&Fence>) -> String {
        match fence {
            None => "COMMIT;".to_string(),
            Some(fence) => format!(
                "UPDATE {} SET heartbeat_at = clock_timestamp(), expires_at = clock_timestamp() + {}
                  WHERE scope = {} AND token = {};
                 COMMIT;",
                self.lock,
                interval(fence.ttl),
                literal(&fence.scope),
                fence.token
            ),
        }
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
