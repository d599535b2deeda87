//! Brokers move bytes: they declare topology, publish with confirmation and
//! deliver messages for acknowledgement. They know nothing of events, schemas
//! or handlers.

pub mod amqp;
pub mod embedded;
pub mod kafka;

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::topology::{BindingSpec, ExchangeSpec, QueueSpec, TopicSpec, TopicState};

/// Message headers, as AMQP 0-9-1 field tables carry them.
pub type Headers = BTreeMap<String, HeaderValue>;

/// The header value types switchyard writes and reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    String(String),
    Int(i64),
    Bool(bool),
}

impl HeaderValue {
    /// Returns the value as text, rendering integers and booleans.
    pub fn to_text(&self) -> String {
        match self {
            HeaderValue::String(s) => s.clone(),
            HeaderValue::Int(i) => i.to_string(),
            HeaderValue::Bool(b) => b.to_string(),
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            HeaderValue::Int(i) => Some(*i),
            HeaderValue::String(s) => s.parse().ok(),
            HeaderValue::Bool(_) => None,
        }
    }
}

impl From<&str> for HeaderValue {
    fn from(value: &str) -> Self {
        HeaderValue::String(value.to_owned())
    }
}

impl From<String> for HeaderValue {
    fn from(value: String) -> Self {
        HeaderValue::String(value)
    }
}

impl From<i64> for HeaderValue {
    fn from(value: i64) -> Self {
        HeaderValue::Int(value)
    }
}

/// A message as published and as delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// AMQP routing key; empty on Kafka.
    pub routing_key: String,
    /// Kafka record key, which picks the partition; unused on AMQP.
    pub key: Option<Bytes>,
    pub headers: Headers,
    pub content_type: Option<String>,
    pub message_id: Option<String>,
    /// Per-message time to live; an expired message is dead-lettered by its
    /// queue, which is how retry queues delay a redelivery.
    pub expiration: Option<Duration>,
    pub body: Bytes,
}

/// One message delivered to a consumer, to be acknowledged exactly once.
///
/// A delivery dropped without `ack` or `reject` stays unacknowledged until its
/// consumer closes, and is then redelivered.
pub struct Delivery {
    /// The exchange the message was published to; empty for the default exchange.
    pub exchange: String,
    pub message: Message,
    /// Whether the broker delivered this message before.
    pub redelivered: bool,
    pub acker: Box<dyn Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("exchange", &self.exchange)
            .field("message", &self.message)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.acker.ack().await
    }

    /// Rejects the message; with `requeue` false the queue dead-letters it
    /// (or drops it when the queue has no dead-letter exchange).
    pub async fn reject(self, requeue: bool) -> Result<(), BrokerError> {
        self.acker.reject(requeue).await
    }
}

/// Settles one delivery with the broker that sent it.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), BrokerError>;
}

/// The deliveries of one consumer. The stream ends when the broker cancels
/// the consumer (for example because its queue was deleted) or the
/// connection is lost; the caller then subscribes again.
pub type Deliveries = Pin<Box<dyn Stream<Item = Result<Delivery, BrokerError>> + Send>>;

/// One record read from a topic partition.
#[derive(Clone, Debug)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub message: Message,
}

/// Settings of one consumer group member.
#[derive(Clone, Debug)]
pub struct SubscribeOptions {
    /// Consumer group id.
    pub group: String,
    /// Client id of this member, shown by the broker's group tools.
    pub client_id: String,
    /// Maximum time between two reads before the group considers this member
    /// stuck and gives its partitions to another member.
    pub max_poll_interval: Duration,
}

/// A member of a consumer group reading one topic. Records arrive in
/// partition order, and the group's committed position only moves past a
/// record that was committed, so a record read but never committed is
/// read again after a restart or a rebalance.
#[async_trait]
pub trait TopicReader: Send {
    /// Waits for the next record of the partitions assigned to this member.
    async fn next(&mut self) -> Result<Record, BrokerError>;

    /// Marks `record` and every earlier record of its partition as done.
    fn commit(&mut self, record: &Record) -> Result<(), BrokerError>;

    /// Writes the marked positions to the broker and leaves the group.
    async fn close(self: Box<Self>);
}

