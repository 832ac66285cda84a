//! A program that migrates its own database when it starts, from the
//! migrations built into it (see `build.rs`), under lockstep's migration
//! lock: started many times at once (replicas of a service, say), it still
//! applies each migration once, and every copy starts on the migrated
//! schema.
//!
//! `DATABASE_URL` names the database (default `sqlite://example.db`).
//!
//! lockstep is synchronous. An async program migrates on a blocking
//! thread before it serves:
//!
//! ```ignore
//! let url: lockstep::DatabaseUrl = std::env::var("DATABASE_URL")?.parse()?;
//! let applied = tokio::task::spawn_blocking(move || migrate(&url)).await??;
//! ```

use std::process::ExitCode;

use lockstep::{DatabaseUrl, Migrator, Options, UpgradeOptions};

/// Applies what is pending; how many migrations it applied.
fn migrate(url: &DatabaseUrl) -> Result<usize, lockstep::Error> {
    let migrations = lockstep::embedded_migrations!()?;
    let mut migrator = Migrator::connect(url, Options::default())?;
    let report = migrator.upgrade(&migrations, &UpgradeOptions::default(), &mut ())?;
    Ok(report.steps.len())
}

fn main() -> ExitCode {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://example.db".into());
    let migrated = url
        .parse::<DatabaseUrl>()
        .map_err(lockstep::Error::from)
        .and_then(|url| migrate(&url));
    match migrated {
        Ok(applied) => {
            println!("migrated: {applied} applied; serving");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(remedy) = e.remedy() {
                eprintln!("hint: {remedy}");
            }
            ExitCode::FAILURE
        }
    }
}
