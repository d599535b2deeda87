//! The AMQP 0-9-1 broker, on lapin: one connection per broker, declarations
//! on short-lived channels, publishes on a small pool of confirm-mode
//! channels and one channel per consumer.
//!
//! A supervisor task owns reconnection: when the connection fails it opens a
//! new one with capped exponential backoff and jitter and declares the
//! topology again. Publishes wait for the new connection within their
//! confirm timeout; consumer streams end and their callers subscribe again.
//! lapin's own automatic recovery stays off (see `session::Shared::open_session`).

mod acks;
mod conflict;
mod consumer;
mod declare;
mod errors;
pub mod properties;
mod publish;
mod session;
mod supervisor;
mod tls;
mod url;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use self::session::Shared;
pub use self::url::{parse_url, redact_url};
use super::{Broker, BrokerError, Deliveries, Message};
use crate::manifest::TlsFiles;
use crate::topology::{BindingSpec, ExchangeSpec, QueueSpec};

/// Settings of an AMQP broker connection.
#[derive(Clone, Debug)]
pub struct AmqpOptions {
    /// How long a publish waits for the broker's publisher confirm, including
    /// the wait for a new connection after a connection loss.
    pub confirm_timeout: Duration,
    /// The number of confirm-mode channels that publishes are spread over
    /// (at least one).
    pub publish_channels: usize,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long a declaration, a queue depth query or the start of a
    /// consumer waits for the broker's reply.
    pub operation_timeout: Duration,
    /// The delay after the first failed connection attempt; it doubles with
    /// each further failure, up to `reconnect_max_delay`.
    pub reconnect_initial_delay: Duration,
    /// The upper bound of the delay between connection attempts.
    pub reconnect_max_delay: Duration,
    /// The connection name that RabbitMQ shows for this connection.
    pub connection_name: Option<String>,
    /// The manifest's `tls` files, which require an `amqps://` URL. An
    /// `amqps://` URL without them trusts the system's CA certificates only.
    pub tls: Option<TlsFiles>,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            confirm_timeout: Duration::from_secs(5),
            publish_channels: 4,
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
            reconnect_initial_delay: Duration::from_millis(500),
            reconnect_max_delay: Duration::from_secs(30),
            connection_name: None,
            tls: None,
        }
    }
}

/// A RabbitMQ (or other AMQP 0-9-1) broker.
///
/// Dropping it stops the supervisor task, and the connection closes once the
/// last consumer stream of it is dropped too.
pub struct AmqpBroker {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<AbortHandle>>,
}

impl AmqpBroker {
    /// Creates the broker without connecting; `connect_in_background` starts
    /// connecting. Until the first connection, operations fail with
    /// `BrokerError::Unreachable`.
    pub fn new(name: &str, url: &str, options: AmqpOptions) -> Result<Self, BrokerError> {
        let uri = url::parse_url(name, url)?;
        let redacted_url = redact_url(url);
        let target = tls::Target {
            broker: name,
            redacted_url: &redacted_url,
            files: options.tls.as_ref(),
        };
        tls::require_amqps(&target, &uri)?;
        let shared = Shared::new(name, uri, redacted_url, options);
        Ok(Self {
            shared: Arc::new(shared),
            supervisor: Mutex::new(None),
        })
    }

    /// Connects once and fails with `Unreachable` when that attempt fails.
    /// Once connected, the broker reconnects by itself after a connection loss.
    pub async fn connect(name: &str, url: &str, options: AmqpOptions) -> Result<Self, BrokerError> {
        let broker = Self::new(name, url, options)?;
        let session = broker.shared.open_session().await?;
        broker.shared.install(session.clone());
        info!(broker = %name, url = %broker.shared.redacted_url, "connected to broker");
        broker.start_supervisor(Some(session));
        Ok(broker)
    }

    /// Starts connecting in a background task that retries with capped
    /// exponential backoff and jitter, and keeps the broker connected after
    /// that. Does nothing when the task runs already.
    pub fn connect_in_background(&self) {
        self.start_supervisor(None);
    }

    /// Waits until the broker is connected.
    pub async fn connected(&self) {
        let mut installs = self.shared.subscribe_installs();
        while !self.shared.is_connected() {
            // An installed connection can fail before this loop checks it, so
            // check every 100 ms as well as on every install.
            let _ = tokio::time::timeout(Duration::from_millis(100), installs.changed()).await;
        }
    }

    /// Stops reconnecting and closes the connection, waiting at most the
    /// operation timeout for the broker to confirm the close.
    pub async fn close(&self) {
        if let Some(supervisor) = self.supervisor_handle().take() {
            supervisor.abort();
        }
        self.send_waiting_acks().await;
        if let Some(session) = self.shared.current_session() {
            self.shared.remove(&session);
            let close = session.connection.close(200, "OK".into());
            match tokio::time::timeout(self.shared.options.operation_timeout, close).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    info!(broker = %self.shared.name, %error, "connection was already closed");
                }
                Err(_) => {
                    warn!(broker = %self.shared.name, "broker did not confirm the close in time")
                }
            }
        }
        info!(broker = %self.shared.name, "closed broker connection");
    }

    /// Sends the consumers' waiting acknowledgements, waiting at most the
    /// operation timeout.
    async fn send_waiting_acks(&self) {
        let waiting_acks = self.shared.delayed_acks.send_now();
        if tokio::time::timeout(self.shared.options.operation_timeout, waiting_acks)
            .await
            .is_err()
        {
            warn!(broker = %self.shared.name, "waiting acknowledgements were not sent in time; \
                the broker redelivers those messages");
        }
    }

    fn start_supervisor(&self, initial: Option<Arc<session::Session>>) {
        let mut supervisor = self.supervisor_handle();
        if supervisor.is_some() {
            return;
        }
        let task = tokio::spawn(supervisor::run(self.shared.clone(), initial));
        *supervisor = Some(task.abort_handle());
    }

    fn supervisor_handle(&self) -> std::sync::MutexGuard<'_, Option<AbortHandle>> {
        self.supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for AmqpBroker {
    fn drop(&mut self) {
        if let Some(supervisor) = self.supervisor_handle().take() {
            supervisor.abort();
        }
    }
}

impl fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("name", &self.shared.name)
            .field("url", &self.shared.redacted_url)
            .field("connected", &self.shared.is_connected())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        let session = self.shared.session()?;
        declare::declare_exchange(&self.shared, &session, spec).await
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        let session = self.shared.session()?;
        declare::declare_queue(&self.shared, &session, spec).await
    }

    async fn bind_queue(&self, spec: &BindingSpec) -> Result<(), BrokerError> {
        let session = self.shared.session()?;
        declare::bind_queue(&self.shared, &session, spec).await
    }

    async fn publish(&self, exchange: &str, message: Message) -> Result<(), BrokerError> {
        publish::publish(&self.shared, exchange, message).await
    }

    async fn consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<Deliveries, BrokerError> {
        consumer::consume(&self.shared, queue, consumer_tag, prefetch).await
    }

    async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let session = self.shared.session()?;
        declare::queue_depth(&self.shared, &session, queue).await
    }

    async fn exchange_exists(&self, name: &str) -> Result<bool, BrokerError> {
        let session = self.shared.session()?;
        declare::exchange_exists(&self.shared, &session, name).await
    }

    async fn queue_exists(&self, name: &str) -> Result<bool, BrokerError> {
        let session = self.shared.session()?;
        declare::queue_exists(&self.shared, &session, name).await
    }

    fn is_connected(&self) -> bool {
        self.shared.is_connected()
    }

    async fn finish(&self) {
        self.send_waiting_acks().await;
    }
}
