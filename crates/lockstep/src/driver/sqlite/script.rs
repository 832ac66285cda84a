//! Running a migration's SQL on SQLite: statement by statement, as SQLite
//! itself divides the text, each stepped to its end.
//!
//! rusqlite's `execute_batch` hands SQLite the rest of the text at every
//! statement without a terminating NUL, and SQLite then copies all of that
//! rest before it parses the next statement: a migration of many statements
//! took time quadratic in its size (docs/performance.md). Between its
//! statements nothing could see a cancellation either: `sqlite3_interrupt`
//! only lasts while a statement runs, and one that came between two
//! statements was forgotten. Here the text ends in a NUL, which SQLite
//! parses in place, and a stop flag is looked at before every statement.

use std::ffi::{c_char, c_int, CStr};
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::{ffi, Connection};

use crate::driver::StatementAt;
use crate::error::DbMessage;

/// Why a script stopped: the engine's message, and the statement it was at.
#[derive(Debug)]
pub(crate) struct ScriptFailure {
    pub db: Box<DbMessage>,
    pub at: StatementAt,
}

/// Runs every statement of `sql` in order, stopping at the first failure
/// or, before any statement, when `stop` is set. A syntax error's position
/// is a byte offset into `sql`. Long: the prepare, step and finalize of
/// each statement, and the pointers they share, stay in one place.
pub(crate) fn run(conn: &Connection, sql: &str, stop: &AtomicBool) -> Result<(), ScriptFailure> {
    let mut text = Vec::with_capacity(sql.len() + 1);
    text.extend_from_slice(sql.as_bytes());
    text.push(0);
    let Ok(len) = c_int::try_from(text.len()) else {
        return Err(ScriptFailure {
            db: Box::new(DbMessage {
                code: Some("SQLITE_TOOBIG".into()),
                ..DbMessage::plain("the migration is too large for SQLite (2 GiB)")
            }),
            at: StatementAt {
                index: 0,
                offset: 0,
            },
        });
    };
    // SAFETY: the handle is the open connection's, used on this thread
    // only while `conn` is borrowed.
    let db = unsafe { conn.handle() };
    let base = text.as_ptr().cast::<c_char>();
    let mut pos = 0usize;
    let mut index = 0usize;
    // The NUL is the end: SQLite stops there.
    while pos + 1 < text.len() {
        // Where the statement begins, worked out only when it failed.
        let failed = |db: DbMessage| ScriptFailure {
            db: Box::new(db),
            at: StatementAt {
                index,
                offset: pos + crate::sql::first_code_offset(&sql[pos..]).unwrap_or(0),
            },
        };
        if stop.load(Ordering::SeqCst) {
            return Err(failed(DbMessage {
                code: Some("SQLITE_INTERRUPT".into()),
                ..DbMessage::plain("interrupted")
            }));
        }
        let mut stmt: *mut ffi::sqlite3_stmt = std::ptr::null_mut();
        let mut tail: *const c_char = std::ptr::null();
        // SAFETY: `base + pos` points into `text`, NUL-terminated at
        // `len - 1`; SQLite reads up to the NUL and sets `tail` inside it.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db,
                base.add(pos),
                len - pos as c_int,
                0,
                &mut stmt,
                &mut tail,
            )
        };
        if rc != ffi::SQLITE_OK {
            // SAFETY: the handle is valid; the offset is into what was
            // passed to prepare, which starts at `pos`.
            let offset = unsafe { ffi::sqlite3_error_offset(db) };
            let mut message = error(db, rc);
            message.position = usize::try_from(offset).ok().map(|o| pos + o);
            return Err(failed(message));
        }
        // SAFETY: SQLite sets `tail` into the buffer it was given.
        let next = if tail.is_null() {
            text.len() - 1
        } else {
            (unsafe { tail.offset_from(base) }) as usize
        };
        if stmt.is_null() {
            // Only white space, comments or an empty statement were left
            // before `next`.
            if next <= pos {
                break;
            }
            pos = next;
            continue;
        }
        let result = step_to_end(db, stmt);
        // SAFETY: a statement prepared above, finalized once.
        unsafe { ffi::sqlite3_finalize(stmt) };
        result.map_err(failed)?;
        index += 1;
        pos = next.max(pos + 1);
    }
    Ok(())
}

