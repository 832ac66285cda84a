//! How migrations run on each engine: as the engine's own shell would run
//! each file (session state, SQLite's foreign keys), with failures that
//! name the statement, and stops that stop. Checked with plain SQL.

use std::time::Duration;

use crate::util::{wait_until, Backend, Project};

const LONG: Duration = Duration::from_secs(60);

/// SQLite's documented way to change a table (create the new one, copy,
/// drop the old, rename) and plain drops of referenced tables need foreign
/// keys off, as the `sqlite3` shell runs; the bundled library has them on,
/// and `PRAGMA foreign_keys` is ignored inside a transaction.
#[test]
fn sqlite_runs_with_foreign_keys_off_as_its_shell_does() {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration(
        "1_tables.sql",
        "-- upgrade\nCREATE TABLE a (id integer PRIMARY KEY);\nCREATE TABLE b (id integer PRIMARY KEY);\n\
         CREATE TABLE c (a_id integer REFERENCES a (id), b_id integer REFERENCES b (id));\n\
         CREATE TABLE parent (id integer PRIMARY KEY, name text);\n\
         CREATE TABLE child (parent_id integer REFERENCES parent (id));\n\
         INSERT INTO parent VALUES (1, 'one');\nINSERT INTO child VALUES (1);\n",
    );
    p.migration("2_drop.sql", "-- upgrade\nDROP TABLE b;\nDROP TABLE a;\n");
    p.migration(
        "3_rebuild.sql",
        "-- upgrade\nCREATE TABLE new_parent (id integer PRIMARY KEY, name text NOT NULL);\n\
         INSERT INTO new_parent SELECT id, name FROM parent;\nDROP TABLE parent;\n\
         ALTER TABLE new_parent RENAME TO parent;\n",
    );
    p.run(&["upgrade"]).ok();
    assert_eq!(
        p.db.history(),
        ["1 tables applied", "2 drop applied", "3 rebuild applied"]
    );
    // The child's row survived the rebuild of its parent.
    assert_eq!(p.db.value("SELECT count(*) FROM child"), "1");
    assert_eq!(p.db.value("SELECT name FROM parent"), "one");
}

