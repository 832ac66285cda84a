use crate::util::Project;

fn four(p: &Project) {
    for (v, t) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        p.migration(
            &format!("{v}_{t}.sql"),
            &format!("-- upgrade\nCREATE TABLE {t} (id integer);\n-- rollback\nDROP TABLE {t};\n"),
        );
    }
    p.run(&["upgrade"]).ok();
}

both!(reverts_the_newest_by_default, |p| {
    four(&p);
    let run = p.run(&["rollback"]);
    run.ok();
    insta::assert_snapshot!(p.snapshot("stdout"), run.stdout);
    assert_eq!(
        p.db.history(),
        ["1 a applied", "2 b applied", "3 c applied"]
    );
    assert!(!p.db.table_exists("d"));
    p.run(&["down"]).ok();
    assert_eq!(p.db.history().len(), 2);
});

both!(count_and_to, |p| {
    four(&p);
    p.run(&["rollback", "--count", "2"]).ok();
    assert_eq!(p.db.history(), ["1 a applied", "2 b applied"]);
    p.run(&["upgrade"]).ok();
    p.run(&["rollback", "--to", "1"]).ok();
    assert_eq!(p.db.history(), ["1 a applied"]);
    assert!(p.db.table_exists("a") && !p.db.table_exists("b"));
    let run = p.run(&["rollback", "--to", "3"]);
    run.code(2);
    assert!(
        run.stderr.contains("version 3 is not applied"),
        "{}",
        run.stderr
    );
});

both!(
    missing_rollback_section_stops_before_anything_is_reverted,
    |p| {
        four(&p);
        p.migration("5_e.sql", "-- upgrade\nCREATE TABLE e (id integer);\n");
        p.migration(
            "6_f.sql",
            "-- upgrade\nCREATE TABLE f (id integer);\n-- rollback\nDROP TABLE f;\n",
        );
        p.run(&["upgrade"]).ok();
        let run = p.run(&["rollback", "--count", "3"]);
        run.code(4);
        insta::assert_snapshot!("stderr", run.stderr);
        // Nothing was reverted, not even 6, which has a rollback section.
        assert_eq!(p.db.history().len(), 6);
        assert!(p.db.table_exists("f"));
        let doc = p.run(&["rollback", "--count", "3", "--json"]).json();
        assert_eq!(doc["error"]["code"], "no_rollback_section");
        assert_eq!(doc["error"]["migrations"][0]["version"], 5);
        // As the hint says: the section added, its checksum recorded.
        assert!(run.stderr.contains("then run `lockstep fix checksums`"));
        p.migration(
            "5_e.sql",
            "-- upgrade\nCREATE TABLE e (id integer);\n-- rollback\nDROP TABLE e;\n",
        );
        p.run(&["rollback", "--count", "3"]).code(4);
        p.run(&["fix", "checksums"]).ok();
        p.run(&["rollback", "--count", "3"]).ok();
        assert_eq!(p.db.history().len(), 3);
    }
);

both!(dry_run_changes_nothing, |p| {
    four(&p);
    let run = p.run(&["rollback", "--to", "2", "--dry-run"]);
    run.ok();
    // MariaDB says which would run outside a transaction: its DDL does.
    let outside = if p.backend() == Backend::Mariadb {
        " (no transaction)"
    } else {
        ""
    };
    assert_eq!(
        run.stdout,
        format!("would roll back 4 d{outside}\nwould roll back 3 c{outside}\ndry run: 2 migrations would be rolled back; nothing was changed\n")
    );
    assert_eq!(p.db.history().len(), 4);
});

