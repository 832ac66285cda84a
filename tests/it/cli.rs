use crate::util::{Backend, Project};

fn sqlite() -> Project {
    Project::new(Backend::Sqlite).unwrap()
}

#[test]
fn version() {
    let run = sqlite().run(&["--version"]);
    run.ok();
    assert_eq!(
        run.stdout,
        format!("lockstep {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_for_every_command() {
    let p = sqlite();
    let commands: &[&[&str]] = &[
        &[],
        &["init"],
        &["new"],
        &["upgrade"],
        &["rollback"],
        &["status"],
        &["history"],
        &["validate"],
        &["fix"],
        &["fix", "checksums"],
        &["fix", "missing"],
        &["fix", "dirty"],
        &["lock"],
        &["lock", "status"],
        &["lock", "release"],
        &["lock", "log"],
        &["lock-status"],
        &["unlock"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let run = p.run(&args);
        run.ok();
        assert!(
            run.stdout.contains("Usage: lockstep"),
            "{args:?}: {}",
            run.stdout
        );
    }
    let top = p.run(&["--help"]);
    for word in [
        "upgrade",
        "rollback",
        "status",
        "history",
        "validate",
        "fix",
        "Exit codes",
    ] {
        assert!(top.stdout.contains(word), "--help lacks {word}");
    }
}

#[test]
fn help_names_each_alias_once() {
    let p = sqlite();
    let run = p.run(&["lock", "release", "--help"]);
    run.ok();
    assert_eq!(run.stdout.matches("unlock").count(), 1, "{}", run.stdout);
    // `repair` is a command of its own, not `fix` without its subcommand.
    let run = p.run(&["repair", "--help"]);
    run.ok();
    assert!(run.stdout.contains("fix checksums"), "{}", run.stdout);
}

#[test]
fn usage_errors_exit_2_also_in_json() {
    let p = sqlite();
    p.run(&["frobnicate"]).code(2);
    p.run(&[]).code(2);
    let run = p.run(&["upgrade", "--to", "abc", "--json"]);
    run.code(2);
    let doc = run.json();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["exit_code"], 2);
    assert_eq!(doc["error"]["code"], "usage");
    assert_eq!(doc["command"], "");
    assert!(
        doc["error"]["message"].as_str().unwrap().contains("--to"),
        "{doc}"
    );
}

both!(global_flags_go_before_or_after_the_command, |p| {
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    let url = p.db.url();
    let mut before = p.command(&["--json", "-d", &url, "status"]);
    before.env_remove("LOCKSTEP_DATABASE_URL");
    let mut after = p.command(&["status", "--json", "--database-url", &url]);
    after.env_remove("LOCKSTEP_DATABASE_URL");
    for cmd in [&mut before, &mut after] {
        let doc = crate::util::Run::from(cmd.output().unwrap()).json();
        assert_eq!(doc["migrations"][0]["state"], "pending");
    }
    std::fs::rename(p.path("migrations"), p.path("db")).unwrap();
    p.run(&["upgrade", "-m", "db"]).ok();
    p.run(&["-m", "db", "status", "--check"]).ok();
});

#[test]
fn quiet_prints_only_errors() {
    let p = sqlite();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    let run = p.run(&["upgrade", "-q"]);
    run.ok();
    assert_eq!((run.stdout.as_str(), run.stderr.as_str()), ("", ""));
    p.migration("2_b.sql", "-- upgrade\nnot sql;\n");
    let run = p.run(&["upgrade", "-q"]);
    run.code(1);
    assert!(
        run.stderr.starts_with("error: migration 2 b failed"),
        "{}",
        run.stderr
    );
}

#[test]
fn verbose_shows_where_without_the_password() {
    let p = sqlite();
    let run = p.run(&["status", "-v"]);
    run.ok();
    assert!(run.stderr.contains("database: sqlite://"), "{}", run.stderr);
    assert!(
        run.stderr.contains("(from LOCKSTEP_DATABASE_URL)"),
        "{}",
        run.stderr
    );
}

#[test]
fn color_always_and_never() {
    let p = sqlite();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    let run = p.run(&["status", "--color", "always"]);
    assert!(
        run.stdout.contains("\x1b[33mpending\x1b[0m"),
        "{:?}",
        run.stdout
    );
    let run = p.run(&["rollback", "--to", "5", "--color", "always"]);
    assert!(
        run.stderr.starts_with("\x1b[1;31merror:\x1b[0m"),
        "{:?}",
        run.stderr
    );
    let mut cmd = p.command(&["status", "--color", "auto"]);
    cmd.env("NO_COLOR", "1");
    let run = crate::util::Run::from(cmd.output().unwrap());
    assert!(!run.stdout.contains('\x1b'));
    assert!(!p
        .run(&["status", "--color", "never"])
        .stdout
        .contains('\x1b'));
}

both!(every_command_prints_one_json_document, |p| {
    p.migration(
        "1_a.sql",
        "-- upgrade\nCREATE TABLE a (id integer);\n-- rollback\nDROP TABLE a;\n",
    );
    let commands: &[(&[&str], &str)] = &[
        (&["upgrade", "--dry-run"], "upgrade"),
        (&["upgrade"], "upgrade"),
        (&["status"], "status"),
        (&["history"], "history"),
        (&["validate"], "validate"),
        (&["fix", "checksums"], "fix checksums"),
        (&["fix", "missing"], "fix missing"),
        (&["rollback", "--dry-run"], "rollback"),
        (&["rollback"], "rollback"),
        (&["new", "b"], "new"),
    ];
    for (command, name) in commands {
        let mut args = command.to_vec();
        args.push("--json");
        let run = p.run(&args);
        run.ok();
        let doc = run.json();
        assert_eq!(doc["schema"], 1, "{command:?}");
        assert_eq!(doc["command"], *name, "{command:?}");
        assert_eq!(doc["ok"], true, "{command:?}");
        assert!(run.stderr.is_empty(), "{command:?}: {}", run.stderr);
    }
});

#[test]
fn exit_codes() {
    let p = sqlite();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.run(&["status"]).code(0);
    p.run(&["status", "--check"]).code(4);
    p.run(&["upgrade", "--bogus"]).code(2);
    p.run(&["upgrade"]).code(0);
    p.migration("2_b.sql", "-- upgrade\nSELECT * FROM nowhere;\n");
    p.run(&["upgrade"]).code(1);
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id bigint);\n");
    p.run(&["upgrade"]).code(4);
}

#[test]
fn quickstart_example_applies_and_rolls_back() {
    let p = sqlite();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/quickstart/lockstep.toml"
    );
    let url = p.db.url();
    let run = |args: &[&str]| {
        let mut all = vec!["-c", example, "-d", &url];
        all.extend_from_slice(args);
        p.run(&all)
    };
    run(&["upgrade"]).ok();
    assert_eq!(p.db.value("SELECT title FROM posts"), "Hello");
    run(&["status", "--check"]).ok();
    run(&["rollback", "--count", "4"]).ok();
    assert!(!p.db.table_exists("users"));
    run(&["upgrade"]).ok();
    assert_eq!(p.db.history().len(), 4);
}

