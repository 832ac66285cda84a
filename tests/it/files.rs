//! Bad migration files: a clear error naming the file (and line), exit 2,
//! and no database touched.

use crate::util::{Project, TestDb};

/// Asserts that the run failed with exit 2 and left the database untouched:
/// on SQLite not even the file exists.
fn untouched(p: &Project, args: &[&str]) -> String {
    let run = p.run(args);
    run.code(2);
    assert!(!p.db.table_exists("lockstep_history"));
    assert!(!p.db.table_exists("good"));
    if let TestDb::Sqlite { path } = &p.db {
        assert!(!path.exists(), "the database file was created");
    }
    run.stderr
}

both!(malformed_files_touch_no_database, |p| {
    p.migration(
        "1_good.sql",
        "-- upgrade\nCREATE TABLE good (id integer);\n",
    );
    let table: &[(&str, &[u8], &str)] = &[
        (
            "2_no_marker.sql",
            b"CREATE TABLE x (id integer);\n",
            "migrations/2_no_marker.sql: the migrations directory mixes layouts",
        ),
        (
            "2_empty.sql",
            b"-- upgrade\n\n-- rollback\nSELECT 1;\n",
            "migrations/2_empty.sql:1: the upgrade section is empty",
        ),
        (
            "2_directive.sql",
            b"-- upgrade\n-- lockstep:no-transation\nSELECT 1;\n",
            "migrations/2_directive.sql:2: unknown directive `-- lockstep:no-transation`",
        ),
        (
            "2_latin1.sql",
            b"-- upgrade\nSELECT 'caf\xe9';\n",
            "migrations/2_latin1.sql:2: file is not valid UTF-8",
        ),
        (
            "Add_Users.sql",
            b"-- upgrade\nSELECT 1;\n",
            "migrations/Add_Users.sql: file name does not match",
        ),
        (
            "1_dup.sql",
            b"-- upgrade\nSELECT 1;\n",
            "duplicate version 1",
        ),
    ];
    for (name, content, want) in table {
        std::fs::write(p.path(&format!("migrations/{name}")), content).unwrap();
        for command in [
            &["upgrade"][..],
            &["status"],
            &["validate"],
            &["rollback"],
            &["fix", "checksums"],
        ] {
            // A file still to write: `status` shows it, and `rollback`
            // never runs it (see inspect.rs).
            if *name == "2_empty.sql" && matches!(command, ["status"] | ["rollback"]) {
                continue;
            }
            let stderr = untouched(&p, command);
            assert!(stderr.contains(want), "{command:?} {name}: {stderr}");
            assert!(
                stderr.contains("\nhint: "),
                "{command:?} {name}: no hint in {stderr}"
            );
        }
        std::fs::remove_file(p.path(&format!("migrations/{name}"))).unwrap();
    }
    p.run(&["upgrade"]).ok();
});

both!(file_error_json_names_file_and_line, |p| {
    p.migration("1_a.sql", "-- upgrade\nSELECT 1;\n-- lockstep:nope\n");
    let run = p.run(&["upgrade", "--json"]);
    run.code(2);
    let doc = run.json();
    assert_eq!(doc["error"]["code"], "migration_file");
    assert_eq!(doc["error"]["file"], "migrations/1_a.sql");
    assert_eq!(doc["error"]["line"], 3);
    assert!(doc["error"]["hint"]
        .as_str()
        .unwrap()
        .contains("no-transaction"));
    assert!(run.stderr.is_empty(), "{}", run.stderr);
});

