//! Dispatch: consume → decode → validate → handle → publish emitted events
//! → acknowledge, with retries and dead-lettering with the reason in
//! headers. Queue consumers are in `queue.rs`, topic consumers in `topic.rs`;
//! both share the decision of what happens to one message, `decide`.

mod queue;
mod topic;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, Message};
use crate::event::{self, Event, WireFormat};
use crate::handler::{CallContext, CallError, HandlerHost, LoadedHandler};
use crate::manifest::PartitionKey;
use crate::schema::{SchemaCheck, Schemas};
use crate::telemetry::{self, Readiness};
use crate::trace::{TRACEPARENT, TRACESTATE, TraceParent};

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
    pub destination: Destination,
}

/// The target of a route on its broker.
#[derive(Clone, Debug)]
pub enum Destination {
    /// An AMQP exchange; the routing key defaults to the event type.
    Exchange {
        exchange: String,
        routing_key: Option<String>,
        format: WireFormat,
    },
    /// A Kafka topic, in binary mode with `ce_` headers.
    Topic {
        topic: String,
        key: Option<PartitionKey>,
    },
}

/// Returns the partition key of an event: the text of an attribute or data
/// field, or the JSON text of a field that is an object or array. A missing
/// or null field gives no key.
pub fn partition_key(event: &Event, key: &PartitionKey) -> Option<String> {
    match key {
        PartitionKey::Attribute(name) => match name.as_str() {
            "id" => Some(event.id.clone()),
            "source" => Some(event.source.clone()),
            "type" => Some(event.event_type.clone()),
            "subject" => event.subject.clone(),
            "time" => event.time.clone(),
            _ => None,
        },
        PartitionKey::Data(path) => {
            let mut value = &event.data;
            for field in path {
                value = value.get(field)?;
            }
            match value {
                Value::Null => None,
                Value::String(text) => Some(text.clone()),
                other => Some(other.to_string()),
            }
        }
    }
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
    /// A later target failed after earlier ones had confirmed the event.
    #[error("{error}; the event was already published to {}", published.join(" and "))]
    Partial {
        /// The confirmed targets, such as "exchange `events` on broker `rabbit`".
        published: Vec<String>,
        error: BrokerError,
    },
}

