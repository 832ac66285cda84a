//! lockstep's tables on MariaDB/MySQL, and the history's rows.

use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::Row;

use crate::driver::tables::{self, Kind};
use crate::error::Error;
use crate::history::{
    Change, HistoryRead, HistoryRow, HistoryStore, RepeatRow, RowState, CREATED_FORMAT, META_TABLE,
    TEXT_VERSIONS, TOOL_VERSION,
};
use crate::lock::{Fence, LockMark, LOCK_LOG_INDEX, LOCK_LOG_TABLE, LOCK_TABLE, RETRIES};
use crate::source::Checksum;
use crate::sql::{self, Dialect};
use crate::version::Version;

use super::batch::{Failed, Write};
use super::{code, db_error, int, quote_ident, rfc3339, server_code, text, MysqlDriver};

/// What one attempt at reading the history saw.
enum Read {
    Rows(Vec<HistoryRow>, Option<LockMark>),
    /// No history table.
    Absent,
    /// History and meta tables, but no lock table (dropped by hand).
    NoLockTable,
}

/// Where a batch of history changes stands in its transaction: whether
/// it begins it (no statement of the transaction ran before it), whether
/// it commits it (behind the fence).
pub(super) struct Span {
    pub begins: bool,
    pub commits: bool,
}

/// The statement after the fence's write: it fails (a subquery of two
/// rows, error 1242) unless that write found its row. The server runs
/// nothing of a query after a statement that failed, so the changes and
/// the commit sent in the same query run only behind a held fence.
/// (`DO` would not do: it turns errors into warnings.)
const FENCE_CHECK: &str =
    "SELECT (SELECT 'held' UNION ALL SELECT 'lost' FROM DUAL WHERE ROW_COUNT() <> 1)";

impl HistoryStore for MysqlDriver {
    type Error = Error;

    fn read_history(&mut self) -> Result<Option<HistoryRead>, Error> {
        let read = match self.try_read_history(true)? {
            Read::NoLockTable => self.try_read_history(false)?,
            read => read,
        };
        Ok(match read {
            Read::Rows(rows, lock) => Some(HistoryRead { rows, lock }),
            Read::Absent | Read::NoLockTable => None,
        })
    }

    fn widen_versions(&mut self) -> Result<(), Error> {
        let context = format!("raising {} to table format {TEXT_VERSIONS}", self.table);
        let format = self.format_row().map_err(|e| db_error(&context, &e))?;
        if format.is_none_or(|f| f < TEXT_VERSIONS) {
            // Each statement commits by itself: the column first, so that
            // a crash between the two leaves a format 1 table, which the
            // next dotted version widens again.
            let widen = format!(
                "ALTER TABLE {} MODIFY version {} NOT NULL",
                self.tables.history,
                type_of(Kind::Key)
            );
            let raise = format!(
                "UPDATE {} SET format_version = ? WHERE table_name = ?",
                self.tables.meta
            );
            self.conn
                .query_drop(widen)
                .and_then(|()| {
                    self.conn
                        .exec_drop(raise, (TEXT_VERSIONS, self.table.name()))
                })
                .map_err(|e| db_error(&context, &e))?;
        }
        self.text_versions = true;
        Ok(())
    }

    fn create_tables(&mut self) -> Result<(), Error> {
        // On Galera, runs making the tables on two nodes at once conflict at
        // commit (1213): the loser's statement was rolled back whole, and the
        // next attempt finds what the winner made.
        retried(|| self.try_create_tables())
    }

    fn read_repeatables(&mut self) -> Result<Vec<RepeatRow>, Error> {
        let sql =
            tables::repeatable_select(&self.tables, self.table.name(), &rfc3339("applied_at"));
        let context = format!("reading the repeatable migrations of {}", self.table);
        let rows = self.text_rows(&sql, &context)?;
        Ok(tables::repeatable_rows(rows.unwrap_or_default()))
    }

    fn create_repeatable_table(&mut self) -> Result<(), Error> {
        let sql = tables::create_repeatable(&self.tables, type_of);
        retried(|| {
            self.conn
                .query_drop(&sql)
                .map_err(|e| db_error(format!("creating the table {}", self.tables.repeatable), &e))
        })
    }

