//! Planning: migrations on disk plus history rows in, a plan or a refusal
//! out. Pure functions, no database.
use crate::history::{HistoryRow, RepeatRow, RowState};
use crate::source::{Checksum, Kind, Migration, MigrationSet, Named, Repeat};
use crate::version::Version;

/// What a migration is, comparing its file with its history row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Recorded, and the file matches.
    Applied,
    /// On disk, not recorded.
    Pending,
    /// Recorded, but the file's checksum or name differs.
    Modified,
    /// Recorded, but the file is gone.
    Missing,
    /// A no-transaction migration that started and never finished.
    Dirty,
}

impl State {
    /// The lowercase name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Applied => "applied",
            State::Pending => "pending",
            State::Modified => "modified",
            State::Missing => "missing",
            State::Dirty => "dirty",
        }
    }
}

/// One line of `status`.
#[derive(Debug, Clone)]
pub struct StatusEntry<'a> {
    /// The version.
    pub version: Version,
    /// The file's name for it, or the recorded one when the file is gone.
    pub name: &'a str,
    /// The state.
    pub state: State,
    /// The file, when there is one.
    pub migration: Option<&'a Migration>,
    /// The history row, when there is one.
    pub row: Option<&'a HistoryRow>,
    /// A pending migration older than the newest applied one: `upgrade`
    /// refuses it unless out-of-order is allowed.
    pub out_of_order: bool,
}

impl MigrationSet {
    /// Each migration, file or history row, compared with the other, in
    /// version order: what `status` shows.
    pub fn status<'a>(
        &'a self,
        history: &'a [HistoryRow],
    ) -> impl Iterator<Item = StatusEntry<'a>> {
        statuses(self.migrations(), history)
    }
}

/// What a repeatable migration is, comparing its file with its last run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepeatState {
    /// Never ran.
    Pending,
    /// Ran with the file as it is.
    Applied,
    /// Ran, and the file changed since.
    Changed,
    /// Ran, and the file is gone: nothing runs it again.
    Missing,
}

impl RepeatState {
    /// The lowercase name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            RepeatState::Pending => "pending",
            RepeatState::Applied => "applied",
            RepeatState::Changed => "changed",
            RepeatState::Missing => "missing",
        }
    }
}

/// One repeatable migration in `status`.
#[derive(Debug, Clone)]
pub struct RepeatStatus<'a> {
    /// Its name.
    pub name: &'a str,
    /// The state.
    pub state: RepeatState,
    /// The file, when there is one.
    pub migration: Option<&'a Migration>,
    /// Its last run, when it ran.
    pub row: Option<&'a RepeatRow>,
    /// The next `upgrade` runs it.
    pub runs_next: bool,
}

impl MigrationSet {
    /// Each repeatable migration, file or last run, by name: what `status`
    /// shows of them.
    pub fn repeat_status<'a>(&'a self, ran: &'a [RepeatRow]) -> Vec<RepeatStatus<'a>> {
        let mut all: Vec<RepeatStatus<'a>> = self
            .repeatables()
            .iter()
            .map(|m| {
                let row = ran.iter().find(|r| r.name == m.name);
                let state = match row {
                    None => RepeatState::Pending,
                    Some(r) if r.checksum != m.checksum => RepeatState::Changed,
                    Some(_) => RepeatState::Applied,
                };
                RepeatStatus {
                    name: &m.name,
                    state,
                    migration: Some(m),
                    row,
                    runs_next: runs_next(m, row),
                }
            })
            .collect();
        for r in ran {
            if !self.repeatables().iter().any(|m| m.name == r.name) {
                all.push(RepeatStatus {
                    name: &r.name,
                    state: RepeatState::Missing,
                    migration: None,
                    row: Some(r),
                    runs_next: false,
                });
            }
        }
        all.sort_by(|a, b| a.name.cmp(b.name));
        all
    }
}

