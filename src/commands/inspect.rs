//! Read-only commands: `status`, `history`, `validate`. They create no
//! table and, on SQLite, no database file.

use lockstep::{Kind, Repeat, RepeatState, RepeatStatus, State, StatusEntry};

use super::table::{Cell, Streamed, Table};
use super::{
    connect_read_only, load_and_connect, load_drafts_and_connect, note_missing_file, plural,
};
use crate::cli::StatusArgs;
use crate::error::{CliError, Exit};
use crate::json;
use crate::printer::{Printer, Style};
use crate::settings::Settings;

pub fn status(
    settings: &Settings,
    printer: &mut Printer,
    args: &StatusArgs,
) -> Result<Exit, CliError> {
    // A file just made by `lockstep new` is shown, marked, not refused.
    let (set, mut migrator) = load_drafts_and_connect(settings, || connect_read_only(settings))?;
    note_missing_file(settings, printer);
    let history = migrator.history()?;
    // Read only for a directory that has repeatable migrations: nothing
    // else shows them.
    let repeats = if set.repeatables().is_empty() {
        Vec::new()
    } else {
        migrator.repeatables()?
    };
    // The files' upgrade sections that run outside a transaction here
    // (MariaDB runs DDL so), by version: for `--json` only, as finding
    // them reads each file's SQL.
    let outside: std::collections::HashSet<lockstep::Version> = if printer.is_json() {
        set.migrations()
            .iter()
            .filter(|m| migrator.runs_outside_transaction(&m.up))
            .map(|m| m.version)
            .collect()
    } else {
        Default::default()
    };
    // Done with the database: closed before the table is made, so that
    // SQLite's schema and page cache are not held beside it.
    drop(migrator);
    let entries = || set.status(&history);

    // One pass counts and measures the table's columns; the table is
    // written in a second, so that no entry, cell or line is held.
    let mut counts = json::Counts::default();
    let mut table = printer
        .shows_lines()
        .then(|| Streamed::new(["VERSION", "NAME", "STATE", "APPLIED AT"]));
    for e in entries() {
        match e.state {
            State::Applied => counts.applied += 1,
            State::Pending => counts.pending += 1,
            State::Modified => counts.modified += 1,
            State::Missing => counts.missing += 1,
            State::Dirty => counts.dirty += 1,
        }
        if let Some(table) = &mut table {
            table.measure(&status_row(printer, &e));
        }
    }
    let total = counts.applied + counts.pending + counts.modified + counts.missing + counts.dirty;
    let repeat_status = set.repeat_status(&repeats);
    // A runs-always one is never done; one that runs on change is, once
    // it ran as its file is.
    let repeats_due = repeat_status
        .iter()
        .any(|e| matches!(e.state, RepeatState::Pending | RepeatState::Changed));
    let exit = if args.check && (counts.applied < total || repeats_due) {
        Exit::Refused
    } else {
        Exit::Success
    };

    printer.document("status", exit, || json::Status {
        history_table: settings.history_table.to_string(),
        migrations: entries()
            .map(|e| status_json(&e, outside.contains(&e.version)))
            .collect(),
        counts,
        repeatables: repeat_status
            .iter()
            .map(json::RepeatStatusJson::from)
            .collect(),
    });
    if total == 0 && repeat_status.is_empty() {
        printer.line(&format!(
            "no migrations in {}",
            settings.migrations.display()
        ));
    } else {
        if let Some(table) = table {
            table.write(printer, entries(), status_row, |p, lines| p.block(lines));
        }
        if !repeat_status.is_empty() && printer.shows_lines() {
            printer.block(&repeat_table(printer, &repeat_status));
        }
        printer.line(&summary(&counts));
        let drafts: Vec<&lockstep::Migration> = set
            .migrations()
            .iter()
            .chain(set.repeatables())
            .filter(|m| m.is_unwritten())
            .collect();
        if let Some(first) = drafts.first() {
            let which = match drafts.len() {
                1 => format!("{} has", first.up.path.display()),
                n => format!("{} and {} more have", first.up.path.display(), n - 1),
            };
            printer.note(&format!(
                "{} {which} an empty upgrade section: write the SQL before `lockstep upgrade`",
                printer.paint("hint:", Style::Hint, true)
            ));
        }
        if counts.modified + counts.missing + counts.dirty > 0 {
            printer.note(&format!(
                "{} run `lockstep validate` for what to do",
                printer.paint("hint:", Style::Hint, true)
            ));
        }
    }
    Ok(exit)
}