both!(failing_rollback_keeps_the_migration_applied, |p| {
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n-- rollback\nDROP TABLE a;\nDROP TABLE not_there;\n");
    p.run(&["upgrade"]).ok();
    let run = p.run(&["rollback"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("rollback of migration 1 a failed (migrations/1_a.sql"),
        "{}",
        run.stderr
    );
    if p.backend() == Backend::Mariadb {
        // Its DDL commits statement by statement: the first ran, so the
        // migration is dirty, and says how far it got.
        assert!(
            run.stderr.contains("1 of 2 statements ran"),
            "{}",
            run.stderr
        );
        assert_eq!(p.db.history(), ["1 a started"]);
        assert!(!p.db.table_exists("a"));
        return;
    }
    assert_eq!(p.db.history(), ["1 a applied"]);
    assert!(p.db.table_exists("a"));
});

both!(modified_file_is_not_rolled_back, |p| {
    four(&p);
    p.migration(
        "4_d.sql",
        "-- upgrade\nCREATE TABLE d (id integer);\n-- rollback\nDROP TABLE d; -- edited\n",
    );
    p.run(&["rollback"]).code(4);
    // An older modified file does not stop reverting the newest.
    p.migration(
        "4_d.sql",
        "-- upgrade\nCREATE TABLE d (id integer);\n-- rollback\nDROP TABLE d;\n",
    );
    p.migration(
        "1_a.sql",
        "-- upgrade\nCREATE TABLE a (id integer); -- edited\n-- rollback\nDROP TABLE a;\n",
    );
    p.run(&["rollback"]).ok();
});

both!(nothing_to_roll_back, |p| {
    let run = p.run(&["rollback"]);
    run.ok();
    assert_eq!(run.stdout, "nothing to roll back\n");
    assert!(!p.db.table_exists("lockstep_history"));
});

both!(flyway_undo_files_roll_back_their_migrations, |p| {
    p.migration("V1__users.sql", "CREATE TABLE users (id integer);\n");
    p.migration("U1__users.sql", "DROP TABLE users;\n");
    p.migration("V2__posts.sql", "CREATE TABLE posts (id integer);\n");
    p.run(&["upgrade"]).ok();
    assert!(p.db.table_exists("users") && p.db.table_exists("posts"));
    // V2 has no undo file: refused, nothing reverted.
    let refused = p.run(&["rollback"]);
    refused.code(4);
    assert!(p.db.table_exists("posts"));
    p.migration("U2__posts.sql", "DROP TABLE posts;\n");
    // The undo file is part of the migration's checksum, as a pair's
    // second file: `fix checksums` records it.
    p.run(&["fix", "checksums"]).ok();
    p.run(&["rollback", "--count", "2"]).ok();
    assert!(!p.db.table_exists("users") && !p.db.table_exists("posts"));
    assert!(p.db.history().is_empty());
});

both!(rollback_all_reverts_everything_after_confirmation, |p| {
    four(&p);
    p.run(&["upgrade"]).ok();
    // No terminal to ask on: refused, nothing reverted.
    let run = p.run(&["rollback", "--all"]);
    run.code(2);
    assert!(run.stderr.contains("pass --yes"), "{}", run.stderr);
    assert_eq!(p.db.history().len(), 4);
    let dry = p.run(&["rollback", "--all", "--dry-run"]);
    dry.ok();
    assert!(
        dry.stdout
            .contains("dry run: 4 migrations would be rolled back"),
        "{}",
        dry.stdout
    );
    // On a terminal it asks first.
    let no = p.run_on_terminal("rollback --all", "n\n");
    no.ok();
    assert!(
        no.stdout.contains("roll back all 4 applied migrations on ")
            && no.stdout.contains("[y/N]")
            && no.stdout.contains("nothing was rolled back"),
        "{}",
        no.stdout
    );
    assert_eq!(p.db.history().len(), 4);
    let yes = p.run_on_terminal("rollback --all", "y\n");
    yes.ok();
    assert!(p.db.history().is_empty());
    p.run(&["upgrade"]).ok();
    p.run(&["rollback", "--all", "--yes"]).ok();
    assert!(p.db.history().is_empty());
    p.run(&["rollback", "--all", "--to", "1"]).code(2);
});
