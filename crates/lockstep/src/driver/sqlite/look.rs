//! Looking at the lock on SQLite without waiting on writers: the lock row
//! read past SQLite's locks when a writer keeps readers out, the writer
//! named from the file's locks, and what `lock status` shows.

use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::Error;
use crate::lock::{LockInfo, LOCK_TABLE};

use super::holders::Holder;
use super::{db_error, is_busy, now_ms, rollback, uri_path, SqliteDriver};

/// How long a read waits for another connection's write lock before this
/// run holds the lock: a writer that locks readers out for longer (a
/// migration that spilled its changes to the file, or committing a large
/// one, in rollback-journal mode; a `BEGIN EXCLUSIVE`) is the lock's
/// business, reported and bounded by the lock's timeout, not a wait of its
/// own. See [`Driver::patient`](crate::driver::Driver::patient).
pub(super) const LOOK_BUSY: Duration = Duration::from_millis(200);

impl SqliteDriver {
    /// What `lock status` shows: the lock row, and what its holder does
    /// right now (see
    /// [`LockStore::inspect_lock`](crate::lock::LockStore::inspect_lock)).
    pub(super) fn inspect(&self, scope: &str) -> Result<Option<LockInfo>, Error> {
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
                self.tables.history
            );
            info.migrating = conn
                .query_row(&started, [], |_| Ok(()))
                .optional()
                .is_ok_and(|row| row.is_some());
        }
        Ok(Some(info))
    }

    /// The lock row as it stands, waiting for a writer only as this run
    /// does ([`Driver::patient`](crate::driver::Driver::patient)): a writer that keeps readers out longer
    /// (rollback-journal mode) gets the row read past SQLite's locks, and is
    /// named.
    pub(super) fn look_at_lock(&self, scope: &str) -> Result<Option<LockInfo>, Error> {
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
    pub(super) fn file_holders(&self) -> Option<Vec<Holder>> {
        if self.memory {
            None
        } else {
            super::holders::holders(&self.path)
        }
    }

    /// The database is write-locked by someone (`holders`, where known):
    /// says whether that is the lock's holder migrating, or another process,
    /// named.
    pub(super) fn name_the_writer(&self, info: &mut LockInfo, holders: Option<&[Holder]>) {
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
                info.blocker = Some(super::holders::named(holders));
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
    pub(super) fn read_lock_past_writer(&self, scope: &str) -> Option<LockInfo> {
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

    pub(super) fn select_lock(
        &self,
        conn: &Connection,
        scope: &str,
    ) -> rusqlite::Result<Option<LockInfo>> {
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
                    self.tables.lock
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
                        activity: None,
                    })
                },
            )
            .optional()?;
        Ok(row)
    }

    /// Whether the holder's process runs: provable only on this host, from
    /// its pid and start time (a reused pid has another start time).
    pub(super) fn alive(
        &self,
        host: Option<&str>,
        pid: Option<i64>,
        start: Option<&str>,
    ) -> Option<bool> {
        let (host, pid, start) = (host?, pid?, start?);
        if host != self.host {
            return None;
        }
        crate::identity::process_start(std::process::id())?;
        let pid = u32::try_from(pid).ok()?;
        Some(crate::identity::process_start(pid).as_deref() == Some(start))
    }
}
