//! lockstep: plain-SQL database migrations with a safe, observable
//! migration lock, on embedded SQLite and PostgreSQL.
//!
//! This crate is what the `lockstep` command-line tool runs; embedders call
//! the same entry points. It never prints: progress arrives as [`Event`]s
//! through an [`Observer`], failures as an [`Error`] that names the
//! migration, the file and line, and a [`Remedy`] where a human must act.
//!
//! # Upgrading
//!
//! [`MigrationSet::load`] reads a directory of migration files,
//! [`DatabaseUrl`] parses where the database is, [`Migrator::connect`] opens
//! it, and [`Migrator::upgrade`] applies what is pending under the lock:
//!
//! ```
//! use lockstep::{DatabaseUrl, MigrationSet, Migrator, Options, UpgradeOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("lockstep-doc-up-{}", std::process::id()));
//! # std::fs::create_dir_all(dir.join("migrations"))?;
//! # std::fs::write(dir.join("migrations/1_users.sql"), "-- upgrade\nCREATE TABLE users (id INTEGER);\n-- rollback\nDROP TABLE users;\n")?;
//! # std::env::set_current_dir(&dir)?;
//! let url: DatabaseUrl = "sqlite://app.db".parse()?;
//! let migrations = MigrationSet::load("migrations")?;
//! let mut migrator = Migrator::connect(&url, Options::default())?;
//! let report = migrator.upgrade(&migrations, &UpgradeOptions::default(), &mut ())?;
//! for step in &report.steps {
//!     println!("applied {} {} in {:?}", step.version, step.name, step.duration);
//! }
//! # assert_eq!(report.steps.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! The library is synchronous and owns its connections; async programs call
//! it from a blocking task (`tokio::task::spawn_blocking`).
//!
//! # Status and validation
//!
//! [`Migrator::history`] reads what is applied; [`MigrationSet::status`]
//! compares it with the files, and [`Migrator::validate`] refuses drift (a
//! changed, missing or dirty migration) as `upgrade` would:
//!
//! ```
//! # use lockstep::{DatabaseUrl, MigrationSet, Migrator, Options, UpgradeOptions};
//! use lockstep::State;
//!
//! # fn main() -> Result<(), lockstep::Error> {
//! # let dir = std::env::temp_dir().join(format!("lockstep-doc-status-{}", std::process::id()));
//! # std::fs::create_dir_all(dir.join("migrations")).unwrap();
//! # std::fs::write(dir.join("migrations/1_users.sql"), "-- upgrade\nCREATE TABLE users (id INTEGER);\n").unwrap();
//! # let url: DatabaseUrl = format!("sqlite://{}", dir.join("app.db").display()).parse()?;
//! # let migrations = MigrationSet::load(dir.join("migrations"))?;
//! let mut migrator = Migrator::connect_read_only(&url, Options::default())?;
//! let history = migrator.history()?;
//! let pending = migrations.status(&history).filter(|e| e.state == State::Pending);
//! for entry in pending {
//!     println!("pending: {} {}", entry.version, entry.name);
//! }
//! migrator.validate(&migrations)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Rolling back
//!
//! [`Migrator::rollback`] reverts the newest applied migration, or down to
//! a [`Target`]:
//!
//! ```
//! # use lockstep::{DatabaseUrl, MigrationSet, Migrator, Options, UpgradeOptions};
//! use lockstep::{RollbackOptions, Target, Version};
//!
//! # fn main() -> Result<(), lockstep::Error> {
//! # let dir = std::env::temp_dir().join(format!("lockstep-doc-down-{}", std::process::id()));
//! # std::fs::create_dir_all(dir.join("migrations")).unwrap();
//! # std::fs::write(dir.join("migrations/1_a.sql"), "-- upgrade\nCREATE TABLE a (id INTEGER);\n-- rollback\nDROP TABLE a;\n").unwrap();
//! # std::fs::write(dir.join("migrations/2_b.sql"), "-- upgrade\nCREATE TABLE b (id INTEGER);\n-- rollback\nDROP TABLE b;\n").unwrap();
//! # let url: DatabaseUrl = format!("sqlite://{}", dir.join("app.db").display()).parse()?;
//! # let migrations = MigrationSet::load(dir.join("migrations"))?;
//! # let mut migrator = Migrator::connect(&url, Options::default())?;
//! # migrator.upgrade(&migrations, &UpgradeOptions::default(), &mut ())?;
//! let options = RollbackOptions {
//!     // Down to and keeping version 1 (`Version::parse("1.2")` for a
//!     // dotted one).
//!     target: Target { to: Some(Version::whole(1)), count: None },
//!     ..RollbackOptions::default()
//! };
//! let report = migrator.rollback(&migrations, &options, &mut ())?;
//! # assert_eq!(report.steps.len(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Progress, waiting and cancelling
//!
//! An [`Observer`] receives each [`Event`]: the plan, each migration, and
//! what happens to the lock (who holds it while this run waits). A
//! [`CancelHandle`] stops a run from another thread, between migrations or
//! by cancelling the running statement:
//!
//! ```
//! use lockstep::{Event, LockEvent, Observer};
//!
//! struct Log;
//!
//! impl Observer for Log {
//!     fn event(&mut self, event: &Event<'_>) {
//!         match event {
//!             Event::Started { migration, .. } => eprintln!("running {}", migration.name),
//!             Event::Lock(LockEvent::Waiting { holder, .. }) => {
//!                 eprintln!("waiting for {}", holder.describe())
//!             }
//!             _ => {}
//!         }
//!     }
//! }
//! # fn run(migrator: &mut lockstep::Migrator, set: &lockstep::MigrationSet) -> Result<(), lockstep::Error> {
//! let cancel = migrator.cancel_handle();
//! // Another thread (a signal handler's) may call `cancel.cancel()`.
//! migrator.upgrade(set, &lockstep::UpgradeOptions::default(), &mut Log)?;
//! # let _ = cancel;
//! # Ok(())
//! # }
//! ```
//!
//! # The lock
//!
//! [`Migrator::lock_info`] reads the lock without waiting,
//! [`Migrator::lock_log`] its audit log, and [`Migrator::force_release`]
//! frees it whoever holds it, if it is still what the caller saw:
//!
//! ```
//! # use lockstep::{DatabaseUrl, Migrator, Options};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), lockstep::Error> {
//! # let dir = std::env::temp_dir().join(format!("lockstep-doc-lock-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! # let url: DatabaseUrl = format!("sqlite://{}", dir.join("app.db").display()).parse()?;
//! let mut migrator = Migrator::connect(&url, Options::default())?;
//! let lock = migrator.lock_info()?;
//! if lock.is_held() && !lock.holder_alive() {
//!     migrator.force_release(&lock, Duration::from_secs(10))?;
//! }
//! for entry in migrator.lock_log(20)? {
//!     println!("{} {} token {}", entry.at, entry.event, entry.token);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Repairs
//!
//! [`Migrator::fix_checksums`] accepts edited applied files,
//! [`Migrator::fix_missing`] forgets deleted ones, and
//! [`Migrator::fix_dirty`] resolves a no-transaction migration that never
//! finished, once a human has checked the database ([`DirtyResolution`]).
//!
//! # Errors
//!
//! An [`Error`] says what failed; its [`std::error::Error::source`] is the
//! engine's message where there is one; [`Error::kind`] sorts it (the CLI's
//! exit code), and [`Error::remedy`] names what a human can do, as a
//! [`Remedy`] to word with the commands the program offers:
//!
//! ```
//! use lockstep::{ErrorKind, MigrationSet, Remedy};
//!
//! let err = MigrationSet::load("/nonexistent/migrations").map_err(lockstep::Error::from);
//! let err = err.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Usage);
//! assert_eq!(err.remedy(), Some(Remedy::CreateMigrations));
//! ```
//!
//! # Migration files
//!
//! `<version>_<name>.sql` holds a `-- upgrade` line then SQL, and optionally
//! a `-- rollback` line then SQL; or a pair `<version>_<name>.up.sql` and
//! `.down.sql`. A `-- lockstep:no-transaction` line in a section runs it
//! outside a transaction, statement by statement.

