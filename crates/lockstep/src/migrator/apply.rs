//! Running one migration (in a transaction, or statement by statement
//! outside one), or a whole plan in one transaction, and recording it in
//! the history under the fence.

use std::time::{Duration, Instant};

use super::{Event, Migrator, Observer, RunReport};
use crate::driver::{Done, Driver, StatementAt, StepFailure, Transaction, TxStep};
use crate::error::{
    DbClass, DbMessage, Direction, DirtyDetail, Error, FailedStatement, MigrationFailure,
};
use crate::history::{Change, NewRow, RowState};
use crate::lock::{Actor, Held, LockLost, LogEvent, RETRIES};
use crate::source::{Kind, Migration, Named, Section, Step};
use crate::sql::{self, Dialect};
use crate::waits::{self, Blocked, Limits, Rerun, Tries, Watch};

impl Migrator {
    /// Between migrations: stop if asked to, or if the heartbeat saw the
    /// lock go.
    fn checkpoint(
        &mut self,
        m: &Migration,
        held: Option<&Held>,
        report: &RunReport,
    ) -> Result<(), Error> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled {
                completed: report.steps.clone(),
            });
        }
        if let Some(held) = held {
            self.driver.yield_to_release();
            if held.lost() {
                return Err(self.lost(
                    held,
                    Some(m),
                    false,
                    report,
                    "the heartbeat found the token changed",
                ));
            }
        }
        Ok(())
    }

    /// The error for a lost lock; logs the loss (best effort).
    fn lost(
        &mut self,
        held: &Held,
        m: Option<&Migration>,
        unrecorded: bool,
        report: &RunReport,
        detail: &str,
    ) -> Error {
        held.mark_lost();
        let who = Actor::this_process(&self.options.executor, &self.host, &held.command);
        let _ = self
            .driver
            .log_event(&held.fence, &who, LogEvent::Lost { detail });
        Error::LockLost(Box::new(LockLost {
            token: held.fence.token,
            at: m.map(Named::of),
            unrecorded,
            completed: report.steps.clone(),
        }))
    }

    /// Runs a plan one migration at a time, each in its own transaction
    /// (or outside one, as it says), stopping at the first failure.
    pub(super) fn run_each(
        &mut self,
        plan: &[&Migration],
        direction: Direction,
        held: Option<&Held>,
        observer: &mut dyn Observer,
    ) -> Result<RunReport, Error> {
        let mut report = RunReport {
            direction,
            steps: Vec::new(),
            dry_run: false,
        };
        observer.event(&Event::Planned {
            direction,
            migrations: plan,
        });
        self.start_watch(held);
        let dialect = self.driver.dialect();
        let mut began = false;
        for (index, m) in plan.iter().enumerate() {
            let next = plan
                .get(index + 1)
                .copied()
                .filter(|next| begins_ahead(next, direction, dialect));
            let at = Place {
                direction,
                index,
                total: plan.len(),
                began,
                next,
            };
            began = self.run_one(m, at, observer, &mut report, held)?;
        }
        Ok(report)
    }

    /// Runs one migration; whether its last write recorded the next one
    /// `started` too.
    fn run_one(
        &mut self,
        m: &Migration,
        at: Place<'_>,
        observer: &mut dyn Observer,
        report: &mut RunReport,
        held: Option<&Held>,
    ) -> Result<bool, Error> {
        let Place {
            direction,
            index,
            total,
            ..
        } = at;
        let section = section(m, direction);
        let limits = Limits::of(section, &self.options.statements);
        let ready = self
            .checkpoint(m, held, report)
            .and_then(|()| self.driver.fresh_session(limits));
        if let Err(e) = ready {
            return Err(self.unbegin(m, at, held, report, e));
        }
        observer.event(&Event::Started {
            direction,
            migration: m,
            index,
            total,
        });
        let outside = outside_transaction(section, self.driver.dialect());
        let ran = if outside {
            self.run_without_transaction(m, section, at, report, held, observer)?
        } else {
            self.run_in_transaction(m, section, at, report, held, observer)?
        };
        let step = Step {
            version: m.version,
            name: m.name.clone(),
            duration: ran.took,
            no_transaction: outside,
            kind: m.kind(),
        };
        observer.event(&Event::Finished {
            direction,
            step: &step,
            index,
            total,
        });
        report.steps.push(step);
        Ok(ran.began_next)
    }

    /// A run that stops before a migration that the one before recorded
    /// `started` (asked to stop, or its session lost) takes that row back
    /// where it can: none of the migration ran. A lost lock cannot: the
    /// migration stays dirty, for `fix dirty`. Returns the error.
    fn unbegin(
        &mut self,
        m: &Migration,
        at: Place<'_>,
        held: Option<&Held>,
        report: &RunReport,
        error: Error,
    ) -> Error {
        if at.began && !matches!(error, Error::LockLost(_)) {
            let executor = self.options.executor.clone();
            let token = held.map(|h| h.fence.token);
            let (_, undo) = begin_changes(m, at.direction, &executor, token);
            let _ = self.record(&[undo], m, held, false, report);
        }
        error
    }

    /// Runs a section in one transaction with its history change, fenced
    /// when the lock is held; again when a serialization failure or
    /// deadlock rolled it back whole, or when a statement gave up waiting
    /// for a lock. Returns how long it took.
    fn run_in_transaction(
        &mut self,
        m: &Migration,
        section: &Section,
        at: Place<'_>,
        report: &RunReport,
        held: Option<&Held>,
        observer: &mut dyn Observer,
    ) -> Result<Ran, Error> {
        let direction = at.direction;
        let token = held.map(|h| h.fence.token);
        // Owned: the transaction below borrows the migrator mutably.
        let executor = self.options.executor.clone();
        let change = recorded_with(m, direction, &executor, token, None);
        let ahead = at
            .next
            .map(|next| begin_changes(next, direction, &executor, token).0);
        let began_next = ahead.is_some();
        let steps = [TxStep {
            section,
            change,
            ahead,
        }];
        let mut took = Duration::ZERO;
        let run = Retried {
            m,
            held,
            interruptible: true,
        };
        match self.run_retried(run, None, &steps, &mut |_, d| took = d, observer) {
            Ok(()) => Ok(Ran { took, began_next }),
            Err((StepFailure { lost: true, .. }, _)) => {
                let held = held.expect("only fenced transactions lose the lock");
                Err(self.lost(
                    held,
                    Some(m),
                    false,
                    report,
                    "a fenced transaction found the token changed",
                ))
            }
            // Asked to stop, and rolled back whole: that is the stop,
            // whether the statement saw the interrupt or failed otherwise
            // while it came (SQLite's busy wait does not see it, and ends
            // in SQLITE_BUSY).
            Err(_) if self.cancel.is_cancelled() => Err(Error::Cancelled {
                completed: report.steps.clone(),
            }),
            Err((StepFailure { db, statement, .. }, waited)) => {
                let context = Context {
                    statement,
                    waited,
                    ..Context::default()
                };
                let dialect = self.driver.dialect();
                Err(failure(
                    m, section, direction, *db, report, dialect, context,
                ))
            }
        }
    }

    /// Runs one transaction of `run.m`; again while a serialization
    /// failure or deadlock rolled it back whole (running it again is safe)
    /// and no stop was asked for, up to [`RETRIES`] times; and again, after
    /// a wait, while a statement gave up waiting for a lock and the
    /// [`StatementOptions`](crate::waits::StatementOptions) allow another try.
    fn run_retried(
        &mut self,
        run: Retried<'_>,
        mut lead: Option<&str>,
        steps: &[TxStep<'_>],
        done: &mut Done,
        observer: &mut dyn Observer,
    ) -> Result<(), (StepFailure, Waited)> {
        let fence = run.held.map(|h| &h.fence);
        let mut deadlocks = 0;
        let mut tries = Tries::new();
        // The lead goes with the first try only: it commits by itself, and
        // a failure after it leaves it done. Its own failure is the
        // caller's to handle, not retried here.
        loop {
            self.cancel.interruptible(run.interruptible);
            let tx = Transaction {
                lead: lead.take(),
                steps,
                fence,
            };
            let (result, blocked) = self.watched(|driver| driver.run_steps(tx, done));
            self.cancel.interruptible(false);
            let Err(failure) = result else {
                return Ok(());
            };
            if !failure.lost && !failure.lead && !self.cancel.is_cancelled() {
                if failure.db.is_retryable() && deadlocks < RETRIES {
                    deadlocks += 1;
                    continue;
                }
                if failure.db.class == DbClass::LockTimeout
                    && self.wait_to_retry(run, &mut tries, blocked.as_ref(), observer)
                {
                    continue;
                }
            }
            let waited = Waited {
                tries: tries.made,
                blocked,
            };
            return Err((failure, waited));
        }
    }

    /// Runs a migration's SQL on the driver while the watch looks at what
    /// blocks it: its result, and what blocked it when the watch saw it
    /// waiting.
    fn watched<T>(&mut self, f: impl FnOnce(&mut dyn Driver) -> T) -> (T, Option<Blocked>) {
        if let Some(watch) = &self.watch {
            watch.begin();
        }
        let result = f(self.driver.as_mut());
        let blocked = self.watch.as_ref().and_then(Watch::end);
        (result, blocked)
    }

    /// Starts the thread that looks at who blocks the migrations' SQL,
    /// once per migrator, for a run that holds the lock (which made the
    /// session known).
    fn start_watch(&mut self, held: Option<&Held>) {
        if self.watch.is_some() || held.is_none() {
            return;
        }
        if let Some(finder) = self.driver.blocked_finder() {
            self.watch = Watch::start(finder, self.on_blocked.clone());
        }
    }

    /// After try `tries.made` of `run.m` gave up waiting for a lock: says
    /// so, logs it, and waits before the next try, unless the retries are
    /// spent or a stop is asked for. Whether to try again. A lock lost
    /// meanwhile cuts the wait short: the next try's fence says so.
    fn wait_to_retry(
        &mut self,
        run: Retried<'_>,
        tries: &mut Tries,
        blocked: Option<&Blocked>,
        observer: &mut dyn Observer,
    ) -> bool {
        let options = self.options.statements;
        let failed = tries.made;
        let Some(wait) = tries.next_wait(&options) else {
            return false;
        };
        observer.event(&Event::LockRetry {
            migration: run.m,
            try_number: failed,
            tries: options.lock_retries.saturating_add(1),
            wait,
            blocked,
        });
        if let Some(held) = run.held {
            let waited_for = blocked.map_or_else(|| "a lock".to_string(), |b| b.to_string());
            let detail = format!(
                "migration {} gave up waiting for {waited_for}; try {} follows in {} ms",
                Named::of(run.m),
                failed + 1,
                wait.as_millis()
            );
            let who = Actor::this_process(&self.options.executor, &self.host, &held.command);
            let _ =
                self.driver
                    .log_event(&held.fence, &who, LogEvent::LockRetry { detail: &detail });
        }
        let until = Instant::now() + wait;
        loop {
            if self.cancel.is_cancelled() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || run.held.is_some_and(Held::lost) {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    /// Runs a `-- lockstep:no-transaction` section statement by statement.
    /// The history row says `started` while it runs, so that a crash leaves
    /// it dirty rather than silently half-applied. The row's writes before
    /// and after are fenced; the statements between cannot be, but each
    /// after the first waits for a fenced write that finds the lock still
    /// this run's. A statement that gave up waiting for a lock runs again
    /// where that is safe (see [`Rerun`]).
    fn run_without_transaction(
        &mut self,
        m: &Migration,
        section: &Section,
        at: Place<'_>,
        report: &RunReport,
        held: Option<&Held>,
        observer: &mut dyn Observer,
    ) -> Result<Ran, Error> {
        let direction = at.direction;
        let dialect = self.driver.dialect();
        let statements = sql::split(&section.sql, dialect).expect("checked by preflight");
        let token = held.map(|h| h.fence.token);
        // Owned: the history writes below borrow the migrator mutably.
        let executor = self.options.executor.clone();
        // A versioned migration is recorded `started` first (unless the
        // migration before did it), and dirty should it fail part-way; a
        // repeatable one, written to run again, runs again at the next
        // upgrade; a callback is never recorded.
        let versioned = m.kind() == Kind::Versioned;
        let (begin, undo_begin) = begin_changes(m, direction, &executor, token);
        if versioned && !at.began {
            self.record(&[begin], m, held, false, report)?;
        }
        let started = Instant::now();
        let tail = transactional_tail(section, &statements, dialect);
        let own_transactions = statements
            .iter()
            .any(sql::Statement::is_transaction_control);
        // The section's last history change once it ran for `took`, and the
        // next migration's `started` row, which goes with this one's last
        // write when there is one.
        let finish_after = |took: Duration| {
            let took_ms = i64::try_from(took.as_millis()).unwrap_or(i64::MAX);
            let change = match (direction, versioned) {
                (Direction::Up, true) => Some(Change::SetState {
                    version: m.version,
                    state: RowState::Applied,
                    duration_ms: Some(took_ms),
                }),
                (Direction::Down, true) => Some(Change::Delete { version: m.version }),
                (_, false) => recorded_with(m, direction, &executor, token, Some(took_ms)),
            };
            let ahead = at
                .next
                .filter(|_| change.is_some())
                .map(|next| begin_changes(next, direction, &executor, token).0);
            Finish { change, ahead }
        };
        for (i, statement) in statements[..tail].iter().enumerate() {
            let text = &section.sql[statement.range.clone()];
            let leads_tail = i + 1 == tail && tail < statements.len();
            let mut tries = Tries::new();
            // What the last try left, undone before the next.
            let mut undo: Vec<String> = Vec::new();
            let failed = loop {
                // Each statement commits by itself: before each after the
                // first (whose fenced `started` row just proved the lock,
                // written here or with the migration before's last change;
                // an unrecorded migration has none, and proves it before
                // its first too), and before each try again, the lease
                // must still be this run's. After a lost lease at most the
                // statement in flight runs.
                if let Some(held) = held.filter(|_| i > 0 || tries.made > 1 || !versioned) {
                    if self.lease_gone(held) {
                        let detail = format!(
                            "the lease was gone after {i} of {} statements outside a transaction",
                            statements.len()
                        );
                        return Err(self.lost(held, Some(m), true, report, &detail));
                    }
                }
                // The last statement before a tail leads the tail's
                // transaction: one round trip fewer (see
                // `Transaction::lead`), and nothing of the tail runs unless
                // it succeeds.
                let (result, blocked) = if leads_tail {
                    debug_assert!(
                        undo.is_empty(),
                        "only PostgreSQL leaves something to undo, and only MariaDB/MySQL has tails"
                    );
                    let took = crate::driver::as_recorded(started.elapsed());
                    let finish = finish_after(took);
                    let began_next = finish.ahead.is_some();
                    match self.run_tail(m, direction, report, held, tail, finish, text, observer)? {
                        Ok(tail_took) => {
                            return Ok(Ran {
                                took: took + tail_took,
                                began_next,
                            });
                        }
                        Err(LeadFailed { db, blocked }) => (Err((db, false)), blocked),
                    }
                } else {
                    // `true` with a failure of the undoing, not the statement.
                    self.watched(|driver| {
                        for sql in &undo {
                            driver
                                .run_statement(sql)
                                .map_err(|db| (Box::new(db), true))?;
                        }
                        driver
                            .run_statement(text)
                            .map_err(|db| (Box::new(db), false))
                    })
                };
                let Err((db, undoing)) = result else {
                    break None;
                };
                let mut db = *db;
                let rerun = if db.class == DbClass::LockTimeout && !self.cancel.is_cancelled() {
                    self.rerun_after_giving_up(text, own_transactions)
                } else if undoing {
                    // Undoing what the last try left failed otherwise: its
                    // message points into no statement of the file.
                    db.position = None;
                    Rerun::Never { leftover: undo }
                } else {
                    Rerun::Never {
                        leftover: Vec::new(),
                    }
                };
                let run = Retried {
                    m,
                    held,
                    interruptible: false,
                };
                let leftover = match rerun {
                    Rerun::Again { first } => {
                        undo = first;
                        if self.wait_to_retry(run, &mut tries, blocked.as_ref(), observer) {
                            continue;
                        }
                        undo
                    }
                    Rerun::Never { leftover } => leftover,
                };
                let waited = Waited {
                    tries: tries.made,
                    blocked,
                };
                break Some((db, waited, leftover));
            };
            let Some((mut db, waited, leftover)) = failed else {
                continue;
            };
            db.position = db.position.map(|p| p + statement.range.start);
            let mut context = Context {
                statement: Some(StatementAt {
                    index: i,
                    offset: statement.range.start,
                }),
                waited,
                ..Context::default()
            };
            if !versioned {
                context.leftover = leftover;
            } else if i == 0 && leftover.is_empty() {
                // Nothing ran: the failure leaves the database as it was.
                self.record(&[undo_begin], m, held, false, report)?;
            } else {
                context.dirty = Some(DirtyDetail {
                    statements_done: i,
                    statements_total: statements.len(),
                });
                context.leftover = leftover;
            }
            return Err(failure(m, section, direction, db, report, dialect, context));
        }
        // No tail: what the row records, and so what the run prints.
        let took = crate::driver::as_recorded(started.elapsed());
        let Finish { change, ahead } = finish_after(took);
        let began_next = ahead.is_some();
        if let Some(change) = change {
            let changes: Vec<Change<'_>> = std::iter::once(change).chain(ahead).collect();
            self.record(&changes, m, held, true, report)?;
        }
        Ok(Ran { took, began_next })
    }

    /// After a statement outside a transaction gave up waiting for a lock:
    /// whether it may run again as it is, and what to undo first (a
    /// `CREATE INDEX CONCURRENTLY` leaves its index, invalid: dropped
    /// before the next try, which waits for the same blocker). What cannot
    /// be undone by lockstep is named for a human.
    fn rerun_after_giving_up(&mut self, text: &str, own_transactions: bool) -> Rerun {
        let never = |leftover: Vec<String>| Rerun::Never { leftover };
        if own_transactions {
            // The statement's transaction is the section's, not its own:
            // running it alone again would be another migration.
            return never(Vec::new());
        }
        match waits::leaves(text, self.driver.dialect()) {
            waits::Leaves::Nothing => Rerun::Again { first: Vec::new() },
            waits::Leaves::Unknown => never(Vec::new()),
            waits::Leaves::InvalidIndex { table, index } => {
                let Ok(invalid) = self.driver.invalid_indexes(&table, index.as_deref()) else {
                    return never(vec![format!(
                        "-- an invalid index on {table} that the statement may have left"
                    )]);
                };
                let drops = invalid.iter().map(|i| waits::drop_index(i)).collect();
                match index {
                    Some(_) => Rerun::Again { first: drops },
                    // Which of the table's invalid indexes is this
                    // statement's, only a human can tell.
                    None => never(drops),
                }
            }
        }
    }

    /// Runs the statements of a section from its `tail`-th on in one fenced
    /// transaction with the section's final history change (again when
    /// that transaction was rolled back by a deadlock, or gave up waiting
    /// for a lock), after the `lead`, the statement before them. Their
    /// failure leaves the migration dirty with the statements before
    /// `tail` done; the lead's comes back for the caller, which runs the
    /// statements before the tail, to handle as theirs.
    #[allow(clippy::too_many_arguments)]
    fn run_tail(
        &mut self,
        m: &Migration,
        direction: Direction,
        report: &RunReport,
        held: Option<&Held>,
        tail: usize,
        finish: Finish<'_>,
        lead: &str,
        observer: &mut dyn Observer,
    ) -> Result<Result<Duration, LeadFailed>, Error> {
        let section = section(m, direction);
        let statements =
            sql::split(&section.sql, self.driver.dialect()).expect("checked by preflight");
        // The statements before the tail blanked, not cut: positions and
        // lines in the section stay as they are in the file.
        let from = statements[tail].range.start;
        let mut sql = section.sql.clone().into_bytes();
        for byte in &mut sql[..from] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
        let tail_section = Section {
            sql: String::from_utf8(sql).expect("whole characters blanked"),
            ..section.clone()
        };
        let steps = [TxStep {
            section: &tail_section,
            change: finish.change,
            ahead: finish.ahead,
        }];
        let run = Retried {
            m,
            held,
            interruptible: false,
        };
        let mut took = Duration::ZERO;
        match self.run_retried(run, Some(lead), &steps, &mut |_, d| took = d, observer) {
            Ok(()) => Ok(Ok(took)),
            Err((StepFailure { lead: true, db, .. }, waited)) => Ok(Err(LeadFailed {
                db,
                blocked: waited.blocked,
            })),
            Err((StepFailure { lost: true, .. }, _)) => {
                let held = held.expect("only fenced transactions lose the lock");
                Err(self.lost(
                    held,
                    Some(m),
                    true,
                    report,
                    "the statements after the last DDL found the token changed",
                ))
            }
            Err((StepFailure { db, statement, .. }, waited)) => {
                let context = Context {
                    statement: statement.map(|at| StatementAt {
                        index: at.index + tail,
                        offset: at.offset,
                    }),
                    dirty: (m.kind() == Kind::Versioned).then_some(DirtyDetail {
                        statements_done: tail,
                        statements_total: statements.len(),
                    }),
                    waited,
                    ..Context::default()
                };
                let dialect = self.driver.dialect();
                Err(failure(
                    m, section, direction, *db, report, dialect, context,
                ))
            }
        }
    }

    /// Whether the lock stopped being this run's: the heartbeat saw it, or
    /// the lock row no longer has this run's token. A read finds the token
    /// with at least half the lease left: nothing written, no commit to
    /// flush before each statement (the heartbeat keeps the lease).
    /// Otherwise a fenced write (of no history change: it checks the token
    /// and extends the lease) decides; one that fails otherwise leaves the
    /// decision to the next fenced write.
    fn lease_gone(&mut self, held: &Held) -> bool {
        if held.lost() {
            return true;
        }
        let half = held.fence.ttl / 2;
        if matches!(self.driver.lease_left(&held.fence), Ok(Some(left)) if left >= half) {
            return false;
        }
        matches!(
            self.driver.change_history(&[], Some(&held.fence)),
            Err(Error::LockLost(_))
        )
    }

    /// Writes history changes in a fenced transaction of their own; a lost
    /// lock becomes the run's error. `unrecorded`: the migration already ran.
    fn record(
        &mut self,
        changes: &[Change<'_>],
        m: &Migration,
        held: Option<&Held>,
        unrecorded: bool,
        report: &RunReport,
    ) -> Result<(), Error> {
        let fence = held.map(|h| &h.fence);
        match retry(|| self.driver.change_history(changes, fence)) {
            Err(Error::LockLost(_)) => {
                let held = held.expect("only fenced writes lose the lock");
                let detail = if unrecorded {
                    "the migration ran, but recording it found the token changed"
                } else {
                    "a fenced write found the token changed"
                };
                Err(self.lost(held, Some(m), unrecorded, report, detail))
            }
            other => other,
        }
    }

    pub(super) fn run_single_transaction(
        &mut self,
        plan: &[&Migration],
        observer: &mut dyn Observer,
        report: &mut RunReport,
        held: Option<&Held>,
    ) -> Result<(), Error> {
        self.checkpoint(plan[0], held, report)?;
        self.start_watch(held);
        // One transaction has one set of bounds: the widest of its
        // migrations'.
        let options = self.options.statements;
        let limits = Limits::widest(plan.iter().map(|m| Limits::of(&m.up, &options)));
        self.driver.fresh_session(limits)?;
        let fence = held.map(|h| &h.fence);
        let token = fence.map(|f| f.token);
        // Owned: the transaction below borrows the migrator mutably.
        let executor = self.options.executor.clone();
        let steps: Vec<TxStep<'_>> = plan
            .iter()
            .map(|m| TxStep {
                section: &m.up,
                change: recorded_with(m, Direction::Up, &executor, token, None),
                ahead: None,
            })
            .collect();
        let total = plan.len();
        let mut durations = vec![Duration::ZERO; total];
        let mut attempts = 0;
        let mut tries = Tries::new();
        let (failed, waited) = loop {
            attempts += 1;
            observer.event(&Event::Started {
                direction: Direction::Up,
                migration: plan[0],
                index: 0,
                total,
            });
            self.cancel.interruptible(true);
            let tx = Transaction {
                lead: None,
                steps: &steps,
                fence,
            };
            let (result, blocked) = self.watched(|driver| {
                driver.run_steps(tx, &mut |i, d| {
                    durations[i] = d;
                    if i + 1 < total {
                        observer.event(&Event::Started {
                            direction: Direction::Up,
                            migration: plan[i + 1],
                            index: i + 1,
                            total,
                        });
                    }
                })
            });
            self.cancel.interruptible(false);
            let Err(f) = result else {
                break (None, Waited::default());
            };
            if !f.lost && !self.cancel.is_cancelled() {
                if f.db.is_retryable() && attempts <= RETRIES {
                    continue;
                }
                let run = Retried {
                    m: plan[f.index],
                    held,
                    interruptible: true,
                };
                if f.db.class == DbClass::LockTimeout
                    && self.wait_to_retry(run, &mut tries, blocked.as_ref(), observer)
                {
                    continue;
                }
            }
            let waited = Waited {
                tries: tries.made,
                blocked,
            };
            break (Some(f), waited);
        };
        if let Some(failed) = failed {
            return Err(
                self.single_transaction_failed(plan, &durations, failed, waited, report, held)
            );
        }
        for (index, (m, duration)) in plan.iter().zip(durations).enumerate() {
            let step = Step {
                version: m.version,
                name: m.name.clone(),
                duration,
                no_transaction: false,
                kind: m.kind(),
            };
            observer.event(&Event::Finished {
                direction: Direction::Up,
                step: &step,
                index,
                total,
            });
            report.steps.push(step);
        }
        Ok(())
    }

    /// The error of a `--single-transaction` run whose transaction failed
    /// at migration `failed.index`: everything was rolled back.
    fn single_transaction_failed(
        &mut self,
        plan: &[&Migration],
        durations: &[Duration],
        failed: StepFailure,
        waited: Waited,
        report: &RunReport,
        held: Option<&Held>,
    ) -> Error {
        let StepFailure {
            index,
            db,
            lost,
            statement,
            ..
        } = failed;
        if lost {
            let held = held.expect("only fenced transactions lose the lock");
            return self.lost(
                held,
                Some(plan[0]),
                false,
                report,
                "a fenced transaction found the token changed",
            );
        }
        if self.cancel.is_cancelled() {
            return Error::Cancelled {
                completed: Vec::new(),
            };
        }
        // The migrations before the failing one ran, and were rolled back
        // with it.
        let completed = RunReport {
            direction: Direction::Up,
            steps: plan[..index]
                .iter()
                .zip(durations)
                .map(|(m, d)| Step {
                    version: m.version,
                    name: m.name.clone(),
                    duration: *d,
                    no_transaction: false,
                    kind: m.kind(),
                })
                .collect(),
            dry_run: false,
        };
        let m = plan[index];
        let context = Context {
            statement,
            all_rolled_back: true,
            waited,
            ..Context::default()
        };
        let dialect = self.driver.dialect();
        failure(m, &m.up, Direction::Up, *db, &completed, dialect, context)
    }
}

/// A migration's transaction (or statement) that runs again after a lock
/// wait gave up.
#[derive(Clone, Copy)]
struct Retried<'a> {
    m: &'a Migration,
    held: Option<&'a Held>,
    /// A stop cancels its running statement.
    interruptible: bool,
}

/// The statement that leads a tail's transaction failed: nothing of the
/// transaction ran.
struct LeadFailed {
    db: Box<DbMessage>,
    /// What blocked it, when the watch saw it waiting.
    blocked: Option<Blocked>,
}

/// How a migration's tries went with the locks it waited for.
#[derive(Default)]
struct Waited {
    /// Tries made, from 1.
    tries: u32,
    /// What its statement waited for, when the watch saw it.
    blocked: Option<Blocked>,
}

/// Where a migration stands in the plan it runs in.
#[derive(Clone, Copy)]
struct Place<'a> {
    direction: Direction,
    /// From 0.
    index: usize,
    /// The plan's length.
    total: usize,
    /// The migration before recorded this one `started`.
    began: bool,
    /// The next migration, when it runs outside a transaction and is
    /// recorded `started` first: this one's last write records it so.
    next: Option<&'a Migration>,
}

/// How a migration ran.
struct Ran {
    took: Duration,
    /// Its last write recorded the next migration `started`.
    began_next: bool,
}

/// The history changes that commit with the statements after a section's
/// last DDL.
struct Finish<'a> {
    change: Option<Change<'a>>,
    ahead: Option<Change<'a>>,
}

/// Runs `f` again when a serialization failure or deadlock rolled it back.
pub(super) fn retry<T>(mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match f() {
            Err(e) if e.is_retryable() && attempts <= RETRIES => continue,
            other => return other,
        }
    }
}

