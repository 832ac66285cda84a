//! The run loop: plan, check, apply, record. Written once for every engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::driver::{self, Canceller, Change, Driver, NewRow, StatementAt, StepFailure, TxStep};
use crate::error::{
    DbMessage, Direction, DirtyDetail, Error, FailedStatement, MigrationFailure, Step, RETRIES,
};
use crate::history::{HistoryRow, RowState, TableName};
use crate::lock::{self, Actor, Held, LockEvent, LockInfo, LockLost, LockOptions, LogEntry};
use crate::plan::{self, Named, State, Target, TargetError};
use crate::source::{Migration, MigrationSet, Section, SourceError};
use crate::sql::{self, Dialect};
use crate::url::DatabaseUrl;

/// How a [`Migrator`] identifies itself and where it keeps history.
#[derive(Debug, Clone)]
pub struct Options {
    /// The history table (default `lockstep_history`).
    pub history_table: TableName,
    /// The executor id: the lock's owner and history's `applied_by`
    /// (default `<host>-<pid>-<random hex>`).
    pub executor: String,
    /// The migration lock for commands that write; `None` runs without it,
    /// which gives up every guarantee against concurrent runs.
    pub lock: Option<LockOptions>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history_table: TableName::default(),
            executor: crate::identity::default_executor(),
            lock: Some(LockOptions::default()),
        }
    }
}

/// What `upgrade` should do.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpgradeOptions {
    /// How far to go.
    pub target: Target,
    /// Plan and report, change nothing.
    pub dry_run: bool,
    /// Apply every planned migration in one transaction.
    pub single_transaction: bool,
    /// Apply pending migrations older than the newest applied one.
    pub allow_out_of_order: bool,
}

/// What `rollback` should do.
#[derive(Debug, Clone, Copy, Default)]
pub struct RollbackOptions {
    /// How far to go; without `to` or `count`, one migration.
    pub target: Target,
    /// Plan and report, change nothing.
    pub dry_run: bool,
}

/// What a run did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Which way.
    pub direction: Direction,
    /// The migrations, in the order they ran.
    pub steps: Vec<Step>,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// Something that happened during a run, for progress output.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// About to run these migrations.
    Planned {
        /// Which way.
        direction: Direction,
        /// In order.
        migrations: &'a [&'a Migration],
    },
    /// A migration began.
    Started {
        /// Which way.
        direction: Direction,
        /// The migration.
        migration: &'a Migration,
        /// Its place in the plan, from 0.
        index: usize,
        /// The plan's length.
        total: usize,
    },
    /// Something happened to the migration lock.
    Lock(LockEvent<'a>),
    /// A migration was applied (or reverted) and recorded.
    Finished {
        /// Which way.
        direction: Direction,
        /// The migration and its duration.
        step: &'a Step,
        /// Its place in the plan, from 0.
        index: usize,
        /// The plan's length.
        total: usize,
    },
}

/// Receives [`Event`]s; the library never prints.
pub trait Observer {
    /// Called for each event, in order.
    fn event(&mut self, event: &Event<'_>);
}

impl Observer for () {
    fn event(&mut self, _: &Event<'_>) {}
}

/// A change made (or, in a dry run, planned) by a `fix` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixed {
    /// The migration.
    pub version: u64,
    /// Its name (the file's name, when it has a file).
    pub name: String,
    /// What was done, as a lowercase phrase.
    pub action: String,
}

/// How to resolve a dirty migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyResolution {
    /// The migration's effects are all in place: record it as applied.
    Applied,
    /// The migration's effects are undone: forget its row, so that
    /// `upgrade` runs it again.
    Forget,
}

/// Stops a run from another thread (a signal handler's thread, in the
/// CLI): between migrations, or by cancelling the statement of a migration
/// that runs in a transaction. A migration outside a transaction is left to
/// finish, since stopping it half-way would leave it dirty.
#[derive(Clone)]
pub struct CancelHandle(Arc<CancelState>);

struct CancelState {
    requested: AtomicBool,
    /// A transactional migration is running: cancelling its statement
    /// rolls it back cleanly.
    interruptible: AtomicBool,
    canceller: Canceller,
}

impl CancelHandle {
    /// Asks the run to stop as soon as it safely can.
    pub fn cancel(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        if self.0.interruptible.load(Ordering::SeqCst) {
            (self.0.canceller)();
        }
    }

