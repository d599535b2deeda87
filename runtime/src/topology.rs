//! The desired state of a broker: exchanges, queues and bindings derived from
//! the manifest, and their provisioning.

use std::time::Duration;

/// The exchange types of AMQP 0-9-1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    /// Where the broker sends messages that no binding routes.
    pub alternate_exchange: Option<String>,
}

/// RabbitMQ's queue types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    Classic,
    Quorum,
    Stream,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
            QueueKind::Stream => "stream",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub kind: QueueKind,
    pub durable: bool,
    /// `x-dead-letter-exchange`: where rejected and expired messages go.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`; without it a dead letter keeps its key.
    pub dead_letter_routing_key: Option<String>,
    /// `x-message-ttl`.
    pub message_ttl: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingSpec {
    pub exchange: String,
    pub queue: String,
    /// A routing key, or for topic exchanges a pattern with `*` and `#`.
    pub routing_key: String,
}
