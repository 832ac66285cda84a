//! MariaDB-only behaviour: TLS, authentication, sockets, a read-only
//! server, a connection killed under a migration.

use mysql::prelude::Queryable;

use crate::util::{command_with_url, mariadb_database, tls_file, wait_until, Run, TempDir, TestDb};

struct Maria {
    db: TestDb,
    name: String,
    port: String,
    dir: TempDir,
}

fn maria() -> Option<Maria> {
    let db = mariadb_database()?;
    let TestDb::Mariadb { name, url, .. } = &db else {
        unreachable!()
    };
    let name = name.clone();
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("a port in LOCKSTEP_TEST_MARIADB_URL")
        .to_string();
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.path().join("migrations")).unwrap();
    std::fs::write(
        dir.path().join("migrations/1_a.sql"),
        "-- upgrade\nCREATE TABLE a (id integer);\n",
    )
    .unwrap();
    Some(Maria {
        db,
        name,
        port,
        dir,
    })
}

impl Maria {
    fn run(&self, url: &str, args: &[&str]) -> Run {
        Run::from(self.command(url, args).output().unwrap())
    }

    fn command(&self, url: &str, args: &[&str]) -> std::process::Command {
        command_with_url(self.dir.path(), url, args)
    }

    fn url(&self, user: &str, host: &str, query: &str) -> String {
        format!("mysql://{user}@{host}:{}/{}{query}", self.port, self.name)
    }

    fn admin(&self) -> mysql::Conn {
        let TestDb::Mariadb { admin_url, .. } = &self.db else {
            unreachable!()
        };
        mysql::Conn::new(mysql::Opts::from_url(admin_url).unwrap()).unwrap()
    }
}

/// `tlsonly` may connect only over TLS. Each `ssl-mode` does what the
/// MySQL client's does; the server's certificate names only `localhost`.
#[test]
fn tls_modes_are_enforced() {
    let Some(m) = maria() else { return };
    let ca = tls_file("ca.crt");
    let other = tls_file("other-ca.crt");
    let cases = [
        ("127.0.0.1", "?ssl-mode=disabled".to_string(), 1),
        ("127.0.0.1", String::new(), 0),
        ("127.0.0.1", "?ssl-mode=REQUIRED".to_string(), 0),
        ("127.0.0.1", format!("?ssl-mode=verify_ca&ssl-ca={ca}"), 0),
        (
            "127.0.0.1",
            format!("?ssl-mode=verify_ca&ssl-ca={other}"),
            1,
        ),
        (
            "127.0.0.1",
            format!("?ssl-mode=verify_identity&ssl-ca={ca}"),
            1,
        ),
        (
            "localhost",
            format!("?ssl-mode=verify_identity&ssl-ca={ca}"),
            0,
        ),
    ];
    for (host, query, code) in cases {
        let run = m.run(&m.url("tlsonly", host, &query), &["status"]);
        assert_eq!(run.code, code, "{host}{query}: {}", run.stderr);
        if code == 1 {
            assert!(
                run.stderr.contains("cannot connect"),
                "{query}: {}",
                run.stderr
            );
            assert!(run.stderr.contains("hint: "), "{query}: {}", run.stderr);
            // Refused by the server or by TLS: `wait` does not wait.
            let wait = m.run(
                &m.url("tlsonly", host, &query),
                &["wait", "--timeout", "3s"],
            );
            wait.code(1);
            assert!(
                !wait.stderr.contains("waiting:"),
                "{query}: {}",
                wait.stderr
            );
        }
    }
    let run = m.run(
        &m.url(
            "tlsonly",
            "127.0.0.1",
            &format!("?ssl-mode=verify_identity&ssl-ca={ca}"),
        ),
        &["status"],
    );
    assert!(
        run.stderr.contains("hint: check `ssl-ca`"),
        "{}",
        run.stderr
    );
    m.run(
        &m.url("tlsonly", "127.0.0.1", "?ssl-mode=required"),
        &["upgrade"],
    )
    .ok();
    assert_eq!(m.db.history(), ["1 a applied"]);
}

