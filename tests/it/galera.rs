//! The Galera cluster from `scripts/test-servers`, seen with plain SQL: what
//! it does to the locks other migration tools take, and so why lockstep's
//! lock is a fenced lease row (docs/locking.md).

use mysql::prelude::Queryable;

use crate::util::{galera_ports, galera_project, mariadb_session, Child};

/// `GET_LOCK` is local to a node: sessions on two nodes of one cluster are
/// both granted the same named lock at once, without a warning. Tools that
/// lock with it on MySQL (golang-migrate, Flyway, Prisma) would run twice.
#[test]
fn get_lock_is_granted_on_two_nodes_at_once() {
    let Some(ports) = galera_ports() else { return };
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
    let Some(ports) = galera_ports() else { return };
    let table = format!("galera_row_{}", std::process::id());
    let mut a = mariadb_session(ports[0]);
    let mut b = mariadb_session(ports[1]);
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

/// Twenty runs started at once, spread over the three nodes: every run
/// exits 0 and every migration's side effect happens exactly once, seen
/// from every node. Certification failures (two nodes taking the lock
/// row at once; the later commit loses) are retried, never reported.
#[test]
fn runs_spread_over_the_nodes_apply_each_migration_once() {
    let Some((p, urls)) = galera_project() else {
        return;
    };
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
    let children: Vec<Child> = (0..20)
        .map(|i| {
            let mut cmd = p.command(&["upgrade"]);
            cmd.env("LOCKSTEP_DATABASE_URL", &urls[i % 3])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            Child::from(cmd.spawn().unwrap())
        })
        .collect();
    for run in children.into_iter().map(Child::finish) {
        run.ok();
    }
    for port in galera_ports().unwrap() {
        let mut node = mariadb_session(port);
        node.query_drop("SET SESSION wsrep_sync_wait = 1").unwrap();
        let name = p.db.url().rsplit('/').next().unwrap().to_string();
        let counts: Vec<(String, i64)> = node
            .query(format!(
                "SELECT name, COUNT(*) FROM {name}.side GROUP BY name"
            ))
            .unwrap();
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
