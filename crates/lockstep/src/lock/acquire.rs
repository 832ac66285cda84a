//! Waiting for and taking the lock. Each attempt is one short transaction;
//! no transaction is open while waiting.

use std::time::{Duration, Instant};

use super::{
    Actor, Fence, Held, LockBusy, LockEvent, LockInfo, LockMark, LockOptions, LockStore, LogEvent,
    Probe, Session, Stop, StoreError, Take, RETRIES,
};

/// Past this many moves of the lock in a row between a look and an
/// attempt (each is another run's turn with it), a waiter stops comparing
/// the lock with its history read rather than chase them: a run reads
/// history under the lock anyway.
const MOVES_CHASED: usize = 10;

/// What a run asks of the lock.
pub(crate) struct Request<'a> {
    /// The lock's scope.
    pub scope: &'a str,
    /// Who asks, for the lock row and its log.
    pub actor: &'a Actor<'a>,
    pub options: &'a LockOptions,
    /// The lock as the history read that found work to do found it: a
    /// lock that moved since may have been another run's, doing that work.
    pub since: Option<LockMark>,
}

/// Whether a run still has work to take the lock for, after another run
/// had it.
pub(crate) enum Work {
    /// Nothing left: another run did it.
    Done,
    /// Work left, as a history read just found, with the lock as that read
    /// found it (`None` when it could not tell).
    Left(Option<LockMark>),
}

/// What waiting for the lock came to.
pub(crate) enum Acquired {
    Held(Held),
    /// While this run waited, the holder did what it came for (`needed`
    /// said so when the lock came free): nothing left to take it for.
    NotNeeded,
}

