//! The lock as a reader sees it, and what the protocol reports while a run
//! goes on.

use std::time::Duration;

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
    /// What the holder's migration is doing right now, where the engine
    /// can see its session (PostgreSQL and MariaDB/MySQL, not behind a
    /// pooler or proxy): `lock status` only.
    pub activity: Option<crate::waits::Activity>,
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
    pub(crate) fn takeover_reason(&self) -> Option<&'static str> {
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
    pub at: Option<crate::source::Named>,
    /// The migration ran (outside a transaction) but could not be recorded:
    /// it is left dirty.
    pub unrecorded: bool,
    /// The migrations this run completed before the loss.
    pub completed: Vec<crate::source::Step>,
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
}
