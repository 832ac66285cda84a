//! Dispatch: parse, load settings, run one command, print its result or
//! error, return the exit code.

use std::ffi::OsString;

use clap::Parser;
use lockstep::{LockOptions, MigrationSet, Migrator, Options};

use crate::cli::{Cli, Command, DatabaseCommand, LockArgs, LockCommand, StatementArgs};
use crate::error::{CliError, Exit};
use crate::json;
use crate::printer::Printer;
use crate::settings::Settings;

mod docs;
mod fix;
mod inspect;
mod lock;
mod project;
mod run;
mod table;

pub fn main() -> i32 {
    crate::signals::install();
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, &args),
    };
    if takes_lock(&cli.command) {
        crate::signals::stop_cleanly();
    }
    let env = |name: &str| std::env::var(name).ok();
    let mut printer = Printer::new(&cli.global, &env);
    // Generated from the definitions alone: no settings to load.
    match &cli.command {
        Command::Completions(args) => {
            docs::completions(args.shell);
            return 0;
        }
        Command::Man(args) => {
            return match docs::man(args) {
                Ok(()) => 0,
                Err(err) => {
                    printer.error("man", &err);
                    err.exit.code()
                }
            };
        }
        _ => {}
    }
    let command = cli.command.name();
    let mut secret = None;
    let result = Settings::load(&cli.global, &env).and_then(|settings| {
        secret = settings
            .database
            .as_ref()
            .and_then(|d| d.url.password().map(str::to_string));
        if let Some(db) = &settings.database {
            printer.verbose(&format!("database: {} (from {})", db.url, db.source));
        }
        printer.verbose(&format!("migrations: {}", settings.migrations.display()));
        dispatch(&cli.command, &settings, &mut printer)
    });
    match result {
        // Interrupted, but nothing was left to stop: still the signal's
        // code, as documented; unless a JSON document already gave the
        // exit code, which it must agree with.
        Ok(_) if crate::signals::received().is_some() && printer.printed_exit().is_none() => {
            Exit::Signal(crate::signals::received().unwrap_or(libc::SIGINT)).code()
        }
        Ok(exit) => printer.printed_exit().unwrap_or(exit).code(),
        Err(err) => {
            let err = err.scrub(secret.as_deref());
            printer.error(command, &err);
            err.exit.code()
        }
    }
}

/// The commands that run under the lock, and so handle SIGINT/SIGTERM.
fn takes_lock(command: &Command) -> bool {
    matches!(
        command,
        Command::Upgrade(_)
            | Command::Rollback(_)
            | Command::Fix(_)
            | Command::Repair(_)
            | Command::Baseline(_)
            | Command::Import(_)
    )
}

fn dispatch(
    command: &Command,
    settings: &Settings,
    printer: &mut Printer,
) -> Result<Exit, CliError> {
    match command {
        Command::Completions(_) | Command::Man(_) => unreachable!("handled before settings"),
        Command::Database(DatabaseCommand::Create) => project::create_database(settings, printer),
        Command::Database(DatabaseCommand::Drop(args)) => {
            project::drop_database(settings, printer, args)
        }
        Command::Wait(args) => project::wait(settings, printer, args),
        Command::Init => project::init(settings, printer),
        Command::New(args) => project::new(settings, printer, args),
        Command::Upgrade(args) => run::upgrade(settings, printer, args),
        Command::Rollback(args) => run::rollback(settings, printer, args),
        Command::Status(args) => inspect::status(settings, printer, args),
        Command::History => inspect::history(settings, printer),
        Command::Current => inspect::current(settings, printer),
        Command::Baseline(args) => fix::baseline(settings, printer, args),
        Command::Import(args) => fix::import(settings, printer, args),
        Command::Validate => inspect::validate(settings, printer),
        Command::Fix(args) => fix::fix(settings, printer, args, command.name()),
        Command::Repair(args) => {
            settings.database()?;
            let (fixed, dry_run, nothing) =
                fix::checksums(settings, printer, &args.lock, args.dry_run)?;
            fix::report(printer, command.name(), &fixed, dry_run, nothing, &[])
        }
        Command::Lock(LockCommand::Status(args)) | Command::LockStatus(args) => {
            lock::status(settings, printer, args)
        }
        Command::Lock(LockCommand::Release(args)) | Command::LockRelease(args) => {
            lock::release(settings, printer, args)
        }
        Command::Lock(LockCommand::Log(args)) | Command::LockLog(args) => {
            lock::log(settings, printer, args)
        }
    }
}

/// Options for the library from the settings, and a command's lock and
/// statement flags.
fn options(
    settings: &Settings,
    lock: Option<&LockArgs>,
    statements: Option<&StatementArgs>,
) -> Options {
    let lock = match lock {
        Some(args) if args.no_lock => None,
        _ => Some(LockOptions {
            ttl: settings.lock_ttl,
            timeout: lock
                .and_then(|a| a.lock_timeout)
                .unwrap_or(settings.lock_timeout),
            no_wait: lock.is_some_and(|a| a.no_wait),
        }),
    };
    // A flag's 0 is no bound, as the config file's is.
    let bound = |flag: Option<std::time::Duration>, setting| match flag {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => setting,
    };
    let mut statement_options = settings.statements;
    if let Some(args) = statements {
        statement_options.lock_timeout =
            bound(args.statement_lock_timeout, statement_options.lock_timeout);
        statement_options.timeout = bound(args.statement_timeout, statement_options.timeout);
        statement_options.lock_retries =
            args.lock_retries.unwrap_or(statement_options.lock_retries);
    }
    Options {
        history_table: settings.history_table.clone(),
        executor: settings.owner.clone(),
        lock,
        statements: statement_options,
    }
}