/// The history change that records a run of `m` in `direction`: in the
/// transaction that runs it (`duration_ms` `None`: the driver measures),
/// or after its statements ran outside one. A callback records nothing.
fn recorded_with<'a>(
    m: &'a Migration,
    direction: Direction,
    executor: &'a str,
    lock_token: Option<i64>,
    duration_ms: Option<i64>,
) -> Option<Change<'a>> {
    Some(match (m.kind(), direction) {
        (Kind::Callback(_), _) => return None,
        (Kind::Repeatable(_), _) => Change::Repeated {
            name: &m.name,
            checksum: &m.checksum,
            applied_by: executor,
            lock_token,
            duration_ms,
        },
        (Kind::Versioned, Direction::Up) => Change::Insert(new_row(m, executor, false, lock_token)),
        (Kind::Versioned, Direction::Down) => Change::Delete { version: m.version },
    })
}

/// Whether `m` runs outside a transaction, recorded `started` before its
/// first statement: the migration before it can write that row with its
/// own last change, a commit fewer.
fn begins_ahead(m: &Migration, direction: Direction, dialect: Dialect) -> bool {
    m.kind() == Kind::Versioned && outside_transaction(section(m, direction), dialect)
}

/// The history change that records a migration outside a transaction
/// `started` before its first statement, and the one that takes it back
/// when none of it ran.
fn begin_changes<'a>(
    m: &'a Migration,
    direction: Direction,
    executor: &'a str,
    lock_token: Option<i64>,
) -> (Change<'a>, Change<'a>) {
    match direction {
        Direction::Up => (
            Change::Insert(new_row(m, executor, true, lock_token)),
            Change::Delete { version: m.version },
        ),
        Direction::Down => (
            Change::SetState {
                version: m.version,
                state: RowState::Started,
                duration_ms: None,
            },
            Change::SetState {
                version: m.version,
                state: RowState::Applied,
                duration_ms: None,
            },
        ),
    }
}

