//! The Galera cluster from `scripts/test-servers`, seen with plain SQL: what
//! it does to the locks other migration tools take, and so why lockstep's
//! lock is a fenced lease row (docs/locking.md).

use mysql::prelude::Queryable;

use std::time::Duration;

use crate::util::{galera, mariadb_session, wait_until, Child, Project};

const LONG: Duration = Duration::from_secs(60);

/// The database's name: the tests read it on every node.
fn database(p: &Project) -> String {
    p.db.url().rsplit('/').next().unwrap().to_string()
}

/// The side effects, each name with how often it happened, as `node` sees
/// them.
fn side_effects(node: &mut mysql::Conn, p: &Project) -> Vec<(String, i64)> {
    node.query(format!(
        "SELECT name, COUNT(*) FROM {}.side GROUP BY name ORDER BY name",
        database(p)
    ))
    .unwrap()
}

/// A side table, a migration that inserts `long` and then sleeps as
/// `sleep` says (an SQL expression of seconds), and one that inserts
/// `after`.
fn long_migration(p: &Project, sleep: &str) {
    p.migration(
        "0001_side.sql",
        "-- upgrade\nCREATE TABLE side (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20) NOT NULL);\n",
    );
    p.migration(
        "0002_long.sql",
        &format!("-- upgrade\nINSERT INTO side (name) VALUES ('long');\nSELECT SLEEP({sleep});\n"),
    );
    p.migration(
        "0003_after.sql",
        "-- upgrade\nINSERT INTO side (name) VALUES ('after');\n",
    );
}

/// `upgrade --owner OWNER` through `url`, not waited for.
fn upgrade_on(p: &Project, url: &str, owner: &str) -> Child {
    let mut cmd = p.command(&["upgrade", "--owner", owner]);
    cmd.env("LOCKSTEP_DATABASE_URL", url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Child::from(cmd.spawn().unwrap())
}

/// `GET_LOCK` is local to a node: sessions on two nodes of one cluster are
/// both granted the same named lock at once, without a warning. Tools that
/// lock with it on MySQL (golang-migrate, Flyway, Prisma) would run twice.
#[test]
fn get_lock_is_granted_on_two_nodes_at_once() {
    let Some(cluster) = galera(false) else { return };
    let ports = &cluster.ports;
    let name = format!("lockstep_test_{}", std::process::id());
    let get = |conn: &mut mysql::Conn| -> Option<i64> {
        conn.query_first(format!("SELECT GET_LOCK('{name}', 0)"))
            .unwrap()
            .flatten()
    };
    let mut first = mariadb_session(ports[0]);
    let mut second = mariadb_session(ports[1]);
    let mut beside_first = mariadb_session(ports[0]);
    assert_eq!(get(&mut first), Some(1));
    // On one node it excludes, as a single server's would ...
    assert_eq!(get(&mut beside_first), Some(0));
    // ... but another node grants it as well.
    assert_eq!(get(&mut second), Some(1));
}

/// A row locked `FOR UPDATE` on one node does not block a writer on
/// another: Galera certifies transactions at commit, so the later of two
/// conflicting commits fails there with a deadlock error (1213), which is
/// why every lock write of lockstep's is retried when it meets one.
#[test]
fn a_row_lock_on_one_node_does_not_block_another_node() {
    let Some(cluster) = galera(false) else { return };
    let table = format!("galera_row_{}", std::process::id());
    let mut a = mariadb_session(cluster.ports[0]);
    let mut b = mariadb_session(cluster.ports[1]);
    a.query_drop(format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, holder VARCHAR(10)); INSERT INTO {table} VALUES (1, NULL)"
    ))
    .unwrap();
    // Causal reads: node B sees node A's table before it goes on.
    b.query_drop("SET SESSION wsrep_sync_wait = 1").unwrap();
    b.query_drop(format!("SELECT * FROM {table}")).unwrap();

    a.query_drop("BEGIN").unwrap();
    a.query_drop(format!("SELECT * FROM {table} WHERE id = 1 FOR UPDATE"))
        .unwrap();
    a.query_drop(format!("UPDATE {table} SET holder = 'a' WHERE id = 1"))
        .unwrap();
    // Node B takes "the same lock" at once, and commits first.
    b.query_drop("BEGIN").unwrap();
    b.query_drop(format!("SELECT * FROM {table} WHERE id = 1 FOR UPDATE"))
        .unwrap();
    b.query_drop(format!("UPDATE {table} SET holder = 'b' WHERE id = 1"))
        .unwrap();
    b.query_drop("COMMIT").unwrap();
    // Node A learns at commit (or at its next statement) that it lost.
    let lost = a.query_drop("COMMIT").unwrap_err();
    assert!(
        matches!(&lost, mysql::Error::MySqlError(e) if e.code == 1213),
        "{lost}"
    );
    let holder: Option<String> = b
        .query_first(format!("SELECT holder FROM {table} WHERE id = 1"))
        .unwrap();
    assert_eq!(holder.as_deref(), Some("b"));
    b.query_drop(format!("DROP TABLE {table}")).unwrap();
}

