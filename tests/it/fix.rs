use sha2::Digest;

use crate::util::Project;

fn setup(p: &Project) {
    p.migration(
        "1_a.sql",
        "-- upgrade\nCREATE TABLE a (id integer);\n-- rollback\nDROP TABLE a;\n",
    );
    p.migration(
        "2_b.sql",
        "-- upgrade\nCREATE TABLE b (id integer);\n-- rollback\nDROP TABLE b;\n",
    );
    p.run(&["upgrade"]).ok();
}

/// The checksum history holds for version 2, read with plain SQL.
fn recorded_checksum_of_2(p: &Project) -> String {
    p.db.value("SELECT checksum FROM lockstep_history WHERE version = 2")
}

both!(fix_checksums_records_intended_edits, |p| {
    setup(&p);
    let before = recorded_checksum_of_2(&p);
    p.migration(
        "2_b.sql",
        "-- upgrade\n-- creates b\nCREATE TABLE b (id integer);\n-- rollback\nDROP TABLE b;\n",
    );
    let dry = p.run(&["fix", "checksums", "--dry-run"]);
    dry.ok();
    assert!(
        dry.stdout
            .contains("2 b: would have recorded checksum sha256:"),
        "{}",
        dry.stdout
    );
    assert_eq!(recorded_checksum_of_2(&p), before);
    // Flyway's and jetbase's word for it.
    let run = p.run(&["repair"]);
    run.ok();
    assert!(
        run.stdout.starts_with("2 b: recorded checksum sha256:"),
        "{}",
        run.stdout
    );
    assert_ne!(recorded_checksum_of_2(&p), before);
    // Nothing was re-run, and everything validates.
    p.run(&["validate"]).ok();
    let again = p.run(&["fix", "checksums"]);
    assert_eq!(
        again.stdout,
        "nothing to fix: every applied migration's file matches its checksum\n"
    );
});

both!(fix_checksums_records_a_rename, |p| {
    setup(&p);
    let content = std::fs::read_to_string(p.path("migrations/2_b.sql")).unwrap();
    std::fs::remove_file(p.path("migrations/2_b.sql")).unwrap();
    p.migration("2_create_b.sql", &content);
    p.run(&["upgrade"]).code(4);
    let run = p.run(&["fix", "checksums"]);
    run.ok();
    assert!(
        run.stdout.contains("and name `create_b` (was `b`)"),
        "{}",
        run.stdout
    );
    assert_eq!(p.db.history(), ["1 a applied", "2 create_b applied"]);
});

both!(fix_missing_forgets_rows_without_files, |p| {
    setup(&p);
    std::fs::remove_file(p.path("migrations/2_b.sql")).unwrap();
    let doc = p.run(&["fix", "missing", "--dry-run", "--json"]).json();
    assert_eq!(doc["command"], "fix missing");
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["changes"][0]["version"], 2);
    assert_eq!(p.db.history().len(), 2);
    p.run(&["fix", "missing"]).ok();
    assert_eq!(p.db.history(), ["1 a applied"]);
    p.run(&["upgrade"]).ok();
});

both!(fix_dirty_forget_lets_upgrade_run_it_again, |p| {
    p.migration("1_nt.sql", "-- upgrade\n-- lockstep:no-transaction\nCREATE TABLE x (id integer);\nINSERT INTO nowhere VALUES (1);\n");
    p.run(&["upgrade"]).code(1);
    assert_eq!(p.db.history(), ["1 nt started"]);
    // Undo by hand, fix the file, forget the row: upgrade runs it afresh.
    p.db.exec("DROP TABLE x");
    p.migration(
        "1_nt.sql",
        "-- upgrade\n-- lockstep:no-transaction\nCREATE TABLE x (id integer);\n",
    );
    let run = p.run(&["fix", "dirty", "1", "--forget"]);
    run.ok();
    assert_eq!(
        run.stdout,
        "1 nt: forgot its history row; `upgrade` will run it again\n"
    );
    p.run(&["upgrade"]).ok();
    assert_eq!(p.db.history(), ["1 nt applied"]);
});

both!(
    fix_dirty_refuses_clean_versions_and_needs_a_resolution,
    |p| {
        setup(&p);
        let run = p.run(&["fix", "dirty", "1", "--applied"]);
        run.code(2);
        assert!(
            run.stderr.contains("migration 1 is not dirty"),
            "{}",
            run.stderr
        );
        p.run(&["fix", "dirty", "1"]).code(2);
        p.run(&["fix", "dirty", "1", "--applied", "--forget"])
            .code(2);
    }
);

