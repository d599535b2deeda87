//! The HTTP server loop: HTTP/1.1 connections through hyper, with a
//! deadline for request headers, and graceful shutdown.
//!
//! `axum::serve` has no setting for the header deadline, so a client that
//! sends its headers a byte at a time could hold a connection forever.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Pause after a failed `accept`, such as one for too many open files, so
/// the loop does not spin while the condition lasts.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` is cancelled, then waits
/// for the requests in progress.
///
/// A connection that has not sent a whole request head within
/// `header_timeout` is closed without a response. hyper starts that clock
/// when the connection opens and again after each response, so it also
/// closes a kept-alive connection that stays idle that long.
///
/// NOTE: hyper 1.13 has no write timeout, so a client that stops reading
/// its responses keeps its connection, and shutdown waits for it.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
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
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                log_connection_error(peer, header_timeout, &err);
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Logs why a connection ended with an error, at debug level, because
/// these are the clients' faults (a missed header deadline, a reset) and a
/// busy server can have many.
fn log_connection_error(peer: SocketAddr, header_timeout: Duration, err: &hyper::Error) {
    if err.is_timeout() {
        tracing::debug!(%peer, ?header_timeout,
            "closed a connection that sent no complete request headers within runtime.header_timeout");
    } else {
        tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
    }
}
