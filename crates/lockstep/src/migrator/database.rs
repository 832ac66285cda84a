//! `database create`, `database drop` and `wait`: the database a URL
//! names, made, removed or waited for. On a server, through a connection
//! to a database every server has (PostgreSQL's `postgres`, else
//! `template1`; MariaDB's `information_schema`); on SQLite, the file.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::driver::{self, Driver};
use crate::error::{ConnectFailure, DbMessage, Error};
use crate::history::TableName;
use crate::remedy::Remedy;
use crate::sql::Dialect;
use crate::url::DatabaseUrl;

/// What `create_database` or `drop_database` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseChange {
    /// The database was made.
    Created,
    /// It was there already: nothing was done.
    AlreadyThere,
    /// The database was removed.
    Dropped,
    /// It was not there: nothing was done.
    NotThere,
}

impl DatabaseChange {
    /// Its name in JSON: `created`, `already_there`, `dropped`,
    /// `not_there`.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseChange::Created => "created",
            DatabaseChange::AlreadyThere => "already_there",
            DatabaseChange::Dropped => "dropped",
            DatabaseChange::NotThere => "not_there",
        }
    }
}

/// The application name lockstep's sessions for these commands carry.
const APPLICATION: &str = "lockstep";

/// Makes the database `url` names, unless it is there. SQLite: an empty
/// file (an empty file is an empty database).
pub fn create_database(url: &DatabaseUrl) -> Result<DatabaseChange, Error> {
    match url.sqlite_file() {
        Some(path) => create_file(path),
        None => on_server_database(url, true),
    }
}

/// Removes the database `url` names, when it is there. SQLite: the file
/// and its `-wal`, `-shm` and `-journal` companions.
pub fn drop_database(url: &DatabaseUrl) -> Result<DatabaseChange, Error> {
    match url.sqlite_file() {
        Some(path) => drop_file(path),
        None => on_server_database(url, false),
    }
}

/// Creates (`make`) or drops the database a server URL names, unless it
/// is already so.
fn on_server_database(url: &DatabaseUrl, make: bool) -> Result<DatabaseChange, Error> {
    let (name, mut server, dialect) = on_server(url)?;
    // What is done, what was so already, and the codes that say another
    // session did it since the look.
    let (verb, doing, done, so_already, raced) = if make {
        (
            "CREATE",
            "creating",
            DatabaseChange::Created,
            DatabaseChange::AlreadyThere,
            ["42P04", "1007"],
        )
    } else {
        (
            "DROP",
            "dropping",
            DatabaseChange::Dropped,
            DatabaseChange::NotThere,
            ["3D000", "1008"],
        )
    };
    if exists(server.as_mut(), &name, dialect)? != make {
        let sql = format!("{verb} DATABASE {}", quote(&name, dialect));
        return match server.run_statement(&sql) {
            Ok(()) => Ok(done),
            Err(db) if is_code(&db, &raced) => Ok(so_already),
            Err(db) => Err(failed(format!("{doing} the database {name}"), db)),
        };
    }
    Ok(so_already)
}

/// Waits until the server of `url` accepts connections (on SQLite, until
/// the file's directory exists), at most `timeout`; `waiting` hears each
/// failed try. Returns how long it waited; a timeout is the last try's
/// error.
pub fn wait_for_database(
    url: &DatabaseUrl,
    timeout: Duration,
    waiting: &mut dyn FnMut(&Error),
) -> Result<Duration, Error> {
    let started = Instant::now();
    loop {
        let tried = match url.sqlite_file() {
            Some(path) => driver::sqlite::missing_directory(path),
            None => on_server(url).map(drop),
        };
        match tried {
            Ok(()) => return Ok(started.elapsed()),
            // Wrong credentials or a bad URL do not mend by waiting.
            Err(e) if !e.is_retryable_connect() || started.elapsed() >= timeout => return Err(e),
            Err(e) => waiting(&e),
        }
        let left = timeout.saturating_sub(started.elapsed());
        std::thread::sleep(left.min(Duration::from_millis(250)));
    }
}

/// The database's name, a session on a database every server has, and
/// the server's dialect.
fn on_server(url: &DatabaseUrl) -> Result<(String, Box<dyn Driver>, Dialect), Error> {
    let table = TableName::default();
    let candidates: &[&str] = match url.engine() {
        "postgres" => &["postgres", "template1"],
        _ => &["information_schema"],
    };
    let mut last = None;
    for other in candidates {
        let (name, server_url) = url.on_server(other).expect("a server URL");
        match driver::open(&server_url, &table, APPLICATION, false) {
            Ok(driver) => {
                let dialect = driver.dialect();
                return Ok((name, driver, dialect));
            }
            // The server has no such database: try the next.
            Err(Error::Connect {
                message,
                failure: ConnectFailure::NoDatabase,
                ..
            }) => {
                last = Some(message);
            }
            // The server itself: named as the user named it.
            Err(Error::Connect {
                message,
                remedy,
                failure,
                ..
            }) => {
                return Err(Error::Connect {
                    target: url.to_string(),
                    message,
                    remedy,
                    failure,
                })
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Connect {
        target: url.to_string(),
        message: last.unwrap_or_default(),
        remedy: Some(Remedy::Text(
            "the server has none of the databases lockstep connects to for this (`postgres`, `template1`)".into(),
        )),
        failure: ConnectFailure::NoDatabase,
    })
}

/// Whether the server has the database `name`.
fn exists(server: &mut dyn Driver, name: &str, dialect: Dialect) -> Result<bool, Error> {
    let literal = name.replace('\'', "''").replace('\\', "\\\\");
    let sql = match dialect {
        Dialect::Postgres => {
            format!("SELECT 1 FROM pg_catalog.pg_database WHERE datname = E'{literal}'")
        }
        _ => format!("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{literal}'"),
    };
    Ok(!server.read_table(&sql)?.unwrap_or_default().is_empty())
}

/// A database name quoted for the dialect.
fn quote(name: &str, dialect: Dialect) -> String {
    match dialect {
        Dialect::Mysql => format!("`{}`", name.replace('`', "``")),
        _ => format!("\"{}\"", name.replace('"', "\"\"")),
    }
}

fn is_code(db: &DbMessage, codes: &[&str]) -> bool {
    db.code.as_deref().is_some_and(|c| codes.contains(&c))
}

fn failed(context: String, db: DbMessage) -> Error {
    Error::Database {
        context,
        db: Box::new(db),
    }
}

fn create_file(path: &Path) -> Result<DatabaseChange, Error> {
    driver::sqlite::missing_directory(path)?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(DatabaseChange::Created),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(DatabaseChange::AlreadyThere),
        Err(e) => Err(file_error(path, "creating", &e)),
    }
}

fn drop_file(path: &Path) -> Result<DatabaseChange, Error> {
    let mut dropped = DatabaseChange::NotThere;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_os_string();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Ok(()) if suffix.is_empty() => dropped = DatabaseChange::Dropped,
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_error(Path::new(&file), "removing", &e)),
        }
    }
    Ok(dropped)
}

fn file_error(path: &Path, doing: &str, e: &std::io::Error) -> Error {
    Error::Database {
        context: format!("{doing} {}", path.display()),
        db: Box::new(DbMessage::plain(crate::fsread::io_reason(e))),
    }
}