    /// Whether `cancel` was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    fn interruptible(&self, on: bool) {
        self.0.interruptible.store(on, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelHandle")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// Runs migrations against one database.
pub struct Migrator {
    driver: Box<dyn Driver>,
    options: Options,
    cancel: CancelHandle,
    host: String,
    /// History read ahead by [`Migrator::prefetch_history`], for the
    /// command's first read.
    prefetched: Option<Result<Option<Vec<HistoryRow>>, Error>>,
}

/// The migrator's connection: the engine's driver, its lock store and
/// its history.
type Connection = dyn Driver;

/// Asked, when another run had the lock, whether there is still work to
/// take it for (see [`Migrator::lock`]).
type Needed<'n> = dyn FnMut(&mut Connection) -> lock::Work + 'n;

impl std::fmt::Debug for Migrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrator")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What taking the lock came to.
enum Locking {
    /// Held; `None` with `--no-lock`.
    Held(Option<Held>),
    /// Another run did the work while this one waited.
    NotNeeded,
}

impl Migrator {
    /// Connects for commands that write. Connecting changes nothing: an
    /// SQLite file that does not exist is created, with lockstep's tables,
    /// when a command first needs to write (not by a dry run, nor by a run
    /// with nothing to do).
    pub fn connect(url: &DatabaseUrl, options: Options) -> Result<Migrator, Error> {
        Self::open(url, options, true)
    }

    /// Connects for commands that only read: an SQLite file that does not
    /// exist is not created, and reads as a database without history.
    pub fn connect_read_only(url: &DatabaseUrl, options: Options) -> Result<Migrator, Error> {
        Self::open(url, options, false)
    }

    fn open(url: &DatabaseUrl, mut options: Options, create: bool) -> Result<Migrator, Error> {
        options.history_table = driver::canonical(url, &options.history_table);
        crate::identity::check_executor(&options.executor).map_err(|message| Error::Config {
            message,
            hint: None,
        })?;
        if let Some(lock) = &options.lock {
            lock.check().map_err(|message| Error::Config {
                message,
                hint: None,
            })?;
        }
        // Shown in pg_stat_activity: who holds which session.
        let application_name = format!("lockstep {}", options.executor);
        let mut driver = driver::open(url, &options.history_table, &application_name, create)?;
        // Without the lock, or for commands that only read, nothing else
        // bounds a wait for another writer.
        driver.patient(options.lock.is_none() || !create);
        let cancel = CancelHandle(Arc::new(CancelState {
            requested: AtomicBool::new(false),
            interruptible: AtomicBool::new(false),
            canceller: driver.canceller(),
        }));
        Ok(Migrator {
            driver,
            options,
            cancel,
            host: crate::identity::hostname(),
            prefetched: None,
        })
    }

    /// Reads the history now, for the next command's first read (every
    /// command reads it once without the lock before anything else). A
    /// caller with other work to do meanwhile, such as reading the
    /// migration files on another thread, overlaps that work with the
    /// query's round trip. Taking the lock discards an unused read: under
    /// the lock, history is always read afresh.
    ///
    /// Meanwhile the connection lets go of what it can build again: on
    /// SQLite, the database's parsed schema (2.9 MB at 10,000 tables),
    /// whose memory the files' records then reuse. A command that goes on
    /// to use the connection pays one more parse of the schema; one that
    /// finds nothing to do (a no-op `upgrade`, `status`) never does.
    pub fn prefetch_history(&mut self) {
        self.prefetched = Some(self.driver.read_history());
        self.driver.rest();
    }

    /// The history: the prefetched read when there is one, else a fresh
    /// one.
    fn read_history(&mut self) -> Result<Option<Vec<HistoryRow>>, Error> {
        match self.prefetched.take() {
            Some(read) => read,
            None => self.driver.read_history(),
        }
    }

    /// A handle that stops this migrator's run from another thread.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The lock's scope: one per history table.
    fn scope(&self) -> String {
        self.options.history_table.to_string()
    }

    /// Takes the lock, waiting as the options say (`Locking::Held(None)`
    /// with `--no-lock`). `needed` is asked whether there is still work to
    /// take it for when the lock comes free after a wait, and when the
    /// lock moved since `since`, the lock as the history read that decided
    /// to take it found it.
    fn lock(
        &mut self,
        command: &str,
        observer: &mut dyn Observer,
        since: Option<lock::LockMark>,
        needed: &mut Needed<'_>,
    ) -> Result<Locking, Error> {
        self.prefetched = None;
        let Some(options) = self.options.lock.clone() else {
            return Ok(Locking::Held(None));
        };
        let scope = self.scope();
        let who = Actor {
            owner: &self.options.executor,
            host: &self.host,
            pid: i64::from(std::process::id()),
            command,
        };
        let request = lock::Request {
            scope: &scope,
            actor: &who,
            options: &options,
            since,
        };
        let cancel = self.cancel.clone();
        let mut report = |e: &LockEvent<'_>| observer.event(&Event::Lock(e.clone()));
        let cancelled = || cancel.is_cancelled();
        let driver = &mut *self.driver;
        let acquired = match lock::acquire(driver, &request, &mut report, &cancelled, needed) {
            // Tables from before the lock existed: create what is missing.
            Err(e) if e.is_undefined_table() => {
                driver.create_tables()?;
                lock::acquire(driver, &request, &mut report, &cancelled, needed)
            }
            other => other,
        }?;
        Ok(match acquired {
            lock::Acquired::Held(held) => {
                // The holder's statements wait for a reader's moment.
                self.driver.patient(true);
                Locking::Held(Some(held))
            }
            lock::Acquired::NotNeeded => Locking::NotNeeded,
        })
    }

    /// Releases the lock (when it is still this run's) and reports how that
    /// went. Never fails the run: every write was fenced.
    fn unlock(&mut self, held: Option<Held>, command: &str, observer: &mut dyn Observer) {
        let Some(mut held) = held else { return };
        held.stop_heartbeat();
        let token = held.fence.token;
        let event = if held.lost() {
            LockEvent::NotReleased {
                token,
                reason: "the lock was lost".into(),
            }
        } else {
            let owner = self.options.executor.clone();
            let host = self.host.clone();
            let who = Actor {
                owner: &owner,
                host: &host,
                pid: i64::from(std::process::id()),
                command,
            };
            match self.driver.release_lock(&held.fence, &who) {
                Ok(true) => LockEvent::Released { token },
                Ok(false) => LockEvent::NotReleased {
                    token,
                    reason:
                        "the lock was taken over or released by force before this run released it"
                            .into(),
                },
                Err(e) => LockEvent::NotReleased {
                    token,
                    reason: format!("{e}; the lease runs out by itself"),
                },
            }
        };
        observer.event(&Event::Lock(event));
        self.driver.patient(false);
    }

    /// The lock as it stands, without waiting: for `lock status`.
    pub fn lock_info(&mut self) -> Result<LockInfo, Error> {
        let scope = self.scope();
        Ok(self.driver.inspect_lock(&scope)?.unwrap_or(LockInfo {
            scope,
            ..LockInfo::default()
        }))
    }

    /// Frees the lock whoever holds it, if its token is still the one in
    /// `seen` (what the user was shown): bumps the token, so that a holder
    /// that is in fact running stops at its next migration. Waits up to
    /// `wait` for a running migration to commit. `false` when the lock
    /// changed meanwhile.
    pub fn force_release(&mut self, seen: &LockInfo, wait: Duration) -> Result<bool, Error> {
        lock::check_wait(wait).map_err(|message| Error::Config {
            message,
            hint: None,
        })?;
        let scope = self.scope();
        let owner = self.options.executor.clone();
        let host = self.host.clone();
        let who = Actor {
            owner: &owner,
            host: &host,
            pid: i64::from(std::process::id()),
            command: "lock release",
        };
        self.driver.force_release(&scope, seen, &who, wait)
    }

    /// The newest events of the lock's audit log, newest first.
    pub fn lock_log(&mut self, limit: usize) -> Result<Vec<LogEntry>, Error> {
        let scope = self.scope();
        self.driver.read_lock_log(&scope, limit)
    }

    /// The options in use.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The history rows ordered by version; empty when the history table
    /// does not exist. Creates nothing.
    pub fn history(&mut self) -> Result<Vec<HistoryRow>, Error> {
        Ok(self.read_history()?.unwrap_or_default())
    }

    /// Checks every section for this engine (as `upgrade` and `rollback`
    /// would before running it), then compares the files with the history
    /// and refuses on drift (a modified, missing or dirty migration).
    /// Returns the history.
    pub fn validate(&mut self, set: &MigrationSet) -> Result<Vec<HistoryRow>, Error> {
        let dialect = self.driver.dialect();
        for m in set.migrations() {
            check_section(&m.up, dialect)?;
            if let Some(down) = &m.down {
                check_section(down, dialect)?;
            }
        }
        let history = self.history()?;
        plan::check(set.migrations(), &history)?;
        Ok(history)
    }

    /// Applies pending migrations in version order, each in its own
    /// transaction with its history row, under the migration lock.
    ///
    /// History is read first without the lock: with nothing pending the run
    /// ends there, so that a fleet starting against an up-to-date database
    /// never contends. Otherwise it takes the lock, reads history again, and
    /// plans from that.
    pub fn upgrade(
        &mut self,
        set: &MigrationSet,
        options: &UpgradeOptions,
        observer: &mut dyn Observer,
    ) -> Result<RunReport, Error> {
        let mut report = RunReport {
            direction: Direction::Up,
            steps: Vec::new(),
            dry_run: options.dry_run,
        };
        let history = match self.read_history() {
            // A writer keeps the database from being read (SQLite): most
            // often a holder's migration. Only the lock can say when it is
            // done; under it, history is read afresh.
            Err(e) if e.is_busy() && self.options.lock.is_some() && !options.dry_run => {
                return self.upgrade_under_lock(
                    set,
                    options,
                    observer,
                    None,
                    &mut |_| lock::Work::Left(None),
                    report,
                );
            }
            other => other?,
        };
        let planned = self.plan_upgrade(set, history.as_deref().unwrap_or_default(), options);
        match self.decide_under_lock(planned, options.dry_run)? {
            // Nothing to do: no table is created, no lock taken, nothing written.
            Some(plan) if plan.is_empty() => return Ok(report),
            Some(plan) if options.dry_run => {
                report.steps = plan.iter().map(|m| planned_step(m, &m.up)).collect();
                return Ok(report);
            }
            _ => {}
        }
        // While this run waits, the holder may apply everything it would:
        // then it is done without ever taking the lock.
        let mut needed = |driver: &mut Connection| match driver.read_history() {
            Ok(Some(history))
                if matches!(
                    plan::plan_upgrade(set.migrations(), &history, options.target, options.allow_out_of_order),
                    Ok(plan) if plan.is_empty()
                ) =>
            {
                lock::Work::Done
            }
            Ok(Some(_)) => lock::Work::Left(driver.history_lock()),
            _ => lock::Work::Left(None),
        };
        // The lock as the history read that found work to do found it: a
        // read that found no tables found it never taken. A run of a fleet
        // that read history before or while another applied (or before
        // another made the tables and applied), and looks at the lock only
        // after that one freed it, finds it moved: it reads history again
        // before taking the lock, instead of taking it only to find nothing
        // to do.
        let since = match history {
            Some(_) => self.driver.history_lock(),
            None => {
                self.driver.create_tables()?;
                Some(lock::LockMark::default())
            }
        };
        self.upgrade_under_lock(set, options, observer, since, &mut needed, report)
    }

    /// Takes the lock (see [`Migrator::lock`] for `since` and `needed`),
    /// then plans from history read under it and applies. A run that could
    /// not read history before the lock passes no mark and always needs
    /// the lock: everything is decided under it.
    fn upgrade_under_lock(
        &mut self,
        set: &MigrationSet,
        options: &UpgradeOptions,
        observer: &mut dyn Observer,
        since: Option<lock::LockMark>,
        needed: &mut Needed<'_>,
        mut report: RunReport,
    ) -> Result<RunReport, Error> {
        let held = match self.lock("upgrade", observer, since, needed)? {
            Locking::Held(held) => held,
            Locking::NotNeeded => return Ok(report),
        };
        let result = self.upgrade_locked(set, options, observer, held.as_ref(), &mut report);
        self.unlock(held, "upgrade", observer);
        result.map(|()| report)
    }

    /// A plan from history read without the lock, or `None` when only the
    /// lock can decide: a `started` row may be a no-transaction migration
    /// that another run is applying right now, not a dirty one. Under the
    /// lock, with nobody else running, it is dirty for sure.
    fn decide_under_lock<'s>(
        &self,
        planned: Result<Vec<&'s Migration>, Error>,
        dry_run: bool,
    ) -> Result<Option<Vec<&'s Migration>>, Error> {
        match planned {
            Err(Error::Refused(crate::plan::Refusal::Dirty(_)))
                if !dry_run && self.options.lock.is_some() =>
            {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    fn plan_upgrade<'s>(
        &self,
        set: &'s MigrationSet,
        history: &[HistoryRow],
        options: &UpgradeOptions,
    ) -> Result<Vec<&'s Migration>, Error> {
        let plan = plan::plan_upgrade(
            set.migrations(),
            history,
            options.target,
            options.allow_out_of_order,
        )?;
        self.preflight(&plan, Direction::Up)?;
        if options.single_transaction {
            if let Some(m) = plan.iter().find(|m| m.up.no_transaction) {
                return Err(Error::Config {
                    message: format!(
                        "`--single-transaction` cannot include migration {} {}: it is marked `-- lockstep:no-transaction`",
                        m.version, m.name
                    ),
                    hint: Some(
                        "apply up to the version before it with `--to`, or run without `--single-transaction`"
                            .into(),
                    ),
                });
            }
        }
        Ok(plan)
    }

    fn upgrade_locked(
        &mut self,
        set: &MigrationSet,
        options: &UpgradeOptions,
        observer: &mut dyn Observer,
        held: Option<&Held>,
        report: &mut RunReport,
    ) -> Result<(), Error> {
        // Read again under the lock: another run may have applied some or
        // all. Tables a run that could not read before the lock never made
        // are made now.
        let history = match self.driver.read_history()? {
            Some(history) => history,
            None => {
                self.driver.create_tables()?;
                Vec::new()
            }
        };
        let plan = self.plan_upgrade(set, &history, options)?;
        if plan.is_empty() {
            return Ok(());
        }
        observer.event(&Event::Planned {
            direction: Direction::Up,
            migrations: &plan,
        });
        if options.single_transaction {
            return self.run_single_transaction(&plan, observer, report, held);
        }
        for (index, m) in plan.iter().enumerate() {
            self.run_one(m, Direction::Up, index, plan.len(), observer, report, held)?;
        }
        Ok(())
    }

    /// Reverts applied migrations, newest version first, each with its down
    /// section in a transaction that also deletes its history row, under
    /// the migration lock.
    pub fn rollback(
        &mut self,
        set: &MigrationSet,
        options: &RollbackOptions,
        observer: &mut dyn Observer,
    ) -> Result<RunReport, Error> {
        let history = self.history()?;
        let planned = self.plan_rollback(set, &history, options);
        let mut report = RunReport {
            direction: Direction::Down,
            steps: Vec::new(),
            dry_run: options.dry_run,
        };
        match self.decide_under_lock(planned, options.dry_run)? {
            Some(plan) if plan.is_empty() => return Ok(report),
            Some(plan) if options.dry_run => {
                report.steps = plan.iter().map(|m| planned_step(m, down(m))).collect();
                return Ok(report);
            }
            _ => {}
        }
        let held = match self.lock("rollback", observer, None, &mut |_| lock::Work::Left(None))? {
            Locking::Held(held) => held,
            Locking::NotNeeded => return Ok(report),
        };
        let result = (|| -> Result<(), Error> {
            let history = self.history()?;
            let plan = self.plan_rollback(set, &history, options)?;
            if plan.is_empty() {
                return Ok(());
            }
            observer.event(&Event::Planned {
                direction: Direction::Down,
                migrations: &plan,
            });
            for (index, m) in plan.iter().enumerate() {
                self.run_one(
                    m,
                    Direction::Down,
                    index,
                    plan.len(),
                    observer,
                    &mut report,
                    held.as_ref(),
                )?;
            }
            Ok(())
        })();
        self.unlock(held, "rollback", observer);
        result.map(|()| report)
    }

    fn plan_rollback<'s>(
        &self,
        set: &'s MigrationSet,
        history: &[HistoryRow],
        options: &RollbackOptions,
    ) -> Result<Vec<&'s Migration>, Error> {
        let plan = plan::plan_rollback(set.migrations(), history, options.target)?;
        self.preflight(&plan, Direction::Down)?;
        Ok(plan)
    }

    /// Records the current checksum (and name) of every applied migration
    /// whose file changed. Nothing is re-run.
    pub fn fix_checksums(
        &mut self,
        set: &MigrationSet,
        dry_run: bool,
        observer: &mut dyn Observer,
    ) -> Result<Vec<Fixed>, Error> {
        self.fix(dry_run, observer, |history| {
            let mut fixes = Vec::new();
            for e in plan::statuses(set.migrations(), history) {
                let (Some(m), Some(row)) = (e.migration, e.row) else {
                    continue;
                };
                if e.state != State::Modified {
                    continue;
                }
                let mut action = format!(
                    "recorded checksum {} (was {})",
                    m.checksum.short(),
                    row.checksum.short()
                );
                if row.name != m.name {
                    action.push_str(&format!(" and name `{}` (was `{}`)", m.name, row.name));
                }
                let fixed = Fixed {
                    version: m.version,
                    name: m.name.clone(),
                    action,
                };
                let change = Change::SetChecksum {
                    version: m.version,
                    name: m.name.clone(),
                    checksum: m.checksum.clone(),
                };
                fixes.push((fixed, change));
            }
            Ok(fixes)
        })
    }

    /// Forgets the history rows of applied migrations whose files are gone.
    pub fn fix_missing(
        &mut self,
        set: &MigrationSet,
        dry_run: bool,
        observer: &mut dyn Observer,
    ) -> Result<Vec<Fixed>, Error> {
        self.fix(dry_run, observer, |history| {
            Ok(plan::statuses(set.migrations(), history)
                .filter(|e| e.state == State::Missing)
                .map(|e| {
                    let fixed = Fixed {
                        version: e.version,
                        name: e.name.to_string(),
                        action: "forgot its history row (the file is gone)".into(),
                    };
                    (fixed, Change::Delete { version: e.version })
                })
                .collect())
        })
    }

    /// Resolves a dirty migration: one that started outside a transaction
    /// and never finished.
    pub fn fix_dirty(
        &mut self,
        version: u64,
        resolution: DirtyResolution,
        dry_run: bool,
        observer: &mut dyn Observer,
    ) -> Result<Fixed, Error> {
        let mut fixed = self.fix(dry_run, observer, |history| {
            let Some(row) = history.iter().find(|r| r.version == version) else {
                return Err(Error::Target(TargetError::NotDirty(version)));
            };
            if row.state != RowState::Started {
                return Err(Error::Target(TargetError::NotDirty(version)));
            }
            let (change, action) = match resolution {
                DirtyResolution::Applied => (
                    Change::SetState {
                        version,
                        state: RowState::Applied,
                        duration_ms: None,
                    },
                    "recorded as applied",
                ),
                DirtyResolution::Forget => (
                    Change::Delete { version },
                    "forgot its history row; `upgrade` will run it again",
                ),
            };
            let fixed = Fixed {
                version,
                name: row.name.clone(),
                action: action.into(),
            };
            Ok(vec![(fixed, change)])
        })?;
        Ok(fixed.remove(0))
    }

    /// The shape of every `fix`: work out the changes from history without
    /// the lock; if there are any, take the lock, work them out again from
    /// history as it is then, and write them fenced.
    fn fix<F>(
        &mut self,
        dry_run: bool,
        observer: &mut dyn Observer,
        changes: F,
    ) -> Result<Vec<Fixed>, Error>
    where
        F: Fn(&[HistoryRow]) -> Result<Vec<(Fixed, Change<'static>)>, Error>,
    {
        let history = self.history()?;
        let planned = changes(&history)?;
        if dry_run || planned.is_empty() {
            return Ok(planned.into_iter().map(|(f, _)| f).collect());
        }
        let held = match self.lock("fix", observer, None, &mut |_| lock::Work::Left(None))? {
            Locking::Held(held) => held,
            Locking::NotNeeded => return Ok(Vec::new()),
        };
        let result = (|| -> Result<Vec<Fixed>, Error> {
            let history = self.history()?;
            let (fixed, changes): (Vec<Fixed>, Vec<Change<'_>>) =
                changes(&history)?.into_iter().unzip();
            if changes.is_empty() {
                return Ok(fixed);
            }
            let fence = held.as_ref().map(|h| &h.fence);
            retry(|| self.driver.change_history(&changes, fence)).map_err(|e| match e {
                Error::LockLost(mut lost) => {
                    lost.at = None;
                    Error::LockLost(lost)
                }
                other => other,
            })?;
            Ok(fixed)
        })();
        self.unlock(held, "fix", observer);
        result
    }

    /// Refuses, before anything runs, sections that would end inside a
    /// quote or comment, and transaction control inside a section that
    /// lockstep wraps in a transaction.
    fn preflight(&self, plan: &[&Migration], direction: Direction) -> Result<(), Error> {
        let dialect = self.driver.dialect();
        for m in plan {
            let section = match direction {
                Direction::Up => &m.up,
                Direction::Down => down(m),
            };
            check_section(section, dialect)?;
        }
        Ok(())
    }

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
        let owner = self.options.executor.clone();
        let host = self.host.clone();
        let who = Actor {
            owner: &owner,
            host: &host,
            pid: i64::from(std::process::id()),
            command: &held.command,
        };
        let _ = self.driver.log_lost(&held.fence, &who, detail);
        Error::LockLost(Box::new(LockLost {
            token: held.fence.token,
            at: m.map(|m| Named {
                version: m.version,
                name: m.name.clone(),
            }),
            unrecorded,
            completed: report.steps.clone(),
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn run_one(
        &mut self,
        m: &Migration,
        direction: Direction,
        index: usize,
        total: usize,
        observer: &mut dyn Observer,
        report: &mut RunReport,
        held: Option<&Held>,
    ) -> Result<(), Error> {
        self.checkpoint(m, held, report)?;
        let section = match direction {
            Direction::Up => &m.up,
            Direction::Down => down(m),
        };
        observer.event(&Event::Started {
            direction,
            migration: m,
            index,
            total,
        });
        self.driver.fresh_session()?;
        let dialect = self.driver.dialect();
        let fence = held.map(|h| &h.fence);
        let duration = if section.no_transaction {
            self.run_without_transaction(m, section, direction, report, held)?
        } else {
            let token = fence.map(|f| f.token);
            let change = match direction {
                Direction::Up => Change::Insert(new_row(m, &self.options.executor, false, token)),
                Direction::Down => Change::Delete { version: m.version },
            };
            let steps = [TxStep { section, change }];
            let mut took = Duration::ZERO;
            let mut attempts = 0;
            loop {
                attempts += 1;
                self.cancel.interruptible(true);
                let result = self
                    .driver
                    .run_transaction(&steps, fence, &mut |_, d| took = d);
                self.cancel.interruptible(false);
                match result {
                    Ok(()) => break,
                    Err(StepFailure { lost: true, .. }) => {
                        let held = held.expect("only fenced transactions lose the lock");
                        return Err(self.lost(
                            held,
                            Some(m),
                            false,
                            report,
                            "a fenced transaction found the token changed",
                        ));
                    }
                    // Asked to stop, and rolled back whole: that is the
                    // stop, whether the statement saw the interrupt or
                    // failed otherwise while it came (SQLite's busy wait
                    // does not see it, and ends in SQLITE_BUSY).
                    Err(StepFailure { .. }) if self.cancel.is_cancelled() => {
                        return Err(Error::Cancelled {
                            completed: report.steps.clone(),
                        });
                    }
                    // Rolled back whole: running it again is safe.
                    Err(StepFailure { db, .. }) if db.is_retryable() && attempts <= RETRIES => {
                        continue
                    }
                    Err(StepFailure { db, statement, .. }) => {
                        let context = Context {
                            statement,
                            ..Context::default()
                        };
                        return Err(failure(
                            m, section, direction, *db, report, dialect, context,
                        ));
                    }
                }
            }
            took
        };
        let step = Step {
            version: m.version,
            name: m.name.clone(),
            duration,
            no_transaction: section.no_transaction,
        };
        observer.event(&Event::Finished {
            direction,
            step: &step,
            index,
            total,
        });
        report.steps.push(step);
        Ok(())
    }

    /// Runs a `-- lockstep:no-transaction` section statement by statement.
    /// The history row says `started` while it runs, so that a crash leaves
    /// it dirty rather than silently half-applied. The row's writes before
    /// and after are fenced; the statements between cannot be.
    fn run_without_transaction(
        &mut self,
        m: &Migration,
        section: &Section,
        direction: Direction,
        report: &RunReport,
        held: Option<&Held>,
    ) -> Result<Duration, Error> {
        let statements =
            sql::split(&section.sql, self.driver.dialect()).expect("checked by preflight");
        let fence = held.map(|h| &h.fence);
        let token = fence.map(|f| f.token);
        // Owned: the history writes below borrow the migrator mutably.
        let executor = self.options.executor.clone();
        let (begin, undo_begin) = match direction {
            Direction::Up => (
                Change::Insert(new_row(m, &executor, true, token)),
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
        };
        self.record(&begin, m, held, false, report)?;
        let started = Instant::now();
        let dialect = self.driver.dialect();
        for (i, statement) in statements.iter().enumerate() {
            let text = &section.sql[statement.range.clone()];
            if let Err(mut db) = self.driver.run_statement(text) {
                db.position = db.position.map(|p| p + statement.range.start);
                let mut context = Context {
                    statement: Some(StatementAt {
                        index: i,
                        offset: statement.range.start,
                    }),
                    ..Context::default()
                };
                if i == 0 {
                    // Nothing ran: the failure leaves the database as it was.
                    self.record(&undo_begin, m, held, false, report)?;
                } else {
                    context.dirty = Some(DirtyDetail {
                        statements_done: i,
                        statements_total: statements.len(),
                    });
                }
                return Err(failure(m, section, direction, db, report, dialect, context));
            }
        }
        let took = started.elapsed();
        let finish = match direction {
            Direction::Up => Change::SetState {
                version: m.version,
                state: RowState::Applied,
                duration_ms: Some(i64::try_from(took.as_millis()).unwrap_or(i64::MAX)),
            },
            Direction::Down => Change::Delete { version: m.version },
        };
        self.record(&finish, m, held, true, report)?;
        Ok(took)
    }

    /// Writes one history change in a fenced transaction of its own; a lost
    /// lock becomes the run's error. `unrecorded`: the migration already ran.
    fn record(
        &mut self,
        change: &Change<'_>,
        m: &Migration,
        held: Option<&Held>,
        unrecorded: bool,
        report: &RunReport,
    ) -> Result<(), Error> {
        let fence = held.map(|h| &h.fence);
        match retry(|| {
            self.driver
                .change_history(std::slice::from_ref(change), fence)
        }) {
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

    fn run_single_transaction(
        &mut self,
        plan: &[&Migration],
        observer: &mut dyn Observer,
        report: &mut RunReport,
        held: Option<&Held>,
    ) -> Result<(), Error> {
        self.checkpoint(plan[0], held, report)?;
        self.driver.fresh_session()?;
        let fence = held.map(|h| &h.fence);
        let token = fence.map(|f| f.token);
        let steps: Vec<TxStep<'_>> = plan
            .iter()
            .map(|m| TxStep {
                section: &m.up,
                change: Change::Insert(new_row(m, &self.options.executor, false, token)),
            })
            .collect();
        let total = plan.len();
        let mut durations = vec![Duration::ZERO; total];
        let mut attempts = 0;
        let failed = loop {
            attempts += 1;
            observer.event(&Event::Started {
                direction: Direction::Up,
                migration: plan[0],
                index: 0,
                total,
            });
            self.cancel.interruptible(true);
            let result = self.driver.run_transaction(&steps, fence, &mut |i, d| {
                durations[i] = d;
                if i + 1 < total {
                    observer.event(&Event::Started {
                        direction: Direction::Up,
                        migration: plan[i + 1],
                        index: i + 1,
                        total,
                    });
                }
            });
            self.cancel.interruptible(false);
            match result {
                Ok(()) => break None,
                Err(f) if f.db.is_retryable() && !f.lost && attempts <= RETRIES => continue,
                Err(f) => break Some(f),
            }
        };
        if let Some(StepFailure {
            index,
            db,
            lost,
            statement,
        }) = failed
        {
            if lost {
                let held = held.expect("only fenced transactions lose the lock");
                return Err(self.lost(
                    held,
                    Some(plan[0]),
                    false,
                    report,
                    "a fenced transaction found the token changed",
                ));
            }
            if self.cancel.is_cancelled() {
                return Err(Error::Cancelled {
                    completed: Vec::new(),
                });
            }
            let completed = RunReport {
                direction: Direction::Up,
                steps: plan[..index]
                    .iter()
                    .zip(&durations)
                    .map(|(m, d)| Step {
                        version: m.version,
                        name: m.name.clone(),
                        duration: *d,
                        no_transaction: false,
                    })
                    .collect(),
                dry_run: false,
            };
            let m = plan[index];
            let context = Context {
                statement,
                all_rolled_back: true,
                ..Context::default()
            };
            let dialect = self.driver.dialect();
            return Err(failure(
                m,
                &m.up,
                Direction::Up,
                *db,
                &completed,
                dialect,
                context,
            ));
        }
        for (index, (m, duration)) in plan.iter().zip(durations).enumerate() {
            let step = Step {
                version: m.version,
                name: m.name.clone(),
                duration,
                no_transaction: false,
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
}

/// Runs `f` again when a serialization failure or deadlock rolled it back.
fn retry<T>(mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match f() {
            Err(e) if e.is_retryable() && attempts <= RETRIES => continue,
            other => return other,
        }
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

fn down(m: &Migration) -> &Section {
    m.down
        .as_ref()
        .expect("the planner only plans rollbacks with a down section")
}

fn planned_step(m: &Migration, section: &Section) -> Step {
    Step {
        version: m.version,
        name: m.name.clone(),
        duration: Duration::ZERO,
        no_transaction: section.no_transaction,
    }
}

/// What a failure says beyond the migration and the engine's message.
#[derive(Default)]
struct Context {
    /// The statement that failed, where the engine or lockstep knows it.
    statement: Option<StatementAt>,
    dirty: Option<DirtyDetail>,
    all_rolled_back: bool,
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
        migration: Named {
            version: m.version,
            name: m.name.clone(),
        },
        path: section.path.clone(),
        line_col: db.position.map(|p| section.position(p)),
        statement,
        db,
        completed: report.steps.clone(),
        dirty: context.dirty,
        all_rolled_back: context.all_rolled_back,
    }))
}

/// At most `max` characters of `text`, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Checks a section for the engine it will run on: it must not end inside a
/// quote or comment (lockstep appends SQL after it), and a section that runs
/// in lockstep's transaction must not end that transaction itself.
pub fn check_section(section: &Section, dialect: Dialect) -> Result<(), SourceError> {
    let at = |offset: usize| section.position(offset).0;
    let statements = sql::split(&section.sql, dialect).map_err(|e| SourceError {
        path: section.path.clone(),
        line: Some(at(e.offset)),
        message: format!(
            "unterminated {} (it runs to the end of the section)",
            e.what
        ),
        hint: Some("close it; a section must end outside any quote or comment".into()),
    })?;
    if !section.no_transaction {
        if let Some(s) = statements.iter().find(|s| s.is_transaction_control()) {
            let text = section.sql[s.range.clone()].trim_end_matches(';').trim();
            return Err(SourceError {
                path: section.path.clone(),
                line: Some(at(s.range.start)),
                message: format!(
                    "`{text}` would end the transaction lockstep runs this migration in, separating it from its history row"
                ),
                hint: Some(
                    "remove it (lockstep wraps each migration in a transaction), or put `-- lockstep:no-transaction` in the section"
                        .into(),
                ),
            });
        }
    }
    Ok(())
}
