//! `upgrade` and `rollback`.

use std::time::{Duration, Instant};

use lockstep::{
    Direction, Event, Kind, LockEvent, Named, Observer, RollbackOptions, RunReport, State, Target,
    UpgradeOptions,
};

use super::{connect, load_and_connect, load_drafts_and_connect, plural, step_json};
use crate::cli::{RollbackArgs, UpgradeArgs};
use crate::error::{CliError, Exit};
use crate::json;
use crate::printer::{Printer, Style};
use crate::settings::Settings;

pub fn upgrade(
    settings: &Settings,
    printer: &mut Printer,
    args: &UpgradeArgs,
) -> Result<Exit, CliError> {
    let options = UpgradeOptions {
        target: target(args.to, args.count),
        dry_run: args.dry_run,
        single_transaction: args.single_transaction,
        allow_out_of_order: args.allow_out_of_order,
    };
    let started = Instant::now();
    // Every file is parsed before the database can change.
    let (set, mut migrator) = load_and_connect(settings, || {
        connect(settings, printer, &args.lock, Some(&args.statements))
    })?;
    let result = migrator.upgrade(&set, &options, &mut Progress::new(printer));
    // Up to date up to a target: say so, and what lies beyond it.
    let reached = match (&result, args.to) {
        (Ok(report), Some(to)) if report.steps.is_empty() => {
            let history = migrator.history().unwrap_or_default();
            let beyond = set
                .status(&history)
                .filter(|e| e.state == State::Pending && e.version > to)
                .count();
            Some(if beyond == 0 {
                format!("version {to} is reached already: nothing to apply")
            } else {
                format!(
                    "version {to} is reached already: nothing to apply up to it ({} after it)",
                    plural(beyond, "migration pending", "migrations pending")
                )
            })
        }
        _ => None,
    };
    finish(printer, "upgrade", result, started.elapsed(), reached)
}

pub fn rollback(
    settings: &Settings,
    printer: &mut Printer,
    args: &RollbackArgs,
) -> Result<Exit, CliError> {
    let count = if args.all { Some(u64::MAX) } else { args.count };
    let options = RollbackOptions {
        target: target(args.to, count),
        dry_run: args.dry_run,
    };
    let started = Instant::now();
    // A file still to write is pending, and never rolled back.
    let (set, mut migrator) = load_drafts_and_connect(settings, || {
        connect(settings, printer, &args.lock, Some(&args.statements))
    })?;
    if args.all && !args.yes && !args.dry_run {
        if !printer.can_ask() {
            return Err(CliError::usage(
                "`rollback --all` needs confirmation and there is no terminal to ask on",
            )
            .with_hint("pass --yes to roll back every applied migration without asking"));
        }
        let applied = migrator.history()?.len();
        let question = format!(
            "roll back all {} on {}?",
            plural(applied, "applied migration", "applied migrations"),
            settings.database()?
        );
        if !printer.confirm(&question) {
            printer.line("nothing was rolled back");
            return Ok(Exit::Success);
        }
    }
    let result = migrator.rollback(&set, &options, &mut Progress::new(printer));
    finish(printer, "rollback", result, started.elapsed(), None)
}

fn target(to: Option<lockstep::Version>, count: Option<u64>) -> Target {
    Target {
        to,
        count: count.map(|c| usize::try_from(c).unwrap_or(usize::MAX)),
    }
}

fn finish(
    printer: &mut Printer,
    command: &str,
    result: Result<RunReport, lockstep::Error>,
    elapsed: Duration,
    nothing_done: Option<String>,
) -> Result<Exit, CliError> {
    printer.end_progress();
    let report = result?;
    if crate::signals::received().is_some() {
        // The signal came too late to stop anything (during the last
        // migration, which completed): the run still exits with the
        // signal's code, as documented, and its output says so.
        let completed = if report.dry_run {
            Vec::new()
        } else {
            report.steps
        };
        return Err(lockstep::Error::Cancelled { completed }.into());
    }
    let (verb, done) = match report.direction {
        Direction::Up => ("apply", "applied"),
        Direction::Down => ("roll back", "rolled back"),
    };
    // Callbacks run, but are no migrations.
    let n = report
        .steps
        .iter()
        .filter(|s| !matches!(s.kind, Kind::Callback(_)))
        .count();
    if report.dry_run {
        for step in &report.steps {
            let verb = if matches!(step.kind, Kind::Callback(_)) {
                "run"
            } else {
                verb
            };
            let mut line = format!("would {verb} {}", step.named());
            if step.no_transaction {
                line.push_str(" (no transaction)");
            }
            printer.line(&line);
        }
        if n == 0 {
            printer.line(&nothing_done.unwrap_or_else(|| nothing(report.direction)));
        } else {
            printer.line(&format!(
                "dry run: {} would be {done}; nothing was changed",
                plural(n, "migration", "migrations")
            ));
        }
    } else if n == 0 {
        printer.line(&nothing_done.unwrap_or_else(|| nothing(report.direction)));
    } else {
        let summary = format!(
            "{done} {} in {}",
            plural(n, "migration", "migrations"),
            printer.duration(elapsed)
        );
        let summary = printer.paint(&summary, Style::Bold, false);
        printer.line(&summary);
    }
    printer.document(command, Exit::Success, || json::Run {
        direction: report.direction.as_str(),
        dry_run: report.dry_run,
        migrations: step_json(&report.steps),
    });
    Ok(Exit::Success)
}

