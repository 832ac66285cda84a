//! Repeatable migrations (`R__`, `ROC__`, `RA__`) and upgrade callbacks
//! (`before-upgrade.sql`, `afterMigrate.sql`), checked with plain SQL on
//! every engine.

use crate::util::Project;

/// Each file appends its name to `runs`, numbered in the order they ran.
fn appends(what: &str) -> String {
    format!("INSERT INTO runs (what, n) SELECT '{what}', COUNT(*) FROM runs;\n")
}

/// What ran, in order.
fn ran(p: &Project) -> Vec<String> {
    p.db.query("SELECT what FROM runs ORDER BY n")
        .into_iter()
        .map(|row| row[0].clone())
        .collect()
}

/// Each repeatable's name and run count, as its table holds them.
fn repeat_rows(p: &Project) -> Vec<(String, String)> {
    p.db.query("SELECT name, runs FROM lockstep_repeatable ORDER BY name")
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect()
}

fn pairs(expected: &[(&str, i32)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(name, runs)| (name.to_string(), runs.to_string()))
        .collect()
}

both!(
    repeatables_run_after_the_versioned_by_name_and_again_on_change,
    |p| {
        p.migration(
        "1_runs.sql",
        "-- upgrade\nCREATE TABLE runs (what varchar(40), n integer);\n-- rollback\nDROP TABLE runs;\n",
    );
        p.migration("RA__a_always.sql", &appends("a_always"));
        p.migration("R__b.sql", &appends("b"));
        p.migration("ROC__c.sql", &appends("c"));
        // DDL: on MariaDB it runs outside a transaction, recorded after.
        p.migration(
            "R__v.sql",
            "DROP VIEW IF EXISTS v;\nCREATE VIEW v AS SELECT 1 AS one;\n",
        );

        let run = p.run(&["upgrade", "--json"]);
        run.ok();
        let doc = run.json();
        let steps = doc["migrations"].as_array().unwrap();
        let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["runs", "a_always", "b", "c", "v"]);
        assert_eq!(steps[0]["version"], 1);
        assert_eq!(steps[0]["kind"], "versioned");
        assert_eq!(steps[1]["version"], serde_json::Value::Null);
        assert_eq!(steps[1]["kind"], "repeatable");
        assert_eq!(ran(&p), ["a_always", "b", "c"]);
        assert_eq!(p.db.value("SELECT one FROM v"), "1");
        assert_eq!(
            repeat_rows(&p),
            pairs(&[("a_always", 1), ("b", 1), ("c", 1), ("v", 1)])
        );
        // Each recorded with the token of the run's lock.
        let token = p.db.value("SELECT max(token) FROM lockstep_lock");
        assert_eq!(
            p.db.value("SELECT count(*) FROM lockstep_repeatable WHERE lock_token IS NULL"),
            "0"
        );
        assert_eq!(
            p.db.value(&format!(
                "SELECT count(*) FROM lockstep_repeatable WHERE lock_token = {token}"
            )),
            "4"
        );

        // Again: only the runs-always one.
        let run = p.run(&["upgrade"]);
        run.ok();
        assert!(
            run.stdout.contains("applied repeatable a_always"),
            "{}",
            run.stdout
        );
        assert_eq!(ran(&p), ["a_always", "b", "c", "a_always"]);

        // A changed file runs again; its checksum is recorded.
        p.migration(
            "R__b.sql",
            &format!("-- now with a comment\n{}", appends("b")),
        );
        let status = p.run(&["status", "--json"]);
        status.ok();
        let entries = status.json()["repeatables"].clone();
        let b = entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "b")
            .unwrap()
            .clone();
        assert_eq!(b["state"], "changed");
        assert_eq!(b["runs_next"], true);
        assert_eq!(b["repeat"], "on_change");
        assert!(b["recorded_checksum"].is_string());
        p.run(&["status", "--check"]).code(4);
        p.run(&["upgrade"]).ok();
        assert_eq!(ran(&p), ["a_always", "b", "c", "a_always", "a_always", "b"]);
        assert_eq!(
            repeat_rows(&p),
            pairs(&[("a_always", 3), ("b", 2), ("c", 1), ("v", 1)])
        );
        let checksum =
            p.db.value("SELECT checksum FROM lockstep_repeatable WHERE name = 'b'");
        let history = p.run(&["history", "--json"]);
        history.ok();
        let repeats = history.json()["repeatables"].clone();
        assert_eq!(repeats[1]["name"], "b");
        assert_eq!(repeats[1]["checksum"], checksum.as_str());
        assert_eq!(repeats[1]["runs"], 2);
        // Only the versioned migration is in the history table.
        assert_eq!(p.db.history(), ["1 runs applied"]);

        // Rollback leaves the repeatables as they are.
        p.migration("RA__a_always.sql", "SELECT 1;\n");
        p.run(&["rollback"]).ok();
        assert!(!p.db.table_exists("runs"));
        assert_eq!(p.db.value("SELECT one FROM v"), "1");
        assert_eq!(
            repeat_rows(&p),
            pairs(&[("a_always", 3), ("b", 2), ("c", 1), ("v", 1)])
        );
    }
);

