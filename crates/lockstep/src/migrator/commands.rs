//! What each command that writes under the lock plans and does, within
//! the one outline of `outline`.

use super::apply::{outside_transaction, planned, retry, section};
use super::outline::Locked;
use super::{check_section, DirtyResolution, Event, Fixed, Migrator, Observer, RunReport};
use super::{RollbackOptions, UpgradeOptions};
use crate::error::{Direction, Error};
use crate::history::{Change, HistoryRow, NewRow, RepeatRow, RowState};
use crate::lock::Held;
use crate::plan::{self, Refusal, State, Target, TargetError};
use crate::remedy::Remedy;
use crate::source::{Hook, Kind, Migration, MigrationSet, Named};
use crate::sql::Dialect;
use crate::version::Version;

/// `upgrade`: the pending migrations, each in its own transaction (or all
/// in one).
pub(super) struct Upgrade<'s> {
    pub set: &'s MigrationSet,
    pub options: &'s UpgradeOptions,
}

impl<'s> Locked for Upgrade<'s> {
    type Plan = Vec<&'s Migration>;
    type Output = RunReport;
    fn command(&self) -> &'static str {
        "upgrade"
    }

    fn plan(
        &self,
        history: &[HistoryRow],
        repeats: &[RepeatRow],
        dialect: Dialect,
    ) -> Result<Self::Plan, Error> {
        let options = self.options;
        let mut plan = plan::plan_upgrade(
            self.set.migrations(),
            history,
            options.target,
            options.allow_out_of_order,
        )?;
        // An upgrade to a version short of the newest leaves the
        // repeatable ones for the upgrade that reaches the newest: they
        // are written against the schema the newest makes.
        if options.target == Target::default() {
            plan.extend(plan::plan_repeatables(self.set.repeatables(), repeats));
        }
        if !plan.is_empty() {
            let before = self.set.callback(Hook::BeforeUpgrade);
            let after = self.set.callback(Hook::AfterUpgrade);
            plan.splice(0..0, before);
            plan.extend(after);
        }
        preflight(&plan, Direction::Up, dialect)?;
        if options.single_transaction {
            if let Some(m) = plan.iter().find(|m| outside_transaction(&m.up, dialect)) {
                let why = if m.up.no_transaction {
                    "it is marked `-- lockstep:no-transaction`"
                } else {
                    "its DDL commits by itself on MariaDB/MySQL"
                };
                return Err(Error::Config {
                    message: format!(
                        "`--single-transaction` cannot include migration {}: {why}",
                        Named::of(m)
                    ),
                    remedy: Some(Remedy::SplitSingleTransaction),
                });
            }
        }
        Ok(plan)
    }

    fn reads_repeatables(&self) -> bool {
        !self.set.repeatables().is_empty()
    }

    fn is_empty(plan: &Self::Plan) -> bool {
        plan.is_empty()
    }

    fn unrun(&self, plan: Option<Self::Plan>, dialect: Dialect) -> RunReport {
        planned(
            Direction::Up,
            &plan.unwrap_or_default(),
            dialect,
            self.options.dry_run,
        )
    }

    fn run(
        &self,
        migrator: &mut Migrator,
        plan: Self::Plan,
        held: Option<&Held>,
        observer: &mut dyn Observer,
    ) -> Result<RunReport, Error> {
        if plan.iter().any(|m| matches!(m.kind(), Kind::Repeatable(_))) {
            retry(|| migrator.driver.create_repeatable_table())?;
        }
        make_room(migrator, plan.iter().map(|m| m.version))?;
        if self.options.single_transaction {
            let mut report = self.unrun(None, migrator.driver.dialect());
            observer.event(&Event::Planned {
                direction: Direction::Up,
                migrations: &plan,
            });
            migrator.run_single_transaction(&plan, observer, &mut report, held)?;
            Ok(report)
        } else {
            migrator.run_each(&plan, Direction::Up, held, observer)
        }
    }
}

/// `rollback`: the newest applied migrations, newest first.
pub(super) struct Rollback<'s> {
    pub set: &'s MigrationSet,
    pub options: &'s RollbackOptions,
}

