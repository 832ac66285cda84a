//! A blocking PostgreSQL client over `tokio-postgres`, on a runtime of its
//! own with one thread: the connection is driven while a request waits, as
//! the `postgres` crate does, with two things that crate cannot do:
//!
//! - a deadline over the whole connection set-up (the TCP connect, the TLS
//!   request and handshake, the start-up and authentication): its own
//!   timeout covers only the TCP connect, and a server or proxy that accepts
//!   and never answers held lockstep forever;
//! - a simple query's failure with the statements that completed before it
//!   (the server sends a CommandComplete for each): a failure the server
//!   gives no position for (a constraint, a dependency) names its statement.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use futures_core::Stream;
use tokio::runtime::Runtime;
use tokio_postgres::{AsyncMessage, Notification, Row, SimpleQueryMessage, Socket};

use super::tls::{MakeRustls, RustlsStream};

/// The connection the client drives.
type Connection = tokio_postgres::Connection<Socket, RustlsStream<Socket>>;

/// How long dropping a client waits to tell the server goodbye.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

pub(crate) struct Client {
    /// `None` only while dropping.
    client: Option<tokio_postgres::Client>,
    runtime: Runtime,
    link: Link,
}

/// The connection and what arrived on it: apart from the client and the
/// runtime, so that a request can borrow the client while the runtime
/// drives the connection.
struct Link {
    connection: Connection,
    /// Notifications that arrived while something else was awaited.
    notifications: VecDeque<Notification>,
    /// The connection ended (closed, or failed).
    ended: bool,
}

/// How a simple query failed: the error, and the statements of the query
/// that completed before it.
#[derive(Debug)]
pub(crate) struct QueryFailure {
    pub error: tokio_postgres::Error,
    pub completed: usize,
}

impl Client {
    /// Connects, all of the set-up bounded by `timeout`. `Ok(None)` when the
    /// time ran out: the attempt is dropped, and its socket closed.
    pub(crate) fn connect(
        config: &tokio_postgres::Config,
        tls: &MakeRustls,
        timeout: Duration,
    ) -> Result<Option<Client>, tokio_postgres::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime builds");
        let connected = runtime
            .block_on(async { tokio::time::timeout(timeout, config.connect(tls.clone())).await });
        let Ok(connected) = connected else {
            return Ok(None);
        };
        let (client, connection) = connected?;
        Ok(Some(Client {
            client: Some(client),
            runtime,
            link: Link {
                connection,
                notifications: VecDeque::new(),
                ended: false,
            },
        }))
    }

    fn client(&self) -> &tokio_postgres::Client {
        self.client
            .as_ref()
            .expect("only dropping takes the client")
    }

    /// Runs a query string of any number of statements, with no
    /// parameters, and returns every message.
    pub(crate) fn simple_query(
        &mut self,
        query: &str,
    ) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
        self.simple_query_counted(query).map_err(|f| f.error)
    }

    /// [`Client::simple_query`], and on failure how many of the string's
    /// statements completed before the one that failed.
    pub(crate) fn simple_query_counted(
        &mut self,
        query: &str,
    ) -> Result<Vec<SimpleQueryMessage>, QueryFailure> {
        let client = self
            .client
            .as_ref()
            .expect("only dropping takes the client");
        let mut messages = Vec::new();
        let result = self.link.block_on(&self.runtime, async {
            let mut stream = pin!(client.simple_query_raw(query).await?);
            while let Some(message) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await
            {
                messages.push(message?);
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(messages),
            Err(error) => Err(QueryFailure {
                error,
                completed: messages
                    .iter()
                    .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
                    .count(),
            }),
        }
    }

    /// Runs a query with typed parameters and hands each row to `each` as
    /// it arrives: a large result is never held whole.
    pub(crate) fn for_each_row(
        &mut self,
        query: &str,
        mut each: impl FnMut(Row) -> Result<(), tokio_postgres::Error>,
    ) -> Result<(), tokio_postgres::Error> {
        let client = self
            .client
            .as_ref()
            .expect("only dropping takes the client");
        let no_params: [(&str, tokio_postgres::types::Type); 0] = [];
        self.link.block_on(&self.runtime, async {
            let mut rows = pin!(client.query_typed_raw(query, no_params).await?);
            while let Some(row) = std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
                each(row?)?;
            }
            Ok(())
        })
    }

    /// Waits up to `timeout` for a notification; `None` when none came.
    pub(crate) fn wait_for_notification(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Notification>, tokio_postgres::Error> {
        // Closed: no notification will come; the next request says why.
        self.link
            .drive_until(&self.runtime, timeout, |notifications, ended| {
                !notifications.is_empty() || ended
            })?;
        Ok(self.link.notifications.pop_front())
    }

    /// A handle that cancels the query this connection is running.
    pub(crate) fn cancel_token(&self) -> tokio_postgres::CancelToken {
        self.client().cancel_token()
    }

    /// Whether the connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.link.ended || self.client().is_closed()
    }
}

impl Link {
    /// Awaits `future` while driving the connection.
    fn block_on<T>(
        &mut self,
        runtime: &Runtime,
        future: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, tokio_postgres::Error> {
        let mut future = pin!(future);
        runtime.block_on(std::future::poll_fn(|cx| {
            if let Some(Err(e)) = self.drive(cx) {
                return Poll::Ready(Err(e));
            }
            future.as_mut().poll(cx)
        }))
    }

    /// Drives the connection for up to `timeout`, until `done` says so
    /// (given the notifications so far and whether the connection ended).
    /// `Ok(false)` when the time ran out.
    fn drive_until(
        &mut self,
        runtime: &Runtime,
        timeout: Duration,
        done: impl Fn(&VecDeque<Notification>, bool) -> bool,
    ) -> Result<bool, tokio_postgres::Error> {
        let driven = runtime.block_on(async {
            tokio::time::timeout(
                timeout,
                std::future::poll_fn(|cx| match self.drive(cx) {
                    Some(Err(e)) => Poll::Ready(Err(e)),
                    _ if done(&self.notifications, self.ended) => Poll::Ready(Ok(())),
                    _ => Poll::Pending,
                }),
            )
            .await
        });
        match driven {
            Err(_elapsed) => Ok(false),
            Ok(result) => result.map(|()| true),
        }
    }

    /// Reads what the connection has: notifications are kept, notices
    /// dropped. `Some(Err)` when the connection failed; `Some(Ok)` when it
    /// closed; `None` while it is open with nothing more to read.
    fn drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Option<Result<(), tokio_postgres::Error>> {
        if self.ended {
            return Some(Ok(()));
        }
        loop {
            match self.connection.poll_message(cx) {
                Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => {
                    self.notifications.push_back(n)
                }
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => {
                    self.ended = true;
                    return Some(Err(e));
                }
                Poll::Ready(None) => {
                    self.ended = true;
                    return Some(Ok(()));
                }
                Poll::Pending => return None,
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Without its client the connection says goodbye to the server
        // (a Terminate message) and ends; a server that stopped answering
        // is not waited on for long.
        drop(self.client.take());
        let _ = self
            .link
            .drive_until(&self.runtime, CLOSE_WAIT, |_, ended| ended);
    }
}

/// Sends a cancel request for `token`'s query, on a runtime of its own:
/// from another thread than the one waiting on the query.
pub(crate) fn cancel(token: &tokio_postgres::CancelToken, tls: &MakeRustls) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let _ = runtime.block_on(token.cancel_query(tls.clone()));
}
