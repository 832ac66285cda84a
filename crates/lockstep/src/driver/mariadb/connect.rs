//! Connecting to MariaDB or MySQL, and saying why a connection failed.

use std::time::Duration;

use mysql::consts::CapabilityFlags;
use mysql::prelude::Queryable;
use mysql::{OptsBuilder, SslOpts};

use crate::driver::tables::Names;
use crate::error::{ConnectFailure, Error};
use crate::history::TableName;
use crate::remedy::Remedy;
use crate::url::{host_port, DatabaseUrl, MysqlHost, MysqlSslMode, MysqlTarget};
use crate::waits::Limits;

use super::{code, server_code, MysqlDriver};

/// How long to wait for a server that does not answer the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl MysqlDriver {
    pub(crate) fn connect(
        target: &MysqlTarget,
        url: &DatabaseUrl,
        table: &TableName,
    ) -> Result<Self, Error> {
        let shown = url.to_string();
        let mut opts = options(target, tls(target));
        let conn = match mysql::Conn::new(opts.clone()) {
            // `preferred`: TLS where the server offers it, else without.
            Err(mysql::Error::DriverError(mysql::DriverError::TlsNotSupported))
                if target.ssl_mode == MysqlSslMode::Preferred =>
            {
                opts = options(target, None);
                mysql::Conn::new(opts.clone())
            }
            other => other,
        };
        let conn = conn.map_err(|e| Error::Connect {
            target: shown,
            message: super::message(&e).to_string(),
            remedy: why_refused(&e, target).map(Remedy::Text),
            failure: failure(&e),
        })?;
        let mut driver = MysqlDriver {
            opts,
            conn,
            target: target.clone(),
            url: url.clone(),
            table: table.clone(),
            tables: Names::default(),
            session: None,
            server: String::new(),
            galera: false,
            mariadb: false,
            cancelled: Default::default(),
            may_shadow: false,
            session_changed: false,
            tracks_session: false,
            can_track: false,
            limits: None,
            sees_all_sessions: false,
            text_versions: false,
        };
        driver.qualify();
        driver.identify()?;
        Ok(driver)
    }

    /// Which server this is, and whether this user sees every session:
    /// what judging a holder's liveness needs. On Galera the node's
    /// membership id (new each time the node starts); elsewhere the
    /// server's host and port. Behind a proxy (the server listens on
    /// another port than the one connected to) sessions prove nothing, and
    /// the server is left unnamed.
    fn identify(&mut self) -> Result<(), Error> {
        let row: Option<(Option<String>, String, u16, i64, String)> = self
            .conn
            .query_first(
                "SELECT (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS
                          WHERE VARIABLE_NAME = 'WSREP_GCOMM_UUID'),
                        @@hostname, @@port,
                        (SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES
                          WHERE PRIVILEGE_TYPE = 'PROCESS'),
                        @@version",
            )
            .map_err(|e| super::db_error("reading which server this is", &e))?;
        let Some((gcomm, host, port, process, version)) = row else {
            return Ok(());
        };
        let proxied = matches!(self.target.host, MysqlHost::Tcp(_)) && port != self.target.port;
        let gcomm = gcomm.filter(|u| !u.is_empty());
        self.galera = gcomm.is_some();
        self.server = match gcomm {
            _ if proxied => String::new(),
            Some(uuid) => format!("galera:{uuid}"),
            None => format!("{host}:{port}"),
        };
        self.sees_all_sessions = process > 0;
        self.mariadb = version.contains("MariaDB");
        // Reported from MariaDB 10.2 and MySQL 5.7 on.
        let release = release_of(&version);
        self.can_track = release >= if self.mariadb { (10, 2) } else { (5, 7) };
        self.session_settings(Limits::default(), false)
    }

    /// lockstep's settings for its session, made again after every reset,
    /// in one statement: on Galera, causal reads, so that a look at the
    /// lock or the history on one node sees what every node committed
    /// before it; and a migration's bounds. The lock waits count whole
    /// seconds (a part of one counts as one); the statement's run time is
    /// MariaDB's alone (MySQL's `max_execution_time` bounds only `SELECT`).
    pub(super) fn session_settings(&mut self, limits: Limits, track: bool) -> Result<(), Error> {
        let mut settings = Vec::new();
        // The answer to this statement shows whether it took.
        let track = track && self.can_track;
        if track {
            settings.push("session_track_state_change = ON".to_string());
        }
        if self.galera {
            settings.push("wsrep_sync_wait = 1".to_string());
        }
        if let Some(wait) = limits.lock_timeout {
            let seconds = wait.as_millis().div_ceil(1000).max(1);
            settings.push(format!("lock_wait_timeout = {seconds}"));
            settings.push(format!("innodb_lock_wait_timeout = {seconds}"));
        }
        if let Some(run) = limits.statement_timeout.filter(|_| self.mariadb) {
            settings.push(format!(
                "max_statement_time = {:.3}",
                run.as_secs_f64().max(0.001)
            ));
        }
        self.limits = Some(limits);
        self.tracks_session = false;
        if settings.is_empty() {
            return Ok(());
        }
        self.conn
            .query_drop(format!("SET SESSION {}", settings.join(", ")))
            .map_err(|e| super::db_error("setting up the session", &e))?;
        self.tracks_session = track
            && self.conn.session_state_changes().is_ok_and(|changes| {
                changes.iter().any(|c| {
                    c.data_type() == mysql::consts::SessionStateType::SESSION_TRACK_STATE_CHANGE
                })
            });
        Ok(())
    }
}

