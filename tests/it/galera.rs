//! The Galera cluster from `scripts/test-servers`, seen with plain SQL: what
//! it does to the locks other migration tools take, and so why lockstep's
//! lock is a fenced lease row (docs/locking.md).

use mysql::prelude::Queryable;

use crate::util::{galera_ports, mariadb_session};

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
