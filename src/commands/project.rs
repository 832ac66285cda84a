//! `init` and `new`: files, no database.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lockstep::{Layout, Migration, MigrationSet};

use crate::cli::{DropArgs, NewArgs, WaitArgs};
use crate::error::{CliError, Exit};
use crate::json;
use crate::printer::Printer;
use crate::settings::{Settings, DEFAULT_CONFIG};

const CONFIG_TEMPLATE: &str = r#"# lockstep configuration. Flags and environment variables override it:
# --database-url, then LOCKSTEP_DATABASE_URL, then DATABASE_URL.

# The database: sqlite://FILE (relative to this file),
# postgres://USER@HOST:PORT/DATABASE or mysql://USER@HOST:PORT/DATABASE.
# Keep passwords out of this file: set LOCKSTEP_DATABASE_URL in the
# environment instead.
database_url = "sqlite://lockstep.db"

# The directory of migration files, relative to this file.
migrations = "migrations"

# The table that records applied migrations (optionally `schema.table`).
# history_table = "lockstep_history"

# Whose files the directory holds: auto (each file as it comes, one layout
# per directory), lockstep, golang-migrate, sqlx, dbmate, goose or diesel.
# format = "auto"

# The migration lock (the values shown are the defaults).
# [lock]
# How long a run waits for another run's lock before giving up (exit 3).
# timeout = "5m"
# The lease: a holder that stops renewing it (a crash, a lost network)
# is taken over this long after its last renewal; a holder whose
# session is seen dead, at once.
# ttl = "30s"

# How a migration's statements wait for table locks that the
# application holds (the values shown are the defaults).
# [statements]
# A statement waits at most this long for a lock, then its migration is
# rolled back and tried again (0: no bound).
# lock_timeout = "5s"
# At most this long for a statement to run (0: no bound).
# timeout = "0"
# How many times, and for how long in all, a migration is tried again.
# lock_retries = 10
# lock_retry_for = "10m"
"#;

pub fn init(settings: &Settings, printer: &mut Printer) -> Result<Exit, CliError> {
    let _ = settings;
    let config = PathBuf::from(DEFAULT_CONFIG);
    let migrations = PathBuf::from("migrations");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&config)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CliError::usage(format!(
                    "{} already exists; nothing was changed",
                    config.display()
                ))
                .with_hint("edit it, or remove it to start over")
            } else {
                CliError::io(format!("cannot create {}: {e}", config.display()))
            }
        })?;
    file.write_all(CONFIG_TEMPLATE.as_bytes())
        .map_err(|e| CliError::io(format!("cannot write {}: {e}", config.display())))?;
    let existed = migrations.is_dir();
    fs::create_dir_all(&migrations)
        .map_err(|e| CliError::io(format!("cannot create {}: {e}", migrations.display())))?;
    printer.line(&format!("created {}", config.display()));
    if existed {
        printer.line(&format!(
            "{}/ exists already: kept as it is",
            migrations.display()
        ));
    } else {
        printer.line(&format!("created {}/", migrations.display()));
    }
    printer.note("next: `lockstep new create_first_table`, write its SQL, then `lockstep upgrade`");
    printer.document("init", Exit::Success, || json::Init {
        config: config.display().to_string(),
        migrations: migrations.display().to_string(),
    });
    Ok(Exit::Success)
}

/// Versions written as `YYYYMMDDHHMMSS` have this many digits; fewer means
/// the directory numbers its migrations in sequence.
const TIMESTAMP_DIGITS: usize = 14;