    fn change_history(
        &mut self,
        changes: &[Change<'_>],
        fence: Option<&Fence>,
    ) -> Result<(), Error> {
        // A fenced write that lost certification to a takeover on another
        // node is tried again: its fence then finds the lock lost.
        retried(|| self.try_change_history(changes, fence))
    }
}

/// Runs `attempt` again while it fails with a deadlock or a lost
/// certification, which rolled it back whole, up to [`RETRIES`] times.
fn retried(mut attempt: impl FnMut() -> Result<(), Error>) -> Result<(), Error> {
    let mut tries = 0;
    loop {
        match attempt() {
            Err(e) if e.is_retryable() && tries < RETRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10 * tries as u64));
            }
            other => return other,
        }
    }
}

impl MysqlDriver {
    fn try_create_tables(&mut self) -> Result<(), Error> {
        let context = format!("creating lockstep's tables for {}", self.table);
        if self.tables_made().map_err(|e| db_error(&context, &e))? {
            return Ok(());
        }
        // The format row goes in before the history table is made: a
        // history table found without its row was made by someone else
        // (or is being made by a run between the two, which a second look
        // lets finish).
        let meta_only = tables::create_table(&self.tables.meta, tables::META, type_of);
        self.conn
            .query_drop(&meta_only)
            .map_err(|e| db_error(&context, &e))?;
        let name = self.table.name().to_string();
        if self
            .table_exists(&name)
            .map_err(|e| db_error(&context, &e))?
        {
            for _ in 0..5 {
                if let Some(format) = self.format_row().map_err(|e| db_error(&context, &e))? {
                    crate::driver::check_format(&self.table, Some(format))?;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if self
                .format_row()
                .map_err(|e| db_error(&context, &e))?
                .is_none()
            {
                return crate::driver::check_format(&self.table, None);
            }
        } else {
            self.conn
                .exec_drop(
                    format!(
                        "INSERT IGNORE INTO {} (table_name, format_version, created_at, created_by)
                         VALUES (?, ?, UTC_TIMESTAMP(6), ?)",
                        self.tables.meta
                    ),
                    (self.table.name(), CREATED_FORMAT, TOOL_VERSION),
                )
                .map_err(|e| db_error(&context, &e))?;
        }
        let script = tables::create_script(&self.tables, type_of);
        let statements = sql::split(&script, Dialect::Mysql).unwrap_or_default();
        for statement in statements {
            self.conn
                .query_drop(&script[statement.range])
                .map_err(|e| db_error(&context, &e))?;
        }
        self.conn
            .query_drop(format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} (scope, id)",
                quote_ident(LOCK_LOG_INDEX),
                self.tables.log
            ))
            .map_err(|e| db_error(&context, &e))
    }

    fn try_change_history(
        &mut self,
        changes: &[Change<'_>],
        fence: Option<&Fence>,
    ) -> Result<(), Error> {
        let context = format!("writing history to {}", self.table);
        let changes: Vec<(&Change<'_>, i64)> = changes.iter().map(|c| (c, 0)).collect();
        let result = (|| -> Result<Result<(), Error>, mysql::Error> {
            let whole = Span {
                begins: true,
                commits: true,
            };
            let held = self.fenced_changes(whole, fence, &changes)?;
            if let Some(fence) = fence.filter(|_| !held) {
                return Ok(Err(fence.lost()));
            }
            Ok(Ok(()))
        })();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(lost)) => {
                self.rollback();
                Err(lost)
            }
            Err(e) => {
                self.rollback();
                // A failure past the fence's check may still be the lost
                // lock: on Galera, a commit that lost certification to a
                // takeover on another node.
                match fence {
                    Some(fence) if matches!(self.fence_current(fence), Ok(false)) => {
                        Err(fence.lost())
                    }
                    _ => Err(db_error(context, &e)),
                }
            }
        }
    }
}

/// The types of lockstep's columns. Text is `VARCHAR(512)`: a key's
/// column must have a length, and 512 characters of utf8mb4 with a
/// `BIGINT` fit InnoDB's 3,072 bytes of index key.
fn type_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "VARCHAR(512)",
        // Two of them, a key: 2 × 255 × 4 bytes.
        Kind::Key => "VARCHAR(255)",
        Kind::Int => "INT",
        Kind::BigInt => "BIGINT",
        Kind::Time | Kind::Clock => "DATETIME(6)",
        Kind::Serial => "BIGINT AUTO_INCREMENT PRIMARY KEY",
    }
}