fn new_row<'a>(
    m: &'a Migration,
    executor: &'a str,
    started: bool,
    lock_token: Option<i64>,
) -> NewRow<'a> {
    NewRow {
        version: m.version,
        name: &m.name,
        checksum: &m.checksum,
        started,
        applied_by: executor,
        lock_token,
    }
}

/// The section of `m` that runs in `direction`.
/// Whether a section runs outside a transaction, statement by statement,
/// recorded `started` first: marked `-- lockstep:no-transaction`, or on
/// MariaDB/MySQL holding a statement that commits by itself (DDL), which
/// would commit whatever the transaction held before it.
pub(super) fn outside_transaction(section: &Section, dialect: Dialect) -> bool {
    section.no_transaction
        || dialect == Dialect::Mysql
            && sql::split(&section.sql, dialect)
                .is_ok_and(|statements| statements.iter().any(|s| s.commits_implicitly(dialect)))
}

/// Where the statements of a section outside a transaction may run in one
/// again: on MariaDB/MySQL, a section outside one only because it holds DDL
/// runs the statements after its last DDL in one transaction with its
/// `applied` row, as they need no commit of their own. Elsewhere, and for
/// a section marked `-- lockstep:no-transaction`, nowhere (the length).
fn transactional_tail(section: &Section, statements: &[sql::Statement], dialect: Dialect) -> usize {
    if section.no_transaction {
        return statements.len();
    }
    statements
        .iter()
        .rposition(|s| s.commits_implicitly(dialect))
        .map_or(statements.len(), |last| last + 1)
}

