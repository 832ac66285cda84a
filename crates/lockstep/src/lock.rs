//! The migration lock: a lease on one row per scope, fencing tokens, a
//! heartbeat, and automatic recovery from dead holders. docs/locking.md is
//! the specification; this is the protocol, written once for every engine.
//! Drivers supply the row-level primitives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::driver::Driver;
use crate::error::Error;

/// The default lease: a holder that stops renewing loses the lock this long
/// after its last heartbeat.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The default bound on waiting for the lock.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The shortest lease: renewals every third of it must fit comfortably
/// between a database's round trips.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// The longest lease, and the longest wait for the lock. Past it the
/// engines' own limits come into sight (PostgreSQL's timeouts are 32-bit
/// milliseconds, under 25 days), and a day is already longer than any
/// deploy waits for a crashed holder's lease to run out.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The table holding one lock row per scope.
pub const LOCK_TABLE: &str = "lockstep_lock";

/// The append-only audit log of lock events.
pub const LOCK_LOG_TABLE: &str = "lockstep_lock_log";

/// The lock log's index on (scope, id), in the lock log's schema.
pub(crate) const LOCK_LOG_INDEX: &str = "lockstep_lock_log_scope";

/// Events kept per scope in the audit log; older ones are pruned when the
/// lock is taken.
pub const LOG_RETENTION: i64 = 1000;

/// How a run takes the lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// The lease; renewed every third of it.
    pub ttl: Duration,
    /// How long to wait for a holder to finish.
    pub timeout: Duration,
    /// Fail at once when the lock is held.
    pub no_wait: bool,
}

impl LockOptions {
    /// Refuses a lease or a wait the lock cannot honour: a lease shorter
    /// than [`MIN_TTL`], either longer than [`MAX_DURATION`].
    pub fn check(&self) -> Result<(), String> {
        check_ttl(self.ttl)?;
        check_wait(self.timeout)
    }
}

/// Checks a lease: from [`MIN_TTL`] to [`MAX_DURATION`].
pub fn check_ttl(ttl: Duration) -> Result<(), String> {
    if ttl < MIN_TTL {
        Err("the lease must be at least 1s".into())
    } else if ttl > MAX_DURATION {
        Err("the lease must be at most 24h".into())
    } else {
        Ok(())
    }
}

/// Checks a wait for the lock: at most [`MAX_DURATION`].
pub fn check_wait(wait: Duration) -> Result<(), String> {
    if wait > MAX_DURATION {
        Err("the wait for the lock must be at most 24h".into())
    } else {
        Ok(())
    }
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            ttl: DEFAULT_TTL,
            timeout: DEFAULT_TIMEOUT,
            no_wait: false,
        }
    }
}

/// The lock row as a reader sees it. Times are RFC 3339 UTC; ages are by the
/// database's clock (the local clock on SQLite).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockInfo {
    /// The scope (the history table's name).
    pub scope: String,
    /// The current fencing token.
    pub token: i64,
    /// The executor holding it; `None` when free.
    pub owner: Option<String>,
    /// The holder's host.
    pub host: Option<String>,
    /// The holder's process id.
    pub pid: Option<i64>,
    /// What the holder is doing: `upgrade`, `rollback`, `fix`.
    pub command: Option<String>,
    /// The holder's lockstep version.
    pub tool_version: Option<String>,
    /// When it was taken.
    pub acquired_at: Option<String>,
    /// The last renewal.
    pub heartbeat_at: Option<String>,
    /// When the lease runs out.
    pub expires_at: Option<String>,
    /// Milliseconds since it was taken.
    pub held_ms: Option<i64>,
    /// Milliseconds since the last renewal.
    pub heartbeat_age_ms: Option<i64>,
    /// Milliseconds until the lease runs out; negative once it has.
    pub expires_in_ms: Option<i64>,
    /// Whether the holder's session is alive: `Some(false)` only when the
    /// engine can prove it is gone, `None` when it cannot tell.
    pub session_alive: Option<bool>,
    /// A migration of the holder is running right now: its transaction
    /// has the lock's row (PostgreSQL) or the database (SQLite) locked, or
    /// its session runs a statement. With no holder: another connection,
    /// not a lockstep run, keeps them locked.
    pub migrating: bool,
    /// What else keeps the database or the lock's row locked, where the
    /// engine can tell: `pid 90 (sqlite3: writing)`.
    pub blocker: Option<String>,
}

