//! The embedded SQLite driver.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{Canceller, Driver, StatementAt, StepFailure, TxStep, FREE};
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

use super::sqlite_locks::Holder;
use super::sqlite_script;

/// How long a statement waits for another connection's write lock before it
/// fails with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a read waits for another connection's write lock before this
/// run holds the lock: a writer that locks readers out for longer (a
/// migration that spilled its changes to the file, or committing a large
/// one, in rollback-journal mode; a `BEGIN EXCLUSIVE`) is the lock's
/// business, reported and bounded by the lock's timeout, not a wait of its
/// own. See [`Driver::patient`].
const LOOK_BUSY: Duration = Duration::from_millis(200);

/// An acquisition attempt waits this long for the database: longer means a
/// migration is running, and the attempt reports the lock as held.
const ACQUIRE_BUSY: Duration = Duration::from_millis(50);

/// A heartbeat waits this long; longer means the holder's own migration has
/// the database, which is normal.
const HEARTBEAT_BUSY: Duration = Duration::from_millis(250);

/// The longest pause between acquisition attempts: SQLite cannot notify, so
/// this bounds the handoff.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// SQLite's clock, formatted as the history table stores it.
/// The page cache, in KiB, while history is read. The read goes once, in
/// order, through the schema and the history table, and meets no page
/// twice: SQLite's default cache (2,000 KiB) only held what was done with.
/// At 10,000 migrations it was 1.1 MiB of a no-op run's peak.
const READ_CACHE_KIB: i64 = 64;

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

pub(crate) struct SqliteDriver {
    /// `None` while the file does not exist: the database reads as empty.
    conn: Option<Connection>,
    path: PathBuf,
    /// A missing file may be created, when lockstep first writes to it.
    writable: bool,
    /// Interrupts the connection's statement; set once the file is open,
    /// which may be after the canceller was handed out.
    interrupt: Arc<Mutex<Option<rusqlite::InterruptHandle>>>,
    /// Set by the canceller: a migration's statements stop before the next
    /// one (an interrupt that came between two statements is forgotten by
    /// SQLite).
    cancelled: Arc<AtomicBool>,
    /// An in-memory database has no second connection for a heartbeat.
    memory: bool,
    table: TableName,
    history: String,
    meta: String,
    lock: String,
    log: String,
    host: String,
    /// While waiting for the lock: the watch on the release file that a
    /// release on this host wakes.
    wake: Option<Wake>,
    /// A watch could not be set up (no inotify, too many watchers, a
    /// read-only directory): this waiter polls.
    no_wake: bool,
    /// See [`Driver::patient`].
    patient: bool,
    /// Whether the schema may hold a foreign key, which each migration is
    /// then checked against; `None` until looked at. Looked at once per
    /// run, and again after a migration that may have added one: checking
    /// a schema of thousands of tables without any at every migration
    /// would cost time quadratic in their number.
    foreign_keys: std::cell::Cell<Option<bool>>,
    /// A statement ran outside a transaction since the last
    /// [`Driver::fresh_session`]: it may have changed the session.
    session_touched: bool,
}

impl SqliteDriver {
    /// Opens the database file as it is, for writing when `writable`.
    /// Opening changes nothing: a file that does not exist is created only
    /// when lockstep first writes (its tables, before the first migration),
    /// so that the migration files can be read and checked meanwhile.
    pub(crate) fn open(path: &Path, table: &TableName, writable: bool) -> Result<Self, Error> {
        let conn = if path.exists() {
            let flags = if writable {
                OpenFlags::SQLITE_OPEN_READ_WRITE
            } else {
                OpenFlags::SQLITE_OPEN_READ_ONLY
            };
            Some(open_file(path, flags)?)
        } else {
            None
        };
        Self::with(conn, path, table, writable, false)
    }

    pub(crate) fn memory(table: &TableName) -> Result<Self, Error> {
        let conn = Connection::open_in_memory().map_err(|e| Error::Connect {
            target: "sqlite::memory:".into(),
            message: message(&e).message,
            hint: None,
        })?;
        Self::with(Some(conn), Path::new(":memory:"), table, true, true)
    }

    fn with(
        conn: Option<Connection>,
        path: &Path,
        table: &TableName,
        writable: bool,
        memory: bool,
    ) -> Result<Self, Error> {
        // Always qualified: a migration that attaches a database or makes a
        // temporary table of the same name must not redirect lockstep's writes.
        let schema = table.schema().unwrap_or("main");
        let mut driver = SqliteDriver {
            conn: None,
            path: path.to_path_buf(),
            writable,
            interrupt: Arc::new(Mutex::new(None)),
            cancelled: Arc::new(AtomicBool::new(false)),
            memory,
            history: format!("\"{schema}\".\"{}\"", table.name()),
            meta: format!("\"{schema}\".\"{META_TABLE}\""),
            lock: format!("\"{schema}\".\"{LOCK_TABLE}\""),
            log: format!("\"{schema}\".\"{LOCK_LOG_TABLE}\""),
            table: table.clone(),
            host: crate::identity::hostname(),
            wake: None,
            no_wake: false,
            patient: false,
            foreign_keys: std::cell::Cell::new(None),
            session_touched: true,
        };
        if let Some(conn) = conn {
            driver.attach(conn)?;
        }
        Ok(driver)
    }

