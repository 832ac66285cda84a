//! The lock's row and log on SQLite. SQLite has one writer at a time: an
//! acquisition is a short `BEGIN IMMEDIATE`, and who holds the database is
//! named from the file's locks.

use std::time::Duration;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use crate::driver::{tables, FREE};
use crate::error::{DbMessage, Error};
use crate::lock::{
    Actor, Fence, ForcedRelease, LockInfo, LockStore, LogEntry, LogEvent, Probe, Renewal, Session,
    Take, LOCK_LOG_TABLE, LOG_RETENTION,
};
use crate::remedy::Remedy;

use super::release::Wake;
use super::{
    db_error, is_busy, is_missing_table, millis, now_ms, rollback, sql_value, SqliteDriver,
};

/// An acquisition attempt waits this long for the database: longer means a
/// migration is running, and the attempt reports the lock as held.
const ACQUIRE_BUSY: Duration = Duration::from_millis(50);

/// A heartbeat waits this long; longer means the holder's own migration has
/// the database, which is normal.
const HEARTBEAT_BUSY: Duration = Duration::from_millis(250);

/// The longest pause between acquisition attempts: SQLite cannot notify, so
/// this bounds the handoff.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

impl LockStore for SqliteDriver {
    type Error = Error;

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
                    lock = self.tables.lock,
                    log = self.tables.log,
                    history = self.tables.history,
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
            let update = tables::take_update(
                &self.tables.lock,
                &now.to_string(),
                &(now + millis(take.ttl)).to_string(),
                |n| format!("?{n}"),
            );
            let values = tables::take_values(take).into_iter().map(sql_value);
            let token: i64 = conn.query_row(
                &format!("{update} RETURNING token"),
                params_from_iter(values),
                |r| r.get(0),
            )?;
            self.insert_log(conn, take.scope, take.event, token, take.actor)?;
            conn.execute(
                &format!(
                    "DELETE FROM {log} WHERE scope = ?1 AND id < (SELECT min(id) FROM (SELECT id FROM {log} WHERE scope = ?1 ORDER BY id DESC LIMIT {LOG_RETENTION}))",
                    log = self.tables.log
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
                self.tables.lock
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
                    self.tables.lock
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

    fn log_event(
        &mut self,
        fence: &Fence,
        who: &Actor<'_>,
        event: LogEvent<'_>,
    ) -> Result<(), Error> {
        let conn = self.conn()?;
        self.insert_log(conn, &fence.scope, event, fence.token, who)
            .map_err(|e| db_error(format!("logging `{}` in the lock log", event.name()), &e))
    }

    fn read_lock_row(&mut self, scope: &str) -> Result<Option<LockInfo>, Error> {
        self.look_at_lock(scope)
    }

    fn inspect_lock(&mut self, scope: &str) -> Result<Option<LockInfo>, Error> {
        self.inspect(scope)
    }

    fn force_release(&mut self, release: &ForcedRelease<'_>) -> Result<bool, Error> {
        let (scope, wait) = (release.scope, release.wait);
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
                        self.tables.lock
                    ),
                    params![scope, release.expected.token],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(token) = token {
                self.insert_log(conn, scope, release.event(), token, release.actor)?;
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
                self.tables.log
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

    fn heartbeat_store(&self) -> Result<Box<dyn LockStore<Error = Error>>, Error> {
        if self.memory {
            return Err(Error::Config {
                message:
                    "an in-memory SQLite database cannot be locked: it has no second connection"
                        .into(),
                remedy: Some(Remedy::Text(
                    "use a database file, or run without the lock".into(),
                )),
            });
        }
        Ok(Box::new(SqliteDriver::open(&self.path, &self.table, true)?))
    }
}

impl SqliteDriver {
    /// In an open write transaction: touches the lock row if the fence's
    /// token is current. `false` when it is not.
    pub(super) fn check_fence(&self, conn: &Connection, fence: &Fence) -> rusqlite::Result<bool> {
        let n = conn.execute(
            &format!(
                "UPDATE {} SET heartbeat_at = ?4 WHERE scope = ?1 AND owner = ?2 AND token = ?3",
                self.tables.lock
            ),
            params![fence.scope, fence.owner, fence.token, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// In an open write transaction, just before it commits: the holder
    /// just proved it is alive, so the lease runs from now.
    pub(super) fn extend_lease(&self, conn: &Connection, fence: &Fence) -> rusqlite::Result<()> {
        let now = now_ms();
        conn.execute(
            &format!(
                "UPDATE {} SET heartbeat_at = ?3, expires_at = ?4 WHERE scope = ?1 AND token = ?2",
                self.tables.lock
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
        let sql = tables::log_insert(&self.tables.log, &now_ms().to_string(), |n| format!("?{n}"));
        let values = tables::log_values(scope, event, token, who);
        conn.execute(&sql, params_from_iter(values.into_iter().map(sql_value)))?;
        Ok(())
    }
}
