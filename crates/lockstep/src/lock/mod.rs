//! The migration lock: a lease on one row per scope, fencing tokens, a
//! heartbeat, and automatic recovery from dead holders. docs/locking.md is
//! the specification; this is the protocol, written once for every engine.
//!
//! - `info`: the lock as readers see it, and what the protocol reports.
//! - `store`: what the protocol needs from storage (`LockStore`), with
//!   the types it speaks in; engines implement it with their SQL.
//! - `acquire`: waiting for and taking the lock.
//! - `heartbeat`: the lock held, renewed on a connection of its own.

use std::time::Duration;

mod acquire;
mod heartbeat;
mod info;
#[cfg(test)]
mod memory;
#[cfg(test)]
mod simulation;
mod store;

pub(crate) use acquire::{acquire, Acquired, Request, Work};
pub(crate) use heartbeat::Held;
pub use info::{LockBusy, LockEvent, LockInfo, LockLost, LockState, LogEntry};
pub use store::Fence;
pub(crate) use store::{
    Actor, ForcedRelease, LockMark, LockStore, LogEvent, Probe, Renewal, Session, Stop, StoreError,
    Take,
};

/// A serialization failure or deadlock rolls a transaction back whole;
/// lockstep runs it again up to this many times, wherever it meets one.
pub(crate) const RETRIES: usize = 5;

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
    /// Refuses a lease or a wait the lock cannot honour.
    pub fn check(&self) -> Result<(), String> {
        Self::check_ttl(self.ttl)?;
        Self::check_timeout(self.timeout)
    }

    /// Checks a lease: from 1 s (renewals every third of it must fit
    /// between a database's round trips) to 24 h.
    pub fn check_ttl(ttl: Duration) -> Result<(), String> {
        if ttl < MIN_TTL {
            Err("the lease must be at least 1s".into())
        } else if ttl > MAX_DURATION {
            Err("the lease must be at most 24h".into())
        } else {
            Ok(())
        }
    }

    /// Checks a wait for the lock: at most 24 h.
    pub fn check_timeout(wait: Duration) -> Result<(), String> {
        if wait > MAX_DURATION {
            Err("the wait for the lock must be at most 24h".into())
        } else {
            Ok(())
        }
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
