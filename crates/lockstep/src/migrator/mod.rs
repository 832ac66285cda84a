//! The run loop: plan, check, apply, record. Written once for every engine.
//!
//! - `outline`: the one outline of every command that writes under the
//!   lock (read, plan, dry run, lock, plan again, run, release);
//! - `commands`: what `upgrade`, `rollback` and each `fix` plan and do
//!   within it;
//! - `apply`: running a migration, in a transaction or outside one, and
//!   recording it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::driver::{self, Canceller, Driver};
use crate::error::{Direction, Error};
use crate::history::{HistoryRead, HistoryRow, RepeatRow, TableName};
use crate::lock::{self, Actor, LockEvent, LockInfo, LockOptions, LogEntry};
use crate::plan::{self, Target, TargetError};
use crate::remedy::Remedy;
use crate::source::{Migration, MigrationSet, Section, SourceError, Step};
use crate::sql::{self, Dialect};
use crate::url::DatabaseUrl;
use crate::version::Version;
use crate::waits::{Blocked, BlockedReport, StatementOptions, Watch};

mod apply;
mod commands;
mod database;
mod import;
mod outline;

pub use database::{create_database, drop_database, wait_for_database, DatabaseChange};
pub use import::{Imported, Tool};

use commands::{Fix, Rollback, Upgrade};

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
    /// How migrations' statements wait for the application's table locks.
    pub statements: StatementOptions,
}