impl PublishError {
    /// Reports whether publishing again later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PublishError::NoRoute(_) => false,
            PublishError::NoBroker(_) => true,
            PublishError::Broker(error) | PublishError::Partial { error, .. } => {
                error.is_transient()
            }
        }
    }
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
    ///
    /// NOTE: targets are published one after the other, so when a later
    /// target fails, the earlier ones already hold the event and a retry by
    /// the caller publishes it to them again.
    pub async fn publish(&self, event: &Event) -> Result<(), PublishError> {
        let routes = self
            .routes
            .get(&event.event_type)
            .filter(|routes| !routes.is_empty())
            .ok_or_else(|| PublishError::NoRoute(event.event_type.clone()))?;
        let mut published = Vec::new();
        for route in routes {
            let broker = self
                .brokers
                .get(&route.broker)
                .ok_or_else(|| PublishError::NoBroker(route.broker.clone()))?;
            let (target, result) = match &route.destination {
                Destination::Exchange {
                    exchange,
                    routing_key,
                    format,
                } => {
                    let key = routing_key.as_deref().unwrap_or(&event.event_type);
                    let message = event::encode(event, *format, key);
                    let target = format!("exchange `{exchange}` on broker `{}`", route.broker);
                    (target, broker.publish(exchange, message).await)
                }
                Destination::Topic { topic, key } => {
                    let mut message = event::encode(event, WireFormat::KafkaBinary, "");
                    message.key = key
                        .as_ref()
                        .and_then(|key| partition_key(event, key))
                        .map(Bytes::from);
                    let target = format!("topic `{topic}` on broker `{}`", route.broker);
                    (target, broker.produce(topic, message).await)
                }
            };
            if let Err(error) = result {
                if published.is_empty() {
                    return Err(PublishError::Broker(error));
                }
                return Err(PublishError::Partial { published, error });
            }
            published.push(target);
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

/// The source a consumer reads.
#[derive(Clone, Debug)]
pub enum Input {
    Queue(QueueInput),
    Topic(TopicInput),
}

/// A queue and where its failed messages go.
#[derive(Clone, Debug)]
pub struct QueueInput {
    pub queue: String,
    /// Queue that keeps messages until their retry delay passes.
    pub retry_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_routing_key: Option<String>,
}

/// A topic read in a consumer group, and where its failed records go.
#[derive(Clone, Debug)]
pub struct TopicInput {
    pub topic: String,
    pub group: String,
    pub dead_letter_topic: String,
    /// Group members this process runs; each handles its partitions one
    /// record at a time.
    pub members: u32,
}

/// Everything one consumer needs to run.
#[derive(Clone)]
pub struct Consumer {
    pub name: Arc<str>,
    pub input: Input,
    pub broker: Arc<dyn Broker>,
    pub prefetch: u16,
    pub concurrency: u32,
    pub retry: RetryPolicy,
    pub context: CallContext,
    pub source: String,
    pub handler_path: Option<std::path::PathBuf>,
    pub metrics: ConsumerMetrics,
}

/// Handles of the metrics a consumer updates for every event. They are
/// looked up once, so no event builds labels or searches the registry.
#[derive(Clone)]
pub struct ConsumerMetrics {
    pub handled_ok: metrics::Counter,
    pub handler_duration: metrics::Histogram,
    pub in_flight: metrics::Gauge,
}

impl ConsumerMetrics {
    /// Registers the metrics of consumer `name` with the installed recorder.
    /// Without one, the updates go nowhere.
    pub fn new(name: &str) -> Self {
        let name = name.to_owned();
        ConsumerMetrics {
            handled_ok: metrics::counter!(telemetry::EVENTS_HANDLED, "consumer" => name.clone(), "outcome" => "ok"),
            handler_duration: metrics::histogram!(telemetry::HANDLER_DURATION, "consumer" => name.clone()),
            in_flight: metrics::gauge!(telemetry::EVENTS_IN_FLIGHT, "consumer" => name),
        }
    }
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
pub async fn run_consumer(
    consumer: Consumer,
    handler: watch::Receiver<Option<LoadedHandler>>,
    services: Services,
    shutdown: CancellationToken,
) {
    match consumer.input.clone() {
        Input::Queue(input) => queue::run(consumer, input, handler, services, shutdown).await,
        Input::Topic(input) => topic::run(consumer, input, handler, services, shutdown).await,
    }
}

/// Waits until the consumer's handler is loaded, marking the consumer not
/// ready meanwhile. Returns false on shutdown.
async fn wait_for_handler(
    consumer: &Consumer,
    handler: &mut watch::Receiver<Option<LoadedHandler>>,
    services: &Services,
    shutdown: &CancellationToken,
) -> bool {
    if handler.borrow().is_some() {
        return true;
    }
    let file = consumer
        .handler_path
        .as_deref()
        .unwrap_or(std::path::Path::new("?"));
    let detail = format!(
        "waiting for handler `{}` (still compiling, or missing or invalid: see the log)",
        file.display()
    );
    services
        .readiness
        .set(format!("consumer:{}", consumer.name), false, detail);
    tokio::select! {
        _ = shutdown.cancelled() => false,
        changed = handler.wait_for(Option::is_some) => changed.is_ok(),
    }
}

/// Returns the wait before the next attempt to start a consumer: capped
/// exponential backoff with jitter.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(2u32.saturating_pow(failures.min(8)));
    let capped = base.min(Duration::from_secs(30));
    let jitter = rand::random_range(0.5..1.0);
    capped.mul_f64(jitter)
}

/// CloudEvents extension attribute that counts the handler calls between an
/// event and the outside event that started its chain of emitted events.
pub const EMIT_DEPTH: &str = "switchyarddepth";

/// Deepest chain of emitted events that is handled. An event this many
/// handler calls away from its outside event is dead-lettered instead, so a
/// handler whose events come back to it cannot loop forever.
pub const MAX_EMIT_DEPTH: u32 = 32;

/// The settlement of a delivery after its handler call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Disposition {
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

/// Decodes, validates and calls the handler; publishes what it emitted.
/// `previous` counts the handler calls this message had before.
async fn decide(
    consumer: &Consumer,
    services: &Services,
    handler: &LoadedHandler,
    message: &Message,
    previous: u32,
) -> Result<Disposition, PublishError> {
    let verdict = evaluate(consumer, services, handler, message, previous).await;
    for follow_up in &verdict.follow_ups {
        services.publisher.publish(follow_up).await?;
        tracing::debug!(follow_up_id = %follow_up.id, follow_up_type = %follow_up.event_type, "published emitted event");
    }
    Ok(verdict.disposition)
}

/// The result of handling one message, before the events that the handler
/// emitted are published.
pub(crate) struct Verdict {
    pub disposition: Disposition,
    /// Events to publish before the message is acknowledged. Empty unless
    /// the disposition is `Ack`.
    pub follow_ups: Vec<Event>,
    /// The handler's error when the disposition is `Retry`.
    pub failure: Option<String>,
}

impl Verdict {
    fn settled(disposition: Disposition) -> Self {
        Verdict {
            disposition,
            follow_ups: Vec::new(),
            failure: None,
        }
    }
}

/// Decodes and validates a message and calls the handler. Publishes
/// nothing, so that `decide` and `switchyard test` share every decision.
pub(crate) async fn evaluate(
    consumer: &Consumer,
    services: &Services,
    handler: &LoadedHandler,
    message: &Message,
    previous: u32,
) -> Verdict {
    let dead_letter = |reason: String, label| {
        Verdict::settled(Disposition::DeadLetter {
            reason,
            label,
            attempt: previous,
        })
    };
    let event = match event::decode(message) {
        Ok(event) => event,
        Err(err) => {
            return dead_letter(format!("undecodable message: {err}"), "undecodable");
        }
    };
    let trace = event
        .extensions
        .get(TRACEPARENT)
        .and_then(|value| TraceParent::parse(value));
    record_event_fields(&event, trace);
    let depth = event
        .extensions
        .get(EMIT_DEPTH)
        .and_then(|value| value.parse::<u32>().ok())
        .unwrap_or(0);
    if depth >= MAX_EMIT_DEPTH {
        return dead_letter(
            format!(
                "emitted events loop: this event is the end of a chain of {depth} handler \
                 calls that each emitted the next event, and at most {MAX_EMIT_DEPTH} are \
                 handled; a handler emits events that come back to it, so change what it \
                 emits or where those events are routed"
            ),
            "emit_depth",
        );
    }
    match services.schemas.validate(&event.event_type, &event.data) {
        Ok(()) => {}
        Err(check @ SchemaCheck::UnknownType(_)) => {
            return dead_letter(check.to_string(), "unknown_type");
        }
        Err(check @ SchemaCheck::Invalid(_)) => {
            return dead_letter(check.to_string(), "schema");
        }
    }

    let attempt = previous + 1;
    let started = Instant::now();
    let result = services
        .host
        .call(handler, &consumer.context, &event, attempt)
        .await;
    consumer
        .metrics
        .handler_duration
        .record(started.elapsed().as_secs_f64());

    let emitted = match result {
        Ok(emitted) => emitted,
        Err(CallError::Reject(reason)) => {
            tracing::info!(%reason, "handler rejected event");
            return Verdict::settled(Disposition::DeadLetter {
                reason: format!("rejected by handler: {reason}"),
                label: "rejected",
                attempt,
            });
        }
        Err(err) => {
            tracing::warn!(attempt, error = %err, "handler call failed");
            if let Some(limit) = err.limit() {
                metrics::counter!(telemetry::LIMIT_HITS, "consumer" => consumer.name.to_string(), "limit" => limit)
                    .increment(1);
            }
            if attempt >= consumer.retry.max_attempts {
                return Verdict::settled(Disposition::DeadLetter {
                    reason: format!("failed {attempt} attempts; last error: {err}"),
                    label: "max_attempts",
                    attempt,
                });
            }
            return Verdict {
                disposition: Disposition::Retry { attempt },
                follow_ups: Vec::new(),
                failure: Some(err.to_string()),
            };
        }
    };

    tracing::debug!(attempt, emitted = emitted.len(), elapsed = ?started.elapsed(), "handler returned ok");
    let follow_ups = emitted
        .into_iter()
        .map(|output| {
            let mut follow_up = Event::new(&output.event_type, &consumer.source, output.data);
            // Each emitted event continues the trace of the event that caused
            // it. When that event came without trace context, a new trace
            // starts.
            let context = trace.map_or_else(TraceParent::new_root, |parent| parent.child());
            follow_up
                .extensions
                .insert(TRACEPARENT.into(), context.to_string());
            if let Some(state) = event.extensions.get(TRACESTATE) {
                follow_up
                    .extensions
                    .insert(TRACESTATE.into(), state.clone());
            }
            follow_up
                .extensions
                .insert(EMIT_DEPTH.into(), (depth + 1).to_string());
            follow_up
        })
        .collect();
    Verdict {
        disposition: Disposition::Ack,
        follow_ups,
        failure: None,
    }
}

/// Records the decoded event's id, type and trace id on the span of the
/// delivery, which every log line about the event carries.
fn record_event_fields(event: &Event, trace: Option<TraceParent>) {
    use tracing::field::display;

    let span = tracing::Span::current();
    span.record("event_id", display(&event.id));
    span.record("event_type", display(&event.event_type));
    if let Some(trace) = trace {
        span.record("trace_id", display(trace.trace_id_hex()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn partition_key_from_attribute_and_data() {
        let mut event = Event::new(
            "order.placed",
            "/shop/orders",
            json!({"customer": {"id": "c-7", "tier": 2}, "total": 9.5, "note": null}),
        );
        event.subject = Some("s-1".into());
        let data = |path: &[&str]| PartitionKey::Data(path.iter().map(|p| p.to_string()).collect());
        let key = |k: &PartitionKey| partition_key(&event, k);
        assert_eq!(
            key(&PartitionKey::Attribute("id".into())),
            Some(event.id.clone())
        );
        assert_eq!(
            key(&PartitionKey::Attribute("subject".into())),
            Some("s-1".into())
        );
        assert_eq!(key(&data(&["customer", "id"])), Some("c-7".into()));
        assert_eq!(key(&data(&["customer", "tier"])), Some("2".into()));
        assert_eq!(key(&data(&["total"])), Some("9.5".into()));
        assert_eq!(key(&data(&["note"])), None, "null gives no key");
        assert_eq!(key(&data(&["missing"])), None);
        assert_eq!(
            key(&data(&["customer"])),
            Some(r#"{"id":"c-7","tier":2}"#.into())
        );
    }

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