impl LockInfo {
    /// Held by someone.
    pub fn is_held(&self) -> bool {
        self.owner.is_some()
    }

    /// The lease ran out.
    pub fn is_expired(&self) -> bool {
        self.expires_in_ms.is_some_and(|ms| ms < 0)
    }

    /// Whether the holder is alive as far as anyone can tell: a migration
    /// of its has the row locked; or its session is not provably gone, and
    /// its heartbeat is fresh or its session is seen.
    pub fn holder_alive(&self) -> bool {
        self.is_held()
            && (self.migrating
                || (self.session_alive != Some(false)
                    && (!self.is_expired() || self.session_alive == Some(true))))
    }

    /// The state `lock status` reports.
    pub fn state(&self) -> LockState {
        if !self.is_held() {
            LockState::Unlocked
        } else if self.holder_alive() {
            LockState::Locked
        } else {
            LockState::Stale
        }
    }

    /// Why this lock may be taken from its holder, if it may.
    fn takeover_reason(&self) -> Option<&'static str> {
        if !self.is_held() || self.migrating {
            None
        } else if self.session_alive == Some(false) {
            Some("the holder's session is gone")
        } else if self.is_expired() {
            Some("the lease expired")
        } else {
            None
        }
    }

    /// `<owner> (host H, pid P, upgrade, held 12s, heartbeat 2s ago)`.
    pub fn describe(&self) -> String {
        if self.owner.is_none() && self.migrating {
            // The lock row is locked (PostgreSQL) or the database is (SQLite),
            // yet no run holds the lock: another connection does.
            let mut text = "another connection, not a lockstep run: it keeps the lock's row or the database locked".to_string();
            if let Some(blocker) = &self.blocker {
                text.push_str(&format!(" ({blocker})"));
            }
            return text;
        }
        let owner = self.owner.as_deref().unwrap_or("nobody");
        let mut parts = Vec::new();
        if let Some(host) = &self.host {
            parts.push(format!("host {host}"));
        }
        if let Some(pid) = self.pid {
            parts.push(format!("pid {pid}"));
        }
        if let Some(command) = &self.command {
            parts.push(command.clone());
        }
        if let Some(held) = self.held_ms {
            parts.push(format!("held {}", seconds(held)));
        }
        if self.migrating {
            parts.push("migrating now".into());
        } else if let Some(age) = self.heartbeat_age_ms {
            parts.push(format!("heartbeat {} ago", seconds(age)));
        }
        if self.is_expired() && !self.migrating {
            parts.push("lease expired".into());
        }
        if self.session_alive == Some(false) {
            parts.push("session gone".into());
        }
        if let Some(blocker) = &self.blocker {
            parts.push(format!("the database is locked by {blocker}"));
        }
        if parts.is_empty() {
            owner.to_string()
        } else {
            format!("{owner} ({})", parts.join(", "))
        }
    }
}

fn seconds(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}h{}m", s / 3600, s % 3600 / 60)
    }
}

/// What `lock status` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Nobody holds it.
    Unlocked,
    /// Held by a holder that is alive.
    Locked,
    /// Held, but the lease expired and the holder is not seen: the next run
    /// takes it over.
    Stale,
}

impl LockState {
    /// `unlocked`, `locked`, `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::Unlocked => "unlocked",
            LockState::Locked => "locked",
            LockState::Stale => "stale",
        }
    }
}

/// One event of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Increasing id.
    pub id: i64,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// `acquired`, `released`, `taken_over`, `force_released`, `lost`.
    pub event: String,
    /// The token the event concerns (the new one for acquisitions).
    pub token: i64,
    /// Who: the holder, or who forced the release.
    pub owner: Option<String>,
    /// Their host.
    pub host: Option<String>,
    /// Their pid.
    pub pid: Option<i64>,
    /// Their command.
    pub command: Option<String>,
    /// The holder before a takeover or forced release.
    pub previous_owner: Option<String>,
    /// Why, for takeovers and losses.
    pub detail: Option<String>,
}

