//! The lock's row and log on MariaDB/MySQL: InnoDB row locks that never
//! wait, the lease by the server's clock, a holder's liveness from the
//! process list of the server it is connected to, and polling for
//! releases (there are no notifications).
//!
//! On a Galera cluster a row lock binds only its own node: two nodes can
//! both "lock" the row, and the later of the two commits fails
//! certification (error 1213), which the protocol retries as it does any
//! deadlock. Every write of the lock changes the row, so that two of them
//! always conflict.

use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::Row;

use crate::driver::FREE;
use crate::error::{DbClass, DbMessage, Error};
use crate::lock::{
    Actor, Fence, ForcedRelease, LockInfo, LockStore, LogEntry, LogEvent, Probe, Renewal, Session,
    Take, LOG_RETENTION,
};

use super::history::micros;
use super::params;
use super::{
    code, db_error, int, lock_refused, millis_between, rfc3339, server_code, text, MysqlDriver,
};
use crate::driver::tables;

impl LockStore for MysqlDriver {
    type Error = Error;

    fn session(&mut self) -> Result<Session, Error> {
        if let Some(session) = &self.session {
            return Ok(session.clone());
        }
        // The server's name goes where PostgreSQL's backend start goes: a
        // connection id means something only on the server that gave it.
        let session = if self.server.is_empty() {
            Session::default()
        } else {
            Session {
                pid: Some(i64::from(self.conn.connection_id())),
                start: Some(self.server.clone()),
            }
        };
        self.session = Some(session.clone());
        Ok(session)
    }

    fn probe_lock(&mut self, scope: &str) -> Result<Probe, Error> {
        let context = format!("acquiring the migration lock for {scope}");
        let select = format!("{} FOR UPDATE NOWAIT", self.lock_select());
        let result = (|| -> Result<Option<Row>, mysql::Error> {
            self.conn.query_drop("BEGIN")?;
            let row: Option<Row> = self.conn.exec_first(&select, self.lock_params(scope))?;
            if row.is_some() {
                return Ok(row);
            }
            // First use of this scope: create its row, then lock it. Not in
            // the transaction that found none: its read locked the gap
            // where the row goes, as every racer's did, and inserting there
            // would wait for the others' gap locks while they wait for
            // ours (a deadlock each time many runs start at once). Alone,
            // the insert waits for nobody who waits.
            self.conn.query_drop("ROLLBACK")?;
            let high = self.token_high_mark(scope)?;
            self.conn.exec_drop(
                format!(
                    "INSERT IGNORE INTO {} (scope, token) VALUES (?, ?)",
                    self.tables.lock
                ),
                (scope, high),
            )?;
            self.conn.query_drop("BEGIN")?;
            self.conn.exec_first(&select, self.lock_params(scope))
        })();
        // The transaction stays open only for a row this run locked.
        let ended = match result {
            Ok(Some(row)) => return Ok(Probe::Row(self.parse_lock(scope, &row))),
            Ok(None) => Err(Error::Database {
                context,
                db: Box::new(DbMessage::plain("the lock row vanished")),
            }),
            Err(e) if lock_refused(&e) => Ok(Probe::Busy(None)),
            Err(e) => Err(db_error(context, &e)),
        };
        self.rollback();
        ended
    }

