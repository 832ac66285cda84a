//! lockstep: plain-SQL database migrations with a safe, observable
//! migration lock, on embedded SQLite and PostgreSQL.
//!
//! This crate is what the `lockstep` command-line tool runs; embedders call
//! the same entry points. It never prints: progress arrives as [`Event`]s
//! through an [`Observer`], failures as an [`Error`] that names the
//! migration, the file and line, and what to do next.
//!
//! # Quick start
//!
//! ```no_run
//! use lockstep::{DatabaseUrl, MigrationSet, Migrator, Options, UpgradeOptions};
//!
//! # fn main() -> Result<(), lockstep::Error> {
//! let url: DatabaseUrl = "sqlite://app.db".parse()?;
//! let migrations = MigrationSet::load("migrations")?;
//! let mut migrator = Migrator::connect(&url, Options::default())?;
//! let report = migrator.upgrade(&migrations, &UpgradeOptions::default(), &mut ())?;
//! for step in &report.steps {
//!     eprintln!("applied {} {} in {:?}", step.version, step.name, step.duration);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The library is synchronous and owns its connections; async programs call
//! it from a blocking task (`tokio::task::spawn_blocking`).
//!
//! # Migration files
//!
//! `<version>_<name>.sql` holds a `-- upgrade` line then SQL, and optionally
//! a `-- rollback` line then SQL; or a pair `<version>_<name>.up.sql` and
//! `.down.sql`. A `-- lockstep:no-transaction` line in a section runs it
//! outside a transaction, statement by statement. See [`source`].

#![deny(missing_docs)]

pub mod clock;
mod driver;
mod error;
mod fsread;
mod history;
pub mod identity;
pub mod lock;
mod migrator;
pub mod plan;
mod remedy;
pub mod source;
pub mod sql;
pub mod url;

pub use error::{
    DbClass, DbMessage, Direction, DirtyDetail, Error, ErrorKind, FailedStatement,
    MigrationFailure, Remedy, Step,
};
pub use history::{
    HistoryRow, RowState, TableName, Timestamp, DEFAULT_HISTORY_TABLE, FORMAT_VERSION, META_TABLE,
    TOOL_VERSION,
};
pub use lock::{LockEvent, LockInfo, LockOptions, LockState, LogEntry};
pub use migrator::{
    check_section, CancelHandle, DirtyResolution, Event, Fixed, Migrator, Observer, Options,
    RollbackOptions, RunReport, UpgradeOptions,
};
pub use plan::{Named, Refusal, State, StatusEntry, Target, TargetError};
pub use source::{Checksum, Migration, MigrationSet, Section, SourceError};
pub use url::{DatabaseUrl, SslMode};
