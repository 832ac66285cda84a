//! A migration's waits for the application's table locks, with real
//! sessions: a transaction left open on the table, a query that arrives
//! behind the migration, and what lockstep says about them. PostgreSQL and
//! MariaDB (SQLite has no table locks: its one lock is lockstep's).

use std::time::{Duration, Instant};

use crate::util::{wait_until, Backend, Project, TestDb};

/// A session of the test's own on the project's database: the blocker,
/// or the application's next query.
enum Session {
    Postgres(Box<postgres::Client>),
    Mariadb(mysql::Conn),
}

impl Session {
    fn open(db: &TestDb) -> Session {
        match db {
            TestDb::Postgres { url, .. } => Session::Postgres(Box::new(
                postgres::Client::connect(url, postgres::NoTls).unwrap(),
            )),
            TestDb::Mariadb { url, .. } => {
                Session::Mariadb(mysql::Conn::new(mysql::Opts::from_url(url).unwrap()).unwrap())
            }
            TestDb::Sqlite { .. } => unreachable!("SQLite has no table locks"),
        }
    }

    fn exec(&mut self, sql: &str) {
        match self {
            Session::Postgres(c) => c.batch_execute(sql).unwrap(),
            Session::Mariadb(c) => {
                use mysql::prelude::Queryable;
                c.query_drop(sql).unwrap()
            }
        }
    }

    /// The server's id of this session: what lockstep names as the blocker.
    fn pid(&mut self) -> i64 {
        match self {
            Session::Postgres(c) => c
                .query_one("SELECT pg_backend_pid()::bigint", &[])
                .unwrap()
                .get(0),
            Session::Mariadb(c) => i64::from(c.connection_id()),
        }
    }

    /// Opens a transaction that reads `table` and stays open: it holds the
    /// table's weakest lock, which every `ALTER TABLE` must wait for.
    fn hold(&mut self, table: &str) {
        self.exec("BEGIN");
        self.exec(&format!("SELECT count(*) FROM {table}"));
    }

    /// Opens a transaction that writes `table` and stays open: a
    /// `CREATE INDEX CONCURRENTLY` on it waits for that transaction after
    /// its index exists.
    fn hold_writing(&mut self, table: &str) {
        self.exec("BEGIN");
        self.exec(&format!("INSERT INTO {table} VALUES (2)"));
    }
}

/// The project with a table `users` and a table `audit` that counts the
/// migration's runs, and a migration that alters `users` and counts
/// itself.
fn project(backend: Backend) -> Option<Project> {
    let p = Project::new(backend)?;
    p.db.exec("CREATE TABLE users (id int); INSERT INTO users VALUES (1)");
    p.db.exec("CREATE TABLE audit (n int)");
    p.migration(
        "1_add_email.sql",
        "-- upgrade\nALTER TABLE users ADD COLUMN email text;\nINSERT INTO audit VALUES (1);\n",
    );
    Some(p)
}

/// How many times the lock log says a migration gave up and ran again.
fn retries_logged(p: &Project) -> usize {
    // The log's table exists once the run made lockstep's tables.
    p.db.try_query("SELECT count(*) FROM lockstep_lock_log WHERE event = 'lock_retry'")
        .map_or(0, |rows| rows[0][0].parse().unwrap())
}

macro_rules! servers {
    ($name:ident, |$backend:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn scenario($backend: Backend) $body

            #[test]
            fn postgres() {
                scenario(Backend::Postgres);
            }

            #[test]
            fn mariadb() {
                scenario(Backend::Mariadb);
            }
        }
    };
}

servers!(
    an_open_transaction_stalls_neither_the_table_nor_the_run,
    |backend| {
        let Some(p) = project(backend) else {
            return;
        };
        let mut blocker = Session::open(&p.db);
        let blocker_pid = blocker.pid();
        blocker.hold("users");
        let run = p.spawn(&["upgrade", "--statement-lock-timeout", "1s"]);
        wait_until(
            "the migration gives up once",
            Duration::from_secs(20),
            || retries_logged(&p) >= 1,
        );
        // The application's next query, sent while the migration is tried
        // again and again behind the open transaction: it waits at most one
        // lock timeout, never for the transaction.
        let mut app = Session::open(&p.db);
        let asked = Instant::now();
        app.exec("SELECT count(*) FROM users");
        let waited = asked.elapsed();
        assert!(
            waited < Duration::from_secs(4),
            "the application's query waited {waited:?} behind the migration"
        );
        assert_eq!(p.db.value("SELECT count(*) FROM audit"), "0");
        blocker.exec("COMMIT");
        let done = run.finish();
        done.ok();
        assert!(
            done.stderr.contains(&format!("pid {blocker_pid} (")),
            "the blocker is named: {}",
            done.stderr
        );
        assert!(
            done.stderr.contains("gave up waiting for"),
            "{}",
            done.stderr
        );
        // Each try was undone whole: the migration's insert happened once.
        assert_eq!(p.db.value("SELECT count(*) FROM audit"), "1");
        assert_eq!(p.db.history(), ["1 add_email applied"]);
        assert!(retries_logged(&p) >= 1);
        let detail = p.db.value(
            "SELECT detail FROM lockstep_lock_log WHERE event = 'lock_retry' ORDER BY id LIMIT 1",
        );
        assert!(
            detail.contains("migration 1 add_email gave up waiting"),
            "{detail}"
        );
    }
);