both!(
    a_checksum_edited_by_hand_in_history_is_shown_as_written_and_fixed,
    |p| {
        setup(&p);
        let file_sum = recorded_checksum_of_2(&p);
        // Not the form lockstep writes: upper case, so it can match no file.
        let edited = file_sum.to_uppercase();
        p.db.exec(&format!(
            "UPDATE lockstep_history SET checksum = '{edited}' WHERE version = 2"
        ));
        let status = p.run(&["status", "--json"]);
        let doc = status.json();
        let row = &doc["migrations"][1];
        assert_eq!(row["state"], "modified", "{doc}");
        assert_eq!(row["checksum"], file_sum.as_str(), "{doc}");
        assert_eq!(row["recorded_checksum"], edited.as_str(), "{doc}");
        p.run(&["validate"]).code(4);
        p.run(&["upgrade"]).code(4);
        let fixed = p.run(&["fix", "checksums"]);
        fixed.ok();
        assert!(
            fixed
                .stdout
                .contains(&format!("(was {})", &edited[..7 + 12])),
            "{}",
            fixed.stdout
        );
        assert_eq!(recorded_checksum_of_2(&p), file_sum);
        p.run(&["validate"]).ok();
    }
);

both!(
    baseline_records_what_the_database_has_without_running_it,
    |p| {
        // A database made before lockstep: tables a and b exist already.
        p.db.exec("CREATE TABLE a (id integer)");
        p.db.exec("CREATE TABLE b (id integer)");
        p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
        p.migration("2_b.sql", "-- upgrade\nCREATE TABLE b (id integer);\n");
        p.migration("3_c.sql", "-- upgrade\nCREATE TABLE c (id integer);\n");
        let dry = p.run(&["baseline", "2", "--dry-run"]);
        dry.ok();
        assert_eq!(
            dry.stdout,
            "1 a: would have recorded as applied without running it (baseline)\n\
         2 b: would have recorded as applied without running it (baseline)\n\
         dry run: 2 rows would change; nothing was changed\n"
        );
        assert!(!p.db.table_exists("lockstep_history"));
        let unknown = p.run(&["baseline", "7"]);
        unknown.code(2);
        assert!(
            unknown.stderr.contains("no migration has version 7"),
            "{}",
            unknown.stderr
        );
        let run = p.run(&["baseline", "2", "--json"]);
        run.ok();
        let doc = run.json();
        assert_eq!(doc["command"], "baseline");
        assert_eq!(doc["changes"].as_array().unwrap().len(), 2, "{doc:#}");
        // Recorded under the lock, with its token; nothing ran (it would have
        // failed: the tables exist).
        assert_eq!(p.db.history(), ["1 a applied", "2 b applied"]);
        let token = p.db.value("SELECT max(token) FROM lockstep_lock");
        assert_eq!(
            p.db.query("SELECT DISTINCT lock_token FROM lockstep_history"),
            [[token]]
        );
        assert_eq!(
            p.db.value("SELECT command FROM lockstep_lock_log WHERE event = 'acquired'"),
            "baseline"
        );
        assert!(!p.db.table_exists("c"));
        p.run(&["upgrade"]).ok();
        assert!(p.db.table_exists("c"));
        assert_eq!(
            p.run(&["baseline", "2"]).stdout,
            "nothing to record: history already holds every migration up to 2\n"
        );
        let current = p.run(&["current", "--json"]).json();
        assert_eq!(
            (current["version"].as_u64(), current["name"].as_str()),
            (Some(3), Some("c"))
        );
        assert_eq!(p.run(&["current"]).stdout, "3 c\n");
    }
);

both!(current_with_nothing_applied, |p| {
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    let run = p.run(&["current"]);
    run.ok();
    assert_eq!(run.stdout, "no migration applied\n");
    assert!(p.run(&["current", "--json"]).json()["version"].is_null());
});