impl<'s> Locked for Rollback<'s> {
    type Plan = Vec<&'s Migration>;
    type Output = RunReport;
    fn command(&self) -> &'static str {
        "rollback"
    }

    fn plan(
        &self,
        history: &[HistoryRow],
        _repeats: &[RepeatRow],
        dialect: Dialect,
    ) -> Result<Self::Plan, Error> {
        let plan = plan::plan_rollback(self.set.migrations(), history, self.options.target)?;
        preflight(&plan, Direction::Down, dialect)?;
        Ok(plan)
    }

    fn is_empty(plan: &Self::Plan) -> bool {
        plan.is_empty()
    }

    fn unrun(&self, plan: Option<Self::Plan>, dialect: Dialect) -> RunReport {
        planned(
            Direction::Down,
            &plan.unwrap_or_default(),
            dialect,
            self.options.dry_run,
        )
    }

    fn run(
        &self,
        migrator: &mut Migrator,
        plan: Self::Plan,
        held: Option<&Held>,
        observer: &mut dyn Observer,
    ) -> Result<RunReport, Error> {
        migrator.run_each(&plan, Direction::Down, held, observer)
    }
}

/// A change to the history that a `fix` (or `baseline`) makes, with what
/// it reports.
pub(super) type FixChange<'a> = (Fixed, Change<'a>);

/// Each `fix`, and `baseline`: history changes worked out from history,
/// written in one fenced transaction. Nothing is run.
pub(super) struct Fix<'a, F> {
    /// The command, as the lock's row and log name it.
    command: &'static str,
    plan: F,
    /// Whether `plan` needs the repeatable migrations' last runs.
    reads_repeatables: bool,
    changes: std::marker::PhantomData<FixChange<'a>>,
}

impl<'a, F> Fix<'a, F>
where
    F: Fn(&[HistoryRow], &[RepeatRow]) -> Result<Vec<FixChange<'a>>, Error>,
{
    /// A fix planned from history alone.
    pub fn new(command: &'static str, plan: F) -> Self {
        Fix {
            command,
            plan,
            reads_repeatables: false,
            changes: std::marker::PhantomData,
        }
    }

    /// A fix planned from history and the repeatable migrations' last runs.
    pub fn with_repeatables(command: &'static str, plan: F) -> Self {
        Fix {
            reads_repeatables: true,
            ..Fix::new(command, plan)
        }
    }
}

impl<'a, F> Locked for Fix<'a, F>
where
    F: Fn(&[HistoryRow], &[RepeatRow]) -> Result<Vec<FixChange<'a>>, Error>,
{
    type Plan = Vec<FixChange<'a>>;
    type Output = Vec<Fixed>;
    fn command(&self) -> &'static str {
        self.command
    }

    fn plan(
        &self,
        history: &[HistoryRow],
        repeats: &[RepeatRow],
        _dialect: Dialect,
    ) -> Result<Self::Plan, Error> {
        (self.plan)(history, repeats)
    }

    fn reads_repeatables(&self) -> bool {
        self.reads_repeatables
    }

    fn is_empty(plan: &Self::Plan) -> bool {
        plan.is_empty()
    }

    fn unrun(&self, plan: Option<Self::Plan>, _dialect: Dialect) -> Vec<Fixed> {
        plan.unwrap_or_default()
            .into_iter()
            .map(|(fixed, _)| fixed)
            .collect()
    }

    fn run(
        &self,
        migrator: &mut Migrator,
        plan: Self::Plan,
        held: Option<&Held>,
        _observer: &mut dyn Observer,
    ) -> Result<Vec<Fixed>, Error> {
        let (fixed, mut changes): (Vec<Fixed>, Vec<Change<'_>>) = plan.into_iter().unzip();
        let fence = held.map(|h| &h.fence);
        // A row recorded now carries the token it was written under.
        for change in &mut changes {
            match change {
                Change::Insert(row) => row.lock_token = fence.map(|f| f.token),
                Change::Repeated { lock_token, .. } => *lock_token = fence.map(|f| f.token),
                _ => {}
            }
        }
        if changes.iter().any(|c| matches!(c, Change::Repeated { .. })) {
            retry(|| migrator.driver.create_repeatable_table())?;
        }
        let inserted = changes.iter().filter_map(|c| match c {
            Change::Insert(row) => Some(row.version),
            _ => None,
        });
        make_room(migrator, inserted)?;
        retry(|| migrator.driver.change_history(&changes, fence)).map_err(|e| match e {
            // No migration was about to run.
            Error::LockLost(mut lost) => {
                lost.at = None;
                Error::LockLost(lost)
            }
            other => other,
        })?;
        Ok(fixed)
    }
}

