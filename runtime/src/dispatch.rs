//! Dispatch: consume → decode → validate → handle → publish emitted events
//! → ack, with retries through a delay queue and dead-lettering with the
//! reason in headers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, Delivery, HeaderValue, Message};
use crate::event::{self, Event, WireFormat};
use crate::handler::{CallContext, CallError, HandlerHost, LoadedHandler};
use crate::schema::{SchemaCheck, Schemas};
use crate::telemetry::{self, Readiness};

/// Header that counts handler calls for one message across redeliveries.
pub const ATTEMPT_HEADER: &str = "x-switchyard-attempt";
pub const REASON_HEADER: &str = "x-switchyard-reason";
pub const CONSUMER_HEADER: &str = "x-switchyard-consumer";
/// Routing key of the original publish, kept while a message waits in a
/// retry queue (which delivers it back under the queue's name).
pub const ROUTING_KEY_HEADER: &str = "x-switchyard-routing-key";

/// A publish target of one event type.
#[derive(Clone, Debug)]
pub struct Route {
    pub broker: String,
    pub exchange: String,
    pub routing_key: Option<String>,
    pub format: WireFormat,
}

/// A failed publish of an event.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("event type `{0}` has no publish target in the manifest")]
    NoRoute(String),
    #[error("broker `{0}` is not available")]
    NoBroker(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Publishes events to every target of their type, waiting for confirms.
#[derive(Clone)]
pub struct Publisher {
    brokers: Arc<HashMap<String, Arc<dyn Broker>>>,
    routes: Arc<HashMap<String, Vec<Route>>>,
}

impl Publisher {
    pub fn new(
        brokers: HashMap<String, Arc<dyn Broker>>,
        routes: HashMap<String, Vec<Route>>,
    ) -> Self {
        Publisher {
            brokers: Arc::new(brokers),
            routes: Arc::new(routes),
        }
    }

    pub fn broker(&self, name: &str) -> Option<&Arc<dyn Broker>> {
        self.brokers.get(name)
    }

    /// Publishes an already validated event and returns once every target
    /// confirmed it.
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let routes = self
            .routes
            .get(&event.event_type)
            .filter(|routes| !routes.is_empty())
            .ok_or_else(|| PublishError::NoRoute(event.event_type.clone()))?;
        for route in routes {
            let broker = self
                .brokers
                .get(&route.broker)
                .ok_or_else(|| PublishError::NoBroker(route.broker.clone()))?;
            let key = route.routing_key.as_deref().unwrap_or(&event.event_type);
            let message = event::encode(event, route.format, key);
            broker.publish(&route.exchange, message).await?;
            metrics::counter!(
                telemetry::EVENTS_PUBLISHED,
                "event_type" => event.event_type.clone(),
                "broker" => route.broker.clone()
            )
            .increment(1);
        }
        Ok(())
    }
}

/// Retry policy of a consumer.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// Returns the delay after the given failed attempt (1-based): the
    /// backoff doubled for each earlier attempt, capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Everything one consumer needs to run.
#[derive(Clone)]
pub struct Consumer {
    pub name: Arc<str>,
    pub queue: String,
    /// Queue that keeps messages until their retry delay passes.
    pub retry_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_routing_key: Option<String>,
    pub broker: Arc<dyn Broker>,
    pub prefetch: u16,
    pub concurrency: u32,
    pub retry: RetryPolicy,
    pub context: CallContext,
    pub source: String,
    pub handler_path: Option<std::path::PathBuf>,
}

/// Shared services of all consumers.
#[derive(Clone)]
pub struct Services {
    pub host: HandlerHost,
    pub publisher: Publisher,
    pub schemas: Schemas,
    pub readiness: Readiness,
}

