//! lockstep's tables, written once: their names, and their columns in
//! kinds that each engine names with its own types. An engine adds its
//! schema, index and format row around the script these make.

use crate::history::{NewRow, RepeatRow, RowState, META_TABLE, REPEATABLE_TABLE, TOOL_VERSION};
use crate::lock::{Actor, LogEvent, Take, LOCK_LOG_TABLE, LOCK_TABLE};
use crate::source::Checksum;

/// What a column holds; each engine names the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    /// Text that is one of two columns of a key (short enough for both to
    /// fit an index on every engine).
    Key,
    /// A small number (the table format).
    Int,
    /// A 64-bit number: versions, tokens, pids, durations.
    BigInt,
    /// A time a person reads: the history's `applied_at`, the meta table's
    /// `created_at` (text on SQLite).
    Time,
    /// A time the lock computes with: leases and the log (milliseconds on
    /// SQLite).
    Clock,
    /// The log's increasing id, made by the engine.
    Serial,
}

/// One column: its name, kind, and constraints in SQL every engine reads.
#[derive(Clone, Copy)]
pub(crate) struct Column {
    pub name: &'static str,
    pub kind: Kind,
    pub constraints: &'static str,
}

const fn column(name: &'static str, kind: Kind, constraints: &'static str) -> Column {
    Column {
        name,
        kind,
        constraints,
    }
}

/// `lockstep_meta`: the format of lockstep's tables, per history table.
pub(crate) const META: &[Column] = &[
    column("table_name", Kind::Text, "PRIMARY KEY"),
    column("format_version", Kind::Int, "NOT NULL"),
    column("created_at", Kind::Time, "NOT NULL"),
    column("created_by", Kind::Text, "NOT NULL"),
];

/// The history table.
pub(crate) const HISTORY: &[Column] = &[
    column("version", Kind::BigInt, "PRIMARY KEY"),
    column("name", Kind::Text, "NOT NULL"),
    column("checksum", Kind::Text, "NOT NULL"),
    column(
        "state",
        Kind::Text,
        "NOT NULL CHECK (state IN ('applied', 'started'))",
    ),
    column("applied_at", Kind::Time, "NOT NULL"),
    column("duration_ms", Kind::BigInt, "NOT NULL"),
    column("applied_by", Kind::Text, "NOT NULL"),
    column("lock_token", Kind::BigInt, ""),
    column("tool_version", Kind::Text, "NOT NULL"),
];

/// The history table's version column at table format 2 (text, for
/// dotted versions); at format 1 it is [`HISTORY`]'s first.
const TEXT_VERSION: Column = column("version", Kind::Key, "PRIMARY KEY");

/// `CREATE TABLE IF NOT EXISTS` for the history table at table format 2,
/// as `name`.
pub(crate) fn create_widened_history(name: &str, type_of: impl Fn(Kind) -> &'static str) -> String {
    let columns: Vec<Column> = std::iter::once(TEXT_VERSION)
        .chain(HISTORY[1..].iter().copied())
        .collect();
    create_table(name, &columns, type_of)
}

/// The history table's columns after its version, in order, for SQL.
pub(crate) fn history_columns_after_version() -> String {
    let names: Vec<&str> = HISTORY[1..].iter().map(|c| c.name).collect();
    names.join(", ")
}

/// `lockstep_repeatable`: the last run of each repeatable migration, per
/// history table; keyed by both (see [`REPEATABLE_KEY`]).
pub(crate) const REPEATABLE: &[Column] = &[
    column("table_name", Kind::Key, "NOT NULL"),
    column("name", Kind::Key, "NOT NULL"),
    column("checksum", Kind::Text, "NOT NULL"),
    column("applied_at", Kind::Time, "NOT NULL"),
    column("duration_ms", Kind::BigInt, "NOT NULL"),
    column("applied_by", Kind::Text, "NOT NULL"),
    column("lock_token", Kind::BigInt, ""),
    column("tool_version", Kind::Text, "NOT NULL"),
    column("runs", Kind::BigInt, "NOT NULL"),
];

