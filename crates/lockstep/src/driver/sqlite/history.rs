//! lockstep's tables on SQLite, and the history's rows.

use std::time::Duration;

use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};

use crate::driver::tables::{self, Kind};
use crate::error::Error;
use crate::history::{
    Change, HistoryRead, HistoryRow, HistoryStore, RepeatRow, RowState, CREATED_FORMAT, META_TABLE,
    TEXT_VERSIONS, TOOL_VERSION,
};
use crate::lock::{Fence, LockMark, LOCK_LOG_INDEX, LOCK_LOG_TABLE, LOCK_TABLE};
use crate::source::Checksum;
use crate::version::Version;

use super::{
    db_error, is_busy, is_missing_table, millis, open_file, rollback, sql_value, SqliteDriver,
    BUSY_TIMEOUT, NOW,
};

/// The page cache, in KiB, while history is read. The read goes once, in
/// order, through the schema and the history table, and meets no page
/// twice: SQLite's default cache (2,000 KiB) only held what was done with
/// (docs/performance.md).
const READ_CACHE_KIB: i64 = 64;

impl HistoryStore for SqliteDriver {
    type Error = Error;

    fn read_history(&mut self) -> Result<Option<HistoryRead>, Error> {
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        let context = format!("reading history from {}", self.table);
        // A small cache for the read, the connection's own back after it
        // (for the migrations). Reading the size loads the schema, with
        // the cache as it was; the pages that does not keep are let go.
        let cache: Option<i64> = match conn.query_row("PRAGMA main.cache_size", [], |r| r.get(0)) {
            Ok(size) => Some(size),
            // A writer keeps readers out: so would it the read below.
            Err(e) if is_busy(&e) => return Err(self.busy_error(&context, &e)),
            Err(_) => None,
        };
        if cache.is_some() {
            let _ = conn.execute_batch(&format!("PRAGMA main.cache_size = -{READ_CACHE_KIB}"));
        }
        // One read transaction: the format, the rows and the lock from one
        // snapshot.
        conn.execute_batch("BEGIN")
            .map_err(|e| db_error(&context, &e))?;
        let result = self.read_in_transaction(conn, &context);
        let _ = conn.execute_batch("COMMIT");
        if let Some(size) = cache {
            let _ = conn.execute_batch(&format!("PRAGMA main.cache_size = {size}"));
        }
        result
    }

    fn create_tables(&mut self) -> Result<(), Error> {
        if self.conn.is_none() && self.writable {
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
            self.attach(open_file(&self.path, flags)?)?;
        }
        let conn = self.conn()?;
        let context = format!("creating the history table {}", self.table);
        // Made before the lock can be taken: another process making them
        // at the same moment, or a holder's commit, is waited for.
        self.waiting(conn, BUSY_TIMEOUT, || self.make_tables(conn, &context))
    }

    fn read_repeatables(&mut self) -> Result<Vec<RepeatRow>, Error> {
        let sql = tables::repeatable_select(&self.tables, self.table.name(), "applied_at");
        let context = format!("reading the repeatable migrations of {}", self.table);
        let rows = self.text_rows(&sql, &context)?;
        Ok(tables::repeatable_rows(rows.unwrap_or_default()))
    }

    fn create_repeatable_table(&mut self) -> Result<(), Error> {
        let conn = self.conn()?;
        conn.execute_batch(&tables::create_repeatable(&self.tables, type_of))
            .map_err(|e| db_error(format!("creating the table {}", self.tables.repeatable), &e))
    }

    fn widen_versions(&mut self) -> Result<(), Error> {
        let conn = self.conn()?;
        let context = format!("raising {} to table format {TEXT_VERSIONS}", self.table);
        // SQLite changes no column's type: the table is made again, with
        // its rows, in one transaction. A text in the old column, whose
        // type is INTEGER, would be read as a number where it looks like
        // one (`1.10` as 1.1).
        let (schema, name) = (self.table.schema().unwrap_or("main"), self.table.name());
        let widened = format!("\"{schema}\".\"{name}_widened\"");
        let sql = format!(
            "BEGIN IMMEDIATE;
             {create};
             INSERT INTO {widened} SELECT CAST(version AS TEXT), {rest} FROM {history};
             DROP TABLE {history};
             ALTER TABLE {widened} RENAME TO \"{name}\";
             UPDATE {meta} SET format_version = {TEXT_VERSIONS} WHERE table_name = '{name}';
             COMMIT;",
            create = tables::create_widened_history(&widened, type_of),
            rest = tables::history_columns_after_version(),
            history = self.tables.history,
            meta = self.tables.meta,
        );
        let format: i64 = conn
            .query_row(
                &format!(
                    "SELECT format_version FROM {} WHERE table_name = ?1",
                    self.tables.meta
                ),
                [name],
                |r| r.get(0),
            )
            .map_err(|e| db_error(&context, &e))?;
        if format >= TEXT_VERSIONS {
            return Ok(());
        }
        conn.execute_batch(&sql).map_err(|e| {
            rollback(conn);
            db_error(&context, &e)
        })
    }