/// Whether the next upgrade runs the repeatable migration `m`, which
/// last ran as `row`.
fn runs_next(m: &Migration, row: Option<&RepeatRow>) -> bool {
    match m.kind() {
        Kind::Repeatable(Repeat::Always) => true,
        _ => row.is_none_or(|r| r.checksum != m.checksum),
    }
}

/// The repeatable migrations an upgrade runs after the versioned ones, by
/// name: the runs-always ones, and the others that never ran or changed
/// since they last ran.
pub fn plan_repeatables<'a>(repeatables: &'a [Migration], ran: &[RepeatRow]) -> Vec<&'a Migration> {
    repeatables
        .iter()
        .filter(|m| runs_next(m, ran.iter().find(|r| r.name == m.name)))
        .collect()
}

/// Every migration compared with its history row, one entry at a time in
/// version order.
pub(crate) fn statuses<'a>(
    migrations: &'a [Migration],
    history: &'a [HistoryRow],
) -> impl Iterator<Item = StatusEntry<'a>> {
    let newest_applied = history.iter().map(|r| r.version).max();
    pairs(migrations, history).map(move |(m, r)| entry(m, r, newest_applied))
}

/// Each file with its history row, by version: both come in version order
/// (a migration set and a driver's history always do), merged like two
/// sorted lists, without a map or a copy of either.
fn pairs<'a, 'h>(
    migrations: &'a [Migration],
    history: &'h [HistoryRow],
) -> impl Iterator<Item = (Option<&'a Migration>, Option<&'h HistoryRow>)> {
    let mut files = in_order(migrations, |m| m.version).peekable();
    let mut rows = in_order(history, |r| r.version).peekable();
    std::iter::from_fn(move || {
        let pair = match (files.peek(), rows.peek()) {
            (None, None) => return None,
            (Some(m), Some(r)) if m.version == r.version => (files.next(), rows.next()),
            (Some(m), Some(r)) if m.version < r.version => (files.next(), None),
            (Some(_), None) => (files.next(), None),
            _ => (None, rows.next()),
        };
        Some(pair)
    })
}

/// A slice's items by version. Callers may pass slices in any order: those
/// get sorted references (unstable, as versions are unique).
fn in_order<T>(items: &[T], version: fn(&T) -> Version) -> InOrder<'_, T> {
    if items.is_sorted_by_key(version) {
        InOrder::Slice(items.iter())
    } else {
        let mut sorted: Vec<&T> = items.iter().collect();
        sorted.sort_unstable_by_key(|t| version(t));
        InOrder::Sorted(sorted.into_iter())
    }
}

enum InOrder<'a, T> {
    Slice(std::slice::Iter<'a, T>),
    Sorted(std::vec::IntoIter<&'a T>),
}

impl<'a, T> Iterator for InOrder<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        match self {
            InOrder::Slice(items) => items.next(),
            InOrder::Sorted(items) => items.next(),
        }
    }
}

/// The status of a file and its row, at least one of them present; out of
/// order only against `newest_applied` (planners that check the order
/// themselves pass `None`).
fn entry<'a>(
    migration: Option<&'a Migration>,
    row: Option<&'a HistoryRow>,
    newest_applied: Option<Version>,
) -> StatusEntry<'a> {
    let state = match (migration, row) {
        (_, Some(r)) if r.state == RowState::Started => State::Dirty,
        (None, Some(_)) => State::Missing,
        (Some(m), Some(r)) if m.checksum != r.checksum || m.name != r.name => State::Modified,
        (Some(_), Some(_)) => State::Applied,
        (Some(_), None) => State::Pending,
        (None, None) => unreachable!("every entry has a file or a row"),
    };
    let version = migration.map_or_else(
        || row.map_or_else(Version::default, |r| r.version),
        |m| m.version,
    );
    StatusEntry {
        version,
        name: migration.map_or_else(|| row.map_or("", |r| r.name.as_str()), |m| m.name.as_str()),
        state,
        migration,
        row,
        out_of_order: state == State::Pending && newest_applied.is_some_and(|n| version < n),
    }
}

