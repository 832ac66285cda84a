//! Running migrations on PostgreSQL: a migration, its fence, its history
//! row and the commit go to the server as one query; a no-transaction
//! migration statement by statement.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

use crate::driver::{Canceller, Done, Driver, StepFailure, Transaction};
use crate::error::{DbMessage, Error};
use crate::history::Change;
use crate::lock::Fence;
use crate::sql::Dialect;
use crate::waits::{Finder, Limits};

use super::{code, interval, literal, message, message_in, PgDriver};

/// A session as it was when it began: what `psql` gives each file. The
/// authorization first, which `RESET ALL` leaves alone (a `SET ROLE` would
/// survive it).
const RESET_SESSION: &str = "SET SESSION AUTHORIZATION DEFAULT;\nRESET ALL;\n";

impl Driver for PgDriver {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn run_steps(&mut self, tx: Transaction<'_>, done: &mut Done) -> Result<(), StepFailure> {
        let Transaction { lead, steps, fence } = tx;
        // Only MariaDB/MySQL migrations have a lead (their DDL commits by
        // itself); run alone, first, it means the same here.
        if let Some(lead) = lead {
            self.run_statement(lead).map_err(StepFailure::lead)?;
        }
        let last = steps.len().saturating_sub(1);
        for (i, step) in steps.iter().enumerate() {
            // The fence, the migration, its history row and the transaction
            // around them go in one query string: one round trip. The
            // section was checked to end outside any quote or comment, so
            // what follows it is SQL.
            let mut query = String::with_capacity(step.section.sql.len() + 1024);
            if i == 0 {
                query.push_str(&self.begin(fence, true));
            }
            let start_of_section = query.len();
            query.push_str(&step.section.sql);
            query.push_str("\n;\n");
            // The server's measure, which the row records, comes back.
            let records = step.change.as_ref().is_some_and(Change::records_duration);
            if let Some(change) = &step.change {
                query.push_str(&self.change_sql(change));
                if records {
                    query.push_str(" RETURNING duration_ms");
                }
                query.push_str(";\n");
            }
            // After the RETURNING: it stays the query's last row.
            if let Some(ahead) = &step.ahead {
                query.push_str(&self.change_sql(ahead));
                query.push_str(";\n");
            }
            if i == last {
                query.push_str(&self.commit(fence));
            }
            let started = Instant::now();
            let messages = match self.client.simple_query_counted(&query) {
                Ok(messages) => messages,
                Err(failed) => {
                    let e = &failed.error;
                    let db =
                        message_in(e, Some((&query, start_of_section, step.section.sql.len())));
                    self.rollback();
                    let before = statements_in(&query[..start_of_section]);
                    let Some(ran) = failed.completed.checked_sub(before) else {
                        // The beginning failed: with a fence, that is the lock.
                        return Err(StepFailure {
                            lost: fence.is_some() && fence_failed(e),
                            ..StepFailure::at(i, db)
                        });
                    };
                    return Err(StepFailure {
                        statement: statement_at(&step.section.sql, ran),
                        ..StepFailure::at(i, db)
                    });
                }
            };
            // The last row of the query is the RETURNING's: COMMIT and the
            // fence's UPDATE return none.
            let recorded = messages
                .iter()
                .rev()
                .filter(|_| records)
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(row) => row.get(0)?.parse::<u64>().ok(),
                    _ => None,
                });
            let took = recorded.map_or_else(|| started.elapsed(), Duration::from_millis);
            done(i, took);
        }
        self.reset_pending = false;
        Ok(())
    }

    fn run_statement(&mut self, sql: &str) -> Result<(), DbMessage> {
        if self.reset_pending {
            // A round trip of its own: sent with the statement, it would
            // make one implicit transaction of both, which statements such
            // as `CREATE INDEX CONCURRENTLY` refuse.
            let reset = self.reset_session() + &self.limits_sql(false);
            self.client.simple_query(&reset).map_err(|e| message(&e))?;
            self.reset_pending = false;
        }
        self.client
            .simple_query(sql)
            .map(drop)
            .map_err(|e| message_in(&e, Some((sql, 0, sql.len()))))
    }

    fn lease_left(&mut self, fence: &Fence) -> Result<Option<Duration>, Error> {
        let sql = format!(
            "SELECT greatest(0, floor(extract(epoch FROM expires_at - clock_timestamp()) * 1000))::bigint
               FROM {} WHERE scope = {} AND owner = {} AND token = {}",
            self.tables.lock,
            literal(&fence.scope),
            literal(&fence.owner),
            fence.token
        );
        let rows = self.text_rows(&sql, "reading the migration lock's lease")?;
        Ok(rows
            .and_then(|rows| rows.into_iter().next())
            .map(|row| {
                row.into_iter()
                    .next()
                    .flatten()
                    .and_then(|ms| ms.parse().ok())
            })
            .map(|ms| Duration::from_millis(ms.unwrap_or(0))))
    }

    fn fresh_session(&mut self, limits: Limits) -> Result<(), Error> {
        self.reset_pending = true;
        self.limits = limits;
        Ok(())
    }

    fn read_table(&mut self, sql: &str) -> Result<Option<Vec<Vec<Option<String>>>>, Error> {
        self.text_rows(sql, "reading another tool's history")
    }

    fn invalid_indexes(
        &mut self,
        table: &str,
        index: Option<&str>,
    ) -> Result<Vec<String>, DbMessage> {
        self.invalid_on(table, index)
    }

    fn blocked_finder(&mut self) -> Option<Finder> {
        self.finder()
    }

    fn holder_activity(&mut self, scope: &str) -> Option<crate::waits::Activity> {
        self.activity(scope)
    }

    fn canceller(&self) -> Canceller {
        let token = self.client.cancel_token();
        let tls = self.tls.clone();
        Box::new(move || super::client::cancel(&token, &tls))
    }
}

