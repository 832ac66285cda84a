//! Who blocks a session on PostgreSQL: the lock it waits for
//! (`pg_locks`), the sessions that hold it (`pg_blocking_pids`) and what
//! they are doing (`pg_stat_activity`); and the invalid indexes a
//! `CREATE INDEX CONCURRENTLY` that gave up leaves.

use tokio_postgres::SimpleQueryMessage;

use crate::error::{DbMessage, Error};
use crate::waits::{first_line, Activity, Blocked, Blocker, Finder};

use super::{db_error, int, literal, message, text, PgDriver};

impl PgDriver {
    /// What session `pid` waits for, and who holds it; `None` when it
    /// waits for no lock.
    pub(super) fn blocked(&mut self, pid: i64) -> Result<Option<Blocked>, Error> {
        // One row per blocker (one row of NULLs when the server names
        // none). A lock on a relation is named by its table; a row lock is
        // a wait for the transaction that holds the row.
        let sql = format!(
            "SELECT (SELECT CASE l.locktype
                                WHEN 'relation' THEN format('%s on table %s', l.mode, l.relation::regclass)
                                WHEN 'transactionid' THEN format('a row lock (%s on transaction %s)', l.mode, l.transactionid)
                                WHEN 'virtualxid' THEN format('the end of an older transaction (%s on virtualxid %s)', l.mode, l.virtualxid)
                                ELSE format('%s on %s', l.mode, l.locktype) END
                      FROM pg_locks l WHERE l.pid = w.pid AND NOT l.granted LIMIT 1),
                    (SELECT (extract(epoch FROM now() - l.waitstart) * 1000)::bigint
                       FROM pg_locks l WHERE l.pid = w.pid AND NOT l.granted LIMIT 1),
                    b.pid, b.usename, b.application_name, b.state,
                    (extract(epoch FROM now() - b.state_change) * 1000)::bigint,
                    b.query
               FROM pg_stat_activity w
               LEFT JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS h(pid) ON true
               LEFT JOIN pg_stat_activity b ON b.pid = h.pid
              WHERE w.pid = {pid} AND w.wait_event_type = 'Lock'
              ORDER BY b.state_change NULLS LAST"
        );
        let messages = self
            .client
            .simple_query(&sql)
            .map_err(|e| db_error("looking up what blocks the migration", &e))?;
        let mut found: Option<Blocked> = None;
        for m in &messages {
            let SimpleQueryMessage::Row(r) = m else {
                continue;
            };
            let blocked = found.get_or_insert_with(|| Blocked {
                waiting_for: text(r, 0).unwrap_or_else(|| "a lock".into()),
                waited_ms: int(r, 1).unwrap_or_default(),
                blockers: Vec::new(),
            });
            if let Some(pid) = int(r, 2) {
                blocked.blockers.push(Blocker {
                    pid,
                    user: text(r, 3),
                    application: text(r, 4),
                    state: text(r, 5),
                    state_ms: int(r, 6),
                    query: text(r, 7)
                        .map(|q| first_line(&q, 80))
                        .filter(|q| !q.is_empty()),
                    terminate: format!("SELECT pg_terminate_backend({pid})"),
                });
            }
        }
        Ok(found)
    }

    /// What the lock holder's session runs now, and what blocks it: found
    /// by the pid and start time the lock row records (none behind a
    /// pooler).
    pub(super) fn activity(&mut self, scope: &str) -> Option<Activity> {
        let sql = format!(
            "SELECT a.pid, a.query, (extract(epoch FROM now() - a.query_start) * 1000)::bigint
               FROM {lock} l JOIN pg_stat_activity a ON a.pid = l.session_pid
              WHERE l.scope = {scope} AND l.owner IS NOT NULL AND a.state = 'active'
                AND (extract(epoch FROM a.backend_start) * 1000000)::bigint::text = l.session_start",
            lock = self.tables.lock,
            scope = literal(scope),
        );
        let messages = self.client.simple_query(&sql).ok()?;
        let row = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((int(r, 0), text(r, 1), int(r, 2))),
            _ => None,
        })?;
        let (pid, query, running_ms) = row;
        Some(Activity {
            statement: query.map(|q| first_line(super::run::migration_sql(&q), 80)),
            running_ms,
            blocked: pid.and_then(|pid| self.blocked(pid).ok().flatten()),
        })
    }

    /// A finder for this session's blocker, on a connection it opens at its
    /// first look. Behind a pooler this session's server process is not
    /// known, and nothing is looked up.
    pub(super) fn finder(&mut self) -> Option<Finder> {
        if self.pooled != Some(false) {
            return None;
        }
        let pid = self.session.as_ref()?.pid?;
        let (target, url, table) = (self.target.clone(), self.url.clone(), self.table.clone());
        let name = self.application_name.clone();
        let mut conn: Option<PgDriver> = None;
        Some(Box::new(move || {
            if conn.is_none() {
                conn = PgDriver::connect(&target, &url, &table, &name).ok();
            }
            let found = conn.as_mut()?.blocked(pid);
            if found.is_err() {
                // Connect again at the next look.
                conn = None;
            }
            found.ok().flatten()
        }))
    }

    /// The invalid indexes on `table`, or only the one named `index` in the
    /// table's schema, qualified and quoted.
    pub(super) fn invalid_on(
        &mut self,
        table: &str,
        index: Option<&str>,
    ) -> Result<Vec<String>, DbMessage> {
        let only = match index {
            Some(index) => format!(
                "AND c.oid = to_regclass(quote_ident(n.nspname) || '.' || {})",
                literal(index)
            ),
            None => String::new(),
        };
        let sql = format!(
            "SELECT format('%I.%I', n.nspname, c.relname)
               FROM pg_index i
               JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT i.indisvalid AND i.indrelid = to_regclass({table}) {only}
              ORDER BY 1",
            table = literal(table),
        );
        let messages = self.client.simple_query(&sql).map_err(|e| message(&e))?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => text(r, 0),
                _ => None,
            })
            .collect())
    }
}
