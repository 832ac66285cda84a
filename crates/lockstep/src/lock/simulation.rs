//! The protocol under a deterministic simulation: several runs acquire,
//! renew, migrate under the fence, pause past the lease, crash and release,
//! while an operator forces releases and deletes the lock row, in an order
//! a seeded generator picks, on the in-memory store's simulated clock.
//! After every step the lock's promises are checked:
//!
//! - at most one run holds a fence that is valid;
//! - a migration commits only with the current token (a stale one never
//!   writes);
//! - a holder that crashed, or froze past its lease, is replaced: no run
//!   that tries for the lock then is refused;
//! - every acquisition, release, takeover, forced release and loss is in
//!   the log, in order, and tokens never repeat.
//!
//! A failing seed is printed with the steps that led to it, and replays
//! alone with `LOCKSTEP_SIM_SEED=<seed> cargo test -p lockstep simulation`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::acquire::{attempt, Attempt, Taken};
use super::memory::{MemoryStore, World};
use super::{Actor, Fence, ForcedRelease, LockOptions, LockStore, LogEvent, Renewal, Request};

/// Seeds run by default; each is a fresh world.
const SEEDS: u64 = 2_000;

/// Steps per seed.
const STEPS: usize = 300;

/// The lease, in simulated milliseconds.
const TTL_MS: i64 = 1_000;

/// A small, seeded generator (splitmix64): the same seed, the same run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, up_to: i64) -> i64 {
        self.below(up_to as u64 + 1) as i64
    }
}

/// What a simulated run is doing.
#[derive(Debug, Clone)]
enum State {
    /// Trying for the lock.
    Waiting,
    /// Holding it, between migrations.
    Holding(Fence),
    /// Inside a fenced migration's transaction.
    Migrating(Fence, u64),
    /// Crashed, or stopped by an error: it never acts again.
    Gone,
}

struct Run {
    owner: String,
    store: MemoryStore,
    state: State,
    /// Frozen until this time.
    paused_until: i64,
    /// Frozen inside a migration since this time: the server ends the
    /// session once the freeze outlasts the lease.
    frozen_in_transaction: Option<i64>,
}

