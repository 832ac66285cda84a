//! PostgreSQL-only behaviour: TLS, authentication, sockets, schemas.

use crate::util::{command_with_url, pg_database, tls_file, Run, TempDir, TestDb};

struct Pg {
    db: TestDb,
    name: String,
    port: String,
    dir: TempDir,
}

fn pg() -> Option<Pg> {
    let db = pg_database()?;
    let TestDb::Postgres { name, .. } = &db else {
        unreachable!()
    };
    let name = name.clone();
    let port = std::env::var("LOCKSTEP_TEST_PG_PORT")
        .expect("scripts/test-servers sets LOCKSTEP_TEST_PG_PORT");
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.path().join("migrations")).unwrap();
    std::fs::write(
        dir.path().join("migrations/1_a.sql"),
        "-- upgrade\nCREATE TABLE a (id integer);\n",
    )
    .unwrap();
    Some(Pg {
        db,
        name,
        port,
        dir,
    })
}

impl Pg {
    fn run(&self, url: &str, args: &[&str]) -> Run {
        Run::from(
            command_with_url(self.dir.path(), url, args)
                .output()
                .unwrap(),
        )
    }
}

#[test]
fn tls_modes_are_enforced() {
    let Some(p) = pg() else { return };
    let url = |host: &str, query: &str| {
        format!("postgres://tlsonly@{host}:{}/{}?{query}", p.port, p.name)
    };
    let ca = tls_file("ca.crt");
    let other = tls_file("other-ca.crt");
    // `tlsonly` is refused without TLS, so each success below went over TLS.
    let plain = p.run(&url("127.0.0.1", "sslmode=disable"), &["status"]);
    plain.code(1);
    assert!(plain.stderr.contains("no encryption"), "{}", plain.stderr);
    let ok = [
        url("127.0.0.1", "sslmode=require"),
        url("127.0.0.1", "sslmode=prefer"),
        url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        // The certificate names only `localhost`: verify-ca does not check
        // the name.
        url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
    ];
    for u in &ok {
        p.run(u, &["status"]).ok();
    }
    let refused = [
        (
            url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "not valid for name",
        ),
        (
            url(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={other}"),
            ),
            "UnknownIssuer",
        ),
        // libpq: `require` with a root certificate verifies the chain.
        (
            url("localhost", &format!("sslmode=require&sslrootcert={other}")),
            "UnknownIssuer",
        ),
        (
            url(
                "localhost",
                "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            ),
            "cannot read sslrootcert",
        ),
    ];
    for (u, why) in &refused {
        let run = p.run(u, &["status"]);
        run.code(1);
        assert!(
            run.stderr.contains("cannot connect to postgres://tlsonly@"),
            "{u}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(why), "{u}: {}", run.stderr);
        // Refused by TLS, or a file that cannot be read: `wait` does not
        // wait.
        let wait = p.run(u, &["wait", "--timeout", "3s"]);
        wait.code(1);
        assert!(!wait.stderr.contains("waiting:"), "{u}: {}", wait.stderr);
    }
    // Refused by the server (no TLS for `tlsonly`: class 28): likewise.
    let wait = p.run(
        &url("127.0.0.1", "sslmode=disable"),
        &["wait", "--timeout", "3s"],
    );
    wait.code(1);
    assert!(!wait.stderr.contains("waiting:"), "{}", wait.stderr);
    // And the whole job works over verified TLS.
    p.run(
        &url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        &["upgrade"],
    )
    .ok();
    assert_eq!(p.db.history(), ["1 a applied"]);
}

#[test]
fn passwords_never_appear_in_output() {
    let Some(p) = pg() else { return };
    let secret = "pw-s3cret-Zq9";
    let good = format!(
        "postgres://lockstep_pw:{secret}@127.0.0.1:{}/{}?sslmode=disable",
        p.port, p.name
    );
    let run = p.run(&good, &["upgrade", "-v"]);
    run.ok();
    assert!(
        run.stderr.contains("postgres://lockstep_pw:***@127.0.0.1"),
        "{}",
        run.stderr
    );
    let wrong = "wrong-Pa55-word";
    let cases = [
        (good.clone(), secret, &["status", "-v"][..], 0),
        (good.replace(secret, wrong), wrong, &["upgrade", "-v"], 1),
        (good.replace(secret, wrong), wrong, &["status", "--json"], 1),
        // Nothing listens on port 1.
        (
            good.replace(&format!(":{}/", p.port), ":1/"),
            secret,
            &["history", "-v", "--json"],
            1,
        ),
        (
            good.replace(&format!(":{}/", p.port), ":1/"),
            secret,
            &["upgrade"],
            1,
        ),
        (format!("{good}&bogus=1"), secret, &["status"], 2),
    ];
    for (url, password, args, code) in cases {
        let run = p.run(&url, args);
        run.code(code);
        for out in [&run.stdout, &run.stderr] {
            assert!(
                !out.contains(password),
                "{args:?} printed the password:\n{out}"
            );
        }
        if code == 1 {
            assert!(
                run.stderr.contains("cannot connect") || run.stdout.contains("cannot connect"),
                "{}{}",
                run.stdout,
                run.stderr
            );
        }
    }
    let run = p.run(&good.replace(secret, wrong), &["status"]);
    assert!(
        run.stderr.contains("password authentication failed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: check the user name and password"),
        "{}",
        run.stderr
    );
}

#[test]
fn unix_socket_url() {
    let Some(p) = pg() else { return };
    let socket = std::env::var("LOCKSTEP_TEST_PG_SOCKET")
        .expect("scripts/test-servers sets LOCKSTEP_TEST_PG_SOCKET");
    let url = format!(
        "postgres://postgres@/{}?host={socket}&port={}",
        p.name, p.port
    );
    p.run(&url, &["upgrade"]).ok();
    assert_eq!(p.db.history(), ["1 a applied"]);
}

#[test]
fn missing_database_gets_a_hint() {
    let Some(p) = pg() else { return };
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/no_such_db?sslmode=disable",
        p.port
    );
    let run = p.run(&url, &["status"]);
    run.code(1);
    assert!(
        run.stderr
            .contains("database \"no_such_db\" does not exist"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: create the database first"),
        "{}",
        run.stderr
    );
}

#[test]
fn history_table_in_its_own_schema() {
    let Some(p) = pg() else { return };
    std::fs::write(
        p.dir.path().join("lockstep.toml"),
        "history_table = \"ops.migrations\"\n",
    )
    .unwrap();
    let url = p.db.url();
    p.run(&url, &["upgrade"]).ok();
    assert_eq!(p.db.value("SELECT count(*) FROM ops.migrations"), "1");
    assert_eq!(
        p.db.value("SELECT format_version FROM ops.lockstep_meta WHERE table_name = 'migrations'"),
        "1"
    );
    assert!(!p.db.table_exists("public.lockstep_meta"));
    p.run(&url, &["status", "--check"]).ok();
}

/// lockstep's tables stay in one schema (`public` unless `history_table`
/// names one) whatever `search_path` says: a database-level one does not
/// move them, and a run with another one still sees what was applied.
#[test]
fn lockstep_tables_do_not_follow_search_path() {
    let Some(p) = pg() else { return };
    let url = p.db.url();
    p.db.exec(&format!(
        "CREATE SCHEMA other; ALTER DATABASE {} SET search_path = other",
        p.name
    ));
    p.run(&url, &["upgrade"]).ok();
    for table in [
        "lockstep_history",
        "lockstep_meta",
        "lockstep_lock",
        "lockstep_lock_log",
    ] {
        assert!(p.db.table_exists(&format!("public.{table}")), "{table}");
        assert!(!p.db.table_exists(&format!("other.{table}")), "{table}");
    }
    // The migration's own table follows search_path, as psql would.
    assert!(p.db.table_exists("other.a"));
    // Another search_path sees the same history.
    p.db.exec(&format!(
        "ALTER DATABASE {} SET search_path = pg_catalog",
        p.name
    ));
    p.run(&url, &["status", "--check"]).ok();
    p.run(&url, &["upgrade"]).ok();
    assert_eq!(
        p.db.value("SELECT count(*) FROM public.lockstep_history"),
        "1"
    );
}

/// History that an older lockstep put where `search_path` pointed is not
/// taken for none: the run stops and says where it is.
#[test]
fn history_found_only_through_search_path_is_named_not_ignored() {
    let Some(p) = pg() else { return };
    let url = p.db.url();
    std::fs::write(
        p.dir.path().join("lockstep.toml"),
        "history_table = \"legacy.lockstep_history\"\n",
    )
    .unwrap();
    p.run(&url, &["upgrade"]).ok();
    std::fs::remove_file(p.dir.path().join("lockstep.toml")).unwrap();
    p.db.exec(&format!(
        "ALTER DATABASE {} SET search_path = legacy, public",
        p.name
    ));
    for args in [&["upgrade"][..], &["status"]] {
        let run = p.run(&url, args);
        run.code(2);
        assert_eq!(
            run.stderr,
            "error: there is no table lockstep_history in schema `public`, but `search_path` finds one in schema `legacy`\n\
             hint: lockstep keeps its tables in one schema whatever `search_path` says (`public` unless `history_table` names one): \
             if that table is lockstep's history, set `history_table = \"legacy.lockstep_history\"` in lockstep.toml\n",
            "{args:?}"
        );
    }
    assert!(!p.db.table_exists("public.lockstep_history"));
}

#[test]
fn error_position_points_into_the_file() {
    let Some(p) = pg() else { return };
    std::fs::write(
        p.dir.path().join("migrations/2_b.sql"),
        "-- upgrade\nCREATE TABLE b (\n  id integer,\n  name txet\n);\n",
    )
    .unwrap();
    let run = p.run(&p.db.url(), &["upgrade"]);
    run.code(1);
    assert!(
        run.stderr.contains(
            "migration 2 b failed (migrations/2_b.sql:4:8): type \"txet\" does not exist (42704)"
        ),
        "{}",
        run.stderr
    );
}

/// Every command, with a URL that holds a password: against the server
/// with the right password, with a wrong one, and with nothing listening.
/// The password appears nowhere in stdout, stderr or the JSON.
#[test]
fn no_command_ever_prints_the_password() {
    let Some(p) = pg() else { return };
    std::fs::write(
        p.dir.path().join("migrations/2_b.sql"),
        "-- upgrade\nCREATE TABLE b (id integer);\n-- rollback\nDROP TABLE b;\n",
    )
    .unwrap();
    let secret = "pw-s3cret-Zq9";
    let good = format!(
        "postgres://lockstep_pw:{secret}@127.0.0.1:{}/{}?sslmode=disable",
        p.port, p.name
    );
    let wrong_secret = "Wr0ng-passw0rd-77";
    let urls = [
        (good.clone(), secret),
        (good.replace(secret, wrong_secret), wrong_secret),
        (good.replace(&format!(":{}/", p.port), ":1/"), secret),
        (
            format!("{good}&sslmode=verify-full&sslrootcert=/nonexistent"),
            secret,
        ),
    ];
    let commands: &[&[&str]] = &[
        &["upgrade", "--dry-run"],
        &["upgrade"],
        &["status"],
        &["status", "--check"],
        &["history"],
        &["validate"],
        &["fix", "checksums"],
        &["fix", "missing"],
        &["fix", "dirty", "1", "--forget"],
        &["rollback"],
        &["lock", "status"],
        &["lock", "status", "--format", "prometheus"],
        &["lock", "log"],
        &["lock", "release", "--yes"],
        &["new", "c"],
    ];
    let mut runs = 0;
    for (url, password) in &urls {
        for command in commands {
            for extra in [&[][..], &["--json"], &["-v"]] {
                let mut args = command.to_vec();
                args.extend_from_slice(extra);
                let run = p.run(url, &args);
                for out in [&run.stdout, &run.stderr] {
                    assert!(
                        !out.contains(password),
                        "{args:?} printed the password:\n{out}"
                    );
                }
                runs += 1;
            }
        }
    }
    println!("{runs} runs, no password printed");
}

/// A database that takes no writes (`default_transaction_read_only`, as
/// on a hot standby): the run fails at once and says where to point.
#[test]
fn a_read_only_database_is_named_as_such() {
    let Some(p) = pg() else { return };
    p.db.exec(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        p.name
    ));
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}?sslmode=disable",
        p.port, p.name
    );
    let run = p.run(&url, &["upgrade"]);
    run.code(1);
    assert!(
        run.stderr.contains("read-only transaction"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "hint: the server takes no writes (read-only, or a replica): point the database URL at the primary"
        ),
        "{}",
        run.stderr
    );
    p.run(&url, &["status"]).ok();
}