#![deny(missing_docs)]

pub mod build;
mod clock;
mod driver;
mod duration;
mod error;
mod fsread;
mod history;
mod identity;
mod lock;
mod migrator;
mod plan;
mod remedy;
mod source;
mod sql;
mod url;
mod version;
mod waits;

pub use duration::parse_duration;
pub use error::{
    ConnectFailure, DbClass, DbMessage, Direction, DirtyDetail, Error, ErrorKind, FailedStatement,
    MigrationFailure, Remedy,
};
pub use history::{HistoryRow, RepeatRow, RowState, TableName};
pub use lock::{LockBusy, LockEvent, LockInfo, LockLost, LockOptions, LockState, LogEntry};
pub use migrator::{
    create_database, drop_database, wait_for_database, CancelHandle, DatabaseChange,
    DirtyResolution, Event, Fixed, Imported, Migrator, Observer, Options, RollbackOptions,
    RunReport, Tool, UpgradeOptions,
};
pub use plan::{
    Changed, Refusal, RepeatState, RepeatStatus, State, StatusEntry, Target, TargetError,
};
pub use source::{
    Checksum, Format, Hook, Kind, Layout, Migration, MigrationSet, Named, Repeat, Section,
    SourceError, Step,
};
pub use url::{DatabaseUrl, UrlError};
pub use version::Version;
pub use waits::{Activity, Blocked, BlockedReport, Blocker, StatementOptions};

/// What the fuzz targets drive directly. Not part of the API: it may
/// change in any release.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::migrator::check_section;
    pub use crate::source::parse_migration;
    pub use crate::sql::{check_terminated, first_code_offset, has_code, line_col, split, Dialect};
    pub use crate::url::with_password;
}
