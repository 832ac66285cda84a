//! lockstep's tables on PostgreSQL, and the history's rows.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

use crate::driver::tables::{self, Kind};
use crate::error::Error;
use crate::history::{
    Change, HistoryRead, HistoryRow, HistoryStore, RepeatRow, RowState, CREATED_FORMAT, META_TABLE,
    TEXT_VERSIONS, TOOL_VERSION,
};
use crate::lock::{Fence, LockMark, LOCK_LOG_INDEX, LOCK_LOG_TABLE, LOCK_TABLE, RETRIES};
use crate::remedy::Remedy;
use crate::source::Checksum;
use crate::version::Version;

use super::run::{fence_failed, statements_in};
use super::{code, db_error, literal, quote_ident, says_true, PgDriver, TIME_FORMAT};

/// The first key of lockstep's advisory locks ("lkst"), so that they do
/// not meet an application's one-key locks; the second is the hash of the
/// history table's name.
const ADVISORY_NAMESPACE: i32 = 0x6c6b_7374;

/// The history row's duration, from the server's clock: the time since the
/// current query message arrived, i.e. this migration's round trip.
const SERVER_DURATION_MS: &str =
    "(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::bigint";

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

impl HistoryStore for PgDriver {
    type Error = Error;

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
        crate::driver::check_format(&self.table, None).map(|()| None)
    }

    fn create_tables(&mut self) -> Result<(), Error> {
        // One transaction, whose advisory lock queues the processes of a
        // fleet starting on an empty database behind the first: no catalog
        // collisions, no retries, no errors in the server's log. Each one
        // behind the first then finds the tables made and creates nothing
        // (instead of sending the whole script, each statement a catalog
        // lookup and a notice under the lock).
        let all_there = self.all_there();
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
            qualified = literal(&self.tables.history),
        );
        let register = format!(
            "INSERT INTO {meta} (table_name, format_version, created_at, created_by)
                 VALUES ({name}, {CREATED_FORMAT}, now(), {version})
                 ON CONFLICT (table_name) DO NOTHING;
             COMMIT;",
            meta = self.tables.meta,
            name = literal(self.table.name()),
            version = literal(TOOL_VERSION),
        );
        let create = format!("{}{register}", self.create_script());
        self.look_then_create(&look, &register, &create)
            .map_err(|e| db_error(format!("creating the history table {}", self.table), &e))
    }

    fn read_repeatables(&mut self) -> Result<Vec<RepeatRow>, Error> {
        let applied_at = format!("to_char(applied_at AT TIME ZONE 'UTC', {TIME_FORMAT})");
        let sql = tables::repeatable_select(&self.tables, self.table.name(), &applied_at);
        let context = format!("reading the repeatable migrations of {}", self.table);
        // A look first, until the table is seen: a read of a table that is
        // not there would leave an error in the server's log on every
        // `status`. An upgrade reads it again under the lock.
        if !self.repeatable_table_seen {
            let look = format!(
                "SELECT (to_regclass({}) IS NOT NULL)::text",
                literal(&self.tables.repeatable)
            );
            let there = self
                .client
                .simple_query(&look)
                .map_err(|e| db_error(&context, &e))?;
            if !says_true(&there) {
                return Ok(Vec::new());
            }
            self.repeatable_table_seen = true;
        }
        let rows = self.text_rows(&sql, &context)?;
        Ok(tables::repeatable_rows(rows.unwrap_or_default()))
    }

    fn create_repeatable_table(&mut self) -> Result<(), Error> {
        let sql = tables::create_repeatable(&self.tables, type_of);
        let mut attempt = 0;
        loop {
            match self.client.simple_query(&sql) {
                Err(e) if attempt < RETRIES && collided(&e) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10 * attempt as u64));
                }
                Err(e) => {
                    return Err(db_error(
                        format!("creating the table {}", self.tables.repeatable),
                        &e,
                    ))
                }
                Ok(_) => {
                    self.repeatable_table_seen = true;
                    return Ok(());
                }
            }
        }
    }

    fn widen_versions(&mut self) -> Result<(), Error> {
        // The read under the lock just before said so.
        if self.text_versions {
            return Ok(());
        }
        let context = format!("raising {} to table format {TEXT_VERSIONS}", self.table);
        let format = format!(
            "SELECT (format_version >= {TEXT_VERSIONS})::text FROM {meta} WHERE table_name = {name}",
            meta = self.tables.meta,
            name = literal(self.table.name()),
        );
        let there = self
            .client
            .simple_query(&format)
            .map_err(|e| db_error(&context, &e))?;
        if says_true(&there) {
            self.text_versions = true;
            return Ok(());
        }
        let widen = format!(
            "BEGIN;
             ALTER TABLE {history} ALTER COLUMN version TYPE text USING version::text;
             UPDATE {meta} SET format_version = {TEXT_VERSIONS} WHERE table_name = {name};
             COMMIT;",
            history = self.tables.history,
            meta = self.tables.meta,
            name = literal(self.table.name()),
        );
        self.client.simple_query(&widen).map_err(|e| {
            self.rollback();
            db_error(&context, &e)
        })?;
        self.text_versions = true;
        Ok(())
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

impl PgDriver {
    /// A look at lockstep's tables: whether all five objects are there.
    /// It reads pg_class, with the statement's own snapshot, taken after
    /// the wait for the advisory lock. to_regclass would answer from the
    /// session's catalog cache as it stood when the transaction began,
    /// before the wait (negative entries from this run's own failed history
    /// read included): "not there" to every process queued behind the
    /// first, each of which would send the script.
    fn all_there(&self) -> String {
        format!(
            "SELECT (count(*) = 5)::text FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = {schema} AND c.relname IN ({meta}, {history}, {lock}, {log}, {index})",
            schema = literal(&self.schema),
            meta = literal(META_TABLE),
            history = literal(self.table.name()),
            lock = literal(LOCK_TABLE),
            log = literal(LOCK_LOG_TABLE),
            index = literal(LOCK_LOG_INDEX),
        )
    }

    /// The schema (when the history table names one), lockstep's tables and
    /// the lock log's index.
    fn create_script(&self) -> String {
        let create_schema = match self.table.schema() {
            Some(s) => format!("CREATE SCHEMA IF NOT EXISTS {};\n", quote_ident(s)),
            None => String::new(),
        };
        let tables = tables::create_script(&self.tables, type_of);
        format!(
            "{create_schema}{tables}CREATE INDEX IF NOT EXISTS {index} ON {log} (scope, id);\n",
            index = quote_ident(LOCK_LOG_INDEX),
            log = self.tables.log,
        )
    }

    /// In one transaction, under the advisory lock `look` takes: registers
    /// this history table when the tables are there, else creates them.
    /// Two sessions creating the same table at once can collide in the
    /// catalog even with IF NOT EXISTS (23505 on pg_type's index, 42P07,
    /// or 42710 for the table's row type): the other one created it, and
    /// the next attempt sees it. The advisory lock prevents this among
    /// lockstep processes; the retries remain for anything else that
    /// creates the same tables.
    fn look_then_create(
        &mut self,
        look: &str,
        register: &str,
        create: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let mut attempt = 0;
        loop {
            let made = self.client.simple_query(look).and_then(|messages| {
                let found = says_true(&messages);
                self.client
                    .simple_query(if found { register } else { create })
                    .map(drop)
            });
            if made.is_err() {
                self.rollback();
            }
            match made {
                Err(e) if attempt < RETRIES && collided(&e) => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(10 * attempt as u64));
                }
                other => return other,
            }
        }
    }

    /// Whether `all_there` (the look at lockstep's tables) says they exist
    /// and this history table's format row is in the meta table: what
    /// `create_tables` makes. Outside any transaction.
    fn tables_made(&mut self, all_there: &str) -> Result<bool, tokio_postgres::Error> {
        if !says_true(&self.client.simple_query(all_there)?) {
            return Ok(false);
        }
        let registered = format!(
            "SELECT EXISTS (SELECT 1 FROM {meta} WHERE table_name = {name})::text",
            meta = self.tables.meta,
            name = literal(self.table.name()),
        );
        Ok(says_true(&self.client.simple_query(&registered)?))
    }

    pub(super) fn change_sql(&self, change: &Change<'_>) -> String {
        let history = &self.tables.history;
        match change {
            Change::Insert(row) => {
                let (state, duration) = if row.started {
                    (RowState::Started, "0")
                } else {
                    (RowState::Applied, SERVER_DURATION_MS)
                };
                format!(
                    "INSERT INTO {history} (version, name, checksum, state, applied_at, duration_ms, applied_by, lock_token, tool_version) \
                     VALUES ('{}', {}, {}, '{}', clock_timestamp(), {duration}, {}, {}, {})",
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
                "UPDATE {history} SET state = '{}', applied_at = clock_timestamp(), duration_ms = {duration_ms} WHERE version = '{version}'",
                state.as_str()
            ),
            Change::SetState { version, state, duration_ms: None } => format!(
                "UPDATE {history} SET state = '{}' WHERE version = '{version}'",
                state.as_str()
            ),
            Change::Delete { version } => format!("DELETE FROM {history} WHERE version = '{version}'"),
            Change::SetChecksum { version, name, checksum } => format!(
                "UPDATE {history} SET checksum = {}, name = {} WHERE version = '{version}'",
                literal(&checksum.to_string()),
                literal(name)
            ),
            Change::Repeated { name, checksum, applied_by, lock_token, duration_ms } => {
                let values = tables::repeated_values(self.table.name(), name, checksum, applied_by, *lock_token);
                let duration = duration_ms.map_or(SERVER_DURATION_MS.to_string(), |d| d.to_string());
                tables::repeated_upsert(
                    &self.tables.repeatable,
                    "clock_timestamp()",
                    &duration,
                    |n| value_literal(&values[n - 1]),
                    "ON CONFLICT (table_name, name) DO UPDATE SET",
                    |column| format!("excluded.{column}"),
                )
            }
        }
    }

    fn try_read_history(&mut self, with_token: bool) -> Result<Read, Error> {
        let context = format!("reading history from {}", self.table);
        let sql = self.history_sql(with_token);
        // Rows are decoded as they arrive, not gathered first.
        let mut head = None;
        let mut rows: Vec<HistoryRow> = Vec::new();
        let mut unreadable = None;
        let read = self.client.for_each_row(&sql, |row| {
            if head.is_none() {
                head = Some((
                    row.try_get::<_, Option<i64>>(0)?,
                    row.try_get::<_, Option<i64>>(10)?,
                    row.try_get::<_, Option<bool>>(11)?,
                ));
            }
            match decode(&row)? {
                Some(Ok(history_row)) => rows.push(history_row),
                Some(Err(version)) => {
                    unreadable.get_or_insert(version);
                }
                None => {}
            }
            Ok(())
        });
        match read {
            Ok(()) => {
                let (format, token, held) = head.unwrap_or_default();
                if format.is_none() {
                    return Ok(Read::Unsure);
                }
                crate::driver::check_format(&self.table, format)?;
                self.text_versions = format.is_some_and(|f| f >= TEXT_VERSIONS);
                if let Some(version) = unreadable {
                    return Err(crate::driver::unreadable_version(&self.table, &version));
                }
                // Nearly always in order already: linear. Unstable (the
                // version is the key), so no scratch copy of the rows.
                rows.sort_unstable_by_key(|r| r.version);
                // No lock row yet: the lock was never taken.
                let mark = with_token.then(|| LockMark {
                    token: token.unwrap_or(0),
                    held: held.unwrap_or(false),
                });
                Ok(Read::Rows(rows, mark))
            }
            Err(e) if code(&e) == Some(&SqlState::UNDEFINED_TABLE) => {
                self.which_is_missing(with_token, &context)
            }
            Err(e) if code(&e) == Some(&SqlState::UNDEFINED_COLUMN) => Err(Error::ForeignTable {
                table: self.table.to_string(),
                message: "exists but does not have the columns of lockstep's history table".into(),
            }),
            Err(e) => Err(db_error(context, &e)),
        }
    }

    /// One statement: the format of lockstep's tables on every row, then
    /// the history (one row of NULLs when it is empty). A fleet starting
    /// against an up-to-date database costs the server this and nothing
    /// else. The server neither formats times nor sorts: a fresh session's
    /// first query is cheaper without either, and the client does both.
    /// The lock comes in the same snapshot (see `HistoryRead::lock`): one
    /// lookup of the lock row, joined to every history row.
    fn history_sql(&self, with_token: bool) -> String {
        let lock_row = if with_token {
            format!(
                "LEFT JOIN {lock} AS l ON l.scope = {scope}",
                lock = self.tables.lock,
                scope = literal(&self.table.to_string()),
            )
        } else {
            "LEFT JOIN (SELECT NULL::bigint AS token, NULL::text AS owner) AS l ON true".to_string()
        };
        format!(
            "SELECT (SELECT format_version FROM {meta} WHERE table_name = {name})::bigint,
                    h.version::text, h.name::text, h.checksum::text, h.state::text,
                    h.applied_at::timestamptz,
                    h.duration_ms::bigint, h.applied_by::text, h.lock_token::bigint, h.tool_version::text,
                    l.token::bigint, (l.owner IS NOT NULL)::bool
               FROM (SELECT 1) AS one {lock_row} LEFT JOIN {history} AS h ON true",
            meta = self.tables.meta,
            history = self.tables.history,
            name = literal(self.table.name()),
        )
    }

    /// A table the history read named is missing. Any of them may be the
    /// one: ask which, and where `search_path` finds a table of the history
    /// table's name (lockstep once followed it).
    fn which_is_missing(&mut self, with_token: bool, context: &str) -> Result<Read, Error> {
        let probe = format!(
            "SELECT to_regclass({}) IS NOT NULL, to_regclass({}) IS NOT NULL, to_regclass({}) IS NOT NULL,
                    (SELECT n.nspname::text FROM pg_catalog.pg_class c
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE c.oid = to_regclass(quote_ident({})))",
            literal(&self.tables.history),
            literal(&self.tables.meta),
            literal(&self.tables.lock),
            literal(self.table.name()),
        );
        let messages = self
            .client
            .simple_query(&probe)
            .map_err(|e| db_error(context, &e))?;
        let row = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        });
        let flags = row.map(|r| {
            (
                r.get(0) == Some("t"),
                r.get(1) == Some("t"),
                r.get(2) == Some("t"),
            )
        });
        let found_in = row.and_then(|r| r.get(3));
        if flags.is_some_and(|(history, ..)| !history) {
            if let Some(elsewhere) = found_in.filter(|s| *s != self.schema) {
                return Err(self.found_elsewhere(elsewhere));
            }
        }
        match flags {
            // All there now: created since the read; read again.
            Some((true, true, true)) => Ok(Read::Unsure),
            Some((true, true, false)) if with_token => Ok(Read::NoLockTable),
            Some((true, true, false)) => Ok(Read::Unsure),
            Some((true, false, _)) => {
                crate::driver::check_format(&self.table, None).map(|()| Read::Absent)
            }
            _ => Ok(Read::Absent),
        }
    }

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
            remedy: Some(Remedy::ChooseHistoryTable {
                suggestion: Some(format!("{schema}.{}", self.table.name())),
            }),
        }
    }
}

