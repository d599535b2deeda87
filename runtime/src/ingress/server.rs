//! The HTTP server loop: HTTP/1.1 connections through hyper, with a
//! deadline for request headers, one for stalled response writes, and
//! graceful shutdown.
//!
//! `axum::serve` has no setting for the header deadline, so a client that
//! sends its headers a byte at a time could hold a connection forever.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept`, such as one for too many open files, so
/// the loop does not spin while the condition lasts.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Deadlines of one HTTP connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionTimeouts {
    /// `runtime.header_timeout`: time to send a whole request head.
    pub header: Duration,
    /// `runtime.write_timeout`: time a response write may wait for the
    /// client to read.
    pub write: Duration,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits
/// for the requests in progress.
///
/// A connection that has not sent a whole request head within
/// `timeouts.header` is closed without a response. hyper starts that clock
/// when the connection opens and again after each response, so it also
/// closes a kept-alive connection that stays idle that long. A connection
/// whose client reads nothing of a response for `timeouts.write` is closed
/// too, so it cannot hold the server, or its shutdown, forever.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: ConnectionTimeouts,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    let graceful = GracefulShutdown::new();

    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept an HTTP connection; retrying");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let stream = WriteDeadline::new(stream, timeouts.write);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                log_connection_error(peer, timeouts, &err);
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Logs why a connection ended with an error, at debug level, because
/// these are the clients' faults (a missed header deadline, a reset) and a
/// busy server can have many.
fn log_connection_error(peer: SocketAddr, timeouts: ConnectionTimeouts, err: &hyper::Error) {
    let write_timed_out = std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<io::Error>())
        .is_some_and(|source| source.kind() == io::ErrorKind::TimedOut);
    if write_timed_out {
        tracing::debug!(%peer, write_timeout = ?timeouts.write,
            "closed a connection whose client read nothing of its response within runtime.write_timeout");
    } else if err.is_timeout() {
        tracing::debug!(%peer, header_timeout = ?timeouts.header,
            "closed a connection that sent no complete request headers within runtime.header_timeout");
    } else {
        tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
    }
}

/// A connection whose writes fail once they have made no progress for
/// `timeout`. hyper has no write timeout of its own, and without one a
/// client that stops reading its responses would hold its connection, and
/// shutdown with it, for as long as it liked.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Started when a write first waits, dropped when one makes progress.
    stalled_since: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stalled_since: None,
        }
    }

    /// Passes on the inner write's result, or fails the write once it has
    /// waited `timeout` in all.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled_since = None;
            return poll;
        }
        let timeout = self.timeout;
        let deadline = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing of its response for {timeout:?}"),
            ))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.guard(cx, poll)
    }
}
