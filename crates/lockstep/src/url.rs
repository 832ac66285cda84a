//! Database URLs: parsing, and a display that never shows a password.
//!
//! - `sqlite://relative/file.db`, `sqlite:///absolute/file.db`, `sqlite::memory:`
//! - `postgres://` or `postgresql://` `[user[:password]@][host][:port][/database][?param=value&...]`
//!   with the parameters `host` (a Unix socket directory when it starts with `/`),
//!   `port`, `user`, `password`, `dbname`, `sslmode`, `sslrootcert`,
//!   `connect_timeout` (seconds) and `application_name`.
//! - `mysql://` or `mariadb://` `[user[:password]@][host][:port]/database[?param=value&...]`
//!   with the parameters `socket` (the server's socket file), `password`,
//!   `ssl-mode` (the MySQL client's: disabled, preferred, required,
//!   verify_ca, verify_identity), `ssl-ca` and `connect_timeout` (seconds).
//!
//! Error messages never quote the text of the URL's authority part, because a
//! malformed URL may put a password where a host or port should be.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The longest `connect_timeout`, in seconds: a day.
const MAX_CONNECT_TIMEOUT_SECS: u64 = 24 * 3600;

/// A parsed database URL: `sqlite://FILE`, `sqlite::memory:` or
/// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?PARAMS]`. Its `Display`
/// and `Debug` hide the password.
///
/// ```
/// let url: lockstep::DatabaseUrl = "postgres://app:secret@db/app".parse()?;
/// assert_eq!(url.engine(), "postgres");
/// assert_eq!(url.to_string(), "postgres://app:***@db:5432/app");
/// # Ok::<(), lockstep::UrlError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(Endpoint);

/// What a database URL points at. Its `Debug` hides the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A MariaDB or MySQL server (`mysql://` or `mariadb://`).
    Mysql(MysqlTarget),
    /// An SQLite database.
    Sqlite(SqliteTarget),
    /// A PostgreSQL server.
    Postgres(PgTarget),
}

/// Where an SQLite database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqliteTarget {
    /// A file; relative paths are relative to the working directory.
    File(PathBuf),
    /// A private in-memory database (`sqlite::memory:`), for tests and
    /// embedders.
    Memory,
}

/// How TLS is used, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying the certificate.
    Prefer,
    /// Require TLS, without verifying the certificate.
    Require,
    /// Require TLS and a certificate signed by a trusted CA.
    VerifyCa,
    /// Require TLS, a trusted certificate, and that it names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The name in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the PostgreSQL server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PgHost {
    /// A host name or IP address.
    Tcp(String),
    /// A directory holding the server's Unix socket.
    Socket(PathBuf),
}

/// A password; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Secret {
        Secret(password.into())
    }

    /// The password itself, for the connection handshake only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A PostgreSQL connection target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgTarget {
    /// The user name.
    pub user: String,
    /// The password, if any.
    pub password: Option<Secret>,
    /// The server's address.
    pub host: PgHost,
    /// The server's port (also names the socket file).
    pub port: u16,
    /// The database name.
    pub dbname: String,
    /// TLS mode.
    pub sslmode: SslMode,
    /// A file of trusted CA certificates (PEM), or `system` for the system's.
    pub sslrootcert: Option<PathBuf>,
    /// How long to wait for a connection.
    pub connect_timeout: Option<Duration>,
    /// `application_name` for the session, when the URL sets one.
    pub application_name: Option<String>,
    /// The servers after the first, tried in order when it fails or does
    /// not match `session_attrs` (libpq's multi-host URLs).
    pub alternates: Vec<(PgHost, u16)>,
    /// What the server must be (`target_session_attrs`).
    pub session_attrs: SessionAttrs,
}

/// What kind of server a multi-host URL wants: libpq's
/// `target_session_attrs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum SessionAttrs {
    /// The first that answers.
    #[default]
    Any,
    /// One that takes writes (`transaction_read_only` off).
    ReadWrite,
    /// One that takes no writes.
    ReadOnly,
    /// Not in recovery.
    Primary,
    /// In recovery.
    Standby,
    /// A standby when one answers, else any.
    PreferStandby,
}