#[test]
fn completions_for_every_shell() {
    let p = sqlite();
    for (shell, marker) in [
        ("bash", "_lockstep()"),
        ("zsh", "#compdef lockstep"),
        ("fish", "complete -c lockstep"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[lockstep]"),
    ] {
        let run = p.run(&["completions", shell]);
        run.ok();
        assert!(run.stdout.contains(marker), "{shell}: {}", run.stdout);
        for word in ["upgrade", "rollback", "single-transaction", "lock"] {
            assert!(run.stdout.contains(word), "{shell} lacks {word}");
        }
    }
    p.run(&["completions", "tcsh"]).code(2);
}

#[test]
fn manual_pages_for_lockstep_and_each_command() {
    let p = sqlite();
    let top = p.run(&["man"]);
    top.ok();
    assert!(top.stdout.contains(".TH lockstep 1"), "{}", top.stdout);
    assert!(top.stdout.contains("upgrade"), "{}", top.stdout);
    let upgrade = p.run(&["man", "upgrade"]);
    upgrade.ok();
    assert!(
        upgrade.stdout.contains(".TH lockstep-upgrade 1"),
        "{}",
        upgrade.stdout
    );
    assert!(
        upgrade.stdout.contains("single\\-transaction"),
        "{}",
        upgrade.stdout
    );
    let nested = p.run(&["man", "lock", "status"]);
    nested.ok();
    assert!(
        nested.stdout.contains(".TH lockstep-lock-status 1"),
        "{}",
        nested.stdout
    );
    let unknown = p.run(&["man", "frobnicate"]);
    unknown.code(2);
    assert!(unknown.stderr.contains("no command `lockstep frobnicate`"));
    p.run(&["man", "--dir", "pages"]).ok();
    for page in ["lockstep.1", "lockstep-upgrade.1", "lockstep-lock-status.1"] {
        assert!(p.path(&format!("pages/{page}")).is_file(), "{page}");
    }
}