struct Sim {
    world: Arc<Mutex<World>>,
    rng: Rng,
    runs: Vec<Run>,
    operator: MemoryStore,
    options: LockOptions,
    /// The token of the newest acquisition or forced release: the only one
    /// a write may carry.
    current: i64,
    /// Every event the runs and the operator caused, in order.
    expected: Vec<(String, i64)>,
    /// When each token's lease runs out, as the runs' actions renewed it.
    leases: HashMap<i64, i64>,
    /// Tokens whose holders crashed (or were stopped by an error).
    crashed_tokens: Vec<i64>,
    trace: Vec<String>,
    next_version: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let world = World::new(rng.below(2) == 0);
        // Sometimes every run has the same executor id (pods of one
        // deployment named alike): only tokens tell them apart.
        let same_owner = rng.below(4) == 0;
        let runs = (0..2 + rng.below(4))
            .map(|i| Run {
                owner: if same_owner {
                    "pod".into()
                } else {
                    format!("run{i}")
                },
                store: MemoryStore::connect(&world),
                state: State::Waiting,
                paused_until: 0,
                frozen_in_transaction: None,
            })
            .collect();
        let operator = MemoryStore::connect(&world);
        Sim {
            world,
            rng,
            runs,
            operator,
            options: LockOptions {
                ttl: Duration::from_millis(TTL_MS as u64),
                ..LockOptions::default()
            },
            current: 0,
            expected: Vec::new(),
            leases: HashMap::new(),
            crashed_tokens: Vec::new(),
            trace: Vec::new(),
            next_version: 1,
        }
    }

    fn now(&self) -> i64 {
        self.world.lock().unwrap().now_ms
    }

    fn step(&mut self) -> Result<(), String> {
        match self.rng.below(12) {
            0 | 1 => self.advance(),
            2 => self.operate(),
            _ => {
                let i = self.rng.below(self.runs.len() as u64) as usize;
                let now = self.now();
                let run = &mut self.runs[i];
                if matches!(run.state, State::Gone) || run.paused_until > now {
                    return Ok(());
                }
                run.frozen_in_transaction = None;
                self.act(i)?;
            }
        }
        self.check()
    }

    fn advance(&mut self) {
        let ms = self.rng.millis(TTL_MS / 2);
        let mut w = self.world.lock().unwrap();
        w.now_ms += ms;
        self.trace.push(format!("clock +{ms} ms = {}", w.now_ms));
        // A fenced transaction frozen past the lease: the server ends it.
        for (i, run) in self.runs.iter_mut().enumerate() {
            if run
                .frozen_in_transaction
                .is_some_and(|since| w.now_ms - since > TTL_MS)
            {
                run.frozen_in_transaction = None;
                w.kill(run.store.conn);
                self.trace.push(format!(
                    "run{i} ({}): the server ends its idle transaction",
                    run.owner
                ));
            }
        }
    }

    /// The operator forces a release of whatever holds the lock, or
    /// deletes the lock row by hand.
    fn operate(&mut self) {
        let operator = Actor {
            owner: "operator",
            host: "desk",
            pid: 1,
            command: "lock release",
        };
        if self.rng.below(5) == 0 {
            self.world.lock().unwrap().delete_row();
            self.trace
                .push("operator: DELETE FROM lockstep_lock".into());
            return;
        }
        let Ok(Some(seen)) = self.operator.read_lock("scope") else {
            return;
        };
        if !seen.is_held() {
            return;
        }
        let forced = self.operator.force_release(&ForcedRelease {
            scope: "scope",
            expected: &seen,
            actor: &operator,
            wait: Duration::ZERO,
        });
        self.trace.push(format!(
            "operator: force release of token {}: {forced:?}",
            seen.token
        ));
        if let Ok(true) = forced {
            self.current = seen.token + 1;
            self.expected.push(("force_released".into(), self.current));
        }
    }

    fn act(&mut self, i: usize) -> Result<(), String> {
        let state = self.runs[i].state.clone();
        match state {
            State::Waiting => self.try_for_lock(i),
            State::Holding(fence) => {
                self.hold(i, fence);
                Ok(())
            }
            State::Migrating(fence, version) => self.migrate(i, fence, version),
            State::Gone => Ok(()),
        }
    }

    fn actor(owner: &str) -> Actor<'_> {
        Actor {
            owner,
            host: "sim",
            pid: 1,
            command: "upgrade",
        }
    }

    fn try_for_lock(&mut self, i: usize) -> Result<(), String> {
        let run = &mut self.runs[i];
        let actor = Sim::actor(&run.owner);
        let request = Request {
            scope: "scope",
            actor: &actor,
            options: &self.options,
            since: None,
        };
        let session = run.store.session().expect("in memory");
        let tried = attempt(&mut run.store, &request, &session, None);
        let owner = run.owner.clone();
        let who = format!("run{i} ({owner})");
        match tried {
            Ok(Attempt::Taken(Taken { token, took_over })) => {
                self.trace.push(format!(
                    "{who}: takes token {token}{}",
                    took_over
                        .as_ref()
                        .map_or(String::new(), |(_, why)| format!(", taken over: {why}"))
                ));
                if token <= self.current {
                    return Err(format!(
                        "{who} took token {token}, not above {}",
                        self.current
                    ));
                }
                self.current = token;
                self.renewed(token);
                let event = if took_over.is_some() {
                    "taken_over"
                } else {
                    "acquired"
                };
                self.expected.push((event.into(), token));
                self.runs[i].state = State::Holding(Fence {
                    scope: "scope".into(),
                    owner,
                    token,
                    ttl: self.options.ttl,
                });
                Ok(())
            }
            Ok(Attempt::Held(holder)) => {
                self.trace.push(format!(
                    "{who}: finds it held by {:?} (token {}, expires in {:?} ms, alive {:?}, migrating {})",
                    holder.owner, holder.token, holder.expires_in_ms, holder.session_alive, holder.migrating
                ));
                self.check_replaced(&holder)
            }
            Ok(Attempt::Moved) => Err("an attempt with no mark found the lock moved".into()),
            Err(e) => Err(format!("{who}: attempt failed: {e}")),
        }
    }

    /// A run was refused the lock. Unless a migration has the row locked,
    /// its holder must be alive as far as the protocol can know: its lease
    /// (as the simulation kept it, not as the store says) has not run out,
    /// and where the store sees sessions, it has not crashed.
    fn check_replaced(&self, holder: &super::LockInfo) -> Result<(), String> {
        let w = self.world.lock().unwrap();
        if w.row_locked() {
            return Ok(());
        }
        let token = holder.token;
        let lease_ran_out = self
            .leases
            .get(&token)
            .is_some_and(|until| w.now_ms > *until);
        let crashed = self.crashed_tokens.contains(&token);
        if lease_ran_out || (crashed && w.sees_sessions) {
            return Err(format!(
                "refused the lock held with token {token} (lease ran out: {lease_ran_out}, crashed: {crashed})"
            ));
        }
        Ok(())
    }

    /// The holder of `token` proved it is alive: its lease runs a TTL from
    /// now.
    fn renewed(&mut self, token: i64) {
        let until = self.now() + TTL_MS;
        self.leases.insert(token, until);
    }

    fn hold(&mut self, i: usize, fence: Fence) {
        let owner = self.runs[i].owner.clone();
        let who = format!("run{i} ({owner})");
        match self.rng.below(20) {
            0..=7 => {
                let version = self.next_version;
                match self.runs[i].store.begin_fenced(&fence) {
                    Ok(false) => self
                        .trace
                        .push(format!("{who}: its fence waits for another transaction")),
                    Ok(true) => {
                        self.next_version += 1;
                        self.trace.push(format!(
                            "{who}: begins migration {version} under token {}",
                            fence.token
                        ));
                        self.runs[i].state = State::Migrating(fence, version);
                    }
                    Err(e) => self.lose(i, &fence, &format!("the fence failed: {e}")),
                }
            }
            8..=11 => match self.runs[i].store.renew_lock(&fence) {
                Ok(Renewal::Renewed) => {
                    self.renewed(fence.token);
                    self.trace
                        .push(format!("{who}: renews token {}", fence.token));
                }
                Ok(Renewal::Busy) => self
                    .trace
                    .push(format!("{who}: renewal finds the row busy")),
                Ok(Renewal::Lost) => self.lose(i, &fence, "the heartbeat found the token changed"),
                Err(e) => self.trace.push(format!("{who}: renewal failed: {e}")),
            },
            12..=14 => {
                let actor = Sim::actor(&owner);
                let released = self.runs[i].store.release_lock(&fence, &actor);
                self.trace.push(format!(
                    "{who}: releases token {}: {released:?}",
                    fence.token
                ));
                if let Ok(true) = released {
                    self.expected.push(("released".into(), fence.token));
                }
                self.runs[i].state = State::Waiting;
            }
            15..=17 => self.pause(i),
            _ => self.crash(i),
        }
    }

    fn migrate(&mut self, i: usize, fence: Fence, version: u64) -> Result<(), String> {
        let owner = self.runs[i].owner.clone();
        let who = format!("run{i} ({owner})");
        match self.rng.below(10) {
            0..=5 => match self.runs[i].store.commit_fenced(&fence, version) {
                Ok(()) => {
                    self.trace.push(format!(
                        "{who}: commits migration {version} with token {}",
                        fence.token
                    ));
                    if fence.token != self.current {
                        return Err(format!(
                            "{who} wrote migration {version} with token {}, the current one being {}",
                            fence.token, self.current
                        ));
                    }
                    self.renewed(fence.token);
                    self.runs[i].state = State::Holding(fence);
                }
                // The server ended the session: the run stops with an error.
                Err(e) => {
                    self.trace.push(format!("{who}: commit failed: {e}"));
                    self.runs[i].state = State::Gone;
                    self.crashed_tokens.push(fence.token);
                }
            },
            6..=8 => {
                self.pause(i);
                self.runs[i].frozen_in_transaction = Some(self.now());
            }
            _ => self.crash(i),
        }
        Ok(())
    }

    fn pause(&mut self, i: usize) {
        let until = self.now() + self.rng.millis(2 * TTL_MS);
        self.runs[i].paused_until = until;
        self.trace.push(format!(
            "run{i} ({}): freezes until {until}",
            self.runs[i].owner
        ));
    }

    fn crash(&mut self, i: usize) {
        let run = &mut self.runs[i];
        self.world.lock().unwrap().kill(run.store.conn);
        if let State::Holding(f) | State::Migrating(f, _) = &run.state {
            self.crashed_tokens.push(f.token);
        }
        run.state = State::Gone;
        self.trace
            .push(format!("run{i} ({}): crashes (kill -9)", run.owner));
    }

    /// The run found its lock lost: it logs so and stops, as a run does
    /// with exit 5; a new run of it tries again later.
    fn lose(&mut self, i: usize, fence: &Fence, why: &str) {
        let owner = self.runs[i].owner.clone();
        let who = format!("run{i} ({owner})");
        let actor = Sim::actor(&owner);
        if self.runs[i]
            .store
            .log_event(fence, &actor, LogEvent::Lost { detail: why })
            .is_ok()
        {
            self.expected.push(("lost".into(), fence.token));
        }
        self.trace
            .push(format!("{who}: lost token {}: {why}", fence.token));
        self.runs[i].state = State::Waiting;
    }

    /// The promises that hold after every step.
    fn check(&self) -> Result<(), String> {
        let w = self.world.lock().unwrap();
        let valid: Vec<&str> = self
            .runs
            .iter()
            .filter(|r| match &r.state {
                State::Holding(f) | State::Migrating(f, _) => {
                    w.lock() == Some((f.token, Some(f.owner.as_str())))
                }
                _ => false,
            })
            .map(|r| r.owner.as_str())
            .collect();
        if valid.len() > 1 {
            return Err(format!(
                "{} runs hold a valid fence: {valid:?}",
                valid.len()
            ));
        }
        let tokens: Vec<i64> = w.history.iter().map(|h| h.1).collect();
        if tokens.windows(2).any(|t| t[0] > t[1]) {
            return Err(format!("history tokens go backwards: {tokens:?}"));
        }
        let logged = w.events();
        if logged != self.expected {
            return Err(format!(
                "the log differs from what happened:\n  logged   {logged:?}\n  happened {:?}",
                self.expected
            ));
        }
        Ok(())
    }
}

fn run_seed(seed: u64) -> Result<(), String> {
    let mut sim = Sim::new(seed);
    for step in 0..STEPS {
        if let Err(e) = sim.step() {
            let start = sim.trace.len().saturating_sub(40);
            return Err(format!(
                "seed {seed}, step {step}: {e}\nthe last steps:\n  {}\nreplay: LOCKSTEP_SIM_SEED={seed} cargo test -p lockstep simulation",
                sim.trace[start..].join("\n  ")
            ));
        }
    }
    Ok(())
}

#[test]
fn the_lock_keeps_its_promises_under_random_interleavings() {
    let seeds: Vec<u64> = match std::env::var("LOCKSTEP_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("LOCKSTEP_SIM_SEED is a number")],
        Err(_) => (0..SEEDS).collect(),
    };
    for seed in seeds {
        if let Err(e) = run_seed(seed) {
            panic!("{e}");
        }
    }
}
