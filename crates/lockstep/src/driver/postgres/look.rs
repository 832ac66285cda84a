//! Reading the lock row on PostgreSQL, and whether its holder is busy
//! right now: the row locked by its migration, or its session active.

use tokio_postgres::SimpleQueryMessage;

use crate::lock::LockInfo;

use super::{first_value, int, literal, statements, text, PgDriver, TIME_FORMAT};

impl PgDriver {
    /// Whether a pooler or proxy is in between, from the port the server
    /// says it listens on: another port than the one connected to means
    /// one is. Its server sessions outlive the clients that use them, so
    /// they prove nothing about liveness. A port that cannot be read
    /// counts as a proxy: the safe side.
    pub(super) fn note_server_port(&mut self, server_port: Option<u16>) -> bool {
        let pooled = server_port != Some(self.target.port);
        self.pooled = Some(pooled);
        pooled
    }

    /// The lock row with its ages by the server's clock, and whether the
    /// holder's session still exists: a backend with its pid and start time.
    pub(super) fn lock_select(&self, scope: &str) -> String {
        format!(
            "SELECT l.token, l.owner, l.host, l.pid, l.command, l.tool_version,
                    to_char(l.acquired_at AT TIME ZONE 'UTC', {TIME_FORMAT}),
                    to_char(l.heartbeat_at AT TIME ZONE 'UTC', {TIME_FORMAT}),
                    to_char(l.expires_at AT TIME ZONE 'UTC', {TIME_FORMAT}),
                    (extract(epoch FROM now() - l.acquired_at) * 1000)::bigint,
                    (extract(epoch FROM now() - l.heartbeat_at) * 1000)::bigint,
                    (extract(epoch FROM l.expires_at - now()) * 1000)::bigint,
                    CASE WHEN l.session_pid IS NULL THEN NULL ELSE (
                        SELECT CASE WHEN count(*) = 0 THEN false
                                    WHEN bool_and(a.backend_start IS NULL) THEN NULL
                                    ELSE bool_or((extract(epoch FROM a.backend_start) * 1000000)::bigint::text = l.session_start)
                               END
                          FROM pg_stat_activity a WHERE a.pid = l.session_pid)
                    END,
                    current_setting('port')
               FROM {} AS l WHERE l.scope = {}",
            self.tables.lock,
            literal(scope)
        )
    }

    /// Whether the holder is busy with a migration right now, looked at
    /// without waiting: a transaction of its has the lock row locked (a
    /// migration in a transaction), or its session runs a statement (one
    /// outside a transaction, such as `CREATE INDEX CONCURRENTLY`; not seen
    /// behind a pooler, where the session is not the holder's).
    pub(super) fn busy_with_a_migration(&mut self, scope: &str) -> bool {
        let s = literal(scope);
        let probe = format!(
            "BEGIN;
             SELECT 1 FROM {lock} WHERE scope = {s} FOR UPDATE SKIP LOCKED;
             SELECT EXISTS (
                 SELECT 1 FROM {lock} AS l JOIN pg_stat_activity AS a ON a.pid = l.session_pid
                  WHERE l.scope = {s} AND a.state = 'active'
                    AND (extract(epoch FROM a.backend_start) * 1000000)::bigint::text = l.session_start)::text;
             ROLLBACK;",
            lock = self.tables.lock,
        );
        match self.client.simple_query(&probe) {
            Ok(messages) => {
                let results = statements(&messages);
                let row_locked = results
                    .get(1)
                    .is_some_and(|rows| first_value(rows).is_none());
                let running = results.get(2).and_then(|rows| first_value(rows)) == Some("true");
                row_locked || running
            }
            Err(_) => {
                self.rollback();
                false
            }
        }
    }
}

pub(super) fn lock_row(messages: &[SimpleQueryMessage]) -> Option<&tokio_postgres::SimpleQueryRow> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    })
}

/// The column of `lock_select` with the server's port.
pub(super) const PORT_COLUMN: usize = 13;

pub(super) fn parse_lock(scope: &str, r: &tokio_postgres::SimpleQueryRow) -> LockInfo {
    let alive = r.get(12).map(|v| v == "t");
    crate::driver::lock_info(scope, |i| text(r, i), |i| int(r, i), alive)
}