/// Takes the lock, waiting as the options say; `cancelled` is checked
/// between attempts. Each time the lock comes free after a wait, and
/// whenever it moved since `request.since` (at a look or inside an
/// attempt), `needed` is asked first (reading what it must, without the
/// lock) whether there is still work to take it for.
pub(crate) fn acquire<S: LockStore + ?Sized>(
    store: &mut S,
    request: &Request<'_>,
    report: &mut dyn FnMut(&LockEvent<'_>),
    cancelled: &dyn Fn() -> bool,
    needed: &mut dyn FnMut(&mut S) -> Work,
) -> Result<Acquired, S::Error> {
    let mut waiter = Waiter::new(request.since);
    let result = waiter.run(store, request, report, cancelled, needed);
    if waiter.listening {
        store.unlisten();
    }
    let Some(Taken { token, took_over }) = result? else {
        return Ok(Acquired::NotNeeded);
    };
    report(&LockEvent::Acquired {
        token,
        took_over: took_over.as_ref().map(|(info, why)| (info, *why)),
    });
    let fence = Fence {
        scope: request.scope.to_string(),
        owner: request.actor.owner.to_string(),
        token,
        ttl: request.options.ttl,
    };
    match Held::start(store, fence.clone(), request.actor.command) {
        Ok(held) => Ok(Acquired::Held(held)),
        Err(e) => {
            // Do not leave a lock behind that nobody renews.
            let _ = store.release_lock(&fence, request.actor);
            Err(e)
        }
    }
}

/// The lock taken by an attempt.
#[derive(Debug)]
pub(super) struct Taken {
    pub token: i64,
    /// The previous holder and why it was taken from them.
    pub took_over: Option<(LockInfo, &'static str)>,
}

/// A waiter's state from one attempt to the next.
struct Waiter {
    started: Instant,
    /// Subscribed to release notifications.
    listening: bool,
    /// The pause between polls where nothing notifies.
    backoff: Duration,
    /// Attempts a serialization failure or deadlock rolled back whole.
    conflicts: usize,
    /// Times the lock moved between a look and an attempt.
    moves: usize,
    since: Option<LockMark>,
    /// Ask `needed` before the next attempt: the lock came free after a
    /// wait, or moved between a look and an attempt.
    recheck: bool,
    /// A release notification said the lock is free: no need to look.
    released: bool,
}

impl Waiter {
    fn new(since: Option<LockMark>) -> Self {
        Waiter {
            started: Instant::now(),
            listening: false,
            backoff: Duration::from_millis(50),
            conflicts: 0,
            moves: 0,
            since,
            recheck: false,
            released: false,
        }
    }

    fn run<S: LockStore + ?Sized>(
        &mut self,
        store: &mut S,
        request: &Request<'_>,
        report: &mut dyn FnMut(&LockEvent<'_>),
        cancelled: &dyn Fn() -> bool,
        needed: &mut dyn FnMut(&mut S) -> Work,
    ) -> Result<Option<Taken>, S::Error> {
        loop {
            if cancelled() {
                return Err(Stop::Cancelled.into());
            }
            // Look before trying: one plain read, no transaction, no row
            // lock, no failed statement in the server's log, and on SQLite
            // no contention for the write lock with the holder's
            // migrations. Only a lock that looks free or may be taken over
            // is tried for real. A run that finds the lock free pays one
            // cheap read for this; one of a fleet that finds it held pays
            // that read instead of a failed attempt, its rollback and a
            // second read to learn the holder.
            let seen = if std::mem::take(&mut self.released) {
                None
            } else {
                store.read_lock(request.scope)?
            };
            let holder = match seen {
                Some(seen) if seen.is_held() && seen.takeover_reason().is_none() => seen,
                seen => match self.try_once(store, request, seen.as_ref(), needed)? {
                    Try::Taken(taken) => return Ok(Some(taken)),
                    Try::NotNeeded => return Ok(None),
                    Try::Again => continue,
                    Try::Held(holder) => holder,
                },
            };
            self.recheck = true;
            if let Some(busy) = self.wait_turn(store, holder, request.options, report)? {
                return Err(Stop::Busy(Box::new(busy)).into());
            }
        }
    }

    /// The lock looked free, or may be taken over: most often another run
    /// just finished, having applied what this one came to apply. Asks
    /// `needed` when that may be so, then tries.
    fn try_once<S: LockStore + ?Sized>(
        &mut self,
        store: &mut S,
        request: &Request<'_>,
        seen: Option<&LockInfo>,
        needed: &mut dyn FnMut(&mut S) -> Work,
    ) -> Result<Try, S::Error> {
        if self.recheck || self.since.is_some_and(|mark| mark.moved(seen)) {
            match needed(store) {
                Work::Done => return Ok(Try::NotNeeded),
                Work::Left(mark) => self.since = self.since.and(mark),
            }
            self.recheck = false;
        }
        // This session's identity, recorded with the lock: asked only by a
        // run that tries for it (once; the store keeps it), not by every
        // waiter of a fleet.
        let session = store.session()?;
        match attempt(store, request, &session, self.since) {
            Ok(Attempt::Taken(taken)) => Ok(Try::Taken(taken)),
            Ok(Attempt::Held(holder)) => Ok(Try::Held(holder)),
            // Taken or freed between the look and the attempt's
            // transaction (on SQLite, the attempt may wait for the write
            // lock while a whole run goes by).
            Ok(Attempt::Moved) => {
                self.moves += 1;
                if self.moves >= MOVES_CHASED {
                    self.since = None;
                }
                self.recheck = true;
                Ok(Try::Again)
            }
            // A serialization failure or deadlock rolled the attempt back
            // whole: try again at once.
            Err(e) if e.is_retryable() && self.conflicts < RETRIES => {
                self.conflicts += 1;
                Ok(Try::Again)
            }
            Err(e) => Err(e),
        }
    }

    /// The lock is held by someone else: gives up (returning why) when
    /// told not to wait or the time is up; otherwise says who holds it and
    /// waits for a release notification or the next poll.
    fn wait_turn<S: LockStore + ?Sized>(
        &mut self,
        store: &mut S,
        holder: LockInfo,
        options: &LockOptions,
        report: &mut dyn FnMut(&LockEvent<'_>),
    ) -> Result<Option<LockBusy>, S::Error> {
        let waited = self.started.elapsed();
        if options.no_wait || waited >= options.timeout {
            return Ok(Some(LockBusy {
                holder,
                waited,
                no_wait: options.no_wait,
            }));
        }
        report(&LockEvent::Waiting {
            holder: &holder,
            waited,
        });
        // Listen where the engine can notify, so that a release wakes this
        // waiter at once; poll with backoff and jitter anyway, for expiries
        // and engines without notifications.
        if !self.listening && store.can_notify() && store.listen(&holder.scope)? {
            self.listening = true;
            // A release between the look and the LISTEN notified nobody:
            // look again now, listening.
            return Ok(None);
        }
        let remaining = options.timeout.saturating_sub(self.started.elapsed());
        if self.listening {
            // A release wakes this waiter at once; polls only look for an
            // expired lease or a vanished holder, which the poll interval
            // bounds.
            let pause = jitter(store.poll_interval()).min(remaining);
            self.released = store.wait_for_notification(pause)?;
        } else {
            std::thread::sleep(jitter(self.backoff).min(remaining));
        }
        self.backoff = (self.backoff * 2).min(store.poll_interval());
        Ok(None)
    }
}

/// One try's result, as the waiting loop sees it.
enum Try {
    Taken(Taken),
    NotNeeded,
    Held(LockInfo),
    Again,
}

#[derive(Debug)]
pub(super) enum Attempt {
    Taken(Taken),
    Held(LockInfo),
    /// Free, or to be taken over, but no longer as `since` said: nothing
    /// was taken.
    Moved,
}

/// One try for the lock, in one transaction. Takes it when it is free or
/// may be taken over, unless it moved since `since`.
pub(super) fn attempt<S: LockStore + ?Sized>(
    store: &mut S,
    request: &Request<'_>,
    session: &Session,
    since: Option<LockMark>,
) -> Result<Attempt, S::Error> {
    let info = match store.probe_lock(request.scope)? {
        Probe::Busy(seen) => {
            // The row as read without waiting, where the store did not.
            let seen = seen.or_else(|| store.read_lock(request.scope).ok().flatten());
            let mut info = seen.unwrap_or_else(|| LockInfo {
                scope: request.scope.to_string(),
                ..LockInfo::default()
            });
            // Busy with the holder's migration, unless the store named
            // something else that keeps the row or the database locked.
            if info.blocker.is_none() {
                info.migrating = true;
            }
            return Ok(Attempt::Held(info));
        }
        Probe::Row(info) => info,
    };
    let probed = Probed { store: Some(store) };
    let takeover = info.takeover_reason();
    if info.is_held() && takeover.is_none() {
        return Ok(Attempt::Held(info));
    }
    if since.is_some_and(|mark| mark.moved(Some(&info))) {
        return Ok(Attempt::Moved);
    }
    let event = match takeover {
        Some(why) => LogEvent::TakenOver {
            previous: info.owner.as_deref(),
            why,
        },
        None => LogEvent::Acquired,
    };
    let token = probed.take(&Take {
        scope: request.scope,
        seen: info.token,
        actor: request.actor,
        session,
        ttl: request.options.ttl,
        event,
    })?;
    Ok(Attempt::Taken(Taken {
        token,
        took_over: takeover.map(|why| (info, why)),
    }))
}

/// The transaction a probe left open, the lock's row locked in it: taken
/// with [`Probed::take`], or rolled back when dropped.
struct Probed<'s, S: LockStore + ?Sized> {
    store: Option<&'s mut S>,
}

impl<S: LockStore + ?Sized> Probed<'_, S> {
    fn take(mut self, take: &Take<'_>) -> Result<i64, S::Error> {
        let store = self.store.take().expect("a probe is taken once");
        store.take_lock(take)
    }
}

impl<S: LockStore + ?Sized> Drop for Probed<'_, S> {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            store.abandon();
        }
    }
}

/// Up to a quarter shorter, so that a fleet of waiters does not poll in
/// step; never longer, so that the poll interval bounds a waiter's pause
/// (and with it the handoff where nothing notifies).
fn jitter(d: Duration) -> Duration {
    let r = crate::identity::random_u32() as f64 / u32::MAX as f64;
    d.mul_f64(0.75 + r * 0.25)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::HistoryStore;

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
        let request = |since| Request {
            scope: &scope,
            actor: &me,
            options: &options,
            since,
        };
        let session = one.session().unwrap();
        let read = |driver: &mut SqliteDriver| driver.read_history().unwrap().unwrap().lock;
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
        let Attempt::Taken(Taken { token, .. }) =
            attempt(&mut other, &request(None), &session, None).unwrap()
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
            attempt(&mut one, &request(before), &session, before).unwrap(),
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
            attempt(&mut one, &request(after), &session, after).unwrap(),
            Attempt::Taken(Taken { token: 2, .. })
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