/// An applied migration whose file changed since: what it is now, and
/// what history recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The migration, as its file names it.
    pub migration: Named,
    /// Its file (the `.up.sql` of a pair).
    pub file: std::path::PathBuf,
    /// The file's checksum now.
    pub checksum: Checksum,
    /// The checksum history recorded.
    pub recorded: Checksum,
    /// The name history recorded, when the file was renamed.
    pub recorded_name: Option<String>,
}

impl Changed {
    fn of(m: &Migration, r: &HistoryRow) -> Changed {
        Changed {
            migration: Named::of(m),
            file: m.up.path.clone(),
            checksum: m.checksum.clone(),
            recorded: r.checksum.clone(),
            recorded_name: (r.name != m.name).then(|| r.name.clone()),
        }
    }
}

/// Why a plan was refused. Each is exit code 4 in the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Applied migrations whose files changed since.
    Modified(Vec<Changed>),
    /// Applied migrations whose files are gone.
    Missing(Vec<Named>),
    /// No-transaction migrations that started and never finished.
    Dirty(Vec<Named>),
    /// Pending migrations older than the newest applied one.
    OutOfOrder {
        /// The pending ones.
        pending: Vec<Named>,
        /// The newest applied version.
        newest_applied: Version,
    },
    /// A migration to roll back has no down section.
    NoDown(Named),
}

/// A target that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// `--to` names a version that no file and no history row has.
    UnknownVersion(Version),
    /// `rollback --to` names a version that is not applied.
    NotApplied(Version),
    /// `fix dirty` names a version that is not dirty.
    NotDirty(Version),
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// The state of the database or the files forbids it.
    Refused(Refusal),
    /// The target is wrong.
    Target(TargetError),
}

impl From<Refusal> for PlanError {
    fn from(r: Refusal) -> Self {
        PlanError::Refused(r)
    }
}

/// How far to go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Target {
    /// Up to and including this version (upgrade), or down to and keeping
    /// this version (rollback).
    pub to: Option<Version>,
    /// At most this many migrations.
    pub count: Option<usize>,
}

/// The migrations that are dirty, modified or missing, noted one entry at
/// a time.
#[derive(Default)]
struct Drift {
    dirty: Vec<Named>,
    modified: Vec<Changed>,
    missing: Vec<Named>,
}

impl Drift {
    fn note(&mut self, e: &StatusEntry<'_>) {
        let list = match (e.state, e.migration, e.row) {
            (State::Modified, Some(m), Some(r)) => {
                self.modified.push(Changed::of(m, r));
                return;
            }
            (State::Dirty, ..) => &mut self.dirty,
            (State::Missing, ..) => &mut self.missing,
            _ => return,
        };
        list.push(Named::versioned(e.version, e.name));
    }

    /// Refuses when any migration is dirty, modified or missing, in that
    /// order of urgency.
    fn check(self) -> Result<(), Refusal> {
        if !self.dirty.is_empty() {
            return Err(Refusal::Dirty(self.dirty));
        }
        if !self.modified.is_empty() {
            return Err(Refusal::Modified(self.modified));
        }
        if !self.missing.is_empty() {
            return Err(Refusal::Missing(self.missing));
        }
        Ok(())
    }
}

/// The migrations `upgrade` applies, in version order.
pub fn plan_upgrade<'a>(
    migrations: &'a [Migration],
    history: &[HistoryRow],
    target: Target,
    allow_out_of_order: bool,
) -> Result<Vec<&'a Migration>, PlanError> {
    // One pass that keeps only what is not applied, not a status entry per
    // migration (docs/performance.md).
    let mut drift = Drift::default();
    let mut pending: Vec<&'a Migration> = Vec::new();
    let mut target_known = target.to.is_none();
    for (migration, row) in pairs(migrations, history) {
        let e = entry(migration, row, None);
        target_known |= target.to == Some(e.version);
        drift.note(&e);
        if let (State::Pending, Some(m)) = (e.state, migration) {
            if target.to.is_none_or(|to| m.version <= to) {
                pending.push(m);
            }
        }
    }
    if let (false, Some(to)) = (target_known, target.to) {
        return Err(PlanError::Target(TargetError::UnknownVersion(to)));
    }
    drift.check()?;
    if let Some(count) = target.count {
        pending.truncate(count);
    }
    if !allow_out_of_order {
        if let Some(newest_applied) = history.iter().map(|r| r.version).max() {
            let late: Vec<Named> = pending
                .iter()
                .filter(|m| m.version < newest_applied)
                .map(|m| Named::of(m))
                .collect();
            if !late.is_empty() {
                return Err(Refusal::OutOfOrder {
                    pending: late,
                    newest_applied,
                }
                .into());
            }
        }
    }
    Ok(pending)
}

