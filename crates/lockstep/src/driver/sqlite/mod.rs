//! The embedded SQLite driver: a connection to one database file (or to
//! memory), and what it needs everywhere: opening, waiting for another
//! writer, and SQLite's errors.
//!
//! - `history`: lockstep's tables and the history's rows;
//! - `run`: running migrations, each in a transaction or outside one;
//! - `lock`: the lock's row and log (the protocol is `crate::lock`'s);
//! - `release`: a forced release's way in between two migrations, and
//!   waking waiters on this host;
//! - `holders`: who holds the file's locks, from `/proc/locks`;
//! - `script`: a migration's statements, one at a time.

mod history;
mod holders;
mod lock;
mod look;
mod release;
mod run;
mod script;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::driver::tables::{self, quote_ident, Names};
use crate::error::{ConnectFailure, DbClass, DbMessage, Error};
use crate::history::TableName;
use crate::remedy::Remedy;

use look::LOOK_BUSY;
use release::Wake;

/// How long a statement waits for another connection's write lock before it
/// fails with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's clock, formatted as the history table stores it.
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
    /// lockstep's tables, quoted and qualified.
    tables: Names,
    host: String,
    /// While waiting for the lock: the watch on the release file that a
    /// release on this host wakes.
    wake: Option<Wake>,
    /// A watch could not be set up (no inotify, too many watchers, a
    /// read-only directory): this waiter polls.
    no_wake: bool,
    /// See [`Driver::patient`](crate::driver::Driver::patient).
    patient: bool,
    /// Whether the schema may hold a foreign key, which each migration is
    /// then checked against; `None` until looked at. Looked at once per
    /// run, and again after a migration that may have added one: checking
    /// a schema of thousands of tables without any at every migration
    /// would cost time quadratic in their number.
    foreign_keys: std::cell::Cell<Option<bool>>,
    /// A statement ran outside a transaction since the last
    /// [`Driver::fresh_session`](crate::driver::Driver::fresh_session): it may have changed the session.
    session_touched: bool,
}

/// Refuses a database file whose directory does not exist (the file may
/// not exist yet; the working directory always does).
pub(crate) fn missing_directory(path: &Path) -> Result<(), Error> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(Error::Connect {
            target: format!("sqlite://{}", path.display()),
            message: "the database file's directory does not exist".into(),
            remedy: Some(Remedy::Text(format!(
                "the directory `{}` does not exist: check the path",
                dir.display()
            ))),
            // As a server not up yet: a volume may not be mounted yet.
            failure: ConnectFailure::Unreachable,
        }),
        _ => Ok(()),
    }
}

/// Opens the file; a failure names it, and a missing directory.
fn open_file(path: &Path, flags: OpenFlags) -> Result<Connection, Error> {
    Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(|e| {
        Error::Connect {
            target: format!("sqlite://{}", path.display()),
            message: message(&e).message,
            remedy: path
                .parent()
                .filter(|p| !p.as_os_str().is_empty() && !p.exists())
                .map(|p| Remedy::Text(format!("the directory `{}` does not exist", p.display()))),
            failure: ConnectFailure::Local,
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
/// `script`, which places them).
fn message(e: &rusqlite::Error) -> DbMessage {
    match e {
        rusqlite::Error::SqliteFailure(err, msg) => {
            coded(err, msg.clone().unwrap_or_else(|| err.to_string()))
        }
        rusqlite::Error::SqlInputError { error, msg, .. } => coded(error, msg.clone()),
        other => DbMessage::plain(other.to_string()),
    }
}

/// SQLite's message with its code, and the class of failure they say.
pub(crate) fn coded(e: &rusqlite::ffi::Error, text: String) -> DbMessage {
    let class = if e.extended_code & 0xff == rusqlite::ffi::SQLITE_BUSY {
        DbClass::Busy
    } else if text.starts_with("no such table") {
        DbClass::UndefinedTable
    } else if text.contains("within a transaction") {
        // VACUUM's message.
        DbClass::NeedsNoTransaction
    } else {
        DbClass::Other
    };
    DbMessage {
        code: Some(code_name(e)),
        class,
        ..DbMessage::plain(text)
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
/// A value bound to a statement, as rusqlite binds it.
fn sql_value(value: tables::Value) -> rusqlite::types::Value {
    match value {
        tables::Value::Text(Some(s)) => rusqlite::types::Value::Text(s),
        tables::Value::Int(Some(i)) => rusqlite::types::Value::Integer(i),
        tables::Value::Text(None) | tables::Value::Int(None) => rusqlite::types::Value::Null,
    }
}

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

impl SqliteDriver {
    /// Opens the database file as it is, for writing when `writable`.
    /// Opening changes nothing: a file that does not exist is created only
    /// when lockstep first writes (its tables, before the first migration),
    /// so that the migration files can be read and checked meanwhile.
    pub(crate) fn open(path: &Path, table: &TableName, writable: bool) -> Result<Self, Error> {
        // Nothing can ever be made there: a mistyped path, not an empty
        // database.
        missing_directory(path)?;
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
            remedy: None,
            failure: ConnectFailure::Local,
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
            tables: Names::in_schema(schema, table.name(), quote_ident),
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
    pub(super) fn attach(&mut self, conn: Connection) -> Result<(), Error> {
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
    pub(super) fn waiting<T>(&self, conn: &Connection, wait: Duration, f: impl FnOnce() -> T) -> T {
        let _ = conn.busy_timeout(wait);
        let out = f();
        let _ = conn.busy_timeout(self.busy_wait());
        out
    }

    /// How long a statement waits for another connection's write lock.
    pub(super) fn busy_wait(&self) -> Duration {
        if self.patient {
            BUSY_TIMEOUT
        } else {
            LOOK_BUSY
        }
    }

    pub(super) fn conn(&self) -> Result<&Connection, Error> {
        self.conn.as_ref().ok_or_else(|| Error::Database {
            context: format!("opening {}", self.path.display()),
            db: Box::new(DbMessage::plain("the database file does not exist")),
        })
    }

    /// A read that another connection's write lock kept out, with who holds
    /// the database where the system can tell.
    pub(super) fn busy_error(&self, context: &str, e: &rusqlite::Error) -> Error {
        Error::Database {
            context: context.to_string(),
            db: Box::new(self.with_holders(message(e))),
        }
    }

    /// A "database is locked" message says who holds the file, where the
    /// system can tell (Linux): the process to look at, and whether it is
    /// stopped.
    pub(super) fn with_holders(&self, mut db: DbMessage) -> DbMessage {
        if db.class == DbClass::Busy && db.detail.is_none() && !self.memory {
            db.detail = holders::describe(&self.path);
        }
        db
    }
}
