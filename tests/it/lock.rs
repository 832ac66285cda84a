//! The lock's promises, with real processes against real servers, checked
//! with plain SQL.

use std::time::{Duration, Instant};

use crate::util::{wait_until, Backend, Project};

const LONG: Duration = Duration::from_secs(60);

/// Migrations that each insert their name into `side`, so that plain SQL
/// can count how often each ran.
fn side_effects(p: &Project, n: usize, body: impl Fn(usize) -> String) {
    p.migration(
        "0000_side.sql",
        "-- upgrade\nCREATE TABLE side (name text NOT NULL);\n",
    );
    for i in 1..=n {
        p.migration(
            &format!("{i:04}_m{i}.sql"),
            &format!(
                "-- upgrade\n{}\nINSERT INTO side VALUES ('m{i}');\n",
                body(i)
            ),
        );
    }
}

/// Every side effect happened exactly once.
#[track_caller]
fn each_once(p: &Project, n: usize) {
    let rows =
        p.db.query("SELECT name, count(*) FROM side GROUP BY name ORDER BY name");
    assert_eq!(rows.len(), n, "{rows:?}");
    for row in &rows {
        assert_eq!(row[1], "1", "{} ran {} times", row[0], row[1]);
    }
}

fn holder_of(p: &Project) -> Option<String> {
    if !p.db.table_exists("lockstep_lock") {
        return None;
    }
    p.db.query("SELECT owner FROM lockstep_lock WHERE owner IS NOT NULL")
        .first()
        .map(|r| r[0].clone())
}

fn applied(p: &Project) -> usize {
    if p.db.table_exists("lockstep_history") {
        p.db.history().len()
    } else {
        0
    }
}

fn events(p: &Project) -> Vec<String> {
    p.db.query("SELECT event FROM lockstep_lock_log ORDER BY id")
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

fn short_ttl(p: &Project, ttl: &str) {
    p.file("lockstep.toml", &format!("[lock]\nttl = \"{ttl}\"\n"));
}

both!(racing_processes_apply_each_migration_once, |p| {
    side_effects(&p, 30, |_| String::new());
    let started = Instant::now();
    // Released at one instant, on a database that has no lockstep tables
    // yet: every run creates them and the lock row at once.
    let children = p.spawn_together(20, &["upgrade"]);
    let runs: Vec<_> = children.into_iter().map(|c| c.finish()).collect();
    println!(
        "{} processes, 31 migrations: {:?}",
        runs.len(),
        started.elapsed()
    );
    for run in &runs {
        run.ok();
    }
    each_once(&p, 30);
    assert_eq!(p.db.history().len(), 31);
    // Tokens only grow, in the log and in history.
    p.db.assert_tokens_only_grow();
    assert_eq!(
        p.db.value("SELECT count(*) FROM lockstep_history WHERE lock_token IS NULL"),
        "0"
    );
    assert_eq!(
        p.run(&["lock", "status", "--json"]).json()["state"],
        "unlocked"
    );
});

both!(
    sigkill_in_a_migration_is_recovered_without_a_manual_step,
    |p| {
        p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
        // Migration 2 changes rows only: a transaction on every engine
        // (DDL commits by itself on MariaDB).
        p.migration(
            "2_long.sql",
            &format!(
                "-- upgrade\nINSERT INTO a VALUES (1);\n{}\n",
                p.busy_sql(60.0)
            ),
        );
        p.migration("3_c.sql", "-- upgrade\nCREATE TABLE c (id integer);\n");
        let holder = p.spawn(&["upgrade", "--owner", "holder"]);
        wait_until("the holder applied 1 and holds the lock", LONG, || {
            applied(&p) == 1 && holder_of(&p).as_deref() == Some("holder")
        });
        std::thread::sleep(Duration::from_millis(300));
        holder.signal(libc::SIGKILL);
        let killed = Instant::now();
        let run = holder.finish();
        assert_eq!(run.code, -1, "killed by a signal");
        // The pending file may change: it was never applied.
        p.migration("2_long.sql", "-- upgrade\nINSERT INTO a VALUES (2);\n");
        let next = p.run(&["upgrade"]);
        next.ok();
        println!(
            "{:?}: recovered and finished {:?} after SIGKILL",
            p.backend(),
            killed.elapsed()
        );
        assert!(
            next.stderr
                .contains("took over the migration lock from holder"),
            "{}",
            next.stderr
        );
        assert_eq!(
            p.db.history(),
            ["1 a applied", "2 long applied", "3 c applied"]
        );
        // The killed run's row was rolled back with its transaction.
        assert_eq!(p.db.value("SELECT count(*) FROM a WHERE id = 1"), "0");
        let takeover = p.db.query(
            "SELECT previous_owner, detail FROM lockstep_lock_log WHERE event = 'taken_over'",
        );
        assert_eq!(takeover.len(), 1, "{takeover:?}");
        assert_eq!(takeover[0][0], "holder");
        assert_eq!(
            p.run(&["lock", "status", "--json"]).json()["state"],
            "unlocked"
        );
    }
);

// A migration outside a transaction (every migration with DDL on
// MariaDB) commits statement by statement: a forced release lands between
// two of them, and the holder stops before the next, exit 5, the migration
// dirty and the statements after it not run.
both!(
    forced_release_stops_a_migration_outside_a_transaction_between_statements,
    |p| {
        p.migration(
        "1_steps.sql",
        &format!(
            "-- upgrade\n-- lockstep:no-transaction\nCREATE TABLE first_step (id integer);\n{}\nCREATE TABLE last_step (id integer);\n",
            p.busy_sql(3.0)
        ),
    );
        let holder = p.spawn(&["upgrade", "--owner", "holder"]);
        wait_until("the first statement ran", LONG, || {
            p.db.table_exists("first_step")
        });
        p.run(&["lock", "release", "--force", "--yes"]).ok();
        let run = holder.finish();
        run.code(5);
        assert!(
            run.stderr.contains("lost the migration lock"),
            "{}",
            run.stderr
        );
        assert!(!p.db.table_exists("last_step"));
        assert_eq!(p.db.history(), ["1 steps started"]);
        let lost =
            p.db.query("SELECT detail FROM lockstep_lock_log WHERE event = 'lost'");
        assert_eq!(
            lost,
            [["the lease was gone after 2 of 3 statements outside a transaction".to_string()]]
        );
    }
);

both!(
    forced_release_stops_the_holder_before_its_next_migration,
    |p| {
        let busy = p.busy_sql(1.0);
        side_effects(&p, 5, |_| busy.clone());
        let holder = p.spawn(&["upgrade", "--owner", "holder"]);
        wait_until("the holder applied two migrations", LONG, || {
            applied(&p) >= 2
        });
        let release = p.run(&["lock", "release", "--force", "--yes"]);
        release.ok();
        assert!(
            release
                .stdout
                .contains("released the migration lock held by holder"),
            "{}",
            release.stdout
        );
        let run = holder.finish();
        run.code(5);
        assert!(
            run.stderr.contains("lost the migration lock"),
            "{}",
            run.stderr
        );
        // Nothing was recorded after the release.
        let after = match p.backend() {
        Backend::Postgres | Backend::Mariadb => p.db.value(
            "SELECT count(*) FROM lockstep_history WHERE applied_at > (SELECT at FROM lockstep_lock_log WHERE event = 'force_released')",
        ),
        Backend::Sqlite => p.db.value(
            "SELECT count(*) FROM lockstep_history WHERE (julianday(applied_at) - 2440587.5) * 86400000.0 > (SELECT at FROM lockstep_lock_log WHERE event = 'force_released')",
        ),
    };
        assert_eq!(after, "0");
        let recorded = applied(&p);
        assert!(recorded < 6, "the holder went on after the release");
        assert_eq!(
            p.db.value("SELECT count(*) FROM side"),
            (recorded - 1).to_string()
        );
        assert!(events(&p).contains(&"lost".to_string()), "{:?}", events(&p));
        p.run(&["upgrade"]).ok();
        each_once(&p, 5);
    }
);

both!(a_migration_longer_than_the_ttl_keeps_the_lock, |p| {
    short_ttl(&p, "1s");
    let busy = p.busy_sql(3.0);
    side_effects(&p, 2, |i| if i == 1 { busy.clone() } else { String::new() });
    let holder = p.spawn(&["upgrade", "--owner", "holder"]);
    wait_until("the holder holds the lock", LONG, || {
        holder_of(&p).as_deref() == Some("holder")
    });
    let waiter = p.spawn(&["upgrade", "--owner", "waiter"]);
    let (holder, waiter) = (holder.finish(), waiter.finish());
    holder.ok();
    waiter.ok();
    assert!(
        waiter.stderr.contains("waiting for lock held by holder"),
        "{}",
        waiter.stderr
    );
    each_once(&p, 2);
    assert!(
        !events(&p).contains(&"taken_over".to_string()),
        "{:?}",
        events(&p)
    );
    let by: Vec<String> =
        p.db.query("SELECT DISTINCT applied_by FROM lockstep_history")
            .into_iter()
            .map(|r| r[0].clone())
            .collect();
    assert_eq!(by, ["holder"]);
});

both!(no_wait_and_lock_timeout_exit_3_naming_the_holder, |p| {
    p.migration("1_long.sql", &format!("-- upgrade\n{}\n", p.busy_sql(60.0)));
    let holder = p.spawn(&["upgrade", "--owner", "holder"]);
    wait_until("the holder holds the lock", LONG, || {
        holder_of(&p).as_deref() == Some("holder")
    });
    let pid = holder.pid();
    let run = p.run(&["upgrade", "--no-wait"]);
    run.code(3);
    assert!(
        run.stderr.contains("held by holder (host "),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&format!("pid {pid}")), "{}", run.stderr);
    assert!(
        run.stderr.contains("hint: run `lockstep lock status`"),
        "{}",
        run.stderr
    );
    let started = Instant::now();
    let run = p.run(&["upgrade", "--lock-timeout", "2s", "--json"]);
    let waited = started.elapsed();
    run.code(3);
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    let doc = run.json();
    assert_eq!(doc["error"]["code"], "lock_timeout");
    assert_eq!(doc["error"]["holder"]["pid"], pid);
    assert_eq!(doc["error"]["holder"]["owner"], "holder");
    holder.signal(libc::SIGKILL);
    holder.finish();
});