/// A message broker: AMQP 0-9-1 exchanges and queues, Kafka topics, or both
/// (the embedded broker). Operations of the model a broker does not have
/// fail with `BrokerError::Unsupported`.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Declares an exchange. An existing exchange with other properties is a
    /// `BrokerError::Conflict` naming both values.
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError>;

    /// Declares a queue. An existing queue with other arguments is a
    /// `BrokerError::Conflict` naming both values.
    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError>;

    async fn bind_queue(&self, spec: &BindingSpec) -> Result<(), BrokerError>;

    /// Publishes one message and returns once the broker confirmed it.
    /// The empty exchange name is the default exchange, which routes to the
    /// queue named by the routing key.
    async fn publish(&self, exchange: &str, message: Message) -> Result<(), BrokerError>;

    /// Starts a consumer on `queue` with at most `prefetch` unacknowledged
    /// deliveries. A queue that this broker declared and that was deleted
    /// since is declared again, with its bindings, on AMQP.
    async fn consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<Deliveries, BrokerError>;

    /// Returns the number of ready messages in `queue`.
    async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError>;

    /// Reports whether an exchange exists, without changing anything.
    async fn exchange_exists(&self, name: &str) -> Result<bool, BrokerError>;

    /// Reports whether a queue exists, without changing anything.
    async fn queue_exists(&self, name: &str) -> Result<bool, BrokerError>;

    /// Creates a topic, which must not exist yet.
    async fn create_topic(&self, spec: &TopicSpec) -> Result<(), BrokerError> {
        Err(BrokerError::Unsupported(format!(
            "cannot create topic `{}`: this broker has no topics",
            spec.name
        )))
    }

    /// Raises an existing topic's partition count to `spec.partitions`.
    async fn add_partitions(&self, spec: &TopicSpec) -> Result<(), BrokerError> {
        Err(BrokerError::Unsupported(format!(
            "cannot add partitions to topic `{}`: this broker has no topics",
            spec.name
        )))
    }

    /// Returns the partitions of a topic and the current values of the
    /// configuration keys in `spec`, or `None` when the topic does not exist.
    async fn describe_topic(&self, spec: &TopicSpec) -> Result<Option<TopicState>, BrokerError> {
        Err(BrokerError::Unsupported(format!(
            "cannot read topic `{}`: this broker has no topics",
            spec.name
        )))
    }

    /// Appends one record to a topic and returns once the broker
    /// acknowledged it. `message.key` picks the partition.
    async fn produce(&self, topic: &str, _message: Message) -> Result<(), BrokerError> {
        Err(BrokerError::Unsupported(format!(
            "cannot produce to topic `{topic}`: this broker has no topics"
        )))
    }

    /// Joins a consumer group on `topic`.
    async fn subscribe(
        &self,
        topic: &str,
        _options: &SubscribeOptions,
    ) -> Result<Box<dyn TopicReader>, BrokerError> {
        Err(BrokerError::Unsupported(format!(
            "cannot consume topic `{topic}`: this broker has no topics"
        )))
    }

    /// Reports whether the broker is connected now.
    fn is_connected(&self) -> bool;

    /// Sends what the broker client holds back, such as acknowledgements
    /// waiting to share a frame, before the process stops. The default has
    /// nothing to send.
    async fn finish(&self) {}
}