/// How the fence's statement ends: what follows it in a query is the
/// migration's (after its bounds).
const END_OF_FENCE: &str = "FROM fence;";

/// The migration's SQL in a query of lockstep's that `pg_stat_activity`
/// shows: after the fence and the `SET LOCAL`s of its bounds. (Naming the
/// migration in a comment would make each query's first statement a new
/// entry of `pg_stat_statements`.)
pub(super) fn migration_sql(query: &str) -> &str {
    let Some(at) = query.find(END_OF_FENCE) else {
        return query;
    };
    let mut rest = &query[at + END_OF_FENCE.len()..];
    loop {
        let trimmed = rest.trim_start();
        let bound = ["SET LOCAL lock_timeout", "SET LOCAL statement_timeout"]
            .iter()
            .any(|setting| trimmed.starts_with(setting));
        match trimmed.find('\n') {
            Some(end) if bound => rest = &trimmed[end + 1..],
            _ => return trimmed,
        }
    }
}

/// The message the fence raises when the token is no longer current.
const LOST_MARKER: &str = "lockstep-lock-lost";

fn is_fence_failure(e: &tokio_postgres::Error) -> bool {
    code(e) == Some(&SqlState::INVALID_TEXT_REPRESENTATION)
        && e.as_db_error()
            .is_some_and(|db| db.message().contains(LOST_MARKER))
}

/// Whether an error in a fenced transaction's beginning means the lock is
/// lost: the token changed, or the lock's table is gone (dropped by hand).
pub(super) fn fence_failed(e: &tokio_postgres::Error) -> bool {
    is_fence_failure(e) || code(e) == Some(&SqlState::UNDEFINED_TABLE)
}

/// How many statements a query string of lockstep's own holds: each
/// completes with a message of its own.
pub(super) fn statements_in(sql: &str) -> usize {
    crate::sql::split(sql, Dialect::Postgres).map_or(0, |statements| statements.len())
}

/// The section's statement that failed after `ran` of them completed;
/// `None` when all of them had: what failed came after the section.
fn statement_at(section: &str, ran: usize) -> Option<crate::driver::StatementAt> {
    let statements = crate::sql::split(section, Dialect::Postgres).ok()?;
    statements.get(ran).map(|s| crate::driver::StatementAt {
        index: ran,
        offset: s.range.start,
    })
}