/// Steps a statement through every row it yields, as the `sqlite3` shell
/// does.
fn step_to_end(db: *mut ffi::sqlite3, stmt: *mut ffi::sqlite3_stmt) -> Result<(), DbMessage> {
    loop {
        // SAFETY: a prepared, not yet finalized statement.
        match unsafe { ffi::sqlite3_step(stmt) } {
            ffi::SQLITE_ROW => continue,
            ffi::SQLITE_DONE => return Ok(()),
            rc => return Err(error(db, rc)),
        }
    }
}

/// The connection's last error as a message, named by its extended code.
fn error(db: *mut ffi::sqlite3, rc: c_int) -> DbMessage {
    // SAFETY: the handle is valid; the message is copied out at once.
    let (extended, text) = unsafe {
        let extended = ffi::sqlite3_extended_errcode(db);
        let text = ffi::sqlite3_errmsg(db);
        let text = if text.is_null() {
            String::new()
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        };
        (extended, text)
    };
    // The step's code when the connection's was overwritten meanwhile.
    let code = if extended & 0xff == rc & 0xff {
        extended
    } else {
        rc
    };
    super::coded(&ffi::Error::new(code), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(conn: &Connection, sql: &str) -> (String, Option<usize>, StatementAt) {
        let f = run(conn, sql, &AtomicBool::new(false)).expect_err("the script fails");
        (f.db.message, f.db.position, f.at)
    }

    #[test]
    fn runs_every_statement_and_names_the_one_that_failed() {
        let conn = Connection::open_in_memory().unwrap();
        let sql = "-- make it\nCREATE TABLE t (id integer PRIMARY KEY);\n\n;\nINSERT INTO t VALUES (1);\n\
                   CREATE TRIGGER g AFTER INSERT ON t BEGIN SELECT 1; SELECT 2; END;\n\
                   INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (3);\n";
        let (message, position, at) = failure(&conn, sql);
        assert!(message.contains("UNIQUE constraint failed"), "{message}");
        // No position from the engine, but the statement: the fourth, the
        // second INSERT of 1.
        assert_eq!(position, None);
        assert_eq!(at.index, 3);
        assert!(sql[at.offset..].starts_with("INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (3)"));
        let count: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 1, "nothing after the failure ran");
    }

    #[test]
    fn a_syntax_error_points_into_the_whole_text() {
        let conn = Connection::open_in_memory().unwrap();
        let sql = "SELECT 1;\nSELEC 2;\n";
        let (message, position, at) = failure(&conn, sql);
        assert!(message.contains("syntax error"), "{message}");
        assert_eq!(position, Some(10));
        assert_eq!((at.index, at.offset), (1, 10));
    }

    #[test]
    fn a_set_stop_flag_stops_before_the_next_statement() {
        let conn = Connection::open_in_memory().unwrap();
        let stop = AtomicBool::new(true);
        let f = run(&conn, "CREATE TABLE t (x);", &stop).err().unwrap();
        assert_eq!(f.db.code.as_deref(), Some("SQLITE_INTERRUPT"));
        assert!(conn
            .query_row("SELECT 1 FROM sqlite_master", [], |_| Ok(()))
            .is_err());
        run(&conn, "  -- only a comment\n;;\n", &AtomicBool::new(false)).unwrap();
    }

    /// Stepped to the end, as the shell does: every row of a statement that
    /// yields rows is produced.
    #[test]
    fn statements_that_yield_rows_run_to_their_end() {
        let conn = Connection::open_in_memory().unwrap();
        run(
            &conn,
            "CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3) RETURNING x;",
            &AtomicBool::new(false),
        )
        .unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 3);
    }
}