both!(an_upgrade_short_of_the_newest_leaves_the_repeatables, |p| {
    p.migration(
        "1_runs.sql",
        "-- upgrade\nCREATE TABLE runs (what varchar(40), n integer);\n",
    );
    p.migration("2_more.sql", &format!("-- upgrade\n{}", appends("2")));
    p.migration("R__r.sql", &appends("r"));
    p.run(&["upgrade", "--to", "1"]).ok();
    assert!(ran(&p).is_empty());
    assert!(!p.db.table_exists("lockstep_repeatable"));
    p.run(&["upgrade"]).ok();
    assert_eq!(ran(&p), ["2", "r"]);
});

both!(a_failing_repeatable_is_not_recorded_and_runs_again, |p| {
    p.migration(
        "1_runs.sql",
        "-- upgrade\nCREATE TABLE runs (what varchar(40), n integer);\n",
    );
    p.migration("R__r.sql", "SELEC 1;\n");
    let run = p.run(&["upgrade", "--json"]);
    run.code(1);
    let doc = run.json();
    assert_eq!(doc["error"]["code"], "migration_failed");
    assert_eq!(doc["error"]["file"], "migrations/R__r.sql");
    let named = &doc["error"]["migrations"][0];
    assert_eq!(named["kind"], "repeatable");
    assert_eq!(named["name"], "r");
    assert_eq!(named["version"], serde_json::Value::Null);
    assert!(doc["error"]["dirty"].is_null(), "{doc}");
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    // The versioned migration before it stays applied; nothing of the
    // repeatable is recorded.
    assert_eq!(p.db.history(), ["1 runs applied"]);
    assert_eq!(p.db.value("SELECT count(*) FROM lockstep_repeatable"), "0");
    let human = p.run(&["upgrade"]);
    human.code(1);
    assert!(
        human
            .stderr
            .contains("migration repeatable r failed (migrations/R__r.sql:1"),
        "{}",
        human.stderr
    );

    p.migration("R__r.sql", &appends("r"));
    p.run(&["upgrade"]).ok();
    assert_eq!(ran(&p), ["r"]);
    assert_eq!(repeat_rows(&p), pairs(&[("r", 1)]));
});

