//! Queue consumers: `concurrency` lanes that each handle one delivery at a
//! time, retries through the queue's retry queue, dead letters published to
//! the queue's dead-letter exchange.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::Fuse;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    ATTEMPT_HEADER, CONSUMER_HEADER, Consumer, Disposition, QueueInput, REASON_HEADER,
    ROUTING_KEY_HEADER, Services, backoff, decide, wait_for_handler,
};
use crate::broker::{Acker, BrokerError, Delivery, HeaderValue, Message};
use crate::handler::LoadedHandler;
use crate::telemetry;

/// Runs a queue consumer until `shutdown`, then finishes the events in
/// flight.
///
/// Waits while the handler is missing, re-subscribes when the broker ends
/// the consumer, and backs off while the queue cannot be consumed.
pub(super) async fn run(
    consumer: Consumer,
    queue: QueueInput,
    mut handler: watch::Receiver<Option<LoadedHandler>>,
    services: Services,
    shutdown: CancellationToken,
) {
    let check = format!("consumer:{}", consumer.name);
    let unacknowledged = Arc::new(Unacknowledged::default());
    let mut failures = 0u32;
    loop {
        if !wait_for_handler(&consumer, &mut handler, &services, &shutdown).await {
            return;
        }

        let tag = format!(
            "switchyard-{}-{}",
            consumer.name,
            uuid::Uuid::new_v4().simple()
        );
        let deliveries = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = consumer.broker.consume(&queue.queue, &tag, consumer.prefetch) => result,
        };
        let deliveries = match deliveries {
            Ok(deliveries) => deliveries,
            Err(err) => {
                failures += 1;
                let delay = backoff(failures);
                tracing::warn!(consumer = %consumer.name, queue = %queue.queue, error = %err,
                    retry_in = ?delay, "cannot start consumer");
                services
                    .readiness
                    .set(&check, false, format!("cannot consume: {err}"));
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        failures = 0;
        services.readiness.set(&check, true, "running");
        tracing::info!(consumer = %consumer.name, queue = %queue.queue, "consumer started");

        let ended = consume(
            &consumer,
            &queue,
            deliveries,
            &handler,
            &services,
            &unacknowledged,
            &shutdown,
        )
        .await;
        if ended == StreamEnd::Shutdown {
            services.readiness.set(&check, false, "stopped");
            return;
        }
        tracing::warn!(consumer = %consumer.name, queue = %queue.queue,
            "broker ended the consumer; subscribing again");
        services.readiness.set(
            &check,
            false,
            "broker ended the consumer; subscribing again",
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The deliveries a consumer has taken from the broker and not settled yet,
/// published as the share of the prefetch window they fill. With a prefetch
/// of 0 (no limit) there is no window and no gauge.
struct UnsettledDeliveries {
    count: AtomicUsize,
    prefetch: u16,
    gauge: Option<metrics::Gauge>,
}

impl UnsettledDeliveries {
    fn new(consumer: &Consumer) -> Self {
        let gauge = (consumer.prefetch > 0).then(|| {
            metrics::gauge!(telemetry::PREFETCH_UTILIZATION, "consumer" => consumer.name.to_string())
        });
        if let Some(gauge) = &gauge {
            gauge.set(0.0);
        }
        UnsettledDeliveries {
            count: AtomicUsize::new(0),
            prefetch: consumer.prefetch,
            gauge,
        }
    }

    fn add(&self, n: usize) {
        let count = self.count.fetch_add(n, Ordering::Relaxed) + n;
        self.publish(count);
    }

    fn sub(&self, n: usize) {
        let count = self.count.fetch_sub(n, Ordering::Relaxed) - n;
        self.publish(count);
    }

    fn publish(&self, count: usize) {
        if let Some(gauge) = &self.gauge {
            gauge.set(count as f64 / f64::from(self.prefetch));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    Shutdown,
    Ended,
}

/// How many entries [`Unacknowledged`] keeps; the oldest goes first.
const UNACKNOWLEDGED_CAPACITY: usize = 10_000;

/// Handler calls whose delivery the broker did not take the
/// acknowledgement of, by message.
///
/// When the broker closes a channel before a call ends (RabbitMQ's
/// `consumer_timeout`, a lost connection), the acknowledgement fails and the
/// message comes back without the attempt count of a retry. Counting those
/// calls here keeps such a message from being handled forever: once they
/// reach `max_attempts`, the message is dead-lettered without another call.
/// The count lives as long as the consumer, so it survives the new channel.
#[derive(Default)]
struct Unacknowledged {
    calls: Mutex<Calls>,
    /// Number of messages in `calls`, read without the lock. While it is
    /// zero, as it is unless the broker closed a channel, no message key is
    /// built.
    tracked: AtomicUsize,
}

#[derive(Default)]
struct Calls {
    by_message: HashMap<String, u32>,
    oldest_first: VecDeque<String>,
}

impl Unacknowledged {
    fn get(&self, message: &Message) -> u32 {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let key = message_key(message);
        let calls = self.calls.lock().expect("lock is never poisoned");
        calls.by_message.get(&key).copied().unwrap_or(0)
    }

    /// Counts one more call whose acknowledgement failed.
    fn add(&self, message: &Message) {
        let key = message_key(message);
        let mut calls = self.calls.lock().expect("lock is never poisoned");
        if let Some(count) = calls.by_message.get_mut(&key) {
            *count += 1;
            return;
        }
        if calls.oldest_first.len() >= UNACKNOWLEDGED_CAPACITY
            && let Some(oldest) = calls.oldest_first.pop_front()
        {
            calls.by_message.remove(&oldest);
        }
        calls.by_message.insert(key.clone(), 1);
        calls.oldest_first.push_back(key);
        self.tracked
            .store(calls.by_message.len(), Ordering::Relaxed);
    }

    fn remove(&self, message: &Message) {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let key = message_key(message);
        let mut calls = self.calls.lock().expect("lock is never poisoned");
        if calls.by_message.remove(&key).is_some() {
            calls.oldest_first.retain(|entry| *entry != key);
            self.tracked
                .store(calls.by_message.len(), Ordering::Relaxed);
        }
    }
}

/// Builds the key of a message in [`Unacknowledged`] from its message id,
/// or from a hash of its routing key and body when it has no id.
fn message_key(message: &Message) -> String {
    match &message.message_id {
        Some(id) => format!("id:{id}"),
        None => {
            let mut hasher = DefaultHasher::new();
            message.routing_key.hash(&mut hasher);
            message.body.hash(&mut hasher);
            format!("hash:{:016x}", hasher.finish())
        }
    }
}

/// The state that the lanes of one subscription share.
struct Lanes {
    consumer: Consumer,
    queue: QueueInput,
    services: Services,
    handler: watch::Receiver<Option<LoadedHandler>>,
    unacknowledged: Arc<Unacknowledged>,
    unsettled: UnsettledDeliveries,
    /// The subscription's deliveries. A lane holds the lock only while it
    /// waits for the next one.
    deliveries: tokio::sync::Mutex<Fuse<crate::broker::Deliveries>>,
    /// Cancelled when the stream ends or the handler goes away, so that the
    /// other lanes stop taking deliveries.
    ended: CancellationToken,
    shutdown: CancellationToken,
}

/// Handles deliveries in `concurrency` lanes until the stream ends or
/// shutdown, and always waits for the calls already started.
///
/// Each lane is one task that takes a delivery and handles it to its
/// settlement before it takes the next, so a busy consumer spawns no task
/// per message and its lanes rarely wait for one another.
async fn consume(
    consumer: &Consumer,
    queue: &QueueInput,
    deliveries: crate::broker::Deliveries,
    handler: &watch::Receiver<Option<LoadedHandler>>,
    services: &Services,
    unacknowledged: &Arc<Unacknowledged>,
    shutdown: &CancellationToken,
) -> StreamEnd {
    let lanes = Arc::new(Lanes {
        consumer: consumer.clone(),
        queue: queue.clone(),
        services: services.clone(),
        handler: handler.clone(),
        unacknowledged: unacknowledged.clone(),
        unsettled: UnsettledDeliveries::new(consumer),
        deliveries: tokio::sync::Mutex::new(deliveries.fuse()),
        ended: CancellationToken::new(),
        shutdown: shutdown.clone(),
    });
    let mut running = JoinSet::new();
    for _ in 0..consumer.concurrency.max(1) {
        running.spawn(lane(lanes.clone()));
    }
    let mut end = StreamEnd::Shutdown;
    while let Some(result) = running.join_next().await {
        match result {
            Ok(StreamEnd::Shutdown) => {}
            Ok(StreamEnd::Ended) => end = StreamEnd::Ended,
            Err(err) => {
                // The lane that panicked left its delivery unacknowledged.
                // Subscribing again is better than going on with a lane
                // fewer.
                tracing::error!(consumer = %consumer.name, error = %err, "consumer lane failed");
                lanes.ended.cancel();
                end = StreamEnd::Ended;
            }
        }
    }
    end
}

/// Runs one lane of a consumer, which takes a delivery, handles it, and
/// repeats until the stream ends or shutdown.
async fn lane(lanes: Arc<Lanes>) -> StreamEnd {
    let Lanes {
        consumer,
        queue,
        ended,
        ..
    } = &*lanes;
    loop {
        let next = {
            let mut deliveries = match unless_stopped(&lanes, lanes.deliveries.lock()).await {
                Ok(deliveries) => deliveries,
                Err(end) => return end,
            };
            match unless_stopped(&lanes, deliveries.next()).await {
                Ok(next) => next,
                Err(end) => return end,
            }
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => {
                tracing::warn!(consumer = %consumer.name, error = %err, "delivery failed");
                ended.cancel();
                return StreamEnd::Ended;
            }
            None => {
                ended.cancel();
                return StreamEnd::Ended;
            }
        };
        let Some(loaded) = lanes.handler.borrow().clone() else {
            // The handler went away: put the message back and wait for it.
            let _ = delivery.reject(true).await;
            ended.cancel();
            return StreamEnd::Ended;
        };
        let span = tracing::info_span!(
            "event",
            consumer = %consumer.name,
            queue = %queue.queue,
            event_id = tracing::field::Empty,
            event_type = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        lanes.unsettled.add(1);
        consumer.metrics.in_flight.increment(1.0);
        process(
            consumer,
            queue,
            &lanes.services,
            &loaded,
            &lanes.unacknowledged,
            delivery,
        )
        .instrument(span)
        .await;
        consumer.metrics.in_flight.decrement(1.0);
        lanes.unsettled.sub(1);
    }
}

/// Waits for `future` unless shutdown or the end of the stream comes first.
/// The select is biased, so after shutdown no lane takes another delivery.
async fn unless_stopped<F: Future>(lanes: &Lanes, future: F) -> Result<F::Output, StreamEnd> {
    tokio::select! {
        biased;
        _ = lanes.shutdown.cancelled() => Err(StreamEnd::Shutdown),
        _ = lanes.ended.cancelled() => Err(StreamEnd::Ended),
        output = future => Ok(output),
    }
}

/// Handles one delivery from decode to acknowledgement.
async fn process(
    consumer: &Consumer,
    queue: &QueueInput,
    services: &Services,
    handler: &LoadedHandler,
    unacknowledged: &Unacknowledged,
    delivery: Delivery,
) {
    let Delivery {
        mut message, acker, ..
    } = delivery;
    let counted = message
        .headers
        .get(ATTEMPT_HEADER)
        .and_then(HeaderValue::as_int)
        .unwrap_or(0);
    let counted = u32::try_from(counted.max(0)).unwrap_or(u32::MAX);
    if let Some(key) = message.headers.get(ROUTING_KEY_HEADER) {
        message.routing_key = key.to_text();
    }
    let unfinished = unacknowledged.get(&message);
    if unfinished >= consumer.retry.max_attempts {
        let reason = format!(
            "handled {unfinished} times without the broker taking the acknowledgement; \
             the broker closed the channel first, as RabbitMQ does after `consumer_timeout`. \
             Set the consumer's `limits.timeout` below the broker's `consumer_timeout`"
        );
        let disposition = Disposition::DeadLetter {
            reason,
            label: "unacknowledged",
            attempt: unfinished,
        };
        if settle(consumer, queue, &message, acker, disposition).await {
            unacknowledged.remove(&message);
        }
        return;
    }
    let previous = counted.max(unfinished);

    let disposition = match decide(consumer, services, handler, &message, previous).await {
        Ok(disposition) => disposition,
        Err(err) => {
            // The handler succeeded but its events could not be published:
            // leave the input for another attempt rather than lose the output.
            tracing::warn!(error = %err,
                "publishing emitted events failed; the event will be retried");
            Disposition::Retry {
                attempt: previous + 1,
            }
        }
    };
    let disposition = match disposition {
        Disposition::Retry { attempt } if attempt >= consumer.retry.max_attempts => {
            Disposition::DeadLetter {
                reason: format!("failed {attempt} attempts; last failure was a retry"),
                label: "max_attempts",
                attempt,
            }
        }
        other => other,
    };
    if settle(consumer, queue, &message, acker, disposition).await {
        unacknowledged.remove(&message);
    } else {
        unacknowledged.add(&message);
    }
}

/// Acknowledges, schedules a retry or dead-letters a delivery. A message is
/// acknowledged only after its copy in the retry queue or dead-letter
/// exchange was confirmed, so it is never lost between the two.
///
/// Returns whether the broker took the acknowledgement.
async fn settle(
    consumer: &Consumer,
    queue: &QueueInput,
    message: &Message,
    acker: Box<dyn Acker>,
    disposition: Disposition,
) -> bool {
    let result = match disposition {
        Disposition::Ack => {
            consumer.metrics.handled_ok.increment(1);
            acker.ack().await
        }
        Disposition::Retry { attempt } => {
            let mut copy = message.clone();
            copy.headers
                .insert(ATTEMPT_HEADER.into(), HeaderValue::Int(attempt.into()));
            copy.headers
                .insert(ROUTING_KEY_HEADER.into(), copy.routing_key.clone().into());
            copy.routing_key = queue.retry_queue.clone();
            copy.expiration = Some(consumer.retry.delay(attempt));
            match consumer.broker.publish("", copy).await {
                Ok(()) => {
                    metrics::counter!(telemetry::EVENTS_HANDLED, "consumer" => consumer.name.to_string(), "outcome" => "retry")
                        .increment(1);
                    acker.ack().await
                }
                Err(err) => {
                    tracing::warn!(error = %err,
                        "cannot schedule retry; returning the message to its queue");
                    tokio::time::sleep(consumer.retry.backoff).await;
                    acker.reject(true).await
                }
            }
        }
        Disposition::DeadLetter {
            reason,
            label,
            attempt,
        } => dead_letter(consumer, queue, message, acker, reason, label, attempt).await,
    };
    match result {
        Ok(()) => true,
        Err(err) => {
            // The broker redelivers an unacknowledged message, so at worst
            // the event is handled again.
            tracing::warn!(error = %err, "cannot acknowledge delivery");
            false
        }
    }
}

async fn dead_letter(
    consumer: &Consumer,
    queue: &QueueInput,
    message: &Message,
    acker: Box<dyn Acker>,
    reason: String,
    label: &'static str,
    attempt: u32,
) -> Result<(), BrokerError> {
    tracing::warn!(%reason, attempt, "dead-lettering message");
    let mut copy: Message = message.clone();
    copy.headers.insert(REASON_HEADER.into(), reason.into());
    copy.headers
        .insert(CONSUMER_HEADER.into(), consumer.name.to_string().into());
    copy.headers
        .insert(ATTEMPT_HEADER.into(), HeaderValue::Int(attempt.into()));
    copy.headers.remove(ROUTING_KEY_HEADER);
    copy.expiration = None;
    if let Some(key) = &queue.dead_letter_routing_key {
        copy.routing_key = key.clone();
    }
    let name = consumer.name.to_string();
    match consumer
        .broker
        .publish(&queue.dead_letter_exchange, copy)
        .await
    {
        Ok(()) => {
            metrics::counter!(telemetry::EVENTS_HANDLED, "consumer" => name.clone(), "outcome" => "dead_lettered")
                .increment(1);
            metrics::counter!(telemetry::EVENTS_DEAD_LETTERED, "consumer" => name, "reason" => label)
                .increment(1);
            acker.ack().await
        }
        Err(err) => {
            // The queue's own dead-letter exchange still keeps the message,
            // without switchyard's reason headers.
            tracing::warn!(error = %err,
                "cannot publish dead letter; rejecting to the queue's dead-letter exchange");
            acker.reject(false).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: &str) -> Message {
        Message {
            message_id: Some(id.into()),
            ..Message::default()
        }
    }

    #[test]
    fn unacknowledged_counts_until_removed() {
        let calls = Unacknowledged::default();
        let (a, b) = (with_id("a"), with_id("b"));
        assert_eq!(calls.get(&a), 0);
        calls.add(&a);
        calls.add(&a);
        calls.add(&b);
        assert_eq!((calls.get(&a), calls.get(&b)), (2, 1));
        calls.remove(&a);
        assert_eq!((calls.get(&a), calls.get(&b)), (0, 1));
        calls.remove(&b);
        assert_eq!(calls.tracked.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn unacknowledged_forgets_the_oldest_when_full() {
        let calls = Unacknowledged::default();
        for n in 0..=UNACKNOWLEDGED_CAPACITY {
            calls.add(&with_id(&n.to_string()));
        }
        assert_eq!(calls.get(&with_id("0")), 0, "the oldest entry is forgotten");
        assert_eq!(calls.get(&with_id("1")), 1);
        assert_eq!(calls.get(&with_id(&UNACKNOWLEDGED_CAPACITY.to_string())), 1);
        assert_eq!(
            calls.tracked.load(Ordering::Relaxed),
            UNACKNOWLEDGED_CAPACITY
        );
    }

    #[test]
    fn message_key_prefers_the_message_id() {
        let mut message = Message {
            routing_key: "order.placed".into(),
            body: bytes::Bytes::from_static(b"{}"),
            ..Message::default()
        };
        let by_content = message_key(&message);
        assert!(by_content.starts_with("hash:"), "{by_content}");
        message.routing_key = "order.paid".into();
        assert_ne!(message_key(&message), by_content);
        message.message_id = Some("e-1".into());
        assert_eq!(message_key(&message), "id:e-1");
    }
}
