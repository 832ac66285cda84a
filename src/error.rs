//! The CLI's errors and exit codes.
//!
//! Exit codes are a contract (README, docs/json.md):
//! 0 success; 1 a migration or database operation failed; 2 usage,
//! configuration or migration-file error; 3 the lock was not acquired;
//! 4 refused (drift, dirty, missing rollback section, `status --check`
//! found work); 5 the lock was lost during the run.

use lockstep::{Error, ErrorKind, Refusal, Remedy, Step};

use crate::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    Failed,
    Usage,
    LockBusy,
    Refused,
    LockLost,
    /// Stopped by a signal: 128 + its number (130 SIGINT, 143 SIGTERM).
    Signal(i32),
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::LockBusy => 3,
            Exit::Refused => 4,
            Exit::LockLost => 5,
            Exit::Signal(signal) => 128 + signal,
        }
    }
}

/// An error on its way to the user.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    /// Stable name for JSON (`error.code`).
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
    /// Structured detail for JSON.
    pub detail: Box<json::ErrorDetail>,
    /// Migrations that completed before the failure, for `upgrade` and
    /// `rollback`.
    pub completed: Vec<Step>,
}

impl CliError {
    pub fn new(exit: Exit, code: &'static str, message: impl Into<String>) -> Self {
        CliError {
            exit,
            code,
            message: message.into(),
            hint: None,
            detail: Box::default(),
            completed: Vec::new(),
        }
    }

    pub fn config(message: impl Into<String>) -> Self {
        CliError::new(Exit::Usage, "config", message)
    }

    pub fn usage(message: impl Into<String>) -> Self {
        CliError::new(Exit::Usage, "usage", message)
    }