pub fn new(settings: &Settings, printer: &mut Printer, args: &NewArgs) -> Result<Exit, CliError> {
    check_name(&args.name)?;
    let dir = &settings.migrations;
    if !dir.is_dir() {
        return Err(CliError::usage(format!(
            "migrations directory {} does not exist",
            dir.display()
        ))
        .with_hint("run `lockstep init`, or pass `--migrations DIR`"));
    }
    // The next migration in the configured format's form, else in the
    // form of the newest: another tool's, when the directory is that tool's.
    let layout = settings
        .format
        .new_layout()
        .or_else(|| MigrationSet::newest_layout(dir))
        .unwrap_or(Layout::Lockstep);
    // Another `new` may pick the same version at the same moment: create
    // the file exclusively, then make sure no other file took the version.
    for _ in 0..100 {
        let existing = versions(dir)?;
        let newest = existing
            .iter()
            .max_by_key(|(v, _)| *v)
            .map(|(_, file)| Spelling::of(file))
            .unwrap_or_default();
        // After a dotted newest, `1.2.3`, the next whole version: 2.
        let Some(version) = next_version(
            existing.iter().map(|(v, _)| v.first()).max(),
            newest.digits,
            Migration::version_at(std::time::SystemTime::now()),
        ) else {
            return Err(CliError::usage(format!(
                "no version is left after {}: versions have at most 18 digits",
                Migration::MAX_VERSION
            ))
            .with_hint(
                "renumber the migrations that are not applied yet, or start a new directory",
            ));
        };
        let stem = newest.stem(version, &args.name);
        let Some(path) = write_new(dir, &stem, version, &args.name, layout)? else {
            continue;
        };
        let taken_twice = versions(dir)?
            .iter()
            .filter(|(v, _)| *v == lockstep::Version::whole(version))
            .count()
            > 1;
        if taken_twice {
            remove_new(&path);
            continue;
        }
        printer.line(&path.display().to_string());
        printer.document("new", Exit::Success, || json::New {
            path: path.display().to_string(),
            version: lockstep::Version::whole(version).into(),
            name: args.name.clone(),
        });
        return Ok(Exit::Success);
    }
    Err(CliError::io(
        "could not find a free version after 100 attempts",
    ))
}

/// Creates the new migration, exclusively, in `layout`'s form: its path
/// (a pair's up file, a diesel migration's directory), or `None` when the
/// name was taken meanwhile.
fn write_new(
    dir: &Path,
    stem: &str,
    version: u64,
    name: &str,
    layout: Layout,
) -> Result<Option<PathBuf>, CliError> {
    let create = |path: &Path, text: &str| -> Result<bool, CliError> {
        let io = |e: std::io::Error| CliError::io(format!("cannot create {}: {e}", path.display()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(mut file) => file.write_all(text.as_bytes()).map(|()| true).map_err(io),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(e)),
        }
    };
    let single = |template: &str| -> Result<Option<PathBuf>, CliError> {
        let path = dir.join(format!("{stem}.sql"));
        Ok(create(&path, template)?.then_some(path))
    };
    match layout {
        Layout::Dbmate => single("-- migrate:up\n\n\n-- migrate:down\n\n"),
        Layout::Goose => single("-- +goose Up\n\n\n-- +goose Down\n\n"),
        // sqlx's `migrate add` writes the same line.
        Layout::WholeFile => single("-- Add migration script here\n"),
        Layout::Pair => {
            let up = dir.join(format!("{stem}.up.sql"));
            if !create(&up, "")? {
                return Ok(None);
            }
            create(&dir.join(format!("{stem}.down.sql")), "")?;
            Ok(Some(up))
        }
        Layout::Diesel { .. } => {
            // diesel writes its versions as `2023-01-01-120000`.
            let digits = format!("{version:014}");
            let dashed = format!(
                "{}-{}-{}-{}",
                &digits[..4],
                &digits[4..6],
                &digits[6..8],
                &digits[8..]
            );
            let path = dir.join(format!("{dashed}_{name}"));
            match fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
                Err(e) => {
                    return Err(CliError::io(format!(
                        "cannot create {}: {e}",
                        path.display()
                    )))
                }
            }
            create(&path.join("up.sql"), "")?;
            create(&path.join("down.sql"), "")?;
            Ok(Some(path))
        }
        _ => single(&format!(
            "-- {version} {name}\n-- upgrade\n\n\n-- rollback\n\n"
        )),
    }
}

/// Takes back a migration `new` wrote, whose version another took.
fn remove_new(path: &Path) {
    if path.is_dir() {
        let _ = fs::remove_dir_all(path);
    } else {
        let _ = fs::remove_file(path);
        if let Some(up) = path.to_str().and_then(|p| p.strip_suffix(".up.sql")) {
            let _ = fs::remove_file(format!("{up}.down.sql"));
        }
    }
}

