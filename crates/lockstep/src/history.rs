//! The history table: its rows and the names of lockstep's tables.

use std::fmt;

use crate::lock::{Fence, LockMark};
use crate::source::Checksum;
use crate::version::Version;

/// The newest format of lockstep's own tables this release knows, recorded
/// in `lockstep_meta`. A release that changes the tables raises it and
/// migrates older formats; a release that finds a newer format than it
/// knows refuses to touch it.
///
/// - 1: versions are whole numbers, in a 64-bit column.
/// - 2: versions are text, for Flyway's dotted ones (`1.2.3`). A history
///   table is raised to it, under the lock, just before its first dotted
///   version is recorded; one with whole versions only stays at 1, so that
///   older releases in a rolling fleet keep reading it.
pub const FORMAT_VERSION: i64 = 2;

/// The format new tables are created in.
pub(crate) const CREATED_FORMAT: i64 = 1;

/// The format whose history table holds versions as text.
pub(crate) const TEXT_VERSIONS: i64 = 2;

/// The version of lockstep recorded with every history row.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The default name of the history table.
pub const DEFAULT_HISTORY_TABLE: &str = "lockstep_history";

/// The name of the table that records the format of lockstep's tables. It
/// lives in the history table's schema.
pub const META_TABLE: &str = "lockstep_meta";

/// The state of a history row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowState {
    /// The migration ran to the end and is recorded.
    Applied,
    /// A no-transaction migration began and was not recorded as finished:
    /// the process died or the migration failed part-way. The database may
    /// hold part of its effects.
    Started,
}

impl RowState {
    /// The value stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Applied => "applied",
            RowState::Started => "started",
        }
    }

    /// Parses the `state` column.
    pub(crate) fn parse(s: &str) -> Option<RowState> {
        match s {
            "applied" => Some(RowState::Applied),
            "started" => Some(RowState::Started),
            _ => None,
        }
    }
}

/// One row of the history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The migration's version.
    pub version: Version,
    /// Its name, as the file was named when it was applied.
    pub name: String,
    /// Its checksum when it was applied.
    pub checksum: Checksum,
    /// Applied, or started and never finished.
    pub state: RowState,
    /// When it was recorded (the server's clock on PostgreSQL): RFC 3339 in
    /// UTC with milliseconds, `2026-11-24T11:30:45.123Z` (other text, such
    /// as a hand edit of SQLite's column, is kept as written).
    pub applied_at: String,
    /// How long it ran, in milliseconds.
    pub duration_ms: i64,
    /// The executor that applied it.
    pub applied_by: String,
    /// The lock token it was applied under.
    pub lock_token: Option<i64>,
    /// The lockstep version that applied it.
    pub tool_version: String,
}

/// The last run of a repeatable migration, from the repeatables table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeatRow {
    /// The repeatable migration's name.
    pub name: String,
    /// Its checksum when it last ran.
    pub checksum: Checksum,
    /// When it last ran, as [`HistoryRow::applied_at`].
    pub applied_at: String,
    /// How long its last run took, in milliseconds.
    pub duration_ms: i64,
    /// The executor that last ran it.
    pub applied_by: String,
    /// The lock token of its last run.
    pub lock_token: Option<i64>,
    /// The lockstep version that last ran it.
    pub tool_version: String,
    /// How many times it ran.
    pub runs: i64,
}

/// The name of the table of repeatable migrations' last runs, next to
/// the history table (one row per history table and name).
pub const REPEATABLE_TABLE: &str = "lockstep_repeatable";

/// A validated table name, with an optional schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    /// Parses `table` or `schema.table`. Each part is an identifier of ASCII
    /// letters, digits and `_`, not starting with a digit, at most 63 bytes:
    /// it is quoted in SQL and never needs escaping.
    pub fn parse(s: &str) -> Result<TableName, String> {
        let (schema, name) = match s.split_once('.') {
            Some((schema, name)) => (Some(schema), name),
            None => (None, s),
        };
        let check = |part: &str| -> Result<(), String> {
            let ok = !part.is_empty()
                && part.len() <= 63
                && !part.as_bytes()[0].is_ascii_digit()
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "invalid table name `{}`: use letters, digits and `_` (at most 63, not starting with a digit), optionally prefixed by `schema.`",
                    s.escape_debug()
                ))
            }
        };
        if let Some(schema) = schema {
            check(schema)?;
        }
        check(name)?;
        if name == META_TABLE || name == REPEATABLE_TABLE {
            return Err(format!(
                "`{name}` is lockstep's own table; choose another name"
            ));
        }
        Ok(TableName {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        })
    }

    /// The schema, when one was given.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The table's own name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same table with the engine's default schema left unwritten:
    /// `public.hist` and `hist` name one table on PostgreSQL, `main.hist`
    /// and `hist` on SQLite, and must be one lock scope.
    pub(crate) fn without_schema(&self, default: &str) -> TableName {
        TableName {
            schema: self.schema.clone().filter(|s| s != default),
            name: self.name.clone(),
        }
    }
}

