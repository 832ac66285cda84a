//! Server faults under a running holder: a restart, a statement timeout,
//! and a dropped connection of the holder and of its heartbeat. Each time
//! the run fails clearly (or carries on), the lock is recovered without a
//! manual step, and nothing is applied twice.

use std::time::Duration;

use crate::util::{wait_until, Backend, Child, PrivateServers, Project, TestDb};

const LONG: Duration = Duration::from_secs(60);

fn setup(p: &Project, first: &str) {
    p.migration(
        "0_side.sql",
        "-- upgrade\nCREATE TABLE side (name text NOT NULL);\n",
    );
    p.migration(
        "1_m1.sql",
        &format!("-- upgrade\n{first}\nINSERT INTO side VALUES ('m1');\n"),
    );
    for i in 2..=4 {
        p.migration(
            &format!("{i}_m{i}.sql"),
            &format!("-- upgrade\nINSERT INTO side VALUES ('m{i}');\n"),
        );
    }
}

#[track_caller]
fn each_once(p: &Project) {
    let rows =
        p.db.query("SELECT name, count(*) FROM side GROUP BY name ORDER BY name");
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r[1] == "1"), "{rows:?}");
    assert_eq!(p.db.history().len(), 5);
}

/// The holder's main session is running migration 1.
fn in_migration_1(p: &Project) -> bool {
    p.db.value(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'lockstep holder' \
         AND query LIKE '%pg_sleep%'",
    ) == "1"
}

fn spawn_holder(p: &Project) -> Child {
    p.spawn(&["upgrade", "--owner", "holder"])
}

#[test]
fn server_restart_during_a_run() {
    // Needs the suite's server only to be configured; the restart happens
    // on a server of this test's own.
    if crate::util::pg_admin_url().is_none() {
        return;
    }
    let server = PrivateServers::start("private-pg");
    let admin = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
        server.ports[0]
    );
    let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
    client
        .batch_execute("CREATE DATABASE restart_test")
        .unwrap();
    let url = crate::util::with_database(&admin, "restart_test");
    // A project directory; its own database is not used.
    let p = Project::new(Backend::Sqlite).unwrap();
    let db = TestDb::Postgres {
        admin_url: admin.clone(),
        name: "restart_test".into(),
        url: url.clone(),
    };
    setup(&p, "SELECT pg_sleep(10);");
    let mut cmd = p.command_on(&url, &["upgrade", "--owner", "holder"]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let holder = Child::from(cmd.spawn().unwrap());
    wait_until("the holder runs migration 1", LONG, || {
        db.value(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'lockstep holder' AND query LIKE '%pg_sleep%'",
        ) == "1"
    });
    server.run("restart-pg");
    let run = holder.finish();
    run.code(1);
    assert!(
        run.stderr.contains("migration 1 m1 failed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("terminating connection due to administrator command")
            || run.stderr.contains("connection"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: the connection to the database was lost"),
        "{}",
        run.stderr
    );
    // The lock survived the restart in its table, but its session did not:
    // the next run takes over at once, with no manual step.
    p.migration("1_m1.sql", "-- upgrade\nINSERT INTO side VALUES ('m1');\n");
    let mut cmd = p.command(&["upgrade"]);
    cmd.env("LOCKSTEP_DATABASE_URL", &url);
    let next = crate::util::Run::from(cmd.output().unwrap());
    next.ok();
    assert!(
        next.stderr
            .contains("took over the migration lock from holder: the holder's session is gone"),
        "{}",
        next.stderr
    );
    let rows = db.query("SELECT name, count(*) FROM side GROUP BY name ORDER BY name");
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r[1] == "1"), "{rows:?}");
}

#[test]
fn statement_timeout_fails_the_migration_and_releases_the_lock() {
    let Some(p) = Project::new(Backend::Postgres) else {
        return;
    };
    p.db.exec(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET statement_timeout = ''1s''', current_database()); END $$",
    );
    setup(&p, "SELECT pg_sleep(3);");
    let run = p.run(&["upgrade"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("canceling statement due to statement timeout (57014)"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db.history(), ["0 side applied"]);
    assert_eq!(
        p.db.value("SELECT count(*) FROM lockstep_lock WHERE owner IS NOT NULL"),
        "0",
        "the lock was released"
    );
    p.migration("1_m1.sql", "-- upgrade\nINSERT INTO side VALUES ('m1');\n");
    p.run(&["upgrade"]).ok();
    each_once(&p);
}

#[test]
fn terminated_holder_connection_is_recovered() {
    let Some(p) = Project::new(Backend::Postgres) else {
        return;
    };
    setup(&p, "SELECT pg_sleep(10);");
    let holder = spawn_holder(&p);
    wait_until("the holder runs migration 1", LONG, || in_migration_1(&p));
    p.db.exec(
        "SELECT pg_terminate_backend(session_pid::int) FROM lockstep_lock WHERE owner = 'holder'",
    );
    holder
        .finish()
        .lost_connection("terminating connection due to administrator command");
    p.migration("1_m1.sql", "-- upgrade\nINSERT INTO side VALUES ('m1');\n");
    let next = p.run(&["upgrade"]);
    next.ok();
    assert!(
        next.stderr.contains("the holder's session is gone"),
        "{}",
        next.stderr
    );
    each_once(&p);
}

#[test]
fn terminated_heartbeat_connection_reconnects() {
    let Some(p) = Project::new(Backend::Postgres) else {
        return;
    };
    p.file("lockstep.toml", "[lock]\nttl = \"1500ms\"\n");
    setup(&p, "SELECT pg_sleep(4);");
    let holder = spawn_holder(&p);
    wait_until("the holder runs migration 1", LONG, || in_migration_1(&p));
    let heartbeat = "SELECT a.pid FROM pg_stat_activity a, lockstep_lock l \
                     WHERE a.datname = current_database() AND a.application_name = 'lockstep holder' AND l.owner = 'holder' AND a.pid <> l.session_pid";
    wait_until("the heartbeat's connection", LONG, || {
        p.db.query(heartbeat).len() == 1
    });
    let first = p.db.value(heartbeat);
    p.db.exec(&format!("SELECT pg_terminate_backend({first})"));
    // The heartbeat reconnects on its next beat.
    wait_until("a new heartbeat connection", LONG, || {
        p.db.query(heartbeat).first().is_some_and(|r| r[0] != first)
    });
    holder.finish().ok();
    each_once(&p);
    assert!(
        !p.db
            .query("SELECT event FROM lockstep_lock_log")
            .iter()
            .any(|r| r[0] == "taken_over"),
        "nobody took over a live holder"
    );
}
