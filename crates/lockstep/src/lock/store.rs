//! What the protocol needs from storage, and the types it speaks in. An
//! engine implements [`LockStore`] with its SQL; every rule of the
//! protocol (who may take the lock, which event is logged, when a holder
//! has lost it) is decided in this module's parents, not by the engine.

use std::time::Duration;

use super::{LockBusy, LockInfo, LockLost, LogEntry};

/// The lock's storage: one row per scope and an audit log, read and
/// written by an engine's statements. Each method is one short transaction
/// at most; none waits on a row lock unless it says so.
pub(crate) trait LockStore: Send {
    /// How the store fails; the protocol's own reasons to stop become one.
    type Error: StoreError;

    /// The identity of this connection's session, recorded with the lock
    /// for liveness checks; empty where the engine cannot tell (behind a
    /// connection pooler).
    fn session(&mut self) -> Result<Session, Self::Error>;

    /// Opens an acquisition: in a new transaction, locks the scope's row
    /// without waiting (creating the row if needed, its token above every
    /// token the scope had). `Probe::Row` leaves the transaction open for
    /// [`LockStore::take_lock`] or [`LockStore::abandon`]; the protocol
    /// calls one of them at once.
    fn probe_lock(&mut self, scope: &str) -> Result<Probe, Self::Error>;