    fn change_history(
        &mut self,
        changes: &[Change<'_>],
        fence: Option<&Fence>,
    ) -> Result<(), Error> {
        let conn = self.conn()?;
        let context = format!("writing history to {}", self.table);
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| db_error(&context, &e))?;
        if let Some(fence) = fence {
            match self.check_fence(conn, fence) {
                Ok(true) => {}
                Ok(false) => {
                    rollback(conn);
                    return Err(fence.lost());
                }
                Err(e) if is_missing_table(&e) => {
                    rollback(conn);
                    return Err(fence.lost());
                }
                Err(e) => {
                    rollback(conn);
                    return Err(db_error(&context, &e));
                }
            }
        }
        for change in changes {
            if let Err(e) = Self::apply_change(
                conn,
                &self.tables,
                self.table.name(),
                change,
                Duration::ZERO,
            ) {
                rollback(conn);
                return Err(db_error(&context, &e));
            }
        }
        if let Some(fence) = fence {
            if let Err(e) = self.extend_lease(conn, fence) {
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

impl SqliteDriver {
    /// The history read, in the read transaction `read_history` opened.
    fn read_in_transaction(
        &self,
        conn: &Connection,
        context: &str,
    ) -> Result<Option<HistoryRead>, Error> {
        let schema = self.table.schema().unwrap_or("main");
        let exists =
            |table| Self::table_exists(conn, (schema, table)).map_err(|e| db_error(context, &e));
        if !exists(self.table.name())? {
            return Ok(None);
        }
        let format: Option<i64> = if exists(META_TABLE)? {
            conn.query_row(
                &format!(
                    "SELECT format_version FROM {} WHERE table_name = ?1",
                    self.tables.meta
                ),
                [self.table.name()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| db_error(context, &e))?
        } else {
            None
        };
        crate::driver::check_format(&self.table, format)?;
        let rows = self.read_rows(conn, context)?;
        // The lock in the same snapshot: no row before it was ever taken;
        // unknown if its table is gone (it is made with the history table,
        // but someone may have dropped it).
        let lock = conn
            .query_row(
                &format!(
                    "SELECT token, owner IS NOT NULL FROM {} WHERE scope = ?1",
                    self.tables.lock
                ),
                [self.table.to_string()],
                |r| {
                    Ok(LockMark {
                        token: r.get(0)?,
                        held: r.get(1)?,
                    })
                },
            )
            .optional()
            .map(Option::unwrap_or_default)
            .ok();
        Ok(Some(HistoryRead { rows, lock }))
    }

    /// The history table's rows, by version.
    fn read_rows(&self, conn: &Connection, context: &str) -> Result<Vec<HistoryRow>, Error> {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT CAST(version AS TEXT), name, checksum, state, applied_at, duration_ms, applied_by, lock_token, tool_version \
                 FROM {} ORDER BY version",
                self.tables.history
            ))
            .map_err(|e| match e {
                rusqlite::Error::SqlInputError { .. } | rusqlite::Error::SqliteFailure(..) => Error::ForeignTable {
                    table: self.table.to_string(),
                    message: "exists but does not have the columns of lockstep's history table".into(),
                },
                e => db_error(context, &e),
            })?;
        let mut rows: Vec<HistoryRow> = Vec::new();
        let mut read = stmt.query([]).map_err(|e| db_error(context, &e))?;
        while let Some(r) = read.next().map_err(|e| db_error(context, &e))? {
            let text = |i| r.get_ref(i).and_then(|v| Ok(v.as_str()?));
            let version = text(0).map_err(|e| db_error(context, &e))?;
            let version = Version::parse(version)
                .map_err(|_| crate::driver::unreadable_version(&self.table, version))?;
            let row = (|| {
                Ok::<_, rusqlite::Error>(HistoryRow {
                    version,
                    name: r.get(1)?,
                    checksum: Checksum::parse(text(2)?),
                    state: RowState::parse(text(3)?).unwrap_or(RowState::Started),
                    applied_at: text(4)?.to_string(),
                    duration_ms: r.get(5)?,
                    applied_by: r.get(6)?,
                    lock_token: r.get(7)?,
                    tool_version: r.get(8)?,
                })
            })()
            .map_err(|e| db_error(context, &e))?;
            rows.push(row);
        }
        // Text versions (table format 2) come in the order of their text.
        rows.sort_unstable_by_key(|r| r.version);
        Ok(rows)
    }

    /// One history change to the tables `tables` of the history table
    /// named `table`; `elapsed`: how long the statements run in its
    /// transaction took.
    pub(super) fn apply_change(
        conn: &Connection,
        tables: &tables::Names,
        table: &str,
        change: &Change<'_>,
        elapsed: Duration,
    ) -> rusqlite::Result<()> {
        let history = &tables.history;
        match change {
            Change::Insert(row) => {
                let sql = tables::history_insert(history, NOW, |n| format!("?{n}"));
                let values = tables::history_values(row, millis(elapsed));
                conn.execute(&sql, params_from_iter(values.into_iter().map(sql_value)))?;
            }
            Change::SetState {
                version,
                state,
                duration_ms: Some(duration_ms),
            } => {
                conn.execute(
                    &format!("UPDATE {history} SET state = ?2, applied_at = {NOW}, duration_ms = ?3 WHERE version = ?1"),
                    params![version.to_string(), state.as_str(), duration_ms],
                )?;
            }
            Change::SetState {
                version,
                state,
                duration_ms: None,
            } => {
                conn.execute(
                    &format!("UPDATE {history} SET state = ?2 WHERE version = ?1"),
                    params![version.to_string(), state.as_str()],
                )?;
            }
            Change::Delete { version } => {
                conn.execute(
                    &format!("DELETE FROM {history} WHERE version = ?1"),
                    params![version.to_string()],
                )?;
            }
            Change::SetChecksum {
                version,
                name,
                checksum,
            } => {
                conn.execute(
                    &format!("UPDATE {history} SET checksum = ?2, name = ?3 WHERE version = ?1"),
                    params![version.to_string(), checksum.to_string(), name],
                )?;
            }
            Change::Repeated {
                name,
                checksum,
                applied_by,
                lock_token,
                duration_ms,
            } => {
                let values =
                    tables::repeated_values(table, name, checksum, applied_by, *lock_token);
                let sql = tables::repeated_upsert(
                    &tables.repeatable,
                    NOW,
                    &duration_ms.unwrap_or(millis(elapsed)).to_string(),
                    |n| format!("?{n}"),
                    "ON CONFLICT (table_name, name) DO UPDATE SET",
                    |column| format!("excluded.{column}"),
                );
                conn.execute(&sql, params_from_iter(values.into_iter().map(sql_value)))?;
            }
        }
        Ok(())
    }

    /// Makes lockstep's tables unless they are all there.
    fn make_tables(&self, conn: &Connection, context: &str) -> Result<(), Error> {
        // A look first, without the write lock: in a fleet starting on an
        // empty database, all but the first few find the tables made. Each
        // of them taking the write lock only to find so would queue behind
        // the holder's migrations in SQLite's busy handler, whose sleeps
        // grow to 100 ms.
        if self.tables_made(conn).map_err(|e| db_error(context, &e))? {
            return Ok(());
        }
        let tables = tables::create_script(&self.tables, type_of);
        let sql = format!(
            "BEGIN IMMEDIATE;
             {tables}
             CREATE INDEX IF NOT EXISTS \"{schema}\".\"{LOCK_LOG_INDEX}\" ON \"{LOCK_LOG_TABLE}\" (scope, id);
             INSERT OR IGNORE INTO {meta} (table_name, format_version, created_at, created_by)
                 VALUES ('{name}', {CREATED_FORMAT}, {NOW}, '{TOOL_VERSION}');
             COMMIT;",
            meta = self.tables.meta,
            schema = self.table.schema().unwrap_or("main"),
            name = self.table.name(),
        );
        conn.execute_batch(&sql).map_err(|e| {
            rollback(conn);
            db_error(context, &e)
        })
    }

    /// Whether lockstep's tables, the lock log's index and this history
    /// table's format row are all there: what `create_tables` makes.
    fn tables_made(&self, conn: &Connection) -> rusqlite::Result<bool> {
        let schema = self.table.schema().unwrap_or("main");
        let objects: i64 = conn.query_row(
            &format!(
                "SELECT count(*) FROM \"{schema}\".sqlite_master
                  WHERE (type = 'table' AND name IN (?1, ?2, ?3, ?4)) OR (type = 'index' AND name = ?5)"
            ),
            params![META_TABLE, self.table.name(), LOCK_TABLE, LOCK_LOG_TABLE, LOCK_LOG_INDEX],
            |r| r.get(0),
        )?;
        if objects < 5 {
            return Ok(false);
        }
        conn.query_row(
            &format!("SELECT 1 FROM {} WHERE table_name = ?1", self.tables.meta),
            [self.table.name()],
            |_| Ok(()),
        )
        .optional()
        .map(|row| row.is_some())
    }

    pub(super) fn table_exists(
        conn: &Connection,
        schema_table: (&str, &str),
    ) -> rusqlite::Result<bool> {
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

/// The types of lockstep's columns.
fn type_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Text | Kind::Key | Kind::Time => "TEXT",
        Kind::Int | Kind::BigInt | Kind::Clock => "INTEGER",
        Kind::Serial => "INTEGER PRIMARY KEY AUTOINCREMENT",
    }
}