/// The migrations `rollback` reverts, newest version first. Without a target
/// it reverts one.
pub fn plan_rollback<'a>(
    migrations: &'a [Migration],
    history: &[HistoryRow],
    target: Target,
) -> Result<Vec<&'a Migration>, PlanError> {
    // Each entry with its file, which the plan returns.
    let entries: Vec<(Option<&'a Migration>, StatusEntry<'_>)> = pairs(migrations, history)
        .map(|(m, r)| (m, entry(m, r, None)))
        .collect();
    if let Some(to) = target.to {
        if !history.iter().any(|r| r.version == to) {
            return Err(PlanError::Target(TargetError::NotApplied(to)));
        }
    }
    let applied = entries.iter().rev().filter(|(_, e)| e.row.is_some());
    let selected: Vec<_> = match (target.to, target.count) {
        (Some(to), count) => applied
            .filter(|(_, e)| e.version > to)
            .take(count.unwrap_or(usize::MAX))
            .collect(),
        (None, count) => applied.take(count.unwrap_or(1)).collect(),
    };
    // Dirty rows anywhere make the database's state unknown: refuse as
    // upgrade does. Modified or missing files matter only for what reverts.
    let dirty: Vec<Named> = entries
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e.state == State::Dirty)
        .map(|e| Named::versioned(e.version, e.name))
        .collect();
    if !dirty.is_empty() {
        return Err(Refusal::Dirty(dirty).into());
    }
    let with = |state: State| -> Vec<Named> {
        selected
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.state == state)
            .map(|e| Named::versioned(e.version, e.name))
            .collect()
    };
    let missing = with(State::Missing);
    if !missing.is_empty() {
        return Err(Refusal::Missing(missing).into());
    }
    let modified: Vec<Changed> = selected
        .iter()
        .filter_map(|(m, e)| match (m, e.row) {
            (Some(m), Some(r)) if e.state == State::Modified => Some(Changed::of(m, r)),
            _ => None,
        })
        .collect();
    if !modified.is_empty() {
        return Err(Refusal::Modified(modified).into());
    }
    let mut plan = Vec::with_capacity(selected.len());
    for (m, _) in selected {
        let m = m.expect("not missing");
        if m.down.is_none() {
            return Err(Refusal::NoDown(Named::of(m)).into());
        }
        plan.push(m);
    }
    Ok(plan)
}

