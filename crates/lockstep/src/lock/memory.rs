//! A lock store in memory, on a simulated clock: the rules that the
//! engines' SQL follows, kept in a struct, so that the protocol can be
//! tested on its own (see `simulation`). Every connection of one `World`
//! sees the same row, log and history, as connections to one database do.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{
    Actor, Fence, ForcedRelease, LockInfo, LockStore, LogEntry, LogEvent, Probe, Renewal, Session,
    Take, LOG_RETENTION,
};
use crate::error::{DbMessage, Error};

/// The lock row.
#[derive(Debug, Clone, Default)]
struct Row {
    token: i64,
    owner: Option<String>,
    host: Option<String>,
    pid: Option<i64>,
    command: Option<String>,
    /// The holder's session.
    session: Option<i64>,
    acquired_at: i64,
    heartbeat_at: i64,
    expires_at: i64,
}

/// One database: the lock's row (one scope), its log, the history's
/// tokens, the clock, and which sessions are gone.
#[derive(Debug, Default)]
pub(super) struct World {
    /// The simulated clock, in milliseconds.
    pub now_ms: i64,
    row: Option<Row>,
    /// The connection whose open transaction has the row locked.
    locked_by: Option<u32>,
    log: Vec<LogEntry>,
    next_log_id: i64,
    /// `(version, token)` of each history row, in the order written.
    pub history: Vec<(u64, i64)>,
    /// Sessions that are gone: their processes crashed, or the server
    /// ended them.
    dead: HashSet<i64>,
    /// Whether the store can tell that a session is gone (a direct
    /// PostgreSQL connection can; behind a pooler it cannot).
    pub sees_sessions: bool,
    next_conn: u32,
}

impl World {
    pub fn new(sees_sessions: bool) -> Arc<Mutex<World>> {
        Arc::new(Mutex::new(World {
            sees_sessions,
            ..World::default()
        }))
    }

    /// The log as written: `(event, token)`.
    pub fn events(&self) -> Vec<(String, i64)> {
        self.log
            .iter()
            .map(|e| (e.event.clone(), e.token))
            .collect()
    }

    /// The row's token and owner, when the row exists.
    pub fn lock(&self) -> Option<(i64, Option<&str>)> {
        self.row.as_ref().map(|r| (r.token, r.owner.as_deref()))
    }

    /// Whether an open transaction has the row locked.
    pub fn row_locked(&self) -> bool {
        self.locked_by.is_some()
    }

    /// `DELETE FROM lockstep_lock`, by hand.
    pub fn delete_row(&mut self) {
        if self.locked_by.is_none() {
            self.row = None;
        }
    }

    /// The session of connection `conn` is gone: its process died, or the
    /// server ended it (lockstep's `idle_in_transaction_session_timeout`
    /// ends a fenced transaction left idle past the lease). Its open
    /// transaction, if any, is rolled back.
    pub fn kill(&mut self, conn: u32) {
        self.dead.insert(i64::from(conn));
        if self.locked_by == Some(conn) {
            self.locked_by = None;
        }
    }

    fn info(&self, scope: &str) -> Option<LockInfo> {
        let row = self.row.as_ref()?;
        let held = row.owner.is_some();
        let since = |t: i64| held.then_some(self.now_ms - t);
        Some(LockInfo {
            scope: scope.to_string(),
            token: row.token,
            owner: row.owner.clone(),
            host: row.host.clone(),
            pid: row.pid,
            command: row.command.clone(),
            held_ms: since(row.acquired_at),
            heartbeat_age_ms: since(row.heartbeat_at),
            expires_in_ms: held.then_some(row.expires_at - self.now_ms),
            session_alive: match row.session {
                Some(s) if held && self.sees_sessions => Some(!self.dead.contains(&s)),
                _ => None,
            },
            ..LockInfo::default()
        })
    }