impl SessionAttrs {
    fn parse(s: &str) -> Option<SessionAttrs> {
        Some(match s {
            "any" => SessionAttrs::Any,
            "read-write" => SessionAttrs::ReadWrite,
            "read-only" => SessionAttrs::ReadOnly,
            "primary" => SessionAttrs::Primary,
            "standby" => SessionAttrs::Standby,
            "prefer-standby" => SessionAttrs::PreferStandby,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionAttrs::Any => "any",
            SessionAttrs::ReadWrite => "read-write",
            SessionAttrs::ReadOnly => "read-only",
            SessionAttrs::Primary => "primary",
            SessionAttrs::Standby => "standby",
            SessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Whether a server in recovery or not, read-only or not, is one this
    /// wants; `strict`: in `prefer-standby`'s first pass, only a standby.
    pub fn accepts(self, in_recovery: bool, read_only: bool, strict: bool) -> bool {
        match self {
            SessionAttrs::Any => true,
            SessionAttrs::ReadWrite => !read_only,
            SessionAttrs::ReadOnly => read_only,
            SessionAttrs::Primary => !in_recovery,
            SessionAttrs::Standby => in_recovery,
            SessionAttrs::PreferStandby => in_recovery || !strict,
        }
    }

    /// Whether it asks for a server that takes no writes.
    pub fn wants_no_writes(self) -> bool {
        matches!(
            self,
            SessionAttrs::ReadOnly | SessionAttrs::Standby | SessionAttrs::PreferStandby
        )
    }
}

impl PgTarget {
    /// Each server of the URL as a target of its own, in order.
    pub fn each_server(&self) -> Vec<PgTarget> {
        let first = (self.host.clone(), self.port);
        std::iter::once(first)
            .chain(self.alternates.iter().cloned())
            .map(|(host, port)| PgTarget {
                host,
                port,
                alternates: Vec::new(),
                ..self.clone()
            })
            .collect()
    }

    /// The server as a person names it: `db1:5432`, or a socket directory.
    pub fn server_name(&self) -> String {
        match &self.host {
            PgHost::Tcp(h) => host_port(h, self.port),
            PgHost::Socket(dir) => format!("{} (port {})", dir.display(), self.port),
        }
    }
}

/// Why a URL was refused. Never holds any part of the URL's authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError {
    message: String,
    /// A query parameter's value is wrong (the message names the values
    /// it takes); the URL's form is right.
    in_parameter: bool,
}

impl UrlError {
    fn new(message: impl Into<String>) -> UrlError {
        UrlError {
            message: message.into(),
            in_parameter: false,
        }
    }

    /// The same error, in a query parameter.
    fn in_parameter(self) -> UrlError {
        UrlError {
            in_parameter: true,
            ..self
        }
    }

    /// Whether a query parameter was wrong, rather than the URL's form.
    pub fn is_in_parameter(&self) -> bool {
        self.in_parameter
    }
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid database URL: {}", self.message)
    }
}

impl std::error::Error for UrlError {}

fn err<T>(msg: impl Into<String>) -> Result<T, UrlError> {
    Err(UrlError::new(msg))
}

impl FromStr for DatabaseUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        parse(url.trim()).map(DatabaseUrl)
    }
}

/// The endpoint a trimmed URL names.
fn parse(url: &str) -> Result<Endpoint, UrlError> {
    if url == "sqlite::memory:" || url == "sqlite://:memory:" {
        return Ok(Endpoint::Sqlite(SqliteTarget::Memory));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return err(
            "expected `sqlite://PATH` or `postgres://[user[:password]@]host[:port]/database`",
        );
    };
    match scheme {
        "sqlite" | "sqlite3" => parse_sqlite(rest),
        "postgres" | "postgresql" => parse_postgres(rest).map(Endpoint::Postgres),
        "mysql" | "mariadb" => parse_mysql(rest).map(Endpoint::Mysql),
        _ => {
            // The scheme precedes any secret, but a URL without `://` in
            // the expected place could be anything: show it only when it
            // looks like a scheme.
            let shown = if scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
            {
                format!("unsupported scheme `{scheme}`")
            } else {
                "unsupported scheme".to_string()
            };
            err(format!(
                "{shown}; use `sqlite://`, `postgres://`, `mysql://` or `mariadb://`"
            ))
        }
    }
}

fn parse_sqlite(rest: &str) -> Result<Endpoint, UrlError> {
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        let key = query.split(['=', '&']).next().unwrap_or_default();
        return Err(UrlError::new(format!(
            "unknown SQLite URL parameter `{}`; SQLite URLs take none",
            percent_decode(key).unwrap_or_default()
        ))
        .in_parameter());
    }
    if path.is_empty() {
        return err("an SQLite URL needs a file path, as in `sqlite://app.db`");
    }
    if path == ":memory:" {
        return Ok(Endpoint::Sqlite(SqliteTarget::Memory));
    }
    let path = percent_decode(path)
        .ok_or_else(|| UrlError::new("bad percent-encoding in the SQLite path"))?;
    Ok(Endpoint::Sqlite(SqliteTarget::File(PathBuf::from(path))))
}

/// A server URL after its scheme, split as written: the user info, host
/// and port, the path (the database), and the query's pairs with their
/// values still percent-encoded (a password's among them).
#[derive(Default)]
struct Split<'a> {
    user: Option<String>,
    password: Option<&'a str>,
    host: Option<String>,
    port: Option<u16>,
    /// The hosts after the first, as written (PostgreSQL only).
    more_hosts: Vec<(String, Option<u16>)>,
    database: Option<String>,
    params: Vec<(String, &'a str)>,
}