/// Runs a consumer until `shutdown`, then finishes the events in flight.
///
/// Waits while the handler is missing, re-subscribes when the broker ends
/// the consumer, and backs off while the queue cannot be consumed.
pub async fn run_consumer(
    consumer: Consumer,
    mut handler: watch::Receiver<Option<LoadedHandler>>,
    services: Services,
    shutdown: CancellationToken,
) {
    let check = format!("consumer:{}", consumer.name);
    let mut failures = 0u32;
    loop {
        if handler.borrow().is_none() {
            let file = consumer
                .handler_path
                .as_deref()
                .unwrap_or(std::path::Path::new("?"));
            let detail = format!(
                "waiting for handler `{}` (still compiling, or missing or invalid: see the log)",
                file.display()
            );
            services.readiness.set(&check, false, detail);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = handler.wait_for(Option::is_some) => {
                    if changed.is_err() { return; }
                }
            }
        }

        let tag = format!(
            "switchyard-{}-{}",
            consumer.name,
            uuid::Uuid::new_v4().simple()
        );
        let deliveries = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = consumer.broker.consume(&consumer.queue, &tag, consumer.prefetch) => result,
        };
        let deliveries = match deliveries {
            Ok(deliveries) => deliveries,
            Err(err) => {
                failures += 1;
                let delay = backoff(failures);
                tracing::warn!(consumer = %consumer.name, queue = %consumer.queue, error = %err,
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
        tracing::info!(consumer = %consumer.name, queue = %consumer.queue, "consumer started");

        let ended = consume(&consumer, deliveries, &handler, &services, &shutdown).await;
        if ended == StreamEnd::Shutdown {
            services.readiness.set(&check, false, "stopped");
            return;
        }
        tracing::warn!(consumer = %consumer.name, queue = %consumer.queue,
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

fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(2u32.saturating_pow(failures.min(8)));
    let capped = base.min(Duration::from_secs(30));
    let jitter = rand::random_range(0.5..1.0);
    capped.mul_f64(jitter)
}

#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    Shutdown,
    Ended,
}

/// Handles deliveries with at most `concurrency` at once, until the stream
/// ends or shutdown; always waits for the calls already started.
async fn consume(
    consumer: &Consumer,
    mut deliveries: crate::broker::Deliveries,
    handler: &watch::Receiver<Option<LoadedHandler>>,
    services: &Services,
    shutdown: &CancellationToken,
) -> StreamEnd {
    let permits = Arc::new(Semaphore::new(consumer.concurrency.max(1) as usize));
    let mut running = JoinSet::new();
    let end = loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break StreamEnd::Shutdown,
            permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break StreamEnd::Shutdown,
            next = deliveries.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => {
                tracing::warn!(consumer = %consumer.name, error = %err, "delivery failed");
                break StreamEnd::Ended;
            }
            None => break StreamEnd::Ended,
        };
        let Some(loaded) = handler.borrow().clone() else {
            // The handler went away: put the message back and wait for it.
            let _ = delivery.reject(true).await;
            break StreamEnd::Ended;
        };
        let consumer = consumer.clone();
        let services = services.clone();
        running.spawn(async move {
            metrics::gauge!(telemetry::EVENTS_IN_FLIGHT, "consumer" => consumer.name.to_string())
                .increment(1.0);
            process(&consumer, &services, &loaded, delivery).await;
            metrics::gauge!(telemetry::EVENTS_IN_FLIGHT, "consumer" => consumer.name.to_string())
                .decrement(1.0);
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    };
    while running.join_next().await.is_some() {}
    drop(deliveries);
    end
}

/// The settlement of a delivery after its handler call.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    Ack,
    Retry {
        attempt: u32,
    },
    DeadLetter {
        reason: String,
        label: &'static str,
        attempt: u32,
    },
}

/// Handles one delivery from decode to acknowledgement.
async fn process(
    consumer: &Consumer,
    services: &Services,
    handler: &LoadedHandler,
    mut delivery: Delivery,
) {
    let previous = delivery
        .message
        .headers
        .get(ATTEMPT_HEADER)
        .and_then(HeaderValue::as_int)
        .unwrap_or(0);
    let previous = u32::try_from(previous.max(0)).unwrap_or(u32::MAX);
    if let Some(key) = delivery.message.headers.get(ROUTING_KEY_HEADER) {
        delivery.message.routing_key = key.to_text();
    }

    let disposition = match decide(consumer, services, handler, &delivery, previous).await {
        Ok(disposition) => disposition,
        Err(err) => {
            // The handler succeeded but its events could not be published:
            // leave the input for another attempt rather than lose the output.
            tracing::warn!(consumer = %consumer.name, error = %err,
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
    settle(consumer, delivery, disposition).await;
}

/// Decodes, validates and calls the handler; publishes what it emitted.
async fn decide(
    consumer: &Consumer,
    services: &Services,
    handler: &LoadedHandler,
    delivery: &Delivery,
    previous: u32,
) -> Result<Disposition, PublishError> {
    let dead_letter = |reason: String, label| Disposition::DeadLetter {
        reason,
        label,
        attempt: previous,
    };
    let event = match event::decode(&delivery.message) {
        Ok(event) => event,
        Err(err) => {
            return Ok(dead_letter(
                format!("undecodable message: {err}"),
                "undecodable",
            ));
        }
    };
    match services.schemas.validate(&event.event_type, &event.data) {
        Ok(()) => {}
        Err(check @ SchemaCheck::UnknownType(_)) => {
            return Ok(dead_letter(check.to_string(), "unknown_type"));
        }
        Err(check @ SchemaCheck::Invalid(_)) => {
            return Ok(dead_letter(check.to_string(), "schema"));
        }
    }

    let attempt = previous + 1;
    let started = Instant::now();
    let result = services
        .host
        .call(handler, &consumer.context, &event, attempt)
        .await;
    metrics::histogram!(telemetry::HANDLER_DURATION, "consumer" => consumer.name.to_string())
        .record(started.elapsed().as_secs_f64());

    let emitted = match result {
        Ok(emitted) => emitted,
        Err(CallError::Reject(reason)) => {
            tracing::info!(consumer = %consumer.name, event_id = %event.id, %reason, "handler rejected event");
            return Ok(Disposition::DeadLetter {
                reason: format!("rejected by handler: {reason}"),
                label: "rejected",
                attempt,
            });
        }
        Err(err) => {
            tracing::warn!(consumer = %consumer.name, event_id = %event.id, attempt, error = %err,
                "handler call failed");
            if attempt >= consumer.retry.max_attempts {
                return Ok(Disposition::DeadLetter {
                    reason: format!("failed {attempt} attempts; last error: {err}"),
                    label: "max_attempts",
                    attempt,
                });
            }
            return Ok(Disposition::Retry { attempt });
        }
    };

    for output in emitted {
        let mut follow_up = Event::new(&output.event_type, &consumer.source, output.data);
        if let Some(parent) = event.extensions.get("traceparent") {
            follow_up
                .extensions
                .insert("traceparent".into(), parent.clone());
        }
        services.publisher.publish(&follow_up).await?;
    }
    Ok(Disposition::Ack)
}

/// Acknowledges, schedules a retry or dead-letters a delivery. A message is
/// acknowledged only after its copy in the retry queue or dead-letter
/// exchange was confirmed, so it is never lost between the two.
async fn settle(consumer: &Consumer, delivery: Delivery, disposition: Disposition) {
    let name = consumer.name.to_string();
    let result = match disposition {
        Disposition::Ack => {
            metrics::counter!(telemetry::EVENTS_HANDLED, "consumer" => name, "outcome" => "ok")
                .increment(1);
            delivery.ack().await
        }
        Disposition::Retry { attempt } => {
            let mut copy = delivery.message.clone();
            copy.headers
                .insert(ATTEMPT_HEADER.into(), HeaderValue::Int(attempt.into()));
            copy.headers
                .insert(ROUTING_KEY_HEADER.into(), copy.routing_key.clone().into());
            copy.routing_key = consumer.retry_queue.clone();
            copy.expiration = Some(consumer.retry.delay(attempt));
            match consumer.broker.publish("", copy).await {
                Ok(()) => {
                    metrics::counter!(telemetry::EVENTS_HANDLED, "consumer" => name, "outcome" => "retry")
                        .increment(1);
                    delivery.ack().await
                }
                Err(err) => {
                    tracing::warn!(consumer = %consumer.name, error = %err,
                        "cannot schedule retry; returning the message to its queue");
                    tokio::time::sleep(consumer.retry.backoff).await;
                    delivery.reject(true).await
                }
            }
        }
        Disposition::DeadLetter {
            reason,
            label,
            attempt,
        } => dead_letter(consumer, delivery, reason, label, attempt).await,
    };
    if let Err(err) = result {
        // The broker redelivers an unacknowledged message, so at worst the
        // event is handled again.
        tracing::warn!(consumer = %consumer.name, error = %err, "cannot acknowledge delivery");
    }
}

async fn dead_letter(
    consumer: &Consumer,
    delivery: Delivery,
    reason: String,
    label: &'static str,
    attempt: u32,
) -> Result<(), BrokerError> {
    tracing::warn!(consumer = %consumer.name, %reason, attempt, "dead-lettering message");
    let mut copy: Message = delivery.message.clone();
    copy.headers.insert(REASON_HEADER.into(), reason.into());
    copy.headers
        .insert(CONSUMER_HEADER.into(), consumer.name.to_string().into());
    copy.headers
        .insert(ATTEMPT_HEADER.into(), HeaderValue::Int(attempt.into()));
    copy.headers.remove(ROUTING_KEY_HEADER);
    copy.expiration = None;
    if let Some(key) = &consumer.dead_letter_routing_key {
        copy.routing_key = key.clone();
    }
    let name = consumer.name.to_string();
    match consumer
        .broker
        .publish(&consumer.dead_letter_exchange, copy)
        .await
    {
        Ok(()) => {
            metrics::counter!(telemetry::EVENTS_HANDLED, "consumer" => name.clone(), "outcome" => "dead_lettered")
                .increment(1);
            metrics::counter!(telemetry::EVENTS_DEAD_LETTERED, "consumer" => name, "reason" => label)
                .increment(1);
            delivery.ack().await
        }
        Err(err) => {
            // The queue's own dead-letter exchange still keeps the message,
            // without switchyard's reason headers.
            tracing::warn!(consumer = %consumer.name, error = %err,
                "cannot publish dead letter; rejecting to the queue's dead-letter exchange");
            delivery.reject(false).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_and_caps() {
        let policy = RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        };
        assert_eq!(policy.delay(1), Duration::from_secs(1));
        assert_eq!(policy.delay(2), Duration::from_secs(2));
        assert_eq!(policy.delay(3), Duration::from_secs(4));
        assert_eq!(policy.delay(4), Duration::from_secs(5));
        assert_eq!(policy.delay(40), Duration::from_secs(5));
    }
}