    fn take_lock(&mut self, take: &Take<'_>) -> Result<i64, Error> {
        let context = format!("acquiring the migration lock for {}", take.scope);
        let result = (|| -> Result<bool, mysql::Error> {
            let expires = format!(
                "UTC_TIMESTAMP(6) + INTERVAL {} MICROSECOND",
                micros(take.ttl)
            );
            let update =
                tables::take_update(&self.tables.lock, "UTC_TIMESTAMP(6)", &expires, |_| {
                    "?".into()
                });
            self.conn
                .exec_drop(update, params(tables::take_values(take)))?;
            if self.conn.affected_rows() != 1 {
                return Ok(false);
            }
            let token = take.seen + 1;
            self.log(take.scope, take.event, token, take.actor)?;
            self.conn.exec_drop(
                format!(
                    "DELETE FROM {log} WHERE scope = ? AND id < (
                         SELECT MIN(id) FROM (SELECT id FROM {log} WHERE scope = ?
                                               ORDER BY id DESC LIMIT {LOG_RETENTION}) AS kept)",
                    log = self.tables.log
                ),
                (take.scope, take.scope),
            )?;
            self.conn.query_drop("COMMIT")?;
            Ok(true)
        })();
        match result {
            Ok(true) => Ok(take.seen + 1),
            // On Galera another node's take landed between this probe and
            // this take (the probe's row lock binds only this node): tried
            // again, the next probe sees that holder.
            Ok(false) => {
                self.rollback();
                Err(Error::Database {
                    context,
                    db: Box::new(DbMessage {
                        class: DbClass::Retryable,
                        ..DbMessage::plain(
                            "another node took the lock between the look and the take",
                        )
                    }),
                })
            }
            Err(e) => {
                self.rollback();
                Err(db_error(context, &e))
            }
        }
    }

    fn abandon(&mut self) {
        self.rollback();
    }

    fn renew_lock(&mut self, fence: &Fence) -> Result<Renewal, Error> {
        // A short wait: the holder's own fenced writes lock the row only
        // for a moment, and a longer wait would only delay the next beat.
        // (The heartbeat's connection is its own: the setting stays there.)
        // A renewal is the fenced write a history write begins with, made
        // alone (autocommitted).
        let result = self
            .conn
            .query_drop("SET SESSION innodb_lock_wait_timeout = 1")
            .and_then(|()| self.fence_holds(fence));
        match result {
            Ok(true) => Ok(Renewal::Renewed),
            Ok(false) => Ok(Renewal::Lost),
            Err(e) if lock_refused(&e) || server_code(&e) == Some(code::DEADLOCK) => {
                Ok(Renewal::Busy)
            }
            Err(e) => Err(db_error("renewing the migration lock", &e)),
        }
    }

    fn release_lock(&mut self, fence: &Fence, who: &Actor<'_>) -> Result<bool, Error> {
        let result = (|| -> Result<bool, mysql::Error> {
            self.conn.query_drop("BEGIN")?;
            self.conn.exec_drop(
                format!(
                    "UPDATE {} SET {FREE} WHERE scope = ? AND owner = ? AND token = ?",
                    self.tables.lock
                ),
                (&fence.scope, &fence.owner, fence.token),
            )?;
            let freed = self.conn.affected_rows() == 1;
            if freed {
                self.log(&fence.scope, LogEvent::Released, fence.token, who)?;
            }
            self.conn.query_drop("COMMIT")?;
            Ok(freed)
        })();
        result.map_err(|e| {
            self.rollback();
            db_error(
                format!("releasing the migration lock for {}", fence.scope),
                &e,
            )
        })
    }

    fn log_event(
        &mut self,
        fence: &Fence,
        who: &Actor<'_>,
        event: LogEvent<'_>,
    ) -> Result<(), Error> {
        self.log(&fence.scope, event, fence.token, who)
            .map_err(|e| db_error(format!("logging `{}` in the lock log", event.name()), &e))
    }

    fn read_lock_row(&mut self, scope: &str) -> Result<Option<LockInfo>, Error> {
        let row: Result<Option<Row>, mysql::Error> = self
            .conn
            .exec_first(self.lock_select(), self.lock_params(scope));
        let row = match row {
            Ok(row) => row,
            Err(e) if server_code(&e) == Some(code::NO_SUCH_TABLE) => return Ok(None),
            Err(e) => {
                return Err(db_error(
                    format!("reading the migration lock for {scope}"),
                    &e,
                ))
            }
        };
        Ok(row.map(|row| self.parse_lock(scope, &row)))
    }

    /// Whether the holder is busy with a migration right now, looked at
    /// without waiting: a fenced write of its has the lock row locked, or
    /// (on this server) its session runs a statement.
    fn holder_busy(&mut self, scope: &str) -> bool {
        let result = (|| -> Result<bool, mysql::Error> {
            self.conn.query_drop("BEGIN")?;
            let free: Option<i64> = self.conn.exec_first(
                format!(
                    "SELECT 1 FROM {} WHERE scope = ? FOR UPDATE SKIP LOCKED",
                    self.tables.lock
                ),
                (scope,),
            )?;
            let running: Option<i64> = self.conn.exec_first(
                format!(
                    "SELECT COUNT(*) FROM {} AS l JOIN information_schema.PROCESSLIST AS p
                        ON p.ID = l.session_pid
                     WHERE l.scope = ? AND l.session_start = ? AND p.COMMAND = 'Query'",
                    self.tables.lock
                ),
                (scope, &self.server),
            )?;
            self.conn.query_drop("ROLLBACK")?;
            Ok(free.is_none() || running.unwrap_or(0) > 0)
        })();
        result.unwrap_or_else(|_| {
            self.rollback();
            false
        })
    }

    fn force_release(&mut self, release: &ForcedRelease<'_>) -> Result<bool, Error> {
        let context = format!("releasing the migration lock for {}", release.scope);
        // The wait for the holder's fenced write (a history write, or a
        // migration's commit) that has the row locked, for this statement
        // only: the session's own setting is restored after.
        let before: Option<u64> = self
            .conn
            .query_first("SELECT @@SESSION.innodb_lock_wait_timeout")
            .map_err(|e| db_error(&context, &e))?;
        let result = (|| -> Result<bool, mysql::Error> {
            self.conn.query_drop(format!(
                "SET SESSION innodb_lock_wait_timeout = {}",
                release.wait.as_secs().max(1)
            ))?;
            self.conn.query_drop("BEGIN")?;
            self.conn.exec_drop(
                format!(
                    "UPDATE {} SET token = token + 1, {FREE} WHERE scope = ? AND token = ?",
                    self.tables.lock
                ),
                (release.scope, release.expected.token),
            )?;
            let freed = self.conn.affected_rows() == 1;
            if freed {
                let token = release.expected.token + 1;
                self.log(release.scope, release.event(), token, release.actor)?;
            }
            self.conn.query_drop("COMMIT")?;
            Ok(freed)
        })();
        if let Some(before) = before {
            let _ = self.conn.query_drop("ROLLBACK");
            let _ = self
                .conn
                .query_drop(format!("SET SESSION innodb_lock_wait_timeout = {before}"));
        }
        match result {
            Ok(freed) => Ok(freed),
            Err(e) if lock_refused(&e) => {
                self.rollback();
                Err(Error::Database {
                    context,
                    db: Box::new(DbMessage::plain(format!(
                        "a migration of the holder kept the lock row for {}s; nothing was released",
                        release.wait.as_secs()
                    ))),
                })
            }
            Err(e) => {
                self.rollback();
                Err(db_error(context, &e))
            }
        }
    }

    fn read_lock_log(&mut self, scope: &str, limit: usize) -> Result<Vec<LogEntry>, Error> {
        let rows: Result<Vec<Row>, mysql::Error> = self.conn.exec(
            format!(
                "SELECT id, {at}, event, token, owner, host, pid, command, previous_owner, detail
                   FROM {log} WHERE scope = ? ORDER BY id DESC LIMIT {limit}",
                at = rfc3339("at"),
                log = self.tables.log,
            ),
            (scope,),
        );
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) if server_code(&e) == Some(code::NO_SUCH_TABLE) => return Ok(Vec::new()),
            Err(e) => return Err(db_error(format!("reading the lock log for {scope}"), &e)),
        };
        Ok(rows
            .iter()
            .map(|r| crate::driver::log_entry(|i| text(r, i), |i| int(r, i)))
            .collect())
    }

    fn can_notify(&self) -> bool {
        false
    }

    fn listen(&mut self, _scope: &str) -> Result<bool, Error> {
        Ok(false)
    }

    fn unlisten(&mut self) {}

    fn wait_for_notification(&mut self, timeout: Duration) -> Result<bool, Error> {
        std::thread::sleep(timeout);
        Ok(false)
    }

    fn poll_interval(&self) -> Duration {
        // Releases are found by polling: a fifth of a second bounds the
        // handoff, for one cheap read per waiter per poll.
        Duration::from_millis(200)
    }

    fn heartbeat_store(&self) -> Result<Box<dyn LockStore<Error = Error>>, Error> {
        Ok(Box::new(MysqlDriver::connect(
            &self.target,
            &self.url,
            &self.table,
        )?))
    }
}

