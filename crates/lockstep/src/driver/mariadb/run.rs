//! Running migrations on MariaDB/MySQL. A section without DDL runs in one
//! transaction with its history row and the fence, statement by statement
//! (so that a failure names its statement). The fence is checked when the
//! transaction begins, by a read that locks nothing, and written when it
//! ends: the lock row stays free while the migration runs, so that the
//! heartbeat keeps renewing the lease (on Galera, nodes that cannot see
//! this node's row locks know the holder lives by its lease alone), and a
//! takeover or forced release in the meantime makes the fence's write find
//! another token (or, from another node, fail certification at commit),
//! and the migration roll back. A section with DDL cannot:
//! every DDL statement commits. It runs outside a transaction, as a
//! `-- lockstep:no-transaction` section does everywhere: recorded
//! `started` first, then each statement, then `applied`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use mysql::prelude::Queryable;

use crate::driver::{Canceller, Done, Driver, StatementAt, StepFailure, Transaction};
use crate::error::{DbMessage, Error};
use crate::sql::{self, Dialect};

use super::{db_error, execute, message, MysqlDriver};

impl Driver for MysqlDriver {
    fn dialect(&self) -> Dialect {
        Dialect::Mysql
    }

    fn run_steps(&mut self, tx: Transaction<'_>, done: &mut Done) -> Result<(), StepFailure> {
        let Transaction { steps, fence } = tx;
        let last = steps.len().saturating_sub(1);
        if let Err(e) = self.conn.query_drop("BEGIN") {
            return Err(StepFailure::at(0, message(&e)));
        }
        if let Some(fence) = fence {
            match self.fence_current(fence) {
                Ok(true) => {}
                Ok(false) => {
                    self.rollback();
                    return Err(StepFailure {
                        lost: true,
                        ..StepFailure::at(0, DbMessage::plain("lock lost"))
                    });
                }
                Err(e) => {
                    self.rollback();
                    return Err(StepFailure::at(0, message(&e)));
                }
            }
        }
        for (i, step) in steps.iter().enumerate() {
            let started = Instant::now();
            let sql = &step.section.sql;
            let statements = sql::split(sql, Dialect::Mysql).unwrap_or_default();
            for (index, statement) in statements.iter().enumerate() {
                let ran = execute(&mut self.conn, &sql[statement.range.clone()]);
                let ran = match ran {
                    Ok(()) if self.cancelled.load(Ordering::SeqCst) => {
                        Err(DbMessage::plain("cancelled"))
                    }
                    Ok(()) => Ok(()),
                    Err(e) => Err(message(&e)),
                };
                if let Err(db) = ran {
                    self.rollback();
                    return Err(StepFailure {
                        statement: Some(StatementAt {
                            index,
                            offset: statement.range.start,
                        }),
                        ..StepFailure::at(i, db)
                    });
                }
            }
            let took = started.elapsed();
            let ms = i64::try_from(took.as_millis()).unwrap_or(i64::MAX);
            let finished = self
                .unshadow()
                .and_then(|()| self.apply_change(&step.change, ms))
                .and_then(|()| match (i == last, fence) {
                    (true, Some(fence)) => self.fence_holds(fence),
                    _ => Ok(true),
                });
            match finished {
                Ok(true) => {}
                Ok(false) => {
                    self.rollback();
                    return Err(StepFailure {
                        lost: true,
                        ..StepFailure::at(i, DbMessage::plain("lock lost"))
                    });
                }
                Err(e) => {
                    self.rollback();
                    return Err(StepFailure::at(i, message(&e)));
                }
            }
            if i == last {
                if let Err(e) = self.conn.query_drop("COMMIT") {
                    self.rollback();
                    return Err(StepFailure::at(i, message(&e)));
                }
            }
            done(i, took);
        }
        Ok(())
    }

    fn run_statement(&mut self, sql: &str) -> Result<(), DbMessage> {
        execute(&mut self.conn, sql).map_err(|e| message(&e))
    }

    fn fresh_session(&mut self) -> Result<(), Error> {
        self.conn
            .reset()
            .map_err(|e| db_error("resetting the session", &e))?;
        self.session_settings()
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