fn split(rest: &str) -> Result<Split<'_>, UrlError> {
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, q),
        None => (rest, ""),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], &before_query[i + 1..]),
        None => (before_query, ""),
    };
    // The user info ends at the last `@`: a password may hold one.
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    if userinfo.is_none() && path.contains('@') {
        return err("a `/` in the user name or password must be percent-encoded as `%2F`");
    }
    let mut split = Split::default();
    if let Some(info) = userinfo {
        let (u, p) = match info.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (info, None),
        };
        split.user = Some(decode(u, "user name")?);
        split.password = p;
    }
    let mut hosts = hostport.split(',');
    (split.host, split.port) = split_host_port(hosts.next().unwrap_or_default())?;
    for more in hosts {
        match split_host_port(more)? {
            (Some(host), port) => split.more_hosts.push((host, port)),
            (None, _) => return err("an empty host in the URL's list of hosts"),
        }
    }
    if !path.is_empty() {
        split.database = Some(decode(path, "database name")?);
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        split.params.push((decode(key, "parameter name")?, value));
    }
    Ok(split)
}

/// `connect_timeout`: whole seconds, at most a day; 0 is no limit of the
/// URL's own.
fn connect_timeout(value: &str) -> Result<Option<Duration>, UrlError> {
    let v = decode(value, "connect_timeout")?;
    let secs: u64 = v.parse().map_err(|_| {
        UrlError::new(format!(
            "connect_timeout `{v}` is not a whole number of seconds"
        ))
    })?;
    if secs > MAX_CONNECT_TIMEOUT_SECS {
        return err(format!(
            "connect_timeout `{v}` is more than a day ({MAX_CONNECT_TIMEOUT_SECS} seconds)"
        ));
    }
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

fn secret(value: &str) -> Result<Secret, UrlError> {
    percent_decode(value)
        .map(Secret)
        .ok_or_else(|| UrlError::new("bad percent-encoding in the password"))
}

fn parse_postgres(rest: &str) -> Result<PgTarget, UrlError> {
    let split = split(rest)?;
    let mut hosts: Vec<(String, Option<u16>)> =
        split.host.into_iter().map(|h| (h, split.port)).collect();
    hosts.extend(split.more_hosts);
    let mut parts = PgParts {
        user: split.user,
        password: split.password.map(secret).transpose()?,
        hosts,
        dbname: split.database,
        ..PgParts::default()
    };
    for (key, value) in split.params {
        parts.set(&key, value).map_err(UrlError::in_parameter)?;
    }
    parts.target()
}

/// A PostgreSQL URL's parts as written, before defaults.
#[derive(Default)]
struct PgParts {
    user: Option<String>,
    password: Option<Secret>,
    /// Each host as written, with its port when the URL's authority gave
    /// one (an empty host: the default).
    hosts: Vec<(String, Option<u16>)>,
    /// The `port` parameter: one for every host, or one per host.
    ports: Vec<u16>,
    dbname: Option<String>,
    sslmode: Option<SslMode>,
    sslrootcert: Option<PathBuf>,
    connect_timeout: Option<Duration>,
    application_name: Option<String>,
    session_attrs: SessionAttrs,
}

impl PgParts {
    /// One query parameter, its value still percent-encoded.
    fn set(&mut self, key: &str, value: &str) -> Result<(), UrlError> {
        match key {
            "password" => self.password = Some(secret(value)?),
            "host" => {
                // A port the URL's one host gave stays the port.
                let port = match self.hosts.as_slice() {
                    [(_, port)] => *port,
                    _ => None,
                };
                self.hosts = decode(value, "host")?
                    .split(',')
                    .map(|h| (h.to_string(), port))
                    .collect()
            }
            "port" => {
                self.ports = decode(value, "port")?
                    .split(',')
                    .map(parse_port)
                    .collect::<Result<_, _>>()?
            }
            "target_session_attrs" => {
                let v = decode(value, "target_session_attrs")?;
                self.session_attrs = SessionAttrs::parse(&v).ok_or_else(|| {
                    UrlError::new(format!(
                        "unknown target_session_attrs `{v}`; use any, read-write, read-only, primary, standby or prefer-standby"
                    ))
                })?
            }
            "user" => self.user = Some(decode(value, "user name")?),
            "dbname" => self.dbname = Some(decode(value, "database name")?),
            "sslmode" => {
                let v = decode(value, "sslmode")?;
                self.sslmode = Some(SslMode::parse(&v).ok_or_else(|| {
                    UrlError::new(format!(
                        "unknown sslmode `{v}`; use disable, prefer, require, verify-ca or verify-full"
                    ))
                })?)
            }
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(decode(value, "sslrootcert")?)),
            "connect_timeout" => self.connect_timeout = connect_timeout(value)?,
            "application_name" => self.application_name = Some(decode(value, "application_name")?),
            other => {
                return err(format!(
                    "unknown parameter `{other}`; lockstep understands host, port, user, password, \
                     dbname, sslmode, sslrootcert, connect_timeout, application_name and \
                     target_session_attrs"
                ))
            }
        }
        Ok(())
    }

    /// The target, with libpq's defaults for what the URL left out.
    fn target(self) -> Result<PgTarget, UrlError> {
        let hosts = if self.hosts.is_empty() {
            vec![(String::new(), None)]
        } else {
            self.hosts
        };
        if self.ports.len() > 1 && self.ports.len() != hosts.len() {
            return err(format!(
                "`port` lists {} ports for {} hosts; give one port, or one per host",
                self.ports.len(),
                hosts.len()
            ));
        }
        if hosts.len() > 1 && hosts.iter().any(|(h, _)| h.is_empty()) {
            return err("an empty host in the URL's list of hosts");
        }
        let mut servers = hosts.into_iter().enumerate().map(|(i, (h, port))| {
            let host = match h {
                h if h.starts_with('/') => PgHost::Socket(PathBuf::from(h)),
                h if !h.is_empty() => PgHost::Tcp(h),
                _ => default_host(),
            };
            let port = port
                .or_else(|| self.ports.get(i).or(self.ports.first()).copied())
                .unwrap_or(5432);
            (host, port)
        });
        let (host, port) = servers.next().expect("at least one host");
        let alternates: Vec<(PgHost, u16)> = servers.collect();
        let user = match self.user.filter(|u| !u.is_empty()) {
            Some(u) => u,
            None => default_user()?,
        };
        let sslmode = match (&host, self.sslmode) {
            (_, Some(mode)) => mode,
            // libpq ignores sslmode on Unix sockets; the server offers no TLS there.
            (PgHost::Socket(_), None) => SslMode::Disable,
            (PgHost::Tcp(_), None) => SslMode::Prefer,
        };
        Ok(PgTarget {
            dbname: self
                .dbname
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| user.clone()),
            user,
            password: self.password,
            host,
            port,
            sslmode,
            sslrootcert: self.sslrootcert,
            connect_timeout: self.connect_timeout,
            application_name: self.application_name,
            alternates,
            session_attrs: self.session_attrs,
        })
    }
}

