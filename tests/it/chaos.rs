//! Chaos rounds: many `lockstep upgrade` processes started at random moments
//! while faults are injected at random (SIGKILL of the holder or a waiter,
//! SIGSTOP of the holder past its lease, forced releases, SIGTERM); then a
//! final run finishes the work, and plain SQL checks the invariants.
//!
//! `LOCKSTEP_CHAOS_ROUNDS` (default 3) sets the rounds per engine and
//! `LOCKSTEP_CHAOS_SEED` replays a run; `scripts/chaos` runs many.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::util::{Backend, Child, Project, Run};

/// The migrations each round applies.
const MIGRATIONS: usize = 40;

/// The lease in a round: short, so that a frozen holder is taken over
/// within the round.
const TTL: Duration = Duration::from_secs(2);

/// A process that outlives this has hung: an invariant violation.
const PROCESS_LIMIT: Duration = Duration::from_secs(120);

/// xorshift64*: small, seedable, and enough for picking faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

#[derive(Debug, Default)]
pub struct Tally {
    pub rounds: usize,
    pub processes: usize,
    pub faults: BTreeMap<&'static str, usize>,
    pub exits: BTreeMap<String, usize>,
    pub dirty_resolved: usize,
    /// SQLite: exits 1 on SQLITE_BUSY while the harness kept a process
    /// frozen (the documented frozen-writer limit), not violations.
    pub busy_behind_frozen: usize,
    /// The first few of those exits' messages: each should name the
    /// stopped process that held the database.
    pub busy_samples: Vec<String>,
    pub violations: Vec<String>,
}

impl Tally {
    fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }
}

