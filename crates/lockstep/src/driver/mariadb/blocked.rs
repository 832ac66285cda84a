//! Who blocks a session on MariaDB/MySQL. A wait for a row names its
//! blocker exactly (`INNODB_LOCK_WAITS`). A wait for a table's metadata
//! lock does not, without a plugin the server rarely has: its blockers are
//! the other sessions with a transaction open, any of which may hold the
//! table: those whose current database is the waiting session's first (a
//! transaction of another application's database is less likely to hold
//! this one's table), the one open longest first among them.

use mysql::prelude::Queryable;
use mysql::Row;

use crate::error::Error;
use crate::waits::{first_line, Activity, Blocked, Blocker, Finder};

use super::{db_error, MysqlDriver};

/// A blocker's columns, in order: id, user, host, command, state, time in
/// it (ms), statement.
const BLOCKER_COLUMNS: &str =
    "p.ID, p.USER, p.HOST, p.COMMAND, p.STATE, CAST(p.TIME_MS AS SIGNED), p.INFO";

impl MysqlDriver {
    /// What connection `id` of this server waits for, and who holds it;
    /// `None` when it waits for no lock.
    pub(super) fn blocked(&mut self, id: i64) -> Result<Option<Blocked>, Error> {
        let context = "looking up what blocks the migration";
        let waiting: Option<(Option<String>, i64, Option<String>)> = self
            .conn
            .exec_first(
                "SELECT STATE, CAST(TIME_MS AS SIGNED), DB FROM information_schema.PROCESSLIST WHERE ID = ?",
                (id,),
            )
            .map_err(|e| db_error(context, &e))?;
        let Some((state, waited_ms, database)) = waiting else {
            return Ok(None);
        };
        let metadata = state
            .as_deref()
            .is_some_and(|s| s.contains("metadata lock"));
        let (waiting_for, sql, params) = if metadata {
            (
                "a table's metadata lock (held by a session with a transaction open)".to_string(),
                format!(
                    "SELECT {BLOCKER_COLUMNS}, t.trx_query
                       FROM information_schema.INNODB_TRX t
                       JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
                      WHERE t.trx_mysql_thread_id NOT IN (?, CONNECTION_ID())
                      ORDER BY p.DB <=> ? DESC, t.trx_started, p.ID"
                ),
                mysql::Params::from((id, database)),
            )
        } else {
            (
                "a row lock".to_string(),
                format!(
                    "SELECT {BLOCKER_COLUMNS}, b.trx_query
                       FROM information_schema.INNODB_LOCK_WAITS w
                       JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id
                       JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id
                       JOIN information_schema.PROCESSLIST p ON p.ID = b.trx_mysql_thread_id
                      WHERE r.trx_mysql_thread_id = ?
                      ORDER BY p.ID"
                ),
                mysql::Params::from((id,)),
            )
        };
        let rows: Vec<Row> = self
            .conn
            .exec(sql, params)
            .map_err(|e| db_error(context, &e))?;
        if rows.is_empty() && !metadata {
            return Ok(None);
        }
        let blockers = rows.into_iter().map(blocker).collect();
        Ok(Some(Blocked {
            waiting_for,
            waited_ms,
            blockers,
        }))
    }

    /// What the lock holder's connection runs now, and what blocks it:
    /// found by the connection id the lock row records, on the server it
    /// records (none from another node, nor behind a proxy).
    pub(super) fn activity(&mut self, scope: &str) -> Option<Activity> {
        if self.server.is_empty() {
            return None;
        }
        let sql = format!(
            "SELECT p.ID, p.INFO, CAST(p.TIME_MS AS SIGNED)
               FROM {lock} l JOIN information_schema.PROCESSLIST p ON p.ID = l.session_pid
              WHERE l.scope = ? AND l.owner IS NOT NULL AND l.session_start = ?
                AND p.COMMAND = 'Query'",
            lock = self.tables.lock,
        );
        let row: Option<(i64, Option<String>, Option<i64>)> = self
            .conn
            .exec_first(sql, (scope, self.server.as_str()))
            .ok()
            .flatten();
        let (id, query, running_ms) = row?;
        Some(Activity {
            statement: query.map(|q| first_line(&q, 80)),
            running_ms,
            blocked: self.blocked(id).ok().flatten(),
        })
    }

    /// A finder for this session's blocker, on a connection it opens at its
    /// first look, which must reach this same server: connection ids and
    /// the process list are one server's. Behind a proxy nothing is looked
    /// up.
    pub(super) fn finder(&mut self) -> Option<Finder> {
        let id = self.session.as_ref()?.pid?;
        let server = self.server.clone();
        if server.is_empty() {
            return None;
        }
        let (target, url, table) = (self.target.clone(), self.url.clone(), self.table.clone());
        let mut conn: Option<MysqlDriver> = None;
        Some(Box::new(move || {
            if conn.is_none() {
                conn = MysqlDriver::connect(&target, &url, &table)
                    .ok()
                    .filter(|c| c.server == server);
            }
            let found = conn.as_mut()?.blocked(id);
            if found.is_err() {
                conn = None;
            }
            found.ok().flatten()
        }))
    }
}

fn blocker(row: Row) -> Blocker {
    let text = |i: usize| {
        row.get_opt::<Option<String>, _>(i)
            .and_then(Result::ok)
            .flatten()
    };
    let id = row
        .get_opt::<i64, _>(0)
        .and_then(Result::ok)
        .unwrap_or_default();
    let command = text(3);
    // A session that sleeps with a transaction open is the one to look at.
    let state = match command.as_deref() {
        Some("Sleep") => Some("idle in transaction".to_string()),
        _ => text(4)
            .filter(|s| !s.is_empty())
            .or(command)
            .map(|s| s.to_lowercase()),
    };
    // The account as these servers write it: `user@host`.
    let host = text(2).map(|h| h.rsplit_once(':').map_or(h.clone(), |(h, _)| h.to_string()));
    let user = match (text(1), host) {
        (Some(user), Some(host)) => Some(format!("{user}@{host}")),
        (user, _) => user,
    };
    Blocker {
        pid: id,
        user,
        application: None,
        state,
        state_ms: row
            .get_opt::<Option<i64>, _>(5)
            .and_then(Result::ok)
            .flatten(),
        query: text(6)
            .or_else(|| text(7))
            .map(|q| first_line(&q, 80))
            .filter(|q| !q.is_empty()),
        terminate: format!("KILL {id}"),
    }
}