/// A MariaDB or MySQL connection target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MysqlTarget {
    pub user: String,
    pub password: Option<Secret>,
    pub host: MysqlHost,
    pub port: u16,
    pub database: String,
    pub ssl_mode: MysqlSslMode,
    /// A file of trusted CA certificates (PEM).
    pub ssl_ca: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
}

/// Where the MariaDB or MySQL server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MysqlHost {
    Tcp(String),
    /// The server's Unix socket file.
    Socket(PathBuf),
}

/// How TLS is used, as the MySQL client's `--ssl-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MysqlSslMode {
    Disabled,
    /// TLS when the server offers it, its certificate unverified.
    Preferred,
    /// TLS, its certificate unverified.
    Required,
    /// TLS and a certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, a trusted certificate, and that it names the host.
    VerifyIdentity,
}

impl MysqlSslMode {
    /// The client's names, in any case.
    fn parse(s: &str) -> Option<MysqlSslMode> {
        Some(match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "disabled" => MysqlSslMode::Disabled,
            "preferred" => MysqlSslMode::Preferred,
            "required" => MysqlSslMode::Required,
            "verify_ca" => MysqlSslMode::VerifyCa,
            "verify_identity" => MysqlSslMode::VerifyIdentity,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MysqlSslMode::Disabled => "disabled",
            MysqlSslMode::Preferred => "preferred",
            MysqlSslMode::Required => "required",
            MysqlSslMode::VerifyCa => "verify_ca",
            MysqlSslMode::VerifyIdentity => "verify_identity",
        }
    }
}

/// `mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE` with `socket`,
/// `ssl-mode`, `ssl-ca` and `connect_timeout` parameters. The database is
/// required: lockstep keeps its tables in it.
fn parse_mysql(rest: &str) -> Result<MysqlTarget, UrlError> {
    let split = split(rest)?;
    if !split.more_hosts.is_empty() {
        return err(
            "a MariaDB/MySQL URL names one server; list a Galera cluster's nodes as separate URLs",
        );
    }
    let mut password = split.password.map(secret).transpose()?;
    let mut socket = None;
    let mut ssl_mode = None;
    let mut ssl_ca = None;
    let mut timeout = None;
    for (key, value) in split.params {
        let mut set = || -> Result<(), UrlError> {
            match key.as_str() {
                "socket" => socket = Some(PathBuf::from(decode(value, "socket")?)),
                "password" => password = Some(secret(value)?),
                "ssl-mode" | "ssl_mode" | "sslmode" => {
                    let v = decode(value, "ssl-mode")?;
                    ssl_mode = Some(MysqlSslMode::parse(&v).ok_or_else(|| {
                    UrlError::new(format!(
                        "unknown ssl-mode `{v}`; use disabled, preferred, required, verify_ca or verify_identity"
                    ))
                })?);
                }
                "ssl-ca" | "ssl_ca" => ssl_ca = Some(PathBuf::from(decode(value, "ssl-ca")?)),
                "connect_timeout" => timeout = connect_timeout(value)?,
                other => {
                    return err(format!(
                        "unknown parameter `{other}`; lockstep understands socket, password, \
                     ssl-mode, ssl-ca and connect_timeout"
                    ))
                }
            }
            Ok(())
        };
        set().map_err(UrlError::in_parameter)?;
    }
    let Some(database) = split.database.filter(|d| !d.is_empty()) else {
        return err("a MariaDB/MySQL URL needs a database, as in `mysql://user@host/app`");
    };
    let host = match (socket, split.host.filter(|h| !h.is_empty())) {
        (Some(path), _) => MysqlHost::Socket(path),
        (None, Some(h)) => MysqlHost::Tcp(h),
        (None, None) => MysqlHost::Tcp("localhost".into()),
    };
    let user = match split.user.filter(|u| !u.is_empty()) {
        Some(u) => u,
        None => default_mysql_user()?,
    };
    let ssl_mode = ssl_mode.unwrap_or(match host {
        MysqlHost::Socket(_) => MysqlSslMode::Disabled,
        MysqlHost::Tcp(_) => MysqlSslMode::Preferred,
    });
    if ssl_mode == MysqlSslMode::Disabled && ssl_ca.is_some() {
        return err("ssl-ca names a CA but ssl-mode is disabled");
    }
    Ok(MysqlTarget {
        user,
        password,
        host,
        port: split.port.unwrap_or(3306),
        database,
        ssl_mode,
        ssl_ca,
        connect_timeout: timeout,
    })
}