impl PgDriver {
    /// Statements that return the session to how it began, lockstep's own
    /// settings kept.
    fn reset_session(&self) -> String {
        let mut sql = RESET_SESSION.to_string();
        if self.check_interval {
            sql.push_str("SET client_connection_check_interval = 250;\n");
        }
        sql
    }

    /// The migration's bounds, for the session or (`local`) the
    /// transaction. A bound it does not set leaves the server's.
    fn limits_sql(&self, local: bool) -> String {
        let scope = if local { "LOCAL " } else { "" };
        let mut sql = String::new();
        let settings = [
            ("lock_timeout", self.limits.lock_timeout),
            ("statement_timeout", self.limits.statement_timeout),
        ];
        for (name, bound) in settings {
            if let Some(bound) = bound {
                let ms = bound.as_millis().clamp(1, i32::MAX as u128);
                sql.push_str(&format!("SET {scope}{name} = {ms};\n"));
            }
        }
        sql
    }

    /// Opens a transaction; with a fence, checks the token first. The fence's
    /// UPDATE row-locks the lock row until commit, so no takeover or forced
    /// release can interleave with what follows: they wait for the commit
    /// and land before the next fence, or (when that fence reaches the row
    /// first) after the next migration's commit; either way the fence after
    /// them fails.
    /// With `reset`, for a migration, the session is first returned to how
    /// it began (inside the transaction: rolled back with it, and sent
    /// again with the next attempt; before lockstep's own `SET LOCAL`,
    /// which `RESET ALL` would undo), and the migration's bounds set for
    /// the transaction, after the fence: they bound the migration's
    /// statements, not lockstep's.
    pub(super) fn begin(&self, fence: Option<&Fence>, reset: bool) -> String {
        let (reset, limits) = if reset {
            (self.reset_session(), self.limits_sql(true))
        } else {
            (String::new(), String::new())
        };
        let Some(fence) = fence else {
            return format!("BEGIN;\n{reset}{limits}");
        };
        format!(
            "BEGIN;
             {reset}
             SET LOCAL idle_in_transaction_session_timeout = '{idle}ms';
             WITH fence AS (
                 UPDATE {lock} SET heartbeat_at = now()
                  WHERE scope = {scope} AND owner = {owner} AND token = {token} RETURNING 1)
             SELECT CAST(CASE WHEN count(*) = 1 THEN '1' ELSE '{LOST_MARKER}' END AS integer) {END_OF_FENCE}
             {limits}",
            // A holder gone silent inside this transaction (frozen host,
            // partition) must not pin the lock row forever.
            idle = fence.ttl.as_millis().max(1000),
            lock = self.tables.lock,
            scope = literal(&fence.scope),
            owner = literal(&fence.owner),
            token = fence.token,
        )
    }

    /// Commits; with a fence, first renews the lease from the commit's
    /// clock: the holder just proved it is alive.
    pub(super) fn commit(&self, fence: Option<&Fence>) -> String {
        match fence {
            None => "COMMIT;".to_string(),
            Some(fence) => format!(
                "UPDATE {} SET heartbeat_at = clock_timestamp(), expires_at = clock_timestamp() + {}
                  WHERE scope = {} AND token = {};
                 COMMIT;",
                self.tables.lock,
                interval(fence.ttl),
                literal(&fence.scope),
                fence.token
            ),
        }
    }
}

impl PgDriver {
    /// The rows of a query, each value as text (NULL as `None`); `None`
    /// when its table does not exist. `context` says what failed.
    pub(super) fn text_rows(
        &mut self,
        sql: &str,
        context: &str,
    ) -> Result<Option<Vec<Vec<Option<String>>>>, Error> {
        match self.client.simple_query(sql) {
            Ok(messages) => Ok(Some(
                messages
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                        }
                        _ => None,
                    })
                    .collect(),
            )),
            Err(e) if super::code(&e) == Some(&SqlState::UNDEFINED_TABLE) => Ok(None),
            Err(e) => Err(super::db_error(context, &e)),
        }
    }
}
