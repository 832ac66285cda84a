//! The one outline of every command that writes under the lock:
//! `upgrade`, `rollback` and each `fix` differ only in what they plan and
//! do (see `commands`).
//!
//! 1. Read history without the lock and plan. Nothing to do, or a dry
//!    run: stop there, having written nothing and taken no lock, so that a
//!    fleet starting against an up-to-date database never contends.
//! 2. Take the lock. While waiting, whenever another run had it, read
//!    history again: if that run did this one's work, stop.
//! 3. Under the lock, read history afresh, plan again, run.
//! 4. Release the lock, whatever happened.

use super::apply::retry;
use super::{Connection, Event, Migrator, Needed, Observer};
use crate::error::Error;
use crate::history::{HistoryRow, RepeatRow};
use crate::lock::{self, Actor, Held, LockEvent, LockMark};
use crate::plan::Refusal;
use crate::sql::Dialect;

/// What one command that writes under the lock plans and does.
pub(super) trait Locked {
    /// The work, as planned from history.
    type Plan;
    /// What the command returns.
    type Output;
    /// The command, as the lock's row and log name it.
    fn command(&self) -> &'static str;

    /// Plans from history (and, when it asks for them, the repeatable
    /// migrations' last runs): what is pending, what to revert, what to
    /// fix.
    fn plan(
        &self,
        history: &[HistoryRow],
        repeats: &[RepeatRow],
        dialect: Dialect,
    ) -> Result<Self::Plan, Error>;

    /// Whether `plan` needs the repeatable migrations' last runs: one
    /// read more, only then.
    fn reads_repeatables(&self) -> bool {
        false
    }

    /// Nothing to do.
    fn is_empty(plan: &Self::Plan) -> bool;

    /// What a run that changes nothing returns: what `plan` would do (a
    /// dry run, or an empty plan), or nothing (another run did the work).
    fn unrun(&self, plan: Option<Self::Plan>, dialect: Dialect) -> Self::Output;

    /// Does the planned work; `held` is the lock (`None` without it).
    fn run(
        &self,
        migrator: &mut Migrator,
        plan: Self::Plan,
        held: Option<&Held>,
        observer: &mut dyn Observer,
    ) -> Result<Self::Output, Error>;
}

/// What taking the lock came to.
pub(super) enum Locking {
    /// Held; `None` with `--no-lock`.
    Held(Option<Held>),
    /// Another run did the work while this one waited.
    NotNeeded,
}

impl Migrator {
    /// Runs `command` through the outline above.
    pub(super) fn run_locked<C: Locked>(
        &mut self,
        command: &C,
        dry_run: bool,
        observer: &mut dyn Observer,
    ) -> Result<C::Output, Error> {
        let locking = self.options.lock.is_some() && !dry_run;
        let dialect = self.driver.dialect();
        let since = match self.read_history() {
            // A writer keeps the database from being read (SQLite): most
            // often a holder's migration. Only the lock can say when it is
            // done; under it, history is read afresh.
            Err(e) if e.is_busy() && locking => None,
            read => {
                let read = read?;
                let rows = read.as_ref().map_or(&[][..], |read| &read.rows);
                let repeats = match &read {
                    Some(_) => self.repeats_for(command)?,
                    None => Vec::new(),
                };
                match command.plan(rows, &repeats, dialect) {
                    // A `started` row may be a no-transaction migration that
                    // another run is applying right now, not a dirty one.
                    // Under the lock, with nobody else running, it is dirty
                    // for sure.
                    Err(Error::Refused(Refusal::Dirty(_))) if locking => {}
                    Err(e) => return Err(e),
                    // Nothing to do: no table is created, no lock taken,
                    // nothing written.
                    Ok(plan) if dry_run || C::is_empty(&plan) => {
                        return Ok(command.unrun(Some(plan), dialect))
                    }
                    Ok(_) => {}
                }
                // The lock as the read that found work to do found it; a
                // read that found no tables found it never taken. A run of
                // a fleet that read history before or while another
                // applied, and looks at the lock only after that one freed
                // it, finds it moved: it reads history again before taking
                // the lock, instead of taking it only to find nothing to do.
                match read {
                    Some(read) => read.lock,
                    None => {
                        self.driver.create_tables()?;
                        Some(LockMark::default())
                    }
                }
            }
        };
        let reads_repeatables = command.reads_repeatables();
        let mut needed = |driver: &mut Connection| {
            let Ok(Some(read)) = driver.read_history() else {
                return lock::Work::Left(None);
            };
            let repeats = match reads_repeatables {
                true => driver.read_repeatables(),
                false => Ok(Vec::new()),
            };
            let done = repeats.is_ok_and(|repeats| {
                command
                    .plan(&read.rows, &repeats, dialect)
                    .is_ok_and(|plan| C::is_empty(&plan))
            });
            if done {
                lock::Work::Done
            } else {
                lock::Work::Left(read.lock)
            }
        };
        let held = match self.lock(command.command(), observer, since, &mut needed)? {
            Locking::Held(held) => held,
            Locking::NotNeeded => return Ok(command.unrun(None, dialect)),
        };
        let result = (|| {
            // Read again under the lock: another run may have done some or
            // all of it. Tables that a run which could not read before the
            // lock never made are made now.
            let history = match self.driver.read_history()? {
                Some(read) => read.rows,
                None => {
                    self.driver.create_tables()?;
                    Vec::new()
                }
            };
            let repeats = self.repeats_for(command)?;
            let plan = command.plan(&history, &repeats, dialect)?;
            if C::is_empty(&plan) {
                return Ok(command.unrun(None, dialect));
            }
            command.run(self, plan, held.as_ref(), observer)
        })();
        self.unlock(held, command.command(), observer);
        result
    }