/// Refuses when any migration is dirty, modified or missing: what `validate`
/// checks after parsing.
pub fn check(migrations: &[Migration], history: &[HistoryRow]) -> Result<(), Refusal> {
    let mut drift = Drift::default();
    for (migration, row) in pairs(migrations, history) {
        drift.note(&entry(migration, row, None));
    }
    drift.check()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status<'a>(migrations: &'a [Migration], history: &'a [HistoryRow]) -> Vec<StatusEntry<'a>> {
        statuses(migrations, history).collect()
    }
    use crate::source::Section;
    use std::path::PathBuf;

    fn m(version: u64, down: bool) -> Migration {
        let section = |sql: &str| Section {
            sql: sql.to_string(),
            path: PathBuf::from(format!("{version}_m{version}.sql")),
            first_line: 2,
            no_transaction: false,
            lock_timeout: None,
            statement_timeout: None,
        };
        Migration {
            version: version.into(),
            name: format!("m{version}"),
            up: section("SELECT 1;"),
            down: down.then(|| Box::new(section("SELECT 2;"))),
            checksum: Checksum::parse(&format!("sha256:{version}")),
            layout: crate::source::Layout::Lockstep,
        }
    }

    fn row(version: u64) -> HistoryRow {
        HistoryRow {
            version: version.into(),
            name: format!("m{version}"),
            checksum: Checksum::parse(&format!("sha256:{version}")),
            state: RowState::Applied,
            applied_at: "2026-11-24T10:00:00.000Z".into(),
            duration_ms: 1,
            applied_by: "test".into(),
            lock_token: None,
            tool_version: "0.1.0".into(),
        }
    }

    fn versions(plan: &[&Migration]) -> Vec<u64> {
        plan.iter().map(|m| m.version.first()).collect()
    }

    fn n(version: u64) -> Named {
        Named::versioned(version.into(), &format!("m{version}"))
    }

    /// Migration `version` of `m`, changed since history recorded it with
    /// the checksum `sha256:other` (and `name`, when renamed).
    fn changed(version: u64, name: Option<&str>) -> Changed {
        Changed {
            migration: n(version),
            file: PathBuf::from(format!("{version}_m{version}.sql")),
            checksum: Checksum::parse(&format!("sha256:{version}")),
            recorded: match name {
                Some(_) => Checksum::parse(&format!("sha256:{version}")),
                None => Checksum::parse("sha256:other"),
            },
            recorded_name: name.map(str::to_string),
        }
    }

    const ALL: Target = Target {
        to: None,
        count: None,
    };

    /// A repeatable migration `name` whose file's checksum is `sum`.
    fn repeatable(name: &str, repeat: Repeat, sum: &str) -> Migration {
        Migration {
            version: Version::default(),
            name: name.to_string(),
            checksum: Checksum::parse(&format!("sha256:{sum}")),
            layout: crate::source::Layout::Repeatable(repeat),
            ..m(0, false)
        }
    }

    /// The last run of `name`, with checksum `sum`.
    fn ran(name: &str, sum: &str) -> RepeatRow {
        RepeatRow {
            name: name.to_string(),
            checksum: Checksum::parse(&format!("sha256:{sum}")),
            applied_at: "2026-11-24T10:00:00.000Z".into(),
            duration_ms: 1,
            applied_by: "test".into(),
            lock_token: None,
            tool_version: "0.1.0".into(),
            runs: 1,
        }
    }

    #[test]
    fn repeatables_run_when_never_run_changed_or_always() {
        let files = [
            repeatable("a", Repeat::Always, "1"),
            repeatable("b", Repeat::OnChange, "1"),
            repeatable("c", Repeat::OnChange, "2"),
            repeatable("d", Repeat::OnChange, "1"),
        ];
        let rows = [
            ran("a", "1"),
            ran("b", "1"),
            ran("c", "1"),
            ran("gone", "1"),
        ];
        let plan: Vec<&str> = plan_repeatables(&files, &rows)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(plan, ["a", "c", "d"]);
        let set = MigrationSet::from_migrations("m", files.to_vec()).unwrap();
        let status: Vec<(&str, RepeatState, bool)> = set
            .repeat_status(&rows)
            .iter()
            .map(|e| (e.name, e.state, e.runs_next))
            .collect();
        assert_eq!(
            status,
            [
                ("a", RepeatState::Applied, true),
                ("b", RepeatState::Applied, false),
                ("c", RepeatState::Changed, true),
                ("d", RepeatState::Pending, true),
                ("gone", RepeatState::Missing, false),
            ]
        );
    }

    #[test]
    fn upgrade_plans() {
        let files: Vec<Migration> = (1..=5).map(|v| m(v, true)).collect();
        let table: &[(&[u64], Target, &[u64])] = &[
            (&[], ALL, &[1, 2, 3, 4, 5]),
            (&[1, 2], ALL, &[3, 4, 5]),
            (&[1, 2, 3, 4, 5], ALL, &[]),
            (
                &[1],
                Target {
                    to: Some(3.into()),
                    count: None,
                },
                &[2, 3],
            ),
            (
                &[1],
                Target {
                    to: None,
                    count: Some(2),
                },
                &[2, 3],
            ),
            (
                &[1],
                Target {
                    to: Some(4.into()),
                    count: Some(1),
                },
                &[2],
            ),
            (
                &[1, 2, 3],
                Target {
                    to: Some(2.into()),
                    count: None,
                },
                &[],
            ),
        ];
        for (applied, target, want) in table {
            let history: Vec<HistoryRow> = applied.iter().map(|&v| row(v)).collect();
            let plan = plan_upgrade(&files, &history, *target, false).unwrap();
            assert_eq!(versions(&plan), *want, "{applied:?} {target:?}");
        }
    }

    #[test]
    fn upgrade_refusals() {
        let files: Vec<Migration> = (1..=3).map(|v| m(v, true)).collect();
        let mut changed = row(1);
        changed.checksum = Checksum::parse("sha256:other");
        let mut started = row(2);
        started.state = RowState::Started;
        let table: Vec<(Vec<HistoryRow>, PlanError)> = vec![
            (
                vec![changed.clone()],
                Refusal::Modified(vec![self::changed(1, None)]).into(),
            ),
            (vec![row(1), row(9)], Refusal::Missing(vec![n(9)]).into()),
            // Dirty comes first: it is the most urgent.
            (vec![changed, started], Refusal::Dirty(vec![n(2)]).into()),
            (
                vec![row(1), row(3)],
                Refusal::OutOfOrder {
                    pending: vec![n(2)],
                    newest_applied: 3.into(),
                }
                .into(),
            ),
        ];
        for (history, want) in table {
            assert_eq!(
                plan_upgrade(&files, &history, ALL, false).unwrap_err(),
                want
            );
        }
        // A renamed file is a modified one.
        let mut renamed = row(1);
        renamed.name = "old_name".into();
        assert_eq!(
            plan_upgrade(&files, &[renamed], ALL, false).unwrap_err(),
            Refusal::Modified(vec![self::changed(1, Some("old_name"))]).into()
        );
        assert_eq!(
            plan_upgrade(
                &files,
                &[],
                Target {
                    to: Some(7.into()),
                    count: None
                },
                false
            )
            .unwrap_err(),
            PlanError::Target(TargetError::UnknownVersion(7.into()))
        );
        let plan = plan_upgrade(&files, &[row(1), row(3)], ALL, true).unwrap();
        assert_eq!(versions(&plan), [2]);
        // A target that only a history row has is known: the file being
        // gone is what stops the run.
        assert_eq!(
            plan_upgrade(
                &files,
                &[row(1), row(9)],
                Target {
                    to: Some(9.into()),
                    count: None
                },
                false
            )
            .unwrap_err(),
            Refusal::Missing(vec![n(9)]).into()
        );
    }

    #[test]
    fn plans_take_files_and_rows_in_any_order() {
        let files = vec![m(4, true), m(1, true), m(3, true), m(2, true)];
        let history = vec![row(2), row(1)];
        let plan = plan_upgrade(&files, &history, ALL, false).unwrap();
        assert_eq!(versions(&plan), [3, 4]);
        assert_eq!(check(&files, &history), Ok(()));
        let mut changed = row(3);
        changed.checksum = Checksum::parse("sha256:other");
        let history = vec![changed, row(9), row(1)];
        assert_eq!(
            check(&files, &history),
            Err(Refusal::Modified(vec![self::changed(3, None)]))
        );
        assert_eq!(
            plan_upgrade(&files, &history, ALL, true).unwrap_err(),
            Refusal::Modified(vec![self::changed(3, None)]).into()
        );
        let history = vec![row(2), row(1), row(3)];
        let to_one = Target {
            to: Some(1.into()),
            count: None,
        };
        let plan = plan_rollback(&files, &history, to_one).unwrap();
        assert_eq!(versions(&plan), [3, 2]);
    }

    #[test]
    fn rollback_plans() {
        let files: Vec<Migration> = (1..=4).map(|v| m(v, true)).collect();
        let history: Vec<HistoryRow> = (1..=3).map(row).collect();
        let table: &[(Target, &[u64])] = &[
            (ALL, &[3]),
            (
                Target {
                    to: None,
                    count: Some(2),
                },
                &[3, 2],
            ),
            (
                Target {
                    to: None,
                    count: Some(10),
                },
                &[3, 2, 1],
            ),
            (
                Target {
                    to: Some(1.into()),
                    count: None,
                },
                &[3, 2],
            ),
            (
                Target {
                    to: Some(3.into()),
                    count: None,
                },
                &[],
            ),
            (
                Target {
                    to: Some(1.into()),
                    count: Some(1),
                },
                &[3],
            ),
        ];
        for (target, want) in table {
            assert_eq!(
                versions(&plan_rollback(&files, &history, *target).unwrap()),
                *want,
                "{target:?}"
            );
        }
        assert_eq!(
            plan_rollback(
                &files,
                &history,
                Target {
                    to: Some(4.into()),
                    count: None
                }
            )
            .unwrap_err(),
            PlanError::Target(TargetError::NotApplied(4.into()))
        );
        assert!(plan_rollback(&files, &[], ALL).unwrap().is_empty());
    }

    #[test]
    fn rollback_refusals() {
        let files = vec![m(1, true), m(2, false), m(3, true)];
        let history: Vec<HistoryRow> = (1..=3).map(row).collect();
        // The one without a down section stops the whole rollback.
        assert_eq!(
            plan_rollback(
                &files,
                &history,
                Target {
                    to: None,
                    count: Some(2)
                }
            )
            .unwrap_err(),
            Refusal::NoDown(n(2)).into()
        );
        assert_eq!(
            versions(&plan_rollback(&files, &history, ALL).unwrap()),
            [3]
        );
        let gone = vec![m(1, true), m(2, true)];
        assert_eq!(
            plan_rollback(&gone, &history, ALL).unwrap_err(),
            Refusal::Missing(vec![n(3)]).into()
        );
        // A missing file below the target does not matter.
        let history2 = vec![row(0), row(1), row(2)];
        assert_eq!(
            versions(&plan_rollback(&gone, &history2, ALL).unwrap()),
            [2]
        );
    }

    /// Each entry's version, state and whether it is out of order.
    fn states(files: &[Migration], history: &[HistoryRow]) -> Vec<(u64, State, bool)> {
        status(files, history)
            .iter()
            .map(|e| (e.version.first(), e.state, e.out_of_order))
            .collect()
    }

    #[test]
    fn status_states() {
        let files = vec![m(1, true), m(2, true), m(3, true), m(5, true)];
        let mut changed = row(2);
        changed.checksum = Checksum::parse("sha256:x");
        let mut started = row(3);
        started.state = RowState::Started;
        let history = vec![row(1), changed, started, row(4)];
        assert_eq!(
            states(&files, &history),
            [
                (1, State::Applied, false),
                (2, State::Modified, false),
                (3, State::Dirty, false),
                (4, State::Missing, false),
                (5, State::Pending, false),
            ]
        );
        let newer = [row(4)];
        let late = status(&files[..1], &newer);
        assert!(late[0].out_of_order);
    }

    #[test]
    fn status_merges_files_and_rows_given_in_any_order() {
        let files = vec![m(4, true), m(1, true), m(3, true)];
        let history = vec![row(5), row(3), row(2)];
        assert_eq!(
            states(&files, &history),
            [
                (1, State::Pending, true),
                (2, State::Missing, false),
                (3, State::Applied, false),
                (4, State::Pending, true),
                (5, State::Missing, false),
            ]
        );
        assert!(status(&[], &[]).is_empty());
    }
}