    fn log(&mut self, event: LogEvent<'_>, token: i64, actor: &Actor<'_>) {
        self.next_log_id += 1;
        self.log.push(LogEntry {
            id: self.next_log_id,
            at: self.now_ms.to_string(),
            event: event.name().to_string(),
            token,
            owner: Some(actor.owner.to_string()),
            host: Some(actor.host.to_string()),
            pid: Some(actor.pid),
            command: Some(actor.command.to_string()),
            previous_owner: event.previous_owner().map(str::to_string),
            detail: event.detail().map(str::to_string),
        });
        let excess = self.log.len().saturating_sub(LOG_RETENTION as usize);
        self.log.drain(..excess);
    }

    /// Whether the row is the fence's: its token and owner.
    fn fenced(&self, fence: &Fence) -> bool {
        self.row
            .as_ref()
            .is_some_and(|r| r.token == fence.token && r.owner.as_deref() == Some(&fence.owner))
    }
}

/// One connection to a `World`.
pub(super) struct MemoryStore {
    world: Arc<Mutex<World>>,
    pub conn: u32,
}

impl MemoryStore {
    pub fn connect(world: &Arc<Mutex<World>>) -> MemoryStore {
        let conn = {
            let mut w = world.lock().unwrap();
            w.next_conn += 1;
            w.next_conn
        };
        MemoryStore {
            world: world.clone(),
            conn,
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gone(&self, w: &World) -> Result<(), Error> {
        if w.dead.contains(&i64::from(self.conn)) {
            Err(Error::Database {
                context: "the simulated database".into(),
                db: Box::new(DbMessage::plain("this connection's session was ended")),
            })
        } else {
            Ok(())
        }
    }

    /// Opens a migration's transaction with the fence, as an engine's
    /// `Driver::run_steps` does: the fence's check row-locks the lock row
    /// until the commit. A fence that fails is a lost lock. `false` when
    /// another transaction has the row locked: the fence would wait for
    /// it (try again later).
    pub fn begin_fenced(&mut self, fence: &Fence) -> Result<bool, Error> {
        let mut w = self.world();
        self.gone(&w)?;
        if w.locked_by.is_some() {
            return Ok(false);
        }
        if !w.fenced(fence) {
            return Err(fence.lost());
        }
        w.locked_by = Some(self.conn);
        Ok(true)
    }

    /// Commits the migration `version` that `begin_fenced` opened: its
    /// history row carries the token, and the lease is renewed.
    pub fn commit_fenced(&mut self, fence: &Fence, version: u64) -> Result<(), Error> {
        let mut w = self.world();
        self.gone(&w)?;
        assert_eq!(
            w.locked_by,
            Some(self.conn),
            "committed without a transaction"
        );
        w.history.push((version, fence.token));
        let now = w.now_ms;
        let row = w.row.as_mut().expect("the fence locked it");
        row.heartbeat_at = now;
        row.expires_at = now + fence.ttl.as_millis() as i64;
        w.locked_by = None;
        Ok(())
    }
}

impl LockStore for MemoryStore {
    type Error = Error;

    fn session(&mut self) -> Result<Session, Error> {
        Ok(Session {
            pid: Some(i64::from(self.conn)),
            start: None,
        })
    }

    fn probe_lock(&mut self, scope: &str) -> Result<Probe, Error> {
        let mut w = self.world();
        self.gone(&w)?;
        if w.locked_by.is_some_and(|c| c != self.conn) {
            let mut seen = w.info(scope);
            if let Some(seen) = &mut seen {
                seen.migrating = true;
            }
            return Ok(Probe::Busy(seen));
        }
        if w.row.is_none() {
            // Tokens never repeat: a row made anew starts above every token
            // the log and the history hold.
            let high = w.log.iter().map(|e| e.token);
            let high = high.chain(w.history.iter().map(|h| h.1)).max();
            w.row = Some(Row {
                token: high.unwrap_or(0),
                ..Row::default()
            });
        }
        w.locked_by = Some(self.conn);
        Ok(Probe::Row(w.info(scope).expect("made above")))
    }

    fn take_lock(&mut self, take: &Take<'_>) -> Result<i64, Error> {
        let mut w = self.world();
        self.gone(&w)?;
        assert_eq!(w.locked_by, Some(self.conn), "taken without a probe");
        let now = w.now_ms;
        let row = w.row.as_mut().expect("probed");
        assert_eq!(
            row.token, take.seen,
            "the row changed under its probe's lock"
        );
        row.token += 1;
        row.owner = Some(take.actor.owner.to_string());
        row.host = Some(take.actor.host.to_string());
        row.pid = Some(take.actor.pid);
        row.command = Some(take.actor.command.to_string());
        row.session = take.session.pid;
        row.acquired_at = now;
        row.heartbeat_at = now;
        row.expires_at = now + take.ttl.as_millis() as i64;
        let token = row.token;
        w.log(take.event, token, take.actor);
        w.locked_by = None;
        Ok(token)
    }

    fn abandon(&mut self) {
        let mut w = self.world();
        if w.locked_by == Some(self.conn) {
            w.locked_by = None;
        }
    }

    fn renew_lock(&mut self, fence: &Fence) -> Result<Renewal, Error> {
        let mut w = self.world();
        self.gone(&w)?;
        if w.locked_by.is_some_and(|c| c != self.conn) {
            return Ok(Renewal::Busy);
        }
        if !w.fenced(fence) {
            return Ok(Renewal::Lost);
        }
        let now = w.now_ms;
        let row = w.row.as_mut().expect("fenced");
        row.heartbeat_at = now;
        row.expires_at = now + fence.ttl.as_millis() as i64;
        Ok(Renewal::Renewed)
    }

    fn release_lock(&mut self, fence: &Fence, actor: &Actor<'_>) -> Result<bool, Error> {
        let mut w = self.world();
        self.gone(&w)?;
        if !w.fenced(fence) {
            return Ok(false);
        }
        let row = w.row.as_mut().expect("fenced");
        *row = Row {
            token: row.token,
            ..Row::default()
        };
        w.log(LogEvent::Released, fence.token, actor);
        Ok(true)
    }

    fn log_event(
        &mut self,
        fence: &Fence,
        actor: &Actor<'_>,
        event: LogEvent<'_>,
    ) -> Result<(), Error> {
        let mut w = self.world();
        self.gone(&w)?;
        w.log(event, fence.token, actor);
        Ok(())
    }

    fn read_lock_row(&mut self, scope: &str) -> Result<Option<LockInfo>, Error> {
        let w = self.world();
        self.gone(&w)?;
        let mut info = w.info(scope);
        if let Some(info) = &mut info {
            info.migrating = w.locked_by.is_some_and(|c| c != self.conn);
        }
        Ok(info)
    }

    fn force_release(&mut self, release: &ForcedRelease<'_>) -> Result<bool, Error> {
        let ForcedRelease {
            scope,
            expected,
            actor,
            wait: _,
        } = *release;
        let mut w = self.world();
        self.gone(&w)?;
        if w.locked_by.is_some() {
            // The wait for a running migration ran out.
            return Err(Error::Database {
                context: format!("releasing the migration lock for {scope}"),
                db: Box::new(DbMessage::plain("a migration has the lock's row locked")),
            });
        }
        let Some(row) = w.row.as_mut().filter(|r| r.token == expected.token) else {
            return Ok(false);
        };
        *row = Row {
            token: row.token + 1,
            ..Row::default()
        };
        let token = row.token;
        let event = release.event();
        w.log(event, token, actor);
        Ok(true)
    }

    fn read_lock_log(&mut self, _scope: &str, limit: usize) -> Result<Vec<LogEntry>, Error> {
        let w = self.world();
        Ok(w.log.iter().rev().take(limit).cloned().collect())
    }

    fn can_notify(&self) -> bool {
        false
    }

    fn listen(&mut self, _scope: &str) -> Result<bool, Error> {
        Ok(false)
    }

    fn unlisten(&mut self) {}

    fn wait_for_notification(&mut self, _timeout: Duration) -> Result<bool, Error> {
        Ok(false)
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(10)
    }

    fn heartbeat_store(&self) -> Result<Box<dyn LockStore<Error = Error>>, Error> {
        Ok(Box::new(MemoryStore::connect(&self.world)))
    }
}