/// Twenty runs started at one instant, spread over the three nodes: every
/// run exits 0 and every migration's side effect happens exactly once,
/// seen from every node. Certification failures (two nodes taking the lock
/// row at once; the later commit loses) are retried, never reported, and a
/// take that another node's take overtook between the look and the take
/// fails and is tried again.
#[test]
fn runs_spread_over_the_nodes_apply_each_migration_once() {
    let Some(cluster) = galera(false) else { return };
    let (p, urls) = cluster.project();
    p.migration(
        "0000_side.sql",
        "-- upgrade\nCREATE TABLE side (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20) NOT NULL);\n",
    );
    for i in 1..=30 {
        p.migration(
            &format!("{i:04}_m{i}.sql"),
            &format!("-- upgrade\nINSERT INTO side (name) VALUES ('m{i}');\n"),
        );
    }
    // Released at one instant, on a database without lockstep's tables.
    let spread: Vec<String> = (0..20).map(|i| urls[i % 3].clone()).collect();
    for run in p
        .spawn_together_on(&spread, &["upgrade"])
        .into_iter()
        .map(Child::finish)
    {
        run.ok();
    }
    for (i, port) in cluster.ports.iter().enumerate() {
        let mut node = cluster.session(i);
        let name = database(&p);
        let counts = side_effects(&mut node, &p);
        assert_eq!(counts.len(), 30, "node on {port}: {counts:?}");
        assert!(
            counts.iter().all(|(_, n)| *n == 1),
            "node on {port}: {counts:?}"
        );
        let history: Option<i64> = node
            .query_first(format!(
                "SELECT COUNT(*) FROM {name}.lockstep_history WHERE state = 'applied'"
            ))
            .unwrap();
        assert_eq!(history, Some(31), "node on {port}");
    }
    // Tokens only grew.
    p.db.assert_tokens_only_grow();
}

/// A migration in a transaction that runs longer than the lease, on node
/// A, while a run on node B waits: B cannot see what A's transaction has
/// locked, so only the lease that A's heartbeat renews keeps B from taking
/// over. A finishes, nothing is taken over, nothing runs twice.
#[test]
fn a_waiter_on_another_node_never_takes_over_a_live_holder() {
    let Some(cluster) = galera(false) else { return };
    let (p, urls) = cluster.project();
    p.file("lockstep.toml", "[lock]\nttl = \"1s\"\ntimeout = \"60s\"\n");
    long_migration(&p, "4");
    let holder = upgrade_on(&p, &urls[0], "holder");
    let mut b = cluster.session(1);
    let name = database(&p);
    wait_until("the holder runs its long migration", LONG, || {
        let applied: Result<Option<i64>, _> = b.query_first(format!(
            "SELECT COUNT(*) FROM {name}.lockstep_history WHERE version = 1"
        ));
        matches!(applied, Ok(Some(1)))
    });
    let waiter = upgrade_on(&p, &urls[1], "waiter");
    let (holder, waiter) = (holder.finish(), waiter.finish());
    holder.ok();
    waiter.ok();
    let events: Vec<String> = b
        .query(format!("SELECT event FROM {name}.lockstep_lock_log"))
        .unwrap();
    assert!(!events.contains(&"taken_over".to_string()), "{events:?}");
    assert!(!events.contains(&"lost".to_string()), "{events:?}");
    assert_eq!(
        side_effects(&mut b, &p),
        [("after".to_string(), 1), ("long".to_string(), 1)]
    );
    let by: Vec<(i64, String)> = b
        .query(format!(
            "SELECT version, applied_by FROM {name}.lockstep_history ORDER BY version"
        ))
        .unwrap();
    assert_eq!(by.len(), 3, "{by:?}");
    assert!(by.iter().all(|(_, who)| who == "holder"), "{by:?}");
}