servers!(
    a_migration_that_keeps_giving_up_fails_naming_the_blocker,
    |backend| {
        let Some(p) = project(backend) else {
            return;
        };
        // The configuration allows one retry; the file bounds its wait.
        p.file("lockstep.toml", "[statements]\nlock_retries = 1\n");
        p.migration(
        "1_add_email.sql",
        "-- upgrade\n-- lockstep:lock-timeout 1s\nALTER TABLE users ADD COLUMN email text;\nINSERT INTO audit VALUES (1);\n",
    );
        let mut blocker = Session::open(&p.db);
        let blocker_pid = blocker.pid();
        blocker.hold("users");
        let run = p.run(&["upgrade", "--json"]);
        run.code(1);
        let doc = run.json();
        let error = &doc["error"];
        assert_eq!(error["code"], "migration_lock_timeout", "{doc:#}");
        assert_eq!(error["tries"], 2, "{doc:#}");
        let held_by = &error["blocked"]["blockers"][0];
        assert_eq!(held_by["pid"], blocker_pid, "{doc:#}");
        assert_eq!(held_by["state"], "idle in transaction", "{doc:#}");
        let terminate = match backend {
            Backend::Postgres => format!("SELECT pg_terminate_backend({blocker_pid})"),
            _ => format!("KILL {blocker_pid}"),
        };
        assert_eq!(held_by["terminate"], terminate.as_str());
        let hint = error["hint"].as_str().unwrap();
        assert!(hint.contains(&terminate), "{hint}");
        assert!(hint.contains("lockstep never does"), "{hint}");
        // Nothing changed, and the blocker was left alone.
        blocker.exec("COMMIT");
        assert_eq!(p.db.value("SELECT count(*) FROM audit"), "0");
        assert!(p.db.history().is_empty());
        assert!(p.db.try_query("SELECT email FROM users").is_err());
        assert_eq!(retries_logged(&p), 1);
    }
);

servers!(lock_status_shows_what_the_holder_waits_for, |backend| {
    let Some(p) = project(backend) else {
        return;
    };
    let mut blocker = Session::open(&p.db);
    let blocker_pid = blocker.pid();
    blocker.hold("users");
    let run = p.spawn(&["upgrade", "--statement-lock-timeout", "20s"]);
    let mut status = serde_json::Value::Null;
    wait_until("lock status sees the wait", Duration::from_secs(20), || {
        status = p.run(&["lock", "status", "--json"]).json();
        !status["activity"]["blocked"].is_null()
    });
    assert_eq!(
        status["activity"]["blocked"]["blockers"][0]["pid"], blocker_pid,
        "{status:#}"
    );
    // The migration's statement, not lockstep's own before it.
    let running = status["activity"]["statement"].as_str().unwrap_or_default();
    assert!(
        running.starts_with("ALTER TABLE users ADD COLUMN email"),
        "{status:#}"
    );
    let human = p.run(&["lock", "status"]);
    assert!(human.stdout.contains("waiting for"), "{}", human.stdout);
    assert!(
        human.stdout.contains(&format!("pid {blocker_pid}")),
        "{}",
        human.stdout
    );
    let metrics = p.run(&["lock", "status", "--format", "prometheus"]);
    assert!(
        metrics
            .stdout
            .contains("lockstep_lock_holder_waiting{scope=\"lockstep_history\"} 1"),
        "{}",
        metrics.stdout
    );
    blocker.exec("COMMIT");
    run.finish().ok();
    assert_eq!(p.db.value("SELECT count(*) FROM audit"), "1");
});

