//! The `--json` wire types: serialise-only, one document per run. This file
//! and docs/json.md change together.

use serde::Serialize;

/// Raised when a document changes incompatibly.
pub const SCHEMA: u32 = 1;

/// A migration's version: a number when it is whole (as every version was
/// before Flyway's dotted ones were read), else its dotted text, `"1.2.3"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonVersion(pub lockstep::Version);

impl Serialize for JsonVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_whole() {
            Some(whole) => serializer.serialize_u64(whole),
            None => serializer.collect_str(&self.0),
        }
    }
}

impl From<lockstep::Version> for JsonVersion {
    fn from(v: lockstep::Version) -> Self {
        JsonVersion(v)
    }
}

/// The envelope every document shares.
#[derive(Serialize)]
pub struct Document<'a, T: Serialize> {
    pub schema: u32,
    pub command: &'a str,
    pub ok: bool,
    pub exit_code: i32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Serialize)]
pub struct Failure<'a> {
    pub error: ErrorBody<'a>,
    /// `upgrade`/`rollback`: what completed before the failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<Vec<StepJson>>,
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
    pub hint: Option<&'a str>,
    #[serde(flatten)]
    pub detail: &'a ErrorDetail,
}

#[derive(Debug, Default, Serialize)]
pub struct ErrorDetail {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<MigrationRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// The statement of the migration that failed, where the database
    /// gave no position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<StatementJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty: Option<bool>,
    /// The lock's holder, when the lock was not acquired.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<LockJson>,
    /// The lock token this run held, when it lost the lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<i64>,
    /// `migration_lock_timeout`: how many times the migration was tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
    /// `migration_lock_timeout`: what the statement waited for, and who
    /// held it, when lockstep saw the wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<BlockedJson>,
    /// What the failed statement left that lockstep could not undo, as SQL.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leftover: Vec<String>,
}

/// What a migration's statement waits for, and who holds it.
#[derive(Debug, Serialize)]
pub struct BlockedJson {
    pub waiting_for: String,
    pub waited_ms: i64,
    pub blockers: Vec<BlockerJson>,
}

#[derive(Debug, Serialize)]
pub struct BlockerJson {
    pub pid: i64,
    pub user: Option<String>,
    pub application: Option<String>,
    pub state: Option<String>,
    pub state_ms: Option<i64>,
    pub query: Option<String>,
    /// The statement that would end the session, for a human to judge.
    pub terminate: String,
}

