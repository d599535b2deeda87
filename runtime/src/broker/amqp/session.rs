//! The connection state of one broker: the current lapin connection with its
//! pool of publish channels, and the topology declared so far.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use lapin::options::ConfirmSelectOptions;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Channel, Connection, ConnectionProperties, DefaultConnectionBuilder};
use tokio::sync::watch;

use super::AmqpOptions;
use super::acks::DelayedAcks;
use super::{errors, tls};
use crate::broker::BrokerError;
use crate::topology::{BindingSpec, ExchangeSpec, QueueSpec};

/// State that every operation of one `AmqpBroker` shares with its supervisor
/// task.
pub(super) struct Shared {
    pub name: String,
    /// The URL with its password, used only to connect.
    uri: AMQPUri,
    pub redacted_url: String,
    pub vhost: String,
    pub options: AmqpOptions,
    session: RwLock<Option<Arc<Session>>>,
    /// Incremented whenever a session is installed, to wake `connected()` waiters.
    session_installed: watch::Sender<u64>,
    /// Everything declared successfully, declared again on every new connection.
    declared: Mutex<DeclaredTopology>,
    /// Consumer acks waiting to share a frame, sent before the broker closes.
    pub delayed_acks: DelayedAcks,
}

impl Shared {
    pub fn new(name: &str, uri: AMQPUri, redacted_url: String, options: AmqpOptions) -> Self {
        Self {
            name: name.to_owned(),
            vhost: uri.vhost.clone(),
            uri,
            redacted_url,
            options,
            session: RwLock::new(None),
            session_installed: watch::Sender::new(0),
            declared: Mutex::new(DeclaredTopology::default()),
            delayed_acks: DelayedAcks::default(),
        }
    }

    /// Returns the current session, or `Unreachable` while there is none.
    pub fn session(&self) -> Result<Arc<Session>, BrokerError> {
        let session = self.session.read().unwrap_or_else(PoisonError::into_inner);
        session.clone().ok_or_else(|| BrokerError::Unreachable {
            broker: self.name.clone(),
            reason: "not connected; switchyard retries in the background".to_owned(),
        })
    }

    pub fn current_session(&self) -> Option<Arc<Session>> {
        self.session
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn install(&self, session: Arc<Session>) {
        *self.session.write().unwrap_or_else(PoisonError::into_inner) = Some(session);
        self.session_installed.send_modify(|count| *count += 1);
    }

    /// Removes `session` if it is still the current one.
    pub fn remove(&self, session: &Arc<Session>) {
        let mut current = self.session.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, session)) {
            *current = None;
        }
    }

    pub fn declared(&self) -> MutexGuard<'_, DeclaredTopology> {
        self.declared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bounds `operation` by the operation timeout, so that a connection that
    /// stopped responding fails the operation instead of blocking it.
    pub async fn within_operation_timeout<T>(
        &self,
        operation: impl Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        let timeout = self.options.operation_timeout;
        match tokio::time::timeout(timeout, operation).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unreachable {
                broker: self.name.clone(),
                reason: format!("timed out after {timeout:?} waiting for the broker's reply"),
            }),
        }
    }

    pub fn subscribe_installs(&self) -> watch::Receiver<u64> {
        self.session_installed.subscribe()
    }

    pub fn is_connected(&self) -> bool {
        self.current_session()
            .is_some_and(|session| session.connection.status().connected())
    }

    /// Opens a connection. lapin's automatic recovery stays off: with lapin
    /// 4.12.3 it deadlocked when a channel was being opened at the moment the
    /// connection was lost, which blocked a runtime thread for good. The
    /// supervisor opens a new connection instead.
    pub async fn open_session(&self) -> Result<Arc<Session>, BrokerError> {
        let mut properties = ConnectionProperties::default();
        if let Some(connection_name) = &self.options.connection_name {
            properties = properties.with_connection_name(connection_name.as_str().into());
        }

        let target = self.tls_target();
        let builder = DefaultConnectionBuilder::new()
            .map_err(|error| self.unreachable(error.to_string()))?
            .with_uri(self.uri.clone())
            .with_properties(properties)
            .with_tls_config(tls::config(&target)?);
        let connection =
            match tokio::time::timeout(self.options.connect_timeout, builder.connect()).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => return Err(self.connect_error(&target, &error)),
                Err(_) => {
                    let timeout = self.options.connect_timeout;
                    return Err(self.unreachable(format!("timed out after {timeout:?}")));
                }
            };
        Ok(Arc::new(Session::new(
            connection,
            self.options.publish_channels,
        )))
    }

    /// Returns the context that TLS errors name.
    fn tls_target(&self) -> tls::Target<'_> {
        tls::Target {
            broker: &self.name,
            redacted_url: &self.redacted_url,
            files: self.options.tls.as_ref(),
        }
    }

    /// Converts a failed connection attempt into an error that names the
    /// cause and the fix where TLS explains it.
    fn connect_error(&self, target: &tls::Target<'_>, error: &lapin::Error) -> BrokerError {
        if let Some(hint) = errors::login_hint(error, &self.name) {
            let error = error.to_string();
            return self.unreachable(format!("{}; {hint}", error.trim_end_matches('.')));
        }
        if self.uri.scheme == AMQPScheme::AMQPS {
            if let Some(explained) = tls::explain_failure(target, error) {
                return explained;
            }
            return self.unreachable(error.to_string());
        }
        match tls::plain_text_hint(error) {
            Some(hint) => self.unreachable(format!("{error}; {hint}")),
            None => self.unreachable(error.to_string()),
        }
    }

    fn unreachable(&self, reason: String) -> BrokerError {
        BrokerError::Unreachable {
            broker: self.name.clone(),
            reason: format!("{reason} (URL `{}`)", self.redacted_url),
        }
    }
}