/// The types of lockstep's columns.
fn type_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Text | Kind::Key => "text",
        Kind::Int => "integer",
        Kind::BigInt => "bigint",
        Kind::Time | Kind::Clock => "timestamptz",
        Kind::Serial => "bigserial PRIMARY KEY",
    }
}

/// Whether creating lockstep's tables failed because another session
/// created them at the same moment.
fn collided(e: &tokio_postgres::Error) -> bool {
    matches!(code(e), Some(c) if *c == SqlState::UNIQUE_VIOLATION
        || *c == SqlState::DUPLICATE_TABLE
        || *c == SqlState::DUPLICATE_OBJECT
        || *c == SqlState::DUPLICATE_SCHEMA
        || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// A value as a literal in SQL text.
fn value_literal(value: &tables::Value) -> String {
    match value {
        tables::Value::Text(Some(text)) => literal(text),
        tables::Value::Int(Some(int)) => int.to_string(),
        tables::Value::Text(None) | tables::Value::Int(None) => "NULL".to_string(),
    }
}

/// A history row of the read's answer; `None` for the row of NULLs an
/// empty history gives, the version's text when it is none lockstep reads.
fn decode(
    row: &tokio_postgres::Row,
) -> Result<Option<Result<HistoryRow, String>>, tokio_postgres::Error> {
    let Some(version) = row.try_get::<_, Option<&str>>(1)? else {
        return Ok(None);
    };
    let Ok(version) = Version::parse(version) else {
        return Ok(Some(Err(version.to_string())));
    };
    let text = |i| {
        row.try_get::<_, Option<&str>>(i)
            .map(Option::unwrap_or_default)
    };
    Ok(Some(Ok(HistoryRow {
        version,
        name: text(2)?.to_string(),
        checksum: Checksum::parse(text(3)?),
        state: RowState::parse(text(4)?).unwrap_or(RowState::Started),
        applied_at: row
            .try_get::<_, Option<std::time::SystemTime>>(5)?
            .map_or_else(String::new, crate::clock::rfc3339_millis),
        duration_ms: row.try_get::<_, Option<i64>>(6)?.unwrap_or_default(),
        applied_by: text(7)?.to_string(),
        lock_token: row.try_get(8)?,
        tool_version: text(9)?.to_string(),
    })))
}