/// The columns of `lock_select`.
const SESSION_ALIVE: usize = 12;

impl MysqlDriver {
    /// The lock row with its ages by the server's clock, and whether the
    /// holder's session still exists, judged only on the server it is
    /// connected to and only by a user who sees every session. Parameters:
    /// this server's name, whether this user sees every session, the scope.
    fn lock_select(&self) -> String {
        format!(
            "SELECT l.token, l.owner, l.host, l.pid, l.command, l.tool_version,
                    {acquired}, {heartbeat}, {expires},
                    {held}, {age}, {left},
                    CASE WHEN l.session_pid IS NULL OR l.session_start IS NULL OR l.session_start <> ?
                         THEN NULL
                         WHEN EXISTS (SELECT 1 FROM information_schema.PROCESSLIST p WHERE p.ID = l.session_pid)
                         THEN 1
                         WHEN ? THEN 0
                         ELSE NULL END
               FROM {lock} AS l WHERE l.scope = ?",
            acquired = rfc3339("l.acquired_at"),
            heartbeat = rfc3339("l.heartbeat_at"),
            expires = rfc3339("l.expires_at"),
            held = millis_between("l.acquired_at", "UTC_TIMESTAMP(6)"),
            age = millis_between("l.heartbeat_at", "UTC_TIMESTAMP(6)"),
            left = millis_between("UTC_TIMESTAMP(6)", "l.expires_at"),
            lock = self.tables.lock,
        )
    }