/// Refuses a name `new` cannot use, suggesting one it can.
fn check_name(name: &str) -> Result<(), CliError> {
    Migration::check_name(name).map_err(|message| {
        let suggestion: String = name
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let suggestion = suggestion.trim_matches('_').to_string();
        let err = CliError::usage(message);
        if suggestion.is_empty() {
            err
        } else {
            err.with_hint(format!("lockstep new {suggestion}"))
        }
    })
}

/// How a directory's newest file spells its name, for `new` to spell the
/// next alike: lockstep's `<version>_<name>`, Flyway's and jetbase's
/// `V<version>__<name>` (MSR's `V<version>_<name>`), DBWarden's
/// `<database>__<NNNN>_<name>`; with as many digits, when the versions are
/// a sequence rather than times.
#[derive(Debug, PartialEq, Eq)]
struct Spelling {
    /// What comes before the version: ``, `V`, `<database>__`.
    prefix: String,
    /// The version's digits in the newest file's name.
    digits: usize,
    /// What comes between the version and the name: `_` or `__`.
    separator: &'static str,
}

/// lockstep's own, for a directory without migrations.
impl Default for Spelling {
    fn default() -> Spelling {
        Spelling {
            prefix: String::new(),
            digits: 0,
            separator: "_",
        }
    }
}

impl Spelling {
    fn of(file_name: &str) -> Spelling {
        let flyway =
            file_name.starts_with('V') && file_name[1..].starts_with(|c: char| c.is_ascii_digit());
        let prefix = if flyway {
            "V".to_string()
        } else if file_name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            // DBWarden's: the database's name and `__` before the digits.
            file_name
                .rmatch_indices("__")
                .map(|(at, _)| &file_name[..at + 2])
                .find(|prefix| file_name[prefix.len()..].starts_with(|c: char| c.is_ascii_digit()))
                .unwrap_or_default()
                .to_string()
        } else {
            String::new()
        };
        let rest = &file_name[prefix.len()..];
        // diesel's `2023-01-01-120000` counts its fourteen digits.
        let version = rest.split(['_', '.']).next().unwrap_or_default();
        let digits = version.chars().filter(char::is_ascii_digit).count();
        let separator = if flyway && rest[version.len()..].starts_with("__") {
            "__"
        } else {
            "_"
        };
        Spelling {
            prefix,
            digits,
            separator,
        }
    }

    /// The name of `version`'s file (without its extension).
    fn stem(&self, version: u64, name: &str) -> String {
        let width = if self.digits < TIMESTAMP_DIGITS {
            self.digits
        } else {
            0
        };
        let Spelling {
            prefix, separator, ..
        } = self;
        format!("{prefix}{version:0width$}{separator}{name}")
    }
}

/// The versions of the migration files in `dir`, with the name of each
/// one's file. Files that are not migrations are skipped: `new` must work
/// even while another file is malformed.
fn versions(dir: &Path) -> Result<Vec<(lockstep::Version, String)>, CliError> {
    let entries = fs::read_dir(dir)
        .map_err(|e| CliError::io(format!("cannot read {}: {e}", dir.display())))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // A pair's version is counted once, at its up file.
        if name.ends_with(".down.sql") {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let version = if is_dir {
            Migration::version_of_dir(name)
        } else {
            Migration::version_of(name)
        };
        if let Some(version) = version {
            out.push((version, name.to_string()));
        }
    }
    Ok(out)
}

/// The next version: one past the newest in a sequence-numbered directory
/// (its newest written with fewer `digits` than a time), otherwise the
/// current UTC time as `YYYYMMDDHHMMSS`, or one past the newest when that
/// is later (two calls in one second). `None` when the newest is the
/// largest version there is.
fn next_version(newest: Option<u64>, digits: usize, now: u64) -> Option<u64> {
    let next = match newest {
        Some(newest) if digits < TIMESTAMP_DIGITS => newest + 1,
        Some(newest) => now.max(newest + 1),
        None => now,
    };
    (next <= Migration::MAX_VERSION).then_some(next)
}