/// The repeatables table's key.
pub(crate) const REPEATABLE_KEY: &str = "PRIMARY KEY (table_name, name)";

/// `lockstep_lock`: one row per scope.
pub(crate) const LOCK: &[Column] = &[
    column("scope", Kind::Text, "PRIMARY KEY"),
    column("token", Kind::BigInt, "NOT NULL DEFAULT 0"),
    column("owner", Kind::Text, ""),
    column("host", Kind::Text, ""),
    column("pid", Kind::BigInt, ""),
    column("command", Kind::Text, ""),
    column("tool_version", Kind::Text, ""),
    column("session_pid", Kind::BigInt, ""),
    column("session_start", Kind::Text, ""),
    column("acquired_at", Kind::Clock, ""),
    column("heartbeat_at", Kind::Clock, ""),
    column("expires_at", Kind::Clock, ""),
];

/// `lockstep_lock_log`: the lock's audit log.
pub(crate) const LOG: &[Column] = &[
    column("id", Kind::Serial, ""),
    column("scope", Kind::Text, "NOT NULL"),
    column("at", Kind::Clock, "NOT NULL"),
    column("event", Kind::Text, "NOT NULL"),
    column("token", Kind::BigInt, "NOT NULL"),
    column("owner", Kind::Text, ""),
    column("host", Kind::Text, ""),
    column("pid", Kind::BigInt, ""),
    column("command", Kind::Text, ""),
    column("previous_owner", Kind::Text, ""),
    column("detail", Kind::Text, ""),
];

/// lockstep's tables under the engine's names: quoted, and qualified with
/// their schema, so that no `search_path` (nor a migration that changes
/// it) moves them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Names {
    pub meta: String,
    pub history: String,
    pub lock: String,
    pub log: String,
    pub repeatable: String,
}

impl Names {
    /// lockstep's tables in `schema`, next to the history table `history`,
    /// each name quoted by `quote`.
    pub fn in_schema(schema: &str, history: &str, quote: impl Fn(&str) -> String) -> Names {
        let name = |table: &str| format!("{}.{}", quote(schema), quote(table));
        Names {
            meta: name(META_TABLE),
            history: name(history),
            lock: name(LOCK_TABLE),
            log: name(LOCK_LOG_TABLE),
            repeatable: name(REPEATABLE_TABLE),
        }
    }
}

/// An identifier quoted as standard SQL quotes it: in double quotes, a
/// double quote inside doubled.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A value bound to a statement's parameter, for the engine to convert.
pub(crate) enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

/// An INSERT of a lock log row into `log`: its time is the SQL `now`, and
/// `param(n)` names the engine's n-th parameter (from 1) for each of
/// [`log_values`], in order.
pub(crate) fn log_insert(log: &str, now: &str, param: impl Fn(usize) -> String) -> String {
    let p: Vec<String> = (1..=9).map(param).collect();
    format!(
        "INSERT INTO {log} (scope, at, event, token, owner, host, pid, command, previous_owner, detail)
         VALUES ({}, {now}, {})",
        p[0],
        p[1..].join(", ")
    )
}

/// The values of a lock log row, in [`log_insert`]'s order.
pub(crate) fn log_values(
    scope: &str,
    event: LogEvent<'_>,
    token: i64,
    who: &Actor<'_>,
) -> [Value; 9] {
    let text = |s: Option<&str>| Value::Text(s.map(str::to_string));
    [
        text(Some(scope)),
        text(Some(event.name())),
        Value::Int(Some(token)),
        text(Some(who.owner)),
        text(Some(who.host)),
        Value::Int(Some(who.pid)),
        text(Some(who.command)),
        text(event.previous_owner()),
        text(event.detail()),
    ]
}

