//! Running migrations on SQLite: in a transaction with their history row
//! and the fence, or statement by statement outside one; foreign keys
//! checked before each commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use crate::driver::{Canceller, Done, Driver, StatementAt, StepFailure, Transaction};
use crate::error::{DbMessage, Error};
use crate::lock::Fence;
use crate::sql::Dialect;
use crate::waits::Limits;

use super::release::YIELD_LIMIT;
use super::script;
use super::{db_error, is_missing_table, message, now_ms, rollback, SqliteDriver};

impl Driver for SqliteDriver {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn rest(&mut self) {
        // SQLite's own way to drop a connection's parsed schema ("RESET":
        // writing the schema stays off, as lockstep always has it) and
        // read it again at the next statement.
        if let Some(conn) = &self.conn {
            let _ = conn.execute_batch("PRAGMA writable_schema = RESET");
        }
    }

    fn run_steps(&mut self, tx: Transaction<'_>, done: &mut Done) -> Result<(), StepFailure> {
        let Transaction { lead, steps, fence } = tx;
        // Only MariaDB/MySQL migrations have a lead (their DDL commits by
        // itself); run alone, first, it means the same here.
        if let Some(lead) = lead {
            self.run_statement(lead).map_err(StepFailure::lead)?;
        }
        let conn = self
            .conn
            .as_ref()
            .expect("running steps needs an open database");
        let fail_at = |index: usize, db: DbMessage, statement: Option<StatementAt>| {
            rollback(conn);
            StepFailure {
                statement,
                ..StepFailure::at(index, self.with_holders(db))
            }
        };
        let fail = |index: usize, db: DbMessage| fail_at(index, db, None);
        // IMMEDIATE takes the write lock now rather than at the first write,
        // so two writers cannot deadlock upgrading their read locks.
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| fail(0, message(&e)))?;
        if let Some(fence) = fence {
            match self.check_fence(conn, fence) {
                Ok(true) => {}
                Ok(false) => {
                    rollback(conn);
                    return Err(StepFailure::lost(0));
                }
                // The lock's table dropped by hand: the lock is gone.
                Err(e) if is_missing_table(&e) => {
                    rollback(conn);
                    return Err(StepFailure {
                        lost: true,
                        ..StepFailure::at(0, message(&e))
                    });
                }
                Err(e) => return Err(fail(0, message(&e))),
            }
        }
        for (i, step) in steps.iter().enumerate() {
            let start = Instant::now();
            if let Err(failed) = script::run(conn, &step.section.sql, &self.cancelled) {
                return Err(fail_at(i, *failed.db, Some(failed.at)));
            }
            if conn.is_autocommit() {
                return Err(fail(
                    i,
                    DbMessage::plain("the migration ended lockstep's transaction (COMMIT or ROLLBACK in its SQL)"),
                ));
            }
            if self
                .may_break_foreign_keys(conn, &step.section.sql)
                .map_err(|e| fail(i, message(&e)))?
            {
                if let Some(violations) =
                    foreign_key_violations(conn).map_err(|e| fail(i, message(&e)))?
                {
                    return Err(fail(i, violations));
                }
            }
            let elapsed = start.elapsed();
            let table = self.table.name();
            for (change, ran) in [(&step.change, elapsed), (&step.ahead, Duration::ZERO)] {
                if let Some(change) = change {
                    if let Err(e) = Self::apply_change(conn, &self.tables, table, change, ran) {
                        return Err(fail(i, message(&e)));
                    }
                }
            }
            done(i, crate::driver::as_recorded(elapsed));
        }
        let last = steps.len().saturating_sub(1);
        if let Some(fence) = fence {
            self.extend_lease(conn, fence)
                .map_err(|e| fail(last, message(&e)))?;
        }
        conn.execute_batch("COMMIT")
            .map_err(|e| fail(last, message(&e)))
    }

    fn run_statement(&mut self, sql: &str) -> Result<(), DbMessage> {
        let conn = self
            .conn
            .as_ref()
            .expect("run_statement needs an open database");
        self.session_touched = true;
        if mentions_references(sql) {
            self.foreign_keys.set(None);
        }
        // Never stopped half-way: a statement outside a transaction is
        // left to finish.
        script::run(conn, sql, &AtomicBool::new(false)).map_err(|failed| *failed.db)
    }

    fn lease_left(&mut self, fence: &Fence) -> Result<Option<Duration>, Error> {
        let sql = format!(
            "SELECT max(0, expires_at - ?4) FROM {} WHERE scope = ?1 AND owner = ?2 AND token = ?3",
            self.tables.lock
        );
        let left = self.conn()?.query_row(
            &sql,
            params![fence.scope, fence.owner, fence.token, now_ms()],
            |row| row.get::<_, i64>(0),
        );
        match left.optional() {
            Ok(left) => Ok(left.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))),
            Err(e) if is_missing_table(&e) => Ok(None),
            Err(e) => Err(db_error("reading the migration lock's lease", &e)),
        }
    }

    fn read_table(&mut self, sql: &str) -> Result<Option<Vec<Vec<Option<String>>>>, Error> {
        self.text_rows(sql, "reading another tool's history")
    }

    fn fresh_session(&mut self, _limits: Limits) -> Result<(), Error> {
        // Only a statement outside a transaction can have changed it:
        // inside one, `PRAGMA foreign_keys` does nothing.
        if !std::mem::take(&mut self.session_touched) {
            return Ok(());
        }
        match &self.conn {
            Some(conn) => conn
                .execute_batch("PRAGMA foreign_keys = OFF")
                .map_err(|e| db_error("resetting the session", &e)),
            None => Ok(()),
        }
    }

    fn patient(&mut self, patient: bool) {
        self.patient = patient;
        if let Some(conn) = &self.conn {
            let _ = conn.busy_timeout(self.busy_wait());
        }
    }

    fn yield_to_release(&mut self) {
        // A forced release holds a shared lock on the side file while it
        // waits for the database: wait for it to finish (bounded, in case
        // it waits for something else).
        let started = std::time::Instant::now();
        while self.release_pending() && started.elapsed() < YIELD_LIMIT {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn canceller(&self) -> Canceller {
        let interrupt = Arc::clone(&self.interrupt);
        let cancelled = Arc::clone(&self.cancelled);
        Box::new(move || {
            cancelled.store(true, Ordering::SeqCst);
            if let Some(handle) = interrupt.lock().ok().as_deref().and_then(Option::as_ref) {
                handle.interrupt();
            }
        })
    }
}

/// Whether SQL may declare a foreign key: it says `REFERENCES`, in any
/// case (a false alarm only costs a look at the schema).
fn mentions_references(sql: &str) -> bool {
    sql.as_bytes()
        .windows(10)
        .any(|w| w.eq_ignore_ascii_case(b"references"))
}

/// How many violations a foreign key check names.
const VIOLATIONS_SHOWN: usize = 5;

/// The rows that break a foreign key, as `PRAGMA foreign_key_check` finds
/// them (what SQLite advises after changing tables with foreign keys off);
/// `None` when there are none.
fn foreign_key_violations(conn: &Connection) -> rusqlite::Result<Option<DbMessage>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT \"table\", rowid, parent FROM pragma_foreign_key_check LIMIT {}",
        VIOLATIONS_SHOWN + 1
    ))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut named: Vec<String> = rows
        .iter()
        .take(VIOLATIONS_SHOWN)
        .map(|(table, rowid, parent)| match rowid {
            Some(rowid) => format!("`{table}` row {rowid} refers to a missing row of `{parent}`"),
            None => format!("a row of `{table}` refers to a missing row of `{parent}`"),
        })
        .collect();
    if rows.len() > VIOLATIONS_SHOWN {
        named.push("and more".into());
    }
    Ok(Some(DbMessage {
        code: Some("SQLITE_CONSTRAINT_FOREIGNKEY".into()),
        ..DbMessage::plain(format!(
            "foreign key check failed after the migration: {}",
            named.join("; ")
        ))
    }))
}