impl Default for TableName {
    fn default() -> Self {
        TableName::parse(DEFAULT_HISTORY_TABLE).expect("the default name is valid")
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A row to insert into the history table. The driver fills in
/// `applied_at` and `duration_ms` from the clock it trusts.
#[derive(Debug, Clone)]
pub(crate) struct NewRow<'a> {
    pub version: Version,
    pub name: &'a str,
    pub checksum: &'a Checksum,
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
        version: Version,
        state: RowState,
        duration_ms: Option<i64>,
    },
    /// Forget a row: a rollback, `fix missing`, `fix dirty --forget`.
    Delete { version: Version },
    /// Record the file's current checksum and name: `fix checksums`.
    SetChecksum {
        version: Version,
        name: String,
        checksum: Checksum,
    },
    /// Record a run of a repeatable migration in the repeatables table
    /// (one row per name, replaced). Without a duration, the driver's
    /// own measure of the statements in the same transaction.
    Repeated {
        name: &'a str,
        checksum: &'a Checksum,
        applied_by: &'a str,
        lock_token: Option<i64>,
        duration_ms: Option<i64>,
    },
}

/// History as one read found it.
#[derive(Debug)]
pub(crate) struct HistoryRead {
    /// The rows, ordered by version.
    pub rows: Vec<HistoryRow>,
    /// The lock in the same snapshot as the rows (token 0 and free when it
    /// was never taken); `None` when the read could not tell.
    pub lock: Option<LockMark>,
}

/// What the run loop needs from the history's storage; each engine
/// implements it with its SQL.
pub(crate) trait HistoryStore {
    /// How the store fails; a fenced change whose token is no longer
    /// current fails as the lock's [`crate::lock::Stop::Lost`].
    type Error: From<crate::lock::Stop>;

    /// History, or `None` when the history table does not exist. Creates
    /// nothing.
    fn read_history(&mut self) -> Result<Option<HistoryRead>, Self::Error>;

    /// Creates lockstep's tables (history, meta, lock, lock log) when they
    /// do not exist. Safe when many processes do it at once.
    fn create_tables(&mut self) -> Result<(), Self::Error>;

    /// The last runs of this history's repeatable migrations, by name;
    /// none when the repeatables table does not exist. Creates nothing.
    fn read_repeatables(&mut self) -> Result<Vec<RepeatRow>, Self::Error>;

    /// Creates the repeatables table when it does not exist: before the
    /// first repeatable migration runs, under the lock.
    fn create_repeatable_table(&mut self) -> Result<(), Self::Error>;

    /// Raises the history table to format [`TEXT_VERSIONS`] unless it is
    /// there: before the first dotted version is recorded, under the lock.
    fn widen_versions(&mut self) -> Result<(), Self::Error>;

    /// Applies history changes in one transaction of their own, fenced when
    /// a fence is given.
    fn change_history(
        &mut self,
        changes: &[Change<'_>],
        fence: Option<&Fence>,
    ) -> Result<(), Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let t = TableName::parse("app.schema_history").unwrap();
        let public = TableName::parse("public.hist").unwrap();
        assert_eq!(public.without_schema("public").to_string(), "hist");
        assert_eq!(public.without_schema("main").to_string(), "public.hist");
        assert_eq!(t.without_schema("public").to_string(), "app.schema_history");
        for bad in [
            "",
            "a.b.c",
            "h\"; DROP TABLE x; --",
            "my table",
            "1history",
            "a.",
            ".a",
            "lockstep_meta",
            "lockstep_repeatable",
            &"x".repeat(64),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
    }
}