/// The UPDATE that takes the lock row in `lock`: the next token, the
/// holder, and its lease from `now` until `expires` (SQL); `param(n)`
/// names the engine's n-th parameter for each of [`take_values`], in order.
pub(crate) fn take_update(
    lock: &str,
    now: &str,
    expires: &str,
    param: impl Fn(usize) -> String,
) -> String {
    let p: Vec<String> = (1..=9).map(param).collect();
    format!(
        "UPDATE {lock} SET token = token + 1, owner = {}, host = {}, pid = {}, command = {},
                tool_version = {}, session_pid = {}, session_start = {},
                acquired_at = {now}, heartbeat_at = {now}, expires_at = {expires}
          WHERE scope = {} AND token = {}",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]
    )
}

/// The values of [`take_update`], in order.
pub(crate) fn take_values(take: &Take<'_>) -> [Value; 9] {
    let text = |s: &str| Value::Text(Some(s.to_string()));
    [
        text(take.actor.owner),
        text(take.actor.host),
        Value::Int(Some(take.actor.pid)),
        text(take.actor.command),
        text(TOOL_VERSION),
        Value::Int(take.session.pid),
        Value::Text(take.session.start.clone()),
        text(take.scope),
        Value::Int(Some(take.seen)),
    ]
}

/// An INSERT of a history row into `history`: `applied_at` is the SQL
/// `now`, and `param(n)` names the engine's n-th parameter for each of
/// [`history_values`], in order.
pub(crate) fn history_insert(history: &str, now: &str, param: impl Fn(usize) -> String) -> String {
    let p: Vec<String> = (1..=8).map(param).collect();
    format!(
        "INSERT INTO {history} (version, name, checksum, state, applied_at, duration_ms, applied_by, lock_token, tool_version)
         VALUES ({}, {now}, {})",
        p[..4].join(", "),
        p[4..].join(", ")
    )
}

/// The values of a new history row, in [`history_insert`]'s order: a
/// started row has no duration yet.
pub(crate) fn history_values(row: &NewRow<'_>, duration_ms: i64) -> [Value; 8] {
    let (state, duration) = if row.started {
        (RowState::Started, 0)
    } else {
        (RowState::Applied, duration_ms)
    };
    [
        // Text, which a format 1 table's whole-number column takes too.
        Value::Text(Some(row.version.to_string())),
        Value::Text(Some(row.name.to_string())),
        Value::Text(Some(row.checksum.to_string())),
        Value::Text(Some(state.as_str().to_string())),
        Value::Int(Some(duration)),
        Value::Text(Some(row.applied_by.to_string())),
        Value::Int(row.lock_token),
        Value::Text(Some(TOOL_VERSION.to_string())),
    ]
}

/// `CREATE TABLE IF NOT EXISTS` for each of lockstep's tables, with the
/// types `type_of` names (a serial column's type includes its key).
pub(crate) fn create_script(names: &Names, type_of: impl Fn(Kind) -> &'static str) -> String {
    let tables = [
        (&names.meta, META),
        (&names.history, HISTORY),
        (&names.lock, LOCK),
        (&names.log, LOG),
    ];
    tables
        .into_iter()
        .map(|(name, columns)| create_table(name, columns, &type_of) + ";\n")
        .collect()
}

/// `CREATE TABLE IF NOT EXISTS` for one table.
pub(crate) fn create_table(
    name: &str,
    columns: &[Column],
    type_of: impl Fn(Kind) -> &'static str,
) -> String {
    create_keyed_table(name, columns, None, type_of)
}

/// `CREATE TABLE IF NOT EXISTS` for one table, with a key of several
/// columns.
pub(crate) fn create_keyed_table(
    name: &str,
    columns: &[Column],
    key: Option<&str>,
    type_of: impl Fn(Kind) -> &'static str,
) -> String {
    let columns: Vec<String> = columns
        .iter()
        .map(|c| {
            let text = format!("{} {} {}", c.name, type_of(c.kind), c.constraints);
            text.trim_end().to_string()
        })
        .chain(key.map(str::to_string))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (\n    {}\n)",
        columns.join(",\n    ")
    )
}