#[test]
fn passwords_never_appear_in_output() {
    let Some(m) = maria() else { return };
    let secret = "pw-s3cret-Zq9";
    let good = m.url(&format!("lockstep_pw:{secret}"), "127.0.0.1", "");
    let run = m.run(&good, &["upgrade", "-v"]);
    run.ok();
    assert!(
        run.stderr.contains("mysql://lockstep_pw:***@127.0.0.1"),
        "{}",
        run.stderr
    );
    let wrong = "wrong-Pa55-word";
    let nowhere = good.replace(&format!(":{}/", m.port), ":1/");
    let cases = [
        (good.clone(), secret, &["status", "-v"][..], 0),
        (good.replace(secret, wrong), wrong, &["upgrade", "-v"], 1),
        (good.replace(secret, wrong), wrong, &["status", "--json"], 1),
        (good.replace(secret, wrong), wrong, &["lock", "status"], 1),
        (nowhere.clone(), secret, &["history", "-v", "--json"], 1),
        (nowhere, secret, &["upgrade"], 1),
        (format!("{good}?bogus=1"), secret, &["status"], 2),
    ];
    for (url, password, args, code) in cases {
        let run = m.run(&url, args);
        run.code(code);
        for out in [&run.stdout, &run.stderr] {
            assert!(
                !out.contains(password),
                "{args:?} printed the password:\n{out}"
            );
        }
    }
    let run = m.run(&good.replace(secret, wrong), &["status"]);
    assert!(run.stderr.contains("Access denied"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("hint: check the user name and password"),
        "{}",
        run.stderr
    );
}

#[test]
fn unix_socket_url() {
    let Some(m) = maria() else { return };
    let socket = std::env::var("LOCKSTEP_TEST_MARIADB_SOCKET")
        .expect("scripts/test-servers sets LOCKSTEP_TEST_MARIADB_SOCKET");
    let url = format!("mysql://root@localhost/{}?socket={socket}", m.name);
    m.run(&url, &["upgrade"]).ok();
    assert_eq!(m.db.history(), ["1 a applied"]);
}

#[test]
fn missing_database_gets_a_hint() {
    let Some(m) = maria() else { return };
    let url = format!("mysql://root@127.0.0.1:{}/no_such_db", m.port);
    let run = m.run(&url, &["status"]);
    run.code(1);
    assert!(
        run.stderr.contains("Unknown database 'no_such_db'"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("hint: create the database first: CREATE DATABASE `no_such_db`"),
        "{}",
        run.stderr
    );
}

/// A server that takes no writes (`read_only`, as a replica has): the
/// run fails at once, says why and where to point instead, and writes
/// nothing; reading commands still work.
#[test]
fn a_read_only_server_is_named_as_such() {
    let Some(m) = maria() else { return };
    // `read_only` binds users without the READ_ONLY ADMIN privilege: a
    // user of this database's own. The setting is the whole server's; the
    // other tests connect as users it does not bind.
    let user = format!("ro_{}", std::process::id());
    let mut admin = m.admin();
    admin
        .query_drop(format!(
            "CREATE USER '{user}'@'127.0.0.1'; GRANT ALL ON `{}`.* TO '{user}'@'127.0.0.1'",
            m.name
        ))
        .unwrap();
    admin.query_drop("SET GLOBAL read_only = 1").unwrap();
    let url = m.url(&user, "127.0.0.1", "");
    let upgrade = m.run(&url, &["upgrade"]);
    let status = m.run(&url, &["status"]);
    admin.query_drop("SET GLOBAL read_only = 0").unwrap();
    admin
        .query_drop(format!("DROP USER '{user}'@'127.0.0.1'"))
        .unwrap();
    upgrade.code(1);
    assert!(upgrade.stderr.contains("--read-only"), "{}", upgrade.stderr);
    assert!(
        upgrade
            .stderr
            .contains("hint: the server takes no writes (read-only, or a replica): point the database URL at the primary"),
        "{}",
        upgrade.stderr
    );
    status.ok();
    assert!(!m.db.table_exists("lockstep_history"));
    assert!(!m.db.table_exists("a"));
}

/// The server ends the migration's connection (`KILL`, as an operator or
/// a failover would): the run fails with exit 1 and says the connection
/// was lost; the migration rolled back, and a run after it applies it once.
#[test]
fn a_connection_killed_under_a_migration() {
    let Some(m) = maria() else { return };
    std::fs::write(
        m.dir.path().join("migrations/2_long.sql"),
        "-- upgrade\nINSERT INTO a VALUES (2);\nSELECT SLEEP(60);\n",
    )
    .unwrap();
    let url = m.url("root", "127.0.0.1", "");
    m.run(&url, &["upgrade", "--to", "1"]).ok();
    let holder = m
        .command(&url, &["upgrade"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut admin = m.admin();
    let mut id = None;
    wait_until(
        "the migration sleeps",
        std::time::Duration::from_secs(60),
        || {
            id = admin
            .query_first(format!(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{}' AND INFO = 'SELECT SLEEP(60)'",
                m.name
            ))
            .unwrap();
            id.is_some()
        },
    );
    let id: u64 = id.unwrap();
    admin.query_drop(format!("KILL CONNECTION {id}")).unwrap();
    let run = Run::from(holder.wait_with_output().unwrap());
    run.code(1);
    assert!(
        run.stderr
            .contains("hint: the connection to the database was lost"),
        "{}",
        run.stderr
    );
    assert_eq!(m.db.history(), ["1 a applied"]);
    assert_eq!(m.db.value("SELECT count(*) FROM a"), "0");
    std::fs::write(
        m.dir.path().join("migrations/2_long.sql"),
        "-- upgrade\nINSERT INTO a VALUES (2);\nSELECT SLEEP(0);\n",
    )
    .unwrap();
    // The file changed, but it was never applied: nothing to refuse.
    m.run(&url, &["upgrade"]).ok();
    assert_eq!(m.db.history(), ["1 a applied", "2 long applied"]);
    assert_eq!(m.db.value("SELECT count(*) FROM a"), "1");
}
