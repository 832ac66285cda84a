//! The run loop: plan, check, apply, record. Written once for every engine.

use std::time::{Duration, Instant};

use crate::driver::{self, Change, Driver, NewRow, StepFailure, TxStep};
use crate::error::{DbMessage, Direction, DirtyDetail, Error, MigrationFailure, Step};
use crate::history::{HistoryRow, RowState, TableName};
use crate::plan::{self, Named, State, Target, TargetError};
use crate::source::{Migration, MigrationSet, Section, SourceError};
use crate::sql::{self, Dialect};
use crate::url::DatabaseUrl;

/// How a [`Migrator`] identifies itself and where it keeps history.
#[derive(Debug, Clone)]
pub struct Options {
    /// The history table (default `lockstep_history`).
    pub history_table: TableName,
    /// The executor id recorded as `applied_by` (default
    /// `<host>-<pid>-<random hex>`).
    pub executor: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history_table: TableName::default(),
            executor: crate::identity::default_executor(),
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

/// Runs migrations against one database.
pub struct Migrator {
    driver: Box<dyn Driver>,
    options: Options,
}

impl std::fmt::Debug for Migrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrator")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Migrator {
    /// Connects for commands that write. An SQLite file is created if it
    /// does not exist; lockstep's tables are created when first needed.
    pub fn connect(url: &DatabaseUrl, options: Options) -> Result<Migrator, Error> {
        Self::open(url, options, true)
    }

    /// Connects for commands that only read: an SQLite file that does not
    /// exist is not created, and reads as a database without history.
    pub fn connect_read_only(url: &DatabaseUrl, options: Options) -> Result<Migrator, Error> {
        Self::open(url, options, false)
    }

    fn open(url: &DatabaseUrl, options: Options, create: bool) -> Result<Migrator, Error> {
        crate::identity::check_executor(&options.executor).map_err(|message| Error::Config {
            message,
            hint: None,
        })?;
        let driver = driver::open(url, &options.history_table, "lockstep", create)?;
        Ok(Migrator { driver, options })
    }