/// One lapin connection and the confirm-mode channels that publishes use.
pub(super) struct Session {
    pub connection: Connection,
    publish_slots: Vec<PublishSlot>,
    next_slot: AtomicUsize,
}

#[derive(Default)]
struct PublishSlot {
    channel: Mutex<Option<Arc<PublishChannel>>>,
    /// Held while a replacement channel is opened, so that only one is.
    opening: tokio::sync::Mutex<()>,
}

/// A channel in confirm mode.
pub(super) struct PublishChannel {
    pub channel: Channel,
    /// Held from `basic.publish` until its frames are queued. lapin assigns the
    /// delivery tag for the confirm and queues the frames under two separate
    /// locks, so two tasks publishing at once could be sent in the opposite
    /// order of their tags and receive each other's confirm.
    pub publishing: tokio::sync::Mutex<()>,
}

impl Session {
    fn new(connection: Connection, publish_channels: usize) -> Self {
        let slots = (0..publish_channels.max(1))
            .map(|_| PublishSlot::default())
            .collect();
        Self {
            connection,
            publish_slots: slots,
            next_slot: AtomicUsize::new(0),
        }
    }

    /// Returns a publish channel, taking the slots in turn. A slot whose
    /// channel the broker closed after an error gets a new channel.
    pub async fn publish_channel(&self) -> Result<Arc<PublishChannel>, lapin::Error> {
        let index = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.publish_slots.len();
        let slot = &self.publish_slots[index];
        if let Some(channel) = slot.usable_channel() {
            return Ok(channel);
        }

        let _opening = slot.opening.lock().await;
        if let Some(channel) = slot.usable_channel() {
            return Ok(channel);
        }
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let channel = Arc::new(PublishChannel {
            channel,
            publishing: tokio::sync::Mutex::new(()),
        });
        *slot.channel.lock().unwrap_or_else(PoisonError::into_inner) = Some(channel.clone());
        Ok(channel)
    }

    /// Opens a channel for one declaration or query. RabbitMQ closes the
    /// channel on a failed declare, so each gets a channel of its own.
    pub async fn open_channel(&self) -> Result<Channel, BrokerError> {
        self.connection
            .create_channel()
            .await
            .map_err(|error| errors::broker_error(&error))
    }
}

impl PublishSlot {
    fn usable_channel(&self) -> Option<Arc<PublishChannel>> {
        let channel = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
        channel
            .as_ref()
            .filter(|channel| channel.channel.status().connected())
            .cloned()
    }
}

/// The exchanges, queues and bindings declared successfully, declared again
/// on every new connection because a broker restart loses those that are
/// not durable.
#[derive(Default)]
pub(super) struct DeclaredTopology {
    pub exchanges: BTreeMap<String, ExchangeSpec>,
    pub queues: BTreeMap<String, QueueSpec>,
    pub bindings: Vec<BindingSpec>,
}

impl DeclaredTopology {
    pub fn add_binding(&mut self, binding: &BindingSpec) {
        if !self.bindings.contains(binding) {
            self.bindings.push(binding.clone());
        }
    }
}
