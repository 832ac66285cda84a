//! `database create`, `database drop` and `wait`, on every engine; the
//! result checked on the server (or the file system) directly.

use crate::util::{Project, TestDb};

/// A database of the test's server that does not exist yet, its URL, and
/// the SQL that says whether it exists (`None` on SQLite: a file).
fn another_database(p: &Project) -> (String, Option<String>) {
    let name = format!("lockstep_new_{}", std::process::id());
    match &p.db {
        TestDb::Sqlite { .. } => ("sqlite://new/app.db".to_string(), None),
        TestDb::Postgres { url, .. } => (
            crate::util::with_database(url, &name),
            Some(format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
            )),
        ),
        TestDb::Mariadb { url, .. } => (
            crate::util::with_database(url, &name),
            Some(format!(
                "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{name}'"
            )),
        ),
    }
}

both!(database_create_and_drop, |p| {
    let (url, exists_sql) = another_database(&p);
    std::fs::create_dir_all(p.path("new")).unwrap();
    let exists = || match &exists_sql {
        Some(sql) => p.db.value(sql) == "1",
        None => p.path("new/app.db").exists(),
    };
    assert!(!exists());

    let run = p.run(&["database", "create", "-d", &url, "--json"]);
    run.ok();
    assert_eq!(run.json()["result"], "created");
    assert!(exists());
    let again = p.run(&["database", "create", "-d", &url]);
    again.ok();
    assert!(
        again
            .stdout
            .ends_with("exists already: nothing to create\n"),
        "{}",
        again.stdout
    );
    // It is a database lockstep migrates.
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.run(&["upgrade", "-d", &url]).ok();

    // No terminal to ask on: refused, nothing dropped.
    let refused = p.run(&["database", "drop", "-d", &url]);
    refused.code(2);
    assert!(refused.stderr.contains("pass --yes"), "{}", refused.stderr);
    assert!(exists());
    let run = p.run(&["database", "drop", "--yes", "-d", &url, "--json"]);
    run.ok();
    assert_eq!(run.json()["result"], "dropped");
    assert!(!exists());
    let again = p.run(&["database", "drop", "--yes", "-d", &url, "--json"]);
    again.ok();
    assert_eq!(again.json()["result"], "not_there");
});

both!(wait_returns_once_the_server_answers, |p| {
    let run = p.run(&["wait", "--json"]);
    run.ok();
    assert!(run.json()["waited_ms"].is_u64());
    // Nothing listens there: the last try's error, after the timeout.
    let url = match p.backend() {
        crate::util::Backend::Mariadb => "mysql://u@127.0.0.1:1/x",
        _ => "postgres://u@127.0.0.1:1/x",
    };
    let run = p.run(&["wait", "--timeout", "1s", "-d", url]);
    run.code(1);
    assert!(
        run.stderr.contains("waiting: cannot connect to ")
            && run.stderr.contains("error: cannot connect to "),
        "{}",
        run.stderr
    );
});

#[test]
fn wait_waits_for_what_is_not_there_yet() {
    let p = Project::new(crate::util::Backend::Sqlite).unwrap();
    let waiter = p.spawn(&["wait", "-d", "sqlite://later/app.db"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::create_dir_all(p.path("later")).unwrap();
    let run = waiter.finish();
    run.ok();
    assert!(
        run.stdout
            .starts_with("sqlite://later/app.db accepts connections"),
        "{}",
        run.stdout
    );
}

#[test]
fn database_drop_asks_first_on_a_terminal() {
    let p = Project::new(crate::util::Backend::Sqlite).unwrap();
    p.run(&["database", "create"]).ok();
    let TestDb::Sqlite { path } = &p.db else {
        unreachable!()
    };
    let no = p.run_on_terminal("database drop", "n\n");
    no.ok();
    assert!(
        no.stdout.contains("and everything in it? [y/N]")
            && no.stdout.contains("nothing was dropped"),
        "{}",
        no.stdout
    );
    assert!(path.exists());
    p.run_on_terminal("database drop", "y\n").ok();
    assert!(!path.exists());
}

#[test]
fn wait_gives_up_at_once_on_a_wrong_password() {
    let Some(db) = crate::util::mariadb_database() else {
        return;
    };
    let TestDb::Mariadb { url, .. } = &db else {
        unreachable!()
    };
    let wrong = url.replacen("://root@", "://root:wrong@", 1);
    let p = Project::new(crate::util::Backend::Sqlite).unwrap();
    let run = p.run(&["wait", "--timeout", "60s", "-d", &wrong]);
    run.code(1);
    // No try again: a password does not mend by waiting.
    assert!(!run.stderr.contains("waiting:"), "{}", run.stderr);
    assert!(run.stderr.contains("Access denied"), "{}", run.stderr);
}