fn seed() -> u64 {
    std::env::var("LOCKSTEP_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

fn rounds() -> usize {
    std::env::var("LOCKSTEP_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

fn write_migrations(p: &Project, rng: &mut Rng) {
    p.file(
        "lockstep.toml",
        &format!("[lock]\nttl = \"{}s\"\ntimeout = \"90s\"\n", TTL.as_secs()),
    );
    p.migration(
        "0000_side.sql",
        "-- upgrade\nCREATE TABLE side (name varchar(20) NOT NULL);\n",
    );
    for i in 1..=MIGRATIONS {
        let insert = format!("INSERT INTO side VALUES ('m{i}');");
        let slow = p.busy_sql(0.2 + rng.below(6) as f64 / 10.0);
        let mut text = String::from("-- upgrade\n");
        if rng.chance(15) {
            // Outside a transaction: slow, then the side effect, each its
            // own statement.
            text.push_str(&format!("-- lockstep:no-transaction\n{slow}\n{insert}\n"));
        } else if rng.chance(5) {
            text.push_str(&format!("{slow}\n{insert}\n"));
        } else {
            text.push_str(&format!("{insert}\n"));
        }
        if rng.chance(5) {
            text.push_str(&format!(
                "-- rollback\nDELETE FROM side WHERE name = 'm{i}';\n"
            ));
        }
        p.migration(&format!("{i:04}_m{i}.sql"), &text);
    }
}

/// The pid of the lock's holder, if anyone holds it and it can be read:
/// on SQLite a holder frozen inside a migration keeps readers out too
/// (past the reader's 5 s busy timeout), and then no holder is picked.
fn holder_pid(p: &Project) -> Option<i64> {
    if let crate::util::TestDb::Sqlite { path } = &p.db {
        if !path.exists() {
            return None;
        }
    }
    match p
        .db
        .try_query("SELECT pid FROM lockstep_lock WHERE owner IS NOT NULL")
    {
        Ok(rows) => rows.first().and_then(|r| r[0].parse().ok()),
        Err(e) if e.contains("database is locked") => None,
        // No run has made the tables yet.
        Err(e)
            if e.contains("no such table")
                || e.contains("does not exist")
                || e.contains("doesn't exist") =>
        {
            None
        }
        Err(e) => panic!("reading the lock's holder: {e}"),
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

struct Running {
    child: Child,
    started: Instant,
    /// Signals this harness sent it.
    sent: Vec<i32>,
}

/// One round on a fresh database.
fn round(backend: Backend, rng: &mut Rng, tally: &mut Tally) {
    let Some(p) = Project::new(backend) else {
        return;
    };
    write_migrations(&p, rng);
    let processes = 8 + rng.below(13) as usize;
    let starts: Vec<Duration> = (0..processes).map(|_| rng.millis(0, 3000)).collect();
    let faults = 2 + rng.below(4) as usize;
    let mut fault_times: Vec<Duration> = (0..faults).map(|_| rng.millis(300, 4000)).collect();
    fault_times.sort();

    let begin = Instant::now();
    let mut running: Vec<Running> = Vec::new();
    let mut finished: Vec<(Run, Vec<i32>, Instant, Instant)> = Vec::new();
    // When processes were frozen: from SIGSTOP to SIGCONT.
    let mut frozen: Vec<(Instant, Instant)> = Vec::new();
    let mut pending_starts = starts.clone();
    pending_starts.sort();
    let mut stopped: Vec<(i32, Instant, Instant)> = Vec::new();
    loop {
        let now = begin.elapsed();
        while pending_starts.first().is_some_and(|t| *t <= now) {
            pending_starts.remove(0);
            running.push(Running {
                child: p.spawn(&["upgrade"]),
                started: Instant::now(),
                sent: Vec::new(),
            });
        }
        while fault_times.first().is_some_and(|t| *t <= now) {
            fault_times.remove(0);
            inject(&p, rng, tally, &mut running, &mut stopped);
        }
        // A frozen holder stays frozen past its lease, then resumes.
        stopped.retain(|(pid, since, until)| {
            if Instant::now() >= *until {
                signal(*pid, libc::SIGCONT);
                frozen.push((*since, Instant::now()));
                false
            } else {
                true
            }
        });
        let mut i = 0;
        while i < running.len() {
            if running[i].child.exited() {
                let r = running.remove(i);
                finished.push((r.child.finish(), r.sent, r.started, Instant::now()));
            } else if running[i].started.elapsed() > PROCESS_LIMIT {
                let r = running.remove(i);
                signal(r.child.pid(), libc::SIGKILL);
                tally
                    .violations
                    .push(format!("pid {} hung for {PROCESS_LIMIT:?}", r.child.pid()));
                finished.push((r.child.finish(), r.sent, r.started, Instant::now()));
            } else {
                i += 1;
            }
        }
        if running.is_empty() && pending_starts.is_empty() && stopped.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tally.processes += processes;

    for (run, sent, started, ended) in &finished {
        let overlapped_a_freeze = frozen
            .iter()
            .any(|(since, until)| since < ended && until > started);
        check_exit(run, sent, overlapped_a_freeze, tally);
    }
    finish(&p, tally);
    check_invariants(&p, tally);
    tally.rounds += 1;
}

/// Picks a fault and injects it.
fn inject(
    p: &Project,
    rng: &mut Rng,
    tally: &mut Tally,
    running: &mut [Running],
    stopped: &mut Vec<(i32, Instant, Instant)>,
) {
    let holder = holder_pid(p);
    let holder_index =
        holder.and_then(|pid| running.iter().position(|r| i64::from(r.child.pid()) == pid));
    match rng.below(5) {
        0 => {
            if let Some(i) = holder_index {
                signal(running[i].child.pid(), libc::SIGKILL);
                running[i].sent.push(libc::SIGKILL);
                tally.fault("sigkill_holder");
            }
        }
        1 => {
            let waiters: Vec<usize> = (0..running.len())
                .filter(|i| Some(*i) != holder_index)
                .collect();
            if !waiters.is_empty() {
                let i = waiters[rng.below(waiters.len() as u64) as usize];
                signal(running[i].child.pid(), libc::SIGKILL);
                running[i].sent.push(libc::SIGKILL);
                tally.fault("sigkill_waiter");
            }
        }
        2 => {
            if let Some(i) = holder_index {
                let pid = running[i].child.pid();
                if !stopped.iter().any(|(p, _, _)| *p == pid) {
                    signal(pid, libc::SIGSTOP);
                    running[i].sent.push(libc::SIGSTOP);
                    let now = Instant::now();
                    stopped.push((pid, now, now + TTL + rng.millis(500, 2000)));
                    tally.fault("sigstop_holder");
                }
            }
        }
        3 => {
            if holder.is_some() {
                let run = p.run(&[
                    "lock",
                    "release",
                    "--force",
                    "--yes",
                    "--lock-timeout",
                    "30s",
                ]);
                if run.code != 0 && run.code != 1 {
                    tally
                        .violations
                        .push(format!("lock release exited {}: {}", run.code, run.stderr));
                }
                tally.fault("force_release");
            }
        }
        _ => {
            if !running.is_empty() {
                let i = rng.below(running.len() as u64) as usize;
                signal(running[i].child.pid(), libc::SIGTERM);
                running[i].sent.push(libc::SIGTERM);
                tally.fault("sigterm");
            }
        }
    }
}

/// Every process exited with a documented code, and each 3 or 5 said why.
/// On SQLite a process frozen while it holds the database's write lock
/// blocks every writer (docs/locking.md); an exit 1 on SQLITE_BUSY during
/// a freeze the harness caused is that documented limit, counted apart.
fn check_exit(run: &Run, sent: &[i32], overlapped_a_freeze: bool, tally: &mut Tally) {
    if run.code == 1
        && run.signal.is_none()
        && overlapped_a_freeze
        && run.stderr.contains("(SQLITE_BUSY)")
    {
        tally.busy_behind_frozen += 1;
        if tally.busy_samples.len() < 5 {
            tally.busy_samples.push(run.stderr.clone());
        }
    }
    let key = match run.signal {
        Some(sig) => format!("signal {sig}"),
        None => format!("exit {}", run.code),
    };
    *tally.exits.entry(key.clone()).or_default() += 1;
    let documented = match (run.code, run.signal) {
        (_, Some(libc::SIGKILL)) => sent.contains(&libc::SIGKILL),
        // Before lockstep's main runs (while the program is still being
        // loaded) a signal can only have its default action; the process
        // printed nothing, and a shell sees 143 all the same.
        (_, Some(libc::SIGTERM)) => {
            sent.contains(&libc::SIGTERM) && run.stdout.is_empty() && run.stderr.is_empty()
        }
        (0 | 4, None) => true,
        (1, None) => overlapped_a_freeze && run.stderr.contains("(SQLITE_BUSY)"),
        (3, None) => run.stderr.contains("migration lock"),
        (5, None) => run.stderr.contains("lost the migration lock"),
        (130, None) => sent.contains(&libc::SIGINT),
        (143, None) => sent.contains(&libc::SIGTERM),
        _ => false,
    };
    if !documented {
        tally.violations.push(format!(
            "undocumented exit ({key}, signals sent {sent:?}):\n{}",
            run.stderr
        ));
    }
}

/// A final run finishes the work; a dirty migration is resolved the way a
/// human would, by looking at its side effect.
fn finish(p: &Project, tally: &mut Tally) {
    for _ in 0..MIGRATIONS + 5 {
        let run = p.run(&["upgrade", "--json"]);
        match run.code {
            0 => return,
            4 => {
                let doc = run.json();
                if doc["error"]["code"] != "dirty" {
                    tally
                        .violations
                        .push(format!("final upgrade refused: {}", run.stdout));
                    return;
                }
                let version = doc["error"]["migrations"][0]["version"].as_u64().unwrap();
                let ran = p.db.value(&format!(
                    "SELECT count(*) FROM side WHERE name = 'm{version}'"
                ));
                let how = if ran == "1" { "--applied" } else { "--forget" };
                let fix = p.run(&["fix", "dirty", &version.to_string(), how]);
                if fix.code != 0 {
                    tally
                        .violations
                        .push(format!("fix dirty failed: {}", fix.stderr));
                    return;
                }
                tally.dirty_resolved += 1;
            }
            _ => {
                tally
                    .violations
                    .push(format!("final upgrade exited {}: {}", run.code, run.stdout));
                return;
            }
        }
    }
    tally
        .violations
        .push("the final upgrade did not finish".into());
}

fn check_invariants(p: &Project, tally: &mut Tally) {
    let mut fail = |m: String| tally.violations.push(m);
    // Every side effect exactly once.
    let side =
        p.db.query("SELECT name, count(*) FROM side GROUP BY name ORDER BY name");
    if side.len() != MIGRATIONS || side.iter().any(|r| r[1] != "1") {
        fail(format!("side effects are not each exactly once: {side:?}"));
    }
    // History matches the side effects row for row, all applied.
    let history =
        p.db.query("SELECT name, state FROM lockstep_history WHERE version > 0 ORDER BY name");
    let names: Vec<&String> = side.iter().map(|r| &r[0]).collect();
    let recorded: Vec<&String> = history.iter().map(|r| &r[0]).collect();
    if names != recorded || history.iter().any(|r| r[1] != "applied") {
        fail(format!(
            "history does not match the side effects: {history:?}"
        ));
    }
    // Tokens only grow: in history by version, in the log by event.
    let tokens: Vec<i64> =
        p.db.query("SELECT lock_token FROM lockstep_history ORDER BY version")
            .iter()
            .map(|r| r[0].parse().unwrap_or(-1))
            .collect();
    if tokens.iter().any(|t| *t < 1) || tokens.windows(2).any(|w| w[0] > w[1]) {
        fail(format!("history tokens do not grow: {tokens:?}"));
    }
    let bumps: Vec<i64> = p
        .db
        .query("SELECT token FROM lockstep_lock_log WHERE event IN ('acquired', 'taken_over', 'force_released') ORDER BY id")
        .iter()
        .map(|r| r[0].parse().unwrap())
        .collect();
    if bumps.windows(2).any(|w| w[0] >= w[1]) {
        fail(format!("lock log tokens do not grow: {bumps:?}"));
    }
    // The lock ends free, without a manual release.
    if holder_pid(p).is_some() {
        fail("the lock is still held after the final run".into());
    }
}

fn report(backend: Backend, seed: u64, tally: &Tally) {
    println!(
        "chaos {backend:?} (seed {seed}): {} rounds, {} processes, faults {:?}, exits {:?}, dirty resolved {}, busy behind a frozen process {}, violations {}",
        tally.rounds,
        tally.processes,
        tally.faults,
        tally.exits,
        tally.dirty_resolved,
        tally.busy_behind_frozen,
        tally.violations.len()
    );
    for b in &tally.busy_samples {
        print_block("busy behind a frozen process", b);
    }
    for v in &tally.violations {
        print_block("violation", v);
    }
}

/// A message of several lines (a process's stderr), every line labelled,
/// so that `scripts/chaos`, which keeps only labelled lines, shows it whole.
fn print_block(label: &str, text: &str) {
    for (i, line) in text.trim_end().lines().enumerate() {
        let mark = if i == 0 { ':' } else { '|' };
        println!("{label}{mark} {line}");
    }
}

fn run_rounds(backend: Backend) {
    let seed = seed();
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    for _ in 0..rounds() {
        round(backend, &mut rng, &mut tally);
    }
    report(backend, seed, &tally);
    assert!(
        tally.violations.is_empty(),
        "{} invariant violations (seed {seed})",
        tally.violations.len()
    );
}

#[test]
fn chaos_sqlite() {
    run_rounds(Backend::Sqlite);
}

#[test]
fn chaos_postgres() {
    if crate::util::pg_admin_url().is_none() {
        return;
    }
    run_rounds(Backend::Postgres);
}

#[test]
fn chaos_mariadb() {
    if crate::util::mariadb_admin_url().is_none() {
        return;
    }
    run_rounds(Backend::Mariadb);
}