/// Before the first dotted version is recorded in a history table whose
/// versions are whole numbers: the table widened to text versions (table
/// format 2), under the lock. A table that never meets one stays as older
/// releases read it.
fn make_room(
    migrator: &mut Migrator,
    mut recorded: impl Iterator<Item = Version>,
) -> Result<(), Error> {
    if recorded.any(|v| !v.is_whole()) {
        retry(|| migrator.driver.widen_versions())?;
    }
    Ok(())
}

/// `fix checksums`: the current checksum (and name) of every applied
/// migration whose file changed.
pub(super) fn checksum_fixes(
    set: &MigrationSet,
    history: &[HistoryRow],
) -> Vec<FixChange<'static>> {
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
            kind: Kind::Versioned,
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
    fixes
}

/// `fix missing`: forget the rows of applied migrations whose files are
/// gone.
pub(super) fn missing_fixes(set: &MigrationSet, history: &[HistoryRow]) -> Vec<FixChange<'static>> {
    plan::statuses(set.migrations(), history)
        .filter(|e| e.state == State::Missing)
        .map(|e| {
            let fixed = Fixed {
                version: e.version,
                kind: Kind::Versioned,
                name: e.name.to_string(),
                action: "forgot its history row (the file is gone)".into(),
            };
            (fixed, Change::Delete { version: e.version })
        })
        .collect()
}

/// `fix dirty`: record a dirty migration as applied, or forget it.
pub(super) fn dirty_fix(
    version: Version,
    resolution: DirtyResolution,
    history: &[HistoryRow],
) -> Result<Vec<FixChange<'static>>, Error> {
    let Some(row) = history
        .iter()
        .find(|r| r.version == version && r.state == RowState::Started)
    else {
        return Err(Error::Target(TargetError::NotDirty(version)));
    };
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
        kind: Kind::Versioned,
        name: row.name.clone(),
        action: action.into(),
    };
    Ok(vec![(fixed, change)])
}

/// `baseline`: every migration up to and including `version` that history
/// does not hold is recorded as applied, without running: the database
/// already has what they make. A dirty one among them is refused.
pub(super) fn baseline_fixes<'a>(
    set: &'a MigrationSet,
    version: Version,
    executor: &'a str,
    history: &[HistoryRow],
) -> Result<Vec<FixChange<'a>>, Error> {
    if set.get(version).is_none() {
        return Err(Error::Target(TargetError::UnknownVersion(version)));
    }
    let versions: Vec<Version> = set
        .migrations()
        .iter()
        .map(|m| m.version)
        .take_while(|&v| v <= version)
        .collect();
    record_applied(
        set,
        &versions,
        executor,
        "recorded as applied without running it (baseline)",
        history,
    )
}

/// The migrations of `versions` (each a file of `set`) that history does
/// not hold, recorded as applied without running; a dirty one among them
/// is refused.
pub(super) fn record_applied<'a>(
    set: &'a MigrationSet,
    versions: &[Version],
    executor: &'a str,
    action: &str,
    history: &[HistoryRow],
) -> Result<Vec<FixChange<'a>>, Error> {
    let dirty: Vec<Named> = history
        .iter()
        .filter(|r| versions.contains(&r.version) && r.state == RowState::Started)
        .map(|r| Named::versioned(r.version, &r.name))
        .collect();
    if !dirty.is_empty() {
        return Err(Error::Refused(Refusal::Dirty(dirty)));
    }
    Ok(versions
        .iter()
        .filter_map(|&v| set.get(v))
        .filter(|m| {
            history
                .binary_search_by_key(&m.version, |r| r.version)
                .is_err()
        })
        .map(|m| {
            let fixed = Fixed {
                version: m.version,
                kind: Kind::Versioned,
                name: m.name.clone(),
                action: action.to_string(),
            };
            let row = NewRow {
                version: m.version,
                name: &m.name,
                checksum: &m.checksum,
                started: false,
                applied_by: executor,
                lock_token: None,
            };
            (fixed, Change::Insert(row))
        })
        .collect())
}

/// Refuses, before anything runs, sections that would end inside a quote
/// or comment, and transaction control inside a section that lockstep
/// wraps in a transaction.
fn preflight(plan: &[&Migration], direction: Direction, dialect: Dialect) -> Result<(), Error> {
    for m in plan {
        check_section(section(m, direction), dialect)?;
    }
    Ok(())
}