/// Connects for a command that writes under the lock: says loudly what
/// `--no-lock` gives up, and lets SIGINT/SIGTERM stop the run cleanly.
fn connect(
    settings: &Settings,
    printer: &mut Printer,
    lock: &LockArgs,
    statements: Option<&StatementArgs>,
) -> Result<Migrator, CliError> {
    if lock.no_lock {
        printer.warn(
            "--no-lock: running WITHOUT the migration lock. Nothing stops another run from applying \
             the same migrations at the same time or interleaving with this one, and nothing fences \
             this run's writes if it stalls.",
        );
    }
    let options = options(settings, Some(lock), statements);
    let mut migrator = Migrator::connect(settings.database()?, options)?;
    crate::signals::register(migrator.cancel_handle());
    if let Some(note) = printer.note_from_any_thread() {
        migrator.on_blocked(std::sync::Arc::new(move |blocked: &lockstep::Blocked| {
            note(&format!("waiting for {blocked}"));
        }));
    }
    Ok(migrator)
}

/// Reads the migrations directory and connects. Every file is parsed
/// before anything can change, yet connecting changes nothing (an SQLite
/// file that does not exist is created only when lockstep first writes).
/// On a server (PostgreSQL, MariaDB/MySQL) the files are read on a second
/// thread while the connection is set up and the history read (each
/// command's first read, without the lock): both wait on the server. On
/// SQLite, one after the other, history first: reading it is CPU work
/// that on two cores only competes with the file readers, and the memory
/// SQLite let go by the end of the read is there for the files' records
/// (docs/performance.md).
/// A bad file wins over a failed connection or read, as it would serially.
fn load_and_connect(
    settings: &Settings,
    connect: impl FnOnce() -> Result<Migrator, CliError>,
) -> Result<(MigrationSet, Migrator), CliError> {
    load_with(
        settings,
        |dir, format| MigrationSet::load_as(dir, format),
        connect,
    )
}

/// [`load_and_connect`], with files still to write (an empty upgrade
/// section) taken in: for `status`, which shows them.
fn load_drafts_and_connect(
    settings: &Settings,
    connect: impl FnOnce() -> Result<Migrator, CliError>,
) -> Result<(MigrationSet, Migrator), CliError> {
    load_with(
        settings,
        |dir, format| MigrationSet::load_drafts_as(dir, format),
        connect,
    )
}

type Load = fn(&std::path::Path, lockstep::Format) -> Result<MigrationSet, lockstep::SourceError>;

fn load_with(
    settings: &Settings,
    load: Load,
    connect: impl FnOnce() -> Result<Migrator, CliError>,
) -> Result<(MigrationSet, Migrator), CliError> {
    let dir = settings.migrations.as_path();
    if settings.database()?.engine() == "sqlite" {
        let migrator = connect().map(|mut migrator| {
            migrator.prefetch_history();
            migrator
        });
        let set = load(dir, settings.format)?;
        return Ok((set, migrator?));
    }
    std::thread::scope(|scope| {
        let loading = scope.spawn(|| load(dir, settings.format));
        let migrator = connect().map(|mut migrator| {
            migrator.prefetch_history();
            migrator
        });
        let set = loading
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        Ok((set, migrator?))
    })
}

/// Says so when the database is a SQLite file that does not exist yet: a
/// command that only reads takes it for an empty database, as a mistyped
/// path would look otherwise.
fn note_missing_file(settings: &Settings, printer: &mut Printer) {
    if let Some(path) = settings
        .database()
        .ok()
        .and_then(|url| url.sqlite_file())
        .filter(|path| !path.exists())
    {
        printer.note(&format!(
            "note: the database file {} does not exist yet: it reads as empty (`lockstep upgrade` creates it)",
            path.display()
        ));
    }
}

/// Connects for a command that only reads: creates no file and no table.
fn connect_read_only(settings: &Settings) -> Result<Migrator, CliError> {
    Ok(Migrator::connect_read_only(
        settings.database()?,
        options(settings, None, None),
    )?)
}

/// Reports a command-line parsing error; with `--json` among the arguments,
/// as a JSON document.
fn usage_error(e: clap::Error, args: &[OsString]) -> i32 {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return 0;
    }
    // The error may quote an argument, which may be a database URL typed
    // in the wrong place: its password is hidden.
    let json = args.iter().any(|a| a == "--json");
    if !json {
        use std::io::{IsTerminal, Write};
        let rendered = e.render();
        let text = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            rendered.ansi().to_string()
        } else {
            rendered.to_string()
        };
        let _ = std::io::stderr().write_all(crate::redact::urls(&text).as_bytes());
        return Exit::Usage.code();
    }
    let message = crate::redact::urls(&e.render().to_string());
    let message = message
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string();
    let err = CliError::usage(message).with_hint("run `lockstep --help`");
    let mut printer = Printer::fallback(true);
    printer.error("", &err);
    Exit::Usage.code()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

fn step_json(steps: &[lockstep::Step]) -> Vec<json::StepJson> {
    steps.iter().map(json::StepJson::from).collect()
}
