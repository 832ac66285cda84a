//! A migration's waits for the application's table locks: how long its
//! statements may wait, how often it is tried again when they give up,
//! and who blocks them, looked up on a connection of its own while they
//! wait.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sql::Dialect;

/// How a migration's own statements run: each waits for a table lock at
/// most `lock_timeout`, so that an `ALTER TABLE` queued behind a long
/// transaction never holds up every query on the table behind it; a
/// migration that gave up is tried again, up to `lock_retries` times and
/// for at most `lock_retry_for`, holding the migration lock all along.
/// A migration's `-- lockstep:lock-timeout` and
/// `-- lockstep:statement-timeout` lines override the two bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementOptions {
    /// How long a statement may wait for a lock (PostgreSQL's
    /// `lock_timeout`; MariaDB/MySQL's `lock_wait_timeout` and
    /// `innodb_lock_wait_timeout`, in whole seconds); `None`: as long as
    /// the server lets it. Default 5 s.
    pub lock_timeout: Option<Duration>,
    /// How long a statement may run (PostgreSQL's `statement_timeout`,
    /// MariaDB's `max_statement_time`); `None` (the default): as long as
    /// the server lets it.
    pub timeout: Option<Duration>,
    /// How many times a migration that gave up waiting for a lock is tried
    /// again. Default 10.
    pub lock_retries: u32,
    /// How long, from its first try, a migration is tried again at most.
    /// Default 10 min.
    pub lock_retry_for: Duration,
}

impl Default for StatementOptions {
    fn default() -> Self {
        StatementOptions {
            lock_timeout: Some(Duration::from_secs(5)),
            timeout: None,
            lock_retries: 10,
            lock_retry_for: Duration::from_secs(600),
        }
    }
}

/// What a statement of a migration waits for, and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// What it waits for, as the engine names it: `AccessExclusiveLock on
    /// table public.users`, `table metadata lock on app.users`.
    pub waiting_for: String,
    /// How long it had waited when this was seen, in milliseconds.
    pub waited_ms: i64,
    /// The sessions it waits for; empty when the engine cannot tell.
    pub blockers: Vec<Blocker>,
}

/// What the lock holder's migration is doing right now, as another process
/// sees it from the database (`lock status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// The first line of the statement it runs, cut at 80 characters.
    pub statement: Option<String>,
    /// How long that statement has run, in milliseconds.
    pub running_ms: Option<i64>,
    /// What it waits for, and who holds it, when it waits for a lock.
    pub blocked: Option<Blocked>,
}

/// A session that holds what a migration waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// The server's id of the session (PostgreSQL's pid, MariaDB's
    /// connection id).
    pub pid: i64,
    /// Its database user (on MariaDB/MySQL `user@host`).
    pub user: Option<String>,
    /// Its application name (PostgreSQL's `application_name`).
    pub application: Option<String>,
    /// What it is doing: `idle in transaction`, `active`.
    pub state: Option<String>,
    /// How long it has been in that state, in milliseconds.
    pub state_ms: Option<i64>,
    /// The first line of its statement (the last one, when idle), cut at
    /// 80 characters.
    pub query: Option<String>,
    /// The statement that ends it, for a human to run if they judge so
    /// (lockstep never does): `SELECT pg_terminate_backend(4242)`,
    /// `KILL 17`.
    pub terminate: String,
}

impl Blocked {
    /// Whether two looks saw the same wait: the same lock, held by the same
    /// sessions.
    fn same_wait(&self, other: &Blocked) -> bool {
        self.waiting_for == other.waiting_for
            && self
                .blockers
                .iter()
                .map(|b| b.pid)
                .eq(other.blockers.iter().map(|b| b.pid))
    }
}

