//! One validated `Settings` from flags, environment and the config file,
//! before any database is touched.
//!
//! Precedence, for each setting: flag > environment > config file > default.
//! The database URL's environment comes in two steps:
//! `LOCKSTEP_DATABASE_URL`, then `DATABASE_URL`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep::{DatabaseUrl, Format, LockOptions, StatementOptions, TableName, UrlError};
use serde::Deserialize;

use crate::cli::GlobalArgs;
use crate::error::CliError;

/// The config file found when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "lockstep.toml";

/// `lockstep.toml`. Unknown keys are errors, named with their line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    migrations: Option<PathBuf>,
    history_table: Option<String>,
    format: Option<String>,
    lock: Option<FileLock>,
    statements: Option<FileStatements>,
}

/// `[statements]` in `lockstep.toml`: how migrations' statements wait for
/// table locks.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStatements {
    lock_timeout: Option<String>,
    timeout: Option<String>,
    lock_retries: Option<u32>,
    lock_retry_for: Option<String>,
}

/// `[lock]` in `lockstep.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLock {
    timeout: Option<String>,
    ttl: Option<String>,
}

#[derive(Debug)]
pub struct Settings {
    /// The database, when one is configured anywhere.
    pub database: Option<Database>,
    /// The migrations directory.
    pub migrations: PathBuf,
    /// The history table.
    pub history_table: TableName,
    /// The executor id: `--owner`, then LOCKSTEP_OWNER, then
    /// `<host>-<pid>-<random hex>`.
    pub owner: String,
    /// The lease (`[lock] ttl`, default 30s).
    pub lock_ttl: Duration,
    /// How long to wait for the lock (`[lock] timeout`, default 5m); the
    /// command's `--lock-timeout` overrides it.
    pub lock_timeout: Duration,
    /// Whose files the migrations directory holds (`format`, default
    /// `auto`).
    pub format: Format,
    /// How migrations' statements wait for table locks (`[statements]`);
    /// the command's `--statement-lock-timeout`, `--statement-timeout` and
    /// `--lock-retries` override it.
    pub statements: StatementOptions,
}

#[derive(Debug)]
pub struct Database {
    pub url: DatabaseUrl,
    /// Where the URL came from, for messages.
    pub source: String,
}

/// What a config file says, validated.
#[derive(Debug, Default)]
pub struct FileSettings {
    database_url: Option<String>,
    migrations: Option<PathBuf>,
    history_table: Option<TableName>,
    lock_ttl: Option<Duration>,
    lock_timeout: Option<Duration>,
    format: Format,
    statements: StatementOptions,
}

impl Settings {
    pub fn load(
        args: &GlobalArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, CliError> {
        let (file, file_path) = read_config(args.config.as_deref())?;
        // Paths in the config file are relative to the file's directory.
        let base = file_path
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();

        let env_url = |name: &str| {
            env(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (v, name.to_string()))
        };
        let url = args
            .database_url
            .clone()
            .map(|u| (u, "--database-url".to_string()))
            .or_else(|| env_url("LOCKSTEP_DATABASE_URL"))
            .or_else(|| env_url("DATABASE_URL"));
        let database = match (url, &file.database_url) {
            (Some((url, source)), _) => Some(parse_url(&url, source, None)?),
            (None, Some(url)) => {
                let source = format!("database_url in {}", display(&file_path));
                Some(parse_url(url, source, Some(&base))?)
            }
            (None, None) => None,
        };

        let migrations = match (&args.migrations, &file.migrations) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) => base.join(dir),
            (None, None) => base.join("migrations"),
        };

        let owner = match args
            .owner
            .clone()
            .or_else(|| env("LOCKSTEP_OWNER").filter(|o| !o.is_empty()))
        {
            Some(owner) => {
                lockstep::Options::check_executor(&owner)
                    .map_err(|m| CliError::config(format!("--owner / LOCKSTEP_OWNER: {m}")))?;
                owner
            }
            None => lockstep::Options::default().executor,
        };