fn default_mysql_user() -> Result<String, UrlError> {
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            if !u.is_empty() {
                return Ok(u);
            }
        }
    }
    err("no user name in the URL and none in USER")
}

/// `host:port`, with an IPv6 address in brackets: `[::1]:5432`.
pub(crate) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn split_host_port(hostport: &str) -> Result<(Option<String>, Option<u16>), UrlError> {
    if hostport.is_empty() {
        return Ok((None, None));
    }
    if let Some(rest) = hostport.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return err("an IPv6 address must be closed with `]`");
        };
        let port = match after.strip_prefix(':') {
            Some(p) => Some(parse_port(p)?),
            None if after.is_empty() => None,
            None => return err("unexpected text after the IPv6 address"),
        };
        return Ok((Some(addr.to_string()), port));
    }
    match hostport.rsplit_once(':') {
        // `::1:5432` could be the address `::1:5432` or `::1` and a port.
        Some((h, _)) if h.contains(':') => {
            err("an IPv6 address must be in brackets, as in `[::1]:5432`")
        }
        Some((h, p)) => Ok((Some(decode(h, "host")?), Some(parse_port(p)?))),
        None => Ok((Some(decode(hostport, "host")?), None)),
    }
}

fn parse_port(p: &str) -> Result<u16, UrlError> {
    match p.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        // The text is not quoted: it may be a password fragment.
        _ => err("the port is not a number from 1 to 65535"),
    }
}

fn decode(s: &str, what: &str) -> Result<String, UrlError> {
    percent_decode(s).ok_or_else(|| UrlError::new(format!("bad percent-encoding in the {what}")))
}

/// Decodes `%XX` escapes; `None` when an escape is malformed or the result is
/// not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn default_host() -> PgHost {
    if let Ok(h) = std::env::var("PGHOST") {
        if h.starts_with('/') {
            return PgHost::Socket(PathBuf::from(h));
        } else if !h.is_empty() {
            return PgHost::Tcp(h);
        }
    }
    // libpq's compiled-in default: Debian's socket directory, else /tmp.
    let debian = PathBuf::from("/var/run/postgresql");
    if debian.is_dir() {
        PgHost::Socket(debian)
    } else {
        PgHost::Socket(PathBuf::from("/tmp"))
    }
}

fn default_user() -> Result<String, UrlError> {
    for var in ["PGUSER", "USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            if !u.is_empty() {
                return Ok(u);
            }
        }
    }
    err("no user name in the URL and none in PGUSER or USER")
}

impl DatabaseUrl {
    /// What the URL points at.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.0
    }

    /// The same URL with a relative SQLite file path taken relative to
    /// `base` (a URL read from a configuration file names a file relative to
    /// that file's directory). Other URLs are unchanged.
    pub fn relative_to(mut self, base: &std::path::Path) -> DatabaseUrl {
        if let Endpoint::Sqlite(SqliteTarget::File(path)) = &mut self.0 {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        self
    }

    /// The database a server URL names, and the same URL naming the
    /// server's database `other` instead: what creating or dropping the
    /// first connects to. `None` for SQLite.
    pub(crate) fn on_server(&self, other: &str) -> Option<(String, DatabaseUrl)> {
        match &self.0 {
            Endpoint::Postgres(t) => {
                let mut on = t.clone();
                on.dbname = other.to_string();
                Some((t.dbname.clone(), DatabaseUrl(Endpoint::Postgres(on))))
            }
            Endpoint::Mysql(t) => {
                let mut on = t.clone();
                on.database = other.to_string();
                Some((t.database.clone(), DatabaseUrl(Endpoint::Mysql(on))))
            }
            Endpoint::Sqlite(_) => None,
        }
    }

    /// The SQLite database file this URL names; `None` for any other URL.
    pub fn sqlite_file(&self) -> Option<&std::path::Path> {
        match &self.0 {
            Endpoint::Sqlite(SqliteTarget::File(path)) => Some(path),
            _ => None,
        }
    }

    /// The engine's name: `sqlite` or `postgres`.
    pub fn engine(&self) -> &'static str {
        match &self.0 {
            Endpoint::Sqlite(_) => "sqlite",
            Endpoint::Postgres(_) => "postgres",
            Endpoint::Mysql(_) => "mysql",
        }
    }

    /// The password this URL carries, if any: callers that print text which
    /// may have come from elsewhere (a server message) can scrub it.
    pub fn password(&self) -> Option<&str> {
        match &self.0 {
            Endpoint::Postgres(t) => t.password.as_ref().map(Secret::expose),
            Endpoint::Mysql(t) => t.password.as_ref().map(Secret::expose),
            Endpoint::Sqlite(_) => None,
        }
    }
}