/// `database create`: the database the URL names, unless it is there.
pub fn create_database(settings: &Settings, printer: &mut Printer) -> Result<Exit, CliError> {
    let url = settings.database()?;
    let result = lockstep::create_database(url)?;
    printer.line(&match result {
        lockstep::DatabaseChange::AlreadyThere => {
            format!("{url} exists already: nothing to create")
        }
        _ => format!("created {url}"),
    });
    printer.document("database create", Exit::Success, || json::DatabaseDoc {
        database: url.to_string(),
        result: result.as_str(),
    });
    Ok(Exit::Success)
}

/// `database drop`: the database the URL names, after asking on a
/// terminal.
pub fn drop_database(
    settings: &Settings,
    printer: &mut Printer,
    args: &DropArgs,
) -> Result<Exit, CliError> {
    let url = settings.database()?;
    if !args.yes {
        if !printer.can_ask() {
            return Err(CliError::usage(
                "`database drop` needs confirmation and there is no terminal to ask on",
            )
            .with_hint("pass --yes to drop it without asking"));
        }
        if !printer.confirm(&format!("drop {url} and everything in it?")) {
            printer.line("nothing was dropped");
            return Ok(Exit::Success);
        }
    }
    let result = lockstep::drop_database(url)?;
    printer.line(&match result {
        lockstep::DatabaseChange::NotThere => format!("{url} does not exist: nothing to drop"),
        _ => format!("dropped {url}"),
    });
    printer.document("database drop", Exit::Success, || json::DatabaseDoc {
        database: url.to_string(),
        result: result.as_str(),
    });
    Ok(Exit::Success)
}

/// How often `wait` says what it is waiting for.
const WAIT_NOTE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// `wait`: until the database's server accepts connections.
pub fn wait(settings: &Settings, printer: &mut Printer, args: &WaitArgs) -> Result<Exit, CliError> {
    let url = settings.database()?;
    let mut said: Option<std::time::Instant> = None;
    let waited = lockstep::wait_for_database(url, args.timeout, &mut |e| {
        if said.is_none_or(|at| at.elapsed() >= WAIT_NOTE_EVERY) {
            printer.note(&format!("waiting: {e}"));
            said = Some(std::time::Instant::now());
        }
    })?;
    printer.line(&format!(
        "{url} accepts connections (waited {})",
        printer.duration(waited)
    ));
    printer.document("wait", Exit::Success, || json::Wait {
        database: url.to_string(),
        waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
    });
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_versions() {
        let now = 20261124111045;
        assert_eq!(next_version(None, 0, now), Some(now));
        assert_eq!(next_version(Some(2), 4, now), Some(3));
        assert_eq!(next_version(Some(20261124111045), 14, now), Some(now + 1));
        assert_eq!(next_version(Some(20200101000000), 14, now), Some(now));
        let max = Migration::MAX_VERSION;
        assert_eq!(next_version(Some(max - 1), 18, now), Some(max));
        assert_eq!(next_version(Some(max), 18, now), None);
    }

    #[test]
    fn new_names_are_spelled_as_the_newest() {
        assert_eq!(
            Spelling::default().stem(20261124111045, "posts"),
            "20261124111045_posts"
        );
        for (newest, version, want) in [
            ("0002_users.sql", 3, "0003_posts"),
            (
                "20261124111045_users.up.sql",
                20261124111046,
                "20261124111046_posts",
            ),
            ("V2__users.sql", 3, "V3__posts"),
            (
                "V202301011200_users.up.sql",
                202301011201,
                "V202301011201_posts",
            ),
            ("primary__0002_users.sql", 3, "primary__0003_posts"),
            ("app__db__0009_users.sql", 10, "app__db__0010_posts"),
            (
                "2024-01-01-000000_users",
                20240102000000,
                "20240102000000_posts",
            ),
        ] {
            assert_eq!(
                Spelling::of(newest).stem(version, "posts"),
                want,
                "{newest}"
            );
        }
    }
}