        Ok(Settings {
            database,
            migrations,
            history_table: file.history_table.unwrap_or_default(),
            owner,
            lock_ttl: file.lock_ttl.unwrap_or(LockOptions::default().ttl),
            lock_timeout: file.lock_timeout.unwrap_or(LockOptions::default().timeout),
            format: file.format,
            statements: file.statements,
        })
    }

    /// The database, or the error that says how to configure one.
    pub fn database(&self) -> Result<&DatabaseUrl, CliError> {
        self.database.as_ref().map(|d| &d.url).ok_or_else(|| {
            CliError::config("no database configured").with_hint(
                "run `lockstep init` to create lockstep.toml, or pass `--database-url URL` (or set LOCKSTEP_DATABASE_URL)",
            )
        })
    }
}

fn display(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map_or_else(|| DEFAULT_CONFIG.to_string(), |p| p.display().to_string())
}

fn parse_url(url: &str, source: String, base: Option<&Path>) -> Result<Database, CliError> {
    let parsed: DatabaseUrl = url.parse().map_err(|e: UrlError| {
        let err = CliError::config(format!("{e} (from {source})")).with_code("database_url");
        // A parameter's error names the values it takes; a hint on the
        // URL's form would not fit it.
        if e.is_in_parameter() {
            err
        } else {
            err.with_hint(lockstep::Remedy::FixUrl.to_string())
        }
    })?;
    Ok(Database {
        url: match base {
            Some(base) => parsed.relative_to(base),
            None => parsed,
        },
        source,
    })
}

fn read_config(explicit: Option<&Path>) -> Result<(FileSettings, Option<PathBuf>), CliError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG);
            if !p.exists() {
                return Ok((FileSettings::default(), None));
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        // In the words the other file errors use.
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        let err = CliError::config(format!(
            "cannot read config file {}: {reason}",
            path.display()
        ));
        if e.kind() == std::io::ErrorKind::NotFound {
            err.with_hint("check the path given to --config, or run `lockstep init`")
        } else {
            err
        }
    })?;
    Ok((parse_config(&text, &path)?, Some(path)))
}

/// Parses and validates a config file's text; `path` names it in errors.
/// Every value is checked here, before anything connects.
pub fn parse_config(text: &str, path: &Path) -> Result<FileSettings, CliError> {
    let config: FileConfig = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let location = match line {
            Some(line) => format!("{}:{line}", path.display()),
            None => path.display().to_string(),
        };
        let message = e.message().replace("unknown field", "unknown key");
        CliError::config(format!("{location}: {message}"))
            .with_hint("lockstep.toml takes database_url, migrations, history_table, format, a [lock] table with timeout and ttl, and a [statements] table with lock_timeout, timeout, lock_retries and lock_retry_for")
    })?;
    let history_table = config
        .history_table
        .as_deref()
        .map(|name| {
            TableName::parse(name).map_err(|message| {
                CliError::config(format!("history_table in {}: {message}", path.display()))
            })
        })
        .transpose()?;
    let lock = config.lock.unwrap_or_default();
    // A duration, and one the lock can honour.
    let duration = |value: &Option<String>,
                    key: &str,
                    in_range: fn(Duration) -> Result<(), String>|
     -> Result<Option<Duration>, CliError> {
        value
            .as_deref()
            .map(|v| {
                lockstep::parse_duration(v)
                    .and_then(|d| in_range(d).map(|()| d))
                    .map_err(|m| {
                        CliError::config(format!("[lock] {key} in {}: {m}", path.display()))
                    })
            })
            .transpose()
    };
    let lock_ttl = duration(&lock.ttl, "ttl", LockOptions::check_ttl)?;
    let lock_timeout = duration(&lock.timeout, "timeout", LockOptions::check_timeout)?;
    let statements = statement_options(config.statements.unwrap_or_default(), path)?;
    let format = match config.format.as_deref() {
        None => Format::Auto,
        Some(name) => Format::parse(name).ok_or_else(|| {
            CliError::config(format!(
                "format in {}: unknown format `{name}`",
                path.display()
            ))
            .with_hint(format!("use one of {}", Format::NAMES.join(", ")))
        })?,
    };
    if let Some(url) = &config.database_url {
        parse_url(url, format!("database_url in {}", path.display()), None)?;
    }
    Ok(FileSettings {
        database_url: config.database_url,
        migrations: config.migrations,
        history_table,
        lock_ttl,
        lock_timeout,
        format,
        statements,
    })
}