/// The repeatable migrations' table of `status`.
fn repeat_table(printer: &Printer, entries: &[RepeatStatus<'_>]) -> String {
    let mut table = Table::new(&["REPEATABLE", "RUNS", "STATE", "LAST RUN"]);
    for e in entries {
        let runs = match e.migration.map(|m| m.kind()) {
            Some(Kind::Repeatable(Repeat::Always)) => "always",
            Some(_) => "on change",
            None => "-",
        };
        let state = match (e.state, e.runs_next) {
            (RepeatState::Applied, true) => "applied (runs again)".to_string(),
            (state, _) => state.as_str().to_string(),
        };
        let style = match e.state {
            RepeatState::Applied => Style::Good,
            RepeatState::Missing => Style::Bad,
            RepeatState::Pending | RepeatState::Changed => Style::Warn,
        };
        table
            .cell(e.name)
            .cell(runs)
            .cell(printer.paint(&state, style, false))
            .cell(
                e.row
                    .map(|r| printer.timestamp(r.applied_at.as_str()))
                    .unwrap_or_default(),
            );
    }
    table.render()
}

/// `3 applied, 1 pending`, and what else there is.
fn summary(counts: &json::Counts) -> String {
    let mut parts = vec![
        format!("{} applied", counts.applied),
        format!("{} pending", counts.pending),
    ];
    for (n, what) in [
        (counts.modified, "modified"),
        (counts.missing, "missing"),
        (counts.dirty, "dirty"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    parts.join(", ")
}

/// A migration's entry in `status --json`.
fn status_json(e: &StatusEntry<'_>, outside: bool) -> json::StatusJson {
    json::StatusJson {
        version: e.version.into(),
        name: e.name.to_string(),
        state: e.state.as_str(),
        file: e.migration.map(|m| m.up.path.display().to_string()),
        applied_at: e.row.map(|r| r.applied_at.to_string()),
        checksum: e.migration.map(|m| m.checksum.to_string()),
        recorded_checksum: match (e.migration, e.row) {
            (Some(m), Some(r)) if m.checksum != r.checksum => Some(r.checksum.to_string()),
            (None, Some(r)) => Some(r.checksum.to_string()),
            _ => None,
        },
        out_of_order: e.out_of_order,
        has_rollback: e.migration.map(|m| m.down.is_some()),
        no_transaction: e.migration.map(|_| outside),
        upgrade_empty: e.migration.map(lockstep::Migration::is_unwritten),
    }
}

/// A line of `status`'s table.
fn status_row<'a>(printer: &Printer, e: &StatusEntry<'a>) -> [Cell<'a>; 4] {
    let mut state = e.state.as_str().to_string();
    if e.out_of_order {
        state.push_str(" (out of order)");
    }
    if e.migration.is_some_and(lockstep::Migration::is_unwritten) {
        state.push_str(" (empty)");
    }
    let style = match e.state {
        State::Applied => Style::Good,
        State::Pending => Style::Warn,
        _ => Style::Bad,
    };
    let painted = printer.paint(&state, style, false);
    let applied_at = e
        .row
        .map(|r| printer.timestamp(r.applied_at.as_str()))
        .unwrap_or_default();
    [
        Cell::new(e.version.to_string()),
        Cell::new(e.name),
        Cell::painted(&state, painted),
        Cell::new(applied_at),
    ]
}

pub fn history(settings: &Settings, printer: &mut Printer) -> Result<Exit, CliError> {
    settings.database()?;
    let mut migrator = connect_read_only(settings)?;
    note_missing_file(settings, printer);
    let history = migrator.history()?;
    let repeats = migrator.repeatables()?;
    if history.is_empty() {
        printer.line("no migrations applied");
    } else if printer.shows_lines() {
        let mut table = Table::new(&[
            "VERSION",
            "NAME",
            "STATE",
            "APPLIED AT",
            "DURATION",
            "APPLIED BY",
            "LOCK TOKEN",
        ]);
        for r in &history {
            let (duration, token) = run_cells(printer, r.duration_ms, r.lock_token);
            table
                .cell(r.version)
                .cell(&r.name)
                .cell(r.state.as_str())
                .cell(printer.timestamp(r.applied_at.as_str()))
                .cell(duration)
                .cell(&r.applied_by)
                .cell(token);
        }
        printer.block(&table.render());
    }
    if !repeats.is_empty() && printer.shows_lines() {
        let mut table = Table::new(&[
            "REPEATABLE",
            "RUNS",
            "LAST RUN",
            "DURATION",
            "APPLIED BY",
            "LOCK TOKEN",
        ]);
        for r in &repeats {
            let (duration, token) = run_cells(printer, r.duration_ms, r.lock_token);
            table
                .cell(&r.name)
                .cell(r.runs)
                .cell(printer.timestamp(r.applied_at.as_str()))
                .cell(duration)
                .cell(&r.applied_by)
                .cell(token);
        }
        printer.block(&table.render());
    }
    printer.document("history", Exit::Success, || json::History {
        history_table: settings.history_table.to_string(),
        migrations: history.iter().map(json::HistoryJson::from).collect(),
        repeatables: repeats.iter().map(json::RepeatHistoryJson::from).collect(),
    });
    Ok(Exit::Success)
}

/// A recorded run's duration and lock token, as `history` shows them.
fn run_cells(printer: &Printer, duration_ms: i64, lock_token: Option<i64>) -> (String, String) {
    let duration = std::time::Duration::from_millis(u64::try_from(duration_ms).unwrap_or(0));
    let token = lock_token.map_or_else(|| "-".to_string(), |t| t.to_string());
    (printer.duration(duration), token)
}

/// `current`: the newest applied migration, as jetbase prints it.
pub fn current(settings: &Settings, printer: &mut Printer) -> Result<Exit, CliError> {
    settings.database()?;
    let current = connect_read_only(settings)?.current()?;
    note_missing_file(settings, printer);
    match &current {
        Some(row) => printer.line(&format!("{} {}", row.version, row.name)),
        None => printer.line("no migration applied"),
    }
    printer.document("current", Exit::Success, || json::Current {
        version: current.as_ref().map(|r| r.version.into()),
        name: current.as_ref().map(|r| r.name.clone()),
    });
    Ok(Exit::Success)
}

pub fn validate(settings: &Settings, printer: &mut Printer) -> Result<Exit, CliError> {
    let (set, mut migrator) = load_and_connect(settings, || connect_read_only(settings))?;
    note_missing_file(settings, printer);
    let history = migrator.validate(&set)?;
    let files = set.migrations().len();
    let applied = history.len();
    let pending = set
        .status(&history)
        .filter(|e| e.state == State::Pending)
        .count();
    printer.line(&format!(
        "ok: {} parsed; {} applied with matching checksums; {} pending",
        plural(files, "migration file", "migration files"),
        applied,
        pending
    ));
    printer.document("validate", Exit::Success, || json::Validate {
        files,
        applied,
        pending,
    });
    Ok(Exit::Success)
}