impl SqliteDriver {
    /// Whether a migration that just ran (`sql`) must be checked against
    /// foreign keys: whether the schema may hold one, looked at again when
    /// the migration may have added one.
    fn may_break_foreign_keys(&self, conn: &Connection, sql: &str) -> rusqlite::Result<bool> {
        if mentions_references(sql) {
            self.foreign_keys.set(None);
        }
        if let Some(known) = self.foreign_keys.get() {
            return Ok(known);
        }
        let any: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_schema AS t, pragma_foreign_key_list(t.name) WHERE t.type = 'table')",
            [],
            |r| r.get(0),
        )?;
        self.foreign_keys.set(Some(any));
        Ok(any)
    }
}

impl SqliteDriver {
    /// The rows of a query, each value as text (NULL as `None`); `None`
    /// when its table does not exist. `context` says what failed.
    pub(super) fn text_rows(
        &mut self,
        sql: &str,
        context: &str,
    ) -> Result<Option<Vec<Vec<Option<String>>>>, Error> {
        use rusqlite::types::ValueRef;
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        let read = || -> rusqlite::Result<Vec<Vec<Option<String>>>> {
            let mut statement = conn.prepare(sql)?;
            let columns = statement.column_count();
            let rows = statement.query_map([], |row| {
                (0..columns)
                    .map(|i| {
                        Ok(match row.get_ref(i)? {
                            ValueRef::Null => None,
                            ValueRef::Integer(v) => Some(v.to_string()),
                            ValueRef::Real(v) => Some(v.to_string()),
                            ValueRef::Text(t) | ValueRef::Blob(t) => {
                                Some(String::from_utf8_lossy(t).into_owned())
                            }
                        })
                    })
                    .collect()
            })?;
            rows.collect()
        };
        match read() {
            Ok(rows) => Ok(Some(rows)),
            Err(e) if is_missing_table(&e) => Ok(None),
            Err(e) => Err(db_error(context, &e)),
        }
    }
}
