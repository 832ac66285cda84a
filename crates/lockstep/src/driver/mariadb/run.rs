//! Running migrations on MariaDB/MySQL. A section without DDL runs in one
//! transaction with its history row and the fence, statement by statement
//! (so that a failure names its statement). The fence is written when the
//! transaction ends, in one round trip with the history's changes and the
//! commit (which the server reaches only when the fence held): the
//! lock row stays free while the migration runs, so that the heartbeat
//! keeps renewing the lease (on Galera, nodes that cannot see this node's
//! row locks know the holder lives by its lease alone), and a takeover or
//! forced release in the meantime makes the fence's write find another
//! token (or, from another node, fail certification at commit), and the
//! migration roll back. Nothing is checked when the transaction begins
//! (in the round trip of its first statement): its statements commit
//! only behind the fence, and the lock was proven
//! by the write that ended the migration before (or by the heartbeat
//! since). A section with DDL cannot:
//! every DDL statement commits. It runs outside a transaction, as a
//! `-- lockstep:no-transaction` section does everywhere: recorded
//! `started` first, then each statement, then `applied`. The statements
//! after its last DDL run in a transaction again, with that DDL statement
//! as its lead, in the round trip of its first statement.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

use crate::driver::{Canceller, Done, Driver, StatementAt, StepFailure, Transaction};
use crate::error::{DbMessage, Error};
use crate::history::Change;
use crate::lock::Fence;
use crate::sql::{self, Dialect};
use crate::waits::{Finder, Limits};

use super::batch::Failed;
use super::history::Span;
use super::{db_error, message, MysqlDriver};

impl MysqlDriver {
    /// Rolls a failed transaction back. When it was fenced and the lock is
    /// gone meanwhile (a takeover while this run was frozen: the failure
    /// may be a row that the new holder wrote first, or on Galera a commit
    /// that lost certification to it), the failure is the lost lock.
    fn failed(&mut self, fence: Option<&Fence>, failure: StepFailure) -> StepFailure {
        self.rollback();
        match fence {
            Some(fence) if !failure.lost && matches!(self.fence_current(fence), Ok(false)) => {
                StepFailure::lost(failure.index)
            }
            _ => failure,
        }
    }
}

impl Driver for MysqlDriver {
    fn dialect(&self) -> Dialect {
        Dialect::Mysql
    }