both!(missing_migrations_directory, |p| {
    std::fs::remove_dir(p.path("migrations")).unwrap();
    let stderr = untouched(&p, &["upgrade"]);
    assert!(
        stderr.contains(
            "migrations: cannot read the migrations directory: no such file or directory"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("hint: run `lockstep init`"), "{stderr}");
});

both!(a_table_that_is_not_lockstep_s_is_refused, |p| {
    p.db.exec("CREATE TABLE lockstep_history (id integer, note text)");
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    for args in [&["upgrade"][..], &["status"]] {
        let run = p.run(args);
        run.code(2);
        assert!(
            run.stderr
                .contains("table lockstep_history exists but was not created by lockstep"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("history_table"), "{}", run.stderr);
    }
    assert!(!p.db.table_exists("a"));
});

both!(bom_and_crlf_files_apply, |p| {
    p.migration(
        "1_a.sql",
        "\u{feff}-- upgrade\r\nCREATE TABLE a (id integer);\r\n-- rollback\r\nDROP TABLE a;\r\n",
    );
    p.run(&["upgrade"]).ok();
    p.run(&["rollback"]).ok();
    assert!(!p.db.table_exists("a"));
});

both!(a_bad_file_is_reported_before_what_the_database_holds, |p| {
    // History is read while (PostgreSQL) or before (SQLite) the files are:
    // what that read finds waits until every file has parsed.
    p.db.exec("CREATE TABLE lockstep_history (id integer, note text)");
    p.migration("1_a.sql", "-- upgrade\nSELECT 1;\n-- lockstep:nope\n");
    for args in [&["upgrade"][..], &["status"], &["validate"]] {
        let run = p.run(args);
        run.code(2);
        assert!(
            run.stderr
                .contains("migrations/1_a.sql:3: unknown directive `-- lockstep:nope`"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("lockstep_history"), "{}", run.stderr);
    }
    if let crate::util::TestDb::Sqlite { path } = &p.db {
        // Not a database at all: the file's error still comes first, and
        // the file is left as it was.
        std::fs::write(path, b"not a database, just text\n").unwrap();
        let run = p.run(&["upgrade"]);
        run.code(2);
        assert!(
            run.stderr.contains("migrations/1_a.sql:3"),
            "{}",
            run.stderr
        );
        assert_eq!(std::fs::read(path).unwrap(), b"not a database, just text\n");
    }
});

both!(dbmate_files_run_as_they_are, |p| {
    p.migration(
        "20240101000000_users.sql",
        "-- migrate:up\nCREATE TABLE users (id integer);\n\n-- migrate:down\nDROP TABLE users;\n",
    );
    p.migration(
        "20240102000000_posts.sql",
        "-- migrate:up\nCREATE TABLE posts (id integer);\n-- migrate:down\nDROP TABLE posts;\n",
    );
    p.run(&["upgrade"]).ok();
    assert!(p.db.table_exists("users") && p.db.table_exists("posts"));
    p.run(&["rollback"]).ok();
    assert!(p.db.table_exists("users") && !p.db.table_exists("posts"));
    assert_eq!(p.db.history(), ["20240101000000 users applied"]);
});

both!(goose_files_run_as_they_are, |p| {
    p.migration(
        "00001_create_users.sql",
        "-- +goose Up\n-- +goose StatementBegin\nCREATE TABLE users (id integer);\n-- +goose StatementEnd\n\n-- +goose Down\nDROP TABLE users;\n",
    );
    p.run(&["upgrade"]).ok();
    assert!(p.db.table_exists("users"));
    p.run(&["rollback"]).ok();
    assert!(!p.db.table_exists("users"));
});

both!(sqlx_files_without_markers_run_whole, |p| {
    p.migration(
        "20240101000000_users.sql",
        "CREATE TABLE users (id integer);\nINSERT INTO users VALUES (1);\n",
    );
    p.migration(
        "20240102000000_posts.up.sql",
        "CREATE TABLE posts (id integer);\n",
    );
    p.migration("20240102000000_posts.down.sql", "DROP TABLE posts;\n");
    p.run(&["upgrade"]).ok();
    assert_eq!(p.db.value("SELECT count(*) FROM users"), "1");
    assert!(p.db.table_exists("posts"));
    // An up-only migration has nothing to roll back with.
    p.run(&["rollback"]).ok();
    p.run(&["rollback"]).code(4);
});

both!(a_diesel_tree_runs_as_it_is, |p| {
    p.migration(
        "2023-01-01-120000_create_users/up.sql",
        "CREATE TABLE users (id integer);\n",
    );
    p.migration(
        "2023-01-01-120000_create_users/down.sql",
        "DROP TABLE users;\n",
    );
    p.migration(
        "2023-01-02-000000_Add-Posts/up.sql",
        "CREATE TABLE posts (id integer);\n",
    );
    let dry = p.run(&["upgrade", "--dry-run"]);
    dry.ok();
    assert!(
        dry.stdout
            .contains("would apply 20230101120000 create_users"),
        "{}",
        dry.stdout
    );
    p.run(&["upgrade"]).ok();
    assert_eq!(
        p.db.history(),
        [
            "20230101120000 create_users applied",
            "20230102000000 Add-Posts applied"
        ]
    );
    p.run(&["rollback", "--to", "20230101120000"]).code(4);
    p.run(&["validate"]).ok();
});

both!(golang_migrate_pairs_without_names_run, |p| {
    p.migration("1.up.sql", "CREATE TABLE a (id integer);\n");
    p.migration("1.down.sql", "DROP TABLE a;\n");
    p.migration("2_Add-B.up.sql", "CREATE TABLE b (id integer);\n");
    p.run(&["upgrade"]).ok();
    assert_eq!(p.db.history(), ["1  applied", "2 Add-B applied"]);
    let status = p.run(&["status"]);
    status.ok();
    p.run(&["rollback", "--count", "2"]).code(4);
});