    /// In the transaction `probe_lock` opened: takes the lock with the
    /// next token, logs `take.event`, prunes the log to [`super::LOG_RETENTION`]
    /// events, commits. Returns the token. Lands only on the token the probe
    /// saw (`take.seen`): where the probe's row lock does not bind every
    /// writer (Galera), a row that moved meanwhile is a retryable failure.
    fn take_lock(&mut self, take: &Take<'_>) -> Result<i64, Self::Error>;

    /// Rolls back the transaction `probe_lock` opened.
    fn abandon(&mut self);

    /// Extends the lease if the fence's token is still current.
    fn renew_lock(&mut self, fence: &Fence) -> Result<Renewal, Self::Error>;

    /// Frees the lock if the fence's token is still current, logs
    /// `released`, and wakes waiters. `false` when the token was no longer
    /// current.
    fn release_lock(&mut self, fence: &Fence, actor: &Actor<'_>) -> Result<bool, Self::Error>;

    /// Logs what befell this run while it held the lock: it found the lock
    /// lost, or a migration gave up waiting for a table lock.
    fn log_event(
        &mut self,
        fence: &Fence,
        actor: &Actor<'_>,
        event: LogEvent<'_>,
    ) -> Result<(), Self::Error>;

    /// The lock row as it stands, without waiting on any row lock; `None`
    /// when lockstep's tables or the row do not exist.
    fn read_lock_row(&mut self, scope: &str) -> Result<Option<LockInfo>, Self::Error>;

    /// The lock as [`LockStore::read_lock_row`] reads it. An expired lease
    /// with no sign of its holder may still be a long migration that keeps
    /// its own heartbeat out (its transaction has the row locked): looked
    /// at without waiting, it is `migrating`, and not taken over.
    fn read_lock(&mut self, scope: &str) -> Result<Option<LockInfo>, Self::Error> {
        let mut info = self.read_lock_row(scope)?;
        if let Some(info) = info
            .as_mut()
            .filter(|i| i.is_held() && i.is_expired() && i.session_alive != Some(true))
        {
            info.migrating = info.migrating || self.holder_busy(scope);
        }
        Ok(info)
    }

    /// The lock row as [`LockStore::read_lock`] reads it, and what its
    /// holder does right now: whether a migration of its runs, and what
    /// else keeps the database or the row locked. For `lock status`.
    fn inspect_lock(&mut self, scope: &str) -> Result<Option<LockInfo>, Self::Error> {
        let mut info = self.read_lock(scope)?;
        if let Some(info) = info.as_mut().filter(|i| i.is_held() && !i.migrating) {
            info.migrating = self.holder_busy(scope);
        }
        Ok(info)
    }

    /// Whether the holder is busy with a migration right now, looked at
    /// without waiting (its transaction has the lock row locked, or its
    /// session runs a statement); `false` where the engine cannot tell.
    fn holder_busy(&mut self, _scope: &str) -> bool {
        false
    }

    /// Frees the lock whatever its holder, if its token is still
    /// `expected`'s: bumps the token, logs `force_released`, wakes waiters.
    /// Waits up to `wait` for a running migration to commit. `false` when
    /// the token had changed.
    fn force_release(&mut self, release: &ForcedRelease<'_>) -> Result<bool, Self::Error>;

    /// The newest `limit` events of the audit log, newest first.
    fn read_lock_log(&mut self, scope: &str, limit: usize) -> Result<Vec<LogEntry>, Self::Error>;

    /// Whether waiters can be woken by a notification.
    fn can_notify(&self) -> bool;

    /// Subscribes to the scope's release notifications; `false` when that
    /// cannot be done here (the waiter then polls).
    fn listen(&mut self, scope: &str) -> Result<bool, Self::Error>;

    /// Unsubscribes from every notification.
    fn unlisten(&mut self);

    /// Blocks until a release notification arrives (true) or `timeout`
    /// passes (false).
    fn wait_for_notification(&mut self, timeout: Duration) -> Result<bool, Self::Error>;

    /// The longest pause between acquisition attempts.
    fn poll_interval(&self) -> Duration;

    /// A new connection to the same lock, for the heartbeat.
    fn heartbeat_store(&self) -> Result<Box<dyn LockStore<Error = Self::Error>>, Self::Error>;
}

/// What the protocol needs to know of a store's failure.
pub(crate) trait StoreError: From<Stop> + Send + 'static {
    /// A serialization failure or deadlock rolled the transaction back
    /// whole: running it again is safe (up to [`super::RETRIES`] times).
    fn is_retryable(&self) -> bool;
}

/// Why the protocol stops a run, apart from its store's failures.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The lock is held by another run, and waiting was not allowed or
    /// timed out.
    Busy(Box<LockBusy>),
    /// The lock's token stopped being this run's.
    Lost(Box<LockLost>),
    /// The run was cancelled while it waited.
    Cancelled,
    /// The heartbeat's thread could not be started.
    NoHeartbeat(std::io::Error),
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

impl<'a> Actor<'a> {
    /// This process, as `owner` on `host`, doing `command`.
    pub fn this_process(owner: &'a str, host: &'a str, command: &'a str) -> Actor<'a> {
        Actor {
            owner,
            host,
            pid: i64::from(std::process::id()),
            command,
        }
    }
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
    /// A migration of the holder's gave up waiting for a table lock, and
    /// runs again.
    LockRetry { detail: &'a str },
}

impl<'a> LogEvent<'a> {
    /// The `event` column: `acquired`, `taken_over`, `released`,
    /// `force_released`, `lost`, `lock_retry`.
    pub fn name(self) -> &'static str {
        match self {
            LogEvent::Acquired => "acquired",
            LogEvent::TakenOver { .. } => "taken_over",
            LogEvent::Released => "released",
            LogEvent::ForceReleased { .. } => "force_released",
            LogEvent::Lost { .. } => "lost",
            LogEvent::LockRetry { .. } => "lock_retry",
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
            LogEvent::Lost { detail } | LogEvent::LockRetry { detail } => Some(detail),
            _ => None,
        }
    }
}

/// Who takes the lock, and the event that logs it: `Acquired` or
/// `TakenOver`.
#[derive(Debug, Clone)]
pub(crate) struct Take<'a> {
    pub scope: &'a str,
    /// The token the probe saw. The take lands only on that token: where a
    /// row lock binds one node (Galera), another node's take can land
    /// between the probe and the take, and must make this one fail.
    pub seen: i64,
    pub actor: &'a Actor<'a>,
    pub session: &'a Session,
    pub ttl: Duration,
    pub event: LogEvent<'a>,
}

/// A forced release: the lock freed whatever its holder, if its token is
/// still the one the operator was shown.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForcedRelease<'a> {
    pub scope: &'a str,
    /// The lock as the operator was shown it.
    pub expected: &'a LockInfo,
    /// Who releases it.
    pub actor: &'a Actor<'a>,
    /// How long to wait for a running migration to commit.
    pub wait: Duration,
}

impl<'a> ForcedRelease<'a> {
    /// The event that logs it: `force_released`, with the holder it was
    /// taken from.
    pub fn event(&self) -> LogEvent<'a> {
        LogEvent::ForceReleased {
            previous: self.expected.owner.as_deref(),
        }
    }
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
    pub(crate) fn lost<E: From<Stop>>(&self) -> E {
        E::from(Stop::Lost(Box::new(LockLost {
            token: self.token,
            at: None,
            unrecorded: false,
            completed: Vec::new(),
        })))
    }
}

/// The result of one acquisition attempt's first half.
pub(crate) enum Probe {
    /// The row is locked for this transaction; the transaction is open.
    Row(LockInfo),
    /// A transaction of the holder has the row locked (a migration is
    /// running): held. The row as read without locking, when the store
    /// read it; `None` leaves the protocol to read it with `read_lock`.
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
    pub fn moved(self, seen: Option<&LockInfo>) -> bool {
        let (token, held) = seen.map_or((0, false), |s| (s.token, s.is_held()));
        token != self.token || (self.held && !held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