both!(import_takes_over_golang_migrate_and_leaves_its_table, |p| {
    // As golang-migrate leaves a database: its table says version 2, clean.
    p.db.exec("CREATE TABLE a (id integer)");
    p.db.exec("CREATE TABLE b (id integer)");
    p.db.exec("CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)");
    p.db.exec("INSERT INTO schema_migrations (version, dirty) VALUES (2, true)");
    p.migration("1.up.sql", "CREATE TABLE a (id integer);\n");
    p.migration("1.down.sql", "DROP TABLE a;\n");
    p.migration("2_b.up.sql", "CREATE TABLE b (id integer);\n");
    p.migration("3_c.up.sql", "CREATE TABLE c (id integer);\n");
    // Dirty: refused, naming the version; nothing written.
    let dirty = p.run(&["import", "golang-migrate"]);
    dirty.code(2);
    assert!(
        dirty.stderr.contains("says version 2 is dirty"),
        "{}",
        dirty.stderr
    );
    assert!(!p.db.table_exists("lockstep_history"));
    p.db.exec("UPDATE schema_migrations SET dirty = false");
    let run = p.run(&["import", "golang-migrate", "--json"]);
    run.ok();
    assert_eq!(run.json()["changes"].as_array().unwrap().len(), 2);
    assert_eq!(p.db.history(), ["1  applied", "2 b applied"]);
    assert_eq!(p.db.query("SELECT version FROM schema_migrations"), [["2"]]);
    p.run(&["upgrade"]).ok();
    assert!(p.db.table_exists("c"));
    let again = p.run(&["import", "golang-migrate"]);
    again.ok();
    assert!(
        again.stdout.starts_with("nothing to record"),
        "{}",
        again.stdout
    );
    let unknown = p.run(&["import", "flyway-ish"]);
    unknown.code(2);
});

both!(
    import_replays_goose_and_warns_of_what_it_cannot_record,
    |p| {
        p.db.exec(
        "CREATE TABLE goose_db_version (id integer PRIMARY KEY, version_id bigint NOT NULL, is_applied boolean NOT NULL, tstamp timestamp NULL)",
    );
        // goose's first row is version 0; 2 was applied, then rolled back; 9
        // has no file here.
        p.db.exec(
        "INSERT INTO goose_db_version (id, version_id, is_applied) VALUES (1, 0, true), (2, 1, true), (3, 2, true), (4, 2, false), (5, 9, true)",
    );
        p.migration(
            "00001_a.sql",
            "-- +goose Up\nCREATE TABLE a (id integer);\n",
        );
        p.migration(
            "00002_b.sql",
            "-- +goose Up\nCREATE TABLE b (id integer);\n",
        );
        let run = p.run(&["import", "goose", "--json"]);
        run.ok();
        let doc = run.json();
        assert_eq!(doc["changes"][0]["version"], 1, "{doc:#}");
        assert_eq!(doc["changes"].as_array().unwrap().len(), 1, "{doc:#}");
        assert!(
            doc["warnings"][0]
                .as_str()
                .unwrap()
                .contains("version 9 is applied by goose but no migration file here has it"),
            "{doc:#}"
        );
        assert!(run.stderr.contains("warning: version 9"), "{}", run.stderr);
        assert_eq!(p.db.history(), ["1 a applied"]);
    }
);

