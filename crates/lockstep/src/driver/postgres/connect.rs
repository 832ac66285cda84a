//! Connecting to PostgreSQL, and saying why a connection failed.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::driver::tables::Names;
use crate::error::{ConnectFailure, Error};
use crate::history::TableName;
use crate::remedy::Remedy;
use crate::url::{DatabaseUrl, PgHost, PgTarget, SessionAttrs};
use crate::waits::Limits;

use super::client::Client;
use super::{chain, code, PgDriver, DEFAULT_SCHEMA};

/// How long to wait for a server that does not answer the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection failed, and what to check: the message, a hint, and
/// the kind of failure (from the server's code, else from TLS).
fn why_refused(
    e: &tokio_postgres::Error,
    target: &PgTarget,
) -> (String, Option<String>, ConnectFailure) {
    let message = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => chain(e),
    };
    let failure = match code(e) {
        // Class 28: invalid authorization.
        Some(c) if c.code().starts_with("28") => ConnectFailure::Rejected,
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => ConnectFailure::NoDatabase,
        Some(_) => ConnectFailure::Unreachable,
        None if crate::driver::tls_refused(e) => ConnectFailure::Rejected,
        None => ConnectFailure::Unreachable,
    };
    let hint = match code(e) {
        Some(c) if *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            Some("check the user name and password in the database URL".to_string())
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => Some(format!(
            "create the database first, e.g. `createdb {}`",
            target.dbname
        )),
        Some(_) => None,
        None if message.contains("refused") || message.contains("No such file") => Some(match &target.host {
            PgHost::Tcp(h) => format!(
                "is PostgreSQL running and listening on {}?",
                crate::url::host_port(h, target.port)
            ),
            PgHost::Socket(d) => format!("is PostgreSQL running with its socket in {}?", d.display()),
        }),
        None if message.contains("timed out") || message.contains("timeout") => Some(
            "the server did not answer; check the host, port and firewall (the wait is `connect_timeout` in the URL)"
                .to_string(),
        ),
        None if message.contains("certificate") => Some(
            "check `sslrootcert` (the CA that signed the server's certificate) and that the URL's host is named on the certificate; `sslmode=verify-ca` does not check the name"
                .to_string(),
        ),
        None => None,
    };
    (message, hint, failure)
}