/// A failed broker operation.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to broker `{broker}`: {reason}")]
    Unreachable { broker: String, reason: String },

    /// The broker URL cannot be parsed; `url` has its password redacted.
    #[error("invalid URL `{url}` for broker `{broker}`: {reason}")]
    InvalidUrl {
        broker: String,
        url: String,
        reason: String,
    },

    /// TLS could not be set up, or the handshake failed; `url` has its
    /// password redacted and `reason` names the fix.
    #[error("TLS connection to broker `{broker}` at `{url}` failed: {reason}")]
    Tls {
        broker: String,
        url: String,
        reason: String,
    },

    #[error("{0}")]
    Conflict(String),

    #[error("{kind} `{name}` not found")]
    NotFound { kind: &'static str, name: String },

    #[error("publish to exchange `{exchange}` was not confirmed: {reason}")]
    NotConfirmed { exchange: String, reason: String },

    /// The broker returned a mandatory message because no binding routed it and
    /// the exchange has no alternate exchange.
    #[error(
        "message published to exchange `{exchange}` with routing key `{routing_key}` was \
         returned as unroutable: bind a queue for this key or give the exchange an \
         alternate exchange"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },

    #[error("record for topic `{topic}` was not delivered: {reason}")]
    NotDelivered { topic: String, reason: String },

    #[error("publish to exchange `{exchange}` was not confirmed within {timeout:?}")]
    ConfirmTimeout { exchange: String, timeout: Duration },

    #[error("broker connection closed: {0}")]
    Closed(String),

    #[error("broker protocol error: {0}")]
    Protocol(String),

    /// An operation of the other broker model, such as a queue on Kafka.
    #[error("{0}")]
    Unsupported(String),
}

impl BrokerError {
    /// Reports whether retrying the operation later can succeed without
    /// anyone changing the topology or the manifest.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BrokerError::Unreachable { .. }
                | BrokerError::NotConfirmed { .. }
                | BrokerError::NotDelivered { .. }
                | BrokerError::ConfirmTimeout { .. }
                | BrokerError::Closed(_)
        )
    }
}

/// A broker whose connection is still being established. Operations fail
/// with `BrokerError::Unreachable` until `set` supplies the connected broker,
/// so producers return 503 instead of waiting while the broker is down.
pub struct Deferred {
    name: String,
    inner: std::sync::OnceLock<std::sync::Arc<dyn Broker>>,
}

impl Deferred {
    pub fn new(name: &str) -> Self {
        Deferred {
            name: name.to_owned(),
            inner: std::sync::OnceLock::new(),
        }
    }

    /// Supplies the connected broker; later calls are ignored.
    pub fn set(&self, broker: std::sync::Arc<dyn Broker>) {
        let _ = self.inner.set(broker);
    }

    fn get(&self) -> Result<&std::sync::Arc<dyn Broker>, BrokerError> {
        self.inner.get().ok_or_else(|| BrokerError::Unreachable {
            broker: self.name.clone(),
            reason: "not connected yet".to_owned(),
        })
    }
}

#[async_trait]
impl Broker for Deferred {
    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        self.get()?.declare_exchange(spec).await
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.get()?.declare_queue(spec).await
    }

    async fn bind_queue(&self, spec: &BindingSpec) -> Result<(), BrokerError> {
        self.get()?.bind_queue(spec).await
    }

    async fn publish(&self, exchange: &str, message: Message) -> Result<(), BrokerError> {
        self.get()?.publish(exchange, message).await
    }

    async fn consume(
        &self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<Deliveries, BrokerError> {
        self.get()?.consume(queue, consumer_tag, prefetch).await
    }

    async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        self.get()?.queue_depth(queue).await
    }

    async fn exchange_exists(&self, name: &str) -> Result<bool, BrokerError> {
        self.get()?.exchange_exists(name).await
    }

    async fn queue_exists(&self, name: &str) -> Result<bool, BrokerError> {
        self.get()?.queue_exists(name).await
    }

    async fn create_topic(&self, spec: &TopicSpec) -> Result<(), BrokerError> {
        self.get()?.create_topic(spec).await
    }

    async fn add_partitions(&self, spec: &TopicSpec) -> Result<(), BrokerError> {
        self.get()?.add_partitions(spec).await
    }

    async fn describe_topic(&self, spec: &TopicSpec) -> Result<Option<TopicState>, BrokerError> {
        self.get()?.describe_topic(spec).await
    }

    async fn produce(&self, topic: &str, message: Message) -> Result<(), BrokerError> {
        self.get()?.produce(topic, message).await
    }

    async fn subscribe(
        &self,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<Box<dyn TopicReader>, BrokerError> {
        self.get()?.subscribe(topic, options).await
    }

    fn is_connected(&self) -> bool {
        self.inner.get().is_some_and(|broker| broker.is_connected())
    }

    async fn finish(&self) {
        if let Some(broker) = self.inner.get() {
            broker.finish().await;
        }
    }
}