    fn run_steps(&mut self, tx: Transaction<'_>, done: &mut Done) -> Result<(), StepFailure> {
        let Transaction {
            mut lead,
            steps,
            fence,
        } = tx;
        let last = steps.len().saturating_sub(1);
        // The transaction begins in the round trip of its first statement,
        // after the lead, or of its first history change when no statement
        // comes before.
        let mut begun = false;
        for (i, step) in steps.iter().enumerate() {
            let started = Instant::now();
            let sql = &step.section.sql;
            let statements = sql::split(sql, Dialect::Mysql).unwrap_or_default();
            for (index, statement) in statements.iter().enumerate() {
                let begins = !begun;
                begun = true;
                let ahead = lead.take();
                let ran = match self.execute(&sql[statement.range.clone()], ahead, begins) {
                    Ok(()) if self.cancelled.load(Ordering::SeqCst) => {
                        Err(DbMessage::plain("cancelled"))
                    }
                    Ok(()) => Ok(()),
                    // Nothing began: the server stops at a failed statement.
                    Err(Failed { at: 0, error }) if ahead.is_some() => {
                        return Err(StepFailure::lead(message(&error)));
                    }
                    Err(Failed { error, .. }) => Err(message(&error)),
                };
                if let Err(db) = ran {
                    let failure = StepFailure {
                        statement: Some(StatementAt {
                            index,
                            offset: statement.range.start,
                        }),
                        ..StepFailure::at(i, db)
                    };
                    return Err(self.failed(fence, failure));
                }
            }
            let took = started.elapsed();
            let ms = i64::try_from(took.as_millis()).unwrap_or(i64::MAX);
            // The fence before the history: once it holds, the lock row is
            // this transaction's until it commits.
            let changes: Vec<(&Change<'_>, i64)> = step
                .change
                .iter()
                .map(|c| (c, ms))
                .chain(step.ahead.iter().map(|c| (c, 0)))
                .collect();
            let span = Span {
                begins: !begun,
                commits: i == last,
            };
            begun = true;
            if let Some(lead) = lead.take() {
                // No statement to send it with.
                self.run_statement(lead).map_err(StepFailure::lead)?;
            }
            let fence_now = fence.filter(|_| span.commits);
            match self.fenced_changes(span, fence_now, &changes) {
                Ok(true) => done(i, crate::driver::as_recorded(took)),
                Ok(false) => return Err(self.failed(fence, StepFailure::lost(i))),
                Err(e) => return Err(self.failed(fence, StepFailure::at(i, message(&e)))),
            }
        }
        Ok(())
    }

    fn run_statement(&mut self, sql: &str) -> Result<(), DbMessage> {
        self.execute(sql, None, false)
            .map_err(|Failed { error, .. }| message(&error))
    }

    fn lease_left(&mut self, fence: &Fence) -> Result<Option<Duration>, Error> {
        let sql = format!(
            "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) FROM {}
              WHERE scope = ? AND owner = ? AND token = ?",
            self.tables.lock
        );
        let left: Result<Option<Option<i64>>, mysql::Error> = self.unshadow().and_then(|()| {
            self.conn
                .exec_first(sql, (&fence.scope, &fence.owner, fence.token))
        });
        match left {
            Ok(left) => Ok(left.map(|us| micros_left(us.unwrap_or(0)))),
            Err(e) if super::server_code(&e) == Some(super::code::NO_SUCH_TABLE) => Ok(None),
            Err(e) => Err(db_error("reading the migration lock's lease", &e)),
        }
    }

    /// Resets the session only when a migration may have changed it (the
    /// server reports what it changed, see `execute`) or its bounds differ:
    /// two round trips fewer per migration.
    fn fresh_session(&mut self, limits: Limits) -> Result<(), Error> {
        if !self.session_changed && self.tracks_session && self.limits == Some(limits) {
            return Ok(());
        }
        // A reset keeps the current database: the URL's again, should a
        // migration have said `USE`.
        let database = self.target.database.clone();
        self.conn
            .reset()
            .and_then(|()| self.conn.select_db(&database))
            .map_err(|e| db_error("resetting the session", &e))?;
        (self.may_shadow, self.session_changed) = (false, false);
        self.session_settings(limits, true)
    }

    fn read_table(&mut self, sql: &str) -> Result<Option<Vec<Vec<Option<String>>>>, Error> {
        self.text_rows(sql, "reading another tool's history")
    }

    fn blocked_finder(&mut self) -> Option<Finder> {
        self.finder()
    }

    fn holder_activity(&mut self, scope: &str) -> Option<crate::waits::Activity> {
        self.activity(scope)
    }

    fn canceller(&self) -> Canceller {
        let opts = self.opts.clone();
        let id = self.conn.connection_id();
        let cancelled = Arc::clone(&self.cancelled);
        Box::new(move || {
            cancelled.store(true, Ordering::SeqCst);
            if let Ok(mut conn) = mysql::Conn::new(opts.clone()) {
                let _ = conn.query_drop(format!("KILL QUERY {id}"));
            }
        })
    }
}

/// A lease's microseconds left as a duration, none once it ran out.
fn micros_left(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

impl MysqlDriver {
    /// The rows of a query, each value as text (NULL as `None`); `None`
    /// when its table does not exist. `context` says what failed.
    pub(super) fn text_rows(
        &mut self,
        sql: &str,
        context: &str,
    ) -> Result<Option<Vec<Vec<Option<String>>>>, Error> {
        let rows: Result<Vec<mysql::Row>, mysql::Error> = self.conn.query(sql);
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) if super::server_code(&e) == Some(super::code::NO_SUCH_TABLE) => {
                return Ok(None)
            }
            Err(e) => return Err(db_error(context, &e)),
        };
        Ok(Some(
            rows.into_iter()
                .map(|row| {
                    row.unwrap()
                        .into_iter()
                        .map(|value| match value {
                            mysql::Value::NULL => None,
                            mysql::Value::Bytes(b) => {
                                Some(String::from_utf8_lossy(&b).into_owned())
                            }
                            mysql::Value::Int(i) => Some(i.to_string()),
                            mysql::Value::UInt(u) => Some(u.to_string()),
                            other => Some(other.as_sql(true).trim_matches('\'').to_string()),
                        })
                        .collect()
                })
                .collect(),
        ))
    }
}