pub(super) fn section(m: &Migration, direction: Direction) -> &Section {
    match direction {
        Direction::Up => &m.up,
        Direction::Down => m
            .down
            .as_deref()
            .expect("the planner only plans rollbacks with a down section"),
    }
}

/// What a plan would do, as a report of its steps that ran nowhere: a dry
/// run's, or an empty one.
pub(super) fn planned(
    direction: Direction,
    plan: &[&Migration],
    dialect: Dialect,
    dry_run: bool,
) -> RunReport {
    RunReport {
        direction,
        steps: plan
            .iter()
            .map(|m| Step {
                version: m.version,
                name: m.name.clone(),
                duration: Duration::ZERO,
                no_transaction: outside_transaction(section(m, direction), dialect),
                kind: m.kind(),
            })
            .collect(),
        dry_run,
    }
}

/// What a failure says beyond the migration and the engine's message.
#[derive(Default)]
struct Context {
    /// The statement that failed, where the engine or lockstep knows it.
    statement: Option<StatementAt>,
    dirty: Option<DirtyDetail>,
    all_rolled_back: bool,
    waited: Waited,
    /// What the failed statement left that a human must undo, as SQL.
    leftover: Vec<String>,
}

fn failure(
    m: &Migration,
    section: &Section,
    direction: Direction,
    db: DbMessage,
    report: &RunReport,
    dialect: Dialect,
    context: Context,
) -> Error {
    // Named only where the engine pointed nowhere: a position says more.
    let statement = context
        .statement
        .filter(|_| db.position.is_none())
        .map(|at| {
            let total = sql::split(&section.sql, dialect).map_or(0, |statements| statements.len());
            let first_line = section.sql[at.offset.min(section.sql.len())..]
                .lines()
                .next()
                .unwrap_or_default()
                .trim_end();
            FailedStatement {
                number: at.index + 1,
                total: total.max(at.index + 1),
                line: section.position(at.offset).0,
                first_line: shorten(first_line, 60),
            }
        });
    Error::Migration(Box::new(MigrationFailure {
        direction,
        migration: Named::of(m),
        path: section.path.clone(),
        line_col: db.position.map(|p| section.position(p)),
        statement,
        db,
        completed: report.steps.clone(),
        dirty: context.dirty,
        all_rolled_back: context.all_rolled_back,
        tries: context.waited.tries.max(1),
        blocked: context.waited.blocked,
        leftover: context.leftover,
    }))
}

/// At most `max` characters of `text`, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}