impl PgDriver {
    /// Connects to the URL's server; of a multi-host URL, to the first in
    /// order that answers and is what `target_session_attrs` asks for (with
    /// `prefer-standby`, a standby first, then any), as libpq does. The
    /// driver keeps that server alone as its target: the heartbeat's
    /// connection, the watch's and cancel requests go where it went.
    pub(crate) fn connect(
        target: &PgTarget,
        url: &DatabaseUrl,
        table: &TableName,
        application_name: &str,
    ) -> Result<Self, Error> {
        let servers = target.each_server();
        if servers.len() == 1 && target.session_attrs == SessionAttrs::Any {
            return Self::connect_one(target, url, table, application_name);
        }
        let attrs = target.session_attrs;
        let mut tried: Vec<String> = Vec::new();
        let passes: &[bool] = if attrs == SessionAttrs::PreferStandby {
            &[true, false]
        } else {
            &[true]
        };
        for &strict in passes {
            for server in &servers {
                let mut server = server.clone();
                server.session_attrs = SessionAttrs::Any;
                let name = server.server_name();
                // Why each server was passed over, said once: the second
                // pass of `prefer-standby` takes any server that answers.
                let mut passed_over = |why: String| {
                    if strict {
                        tried.push(format!("{name}: {why}"));
                    }
                };
                let mut driver = match Self::connect_one(&server, url, table, application_name) {
                    Ok(driver) => driver,
                    Err(Error::Connect { message, .. }) => {
                        passed_over(message);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                match driver.server_kind() {
                    Ok((in_recovery, read_only))
                        if attrs.accepts(in_recovery, read_only, strict) =>
                    {
                        return Ok(driver)
                    }
                    Ok((in_recovery, read_only)) => passed_over(
                        match (in_recovery, read_only) {
                            (true, _) => "a standby",
                            (false, true) => "read-only",
                            (false, false) => "a primary that takes writes",
                        }
                        .into(),
                    ),
                    Err(e) => passed_over(e.to_string()),
                }
            }
        }
        Err(Error::Connect {
            target: url.to_string(),
            message: format!(
                "no server is {} (target_session_attrs={}): {}",
                attrs_wanted(attrs),
                attrs.as_str(),
                tried.join("; ")
            ),
            remedy: Some(Remedy::Text(match attrs {
                SessionAttrs::ReadWrite | SessionAttrs::Primary => "no server of the URL takes writes: during a failover, wait for the new primary (or promote a standby), then run again; check that the URL lists it".into(),
                _ => "check the hosts of the URL, and which of them runs as what".into(),
            })),
            // A failover may yet bring the server asked for.
            failure: ConnectFailure::Unreachable,
        })
    }

    /// Whether this server is in recovery (a standby), and whether it takes
    /// no writes.
    fn server_kind(&mut self) -> Result<(bool, bool), Error> {
        let messages = self
            .client
            .simple_query(
                "SELECT pg_is_in_recovery()::text, current_setting('transaction_read_only')",
            )
            .map_err(|e| super::db_error("asking the server whether it is a standby", &e))?;
        let row = messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0) == Some("true"), r.get(1) == Some("on")))
            }
            _ => None,
        });
        Ok(row.unwrap_or_default())
    }

    fn connect_one(
        target: &PgTarget,
        url: &DatabaseUrl,
        table: &TableName,
        application_name: &str,
    ) -> Result<Self, Error> {
        let shown = url.to_string();
        let connect_error =
            |message: String, hint: Option<String>, failure: ConnectFailure| Error::Connect {
                target: shown.clone(),
                message,
                remedy: hint.map(Remedy::Text),
                failure,
            };
        let timeout = target.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
        let mut config = config(target, application_name, timeout);
        let (mode, tls) = super::tls::connector(target).map_err(|m| {
            connect_error(
                m,
                Some("see `sslmode` and `sslrootcert` in the README".into()),
                ConnectFailure::Local,
            )
        })?;
        config.ssl_mode(mode);
        let client = match Client::connect(&config, &tls, timeout) {
            Ok(Some(client)) => client,
            Ok(None) => {
                return Err(connect_error(
                    format!(
                        "timed out after {}s setting up the connection: the server accepted it but did not answer",
                        timeout.as_secs_f64()
                    ),
                    Some(
                        "check that the host and port are PostgreSQL's (or a pooler's in front of it), and whether the server is overloaded; the wait is `connect_timeout` in the URL"
                            .into(),
                    ),
                    ConnectFailure::Unreachable,
                ))
            }
            Err(e) => {
                let (message, hint, failure) = why_refused(&e, target);
                return Err(connect_error(message, hint, failure));
            }
        };
        let mut driver = PgDriver {
            client,
            target: target.clone(),
            url: url.clone(),
            application_name: application_name.to_string(),
            tls,
            table: table.clone(),
            schema: table.schema().unwrap_or(DEFAULT_SCHEMA).to_string(),
            tables: Names::default(),
            session: None,
            pooled: None,
            check_interval: false,
            reset_pending: false,
            limits: Limits::default(),
            repeatable_table_seen: false,
            text_versions: false,
        };
        driver.qualify();
        Ok(driver)
    }
}

/// What `target_session_attrs` asks for, in words.
fn attrs_wanted(attrs: SessionAttrs) -> &'static str {
    match attrs {
        SessionAttrs::Any => "reachable",
        SessionAttrs::ReadWrite => "one that takes writes",
        SessionAttrs::ReadOnly => "read-only",
        SessionAttrs::Primary => "a primary",
        SessionAttrs::Standby | SessionAttrs::PreferStandby => "a standby",
    }
}

/// The session as the URL describes it, with keepalives that notice a dead
/// peer within about 10 + 3 * 2 seconds, also while a long statement keeps
/// the connection silent.
fn config(target: &PgTarget, application_name: &str, timeout: Duration) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config.user(&target.user);
    if let Some(password) = &target.password {
        config.password(password.expose());
    }
    config.dbname(&target.dbname);
    match &target.host {
        PgHost::Tcp(host) => config.host(host),
        PgHost::Socket(dir) => config.host_path(dir),
    };
    config
        .port(target.port)
        .connect_timeout(timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .application_name(
            target
                .application_name
                .as_deref()
                .unwrap_or(application_name),
        );
    config
}
