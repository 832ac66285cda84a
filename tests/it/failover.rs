//! A PostgreSQL primary and its streaming standby, named together in one
//! multi-host URL: the primary crashes in the middle of a run and the
//! standby is promoted. The run fails clearly; a run again through the
//! same URL finds the new primary and completes, each migration once.
//! (Replication is asynchronous: what the crashed run wrote last may not
//! have reached the standby, and is then not there to take over.)

use std::time::Duration;

use crate::util::{wait_until, Backend, Child, PrivateServers, Project, Run, TestDb};

const LONG: Duration = Duration::from_secs(60);

fn url(ports: &[String], attrs: &str) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!(
        "postgres://postgres@{}/postgres?sslmode=disable&target_session_attrs={attrs}",
        hosts.join(",")
    )
}

fn server(port: &str) -> TestDb {
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
    TestDb::Postgres {
        admin_url: url.clone(),
        // Nothing to drop: the servers go with the test.
        name: "nothing_to_drop".into(),
        url,
    }
}

#[test]
fn a_failover_mid_run_fails_clearly_and_a_run_again_through_both_hosts_completes_once() {
    // Needs PostgreSQL's binaries, which the suite's server shows.
    if crate::util::pg_admin_url().is_none() {
        return;
    }
    let pair = PrivateServers::start("pg-pair");
    let (primary, standby) = (server(&pair.ports[0]), server(&pair.ports[1]));
    // The standby first in the URL: read-write skips it.
    let both = url(
        &[pair.ports[1].clone(), pair.ports[0].clone()],
        "read-write",
    );
    // A project directory; its own database is not used.
    let p = Project::new(Backend::Sqlite).unwrap();
    let run_on = |url: &str, args: &[&str]| Run::from(p.command_on(url, args).output().unwrap());
    let run = |args: &[&str]| run_on(&both, args);
    p.migration(
        "1_side.sql",
        "-- upgrade\nCREATE TABLE side (name text NOT NULL);\n",
    );
    run(&["upgrade"]).ok();
    assert_eq!(primary.history(), ["1 side applied"]);

    // A command that writes is refused a standby up front; one that reads
    // is served by it.
    let standby_only = url(&pair.ports, "standby");
    let refused = run_on(&standby_only, &["upgrade"]);
    refused.code(2);
    assert!(
        refused.stderr.contains("target_session_attrs=standby"),
        "{}",
        refused.stderr
    );
    wait_until("the standby replays migration 1", LONG, || {
        standby
            .try_query("SELECT 1 FROM lockstep_history")
            .is_ok_and(|r| r.len() == 1)
    });
    run_on(&standby_only, &["status", "--json"]).ok();

    p.migration(
        "2_slow.sql",
        "-- upgrade\nSELECT pg_sleep(10);\nINSERT INTO side VALUES ('m2');\n",
    );
    p.migration(
        "3_more.sql",
        "-- upgrade\nINSERT INTO side VALUES ('m3');\n",
    );
    let mut cmd = p.command_on(&both, &["upgrade", "--owner", "holder"]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let holder = Child::from(cmd.spawn().unwrap());
    wait_until("the holder runs migration 2", LONG, || {
        primary.value(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'lockstep holder' AND query LIKE '%pg_sleep%'",
        ) == "1"
    });
    pair.run("stop-primary");
    let failed = holder.finish();
    failed.code(1);
    assert!(
        failed.stderr.contains("migration 2 slow failed"),
        "{}",
        failed.stderr
    );
    assert!(
        failed
            .stderr
            .contains("hint: the connection to the database was lost"),
        "{}",
        failed.stderr
    );

    pair.run("promote-standby");
    wait_until("the standby takes writes", LONG, || {
        standby.value("SELECT pg_is_in_recovery()::text") == "false"
    });
    let again = run(&["upgrade"]);
    again.ok();
    // Checked with plain SQL on the new primary: each migration once.
    assert_eq!(
        standby.history(),
        ["1 side applied", "2 slow applied", "3 more applied"]
    );
    assert_eq!(
        standby.query("SELECT name, count(*) FROM side GROUP BY name ORDER BY name"),
        [["m2", "1"], ["m3", "1"]]
    );
    let status = run(&["lock", "status", "--json"]);
    status.ok();
    assert_eq!(status.json()["state"], "unlocked");
    // Whether the crashed run's hold reached the standby depends on the
    // replication's lag: either way the run again held and freed the lock.
    let log = run(&["lock", "log", "--json"]).json();
    assert_eq!(log["events"][0]["event"], "released", "{log:#}");
    assert!(
        ["acquired", "taken_over"].contains(&log["events"][1]["event"].as_str().unwrap()),
        "{log:#}"
    );
}