    pub fn io(message: impl Into<String>) -> Self {
        CliError::new(Exit::Failed, "io", message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    /// Hides passwords: every occurrence of `secret` (messages that quote a
    /// server can in principle echo anything; this is the last line of
    /// defence for the one secret lockstep holds), and the password of
    /// anything URL-shaped (a URL given where a path or another value was
    /// expected is echoed by the error that names it).
    pub fn scrub(mut self, secret: Option<&str>) -> Self {
        fn hide(text: &str, secret: Option<&str>) -> String {
            let text = crate::redact::urls(text);
            match secret.filter(|s| !s.is_empty()) {
                Some(secret) => text.replace(secret, "***"),
                None => text,
            }
        }
        self.message = hide(&self.message, secret);
        self.hint = self.hint.as_deref().map(|h| hide(h, secret));
        self
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        let exit = match e.kind() {
            ErrorKind::Failed => Exit::Failed,
            ErrorKind::Usage => Exit::Usage,
            ErrorKind::Refused => Exit::Refused,
            ErrorKind::LockBusy => Exit::LockBusy,
            ErrorKind::LockLost => Exit::LockLost,
            ErrorKind::Cancelled => {
                Exit::Signal(crate::signals::received().unwrap_or(libc::SIGINT))
            }
        };
        let mut err = CliError::new(exit, e.code(), message(&e));
        err.hint = e.remedy().as_ref().map(hint);
        match &e {
            Error::Source(s) => {
                err.detail.file = Some(s.path.display().to_string());
                err.detail.line = s.line;
            }
            Error::Refused(r) => {
                err.detail.migrations = match r {
                    Refusal::Modified(items) => items
                        .iter()
                        .map(|c| json::MigrationRef {
                            file: Some(c.file.display().to_string()),
                            checksum: Some(c.checksum.to_string()),
                            recorded_checksum: Some(c.recorded.to_string()),
                            ..json::MigrationRef::from(&c.migration)
                        })
                        .collect(),
                    Refusal::Missing(items) | Refusal::Dirty(items) => {
                        items.iter().map(json::MigrationRef::from).collect()
                    }
                    Refusal::OutOfOrder { pending, .. } => {
                        pending.iter().map(json::MigrationRef::from).collect()
                    }
                    Refusal::NoDown(m) => vec![json::MigrationRef::from(m)],
                };
            }
            Error::Migration(f) => {
                err.detail.migrations = vec![json::MigrationRef::from(&f.migration)];
                err.detail.file = Some(f.path.display().to_string());
                err.detail.line = f
                    .line_col
                    .map(|(l, _)| l)
                    .or(f.statement.as_ref().map(|s| s.line));
                err.detail.column = f.line_col.map(|(_, c)| c);
                err.detail.statement = f.statement.as_ref().map(|s| json::StatementJson {
                    number: s.number,
                    total: s.total,
                });
                err.detail.sqlstate = f.db.code.clone();
                err.detail.dirty = f.dirty.is_some().then_some(true);
                if f.db.class == lockstep::DbClass::LockTimeout {
                    err.detail.tries = Some(f.tries);
                    err.detail.blocked = f.blocked.as_ref().map(json::BlockedJson::from);
                }
                err.detail.leftover = f.leftover.clone();
                if !f.all_rolled_back {
                    err.completed = f.completed.clone();
                }
            }
            Error::Database { db, .. } => err.detail.sqlstate = db.code.clone(),
            Error::LockBusy(busy) => err.detail.holder = Some(json::LockJson::from(&busy.holder)),
            Error::LockLost(lost) => {
                err.detail.token = Some(lost.token);
                err.detail.migrations = lost.at.iter().map(json::MigrationRef::from).collect();
                err.detail.dirty = lost.unrecorded.then_some(true);
                err.completed = lost.completed.clone();
            }
            Error::Cancelled { completed } => err.completed = completed.clone(),
            _ => {}
        }
        err
    }
}

/// The error and its causes, each after a colon.
fn message(e: &Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    if let Error::Migration(f) = e {
        if f.all_rolled_back && !f.completed.is_empty() {
            let n = f.completed.len();
            text.push_str(&format!(
                "\nthe single transaction was rolled back: none of this run's {n} earlier migration{} stayed applied",
                if n == 1 { "" } else { "s" }
            ));
        }
    }
    text
}

/// A remedy in the words of this CLI's commands, flags and config file.
fn hint(remedy: &Remedy) -> String {
    match remedy {
        Remedy::CreateMigrations => {
            "run `lockstep init` to create it, or pass `--migrations DIR`".into()
        }
        Remedy::ListVersions => "run `lockstep status` to list the versions".into(),
        Remedy::ListApplied => "run `lockstep history` to list the applied versions".into(),
        Remedy::ListDirty => "run `lockstep status` to see which migrations are dirty".into(),
        Remedy::RestoreOrAcceptChecksums => "restore the applied file, or run `lockstep fix checksums` if the change was intended (it does not re-run the migration)".into(),
        Remedy::RestoreOrForget => {
            "restore the file, or run `lockstep fix missing` to forget its history row".into()
        }
        Remedy::ResolveDirty { version, progress: Some(p) } => format!(
            "{} of {} statements ran outside a transaction: repair the database by hand, then run `lockstep fix dirty {version} --applied` or `--forget`",
            p.statements_done, p.statements_total
        ),
        Remedy::ResolveDirty { version, progress: None } => format!(
            "check by hand how far it got, complete or undo it, then run `lockstep fix dirty {version} --applied` or `--forget`"
        ),
        Remedy::RenumberOrAllowOutOfOrder => "give it a version newer than the newest applied one, or pass `--allow-out-of-order`".into(),
        Remedy::SplitSingleTransaction => "apply up to the version before it with `--to`, or run without `--single-transaction`".into(),
        Remedy::SeeLockHolder { looks_dead, wait_longer } => {
            let mut hint = "run `lockstep lock status` to see the holder".to_string();
            if *looks_dead {
                hint.push_str("; it looks dead: `lockstep lock release` frees it (the next run would take it over anyway)");
            } else if *wait_longer {
                hint.push_str(", or wait longer with `--lock-timeout`");
            }
            hint
        }
        Remedy::SeeLockLog => "another run took the lock over (or it was released by force): run `lockstep lock log` to see who, and `lockstep status` for what is applied".into(),
        Remedy::CheckStatusThenRunAgain => "the connection to the database was lost: the migration committed with its history row, or not at all; run `lockstep status` to see which, then `lockstep upgrade` again".into(),
        Remedy::UsePrimary => "the server takes no writes (read-only, or a replica): point the database URL at the primary, or lift `read_only` if this server is meant to be written".into(),
        Remedy::FindBusyHolderThenRunAgain => "another connection kept the database locked past the 5 s busy timeout, and the migration was rolled back: find what holds it (a long transaction, a stopped process), then run `lockstep upgrade` again".into(),
        Remedy::ChooseHistoryTable { suggestion: Some(name) } => format!(
            "lockstep keeps its tables in one schema whatever `search_path` says (`public` unless `history_table` names one): if that table is lockstep's history, set `history_table = \"{name}\"` in lockstep.toml"
        ),
        Remedy::ChooseHistoryTable { suggestion: None } => {
            "set `history_table` in lockstep.toml to a name lockstep can own".into()
        }
        Remedy::EndBlocker { terminate } => {
            let mut hint = "another session holds a lock this migration needs, and lockstep gave up waiting (without stalling the queries queued behind it): ".to_string();
            if terminate.is_empty() {
                hint.push_str("find it (a long transaction, a session idle in transaction) and end its transaction");
            } else {
                hint.push_str(&format!(
                    "end that session's transaction, or if you judge it safe end the session with `{}` (lockstep never does);",
                    terminate.join("`, `")
                ));
            }
            hint.push_str(" or let the migration wait longer (`-- lockstep:lock-timeout 30s` in its file, `[statements] lock_timeout`, `--statement-lock-timeout`); then run `lockstep upgrade` again");
            hint
        }
        Remedy::UndoLeftover { version, statements } => format!(
            "undo what the statement left with `{}`, then run `lockstep fix dirty {version} --forget` and `lockstep upgrade` again",
            statements.join("; ")
        ),
        // The rest name no command: the library's words are the CLI's.
        other => other.to_string(),
    }
}

impl From<lockstep::SourceError> for CliError {
    fn from(e: lockstep::SourceError) -> Self {
        Error::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep::{DbMessage, DirtyDetail};

    #[test]
    fn the_message_carries_the_engine_message_after_what_lockstep_did() {
        let e = Error::Database {
            context: "reading history from lockstep_history".into(),
            db: Box::new(DbMessage::plain("disk I/O error")),
        };
        assert_eq!(e.to_string(), "reading history from lockstep_history");
        assert_eq!(
            CliError::from(e).message,
            "reading history from lockstep_history: disk I/O error"
        );
    }

    #[test]
    fn every_remedy_is_worded_with_the_cli_not_the_library_api() {
        let dirty = Some(DirtyDetail {
            statements_done: 1,
            statements_total: 3,
        });
        let remedies = [
            Remedy::CreateMigrations,
            Remedy::FixUrl,
            Remedy::ListVersions,
            Remedy::ListApplied,
            Remedy::ListDirty,
            Remedy::RestoreOrAcceptChecksums,
            Remedy::RestoreOrForget,
            Remedy::ResolveDirty {
                version: 7.into(),
                progress: None,
            },
            Remedy::ResolveDirty {
                version: 7.into(),
                progress: dirty,
            },
            Remedy::RenumberOrAllowOutOfOrder,
            Remedy::SplitSingleTransaction,
            Remedy::SeeLockHolder {
                looks_dead: true,
                wait_longer: false,
            },
            Remedy::SeeLockHolder {
                looks_dead: false,
                wait_longer: true,
            },
            Remedy::EndForeignTransaction,
            Remedy::SeeLockLog,
            Remedy::CheckStatusThenRunAgain,
            Remedy::FindBusyHolderThenRunAgain,
            Remedy::UseNoTransaction,
            Remedy::UsePrimary,
            Remedy::EndBlocker { terminate: vec![] },
            Remedy::EndBlocker {
                terminate: vec!["SELECT pg_terminate_backend(42)".into()],
            },
            Remedy::UndoLeftover {
                version: 7.into(),
                statements: vec!["DROP INDEX CONCURRENTLY IF EXISTS public.i".into()],
            },
            Remedy::ChooseHistoryTable { suggestion: None },
            Remedy::ChooseHistoryTable {
                suggestion: Some("app.lockstep_history".into()),
            },
        ];
        for remedy in &remedies {
            let hint = hint(remedy);
            assert!(!hint.is_empty());
            for api in ["Migrator::", "Options::", "DirtyResolution"] {
                assert!(!hint.contains(api), "{remedy:?} worded as {hint}");
            }
        }
        assert!(hint(&remedies[8]).contains("1 of 3 statements"));
        assert!(hint(&remedies[8]).contains("`lockstep fix dirty 7 --applied`"));
    }
}
