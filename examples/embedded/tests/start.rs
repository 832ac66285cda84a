//! The example started as a service's replicas would be: several copies at
//! once, in a directory without its migration files. Checked with plain
//! SQL against what `lockstep` reads from the files themselves.

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lockstep-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn copies_started_at_once_migrate_once_without_the_files() {
    let dir = temp_dir();
    let db = dir.join("app.db");
    let copies: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_lockstep-example-embedded"))
                .current_dir(&dir)
                .env("DATABASE_URL", format!("sqlite://{}", db.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = 0;
    for copy in copies {
        let out = copy.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n: usize = stdout
            .strip_prefix("migrated: ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{stdout}"));
        applied += n;
    }
    // Two versioned migrations and the repeatable one, once in all.
    assert_eq!(applied, 3);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let notes: i64 = conn
        .query_row("SELECT n FROM note_count", [], |r| r.get(0))
        .unwrap();
    assert_eq!(notes, 1);
    // The checksums built in are the files' own, as lockstep reads them.
    let files = lockstep::MigrationSet::load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations"),
    )
    .unwrap();
    let mut recorded = conn
        .prepare("SELECT version, checksum FROM lockstep_history ORDER BY version")
        .unwrap();
    let rows: Vec<(u64, String)> = recorded
        .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let expected: Vec<(u64, String)> = files
        .migrations()
        .iter()
        .map(|m| (m.version.as_whole().unwrap(), m.checksum.to_string()))
        .collect();
    assert_eq!(rows, expected);
    let repeatable: String = conn
        .query_row(
            "SELECT checksum FROM lockstep_repeatable WHERE name = 'note_count'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(repeatable, files.repeatables()[0].checksum.to_string());
    std::fs::remove_dir_all(&dir).unwrap();
}