    /// Makes an open connection this driver's: its busy timeout, and the
    /// handle through which a signal interrupts its statement.
    fn attach(&mut self, conn: Connection) -> Result<(), Error> {
        conn.busy_timeout(self.busy_wait())
            .map_err(|e| db_error("configuring the connection", &e))?;
        // Foreign keys off, as the `sqlite3` shell runs: the bundled library
        // turns them on, and inside a transaction `PRAGMA foreign_keys` is
        // ignored, so SQLite's own procedure for changing a table (create,
        // copy, drop, rename) could not run. Each migration is checked with
        // `PRAGMA foreign_key_check` before it commits instead.
        conn.execute_batch("PRAGMA foreign_keys = OFF")
            .map_err(|e| db_error("configuring the connection", &e))?;
        if let Ok(mut interrupt) = self.interrupt.lock() {
            *interrupt = Some(conn.get_interrupt_handle());
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// Runs `f` with the connection's busy timeout set to `wait`, then
    /// sets this run's own back.
    fn waiting<T>(&self, conn: &Connection, wait: Duration, f: impl FnOnce() -> T) -> T {
        let _ = conn.busy_timeout(wait);
        let out = f();
        let _ = conn.busy_timeout(self.busy_wait());
        out
    }

    /// How long a statement waits for another connection's write lock.
    fn busy_wait(&self) -> Duration {
        if self.patient {
            BUSY_TIMEOUT
        } else {
            LOOK_BUSY
        }
    }

    fn conn(&self) -> Result<&Connection, Error> {
        self.conn.as_ref().ok_or_else(|| Error::Database {
            context: format!("opening {}", self.path.display()),
            db: Box::new(DbMessage::plain("the database file does not exist")),
        })
    }

    fn apply_change(
        conn: &Connection,
        history: &str,
        change: &Change<'_>,
        elapsed: Duration,
    ) -> rusqlite::Result<()> {
        match change {
            Change::Insert(row) => {
                let state = if row.started {
                    RowState::Started
                } else {
                    RowState::Applied
                };
                let duration = if row.started { 0 } else { millis(elapsed) };
                conn.execute(
                    &format!(
                        "INSERT INTO {history} (version, name, checksum, state, applied_at, duration_ms, applied_by, lock_token, tool_version) \
                         VALUES (?1, ?2, ?3, ?4, {NOW}, ?5, ?6, ?7, ?8)"
                    ),
                    params![
                        row.version as i64,
                        row.name,
                        row.checksum.to_string(),
                        state.as_str(),
                        duration,
                        row.applied_by,
                        row.lock_token,
                        TOOL_VERSION
                    ],
                )?;
            }
            Change::SetState {
                version,
                state,
                duration_ms: Some(duration_ms),
            } => {
                conn.execute(
                    &format!("UPDATE {history} SET state = ?2, applied_at = {NOW}, duration_ms = ?3 WHERE version = ?1"),
                    params![*version as i64, state.as_str(), duration_ms],
                )?;
            }
            Change::SetState {
                version,
                state,
                duration_ms: None,
            } => {
                conn.execute(
                    &format!("UPDATE {history} SET state = ?2 WHERE version = ?1"),
                    params![*version as i64, state.as_str()],
                )?;
            }
            Change::Delete { version } => {
                conn.execute(
                    &format!("DELETE FROM {history} WHERE version = ?1"),
                    params![*version as i64],
                )?;
            }
            Change::SetChecksum {
                version,
                name,
                checksum,
            } => {
                conn.execute(
                    &format!("UPDATE {history} SET checksum = ?2, name = ?3 WHERE version = ?1"),
                    params![*version as i64, checksum.to_string(), name],
                )?;
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
        let sql = format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {meta} (
                 table_name TEXT PRIMARY KEY,
                 format_version INTEGER NOT NULL,
                 created_at TEXT NOT NULL,
                 created_by TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS {history} (
                 version INTEGER PRIMARY KEY,
                 name TEXT NOT NULL,
                 checksum TEXT NOT NULL,
                 state TEXT NOT NULL CHECK (state IN ('applied', 'started')),
                 applied_at TEXT NOT NULL,
                 duration_ms INTEGER NOT NULL,
                 applied_by TEXT NOT NULL,
                 lock_token INTEGER,
                 tool_version TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS {lock} (
                 scope TEXT PRIMARY KEY,
                 token INTEGER NOT NULL DEFAULT 0,
                 owner TEXT,
                 host TEXT,
                 pid INTEGER,
                 command TEXT,
                 tool_version TEXT,
                 session_pid INTEGER,
                 session_start TEXT,
                 acquired_at INTEGER,
                 heartbeat_at INTEGER,
                 expires_at INTEGER
             );
             CREATE TABLE IF NOT EXISTS {log} (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 scope TEXT NOT NULL,
                 at INTEGER NOT NULL,
                 event TEXT NOT NULL,
                 token INTEGER NOT NULL,
                 owner TEXT,
                 host TEXT,
                 pid INTEGER,
                 command TEXT,
                 previous_owner TEXT,
                 detail TEXT
             );
             CREATE INDEX IF NOT EXISTS \"{schema}\".\"{LOCK_LOG_INDEX}\" ON \"{LOCK_LOG_TABLE}\" (scope, id);
             INSERT OR IGNORE INTO {meta} (table_name, format_version, created_at, created_by)
                 VALUES ('{name}', {FORMAT_VERSION}, {NOW}, '{TOOL_VERSION}');
             COMMIT;",
            meta = self.meta,
            history = self.history,
            lock = self.lock,
            log = self.log,
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
            &format!("SELECT 1 FROM {} WHERE table_name = ?1", self.meta),
            [self.table.name()],
            |_| Ok(()),
        )
        .optional()
        .map(|row| row.is_some())
    }

    fn table_exists(conn: &Connection, schema_table: (&str, &str)) -> rusqlite::Result<bool> {
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

/// Opens the file; a failure names it, and a missing directory.
fn open_file(path: &Path, flags: OpenFlags) -> Result<Connection, Error> {
    Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(|e| {
        Error::Connect {
            target: format!("sqlite://{}", path.display()),
            message: message(&e).message,
            hint: path
                .parent()
                .filter(|p| !p.as_os_str().is_empty() && !p.exists())
                .map(|p| format!("the directory `{}` does not exist", p.display())),
        }
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// SQLite's name for a result code: the extended name for constraint
/// violations (which say which kind), the primary name otherwise.
pub(crate) fn code_name(e: &rusqlite::ffi::Error) -> String {
    let name = match e.extended_code {
        275 => "SQLITE_CONSTRAINT_CHECK",
        787 => "SQLITE_CONSTRAINT_FOREIGNKEY",
        1299 => "SQLITE_CONSTRAINT_NOTNULL",
        1555 => "SQLITE_CONSTRAINT_PRIMARYKEY",
        2067 => "SQLITE_CONSTRAINT_UNIQUE",
        code => match code & 0xff {
            1 => "SQLITE_ERROR",
            2 => "SQLITE_INTERNAL",
            3 => "SQLITE_PERM",
            4 => "SQLITE_ABORT",
            5 => "SQLITE_BUSY",
            6 => "SQLITE_LOCKED",
            7 => "SQLITE_NOMEM",
            8 => "SQLITE_READONLY",
            9 => "SQLITE_INTERRUPT",
            10 => "SQLITE_IOERR",
            11 => "SQLITE_CORRUPT",
            13 => "SQLITE_FULL",
            14 => "SQLITE_CANTOPEN",
            17 => "SQLITE_SCHEMA",
            18 => "SQLITE_TOOBIG",
            19 => "SQLITE_CONSTRAINT",
            20 => "SQLITE_MISMATCH",
            21 => "SQLITE_MISUSE",
            23 => "SQLITE_AUTH",
            25 => "SQLITE_RANGE",
            26 => "SQLITE_NOTADB",
            _ => return format!("SQLITE_{code}"),
        },
    };
    name.to_string()
}

/// An SQLite error as a message. Positions are not kept: lockstep's own
/// statements are not the user's file (a migration's errors come from
/// `sqlite_script`, which places them).
fn message(e: &rusqlite::Error) -> DbMessage {
    match e {
        rusqlite::Error::SqliteFailure(err, msg) => DbMessage {
            code: Some(code_name(err)),
            ..DbMessage::plain(msg.clone().unwrap_or_else(|| err.to_string()))
        },
        rusqlite::Error::SqlInputError { error, msg, .. } => DbMessage {
            code: Some(code_name(error)),
            ..DbMessage::plain(msg.clone())
        },
        other => DbMessage::plain(other.to_string()),
    }
}

fn db_error(context: impl Into<String>, e: &rusqlite::Error) -> Error {
    Error::Database {
        context: context.into(),
        db: Box::new(message(e)),
    }
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

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

    fn run_transaction(
        &mut self,
        steps: &[TxStep<'_>],
        fence: Option<&Fence>,
        done: &mut dyn FnMut(usize, Duration),
    ) -> Result<(), StepFailure> {
        let conn = self
            .conn
            .as_ref()
            .expect("run_transaction needs an open database");
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
                    return Err(StepFailure {
                        lost: true,
                        ..StepFailure::at(0, DbMessage::plain("lock lost"))
                    });
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
            if let Err(failed) = sqlite_script::run(conn, &step.section.sql, &self.cancelled) {
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
            if let Err(e) = Self::apply_change(conn, &self.history, &step.change, elapsed) {
                return Err(fail(i, message(&e)));
            }
            done(i, elapsed);
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
        sqlite_script::run(conn, sql, &AtomicBool::new(false)).map_err(|failed| *failed.db)
    }

    fn fresh_session(&mut self) -> Result<(), Error> {
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

impl HistoryStore for SqliteDriver {
    fn read_history(&mut self) -> Result<Option<HistoryRead>, Error> {
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        let context = format!("reading history from {}", self.table);
        let schema = self.table.schema().unwrap_or("main");
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
        // One read transaction: the format and the rows from one snapshot.
        conn.execute_batch("BEGIN")
            .map_err(|e| db_error(&context, &e))?;
        // The rows, and the lock in the same snapshot.
        type Read = Option<(Vec<HistoryRow>, Option<LockMark>)>;
        let result = (|| -> Result<Read, Error> {
            if !Self::table_exists(conn, (schema, self.table.name()))
                .map_err(|e| db_error(&context, &e))?
            {
                return Ok(None);
            }
            let format: Option<i64> = if Self::table_exists(conn, (schema, META_TABLE))
                .map_err(|e| db_error(&context, &e))?
            {
                conn.query_row(
                    &format!(
                        "SELECT format_version FROM {} WHERE table_name = ?1",
                        self.meta
                    ),
                    [self.table.name()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| db_error(&context, &e))?
            } else {
                None
            };
            super::check_format(&self.table, format)?;
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT version, name, checksum, state, applied_at, duration_ms, applied_by, lock_token, tool_version \
                     FROM {} ORDER BY version",
                    self.history
                ))
                .map_err(|e| match e {
                    rusqlite::Error::SqlInputError { .. } | rusqlite::Error::SqliteFailure(..) => Error::ForeignTable {
                        table: self.table.to_string(),
                        message: "exists but does not have the columns of lockstep's history table".into(),
                    },
                    e => db_error(&context, &e),
                })?;
            // Text columns are read in place: only the name gets a string
            // of its own per row.
            let mut rows: Vec<HistoryRow> = Vec::new();
            let mut read = stmt.query([]).map_err(|e| db_error(&context, &e))?;
            while let Some(r) = read.next().map_err(|e| db_error(&context, &e))? {
                let text = |i| r.get_ref(i).and_then(|v| Ok(v.as_str()?));
                let row = (|| {
                    Ok::<_, rusqlite::Error>(HistoryRow {
                        version: r.get::<_, i64>(0)? as u64,
                        name: r.get(1)?,
                        checksum: Checksum::parse(text(2)?),
                        state: RowState::parse(text(3)?).unwrap_or(RowState::Started),
                        applied_at: Timestamp::new(text(4)?),
                        duration_ms: r.get(5)?,
                        applied_by: shared(rows.last().map(|p| &p.applied_by), text(6)?),
                        lock_token: r.get(7)?,
                        tool_version: shared(rows.last().map(|p| &p.tool_version), text(8)?),
                    })
                })()
                .map_err(|e| db_error(&context, &e))?;
                rows.push(row);
            }
            // The lock in the same snapshot: no row before it was ever
            // taken; unknown if its table is gone (it is made with the
            // history table, but someone may have dropped it).
            let mark = conn
                .query_row(
                    &format!(
                        "SELECT token, owner IS NOT NULL FROM {} WHERE scope = ?1",
                        self.lock
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
            Ok(Some((rows, mark)))
        })();
        let _ = conn.execute_batch("COMMIT");
        if let Some(size) = cache {
            let _ = conn.execute_batch(&format!("PRAGMA main.cache_size = {size}"));
        }
        result.map(|read| read.map(|(rows, lock)| HistoryRead { rows, lock }))
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
            if let Err(e) = Self::apply_change(conn, &self.history, change, Duration::ZERO) {
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

impl LockStore for SqliteDriver {
    fn session(&mut self) -> Result<Session, Error> {
        let pid = std::process::id();
        Ok(Session {
            pid: Some(i64::from(pid)),
            start: crate::identity::process_start(pid),
        })
    }

    fn probe_lock(&mut self, scope: &str) -> Result<Probe, Error> {
        let conn = self.conn()?;
        let context = format!("acquiring the migration lock for {scope}");
        // A short wait: a busy database means a migration holds it.
        let begun = self.waiting(conn, ACQUIRE_BUSY, || conn.execute_batch("BEGIN IMMEDIATE"));
        match begun {
            Err(e) if is_busy(&e) => {
                let mut seen = self.read_lock(scope).ok().flatten();
                if let Some(info) = &mut seen {
                    self.name_the_writer(info, self.file_holders().as_deref());
                }
                return Ok(Probe::Busy(seen));
            }
            Err(e) => return Err(db_error(&context, &e)),
            Ok(()) => {}
        }
        let result = (|| -> rusqlite::Result<LockInfo> {
            if let Some(info) = self.select_lock(conn, scope)? {
                return Ok(info);
            }
            // The scope's first row, or one deleted by hand: it starts at
            // the highest token the scope ever had, from the lock log and
            // the history, which a deleted row does not take with it.
            // Tokens never repeat: a holder paused while its row was gone
            // cannot pass its fence beside a new holder.
            conn.execute(
                &format!(
                    "INSERT INTO {lock} (scope, token) VALUES (?1, max(
                         coalesce((SELECT max(token) FROM {log} WHERE scope = ?1), 0),
                         coalesce((SELECT max(lock_token) FROM {history}), 0)))",
                    lock = self.lock,
                    log = self.log,
                    history = self.history,
                ),
                [scope],
            )?;
            self.select_lock(conn, scope)
                .map(|info| info.expect("the row was just made"))
        })();
        match result {
            Ok(info) => Ok(Probe::Row(info)),
            Err(e) => {
                rollback(conn);
                Err(db_error(&context, &e))
            }
        }
    }

    fn take_lock(&mut self, take: &Take<'_>) -> Result<i64, Error> {
        let conn = self.conn()?;
        let context = format!("acquiring the migration lock for {}", take.scope);
        let now = now_ms();
        let result = (|| -> rusqlite::Result<i64> {
            let token: i64 = conn.query_row(
                &format!(
                    "UPDATE {} SET token = token + 1, owner = ?2, host = ?3, pid = ?4, command = ?5,
                         tool_version = ?6, session_pid = ?7, session_start = ?8,
                         acquired_at = ?9, heartbeat_at = ?9, expires_at = ?10
                     WHERE scope = ?1 RETURNING token",
                    self.lock
                ),
                params![
                    take.scope,
                    take.actor.owner,
                    take.actor.host,
                    take.actor.pid,
                    take.actor.command,
                    TOOL_VERSION,
                    take.session.pid,
                    take.session.start,
                    now,
                    now + millis(take.ttl)
                ],
                |r| r.get(0),
            )?;
            self.insert_log(conn, take.scope, take.event, token, take.actor)?;
            conn.execute(
                &format!(
                    "DELETE FROM {log} WHERE scope = ?1 AND id < (SELECT min(id) FROM (SELECT id FROM {log} WHERE scope = ?1 ORDER BY id DESC LIMIT {LOG_RETENTION}))",
                    log = self.log
                ),
                [take.scope],
            )?;
            conn.execute_batch("COMMIT")?;
            Ok(token)
        })();
        result.map_err(|e| {
            rollback(conn);
            db_error(context, &e)
        })
    }

    fn abandon(&mut self) {
        if let Some(conn) = &self.conn {
            rollback(conn);
        }
    }

    fn renew_lock(&mut self, fence: &Fence) -> Result<Renewal, Error> {
        let conn = self.conn()?;
        conn.busy_timeout(HEARTBEAT_BUSY)
            .map_err(|e| db_error("renewing the lock", &e))?;
        let now = now_ms();
        let updated = conn.execute(
            &format!(
                "UPDATE {} SET heartbeat_at = ?4, expires_at = ?5 WHERE scope = ?1 AND owner = ?2 AND token = ?3",
                self.lock
            ),
            params![fence.scope, fence.owner, fence.token, now, now + millis(fence.ttl)],
        );
        match updated {
            Ok(1) => Ok(Renewal::Renewed),
            Ok(_) => Ok(Renewal::Lost),
            // The holder's own migration has the database: normal.
            Err(e) if is_busy(&e) => Ok(Renewal::Busy),
            Err(e) if is_missing_table(&e) => Ok(Renewal::Lost),
            Err(e) => Err(db_error("renewing the lock", &e)),
        }
    }

    fn release_lock(&mut self, fence: &Fence, who: &Actor<'_>) -> Result<bool, Error> {
        let conn = self.conn()?;
        let context = format!("releasing the migration lock for {}", fence.scope);
        let result = (|| -> rusqlite::Result<bool> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let freed = conn.execute(
                &format!(
                    "UPDATE {} SET {FREE} WHERE scope = ?1 AND owner = ?2 AND token = ?3",
                    self.lock
                ),
                params![fence.scope, fence.owner, fence.token],
            )? == 1;
            if freed {
                self.insert_log(conn, &fence.scope, LogEvent::Released, fence.token, who)?;
            }
            conn.execute_batch("COMMIT")?;
            Ok(freed)
        })();
        let freed = result.map_err(|e| {
            rollback(conn);
            db_error(context, &e)
        })?;
        if freed {
            self.announce_release();
        }
        Ok(freed)
    }

    fn log_lost(&mut self, fence: &Fence, who: &Actor<'_>, detail: &str) -> Result<(), Error> {
        let conn = self.conn()?;
        self.insert_log(
            conn,
            &fence.scope,
            LogEvent::Lost { detail },
            fence.token,
            who,
        )
        .map_err(|e| db_error("logging the lost lock", &e))
    }

    fn read_lock(&mut self, scope: &str) -> Result<Option<LockInfo>, Error> {
        self.look_at_lock(scope)
    }

    fn inspect_lock(&mut self, scope: &str) -> Result<Option<LockInfo>, Error> {
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        // `lock status` answers at once, whoever writes.
        let Some(mut info) = self.waiting(conn, LOOK_BUSY, || self.look_at_lock(scope))? else {
            return Ok(None);
        };
        if info.migrating || info.blocker.is_some() {
            return Ok(Some(info));
        }
        // Whether anyone writes right now: the file locks say so where the
        // system shows them (Linux); elsewhere, a try for the write lock
        // that does not wait, and lets go at once.
        let holders = self.file_holders();
        let writing = match &holders {
            Some(holders) => holders.iter().any(Holder::writes),
            None => match self.waiting(conn, Duration::ZERO, || {
                conn.execute_batch("BEGIN IMMEDIATE")
            }) {
                Ok(()) => {
                    rollback(conn);
                    false
                }
                Err(e) if is_busy(&e) => true,
                Err(e) => {
                    return Err(db_error(
                        format!("reading the migration lock for {scope}"),
                        &e,
                    ))
                }
            },
        };
        if writing {
            self.name_the_writer(&mut info, holders.as_deref());
        }
        if info.is_held() && !info.migrating {
            // A migration outside a transaction locks nothing between its
            // statements (nor while one only reads): its history row says
            // `started` while it runs.
            let started = format!(
                "SELECT 1 FROM {} WHERE state = 'started' LIMIT 1",
                self.history
            );
            info.migrating = conn
                .query_row(&started, [], |_| Ok(()))
                .optional()
                .is_ok_and(|row| row.is_some());
        }
        Ok(Some(info))
    }

    fn force_release(
        &mut self,
        scope: &str,
        expected: &LockInfo,
        who: &Actor<'_>,
        wait: Duration,
    ) -> Result<bool, Error> {
        // Held until this returns: the holder sees it between migrations
        // and waits, so that this gets the database's write lock.
        let _request = self.request_release();
        let conn = self.conn()?;
        let context = format!("releasing the migration lock for {scope}");
        let result = self.waiting(conn, wait, || -> rusqlite::Result<bool> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let token: Option<i64> = conn
                .query_row(
                    &format!(
                        "UPDATE {} SET token = token + 1, {FREE} WHERE scope = ?1 AND token = ?2 RETURNING token",
                        self.lock
                    ),
                    params![scope, expected.token],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(token) = token {
                let event = LogEvent::ForceReleased {
                    previous: expected.owner.as_deref(),
                };
                self.insert_log(conn, scope, event, token, who)?;
            }
            conn.execute_batch("COMMIT")?;
            Ok(token.is_some())
        });
        result.map_err(|e| {
            rollback(conn);
            if is_busy(&e) {
                Error::Database {
                    context,
                    db: Box::new(DbMessage::plain(format!(
                        "the database stayed locked for {}s (a migration is running); nothing was released",
                        wait.as_secs()
                    ))),
                }
            } else {
                db_error(context, &e)
            }
        })
    }

    fn read_lock_log(&mut self, scope: &str, limit: usize) -> Result<Vec<LogEntry>, Error> {
        let Some(conn) = &self.conn else {
            return Ok(Vec::new());
        };
        let schema = self.table.schema().unwrap_or("main");
        let context = format!("reading the lock log for {scope}");
        if !Self::table_exists(conn, (schema, LOCK_LOG_TABLE))
            .map_err(|e| db_error(&context, &e))?
        {
            return Ok(Vec::new());
        }
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, strftime('%Y-%m-%dT%H:%M:%fZ', at / 1000.0, 'unixepoch'), event, token,
                        owner, host, pid, command, previous_owner, detail
                   FROM {} WHERE scope = ?1 ORDER BY id DESC LIMIT ?2",
                self.log
            ))
            .map_err(|e| db_error(&context, &e))?;
        let rows = stmt
            .query_map(params![scope, limit as i64], |r| {
                Ok(LogEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    event: r.get(2)?,
                    token: r.get(3)?,
                    owner: r.get(4)?,
                    host: r.get(5)?,
                    pid: r.get(6)?,
                    command: r.get(7)?,
                    previous_owner: r.get(8)?,
                    detail: r.get(9)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| db_error(&context, &e))?;
        Ok(rows)
    }

    fn can_notify(&self) -> bool {
        !self.memory && !self.no_wake
    }

    fn listen(&mut self, _scope: &str) -> Result<bool, Error> {
        if self.wake.is_none() {
            self.wake = self.release_file().and_then(|path| Wake::watch(&path));
            self.no_wake = self.wake.is_none();
        }
        Ok(self.wake.is_some())
    }

    fn unlisten(&mut self) {
        self.wake = None;
    }

    fn wait_for_notification(&mut self, timeout: Duration) -> Result<bool, Error> {
        match &self.wake {
            Some(wake) => Ok(wake.wait(timeout)),
            None => {
                std::thread::sleep(timeout);
                Ok(false)
            }
        }
    }

    fn poll_interval(&self) -> Duration {
        POLL_INTERVAL
    }

    fn heartbeat_store(&self) -> Result<Box<dyn LockStore>, Error> {
        if self.memory {
            return Err(Error::Config {
                message:
                    "an in-memory SQLite database cannot be locked: it has no second connection"
                        .into(),
                hint: Some("use a database file, or run without the lock".into()),
            });
        }
        Ok(Box::new(SqliteDriver::open(&self.path, &self.table, true)?))
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

/// A statement named a table that does not exist (one of lockstep's,
/// dropped by hand).
fn is_missing_table(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(_, Some(m)) | rusqlite::Error::SqlInputError { msg: m, .. }
        if m.starts_with("no such table"))
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Milliseconds since the epoch by the local clock: on SQLite there is no
/// server, and this machine's clock is the clock.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A file path as the path of an SQLite URI: `%`, `?` and `#` escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The longest a holder waits between migrations for a forced release.
const YIELD_LIMIT: Duration = Duration::from_secs(30);

/// A POSIX read lock on the release side file: a forced release holds it
/// while it waits for the database. Released when the file closes.
struct ReleaseRequest(#[allow(dead_code)] std::fs::File);

/// A waiter's watch on the release file (Linux inotify): a release, plain
/// or forced, closes the file after opening it for writing, which wakes
/// every waiter on this host at once instead of at its next poll. Waiters
/// on other hosts (a database on a network share) and waiters that could
/// not set a watch up still poll; the lock row stays the only truth, and a
/// wake-up that was not a release costs one look.
struct Wake {
    fd: std::os::fd::OwnedFd,
}

impl Wake {
    /// Watches `path`, creating it if no waiter has yet. `None` where that
    /// cannot be done.
    fn watch(path: &Path) -> Option<Wake> {
        // Made empty by the first waiter; nobody can be watching a file
        // that did not exist, so closing it wakes nobody. If another
        // waiter made it first, it is left alone.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        Self::inotify(path)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn inotify(path: &Path) -> Option<Wake> {
        use std::ffi::CString;
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: plain system calls; the descriptor is owned right away.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            if fd < 0 {
                return None;
            }
            let fd = OwnedFd::from_raw_fd(fd);
            if libc::inotify_add_watch(fd.as_raw_fd(), c_path.as_ptr(), libc::IN_CLOSE_WRITE) < 0 {
                return None;
            }
            Some(Wake { fd })
        }
    }

    /// Elsewhere waiters poll.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn inotify(_path: &Path) -> Option<Wake> {
        None
    }

    /// Waits up to `timeout` for a release; `true` when one came. A signal
    /// ends the wait early (the caller then looks whether it was told to
    /// stop).
    fn wait(&self, timeout: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut poll, 1, ms) } <= 0 {
            return false;
        }
        // Drain the events: one wake-up however many closes came.
        let mut buf = [0u8; 4096];
        // SAFETY: reads into a buffer of the given length.
        while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        true
    }
}

fn record_lock(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is a plain C struct; all-zero is a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 1;
    lock
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

    /// A read that another connection's write lock kept out, with who holds
    /// the database where the system can tell.
    fn busy_error(&self, context: &str, e: &rusqlite::Error) -> Error {
        Error::Database {
            context: context.to_string(),
            db: Box::new(self.with_holders(message(e))),
        }
    }

    /// The lock row as it stands, waiting for a writer only as this run
    /// does ([`Driver::patient`]): a writer that keeps readers out longer
    /// (rollback-journal mode) gets the row read past SQLite's locks, and is
    /// named.
    fn look_at_lock(&self, scope: &str) -> Result<Option<LockInfo>, Error> {
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        let schema = self.table.schema().unwrap_or("main");
        let read = Self::table_exists(conn, (schema, LOCK_TABLE)).and_then(|exists| {
            if exists {
                self.select_lock(conn, scope)
            } else {
                Ok(None)
            }
        });
        match read {
            Err(e) if is_busy(&e) => {
                let mut info = self
                    .read_lock_past_writer(scope)
                    .unwrap_or_else(|| LockInfo {
                        scope: scope.to_string(),
                        ..LockInfo::default()
                    });
                self.name_the_writer(&mut info, self.file_holders().as_deref());
                Ok(Some(info))
            }
            other => {
                other.map_err(|e| db_error(format!("reading the migration lock for {scope}"), &e))
            }
        }
    }

    /// The processes with a lock on the database file, where the system can
    /// tell (Linux), in either journal mode.
    fn file_holders(&self) -> Option<Vec<Holder>> {
        if self.memory {
            None
        } else {
            super::sqlite_locks::holders(&self.path)
        }
    }

    /// The database is write-locked by someone (`holders`, where known):
    /// says whether that is the lock's holder migrating, or another process,
    /// named.
    fn name_the_writer(&self, info: &mut LockInfo, holders: Option<&[Holder]>) {
        let holder_pid = info
            .pid
            .filter(|_| info.is_held() && info.host.as_deref() == Some(self.host.as_str()))
            .and_then(|pid| u32::try_from(pid).ok());
        let writers: Vec<u32> = holders
            .unwrap_or_default()
            .iter()
            .filter(|h| h.writes())
            .map(|h| h.pid)
            .collect();
        match holders {
            // The holder writes: one of its migrations runs.
            Some(_) if holder_pid.is_some_and(|pid| writers.contains(&pid)) => {
                info.migrating = true
            }
            // Someone else writes: named, and the holder (if any) is not
            // taken to be migrating.
            Some(holders) if !writers.is_empty() => {
                info.blocker = Some(super::sqlite_locks::named(holders));
                info.migrating = !info.is_held();
            }
            // Who writes cannot be told: the holder, if there is one, as
            // before; otherwise another connection.
            _ => info.migrating = true,
        }
    }

    /// The lock row read while a writer keeps readers out, past SQLite's
    /// locks (`immutable=1`): only to say who holds the lock. The row may
    /// be a moment old, or unreadable while the writer rewrites pages;
    /// nothing is decided on it (an attempt always takes the write lock).
    fn read_lock_past_writer(&self, scope: &str) -> Option<LockInfo> {
        if self.memory {
            return None;
        }
        let uri = format!("file:{}?immutable=1", uri_path(&self.path));
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(uri, flags).ok()?;
        let schema = self.table.schema().unwrap_or("main");
        if !Self::table_exists(&conn, (schema, LOCK_TABLE)).ok()? {
            return None;
        }
        self.select_lock(&conn, scope).ok().flatten()
    }

    /// A "database is locked" message says who holds the file, where the
    /// system can tell (Linux): the process to look at, and whether it is
    /// stopped.
    fn with_holders(&self, mut db: DbMessage) -> DbMessage {
        if db.code.as_deref() == Some("SQLITE_BUSY") && db.detail.is_none() && !self.memory {
            db.detail = super::sqlite_locks::describe(&self.path);
        }
        db
    }

    /// `<database>-lockstep-release`: the side file through which a forced
    /// release asks a running holder to pause between migrations, and
    /// through which a release wakes the waiters on this host (see
    /// [`Wake`]). `None` for an in-memory database.
    fn release_file(&self) -> Option<PathBuf> {
        if self.memory {
            return None;
        }
        let mut name = self.path.as_os_str().to_os_string();
        name.push("-lockstep-release");
        Some(PathBuf::from(name))
    }

    /// Announces a forced release until the returned value is dropped.
    fn request_release(&self) -> Option<ReleaseRequest> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.release_file()?)
            .ok()?;
        let lock = record_lock(libc::F_RDLCK);
        // SAFETY: a valid descriptor and a valid lock description.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &lock) };
        (rc == 0).then_some(ReleaseRequest(file))
    }

    /// Wakes the waiters on this host after a release: closing the release
    /// file after opening it for writing is the event they watch for. Only
    /// where a waiter made the file; written nothing, and no record lock is
    /// taken (this process holds none on it to lose by the close).
    fn announce_release(&self) {
        if let Some(path) = self.release_file() {
            let _ = std::fs::OpenOptions::new().write(true).open(path);
        }
    }

    /// Whether a forced release is announced right now. Only asks: a holder
    /// frozen after asking must not look like a request to the next one.
    fn release_pending(&self) -> bool {
        use std::os::fd::AsRawFd;
        let Some(path) = self.release_file() else {
            return false;
        };
        let Ok(file) = std::fs::File::open(path) else {
            return false;
        };
        let mut lock = record_lock(libc::F_WRLCK);
        // SAFETY: a valid descriptor and a valid lock description.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
        rc == 0 && lock.l_type != libc::F_UNLCK as libc::c_short
    }

    /// In an open write transaction: touches the lock row if the fence's
    /// token is current. `false` when it is not.
    fn check_fence(&self, conn: &Connection, fence: &Fence) -> rusqlite::Result<bool> {
        let n = conn.execute(
            &format!(
                "UPDATE {} SET heartbeat_at = ?4 WHERE scope = ?1 AND owner = ?2 AND token = ?3",
                self.lock
            ),
            params![fence.scope, fence.owner, fence.token, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// In an open write transaction, just before it commits: the holder
    /// just proved it is alive, so the lease runs from now.
    fn extend_lease(&self, conn: &Connection, fence: &Fence) -> rusqlite::Result<()> {
        let now = now_ms();
        conn.execute(
            &format!(
                "UPDATE {} SET heartbeat_at = ?3, expires_at = ?4 WHERE scope = ?1 AND token = ?2",
                self.lock
            ),
            params![fence.scope, fence.token, now, now + millis(fence.ttl)],
        )?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_log(
        &self,
        conn: &Connection,
        scope: &str,
        event: LogEvent<'_>,
        token: i64,
        who: &Actor<'_>,
    ) -> rusqlite::Result<()> {
        conn.execute(
            &format!(
                "INSERT INTO {} (scope, at, event, token, owner, host, pid, command, previous_owner, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                self.log
            ),
            params![
                scope,
                now_ms(),
                event.name(),
                token,
                who.owner,
                who.host,
                who.pid,
                who.command,
                event.previous_owner(),
                event.detail()
            ],
        )?;
        Ok(())
    }

    fn select_lock(&self, conn: &Connection, scope: &str) -> rusqlite::Result<Option<LockInfo>> {
        let now = now_ms();
        let row = conn
            .query_row(
                &format!(
                    "SELECT token, owner, host, pid, command, tool_version, session_pid, session_start,
                            strftime('%Y-%m-%dT%H:%M:%fZ', acquired_at / 1000.0, 'unixepoch'),
                            strftime('%Y-%m-%dT%H:%M:%fZ', heartbeat_at / 1000.0, 'unixepoch'),
                            strftime('%Y-%m-%dT%H:%M:%fZ', expires_at / 1000.0, 'unixepoch'),
                            acquired_at, heartbeat_at, expires_at
                       FROM {} WHERE scope = ?1",
                    self.lock
                ),
                [scope],
                |r| {
                    let session_pid: Option<i64> = r.get(6)?;
                    let session_start: Option<String> = r.get(7)?;
                    let host: Option<String> = r.get(2)?;
                    let acquired: Option<i64> = r.get(11)?;
                    let heartbeat: Option<i64> = r.get(12)?;
                    let expires: Option<i64> = r.get(13)?;
                    Ok(LockInfo {
                        scope: scope.to_string(),
                        token: r.get(0)?,
                        owner: r.get(1)?,
                        session_alive: self.alive(host.as_deref(), session_pid, session_start.as_deref()),
                        host,
                        pid: r.get(3)?,
                        command: r.get(4)?,
                        tool_version: r.get(5)?,
                        acquired_at: r.get(8)?,
                        heartbeat_at: r.get(9)?,
                        expires_at: r.get(10)?,
                        held_ms: acquired.map(|t| now - t),
                        heartbeat_age_ms: heartbeat.map(|t| now - t),
                        expires_in_ms: expires.map(|t| t - now),
                        migrating: false,
                        blocker: None,
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    /// Whether the holder's process runs: provable only on this host, from
    /// its pid and start time (a reused pid has another start time).
    fn alive(&self, host: Option<&str>, pid: Option<i64>, start: Option<&str>) -> Option<bool> {
        let (host, pid, start) = (host?, pid?, start?);
        if host != self.host {
            return None;
        }
        crate::identity::process_start(std::process::id())?;
        let pid = u32::try_from(pid).ok()?;
        Some(crate::identity::process_start(pid).as_deref() == Some(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "lockstep-sqlite-{}-{}",
            std::process::id(),
            crate::identity::random_u32()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A driver on a new database with lockstep's tables, in a directory
    /// of its own: the directory, the file, the table and the driver.
    fn with_tables() -> (PathBuf, PathBuf, TableName, SqliteDriver) {
        let dir = temp_dir();
        let db = dir.join("app.db");
        let table = TableName::parse(crate::history::DEFAULT_HISTORY_TABLE).unwrap();
        let mut driver = SqliteDriver::open(&db, &table, true).unwrap();
        driver.create_tables().unwrap();
        (dir, db, table, driver)
    }

    /// Plain SQL: a history of `rows` rows, each some 250 bytes.
    fn fill_history(db: &Path, rows: u32) {
        let conn = Connection::open(db).unwrap();
        conn.execute(
            "INSERT INTO lockstep_history
                 (version, name, checksum, state, applied_at, duration_ms, applied_by, lock_token, tool_version)
             WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < ?1)
             SELECT v, 'migration_' || v || '_' || hex(randomblob(40)),
                    'sha256:' || lower(hex(randomblob(32))), 'applied',
                    '2026-11-30T10:00:00.000Z', 1, 'ci@runner-' || hex(randomblob(8)), v, '0.1.0'
               FROM n",
            [rows],
        )
        .unwrap();
    }

    /// The bytes of memory the connection uses for `what`
    /// (`SQLITE_DBSTATUS_CACHE_USED`, `_SCHEMA_USED`).
    fn memory_used(conn: &Connection, what: std::ffi::c_int) -> i32 {
        let (mut current, mut highest) = (0, 0);
        // SAFETY: the handle is the open connection's; the call only reads.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(conn.handle(), what, &mut current, &mut highest, 0)
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        current
    }

    #[test]
    fn a_resting_connection_lets_go_of_the_schema_and_reads_it_again_when_used() {
        use rusqlite::ffi::SQLITE_DBSTATUS_SCHEMA_USED as SCHEMA;
        let (dir, db, table, mut driver) = with_tables();
        let tables: String = (0..1000)
            .map(|i| format!("CREATE TABLE t{i} (id integer PRIMARY KEY, v text);"))
            .collect();
        let tables = format!("BEGIN; {tables} COMMIT;");
        Connection::open(&db)
            .unwrap()
            .execute_batch(&tables)
            .unwrap();
        fill_history(&db, 3);

        assert_eq!(driver.read_history().unwrap().unwrap().rows.len(), 3);
        let parsed = memory_used(driver.conn().unwrap(), SCHEMA);
        assert!(parsed > 200_000, "1,000 tables parsed in {parsed} bytes");
        driver.rest();
        let resting = memory_used(driver.conn().unwrap(), SCHEMA);
        assert!(resting < parsed / 20, "{resting} bytes of schema kept");
        // The next statements read the schema again, and work.
        assert!(driver.read_lock("scope").unwrap().is_none());
        assert_eq!(driver.read_history().unwrap().unwrap().rows.len(), 3);
        assert!(memory_used(driver.conn().unwrap(), SCHEMA) > parsed / 2);
        // A read-only connection rests too.
        let mut reader = SqliteDriver::open(&db, &table, false).unwrap();
        assert_eq!(reader.read_history().unwrap().unwrap().rows.len(), 3);
        reader.rest();
        assert!(memory_used(reader.conn().unwrap(), SCHEMA) < parsed / 20);
        assert_eq!(reader.read_history().unwrap().unwrap().rows.len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_history_read_keeps_few_pages_and_gives_the_connection_its_cache_back() {
        let (dir, db, _, mut driver) = with_tables();
        fill_history(&db, 6000);
        let pages: i64 = driver
            .conn()
            .unwrap()
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            pages > 1_200_000,
            "the history spans {pages} bytes of pages"
        );
        // The migrations' cache, as one of them may have set it.
        driver
            .conn()
            .unwrap()
            .execute_batch("PRAGMA main.cache_size = -3000")
            .unwrap();

        let rows = driver
            .read_history()
            .unwrap()
            .expect("the history table")
            .rows;
        assert_eq!(rows.len(), 6000);
        let conn = driver.conn().unwrap();
        // The default cache would still hold over a megabyte of the pages.
        let used = memory_used(conn, rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED);
        assert!(
            used < 200 * 1024,
            "the cache holds {used} bytes after the read"
        );
        let size: i64 = conn
            .query_row("PRAGMA main.cache_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(size, -3000, "the connection's own cache size is back");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_release_wakes_a_watching_waiter_and_nothing_else_does() {
        let dir = temp_dir();
        let path = dir.join("app.db-lockstep-release");
        let wake = Wake::watch(&path).expect("inotify works here");
        assert!(path.exists(), "the first waiter makes the file");
        assert!(!wake.wait(Duration::ZERO), "nothing happened yet");
        // A second waiter's watch, a holder's look for a forced release
        // (read-only), and a failed creation wake nobody.
        let other = Wake::watch(&path).expect("a second watch");
        drop(std::fs::File::open(&path).unwrap());
        assert!(!wake.wait(Duration::ZERO));
        assert!(!other.wait(Duration::ZERO));
        // A release: every watcher wakes, once, however many closes came.
        for _ in 0..3 {
            drop(std::fs::OpenOptions::new().write(true).open(&path).unwrap());
        }
        assert!(wake.wait(Duration::from_secs(60)));
        assert!(other.wait(Duration::from_secs(60)));
        assert!(!wake.wait(Duration::ZERO), "the events were drained");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_release_of_the_lock_wakes_a_listening_driver() {
        use crate::lock::{Fence, Probe, Take};
        let dir = temp_dir();
        let db = dir.join("app.db");
        let table = TableName::parse(crate::history::DEFAULT_HISTORY_TABLE).unwrap();
        Connection::open(&db).unwrap();
        let mut holder = SqliteDriver::open(&db, &table, true).unwrap();
        holder.create_tables().unwrap();
        let mut waiter = SqliteDriver::open(&db, &table, true).unwrap();
        assert!(waiter.can_notify());
        assert!(waiter.listen("scope").unwrap());
        assert!(!waiter.wait_for_notification(Duration::ZERO).unwrap());

        let session = holder.session().unwrap();
        let ttl = Duration::from_secs(30);
        let who = Actor {
            owner: "holder",
            host: "here",
            pid: i64::from(std::process::id()),
            command: "upgrade",
        };
        let take = |driver: &mut SqliteDriver| {
            let Probe::Row(_) = driver.probe_lock("scope").unwrap() else {
                panic!("the lock is free");
            };
            driver
                .take_lock(&Take {
                    scope: "scope",
                    actor: &who,
                    session: &session,
                    ttl,
                    event: LogEvent::Acquired,
                })
                .unwrap()
        };
        let token = take(&mut holder);
        // Taking the lock wakes nobody; releasing it does.
        assert!(!waiter.wait_for_notification(Duration::ZERO).unwrap());
        let fence = Fence {
            scope: "scope".into(),
            owner: "holder".into(),
            token,
            ttl,
        };
        assert!(holder.release_lock(&fence, &who).unwrap());
        assert!(waiter
            .wait_for_notification(Duration::from_secs(60))
            .unwrap());
        // A release of a lock already lost frees nothing and wakes nobody.
        assert!(!holder.release_lock(&fence, &who).unwrap());
        assert!(!waiter.wait_for_notification(Duration::ZERO).unwrap());

        // A forced release, by another process, wakes the waiters too.
        take(&mut holder);
        assert!(!waiter.wait_for_notification(Duration::ZERO).unwrap());
        let mut releaser = SqliteDriver::open(&db, &table, true).unwrap();
        let held = releaser.read_lock("scope").unwrap().expect("the lock row");
        let operator = Actor {
            owner: "operator",
            ..who
        };
        assert!(releaser
            .force_release("scope", &held, &operator, Duration::from_secs(5))
            .unwrap());
        assert!(waiter
            .wait_for_notification(Duration::from_secs(60))
            .unwrap());
        waiter.unlisten();
        assert!(waiter.wake.is_none());

        // Where no watch can be made, the waiter says so, and polls.
        let memory = SqliteDriver::memory(&table).unwrap();
        assert!(!memory.can_notify());
        let nowhere = Path::new("/proc/lockstep-no-such-dir/app.db");
        let mut elsewhere = SqliteDriver::open(nowhere, &table, true).unwrap();
        assert!(!elsewhere.listen("scope").unwrap());
        assert!(!elsewhere.can_notify(), "not tried again at every poll");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