fn nothing(direction: Direction) -> String {
    match direction {
        Direction::Up => "database is up to date: nothing to apply".into(),
        Direction::Down => "nothing to roll back".into(),
    }
}

/// How often a waiter says who it waits for.
const WAIT_NOTE_EVERY: Duration = Duration::from_secs(5);

/// Prints each migration as it completes, a progress bar on a terminal, and
/// what happens to the lock.
pub(super) struct Progress<'p> {
    printer: &'p mut Printer,
    last_wait_note: Option<Instant>,
}

impl<'p> Progress<'p> {
    pub(super) fn new(printer: &'p mut Printer) -> Self {
        Progress {
            printer,
            last_wait_note: None,
        }
    }

    fn lock_event(&mut self, event: &LockEvent<'_>) {
        match event {
            LockEvent::Waiting { holder, .. }
                if self
                    .last_wait_note
                    .is_none_or(|t| t.elapsed() >= WAIT_NOTE_EVERY) =>
            {
                self.last_wait_note = Some(Instant::now());
                self.printer
                    .note(&format!("waiting for lock held by {}", holder.describe()));
            }
            LockEvent::Acquired { token, took_over } => {
                if let Some((previous, why)) = took_over {
                    self.printer.note(&format!(
                        "took over the migration lock from {}: {why} (token {token})",
                        previous.owner.as_deref().unwrap_or("nobody")
                    ));
                } else if self.last_wait_note.is_some() {
                    self.printer
                        .note(&format!("acquired the migration lock (token {token})"));
                } else {
                    self.printer
                        .verbose(&format!("acquired the migration lock (token {token})"));
                }
            }
            LockEvent::Released { token } => {
                self.printer
                    .verbose(&format!("released the migration lock (token {token})"));
            }
            LockEvent::NotReleased { token, reason } => {
                self.printer.warn(&format!(
                    "did not release the migration lock (token {token}): {reason}"
                ));
            }
            _ => {}
        }
    }
}

impl Observer for Progress<'_> {
    fn event(&mut self, event: &Event<'_>) {
        match event {
            Event::Lock(lock) => self.lock_event(lock),
            Event::Planned { migrations, .. } => self.printer.start_progress(migrations.len()),
            Event::Started {
                direction,
                migration,
                index,
                ..
            } => {
                let verb = match (direction, migration.kind()) {
                    (_, Kind::Callback(_)) => "running",
                    (Direction::Up, _) => "applying",
                    (Direction::Down, _) => "rolling back",
                };
                self.printer
                    .progress(*index, &format!("{verb} {}", Named::of(migration)));
            }
            Event::LockRetry {
                migration,
                try_number,
                tries,
                wait,
                blocked,
            } => {
                let what = blocked.map_or_else(|| "a lock".to_string(), |b| b.to_string());
                self.printer.note(&format!(
                    "migration {} gave up waiting for {what} and was rolled back; try {} of {tries} in {}",
                    Named::of(migration),
                    try_number + 1,
                    self.printer.duration(*wait)
                ));
            }
            Event::Finished {
                direction,
                step,
                index,
                ..
            } => {
                let verb = match (direction, step.kind) {
                    (_, Kind::Callback(_)) => "ran",
                    (Direction::Up, _) => "applied",
                    (Direction::Down, _) => "rolled back",
                };
                let mut line = format!(
                    "{} {} ({})",
                    self.printer.paint(verb, Style::Good, false),
                    step.named(),
                    self.printer.duration(step.duration)
                );
                if step.no_transaction {
                    line.push_str(" [no transaction]");
                }
                self.printer.line(&line);
                self.printer.progress(index + 1, "");
            }
            _ => {}
        }
    }
}