impl fmt::Display for Blocked {
    /// `AccessExclusiveLock on table public.users, held by pid 4242 (user
    /// app, application psql, idle in transaction for 12 min:
    /// `SELECT 1`)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.waiting_for)?;
        match self.blockers.as_slice() {
            [] => Ok(()),
            [first, rest @ ..] => {
                write!(f, ", held by {first}")?;
                match rest.len() {
                    0 => Ok(()),
                    n => write!(f, " and {n} other session{}", if n == 1 { "" } else { "s" }),
                }
            }
        }
    }
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        let mut parts = Vec::new();
        if let Some(user) = &self.user {
            parts.push(format!("user {user}"));
        }
        if let Some(app) = self.application.as_deref().filter(|a| !a.is_empty()) {
            parts.push(format!("application {app}"));
        }
        match (&self.state, self.state_ms) {
            (Some(state), Some(ms)) => parts.push(format!("{state} for {}", spoken(ms))),
            (Some(state), None) => parts.push(state.clone()),
            _ => {}
        }
        if !parts.is_empty() {
            write!(f, " ({}", parts.join(", "))?;
            if let Some(query) = &self.query {
                write!(f, ": `{query}`")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A span of milliseconds as a person says it: `800 ms`, `12 s`, `12 min`,
/// `3 h 5 min`.
pub(crate) fn spoken(ms: i64) -> String {
    let s = ms / 1000;
    match ms {
        ..=999 => format!("{} ms", ms.max(0)),
        1000..=59_999 => format!("{s} s"),
        60_000..=3_599_999 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// The first line of a statement, cut at `max` characters.
pub(crate) fn first_line(query: &str, max: usize) -> String {
    let line = query
        .trim_start()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end();
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

/// The bounds one section runs with, as the driver sets them for its
/// statements: `None` leaves the server's own setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub lock_timeout: Option<Duration>,
    pub statement_timeout: Option<Duration>,
}

impl Limits {
    /// A section's bounds: its directives, else the run's options; zero is
    /// no bound.
    pub fn of(section: &crate::source::Section, options: &StatementOptions) -> Limits {
        let bound = |d: Option<Duration>| d.filter(|d| !d.is_zero());
        Limits {
            lock_timeout: bound(section.lock_timeout.or(options.lock_timeout)),
            statement_timeout: bound(section.statement_timeout.or(options.timeout)),
        }
    }

    /// The bounds of several sections run in one transaction: the longest
    /// of each (none, if any section has none).
    pub fn widest(all: impl IntoIterator<Item = Limits>) -> Limits {
        let wider = |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| a.max(b));
        all.into_iter()
            .reduce(|a, b| Limits {
                lock_timeout: wider(a.lock_timeout, b.lock_timeout),
                statement_timeout: wider(a.statement_timeout, b.statement_timeout),
            })
            .unwrap_or_default()
    }
}

/// The tries of one migration (or one statement outside a transaction)
/// that give up waiting for a lock.
pub(crate) struct Tries {
    first: Instant,
    /// Tries made so far.
    pub made: u32,
}

impl Tries {
    pub fn new() -> Tries {
        Tries {
            first: Instant::now(),
            made: 1,
        }
    }

    /// After a try gave up on a lock: how long to wait before the next, or
    /// `None` when the retries or their time are spent. The wait doubles
    /// from half a second to at most 30 s, and is drawn at random from its
    /// upper half, so that runs retrying against one blocker do not line up.
    pub fn next_wait(&mut self, options: &StatementOptions) -> Option<Duration> {
        if self.made > options.lock_retries {
            return None;
        }
        let ceiling = Duration::from_millis(500)
            .saturating_mul(1 << (self.made - 1).min(6))
            .min(Duration::from_secs(30));
        let fraction = 0.5 + f64::from(crate::identity::random_u32() % 1000) / 2000.0;
        let wait = ceiling.mul_f64(fraction);
        if self.first.elapsed() + wait > options.lock_retry_for {
            return None;
        }
        self.made += 1;
        Some(wait)
    }
}

/// Whether a statement outside a transaction that gave up waiting for a
/// lock may run again.
pub(crate) enum Rerun {
    /// Run it again, after these statements undo what it left.
    Again { first: Vec<String> },
    /// Not as it is; `leftover` is the SQL that undoes what it left, for a
    /// human.
    Never { leftover: Vec<String> },
}

/// What a statement that gave up waiting for a lock outside a transaction
/// leaves behind. Most leave nothing: each runs as its own transaction,
/// and PostgreSQL and MariaDB roll it back whole (MariaDB's DDL is atomic
/// from 10.6 on, and its metadata lock is taken before anything changes).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Leaves {
    Nothing,
    /// PostgreSQL's `CREATE INDEX CONCURRENTLY` commits its index before it
    /// waits for older transactions: given up, it leaves the index,
    /// invalid. `index` is the index's name as written, when it has one;
    /// `table` the table's.
    InvalidIndex {
        table: String,
        index: Option<String>,
    },
    /// Another statement that works in steps of its own (`REINDEX
    /// CONCURRENTLY`, `DETACH PARTITION ... CONCURRENTLY`): what it left
    /// is not known here.
    Unknown,
}

/// What `statement` leaves when it gives up waiting for a lock outside a
/// transaction, by its words: the statement is lexed, not parsed, so a
/// name is taken as written (quoted or not).
pub(crate) fn leaves(statement: &str, dialect: Dialect) -> Leaves {
    if dialect != Dialect::Postgres {
        return Leaves::Nothing;
    }
    let words = words(statement);
    let is = |i: usize, word: &str| words.get(i).is_some_and(|w| w.eq_ignore_ascii_case(word));
    let concurrently = words.iter().any(|w| w.eq_ignore_ascii_case("CONCURRENTLY"));
    if !concurrently {
        return Leaves::Nothing;
    }
    let mut i = 1;
    if is(0, "CREATE") {
        if is(i, "UNIQUE") {
            i += 1;
        }
        if is(i, "INDEX") && is(i + 1, "CONCURRENTLY") {
            i += 2;
            if is(i, "IF") && is(i + 1, "NOT") && is(i + 2, "EXISTS") {
                i += 3;
            }
            let index = (!is(i, "ON")).then(|| words.get(i).cloned()).flatten();
            if index.is_some() {
                i += 1;
            }
            if is(i, "ON") {
                i += 1;
                if is(i, "ONLY") {
                    i += 1;
                }
                if let Some(table) = words.get(i) {
                    return Leaves::InvalidIndex {
                        table: table.clone(),
                        index,
                    };
                }
            }
        }
    }
    if is(0, "DROP") && is(1, "INDEX") {
        // Given up, the index stays as it was (valid, or invalid and
        // still to drop): running it again finishes it.
        return Leaves::Nothing;
    }
    Leaves::Unknown
}

/// The statement's words: runs of characters up to whitespace, `(` or
/// `;`, a double-quoted name kept whole with its quotes.
fn words(statement: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in statement.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                word.push(c);
            }
            c if !quoted && (c.is_whitespace() || c == '(' || c == ';') => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                if c == '(' {
                    break;
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The statement that drops an invalid index without blocking its table.
pub(crate) fn drop_index(qualified: &str) -> String {
    format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}")
}

/// Looks up what blocks this run's migration session, on a connection of
/// its own, opened at the first look. `None`: nothing is waited for.
pub(crate) type Finder = Box<dyn FnMut() -> Option<Blocked> + Send>;

/// Told, on the watching thread, when a statement has waited a quarter of
/// a second for a lock, and again whenever what it waits for changes.
pub type BlockedReport = Arc<dyn Fn(&Blocked) + Send + Sync>;

/// The first look comes once a statement has run this long: well inside
/// the shortest lock timeout worth setting, and long enough that quick
/// statements never cost the look its connection.
const FIRST_LOOK: Duration = Duration::from_millis(250);
/// Then a look this often, while it runs.
const LOOK_EVERY: Duration = Duration::from_millis(1000);

/// A thread that looks at who blocks the migration's statements while
/// they run long. The run says when a migration's SQL starts and ends, and
/// wakes nobody: the thread looks at the clock every [`FIRST_LOOK`]. So a
/// run whose statements end quickly costs two locks of a mutex per
/// migration, a wake-up of the thread four times a second, and no query.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Since when the migration's SQL runs, and which run of it.
    running: Option<(Instant, u64)>,
    runs: u64,
    /// What blocked the SQL running (or the last that ran), last seen.
    seen: Option<Blocked>,
    stop: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Watch {
    /// Starts the thread; `None` if the system gives no thread (the run
    /// then goes on without naming blockers).
    pub fn start(finder: Finder, report: Option<BlockedReport>) -> Option<Watch> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("lockstep-watch".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || watch(&shared, finder, report.as_deref())
            })
            .ok()?;
        Some(Watch {
            shared,
            thread: Some(thread),
        })
    }

    /// A migration's SQL starts.
    pub fn begin(&self) {
        let mut state = self.shared.state();
        state.runs += 1;
        state.running = Some((Instant::now(), state.runs));
        state.seen = None;
    }

    /// It ended: what blocked it, when the thread saw it blocked.
    pub fn end(&self) -> Option<Blocked> {
        let mut state = self.shared.state();
        state.running = None;
        state.seen.take()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.state().stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(shared: &Shared, mut finder: Finder, report: Option<&(dyn Fn(&Blocked) + Send + Sync)>) {
    // The run and time of the last look.
    let mut looked: Option<(u64, Instant)> = None;
    let mut state = shared.state();
    loop {
        if state.stop {
            return;
        }
        let Some((since, run)) = state.running else {
            state = shared
                .wake
                .wait_timeout(state, FIRST_LOOK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        };
        let next = match looked {
            Some((r, at)) if r == run => at + LOOK_EVERY,
            _ => since + FIRST_LOOK,
        };
        let now = Instant::now();
        if now < next {
            state = shared
                .wake
                .wait_timeout(state, next - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            continue;
        }
        looked = Some((run, now));
        drop(state);
        let found = finder();
        state = shared.state();
        let (Some(found), Some((_, still))) = (found, state.running) else {
            continue;
        };
        if still != run {
            continue;
        }
        let changed = !state
            .seen
            .as_ref()
            .is_some_and(|seen| seen.same_wait(&found));
        state.seen = Some(found.clone());
        if let Some(report) = report.filter(|_| changed) {
            // Told without the state held: the run's SQL may end meanwhile.
            drop(state);
            report(&found);
            state = shared.state();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoken_spans() {
        for (ms, want) in [
            (0, "0 ms"),
            (999, "999 ms"),
            (1000, "1 s"),
            (59_999, "59 s"),
            (720_000, "12 min"),
            (11_100_000, "3 h 5 min"),
        ] {
            assert_eq!(spoken(ms), want, "{ms}");
        }
    }

    #[test]
    fn waits_grow_and_end() {
        let options = StatementOptions {
            lock_retries: 8,
            ..StatementOptions::default()
        };
        let mut tries = Tries::new();
        let waits: Vec<Duration> = std::iter::from_fn(|| tries.next_wait(&options)).collect();
        assert_eq!(waits.len(), 8);
        assert_eq!(tries.made, 9);
        for (i, wait) in waits.iter().enumerate() {
            let ceiling = Duration::from_millis(500 << i.min(6)).min(Duration::from_secs(30));
            assert!(*wait >= ceiling / 2 && *wait <= ceiling, "{i}: {wait:?}");
        }
        // Out of time before out of tries.
        let short = StatementOptions {
            lock_retry_for: Duration::from_millis(100),
            ..options
        };
        assert_eq!(Tries::new().next_wait(&short), None);
    }

    #[test]
    fn what_a_statement_that_gave_up_leaves() {
        let pg = |s: &str| leaves(s, Dialect::Postgres);
        let index = |table: &str, index: Option<&str>| Leaves::InvalidIndex {
            table: table.into(),
            index: index.map(Into::into),
        };
        assert_eq!(pg("ALTER TABLE t ADD COLUMN c int"), Leaves::Nothing);
        assert_eq!(pg("CREATE INDEX i ON t (c)"), Leaves::Nothing);
        assert_eq!(
            pg("CREATE INDEX CONCURRENTLY i ON t (c)"),
            index("t", Some("i"))
        );
        assert_eq!(
            pg("create unique index concurrently if not exists \"My i\" on only s.t(c);"),
            index("s.t", Some("\"My i\""))
        );
        assert_eq!(
            pg("CREATE INDEX CONCURRENTLY ON public.t USING btree (c)"),
            index("public.t", None)
        );
        assert_eq!(pg("DROP INDEX CONCURRENTLY i"), Leaves::Nothing);
        assert_eq!(pg("REINDEX INDEX CONCURRENTLY i"), Leaves::Unknown);
        assert_eq!(
            pg("ALTER TABLE p DETACH PARTITION c CONCURRENTLY"),
            Leaves::Unknown
        );
        assert_eq!(
            leaves("CREATE INDEX CONCURRENTLY i ON t (c)", Dialect::Mysql),
            Leaves::Nothing
        );
    }

    #[test]
    fn limits_from_directives_and_options() {
        let section = |lock: Option<u64>, statement: Option<u64>| crate::source::Section {
            sql: String::new(),
            path: "1_a.sql".into(),
            first_line: 2,
            no_transaction: false,
            lock_timeout: lock.map(Duration::from_secs),
            statement_timeout: statement.map(Duration::from_secs),
        };
        let options = StatementOptions::default();
        let five = Some(Duration::from_secs(5));
        assert_eq!(
            Limits::of(&section(None, None), &options),
            Limits {
                lock_timeout: five,
                statement_timeout: None
            }
        );
        // A directive wins; zero is no bound.
        assert_eq!(
            Limits::of(&section(Some(30), Some(0)), &options).lock_timeout,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            Limits::of(&section(Some(0), Some(60)), &options),
            Limits {
                lock_timeout: None,
                statement_timeout: Some(Duration::from_secs(60)),
            }
        );
        let widest = Limits::widest([
            Limits::of(&section(Some(30), None), &options),
            Limits::of(&section(None, Some(60)), &options),
        ]);
        assert_eq!(
            widest,
            Limits {
                lock_timeout: Some(Duration::from_secs(30)),
                statement_timeout: None
            }
        );
    }
}