/// `CREATE INDEX CONCURRENTLY` that gives up leaves its index, invalid: it
/// is dropped before the next try, and the index ends valid, once.
#[test]
fn create_index_concurrently_is_retried_after_its_invalid_index_is_dropped() {
    let Some(p) = project(Backend::Postgres) else {
        return;
    };
    p.migration(
        "1_add_email.sql",
        "-- upgrade\n-- lockstep:no-transaction\nCREATE INDEX CONCURRENTLY users_id ON users (id);\n",
    );
    let mut blocker = Session::open(&p.db);
    blocker.hold_writing("users");
    let run = p.spawn(&["upgrade", "--statement-lock-timeout", "1s"]);
    wait_until("the index gives up once", Duration::from_secs(20), || {
        retries_logged(&p) >= 1
    });
    blocker.exec("COMMIT");
    run.finish().ok();
    let indexes = p.db.query(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = 'users'::regclass",
    );
    assert_eq!(indexes, [["users_id", "t"]]);
    assert_eq!(p.db.history(), ["1 add_email applied"]);
}

/// An unnamed `CREATE INDEX CONCURRENTLY` that gives up: which invalid
/// index is its own only a human can tell, so it is not run again, and
/// the error says what to drop.
#[test]
fn an_unnamed_index_that_gave_up_is_left_for_a_human_with_the_statement_to_drop_it() {
    let Some(p) = project(Backend::Postgres) else {
        return;
    };
    p.migration(
        "1_add_email.sql",
        "-- upgrade\n-- lockstep:no-transaction\nCREATE INDEX CONCURRENTLY ON users (id);\n",
    );
    let mut blocker = Session::open(&p.db);
    blocker.hold_writing("users");
    let run = p.run(&["upgrade", "--statement-lock-timeout", "1s", "--json"]);
    blocker.exec("COMMIT");
    run.code(1);
    let doc = run.json();
    assert_eq!(doc["error"]["code"], "migration_lock_timeout", "{doc:#}");
    assert_eq!(doc["error"]["dirty"], true, "{doc:#}");
    assert_eq!(
        doc["error"]["leftover"][0], "DROP INDEX CONCURRENTLY IF EXISTS public.users_id_idx",
        "{doc:#}"
    );
    assert!(doc["error"]["hint"]
        .as_str()
        .unwrap()
        .contains("lockstep fix dirty 1 --forget"));
    assert_eq!(
        p.db.value("SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_id_idx'::regclass"),
        "f"
    );
    assert_eq!(retries_logged(&p), 0);
}

servers!(
    a_statement_timeout_directive_bounds_its_migration,
    |backend| {
        let Some(p) = project(backend) else {
            return;
        };
        let sleep = match backend {
            Backend::Postgres => "SELECT pg_sleep(5);",
            _ => "SELECT SLEEP(5);",
        };
        p.migration(
        "1_add_email.sql",
        &format!("-- upgrade\n-- lockstep:statement-timeout 1s\n{sleep}\nINSERT INTO audit VALUES (1);\n"),
    );
        let run = p.run(&["upgrade", "--json"]);
        run.code(1);
        let doc = run.json();
        assert_eq!(doc["error"]["code"], "migration_failed", "{doc:#}");
        let sqlstate = doc["error"]["sqlstate"].as_str().unwrap_or_default();
        // PostgreSQL's 57014, MariaDB's max_statement_time 1969.
        assert!(["57014", "1969"].contains(&sqlstate), "{doc:#}");
        assert_eq!(p.db.value("SELECT count(*) FROM audit"), "0");
        assert!(p.db.history().is_empty());
    }
);

// MariaDB cannot say which session holds a table's metadata lock: any
// session with a transaction open may. One in another database, open
// longer, is named after the one in the migration's database (a test run
// beside others, or a server shared by applications, has such sessions).
#[test]
fn mariadb_names_the_blocker_in_the_migration_s_database_first() {
    let Some(p) = project(Backend::Mariadb) else {
        return;
    };
    let other = crate::util::mariadb_database().expect("the same server");
    other.exec("CREATE TABLE elsewhere (id int); INSERT INTO elsewhere VALUES (1)");
    let mut older = Session::open(&other);
    let older_pid = older.pid();
    older.hold("elsewhere");
    // `trx_started` counts whole seconds: the other database's transaction
    // must be the older by the server's count, or the order proves nothing.
    std::thread::sleep(Duration::from_millis(1100));
    let mut blocker = Session::open(&p.db);
    let blocker_pid = blocker.pid();
    blocker.hold("users");
    p.file("lockstep.toml", "[statements]\nlock_retries = 0\n");
    let run = p.run(&["upgrade", "--json", "--statement-lock-timeout", "1s"]);
    run.code(1);
    let doc = run.json();
    let blockers = &doc["error"]["blocked"]["blockers"];
    assert_eq!(blockers[0]["pid"], blocker_pid, "{doc:#}");
    let pids: Vec<i64> = blockers
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["pid"].as_i64().unwrap())
        .collect();
    assert!(pids.contains(&older_pid), "{doc:#}");
    blocker.exec("COMMIT");
    older.exec("COMMIT");
}