    /// The repeatable migrations' last runs, when `command` plans with
    /// them.
    fn repeats_for<C: Locked>(&mut self, command: &C) -> Result<Vec<RepeatRow>, Error> {
        if command.reads_repeatables() {
            self.driver.read_repeatables()
        } else {
            Ok(Vec::new())
        }
    }

    /// Takes the lock, waiting as the options say (`Locking::Held(None)`
    /// with `--no-lock`). `needed` is asked whether there is still work to
    /// take it for when the lock comes free after a wait, and when the
    /// lock moved since `since`, the lock as the history read that decided
    /// to take it found it.
    pub(super) fn lock(
        &mut self,
        command: &str,
        observer: &mut dyn Observer,
        since: Option<lock::LockMark>,
        needed: &mut Needed<'_>,
    ) -> Result<Locking, Error> {
        self.prefetched = None;
        let Some(options) = self.options.lock.clone() else {
            return Ok(Locking::Held(None));
        };
        let scope = self.scope();
        let who = Actor::this_process(&self.options.executor, &self.host, command);
        let request = lock::Request {
            scope: &scope,
            actor: &who,
            options: &options,
            since,
        };
        let cancel = self.cancel.clone();
        let mut report = |e: &LockEvent<'_>| observer.event(&Event::Lock(e.clone()));
        let cancelled = || cancel.is_cancelled();
        let driver = &mut *self.driver;
        let acquired = match lock::acquire(driver, &request, &mut report, &cancelled, needed) {
            // Tables from before the lock existed: create what is missing.
            Err(e) if e.is_undefined_table() => {
                driver.create_tables()?;
                lock::acquire(driver, &request, &mut report, &cancelled, needed)
            }
            other => other,
        }?;
        Ok(match acquired {
            lock::Acquired::Held(held) => {
                // The holder's statements wait for a reader's moment.
                self.driver.patient(true);
                Locking::Held(Some(held))
            }
            lock::Acquired::NotNeeded => Locking::NotNeeded,
        })
    }

    /// Releases the lock (when it is still this run's) and reports how that
    /// went. Never fails the run: every write was fenced.
    pub(super) fn unlock(
        &mut self,
        held: Option<Held>,
        command: &str,
        observer: &mut dyn Observer,
    ) {
        let Some(mut held) = held else { return };
        held.stop_heartbeat();
        let token = held.fence.token;
        let event = if held.lost() {
            LockEvent::NotReleased {
                token,
                reason: "the lock was lost".into(),
            }
        } else {
            let who = Actor::this_process(&self.options.executor, &self.host, command);
            match retry(|| self.driver.release_lock(&held.fence, &who)) {
                Ok(true) => LockEvent::Released { token },
                Ok(false) => LockEvent::NotReleased {
                    token,
                    reason:
                        "the lock was taken over or released by force before this run released it"
                            .into(),
                },
                Err(e) => LockEvent::NotReleased {
                    token,
                    reason: format!("{e}; the lease runs out by itself"),
                },
            }
        };
        observer.event(&Event::Lock(event));
        self.driver.patient(false);
    }
}