impl MysqlDriver {
    /// The database that holds lockstep's tables.
    fn database(&self) -> &str {
        self.table.schema().unwrap_or(&self.target.database)
    }

    fn table_exists(&mut self, name: &str) -> Result<bool, mysql::Error> {
        let found: Option<i64> = self.conn.exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (self.database().to_string(), name),
        )?;
        Ok(found.unwrap_or(0) > 0)
    }

    /// This history table's format row, when the meta table has one.
    fn format_row(&mut self) -> Result<Option<i64>, mysql::Error> {
        let format: Option<Option<i64>> = self.conn.exec_first(
            format!(
                "SELECT format_version FROM {} WHERE table_name = ?",
                self.tables.meta
            ),
            (self.table.name(),),
        )?;
        Ok(format.flatten())
    }

    /// Whether lockstep's four tables are there with this history table's
    /// format row: a look that costs a fleet starting together two reads.
    fn tables_made(&mut self) -> Result<bool, mysql::Error> {
        let found: Option<i64> = self.conn.exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN (?, ?, ?, ?)",
            (
                self.database().to_string(),
                META_TABLE,
                self.table.name(),
                LOCK_TABLE,
                LOCK_LOG_TABLE,
            ),
        )?;
        if found.unwrap_or(0) < 4 {
            return Ok(false);
        }
        Ok(self.format_row()?.is_some())
    }

    /// One statement (one consistent read): the format row on every row,
    /// the history, and the lock as the same snapshot has it.
    fn try_read_history(&mut self, with_token: bool) -> Result<Read, Error> {
        let context = format!("reading history from {}", self.table);
        let lock_row = if with_token {
            format!("LEFT JOIN {} AS l ON l.scope = ?", self.tables.lock)
        } else {
            "LEFT JOIN (SELECT NULL AS token, NULL AS owner) AS l ON ? IS NOT NULL".to_string()
        };
        let sql = format!(
            "SELECT (SELECT format_version FROM {meta} WHERE table_name = ?),
                    CAST(h.version AS CHAR), h.name, h.checksum, h.state, {applied_at}, h.duration_ms,
                    h.applied_by, h.lock_token, h.tool_version, l.token, l.owner IS NOT NULL
               FROM (SELECT 1) AS one {lock_row} LEFT JOIN {history} AS h ON TRUE
              ORDER BY h.version",
            meta = self.tables.meta,
            history = self.tables.history,
            applied_at = rfc3339("h.applied_at"),
        );
        let scope = self.table.to_string();
        // Row by row: each decoded as it comes, none of the server's rows
        // kept.
        let mut head = None;
        let mut history = Vec::new();
        let mut unreadable = None;
        let read = self
            .conn
            .exec_iter(sql, (self.table.name(), scope))
            .and_then(|rows| {
                for row in rows {
                    let row = row?;
                    if head.is_none() {
                        head = Some((int(&row, 0), int(&row, 10), int(&row, 11)));
                    }
                    match decode(&row) {
                        Some(Ok(history_row)) => history.push(history_row),
                        Some(Err(version)) => {
                            unreadable.get_or_insert(version);
                        }
                        None => {}
                    }
                }
                Ok(())
            });
        match read {
            Ok(()) => {}
            Err(e) if server_code(&e) == Some(code::NO_SUCH_TABLE) => {
                return self.which_is_missing(with_token, &context);
            }
            Err(e) if server_code(&e) == Some(code::BAD_FIELD) => {
                return Err(Error::ForeignTable {
                    table: self.table.to_string(),
                    message: "exists but does not have the columns of lockstep's history table"
                        .into(),
                })
            }
            Err(e) => return Err(db_error(context, &e)),
        }
        let (format, token, held) = head.unwrap_or_default();
        crate::driver::check_format(&self.table, format)?;
        if let Some(version) = unreadable {
            return Err(crate::driver::unreadable_version(&self.table, &version));
        }
        self.text_versions = format.is_some_and(|f| f >= TEXT_VERSIONS);
        // Text versions come in the order of their text.
        history.sort_unstable_by_key(|r| r.version);
        let mark = with_token.then(|| LockMark {
            token: token.unwrap_or(0),
            held: held.unwrap_or(0) == 1,
        });
        Ok(Read::Rows(history, mark))
    }

    /// A table the history read named is missing: which one.
    fn which_is_missing(&mut self, with_token: bool, context: &str) -> Result<Read, Error> {
        let name = self.table.name().to_string();
        let history = self.table_exists(&name);
        let meta = self.table_exists(META_TABLE);
        let lock = self.table_exists(LOCK_TABLE);
        match (history, meta, lock) {
            (Ok(false), _, _) => Ok(Read::Absent),
            (Ok(true), Ok(false), _) => {
                crate::driver::check_format(&self.table, None).map(|()| Read::Absent)
            }
            (Ok(true), Ok(true), Ok(false)) if with_token => Ok(Read::NoLockTable),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(db_error(context, &e)),
            _ => Ok(Read::Absent),
        }
    }

    /// Drops temporary tables of this session named as lockstep's history
    /// and lock tables: a temporary table hides the table of its name
    /// however it is qualified, and a migration that made one would
    /// otherwise have lockstep's writes land in it. (Dropping a temporary
    /// table commits nothing.) Only a migration's SQL makes them: nothing
    /// to do when none ran since the last look.
    pub(super) fn unshadow(&mut self) -> Result<(), mysql::Error> {
        if !self.may_shadow {
            return Ok(());
        }
        self.conn.query_drop(format!(
            "DROP TEMPORARY TABLE IF EXISTS {}, {}",
            self.tables.history, self.tables.lock
        ))?;
        self.may_shadow = false;
        Ok(())
    }

    /// In the open transaction: checks the fence's token, extends the lease
    /// from now (the holder just proved it lives), and row-locks the lock
    /// row until commit, so that no takeover or forced release lands in
    /// between (on Galera, the later of the two commits fails
    /// certification instead).
    pub(super) fn fence_holds(&mut self, fence: &Fence) -> Result<bool, mysql::Error> {
        match self.run_write(self.fence_write(fence)) {
            Ok(changed) => Ok(changed == 1),
            // The lock's table dropped by hand: the lock is gone.
            Err(e) if server_code(&e) == Some(code::NO_SUCH_TABLE) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The fence's write (see `fence_holds`): it changes one row when the
    /// token is current.
    fn fence_write(&self, fence: &Fence) -> Write {
        Write::new(
            format!(
                "UPDATE {} SET heartbeat_at = UTC_TIMESTAMP(6),
                        expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND
                  WHERE scope = ? AND owner = ? AND token = ?",
                self.tables.lock
            ),
            vec![
                micros(fence.ttl).into(),
                fence.scope.as_str().into(),
                fence.owner.as_str().into(),
                fence.token.into(),
            ],
        )
    }

    /// In one round trip: the fence's write when there is one, then
    /// history changes, each with how long the statements run in the
    /// transaction took (see `change_write`), in the transaction where
    /// `span` says. Whether the fence held: when it did not, the server
    /// stopped at the fence's check, before the changes and the commit,
    /// and the caller rolls back.
    pub(super) fn fenced_changes(
        &mut self,
        span: Span,
        fence: Option<&Fence>,
        changes: &[(&Change<'_>, i64)],
    ) -> Result<bool, mysql::Error> {
        self.unshadow()?;
        let mut writes = Vec::with_capacity(changes.len() + 4);
        if span.begins {
            writes.push(Write::plain("BEGIN"));
        }
        let check_at = fence.map(|fence| {
            writes.push(self.fence_write(fence));
            writes.push(Write::plain(FENCE_CHECK));
            writes.len() - 1
        });
        writes.extend(
            changes
                .iter()
                .map(|(change, ran_ms)| self.change_write(change, *ran_ms)),
        );
        if span.commits {
            writes.push(Write::plain("COMMIT"));
        }
        match self.run_batch(&writes) {
            Ok(()) => Ok(true),
            Err(Failed { at, error })
                if Some(at) == check_at && server_code(&error) == Some(code::SUBQUERY_ROWS) =>
            {
                Ok(false)
            }
            Err(Failed { error, .. }) => Err(error),
        }
    }

    /// In the open transaction, without locking anything: whether the
    /// fence's token is still current.
    pub(super) fn fence_current(&mut self, fence: &Fence) -> Result<bool, mysql::Error> {
        let found: Result<Option<i64>, _> = self.conn.exec_first(
            format!(
                "SELECT COUNT(*) FROM {} WHERE scope = ? AND owner = ? AND token = ?",
                self.tables.lock
            ),
            (&fence.scope, &fence.owner, fence.token),
        );
        match found {
            Ok(found) => Ok(found == Some(1)),
            Err(e) if server_code(&e) == Some(code::NO_SUCH_TABLE) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One history change's write; `ran_ms`: how long the statements run
    /// in its transaction took, the duration of a row inserted, added to
    /// that of a row recorded as applied after statements outside the
    /// transaction.
    fn change_write(&self, change: &Change<'_>, ran_ms: i64) -> Write {
        let history = &self.tables.history;
        let version = |v: &Version| match v.as_whole() {
            Some(whole) if !self.text_versions => mysql::Value::from(whole),
            _ => mysql::Value::from(v.to_string()),
        };
        match change {
            Change::Insert(row) => Write::new(
                tables::history_insert(history, "UTC_TIMESTAMP(6)", |_| "?".into()),
                super::values(tables::history_values(row, ran_ms)),
            ),
            Change::SetState {
                version: v,
                state,
                duration_ms: Some(before),
            } => Write::new(
                format!("UPDATE {history} SET state = ?, applied_at = UTC_TIMESTAMP(6), duration_ms = ? WHERE version = ?"),
                vec![state.as_str().into(), before.saturating_add(ran_ms).into(), version(v)],
            ),
            Change::SetState {
                version: v,
                state,
                duration_ms: None,
            } => Write::new(
                format!("UPDATE {history} SET state = ? WHERE version = ?"),
                vec![state.as_str().into(), version(v)],
            ),
            Change::Delete { version: v } => Write::new(
                format!("DELETE FROM {history} WHERE version = ?"),
                vec![version(v)],
            ),
            Change::SetChecksum {
                version: v,
                name,
                checksum,
            } => Write::new(
                format!("UPDATE {history} SET checksum = ?, name = ? WHERE version = ?"),
                vec![checksum.to_string().into(), name.as_str().into(), version(v)],
            ),
            Change::Repeated {
                name,
                checksum,
                applied_by,
                lock_token,
                duration_ms,
            } => {
                let values = tables::repeated_values(
                    self.table.name(),
                    name,
                    checksum,
                    applied_by,
                    *lock_token,
                );
                let sql = tables::repeated_upsert(
                    &self.tables.repeatable,
                    "UTC_TIMESTAMP(6)",
                    &duration_ms.unwrap_or(ran_ms).to_string(),
                    |_| "?".into(),
                    "ON DUPLICATE KEY UPDATE",
                    |column| format!("VALUES({column})"),
                );
                Write::new(sql, super::values(values))
            }
        }
    }
}

/// A duration in whole microseconds, for `INTERVAL ? MICROSECOND`.
pub(super) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A history row; `None` for the row of NULLs an empty history reads as,
/// the version's text when it is none lockstep reads.
fn decode(row: &Row) -> Option<Result<HistoryRow, String>> {
    let text_version = text(row, 1)?;
    let Ok(version) = Version::parse(&text_version) else {
        return Some(Err(text_version));
    };
    Some(Ok(HistoryRow {
        version,
        name: text(row, 2).unwrap_or_default(),
        checksum: Checksum::parse(&text(row, 3).unwrap_or_default()),
        state: RowState::parse(&text(row, 4).unwrap_or_default()).unwrap_or(RowState::Started),
        applied_at: text(row, 5).unwrap_or_default(),
        duration_ms: int(row, 6).unwrap_or_default(),
        applied_by: text(row, 7).unwrap_or_default(),
        lock_token: int(row, 8),
        tool_version: text(row, 9).unwrap_or_default(),
    }))
}