both!(
    lock_status_and_log_show_the_holder_and_growing_tokens,
    |p| {
        p.migration("1_long.sql", &format!("-- upgrade\n{}\n", p.busy_sql(2.0)));
        assert_eq!(
            p.run(&["lock", "status", "--json"]).json()["state"],
            "unlocked"
        );
        let holder = p.spawn(&["upgrade", "--owner", "holder"]);
        wait_until("the holder holds the lock", LONG, || {
            holder_of(&p).as_deref() == Some("holder")
        });
        let status = p.run(&["lock", "status", "--json"]);
        status.ok();
        let doc = status.json();
        assert_eq!(doc["state"], "locked");
        assert_eq!(doc["pid"], holder.pid());
        assert_eq!(doc["owner"], "holder");
        assert_eq!(doc["command"], "upgrade");
        assert_eq!(doc["holder_alive"], true);
        for key in [
            "scope",
            "token",
            "host",
            "acquired_at",
            "heartbeat_at",
            "expires_at",
        ] {
            assert!(!doc[key].is_null(), "{key} is null: {doc}");
        }
        p.run(&["lock", "status", "--check"]).code(3);
        p.run(&["lock-status", "--check"]).code(3);
        p.run(&["lock:status", "--check"]).code(3);
        let metrics = p.run(&["lock", "status", "--format", "prometheus"]);
        assert!(
            metrics
                .stdout
                .contains("lockstep_lock_held{scope=\"lockstep_history\"} 1"),
            "{}",
            metrics.stdout
        );
        let human = p.run(&["lock", "status"]);
        assert!(
            human.stdout.starts_with("LOCKED\n  owner         holder\n"),
            "{}",
            human.stdout
        );
        holder.finish().ok();
        p.migration("2_more.sql", "-- upgrade\nSELECT 1;\n");
        p.run(&["upgrade", "--owner", "second"]).ok();
        p.run(&["lock", "status", "--check"]).ok();
        assert_eq!(
            p.run(&["lock", "status", "--json"]).json()["state"],
            "unlocked"
        );
        let log = p.run(&["lock", "log", "--json"]).json();
        let events: Vec<(String, i64, String)> = log["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["event"].as_str().unwrap().to_string(),
                    e["token"].as_i64().unwrap(),
                    e["owner"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            events,
            [
                ("released".into(), 2, "second".into()),
                ("acquired".into(), 2, "second".into()),
                ("released".into(), 1, "holder".into()),
                ("acquired".into(), 1, "holder".into()),
            ]
        );
        let human = p.run(&["lock", "log", "--limit", "1"]);
        assert_eq!(human.stdout.lines().count(), 2, "{}", human.stdout);
        assert!(human.stdout.contains("released  2"), "{}", human.stdout);
    }
);

both!(sigterm_cancels_the_migration_releases_and_exits_143, |p| {
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.migration(
        "2_long.sql",
        &format!(
            "-- upgrade\nINSERT INTO a VALUES (1);\n{}\n",
            p.busy_sql(60.0)
        ),
    );
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let holder = p.spawn(&["upgrade", "--owner", "holder"]);
        wait_until("the holder applied 1 and holds the lock", LONG, || {
            applied(&p) == 1 && holder_of(&p).as_deref() == Some("holder")
        });
        std::thread::sleep(Duration::from_millis(500));
        let sent = Instant::now();
        holder.signal(signal);
        let run = holder.finish();
        run.code(code);
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "took {:?}",
            sent.elapsed()
        );
        assert!(run.stderr.contains("cancelled"), "{}", run.stderr);
        // The migration was rolled back whole, and the lock released.
        assert_eq!(p.db.history(), ["1 a applied"]);
        assert_eq!(p.db.value("SELECT count(*) FROM a"), "0");
        assert_eq!(holder_of(&p), None);
        assert_eq!(events(&p).last().map(String::as_str), Some("released"));
    }
});