    /// The options in use.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The history rows ordered by version; empty when the history table
    /// does not exist. Creates nothing.
    pub fn history(&mut self) -> Result<Vec<HistoryRow>, Error> {
        Ok(self.driver.read_history()?.unwrap_or_default())
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
    /// transaction with its history row.
    pub fn upgrade(
        &mut self,
        set: &MigrationSet,
        options: &UpgradeOptions,
        observer: &mut dyn Observer,
    ) -> Result<RunReport, Error> {
        let history = self.driver.read_history()?;
        let plan = plan::plan_upgrade(
            set.migrations(),
            history.as_deref().unwrap_or_default(),
            options.target,
            options.allow_out_of_order,
        )?;
        let mut report = RunReport {
            direction: Direction::Up,
            steps: Vec::new(),
            dry_run: options.dry_run,
        };
        // Nothing to do: no table is created, nothing is written.
        if plan.is_empty() {
            return Ok(report);
        }
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
        if options.dry_run {
            report.steps = plan.iter().map(|m| planned_step(m, &m.up)).collect();
            return Ok(report);
        }
        if history.is_none() {
            self.driver.create_tables()?;
            // Read again: on PostgreSQL this also pins the schema lockstep's
            // tables live in.
            self.driver.read_history()?;
        }
        observer.event(&Event::Planned {
            direction: Direction::Up,
            migrations: &plan,
        });
        if options.single_transaction {
            self.run_single_transaction(&plan, observer, &mut report)?;
        } else {
            for (index, m) in plan.iter().enumerate() {
                self.run_one(m, Direction::Up, index, plan.len(), observer, &mut report)?;
            }
        }
        Ok(report)
    }

    /// Reverts applied migrations, newest version first, each with its down
    /// section in a transaction that also deletes its history row.
    pub fn rollback(
        &mut self,
        set: &MigrationSet,
        options: &RollbackOptions,
        observer: &mut dyn Observer,
    ) -> Result<RunReport, Error> {
        let history = self.driver.read_history()?.unwrap_or_default();
        let plan = plan::plan_rollback(set.migrations(), &history, options.target)?;
        let mut report = RunReport {
            direction: Direction::Down,
            steps: Vec::new(),
            dry_run: options.dry_run,
        };
        if plan.is_empty() {
            return Ok(report);
        }
        self.preflight(&plan, Direction::Down)?;
        if options.dry_run {
            report.steps = plan.iter().map(|m| planned_step(m, down(m))).collect();
            return Ok(report);
        }
        observer.event(&Event::Planned {
            direction: Direction::Down,
            migrations: &plan,
        });
        for (index, m) in plan.iter().enumerate() {
            self.run_one(m, Direction::Down, index, plan.len(), observer, &mut report)?;
        }
        Ok(report)
    }

    /// Records the current checksum (and name) of every applied migration
    /// whose file changed. Nothing is re-run.
    pub fn fix_checksums(
        &mut self,
        set: &MigrationSet,
        dry_run: bool,
    ) -> Result<Vec<Fixed>, Error> {
        let history = self.history()?;
        let mut fixed = Vec::new();
        let mut changes = Vec::new();
        for e in plan::status(set.migrations(), &history) {
            let (Some(m), Some(row)) = (e.migration, e.row) else {
                continue;
            };
            if e.state != State::Modified {
                continue;
            }
            let mut action = format!(
                "recorded checksum {} (was {})",
                short(&m.checksum),
                short(&row.checksum)
            );
            if row.name != m.name {
                action.push_str(&format!(" and name `{}` (was `{}`)", m.name, row.name));
            }
            fixed.push(Fixed {
                version: m.version,
                name: m.name.clone(),
                action,
            });
            changes.push(Change::SetChecksum {
                version: m.version,
                name: &m.name,
                checksum: &m.checksum,
            });
        }
        self.write_fixes(&changes, dry_run)?;
        Ok(fixed)
    }

    /// Forgets the history rows of applied migrations whose files are gone.
    pub fn fix_missing(&mut self, set: &MigrationSet, dry_run: bool) -> Result<Vec<Fixed>, Error> {
        let history = self.history()?;
        let mut fixed = Vec::new();
        let mut changes = Vec::new();
        for e in plan::status(set.migrations(), &history) {
            if e.state != State::Missing {
                continue;
            }
            fixed.push(Fixed {
                version: e.version,
                name: e.name.to_string(),
                action: "forgot its history row (the file is gone)".into(),
            });
            changes.push(Change::Delete { version: e.version });
        }
        self.write_fixes(&changes, dry_run)?;
        Ok(fixed)
    }

    /// Resolves a dirty migration: one that started outside a transaction
    /// and never finished.
    pub fn fix_dirty(
        &mut self,
        version: u64,
        resolution: DirtyResolution,
        dry_run: bool,
    ) -> Result<Fixed, Error> {
        let history = self.history()?;
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
        self.write_fixes(&[change], dry_run)?;
        Ok(Fixed {
            version,
            name: row.name.clone(),
            action: action.into(),
        })
    }

    fn write_fixes(&mut self, changes: &[Change<'_>], dry_run: bool) -> Result<(), Error> {
        if dry_run || changes.is_empty() {
            return Ok(());
        }
        self.driver.change_history(changes)
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

    fn run_one(
        &mut self,
        m: &Migration,
        direction: Direction,
        index: usize,
        total: usize,
        observer: &mut dyn Observer,
        report: &mut RunReport,
    ) -> Result<(), Error> {
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
        let duration = if section.no_transaction {
            self.run_without_transaction(m, section, direction, report)?
        } else {
            let change = match direction {
                Direction::Up => Change::Insert(new_row(m, &self.options.executor, false)),
                Direction::Down => Change::Delete { version: m.version },
            };
            let steps = [TxStep { section, change }];
            let mut took = Duration::ZERO;
            let result = self.driver.run_transaction(&steps, &mut |_, d| took = d);
            if let Err(StepFailure { db, .. }) = result {
                return Err(failure(m, section, direction, db, report, None, false));
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
    /// it dirty rather than silently half-applied.
    fn run_without_transaction(
        &mut self,
        m: &Migration,
        section: &Section,
        direction: Direction,
        report: &RunReport,
    ) -> Result<Duration, Error> {
        let statements =
            sql::split(&section.sql, self.driver.dialect()).expect("checked by preflight");
        let (begin, finish, undo_begin) = match direction {
            Direction::Up => (
                Change::Insert(new_row(m, &self.options.executor, true)),
                Change::SetState {
                    version: m.version,
                    state: RowState::Applied,
                    duration_ms: None,
                },
                Change::Delete { version: m.version },
            ),
            Direction::Down => (
                Change::SetState {
                    version: m.version,
                    state: RowState::Started,
                    duration_ms: None,
                },
                Change::Delete { version: m.version },
                Change::SetState {
                    version: m.version,
                    state: RowState::Applied,
                    duration_ms: None,
                },
            ),
        };
        self.driver.change_history(&[begin])?;
        let started = Instant::now();
        for (i, statement) in statements.iter().enumerate() {
            let text = &section.sql[statement.range.clone()];
            if let Err(mut db) = self.driver.run_statement(text) {
                db.position = db.position.map(|p| p + statement.range.start);
                if i == 0 {
                    // Nothing ran: the failure leaves the database as it was.
                    self.driver.change_history(&[undo_begin])?;
                    return Err(failure(m, section, direction, db, report, None, false));
                }
                let dirty = DirtyDetail {
                    statements_done: i,
                    statements_total: statements.len(),
                };
                return Err(failure(
                    m,
                    section,
                    direction,
                    db,
                    report,
                    Some(dirty),
                    false,
                ));
            }
        }
        let took = started.elapsed();
        let finish = match finish {
            Change::SetState { version, state, .. } => Change::SetState {
                version,
                state,
                duration_ms: Some(i64::try_from(took.as_millis()).unwrap_or(i64::MAX)),
            },
            other => other,
        };
        self.driver.change_history(&[finish])?;
        Ok(took)
    }

    fn run_single_transaction(
        &mut self,
        plan: &[&Migration],
        observer: &mut dyn Observer,
        report: &mut RunReport,
    ) -> Result<(), Error> {
        let steps: Vec<TxStep<'_>> = plan
            .iter()
            .map(|m| TxStep {
                section: &m.up,
                change: Change::Insert(new_row(m, &self.options.executor, false)),
            })
            .collect();
        let total = plan.len();
        let mut durations = vec![Duration::ZERO; total];
        observer.event(&Event::Started {
            direction: Direction::Up,
            migration: plan[0],
            index: 0,
            total,
        });
        let result = self.driver.run_transaction(&steps, &mut |i, d| {
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
        if let Err(StepFailure { index, db }) = result {
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
            return Err(failure(m, &m.up, Direction::Up, db, &completed, None, true));
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

fn new_row<'a>(m: &'a Migration, executor: &'a str, started: bool) -> NewRow<'a> {
    NewRow {
        version: m.version,
        name: &m.name,
        checksum: &m.checksum,
        started,
        applied_by: executor,
        lock_token: None,
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

fn short(checksum: &str) -> &str {
    let end = checksum.len().min("sha256:".len() + 12);
    &checksum[..end]
}

fn failure(
    m: &Migration,
    section: &Section,
    direction: Direction,
    db: DbMessage,
    report: &RunReport,
    dirty: Option<DirtyDetail>,
    all_rolled_back: bool,
) -> Error {
    Error::Migration(Box::new(MigrationFailure {
        direction,
        migration: Named {
            version: m.version,
            name: m.name.clone(),
        },
        path: section.path.clone(),
        line_col: db.position.map(|p| section.position(p)),
        db,
        completed: report.steps.clone(),
        dirty,
        all_rolled_back,
    }))
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