/// An application's write on node B to a row that a running migration on
/// node A changed aborts the migration's transaction (Galera's
/// certification; the migration learns it as error 1213, even inside a
/// `SLEEP`). The migration rolled back whole and is run again: the run
/// exits 0, and both writes count once.
#[test]
fn a_migration_aborted_by_a_write_on_another_node_runs_again() {
    let Some(cluster) = galera(false) else { return };
    let (p, urls) = cluster.project();
    let name = database(&p);
    let mut b = mariadb_session(cluster.ports[1]);
    b.query_drop(format!(
        "CREATE TABLE {name}.counter (id INT PRIMARY KEY, n INT NOT NULL); INSERT INTO {name}.counter VALUES (1, 0)"
    ))
    .unwrap();
    p.migration(
        "0001_count.sql",
        "-- upgrade\nUPDATE counter SET n = n + 1 WHERE id = 1;\nSELECT SLEEP(3);\n",
    );
    let mut cmd = p.command(&["upgrade"]);
    cmd.env("LOCKSTEP_DATABASE_URL", &urls[0])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let run = Child::from(cmd.spawn().unwrap());
    let mut a = mariadb_session(cluster.ports[0]);
    wait_until("the migration sleeps", LONG, || {
        let sleeping: Option<i64> = a
            .query_first("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(3)'")
            .unwrap();
        sleeping == Some(1)
    });
    b.query_drop(format!("UPDATE {name}.counter SET n = n + 10 WHERE id = 1"))
        .unwrap();
    run.finish().ok();
    b.query_drop("SET SESSION wsrep_sync_wait = 1").unwrap();
    let n: Option<i64> = b
        .query_first(format!("SELECT n FROM {name}.counter"))
        .unwrap();
    assert_eq!(n, Some(11));
    let applied: Option<i64> = b
        .query_first(format!(
            "SELECT COUNT(*) FROM {name}.lockstep_history WHERE state = 'applied'"
        ))
        .unwrap();
    assert_eq!(applied, Some(1));
}

/// A Galera node stopped by `kill -9`; started again, rejoining the
/// cluster, when the test ends, however it ends.
struct KilledNode {
    servers: String,
    node: usize,
}

impl KilledNode {
    fn kill(node: usize) -> KilledNode {
        let servers = std::env::var("LOCKSTEP_TEST_SERVERS_DIR")
            .expect("LOCKSTEP_TEST_SERVERS_DIR is set with LOCKSTEP_TEST_GALERA_PORTS");
        let pid_file = format!("{servers}/galera{}/mariadbd.pid", node + 1);
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        KilledNode { servers, node }
    }
}

impl Drop for KilledNode {
    fn drop(&mut self) {
        let started = std::process::Command::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-servers"),
        )
        .args(["galera-node", &self.servers, &(self.node + 1).to_string()])
        .status()
        .unwrap();
        assert!(
            started.success(),
            "Galera node {} did not start again",
            self.node + 1
        );
    }
}

/// `kill -9` of the node that the holder is connected to, in the middle of
/// a migration: the run on it fails, saying it lost its connection; a run
/// waiting on another node takes the lock over once the lease has run out,
/// and applies everything, each migration's side effect once.
#[test]
fn a_holders_node_killed_mid_migration_is_taken_over_from_another_node() {
    let Some(cluster) = galera(true) else { return };
    let (p, urls) = cluster.project();
    p.file("lockstep.toml", "[lock]\nttl = \"2s\"\ntimeout = \"60s\"\n");
    // Long only on the node that is killed.
    long_migration(&p, &format!("IF(@@port = {}, 60, 0)", cluster.ports[2]));
    let holder = upgrade_on(&p, &urls[2], "holder");
    let mut third = mariadb_session(cluster.ports[2]);
    wait_until("the holder runs its long migration", LONG, || {
        let sleeping: Option<i64> = third
            .query_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(IF(%'",
            )
            .unwrap();
        sleeping == Some(1)
    });
    let waiter = upgrade_on(&p, &urls[0], "waiter");
    std::thread::sleep(Duration::from_millis(500));
    let killed = KilledNode::kill(2);
    let holder = holder.finish();
    holder.lost_connection("");
    let waiter = waiter.finish();
    waiter.ok();
    assert!(
        waiter
            .stderr
            .contains("took over the migration lock from holder: the lease expired"),
        "{}",
        waiter.stderr
    );
    let mut first = cluster.session(0);
    let name = database(&p);
    assert_eq!(
        side_effects(&mut first, &p),
        [("after".to_string(), 1), ("long".to_string(), 1)]
    );
    let by: Vec<(i64, String)> = first
        .query(format!(
            "SELECT version, applied_by FROM {name}.lockstep_history WHERE state = 'applied' ORDER BY version"
        ))
        .unwrap();
    assert_eq!(
        by,
        [
            (1, "holder".to_string()),
            (2, "waiter".to_string()),
            (3, "waiter".to_string())
        ]
    );
    drop(killed);
    p.db.assert_tokens_only_grow();
}
