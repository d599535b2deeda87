//! Consumers: one channel each with its own prefetch, lapin deliveries mapped
//! to `Delivery`, and acknowledgements coalesced by the channel's `AckBatch`.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::sync::watch;
use tracing::{info, warn};

use super::acks::AckBatch;
use super::properties::{self, short_string};
use super::session::Shared;
use super::{declare, errors};
use crate::broker::{Acker, BrokerError, Deliveries, Delivery};

/// Starts a consumer on a channel of its own. `prefetch` 0 means no limit, as
/// in AMQP's `basic.qos`.
///
/// A queue that this broker declared and that was deleted since, by an
/// operator or another application, is declared again with its bindings,
/// with a warning, before the consumer starts. RabbitMQ cancels the
/// consumers of a deleted queue, and their callers then subscribe again
/// through this function.
pub(super) async fn consume(
    shared: &Shared,
    queue: &str,
    consumer_tag: &str,
    prefetch: u16,
) -> Result<Deliveries, BrokerError> {
    let mut started = start(shared, queue, consumer_tag, prefetch).await;
    if let Err(BrokerError::NotFound { kind: "queue", .. }) = &started {
        let session = shared.session()?;
        if let Some(bindings) = declare::redeclare_queue(shared, &session, queue).await? {
            warn!(broker = %shared.name, queue, bindings,
                "queue was deleted on the broker; declared it again with its bindings");
            started = start(shared, queue, consumer_tag, prefetch).await;
        }
    }
    let (channel, consumer) = started?;

    info!(broker = %shared.name, queue, consumer_tag = %consumer.tag(), prefetch, "started consumer");
    let state = ConsumerState {
        consumer,
        broker: shared.name.clone(),
        queue: queue.to_owned(),
        installs: shared.subscribe_installs(),
        ended: false,
        acks: AckBatch::new(channel, prefetch, shared.delayed_acks.clone()),
    };
    Ok(Box::pin(futures::stream::unfold(state, next_delivery)))
}

/// Opens a channel, sets its prefetch and subscribes to `queue`.
async fn start(
    shared: &Shared,
    queue: &str,
    consumer_tag: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer), BrokerError> {
    let queue_name = short_string("queue name", queue)?;
    let tag = short_string("consumer tag", consumer_tag)?;
    let start = async {
        let channel = shared.session()?.open_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|error| errors::broker_error(&error))?;
        let options = BasicConsumeOptions::default();
        let consumer = channel
            .basic_consume(queue_name, tag, options, FieldTable::default())
            .await
            .map_err(|error| consume_error(&error, queue))?;
        Ok((channel, consumer))
    };
    shared.within_operation_timeout(start).await
}

fn consume_error(error: &lapin::Error, queue: &str) -> BrokerError {
    if errors::is_soft_error(error, AMQPSoftError::NOTFOUND) {
        return BrokerError::NotFound {
            kind: "queue",
            name: queue.to_owned(),
        };
    }
    errors::broker_error(error)
}

struct ConsumerState {
    consumer: Consumer,
    broker: String,
    queue: String,
    /// Changes when the supervisor installs a new connection, which leaves
    /// this consumer's connection behind.
    installs: watch::Receiver<u64>,
    ended: bool,
    /// Holds the channel, which closes once the stream is dropped and the
    /// last waiting ack was sent.
    acks: Arc<AckBatch>,
}

/// Yields the next delivery. The stream ends when the broker cancels the
/// consumer or its channel closes. It ends after an error when the
/// connection fails or the supervisor replaced it.
async fn next_delivery(
    mut state: ConsumerState,
) -> Option<(Result<Delivery, BrokerError>, ConsumerState)> {
    if state.ended {
        return None;
    }
    // The select is biased, so a replaced connection ends the stream before
    // another delivery is taken from it.
    let next = tokio::select! {
        biased;
        _ = state.installs.changed() => return Some(state.end(connection_replaced())),
        next = state.consumer.next() => next,
    };
    match next {
        Some(Ok(delivery)) => {
            let delivery = delivery_from_lapin(delivery, &state.acks);
            Some((Ok(delivery), state))
        }
        Some(Err(error)) => Some(state.end(errors::broker_error(&error))),
        None => {
            info!(broker = %state.broker, queue = %state.queue, "consumer ended: cancelled by the broker or its channel closed");
            None
        }
    }
}

fn connection_replaced() -> BrokerError {
    BrokerError::Closed(
        "the broker connection of this consumer was replaced or closed; subscribe again".to_owned(),
    )
}

impl ConsumerState {
    fn end(mut self, error: BrokerError) -> (Result<Delivery, BrokerError>, ConsumerState) {
        warn!(broker = %self.broker, queue = %self.queue, %error, "consumer stopped");
        self.ended = true;
        (Err(error), self)
    }
}

fn delivery_from_lapin(delivery: lapin::message::Delivery, batch: &Arc<AckBatch>) -> Delivery {
    let lapin::message::Delivery {
        delivery_tag,
        exchange,
        routing_key,
        redelivered,
        properties,
        data,
        ..
    } = delivery;
    batch.delivered(delivery_tag);
    Delivery {
        exchange: exchange.to_string(),
        message: properties::message(&routing_key, &properties, data),
        redelivered,
        acker: Box::new(AmqpAcker {
            tag: delivery_tag,
            batch: batch.clone(),
            settled: false,
        }),
    }
}

/// Settles a delivery through its channel's `AckBatch`.
struct AmqpAcker {
    tag: u64,
    batch: Arc<AckBatch>,
    /// Still false in `drop` when the delivery was never settled.
    settled: bool,
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        self.settled = true;
        self.batch.ack(self.tag).await
    }

    async fn reject(mut self: Box<Self>, requeue: bool) -> Result<(), BrokerError> {
        self.settled = true;
        self.batch.reject(self.tag, requeue).await
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        if !self.settled {
            self.batch.abandon(self.tag);
        }
    }
}