    fn lock_params(&self, scope: &str) -> (String, bool, String) {
        (
            self.server.clone(),
            self.sees_all_sessions,
            scope.to_string(),
        )
    }

    fn parse_lock(&self, scope: &str, r: &Row) -> LockInfo {
        let alive = int(r, SESSION_ALIVE).map(|v| v == 1);
        crate::driver::lock_info(scope, |i| text(r, i), |i| int(r, i), alive)
    }

    /// The highest token the scope ever had, for a lock row made anew: from
    /// the lock log and the history, which a deleted lock row does not take
    /// with it. Tokens never repeat.
    fn token_high_mark(&mut self, scope: &str) -> Result<i64, mysql::Error> {
        let high: Option<Option<i64>> = self.conn.exec_first(
            format!(
                "SELECT GREATEST(COALESCE((SELECT MAX(token) FROM {log} WHERE scope = ?), 0),
                                 COALESCE((SELECT MAX(lock_token) FROM {history}), 0))",
                log = self.tables.log,
                history = self.tables.history,
            ),
            (scope,),
        )?;
        Ok(high.flatten().unwrap_or(0))
    }

    /// A row of the lock log.
    fn log(
        &mut self,
        scope: &str,
        event: LogEvent<'_>,
        token: i64,
        who: &Actor<'_>,
    ) -> Result<(), mysql::Error> {
        let sql = tables::log_insert(&self.tables.log, "UTC_TIMESTAMP(6)", |_| "?".into());
        let values = tables::log_values(scope, event, token, who);
        self.conn.exec_drop(sql, params(values))
    }
}
