//! Migrations built into a program: a build script reads and checks the
//! migrations directory at compile time and writes them, parsed and with
//! their checksums, into the build's output; `embedded_migrations!` makes
//! the set of them at run time, with no file read.
//!
//! ```toml
//! # Cargo.toml
//! [dependencies]
//! lockstep = { path = "…" }
//! [build-dependencies]
//! lockstep = { path = "…" }
//! ```
//!
//! ```no_run
//! // build.rs, in its `fn main`:
//! lockstep::build::embed_migrations("migrations");
//! ```
//!
//! ```ignore
//! // src/main.rs
//! let migrations = lockstep::embedded_migrations!()?;
//! ```
//!
//! A malformed file fails the build, naming the file and line, as
//! `lockstep validate` would; adding, changing or removing a file builds
//! again.

use std::fmt::Write as _;
use std::path::Path;

use crate::source::{Layout, Migration, MigrationSet, Section, SourceError};

/// The file, in the build's output directory, that `embedded_migrations!`
/// includes.
pub const OUTPUT_FILE: &str = "lockstep_migrations.rs";

/// For a build script: reads and checks the migrations directory `dir`
/// (relative to the package), and writes them into the build's output for
/// `embedded_migrations!`. A malformed file stops the build with its name,
/// line and what to do.
pub fn embed_migrations(dir: impl AsRef<Path>) {
    if let Err(e) = try_embed_migrations(dir) {
        eprintln!("error: {e}");
        if let Some(remedy) = &e.remedy {
            eprintln!("hint: {remedy}");
        }
        std::process::exit(1);
    }
}

/// [`embed_migrations`], returning the file's error instead of stopping
/// the build.
pub fn try_embed_migrations(dir: impl AsRef<Path>) -> Result<(), SourceError> {
    let dir = dir.as_ref();
    // Any file added, changed or removed builds again.
    println!("cargo:rerun-if-changed={}", dir.display());
    let set = MigrationSet::load(dir)?;
    let code = code_for(&set);
    let out = std::env::var_os("OUT_DIR").expect("run from a build script: OUT_DIR is not set");
    let path = Path::new(&out).join(OUTPUT_FILE);
    std::fs::write(&path, code).map_err(|e| SourceError::new(&path, format!("cannot write: {e}")))
}

/// A Rust expression that makes the set's migrations: `(dir, Vec<Migration>)`.
fn code_for(set: &MigrationSet) -> String {
    let all = set
        .migrations()
        .iter()
        .chain(set.repeatables())
        .chain(set.callbacks());
    let mut code = String::from("// Written by lockstep::build::embed_migrations.\n(");
    let _ = writeln!(code, "{:?}, vec![", set.dir().display().to_string());
    for m in all {
        code.push_str(&migration(m));
        code.push_str(",\n");
    }
    code.push_str("])\n");
    code
}

fn migration(m: &Migration) -> String {
    // Read from its file at build time: a version that parses.
    let version = match m.version.as_whole() {
        Some(whole) => format!("::lockstep::Version::whole({whole})"),
        None => format!(
            "::lockstep::Version::parse(\"{}\").expect(\"a version read at build time\")",
            m.version
        ),
    };
    let down = match &m.down {
        Some(down) => format!("Some(Box::new({}))", section(down)),
        None => "None".to_string(),
    };
    format!(
        "::lockstep::Migration {{ version: {version}, name: {:?}.to_string(), up: {}, down: {down}, \
         checksum: ::lockstep::Checksum::parse({:?}), layout: {} }}",
        m.name,
        section(&m.up),
        m.checksum.to_string(),
        layout(m.layout),
    )
}

fn section(s: &Section) -> String {
    let duration = |d: Option<std::time::Duration>| match d {
        Some(d) => format!("Some(::std::time::Duration::from_nanos({}))", d.as_nanos()),
        None => "None".to_string(),
    };
    format!(
        "::lockstep::Section {{ sql: {:?}.to_string(), path: ::std::path::PathBuf::from({:?}), \
         first_line: {}, no_transaction: {}, lock_timeout: {}, statement_timeout: {} }}",
        s.sql,
        s.path.display().to_string(),
        s.first_line,
        s.no_transaction,
        duration(s.lock_timeout),
        duration(s.statement_timeout),
    )
}

fn layout(layout: Layout) -> String {
    let name = match layout {
        Layout::Lockstep => "Lockstep".to_string(),
        Layout::Pair => "Pair".to_string(),
        Layout::Dbmate => "Dbmate".to_string(),
        Layout::Goose => "Goose".to_string(),
        Layout::WholeFile => "WholeFile".to_string(),
        Layout::Diesel { no_transaction } => {
            format!("Diesel {{ no_transaction: {no_transaction} }}")
        }
        Layout::Repeatable(repeat) => format!("Repeatable(::lockstep::Repeat::{repeat:?})"),
        Layout::Callback(hook) => format!("Callback(::lockstep::Hook::{hook:?})"),
    };
    format!("::lockstep::Layout::{name}")
}

/// The migrations a build script wrote with `build::embed_migrations`, as
/// a `MigrationSet`: no file is read at run time.
/// Evaluates to `Result<MigrationSet, SourceError>`.
#[macro_export]
macro_rules! embedded_migrations {
    () => {{
        let (dir, migrations): (&str, ::std::vec::Vec<$crate::Migration>) =
            include!(concat!(env!("OUT_DIR"), "/lockstep_migrations.rs"));
        $crate::MigrationSet::from_migrations(dir, migrations)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_file_stops_the_build_naming_file_and_line() {
        let dir = std::env::temp_dir().join(format!("lockstep-build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("1_a.sql"), "-- upgrade\nSELECT 1;\n").unwrap();
        std::fs::write(
            dir.join("2_b.sql"),
            "-- upgrade\nSELECT 1;\n-- lockstep:nope\n",
        )
        .unwrap();
        let err = try_embed_migrations(&dir).unwrap_err();
        assert!(err.path.ends_with("2_b.sql"), "{err}");
        assert_eq!(err.line, Some(3));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_code_makes_each_migration_as_it_was_read() {
        let dir = std::env::temp_dir().join(format!("lockstep-code-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("1_a.sql"),
            "-- upgrade\n-- lockstep:lock-timeout 2s\nSELECT 'it''s \"quoted\"';\n-- rollback\nSELECT 2;\n",
        )
        .unwrap();
        std::fs::write(dir.join("RA__b.sql"), "SELECT 3;\n").unwrap();
        let set = MigrationSet::load(&dir).unwrap();
        let code = code_for(&set);
        let a = &set.migrations()[0];
        for part in [
            format!("{:?}", a.up.sql),
            format!("Checksum::parse({:?})", a.checksum.to_string()),
            "lock_timeout: Some(::std::time::Duration::from_nanos(2000000000))".to_string(),
            "down: Some(Box::new(".to_string(),
            "::lockstep::Layout::Repeatable(::lockstep::Repeat::Always)".to_string(),
        ] {
            assert!(code.contains(&part), "{part} not in {code}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
