use crate::util::Project;

const USERS: &str = "-- upgrade\nCREATE TABLE users (id integer PRIMARY KEY, name varchar(100) NOT NULL);\n-- rollback\nDROP TABLE users;\n";
const POSTS: &str = "-- upgrade\nCREATE TABLE posts (id integer PRIMARY KEY, title text);\nINSERT INTO posts VALUES (1, 'hello');\n-- rollback\nDROP TABLE posts;\n";
const TAGS: &str =
    "-- upgrade\nCREATE TABLE tags (id integer PRIMARY KEY);\n-- rollback\nDROP TABLE tags;\n";

fn three(p: &Project) {
    p.migration("1_users.sql", USERS)
        .migration("2_posts.sql", POSTS)
        .migration("3_tags.sql", TAGS);
}

both!(applies_pending_in_order_and_records_history, |p| {
    three(&p);
    let run = p.run(&["upgrade"]);
    run.ok();
    insta::assert_snapshot!(p.snapshot("stdout"), run.stdout);
    assert_eq!(
        p.db.history(),
        ["1 users applied", "2 posts applied", "3 tags applied"]
    );
    assert_eq!(p.db.value("SELECT title FROM posts"), "hello");
    // The recorded checksum is the file's, and the row says who and which
    // version of lockstep applied it.
    let row = &p.db.query("SELECT checksum, applied_by, tool_version, lock_token FROM lockstep_history WHERE version = 1")[0];
    assert!(
        row[0].starts_with("sha256:") && row[0].len() == 7 + 64,
        "{row:?}"
    );
    assert!(!row[1].is_empty());
    assert_eq!(row[2], env!("CARGO_PKG_VERSION"));
    // Applied under the lock: the first acquisition's token.
    assert_eq!(row[3], "1");
    // A second run has nothing to do.
    let again = p.run(&["upgrade"]);
    again.ok();
    assert_eq!(again.stdout, "database is up to date: nothing to apply\n");
});

both!(aliases_migrate_and_up, |p| {
    three(&p);
    p.run(&["migrate", "--count", "1"]).ok();
    p.run(&["up", "--count", "1"]).ok();
    assert_eq!(p.db.history(), ["1 users applied", "2 posts applied"]);
});

both!(no_migrations_creates_nothing, |p| {
    p.run(&["upgrade"]).ok();
    assert!(!p.db.table_exists("lockstep_history"));
});

both!(to_and_count_limit_the_run, |p| {
    three(&p);
    p.run(&["upgrade", "--to", "2", "--count", "1"]).ok();
    assert_eq!(p.db.history(), ["1 users applied"]);
    p.run(&["upgrade", "--to", "2"]).ok();
    assert_eq!(p.db.history(), ["1 users applied", "2 posts applied"]);
    let run = p.run(&["upgrade", "--to", "9"]);
    run.code(2);
    assert!(
        run.stderr.contains("no migration has version 9"),
        "{}",
        run.stderr
    );
    p.run(&["upgrade", "--count", "0"]).code(2);
});

both!(dry_run_changes_nothing, |p| {
    three(&p);
    p.run(&["upgrade", "--count", "1"]).ok();
    let run = p.run(&["upgrade", "--dry-run"]);
    run.ok();
    insta::assert_snapshot!(p.snapshot("dry_run"), run.stdout);
    assert_eq!(p.db.history(), ["1 users applied"]);
    assert!(!p.db.table_exists("posts"));
});

both!(dry_run_on_an_empty_database_creates_no_table, |p| {
    three(&p);
    p.run(&["upgrade", "--dry-run"]).ok();
    assert!(!p.db.table_exists("lockstep_history"));
});

// A new SQLite database file is created only when lockstep first writes:
// not by a dry run, nor by a run with nothing to apply. (Bad files creating
// nothing is in hostile.rs.)
#[test]
fn a_new_sqlite_file_is_created_only_to_write_to_it() {
    let p = Project::new(crate::util::Backend::Sqlite).unwrap();
    let file = p.path("test.db");
    p.run(&["upgrade"]).ok();
    assert!(!file.exists(), "a run with no migrations created the file");
    three(&p);
    p.run(&["upgrade", "--dry-run"]).ok();
    p.run(&["status"]).ok();
    p.run(&["rollback"]).ok();
    assert!(
        !file.exists(),
        "a dry run, status or rollback created the file"
    );
    p.run(&["upgrade"]).ok();
    assert_eq!(p.db.history().len(), 3);
}

