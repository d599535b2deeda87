//! The background task that keeps a broker connected: it connects with capped
//! exponential backoff and jitter, re-declares the topology on every new
//! connection, and opens a new connection when the current one fails or
//! stops responding.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::Event;
use rand::Rng;
use tracing::{debug, info, warn};

use super::declare;
use super::session::{Session, Shared};

/// How often the supervisor checks the connection state, in case a
/// connection closes without an error event.
const STATUS_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// How often the supervisor checks that a connected connection still
/// responds, by opening and closing a channel.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// A connection that lasted this long resets the backoff; one that failed
/// sooner counts as one more failed attempt before the next connect.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// Runs until aborted. `initial` is the session opened by `connect`, if any.
pub(super) async fn run(shared: Arc<Shared>, initial: Option<Arc<Session>>) {
    let mut session = initial;
    let mut short_lived = 0;
    loop {
        let current = match session.take() {
            Some(current) => current,
            None => {
                let current = connect_with_backoff(&shared).await;
                declare::redeclare(&shared, &current).await;
                shared.install(current.clone());
                current
            }
        };
        let connected_at = Instant::now();
        let end = watch(&shared, &current).await;
        shared.remove(&current);
        if end == SessionEnd::Unresponsive {
            close_in_background(current);
        }

        // Reconnect at once after a connection that lasted, so that a broker
        // restart costs little, but back off when connections keep failing
        // right after they open.
        if connected_at.elapsed() >= STABLE_CONNECTION {
            short_lived = 0;
            continue;
        }
        short_lived += 1;
        let delay = jittered_backoff(&shared, short_lived);
        warn!(broker = %shared.name, failures = short_lived, next_delay = ?delay, "connection failed soon after it opened; waiting before reconnecting");
        tokio::time::sleep(delay).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    /// The connection failed or was closed.
    Failed,
    /// The connection looks connected but opens no channel.
    Unresponsive,
}

/// Closes an unresponsive connection without waiting, because lapin may
/// never complete the close.
fn close_in_background(session: Arc<Session>) {
    tokio::spawn(async move {
        let close = session.connection.close(200, "OK".into());
        let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
    });
}

/// Opens a connection, retrying until one succeeds. Each failed attempt is
/// logged at warn with its number and the delay before the next.
async fn connect_with_backoff(shared: &Shared) -> Arc<Session> {
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        match shared.open_session().await {
            Ok(session) => {
                info!(broker = %shared.name, url = %shared.redacted_url, attempt, "connected to broker");
                return session;
            }
            Err(error) => {
                let delay = jittered_backoff(shared, attempt);
                warn!(
                    broker = %shared.name,
                    attempt,
                    next_delay = ?delay,
                    %error,
                    "connecting to broker failed; retrying"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Waits until the connection of `session` fails or stops responding.
async fn watch(shared: &Shared, session: &Session) -> SessionEnd {
    let mut events = Box::pin(session.connection.events_listener());
    let mut status_check = tokio::time::interval(STATUS_CHECK_INTERVAL);
    let mut health_check = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    health_check.reset();
    loop {
        tokio::select! {
            event = events.next() => match event {
                // lapin reports channel errors (a 404 or 406 closing one
                // channel) as events too; only a connection in the error state
                // is gone.
                Some(Event::Error(error)) if session.connection.status().errored() => {
                    warn!(broker = %shared.name, %error, "connection lost; reconnecting");
                    return SessionEnd::Failed;
                }
                Some(Event::Error(error)) => {
                    debug!(broker = %shared.name, %error, "broker closed a channel");
                }
                Some(_) => {}
                None => return SessionEnd::Failed,
            },
            _ = status_check.tick() => {
                let status = session.connection.status();
                if status.errored() || status.closed() {
                    warn!(broker = %shared.name, "connection closed; reconnecting");
                    return SessionEnd::Failed;
                }
            }
            _ = health_check.tick() => {
                if !responds(shared, session).await {
                    warn!(
                        broker = %shared.name,
                        timeout = ?shared.options.operation_timeout,
                        "connection opened no channel in time; reconnecting"
                    );
                    return SessionEnd::Unresponsive;
                }
            }
        }
    }
}

/// Reports whether a connected connection opens a channel within the
/// operation timeout. This guards against a connection that stops responding
/// without closing, which lapin 4.12.3 did when its automatic recovery was on.
async fn responds(shared: &Shared, session: &Session) -> bool {
    if !session.connection.status().connected() {
        return true;
    }
    let open = session.connection.create_channel();
    match tokio::time::timeout(shared.options.operation_timeout, open).await {
        Ok(Ok(channel)) => {
            drop(channel);
            true
        }
        Ok(Err(error)) => {
            debug!(broker = %shared.name, %error, "health check could not open a channel");
            true
        }
        Err(_) => !session.connection.status().connected(),
    }
}

fn jittered_backoff(shared: &Shared, attempt: u32) -> Duration {
    let options = &shared.options;
    let jitter = rand::rng().random();
    backoff_delay(
        attempt,
        options.reconnect_initial_delay,
        options.reconnect_max_delay,
        jitter,
    )
}

/// Returns the delay before connection attempt `attempt + 1`. The delay is
/// `initial` doubled per failed attempt and capped at `max`. A random part of
/// up to half, set by `jitter` in `[0, 1)`, is taken off so that many clients
/// do not reconnect in step.
pub(super) fn backoff_delay(
    attempt: u32,
    initial: Duration,
    max: Duration,
    jitter: f64,
) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let base = initial.saturating_mul(1 << doublings).min(max);
    base.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn backoff_doubles_per_attempt() {
        assert_eq!(backoff_delay(1, INITIAL, MAX, 0.0), INITIAL);
        assert_eq!(backoff_delay(2, INITIAL, MAX, 0.0), INITIAL * 2);
        assert_eq!(backoff_delay(4, INITIAL, MAX, 0.0), INITIAL * 8);
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(backoff_delay(10, INITIAL, MAX, 0.0), MAX);
        assert_eq!(backoff_delay(u32::MAX, INITIAL, MAX, 0.0), MAX);
    }

    #[test]
    fn backoff_jitter_takes_up_to_half() {
        let delay = backoff_delay(1, INITIAL, MAX, 0.999_999);
        assert!(delay >= INITIAL / 2, "{delay:?}");
        assert!(delay < INITIAL, "{delay:?}");
        assert_eq!(backoff_delay(1, INITIAL, MAX, 0.5), INITIAL.mul_f64(0.75));
    }
}
