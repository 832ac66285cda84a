//! Integration tests: the real `lockstep` binary against SQLite and a real
//! PostgreSQL, a fresh database per test. `both!` runs a scenario on every
//! backend.

#[macro_use]
mod macros;
mod util;

mod chaos;
mod cli;
mod config;
mod database;
mod engine;
mod failover;
mod files;
mod fix;
mod galera;
mod hostile;
mod inspect;
mod lock;
mod mariadb;
mod netfault;
mod postgres;
mod repeatable;
mod rollback;
mod server_faults;
mod table_locks;
mod tools;
mod upgrade;
mod versions;