both!(
    import_sqlx_warns_of_a_changed_file_and_refuses_a_failed_one,
    |p| {
        p.db.exec(
        "CREATE TABLE _sqlx_migrations (version bigint PRIMARY KEY, description text NOT NULL, success boolean NOT NULL, checksum blob_or_bytea NOT NULL, execution_time bigint NOT NULL)"
            .replace("blob_or_bytea", if p.backend() == Backend::Postgres { "bytea" } else { "blob" })
            .as_str(),
    );
        // sqlx's checksum: SHA-384 of the file. Version 1's as sqlx wrote it,
        // version 2's not (its file changed since).
        let bytes = |hex: &str| match p.backend() {
            Backend::Postgres => format!("decode('{hex}', 'hex')"),
            Backend::Mariadb => format!("UNHEX('{hex}')"),
            Backend::Sqlite => format!("X'{hex}'"),
        };
        let a = "CREATE TABLE a (id integer);\n";
        let sum: String = sha2::Sha384::digest(a.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        p.db.exec(&format!(
            "INSERT INTO _sqlx_migrations VALUES (1, 'a', true, {}, 1), (2, 'b', true, {}, 1)",
            bytes(&sum),
            bytes("00")
        ));
        p.migration("1_a.sql", a);
        p.migration("2_b.sql", "CREATE TABLE b (id integer);\n");
        let run = p.run(&["import", "sqlx"]);
        run.ok();
        assert!(!run.stderr.contains("version 1:"), "{}", run.stderr);
        assert!(
            run.stderr
                .contains("version 2: the file changed since sqlx applied it"),
            "{}",
            run.stderr
        );
        assert_eq!(p.db.history(), ["1 a applied", "2 b applied"]);
        p.db.exec("UPDATE _sqlx_migrations SET success = false");
        p.run(&["fix", "missing"]).ok();
        let failed = p.run(&["import", "sqlx"]);
        failed.code(2);
        assert!(
            failed.stderr.contains("says version 1 failed"),
            "{}",
            failed.stderr
        );
        let none = p.run(&["import", "dbmate"]);
        none.code(2);
        assert!(
            none.stderr.contains("no table schema_migrations here"),
            "{}",
            none.stderr
        );
    }
);

both!(flyway_files_and_history_are_taken_over, |p| {
    // Flyway's documented table, as it leaves a database: V1 and V2
    // applied, V2 undone, two repeatables, then V3 applied. V1's and
    // R__views' checksums are the ones Flyway computes of their files
    // (CRC-32 of the lines); V3's and R__other's files changed since.
    p.db.exec(
        "CREATE TABLE flyway_schema_history (installed_rank integer PRIMARY KEY, version varchar(50), description varchar(200) NOT NULL, type varchar(20) NOT NULL, script varchar(1000) NOT NULL, checksum integer, installed_by varchar(100) NOT NULL, execution_time integer NOT NULL, success boolean NOT NULL)",
    );
    p.db.exec(
        "INSERT INTO flyway_schema_history VALUES \
         (1, '1', 'a', 'SQL', 'V1__a.sql', 373690480, 'me', 1, true), \
         (2, '2', 'b', 'SQL', 'V2__b.sql', 2, 'me', 1, true), \
         (3, '2', 'b', 'UNDO_SQL', 'U2__b.sql', 3, 'me', 1, true), \
         (4, NULL, 'views', 'SQL', 'R__views.sql', 78787420, 'me', 1, true), \
         (5, '3', 'c', 'SQL', 'V3__c.sql', 5, 'me', 1, true), \
         (7, NULL, 'other', 'SQL', 'R__other.sql', 7, 'me', 1, true)",
    );
    p.db.exec("CREATE TABLE a (id integer)");
    p.db.exec("CREATE TABLE c (id integer)");
    // Flyway's files, the whole file the migration.
    p.migration("V1__a.sql", "CREATE TABLE a (id integer);\n");
    p.migration("V2__b.sql", "CREATE TABLE b (id integer);\n");
    p.migration("V3__c.sql", "CREATE TABLE c (id integer);\n");
    p.migration("R__views.sql", "SELECT 1;\n");
    p.migration("R__other.sql", "SELECT 2;\n");
    let run = p.run(&["import", "flyway", "--json"]);
    run.ok();
    let doc = run.json();
    assert_eq!(
        doc["warnings"],
        serde_json::json!([
            "version 3: the file changed since flyway applied it (its checksum differs)",
            "repeatable migration R__other.sql changed since flyway ran it: lockstep's next upgrade runs it"
        ])
    );
    assert_eq!(
        doc["changes"][2],
        serde_json::json!({
            "version": null, "name": "views", "kind": "repeatable",
            "action": "recorded as run (from flyway's flyway_schema_history)"
        })
    );
    assert_eq!(p.db.history(), ["1 a applied", "3 c applied"]);
    let runs = "SELECT name, runs FROM lockstep_repeatable ORDER BY name";
    assert_eq!(p.db.query(runs), [["views", "1"]]);
    // Again: nothing more to record.
    let again = p.run(&["import", "flyway", "--json"]);
    assert_eq!(again.json()["changes"], serde_json::json!([]));
    // V2 was undone: upgrade runs it (out of order, as Flyway's undo left
    // it), and the changed repeatable; not the one Flyway ran as it is.
    let run = p.run(&["upgrade", "--allow-out-of-order"]);
    run.ok();
    assert!(p.db.table_exists("b"));
    assert!(!run.stdout.contains("repeatable views"), "{}", run.stdout);
    assert_eq!(p.db.query(runs), [["other", "1"], ["views", "1"]]);
    // A dotted version Flyway applied since: imported, the history table
    // widened to text versions for it.
    p.db.exec("INSERT INTO flyway_schema_history VALUES (6, '3.1', 'd', 'SQL', 'V3.1__d.sql', 633450235, 'me', 1, true)");
    p.db.exec("CREATE TABLE d (id integer)");
    p.migration("V3.1__d.sql", "CREATE TABLE d (id integer);\n");
    let run = p.run(&["import", "flyway"]);
    run.ok();
    assert!(
        !run.stderr.contains("3.1: the file changed"),
        "{}",
        run.stderr
    );
    assert_eq!(
        p.db.history(),
        ["1 a applied", "2 b applied", "3 c applied", "3.1 d applied"]
    );
    assert_eq!(p.db.value("SELECT format_version FROM lockstep_meta"), "2");
    p.run(&["status", "--check"]).ok();
    p.db.exec("UPDATE flyway_schema_history SET version = '3.x' WHERE installed_rank = 6");
    let bad = p.run(&["import", "flyway"]);
    bad.code(2);
    assert!(
        bad.stderr.contains(
            "flyway_schema_history's version of V3.1__d.sql: version `3.x` is not a number"
        ),
        "{}",
        bad.stderr
    );
});
