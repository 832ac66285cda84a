//! The lock's row and log on PostgreSQL: row locks that never wait, a
//! session's liveness from `pg_stat_activity`, and release notifications.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

use crate::driver::FREE;
use crate::error::{DbMessage, Error};
use crate::history::TOOL_VERSION;
use crate::lock::{
    Actor, Fence, ForcedRelease, LockInfo, LockStore, LogEntry, LogEvent, Probe, Renewal, Session,
    Take, LOG_RETENTION,
};

use super::look::{lock_row, parse_lock, PORT_COLUMN};
use super::{
    code, db_error, first_value, int, interval, is_retryable, literal, quote_ident, statements,
    text, PgDriver, TIME_FORMAT,
};

impl LockStore for PgDriver {
    type Error = Error;

    fn session(&mut self) -> Result<Session, Error> {
        if let Some(session) = &self.session {
            return Ok(session.clone());
        }
        // The server notices a client that died in the middle of a long
        // statement within a quarter of a second (PostgreSQL 14+), and
        // ends the statement, releasing the lock row for the next holder:
        // with a waiter's poll, a SIGKILLed holder is replaced within a
        // second. One statement; the setting exists from PostgreSQL 14 on.
        let sql = "SELECT pg_backend_pid(),
                          (SELECT (extract(epoch FROM backend_start) * 1000000)::bigint
                             FROM pg_stat_activity WHERE pid = pg_backend_pid()),
                          current_setting('port'),
                          (SELECT set_config(name, '250', false) FROM pg_settings
                            WHERE name = 'client_connection_check_interval')";
        let messages = self
            .client
            .simple_query(sql)
            .map_err(|e| db_error("reading this session's identity", &e))?;
        let row = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).and_then(|v| v.parse::<i64>().ok()),
                r.get(1).map(str::to_string),
                r.get(2).and_then(|v| v.parse::<u16>().ok()),
                r.get(3).is_some(),
            )),
            _ => None,
        });
        let (pid, start, server_port, check_interval) = row.unwrap_or_default();
        self.check_interval = check_interval;
        let pooled = self.note_server_port(server_port);
        let session = if pooled {
            Session::default()
        } else {
            Session { pid, start }
        };
        self.session = Some(session.clone());
        Ok(session)
    }

    fn probe_lock(&mut self, scope: &str) -> Result<Probe, Error> {
        let context = format!("acquiring the migration lock for {scope}");
        let select = format!("{} FOR UPDATE OF l NOWAIT", self.lock_select(scope));
        // Under serializable isolation a concurrent renewal can fail the
        // row lock with 40001: the error is retryable, and the protocol
        // tries again.
        let mut result = self.client.simple_query(&format!("BEGIN;\n{select}"));
        if matches!(&result, Ok(m) if lock_row(m).is_none()) {
            // First use of this scope: create its row, then lock it.
            result = self.client.simple_query(&format!(
                "INSERT INTO {lock} (scope, token) VALUES ({s}, {high}) ON CONFLICT (scope) DO NOTHING;\n{select}",
                lock = self.tables.lock,
                s = literal(scope),
                high = self.token_high_mark(scope),
            ));
        }
        match result {
            Ok(messages) => match lock_row(&messages) {
                Some(row) => Ok(Probe::Row(parse_lock(scope, row))),
                None => {
                    self.rollback();
                    Err(Error::Database {
                        context,
                        db: Box::new(DbMessage::plain("the lock row vanished")),
                    })
                }
            },
            Err(e) if code(&e) == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                self.rollback();
                Ok(Probe::Busy(None))
            }
            Err(e) => {
                self.rollback();
                Err(db_error(context, &e))
            }
        }
    }

    fn take_lock(&mut self, take: &Take<'_>) -> Result<i64, Error> {
        let scope = literal(take.scope);
        let sql = format!(
            "UPDATE {lock} SET token = token + 1, owner = {owner}, host = {host}, pid = {pid},
                    command = {command}, tool_version = {version}, session_pid = {session_pid},
                    session_start = {session_start}, acquired_at = now(), heartbeat_at = now(),
                    expires_at = now() + {ttl}
              WHERE scope = {scope} RETURNING token;
             {log};
             DELETE FROM {log_table} WHERE scope = {scope} AND id < (
                 SELECT min(id) FROM (SELECT id FROM {log_table} WHERE scope = {scope}
                                       ORDER BY id DESC LIMIT {LOG_RETENTION}) AS kept);
             COMMIT;",
            lock = self.tables.lock,
            owner = literal(take.actor.owner),
            host = literal(take.actor.host),
            pid = take.actor.pid,
            command = literal(take.actor.command),
            version = literal(TOOL_VERSION),
            session_pid = take.session.pid.map_or("NULL".into(), |p| p.to_string()),
            session_start = take.session.start.as_deref().map_or("NULL".into(), literal),
            ttl = interval(take.ttl),
            log = self.log_insert(
                take.scope,
                take.event,
                &format!(
                    "(SELECT token FROM {} WHERE scope = {scope})",
                    self.tables.lock
                ),
                take.actor,
            ),
            log_table = self.tables.log,
        );
        match self.client.simple_query(&sql) {
            Ok(messages) => statements(&messages)
                .first()
                .and_then(|rows| first_value(rows))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::Database {
                    context: format!("acquiring the migration lock for {}", take.scope),
                    db: Box::new(DbMessage::plain("no token returned")),
                }),
            Err(e) => {
                self.rollback();
                Err(db_error(
                    format!("acquiring the migration lock for {}", take.scope),
                    &e,
                ))
            }
        }
    }

    fn abandon(&mut self) {
        self.rollback();
    }

    fn renew_lock(&mut self, fence: &Fence) -> Result<Renewal, Error> {
        // A short lock timeout: while the holder's own migration has the
        // row locked, waiting would only delay the next beat.
        let sql = format!(
            "BEGIN;
             SET LOCAL lock_timeout = '1s';
             UPDATE {} SET heartbeat_at = now(), expires_at = now() + {}
              WHERE scope = {} AND owner = {} AND token = {} RETURNING token;
             COMMIT;",
            self.tables.lock,
            interval(fence.ttl),
            literal(&fence.scope),
            literal(&fence.owner),
            fence.token
        );
        match self.client.simple_query(&sql) {
            Ok(messages) => {
                let renewed = statements(&messages)
                    .get(2)
                    .is_some_and(|rows| first_value(rows).is_some());
                Ok(if renewed {
                    Renewal::Renewed
                } else {
                    Renewal::Lost
                })
            }
            Err(e) if code(&e) == Some(&SqlState::LOCK_NOT_AVAILABLE) || is_retryable(&e) => {
                self.rollback();
                Ok(Renewal::Busy)
            }
            // The lock's table dropped by hand: the lock is gone.
            Err(e) if code(&e) == Some(&SqlState::UNDEFINED_TABLE) => {
                self.rollback();
                Ok(Renewal::Lost)
            }
            Err(e) => {
                self.rollback();
                Err(db_error("renewing the migration lock", &e))
            }
        }
    }

    fn release_lock(&mut self, fence: &Fence, who: &Actor<'_>) -> Result<bool, Error> {
        let scope = literal(&fence.scope);
        let sql = format!(
            "BEGIN;
             WITH freed AS (
                 UPDATE {lock} SET {FREE}
                  WHERE scope = {scope} AND owner = {owner} AND token = {token} RETURNING token)
             INSERT INTO {log} (scope, at, event, token, owner, host, pid, command)
             SELECT {scope}, clock_timestamp(), {event}, token, {owner}, {host}, {pid}, {command} FROM freed
             RETURNING token;
             NOTIFY {channel};
             COMMIT;",
            lock = self.tables.lock,
            log = self.tables.log,
            owner = literal(&fence.owner),
            token = fence.token,
            event = literal(LogEvent::Released.name()),
            host = literal(who.host),
            pid = who.pid,
            command = literal(who.command),
            channel = channel(&fence.scope),
        );
        match self.client.simple_query(&sql) {
            Ok(messages) => Ok(statements(&messages)
                .get(1)
                .is_some_and(|rows| first_value(rows).is_some())),
            Err(e) => {
                self.rollback();
                Err(db_error(
                    format!("releasing the migration lock for {}", fence.scope),
                    &e,
                ))
            }
        }
    }

    fn log_event(
        &mut self,
        fence: &Fence,
        who: &Actor<'_>,
        event: LogEvent<'_>,
    ) -> Result<(), Error> {
        let sql = self.log_insert(&fence.scope, event, &fence.token.to_string(), who);
        self.client
            .simple_query(&sql)
            .map(drop)
            .map_err(|e| db_error(format!("logging `{}` in the lock log", event.name()), &e))
    }

    fn read_lock_row(&mut self, scope: &str) -> Result<Option<LockInfo>, Error> {
        let context = format!("reading the migration lock for {scope}");
        let messages = match self.client.simple_query(&self.lock_select(scope)) {
            Ok(m) => m,
            Err(e) if code(&e) == Some(&SqlState::UNDEFINED_TABLE) => return Ok(None),
            Err(e) => return Err(db_error(context, &e)),
        };
        let Some(row) = lock_row(&messages) else {
            return Ok(None);
        };
        self.note_server_port(int(row, PORT_COLUMN).and_then(|p| u16::try_from(p).ok()));
        Ok(Some(parse_lock(scope, row)))
    }

    fn holder_busy(&mut self, scope: &str) -> bool {
        self.busy_with_a_migration(scope)
    }

    fn force_release(&mut self, release: &ForcedRelease<'_>) -> Result<bool, Error> {
        let ForcedRelease {
            scope,
            expected,
            actor: who,
            wait,
        } = *release;
        let context = format!("releasing the migration lock for {scope}");
        let s = literal(scope);
        let event = release.event();
        let sql = format!(
            "BEGIN;
             SET LOCAL lock_timeout = '{wait_ms}ms';
             WITH freed AS (
                 UPDATE {lock} SET token = token + 1, {FREE}
                  WHERE scope = {s} AND token = {token} RETURNING token)
             INSERT INTO {log} (scope, at, event, token, owner, host, pid, command, previous_owner)
             SELECT {s}, clock_timestamp(), {event}, token, {owner}, {host}, {pid}, {command}, {previous} FROM freed
             RETURNING token;
             NOTIFY {channel};
             COMMIT;",
            wait_ms = wait.as_millis().max(1),
            lock = self.tables.lock,
            log = self.tables.log,
            token = expected.token,
            owner = literal(who.owner),
            host = literal(who.host),
            pid = who.pid,
            command = literal(who.command),
            event = literal(event.name()),
            previous = event.previous_owner().map_or("NULL".into(), literal),
            channel = channel(scope),
        );
        match self.client.simple_query(&sql) {
            Ok(messages) => Ok(statements(&messages)
                .get(2)
                .is_some_and(|rows| first_value(rows).is_some())),
            Err(e) if code(&e) == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                self.rollback();
                Err(Error::Database {
                    context,
                    db: Box::new(DbMessage::plain(format!(
                        "a migration of the holder kept the lock row for {}s; nothing was released",
                        wait.as_secs()
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
        let sql = format!(
            "SELECT id, to_char(at AT TIME ZONE 'UTC', {TIME_FORMAT}), event, token, owner, host, pid,
                    command, previous_owner, detail
               FROM {} WHERE scope = {} ORDER BY id DESC LIMIT {limit}",
            self.tables.log,
            literal(scope)
        );
        let messages = match self.client.simple_query(&sql) {
            Ok(m) => m,
            Err(e) if code(&e) == Some(&SqlState::UNDEFINED_TABLE) => return Ok(Vec::new()),
            Err(e) => return Err(db_error(format!("reading the lock log for {scope}"), &e)),
        };
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some(crate::driver::log_entry(|i| text(r, i), |i| int(r, i)))
                }
                _ => None,
            })
            .collect())
    }

    fn can_notify(&self) -> bool {
        self.pooled == Some(false)
    }

    fn listen(&mut self, scope: &str) -> Result<bool, Error> {
        self.client
            .simple_query(&format!("LISTEN {}", channel(scope)))
            .map(|_| true)
            .map_err(|e| db_error("listening for lock releases", &e))
    }

    fn unlisten(&mut self) {
        let _ = self.client.simple_query("UNLISTEN *");
    }

    fn wait_for_notification(&mut self, timeout: Duration) -> Result<bool, Error> {
        // Only releases (plain and forced) notify the scope's channel.
        match self.client.wait_for_notification(timeout) {
            Err(e) => Err(db_error("waiting for the lock", &e)),
            Ok(n) => Ok(n.is_some()),
        }
    }

    fn poll_interval(&self) -> Duration {
        // With notifications, polling only catches expired leases and
        // holders whose session ended: half a second, so that a killed
        // holder is replaced within a second (the server needs up to a
        // quarter to notice), for one cheap read per waiter per poll.
        Duration::from_millis(500)
    }

    fn heartbeat_store(&self) -> Result<Box<dyn LockStore<Error = Error>>, Error> {
        let driver =
            PgDriver::connect(&self.target, &self.url, &self.table, &self.application_name)?;
        Ok(Box::new(driver))
    }
}

/// The notification channel of a scope: an identifier of at most 63 bytes.
fn channel(scope: &str) -> String {
    let name = format!("lockstep:{scope}");
    if name.len() <= 63 {
        quote_ident(&name)
    } else {
        // FNV-1a: stable across runs and machines, which is all it needs.
        let hash = scope.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        quote_ident(&format!("lockstep:{hash:016x}"))
    }
}

impl PgDriver {
    /// The highest token the scope ever had, for a lock row made anew:
    /// from the lock log and the history, which a deleted lock row does not
    /// take with it. Tokens never repeat: a holder paused while its row was
    /// deleted by hand cannot pass its fence beside a new holder.
    fn token_high_mark(&self, scope: &str) -> String {
        format!(
            "greatest((SELECT max(token) FROM {log} WHERE scope = {s}), (SELECT max(lock_token) FROM {history}), 0)",
            log = self.tables.log,
            s = literal(scope),
            history = self.tables.history,
        )
    }

    /// An INSERT into the lock log; `token` is an SQL expression.
    fn log_insert(&self, scope: &str, event: LogEvent<'_>, token: &str, who: &Actor<'_>) -> String {
        format!(
            "INSERT INTO {} (scope, at, event, token, owner, host, pid, command, previous_owner, detail)
             VALUES ({}, clock_timestamp(), {}, {token}, {}, {}, {}, {}, {}, {})",
            self.tables.log,
            literal(scope),
            literal(event.name()),
            literal(who.owner),
            literal(who.host),
            who.pid,
            literal(who.command),
            event.previous_owner().map_or("NULL".into(), literal),
            event.detail().map_or("NULL".into(), literal),
        )
    }
}