both!(
    failing_migration_rolls_back_its_own_ddl_and_keeps_earlier_ones,
    |p| {
        p.migration("1_users.sql", USERS);
        p.migration(
        "2_broken.sql",
        "-- upgrade\nCREATE TABLE half (id integer);\nINSERT INTO half VALUES (1);\nINSERT INTO no_such_table VALUES (1);\n",
    );
        p.migration("3_tags.sql", TAGS);
        let run = p.run(&["upgrade"]);
        run.code(1);
        assert!(run.stdout.contains("applied 1 users"), "{}", run.stdout);
        assert!(
            run.stderr
                .contains("migration 2 broken failed (migrations/2_broken.sql"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("no_such_table"), "{}", run.stderr);
        if p.backend() == Backend::Mariadb {
            // DDL commits by itself there: the migration ran outside a
            // transaction and is dirty. The statements after its last DDL
            // ran in one transaction with the `applied` row, and rolled
            // back together: only the first took effect.
            assert!(
                run.stderr.contains("1 of 3 statements ran"),
                "{}",
                run.stderr
            );
            assert_eq!(p.db.history(), ["1 users applied", "2 broken started"]);
            assert!(p.db.table_exists("half"));
            assert_eq!(p.db.value("SELECT count(*) FROM half"), "0");
            return;
        }
        assert_eq!(p.db.history(), ["1 users applied"]);
        // The half-created table is gone with the transaction, so a fixed file
        // applies cleanly.
        assert!(!p.db.table_exists("half"));
        assert!(!p.db.table_exists("tags"));
        p.migration(
            "2_broken.sql",
            "-- upgrade\nCREATE TABLE half (id integer);\nINSERT INTO half VALUES (1);\n",
        );
        p.run(&["upgrade"]).ok();
        assert_eq!(
            p.db.history(),
            ["1 users applied", "2 broken applied", "3 tags applied"]
        );
    }
);

both!(syntax_error_names_the_file_line, |p| {
    p.migration("1_typo.sql", "-- a comment\n-- upgrade\nCREATE TABLE ok (id integer);\n\nCREATE TABLEE nope (id integer);\n");
    let run = p.run(&["upgrade"]);
    run.code(1);
    if p.backend() == Backend::Mariadb {
        // No column from the server, but the line, and the statement that
        // failed after the DDL before it committed.
        assert!(
            run.stderr.contains(
                "migration 1 typo failed (migrations/1_typo.sql:5, statement 2 of 2: `CREATE TABLEE nope (id integer);`)"
            ),
            "{}",
            run.stderr
        );
        assert_eq!(p.db.history(), ["1 typo started"]);
        let doc = p.run(&["status", "--json"]).json();
        assert_eq!(doc["migrations"][0]["state"], "dirty");
        return;
    }
    assert!(
        run.stderr
            .contains("migration 1 typo failed (migrations/1_typo.sql:5:"),
        "{}",
        run.stderr
    );
    insta::assert_snapshot!(run.stderr);
    let doc = p.run(&["upgrade", "--json"]).json();
    assert_eq!(doc["error"]["line"], 5);
    assert_eq!(doc["error"]["file"], "migrations/1_typo.sql");
    assert_eq!(doc["exit_code"], 1);
});

// A statement can fail after the server sent its first rows (a subquery
// that returns two rows, at the second): the migration fails and rolls
// back, rather than counting the rows as success.
both!(an_error_after_the_first_rows_fails_the_migration, |p| {
    let failing = match p.backend() {
        Backend::Mariadb => {
            "SELECT x, (SELECT 1 UNION SELECT x) FROM (SELECT 1 AS x UNION SELECT 2) s;"
        }
        Backend::Postgres => "SELECT 1 / (2 - x) FROM generate_series(1, 2) AS x;",
        Backend::Sqlite => {
            "SELECT CASE WHEN x = 2 THEN json('not json') END FROM (SELECT 1 AS x UNION SELECT 2);"
        }
    };
    p.migration(
        "1_side.sql",
        "-- upgrade\nCREATE TABLE side (id integer);\n",
    );
    p.migration(
        "2_rows.sql",
        &format!("-- upgrade\nINSERT INTO side VALUES (1);\n{failing}\n"),
    );
    let run = p.run(&["upgrade"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("migration 2 rows failed (migrations/2_rows.sql:3"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db.history(), ["1 side applied"]);
    assert_eq!(p.db.value("SELECT count(*) FROM side"), "0");
});

both!(modified_applied_file_is_refused, |p| {
    three(&p);
    p.run(&["upgrade", "--count", "2"]).ok();
    p.migration(
        "1_users.sql",
        &USERS.replace("name varchar", "full_name varchar"),
    );
    let run = p.run(&["upgrade"]);
    run.code(4);
    insta::assert_snapshot!("stderr", run.stderr);
    assert_eq!(p.db.history(), ["1 users applied", "2 posts applied"]);
    // Line endings and a byte order mark are not changes.
    p.migration(
        "1_users.sql",
        &format!("\u{feff}{}", USERS.replace('\n', "\r\n")),
    );
    p.run(&["upgrade"]).ok();
    assert_eq!(p.db.history().len(), 3);
});

both!(missing_applied_file_is_refused, |p| {
    three(&p);
    p.run(&["upgrade", "--count", "2"]).ok();
    std::fs::remove_file(p.path("migrations/2_posts.sql")).unwrap();
    let run = p.run(&["upgrade"]);
    run.code(4);
    assert!(
        run.stderr
            .contains("missing from the migrations directory: 2 posts"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("lockstep fix missing"),
        "{}",
        run.stderr
    );
    assert!(!p.db.table_exists("tags"));
});

both!(out_of_order_is_refused_unless_allowed, |p| {
    p.migration("1_users.sql", USERS)
        .migration("3_tags.sql", TAGS);
    p.run(&["upgrade"]).ok();
    p.migration("2_posts.sql", POSTS);
    let run = p.run(&["upgrade"]);
    run.code(4);
    assert!(
        run.stderr
            .contains("older than the newest applied one (3): 2 posts"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("--allow-out-of-order"),
        "{}",
        run.stderr
    );
    let status = p.run(&["status"]);
    assert!(
        status.stdout.contains("pending (out of order)"),
        "{}",
        status.stdout
    );
    p.run(&["upgrade", "--allow-out-of-order"]).ok();
    assert_eq!(
        p.db.history(),
        ["1 users applied", "2 posts applied", "3 tags applied"]
    );
});

both!(single_transaction_rolls_back_everything_on_failure, |p| {
    if p.backend() == Backend::Mariadb {
        // DDL commits by itself there: a single transaction cannot hold it.
        p.migration("1_users.sql", USERS);
        let run = p.run(&["upgrade", "--single-transaction"]);
        run.code(2);
        assert!(
            run.stderr
                .contains("its DDL commits by itself on MariaDB/MySQL"),
            "{}",
            run.stderr
        );
        assert!(!p.db.table_exists("users"));
        return;
    }
    p.migration("1_users.sql", USERS)
        .migration("2_posts.sql", POSTS);
    p.migration("3_broken.sql", "-- upgrade\nSELECT * FROM nowhere;\n");
    let run = p.run(&["upgrade", "--single-transaction"]);
    run.code(1);
    assert!(
        run.stderr.contains("migration 3 broken failed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("none of this run's 2 earlier migrations stayed applied"),
        "{}",
        run.stderr
    );
    assert!(!p.db.table_exists("users"));
    assert!(p.db.history().is_empty());
    let doc = p.run(&["upgrade", "--single-transaction", "--json"]).json();
    assert_eq!(doc["error"]["migrations"][0]["version"], 3);
    assert_eq!(doc["completed"], serde_json::json!([]));
    std::fs::remove_file(p.path("migrations/3_broken.sql")).unwrap();
    p.run(&["upgrade", "--single-transaction"]).ok();
    assert_eq!(p.db.history(), ["1 users applied", "2 posts applied"]);
});

both!(single_transaction_refuses_no_transaction_migrations, |p| {
    // Migration 1 without DDL, which on MariaDB would be refused first.
    p.migration("1_users.sql", "-- upgrade\nSELECT 1;\n");
    p.migration(
        "2_nt.sql",
        "-- upgrade\n-- lockstep:no-transaction\nCREATE TABLE nt (id integer);\n",
    );
    let run = p.run(&["upgrade", "--single-transaction"]);
    run.code(2);
    assert!(
        run.stderr.contains("cannot include migration 2 nt"),
        "{}",
        run.stderr
    );
    assert!(!p.db.table_exists("lockstep_history") || p.db.history().is_empty());
});

both!(transaction_control_inside_a_migration_is_refused, |p| {
    p.migration("1_users.sql", USERS);
    p.migration(
        "2_commit.sql",
        "-- upgrade\nCREATE TABLE a (id integer);\nCOMMIT;\nCREATE TABLE b (id integer);\n",
    );
    let run = p.run(&["upgrade"]);
    run.code(2);
    assert!(
        run.stderr
            .contains("migrations/2_commit.sql:3: `COMMIT` would end the transaction"),
        "{}",
        run.stderr
    );
    // Refused before anything ran.
    assert!(!p.db.table_exists("users"));
});

both!(unterminated_string_is_refused_before_anything_runs, |p| {
    p.migration("1_users.sql", USERS);
    p.migration(
        "2_quote.sql",
        "-- upgrade\nINSERT INTO users VALUES (1, 'oops);\n",
    );
    let run = p.run(&["upgrade"]);
    run.code(2);
    assert!(
        run.stderr
            .contains("migrations/2_quote.sql:2: unterminated string literal"),
        "{}",
        run.stderr
    );
    assert!(!p.db.table_exists("users"));
});

both!(no_transaction_migration_runs_statement_by_statement, |p| {
    p.migration("1_users.sql", USERS);
    let sql = match p.backend() {
        Backend::Postgres => "-- upgrade\n-- lockstep:no-transaction\nCREATE INDEX CONCURRENTLY users_name ON users (name);\nCREATE INDEX CONCURRENTLY users_id_name ON users (id, name);\n-- rollback\n-- lockstep:no-transaction\nDROP INDEX CONCURRENTLY users_id_name;\nDROP INDEX CONCURRENTLY users_name;\n",
        Backend::Sqlite => "-- upgrade\n-- lockstep:no-transaction\nCREATE INDEX users_name ON users (name);\nVACUUM;\n-- rollback\n-- lockstep:no-transaction\nDROP INDEX users_name;\nVACUUM;\n",
        Backend::Mariadb => "-- upgrade\n-- lockstep:no-transaction\nCREATE INDEX users_name ON users (name);\nCREATE INDEX users_id_name ON users (id, name);\n-- rollback\n-- lockstep:no-transaction\nDROP INDEX users_id_name ON users;\nDROP INDEX users_name ON users;\n",
    };
    p.migration("2_index.sql", sql);
    let run = p.run(&["upgrade"]);
    run.ok();
    assert!(
        run.stdout
            .contains("applied 2 index (# ms) [no transaction]"),
        "{}",
        run.stdout
    );
    assert_eq!(p.db.history(), ["1 users applied", "2 index applied"]);
    p.run(&["rollback"]).ok();
    assert_eq!(p.db.history(), ["1 users applied"]);
});

both!(statement_that_needs_no_transaction_gets_a_hint, |p| {
    let sql = match p.backend() {
        Backend::Postgres => {
            "-- upgrade\nCREATE TABLE t (id integer);\nCREATE INDEX CONCURRENTLY t_id ON t (id);\n"
        }
        Backend::Sqlite => "-- upgrade\nCREATE TABLE t (id integer);\nVACUUM;\n",
        // Every statement can run in a transaction here, and DDL commits by
        // itself: a migration with DDL runs outside one without being told.
        Backend::Mariadb => {
            p.migration(
                "1_t.sql",
                "-- upgrade\nCREATE TABLE t (id integer);\nOPTIMIZE TABLE t;\n",
            );
            let run = p.run(&["upgrade"]);
            run.ok();
            assert!(run.stdout.contains("[no transaction]"), "{}", run.stdout);
            return;
        }
    };
    p.migration("1_t.sql", sql);
    let run = p.run(&["upgrade"]);
    run.code(1);
    assert!(
        run.stderr.contains("-- lockstep:no-transaction"),
        "{}",
        run.stderr
    );
    assert!(!p.db.table_exists("t"));
});

both!(failed_no_transaction_migration_is_dirty_until_fixed, |p| {
    p.migration(
        "1_nt.sql",
        "-- upgrade\n-- lockstep:no-transaction\nCREATE TABLE first (id integer);\nCREATE TABLE second (id integer);\nINSERT INTO missing VALUES (1);\nCREATE TABLE third (id integer);\n",
    );
    p.migration("2_tags.sql", TAGS);
    let run = p.run(&["upgrade"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("2 of 4 statements ran outside a transaction"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("lockstep fix dirty 1 --applied"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db.history(), ["1 nt started"]);
    assert!(p.db.table_exists("second") && !p.db.table_exists("third"));
    // Dirty blocks every upgrade until a human says what happened.
    let blocked = p.run(&["upgrade"]);
    blocked.code(4);
    assert!(
        blocked.stderr.contains("migration 1 nt is dirty"),
        "{}",
        blocked.stderr
    );
    assert!(p.run(&["status"]).stdout.contains("dirty"));
    // The human finishes it by hand and records it.
    p.db.exec("CREATE TABLE third (id integer)");
    p.run(&["fix", "dirty", "1", "--applied"]).ok();
    assert_eq!(p.db.history(), ["1 nt applied"]);
    p.run(&["upgrade"]).ok();
    assert_eq!(p.db.history(), ["1 nt applied", "2 tags applied"]);
});

both!(
    no_transaction_failure_on_the_first_statement_is_clean,
    |p| {
        p.migration("1_nt.sql", "-- upgrade\n-- lockstep:no-transaction\nINSERT INTO missing VALUES (1);\nCREATE TABLE t (id integer);\n");
        let run = p.run(&["upgrade"]);
        run.code(1);
        assert!(!run.stderr.contains("dirty"), "{}", run.stderr);
        assert!(p.db.history().is_empty());
        p.run(&["upgrade"]).code(1);
    }
);

both!(pair_of_files_apply_and_roll_back, |p| {
    p.migration("1_users.up.sql", "CREATE TABLE users (id integer);\n");
    p.migration("1_users.down.sql", "DROP TABLE users;\n");
    p.migration("2_posts.up.sql", "CREATE TABLE posts (id integer);\n");
    p.run(&["upgrade"]).ok();
    assert_eq!(p.db.history(), ["1 users applied", "2 posts applied"]);
    let run = p.run(&["rollback", "--count", "2"]);
    run.code(4);
    assert!(
        run.stderr
            .contains("migration 2 posts has no rollback section"),
        "{}",
        run.stderr
    );
    p.migration("2_posts.down.sql", "DROP TABLE posts;\n");
    // Adding the down file changes the checksum: an intended edit.
    p.run(&["rollback"]).code(4);
    p.run(&["fix", "checksums"]).ok();
    p.run(&["rollback", "--count", "2"]).ok();
    assert!(p.db.history().is_empty());
    assert!(!p.db.table_exists("users"));
});

both!(
    migration_changing_search_path_cannot_redirect_history,
    |p| {
        let sql = match p.backend() {
        Backend::Postgres => "-- upgrade\nCREATE SCHEMA other;\nCREATE TABLE other.lockstep_history (x integer);\nSET search_path = other;\n",
        // SQLite has no search path; a temporary table of the same name is
        // the nearest way to shadow lockstep's table.
        Backend::Sqlite => "-- upgrade\nCREATE TEMP TABLE lockstep_history (x integer);\n",
        // A temporary table shadows the table of its name, qualified or not.
        Backend::Mariadb => "-- upgrade\nCREATE TEMPORARY TABLE lockstep_history (x integer);\n",
    };
        p.migration("1_shadow.sql", sql)
            .migration("2_tags.sql", TAGS);
        p.run(&["upgrade"]).ok();
        assert_eq!(p.db.history(), ["1 shadow applied", "2 tags applied"]);
    }
);

both!(tables_are_created_once_when_many_start_together, |p| {
    p.migration("1_noop.sql", "-- upgrade\nSELECT 1;\n");
    // No lock yet: the processes race for the one migration too. What this
    // checks is that creating lockstep's tables never fails, and that the
    // migration is recorded once.
    let children: Vec<_> = (0..8)
        .map(|_| {
            p.command(&["upgrade"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let run = crate::util::Run::from(child.wait_with_output().unwrap());
        assert!(
            !run.stderr.contains("creating the history table"),
            "{}",
            run.stderr
        );
        assert!(run.code == 0 || run.code == 1, "{run:?}");
    }
    assert_eq!(p.db.history(), ["1 noop applied"]);
    assert_eq!(p.db.value("SELECT count(*) FROM lockstep_meta"), "1");
    // Whoever created them created all of them, the lock log's index too.
    let index = match p.backend() {
        Backend::Sqlite => "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'lockstep_lock_log_scope'",
        Backend::Postgres => "SELECT count(*) FROM pg_indexes WHERE indexname = 'lockstep_lock_log_scope'",
        Backend::Mariadb => "SELECT count(DISTINCT index_name) FROM information_schema.STATISTICS WHERE table_schema = DATABASE() AND index_name = 'lockstep_lock_log_scope'",
    };
    assert_eq!(p.db.value(index), "1");
});

both!(progress_lines_and_summary_in_json, |p| {
    three(&p);
    let doc = p.run(&["upgrade", "--json"]).json();
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["command"], "upgrade");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(doc["direction"], "upgrade");
    assert_eq!(doc["dry_run"], false);
    let versions: Vec<u64> = doc["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    assert!(doc["migrations"][0]["duration_ms"].is_u64());
    let noop = p.run(&["upgrade", "--json"]).json();
    assert_eq!(noop["migrations"].as_array().unwrap().len(), 0);
});

/// Through the library, prefetches history, lets a CLI run (`upgrade`
/// with `args`) apply everything, then upgrades with the outdated read:
/// nothing is applied twice (migrations 1 and 2 insert `m1` and `m2` into
/// `side`).
fn upgrade_after_a_prefetch_and_another_run(p: &Project, args: &[&str]) {
    let url: lockstep::DatabaseUrl = p.db.url().parse().unwrap();
    let set = lockstep::MigrationSet::load(p.path("migrations")).unwrap();
    let mut early = lockstep::Migrator::connect(&url, lockstep::Options::default()).unwrap();
    early.prefetch_history();
    p.run(&[&["upgrade"], args].concat()).ok();
    let report = early
        .upgrade(&set, &lockstep::UpgradeOptions::default(), &mut ())
        .unwrap();
    assert!(report.steps.is_empty(), "{:?}", report.steps);
    assert_eq!(
        p.db.query("SELECT name, count(*) FROM side GROUP BY name ORDER BY name"),
        [["m1", "1"], ["m2", "1"]]
    );
}

const SIDE_M1: &str =
    "-- upgrade\nCREATE TABLE side (name text);\nINSERT INTO side VALUES ('m1');\n";
const SIDE_M2: &str = "-- upgrade\nINSERT INTO side VALUES ('m2');\n";

// The library's `prefetch_history` (the CLI's on PostgreSQL) reads history
// before the run, here before lockstep's tables exist; another run then
// makes them and applies everything. The prefetched read says "no tables",
// so the run looks at the history again once it finds them made, and
// neither applies anything twice nor takes the lock.
both!(an_outdated_prefetched_history_applies_nothing_twice, |p| {
    p.migration("1_side.sql", SIDE_M1)
        .migration("2_more.sql", SIDE_M2);
    upgrade_after_a_prefetch_and_another_run(&p, &[]);
    // It read no tables, so it looked at the history again once they were
    // there, and did not take the lock only to find nothing to do: one
    // acquisition, the other run's.
    assert_eq!(
        p.db.query("SELECT event FROM lockstep_lock_log ORDER BY id"),
        [["acquired"], ["released"]]
    );
    // A prefetched read that is current is what `history` returns.
    let url: lockstep::DatabaseUrl = p.db.url().parse().unwrap();
    let mut late = lockstep::Migrator::connect(&url, lockstep::Options::default()).unwrap();
    late.prefetch_history();
    assert_eq!(late.history().unwrap().len(), 2);
});

// The same with the tables there and one migration applied: the prefetched
// read says "one pending". By the time the run looks at the lock, it is
// free again, but its token has moved since the read: someone held it.
// The run reads history again, finds nothing left, and does not take the
// lock only to find that under it. (Before, a fleet's stragglers did, one
// after another: 26-32 acquisitions and 0.8-1 s in one run of ten.)
both!(
    an_outdated_prefetched_history_is_read_again_when_the_lock_has_moved,
    |p| {
        p.migration("1_side.sql", SIDE_M1);
        p.run(&["upgrade"]).ok();
        p.migration("2_more.sql", SIDE_M2);
        upgrade_after_a_prefetch_and_another_run(&p, &[]);
        // Two acquisitions: the two other runs'.
        assert_eq!(
            p.db.value("SELECT count(*) FROM lockstep_lock_log WHERE event = 'acquired'"),
            "2"
        );
    }
);

// Whatever the history read found, a run whose token is still the one it
// read takes the lock and reads history afresh under it: another run
// without the lock (`--no-lock`) may have applied something meanwhile, and
// nothing is applied twice.
both!(
    an_outdated_prefetched_history_is_read_again_under_the_lock,
    |p| {
        p.migration("1_side.sql", SIDE_M1);
        p.run(&["upgrade"]).ok();
        p.migration("2_more.sql", SIDE_M2);
        upgrade_after_a_prefetch_and_another_run(&p, &["--no-lock"]);
        // The first run's acquisition, and this one's, which found nothing
        // left under the lock.
        assert_eq!(
            p.db.value("SELECT count(*) FROM lockstep_lock_log WHERE event = 'acquired'"),
            "2"
        );
    }
);

// A history read also notes the lock row; with the lock table dropped by
// hand, commands still read history, and `upgrade` makes the lock table
// again and applies what is pending, once.
both!(a_lock_table_dropped_by_hand_is_made_again, |p| {
    p.migration("1_users.sql", USERS);
    p.run(&["upgrade"]).ok();
    p.db.exec("DROP TABLE lockstep_lock");
    p.migration("2_posts.sql", POSTS);
    let status = p.run(&["status", "--json"]).json();
    assert_eq!(status["counts"]["pending"], 1, "{status}");
    p.run(&["upgrade"]).ok();
    assert_eq!(p.db.history(), ["1 users applied", "2 posts applied"]);
    assert_eq!(p.db.value("SELECT count(*) FROM posts"), "1");
    assert_eq!(p.db.value("SELECT count(*) FROM lockstep_lock"), "1");
});

both!(a_target_already_reached_says_so_and_what_lies_beyond, |p| {
    for v in 1..=4 {
        p.migration(
            &format!("{v}_m{v}.sql"),
            &format!("-- upgrade\nCREATE TABLE t{v} (id integer);\n"),
        );
    }
    p.run(&["upgrade", "--to", "2"]).ok();
    let run = p.run(&["upgrade", "--to", "2"]);
    run.ok();
    assert_eq!(
        run.stdout,
        "version 2 is reached already: nothing to apply up to it (2 migrations pending after it)\n"
    );
    p.run(&["upgrade"]).ok();
    let run = p.run(&["upgrade", "--to", "3"]);
    run.ok();
    assert_eq!(
        run.stdout,
        "version 3 is reached already: nothing to apply\n"
    );
    let plain = p.run(&["upgrade"]);
    assert_eq!(plain.stdout, "database is up to date: nothing to apply\n");
});