/// With foreign keys off while it runs, each migration is checked before
/// it commits, as SQLite advises: a migration that leaves a row pointing
/// nowhere is rolled back, and the error names the rows.
#[test]
fn sqlite_refuses_a_migration_that_breaks_a_foreign_key() {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration(
        "1_tables.sql",
        "-- upgrade\nCREATE TABLE parent (id integer PRIMARY KEY);\n\
         CREATE TABLE child (parent_id integer REFERENCES parent (id));\n",
    );
    p.migration(
        "2_orphans.sql",
        "-- upgrade\nCREATE TABLE kept (x integer);\nINSERT INTO child VALUES (7);\nINSERT INTO child VALUES (8);\n",
    );
    let run = p.run(&["upgrade"]);
    run.code(1);
    assert!(
        run.stderr.contains(
            "migration 2 orphans failed (migrations/2_orphans.sql): foreign key check failed after the migration: \
             `child` row 1 refers to a missing row of `parent`; `child` row 2 refers to a missing row of `parent` \
             (SQLITE_CONSTRAINT_FOREIGNKEY)"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(p.db.history(), ["1 tables applied"]);
    assert!(!p.db.table_exists("kept"));
    assert_eq!(p.db.value("SELECT count(*) FROM child"), "0");
}

/// The look at whether the schema holds foreign keys (so that a schema
/// without any costs no check) is taken again when a migration adds one,
/// also outside a transaction, within the same run.
#[test]
fn sqlite_checks_foreign_keys_added_during_the_run() {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration(
        "1_parent.sql",
        "-- upgrade\nCREATE TABLE parent (id integer PRIMARY KEY);\n",
    );
    p.migration(
        "2_child.sql",
        "-- upgrade\n-- lockstep:no-transaction\nCREATE TABLE child (parent_id integer REFERENCES parent (id));\n",
    );
    p.migration(
        "3_orphan.sql",
        "-- upgrade\nINSERT INTO child VALUES (9);\n",
    );
    let run = p.run(&["upgrade"]);
    run.code(1);
    assert!(
        run.stderr.contains("migration 3 orphan failed")
            && run
                .stderr
                .contains("`child` row 1 refers to a missing row of `parent`"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db.history(), ["1 parent applied", "2 child applied"]);
}

/// SQLite: a migration of many statements stops between two of them when
/// told to (SQLite's own interrupt lasts only while a statement runs), and
/// rolls back whole.
#[test]
fn sqlite_stops_between_the_statements_of_a_long_migration() {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    // Many short statements, together far longer than the test waits.
    let one = format!("INSERT INTO many {}\n", p.busy_sql(0.002));
    let mut sql = String::from("-- upgrade\nCREATE TABLE many (n integer);\n");
    for _ in 0..30_000 {
        sql.push_str(&one);
    }
    p.migration("2_many.sql", &sql);
    let run = p.spawn(&["upgrade"]);
    wait_until("migration 1 is applied", LONG, || {
        p.db.table_exists("lockstep_history") && p.db.history().len() == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    run.signal(libc::SIGTERM);
    let run = run.finish();
    run.code(143);
    assert!(run.stderr.contains("cancelled"), "{}", run.stderr);
    assert_eq!(p.db.history(), ["1 a applied"]);
    assert!(!p.db.table_exists("many"));
}

// On MariaDB a migration starts from a fresh session too: the session is
// reset before it when the server reported a change by the migration
// before (a setting, a temporary table, the current database), or when
// that one may have made a change it does not report (a user variable
// set by a query); between migrations of plain DDL and DML it is kept,
// two round trips fewer.
#[test]
fn mariadb_each_migration_starts_from_a_fresh_session() {
    let Some(p) = Project::new(Backend::Mariadb) else {
        return;
    };
    p.migration(
        "1_variable.sql",
        "-- upgrade\nCREATE TABLE seen (step integer, fresh integer);\nSELECT 5 INTO @v;\n",
    );
    p.migration(
        "2_check.sql",
        "-- upgrade\nINSERT INTO seen SELECT 2, @v IS NULL;\n",
    );
    p.migration(
        "3_mode.sql",
        "-- upgrade\nCREATE TABLE c (id integer);\nSET SESSION sql_mode = 'ANSI_QUOTES';\n",
    );
    p.migration(
        "4_check.sql",
        "-- upgrade\nINSERT INTO seen SELECT 4, @@session.sql_mode = @@global.sql_mode;\n",
    );
    p.migration(
        "5_temporary.sql",
        "-- upgrade\nCREATE TEMPORARY TABLE scratch (id integer);\nINSERT INTO scratch VALUES (1);\n",
    );
    p.migration("6_plain.sql", "-- upgrade\nCREATE TABLE d (id integer);\n");
    p.migration(
        "7_temporary_again.sql",
        "-- upgrade\nCREATE TEMPORARY TABLE scratch (id integer);\nINSERT INTO seen VALUES (7, 1);\n",
    );
    p.migration(
        "8_database.sql",
        "-- upgrade\nCREATE TABLE f (id integer);\nUSE information_schema;\n",
    );
    p.migration(
        "9_check.sql",
        "-- upgrade\nCREATE TABLE e (id integer);\nINSERT INTO seen SELECT 9, DATABASE() <> 'information_schema';\n",
    );
    p.run(&["upgrade"]).ok();
    assert_eq!(
        p.db.query("SELECT step, fresh FROM seen ORDER BY step"),
        [["2", "1"], ["4", "1"], ["7", "1"], ["9", "1"]]
    );
    assert!(p.db.table_exists("e"));
}

// The writes that close a migration's transaction go to the server in one
// query, their values written into its text: they must read the same
// whatever the migration left the session's `sql_mode` and character set,
// into tables of another character set. Migration 1 leaves its session
// so, and its closing writes check the fence and record migration 2
// `started`.
#[test]
fn mariadb_history_values_survive_the_migration_s_session() {
    let Some(p) = Project::new(Backend::Mariadb) else {
        return;
    };
    p.db.exec("ALTER DATABASE CHARACTER SET latin1");
    p.migration(
        "1_first.sql",
        "-- upgrade\nCREATE TABLE t (id integer);\nINSERT INTO t VALUES (1);\n\
         SET NAMES latin1;\nSET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES,ANSI_QUOTES';\n",
    );
    p.migration("2_second.sql", "-- upgrade\nINSERT INTO t VALUES (2);\n");
    // The owner is compared by the fence, and recorded with each row.
    let owner = "d\u{e9}j\u{e0} vu's \\n";
    p.run(&["--owner", owner, "upgrade"]).ok();
    assert_eq!(
        p.db.query(
            "SELECT version, name, state, applied_by FROM lockstep_history ORDER BY version"
        ),
        [
            ["1", "first", "applied", owner],
            ["2", "second", "applied", owner]
        ]
    );
    // The history's table is latin1, and holds the names as text in it.
    assert_eq!(
        p.db.value("SELECT CHARACTER_SET_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'lockstep_history' AND COLUMN_NAME = 'name'"),
        "latin1"
    );
    p.run(&["validate"]).ok();
}

// The last DDL statement before the statements of a migration's
// transaction goes in the round trip of its first: when it fails, the
// server runs nothing after it. After DDL that ran, the migration is
// dirty at the failing statement; when the failing statement is the
// first, nothing ran and nothing is recorded.
#[test]
fn mariadb_nothing_runs_after_a_failed_ddl_statement() {
    let Some(p) = Project::new(Backend::Mariadb) else {
        return;
    };
    p.migration(
        "1_side.sql",
        "-- upgrade\nCREATE TABLE side (id integer);\n",
    );
    p.migration(
        "2_first.sql",
        "-- upgrade\nALTER TABLE nosuch ADD COLUMN c integer;\nINSERT INTO side VALUES (2);\n",
    );
    let run = p.run(&["upgrade"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("migration 2 first failed (migrations/2_first.sql:2, statement 1 of 2"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("dirty"), "{}", run.stderr);
    assert_eq!(p.db.history(), ["1 side applied"]);
    assert_eq!(p.db.value("SELECT count(*) FROM side"), "0");

    p.migration(
        "2_first.sql",
        "-- upgrade\nCREATE TABLE made (id integer);\nALTER TABLE nosuch ADD COLUMN c integer;\n\
         INSERT INTO side VALUES (2);\n",
    );
    let run = p.run(&["upgrade"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("migration 2 first failed (migrations/2_first.sql:3, statement 2 of 3"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 of 3 statements ran"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db.history(), ["1 side applied", "2 first started"]);
    assert!(p.db.table_exists("made"));
    assert_eq!(p.db.value("SELECT count(*) FROM side"), "0");
}

// A `mysqldump` file runs as the `mariadb` client runs it: the server
// takes the text of executable comments (`/*!50001 ... */`) as SQL, and
// `mysqldump` writes views and settings inside them. They were dropped as
// comments, silently.
#[test]
fn mariadb_runs_executable_comments_as_the_client_does() {
    let Some(p) = Project::new(Backend::Mariadb) else {
        return;
    };
    p.migration(
        "1_dump.sql",
        "-- upgrade\n/*!40101 SET @saved_cs_client = @@character_set_client */;\n\
         /*!40101 SET character_set_client = utf8mb4 */;\n\
         CREATE TABLE t (id int PRIMARY KEY);\n\
         /*!40101 SET character_set_client = @saved_cs_client */;\n\
         /*!50001 CREATE ALGORITHM=UNDEFINED */\n\
         /*!50013 DEFINER=CURRENT_USER SQL SECURITY DEFINER */\n\
         /*!50001 VIEW `v` AS select `t`.`id` AS `id` from `t` */;\n\
         INSERT INTO t VALUES (7);\n",
    );
    let run = p.run(&["upgrade"]);
    run.ok();
    // The view is DDL: the migration ran outside a transaction.
    assert!(run.stdout.contains("[no transaction]"), "{}", run.stdout);
    assert_eq!(p.db.value("SELECT id FROM v"), "7");
}

// A migration's SQL runs as each file would in its own `psql` run: session
// state set by one migration (a `pg_dump` file starts by emptying
// `search_path`) does not reach the next, in or out of a transaction.
#[test]
fn postgres_each_migration_starts_from_a_fresh_session() {
    let Some(p) = Project::new(Backend::Postgres) else {
        return;
    };
    p.migration(
        "1_dump.sql",
        "-- upgrade\nSELECT pg_catalog.set_config('search_path', '', false);\nSET statement_timeout = 50;\n\
         CREATE TABLE public.a (id integer);\n",
    );
    p.migration(
        "2_plain.sql",
        "-- upgrade\nCREATE TABLE b (id integer);\nSELECT pg_sleep(0.2);\n",
    );
    p.migration(
        "3_outside.sql",
        "-- upgrade\n-- lockstep:no-transaction\nSET search_path = pg_temp;\nCREATE TABLE pg_temp.t (id integer);\n",
    );
    p.migration(
        "4_after_outside.sql",
        "-- upgrade\n-- lockstep:no-transaction\nCREATE TABLE c (id integer);\n",
    );
    p.migration("5_last.sql", "-- upgrade\nCREATE TABLE d (id integer);\n");
    p.run(&["upgrade"]).ok();
    let tables = p.db.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' \
         AND table_name IN ('a', 'b', 'c', 'd') ORDER BY 1",
    );
    assert_eq!(tables, [["a"], ["b"], ["c"], ["d"]]);
}
// A failure the engine gives no position for (a constraint, a dependency)
// names the statement: its number, its line, its first line of text.
both!(a_failure_without_a_position_names_the_statement, |p| {
    p.migration(
        "1_t.sql",
        "-- upgrade\nCREATE TABLE t (id integer PRIMARY KEY);\n",
    );
    p.migration(
        "2_dup.sql",
        "-- upgrade\n-- two rows\nINSERT INTO t VALUES (1);\n\nINSERT INTO t VALUES (2);\nINSERT INTO t\n  VALUES (1);\nINSERT INTO t VALUES (3);\n",
    );
    p.migration(
        "3_outside.sql",
        "-- upgrade\n-- lockstep:no-transaction\nINSERT INTO t VALUES (9);\nINSERT INTO t VALUES (9);\n",
    );
    let run = p.run(&["upgrade", "--to", "2"]);
    run.code(1);
    assert!(
        run.stderr.contains(
            "error: migration 2 dup failed (migrations/2_dup.sql:6, statement 3 of 4: `INSERT INTO t`): "
        ),
        "{}",
        run.stderr
    );
    let doc = p.run(&["upgrade", "--to", "2", "--json"]).json();
    assert_eq!(doc["error"]["line"], 6, "{doc}");
    assert_eq!(doc["error"]["statement"]["number"], 3, "{doc}");
    assert_eq!(doc["error"]["statement"]["total"], 4, "{doc}");
    assert_eq!(p.db.history(), ["1 t applied"]);
    // Outside a transaction too: the second statement, now dirty.
    p.migration("2_dup.sql", "-- upgrade\nINSERT INTO t VALUES (1);\n");
    let run = p.run(&["upgrade"]);
    run.code(1);
    assert!(
        run.stderr.contains(
            "error: migration 3 outside failed (migrations/3_outside.sql:4, statement 2 of 2: `INSERT INTO t VALUES (9);`): "
        ),
        "{}",
        run.stderr
    );
});
