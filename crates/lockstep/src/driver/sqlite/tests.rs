//! Tests of the SQLite driver against real database files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::driver::Driver;
use crate::history::{HistoryStore, TableName};
use crate::lock::{Actor, ForcedRelease, LockStore, LogEvent};

use super::release::Wake;
use super::SqliteDriver;

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

/// The process the tests' lock holders stand for.
fn holder_actor() -> Actor<'static> {
    Actor {
        owner: "holder",
        host: "here",
        pid: i64::from(std::process::id()),
        command: "upgrade",
    }
}

/// Takes the free lock of the scope `scope` for [`holder_actor`]: its token.
fn take(driver: &mut SqliteDriver, ttl: Duration) -> i64 {
    use crate::lock::{Probe, Take};
    let session = driver.session().unwrap();
    let Probe::Row(seen) = driver.probe_lock("scope").unwrap() else {
        panic!("the lock is free");
    };
    driver
        .take_lock(&Take {
            scope: "scope",
            seen: seen.token,
            actor: &holder_actor(),
            session: &session,
            ttl,
            event: LogEvent::Acquired,
        })
        .unwrap()
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
    use crate::lock::Fence;
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

    let ttl = Duration::from_secs(30);
    let who = holder_actor();
    let token = take(&mut holder, ttl);
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
    take(&mut holder, ttl);
    assert!(!waiter.wait_for_notification(Duration::ZERO).unwrap());
    let mut releaser = SqliteDriver::open(&db, &table, true).unwrap();
    let held = releaser.read_lock("scope").unwrap().expect("the lock row");
    let operator = Actor {
        owner: "operator",
        ..who
    };
    assert!(releaser
        .force_release(&ForcedRelease {
            scope: "scope",
            expected: &held,
            actor: &operator,
            wait: Duration::from_secs(5),
        })
        .unwrap());
    assert!(waiter
        .wait_for_notification(Duration::from_secs(60))
        .unwrap());
    waiter.unlisten();
    assert!(waiter.wake.is_none());

    // Where no watch can be made, the waiter says so, and polls.
    let memory = SqliteDriver::memory(&table).unwrap();
    assert!(!memory.can_notify());
    // (A directory gone since the driver opened: nothing to watch.)
    let gone = dir.join("gone");
    std::fs::create_dir(&gone).unwrap();
    let mut elsewhere = SqliteDriver::open(&gone.join("app.db"), &table, true).unwrap();
    std::fs::remove_dir(&gone).unwrap();
    assert!(!elsewhere.listen("scope").unwrap());
    assert!(!elsewhere.can_notify(), "not tried again at every poll");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_lease_left_is_read_for_the_fence_s_token_only() {
    use crate::lock::Fence;
    let (_dir, _db, _table, mut driver) = with_tables();
    let ttl = Duration::from_secs(30);
    let token = take(&mut driver, ttl);
    let fence = Fence {
        scope: "scope".into(),
        owner: "holder".into(),
        token,
        ttl,
    };
    let left = driver
        .lease_left(&fence)
        .unwrap()
        .expect("the token is current");
    assert!(
        left <= ttl && left > ttl - Duration::from_secs(5),
        "{left:?}"
    );
    let other = Fence {
        token: token + 1,
        ..fence.clone()
    };
    assert_eq!(driver.lease_left(&other).unwrap(), None);
    assert!(driver.release_lock(&fence, &holder_actor()).unwrap());
    assert_eq!(driver.lease_left(&fence).unwrap(), None);
}