/// The identity of the holder's database session, for liveness checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Session {
    /// PostgreSQL backend pid, or the OS pid on SQLite.
    pub pid: Option<i64>,
    /// PostgreSQL backend start (µs since the epoch), or the process start
    /// time on SQLite, with the host.
    pub start: Option<String>,
}

/// Who acts on the lock: the holder, or who forces a release. Recorded
/// with the lock and with each event of its log.
#[derive(Debug, Clone)]
pub(crate) struct Actor<'a> {
    pub owner: &'a str,
    pub host: &'a str,
    pub pid: i64,
    pub command: &'a str,
}

/// An event of the audit log, with what it records beyond its actor and
/// token. The protocol decides which event a step writes; an engine writes
/// it as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogEvent<'a> {
    /// The lock was free and is taken.
    Acquired,
    /// The lock is taken from a holder that is gone or whose lease ran out.
    TakenOver {
        previous: Option<&'a str>,
        why: &'a str,
    },
    /// The holder freed it.
    Released,
    /// Someone freed it whatever its holder.
    ForceReleased { previous: Option<&'a str> },
    /// The holder found its token no longer current.
    Lost { detail: &'a str },
}

impl<'a> LogEvent<'a> {
    /// The `event` column: `acquired`, `taken_over`, `released`,
    /// `force_released`, `lost`.
    pub fn name(self) -> &'static str {
        match self {
            LogEvent::Acquired => "acquired",
            LogEvent::TakenOver { .. } => "taken_over",
            LogEvent::Released => "released",
            LogEvent::ForceReleased { .. } => "force_released",
            LogEvent::Lost { .. } => "lost",
        }
    }

    /// The `previous_owner` column: the holder before a takeover or a
    /// forced release.
    pub fn previous_owner(self) -> Option<&'a str> {
        match self {
            LogEvent::TakenOver { previous, .. } | LogEvent::ForceReleased { previous } => previous,
            _ => None,
        }
    }

    /// The `detail` column: why, for takeovers and losses.
    pub fn detail(self) -> Option<&'a str> {
        match self {
            LogEvent::TakenOver { why, .. } => Some(why),
            LogEvent::Lost { detail } => Some(detail),
            _ => None,
        }
    }
}

/// Who takes the lock, and the event that logs it: `Acquired` or
/// `TakenOver`.
#[derive(Debug, Clone)]
pub(crate) struct Take<'a> {
    pub scope: &'a str,
    pub actor: &'a Actor<'a>,
    pub session: &'a Session,
    pub ttl: Duration,
    pub event: LogEvent<'a>,
}

/// Proof of holding the lock: writes carrying it commit only while its
/// token is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The scope.
    pub scope: String,
    /// The holder.
    pub owner: String,
    /// The fencing token of this acquisition.
    pub token: i64,
    /// The lease, renewed on every fenced write.
    pub ttl: Duration,
}

impl Fence {
    /// The error of a write this fence stopped: its token is no longer
    /// current.
    pub(crate) fn lost(&self) -> Error {
        Error::LockLost(Box::new(LockLost {
            token: self.token,
            at: None,
            unrecorded: false,
            completed: Vec::new(),
        }))
    }
}

/// The result of one acquisition attempt's first half.
pub(crate) enum Probe {
    /// The row is locked for this transaction; the transaction is open.
    Row(LockInfo),
    /// A transaction of the holder has the row locked (a migration is
    /// running): held. The row as read without locking, when it could be.
    Busy(Option<LockInfo>),
}

/// A heartbeat's outcome.
pub(crate) enum Renewal {
    /// The lease was extended.
    Renewed,
    /// The row is locked, by the holder's own migration: normal.
    Busy,
    /// The token is no longer current: the lock was taken over or released
    /// by force.
    Lost,
}

