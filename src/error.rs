//! The CLI's errors and exit codes.
//!
//! Exit codes are a contract (README, docs/json.md):
//! 0 success; 1 a migration or database operation failed; 2 usage,
//! configuration or migration-file error; 3 the lock was not acquired;
//! 4 refused (drift, dirty, missing rollback section, `status --check`
//! found work); 5 the lock was lost during the run.

use lockstep::{Error, ErrorKind, Refusal, Step};

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
        let mut err = CliError::new(exit, e.code(), e.to_string());
        err.hint = e.hint();
        match &e {
            Error::Source(s) => {
                err.detail.file = Some(s.path.display().to_string());
                err.detail.line = s.line;
            }
            Error::Refused(r) => {
                err.detail.migrations = match r {
                    Refusal::Modified(items) | Refusal::Missing(items) | Refusal::Dirty(items) => {
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

impl From<lockstep::SourceError> for CliError {
    fn from(e: lockstep::SourceError) -> Self {
        Error::from(e).into()
    }
}