impl Options {
    /// Checks an executor id given by a user: printable, no control
    /// characters, at most 200 characters.
    pub fn check_executor(id: &str) -> Result<(), String> {
        crate::identity::check_executor(id)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history_table: TableName::default(),
            executor: crate::identity::default_executor(),
            lock: Some(LockOptions::default()),
            statements: StatementOptions::default(),
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
    /// A statement of a migration gave up waiting for a lock (see
    /// [`StatementOptions`]), and everything the try did was undone: the
    /// migration (outside a transaction, the statement) runs again after
    /// `wait`.
    LockRetry {
        /// The migration.
        migration: &'a Migration,
        /// The try that gave up, from 1.
        try_number: u32,
        /// The most tries there will be.
        tries: u32,
        /// How long until the next.
        wait: Duration,
        /// What the statement waited for, when it was seen.
        blocked: Option<&'a Blocked>,
    },
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
    /// The migration (0 for a repeatable one).
    pub version: Version,
    /// Versioned, or repeatable (`import` records a repeatable migration's
    /// run).
    pub kind: crate::source::Kind,
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
    prefetched: Option<Result<Option<HistoryRead>, Error>>,
    /// Told when a migration's statement waits for a lock.
    on_blocked: Option<BlockedReport>,
    /// Looks at who blocks the migrations' statements, while a run under
    /// the lock applies them.
    watch: Option<Watch>,
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
        Options::check_executor(&options.executor).map_err(|message| Error::Config {
            message,
            remedy: None,
        })?;
        if let Some(lock) = &options.lock {
            lock.check().map_err(|message| Error::Config {
                message,
                remedy: None,
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
            on_blocked: None,
            watch: None,
        })
    }

    /// Has `report` told, from another thread, when a migration's statement
    /// has waited for a lock a quarter of a second, and again whenever what it
    /// waits for changes: the lock, and the sessions that hold it. The
    /// same shows in [`Event::LockRetry`] and in the error of a migration
    /// that gave up.
    pub fn on_blocked(&mut self, report: BlockedReport) {
        self.on_blocked = Some(report);
    }

    /// Reads the history now, for the next command's first read (every
    /// command reads it once without the lock before anything else). A
    /// caller with other work to do meanwhile, such as reading the
    /// migration files on another thread, overlaps that work with the
    /// query's round trip. Taking the lock discards an unused read: under
    /// the lock, history is always read afresh.
    ///
    /// Meanwhile the connection lets go of what it can build again: on
    /// SQLite, the database's parsed schema (megabytes for thousands of
    /// tables), whose memory the files' records then reuse. A command that goes on
    /// to use the connection pays one more parse of the schema; one that
    /// finds nothing to do (a no-op `upgrade`, `status`) never does.
    pub fn prefetch_history(&mut self) {
        self.prefetched = Some(self.driver.read_history());
        self.driver.rest();
    }

    /// The history: the prefetched read when there is one, else a fresh
    /// one.
    fn read_history(&mut self) -> Result<Option<HistoryRead>, Error> {
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

    /// The lock as it stands, without waiting: for `lock status`. With a
    /// holder, what its migration is doing right now, where the engine can
    /// see it.
    pub fn lock_info(&mut self) -> Result<LockInfo, Error> {
        let scope = self.scope();
        let mut info = self.driver.inspect_lock(&scope)?.unwrap_or(LockInfo {
            scope: scope.clone(),
            ..LockInfo::default()
        });
        if info.is_held() {
            info.activity = self.driver.holder_activity(&scope);
        }
        Ok(info)
    }

    /// Frees the lock whoever holds it, if its token is still the one in
    /// `seen` (what the user was shown): bumps the token, so that a holder
    /// that is in fact running stops at its next migration. Waits up to
    /// `wait` for a running migration to commit. `false` when the lock
    /// changed meanwhile.
    pub fn force_release(&mut self, seen: &LockInfo, wait: Duration) -> Result<bool, Error> {
        LockOptions::check_timeout(wait).map_err(|message| Error::Config {
            message,
            remedy: None,
        })?;
        let scope = self.scope();
        let who = Actor::this_process(&self.options.executor, &self.host, "lock release");
        self.driver.force_release(&lock::ForcedRelease {
            scope: &scope,
            expected: seen,
            actor: &who,
            wait,
        })
    }

    /// The newest events of the lock's audit log, newest first.
    pub fn lock_log(&mut self, limit: usize) -> Result<Vec<LogEntry>, Error> {
        let scope = self.scope();
        self.driver.read_lock_log(&scope, limit)
    }

    /// Whether a section runs outside a transaction on this database:
    /// marked `-- lockstep:no-transaction`, or on MariaDB/MySQL holding DDL,
    /// which commits by itself. Such a migration is recorded `started`
    /// first, and a failure half-way leaves it dirty.
    pub fn runs_outside_transaction(&self, section: &Section) -> bool {
        apply::outside_transaction(section, self.driver.dialect())
    }

    /// The options in use.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The history rows ordered by version; empty when the history table
    /// does not exist. Creates nothing.
    pub fn history(&mut self) -> Result<Vec<HistoryRow>, Error> {
        Ok(self
            .read_history()?
            .map(|read| read.rows)
            .unwrap_or_default())
    }

    /// The last runs of the repeatable migrations, by name; empty when
    /// none ever ran. Creates nothing.
    pub fn repeatables(&mut self) -> Result<Vec<RepeatRow>, Error> {
        self.driver.read_repeatables()
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
        self.run_locked(&Upgrade { set, options }, options.dry_run, observer)
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
        self.run_locked(&Rollback { set, options }, options.dry_run, observer)
    }

    /// Records the current checksum (and name) of every applied migration
    /// whose file changed. Nothing is re-run.
    pub fn fix_checksums(
        &mut self,
        set: &MigrationSet,
        dry_run: bool,
        observer: &mut dyn Observer,
    ) -> Result<Vec<Fixed>, Error> {
        self.run_locked(
            &Fix::new("fix", |history: &[HistoryRow], _: &[RepeatRow]| {
                Ok(commands::checksum_fixes(set, history))
            }),
            dry_run,
            observer,
        )
    }

    /// Forgets the history rows of applied migrations whose files are gone.
    pub fn fix_missing(
        &mut self,
        set: &MigrationSet,
        dry_run: bool,
        observer: &mut dyn Observer,
    ) -> Result<Vec<Fixed>, Error> {
        self.run_locked(
            &Fix::new("fix", |history: &[HistoryRow], _: &[RepeatRow]| {
                Ok(commands::missing_fixes(set, history))
            }),
            dry_run,
            observer,
        )
    }

    /// Resolves a dirty migration: one that started outside a transaction
    /// and never finished.
    pub fn fix_dirty(
        &mut self,
        version: Version,
        resolution: DirtyResolution,
        dry_run: bool,
        observer: &mut dyn Observer,
    ) -> Result<Fixed, Error> {
        let fix = Fix::new("fix", |history: &[HistoryRow], _: &[RepeatRow]| {
            commands::dirty_fix(version, resolution, history)
        });
        self.run_locked(&fix, dry_run, observer)?
            .into_iter()
            .next()
            .ok_or(Error::Target(TargetError::NotDirty(version)))
    }
}

impl Migrator {
    /// Starts managing a database that already has its schema: every
    /// migration up to and including `version` that history does not hold
    /// is recorded as applied, under the lock, without running. A dirty
    /// one among them is refused; `version` must be a migration's.
    pub fn baseline(
        &mut self,
        set: &MigrationSet,
        version: Version,
        dry_run: bool,
        observer: &mut dyn Observer,
    ) -> Result<Vec<Fixed>, Error> {
        let executor = self.options.executor.clone();
        let baseline = Fix::new("baseline", |history: &[HistoryRow], _: &[RepeatRow]| {
            commands::baseline_fixes(set, version, &executor, history)
        });
        self.run_locked(&baseline, dry_run, observer)
    }

    /// The newest applied migration (by version), if any.
    pub fn current(&mut self) -> Result<Option<HistoryRow>, Error> {
        Ok(self
            .history()?
            .into_iter()
            .filter(|r| r.state == crate::history::RowState::Applied)
            .max_by_key(|r| r.version))
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
        remedy: Some(Remedy::Text(
            "close it; a section must end outside any quote or comment".into(),
        )),
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
                remedy: Some(Remedy::Text(
                    "remove it (lockstep wraps each migration in a transaction), or put `-- lockstep:no-transaction` in the section"
                        .into(),
                )),
            });
        }
    }
    Ok(())
}