/// Something the lock protocol reports while a run goes on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum LockEvent<'a> {
    /// The lock is held; this run waits. Sent after each attempt.
    Waiting {
        /// The holder, as last seen.
        holder: &'a LockInfo,
        /// How long this run has waited.
        waited: Duration,
    },
    /// This run holds the lock.
    Acquired {
        /// The fencing token.
        token: i64,
        /// The previous holder and why it was taken from them, when this
        /// was a takeover.
        took_over: Option<(&'a LockInfo, &'a str)>,
    },
    /// This run released the lock.
    Released {
        /// The token released.
        token: i64,
    },
    /// This run could not release the lock: it was lost, or the database
    /// could not be reached (the lease then runs out by itself).
    NotReleased {
        /// The token held.
        token: i64,
        /// Why.
        reason: String,
    },
}

/// Why the lock was not acquired (exit code 3 in the CLI).
#[derive(Debug, Clone)]
pub struct LockBusy {
    /// The holder, as last seen.
    pub holder: LockInfo,
    /// How long this run waited.
    pub waited: Duration,
    /// `--no-wait` was given.
    pub no_wait: bool,
}

/// Why a run stopped holding the lock (exit code 5 in the CLI).
#[derive(Debug, Clone)]
pub struct LockLost {
    /// The token this run held.
    pub token: i64,
    /// The migration that was about to run, or that ran outside a
    /// transaction but could not be recorded.
    pub at: Option<crate::plan::Named>,
    /// The migration ran (outside a transaction) but could not be recorded:
    /// it is left dirty.
    pub unrecorded: bool,
    /// The migrations this run completed before the loss.
    pub completed: Vec<crate::error::Step>,
}

/// The lock held by this run: its fence and its heartbeat.
pub(crate) struct Held {
    pub fence: Fence,
    /// The command it was taken for, for the audit log.
    pub command: String,
    pub shared: Arc<Shared>,
    heartbeat: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

/// State shared with the heartbeat thread.
#[derive(Default)]
pub(crate) struct Shared {
    lost: AtomicBool,
    /// The last heartbeat failure, for `-v`.
    pub last_error: Mutex<Option<String>>,
}

impl Held {
    /// The heartbeat saw the token change.
    pub fn lost(&self) -> bool {
        self.shared.lost.load(Ordering::SeqCst)
    }

    pub fn mark_lost(&self) {
        self.shared.lost.store(true, Ordering::SeqCst);
    }

