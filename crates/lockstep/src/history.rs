//! The history table: its rows and the names of lockstep's tables.

use crate::source::Checksum;
use std::fmt;

/// The format of lockstep's own tables, recorded in `lockstep_meta`. A
/// release that changes the tables raises it and migrates older formats; a
/// release that finds a newer format than it knows refuses to touch it.
pub const FORMAT_VERSION: i64 = 1;

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
    pub fn parse(s: &str) -> Option<RowState> {
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
    pub version: u64,
    /// Its name, as the file was named when it was applied.
    pub name: String,
    /// Its checksum when it was applied.
    pub checksum: Checksum,
    /// Applied, or started and never finished.
    pub state: RowState,
    /// When it was recorded, RFC 3339 in UTC with milliseconds (server clock
    /// on PostgreSQL).
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
        if name == META_TABLE {
            return Err(format!(
                "`{META_TABLE}` is lockstep's own table; choose another name"
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

    /// A table with another name in the same schema.
    pub fn sibling(&self, name: &str) -> TableName {
        TableName {
            schema: self.schema.clone(),
            name: name.to_string(),
        }
    }

    /// The name quoted for SQL: `"schema"."table"`. Safe because the parts
    /// were validated.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}\"", self.name),
            None => format!("\"{}\"", self.name),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let t = TableName::parse("app.schema_history").unwrap();
        assert_eq!(t.quoted(), "\"app\".\"schema_history\"");
        assert_eq!(t.sibling("lockstep_meta").to_string(), "app.lockstep_meta");
        assert_eq!(TableName::default().quoted(), "\"lockstep_history\"");
        for bad in [
            "",
            "a.b.c",
            "h\"; DROP TABLE x; --",
            "my table",
            "1history",
            "a.",
            ".a",
            "lockstep_meta",
            &"x".repeat(64),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
    }
}