// A signal during the last migration, which runs outside a transaction
// and so is left to finish: everything is applied, the run exits 143, and
// its JSON document says the same.
both!(
    a_signal_too_late_to_stop_anything_still_agrees_with_the_exit_code,
    |p| {
        p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
        p.migration(
            "2_long.sql",
            &format!(
                "-- upgrade\n-- lockstep:no-transaction\n{}\n",
                p.busy_sql(1.5)
            ),
        );
        let run = p.spawn(&["upgrade", "--json"]);
        wait_until("the last migration started", LONG, || applied(&p) == 2);
        run.signal(libc::SIGTERM);
        let run = run.finish();
        run.code(143);
        let doc = run.json();
        assert_eq!(doc["ok"], false, "{doc}");
        assert_eq!(doc["exit_code"], 143, "{doc}");
        assert_eq!(doc["error"]["code"], "cancelled", "{doc}");
        let completed: Vec<u64> = doc["completed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["version"].as_u64().unwrap())
            .collect();
        assert_eq!(completed, [1, 2], "{doc}");
        assert_eq!(p.db.history(), ["1 a applied", "2 long applied"]);
        assert_eq!(holder_of(&p), None);
    }
);

// A signal during a migration outside a transaction, before another one
// outside a transaction: the first is left to finish, and its last write
// recorded the second `started` (a commit fewer); stopping before the
// second's first statement takes that row back, so nothing is dirty.
both!(
    a_signal_between_migrations_outside_a_transaction_leaves_nothing_started,
    |p| {
        p.migration(
            "1_long.sql",
            &format!(
                "-- upgrade\n-- lockstep:no-transaction\n{}\n",
                p.busy_sql(1.5)
            ),
        );
        p.migration(
            "2_next.sql",
            "-- upgrade\n-- lockstep:no-transaction\nCREATE TABLE next (id integer);\n",
        );
        let run = p.spawn(&["upgrade"]);
        wait_until("the first migration started", LONG, || applied(&p) == 1);
        run.signal(libc::SIGTERM);
        let run = run.finish();
        run.code(143);
        assert!(run.stderr.contains("cancelled"), "{}", run.stderr);
        assert_eq!(p.db.history(), ["1 long applied"]);
        assert_eq!(holder_of(&p), None);
        p.run(&["upgrade"]).ok();
        assert_eq!(p.db.history(), ["1 long applied", "2 next applied"]);
    }
);

both!(
    a_second_signal_exits_at_once_and_the_lock_is_recovered,
    |p| {
        // Interrupting a no-transaction statement is not allowed (it would
        // leave the migration dirty), so the first signal alone would wait.
        p.migration(
            "1_long.sql",
            &format!(
                "-- upgrade\n-- lockstep:no-transaction\n{}\n",
                p.busy_sql(60.0)
            ),
        );
        let holder = p.spawn(&["upgrade", "--owner", "holder"]);
        wait_until("the holder started the migration", LONG, || {
            applied(&p) == 1
        });
        holder.signal(libc::SIGINT);
        std::thread::sleep(Duration::from_millis(300));
        holder.signal(libc::SIGINT);
        let run = holder.finish();
        run.code(130);
        assert_eq!(holder_of(&p).as_deref(), Some("holder"));
        // The next upgrade takes the lock over at once (the holder's
        // session is gone) and finds the migration dirty: it is never re-run
        // silently.
        let next = p.run(&["upgrade"]);
        next.code(4);
        assert!(
            next.stderr
                .contains("took over the migration lock from holder: the holder's session is gone"),
            "{}",
            next.stderr
        );
        assert!(
            next.stderr.contains("migration 1 long is dirty"),
            "{}",
            next.stderr
        );
        p.run(&["fix", "dirty", "1", "--forget"]).ok();
    }
);

both!(
    lock_release_refuses_live_holders_and_needs_confirmation,
    |p| {
        let free = p.run(&["lock", "release"]);
        free.ok();
        assert_eq!(
            free.stdout,
            "the migration lock is free; nothing to release\n"
        );
        p.migration("1_long.sql", &format!("-- upgrade\n{}\n", p.busy_sql(60.0)));
        let holder = p.spawn(&["upgrade", "--owner", "holder"]);
        wait_until("the holder holds the lock", LONG, || {
            holder_of(&p).as_deref() == Some("holder")
        });
        let refused = p.run(&["lock", "release", "--yes"]);
        refused.code(4);
        assert!(
            refused
                .stderr
                .contains("which looks alive; nothing was released"),
            "{}",
            refused.stderr
        );
        assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
        let unasked = p.run(&["unlock", "--force"]);
        unasked.code(2);
        assert!(
            unasked.stderr.contains("hint: pass --yes"),
            "{}",
            unasked.stderr
        );
        assert_eq!(holder_of(&p).as_deref(), Some("holder"));
        // Dead holders need no --force.
        holder.signal(libc::SIGKILL);
        holder.finish();
        wait_until("the dead holder's lock reads as stale", LONG, || {
            p.run(&["lock", "status", "--json"]).json()["state"] == "stale"
        });
        let released = p.run(&["lock-release", "--yes", "--json"]);
        released.ok();
        let doc = released.json();
        assert_eq!(doc["released"], true);
        assert_eq!(doc["previous"]["owner"], "holder");
        assert_eq!(holder_of(&p), None);
        assert_eq!(
            events(&p).last().map(String::as_str),
            Some("force_released")
        );
    }
);

both!(owner_names_the_lock_and_history, |p| {
    p.migration("1_a.sql", "-- upgrade\nSELECT 1;\n");
    let mut cmd = p.command(&["upgrade"]);
    cmd.env("LOCKSTEP_OWNER", "ci-job-7");
    crate::util::Run::from(cmd.output().unwrap()).ok();
    assert_eq!(
        p.db.value("SELECT applied_by FROM lockstep_history"),
        "ci-job-7"
    );
    assert_eq!(
        p.db.value("SELECT owner FROM lockstep_lock_log WHERE event = 'acquired'"),
        "ci-job-7"
    );
    p.run(&["upgrade", "--owner", "bad\nname"]).code(2);
});

both!(no_lock_says_what_it_gives_up, |p| {
    p.migration("1_a.sql", "-- upgrade\nSELECT 1;\n");
    let run = p.run(&["upgrade", "--no-lock"]);
    run.ok();
    assert!(
        run.stderr
            .contains("warning: --no-lock: running WITHOUT the migration lock"),
        "{}",
        run.stderr
    );
    assert_eq!(
        p.db.value("SELECT lock_token IS NULL FROM lockstep_history"),
        match p.backend() {
            Backend::Postgres => "t",
            Backend::Sqlite | Backend::Mariadb => "1",
        }
    );
    assert!(events(&p).is_empty());
});

both!(fix_takes_the_lock_too, |p| {
    p.migration("1_a.sql", "-- upgrade\nSELECT 1;\n");
    p.migration("2_long.sql", &format!("-- upgrade\n{}\n", p.busy_sql(60.0)));
    p.run(&["upgrade", "--to", "1"]).ok();
    let holder = p.spawn(&["upgrade", "--owner", "holder"]);
    wait_until("the holder holds the lock", LONG, || {
        holder_of(&p).as_deref() == Some("holder")
    });
    p.migration("1_a.sql", "-- upgrade\nSELECT 1; -- edited\n");
    let fix = p.run(&["fix", "--no-wait", "checksums"]);
    fix.code(3);
    holder.signal(libc::SIGKILL);
    holder.finish();
    p.run(&["fix", "checksums"]).ok();
    assert!(events(&p).iter().any(|e| e == "taken_over"));
});

#[test]
fn frozen_holder_is_taken_over_and_writes_nothing_after_postgres() {
    let Some(p) = Project::new(Backend::Postgres) else {
        return;
    };
    short_ttl(&p, "2s");
    side_effects(&p, 4, |i| {
        if i == 1 {
            "SELECT pg_sleep(1);".into()
        } else {
            String::new()
        }
    });
    let holder = p.spawn(&["upgrade", "--owner", "holder"]);
    // Frozen inside migration 1: frozen before it, between taking the lock
    // and reading history, it would find nothing left to do.
    wait_until(
        "the holder holds the lock and runs migration 1",
        LONG,
        || {
            holder_of(&p).as_deref() == Some("holder")
            && p.db.value(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE state = 'active' AND query LIKE '%pg_sleep(1)%' AND pid <> pg_backend_pid()",
            ) == "1"
        },
    );
    holder.signal(libc::SIGSTOP);
    let second = p.run(&["upgrade", "--owner", "second"]);
    second.ok();
    assert!(
        second
            .stderr
            .contains("took over the migration lock from holder: the lease expired"),
        "{}",
        second.stderr
    );
    holder.signal(libc::SIGCONT);
    let run = holder.finish();
    run.code(5);
    assert!(
        run.stderr.contains("lost the migration lock"),
        "{}",
        run.stderr
    );
    each_once(&p, 4);
    // The holder's rows all came before the takeover.
    let late = p.db.value(
        "SELECT count(*) FROM lockstep_history h WHERE h.applied_by = 'holder' \
         AND h.applied_at > (SELECT at FROM lockstep_lock_log WHERE event = 'taken_over')",
    );
    assert_eq!(late, "0");
    let log = events(&p);
    assert!(
        log.contains(&"taken_over".to_string()) && log.contains(&"lost".to_string()),
        "{log:?}"
    );
}

/// SQLite's write lock is the whole file: a holder frozen inside a
/// migration's transaction blocks everyone until it resumes or dies.
/// Between migrations it holds nothing, and is taken over when its lease
/// expires. To freeze it there, the test parks it the way a pending forced
/// release does (a read lock on `<db>-lockstep-release`), freezes it, then
/// lets go.
#[test]
fn frozen_holder_is_taken_over_and_writes_nothing_after_sqlite() {
    let p = Project::new(Backend::Sqlite).unwrap();
    short_ttl(&p, "2s");
    side_effects(&p, 4, |_| String::new());
    let crate::util::TestDb::Sqlite { path } = &p.db else {
        unreachable!()
    };
    let side = park_between_migrations(path);
    let holder = p.spawn(&["upgrade", "--owner", "holder"]);
    wait_until(
        "the holder holds the lock, parked before a migration",
        LONG,
        || holder_of(&p).as_deref() == Some("holder"),
    );
    std::thread::sleep(Duration::from_millis(200));
    holder.signal(libc::SIGSTOP);
    drop(side);
    let before = applied(&p);
    let second = p.run(&["upgrade", "--owner", "second"]);
    second.ok();
    assert!(
        second
            .stderr
            .contains("took over the migration lock from holder: the lease expired"),
        "{}",
        second.stderr
    );
    holder.signal(libc::SIGCONT);
    let run = holder.finish();
    run.code(5);
    assert!(
        run.stderr.contains("lost the migration lock"),
        "{}",
        run.stderr
    );
    each_once(&p, 4);
    let by_holder: usize =
        p.db.value("SELECT count(*) FROM lockstep_history WHERE applied_by = 'holder'")
            .parse()
            .unwrap();
    assert_eq!(
        by_holder, before,
        "the holder recorded something after it was frozen"
    );
    let log = events(&p);
    assert!(
        log.contains(&"taken_over".to_string()) && log.contains(&"lost".to_string()),
        "{log:?}"
    );
}

fn pgbouncer_url(p: &Project) -> String {
    let port = std::env::var("LOCKSTEP_TEST_PGBOUNCER_PORT")
        .expect("scripts/test-servers starts PgBouncer and sets LOCKSTEP_TEST_PGBOUNCER_PORT");
    let crate::util::TestDb::Postgres { name, .. } = &p.db else {
        unreachable!()
    };
    format!("postgres://postgres@127.0.0.1:{port}/{name}?sslmode=disable")
}

#[test]
fn race_through_pgbouncer_in_transaction_pooling() {
    let Some(p) = Project::new(Backend::Postgres) else {
        return;
    };
    let url = pgbouncer_url(&p);
    side_effects(&p, 30, |_| String::new());
    let children: Vec<_> = (0..20)
        .map(|_| {
            let mut cmd = p.command(&["upgrade"]);
            cmd.env("LOCKSTEP_DATABASE_URL", &url)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    for child in children {
        crate::util::Run::from(child.wait_with_output().unwrap()).ok();
    }
    each_once(&p, 30);
}

/// Behind a pooler a session proves nothing about its client, so a dead
/// holder is recovered when its lease expires.
#[test]
fn sigkill_through_pgbouncer_is_recovered_by_lease_expiry() {
    let Some(p) = Project::new(Backend::Postgres) else {
        return;
    };
    let url = pgbouncer_url(&p);
    short_ttl(&p, "2s");
    p.migration(
        "1_long.sql",
        "-- upgrade\nCREATE TABLE long (id integer);\nSELECT pg_sleep(60);\n",
    );
    let mut cmd = p.command(&["upgrade", "--owner", "holder"]);
    cmd.env("LOCKSTEP_DATABASE_URL", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut holder = cmd.spawn().unwrap();
    wait_until("the holder holds the lock", LONG, || {
        holder_of(&p).as_deref() == Some("holder")
    });
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(holder.id() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    holder.wait().unwrap();
    p.migration(
        "1_long.sql",
        "-- upgrade\nCREATE TABLE long (id integer);\n",
    );
    let mut cmd = p.command(&["upgrade"]);
    cmd.env("LOCKSTEP_DATABASE_URL", &url);
    let next = crate::util::Run::from(cmd.output().unwrap());
    next.ok();
    println!(
        "through PgBouncer: recovered {:?} after SIGKILL",
        killed.elapsed()
    );
    assert!(
        next.stderr
            .contains("took over the migration lock from holder: the lease expired"),
        "{}",
        next.stderr
    );
    assert_eq!(p.db.history(), ["1 long applied"]);
}

#[test]
fn race_under_serializable_isolation() {
    let Some(p) = Project::new(Backend::Postgres) else {
        return;
    };
    p.db.exec(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_isolation = serializable', current_database()); END $$",
    );
    assert_eq!(
        p.db.value("SHOW default_transaction_isolation"),
        "serializable"
    );
    side_effects(&p, 30, |_| String::new());
    let children: Vec<_> = (0..20).map(|_| p.spawn(&["upgrade"])).collect();
    for child in children {
        child.finish().ok();
    }
    each_once(&p, 30);
}

/// On a terminal `lock release` shows the holder and asks; only a yes
/// releases. `script` gives the command a terminal.
#[test]
fn lock_release_asks_on_a_terminal() {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration("1_long.sql", &format!("-- upgrade\n{}\n", p.busy_sql(60.0)));
    let holder = p.spawn(&["upgrade", "--owner", "holder"]);
    wait_until("the holder holds the lock", LONG, || {
        holder_of(&p).as_deref() == Some("holder")
    });
    holder.signal(libc::SIGKILL);
    holder.finish();
    let ask = |answer: &str| p.run_on_terminal("lock release", answer);
    let no = ask("n\n");
    no.ok();
    assert!(
        no.stdout
            .contains("release the migration lock held by holder (host "),
        "{}",
        no.stdout
    );
    assert!(no.stdout.contains("[y/N]"), "{}", no.stdout);
    assert!(no.stdout.contains("nothing was released"), "{}", no.stdout);
    assert_eq!(holder_of(&p).as_deref(), Some("holder"));
    let yes = ask("y\n");
    yes.ok();
    assert!(
        yes.stdout
            .contains("released the migration lock held by holder"),
        "{}",
        yes.stdout
    );
    assert_eq!(holder_of(&p), None);
}

// Regression: a fleet starting while a no-transaction migration runs read
// its `started` row as dirty and exited 4 instead of waiting for it.
both!(
    a_running_no_transaction_migration_is_not_reported_dirty,
    |p| {
        side_effects(&p, 2, |i| {
            if i == 1 {
                format!("-- lockstep:no-transaction\n{}", p.busy_sql(2.0))
            } else {
                String::new()
            }
        });
        let holder = p.spawn(&["upgrade", "--owner", "holder"]);
        wait_until(
            "the holder started the no-transaction migration",
            LONG,
            || {
                applied(&p) >= 2
                    && p.db
                        .history()
                        .last()
                        .is_some_and(|r| r.ends_with("started"))
            },
        );
        let waiter = p.run(&["upgrade", "--owner", "waiter"]);
        waiter.ok();
        assert!(
            waiter.stderr.contains("waiting for lock held by holder"),
            "{}",
            waiter.stderr
        );
        holder.finish().ok();
        each_once(&p, 2);
    }
);

/// A holder inside a migration of 8 s (PostgreSQL): it holds the lock, and
/// its transaction the lock row.
fn holder_in_an_8s_migration(p: &Project) -> crate::util::Child {
    p.migration("1_long.sql", "-- upgrade\nSELECT pg_sleep(8);\n");
    let holder = p.spawn(&["upgrade", "--owner", "holder"]);
    wait_until("the holder holds the lock", LONG, || {
        holder_of(p).as_deref() == Some("holder")
    });
    holder
}

/// Transactions rolled back in the test's database so far (a backend's
/// count is flushed at the latest when its session ends).
fn rollbacks(p: &Project) -> i64 {
    p.db.value("SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        .parse()
        .unwrap()
}

/// Waiters behind a long migration cost the server one plain read per
/// poll: no transaction left open, no snapshot held, no failed statement.
/// (A waiter that tried the row lock on every poll would roll back once
/// per poll: 55P03 against the holder's migration.)
#[test]
fn waiters_hold_no_transaction_and_fail_no_statement() {
    let Some(p) = Project::new(Backend::Postgres) else {
        return;
    };
    let holder = holder_in_an_8s_migration(&p);
    let before = rollbacks(&p);
    const WAITERS: usize = 5;
    // They give up while the holder still runs: what is counted is the
    // waiting alone, not the handoff.
    let waiters: Vec<_> = (0..WAITERS)
        .map(|i| {
            p.spawn(&[
                "upgrade",
                "--owner",
                &format!("waiter{i}"),
                "--lock-timeout",
                "4s",
            ])
        })
        .collect();
    let sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                    AND application_name LIKE 'lockstep waiter%'";
    wait_until("every waiter is connected", LONG, || {
        p.db.value(sessions) == WAITERS.to_string()
    });
    // While they wait: none idle inside a transaction, none holding a
    // snapshot between polls.
    let bad = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
               AND application_name LIKE 'lockstep waiter%' \
               AND (state LIKE 'idle in transaction%' OR (state = 'idle' AND backend_xmin IS NOT NULL))";
    for _ in 0..25 {
        assert_eq!(p.db.value(bad), "0");
        std::thread::sleep(Duration::from_millis(100));
    }
    for w in waiters {
        w.finish().code(3);
    }
    // Exited backends have flushed their statistics.
    wait_until("the waiters' sessions end", LONG, || {
        p.db.value(sessions) == "0"
    });
    let after = rollbacks(&p);
    assert_eq!(
        holder_of(&p).as_deref(),
        Some("holder"),
        "counted while the holder still ran"
    );
    // Each waiter looked before it tried, from its very first attempt: none
    // ever met the migration's row lock.
    assert_eq!(after - before, 0, "rollbacks from {WAITERS} waiters in 4 s");
    holder.finish().ok();
    assert_eq!(applied(&p), 1);
}

/// On a direct connection a waiter LISTENs: a release notification wakes it
/// at once, and it tries for the lock without looking first. Here the test
/// sends the notifications while the holder still runs, so each attempt
/// meets the migration's row lock and rolls back: the rollbacks show that
/// the waiter heard them. A waiter that only polled would never try (the
/// holder is alive, its lease fresh), and roll back nothing.
#[test]
fn a_waiter_on_a_direct_connection_wakes_on_a_release_notification() {
    let Some(p) = Project::new(Backend::Postgres) else {
        return;
    };
    let holder = holder_in_an_8s_migration(&p);
    let before = rollbacks(&p);
    let waiter = p.spawn(&["upgrade", "--owner", "waiter", "--lock-timeout", "4s"]);
    let session = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND application_name = 'lockstep waiter'";
    wait_until("the waiter is connected", LONG, || {
        p.db.value(session) == "1"
    });
    // The channel of the default scope. Several, in case the first comes
    // before the waiter has started listening.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(500));
        p.db.exec("NOTIFY \"lockstep:lockstep_history\"");
    }
    waiter.finish().code(3);
    // Exited backends have flushed their statistics.
    wait_until("the waiter's session ends", LONG, || {
        p.db.value(session) == "0"
    });
    let after = rollbacks(&p);
    assert_eq!(holder_of(&p).as_deref(), Some("holder"));
    assert!(
        after > before,
        "the waiter never reacted to a release notification: is it listening?"
    );
    holder.finish().ok();
    assert_eq!(applied(&p), 1);
}

/// `n` migrations with side effects, the first busy for 1.5 s, and a run
/// applying them that holds the lock.
fn busy_holder(p: &Project, n: usize) -> crate::util::Child {
    side_effects(p, n, |i| {
        if i == 1 {
            p.busy_sql(1.5)
        } else {
            String::new()
        }
    });
    let holder = p.spawn(&["upgrade", "--owner", "holder"]);
    wait_until("the holder holds the lock", LONG, || {
        holder_of(p).as_deref() == Some("holder")
    });
    holder
}

both!(waiters_whose_work_the_holder_did_never_take_the_lock, |p| {
    let holder = busy_holder(&p, 5);
    let waiters: Vec<_> = (0..4)
        .map(|i| p.spawn(&["upgrade", "--owner", &format!("waiter{i}")]))
        .collect();
    holder.finish().ok();
    for w in waiters {
        let run = w.finish();
        run.ok();
        assert!(
            run.stdout.contains("database is up to date"),
            "{}",
            run.stdout
        );
    }
    each_once(&p, 5);
    // One acquisition: the holder's. The waiters saw, when it came free,
    // that there was nothing left to take it for.
    assert_eq!(events(&p), ["acquired", "released"]);
});

// A run that read history while another held the lock, and looks at the
// lock only after that one freed it, finds the same token but the lock no
// longer held: it reads history again instead of taking the lock only to
// find nothing to do. Through the library, whose `prefetch_history` (the
// CLI's read on PostgreSQL) makes the read early.
both!(
    a_run_that_read_history_while_the_lock_was_held_does_not_take_it_after,
    |p| {
        let holder = busy_holder(&p, 3);
        let url: lockstep::DatabaseUrl = p.db.url().parse().unwrap();
        let set = lockstep::MigrationSet::load(p.path("migrations")).unwrap();
        let mut late = lockstep::Migrator::connect(&url, lockstep::Options::default()).unwrap();
        late.prefetch_history();
        holder.finish().ok();
        let report = late
            .upgrade(&set, &lockstep::UpgradeOptions::default(), &mut ())
            .unwrap();
        assert!(report.steps.is_empty(), "{:?}", report.steps);
        each_once(&p, 3);
        assert_eq!(events(&p), ["acquired", "released"]);
    }
);

/// A signal that comes while an SQLite migration waits for the database's
/// write lock (which SQLite's busy wait does not notice) still ends the
/// run as a stop, 143, with the migration rolled back; not as a failed
/// migration. Found by the chaos rounds.
#[test]
fn sigterm_while_waiting_for_the_sqlite_write_lock_exits_143() {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.run(&["upgrade"]).ok();
    p.migration("2_b.sql", "-- upgrade\nCREATE TABLE b (id integer);\n");
    let crate::util::TestDb::Sqlite { path } = &p.db else {
        unreachable!()
    };
    // Another writer holds the database for longer than the busy timeout.
    let other = rusqlite::Connection::open(path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let run = p.spawn(&["upgrade", "--no-lock"]);
    std::thread::sleep(Duration::from_millis(1000));
    run.signal(libc::SIGTERM);
    let run = run.finish();
    other.execute_batch("ROLLBACK").unwrap();
    run.code(143);
    assert!(run.stderr.contains("cancelled"), "{}", run.stderr);
    assert_eq!(p.db.history(), ["1 a applied"]);
    assert!(!p.db.table_exists("b"));
}

/// A migration that cannot get SQLite's write lock within the busy timeout
/// fails, rolled back, and says which process holds the database (and
/// whether it is stopped), with what to do. The chaos rounds met this once
/// in 2,741 processes without knowing who held the file.
#[test]
fn sqlite_busy_migration_names_the_process_holding_the_database() {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.run(&["upgrade"]).ok();
    p.migration("2_b.sql", "-- upgrade\nCREATE TABLE b (id integer);\n");
    let crate::util::TestDb::Sqlite { path } = &p.db else {
        unreachable!()
    };
    let other = rusqlite::Connection::open(path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let run = p.run(&["upgrade", "--no-lock"]);
    other.execute_batch("ROLLBACK").unwrap();
    run.code(1);
    assert!(
        run.stderr.contains("migration 2 b failed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!(
            "detail: the database file is held by pid {} (",
            std::process::id()
        )) && run.stderr.contains(": writing)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: another connection kept the database locked"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db.history(), ["1 a applied"]);
    assert!(!p.db.table_exists("b"));
}

/// When something other than lockstep keeps the SQLite database locked, a
/// waiter says so, not "held by nobody", and its hint says what to look for.
#[test]
fn a_foreign_writer_is_named_as_such_while_waiting() {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.run(&["upgrade"]).ok();
    p.migration("2_b.sql", "-- upgrade\nCREATE TABLE b (id integer);\n");
    let crate::util::TestDb::Sqlite { path } = &p.db else {
        unreachable!()
    };
    let other = rusqlite::Connection::open(path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let run = p.run(&["upgrade", "--lock-timeout", "1s"]);
    other.execute_batch("ROLLBACK").unwrap();
    run.code(3);
    assert!(
        run.stderr
            .contains("another connection, not a lockstep run"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("nobody"), "{}", run.stderr);
    assert!(
        run.stderr.contains("hint: a transaction outside lockstep"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db.history(), ["1 a applied"]);
}

// One table is one lock, however its name is spelled: with and without
// the engine's default schema (`public`, `main`).
both!(one_history_table_is_one_lock_however_it_is_spelled, |p| {
    let default = match &p.db {
        crate::util::TestDb::Sqlite { .. } => "main",
        crate::util::TestDb::Postgres { .. } => "public",
        // The URL's database.
        crate::util::TestDb::Mariadb { name, .. } => name,
    };
    p.file("short.toml", "history_table = \"hist\"\n");
    p.file(
        "long.toml",
        &format!("history_table = \"{default}.hist\"\n"),
    );
    p.migration(
        "1_slow.sql",
        &format!(
            "-- upgrade\nCREATE TABLE a (id integer);\n{}\n",
            p.busy_sql(3.0)
        ),
    );
    let holder = p.spawn(&["-c", "short.toml", "upgrade", "--owner", "short"]);
    wait_until("the holder holds the lock", LONG, || {
        p.db.table_exists("lockstep_lock")
            && p.db
                .query("SELECT owner FROM lockstep_lock WHERE owner IS NOT NULL")
                .first()
                .is_some_and(|r| r[0] == "short")
    });
    let other = p.run(&["-c", "long.toml", "upgrade", "--no-wait"]);
    other.code(3);
    assert!(
        other.stderr.contains("the migration lock is held by short"),
        "{}",
        other.stderr
    );
    holder.finish().ok();
    p.run(&["-c", "long.toml", "upgrade"]).ok();
    assert_eq!(
        p.db.query("SELECT scope, token FROM lockstep_lock"),
        [["hist", "1"]]
    );
    assert_eq!(
        p.db.query("SELECT version, state FROM hist"),
        [["1", "applied"]]
    );
});

/// Parks every SQLite holder of the database at `path` before its next
/// migration, as a pending forced release does (a read lock on
/// `<db>-lockstep-release`), until the returned file is dropped.
fn park_between_migrations(path: &std::path::Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let side = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(format!("{}-lockstep-release", path.display()))
        .unwrap();
    // SAFETY: a zeroed flock is valid; fcntl on an open descriptor.
    unsafe {
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = libc::F_RDLCK as libc::c_short;
        lock.l_len = 1;
        assert_eq!(libc::fcntl(side.as_raw_fd(), libc::F_SETLK, &lock), 0);
    }
    side
}

/// Starts `upgrade --owner <owner>` and, once it holds the lock, runs `sql`
/// by hand before migration 2 begins. On PostgreSQL it runs while
/// migration 1 runs, after taking the lock table in ACCESS EXCLUSIVE mode:
/// that request queues behind migration 1's fence and is granted when
/// migration 1 commits, ahead of migration 2's fence (a bare row-level
/// statement waiting for migration 1 could be overtaken by that fence).
/// On SQLite it runs while the holder is parked before migration 1 (as a
/// pending forced release parks it: SQLite's write lock passes from one
/// migration to the next without a gap for another writer).
fn under_a_holder(p: &Project, owner: &str, sql: &str) -> crate::util::Child {
    let (side, sql) = match &p.db {
        crate::util::TestDb::Sqlite { path } => {
            (Some(park_between_migrations(path)), sql.to_string())
        }
        crate::util::TestDb::Postgres { .. } => (
            None,
            format!("BEGIN; LOCK TABLE lockstep_lock IN ACCESS EXCLUSIVE MODE; {sql}; COMMIT;"),
        ),
        // The row lock queues behind migration 1's fence, and is granted
        // when migration 1 commits, ahead of migration 2's fence.
        crate::util::TestDb::Mariadb { .. } => (
            None,
            format!("BEGIN; SELECT token FROM lockstep_lock FOR UPDATE; {sql}; COMMIT;"),
        ),
    };
    let holder = p.spawn(&["upgrade", "--owner", owner]);
    wait_until("the holder holds the lock", LONG, || {
        holder_of(p).as_deref() == Some(owner)
    });
    if side.is_some() {
        std::thread::sleep(Duration::from_millis(200));
    }
    p.db.exec(&sql);
    drop(side);
    holder
}

/// Migration 1 (slow) and migration 2; `sql` run by hand under a holder
/// named `owner` (see `under_a_holder`). The holder must lose the lock
/// before migration 2: exit 5, and 2 not applied.
fn holder_loses_the_lock_to(p: &Project, owner: &str, sql: &str) {
    // Migration 1 holds no DDL: a transaction on every engine (DDL commits
    // by itself on MariaDB).
    p.migration("1_slow.sql", &format!("-- upgrade\n{}\n", p.busy_sql(1.5)));
    p.migration("2_b.sql", "-- upgrade\nCREATE TABLE b (id integer);\n");
    let run = under_a_holder(p, owner, sql).finish();
    run.code(5);
    assert!(
        run.stderr.contains("lost the migration lock"),
        "{}",
        run.stderr
    );
    assert!(!p.db.table_exists("b"));
}

// A lock row deleted by hand takes nothing with it: the next holder's
// token is higher than every token before (a paused holder of the same
// name cannot pass its fence beside it), and the holder that finds its row
// gone stops, exit 5.
both!(tokens_never_repeat_after_the_lock_row_is_deleted, |p| {
    holder_loses_the_lock_to(&p, "same", "DELETE FROM lockstep_lock");
    p.run(&["upgrade", "--owner", "same"]).ok();
    assert_eq!(applied(&p), 2);
    // Every acquisition had a token of its own, the new one highest.
    let tokens: Vec<String> =
        p.db.query("SELECT token FROM lockstep_lock_log WHERE event = 'acquired' ORDER BY id")
            .into_iter()
            .map(|r| r[0].clone())
            .collect();
    assert_eq!(tokens, ["1", "2"]);
    assert_eq!(p.db.value("SELECT token FROM lockstep_lock"), "2");
    assert_eq!(
        p.db.value("SELECT lock_token FROM lockstep_history WHERE version = 2"),
        "2"
    );
});

// `DROP TABLE lockstep_lock` under a running holder is a lost lock (exit
// 5), not a failed migration; the next run makes the table again and goes
// on with a higher token.
both!(a_dropped_lock_table_is_a_lost_lock, |p| {
    holder_loses_the_lock_to(&p, "holder", "DROP TABLE lockstep_lock");
    p.run(&["upgrade"]).ok();
    assert_eq!(applied(&p), 2);
    assert_eq!(p.db.value("SELECT token FROM lockstep_lock"), "2");
});

// `lock status` tells the truth about a running migration, in human output
// and JSON: in a transaction (the row or the database locked) and outside
// one (the holder's session busy).
both!(lock_status_says_a_migration_is_running, |p| {
    p.migration(
        "1_inside.sql",
        &format!(
            "-- upgrade\nCREATE TABLE a (id integer);\n{}\n",
            p.busy_sql(4.0)
        ),
    );
    p.migration(
        "2_outside.sql",
        &format!(
            "-- upgrade\n-- lockstep:no-transaction\n{}\n",
            p.busy_sql(4.0)
        ),
    );
    for (version, name) in [("1", "inside"), ("2", "outside")] {
        let holder = p.spawn(&["upgrade", "--to", version, "--owner", "holder"]);
        wait_until("the holder holds the lock", LONG, || {
            holder_of(&p).as_deref() == Some("holder")
        });
        std::thread::sleep(Duration::from_millis(500));
        let doc = p.run(&["lock", "status", "--json"]).json();
        assert_eq!(doc["state"], "locked", "{name}: {doc}");
        assert_eq!(doc["migrating"], true, "{name}: {doc}");
        assert_eq!(doc["blocker"], serde_json::Value::Null, "{name}: {doc}");
        let human = p.run(&["lock", "status"]);
        human.ok();
        assert!(
            human
                .stdout
                .contains("migrating     yes (a migration of the holder is running now)"),
            "{name}: {}",
            human.stdout
        );
        holder.finish().ok();
    }
    // And between runs, nothing is.
    let doc = p.run(&["lock", "status", "--json"]).json();
    assert_eq!(
        (doc["state"].clone(), doc["migrating"].clone()),
        ("unlocked".into(), false.into())
    );
});

/// SQLite in rollback-journal mode: a migration that writes more than its
/// page cache holds keeps every reader out until it commits. `lock status`
/// and `--no-wait` still answer at once, naming the holder, instead of
/// waiting out SQLite's busy timeout.
#[test]
fn sqlite_a_heavy_writer_does_not_silence_lock_status_or_no_wait() {
    let p = Project::new(Backend::Sqlite).unwrap();
    let rows = crate::util::sqlite_rows_per_second() as u64;
    p.migration(
        "1_heavy.sql",
        &format!(
            "-- upgrade\nPRAGMA cache_size = 10;\nCREATE TABLE big (x integer, s text);\n\
             INSERT INTO big SELECT x, hex(randomblob(32)) FROM \
             (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) SELECT x FROM c);\n"
        ),
    );
    // Made with its tables first, so that the waiter below only meets
    // the heavy migration.
    p.migration(
        "0_first.sql",
        "-- upgrade\nCREATE TABLE first (id integer);\n",
    );
    p.run(&["upgrade", "--to", "0"]).ok();
    let crate::util::TestDb::Sqlite { path } = &p.db else {
        unreachable!()
    };
    let before = std::fs::metadata(path).unwrap().len();
    let holder = p.spawn(&["upgrade", "--owner", "holder"]);
    // The file grows before the commit only when the writer spills its
    // changes into it, which it does under SQLite's exclusive lock.
    wait_until("the holder spills its changes", LONG, || {
        std::fs::metadata(path).is_ok_and(|m| m.len() > before + (1 << 20))
    });
    let status = p.run(&["lock", "status", "--json"]);
    let waiter = p.run(&["upgrade", "--no-wait"]);
    let run = holder.finish();
    run.ok();
    let doc = status.json();
    assert_eq!(doc["state"], "locked", "{doc}");
    assert_eq!(doc["owner"], "holder", "{doc}");
    assert_eq!(doc["migrating"], true, "{doc}");
    waiter.code(3);
    assert!(
        waiter
            .stderr
            .contains("the migration lock is held by holder"),
        "{}",
        waiter.stderr
    );
}

/// Another program holding SQLite's database with `BEGIN EXCLUSIVE`, in
/// either journal mode: `--no-wait` and `--lock-timeout` end as the lock
/// says (exit 3, naming that program), not after SQLite's busy timeout as
/// a failed read; `lock status` names it too.
#[test]
fn sqlite_a_foreign_exclusive_writer_is_named_and_timeouts_hold() {
    for journal in ["delete", "wal"] {
        foreign_exclusive_writer(journal);
    }
}

fn foreign_exclusive_writer(journal: &str) {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.run(&["upgrade"]).ok();
    p.migration("2_b.sql", "-- upgrade\nCREATE TABLE b (id integer);\n");
    let crate::util::TestDb::Sqlite { path } = &p.db else {
        unreachable!()
    };
    let other = rusqlite::Connection::open(path).unwrap();
    let mode: String = other
        .query_row(&format!("PRAGMA journal_mode = {journal}"), [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(mode, journal);
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let no_wait = p.run(&["upgrade", "--no-wait"]);
    let timeout = p.run(&["upgrade", "--lock-timeout", "1s"]);
    let status = p.run(&["lock", "status", "--json"]);
    other.execute_batch("ROLLBACK").unwrap();
    let me = format!("pid {} (", std::process::id());
    for (run, code) in [(&no_wait, "lock_busy"), (&timeout, "lock_timeout")] {
        run.code(3);
        assert!(
            run.stderr
                .contains("another connection, not a lockstep run")
                && run.stderr.contains(&me),
            "{journal} {code}: {}",
            run.stderr
        );
    }
    let doc = status.json();
    assert_eq!(doc["state"], "unlocked", "{journal}: {doc}");
    assert!(
        doc["blocker"].as_str().is_some_and(|b| b.starts_with(&me)),
        "{doc}"
    );
    assert_eq!(p.db.history(), ["1 a applied"]);
    p.run(&["upgrade"]).ok();
}

/// The same in WAL mode, where a writer locks no reader out and is seen by
/// its lock on the `-shm` file.
#[test]
fn sqlite_wal_lock_status_says_a_migration_is_running() {
    let p = Project::new(Backend::Sqlite).unwrap();
    p.migration("1_a.sql", "-- upgrade\nCREATE TABLE a (id integer);\n");
    p.run(&["upgrade"]).ok();
    p.db.exec("PRAGMA journal_mode = wal");
    p.migration(
        "2_slow.sql",
        &format!(
            "-- upgrade\nCREATE TABLE b (id integer);\n{}\n",
            p.busy_sql(3.0)
        ),
    );
    let holder = p.spawn(&["upgrade", "--owner", "holder"]);
    wait_until("the holder holds the lock", LONG, || {
        holder_of(&p).as_deref() == Some("holder")
    });
    std::thread::sleep(Duration::from_millis(300));
    let doc = p.run(&["lock", "status", "--json"]).json();
    let waiter = p.run(&["upgrade", "--no-wait"]);
    holder.finish().ok();
    assert_eq!(
        (doc["state"].clone(), doc["migrating"].clone()),
        ("locked".into(), true.into()),
        "{doc}"
    );
    waiter.code(3);
    assert!(
        waiter.stderr.contains("held by holder"),
        "{}",
        waiter.stderr
    );
}
