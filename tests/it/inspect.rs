use crate::util::Project;

fn setup(p: &Project) {
    p.migration(
        "1_a.sql",
        "-- upgrade\nCREATE TABLE a (id integer);\n-- rollback\nDROP TABLE a;\n",
    );
    p.migration("2_b.sql", "-- upgrade\nCREATE TABLE b (id integer);\n");
    p.migration("3_c.sql", "-- upgrade\nCREATE TABLE c (id integer);\n");
}

both!(read_only_commands_create_nothing, |p| {
    setup(&p);
    for args in [
        &["status"][..],
        &["history"],
        &["validate"],
        &["status", "--json"],
    ] {
        p.run(args).ok();
    }
    assert!(!p.db.table_exists("lockstep_history"));
    assert!(!p.db.table_exists("lockstep_meta"));
    if let crate::util::TestDb::Sqlite { path } = &p.db {
        assert!(!path.exists(), "status created the SQLite file");
    }
});

both!(status_shows_every_state, |p| {
    setup(&p);
    p.migration("4_d.sql", "-- upgrade\nCREATE TABLE d (id integer);\n");
    p.run(&["upgrade", "--to", "3"]).ok();
    p.migration(
        "2_b.sql",
        "-- upgrade\nCREATE TABLE b (id integer); -- edited\n",
    );
    std::fs::remove_file(p.path("migrations/3_c.sql")).unwrap();
    let run = p.run(&["status"]);
    run.ok();
    insta::assert_snapshot!("status", run.stdout);
    let check = p.run(&["status", "--check"]);
    check.code(4);
    let doc = p.run(&["status", "--json"]).json();
    assert_eq!(doc["ok"], true);
    let states: Vec<&str> = doc["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["applied", "modified", "missing", "pending"]);
    assert_eq!(doc["migrations"][0]["version"], 1);
    assert_eq!(doc["migrations"][0]["name"], "a");
    assert!(doc["migrations"][0]["applied_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(doc["migrations"][3]["applied_at"], serde_json::Value::Null);
    assert!(doc["migrations"][1]["recorded_checksum"].is_string());
    assert_eq!(doc["counts"]["pending"], 1);
    let doc = p.run(&["status", "--check", "--json"]).json();
    assert_eq!(
        (doc["ok"].as_bool(), doc["exit_code"].as_i64()),
        (Some(false), Some(4))
    );
});

both!(status_check_passes_when_all_applied, |p| {
    setup(&p);
    p.run(&["status", "--check"]).code(4);
    p.run(&["upgrade"]).ok();
    p.run(&["status", "--check"]).ok();
});

both!(history_lists_applied_rows, |p| {
    setup(&p);
    // Two runs by two executors: rows next to each other share what they
    // have in common when read, and each must still say its own.
    p.run(&["upgrade", "--to", "2", "--owner", "first"]).ok();
    p.run(&["upgrade", "--owner", "second"]).ok();
    let run = p.run(&["history"]);
    run.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("VERSION  NAME  STATE    APPLIED AT  DURATION  APPLIED BY"),
        "{}",
        run.stdout
    );
    assert!(
        lines[1].starts_with("1        a     applied  <time>      # ms"),
        "{}",
        run.stdout
    );
    assert_eq!(lines.len(), 4);
    let doc = p.run(&["history", "--json"]).json();
    let rows = doc["migrations"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for key in [
        "version",
        "name",
        "state",
        "checksum",
        "applied_at",
        "duration_ms",
        "applied_by",
        "lock_token",
        "tool_version",
    ] {
        assert!(
            rows[0].get(key).is_some(),
            "history row has no `{key}`: {}",
            rows[0]
        );
    }
    assert_eq!(rows[0]["lock_token"], 1);
    let recorded =
        p.db.query("SELECT applied_by, tool_version FROM lockstep_history ORDER BY version");
    let shown: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            ["applied_by", "tool_version"]
                .iter()
                .map(|k| r[k].as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(shown, recorded);
    assert_ne!(recorded[1][0], recorded[2][0], "{recorded:?}");
});

both!(validate_reports_drift, |p| {
    setup(&p);
    p.run(&["upgrade", "--to", "2"]).ok();
    let run = p.run(&["validate"]);
    run.ok();
    assert_eq!(
        run.stdout,
        "ok: 3 migration files parsed; 2 applied with matching checksums; 1 pending\n"
    );
    p.migration(
        "1_a.sql",
        "-- upgrade\nCREATE TABLE a (id bigint);\n-- rollback\nDROP TABLE a;\n",
    );
    let recorded =
        p.db.value("SELECT checksum FROM lockstep_history WHERE version = 1");
    let run = p.run(&["validate"]);
    run.code(4);
    // The file, and both checksums, as `status --json` shows them in full.
    let now = p.run(&["status", "--json"]).json()["migrations"][0]["checksum"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        run.stderr.contains(&format!(
            "applied migration changed since it was applied: 1 a (migrations/1_a.sql is {}, history recorded {})",
            &now[..19],
            &recorded[..19]
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: restore the applied file, or run `lockstep fix checksums`"),
        "{}",
        run.stderr
    );
    let doc = p.run(&["validate", "--json"]).json();
    assert_eq!(doc["error"]["code"], "modified");
    let m = &doc["error"]["migrations"][0];
    assert_eq!(m["file"], "migrations/1_a.sql");
    assert_eq!(m["checksum"], now.as_str());
    assert_eq!(m["recorded_checksum"], recorded.as_str());
    assert_eq!(doc["exit_code"], 4);
});

both!(validate_checks_sections_for_the_engine, |p| {
    setup(&p);
    p.migration(
        "4_d.sql",
        "-- upgrade\nSELECT 1;\n-- rollback\nSELECT 'unterminated;\n",
    );
    let run = p.run(&["validate"]);
    run.code(2);
    assert!(
        run.stderr
            .contains("migrations/4_d.sql:4: unterminated string literal"),
        "{}",
        run.stderr
    );
});

// History times are the recorded ones to the millisecond, in one form on
// both engines: PostgreSQL's are formatted by lockstep, SQLite's stored so.
both!(history_times_are_the_recorded_times, |p| {
    setup(&p);
    p.run(&["upgrade"]).ok();
    let recorded = match p.backend() {
        crate::util::Backend::Postgres => p.db.query(
            "SELECT to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
             FROM lockstep_history ORDER BY version",
        ),
        crate::util::Backend::Sqlite => {
            p.db.query("SELECT applied_at FROM lockstep_history ORDER BY version")
        }
        crate::util::Backend::Mariadb => p.db.query(
            "SELECT CONCAT(LEFT(DATE_FORMAT(applied_at, '%Y-%m-%dT%H:%i:%s.%f'), 23), 'Z') \
             FROM lockstep_history ORDER BY version",
        ),
    };
    let recorded: Vec<&str> = recorded.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(recorded.len(), 3);
    let doc = p.run(&["history", "--json"]).json();
    let shown: Vec<&str> = doc["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["applied_at"].as_str().unwrap())
        .collect();
    assert_eq!(shown, recorded);
    assert!(
        shown.iter().all(|t| t.len() == 24 && t.ends_with('Z')),
        "{shown:?}"
    );
});

// `status --json` says which pending migrations will run outside a
// transaction on this database: those marked so, and on MariaDB those
// with DDL, which commits by itself there.
both!(
    status_says_which_migrations_run_outside_a_transaction,
    |p| {
        p.migration("1_t.sql", "-- upgrade\nCREATE TABLE t (id integer);\n");
        p.migration(
            "2_n.sql",
            "-- upgrade\n-- lockstep:no-transaction\nSELECT 1;\n",
        );
        p.migration("3_d.sql", "-- upgrade\nSELECT 1;\n");
        let doc = p.run(&["status", "--json"]).json();
        let outside: Vec<bool> = doc["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["no_transaction"].as_bool().unwrap())
            .collect();
        let ddl = p.backend() == crate::util::Backend::Mariadb;
        assert_eq!(outside, [ddl, true, false]);
    }
);

#[test]
fn a_sqlite_file_that_does_not_exist_is_said_to() {
    let p = Project::new(crate::util::Backend::Sqlite).unwrap();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    // A directory that does not exist: a mistyped path, for every command.
    for args in [&["status"][..], &["history"], &["upgrade"]] {
        let mut args = args.to_vec();
        args.extend(["-d", "sqlite://nonexistent_dir/x.db"]);
        let run = p.run(&args);
        run.code(1);
        assert!(
            run.stderr
                .contains("hint: the directory `nonexistent_dir` does not exist"),
            "{args:?}: {}",
            run.stderr
        );
    }
    // A file that does not exist yet reads as empty, and is said to.
    let run = p.run(&["status", "-d", "sqlite://new.db"]);
    run.ok();
    assert!(
        run.stderr
            .contains("note: the database file new.db does not exist yet"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("0 applied, 1 pending"),
        "{}",
        run.stdout
    );
    assert!(!p.path("new.db").exists());
    p.run(&["upgrade", "-d", "sqlite://new.db"]).ok();
    let run = p.run(&["status", "-d", "sqlite://new.db"]);
    assert_eq!(run.stderr, "");
}

both!(
    a_file_just_made_is_shown_by_status_and_refused_by_upgrade,
    |p| {
        p.migration(
            "1_a.sql",
            "-- upgrade\nCREATE TABLE a (id integer);\n-- rollback\nDROP TABLE a;\n",
        );
        p.run(&["upgrade"]).ok();
        let new = p.run(&["new", "add_b"]);
        new.ok();
        let file = new.stdout.trim().to_string();

        let status = p.run(&["status"]);
        status.ok();
        assert!(
            status.stdout.contains("pending (empty)"),
            "{}",
            status.stdout
        );
        assert!(
            status.stderr.contains(&format!(
            "hint: {file} has an empty upgrade section: write the SQL before `lockstep upgrade`"
        )),
            "{}",
            status.stderr
        );
        let doc = p.run(&["status", "--json"]).json();
        assert_eq!(doc["migrations"][0]["upgrade_empty"], false);
        assert_eq!(doc["migrations"][1]["upgrade_empty"], true);
        assert_eq!(doc["counts"]["pending"], 1);

        for command in ["upgrade", "validate"] {
            let run = p.run(&[command]);
            run.code(2);
            // Named with the line of its `-- upgrade` marker.
            let marker = std::fs::read_to_string(p.path(&file))
                .unwrap()
                .lines()
                .position(|l| l == "-- upgrade")
                .unwrap()
                + 1;
            assert!(
                run.stderr
                    .contains(&format!("{file}:{marker}: the upgrade section is empty")),
                "{command}: {}",
                run.stderr
            );
        }
        assert_eq!(p.db.history(), ["1 a applied"]);
        // Rolling back does not need it written.
        p.run(&["rollback"]).ok();
        assert!(p.db.history().is_empty());
    }
);

both!(history_records_the_durations_the_run_printed, |p| {
    let busy = p.busy_sql(0.05);
    p.migration(
        "1_a.sql",
        &format!("-- upgrade\nCREATE TABLE a (id integer);\n{busy}\n"),
    );
    p.migration(
        "2_b.sql",
        &format!("-- upgrade\n-- lockstep:no-transaction\nCREATE TABLE b (id integer);\n{busy}\n"),
    );
    p.migration("3_c.sql", "-- upgrade\nCREATE TABLE c (id integer);\n");
    p.migration("R__r.sql", &format!("{busy}\n"));
    let run = p.run(&["upgrade", "--json"]);
    run.ok();
    let printed: Vec<(String, u64)> = run.json()["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["duration_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut recorded: Vec<(String, u64)> =
        p.db.query("SELECT name, duration_ms FROM lockstep_history ORDER BY version")
            .into_iter()
            .map(|r| (r[0].clone(), r[1].parse().unwrap()))
            .collect();
    recorded.extend(
        p.db.query("SELECT name, duration_ms FROM lockstep_repeatable")
            .into_iter()
            .map(|r| (r[0].clone(), r[1].parse().unwrap())),
    );
    assert_eq!(printed, recorded);
    // Not a match of zeros: the busy ones took time.
    assert!(printed.iter().any(|(_, ms)| *ms > 0), "{printed:?}");

    // And as people read them: the line `upgrade` printed, the cell
    // `history` shows.
    p.migration(
        "4_d.sql",
        &format!("-- upgrade\nCREATE TABLE d (id integer);\n{busy}\n"),
    );
    // With the durations shown, as a person sees them.
    let shown_run = |args: &[&str]| {
        crate::util::Run::from(
            p.command(args)
                .env_remove("LOCKSTEP_STABLE_OUTPUT")
                .output()
                .unwrap(),
        )
    };
    let run = shown_run(&["upgrade"]);
    run.ok();
    let line = run.stdout.lines().next().unwrap();
    let shown = line
        .strip_prefix("applied 4 d (")
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("{line}"));
    let history = shown_run(&["history"]);
    let row = history
        .stdout
        .lines()
        .find(|l| l.starts_with("4 "))
        .unwrap();
    assert!(
        row.contains(&format!("  {shown}  ")),
        "{shown} not in {row}"
    );
});