both!(
    callbacks_run_around_an_upgrade_that_applies_something,
    |p| {
        p.migration(
            "1_runs.sql",
            "-- upgrade\nCREATE TABLE runs (what varchar(40), n integer);\n",
        );
        // Before the first migration: the table it writes to must exist.
        p.migration(
        "before-upgrade.sql",
        "CREATE TABLE IF NOT EXISTS seen (what varchar(40));\nINSERT INTO seen VALUES ('before');\n",
    );
        // Flyway's name for the one after.
        p.migration("afterMigrate.sql", "INSERT INTO seen VALUES ('after');\n");
        let run = p.run(&["upgrade"]);
        run.ok();
        assert!(
            run.stdout.contains("ran callback before-upgrade.sql")
                && run.stdout.contains("ran callback after-upgrade.sql")
                && run.stdout.contains("applied 1 migration in"),
            "{}",
            run.stdout
        );
        let seen = || -> Vec<String> {
            p.db.query("SELECT what FROM seen")
                .into_iter()
                .map(|r| r[0].clone())
                .collect()
        };
        assert_eq!(seen(), ["before", "after"]);
        // Not recorded anywhere.
        assert_eq!(p.db.history(), ["1 runs applied"]);
        assert!(!p.db.table_exists("lockstep_repeatable"));

        // Nothing to apply: no callback runs, no lock is taken.
        let token = p.db.value("SELECT token FROM lockstep_lock");
        p.run(&["upgrade"]).ok();
        assert_eq!(seen(), ["before", "after"]);
        assert_eq!(p.db.value("SELECT token FROM lockstep_lock"), token);

        p.migration("2_more.sql", &format!("-- upgrade\n{}", appends("2")));
        let dry = p.run(&["upgrade", "--dry-run"]);
        dry.ok();
        assert!(
            dry.stdout.contains("would run callback before-upgrade.sql"),
            "{}",
            dry.stdout
        );
        assert!(
            dry.stdout.contains("dry run: 1 migration would be applied"),
            "{}",
            dry.stdout
        );
        p.run(&["upgrade"]).ok();
        assert_eq!(seen(), ["before", "after", "before", "after"]);
    }
);

both!(a_failing_callback_stops_the_upgrade, |p| {
    p.migration(
        "1_runs.sql",
        "-- upgrade\nCREATE TABLE runs (what varchar(40), n integer);\n",
    );
    p.migration("before-upgrade.sql", "SELEC 1;\n");
    let run = p.run(&["upgrade", "--json"]);
    run.code(1);
    let doc = run.json();
    assert_eq!(doc["error"]["migrations"][0]["kind"], "callback");
    assert_eq!(doc["error"]["migrations"][0]["name"], "before-upgrade.sql");
    assert!(!p.db.table_exists("runs"));
    assert!(p.db.history().is_empty());
});

both!(racing_runs_apply_a_repeatable_once, |p| {
    p.migration(
        "1_runs.sql",
        "-- upgrade\nCREATE TABLE runs (what varchar(40), n integer);\n",
    );
    p.migration("R__r.sql", &appends("r"));
    p.migration("after-upgrade.sql", &appends("after"));
    // Released at one instant: each waits for the lock, and finds the
    // repeatable run by the one before it.
    let runs: Vec<_> = p
        .spawn_together(8, &["upgrade"])
        .into_iter()
        .map(|c| c.finish())
        .collect();
    for run in &runs {
        run.ok();
    }
    assert_eq!(ran(&p), ["r", "after"]);
    assert_eq!(repeat_rows(&p), pairs(&[("r", 1)]));
});

both!(
    a_forced_release_stops_a_repeatable_between_statements,
    |p| {
        p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
        p.migration(
        "R__steps.sql",
        &format!(
            "-- lockstep:no-transaction\nCREATE TABLE first_step (id integer);\n{}\nCREATE TABLE last_step (id integer);\n",
            p.busy_sql(3.0)
        ),
    );
        let holder = p.spawn(&["upgrade", "--owner", "holder"]);
        crate::util::wait_until(
            "the first statement ran",
            std::time::Duration::from_secs(30),
            || p.db.table_exists("first_step"),
        );
        p.run(&["lock", "release", "--force", "--yes"]).ok();
        let run = holder.finish();
        run.code(5);
        assert!(!p.db.table_exists("last_step"));
        // Not recorded: it runs again, whole, at the next upgrade.
        assert_eq!(p.db.value("SELECT count(*) FROM lockstep_repeatable"), "0");
        p.migration(
        "R__steps.sql",
        "-- lockstep:no-transaction\nDROP TABLE IF EXISTS first_step;\nCREATE TABLE last_step (id integer);\n",
    );
        p.run(&["upgrade"]).ok();
        assert!(p.db.table_exists("last_step") && !p.db.table_exists("first_step"));
        assert_eq!(repeat_rows(&p), pairs(&[("steps", 1)]));
    }
);