    /// Stops the heartbeat and waits for it.
    pub fn stop_heartbeat(&mut self) {
        if let Some((stop, handle)) = self.heartbeat.take() {
            drop(stop);
            let _ = handle.join();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}

/// Waits for and takes the lock. Each attempt is one short transaction; no
/// transaction is open while waiting. `cancelled` is checked between
/// attempts.
/// What waiting for the lock came to.
pub(crate) enum Acquired {
    Held(Held),
    /// While this run waited, the holder did what it came for (`needed`
    /// said so when the lock came free): nothing left to take it for.
    NotNeeded,
}

/// The lock as a history read found it, in the same snapshot as the rows.
/// The default is a lock never taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LockMark {
    /// The token: 0 before the lock was ever taken.
    pub token: i64,
    /// Whether someone held it.
    pub held: bool,
}

impl LockMark {
    /// Whether the lock was taken or freed since this mark: a run that
    /// read history then may have read it before another run's work.
    /// Every taking bumps the token; a release keeps it.
    fn moved(self, seen: Option<&LockInfo>) -> bool {
        let (token, held) = seen.map_or((0, false), |s| (s.token, s.is_held()));
        token != self.token || (self.held && !held)
    }
}

/// Takes the lock, waiting as the options say. Each time the lock comes
/// free after a wait, `needed` is asked first (reading what it must, without
/// the lock) whether there is still work to take it for; and whenever the
/// lock moved since `since` (the lock as the caller's history read found
/// it), at a look or inside an attempt.
#[allow(clippy::too_many_arguments)]
pub(crate) fn acquire(
    driver: &mut dyn Driver,
    scope: &str,
    me: &Actor<'_>,
    options: &LockOptions,
    report: &mut dyn FnMut(&LockEvent<'_>),
    cancelled: &dyn Fn() -> bool,
    since: Option<LockMark>,
    needed: &mut dyn FnMut(&mut dyn Driver) -> bool,
) -> Result<Acquired, Error> {
    let started = Instant::now();
    let mut listening = false;
    let mut backoff = Duration::from_millis(50);
    let mut conflicts = 0;
    let mut moves = 0;
    let mut since = since;
    // Ask `needed` before the next attempt: the lock came free after a
    // wait, or moved between a look and an attempt.
    let mut recheck = false;
    // A release notification says the lock is free: no need to look.
    let mut released = false;
    loop {
        if cancelled() {
            if listening {
                driver.unlisten();
            }
            return Err(Error::Cancelled {
                completed: Vec::new(),
            });
        }
        // Look before trying: one plain read, no transaction, no row lock,
        // no failed statement in the server's log, and on SQLite no
        // contention for the write lock with the holder's migrations. Only
        // a lock that looks free or may be taken over is tried for real. A
        // run that finds the lock free pays one cheap read for this; one of
        // a fleet that finds it held pays that read instead of a failed
        // attempt, its rollback and a second read to learn the holder.
        let seen = if std::mem::take(&mut released) {
            None
        } else {
            driver.read_lock(scope)?
        };
        let holder = match seen {
            Some(seen) if seen.is_held() && seen.takeover_reason().is_none() => seen,
            _ => {
                // Free, or about to be taken over, after a wait or with the
                // lock moved since the caller's read: most often another
                // run just finished, having applied what this one came to
                // apply.
                if recheck || since.is_some_and(|mark| mark.moved(seen.as_ref())) {
                    if !needed(driver) {
                        if listening {
                            driver.unlisten();
                        }
                        return Ok(Acquired::NotNeeded);
                    }
                    // Read afresh: the lock as that read found it.
                    since = since.and(driver.history_lock());
                    recheck = false;
                }
                // This session's identity, recorded with the lock: asked
                // only by a run that tries for it (once; the driver keeps
                // it), not by every waiter of a fleet.
                let session = driver.session()?;
                match attempt(driver, scope, me, options, &session, since) {
                    Ok(Attempt::Taken { token, took_over }) => {
                        if listening {
                            driver.unlisten();
                        }
                        report(&LockEvent::Acquired {
                            token,
                            took_over: took_over.as_ref().map(|(info, why)| (info, *why)),
                        });
                        return hold(driver, scope, me, options, token);
                    }
                    Ok(Attempt::Held(holder)) => holder,
                    // Taken or freed between the look and the attempt's
                    // transaction (on SQLite, the attempt may wait for the
                    // write lock while a whole run goes by).
                    Ok(Attempt::Moved) => {
                        // Each move is another run's turn with the lock;
                        // past a few in a row, stop comparing rather than
                        // chase them (the run reads history under the
                        // lock anyway).
                        moves += 1;
                        if moves >= 10 {
                            since = None;
                        }
                        recheck = true;
                        continue;
                    }
                    // A serialization failure or deadlock rolled the
                    // attempt back whole: try again at once.
                    Err(e) if e.is_retryable() && conflicts < 10 => {
                        conflicts += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        recheck = true;
        match wait_turn(
            driver,
            holder,
            options,
            started,
            &mut listening,
            &mut backoff,
            report,
        )? {
            Turn::GiveUp(done) => return Err(done),
            Turn::Look => {}
            Turn::Released => released = true,
        }
    }
}

/// Starts the heartbeat of a lock just taken with `token`.
fn hold(
    driver: &mut dyn Driver,
    scope: &str,
    me: &Actor<'_>,
    options: &LockOptions,
    token: i64,
) -> Result<Acquired, Error> {
    let fence = Fence {
        scope: scope.to_string(),
        owner: me.owner.to_string(),
        token,
        ttl: options.ttl,
    };
    let shared = Arc::new(Shared::default());
    let heartbeat = match start_heartbeat(driver, &fence, &shared) {
        Ok(h) => h,
        Err(e) => {
            // Do not leave a lock behind that nobody renews.
            let _ = driver.release_lock(&fence, me);
            return Err(e);
        }
    };
    Ok(Acquired::Held(Held {
        fence,
        command: me.command.to_string(),
        shared,
        heartbeat: Some(heartbeat),
    }))
}

/// What a waiter does after its turn at waiting.
enum Turn {
    /// Told not to wait, or the time is up.
    GiveUp(Error),
    /// Look at the lock again.
    Look,
    /// A release notification came: the lock was freed.
    Released,
}

/// The lock is held by someone else: gives up when told not to wait or the
/// time is up; otherwise says who holds it and waits for a release
/// notification or the next poll.
fn wait_turn(
    driver: &mut dyn Driver,
    holder: LockInfo,
    options: &LockOptions,
    started: Instant,
    listening: &mut bool,
    backoff: &mut Duration,
    report: &mut dyn FnMut(&LockEvent<'_>),
) -> Result<Turn, Error> {
    let waited = started.elapsed();
    if options.no_wait || waited >= options.timeout {
        if *listening {
            driver.unlisten();
        }
        return Ok(Turn::GiveUp(Error::LockBusy(Box::new(LockBusy {
            holder,
            waited,
            no_wait: options.no_wait,
        }))));
    }
    report(&LockEvent::Waiting {
        holder: &holder,
        waited,
    });
    // Listen where the engine can notify, so that a release wakes this
    // waiter at once; poll with backoff and jitter anyway, for expiries and
    // engines without notifications.
    let scope = holder.scope.as_str();
    if !*listening && driver.can_notify() && driver.listen(scope)? {
        *listening = true;
        // A release between the look and the LISTEN notified nobody: look
        // again now, listening.
        return Ok(Turn::Look);
    }
    let remaining = options.timeout.saturating_sub(started.elapsed());
    if *listening {
        // A release wakes this waiter at once; polls only look for an
        // expired lease or a vanished holder, which the poll interval bounds.
        let pause = jitter(driver.poll_interval()).min(remaining);
        if driver.wait_for_notification(pause)? {
            return Ok(Turn::Released);
        }
    } else {
        let pause = jitter(*backoff).min(remaining);
        std::thread::sleep(pause);
    }
    *backoff = (*backoff * 2).min(driver.poll_interval());
    Ok(Turn::Look)
}

enum Attempt {
    Taken {
        token: i64,
        took_over: Option<(LockInfo, &'static str)>,
    },
    Held(LockInfo),
    /// Free, or to be taken over, but no longer as `since` said: nothing
    /// was taken.
    Moved,
}

/// One try for the lock, in one transaction. Takes it when it is free or
/// may be taken over, unless it moved since `since`.
fn attempt(
    driver: &mut dyn Driver,
    scope: &str,
    me: &Actor<'_>,
    options: &LockOptions,
    session: &Session,
    since: Option<LockMark>,
) -> Result<Attempt, Error> {
    let info = match driver.probe_lock(scope)? {
        Probe::Busy(seen) => {
            let mut info = seen.unwrap_or_else(|| LockInfo {
                scope: scope.to_string(),
                ..LockInfo::default()
            });
            // Busy with the holder's migration, unless the driver named
            // something else that keeps the row or the database locked.
            if info.blocker.is_none() {
                info.migrating = true;
            }
            return Ok(Attempt::Held(info));
        }
        Probe::Row(info) => info,
    };
    let takeover = if info.is_held() {
        match info.takeover_reason() {
            Some(why) => Some(why),
            None => {
                driver.abandon();
                return Ok(Attempt::Held(info));
            }
        }
    } else {
        None
    };
    if since.is_some_and(|mark| mark.moved(Some(&info))) {
        driver.abandon();
        return Ok(Attempt::Moved);
    }
    let take = Take {
        scope,
        actor: me,
        session,
        ttl: options.ttl,
        event: match takeover {
            Some(why) => LogEvent::TakenOver {
                previous: info.owner.as_deref(),
                why,
            },
            None => LogEvent::Acquired,
        },
    };
    let token = driver.take_lock(&take)?;
    Ok(Attempt::Taken {
        token,
        took_over: takeover.map(|why| (info, why)),
    })
}

/// Up to a quarter shorter, so that a fleet of waiters does not poll in
/// step; never longer, so that the poll interval bounds a waiter's pause
/// (and with it the handoff where nothing notifies).
fn jitter(d: Duration) -> Duration {
    let r = crate::identity::random_u32() as f64 / u32::MAX as f64;
    d.mul_f64(0.75 + r * 0.25)
}

/// Renews the lease every third of the TTL on a connection of its own, and
/// flags the loss when the token is no longer current.
fn start_heartbeat(
    driver: &dyn Driver,
    fence: &Fence,
    shared: &Arc<Shared>,
) -> Result<(mpsc::Sender<()>, JoinHandle<()>), Error> {
    let mut conn = driver.sibling()?;
    let (stop, stopped) = mpsc::channel::<()>();
    let fence = fence.clone();
    let shared = shared.clone();
    let interval = fence.ttl / 3;
    let handle = std::thread::Builder::new()
        .name("lockstep-heartbeat".into())
        .spawn(move || loop {
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => {}
                // Stopped, or the run is over.
                _ => return,
            }
            match conn.renew_lock(&fence) {
                Ok(Renewal::Renewed) | Ok(Renewal::Busy) => {}
                Ok(Renewal::Lost) => {
                    shared.lost.store(true, Ordering::SeqCst);
                    return;
                }
                Err(e) => {
                    // A broken heartbeat connection is not a loss: the
                    // fenced writes decide. Reconnect on the next beat.
                    *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(e.to_string());
                    if let Ok(fresh) = conn.sibling() {
                        conn = fresh;
                    }
                }
            }
        })
        .map_err(|e| Error::Config {
            message: format!("cannot start the heartbeat thread: {e}"),
            hint: None,
        })?;
    Ok((stop, handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(expires_in_ms: i64, session_alive: Option<bool>, migrating: bool) -> LockInfo {
        LockInfo {
            scope: "s".into(),
            token: 7,
            owner: Some("ci-1".into()),
            host: Some("h".into()),
            pid: Some(42),
            command: Some("upgrade".into()),
            held_ms: Some(12_000),
            heartbeat_age_ms: Some(2_000),
            expires_in_ms: Some(expires_in_ms),
            session_alive,
            migrating,
            ..LockInfo::default()
        }
    }

    #[test]
    fn states_and_takeover_reasons() {
        let free = LockInfo::default();
        assert_eq!(free.state(), LockState::Unlocked);
        assert_eq!(free.takeover_reason(), None);
        let table = [
            // (expires in, session alive, migrating) -> (state, takeover)
            ((5_000, Some(true), false), (LockState::Locked, None)),
            ((5_000, None, false), (LockState::Locked, None)),
            (
                (5_000, Some(false), false),
                (LockState::Stale, Some("the holder's session is gone")),
            ),
            (
                (-1, None, false),
                (LockState::Stale, Some("the lease expired")),
            ),
            (
                (-1, Some(false), false),
                (LockState::Stale, Some("the holder's session is gone")),
            ),
            (
                (-1, Some(true), false),
                (LockState::Locked, Some("the lease expired")),
            ),
            // A running migration holds the row: never taken over.
            ((-1, Some(false), true), (LockState::Locked, None)),
        ];
        for ((exp, alive, migrating), (state, reason)) in table {
            let info = held(exp, alive, migrating);
            assert_eq!(
                (info.state(), info.takeover_reason()),
                (state, reason),
                "{exp} {alive:?} {migrating}"
            );
        }
    }

    #[test]
    fn describes_the_holder() {
        assert_eq!(
            held(5_000, Some(true), false).describe(),
            "ci-1 (host h, pid 42, upgrade, held 12s, heartbeat 2s ago)"
        );
        assert_eq!(
            held(-3_000, Some(false), false).describe(),
            "ci-1 (host h, pid 42, upgrade, held 12s, heartbeat 2s ago, lease expired, session gone)"
        );
        assert_eq!(
            held(5_000, None, true).describe(),
            "ci-1 (host h, pid 42, upgrade, held 12s, migrating now)"
        );
        assert_eq!(seconds(185_000), "3m5s");
    }

    #[test]
    fn a_lock_moved_when_taken_or_freed_since_the_mark() {
        let mark = |token, held| LockMark { token, held };
        let row = |token, owner: Option<&str>| LockInfo {
            token,
            owner: owner.map(str::to_string),
            ..LockInfo::default()
        };
        // (mark, the row as seen now) -> moved
        let cases = [
            (mark(0, false), None, false),
            (mark(0, false), Some(row(0, None)), false),
            (mark(0, false), Some(row(1, None)), true),
            (mark(3, false), Some(row(3, None)), false),
            (mark(3, false), Some(row(4, Some("b"))), true),
            // Held when history was read, free now: the holder finished,
            // and a release keeps the token.
            (mark(3, true), Some(row(3, None)), true),
            (mark(3, true), Some(row(3, Some("a"))), false),
        ];
        for (m, seen, moved) in cases {
            assert_eq!(m.moved(seen.as_ref()), moved, "{m:?} {seen:?}");
        }
    }

    /// A real SQLite database: an attempt whose mark is outdated takes
    /// nothing, however free the lock is; one with the mark of a fresh
    /// history read takes it.
    #[test]
    fn an_attempt_takes_nothing_when_the_lock_moved_since_the_mark() {
        use crate::driver::sqlite::SqliteDriver;
        let dir = std::env::temp_dir().join(format!(
            "lockstep-mark-{}-{}",
            std::process::id(),
            crate::identity::random_u32()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("app.db");
        let table = crate::TableName::default();
        let scope = table.to_string();
        let mut one = SqliteDriver::open(&db, &table, true).unwrap();
        one.create_tables().unwrap();
        let mut other = SqliteDriver::open(&db, &table, true).unwrap();
        let me = Actor {
            owner: "one",
            host: "here",
            pid: 1,
            command: "upgrade",
        };
        let options = LockOptions::default();
        let session = one.session().unwrap();
        let read = |driver: &mut SqliteDriver| {
            driver.read_history().unwrap().unwrap();
            driver.history_lock()
        };
        let plain = |sql: &str| -> String {
            rusqlite::Connection::open(&db)
                .unwrap()
                .query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        let before = read(&mut one);
        assert_eq!(
            before,
            Some(LockMark {
                token: 0,
                held: false
            })
        );
        // Another run takes the lock and frees it.
        let Attempt::Taken { token, .. } =
            attempt(&mut other, &scope, &me, &options, &session, None).unwrap()
        else {
            panic!("the lock is free");
        };
        let fence = Fence {
            scope: scope.clone(),
            owner: "one".into(),
            token,
            ttl: options.ttl,
        };
        assert!(other.release_lock(&fence, &me).unwrap());
        // The first run's mark is from before: nothing is taken.
        assert!(matches!(
            attempt(&mut one, &scope, &me, &options, &session, before).unwrap(),
            Attempt::Moved
        ));
        let lock_row = "SELECT token || ' ' || coalesce(owner, '-') FROM lockstep_lock";
        assert_eq!(plain(lock_row), "Text(\"1 -\")");
        // Read afresh, it takes it.
        let after = read(&mut one);
        assert_eq!(
            after,
            Some(LockMark {
                token: 1,
                held: false
            })
        );
        assert!(matches!(
            attempt(&mut one, &scope, &me, &options, &session, after).unwrap(),
            Attempt::Taken { token: 2, .. }
        ));
        assert_eq!(plain(lock_row), "Text(\"2 one\")");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jitter_shortens_by_up_to_a_quarter_and_never_lengthens() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(1000));
            assert!(
                d >= Duration::from_millis(750) && d <= Duration::from_millis(1000),
                "{d:?}"
            );
        }
    }
}
