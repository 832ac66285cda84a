//! Network faults between lockstep and PostgreSQL: a fault-injecting TCP
//! proxy of the suite's own on loopback (reset, blackhole, delay), and a
//! real cut link between network namespaces the test creates.
//!
//! Through a proxy lockstep sees a server port other than the one it
//! connected to, so it relies on the lease alone (docs/locking.md): each
//! case shows another run taking over within the TTL plus one poll, and the
//! old holder writing nothing once the link comes back.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{wait_until, Backend, Child, Project, TestDb};

const LONG: Duration = Duration::from_secs(60);

/// What the proxy does with bytes.
#[derive(Default)]
struct Faults {
    /// Stop forwarding, keep both sockets open.
    blackhole: AtomicBool,
    /// Hold each chunk this many milliseconds before forwarding it.
    delay_ms: AtomicU64,
}

/// A TCP proxy from a local port to an upstream address.
struct Proxy {
    port: u16,
    faults: Arc<Faults>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (f, c) = (faults.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                c.lock().unwrap().push(client.try_clone().unwrap());
                c.lock().unwrap().push(server.try_clone().unwrap());
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    f.clone(),
                );
                pump(server, client, f.clone());
            }
        });
        Proxy {
            port,
            faults,
            conns,
        }
    }

    fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    fn blackhole(&self, on: bool) {
        self.faults.blackhole.store(on, Ordering::SeqCst);
    }

    fn delay(&self, d: Duration) {
        self.faults
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Resets every connection, both sides: an RST, not a clean close.
    fn reset(&self) {
        for stream in self.conns.lock().unwrap().drain(..) {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid socket and a valid option value.
            unsafe {
                libc::setsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to`, honouring the faults. A blackhole stops reading,
/// so the bytes wait in the kernel's buffers and flow again afterwards.
fn pump(mut from: TcpStream, mut to: TcpStream, faults: Arc<Faults>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            while faults.blackhole.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = faults.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            while faults.blackhole.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn pg_project() -> Option<(Project, String)> {
    let p = Project::new(Backend::Postgres)?;
    let TestDb::Postgres { name, .. } = &p.db else {
        unreachable!()
    };
    let name = name.clone();
    p.file("lockstep.toml", "[lock]\nttl = \"2s\"\ntimeout = \"60s\"\n");
    p.migration(
        "0_side.sql",
        "-- upgrade\nCREATE TABLE side (name text NOT NULL);\n",
    );
    Some((p, name))
}

fn side_migrations(p: &Project, first: &str) {
    p.migration(
        "1_m1.sql",
        &format!("-- upgrade\n{first}\nINSERT INTO side VALUES ('m1');\n"),
    );
    for i in 2..=5 {
        p.migration(
            &format!("{i}_m{i}.sql"),
            &format!("-- upgrade\nINSERT INTO side VALUES ('m{i}');\n"),
        );
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

/// Each side effect exactly once, and history matching it.
#[track_caller]
fn each_once(p: &Project) {
    let rows =
        p.db.query("SELECT name, count(*) FROM side GROUP BY name ORDER BY name");
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(rows.iter().all(|r| r[1] == "1"), "{rows:?}");
    assert_eq!(p.db.history().len(), 6);
}

/// The holder's session is running migration 1's `pg_sleep`.
fn running_sleep(p: &Project) -> bool {
    p.db.value(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'lockstep holder' \
         AND xact_start IS NOT NULL AND query LIKE '%pg_sleep%'",
    ) == "1"
}

fn spawn_via(p: &Project, url: &str, owner: &str) -> Child {
    let mut cmd = p.command(&["upgrade", "--owner", owner]);
    cmd.env("LOCKSTEP_DATABASE_URL", url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Child::from(cmd.spawn().unwrap())
}

/// The old holder, once the link is back, wrote nothing after the
/// takeover and stopped with exit 5, or exit 1 with a clear connection
/// error.
#[track_caller]
fn old_holder_stopped(run: &crate::util::Run) {
    match run.code {
        5 => assert!(
            run.stderr.contains("lost the migration lock"),
            "{}",
            run.stderr
        ),
        1 => assert!(
            run.stderr.contains("connection") || run.stderr.contains("closed"),
            "{}",
            run.stderr
        ),
        _ => panic!("old holder exited {}: {}", run.code, run.stderr),
    }
}

fn took_over(run: &crate::util::Run) {
    run.ok();
    assert!(
        run.stderr
            .contains("took over the migration lock from holder"),
        "{}",
        run.stderr
    );
}

fn pg_port() -> u16 {
    std::env::var("LOCKSTEP_TEST_PG_PORT")
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn reset_during_a_migration() {
    let Some((p, db)) = pg_project() else { return };
    side_migrations(&p, "SELECT pg_sleep(10);");
    let proxy = Proxy::start(pg_port());
    let holder = spawn_via(&p, &proxy.url(&db), "holder");
    wait_until("the holder holds the lock", LONG, || {
        holder_of(&p).as_deref() == Some("holder")
    });
    std::thread::sleep(Duration::from_millis(500));
    proxy.reset();
    let cut = Instant::now();
    let old = holder.finish();
    println!("old holder after the reset said:\n{}", old.stderr);
    old.code(1);
    assert!(
        old.stderr.contains("migration 1 m1 failed"),
        "{}",
        old.stderr
    );
    assert!(old.stderr.contains("connection"), "{}", old.stderr);
    p.migration("1_m1.sql", "-- upgrade\nINSERT INTO side VALUES ('m1');\n");
    let next = p.run(&["upgrade", "--owner", "next"]);
    took_over(&next);
    println!("reset: taken over {:?} after the reset", cut.elapsed());
    each_once(&p);
}

#[test]
fn blackhole_during_a_migration() {
    let Some((p, db)) = pg_project() else { return };
    side_migrations(&p, "SELECT pg_sleep(2);");
    let proxy = Proxy::start(pg_port());
    let holder = spawn_via(&p, &proxy.url(&db), "holder");
    // Cut while migration 1 runs, not merely while the lock is held: a
    // test thread starved for the length of the sleep (a full suite on two
    // cores) saw the lock held only as the holder was releasing it, and
    // the cut then fell after all its work.
    wait_until("the holder runs migration 1", LONG, || running_sleep(&p));
    proxy.blackhole(true);
    let cut = Instant::now();
    // The holder looks alive to the server (the proxy's kernel answers its
    // keepalives) but is silent: its lease runs out, and a run connected
    // directly takes over.
    let next = p.run(&["upgrade", "--owner", "next"]);
    took_over(&next);
    println!(
        "blackhole: taken over and finished {:?} after the cut",
        cut.elapsed()
    );
    proxy.blackhole(false);
    old_holder_stopped(&holder.finish());
    each_once(&p);
}

#[test]
fn silent_holder_inside_a_transaction() {
    let Some((p, db)) = pg_project() else { return };
    side_migrations(&p, "SELECT pg_sleep(1);");
    let proxy = Proxy::start(pg_port());
    // In one transaction, each migration is a round trip: between them the
    // transaction is open on the server, with the lock row locked.
    let mut cmd = p.command(&["upgrade", "--owner", "holder", "--single-transaction"]);
    cmd.env("LOCKSTEP_DATABASE_URL", proxy.url(&db))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let holder = Child::from(cmd.spawn().unwrap());
    wait_until("the holder's transaction has the lock row", LONG, || {
        running_sleep(&p)
    });
    proxy.blackhole(true);
    let cut = Instant::now();
    // idle_in_transaction_session_timeout (the TTL) ends the silent
    // session and frees the row; then the lease expires.
    let next = p.run(&["upgrade", "--owner", "next"]);
    took_over(&next);
    let bound = cut.elapsed();
    println!("silent in a transaction: taken over and finished {bound:?} after the cut");
    proxy.blackhole(false);
    holder
        .finish()
        .lost_connection("terminating connection due to idle-in-transaction timeout");
    each_once(&p);
}

#[test]
fn delay_longer_than_the_lease() {
    let Some((p, db)) = pg_project() else { return };
    side_migrations(&p, "SELECT pg_sleep(1);");
    let proxy = Proxy::start(pg_port());
    let holder = spawn_via(&p, &proxy.url(&db), "holder");
    wait_until("the holder runs migration 1", LONG, || running_sleep(&p));
    // Every message now takes longer than the lease: renewals arrive too
    // late, the lease expires between round trips, and a direct run takes
    // over; the holder's next fence fails.
    proxy.delay(Duration::from_secs(3));
    let next = p.run(&["upgrade", "--owner", "next"]);
    took_over(&next);
    old_holder_stopped(&holder.finish());
    each_once(&p);
}

/// A real cut link: lockstep runs in a network namespace of the test's own
/// and reaches PostgreSQL through a veth pair into a second namespace,
/// where a proxy thread of this test forwards to the server's Unix socket.
/// The test then takes the link down. Skipped, saying so, where the kernel
/// refuses namespaces.
#[test]
fn cut_link_between_network_namespaces() {
    let Some((p, db)) = pg_project() else { return };
    let Some(net) = Netns::create() else {
        return;
    };
    side_migrations(&p, "SELECT pg_sleep(2);");
    let socket = format!(
        "{}/.s.PGSQL.{}",
        std::env::var("LOCKSTEP_TEST_PG_SOCKET").unwrap(),
        pg_port()
    );
    let port = net.serve(socket);
    let url = format!(
        "postgres://postgres@{}:{port}/{db}?sslmode=disable",
        net.server_addr
    );
    let mut cmd = net.exec_in_client(&p, &["upgrade", "--owner", "holder"]);
    cmd.env("LOCKSTEP_DATABASE_URL", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let holder = Child::from(cmd.spawn().unwrap());
    // While migration 1 runs (see blackhole_during_a_migration).
    wait_until("the holder runs migration 1", LONG, || running_sleep(&p));
    net.link(false);
    let cut = Instant::now();
    let next = p.run(&["upgrade", "--owner", "next"]);
    took_over(&next);
    println!(
        "cut link: taken over and finished {:?} after the cut",
        cut.elapsed()
    );
    net.link(true);
    old_holder_stopped(&holder.finish());
    each_once(&p);
}

/// Two network namespaces joined by a veth pair, with addresses only on
/// the pair's two ends, inside the namespaces.
struct Netns {
    client: String,
    server: String,
    client_dev: String,
    server_addr: String,
}

impl Netns {
    fn create() -> Option<Netns> {
        let id = std::process::id() % 50_000;
        let n = (id % 250) + 1;
        let client = format!("lsc{id}");
        let server = format!("lss{id}");
        let (client_dev, server_dev) = (format!("lc{id}"), format!("ls{id}"));
        let net = |args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        };
        if let Err(e) = net(&["netns", "add", &client]) {
            println!("skipped: network namespaces are not available here (ip netns add: {e})");
            return None;
        }
        let created = Netns {
            client: client.clone(),
            server: server.clone(),
            client_dev: client_dev.clone(),
            server_addr: format!("10.231.{n}.2"),
        };
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), server.clone()],
            vec![
                "link".into(),
                "add".into(),
                client_dev.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                server_dev.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                client_dev.clone(),
                "netns".into(),
                client.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                server_dev.clone(),
                "netns".into(),
                server.clone(),
            ],
            vec![
                "-n".into(),
                client.clone(),
                "addr".into(),
                "add".into(),
                format!("10.231.{n}.1/30"),
                "dev".into(),
                client_dev.clone(),
            ],
            vec![
                "-n".into(),
                server.clone(),
                "addr".into(),
                "add".into(),
                format!("10.231.{n}.2/30"),
                "dev".into(),
                server_dev.clone(),
            ],
            vec![
                "-n".into(),
                client.clone(),
                "link".into(),
                "set".into(),
                client_dev.clone(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                server.clone(),
                "link".into(),
                "set".into(),
                server_dev.clone(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                client.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(e) = net(&args) {
                println!("skipped: the kernel refused `ip {}`: {e}", args.join(" "));
                return None;
            }
        }
        Some(created)
    }

    /// Listens inside the server namespace (a thread switched into it) and
    /// forwards each connection to a Unix socket, which lives in the file
    /// system, not in a network namespace.
    fn serve(&self, socket: String) -> u16 {
        let ns = std::fs::File::open(format!("/var/run/netns/{}", self.server)).unwrap();
        let addr = self.server_addr.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace descriptor; it switches only
            // this thread.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let listener = TcpListener::bind((addr.as_str(), 0)).unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            for client in listener.incoming().flatten() {
                let Ok(server) = std::os::unix::net::UnixStream::connect(&socket) else {
                    continue;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                });
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                });
            }
        });
        rx.recv().unwrap()
    }

    fn exec_in_client(&self, p: &Project, args: &[&str]) -> std::process::Command {
        let inner = p.command(args);
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.client])
            .arg(inner.get_program())
            .args(inner.get_args());
        cmd.current_dir(p.dir.path());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }

    /// Cuts the link with `tc netem loss 100%` (every packet dropped, the
    /// interface still up) where the kernel has netem, else by taking the
    /// interface down; `up` restores it.
    fn link(&self, up: bool) {
        let run = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(["netns", "exec", &self.client])
                .args(args)
                .output()
                .unwrap()
        };
        if up {
            let _ = run(&["tc", "qdisc", "del", "dev", &self.client_dev, "root"]);
            assert!(run(&["ip", "link", "set", &self.client_dev, "up"])
                .status
                .success());
            return;
        }
        let netem = run(&[
            "tc",
            "qdisc",
            "add",
            "dev",
            &self.client_dev,
            "root",
            "netem",
            "loss",
            "100%",
        ]);
        if netem.status.success() {
            println!("cut: tc netem loss 100%");
        } else {
            println!(
                "cut: tc netem is not available here ({}); taking the interface down instead",
                String::from_utf8_lossy(&netem.stderr).trim()
            );
            assert!(run(&["ip", "link", "set", &self.client_dev, "down"])
                .status
                .success());
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// Regression, found by the chaos rounds: a SIGTERM that arrived while the
/// run was still connecting ended the process by the signal's default
/// action instead of exit code 143. A slow link keeps it connecting.
#[test]
fn sigterm_while_connecting_still_exits_143() {
    let Some((p, db)) = pg_project() else { return };
    side_migrations(&p, "SELECT 1;");
    let proxy = Proxy::start(pg_port());
    proxy.delay(Duration::from_millis(300));
    let holder = spawn_via(&p, &proxy.url(&db), "holder");
    std::thread::sleep(Duration::from_millis(150));
    holder.signal(libc::SIGTERM);
    let run = holder.finish();
    assert_eq!((run.code, run.signal), (143, None), "{}", run.stderr);
    proxy.delay(Duration::ZERO);
    assert_eq!(holder_of(&p), None);
}

/// A read-only command stuck on a silent link stops at once on SIGINT,
/// with 130 rather than by the signal's default action.
#[test]
fn sigint_stops_a_command_stuck_on_a_silent_link() {
    let Some((p, db)) = pg_project() else { return };
    let proxy = Proxy::start(pg_port());
    proxy.blackhole(true);
    let mut cmd = p.command(&["status"]);
    cmd.env("LOCKSTEP_DATABASE_URL", proxy.url(&db))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let stuck = Child::from(cmd.spawn().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    stuck.signal(libc::SIGINT);
    let run = stuck.finish();
    assert_eq!((run.code, run.signal), (130, None), "{}", run.stderr);
}