/// `[statements]`, validated: durations as flags take them, `0` for no
/// bound.
fn statement_options(file: FileStatements, path: &Path) -> Result<StatementOptions, CliError> {
    let defaults = StatementOptions::default();
    let duration = |value: &Option<String>, key: &str| {
        value
            .as_deref()
            .map(|v| {
                lockstep::parse_duration(v).map_err(|m| {
                    CliError::config(format!("[statements] {key} in {}: {m}", path.display()))
                })
            })
            .transpose()
    };
    let bound = |d: Option<Duration>, default| match d {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => default,
    };
    Ok(StatementOptions {
        lock_timeout: bound(
            duration(&file.lock_timeout, "lock_timeout")?,
            defaults.lock_timeout,
        ),
        timeout: bound(duration(&file.timeout, "timeout")?, defaults.timeout),
        lock_retries: file.lock_retries.unwrap_or(defaults.lock_retries),
        lock_retry_for: duration(&file.lock_retry_for, "lock_retry_for")?
            .unwrap_or(defaults.lock_retry_for),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, CliError> {
        let mut argv = vec!["lockstep"];
        argv.extend_from_slice(args);
        argv.push("status");
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(&cli.global, &move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn url(s: &Settings) -> String {
        s.database.as_ref().unwrap().url.to_string()
    }

    struct TempConfig(PathBuf);

    impl TempConfig {
        fn new(text: &str) -> TempConfig {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "lockstep-settings-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("lockstep.toml");
            std::fs::write(&path, text).unwrap();
            TempConfig(path)
        }

        fn arg(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    #[test]
    fn precedence_is_flag_then_env_then_file() {
        let cfg = TempConfig::new("database_url = \"sqlite://from-file.db\"\n");
        let dir = cfg.0.parent().unwrap().display().to_string();
        let both_env = [
            ("LOCKSTEP_DATABASE_URL", "sqlite://lockstep-env.db"),
            ("DATABASE_URL", "sqlite://env.db"),
        ];
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], String);
        let table: &[Case<'_>] = &[
            (
                &["-c", cfg.arg(), "-d", "sqlite://flag.db"],
                &both_env,
                "sqlite://flag.db".into(),
            ),
            (
                &["-c", cfg.arg()],
                &both_env,
                "sqlite://lockstep-env.db".into(),
            ),
            (&["-c", cfg.arg()], &both_env[1..], "sqlite://env.db".into()),
            (
                &["-c", cfg.arg()],
                &[],
                format!("sqlite://{dir}/from-file.db"),
            ),
        ];
        for (args, env, want) in table {
            assert_eq!(
                &url(&settings(args, env).unwrap()),
                want,
                "{args:?} {env:?}"
            );
        }
    }

    #[test]
    fn migrations_dir_is_relative_to_the_config_file() {
        let cfg =
            TempConfig::new("migrations = \"db/migrations\"\nhistory_table = \"app.history\"\n");
        let s = settings(&["-c", cfg.arg()], &[]).unwrap();
        assert_eq!(s.migrations, cfg.0.parent().unwrap().join("db/migrations"));
        assert_eq!(s.history_table.to_string(), "app.history");
        let s = settings(&["-c", cfg.arg(), "-m", "other"], &[]).unwrap();
        assert_eq!(s.migrations, PathBuf::from("other"));
        assert!(s.database.is_none());
        assert!(s
            .database()
            .unwrap_err()
            .hint
            .unwrap()
            .contains("lockstep init"));
    }

    #[test]
    fn out_of_range_lock_durations_are_refused_at_config_time() {
        let table = [
            (
                "[lock]\nttl = \"597h\"\n",
                "[lock] ttl in {}: the lease must be at most 24h",
            ),
            (
                "[lock]\nttl = \"500ms\"\n",
                "[lock] ttl in {}: the lease must be at least 1s",
            ),
            (
                "[lock]\ntimeout = \"25h\"\n",
                "[lock] timeout in {}: the wait for the lock must be at most 24h",
            ),
            (
                "[lock]\ntimeout = \"5124095576030432h\"\n",
                "[lock] timeout in {}: `5124095576030432h` is too long a duration",
            ),
        ];
        for (text, want) in table {
            let cfg = TempConfig::new(text);
            let err = settings(&["-c", cfg.arg()], &[]).unwrap_err();
            assert_eq!(err.message, want.replace("{}", cfg.arg()), "{text}");
        }
        let cfg = TempConfig::new("[lock]\nttl = \"24h\"\ntimeout = \"24h\"\n");
        assert!(settings(&["-c", cfg.arg()], &[]).is_ok());
    }

    #[test]
    fn statements_table_sets_the_bounds_and_zero_lifts_one() {
        let defaults = StatementOptions::default();
        let cfg = TempConfig::new("");
        assert_eq!(
            settings(&["-c", cfg.arg()], &[]).unwrap().statements,
            defaults
        );
        let cfg = TempConfig::new(
            "[statements]\nlock_timeout = \"0\"\ntimeout = \"10m\"\nlock_retries = 3\nlock_retry_for = \"1m\"\n",
        );
        let statements = settings(&["-c", cfg.arg()], &[]).unwrap().statements;
        assert_eq!(
            statements,
            StatementOptions {
                lock_timeout: None,
                timeout: Some(Duration::from_secs(600)),
                lock_retries: 3,
                lock_retry_for: Duration::from_secs(60),
            }
        );
        let cfg = TempConfig::new("[statements]\nlock_timout = \"1s\"\n");
        let err = settings(&["-c", cfg.arg()], &[]).unwrap_err();
        assert!(
            err.message.contains(":2: unknown key `lock_timout`"),
            "{}",
            err.message
        );
        let cfg = TempConfig::new("[statements]\ntimeout = \"soon\"\n");
        let err = settings(&["-c", cfg.arg()], &[]).unwrap_err();
        assert!(
            err.message.starts_with("[statements] timeout in"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_config_is_named() {
        let cfg = TempConfig::new("database_url = \"sqlite://a.db\"\ndatabse_url = \"x\"\n");
        let err = settings(&["-c", cfg.arg()], &[]).unwrap_err();
        assert!(
            err.message
                .contains("lockstep.toml:2: unknown key `databse_url`"),
            "{}",
            err.message
        );
        let cfg = TempConfig::new("history_table = \"x; DROP TABLE y\"\n");
        let err = settings(&["-c", cfg.arg()], &[]).unwrap_err();
        assert!(err.message.contains("history_table in"), "{}", err.message);
        let err = settings(&["-d", "postgres://u:hunter2@h:port/d"], &[]).unwrap_err();
        assert!(
            err.message.contains("(from --database-url)"),
            "{}",
            err.message
        );
        assert!(!err.message.contains("hunter2"));
        let err = settings(&["-c", "/nonexistent/lockstep.toml"], &[]).unwrap_err();
        assert_eq!(
            err.message,
            "cannot read config file /nonexistent/lockstep.toml: no such file or directory"
        );
    }
}