/// The repeatables table.
pub(crate) fn create_repeatable(names: &Names, type_of: impl Fn(Kind) -> &'static str) -> String {
    create_keyed_table(&names.repeatable, REPEATABLE, Some(REPEATABLE_KEY), type_of)
}

/// The read of one history table's repeatable rows, by name, its time
/// as `applied_at` (SQL) gives it.
pub(crate) fn repeatable_select(names: &Names, table_name: &str, applied_at: &str) -> String {
    format!(
        "SELECT name, checksum, {applied_at}, duration_ms, applied_by, lock_token, tool_version, runs
           FROM {} WHERE table_name = '{}' ORDER BY name",
        names.repeatable,
        table_name.replace('\'', "''"),
    )
}

/// The rows [`repeatable_select`] read, as text.
pub(crate) fn repeatable_rows(rows: Vec<Vec<Option<String>>>) -> Vec<RepeatRow> {
    rows.into_iter()
        .map(|row| {
            let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let int = |i: usize| row.get(i).cloned().flatten().and_then(|v| v.parse().ok());
            RepeatRow {
                name: text(0),
                checksum: Checksum::parse(&text(1)),
                applied_at: text(2),
                duration_ms: int(3).unwrap_or_default(),
                applied_by: text(4),
                lock_token: int(5),
                tool_version: text(6),
                runs: int(7).unwrap_or_default(),
            }
        })
        .collect()
}

/// The INSERT of a repeatable's run into `repeatable`, replacing its
/// last: `applied_at` is the SQL `now`, `duration` the SQL of its
/// duration, `param(n)` the engine's n-th parameter for each of
/// [`repeated_values`], and `update` the engine's words for "on a second
/// row of this key, set" (`ON CONFLICT (…) DO UPDATE SET`, `ON DUPLICATE
/// KEY UPDATE`) with `new(column)` the value the insert gave a column.
pub(crate) fn repeated_upsert(
    repeatable: &str,
    now: &str,
    duration: &str,
    param: impl Fn(usize) -> String,
    update: &str,
    new: impl Fn(&str) -> String,
) -> String {
    let p: Vec<String> = (1..=6).map(param).collect();
    let set: Vec<String> = [
        "checksum",
        "applied_at",
        "duration_ms",
        "applied_by",
        "lock_token",
        "tool_version",
    ]
    .iter()
    .map(|c| format!("{c} = {}", new(c)))
    .collect();
    format!(
        "INSERT INTO {repeatable} (table_name, name, checksum, applied_at, duration_ms, applied_by, lock_token, tool_version, runs)
         VALUES ({}, {}, {}, {now}, {duration}, {}, {}, {}, 1)
         {update} {}, runs = {repeatable}.runs + 1",
        p[0], p[1], p[2], p[3], p[4], p[5],
        set.join(", "),
    )
}

/// The values of [`repeated_upsert`], in order.
pub(crate) fn repeated_values(
    table_name: &str,
    name: &str,
    checksum: &Checksum,
    applied_by: &str,
    lock_token: Option<i64>,
) -> [Value; 6] {
    let text = |s: &str| Value::Text(Some(s.to_string()));
    [
        text(table_name),
        text(name),
        text(&checksum.to_string()),
        text(applied_by),
        Value::Int(lock_token),
        text(TOOL_VERSION),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_names_every_column_with_the_engine_type() {
        let names = Names {
            meta: "m".into(),
            history: "h".into(),
            lock: "l".into(),
            log: "g".into(),
            repeatable: "r".into(),
        };
        let sql = create_script(&names, |kind| match kind {
            Kind::Serial => "SERIAL PRIMARY KEY",
            Kind::Time => "TIME",
            _ => "T",
        });
        assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS m (\n    table_name T PRIMARY KEY,"));
        assert!(sql.contains("    created_at TIME NOT NULL,\n    created_by T NOT NULL\n);"));
        assert!(sql.contains("    lock_token T,\n"));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS g (\n    id SERIAL PRIMARY KEY,"));
        assert_eq!(sql.matches("CREATE TABLE").count(), 4);
    }
}
