//! Test support: a project directory with migrations, a fresh database per
//! test, and the real `lockstep` binary run against it. Results are checked
//! with plain SQL through the engines' own client libraries, never through
//! lockstep's code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mariadb,
}

/// A test server's address, from `scripts/test-servers` through `var`.
/// Missing: a loud failure in CI; locally a failure too, unless `skip=1`
/// opts out (then `None`, and the test returns early).
fn test_server(var: &str, skip: &str, what: &str) -> Option<String> {
    if let Ok(value) = std::env::var(var) {
        return Some(value);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    if !in_ci && std::env::var(skip).is_ok_and(|v| v == "1") {
        eprintln!("skipped: {skip}=1 and no {var}");
        return None;
    }
    panic!(
        "{var} is not set: run the tests with `scripts/test`, which starts {what} \
         (locally, {skip}=1 skips the tests that need it)"
    );
}

/// The PostgreSQL server the tests use.
pub fn pg_admin_url() -> Option<String> {
    test_server("LOCKSTEP_TEST_PG_URL", "LOCKSTEP_SKIP_PG", "PostgreSQL")
}

/// The binary with `args` and `-d url`, run in `dir`, with no database
/// URL or password from the environment: what the engine-only tests run.
pub fn command_with_url(dir: &Path, url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockstep"));
    cmd.args(args)
        .args(["-d", url])
        .current_dir(dir)
        .env_remove("LOCKSTEP_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("PGPASSWORD");
    cmd
}

/// A file of the throwaway CA and server certificate `scripts/test-servers`
/// made (the same for PostgreSQL and MariaDB).
pub fn tls_file(name: &str) -> String {
    let dir = std::env::var("LOCKSTEP_TEST_TLS_DIR")
        .expect("scripts/test-servers sets LOCKSTEP_TEST_TLS_DIR");
    format!("{dir}/{name}")
}

/// The three-node Galera cluster from `scripts/test-servers`, held for one
/// test: shared with the other Galera tests, or alone, for a test that
/// stops a node. A lock file orders them, whether each test is a process
/// (nextest) or a thread (`cargo test`).
pub struct Galera {
    /// The nodes' ports.
    pub ports: Vec<u16>,
    _in_use: std::fs::File,
}

/// The cluster, once no test holds it alone (or, with `alone`, once no
/// other test holds it at all). Missing: a loud failure in CI; locally a
/// failure too, unless `LOCKSTEP_SKIP_MARIADB=1` opts out.
pub fn galera(alone: bool) -> Option<Galera> {
    let ports = test_server(
        "LOCKSTEP_TEST_GALERA_PORTS",
        "LOCKSTEP_SKIP_MARIADB",
        "MariaDB and a Galera cluster",
    )?;
    let lock =
        std::env::temp_dir().join(format!("lockstep-galera-{}.lock", ports.replace(',', "-")));
    let in_use = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .unwrap();
    if alone {
        in_use.lock().unwrap();
    } else {
        in_use.lock_shared().unwrap();
    }
    Some(Galera {
        ports: ports
            .split(',')
            .map(|p| p.parse().expect("LOCKSTEP_TEST_GALERA_PORTS holds ports"))
            .collect(),
        _in_use: in_use,
    })
}

impl Galera {
    /// A project whose database lives on the cluster, and the URL of that
    /// database on each of the three nodes.
    pub fn project(&self) -> (Project, Vec<String>) {
        use mysql::prelude::Queryable;
        let name = unique("lockstep_test");
        mariadb_session(self.ports[0])
            .query_drop(format!("CREATE DATABASE {name}"))
            .unwrap();
        let dir = TempDir::new();
        std::fs::create_dir_all(dir.path().join("migrations")).unwrap();
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("mysql://root@127.0.0.1:{port}/{name}"))
            .collect();
        let db = TestDb::Mariadb {
            admin_url: urls[0].clone(),
            name,
            url: urls[0].clone(),
        };
        (Project { dir, db }, urls)
    }

    /// A session on node `node` (from 0) with causal reads: it sees what
    /// every node committed before each of its statements.
    pub fn session(&self, node: usize) -> mysql::Conn {
        use mysql::prelude::Queryable;
        let mut conn = mariadb_session(self.ports[node]);
        conn.query_drop("SET SESSION wsrep_sync_wait = 1").unwrap();
        conn
    }
}

/// A plain session on a MariaDB node, as root, in the `lockstep` database.
pub fn mariadb_session(port: u16) -> mysql::Conn {
    let opts = mysql::OptsBuilder::new()
        .ip_or_hostname(Some("127.0.0.1"))
        .tcp_port(port)
        .user(Some("root"))
        .db_name(Some("lockstep"));
    mysql::Conn::new(opts)
        .unwrap_or_else(|e| panic!("cannot connect to the MariaDB node on port {port}: {e}"))
}

fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database of the test's own.
pub enum TestDb {
    Sqlite {
        path: PathBuf,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
    Mariadb {
        admin_url: String,
        name: String,
        url: String,
    },
}

/// Text of one result value; NULL is `NULL`.
pub type Rows = Vec<Vec<String>>;

impl TestDb {
    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite { path } => format!("sqlite://{}", path.display()),
            TestDb::Postgres { url, .. } | TestDb::Mariadb { url, .. } => url.clone(),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            TestDb::Sqlite { .. } => Backend::Sqlite,
            TestDb::Postgres { .. } => Backend::Postgres,
            TestDb::Mariadb { .. } => Backend::Mariadb,
        }
    }

    /// Runs SQL and returns every row as text.
    pub fn query(&self, sql: &str) -> Rows {
        self.try_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs SQL and returns every row as text, or the engine's message.
    pub fn try_query(&self, sql: &str) -> Result<Rows, String> {
        match self {
            TestDb::Sqlite { path } => {
                let conn = rusqlite::Connection::open(path).unwrap();
                let text = |v: rusqlite::types::ValueRef<'_>| match v {
                    rusqlite::types::ValueRef::Null => "NULL".to_string(),
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    rusqlite::types::ValueRef::Real(v) => v.to_string(),
                    rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    rusqlite::types::ValueRef::Blob(b) => format!("{b:?}"),
                };
                let read = || -> rusqlite::Result<Rows> {
                    let mut stmt = conn.prepare(sql)?;
                    let n = stmt.column_count();
                    let rows =
                        stmt.query_map([], |r| (0..n).map(|i| Ok(text(r.get_ref(i)?))).collect())?;
                    rows.collect()
                };
                read().map_err(|e| e.to_string())
            }
            TestDb::Mariadb { url, .. } => {
                use mysql::prelude::Queryable;
                let mut conn = mysql::Conn::new(mysql::Opts::from_url(url).unwrap()).unwrap();
                let mut rows: Vec<mysql::Row> = Vec::new();
                let mut result = conn.query_iter(sql).map_err(|e| e.to_string())?;
                while let Some(set) = result.iter() {
                    for row in set {
                        rows.push(row.map_err(|e| e.to_string())?);
                    }
                }
                Ok(rows
                    .into_iter()
                    .map(|r| {
                        r.unwrap()
                            .into_iter()
                            .map(|v| match v {
                                mysql::Value::NULL => "NULL".to_string(),
                                mysql::Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
                                mysql::Value::Int(i) => i.to_string(),
                                mysql::Value::UInt(i) => i.to_string(),
                                other => other.as_sql(true).trim_matches('\'').to_string(),
                            })
                            .collect()
                    })
                    .collect())
            }
            TestDb::Postgres { url, .. } => {
                let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
                let messages = client.simple_query(sql).map_err(|e| pg_message(&e))?;
                Ok(messages
                    .iter()
                    .filter_map(|m| match m {
                        postgres::SimpleQueryMessage::Row(r) => Some(
                            (0..r.len())
                                .map(|i| r.get(i).unwrap_or("NULL").to_string())
                                .collect(),
                        ),
                        _ => None,
                    })
                    .collect())
            }
        }
    }

    /// The single value of a one-row, one-column query.
    pub fn value(&self, sql: &str) -> String {
        let rows = self.query(sql);
        assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
        rows[0][0].clone()
    }

    pub fn exec(&self, sql: &str) {
        match self {
            TestDb::Sqlite { path } => rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            TestDb::Mariadb { .. } => {
                self.try_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            TestDb::Postgres { url, .. } => postgres::Client::connect(url, postgres::NoTls)
                .unwrap()
                .batch_execute(sql)
                .unwrap_or_else(|e| panic!("{sql}: {}", pg_message(&e))),
        }
    }

    pub fn table_exists(&self, name: &str) -> bool {
        match self {
            TestDb::Sqlite { path } => {
                path.exists()
                    && self.value(&format!(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{name}'"
                )) == "1"
            }
            TestDb::Postgres { .. } => {
                self.value(&format!("SELECT to_regclass('{name}') IS NOT NULL")) == "t"
            }
            TestDb::Mariadb { .. } => {
                self.value(&format!(
                    "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{name}'"
                )) == "1"
            }
        }
    }

    /// Every acquisition and takeover in the lock log has a higher token
    /// than the one before it.
    #[track_caller]
    pub fn assert_tokens_only_grow(&self) {
        let tokens: Vec<i64> = self
            .query("SELECT token FROM lockstep_lock_log WHERE event IN ('acquired', 'taken_over') ORDER BY id")
            .iter()
            .map(|r| r[0].parse().unwrap())
            .collect();
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    }

    /// `version name state` of every history row, in order.
    pub fn history(&self) -> Vec<String> {
        self.query("SELECT version, name, state FROM lockstep_history ORDER BY version")
            .into_iter()
            .map(|r| r.join(" "))
            .collect()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres {
            admin_url, name, ..
        } = self
        {
            if let Ok(mut c) = postgres::Client::connect(admin_url, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
        if let TestDb::Mariadb {
            admin_url, name, ..
        } = self
        {
            use mysql::prelude::Queryable;
            if let Ok(mut c) = mysql::Conn::new(mysql::Opts::from_url(admin_url).unwrap()) {
                let _ = c.query_drop(format!("DROP DATABASE IF EXISTS {name}"));
            }
        }
    }
}

/// The MariaDB server the tests use.
pub fn mariadb_admin_url() -> Option<String> {
    test_server(
        "LOCKSTEP_TEST_MARIADB_URL",
        "LOCKSTEP_SKIP_MARIADB",
        "MariaDB",
    )
}

/// Creates a fresh MariaDB database; the URL points at it.
pub fn mariadb_database() -> Option<TestDb> {
    use mysql::prelude::Queryable;
    let admin_url = mariadb_admin_url()?;
    let name = unique("lockstep_test");
    let mut admin =
        mysql::Conn::new(mysql::Opts::from_url(&admin_url).unwrap()).unwrap_or_else(|e| {
            panic!("cannot connect to the test server at LOCKSTEP_TEST_MARIADB_URL: {e}")
        });
    admin.query_drop(format!("CREATE DATABASE {name}")).unwrap();
    let url = with_database(&admin_url, &name);
    Some(TestDb::Mariadb {
        admin_url,
        name,
        url,
    })
}

/// Creates a fresh PostgreSQL database; the URL points at it.
pub fn pg_database() -> Option<TestDb> {
    let admin_url = pg_admin_url()?;
    let name = unique("lockstep_test");
    let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls).unwrap_or_else(|e| {
        panic!("cannot connect to the test server at LOCKSTEP_TEST_PG_URL: {e}")
    });
    admin
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
        .unwrap();
    let url = with_database(&admin_url, &name);
    Some(TestDb::Postgres {
        admin_url,
        name,
        url,
    })
}

/// The admin URL with another database name.
pub fn with_database(admin_url: &str, name: &str) -> String {
    let (base, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    let slash = base.rfind('/').expect("a database in the URL");
    let mut url = format!("{}/{name}", &base[..slash]);
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// A directory of the test's own, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique("lockstep-it"));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A project: a directory with `migrations/`, and a database.
pub struct Project {
    pub dir: TempDir,
    pub db: TestDb,
}

impl Project {
    /// `None` only when PostgreSQL is explicitly skipped locally.
    pub fn new(backend: Backend) -> Option<Project> {
        let dir = TempDir::new();
        std::fs::create_dir_all(dir.path().join("migrations")).unwrap();
        let db = match backend {
            Backend::Sqlite => TestDb::Sqlite {
                path: dir.path().join("test.db"),
            },
            Backend::Postgres => pg_database()?,
            Backend::Mariadb => mariadb_database()?,
        };
        Some(Project { dir, db })
    }

    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// A snapshot's name: MariaDB's output differs where its DDL runs
    /// outside a transaction (and says so), so it has snapshots of its own.
    pub fn snapshot(&self, name: &str) -> String {
        match self.backend() {
            Backend::Mariadb => format!("{name}_mariadb"),
            _ => name.to_string(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file relative to the project directory.
    pub fn file(&self, rel: &str, content: &str) -> &Self {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self
    }

    /// Writes `migrations/<name>`.
    pub fn migration(&self, name: &str, content: &str) -> &Self {
        self.file(&format!("migrations/{name}"), content)
    }

    /// A command for the binary in the project directory, pointed at the
    /// test database, with stable output and no colour.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_on(&self.db.url(), args)
    }

    /// [`Project::command`] against another database URL: a server of the
    /// test's own.
    pub fn command_on(&self, url: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lockstep"));
        cmd.args(args).stdin(Stdio::null());
        self.in_project(&mut cmd, url);
        cmd
    }

    /// Runs `cmd` in the project's directory against `url`, with stable
    /// output and nothing else from the environment that changes it.
    fn in_project(&self, cmd: &mut Command, url: &str) {
        cmd.current_dir(self.dir.path())
            .env("LOCKSTEP_DATABASE_URL", url)
            .env("LOCKSTEP_STABLE_OUTPUT", "1")
            .env_remove("DATABASE_URL")
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE");
    }

    /// Runs `lockstep {args}` (one string, as a shell reads it) on a
    /// terminal of its own, typing `answer` at it: for what asks first.
    pub fn run_on_terminal(&self, args: &str, answer: &str) -> Run {
        use std::io::Write;
        let command = format!("{} {args}", env!("CARGO_BIN_EXE_lockstep"));
        let mut child = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .current_dir(self.dir.path())
            .env("LOCKSTEP_DATABASE_URL", self.db.url())
            .env("LOCKSTEP_STABLE_OUTPUT", "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("`script` (util-linux) gives the command a terminal");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        Run::from(child.wait_with_output().unwrap())
    }

    /// Runs the binary to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().unwrap())
    }
}

/// A finished run of the binary.
#[derive(Debug)]
pub struct Run {
    /// The exit code; -1 when a signal ended the process.
    pub code: i32,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        use std::os::unix::process::ExitStatusExt;
        Run {
            code: o.status.code().unwrap_or(-1),
            signal: o.status.signal(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn code(&self, want: i32) -> &Self {
        assert_eq!(
            self.code, want,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.code(0)
    }

    /// Exit 1 for a connection the server ended: its message, or
    /// `connection closed` when that message and the closed socket reach
    /// the client in one read (the driver then reports only the latter);
    /// either way with the lost-connection hint.
    #[track_caller]
    pub fn lost_connection(&self, server_message: &str) -> &Self {
        self.code(1);
        assert!(
            self.stderr.contains(server_message) || self.stderr.contains("connection closed"),
            "{}",
            self.stderr
        );
        assert!(
            self.stderr
                .contains("hint: the connection to the database was lost"),
            "{}",
            self.stderr
        );
        self
    }

    /// stdout parsed as the one JSON document it must be.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// A running `lockstep` process.
pub struct Child {
    child: std::process::Child,
}

impl From<std::process::Child> for Child {
    fn from(child: std::process::Child) -> Child {
        Child { child }
    }
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Whether it has exited (it is then reaped; `finish` still returns
    /// its output).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits for the process and returns what it printed.
    pub fn finish(self) -> Run {
        Run::from(self.child.wait_with_output().unwrap())
    }
}

impl Project {
    /// Starts the binary without waiting for it.
    pub fn spawn(&self, args: &[&str]) -> Child {
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Child { child }
    }

    /// Starts `n` runs of the binary that begin at one instant: each waits
    /// on one shared pipe, which is closed once all exist.
    pub fn spawn_together(&self, n: usize, args: &[&str]) -> Vec<Child> {
        self.spawn_together_on(&vec![self.db.url(); n], args)
    }

    /// [`Project::spawn_together`], a run for each database URL.
    pub fn spawn_together_on(&self, urls: &[String], args: &[&str]) -> Vec<Child> {
        let (gate, open) = std::io::pipe().unwrap();
        let children: Vec<Child> = urls
            .iter()
            .map(|url| {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg("read _; exec \"$0\" \"$@\" </dev/null")
                    .arg(env!("CARGO_BIN_EXE_lockstep"))
                    .args(args)
                    .stdin(gate.try_clone().unwrap())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                self.in_project(&mut cmd, url);
                Child::from(cmd.spawn().unwrap())
            })
            .collect();
        // Once every shell is blocked reading the gate (or after a while,
        // where the kernel names that wait otherwise).
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(3)
            && !children.iter().all(|c: &Child| {
                std::fs::read_to_string(format!("/proc/{}/wchan", c.pid()))
                    .is_ok_and(|w| w.contains("pipe"))
            })
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(open);
        children
    }

    /// SQL that keeps the database busy for about `secs` seconds.
    pub fn busy_sql(&self, secs: f64) -> String {
        match self.backend() {
            Backend::Postgres => format!("SELECT pg_sleep({secs});"),
            Backend::Mariadb => format!("SELECT SLEEP({secs});"),
            Backend::Sqlite => format!(
                "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {}) SELECT x FROM c);",
                (secs * sqlite_rows_per_second()) as u64
            ),
        }
    }
}

/// How many rows of a recursive CTE SQLite counts per second here: SQLite
/// has no sleep, so busy work stands in for one.
pub fn sqlite_rows_per_second() -> f64 {
    static RATE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *RATE.get_or_init(|| {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let n = 300_000u64;
        let started = std::time::Instant::now();
        let _: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) SELECT x FROM c)"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        n as f64 / started.elapsed().as_secs_f64()
    })
}

/// Polls `check` until it holds, failing the test after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: std::time::Duration, mut check: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A PostgreSQL error with the server's own message; `Display` alone says
/// only "db error".
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// PostgreSQL servers of one test's own, which it may restart, crash or
/// promote: `scripts/test-servers MODE` (`private-pg`, one server;
/// `pg-pair`, a primary and its streaming standby), stopped on drop.
pub struct PrivateServers {
    dir: String,
    /// Each server's port, the primary's first.
    pub ports: Vec<String>,
}

impl PrivateServers {
    const SCRIPT: &'static str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-servers");

    pub fn start(mode: &str) -> PrivateServers {
        let out = Command::new(Self::SCRIPT).arg(mode).output().unwrap();
        assert!(
            out.status.success(),
            "scripts/test-servers {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut parts = text.split_whitespace().map(str::to_string);
        PrivateServers {
            dir: parts.next().unwrap(),
            ports: parts.collect(),
        }
    }

    /// `scripts/test-servers ACTION DIR`: `restart-pg`, `stop-primary`,
    /// `promote-standby`.
    pub fn run(&self, action: &str) {
        let status = Command::new(Self::SCRIPT)
            .args([action, &self.dir])
            .status()
            .unwrap();
        assert!(status.success(), "scripts/test-servers {action}");
    }
}

impl Drop for PrivateServers {
    fn drop(&mut self) {
        let _ = Command::new(Self::SCRIPT)
            .args(["stop", &self.dir])
            .status();
    }
}