/// A server's major and minor release, from `@@version`
/// (`10.11.19-MariaDB-0+deb12u1`, `8.0.36`); zeros when unreadable.
fn release_of(version: &str) -> (u32, u32) {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The client's options for a target, with TLS as given.
fn options(target: &MysqlTarget, tls: Option<SslOpts>) -> mysql::Opts {
    let builder = OptsBuilder::new()
        .user(Some(&target.user))
        .pass(target.password.as_ref().map(|p| p.expose()))
        .db_name(Some(&target.database))
        // Affected rows count the rows a statement matched, not only those
        // it changed: a renewal within one microsecond still says "held".
        .additional_capabilities(
            CapabilityFlags::CLIENT_FOUND_ROWS | CapabilityFlags::CLIENT_SESSION_TRACK,
        )
        .tcp_connect_timeout(Some(target.connect_timeout.unwrap_or(CONNECT_TIMEOUT)))
        // Never switch to a socket the server names: the URL decides.
        .prefer_socket(false)
        .ssl_opts(tls);
    let builder = match &target.host {
        MysqlHost::Tcp(host) => builder.ip_or_hostname(Some(host)).tcp_port(target.port),
        MysqlHost::Socket(path) => builder.socket(Some(path.display().to_string())),
    };
    builder.into()
}

/// TLS as the URL's `ssl-mode` says.
fn tls(target: &MysqlTarget) -> Option<SslOpts> {
    let opts = SslOpts::default();
    let opts = match &target.ssl_ca {
        Some(ca) => opts.with_root_cert_path(Some(ca.clone())),
        None => opts,
    };
    match target.ssl_mode {
        MysqlSslMode::Disabled => None,
        MysqlSslMode::Preferred | MysqlSslMode::Required => {
            Some(opts.with_danger_accept_invalid_certs(true))
        }
        MysqlSslMode::VerifyCa => Some(opts.with_danger_skip_domain_validation(true)),
        MysqlSslMode::VerifyIdentity => Some(opts),
    }
}

/// What to check when a connection failed.
/// What kind of connection failure: from the server's code, else from
/// TLS.
fn failure(e: &mysql::Error) -> ConnectFailure {
    match (server_code(e), e) {
        (Some(code::ACCESS_DENIED | code::DB_ACCESS_DENIED | code::HOST_NOT_ALLOWED), _) => {
            ConnectFailure::Rejected
        }
        (Some(code::BAD_DB), _) => ConnectFailure::NoDatabase,
        (Some(_), _) => ConnectFailure::Unreachable,
        (None, mysql::Error::TlsError(_)) => ConnectFailure::Rejected,
        // rustls's error under the I/O error of the socket, or of the
        // packet codec (whose error the crate's does not give as a source).
        (None, mysql::Error::IoError(io)) if crate::driver::tls_refused(io) => {
            ConnectFailure::Rejected
        }
        (None, mysql::Error::CodecError(codec)) if crate::driver::tls_refused(codec) => {
            ConnectFailure::Rejected
        }
        (None, _) => ConnectFailure::Unreachable,
    }
}

fn why_refused(e: &mysql::Error, target: &MysqlTarget) -> Option<String> {
    match server_code(e) {
        Some(code::ACCESS_DENIED) => {
            Some("check the user name and password in the database URL".into())
        }
        Some(code::BAD_DB) => Some(format!(
            "create the database first: CREATE DATABASE {}",
            super::quote_ident(&target.database)
        )),
        Some(_) => None,
        None => {
            let text = e.to_string();
            if text.contains("refused") || text.contains("No such file") {
                Some(match &target.host {
                    MysqlHost::Tcp(h) => format!(
                        "is the server running and listening on {}?",
                        host_port(h, target.port)
                    ),
                    MysqlHost::Socket(p) => {
                        format!("is the server running with its socket at {}?", p.display())
                    }
                })
            } else if text.contains("imed out") || text.contains("timeout") {
                Some("the server did not answer; check the host, port and firewall (the wait is `connect_timeout` in the URL)".into())
            } else if text.to_lowercase().contains("tls") || text.contains("certificate") {
                Some("check `ssl-ca` (the CA that signed the server's certificate) and that the URL's host is named on the certificate; `ssl-mode=verify_ca` does not check the name".into())
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::release_of;

    #[test]
    fn a_release_is_read_from_the_version() {
        assert_eq!(release_of("10.11.19-MariaDB-0+deb12u1"), (10, 11));
        assert_eq!(release_of("8.0.36"), (8, 0));
        assert_eq!(release_of("unknown"), (0, 0));
    }
}