/// The same URL with another password, or `None` for a URL that carries
/// none: for the fuzz target that checks that no output shows it.
pub fn with_password(url: &DatabaseUrl, password: &str) -> Option<DatabaseUrl> {
    match &url.0 {
        Endpoint::Postgres(t) if t.password.is_some() => {
            let mut t = t.clone();
            t.password = Some(Secret::new(password));
            Some(DatabaseUrl(Endpoint::Postgres(t)))
        }
        Endpoint::Mysql(t) if t.password.is_some() => {
            let mut t = t.clone();
            t.password = Some(Secret::new(password));
            Some(DatabaseUrl(Endpoint::Mysql(t)))
        }
        _ => None,
    }
}

impl fmt::Display for DatabaseUrl {
    /// The URL with the password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Endpoint::Sqlite(SqliteTarget::Memory) => f.write_str("sqlite::memory:"),
            Endpoint::Sqlite(SqliteTarget::File(path)) => {
                write!(f, "sqlite://{}", path.display())
            }
            Endpoint::Mysql(t) => {
                write!(f, "mysql://{}", percent_encode(&t.user))?;
                if t.password.is_some() {
                    f.write_str(":***")?;
                }
                f.write_str("@")?;
                let mut params = Vec::new();
                match &t.host {
                    MysqlHost::Tcp(h) => write!(f, "{}", host_port(h, t.port))?,
                    MysqlHost::Socket(path) => params.push(format!("socket={}", path.display())),
                }
                write!(f, "/{}", percent_encode(&t.database))?;
                if t.ssl_mode != MysqlSslMode::Preferred && matches!(t.host, MysqlHost::Tcp(_)) {
                    params.push(format!("ssl-mode={}", t.ssl_mode.as_str()));
                }
                if let Some(ca) = &t.ssl_ca {
                    params.push(format!("ssl-ca={}", ca.display()));
                }
                if !params.is_empty() {
                    write!(f, "?{}", params.join("&"))?;
                }
                Ok(())
            }
            Endpoint::Postgres(t) => {
                write!(f, "postgres://{}", percent_encode(&t.user))?;
                if t.password.is_some() {
                    f.write_str(":***")?;
                }
                f.write_str("@")?;
                let mut params = Vec::new();
                let servers = t.each_server();
                let mut sockets = Vec::new();
                let mut tcp = Vec::new();
                for s in &servers {
                    match &s.host {
                        PgHost::Tcp(h) => tcp.push(host_port(h, s.port)),
                        PgHost::Socket(dir) => sockets.push((dir.display().to_string(), s.port)),
                    }
                }
                if sockets.is_empty() {
                    f.write_str(&tcp.join(","))?;
                } else if tcp.is_empty() {
                    let dirs: Vec<&str> = sockets.iter().map(|(d, _)| d.as_str()).collect();
                    params.push(format!("host={}", dirs.join(",")));
                    if sockets.iter().any(|(_, p)| *p != 5432) {
                        let ports: Vec<String> =
                            sockets.iter().map(|(_, p)| p.to_string()).collect();
                        params.push(format!("port={}", ports.join(",")));
                    }
                } else {
                    // Sockets and addresses mixed: every server as a parameter.
                    let hosts: Vec<String> = servers
                        .iter()
                        .map(|s| match &s.host {
                            PgHost::Tcp(h) => h.clone(),
                            PgHost::Socket(dir) => dir.display().to_string(),
                        })
                        .collect();
                    let ports: Vec<String> = servers.iter().map(|s| s.port.to_string()).collect();
                    params.push(format!("host={}", hosts.join(",")));
                    params.push(format!("port={}", ports.join(",")));
                }
                write!(f, "/{}", percent_encode(&t.dbname))?;
                if t.sslmode != SslMode::Prefer && matches!(t.host, PgHost::Tcp(_)) {
                    params.push(format!("sslmode={}", t.sslmode.as_str()));
                }
                if let Some(root) = &t.sslrootcert {
                    params.push(format!("sslrootcert={}", root.display()));
                }
                if t.session_attrs != SessionAttrs::Any {
                    params.push(format!("target_session_attrs={}", t.session_attrs.as_str()));
                }
                if !params.is_empty() {
                    write!(f, "?{}", params.join("&"))?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mysql(url: &str) -> MysqlTarget {
        match url.parse::<DatabaseUrl>().unwrap().0 {
            Endpoint::Mysql(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mysql_urls() {
        let t = mysql("mysql://app:s%40cret@db.internal:3307/shop?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ca.pem&connect_timeout=5");
        assert_eq!(t.user, "app");
        assert_eq!(t.password.as_ref().map(Secret::expose), Some("s@cret"));
        assert_eq!(
            (t.host.clone(), t.port),
            (MysqlHost::Tcp("db.internal".into()), 3307)
        );
        assert_eq!(t.database, "shop");
        assert_eq!(t.ssl_mode, MysqlSslMode::VerifyIdentity);
        assert_eq!(t.ssl_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(t.connect_timeout, Some(Duration::from_secs(5)));

        let t = mysql("mariadb://root@/app?socket=/run/mysqld/mysqld.sock");
        assert_eq!(
            t.host,
            MysqlHost::Socket(PathBuf::from("/run/mysqld/mysqld.sock"))
        );
        assert_eq!(t.ssl_mode, MysqlSslMode::Disabled);
        assert_eq!(mysql("mysql://u@h/d").ssl_mode, MysqlSslMode::Preferred);
        assert_eq!(mysql("mysql://u@h/d").port, 3306);

        let url: DatabaseUrl = "mysql://app:hunter2@db/shop?ssl-mode=required"
            .parse()
            .unwrap();
        assert_eq!(
            url.to_string(),
            "mysql://app:***@db:3306/shop?ssl-mode=required"
        );
        assert_eq!(url.engine(), "mysql");
        assert_eq!(url.password(), Some("hunter2"));
        assert!(!format!("{url:?}").contains("hunter2"));

        for (bad, why) in [
            ("mysql://u@h", "needs a database"),
            ("mysql://u@h/d?ssl-mode=sometimes", "unknown ssl-mode"),
            (
                "mysql://u@h/d?sslrootcert=x",
                "unknown parameter `sslrootcert`",
            ),
            (
                "mysql://u@h/d?ssl-mode=disabled&ssl-ca=/ca.pem",
                "ssl-mode is disabled",
            ),
        ] {
            let e = bad.parse::<DatabaseUrl>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    fn pg(url: &str) -> PgTarget {
        match url.parse::<DatabaseUrl>().unwrap().0 {
            Endpoint::Postgres(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sqlite_paths() {
        let table = [
            ("sqlite://app.db", "app.db"),
            ("sqlite://data/app.db", "data/app.db"),
            ("sqlite:///var/lib/app.db", "/var/lib/app.db"),
            ("sqlite://my%20app.db", "my app.db"),
        ];
        for (url, path) in table {
            assert_eq!(
                url.parse::<DatabaseUrl>().unwrap(),
                DatabaseUrl(Endpoint::Sqlite(SqliteTarget::File(path.into()))),
                "{url}"
            );
        }
        assert_eq!(
            "sqlite::memory:".parse::<DatabaseUrl>().unwrap(),
            DatabaseUrl(Endpoint::Sqlite(SqliteTarget::Memory))
        );
    }

    #[test]
    fn postgres_full_url() {
        let t = pg("postgresql://alice:s3cr%40t@db.example.com:6432/app?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=5");
        assert_eq!(t.user, "alice");
        assert_eq!(t.password.as_ref().unwrap().expose(), "s3cr@t");
        assert_eq!(t.host, PgHost::Tcp("db.example.com".into()));
        assert_eq!(t.port, 6432);
        assert_eq!(t.dbname, "app");
        assert_eq!(t.sslmode, SslMode::VerifyFull);
        assert_eq!(t.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(t.connect_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn postgres_several_hosts_as_libpq_takes_them() {
        let t = pg("postgres://u@h1:5432,h2:5433,h3/db?target_session_attrs=read-write");
        let servers: Vec<(PgHost, u16)> = t
            .each_server()
            .into_iter()
            .map(|s| (s.host, s.port))
            .collect();
        assert_eq!(
            servers,
            [
                (PgHost::Tcp("h1".into()), 5432),
                (PgHost::Tcp("h2".into()), 5433),
                (PgHost::Tcp("h3".into()), 5432)
            ]
        );
        assert_eq!(t.session_attrs, SessionAttrs::ReadWrite);
        // As parameters: one port for all, or one per host.
        let t = pg("postgres://u@/db?host=h1,h2&port=6000");
        assert_eq!(t.alternates, [(PgHost::Tcp("h2".into()), 6000)]);
        assert_eq!(t.port, 6000);
        let t = pg(
            "postgres://u@/db?host=h1,/tmp/s&port=6000,6001&target_session_attrs=prefer-standby",
        );
        assert_eq!(t.alternates, [(PgHost::Socket("/tmp/s".into()), 6001)]);
        // Shown as given, without the password.
        for url in [
            "postgres://u:***@h1:5432,h2:5433/db?target_session_attrs=primary",
            "postgres://u@/db?host=h1,/tmp/s&port=6000,6001",
        ] {
            let shown = url.parse::<DatabaseUrl>().unwrap().to_string();
            let again = shown.parse::<DatabaseUrl>().unwrap().to_string();
            assert_eq!(shown, again, "{url}");
        }
        assert_eq!(
            "postgres://u:pw@h1:5432,h2:5433/db?target_session_attrs=primary"
                .parse::<DatabaseUrl>()
                .unwrap()
                .to_string(),
            "postgres://u:***@h1:5432,h2:5433/db?target_session_attrs=primary"
        );
        for (bad, want) in [
            ("postgres://u@h1,,h2/db", "an empty host"),
            (
                "postgres://u@/db?host=h1,h2,h3&port=1,2",
                "`port` lists 2 ports for 3 hosts",
            ),
            (
                "postgres://u@h/db?target_session_attrs=master",
                "unknown target_session_attrs `master`",
            ),
            ("mysql://u@h1,h2/db", "names one server"),
        ] {
            let e = bad.parse::<DatabaseUrl>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn session_attrs_accept_as_libpq_does() {
        // (in recovery, read-only) of each server kind.
        let (primary, read_only, standby) = ((false, false), (false, true), (true, true));
        let table = [
            (SessionAttrs::Any, [true, true, true]),
            (SessionAttrs::ReadWrite, [true, false, false]),
            (SessionAttrs::ReadOnly, [false, true, true]),
            (SessionAttrs::Primary, [true, true, false]),
            (SessionAttrs::Standby, [false, false, true]),
        ];
        for (attrs, want) in table {
            let got = [primary, read_only, standby].map(|(r, ro)| attrs.accepts(r, ro, true));
            assert_eq!(got, want, "{attrs:?}");
        }
        // prefer-standby: only a standby in its first pass, any in its second.
        let prefer = SessionAttrs::PreferStandby;
        assert!(!prefer.accepts(false, false, true) && prefer.accepts(true, true, true));
        assert!(prefer.accepts(false, false, false));
        assert!(prefer.wants_no_writes() && !SessionAttrs::ReadWrite.wants_no_writes());
    }

    #[test]
    fn postgres_socket_and_defaults() {
        let t = pg("postgres://bob@/app?host=/tmp/pg&port=5433");
        assert_eq!(t.host, PgHost::Socket("/tmp/pg".into()));
        assert_eq!(t.port, 5433);
        assert_eq!(t.sslmode, SslMode::Disable);
        let t = pg("postgres://bob@%2Ftmp%2Fpg/app");
        assert_eq!(t.host, PgHost::Socket("/tmp/pg".into()));
        let t = pg("postgres://bob@localhost");
        assert_eq!(
            (t.port, t.dbname.as_str(), t.sslmode),
            (5432, "bob", SslMode::Prefer)
        );
        let t = pg("postgres://u:p@[::1]:7000/d");
        assert_eq!((t.host, t.port), (PgHost::Tcp("::1".into()), 7000));
        let t = pg("postgres://u@h/d?password=p%26q");
        assert_eq!(t.password.unwrap().expose(), "p&q");
        // A password may hold `@` and `:`.
        let t = pg("postgres://u:a:b@c@h/d");
        assert_eq!(t.password.unwrap().expose(), "a:b@c");
    }

    #[test]
    fn bad_urls_never_echo_the_authority() {
        let table = [
            ("oracle://u:hunter2@h/d", "unsupported scheme `oracle`"),
            ("postgres://u:hunter2@h:abc/d", "the port is not a number"),
            ("postgres://u:hun/ter2@h/d", "must be percent-encoded"),
            (
                "postgres://u:hunter2@h/d?sslmode=sometimes",
                "unknown sslmode `sometimes`",
            ),
            (
                "postgres://u:hunter2@h/d?colour=blue",
                "unknown parameter `colour`",
            ),
            (
                "postgres://u:hunter2@h/d?connect_timeout=soon",
                "connect_timeout `soon`",
            ),
            (
                "postgres://u:hunter2@h/d?connect_timeout=86401",
                "connect_timeout `86401` is more than a day",
            ),
            ("postgres://u:hunter2@h1,,h2/d", "an empty host"),
            ("mysql://u:hunter2@h1,h2/d", "names one server"),
            ("postgres://u:hunter2@::1:5432/d", "must be in brackets"),
            ("postgres://u:hunter2@fe80::1/d", "must be in brackets"),
            (
                "postgres://u:hunter2%zz@h/d",
                "bad percent-encoding in the password",
            ),
            (
                "sqlite://app.db?mode=ro",
                "unknown SQLite URL parameter `mode`",
            ),
            ("sqlite://", "needs a file path"),
            ("hunter2", "expected `sqlite://PATH`"),
        ];
        for (url, want) in table {
            let e = url.parse::<DatabaseUrl>().unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("hunter2") && !e.contains("ter2"), "{url}: {e}");
        }
    }

    #[test]
    fn display_hides_the_password() {
        let url: DatabaseUrl = "postgres://alice:hunter2@db:5432/app?sslmode=require"
            .parse()
            .unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://alice:***@db:5432/app?sslmode=require"
        );
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.password(), Some("hunter2"));
        let url: DatabaseUrl = "postgres://alice@/app?host=/run/pg&port=6000"
            .parse()
            .unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://alice@/app?host=/run/pg&port=6000"
        );
        // An IPv6 host, however it was given, is shown in brackets.
        for given in [
            "postgres://u@[::1]:6000/d",
            "postgres://u@/d?host=::1&port=6000",
        ] {
            let url: DatabaseUrl = given.parse().unwrap();
            assert_eq!(url.to_string(), "postgres://u@[::1]:6000/d", "{given}");
        }
        assert_eq!(host_port("db", 5432), "db:5432");
    }
}