impl From<&lockstep::Blocked> for BlockedJson {
    fn from(b: &lockstep::Blocked) -> Self {
        BlockedJson {
            waiting_for: b.waiting_for.clone(),
            waited_ms: b.waited_ms,
            blockers: b
                .blockers
                .iter()
                .map(|b| BlockerJson {
                    pid: b.pid,
                    user: b.user.clone(),
                    application: b.application.clone(),
                    state: b.state.clone(),
                    state_ms: b.state_ms,
                    query: b.query.clone(),
                    terminate: b.terminate.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StatementJson {
    pub number: usize,
    pub total: usize,
}

#[derive(Debug, Serialize)]
pub struct MigrationRef {
    /// Null for a repeatable migration or a callback.
    pub version: Option<JsonVersion>,
    pub name: String,
    pub kind: &'static str,
    /// `modified`: the file, its checksum now, and the one history holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_checksum: Option<String>,
}

impl From<&lockstep::Named> for MigrationRef {
    fn from(n: &lockstep::Named) -> Self {
        MigrationRef {
            version: versioned(n.kind, n.version),
            name: named(n.kind, &n.name),
            kind: kind_name(n.kind),
            file: None,
            checksum: None,
            recorded_checksum: None,
        }
    }
}

/// `versioned`, `repeatable` or `callback`.
pub fn kind_name(kind: lockstep::Kind) -> &'static str {
    match kind {
        lockstep::Kind::Versioned => "versioned",
        lockstep::Kind::Repeatable(_) => "repeatable",
        lockstep::Kind::Callback(_) => "callback",
    }
}

/// A migration's version, none for a repeatable one or a callback.
fn versioned(kind: lockstep::Kind, version: lockstep::Version) -> Option<JsonVersion> {
    (kind == lockstep::Kind::Versioned).then_some(JsonVersion(version))
}

/// A migration's name; a callback's is its file's.
fn named(kind: lockstep::Kind, name: &str) -> String {
    match kind {
        lockstep::Kind::Callback(hook) => hook.file_name().to_string(),
        _ => name.to_string(),
    }
}

#[derive(Debug, Serialize)]
pub struct StepJson {
    /// Null for a repeatable migration or a callback.
    pub version: Option<JsonVersion>,
    pub name: String,
    pub kind: &'static str,
    pub duration_ms: u64,
    pub no_transaction: bool,
}

impl From<&lockstep::Step> for StepJson {
    fn from(s: &lockstep::Step) -> Self {
        StepJson {
            version: versioned(s.kind, s.version),
            name: named(s.kind, &s.name),
            kind: kind_name(s.kind),
            duration_ms: u64::try_from(s.duration.as_millis()).unwrap_or(u64::MAX),
            no_transaction: s.no_transaction,
        }
    }
}

#[derive(Serialize)]
pub struct Init {
    pub config: String,
    pub migrations: String,
}

/// `database create`, `database drop`.
#[derive(Serialize)]
pub struct DatabaseDoc {
    /// The database, as its URL shows it (no password).
    pub database: String,
    /// `created`, `already_there`, `dropped` or `not_there`.
    pub result: &'static str,
}

/// `wait`.
#[derive(Serialize)]
pub struct Wait {
    pub database: String,
    pub waited_ms: u64,
}

#[derive(Serialize)]
pub struct New {
    pub path: String,
    pub version: JsonVersion,
    pub name: String,
}

#[derive(Serialize)]
pub struct Run {
    pub direction: &'static str,
    pub dry_run: bool,
    /// Applied (upgrade) or reverted (rollback), in order; in a dry run, the
    /// plan.
    pub migrations: Vec<StepJson>,
}

#[derive(Serialize)]
pub struct Status {
    pub history_table: String,
    pub migrations: Vec<StatusJson>,
    pub counts: Counts,
    pub repeatables: Vec<RepeatStatusJson>,
}

/// A repeatable migration in `status --json`.
#[derive(Serialize)]
pub struct RepeatStatusJson {
    pub name: String,
    /// `always` or `on_change`; null when the file is gone.
    pub repeat: Option<&'static str>,
    /// `pending`, `applied`, `changed` or `missing`.
    pub state: &'static str,
    pub runs_next: bool,
    pub file: Option<String>,
    pub checksum: Option<String>,
    /// The checksum of its last run, when it differs from the file's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_checksum: Option<String>,
    pub applied_at: Option<String>,
    pub runs: i64,
}

impl From<&lockstep::RepeatStatus<'_>> for RepeatStatusJson {
    fn from(e: &lockstep::RepeatStatus<'_>) -> Self {
        let repeat = e.migration.and_then(|m| match m.kind() {
            lockstep::Kind::Repeatable(repeat) => Some(repeat.as_str()),
            _ => None,
        });
        RepeatStatusJson {
            name: e.name.to_string(),
            repeat,
            state: e.state.as_str(),
            runs_next: e.runs_next,
            file: e.migration.map(|m| m.up.path.display().to_string()),
            checksum: e.migration.map(|m| m.checksum.to_string()),
            recorded_checksum: match (e.migration, e.row) {
                (Some(m), Some(r)) if m.checksum == r.checksum => None,
                (_, r) => r.map(|r| r.checksum.to_string()),
            },
            applied_at: e.row.map(|r| r.applied_at.clone()),
            runs: e.row.map_or(0, |r| r.runs),
        }
    }
}

#[derive(Serialize, Default, Clone, Copy)]
pub struct Counts {
    pub applied: usize,
    pub pending: usize,
    pub modified: usize,
    pub missing: usize,
    pub dirty: usize,
}

#[derive(Serialize)]
pub struct StatusJson {
    pub version: JsonVersion,
    pub name: String,
    pub state: &'static str,
    /// The file (the up file for a pair); null when missing.
    pub file: Option<String>,
    pub applied_at: Option<String>,
    pub checksum: Option<String>,
    /// The checksum in history, when it differs from the file's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_checksum: Option<String>,
    pub out_of_order: bool,
    pub has_rollback: Option<bool>,
    pub no_transaction: Option<bool>,
    /// Its upgrade section holds no SQL yet; null when `missing`.
    pub upgrade_empty: Option<bool>,
}

#[derive(Serialize)]
pub struct History {
    pub history_table: String,
    pub migrations: Vec<HistoryJson>,
    pub repeatables: Vec<RepeatHistoryJson>,
}

/// The last run of a repeatable migration in `history --json`.
#[derive(Serialize)]
pub struct RepeatHistoryJson {
    pub name: String,
    pub checksum: String,
    pub applied_at: String,
    pub duration_ms: i64,
    pub applied_by: String,
    pub lock_token: Option<i64>,
    pub tool_version: String,
    pub runs: i64,
}

impl From<&lockstep::RepeatRow> for RepeatHistoryJson {
    fn from(r: &lockstep::RepeatRow) -> Self {
        RepeatHistoryJson {
            name: r.name.clone(),
            checksum: r.checksum.to_string(),
            applied_at: r.applied_at.clone(),
            duration_ms: r.duration_ms,
            applied_by: r.applied_by.clone(),
            lock_token: r.lock_token,
            tool_version: r.tool_version.clone(),
            runs: r.runs,
        }
    }
}

#[derive(Serialize)]
pub struct HistoryJson {
    pub version: JsonVersion,
    pub name: String,
    pub state: &'static str,
    pub checksum: String,
    pub applied_at: String,
    pub duration_ms: i64,
    pub applied_by: String,
    pub lock_token: Option<i64>,
    pub tool_version: String,
}

impl From<&lockstep::HistoryRow> for HistoryJson {
    fn from(r: &lockstep::HistoryRow) -> Self {
        HistoryJson {
            version: r.version.into(),
            name: r.name.clone(),
            state: r.state.as_str(),
            checksum: r.checksum.to_string(),
            applied_at: r.applied_at.to_string(),
            duration_ms: r.duration_ms,
            applied_by: r.applied_by.clone(),
            lock_token: r.lock_token,
            tool_version: r.tool_version.clone(),
        }
    }
}

#[derive(Serialize)]
pub struct Validate {
    pub files: usize,
    pub applied: usize,
    pub pending: usize,
}

#[derive(Serialize)]
pub struct Fix {
    pub dry_run: bool,
    pub changes: Vec<FixJson>,
    /// `import`: what a human should look at.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Serialize)]
pub struct Current {
    /// The newest applied migration's version; null when none is.
    pub version: Option<JsonVersion>,
    pub name: Option<String>,
}

#[derive(Serialize)]
pub struct FixJson {
    /// Null for a repeatable migration (`import`).
    pub version: Option<JsonVersion>,
    pub name: String,
    pub kind: &'static str,
    pub action: String,
}

impl From<&lockstep::Fixed> for FixJson {
    fn from(f: &lockstep::Fixed) -> Self {
        FixJson {
            version: versioned(f.kind, f.version),
            name: f.name.clone(),
            kind: kind_name(f.kind),
            action: f.action.clone(),
        }
    }
}

/// The lock row, for `lock status` and lock errors.
#[derive(Debug, Serialize)]
pub struct LockJson {
    pub state: &'static str,
    pub scope: String,
    pub token: i64,
    pub owner: Option<String>,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub command: Option<String>,
    pub tool_version: Option<String>,
    pub acquired_at: Option<String>,
    pub heartbeat_at: Option<String>,
    pub expires_at: Option<String>,
    pub held_ms: Option<i64>,
    pub holder_alive: Option<bool>,
    pub session_alive: Option<bool>,
    pub migrating: bool,
    /// What else keeps the database or the lock's row locked.
    pub blocker: Option<String>,
    /// What the holder's migration is doing right now, where the engine
    /// can see it.
    pub activity: Option<ActivityJson>,
}

#[derive(Debug, Serialize)]
pub struct ActivityJson {
    pub statement: Option<String>,
    pub running_ms: Option<i64>,
    pub blocked: Option<BlockedJson>,
}

impl From<&lockstep::LockInfo> for LockJson {
    fn from(l: &lockstep::LockInfo) -> Self {
        LockJson {
            state: l.state().as_str(),
            scope: l.scope.clone(),
            token: l.token,
            owner: l.owner.clone(),
            host: l.host.clone(),
            pid: l.pid,
            command: l.command.clone(),
            tool_version: l.tool_version.clone(),
            acquired_at: l.acquired_at.clone(),
            heartbeat_at: l.heartbeat_at.clone(),
            expires_at: l.expires_at.clone(),
            held_ms: l.held_ms,
            holder_alive: l.is_held().then(|| l.holder_alive()),
            session_alive: l.session_alive,
            migrating: l.migrating,
            blocker: l.blocker.clone(),
            activity: l.activity.as_ref().map(|a| ActivityJson {
                statement: a.statement.clone(),
                running_ms: a.running_ms,
                blocked: a.blocked.as_ref().map(BlockedJson::from),
            }),
        }
    }
}

#[derive(Serialize)]
pub struct LockRelease {
    /// The lock was freed by this command.
    pub released: bool,
    /// The lock as it was before.
    pub previous: LockJson,
}

#[derive(Serialize)]
pub struct LockLog {
    pub scope: String,
    pub events: Vec<LogJson>,
}

#[derive(Serialize)]
pub struct LogJson {
    pub id: i64,
    pub at: String,
    pub event: String,
    pub token: i64,
    pub owner: Option<String>,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub command: Option<String>,
    pub previous_owner: Option<String>,
    pub detail: Option<String>,
}

impl From<&lockstep::LogEntry> for LogJson {
    fn from(e: &lockstep::LogEntry) -> Self {
        LogJson {
            id: e.id,
            at: e.at.clone(),
            event: e.event.clone(),
            token: e.token,
            owner: e.owner.clone(),
            host: e.host.clone(),
            pid: e.pid,
            command: e.command.clone(),
            previous_owner: e.previous_owner.clone(),
            detail: e.detail.clone(),
        }
    }
}
